"""The client registry's candidate index in the store's tables (``registry_index = "store"``),
on SQLite and PostgreSQL: it links as the in-memory index does, keeps nothing a rolled-back
write made, indexes what a bulk load stored at the next start, and lets a new process answer
without reading the population.

Equivalence is checked on registrations from the independent evaluation generator
(``bench.registry_eval``, written apart from the synthetic population the model was tuned on):
the same sequence linked both ways gives the same persons and the same review queue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from takamul.bulk.load import load_paths
from takamul.mpi.service import ClientRegistry
from takamul.mpi.stored_index import StoredCandidateIndex, slot_of
from takamul.registry.record import from_patient
from takamul.settings import Settings
from takamul.store import Store
from tests.registry_world import evaluation_registrations, registered, urls
from tests.registry_world import open_store as _open

__all__ = ["urls"]  # the fixture


@pytest.fixture(scope="module")
def registrations(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """About 330 registrations of 150 people."""
    return evaluation_registrations(tmp_path_factory, persons=150, seed=23)


def _put(store: Store, body: dict[str, Any]) -> None:
    store.write(lambda s: s.update("Patient", body["id"], body))


def _state(store: Store) -> tuple[list[list[str]], list[tuple[str, str, float]]]:
    """(persons as sorted member lists, open reviews) as the database holds them."""
    with store.reading() as s:
        members: dict[str, list[str]] = {}
        for pid, person in s.conn.execute(text("SELECT patient_id, person_id FROM mpi_member")):
            members.setdefault(person, []).append(pid)
        reviews = [
            (a, b, round(float(p), 9))
            for a, b, p in s.conn.execute(
                text(
                    "SELECT patient_a, patient_b, probability FROM mpi_review"
                    " WHERE status = 'open' ORDER BY patient_a, patient_b"
                )
            )
        ]
    return sorted(sorted(m) for m in members.values()), reviews


def test_the_store_index_links_as_the_memory_index(
    urls: tuple[str, str], registrations: list[dict[str, Any]]
) -> None:
    memory, stored = _open(urls[0], "memory"), _open(urls[1], "store")
    try:
        registries = [ClientRegistry(memory), ClientRegistry(stored)]
        for registry in registries:
            registry.attach()
        assert isinstance(registries[1].index, StoredCandidateIndex)
        for body in registrations:
            _put(memory, body)
            _put(stored, body)
        persons, reviews = _state(memory)
        assert _state(stored) == (persons, reviews)
        # not a trivial agreement: the sequence makes persons of several and reviews
        assert len(persons) < len(registrations)
        assert any(len(m) > 2 for m in persons)
        assert reviews

        # $match answers alike, from the tables
        probe = {**registrations[0], "id": "probe"}
        found = [(m.patient_id, round(m.probability, 9)) for m in registries[0].match(probe)]
        assert found
        assert [(m.patient_id, round(m.probability, 9)) for m in registries[1].match(probe)] == (
            found
        )
    finally:
        memory.close()
        stored.close()


def _attached(store: Store) -> tuple[ClientRegistry, StoredCandidateIndex]:
    registry = ClientRegistry(store)
    registry.attach()
    index = registry.index
    assert isinstance(index, StoredCandidateIndex)
    return registry, index


def test_a_new_process_answers_from_the_tables_without_loading_them(
    urls: tuple[str, str], registrations: list[dict[str, Any]]
) -> None:
    registered(urls[1], registrations[:60])
    store = _open(urls[1], "store")
    try:
        registry, index = _attached(store)
        assert not index._cache  # nothing read at the start
        assert len(index) == 60  # counted in the tables
        probe = {**registrations[0], "id": "probe"}
        assert registrations[0]["id"] in {m.patient_id for m in registry.match(probe)}
        # a registration through this process joins the person the first process made
        again = {**registrations[0], "id": "again"}
        _put(store, again)
        assert registry.person_of("again") == registry.person_of(registrations[0]["id"])
    finally:
        store.close()


def _rows(store: Store, table: str, pid: str) -> int:
    with store.reading() as s:
        query = text(f"SELECT count(*) FROM {table} WHERE patient_id = :pid")
        return int(s.conn.execute(query, {"pid": pid}).scalar_one())


def test_a_rolled_back_write_leaves_no_index_rows_and_no_cached_record(
    urls: tuple[str, str], registrations: list[dict[str, Any]]
) -> None:
    store = _open(urls[0], "store")
    try:
        _, index = _attached(store)
        body = registrations[0]

        def fails(session: Any) -> None:
            session.update("Patient", body["id"], body)
            session.extras["mpi-written"]  # the registry noted the write
            session.last_before_commit.append(lambda: 1 / 0)

        with pytest.raises(ZeroDivisionError):
            store.write(fails)
        for table in ("mpi_indexed", "mpi_block", "mpi_name", "mpi_word"):
            assert _rows(store, table, body["id"]) == 0, table
        assert body["id"] not in index._cache
        _put(store, body)
        assert _rows(store, "mpi_indexed", body["id"]) == 1
        record = from_patient(body)
        slots = {slot_of(k) for k in index.block_keys(record)}
        assert _rows(store, "mpi_block", body["id"]) == len(slots) > 0

        # a deleted Patient leaves the index
        store.write(lambda s: s.delete("Patient", body["id"]))
        for table in ("mpi_indexed", "mpi_block", "mpi_name", "mpi_word"):
            assert _rows(store, table, body["id"]) == 0, table
        assert index.get(body["id"]) is None
    finally:
        store.close()


def test_a_start_indexes_and_links_a_bulk_load(
    urls: tuple[str, str], registrations: list[dict[str, Any]], tmp_path: Path
) -> None:
    """A bulk load runs no write hooks: the next start writes its index rows (COPY on
    PostgreSQL) and links it, as the memory index would."""
    path = tmp_path / "Patient.ndjson"
    path.write_bytes(b"".join(orjson.dumps(b) + b"\n" for b in registrations))
    for url, index in zip(urls, ("memory", "store"), strict=True):
        store = _open(url, index)
        try:
            summary = load_paths(store, [path], tmp_path / f"errors-{index}.ndjson", workers=0)
            assert summary.loaded == len(registrations)
        finally:
            store.close()
    states = []
    for url, index in zip(urls, ("memory", "store"), strict=True):
        store = _open(url, index)
        try:
            registry = ClientRegistry(store)
            # linked one by one as the real-time path does (below the batch's threshold)
            assert registry.attach(batch_from=len(registrations) + 1) == len(registrations)
            states.append(_state(store))
        finally:
            store.close()
    assert states[0] == states[1]
    store = _open(urls[1], "store")
    try:
        with store.reading() as s:
            indexed = s.conn.execute(text("SELECT count(*) FROM mpi_indexed")).scalar_one()
        assert indexed == len(registrations)
        registry = ClientRegistry(store)
        assert registry.attach() == 0  # nothing left to index or link
    finally:
        store.close()


def test_a_start_reindexes_patients_changed_without_the_registry(
    urls: tuple[str, str], registrations: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Patients updated or deleted while no registry ran (a store opened with the registry
    off, a bulk load of new versions) get their rows replaced or dropped at the next start."""
    registered(urls[0], registrations[:20])
    changed = {k: v for k, v in registrations[0].items() if k != "identifier"}
    changed["birthDate"] = "1901-02-03"
    gone = registrations[1]["id"]
    plain = Store(Settings(database_url=urls[0], mpi=False))
    try:
        plain.write(lambda s: s.update("Patient", changed["id"], changed))
        plain.write(lambda s: s.delete("Patient", gone))
    finally:
        plain.close()
    store = _open(urls[0], "store")
    try:
        _, index = _attached(store)
        with store.reading() as s:
            version, nid = s.conn.execute(
                text("SELECT version, national_id FROM mpi_indexed WHERE patient_id = :p"),
                {"p": changed["id"]},
            ).one()
        assert (version, nid) == (2, None)
        slots = {slot_of(k) for k in index.block_keys(from_patient(changed))}
        with store.reading() as s:
            stored_slots = {
                slot
                for (slot,) in s.conn.execute(
                    text("SELECT slot FROM mpi_block WHERE patient_id = :p"), {"p": changed["id"]}
                )
            }
        assert stored_slots == slots
        for table in ("mpi_indexed", "mpi_block", "mpi_name", "mpi_word"):
            assert _rows(store, table, gone) == 0, table
    finally:
        store.close()
