"""Who belongs to whom in the client registry: each registration's person, each person's
members, the registrations a reviewer placed (``manual``), and the pairs a reviewer said are
two people (``not-duplicate``).

Two kinds, chosen with the candidate index (``Settings.registry_index``):

- ``Membership`` holds all of it in this process's memory, read whole at start-up: the
  fastest, and what an embedded store's population fits in.
- ``StoredMembership`` reads it from the tables (``mpi_member``, ``mpi_decision``) when a
  link, ``$match`` or a screen asks, and keeps what it read in a bounded cache: a national
  population's membership (about 630 bytes a registration in memory: some 48 GB at 77 million
  registrations) is in no process whole.

The cache stays true by three rules. What a transaction changes it loads first (the person
left and the person joined, whole), so a later look-up in the transaction finds this
transaction's moves, which may still wait in its queue of statements. A look-up never
overwrites what is cached, only fills what is not. The change journal's catch-up drops what
other processes changed (the registration, its old and new person, its refusals), to be read
again when next wanted. A rolled-back transaction drops the whole cache, and a cache grown
past its bound is dropped at the start of the next transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Connection, select

from takamul.mpi.connection import BoundConnection
from takamul.mpi.schema import mpi_decision, mpi_member
from takamul.store.repository import Store
from takamul.store.rowcopy import DriverSql, driver_execute, driver_pipeline, listed, numbered

__all__ = ["CACHE_PATIENTS", "Membership", "StoredMembership"]

Undo = list[Callable[[], None]]

# registrations a stored membership keeps before it starts again empty (some 60 MB)
CACHE_PATIENTS = 100_000
# patients a look-up names in one statement (SQLite's bound-parameter limit is far above)
CHUNK = 200
# the whole persons of the given patients: the members of a candidate's person, in one read
PERSONS_OF = (
    "SELECT person_id, patient_id, manual FROM mpi_member WHERE person_id IN"
    " (SELECT person_id FROM mpi_member WHERE patient_id IN ({items}))"
)
MEMBERS = DriverSql("SELECT patient_id, manual FROM mpi_member WHERE person_id = :person")
REFUSALS_OF = (
    "SELECT patient_a, patient_b FROM mpi_decision"
    " WHERE active = :active AND decision = 'not-duplicate'"
    " AND (patient_a IN ({items}) OR patient_b IN ({items}))"
)
ANY_MEMBER = DriverSql("SELECT 1 FROM mpi_member LIMIT 1")


class Membership:
    """The registry's membership in this process's memory."""

    def __init__(self) -> None:
        self.member_of: dict[str, str] = {}
        self.persons: dict[str, set[str]] = {}
        self.manual: set[str] = set()
        self.cannot: dict[str, set[str]] = {}

    # -- what the registry asks -------------------------------------------------------------

    def person_of(self, pid: str) -> str | None:
        return self.member_of.get(pid)

    def members(self, person: str) -> set[str]:
        """The registrations in ``person`` (not to be changed by the caller)."""
        return self.persons.get(person, set())

    def is_manual(self, pid: str) -> bool:
        """A reviewer placed the registration: automatic linking never moves it."""
        return pid in self.manual

    def refused(self, pid: str) -> set[str]:
        """The registrations a reviewer said are not ``pid``'s person."""
        return self.cannot.get(pid, set())

    def any_linked(self) -> bool:
        return bool(self.member_of)

    def load(self, patient_ids: Iterable[str]) -> None:
        """Have these registrations' persons (whole) and refusals at hand: nothing to do in
        memory, a read of those not cached in the store."""

    # -- start-up ---------------------------------------------------------------------------

    def read_all(self, conn: Connection) -> None:
        """Read every registration's person and every refusal (a start)."""
        for row in conn.execute(select(mpi_member)):
            self.set_member(row.patient_id, row.person_id, bool(row.manual), undo=None)
        for row in conn.execute(
            select(mpi_decision.c.patient_a, mpi_decision.c.patient_b).where(
                mpi_decision.c.active, mpi_decision.c.decision == "not-duplicate"
            )
        ):
            self.cannot.setdefault(row.patient_a, set()).add(row.patient_b)
            self.cannot.setdefault(row.patient_b, set()).add(row.patient_a)

    def linked_in_batch(self, person: str, members: list[str]) -> None:
        """A start's batch put ``members``, none of them linked before, in the new ``person``."""
        for pid in members:
            self.set_member(pid, person, False, undo=None)

    # -- changes, in a transaction (with its undo log) or from the journal ------------------

    def start(self, person: str) -> None:
        """``person`` is new (no registration is in it yet)."""

    def set_member(self, pid: str, person: str | None, manual: bool, undo: Undo | None) -> None:
        old = self.member_of.get(pid)
        was_manual = pid in self.manual
        if old is not None:
            self.persons[old].discard(pid)
            if not self.persons[old]:
                del self.persons[old]
        if person is None:
            self.member_of.pop(pid, None)
        else:
            self.member_of[pid] = person
            self.persons.setdefault(person, set()).add(pid)
        if manual:
            self.manual.add(pid)
        else:
            self.manual.discard(pid)
        if undo is not None:
            undo.append(lambda: self.set_member(pid, old, was_manual, None))

    def forbid(self, a: str, b: str, undo: Undo, on: bool = True) -> None:
        """Record (``on``) or retire a not-duplicate pair."""
        for x, y in ((a, b), (b, a)):
            partners = self.cannot.setdefault(x, set())
            had = y in partners
            if on:
                partners.add(y)
            else:
                partners.discard(y)
            undo.append(
                lambda p=partners, y=y, had=had: p.add(y) if had else p.discard(y)  # type: ignore[misc]
            )

    def follow(self, pid: str, person: str | None, manual: bool) -> None:
        """Another process committed ``pid`` in ``person`` (None: in none); its refusals come
        again through ``follow_refusals``."""
        self.set_member(pid, person, manual, None)
        for partner in self.cannot.pop(pid, set()):
            self.cannot.get(partner, set()).discard(pid)

    def follow_refusals(self, changed: set[str], pairs: Iterable[tuple[str, str]]) -> None:
        """The active not-duplicate pairs of the ``changed`` patients, as committed."""
        for a, b in pairs:
            if a in changed or b in changed:
                self.cannot.setdefault(a, set()).add(b)
                self.cannot.setdefault(b, set()).add(a)

    # -- the transaction's connection and the cache's life (nothing to do in memory) --------

    def bind(self, conn: Connection | None) -> None:
        """Read on ``conn`` in this thread from now on (None: short reads of the store)."""

    def rolled_back(self) -> None:
        """A transaction rolled back after its undo log was replayed."""

    def trim(self) -> None:
        """Between transactions: keep the cache within its bound."""


class StoredMembership(Membership):
    """The registry's membership in the store's tables, with what was read cached."""

    def __init__(self, store: Store, limit: int = CACHE_PATIENTS) -> None:
        super().__init__()
        self.store = store
        self.limit = limit
        # patients whose person (or none) is in ``member_of`` and manual mark in ``manual``
        self._known: set[str] = set()
        # persons whose every member is in ``persons``
        self._whole: set[str] = set()
        # patients whose not-duplicate partners are all in ``cannot``
        self._refusals: set[str] = set()
        self._conn = BoundConnection(store)

    def __len__(self) -> int:
        """Registrations cached."""
        return len(self._known)

    # -- reads --------------------------------------------------------------------------------

    def bind(self, conn: Connection | None) -> None:
        self._conn.bind(conn)

    def person_of(self, pid: str) -> str | None:
        if pid not in self._known:
            self.load([pid])
        return self.member_of.get(pid)

    def members(self, person: str) -> set[str]:
        if person not in self._whole:
            self._read_person(person)
        return self.persons.get(person, set())

    def is_manual(self, pid: str) -> bool:
        if pid not in self._known:
            self.load([pid])
        return pid in self.manual

    def refused(self, pid: str) -> set[str]:
        if pid not in self._refusals:
            self.load([pid])
        return self.cannot.get(pid, set())

    def any_linked(self) -> bool:
        if self.member_of:
            return True
        with self._conn() as conn:
            return bool(driver_execute(conn, ANY_MEMBER, {}))

    def load(self, patient_ids: Iterable[str]) -> None:
        """Read the persons (whole) and refusals of the patients not cached: one round trip
        for up to ``CHUNK`` of them on PostgreSQL."""
        unknown = sorted(
            {p for p in patient_ids if p not in self._known or p not in self._refusals}
        )
        if not unknown:
            return
        with self._conn() as conn:
            for start in range(0, len(unknown), CHUNK):
                chunk = unknown[start : start + CHUNK]
                params = {**numbered(chunk), "active": True}
                persons, refusals = driver_pipeline(
                    conn,
                    [
                        (listed(PERSONS_OF, ":p{i}", len(chunk)), params),
                        (listed(REFUSALS_OF, ":p{i}", len(chunk)), params),
                    ],
                )
                self._fill_persons(persons, chunk)
                self._fill_refusals(refusals, chunk)

    def _read_person(self, person: str) -> None:
        with self._conn() as conn:
            rows = driver_execute(conn, MEMBERS, {"person": person})
        self._fill_persons([(person, pid, manual) for pid, manual in rows], [])

    def _fill_persons(self, rows: Iterable[tuple[Any, ...]], asked: list[str]) -> None:
        """Cache what the rows say of persons and patients not cached yet; the ``asked``
        patients in no row are in no person."""
        found: dict[str, list[tuple[str, bool]]] = {}
        for person, pid, manual in rows:
            found.setdefault(person, []).append((pid, bool(manual)))
        for person, members in found.items():
            if person in self._whole:
                continue
            self._whole.add(person)
            cached = self.persons.setdefault(person, set())
            for pid, manual in members:
                cached.add(pid)
                if pid in self._known:
                    continue
                self._known.add(pid)
                self.member_of[pid] = person
                if manual:
                    self.manual.add(pid)
        for pid in asked:
            self._known.add(pid)  # in a person read above, or in none

    def _fill_refusals(self, rows: Iterable[tuple[Any, ...]], asked: list[str]) -> None:
        partners: dict[str, set[str]] = {pid: set() for pid in asked}
        for a, b in rows:
            for x, y in ((a, b), (b, a)):
                if x in partners:
                    partners[x].add(y)
        for pid, found in partners.items():
            if pid not in self._refusals:
                self._refusals.add(pid)
                self.cannot[pid] = found

    # -- changes --------------------------------------------------------------------------------

    def linked_in_batch(self, person: str, members: list[str]) -> None:
        # in the tables; read when wanted (a start's batch would fill the cache past its bound)
        for pid in members:
            self._drop_patient(pid)

    def read_all(self, conn: Connection) -> None:
        """Nothing is read whole: the tables answer each look-up."""

    def start(self, person: str) -> None:
        self._whole.add(person)

    def set_member(self, pid: str, person: str | None, manual: bool, undo: Undo | None) -> None:
        # the persons it leaves and joins whole in the cache before they change (rule one)
        old = self.person_of(pid)
        for changed in (old, person):
            if changed is not None and changed not in self._whole:
                self._read_person(changed)
        # no undo: a rollback drops the whole cache (``rolled_back``), and an undo step that
        # read the tables would do so on a transaction that has failed
        super().set_member(pid, person, manual, None)

    def forbid(self, a: str, b: str, undo: Undo, on: bool = True) -> None:
        self.load([a, b])
        super().forbid(a, b, [], on)  # no undo, as ``set_member``

    def follow(self, pid: str, person: str | None, manual: bool) -> None:
        # dropped, not applied: the cache holds only what it read whole
        self._drop_person(self.member_of.get(pid) if pid in self._known else None)
        self._drop_person(person)
        self._drop_patient(pid)
        for partner in self.cannot.pop(pid, set()):
            self._drop_refusals(partner)
        self._refusals.discard(pid)

    def follow_refusals(self, changed: set[str], pairs: Iterable[tuple[str, str]]) -> None:
        for a, b in pairs:
            self._drop_refusals(a)
            self._drop_refusals(b)

    def _drop_person(self, person: str | None) -> None:
        if person is not None:
            self._whole.discard(person)
            self.persons.pop(person, None)

    def _drop_patient(self, pid: str) -> None:
        if pid in self._known:
            self._drop_person(self.member_of.pop(pid, None))
            self._known.discard(pid)
            self.manual.discard(pid)

    def _drop_refusals(self, pid: str) -> None:
        self._refusals.discard(pid)
        self.cannot.pop(pid, None)

    # -- the cache's life -------------------------------------------------------------------------

    def rolled_back(self) -> None:
        # entries read in the transaction may show its own writes, now undone
        self._clear()

    def trim(self) -> None:
        if len(self._known) > self.limit or len(self._refusals) > self.limit:
            self._clear()

    def _clear(self) -> None:
        self.member_of.clear()
        self.persons.clear()
        self.manual.clear()
        self.cannot.clear()
        self._known.clear()
        self._whole.clear()
        self._refusals.clear()
