"""The current version's JSON is stored once (revision 0008): a version row holds its JSON only
once the version is replaced, and every path that reads versions still gets each one's JSON.
Each way a version is replaced is tried: an update in a later transaction, updates in the same
transaction (the version row still waiting to be sent), a deletion, and a bulk load over stored
resources. On both stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from takamul.bulk import load_paths
from takamul.fhir.outcome import FhirError
from takamul.store import Store
from takamul.store.repository import Session
from takamul.store.schema import resource_version


def _patient(pid: str, family: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family}]}


def _own_json(store: Store, pid: str) -> dict[int, str | None]:
    """Each version's own stored JSON (the family name in it), by version number."""
    with store.reading() as session:
        rows = session.conn.execute(
            select(resource_version.c.version, resource_version.c.content).where(
                resource_version.c.res_type == "Patient", resource_version.c.res_id == pid
            )
        ).all()
    return {int(v): (orjson.loads(c)["name"][0]["family"] if c else None) for v, c in rows}


def _families(store: Store, pid: str) -> dict[int, str | None]:
    """Each version's JSON as history and vread give it."""
    with store.reading() as session:
        versions, total = session.history("Patient", pid, None, 50, 0)
        assert total == len(versions)
        out: dict[int, str | None] = {}
        for v in versions:
            out[v.version] = v.json()["name"][0]["family"] if v.content else None
            if not v.deleted:
                assert session.vread("Patient", pid, str(v.version)).content == v.content
        return out


def test_each_replaced_version_keeps_its_json_and_the_current_one_is_stored_once(
    either_store: Store,
) -> None:
    store = either_store
    store.write(lambda s: s.update("Patient", "jo-1", _patient("jo-1", "Karimi"), None))
    assert _own_json(store, "jo-1") == {1: None}  # current: the resource's JSON alone
    assert _families(store, "jo-1") == {1: "Karimi"}

    # replaced in a later transaction: its row was sent long ago
    store.write(lambda s: s.update("Patient", "jo-1", _patient("jo-1", "Rahimi"), None))
    assert _own_json(store, "jo-1") == {1: "Karimi", 2: None}
    assert _families(store, "jo-1") == {1: "Karimi", 2: "Rahimi"}

    # created and replaced twice in one transaction: the rows had not been sent yet
    def three_versions(s: Session) -> None:
        for family in ("Al-Harbi", "Al-Otaibi", "العتيبي"):
            s.update("Patient", "jo-2", _patient("jo-2", family), None)

    store.write(three_versions)
    assert _own_json(store, "jo-2") == {1: "Al-Harbi", 2: "Al-Otaibi", 3: None}
    assert _families(store, "jo-2") == {1: "Al-Harbi", 2: "Al-Otaibi", 3: "العتيبي"}

    # a deletion: the last live version keeps its JSON, readers of it are told it is gone
    store.write(lambda s: s.delete("Patient", "jo-1"))
    assert _own_json(store, "jo-1") == {1: "Karimi", 2: "Rahimi", 3: None}
    assert _families(store, "jo-1") == {1: "Karimi", 2: "Rahimi", 3: None}
    with store.reading() as session, pytest.raises(FhirError, match="deleted"):
        session.read("Patient", "jo-1")

    # created again after the deletion, then replaced
    store.write(lambda s: s.update("Patient", "jo-1", _patient("jo-1", "Tehrani"), None))
    store.write(lambda s: s.update("Patient", "jo-1", _patient("jo-1", "Shirazi"), None))
    assert _own_json(store, "jo-1") == {
        1: "Karimi",
        2: "Rahimi",
        3: None,
        4: "Tehrani",
        5: None,
    }
    with store.reading() as session:
        assert session.read("Patient", "jo-1").json()["name"][0]["family"] == "Shirazi"


def test_a_bulk_load_over_stored_resources_keeps_the_replaced_json(
    either_store: Store, tmp_path: Path
) -> None:
    store = either_store
    store.write(lambda s: s.update("Patient", "jo-3", _patient("jo-3", "Hosseini"), None))
    lines = [_patient("jo-3", "Hosseini-Nejad"), _patient("jo-4", "Moradi")]
    source = tmp_path / "Patient.ndjson"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    summary = load_paths(store, [source], tmp_path / "errors.ndjson", workers=0)
    assert (summary.loaded, summary.updated, summary.rejected) == (1, 1, 0)
    assert _own_json(store, "jo-3") == {1: "Hosseini", 2: None}
    assert _families(store, "jo-3") == {1: "Hosseini", 2: "Hosseini-Nejad"}
    assert _own_json(store, "jo-4") == {1: None}
    assert _families(store, "jo-4") == {1: "Moradi"}
