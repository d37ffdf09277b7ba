"""Who belongs to whom in the client registry: each registration's person, each person's
members, the registrations a reviewer placed (``manual``), and the pairs a reviewer said are
two people (``not-duplicate``).

Two kinds, chosen with the candidate index (``Settings.registry_index``):

- ``Membership`` holds all of it in this process's memory, read whole at start-up: the
  fastest, and what an embedded store's population fits in.
- ``StoredMembership`` reads who belongs to whom from ``mpi_member`` when a link, ``$match``
  or a screen asks, and keeps what it read in a bounded cache: a national population's
  membership (about 630 bytes a registration in memory: some 48 GB at 77 million
  registrations) is in no process whole. A link's read rides in the round trip that fetches its
  candidates' records (``riding``). The not-duplicate pairs stay whole in memory: reviewers
  make them one by one, so they are few, and every link asks for its record's.

The cache holds registrations' persons and persons whole, and stays true by these rules. What
a transaction changes it reads first (the person left and the person joined, whole), so its
later look-ups find its own moves, which may still wait in its queue of statements. A read
fills what is not cached; a registration it finds in another person than the cached one moved
there since, and the other person is dropped. The change journal's catch-up applies what other
processes committed (a registration's person as committed now) to what is cached. A
rolled-back transaction drops the whole cache, and a cache grown past its bound is dropped at
the start of the next transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Connection, select

from takamul.mpi.connection import BoundConnection, Riding
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
# on PostgreSQL an array: one statement whatever the number, prepared once by the driver (a
# list of each length was a statement of its own, planned anew; behind four processes taking
# turns, links took about a tenth longer than with membership in memory)
PERSONS_OF_PG = DriverSql(
    "SELECT person_id, patient_id, manual FROM mpi_member WHERE person_id IN"
    " (SELECT person_id FROM mpi_member WHERE patient_id = ANY(CAST(:ids AS varchar[])))"
)
MEMBERS = DriverSql("SELECT patient_id, manual FROM mpi_member WHERE person_id = :person")
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
        self._read_refusals(conn)

    def _read_refusals(self, conn: Connection) -> None:
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
        self._forget_refusals(pid)

    def _forget_refusals(self, pid: str) -> None:
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
    """The registry's membership in the store's tables, with what was read cached; the
    not-duplicate pairs whole in memory, as ``Membership`` keeps them."""

    def __init__(self, store: Store, limit: int = CACHE_PATIENTS) -> None:
        super().__init__()
        self.store = store
        self.limit = limit
        # patients whose person (or none) is in ``member_of`` and manual mark in ``manual``
        self._known: set[str] = set()
        # persons whose every member is in ``persons``
        self._whole: set[str] = set()
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

    def any_linked(self) -> bool:
        if self.member_of:
            return True
        with self._conn() as conn:
            return bool(driver_execute(conn, ANY_MEMBER, {}))

    def load(self, patient_ids: Iterable[str]) -> None:
        """Read the persons (whole) of the patients not cached: a statement for up to
        ``CHUNK`` of them, in one round trip on PostgreSQL."""
        riding = self.riding(patient_ids)
        if riding is not None:
            statements, took = riding
            with self._conn() as conn:
                took(driver_pipeline(conn, statements))

    def riding(self, patient_ids: Iterable[str]) -> Riding | None:
        """The statements that read the persons of the patients not cached, to send with
        another read (the stored index's fetch of candidates' records), and what takes their
        rows; None when every one is cached."""
        unknown = sorted({p for p in patient_ids if p not in self._known})
        if not unknown:
            return None
        chunks = [unknown[start : start + CHUNK] for start in range(0, len(unknown), CHUNK)]
        statements = [
            (PERSONS_OF_PG, {"ids": chunk})
            if self.store.dialect == "postgresql"
            else (listed(PERSONS_OF, ":p{i}", len(chunk)), numbered(chunk))
            for chunk in chunks
        ]

        def took(results: list[list[Any]]) -> None:
            for chunk, rows in zip(chunks, results, strict=True):
                self._fill_persons(rows, chunk)

        return statements, took

    def _read_person(self, person: str) -> None:
        with self._conn() as conn:
            rows = driver_execute(conn, MEMBERS, {"person": person})
        self._fill_persons([(person, pid, manual) for pid, manual in rows], [])

    def _fill_persons(self, rows: Iterable[tuple[Any, ...]], asked: list[str]) -> None:
        """Cache the persons the rows hold whole, those not cached whole yet; the ``asked``
        patients in no row are in no person.

        A member cached in another person moved there since that person was read (by another
        process, whose journal row is not applied yet): the rows are newer, and the other
        person is dropped. (Never one this transaction moved: the persons it left and joined
        were cached whole before it did.) So a person cached whole holds only members cached
        in it, which is what lets ``_drop_patient`` drop the one person that may hold it."""
        found: dict[str, list[tuple[str, bool]]] = {}
        for person, pid, manual in rows:
            found.setdefault(person, []).append((pid, bool(manual)))
        for person, members in found.items():
            if person in self._whole:
                continue
            self._whole.add(person)
            self.persons[person] = {pid for pid, _ in members}
            for pid, manual in members:
                elsewhere = self.member_of.get(pid)
                if elsewhere is not None and elsewhere != person:
                    self._drop_person(elsewhere)
                self._known.add(pid)
                self.member_of[pid] = person
                if manual:
                    self.manual.add(pid)
                else:
                    self.manual.discard(pid)
        for pid in asked:
            if pid not in self._known:
                self._known.add(pid)  # in no person
                self.member_of.pop(pid, None)

    # -- changes --------------------------------------------------------------------------------

    def read_all(self, conn: Connection) -> None:
        """The refusals only: the tables answer each look-up of a person."""
        self._read_refusals(conn)

    def linked_in_batch(self, person: str, members: list[str]) -> None:
        # in the tables; read when wanted (a start's batch would fill the cache past its bound)
        for pid in members:
            self._drop_patient(pid)

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

    def follow(self, pid: str, person: str | None, manual: bool) -> None:
        """Applied where cached: the journal gives the registration's person as committed
        now, and a person cached whole loses or gains it (one not cached gains nothing, and
        is read whole when wanted). Applying a move the cache has read already changes
        nothing."""
        old = self.member_of.get(pid) if pid in self._known else None
        if old is not None and old != person and old in self._whole:
            self.persons[old].discard(pid)
        if person is not None and person in self._whole:
            self.persons[person].add(pid)
        self._known.add(pid)
        if person is None:
            self.member_of.pop(pid, None)
        else:
            self.member_of[pid] = person
        if manual:
            self.manual.add(pid)
        else:
            self.manual.discard(pid)
        self._forget_refusals(pid)  # whole in memory: as ``Membership`` follows them

    def _drop_person(self, person: str | None) -> None:
        if person is not None:
            self._whole.discard(person)
            self.persons.pop(person, None)

    def _drop_patient(self, pid: str) -> None:
        if pid in self._known:
            self._drop_person(self.member_of.pop(pid, None))
            self._known.discard(pid)
            self.manual.discard(pid)

    # -- the cache's life -------------------------------------------------------------------------

    def rolled_back(self) -> None:
        # entries read in the transaction may show its own writes, now undone (the refusals,
        # whole in memory, the undo log restored)
        self._clear()

    def trim(self) -> None:
        if len(self._known) > self.limit:
            self._clear()

    def _clear(self) -> None:
        self.member_of.clear()
        self.persons.clear()
        self.manual.clear()
        self._known.clear()
        self._whole.clear()
