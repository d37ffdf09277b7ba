"""The store's reads for batch jobs and write hooks (issue 17: the first start after a bulk load).

``current_many`` and ``referring_many`` read a batch in one statement; ``current`` and
``referring`` inside a write transaction must still see every write before them, although
``current`` never sends the pending version and index rows and ``referring`` sends them only
when one of them refers to its target. On both stores.
"""

from __future__ import annotations

from typing import Any

import pytest

from takamul.store import Store
from takamul.store.repository import BATCH_LIST, PENDING, Session


@pytest.fixture
def store(either_store: Store) -> Store:
    return either_store


def _observation(oid: str, patient: str, derived_from: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
        "subject": {"reference": f"Patient/{patient}"},
    }
    if derived_from:
        body["derivedFrom"] = [{"reference": derived_from}]
    return body


def _patients(store: Store, n: int) -> None:
    def work(session: Session) -> None:
        for i in range(n):
            session.update("Patient", f"p{i}", {"resourceType": "Patient", "id": f"p{i}"})

    store.write(work)


@pytest.mark.parametrize("n", [3, BATCH_LIST + 20])  # a plain IN list, then one array parameter
def test_current_many_reads_a_batch_leaving_out_the_deleted_and_missing(
    store: Store, n: int
) -> None:
    _patients(store, n)
    store.write(lambda s: s.delete("Patient", "p1"))
    wanted = [f"p{i}" for i in range(n)] + ["nobody"]
    with store.reading() as session:
        found = session.current_many("Patient", wanted)
        assert set(found) == {f"p{i}" for i in range(n)} - {"p1"}
        assert found["p2"]["id"] == "p2"
        assert session.current_many("Patient", []) == {}
        assert session.current("Patient", "p0") == found["p0"]
        assert session.current("Patient", "p1") is None  # deleted
        assert session.current("Patient", "nobody") is None


def test_referring_many_groups_referrers_by_target(store: Store) -> None:
    _patients(store, 3)

    def work(session: Session) -> None:
        twice = _observation("o-b", "p0", "Observation/x")
        twice["derivedFrom"].append({"reference": "Observation/x", "display": "again"})
        session.update("Observation", "o-b", twice)
        session.update("Observation", "o-a", _observation("o-a", "p0"))
        session.update("Observation", "o-c", _observation("o-c", "p2"))

    store.write(work)
    store.write(lambda s: s.delete("Observation", "o-c"))
    targets = ["Patient/p0", "Patient/p1", "Patient/p2", "Observation/x"]
    with store.reading() as session:
        found = session.referring_many("Observation", "subject", targets)
        assert {t: [o["id"] for o in v] for t, v in found.items()} == {"Patient/p0": ["o-a", "o-b"]}
        # each target as ``referring`` answers it
        for target in targets:
            expected = session.referring("Observation", "subject", target)
            assert found.get(target, []) == expected
        derived = session.referring_many("Observation", "derived-from", targets)
        assert [o["id"] for o in derived["Observation/x"]] == ["o-b"]


def test_reads_inside_a_write_see_its_earlier_writes(store: Store) -> None:
    """``referring`` sends the pending rows when they refer to its target, and only then."""
    _patients(store, 2)
    seen: dict[str, Any] = {}

    def work(session: Session) -> None:
        session.update("Observation", "o1", _observation("o1", "p0"))
        pending = session.conn.info[PENDING]
        # another target: the pending rows stay pending, and the answer is still right
        seen["other"] = [o["id"] for o in session.referring("Observation", "subject", "Patient/p1")]
        seen["still pending"] = bool(pending.index)
        seen["current"] = (session.current("Observation", "o1") or {}).get("id")
        seen["same"] = [o["id"] for o in session.referring("Observation", "subject", "Patient/p0")]
        seen["sent"] = not pending.index

    store.write(work)
    assert seen == {
        "other": [],
        "still pending": True,
        "current": "o1",
        "same": ["o1"],
        "sent": True,
    }
    with store.reading() as session:
        assert [o["id"] for o in session.referring("Observation", "subject", "Patient/p0")] == [
            "o1"
        ]
