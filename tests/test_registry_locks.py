"""Per-key registry locks on PostgreSQL (``Settings.registry_locks``): two stores opened on one
database, each with its own registry mirror, stand for two server processes. Unrelated
registrations link in parallel; two registrations of one person still take turns, and the
second joins the first's person; many concurrent registrations end one person each."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from takamul.mpi.schema import mpi_member
from takamul.mpi.service import ClientRegistry, _lock_key
from takamul.settings import Settings
from takamul.store.repository import Store
from takamul.store.rowcopy import DriverSql, driver_execute
from takamul.store.schema import resource
from tests.server import postgres_database
from tests.test_mpi import SA_ID, _luhn_id

Pair = tuple[tuple[Store, ClientRegistry], tuple[Store, ClientRegistry]]


def _two_processes(url: str, locks: str) -> Pair:
    opened = []
    for _ in range(2):
        store = Store(replace(Settings(database_url=url), registry_locks=locks))
        registry = ClientRegistry(store)
        registry.attach()
        opened.append((store, registry))
    return opened[0], opened[1]


@pytest.fixture
def database() -> Iterator[str]:
    with postgres_database() as url:
        yield url


def registration(given: str, family: str, birth: str, nid: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "name": [{"given": [given], "family": family}],
        "birthDate": birth,
        "gender": "female",
        "identifier": [{"system": SA_ID, "value": nid}],
    }


def create(store: Store, body: dict[str, Any]) -> str:
    return store.write(lambda s: s.create(body)).id


def paused(registry: ClientRegistry) -> tuple[threading.Event, threading.Event]:
    """Make the registry's next link stop once it holds its locks, before it places its
    record (so before it commits): (reached, release)."""
    reached, release = threading.Event(), threading.Event()
    link = registry._link

    def waiting(session: Any, record: Any) -> None:
        reached.set()
        assert release.wait(30), "the test never released the paused link"
        link(session, record)

    registry._link = waiting  # type: ignore[method-assign]
    return reached, release


def slowed(registry: ClientRegistry) -> None:
    """Widen the race: each placement takes 5 ms more, with whatever locks it holds."""
    place = registry._place

    def slow(session: Any, record: Any) -> None:
        time.sleep(0.005)
        place(session, record)

    registry._place = slow  # type: ignore[method-assign]


def in_thread(work: Callable[[], str]) -> tuple[threading.Thread, list[str]]:
    out: list[str] = []
    thread = threading.Thread(target=lambda: out.append(work()), daemon=True)
    thread.start()
    return thread, out


def guarded_person_writes(registry: ClientRegistry) -> list[str]:
    """Check, as every golden record is written, that the writing transaction holds the
    person's lock (or started the person itself): the invariant per-key locking rests on.
    Returns the persons found written without their lock."""
    unlocked: list[str] = []
    write = registry._write_persons

    def checked(session: Any, person_ids: Any) -> None:
        person_ids = list(person_ids)
        journal = session.extras["mpi-journal"]
        for person in person_ids:
            if person in journal.started or not journal.numbered_at_end:
                continue
            key = _lock_key("person", person)
            held = session.conn.exec_driver_sql(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND pid = pg_backend_pid() AND objsubid = 1"
                f" AND classid = {(key >> 32) & 0xFFFFFFFF} AND objid = {key & 0xFFFFFFFF}"
            ).scalar()
            if not held:
                unlocked.append(person)
        write(session, person_ids)

    registry._write_persons = checked  # type: ignore[method-assign]
    return unlocked


def persons(store: Store) -> dict[str, str]:
    with store.reading() as s:
        return dict(s.conn.execute(select(mpi_member.c.patient_id, mpi_member.c.person_id)).all())


def test_unrelated_registrations_link_while_a_link_holds_its_locks(database: str) -> None:
    (a, ra), (b, rb) = _two_processes(database, "per-key")
    try:
        reached, release = paused(ra)
        first, first_id = in_thread(
            lambda: create(a, registration("Noura", "Al-Harbi", "1984-03-02", "1098765437"))
        )
        assert reached.wait(10)
        # another person entirely: no block key, no person in common with the paused link
        other = create(b, registration("Salem", "Al-Dosari", "1961-11-20", _luhn_id()))
        assert first.is_alive(), "the first link went on; the test proves nothing"
        # another registration of the paused link's person (same ID and birth date): it waits
        # for the first to commit, then joins its person
        second, second_id = in_thread(
            lambda: create(b, registration("Nora", "Alharbi", "1984-03-02", "1098765437"))
        )
        second.join(0.5)
        assert second.is_alive(), "a registration of the same person did not wait its turn"
        release.set()
        first.join(10)
        second.join(10)
        members = persons(a)
        assert members[first_id[0]] == members[second_id[0]] != members[other]
        # both mirrors say so too, and the golden record holds both registrations
        for registry in (ra, rb):
            registry.refresh()
            assert registry.person_of(first_id[0]) == registry.person_of(second_id[0])
        with a.reading() as s:
            golden = orjson.loads(
                s.conn.execute(
                    select(resource.c.content).where(
                        resource.c.res_type == "Person",
                        resource.c.res_id == members[first_id[0]],
                    )
                ).scalar_one()
            )
        linked = {link["target"]["reference"] for link in golden["link"]}
        assert {f"Patient/{first_id[0]}", f"Patient/{second_id[0]}"} <= linked
    finally:
        a.close()
        b.close()


def test_global_locks_make_every_link_wait(database: str) -> None:
    (a, ra), (b, _) = _two_processes(database, "global")
    try:
        reached, release = paused(ra)
        first, _ = in_thread(
            lambda: create(a, registration("Reem", "Al-Qahtani", "1990-07-14", _luhn_id()))
        )
        assert reached.wait(10)
        other, _ = in_thread(
            lambda: create(b, registration("Fahad", "Al-Shammari", "1955-01-30", _luhn_id()))
        )
        other.join(0.5)
        assert other.is_alive(), "an unrelated link went on under the one global lock"
        release.set()
        for thread in (first, other):
            thread.join(10)
            assert not thread.is_alive()
    finally:
        a.close()
        b.close()


SPELLINGS = [
    ("Mohammed", "Muhammad", "محمد"),
    ("Abdulrahman", "Abdul Rahman", "عبد الرحمن"),
    ("Fatimah", "Fatima", "فاطمة"),
    ("Yousef", "Yusuf", "يوسف"),
]
FAMILY = [("Al-Ghamdi", "Alghamdi", "الغامدي"), ("Al-Mutairi", "Almutairi", "المطيري")]


def test_concurrent_registrations_across_processes_end_one_person_each(database: str) -> None:
    (a, ra), (b, rb) = _two_processes(database, "per-key")
    rng = random.Random(17)
    people = []
    for n in range(24):
        given, family = SPELLINGS[n % 4], FAMILY[n % 2]
        birth = f"{rng.randint(1940, 2010)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        nid = _luhn_id()
        people.append([registration(given[k], family[k], birth, nid) for k in range(3)])
    owner: dict[str, int] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    # the two processes register each person at the same moment (the race that splits a
    # person when nothing makes them take turns), then a third registration of it comes to
    # either while the next person's two race
    barrier = threading.Barrier(2)
    unlocked = [guarded_person_writes(registry) for registry in (ra, rb)]
    for registry in (ra, rb):
        slowed(registry)

    def worker(store: Store, side: int) -> None:
        for n, regs in enumerate(people):
            barrier.wait(30)
            for body in (regs[side],) if side == 0 or n % 2 else (regs[side], regs[2]):
                try:
                    pid = create(store, body)
                except BaseException as err:  # reported below, with the others
                    errors.append(err)
                    continue
                with lock:
                    owner[pid] = n
        if side == 0:
            for n, regs in enumerate(people):
                if n % 2:
                    with lock:
                        owner[create(store, regs[2])] = n

    threads = [threading.Thread(target=worker, args=(store, k)) for k, store in enumerate((a, b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        assert not errors, errors
        assert unlocked == [[], []], "golden records written without their person's lock"
        members = persons(a)
        assert set(members) == set(owner)
        by_person: dict[int, set[str]] = {}
        for pid, n in owner.items():
            by_person.setdefault(n, set()).add(members[pid])
        assert all(len(ids) == 1 for ids in by_person.values()), by_person
        assert len({next(iter(ids)) for ids in by_person.values()}) == len(people)
        for registry in (ra, rb):
            registry.refresh()
            assert {pid: registry.person_of(pid) for pid in members} == members
        # every golden record lists exactly its person's registrations (none lost to a
        # concurrent write of the same Person)
        with a.reading() as s:
            golden = {
                res_id: orjson.loads(content)
                for res_id, content in s.conn.execute(
                    select(resource.c.res_id, resource.c.content).where(
                        resource.c.res_type == "Person", resource.c.deleted.is_(False)
                    )
                )
            }
        assert set(golden) == set(members.values())
        for person, body in golden.items():
            listed = {link["target"]["reference"] for link in body["link"]}
            assert listed == {f"Patient/{p}" for p, q in members.items() if q == person}
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_reviewers_decisions_reach_the_other_processes_mirror(
    backend: str, tmp_path: Path
) -> None:
    with contextlib.ExitStack() as stack:
        url = (
            f"sqlite:///{tmp_path / 'store.sqlite'}"
            if backend == "sqlite"
            else stack.enter_context(postgres_database())
        )
        (a, ra), (b, rb) = _two_processes(url, "per-key")
        stack.callback(a.close)
        stack.callback(b.close)
        nid = _luhn_id()
        one = create(a, registration("Huda", "Al-Zahrani", "1979-05-09", nid))
        two = create(a, registration("Hoda", "Alzahrani", "1979-05-09", nid))
        rb.refresh()
        assert rb.person_of(one) == rb.person_of(two)
        ra.not_duplicate(one, two, reviewer="reviewer-1", reason="twins")
        rb.refresh()
        assert rb.person_of(one) != rb.person_of(two)
        assert two in rb.membership.refused(one) and one in rb.membership.refused(two)
        # a third registration through the other process stays out of the refused pair's way
        three = create(b, registration("Huda", "Al-Zahrani", "1979-05-09", nid))
        assert persons(b)[three] in (persons(b)[one], persons(b)[two])
        ra.refresh()
        ra.link(one, two, reviewer="reviewer-1", reason="one woman after all")
        rb.refresh()
        assert two not in rb.membership.refused(one)
        assert rb.person_of(one) == rb.person_of(two) == ra.person_of(one)


LOCK = DriverSql("SELECT pg_advisory_xact_lock(:key)")


def test_a_write_that_deadlocks_is_run_again(database: str) -> None:
    """Two links that lock persons in two rounds can deadlock; PostgreSQL's detector ends one
    (SQLSTATE 40P01) and ``Store.write`` runs it again from the start: both writes land."""
    store = Store(Settings(database_url=database, mpi=False))
    attempts = {"first": 0, "second": 0}
    barrier = threading.Barrier(2)

    def work(name: str, order: tuple[int, int]) -> Callable[[Any], str]:
        def locked(session: Any) -> str:
            attempts[name] += 1
            # on the driver, as the registry takes its locks: the driver's own error, not
            # SQLAlchemy's, comes out of the second
            driver_execute(session.conn, LOCK, {"key": order[0]})
            if attempts[name] == 1:
                barrier.wait(10)  # both hold their first lock: each now waits for the other's
            driver_execute(session.conn, LOCK, {"key": order[1]})
            return session.create(registration(name, "Al-Otaibi", "1970-01-01", _luhn_id())).id

        return locked

    try:
        results: dict[str, str] = {}
        threads = [
            threading.Thread(
                target=lambda n=name, o=order: results.update({n: store.write(work(n, o))})
            )
            for name, order in (("first", (901, 902)), ("second", (902, 901)))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert set(results) == {"first", "second"}
        assert sorted(attempts.values()) == [1, 2]  # the one the detector ended ran again
        with store.reading() as s:
            stored = s.conn.execute(
                select(resource.c.res_id).where(resource.c.res_type == "Patient")
            ).scalars()
            assert set(stored) == set(results.values())
    finally:
        store.close()


def test_a_link_locks_the_person_of_a_candidate_its_mirror_had_not_seen(database: str) -> None:
    """Process B registers a person; process A, whose mirror has not caught up, then registers
    the same person: the candidate A finds only in the catch-up that follows its key locks has
    its person locked too before A joins it."""
    (a, ra), (b, _) = _two_processes(database, "per-key")
    try:
        unlocked = guarded_person_writes(ra)
        nid = _luhn_id()
        first = create(b, registration("Maha", "Al-Anazi", "1988-02-17", nid))
        second = create(a, registration("Maha", "Alanazi", "1988-02-17", nid))
        assert persons(a)[first] == persons(a)[second]
        assert unlocked == []
    finally:
        a.close()
        b.close()
