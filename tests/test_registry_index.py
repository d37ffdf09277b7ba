"""The real-time candidate index keeps its blocks compact (a key's hash, a bare id, a tuple, a
set past ``SMALL`` records): whatever the order of adds, replacements and removals, its candidates
and an ID's holders are those a plain reading of every record's block keys gives. The same of
the index in the store's tables (``StoredCandidateIndex``), on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from takamul.mpi.schema import mpi_metadata
from takamul.mpi.service import default_model
from takamul.mpi.stored_index import StoredCandidateIndex
from takamul.registry.index import CandidateIndex
from takamul.registry.record import RegistryRecord, from_patient
from takamul.settings import Settings
from takamul.store import Store
from takamul.store.repository import Session
from tests.server import postgres_database

SA_ID = "https://takamul.health/fhir/sid/sa-national-id"
GIVEN = ["Mohammed", "محمد", "Fatimah", "Noura", "نورة"]
FAMILY = ["Al-Harbi", "الحربي", "Al-Qahtani"]


def body(pid: str, rng: random.Random) -> dict[str, Any]:
    # few names, dates and IDs: blocks hold from one record to more than SMALL
    return {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"given": [rng.choice(GIVEN)], "family": rng.choice(FAMILY)}],
        "birthDate": rng.choice(["1980-01-02", "1980-01-03", "2011-07-09"]),
        "identifier": [{"system": SA_ID, "value": rng.choice(["1000000008", "1000000016"])}],
    }


def expected_candidates(
    index: CandidateIndex, records: dict[str, RegistryRecord], record: RegistryRecord
) -> set[str]:
    holders: dict[tuple[str, ...], set[str]] = {}
    for other in records.values():
        for key in index.block_keys(other):
            holders.setdefault(key, set()).add(other.patient_id)
    found: set[str] = set()
    for key in index.block_keys(record):
        members = holders.get(key, set())
        if len(members) <= index.model.blocking[int(key[0])].max_block_size:
            found |= members
    return found - {record.patient_id}


def test_candidates_and_holders_follow_every_add_and_removal() -> None:
    rng = random.Random(11)
    index = CandidateIndex(default_model())
    records: dict[str, RegistryRecord] = {}
    forms: set[type] = set()
    for step in range(600):
        pid = f"p{rng.randrange(40)}"
        if pid in records and rng.random() < 0.35:
            index.remove(pid)
            del records[pid]
        else:
            record = from_patient(body(pid, rng))
            index.add(record)  # a replacement when the patient is there already
            records[pid] = record
        forms.update(type(held) for held in index._blocks.values())
        if step % 25 == 0:
            for record in records.values():
                assert index.candidates(record) == expected_candidates(index, records, record)
            for nid in ("1000000008", "1000000016"):
                carrying = {p for p, r in records.items() if r.national_id == nid}
                assert index.holders_of(nid) == carrying
    # every form a block takes was reached: one record, a few, more than SMALL
    assert forms == {str, tuple, set}
    for pid in list(records):
        index.remove(pid)
    assert not index._blocks and not index._id_holders and len(index) == 0


@pytest.fixture(params=["sqlite", "postgresql"])
def plain_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store with no registry attached: the test drives the index itself."""
    if request.param == "sqlite":
        opened = Store(Settings(database_url=f"sqlite:///{tmp_path / 's.sqlite'}", mpi=False))
        yield opened
        opened.close()
        return
    with postgres_database() as url:
        opened = Store(Settings(database_url=url, mpi=False))
        yield opened
        opened.close()


def test_the_store_index_follows_every_add_and_removal(plain_store: Store) -> None:
    """The same walk on the index in the store's tables, several steps a transaction (its memo
    of holders and blocks kept, then read afresh), with blocks small enough to overflow: a
    block over its rule's size yields no candidates, as in memory."""
    model = default_model()
    model.blocking = tuple(dataclasses.replace(r, max_block_size=6) for r in model.blocking)
    mpi_metadata.create_all(plain_store.writer)
    index = StoredCandidateIndex(model, plain_store, cache=10)  # a cache smaller than the set
    rng = random.Random(13)
    records: dict[str, RegistryRecord] = {}
    over = False

    def step(session: Session) -> None:
        pid = f"p{rng.randrange(40)}"
        if pid in records and rng.random() < 0.35:
            session.delete("Patient", pid)
            index.remove(pid)
            del records[pid]
        else:
            patient = body(pid, rng)
            session.update("Patient", pid, patient)
            record = from_patient(patient)
            index.add(record)
            records[pid] = record

    def check() -> bool:
        crowded = False
        for record in records.values():
            expected = expected_candidates(index, records, record)
            assert index.candidates(record) == expected
            crowded |= len(expected) < len(
                {p for p, r in records.items() if r.national_id == record.national_id}
                - {record.patient_id}
            )
        for nid in ("1000000008", "1000000016"):
            carrying = {p for p, r in records.items() if r.national_id == nid}
            assert index.holders_of(nid) == carrying
        return crowded

    def transaction(session: Session) -> None:
        index.bind(session.conn)
        try:
            for _ in range(4):
                step(session)
                check()  # the memo, inside the transaction, after each step
        finally:
            index.bind(None)

    for _ in range(60):
        plain_store.write(transaction)
        over |= check()  # read afresh
    assert over  # some national ID's block went over its size and was left out
    assert {pid for pid in index.ids()} == set(records)
    assert {p: r for p, r in index.fetch(sorted(records)).items()} == records
