"""The patient finder with its words in the store (``StoredNameFinder``), on SQLite and
PostgreSQL: it answers as the in-memory finder does on the same registrations, follows
updates and deletions in the registry's transaction, and its rows are rebuilt by a start on a
store indexed before they existed.

The registrations come from the independent evaluation generator (``bench.registry_eval``:
Arabic, Persian and Latin spellings, typing errors), and the queries are made from their names
as a clerk types them: whole names, a first name and an unfinished second word, one or two
letters, across scripts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from takamul.mpi.check import check_registry_index
from takamul.mpi.service import ClientRegistry
from takamul.mpi.stored_finder import StoredNameFinder
from takamul.registry.finder import NameFinder
from takamul.registry.record import from_patient
from takamul.settings import Settings
from takamul.store import Store
from tests.registry_world import evaluation_registrations
from tests.server import postgres_database


@pytest.fixture(scope="module")
def registrations(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return evaluation_registrations(tmp_path_factory, persons=60, seed=57)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'finder.sqlite'}"
        return
    with postgres_database() as database:
        yield database


def _open(url: str) -> Store:
    return Store(dataclasses.replace(Settings(database_url=url), registry_index="store"))


def _queries(registrations: list[dict[str, Any]]) -> list[str]:
    out: set[str] = set()
    for body in registrations[::3]:
        for name in body.get("name", []):
            words = [*name.get("given", []), name.get("family", "")]
            words = [w for w in " ".join(words).split() if w]
            if not words:
                continue
            out.add(" ".join(words))
            out.add(words[0])
            out.add(words[0][:1])
            out.add(words[0][:2])
            if len(words) > 1:
                out.add(f"{words[0]} {words[-1][:2]}")
                out.add(f"{words[-1]} {words[0]}")
    out |= {"Mohammed", "محمد", "Salma al", "zz", "ـ"}
    return sorted(out)


def test_the_stored_finder_answers_as_the_memory_finder(
    url: str, registrations: list[dict[str, Any]]
) -> None:
    store = _open(url)
    try:
        registry = ClientRegistry(store)
        registry.attach()
        for body in registrations:
            store.write(lambda s, b=body: s.update("Patient", b["id"], b))  # type: ignore[misc]
        memory = NameFinder()
        memory.add_many(from_patient(body) for body in registrations)
        stored = StoredNameFinder(store)
        assert stored.usable()
        queries = _queries(registrations)
        assert len(queries) > 50
        within = frozenset(body["id"] for body in registrations[::2])
        answered = 0
        for query in queries:
            expected = memory.find(query, limit=200)
            assert stored.find(query, limit=200) == expected, query
            assert stored.find(query, limit=200, prefix=False) == memory.find(
                query, limit=200, prefix=False
            ), query
            assert stored.find(query, limit=50, within=within) == memory.find(
                query, limit=50, within=within
            ), query
            answered += bool(expected)
        assert answered > len(queries) // 2  # the queries do find people

        # an update is searched by its new name, a deleted Patient no more
        first = registrations[0]
        renamed = {**first, "name": [{"given": ["Zubaida"], "family": "Qutrub"}]}
        store.write(lambda s: s.update("Patient", first["id"], renamed))
        assert stored.find("Zubaida Qut") == [first["id"]]
        store.write(lambda s: s.delete("Patient", first["id"]))
        assert stored.find("Zubaida") == []
        assert check_registry_index(store).clean
    finally:
        store.close()


def test_a_start_writes_the_words_of_a_store_indexed_before_them(
    url: str, registrations: list[dict[str, Any]]
) -> None:
    """A store indexed before ``mpi_word`` existed (its upgrade adds the table empty): the next
    start finds the sample's words missing and indexes every Patient again."""
    store = _open(url)
    try:
        ClientRegistry(store).attach()
        for body in registrations[:30]:
            store.write(lambda s, b=body: s.update("Patient", b["id"], b))  # type: ignore[misc]
        with store.writer.begin() as conn:
            conn.execute(text("DELETE FROM mpi_word"))
        assert not StoredNameFinder(store).usable()
        assert check_registry_index(store).damaged > 0
    finally:
        store.close()
    store = _open(url)
    try:
        ClientRegistry(store).attach()
        assert StoredNameFinder(store).usable()
        assert check_registry_index(store).clean
        name = registrations[5]["name"][0]
        typed = " ".join([*name.get("given", []), name.get("family", "")]).strip()
        assert registrations[5]["id"] in StoredNameFinder(store).find(typed)
    finally:
        store.close()
