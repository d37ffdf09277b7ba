"""The distribution column (docs/scale.md): every resource and version carries the patient whose
compartment holds it, on every write path (a write, a transaction, a bulk load, an update
that moves it, a delete), and a store upgraded from the release before the column gets the
value the writers give."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from takamul.bulk import load_paths
from takamul.cli import app
from takamul.settings import Settings
from takamul.store import Store
from takamul.store.indexing import compartment_of, index_tuples
from takamul.store.schema import resource, resource_version
from tests.server import postgres_database
from tests.test_migrations import make_previous_release_store


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'c.sqlite'}"
    else:
        with postgres_database() as u:
            yield u


def _compartments(store: Store) -> dict[tuple[str, str], str]:
    with store.reading() as s:
        rows = s.conn.execute(
            select(resource.c.res_type, resource.c.res_id, resource.c.compartment)
        )
        return {(r.res_type, r.res_id): r.compartment for r in rows}


def _version_compartments(store: Store, res_type: str, res_id: str) -> list[str]:
    with store.reading() as s:
        rows = s.conn.execute(
            select(resource_version.c.compartment)
            .where(resource_version.c.res_type == res_type, resource_version.c.res_id == res_id)
            .order_by(resource_version.c.version)
        )
        return [r.compartment for r in rows]


def _obs(oid: str, patient: str) -> dict[str, object]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"text": "weight"},
        "subject": {"reference": f"Patient/{patient}"},
    }


def test_every_write_path_keeps_the_compartment(url: str, tmp_path: Path) -> None:
    store = Store(Settings.from_env(database_url=url, auth=False))
    try:
        org = {"resourceType": "Organization", "id": "o1", "name": "Clinic"}
        group = {
            "resourceType": "Group",
            "id": "g1",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": "Patient/p9"}}],
        }
        store.write(
            lambda s: [
                s.update("Patient", pid, {"resourceType": "Patient", "id": pid})
                for pid in ("p1", "p2", "p3")
            ]
        )
        store.write(lambda s: s.update("Organization", "o1", org))
        store.write(lambda s: s.update("Group", "g1", group))
        store.write(lambda s: s.update("Observation", "ob1", _obs("ob1", "p2")))
        # in several patients' compartments (subject p3, performer p1): the least id
        both = {**_obs("ob2", "p3"), "performer": [{"reference": "Patient/p1"}]}
        store.write(lambda s: s.update("Observation", "ob2", both))
        ndjson = tmp_path / "Observation.ndjson"
        ndjson.write_bytes(orjson.dumps(_obs("ob3", "p3")) + b"\n")
        load_paths(store, [ndjson], tmp_path / "errors.ndjson", workers=0)
        found = _compartments(store)
        assert found[("Patient", "p1")] == "p1"
        assert found[("Organization", "o1")] == ""
        assert found[("Group", "g1")] == "p9"  # through ``member``, by the definition
        assert found[("Observation", "ob1")] == "p2"
        assert found[("Observation", "ob2")] == "p1"
        assert found[("Observation", "ob3")] == "p3"

        # an update that moves it to another patient moves its compartment; versions keep theirs
        store.write(lambda s: s.update("Observation", "ob1", _obs("ob1", "p3")))
        store.write(lambda s: s.delete("Observation", "ob1"))
        assert _compartments(store)[("Observation", "ob1")] == "p3"
        assert _version_compartments(store, "Observation", "ob1") == ["p2", "p3", "p3"]
        assert _version_compartments(store, "Observation", "ob3") == ["p3"]
    finally:
        store.close()


def test_an_upgraded_store_gets_the_compartments_the_writers_give(url: str) -> None:
    make_previous_release_store(url)
    result = CliRunner().invoke(app, ["db", "upgrade", "--db", url])
    assert result.exit_code == 0, result.output
    store = Store(Settings.from_env(database_url=url, auth=False))
    try:
        with store.reading() as s:
            rows = s.conn.execute(
                select(resource.c.res_type, resource.c.res_id, resource.c.content).where(
                    resource.c.deleted.is_(False)
                )
            ).all()
        assert rows, "the previous release's fixture holds resources"
        stored = _compartments(store)
        placed = 0
        for row in rows:
            index = index_tuples(store.indexer, row.res_type, orjson.loads(row.content))
            expected = compartment_of(row.res_type, row.res_id, index)
            assert stored[(row.res_type, row.res_id)] == expected, (row.res_type, row.res_id)
            placed += expected != ""
        assert placed > 0  # the fixture has patient data, so the rule was exercised
    finally:
        store.close()
