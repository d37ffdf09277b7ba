"""The client registry's membership read from the tables (``StoredMembership``, with the store
index), on SQLite and PostgreSQL: it decides as the whole membership in memory does, through
links and every reviewer's action, with a cache so small it is dropped at nearly every
transaction; a new process holds none of it until asked; what another process changed, and
what a rolled-back transaction did, is not answered from the cache.

Registrations from the independent evaluation generator (``bench.registry_eval``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import text

from takamul.mpi.membership import Membership, StoredMembership
from takamul.mpi.service import ClientRegistry
from takamul.registry.record import from_patient
from takamul.store import Store
from tests.registry_world import evaluation_registrations, registered, urls
from tests.registry_world import open_store as _open

__all__ = ["urls"]  # the fixture


@pytest.fixture(scope="module")
def registrations(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return evaluation_registrations(tmp_path_factory, persons=120, seed=41)


def _registry(store: Store, cache: int | None = None) -> ClientRegistry:
    registry = ClientRegistry(store)
    if cache is not None:
        assert isinstance(registry.membership, StoredMembership)
        registry.membership.limit = cache
    registry.attach()
    return registry


def _put(store: Store, body: dict[str, Any]) -> None:
    store.write(lambda s: s.update("Patient", body["id"], body))


def _state(store: Store) -> tuple[list[list[tuple[str, bool]]], list[tuple[str, str, str]]]:
    """(persons as sorted (member, manual) lists, open reviews and active decisions)."""
    with store.reading() as s:
        members: dict[str, list[tuple[str, bool]]] = {}
        for pid, person, manual in s.conn.execute(
            text("SELECT patient_id, person_id, manual FROM mpi_member")
        ):
            members.setdefault(person, []).append((pid, bool(manual)))
        pairs = [
            (a, b, status)
            for a, b, status in s.conn.execute(
                text(
                    "SELECT patient_a, patient_b, status FROM mpi_review WHERE status = 'open'"
                    " UNION ALL SELECT patient_a, patient_b, decision FROM mpi_decision"
                    " WHERE active = :on ORDER BY 1, 2, 3"
                ),
                {"on": True},
            )
        ]
    return sorted(sorted(m) for m in members.values()), pairs


def _pair_in_one_person(store: Store, size: int = 3) -> tuple[str, str]:
    persons, _ = _state(store)
    group = next(m for m in persons if len(m) >= size)
    return group[0][0], group[1][0]


def test_membership_from_the_tables_decides_as_membership_in_memory(
    urls: tuple[str, str], registrations: list[dict[str, Any]]
) -> None:
    memory, stored = _open(urls[0], "memory"), _open(urls[1], "store")
    try:
        registries = [_registry(memory), _registry(stored, cache=8)]
        assert type(registries[0].membership) is Membership
        first, rest = registrations[:-40], registrations[-40:]
        for body in first:
            _put(memory, body)
            _put(stored, body)
        assert _state(stored) == _state(memory)

        # every reviewer's action, the same on both
        a, b = _pair_in_one_person(memory)
        events = []
        for registry in registries:
            split = registry.not_duplicate(a, b, reviewer="r1", reason="twins")
            registry.link(a, b, reviewer="r1", reason="one after all")
            registry.unlink(b, reviewer="r1")
            events.append(split)
        assert _state(stored) == _state(memory)
        for registry, event in zip(registries, events, strict=True):
            with pytest.raises(Exception, match="moved since"):
                registry.revert(event, reviewer="r2")  # b moved again since the split
        # the rest link around the decisions, and the refused pair's records come again
        again = [body for body in registrations if body["id"] in (a, b)]
        for body in rest + again:
            _put(memory, body)
            _put(stored, body)
        persons, pairs = _state(memory)
        assert _state(stored) == (persons, pairs)
        assert any(status == "not-duplicate" for *_, status in pairs)
        assert any(manual for m in persons for _, manual in m)

        # what the screens and the review API ask, alike
        for pid in (a, b, rest[0]["id"]):
            person_m, members_m, manual_m = registries[0].placement(pid)
            person_s, members_s, manual_s = registries[1].placement(pid)
            assert (members_m, manual_m) == (members_s, manual_s)
            assert (person_m is None) == (person_s is None)
        probe = {**registrations[0], "id": "probe"}
        assert [(m.patient_id, m.grade) for m in registries[0].match(probe)] == [
            (m.patient_id, m.grade) for m in registries[1].match(probe)
        ]
    finally:
        memory.close()
        stored.close()


def test_a_new_process_holds_no_membership_until_asked(
    urls: tuple[str, str], registrations: list[dict[str, Any]]
) -> None:
    registered(urls[1], registrations[:80])
    store = _open(urls[1], "store")
    try:
        registry = _registry(store, cache=1000)
        membership = registry.membership
        assert isinstance(membership, StoredMembership)
        assert len(membership) == 0  # nothing read at the start
        pid = registrations[0]["id"]
        person, members, _ = registry.placement(pid)
        assert person is not None and pid in members
        # what was asked, and its person's members: not the other persons
        assert 0 < len(membership) < 80
        assert set(membership.member_of) >= set(members)
    finally:
        store.close()


def test_the_cache_keeps_within_its_bound(
    urls: tuple[str, str], registrations: list[dict[str, Any]]
) -> None:
    store = _open(urls[0], "store")
    try:
        registry = _registry(store, cache=10)
        largest = 0
        for body in registrations[:120]:
            _put(store, body)
            largest = max(largest, len(registry.membership))  # type: ignore[arg-type]
        registry.refresh()
        assert len(registry.membership) <= 10  # type: ignore[arg-type]
        # between transactions it starts again, so a link's reads are all it ever holds
        assert largest < 60
    finally:
        store.close()


@contextmanager
def _two_processes(
    url: str, registrations: list[dict[str, Any]]
) -> Iterator[tuple[ClientRegistry, ClientRegistry, str, str]]:
    """Two registries on one store (two server processes), the registrations linked through
    the first, and two registrations of one person."""
    first, second = _open(url, "store"), _open(url, "store")
    try:
        one, other = _registry(first), _registry(second)
        for body in registrations:
            _put(first, body)
        yield (one, other, *_pair_in_one_person(first))
    finally:
        first.close()
        second.close()


def test_what_another_process_changed_is_read_again(
    urls: tuple[str, str], registrations: list[dict[str, Any]]
) -> None:
    with _two_processes(urls[0], registrations) as (one, other, a, b):
        assert other.person_of(a) == other.person_of(b)  # cached in the other process now
        one.not_duplicate(a, b, reviewer="r1")
        assert other.person_of(a) != other.person_of(b)
        assert b in other.membership.refused(a)
        _, members, manual = other.placement(b)
        assert a not in members and manual


def test_a_rolled_back_link_leaves_nothing_in_the_cache(
    urls: tuple[str, str], registrations: list[dict[str, Any]]
) -> None:
    store = _open(urls[0], "store")
    try:
        registry = _registry(store)
        for body in registrations[:40]:
            _put(store, body)
        a, _ = _pair_in_one_person(store, size=2)
        person, members, _ = registry.placement(a)
        twin = {**next(r for r in registrations if r["id"] == a), "id": "twin"}

        def fails(session: Any) -> None:
            session.update("Patient", "twin", twin)
            session.last_before_commit.append(lambda: 1 / 0)

        with pytest.raises(ZeroDivisionError):
            store.write(fails)
        assert registry.placement(a) == (person, members, False)
        assert registry.person_of("twin") is None
        _put(store, twin)
        assert registry.person_of("twin") == person
    finally:
        store.close()


def test_a_links_persons_come_with_its_candidates_records(
    urls: tuple[str, str], registrations: list[dict[str, Any]]
) -> None:
    """The candidates' persons are read in the round trip of their records (the stored index's
    companion), not by a look-up of their own."""
    registered(urls[0], registrations[:60])
    store = _open(urls[0], "store")
    try:
        registry = _registry(store)
        membership = registry.membership
        assert isinstance(membership, StoredMembership) and len(membership) == 0
        record = from_patient({**registrations[0], "id": "probe"})
        scored = registry.index.score(record, 0.2)
        assert scored
        # every candidate is linked: its person is cached, whole, with the records
        assert {s.patient_id for s in scored} <= set(membership.member_of)
        for pid in {s.patient_id for s in scored}:
            assert pid in membership.persons[membership.member_of[pid]]
        assert len(membership) >= len(scored) + 1  # the record's own id too (in no person)
    finally:
        store.close()


def test_a_person_read_between_two_moves_of_a_registration_is_not_kept_stale(
    urls: tuple[str, str], registrations: list[dict[str, Any]]
) -> None:
    """One process reads the person another moved a registration into, before its journal
    row is applied; the other moves it on; the catch-up must leave neither person wrong."""
    with _two_processes(urls[0], registrations) as (one, other, a, b):
        person, members, _ = one.placement(a)  # cached whole in the first process
        assert b in members
        other.unlink(b, reviewer="r1")  # b leaves for a new person
        alone = other.person_of(b)
        assert alone is not None and alone != person
        # read without a catch-up: the new person, whole, holding b
        assert one.membership.members(alone) == {b}
        other.link(a, b, reviewer="r1")  # and b comes back
        assert one.members_of(alone) == []
        assert set(one.members_of(person)) == set(members)
        assert one.person_of(b) == person
