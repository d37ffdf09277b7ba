"""The client registry in the shared record: every Patient create or update is linked as it
is stored, golden records are FHIR ``Person`` resources, ``Patient/$match`` scores a resource
against the registry, and reviewers resolve uncertain pairs.

State lives in the database (``mpi_*`` tables and the Person resources, written in the same
transaction as the Patient) and is mirrored in memory for speed: the candidate index and who
belongs to whom. A transaction links the Patients it wrote at its end, just before it commits,
and the mirror changes under one lock held from then until it commits or rolls back; a
rollback replays an undo log, so memory never shows a change the database does not have.

Several server processes (``serve --workers 4``, or several hosts on one PostgreSQL) each keep
a mirror, and link against the same, current state: a transaction's linking takes locks in the
database too, held to commit, then catches up with what other processes committed (in the
locks' round trip): every registry transaction writes a row to the change journal
(``mpi_change``) for each patient whose record, person or decisions it changed, and the process
takes those patients' state (record, membership, not-duplicate pairs) from the rows numbered
above the last it applied. On PostgreSQL a link locks its registrations' block keys and the
persons it may change (``_lock_for_links``; ``Settings.registry_locks = "global"``: the
registry's one lock), and a reviewer's action the registry's lock alone; on SQLite every write
transaction already holds the one write lock from BEGIN IMMEDIATE. Journal rows are numbered
only under a lock held to the commit, so their numbers follow commit order and none is ever
skipped. Reads (``$match``, a patient's person, the review queue) catch up the same way
first. The candidate index is in each process's memory (``CandidateIndex``: fastest, a
candidate's record a dictionary lookup away) or, with ``Settings.registry_index = "store"``, in
the database's tables that every process shares (``stored_index``: a population no process
could hold, at a query or two a link), and who belongs to whom with it (``membership``: whole
in memory, or read from the tables through a bounded cache); the journal keeps either current,
and the rest of the registry works alike with both.

Rules, in order of precedence:
1. A reviewer's decision: records a reviewer placed (``manual``) are never moved by automatic
   linking; a 'not-duplicate' pair is never linked automatically.
2. A person holding a different valid national ID than the record is not joined automatically
   (an ID seen on records born a generation apart is nobody's proof, as in batch clustering).
3. The most probable candidate at or above the model's threshold decides the person.
Candidates between the review floor and the threshold in another person go to the review
queue with the evidence per field.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources as package_data
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    and_,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url

from takamul.fhir.outcome import FhirError
from takamul.mpi.membership import Membership, StoredMembership
from takamul.mpi.persons import Member, assurance_level, match_grade, person_body
from takamul.mpi.schema import (
    mpi_change,
    mpi_decision,
    mpi_event,
    mpi_member,
    mpi_metadata,
    mpi_model,
    mpi_review,
)
from takamul.mpi.stored_index import TABLES as INDEX_TABLES
from takamul.mpi.stored_index import StoredCandidateIndex
from takamul.registry.index import CandidateIndex, ScoredCandidate, score_pair
from takamul.registry.linking import LinkageModel, gc_paused, link_records
from takamul.registry.record import RegistryRecord, from_patient
from takamul.store.bulkwrite import prepare, put_many
from takamul.store.guard import unguarded
from takamul.store.repository import Session, Store, WriteOptions
from takamul.store.rowcopy import DriverSql, driver_execute, driver_pipeline, listed, numbered
from takamul.store.schema import resource

__all__ = [
    "ClientRegistry",
    "MatchResult",
    "default_model",
    "index_location",
    "stored_model",
    "unlinked_patients",
]

log = logging.getLogger(__name__)

# golden records are assembled from stored (validated) Patients; tests validate their shape
MPI_SOURCE = WriteOptions(source="urn:takamul:mpi", trusted=True)
AUTOMATIC = "takamul-mpi"
LOCK_TIMEOUT = 30.0
# pg_advisory_xact_lock key of registry changes ("takmpi" in ASCII), held by one transaction
# of all server processes at a time, and the session lock of one process's start-up linking
REGISTRY_LOCK = 0x74616B6D7069
START_LOCK = 0x74616B6D7073
# The statements of every link, straight on the driver (``DriverSql``): through SQLAlchemy's
# execution each cost more than its round trip (a linked Patient create ran about ten).
TAKE_REGISTRY_LOCK = DriverSql("SELECT pg_advisory_xact_lock(:key)")
# Per-key locking (``Settings.registry_locks``): a link holds the registry's lock shared (a
# reviewer's decision, or a start-up's batch, takes it alone), then its block keys and the
# persons it may change; its journal rows are numbered under JOURNAL_LOCK, held from there to
# the commit, so that their numbers still follow commit order.
# statements of a list of n items (``rowcopy.listed``)
QUEUE_REVIEWS = (
    "INSERT INTO mpi_review (patient_a, patient_b, probability, evidence, status, created)"
    " VALUES {items} ON CONFLICT (patient_a, patient_b) DO UPDATE"
    " SET probability = excluded.probability, evidence = excluded.evidence"
    " WHERE mpi_review.status = 'open'"
)
QUEUED_REVIEW = "(:a{i}, :b{i}, :probability{i}, :evidence{i}, 'open', :now)"
SETTLE_REVIEWS = (
    "UPDATE mpi_review SET status = 'resolved', decided_by = :by, decided_at = :now"
    " WHERE status = 'open' AND (patient_a, patient_b) IN ({items})"
)
NOTE_CHANGES = "INSERT INTO mpi_change (patient_id) VALUES {items} RETURNING seq"
MEMBERS_IN = (
    "SELECT m.patient_id, m.probability, m.manual, r.content FROM mpi_member m"
    " LEFT JOIN resource r ON r.res_type = :patient AND r.res_id = m.patient_id"
    " AND r.deleted = :deleted WHERE m.patient_id IN ({items})"
)
TAKE_SHARED_REGISTRY_LOCK = DriverSql("SELECT pg_advisory_xact_lock_shared(:key)")
JOURNAL_LOCK = 0x74616B6D706A
# the keys in the order given (sorted by the caller: every transaction takes them in one order)
TAKE_LOCKS = DriverSql(
    "SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:keys AS bigint[])) AS t(k)"
)
# rounds of person locks before a link gives up (each round locks the persons that what the
# last round caught up with brought in; a second round is rare, a third rarer)
PERSON_LOCK_ROUNDS = 6
# The journal rows above the last a mirror applied, each with its patient's state as the
# database has it now (Patient, person; the not-duplicate pairs come from CHANGED_REFUSALS):
# the catch-up reads it in the lock's round trip instead of reloading the patients after it.
CHANGES_SINCE = DriverSql(
    "SELECT c.seq, c.patient_id, r.content, m.person_id, m.manual FROM mpi_change c"
    " LEFT JOIN resource r ON r.res_type = :patient AND r.res_id = c.patient_id"
    " AND r.deleted = :deleted"
    " LEFT JOIN mpi_member m ON m.patient_id = c.patient_id"
    " WHERE c.seq > :seen ORDER BY c.seq"
)
CHANGED_REFUSALS = DriverSql(
    "SELECT d.patient_a, d.patient_b FROM mpi_decision d"
    " WHERE d.active = :active AND d.decision = 'not-duplicate' AND ("
    "d.patient_a IN (SELECT patient_id FROM mpi_change WHERE seq > :seen)"
    " OR d.patient_b IN (SELECT patient_id FROM mpi_change WHERE seq > :seen))"
)
NOTE_CHANGE = DriverSql("INSERT INTO mpi_change (patient_id) VALUES (:pid) RETURNING seq")
LEAVE_PERSON = DriverSql("DELETE FROM mpi_member WHERE patient_id = :pid")
# one statement whether or not the record was in a person (SQLite and PostgreSQL share the
# upsert's syntax): a delete and an insert were two round trips under the registry's lock
JOIN_PERSON = DriverSql(
    "INSERT INTO mpi_member (patient_id, person_id, probability, manual, updated)"
    " VALUES (:pid, :person, :probability, :manual, :updated)"
    " ON CONFLICT (patient_id) DO UPDATE SET person_id = excluded.person_id,"
    " probability = excluded.probability, manual = excluded.manual, updated = excluded.updated"
)
LOG_EVENT = DriverSql(
    "INSERT INTO mpi_event (at, kind, actor, reason, detail)"
    " VALUES (:at, :kind, :actor, :reason, :detail) RETURNING id"
)
# session.extras key of the Patients a transaction wrote, by id: their last body (None: deleted)
_WRITTEN = "mpi-written"
# Below this many unlinked Patients in a registry with no persons yet, start-up links them one
# by one (the real-time path); above it, as a batch.
BATCH_FROM = 2000
# a start that indexed more Patients than this refreshes the planner's statistics after
ANALYZE_AFTER = 10_000


def unlinked_patients(store: Store) -> int:
    """How many current Patients have no person yet (bulk-loaded since the registry last ran):
    one anti-join, without loading the registry."""
    mpi_metadata.create_all(store.writer)
    with store.reader.connect() as conn:
        count = conn.execute(select(func.count()).select_from(resource).where(*_UNLINKED)).scalar()
    return int(count or 0)


# current Patients without a person
_UNLINKED = (
    resource.c.res_type == "Patient",
    resource.c.deleted.is_(False),
    ~select(mpi_member.c.patient_id).where(mpi_member.c.patient_id == resource.c.res_id).exists(),
)


def index_location(store: Store) -> str:
    """Where the candidate index is kept for ``store``: "memory" or "store"."""
    where = store.settings.registry_index
    if where not in ("memory", "store", "auto"):
        raise ValueError(
            f"registry_index (TAKAMUL_REGISTRY_INDEX) must be 'memory', 'store' or 'auto', "
            f"not {where!r}"
        )
    if where == "auto":
        # what a country runs holds the population in its tables; an embedded store is
        # one facility's or district's, which memory holds and answers fastest
        return "store" if store.dialect == "postgresql" else "memory"
    return where


def stored_model(store: Store) -> LinkageModel | None:
    """The newest linkage model trained on the store (``takamul mpi train``), if any."""
    with store.reading() as s:
        row = s.conn.execute(
            select(mpi_model.c.model).order_by(mpi_model.c.id.desc()).limit(1)
        ).first()
    return LinkageModel.from_json(row.model) if row else None


def default_model() -> LinkageModel:
    """The packaged model (trained on synthetic tuning data; scripts/derive_default_model.py)."""
    data = package_data.files("takamul.registry").joinpath("data/default-model.json").read_bytes()
    return LinkageModel.from_json(data)


# Pairs at or above this probability, below the threshold, go to a reviewer. λ is the share of
# all pairs of records that match (u is that of random pairs), so probabilities are those of a
# whole population: a pair at 0.2 is the same person one time in five, worth a look.
REVIEW_FLOOR = 0.2


@dataclass(frozen=True, slots=True)
class MatchResult:
    patient_id: str
    person_id: str | None
    probability: float
    grade: str
    evidence: dict[str, Any]


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def _evidence(scored: ScoredCandidate) -> dict[str, Any]:
    return {
        e.field: {"level": e.level.name.lower(), "bits": round(e.bits, 3)} for e in scored.evidence
    }


class ClientRegistry:
    """Links Patients into persons as they are stored; answers $match; keeps the review queue."""

    def __init__(
        self,
        store: Store,
        model: LinkageModel | None = None,
        review_floor: float = REVIEW_FLOOR,
        probable: float = 0.8,
    ) -> None:
        self.store = store
        mpi_metadata.create_all(store.writer)
        self.model = model or stored_model(store) or default_model()
        self.threshold = self.model.threshold
        self.review_floor = review_floor
        self.probable = probable
        where = index_location(store)
        # the candidate index in this process's memory, or in the store's tables
        # (``stored_index``): every other piece of the registry's state works alike with both
        self.stored: StoredCandidateIndex | None = (
            StoredCandidateIndex(self.model, store) if where == "store" else None
        )
        self.index: CandidateIndex = (
            self.stored if self.stored is not None else CandidateIndex(self.model)
        )
        # who belongs to whom: in memory with the memory index, else read from the tables
        # when wanted (``membership``)
        self.membership: Membership = Membership()
        if self.stored is not None:
            self.membership = StoredMembership(store)
            # a link's persons are read with its candidates' records, in their round trip
            self.stored.companion = self.membership.riding
        self._lock = threading.RLock()
        # the last change journal row (mpi_change.seq) this process's mirror includes
        self._seen = 0
        # journal rows above ``_seen`` that this process wrote (per-key locking numbers them
        # at commit, possibly after other processes' rows it has not read): not reloaded
        self._own: set[int] = set()
        locks = store.settings.registry_locks
        if locks not in ("per-key", "global"):
            raise ValueError(
                f"registry_locks (TAKAMUL_REGISTRY_LOCKS) must be 'per-key' or 'global', "
                f"not {locks!r}"
            )
        self.per_key = locks == "per-key" and store.dialect == "postgresql"

    # -- start-up --------------------------------------------------------------------------

    def attach(
        self, progress: Callable[[int], None] | None = None, batch_from: int = BATCH_FROM
    ) -> int:
        """Load the registry into memory, link Patients stored without a person (a bulk load),
        and start linking every Patient write. Returns the number of records linked now.

        Server processes starting together do this one at a time while Patients are left
        unlinked, so the first links what a bulk load left and the others load its persons
        instead of making their own. With none left (one anti-join tells), each loads at once:
        at 350,000 persons a load took 71 s, and four workers waited for each other's."""
        if self.stored is not None:
            # a start indexes what was stored without the registry (``stale``): one at a time
            with self._one_start_at_a_time():
                linked = self._load_and_link(progress, batch_from)
        elif unlinked_patients(self.store) == 0:
            # a Patient stored since the count is linked as a write would link it (under the
            # registry's lock), never as a batch that another start might make too
            linked = self._load_and_link(progress, batch_from=sys.maxsize)
        else:
            with self._one_start_at_a_time():
                linked = self._load_and_link(progress, batch_from)
        self.store.write_hooks.append(self._on_write)
        return linked

    def _load_and_link(self, progress: Callable[[int], None] | None, batch_from: int) -> int:
        # the collector paused while the mirror is built and linked: each generation-2
        # collection walked every record loaded so far (the mirror holds no cycles; what it
        # drops its reference counts free). At 50,000 persons (110,295 records) the
        # catch-up's registry phase took 48.1 s with them, 35.5 s with the collector off.
        with gc_paused():
            return self._load_and_link_now(progress, batch_from)

    def _load_and_link_now(self, progress: Callable[[int], None] | None, batch_from: int) -> int:
        with self.store.reading() as s:
            # first: whatever is committed after this is above it and caught up again
            self._seen = _last_change(s.conn)
            self.membership.read_all(s.conn)
            if self.stored is not None:
                unlinked_ids = _unlinked_ids(s.conn)
            else:
                for n, (_, body) in enumerate(_patients(s), 1):
                    self.index.add(from_patient(body))
                    if progress is not None and n % 10_000 == 0:
                        progress(n)
        if self.stored is not None:
            return self._index_and_link(self.stored, unlinked_ids, progress, batch_from)
        self.index.refresh_term_frequencies()
        membership = self.membership
        unlinked = [pid for pid in self.index.ids() if membership.person_of(pid) is None]
        if not membership.any_linked() and len(unlinked) >= batch_from:
            self._link_fresh([r for pid in unlinked if (r := self.index.get(pid))], progress)
        else:
            for start in range(0, len(unlinked), 500):
                chunk = unlinked[start : start + 500]
                self.store.write(lambda s, chunk=chunk: self._link_many(s, chunk))  # type: ignore[misc]
        return len(unlinked)

    def _index_and_link(
        self,
        stored: StoredCandidateIndex,
        unlinked: list[str],
        progress: Callable[[int], None] | None,
        batch_from: int,
    ) -> int:
        """The store index's start: write the index rows of Patients stored without the
        registry (a bulk load), then link those without a person, as the memory index does."""
        if not stored.agrees_with_model():
            # written under another model (a new one trained since): every Patient again
            log.warning(
                "the registry's index rows were written under another linkage model; "
                "indexing every Patient again"
            )
            self.store.write(lambda s: stored.clear(s.conn))
        records, dropped = stored.stale()
        # The old rows go first, then the records' rows, 5,000 a transaction. A start stopped
        # in between leaves Patients without rows, which the next start finds and indexes.
        if dropped:
            self.store.write(lambda s: stored.index_many(s.conn, [], dropped))
        for start in range(0, len(records), 5000):
            chunk = records[start : start + 5000]
            self.store.write(lambda s, c=chunk: stored.index_many(s.conn, c, []))  # type: ignore[misc]
        if len(records) > ANALYZE_AFTER:
            # statistics for the lookups below, and the visibility map for index-only scans
            # (the web finder reads its candidates' words from an index alone)
            self.store.vacuum(INDEX_TABLES)
        stored.refresh_term_frequencies()
        if not self.membership.any_linked() and len(unlinked) >= batch_from:
            fresh = {r.patient_id: r for r, _ in records}
            missing = [pid for pid in unlinked if pid not in fresh]
            fresh.update(stored.fetch(missing))
            self._link_fresh([fresh[pid] for pid in unlinked if pid in fresh], progress)
        else:
            for start in range(0, len(unlinked), 500):
                batch = unlinked[start : start + 500]
                self.store.write(lambda s, b=batch: self._link_many(s, b))  # type: ignore[misc]
        return len(unlinked)

    @contextmanager
    def _one_start_at_a_time(self) -> Iterator[None]:
        """Hold the registry's start-up lock of the store: on PostgreSQL an advisory lock of a
        transaction kept open meanwhile on a connection of its own (another key than the
        write lock, which the linking below takes in each of its transactions; transaction
        scoped, so it is released however the start ends, and safe behind pgbouncer in
        transaction mode), on SQLite an exclusive lock on a file beside the database."""
        if self.store.dialect == "postgresql":
            with self.store.writer.connect() as conn, conn.begin():
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": START_LOCK})
                yield
            return
        database = make_url(self.store.settings.database_url).database
        if not database or database == ":memory:":
            yield  # a database of this process alone
            return
        with open(f"{database}.registry-start.lock", "ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _link_fresh(
        self, records: list[RegistryRecord], progress: Callable[[int], None] | None
    ) -> None:
        """A store bulk-loaded before it had a registry: link its Patients as the batch run
        does (block, score with this model, cluster with the ID guard) and write members and
        Person resources in large transactions. The real-time path would cost a transaction
        per Patient (hours at a million); with no earlier persons nothing is lost by batching.
        """
        result = link_records(records, model=self.model)
        now = time.time()
        by_label: dict[int, list[str]] = {}
        for record, label in zip(records, result.labels.tolist(), strict=True):
            by_label.setdefault(label, []).append(record.patient_id)
        groups = [(str(uuid.uuid4()), sorted(members)) for members in by_label.values()]
        # trusted, as every golden record the registry writes (``MPI_SOURCE``): validating
        # each Person again was a twentieth of the phase
        indexer = self.store.indexer
        for start in range(0, len(groups), 2000):
            chunk = groups[start : start + 2000]
            with self.store.reading() as s:
                bodies = s.current_many("Patient", [pid for _, members in chunk for pid in members])
            rows = [
                {
                    "patient_id": pid,
                    "person_id": person,
                    "probability": 1.0,
                    "manual": False,
                    "updated": now,
                }
                for person, members in chunk
                for pid in members
            ]
            persons = [
                prepare(
                    person_body(
                        person,
                        [Member(pid, "level3", bodies.get(pid)) for pid in members],
                    ),
                    indexer,
                    False,
                    MPI_SOURCE.source or "",
                    now,
                )
                for person, members in chunk
            ]

            def work(
                session: Session, rows: list[dict[str, Any]] = rows, persons: list[Any] = persons
            ) -> int:
                # journal rows are numbered under the lock, after what others committed
                self._lock_shared(session)
                self._catch_up(session.conn)
                session.conn.execute(insert(mpi_member), rows)
                put_many(session.conn, persons)
                changed = [{"patient_id": r["patient_id"]} for r in rows]
                session.conn.execute(insert(mpi_change), changed)
                return _last_change(session.conn)

            # this process's own rows: no reason to reload them at the next catch-up
            self._seen = self.store.write(work)
            for person, members in chunk:
                self.membership.linked_in_batch(person, members)
            if progress is not None:  # Patient records linked so far
                progress(sum(len(members) for _, members in groups[: start + len(chunk)]))
        with self.store.writer.connect() as conn:
            conn.execute(
                insert(mpi_event).values(
                    at=now,
                    kind="batch-link",
                    actor=AUTOMATIC,
                    reason=f"{len(records)} Patients stored without a person",
                    detail=orjson.dumps({"moves": [], "persons": len(groups)}).decode(),
                )
            )
            conn.commit()
        # Statistics of the tables just filled: with those of the empty tables, PostgreSQL read
        # the whole journal and membership for every catch-up (a hash join: 51 ms a link or
        # $match at 220,000 registrations, where autovacuum was off or had not come round yet).
        self.store.analyze_stale()

    def _link_many(self, session: Session, patient_ids: list[str]) -> None:
        self._begin(session)
        records = (
            self.stored.fetch(patient_ids)
            if self.stored is not None
            else {pid: r for pid in patient_ids if (r := self.index.get(pid)) is not None}
        )
        self.membership.load(patient_ids)
        for pid in patient_ids:
            record = records.get(pid)
            # linked by another process since this one loaded the registry: caught up by _begin
            if record is not None and self.membership.person_of(pid) is None:
                self._link(session, record)

    # -- the transaction protocol ---------------------------------------------------------

    def _begin(
        self,
        session: Session,
        records: Iterable[RegistryRecord] | None = None,
        removed: list[str] | None = None,
    ) -> list[Callable[[], None]]:
        """Take the registry lock for this transaction (once): this process's, then the
        store's, so the mirror is brought up to what other processes committed and nobody
        else links until this transaction ends. Returns the transaction's undo log.

        Given the ``records`` a link is about to place (and the patients it ``removed``),
        with per-key locking on PostgreSQL the store's locks are the registry's shared, the
        records' block keys and the persons they may change (``_lock_for_links``): other
        registrations link meanwhile."""
        undo: list[Callable[[], None]] | None = session.extras.get("mpi-undo")
        if undo is not None:
            return undo
        if not self._lock.acquire(timeout=LOCK_TIMEOUT):
            raise FhirError(503, "The client registry is busy; retry the request", "transient")
        undo = []
        session.extras["mpi-undo"] = undo
        membership = self.membership
        membership.trim()
        membership.bind(session.conn)
        journal = _Journal(numbered_at_end=records is not None and self.per_key)
        session.extras["mpi-journal"] = journal

        stored = self.stored
        if stored is not None:
            # this transaction's index rows and lookups on its connection, in this thread
            stored.bind(session.conn)

        def commit() -> None:
            membership.bind(None)
            if stored is not None:
                stored.bind(None)
            if journal.numbered_at_end:
                # others may have committed rows below these that this mirror has not read
                self._own.update(journal.seqs)
            else:
                # caught up under the lock, then only this transaction wrote journal rows
                self._seen = max(self._seen, journal.last)
                self._own = {seq for seq in self._own if seq > self._seen}
            self._lock.release()

        def rollback() -> None:
            membership.bind(None)
            if stored is not None:
                stored.bind(None)
            try:
                for step in reversed(undo):
                    step()
                membership.rolled_back()
            finally:
                self._lock.release()

        session.after_commit.append(commit)
        session.after_rollback.append(rollback)
        if records is not None and journal.numbered_at_end:
            self._lock_for_links(session.conn, list(records), removed or [])
        else:
            self._lock_and_catch_up(session.conn)
        return undo

    def _lock_for_links(
        self, conn: Connection, records: list[RegistryRecord], removed: list[str]
    ) -> None:
        """Per-key locking, to the end of the transaction: the registry's lock shared, the
        records' block keys, and every person the links may read or write (the records' own,
        their candidates', and those of the holders of an ID the records would show shared
        across generations), then what other processes committed; one round trip when that
        brought no change to what the links look at.

        Two registrations of one person share a key (else neither is the other's candidate),
        so they link one after the other, the second seeing the first. The persons are found
        in the mirror before it catches up; if the catch-up brought anything (after the first
        round: changed a record the links looked at), they are found again and the new ones
        locked (and caught up) in another round. Locks are taken in one order within a round;
        across rounds a deadlock is possible, and PostgreSQL's detector ends one of the two
        transactions, which ``Store.write`` runs again."""
        keys = {
            _lock_key("block", "\x1f".join(k)) for r in records for k in self.index.block_keys(r)
        }
        statements: list[tuple[DriverSql, dict[str, Any]]] = [
            (TAKE_SHARED_REGISTRY_LOCK, {"key": REGISTRY_LOCK})
        ]
        locked: set[str] = set()
        for round_ in range(PERSON_LOCK_ROUNDS):
            persons, patients = self._touched(records, removed)
            wanted = persons - locked
            if round_ and not wanted:
                return
            # the first round's block keys and persons as one sorted list: one statement, and
            # one order for every link (two lists one after the other were one order too)
            round_keys = sorted(
                {_lock_key("person", p) for p in wanted} | (keys if round_ == 0 else set())
            )
            if round_keys:
                statements.append((TAKE_LOCKS, {"keys": round_keys}))
            statements.extend(self._changes_since())
            changed = self._apply_changes(*driver_pipeline(conn, statements)[-2:])
            locked |= wanted
            # The first round found its persons before its block keys were locked: whatever
            # the catch-up brought (a new registration with one of those keys, say) may be a
            # candidate. From then on no record can gain those keys unseen, and only a change
            # to a record the links looked at can change their persons.
            if not (changed if round_ == 0 else changed & patients):
                return
            statements = []
        raise FhirError(
            503,
            "The client registry's persons kept changing under concurrent links; retry the request",
            "transient",
        )

    def _touched(
        self, records: list[RegistryRecord], removed: list[str]
    ) -> tuple[set[str], set[str]]:
        """(persons, patients): the persons linking these records may read or write (as
        ``_place`` and ``_join_holders`` would find them now), and the patients consulted."""
        patients: set[str] = set(removed)
        for record in records:
            patients.add(record.patient_id)
            for s in self.index.score(record, self.review_floor):
                patients.add(s.patient_id)
            nid = record.national_id
            if nid and self.index.would_share_across_generations(record):
                for holder_id in self.index.holders_of(nid):
                    patients.add(holder_id)
                    holder = self.index.get(holder_id)
                    if holder is not None:
                        scored = self.index.score(holder, self.threshold)
                        patients.update(s.patient_id for s in scored)
        membership = self.membership
        membership.load(patients)
        persons = {p for pid in patients if (p := membership.person_of(pid)) is not None}
        return persons, patients

    def _lock_and_catch_up(self, conn: Connection) -> None:
        """The store's registry lock, to the end of the transaction, then what other
        processes committed before it was granted: one round trip on PostgreSQL. SQLite: the
        transaction holds the database's one write lock since BEGIN IMMEDIATE."""
        statements = self._changes_since()
        if self.store.dialect == "postgresql":
            statements.insert(0, (TAKE_REGISTRY_LOCK, {"key": REGISTRY_LOCK}))
        self._apply_changes(*driver_pipeline(conn, statements)[-2:])

    def _lock_shared(self, session: Session) -> None:
        """The store's registry lock, to the end of the transaction (``_lock_and_catch_up``)."""
        if self.store.dialect == "postgresql":
            driver_execute(session.conn, TAKE_REGISTRY_LOCK, {"key": REGISTRY_LOCK})

    def _changed(self, session: Session, *patient_ids: str) -> None:
        """Note in the journal that these patients' record, person or decisions changed (once
        a transaction each), so other processes reload them."""
        journal: _Journal = session.extras["mpi-journal"]
        for pid in patient_ids:
            if pid in journal.patients:
                continue
            journal.patients.add(pid)
            if not journal.numbered_at_end:  # else numbered at the end (_number_changes)
                journal.send(session.conn, NOTE_CHANGE, {"pid": pid}, journal.numbered)

    def _catch_up(self, conn: Connection) -> None:
        """Apply what other processes committed since this mirror's last journal row: reload
        each patient named after it. Called with this process's registry lock held."""
        self._apply_changes(*driver_pipeline(conn, self._changes_since()))

    def _changes_since(self) -> list[tuple[DriverSql, dict[str, Any]]]:
        """The catch-up's two reads (``_apply_changes`` takes their rows)."""
        seen = self._seen
        return [
            (CHANGES_SINCE, {"seen": seen, "patient": "Patient", "deleted": False}),
            (CHANGED_REFUSALS, {"seen": seen, "active": True}),
        ]

    def _apply_changes(
        self, rows: list[tuple[Any, ...]], refusals: list[tuple[Any, ...]]
    ) -> set[str]:
        """The mirror of the patients named in these journal rows (``CHANGES_SINCE``'s) but
        this process's own, as the database has them: record, person, refusals (from
        ``CHANGED_REFUSALS``). Returns the patients changed."""
        if not rows:
            return set()
        own = self._own
        state: dict[str, tuple[Any, Any, Any]] = {}
        for seq, pid, content, person, manual in rows:
            if int(seq) not in own:
                state[pid] = (content, person, manual)  # a later row of a patient: the same
        for pid in sorted(state):
            content, person, manual = state[pid]
            if content:
                self.index.follow(from_patient(orjson.loads(content)))
            else:
                self.index.follow_removal(pid)
            self.membership.follow(pid, person, bool(manual) if person else False)
        self.membership.follow_refusals(set(state), refusals)
        self._seen = max(self._seen, int(rows[-1][0]))
        if own:
            self._own = {seq for seq in own if seq > self._seen}
        return set(state)

    def refresh(self) -> None:
        """Bring this process's mirror up to what every process has committed (before a read
        that answers from it)."""
        if not self._lock.acquire(timeout=LOCK_TIMEOUT):
            raise FhirError(503, "The client registry is busy; retry the request", "transient")
        try:
            self.membership.trim()
            with self.store.reading() as s:
                self._catch_up(s.conn)
        finally:
            self._lock.release()

    def _on_write(
        self, session: Session, resource_type: str, resource_id: str, body: dict[str, Any] | None
    ) -> None:
        """Note a Patient's write; the transaction links its Patients just before it commits
        (``_link_written``), so the registry's lock, which every process's links wait for, is
        held for the linking and the commit only, not for the rest of a Bundle's entries or
        the other write hooks' work."""
        if resource_type != "Patient":
            return
        written: dict[str, dict[str, Any] | None] | None = session.extras.get(_WRITTEN)
        if written is None:
            written = session.extras[_WRITTEN] = {}
            session.last_before_commit.append(lambda: self._link_written(session, written))
        written.pop(resource_id, None)  # written again: linked once, in its last place
        written[resource_id] = body

    def _link_written(self, session: Session, written: dict[str, dict[str, Any] | None]) -> None:
        """Link the transaction's Patients in the order of their last writes."""
        records = {rid: from_patient(body) for rid, body in written.items() if body is not None}
        removed = [rid for rid, body in written.items() if body is None]
        self._begin(session, list(records.values()), removed)
        journal: _Journal = session.extras["mpi-journal"]
        journal.deferring = True
        try:
            for resource_id, body in written.items():
                self._changed(session, resource_id)
                journal.bodies[resource_id] = body
                if body is None:
                    self._remove(session, resource_id)
                else:
                    self._link(session, records[resource_id])
            if journal.numbered_at_end:
                self._number_changes(session.conn, journal)
            else:
                journal.send_queued(session.conn)
        finally:
            journal.deferring = False

    def _number_changes(self, conn: Connection, journal: _Journal) -> None:
        """Per-key locking: the transaction's journal rows, last, under JOURNAL_LOCK (held to
        the commit): numbered after every row committed before, and before any committed
        after, as a reader following the numbers needs."""
        patient_ids = sorted(journal.patients)
        statements: list[tuple[DriverSql, dict[str, Any]]] = [
            (TAKE_REGISTRY_LOCK, {"key": JOURNAL_LOCK})
        ]
        for start in range(0, len(patient_ids), 500):
            chunk = patient_ids[start : start + 500]
            statements.append((listed(NOTE_CHANGES, "(:p{i})", len(chunk)), numbered(chunk)))
        results = journal.send_queued(conn, *statements)
        journal.seqs = [int(seq) for rows in results[1:] for (seq,) in rows]

    # -- memory, with undo ------------------------------------------------------------------

    def _index(self, record: RegistryRecord, undo: list[Callable[[], None]]) -> None:
        if self.stored is not None:
            # its rows roll back with the transaction; the cache must not keep the record
            self.stored.add(record)
            undo.append(functools.partial(self.stored.forget, record.patient_id))
            return
        previous = self.index.get(record.patient_id)
        self.index.add(record)
        if previous is None:
            undo.append(lambda: self.index.remove(record.patient_id))
        else:
            undo.append(lambda: self.index.add(previous))

    # -- automatic linking ------------------------------------------------------------------

    def _conflicts(self, record: RegistryRecord, person: str) -> bool:
        """Joining ``person`` would contradict a reviewer or a national ID."""
        members = self.membership.members(person)
        if self.membership.refused(record.patient_id) & members:
            return True
        if not self._proves_identity(record):
            return False
        for pid in members:
            other = self.index.get(pid)
            if (
                other is not None
                and self._proves_identity(other)
                and other.national_id != record.national_id
            ):
                return True
        return False

    def _proves_identity(self, record: RegistryRecord) -> bool:
        """The record's national ID is one person's: valid, and not seen on records born a
        generation apart (an infant registered under a parent's ID carries someone else's ID,
        so a differing ID on another registration of the infant is no conflict). The same
        rule as batch clustering's guard (``linking.cluster_pairs``)."""
        nid = record.national_id
        return bool(nid and record.national_id_valid) and not (
            self.index.shared_across_generations(nid or "")
        )

    def _link(self, session: Session, record: RegistryRecord) -> None:
        nid = record.national_id
        shared_before = bool(nid) and self.index.shared_across_generations(nid or "")
        self._place(session, record)
        if nid and not shared_before and self.index.shared_across_generations(nid):
            self._join_holders(session, record, nid)

    def _join_holders(self, session: Session, record: RegistryRecord, national_id: str) -> None:
        """``record`` shows its national ID used across generations (a parent registered
        after the infant who was registered under the parent's ID). Until now the guard took
        the ID for its holders' own and kept their other registrations, under another ID,
        apart; batch clustering, which sees the whole population at once, would have joined
        them. So each other holder's persons it certainly matches are merged into its person
        now, by the same rules as at arrival."""
        undo = self._begin(session)
        membership = self.membership
        holders = sorted(self.index.holders_of(national_id) - {record.patient_id})
        membership.load(holders)
        for pid in holders:
            holder, person = self.index.get(pid), membership.person_of(pid)
            if holder is None or person is None or membership.is_manual(pid):
                continue
            refused = membership.refused(pid)
            scored = [
                s for s in self.index.score(holder, self.threshold) if s.patient_id not in refused
            ]
            joined = self._joined_persons(holder, person, person, scored)
            if joined:
                self._merge(session, person, joined, undo)

    def _place(self, session: Session, record: RegistryRecord) -> None:
        """Index the record and put it in its person (the rules of the module docstring)."""
        undo = self._begin(session)
        pid = record.patient_id
        self._index(record, undo)
        membership = self.membership
        candidates = self.index.score(record, self.review_floor)
        membership.load([pid, *(s.patient_id for s in candidates)])
        old = membership.person_of(pid)
        refused = membership.refused(pid)
        scored = [s for s in candidates if s.patient_id not in refused]
        if membership.is_manual(pid) and old is not None:
            self._write_persons(session, {old})
            self._queue_reviews(session, record, old, scored)
            return
        target: str | None = None
        probability = 1.0
        for s in scored:
            if s.probability < self.threshold:
                break
            person = membership.person_of(s.patient_id)
            if person is None:
                continue
            if person == old or not self._conflicts(record, person):
                target, probability = person, s.probability
                break
        if target is None:
            # alone in its person it stays there; otherwise no certain match supports the
            # person it was in any more, and it starts a person of its own
            alone = old is not None and len(membership.members(old)) == 1
            if old is not None and alone:
                target = old
            else:
                target = self._new_person()
                journal: _Journal = session.extras["mpi-journal"]
                journal.started.add(target)
        joined = self._joined_persons(record, target, old, scored)
        if target != old:
            self._move(session, pid, old, target, probability, False, undo)
            self._note_event(
                session,
                "link" if len(membership.members(target)) > 1 else "new-person",
                None,
                {"moves": [{"patient": pid, "from": old, "to": target, "p": probability}]},
            )
            self._write_persons(session, {target} | ({old} if old else set()))
        else:
            self._write_persons(session, {target})
        if joined:
            self._merge(session, target, joined, undo)
        self._queue_reviews(session, record, target, scored)

    def _joined_persons(
        self,
        record: RegistryRecord,
        target: str,
        old: str | None,
        scored: list[ScoredCandidate],
    ) -> dict[str, float]:
        """Other persons the new record certainly matches too: the record is the link between
        them that the batch run would follow (a record with the ID, another with the name in
        Latin, the third with both), so they become one, as in batch clustering, unless a
        reviewer decided about one of their members or their national IDs differ."""
        out: dict[str, float] = {}
        membership = self.membership
        if membership.is_manual(record.patient_id):
            return out
        for s in scored:
            if s.probability < self.threshold:
                break
            person = membership.person_of(s.patient_id)
            if person is None or person in (target, old) or person in out:
                continue
            members = membership.members(person)
            if any(membership.is_manual(m) for m in members) or any(
                self._conflicts(other, target) or self._conflicts(other, person)
                for other in self._records(members)
            ):
                continue
            if self._conflicts(record, person):
                continue
            out[person] = s.probability
        return out

    def _records(self, members: Iterable[str]) -> list[RegistryRecord]:
        return [r for pid in members if (r := self.index.get(pid)) is not None]

    def _merge(
        self,
        session: Session,
        target: str,
        joined: dict[str, float],
        undo: list[Callable[[], None]],
    ) -> None:
        moves = []
        for person, probability in joined.items():
            for member in sorted(self.membership.members(person)):
                self._move(session, member, person, target, probability, False, undo)
                moves.append({"patient": member, "from": person, "to": target, "p": probability})
        self._note_event(session, "merge", None, {"moves": moves})
        self._write_persons(session, {target, *joined})

    def _move(
        self,
        session: Session,
        pid: str,
        old: str | None,
        person: str | None,
        probability: float,
        manual: bool,
        undo: list[Callable[[], None]],
    ) -> None:
        conn = session.conn
        self._changed(session, pid)
        journal: _Journal = session.extras["mpi-journal"]
        if person is None:
            journal.send(conn, LEAVE_PERSON, {"pid": pid})
            journal.members.pop(pid, None)
        else:
            values = {
                "pid": pid,
                "person": person,
                "probability": probability,
                "manual": manual,
                "updated": time.time(),
            }
            journal.send(conn, JOIN_PERSON, values)
            journal.members[pid] = (probability, manual)
        journal.reshaped.update(p for p in (old, person) if p is not None)
        self.membership.set_member(pid, person, manual, undo)

    def _queue_reviews(
        self, session: Session, record: RegistryRecord, person: str, scored: list[ScoredCandidate]
    ) -> None:
        """Queue the uncertain pairs of a record with another person; settle open ones whose
        records now share a person."""
        journal: _Journal = session.extras["mpi-journal"]
        settled: list[tuple[str, str]] = []
        queued: list[dict[str, Any]] = []
        for s in scored:
            other_person = self.membership.person_of(s.patient_id)
            if other_person is None:
                continue
            a, b = _pair(record.patient_id, s.patient_id)
            if other_person == person:
                settled.append((a, b))
                continue
            if s.probability >= self.threshold and not self._conflicts(record, other_person):
                continue  # would have been linked; another candidate won
            evidence = orjson.dumps(_evidence(s)).decode()
            queued.append({"a": a, "b": b, "probability": s.probability, "evidence": evidence})
        # a new pair opens, an open one takes the new score, a decided one stays as decided:
        # one statement for all the record's pairs (it was a read and a write for each)
        now = time.time()
        for start in range(0, len(queued), 100):
            chunk = queued[start : start + 100]
            params = {f"{k}{i}": v for i, row in enumerate(chunk) for k, v in row.items()}
            queue = listed(QUEUE_REVIEWS, QUEUED_REVIEW, len(chunk))
            journal.send(session.conn, queue, {**params, "now": now})
        # one statement on the driver for the pairs now in one person (SQLAlchemy compiled
        # its row-value IN anew for each list, as long as the statement took); 400 pairs at a
        # time keep under SQLite's bound-parameter limit
        for start in range(0, len(settled), 400):
            pairs = settled[start : start + 400]
            firsts, seconds = zip(*pairs, strict=True)
            values = {
                **numbered(firsts, "a"),
                **numbered(seconds, "b"),
                "by": AUTOMATIC,
                "now": now,
            }
            settle = listed(SETTLE_REVIEWS, "(:a{i}, :b{i})", len(pairs))
            journal.send(session.conn, settle, values)

    def _remove(self, session: Session, pid: str) -> None:
        """A deleted Patient leaves its person (and the index)."""
        undo = self._begin(session)
        if self.stored is not None:
            self.stored.remove(pid)  # rolled back with the transaction
        elif (record := self.index.get(pid)) is not None:
            self.index.remove(pid)
            undo.append(lambda: self.index.add(record))
        old = self.membership.person_of(pid)
        if old is None:
            return
        self._move(session, pid, old, None, 0.0, False, undo)
        self._note_event(
            session,
            "remove",
            "Patient deleted",
            {"moves": [{"patient": pid, "from": old, "to": None}]},
        )
        self._write_persons(session, {old})

    # -- golden records -------------------------------------------------------------------

    def _write_persons(self, session: Session, person_ids: Iterable[str]) -> None:
        # golden records are the registry's own work, whatever the requester may write
        with unguarded():
            self._write_person_resources(session, person_ids)

    def _write_person_resources(self, session: Session, person_ids: Iterable[str]) -> None:
        journal: _Journal = session.extras["mpi-journal"]
        for person in person_ids:
            members = sorted(self.membership.members(person))
            if not members:
                current = _read(session, "Person", person)
                if current is not None and current.get("active", True):
                    session.delete("Person", person)
                continue
            entries = [
                Member(
                    pid,
                    assurance_level(probability, manual, self.threshold, self.probable),
                    body,
                )
                for pid, (probability, manual, body) in _members(session, members, journal).items()
            ]
            entries.sort(key=lambda m: m.assurance, reverse=True)
            body = person_body(person, entries)
            # Read back only when the golden record may be unchanged: one whose members
            # changed is not (its links did), and one this transaction started has no row yet
            # (the unique key still refuses a clash). Each read is a round trip under the lock.
            new = person in journal.started
            if person not in journal.reshaped:
                current = _read(session, "Person", person)
                if current is not None and _without_meta(current) == _without_meta(body):
                    continue  # unchanged: no new version of the golden record
            journal.started.discard(person)
            journal.reshaped.discard(person)
            session.update("Person", person, body, options=MPI_SOURCE, expect_new=new)

    def _event(
        self,
        session: Session,
        kind: str,
        actor: str,
        reason: str | None,
        detail: dict[str, Any],
    ) -> int:
        journal: _Journal = session.extras["mpi-journal"]
        journal.send_queued(session.conn)
        values = _event_values(kind, actor, reason, detail)
        ((event_id,),) = driver_execute(session.conn, LOG_EVENT, values)
        return int(event_id)

    def _note_event(
        self, session: Session, kind: str, reason: str | None, detail: dict[str, Any]
    ) -> None:
        """An automatic linking's event: its id is not needed, so it may wait in the
        transaction's queue (``_Journal.send``)."""
        journal: _Journal = session.extras["mpi-journal"]
        journal.send(session.conn, LOG_EVENT, _event_values(kind, AUTOMATIC, reason, detail))

    # -- $match -----------------------------------------------------------------------------

    def match(self, patient: dict[str, Any], only_certain: bool = False) -> list[MatchResult]:
        """Stored Patients that may be the person of ``patient`` (not stored by this call),
        most probable first; a pair a reviewer marked not-duplicate is certainly-not."""
        record = from_patient(patient)
        self.refresh()
        with self._lock:
            scored = self.index.score(record, self.review_floor)
            membership = self.membership
            membership.load([record.patient_id, *(s.patient_id for s in scored)])
            refused = membership.refused(record.patient_id)
            out = []
            for s in scored:
                grade = (
                    "certainly-not"
                    if s.patient_id in refused
                    else match_grade(s.probability, self.threshold, self.probable)
                )
                if only_certain and grade != "certain":
                    continue
                out.append(
                    MatchResult(
                        s.patient_id,
                        membership.person_of(s.patient_id),
                        0.0 if grade == "certainly-not" else s.probability,
                        grade,
                        _evidence(s),
                    )
                )
        out.sort(key=lambda m: (-m.probability, m.patient_id))
        return out

    # -- review -----------------------------------------------------------------------------

    def reviews(
        self, status: str | None = "open", count: int = 50, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        self.refresh()
        with self.store.reading() as s:
            where = mpi_review.c.status == status if status else mpi_review.c.id.is_not(None)
            total = s.conn.execute(
                select(func.count()).select_from(mpi_review).where(where)
            ).scalar_one()
            rows = s.conn.execute(
                select(mpi_review)
                .where(where)
                .order_by(mpi_review.c.probability.desc(), mpi_review.c.id)
                .limit(count)
                .offset(offset)
            ).all()
            with self._lock:  # the page's persons in one read, not two a review
                self.membership.load([pid for r in rows for pid in (r.patient_a, r.patient_b)])
            return [self._review_json(s, r) for r in rows], total

    def review(self, review_id: int) -> dict[str, Any]:
        self.refresh()
        with self.store.reading() as s:
            row = s.conn.execute(select(mpi_review).where(mpi_review.c.id == review_id)).first()
            if row is None:
                raise FhirError(404, f"There is no review {review_id}", "not-found")
            return self._review_json(s, row)

    def _review_json(self, session: Session, row: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": row.id,
            "status": row.status,
            "probability": round(row.probability, 6),
            "grade": match_grade(row.probability, self.threshold, self.probable),
            "evidence": orjson.loads(row.evidence),
            "created": row.created,
            "decidedBy": row.decided_by,
            "decidedAt": row.decided_at,
        }
        for key, pid in (("a", row.patient_a), ("b", row.patient_b)):
            with self._lock:
                person = self.membership.person_of(pid)
            out[key] = {
                "patient": f"Patient/{pid}",
                "person": f"Person/{person}" if person else None,
                "resource": _read(session, "Patient", pid),
            }
        return out

    def decide(self, review_id: int, decision: str, reviewer: str, reason: str | None) -> int:
        """Resolve a queued pair with 'link' or 'not-duplicate'; returns the event id."""
        with self.store.reading() as s:
            row = s.conn.execute(select(mpi_review).where(mpi_review.c.id == review_id)).first()
        if row is None:
            raise FhirError(404, f"There is no review {review_id}", "not-found")
        if decision == "link":
            return self.link(row.patient_a, row.patient_b, reviewer, reason)
        if decision == "not-duplicate":
            return self.not_duplicate(row.patient_a, row.patient_b, reviewer, reason)
        raise FhirError(400, f"decision must be 'link' or 'not-duplicate', not {decision!r}")

    def _persons_of(self, *patient_ids: str) -> list[str]:
        """The persons of registrations a reviewer names, each of which must be linked."""
        persons = []
        for pid in patient_ids:
            person = self.membership.person_of(pid)
            if person is None:
                raise FhirError(404, f"Patient/{pid} is not in the client registry", "not-found")
            persons.append(person)
        return persons

    def _new_person(self) -> str:
        person = str(uuid.uuid4())
        self.membership.start(person)
        return person

    def _decide(
        self, session: Session, a: str, b: str, decision: str, reviewer: str, reason: str | None
    ) -> tuple[list[int], list[int]]:
        """Record a pair decision, retiring the pair's earlier ones; (added, retired) ids."""
        a, b = _pair(a, b)
        where = and_(
            mpi_decision.c.patient_a == a, mpi_decision.c.patient_b == b, mpi_decision.c.active
        )
        retired = [int(r.id) for r in session.conn.execute(select(mpi_decision.c.id).where(where))]
        session.conn.execute(update(mpi_decision).where(where).values(active=False))
        added = session.conn.execute(
            insert(mpi_decision)
            .values(
                patient_a=a,
                patient_b=b,
                decision=decision,
                reviewer=reviewer,
                reason=reason,
                at=time.time(),
                active=True,
            )
            .returning(mpi_decision.c.id)
        ).scalar_one()
        status = "linked" if decision == "link" else "not-duplicate"
        session.conn.execute(
            update(mpi_review)
            .where(mpi_review.c.patient_a == a, mpi_review.c.patient_b == b)
            .values(status=status, decided_by=reviewer, decided_at=time.time())
        )
        undo = self._begin(session)
        self._changed(session, a, b)
        self.membership.forbid(a, b, undo, on=decision == "not-duplicate")
        return [int(added)], retired

    def link(self, a: str, b: str, reviewer: str, reason: str | None = None) -> int:
        """A reviewer says a and b are one person: b's person merges into a's."""
        if a == b:
            raise FhirError(400, "Linking a record to itself means nothing; give two patients")

        def work(session: Session) -> int:
            undo = self._begin(session)
            self._persons_of(a, b)
            added, retired = self._decide(session, a, b, "link", reviewer, reason)
            keep, gone = self._persons_of(a, b)
            moves = []
            for pid in sorted(self.membership.members(gone) if gone != keep else {a, b}):
                moves.append(self._reviewer_move(session, pid, gone, keep, undo))
            if a not in [m["patient"] for m in moves]:
                moves.append(self._reviewer_move(session, a, keep, keep, undo))
            self._write_persons(session, {keep, gone})
            return self._event(
                session,
                "merge",
                reviewer,
                reason,
                {"moves": moves, "decisions_added": added, "decisions_retired": retired},
            )

        return self.store.write(work)

    def _reviewer_move(
        self, session: Session, pid: str, src: str, dst: str, undo: list[Callable[[], None]]
    ) -> dict[str, Any]:
        """Move a record where a reviewer put it (manual from now on); returns the event's
        record of the move, with what ``revert`` needs to restore it."""
        manual_before = self.membership.is_manual(pid)
        move = {"patient": pid, "from": src, "to": dst, "manual_before": manual_before}
        self._move(session, pid, src, dst, 1.0, True, undo)
        return move

    def not_duplicate(self, a: str, b: str, reviewer: str, reason: str | None = None) -> int:
        """A reviewer says a and b are two people: if they share a person, b leaves it."""
        if a == b:
            raise FhirError(400, "A record is always a duplicate of itself; give two patients")

        def work(session: Session) -> int:
            undo = self._begin(session)
            self._persons_of(a, b)
            added, retired = self._decide(session, a, b, "not-duplicate", reviewer, reason)
            moves = []
            person_a, person = self._persons_of(a, b)
            if person_a == person:
                new = self._new_person()
                moves.append(self._reviewer_move(session, b, person, new, undo))
                self._write_persons(session, {person, new})
            return self._event(
                session,
                "unmerge" if moves else "not-duplicate",
                reviewer,
                reason,
                {"moves": moves, "decisions_added": added, "decisions_retired": retired},
            )

        return self.store.write(work)

    def unlink(self, pid: str, reviewer: str, reason: str | None = None) -> int:
        """A reviewer takes a record out of its person: it becomes a person of its own, and is
        marked not-duplicate of the records it was with (so re-linking does not put it back)."""

        def work(session: Session) -> int:
            undo = self._begin(session)
            (person,) = self._persons_of(pid)
            others = sorted(self.membership.members(person) - {pid})
            if not others:
                raise FhirError(
                    409, f"Patient/{pid} is alone in Person/{person}; there is nothing to unlink"
                )
            added: list[int] = []
            retired: list[int] = []
            for other in others:
                a, r = self._decide(session, pid, other, "not-duplicate", reviewer, reason)
                added += a
                retired += r
            new = self._new_person()
            moves = [self._reviewer_move(session, pid, person, new, undo)]
            self._write_persons(session, {person, new})
            return self._event(
                session,
                "unmerge",
                reviewer,
                reason,
                {"moves": moves, "decisions_added": added, "decisions_retired": retired},
            )

        return self.store.write(work)

    def revert(self, event_id: int, reviewer: str, reason: str | None = None) -> int:
        """Undo a recorded merge, unmerge or link: the moved records go back, the decisions it
        added are retired and those it retired restored. Refused if a record has moved since."""

        def work(session: Session) -> int:
            undo = self._begin(session)
            row = session.conn.execute(select(mpi_event).where(mpi_event.c.id == event_id)).first()
            if row is None:
                raise FhirError(404, f"There is no registry event {event_id}", "not-found")
            if row.reverted_by is not None:
                raise FhirError(409, f"Event {event_id} was already reverted by {row.reverted_by}")
            detail = orjson.loads(row.detail)
            touched: set[str] = set()
            back: list[dict[str, Any]] = []
            for move in reversed(detail.get("moves", [])):
                pid, src, dst = move["patient"], move["from"], move["to"]
                if self.membership.person_of(pid) != dst:
                    raise FhirError(
                        409,
                        f"Patient/{pid} has moved since event {event_id}; revert the later "
                        "events first",
                    )
                manual = bool(move.get("manual_before", False)) or row.actor != AUTOMATIC
                if src is None:
                    continue
                back.append(
                    {
                        "patient": pid,
                        "from": dst,
                        "to": src,
                        "manual_before": self.membership.is_manual(pid),
                    }
                )
                self._move(session, pid, dst, src, 1.0, manual, undo)
                touched |= {src, dst}
            for did in detail.get("decisions_added", []):
                self._set_decision(session, did, False, undo)
            for did in detail.get("decisions_retired", []):
                self._set_decision(session, did, True, undo)
            self._write_persons(session, {t for t in touched if t})
            new = self._event(
                session,
                "revert",
                reviewer,
                reason,
                {
                    "reverts": event_id,
                    "moves": back,
                    "decisions_added": detail.get("decisions_retired", []),
                    "decisions_retired": detail.get("decisions_added", []),
                },
            )
            session.conn.execute(
                update(mpi_event).where(mpi_event.c.id == event_id).values(reverted_by=new)
            )
            return new

        return self.store.write(work)

    def _set_decision(
        self, session: Session, decision_id: int, active: bool, undo: list[Callable[[], None]]
    ) -> None:
        row = session.conn.execute(
            select(mpi_decision).where(mpi_decision.c.id == decision_id)
        ).first()
        if row is None:
            return
        session.conn.execute(
            update(mpi_decision).where(mpi_decision.c.id == decision_id).values(active=active)
        )
        self._changed(session, row.patient_a, row.patient_b)
        if row.decision == "not-duplicate":
            self.membership.forbid(row.patient_a, row.patient_b, undo, on=active)

    def events(self, patient: str | None = None, count: int = 50) -> list[dict[str, Any]]:
        with self.store.reading() as s:
            query = select(mpi_event).order_by(mpi_event.c.id.desc())
            if patient:
                query = query.where(mpi_event.c.detail.contains(f'"{patient}"'))
            rows = s.conn.execute(query.limit(count)).all()
        return [
            {
                "id": r.id,
                "at": r.at,
                "kind": r.kind,
                "actor": r.actor,
                "reason": r.reason,
                "detail": orjson.loads(r.detail),
                "revertedBy": r.reverted_by,
            }
            for r in rows
        ]

    def patients(self, patient_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The current bodies of stored Patients (those deleted since are left out)."""
        with self.store.reading() as s:
            return s.current_many("Patient", patient_ids)

    def person_of(self, pid: str) -> str | None:
        """The person of a record as every process has committed it (the members, manual
        marks and refusals in memory are then current too)."""
        self.refresh()
        with self._lock:
            return self.membership.person_of(pid)

    def members_of(self, person: str) -> list[str]:
        """The registrations in ``person`` as every process has committed them."""
        self.refresh()
        with self._lock:
            return sorted(self.membership.members(person))

    def placement(self, pid: str) -> tuple[str | None, list[str], bool]:
        """A registration's person, that person's registrations, and whether a reviewer
        placed it (automatic linking never moves it then), as every process has committed."""
        self.refresh()
        with self._lock:
            membership = self.membership
            person = membership.person_of(pid)
            members = sorted(membership.members(person)) if person else []
            return person, members, membership.is_manual(pid)

    def decisions(self, pid: str) -> list[dict[str, Any]]:
        with self.store.reading() as s:
            rows = s.conn.execute(
                select(mpi_decision).where(
                    mpi_decision.c.active,
                    or_(mpi_decision.c.patient_a == pid, mpi_decision.c.patient_b == pid),
                )
            ).all()
        return [
            {
                "patients": [r.patient_a, r.patient_b],
                "decision": r.decision,
                "reviewer": r.reviewer,
                "reason": r.reason,
                "at": r.at,
            }
            for r in rows
        ]

    def score(self, a: RegistryRecord, b: RegistryRecord) -> ScoredCandidate:
        return score_pair(self.model, a, b)


@dataclass(slots=True)
class _Journal:
    """The journal rows of one transaction: the patients named, the last row's number; and
    what the transaction itself wrote, so the golden records need not read it back: each
    Patient's stored body (None once deleted), each membership row's probability and manual
    flag, the persons it started, and those whose members changed since their last write."""

    patients: set[str] = field(default_factory=set)
    last: int = 0
    # per-key locking: the rows are written at the end (``_number_changes``), their numbers here
    numbered_at_end: bool = False
    seqs: list[int] = field(default_factory=list)
    bodies: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    members: dict[str, tuple[float, bool]] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)
    reshaped: set[str] = field(default_factory=set)
    # While linking a transaction's Patients, the registry's own writes wait here and go
    # together (one round trip on PostgreSQL) before a statement that reads their tables and
    # at the end: each was a round trip under the lock every process waits for.
    deferring: bool = False
    queue: list[tuple[DriverSql, dict[str, Any], Callable[[list[Any]], None] | None]] = field(
        default_factory=list
    )

    def send(
        self,
        conn: Connection,
        statement: DriverSql,
        params: dict[str, Any],
        on_rows: Callable[[list[Any]], None] | None = None,
    ) -> None:
        """Run a registry write now, or queue it while ``deferring``."""
        if self.deferring:
            self.queue.append((statement, params, on_rows))
            return
        self.send_queued(conn)
        rows = driver_execute(conn, statement, params)
        if on_rows is not None:
            on_rows(rows)

    def send_queued(
        self, conn: Connection, *reads: tuple[DriverSql, dict[str, Any]]
    ) -> list[list[Any]]:
        """Send the queued writes, then ``reads`` in the same round trip; the reads' rows."""
        queue, self.queue = self.queue, []
        if not queue and not reads:
            return []
        statements = [(statement, params) for statement, params, _ in queue] + list(reads)
        results = driver_pipeline(conn, statements)
        for (_, _, on_rows), rows in zip(queue, results, strict=False):
            if on_rows is not None:
                on_rows(rows)
        return results[len(queue) :]

    def numbered(self, rows: list[Any]) -> None:
        """A journal row's number came back (``NOTE_CHANGE ... RETURNING seq``)."""
        ((seq,),) = rows
        self.last = max(self.last, int(seq))


def _last_change(conn: Connection) -> int:
    return int(conn.execute(select(func.max(mpi_change.c.seq))).scalar() or 0)


def _without_meta(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "meta"}


def _read(session: Session, resource_type: str, resource_id: str) -> dict[str, Any] | None:
    row = session._row(resource_type, resource_id)
    return orjson.loads(row.content) if row and not row.deleted and row.content else None


def _event_values(
    kind: str, actor: str, reason: str | None, detail: dict[str, Any]
) -> dict[str, Any]:
    """``LOG_EVENT``'s parameters."""
    return {
        "at": time.time(),
        "kind": kind,
        "actor": actor,
        "reason": reason,
        "detail": orjson.dumps(detail).decode(),
    }


def _lock_key(kind: str, value: str) -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit integer) for a block key or a person:
    two values sharing one only take turns needlessly."""
    digest = hashlib.blake2b(f"{kind}\x1f{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _members(
    session: Session, patient_ids: list[str], journal: _Journal
) -> dict[str, tuple[float, bool, dict[str, Any] | None]]:
    """Each member's probability, whether a reviewer placed it, and its current Patient (None
    once deleted), in ``patient_ids``' order: what this transaction wrote from its journal,
    the rest in one statement on the driver for up to 50 members (a Patient create linked by
    the registry ran two through SQLAlchemy for this; a new person's, none)."""
    found: dict[str, tuple[float, bool, dict[str, Any] | None]] = {}
    unknown = []
    for pid in patient_ids:
        row = journal.members.get(pid)
        if row is not None and pid in journal.bodies:
            found[pid] = (*row, journal.bodies[pid])
        else:
            unknown.append(pid)
    reads = []
    for start in range(0, len(unknown), 50):
        chunk = unknown[start : start + 50]
        params = {**numbered(chunk), "patient": "Patient", "deleted": False}
        reads.append((listed(MEMBERS_IN, ":p{i}", len(chunk)), params))
    # after the transaction's own membership rows, which the reads must see
    for rows in journal.send_queued(session.conn, *reads) if reads else []:
        for pid, probability, manual, content in rows:
            body = orjson.loads(content) if content else None
            if body is not None:
                body.setdefault("id", pid)
            found[pid] = (float(probability), bool(manual), body)
    return {pid: found[pid] for pid in patient_ids if pid in found}


def _unlinked_ids(conn: Connection) -> list[str]:
    """Current Patients without a person, in the order they were stored."""
    rows = conn.execute(select(resource.c.res_id).where(*_UNLINKED).order_by(resource.c.rid))
    return [pid for (pid,) in rows]


def _patients(session: Session) -> Iterator[tuple[str, dict[str, Any]]]:
    rows = session.conn.execution_options(yield_per=5000).execute(
        select(resource.c.res_id, resource.c.content).where(
            resource.c.res_type == "Patient", resource.c.deleted.is_(False)
        )
    )
    for row in rows:
        if row.content:
            yield row.res_id, orjson.loads(row.content)
