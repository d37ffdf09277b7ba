"""The client registry's candidate index in the database (``Settings.registry_index = "store"``).

The in-memory ``CandidateIndex`` holds every registration in every server process: about
1.25 KB a record, read whole at each start (71 s at 350,000 persons). A country's 77 million
registrations would be some 95 GB in each process. Here the index is three tables that every
process shares (``takamul.mpi.schema``): each record's block keys as 64-bit slots, the Patients
indexed with their national IDs, and the name values the term frequencies count. A candidate
lookup is one indexed query for the record's slots; the candidates' records are built from their
stored Patients (``from_patient``) and kept in a bounded cache, which the registry's change
journal keeps current as it keeps the in-memory mirror (``forget``/``saw``).

The index rows are written on the registry transaction's own connection (``bind``), so they
commit or roll back with the link; a lookup inside that transaction sees the transaction's own
rows. Outside one (``$match``, the screens) a lookup takes a short read of its own.

Scoring is the in-memory index's (``CandidateIndex._scored``), on the same records and the same
model, so both decide alike (``tests/test_registry_stored_index.py`` links one sequence of
registrations both ways and compares the persons).
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Connection, select

from takamul.mpi.connection import BoundConnection, Riding
from takamul.mpi.schema import mpi_block, mpi_indexed, mpi_name, mpi_word
from takamul.registry.finder import name_words
from takamul.registry.index import CandidateIndex, ScoredCandidate, _across_generations
from takamul.registry.linking import LinkageModel
from takamul.registry.record import RegistryRecord, from_patient
from takamul.store.repository import Store
from takamul.store.rowcopy import (
    DriverSql,
    copy_rows,
    driver_execute,
    driver_pipeline,
    listed,
    numbered,
)
from takamul.store.schema import resource

__all__ = ["IndexRows", "StoredCandidateIndex", "patient_record", "slot_of"]

# Records kept in a process's cache (about 1 KB each): the candidates of recent registrations
# and their persons' members, not the population.
CACHE_RECORDS = 200_000
# statements with IN lists are made per list length; lists are sent in chunks of this many
CHUNK = 200
# indexed Patients a start compares with the model (``agrees_with_model``)
SAMPLE = 50

DROP_BLOCKS = DriverSql("DELETE FROM mpi_block WHERE patient_id = :pid")
DROP_NAMES = DriverSql("DELETE FROM mpi_name WHERE patient_id = :pid")
DROP_INDEXED = DriverSql("DELETE FROM mpi_indexed WHERE patient_id = :pid")
DROP_WORDS = DriverSql("DELETE FROM mpi_word WHERE patient_id = :pid")
# the Patient's version as stored now (its row is written before the registry links it)
PUT_INDEXED = DriverSql(
    "INSERT INTO mpi_indexed (patient_id, version, national_id)"
    " SELECT r.res_id, r.version, CAST(:nid AS varchar(64)) FROM resource r"
    " WHERE r.res_type = :patient AND r.res_id = :pid"
    " ON CONFLICT (patient_id) DO UPDATE SET version = excluded.version,"
    " national_id = excluded.national_id"
)
HOLDERS = DriverSql("SELECT patient_id FROM mpi_indexed WHERE national_id = :nid")
# PostgreSQL: every slot's patients in one statement, at most ``cap`` of each (a block over its
# rule's ``max_block_size`` yields no candidates, so no more are worth reading)
BLOCKS_PG = DriverSql(
    "SELECT s.slot, b.patient_id FROM unnest(CAST(:slots AS bigint[])) AS s(slot)"
    " CROSS JOIN LATERAL (SELECT patient_id FROM mpi_block WHERE slot = s.slot LIMIT :cap) b"
)
BLOCK_SQLITE = DriverSql("SELECT patient_id FROM mpi_block WHERE slot = :slot LIMIT :cap")
PATIENTS_PG = DriverSql(
    "SELECT res_id, content FROM resource WHERE res_type = :patient AND deleted = :deleted"
    " AND res_id = ANY(CAST(:ids AS varchar[]))"
)
# statements with a list of n items (``listed``), for SQLite: PostgreSQL takes an array
PATIENTS_IN = (
    "SELECT res_id, content FROM resource WHERE res_type = :patient AND deleted = :deleted"
    " AND res_id IN ({items})"
)
INDEXED_IN = "SELECT patient_id FROM mpi_indexed WHERE patient_id IN ({items})"
BLOCKS_IN = "SELECT patient_id, slot FROM mpi_block WHERE patient_id IN ({items})"
NAMES_IN = "SELECT patient_id, field, value FROM mpi_name WHERE patient_id IN ({items})"
WORDS_IN = "SELECT patient_id, skel, norm, arabic FROM mpi_word WHERE patient_id IN ({items})"
# every table of a patient's rows
TABLES = ("mpi_block", "mpi_name", "mpi_word", "mpi_indexed")
DROP_IN = {table: f"DELETE FROM {table} WHERE patient_id IN ({{items}})" for table in TABLES}
PUT_BLOCKS = "INSERT INTO mpi_block (slot, patient_id) VALUES {items} ON CONFLICT DO NOTHING"
PUT_NAMES = "INSERT INTO mpi_name (patient_id, field, value) VALUES {items} ON CONFLICT DO NOTHING"
PUT_WORDS = (
    "INSERT INTO mpi_word (skel, patient_id, norm, arabic) VALUES {items} ON CONFLICT DO NOTHING"
)
FIRST_INDEXED = DriverSql("SELECT patient_id FROM mpi_indexed ORDER BY patient_id LIMIT :n")
CLEAR = [DriverSql(f"DELETE FROM {table}") for table in TABLES]
TERM_COUNTS = DriverSql("SELECT field, value, count(*) FROM mpi_name GROUP BY field, value")
INDEXED_COUNT = DriverSql("SELECT count(*) FROM mpi_indexed")
INDEXED_IDS = DriverSql("SELECT patient_id FROM mpi_indexed ORDER BY patient_id")
# Patients with no index rows at their stored version (a bulk load writes none), and index
# rows of Patients no longer stored
UNINDEXED = DriverSql(
    "SELECT r.res_id, r.content, r.version, i.version FROM resource r"
    " LEFT JOIN mpi_indexed i ON i.patient_id = r.res_id"
    " WHERE r.res_type = :patient AND r.deleted = :deleted"
    " AND (i.patient_id IS NULL OR i.version <> r.version)"
)
ORPHANS = DriverSql(
    "SELECT i.patient_id FROM mpi_indexed i LEFT JOIN resource r"
    " ON r.res_type = :patient AND r.res_id = i.patient_id AND r.deleted = :deleted"
    " WHERE r.rid IS NULL"
)


def slot_of(key: tuple[str, ...]) -> int:
    """A block key's slot: a stable signed 64-bit hash (Python's ``hash`` of a string differs
    from process to process, and every process reads these rows). Two keys sharing a slot pool
    their blocks' records as candidates, which scoring tells apart."""
    digest = hashlib.blake2b("\x1f".join(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class StoredCandidateIndex(CandidateIndex):
    """``CandidateIndex`` with its records and blocks in the store's tables."""

    def __init__(self, model: LinkageModel, store: Store, cache: int = CACHE_RECORDS) -> None:
        super().__init__(model)
        self.store = store
        self._cache: OrderedDict[str, RegistryRecord] = OrderedDict()
        self._cache_size = cache
        self._cache_lock = threading.Lock()
        self._local = threading.local()  # the transaction's memo
        self._conn = BoundConnection(store)
        # Statements another reader sends with each fetch of records, and what takes their
        # rows (the registry's stored membership: a link's persons come in the round trip of
        # its candidates' records). Set by the registry, which holds its lock around fetches.
        self.companion: Callable[[list[str]], Riding | None] | None = None
        self._count = 0
        # read at most this many patients of a slot: one over the largest block any rule keeps
        self._cap = max((rule.max_block_size for rule in model.blocking), default=200) + 1

    # -- the connection ---------------------------------------------------------------------

    def bind(self, conn: Connection | None) -> None:
        """Look up and write on ``conn`` in this thread from now on (None: short reads).

        A bound transaction remembers what it looked up (a national ID's holders, a slot's
        patients) until it ends: a link asks for the same ones four times and twice. What
        could change them meanwhile reaches the memo too: this transaction's own index
        writes (``add``, ``remove``) and, under the registry's locks, the others' through the
        change journal's catch-up (``follow``, ``follow_removal``)."""
        self._conn.bind(conn)
        self._local.memo = _Memo() if conn is not None else None

    def _memo(self) -> _Memo | None:
        return getattr(self._local, "memo", None)

    def _rows(self, statement: DriverSql, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with self._conn() as conn:
            return driver_execute(conn, statement, params)

    # -- what the in-memory index answers from its dictionaries -----------------------------

    def __len__(self) -> int:
        """The records indexed when the term frequencies were last counted."""
        return self._count

    def __bool__(self) -> bool:
        return True  # an index, however many records it holds

    def __contains__(self, patient_id: object) -> bool:
        return bool(self._rows(listed(INDEXED_IN, ":p{i}", 1), {"p0": patient_id}))

    def ids(self) -> list[str]:
        return [pid for (pid,) in self._rows(INDEXED_IDS, {})]

    def records(self) -> Iterator[RegistryRecord]:
        """Every stored Patient's record, read in one pass and not cached (the screens' finder).
        Streamed, 2,000 rows at a time (a server-side cursor on PostgreSQL): read whole, the
        220,000 Patients of a 100,000-person store left a process 1.3 GB larger."""
        query = select(resource.c.res_id, resource.c.content).where(
            resource.c.res_type == "Patient", resource.c.deleted.is_(False)
        )
        with self.store.reading() as session:
            for pid, content in session.conn.execution_options(yield_per=2000).execute(query):
                if content:
                    yield patient_record(pid, content)

    def get(self, patient_id: str) -> RegistryRecord | None:
        return self.fetch([patient_id]).get(patient_id)

    def fetch(
        self, patient_ids: Iterable[str], also: Iterable[str] = ()
    ) -> dict[str, RegistryRecord]:
        """The records of ``patient_ids`` (indexed Patients: candidates, members, holders)
        that are stored: from the cache, the rest from their stored Patients in one statement
        per chunk, with the ``companion``'s statements on these patients and ``also`` in the
        same round trip."""
        asked = list(patient_ids)
        found: dict[str, RegistryRecord] = {}
        missing = []
        with self._cache_lock:
            for pid in asked:
                record = self._cache.get(pid)
                if record is None:
                    missing.append(pid)
                else:
                    self._cache.move_to_end(pid)
                    found[pid] = record
        riding = self.companion([*asked, *also]) if self.companion is not None else None
        if not missing and riding is None:
            return found
        read: dict[str, RegistryRecord] = {}
        with self._conn() as conn:
            reads = [
                _patients(conn, missing[start : start + CHUNK])
                for start in range(0, len(missing), CHUNK)
            ]
            results = driver_pipeline(conn, reads + (riding[0] if riding else []))
            for rows in results[: len(reads)]:
                for pid, content in rows:
                    if content:
                        read[pid] = patient_record(pid, content)
        if riding is not None:
            riding[1](results[len(reads) :])
        for record in read.values():
            self.saw(record)
        found.update(read)
        return found

    def saw(self, record: RegistryRecord) -> None:
        """Cache ``record`` as stored now (the journal's catch-up brought it)."""
        with self._cache_lock:
            self._cache[record.patient_id] = record
            self._cache.move_to_end(record.patient_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def forget(self, patient_id: str) -> None:
        """Drop a cached record (changed or rolled back: read again when next wanted)."""
        with self._cache_lock:
            self._cache.pop(patient_id, None)

    def _remembered(self, record: RegistryRecord | None, patient_id: str) -> None:
        """Keep the transaction's memo true after ``patient_id`` was indexed as ``record``
        (None: removed)."""
        memo = self._memo()
        if memo is None:
            return
        slots = {slot for _, slot in self._slots(record)} if record is not None else set()
        memo.put(patient_id, record.national_id if record is not None else None, slots)

    # -- writes, on the registry transaction's connection ------------------------------------

    def add(self, record: RegistryRecord) -> None:
        """Index a record (replacing its earlier rows) in the bound transaction."""
        pid = record.patient_id
        statements: list[tuple[DriverSql, dict[str, Any]]] = [
            (DROP_BLOCKS, {"pid": pid}),
            (DROP_NAMES, {"pid": pid}),
            (DROP_WORDS, {"pid": pid}),
            (PUT_INDEXED, {"pid": pid, "nid": record.national_id, "patient": "Patient"}),
        ]
        slots = sorted({slot for _, slot in self._slots(record)})
        for start in range(0, len(slots), CHUNK):
            chunk = slots[start : start + CHUNK]
            put = listed(PUT_BLOCKS, "(:s{i}, :pid)", len(chunk))
            statements.append((put, {**numbered(chunk, "s"), "pid": pid}))
        terms = self.term_values(record)
        if terms:
            fields, values = zip(*terms, strict=True)
            params = {**numbered(fields, "f"), **numbered(values, "v"), "pid": pid}
            statements.append((listed(PUT_NAMES, "(:pid, :f{i}, :v{i})", len(terms)), params))
        words = sorted(_word_rows(record))
        if words:
            skels, norms, arabic = zip(*words, strict=True)
            params = {**numbered(skels, "w"), **numbered(norms, "n"), **numbered(arabic, "a")}
            put = listed(PUT_WORDS, "(:w{i}, :pid, :n{i}, :a{i})", len(words))
            statements.append((put, {**params, "pid": pid}))
        with self._conn() as conn:
            driver_pipeline(conn, statements)
        self.saw(record)
        self._remembered(record, pid)

    def remove(self, patient_id: str) -> None:
        with self._conn() as conn:
            driver_pipeline(
                conn,
                [
                    (DROP_BLOCKS, {"pid": patient_id}),
                    (DROP_NAMES, {"pid": patient_id}),
                    (DROP_WORDS, {"pid": patient_id}),
                    (DROP_INDEXED, {"pid": patient_id}),
                ],
            )
        self.forget(patient_id)
        self._remembered(None, patient_id)

    # -- lookups ------------------------------------------------------------------------------

    def _slots(self, record: RegistryRecord) -> Iterable[tuple[int, int]]:
        for key in self.block_keys(record):
            yield int(key[0]), slot_of(key)

    def holders_of(self, national_id: str) -> set[str]:
        memo = self._memo()
        if memo is not None and national_id in memo.holders:
            return set(memo.holders[national_id])
        found = {pid for (pid,) in self._rows(HOLDERS, {"nid": national_id})}
        if memo is not None:
            memo.holders[national_id] = set(found)
        return found

    def _holder_years(self, national_id: str) -> dict[str, frozenset[int]]:
        records = self.fetch(sorted(self.holders_of(national_id)))
        return {pid: record.birth_years for pid, record in records.items()}

    def shared_across_generations(self, national_id: str) -> bool:
        return _across_generations(national_id, self._holder_years(national_id))

    def candidates(self, record: RegistryRecord) -> set[str]:
        by_slot: dict[int, int] = {}  # slot -> the smallest block size its rules keep
        for rule, slot in self._slots(record):
            size = self.model.blocking[rule].max_block_size
            by_slot[slot] = min(size, by_slot.get(slot, size))
        found: set[str] = set()
        if not by_slot:
            return found
        memo = self._memo()
        known = memo.blocks if memo is not None else {}
        cap = self._cap
        wanted = sorted(slot for slot in by_slot if slot not in known)
        if wanted:
            with self._conn() as conn:
                read = _blocks(conn, wanted, cap)
            fresh = {slot: set(read.get(slot, ())) for slot in wanted}
            if memo is not None:
                memo.blocks.update(fresh)
                # ``cap`` read: there may be more, and the block stays over every rule's size
                memo.over.update(slot for slot, members in fresh.items() if len(members) >= cap)
            known = {**known, **fresh}
        over = memo.over if memo is not None else set()
        for slot, size in by_slot.items():
            members = known[slot]
            if len(members) <= size and slot not in over:
                found.update(members)
        found.discard(record.patient_id)
        return found

    def score(self, record: RegistryRecord, floor: float = 0.0) -> list[ScoredCandidate]:
        # the candidates' records in one read, then the in-memory index's scoring on them
        others = self.fetch(sorted(self.candidates(record)), also=[record.patient_id])
        return self._scored(record, others.values(), floor)

    def refresh_term_frequencies(self) -> None:
        """Count the name frequencies and the population in the tables (``GROUP BY``)."""
        counts: dict[str, Counter[str]] = {
            spec.name: Counter() for spec in self.model.fields if spec.tf
        }
        with self._conn() as conn:
            for name, value, n in driver_execute(conn, TERM_COUNTS, {}):
                if name in counts:
                    counts[name][value] = int(n)
            ((total,),) = driver_execute(conn, INDEXED_COUNT, {})
        self._count = int(total)
        self.set_term_frequencies(counts, self._count)

    def expected(self, record: RegistryRecord) -> IndexRows:
        """The rows the tables should hold for ``record`` under this model (what ``add`` and
        ``index_many`` write; ``takamul mpi check`` compares them)."""
        return IndexRows(
            frozenset(slot for _, slot in self._slots(record)),
            frozenset(self.term_values(record)),
            frozenset(_word_rows(record)),
        )

    def held(self, conn: Connection, patient_ids: list[str]) -> dict[str, IndexRows]:
        """The slots, name values and words the tables hold for each of ``patient_ids``."""
        marks = numbered(patient_ids)
        slots: dict[str, set[Any]] = {pid: set() for pid in patient_ids}
        names: dict[str, set[Any]] = {pid: set() for pid in patient_ids}
        words: dict[str, set[Any]] = {pid: set() for pid in patient_ids}
        n = len(patient_ids)
        for pid, slot in driver_execute(conn, listed(BLOCKS_IN, ":p{i}", n), marks):
            slots[pid].add(int(slot))
        for pid, name, value in driver_execute(conn, listed(NAMES_IN, ":p{i}", n), marks):
            names[pid].add((name, value))
        for pid, skel, norm, arabic in driver_execute(conn, listed(WORDS_IN, ":p{i}", n), marks):
            words[pid].add((skel, norm, bool(arabic)))
        return {
            pid: IndexRows(frozenset(slots[pid]), frozenset(names[pid]), frozenset(words[pid]))
            for pid in patient_ids
        }

    # -- start-up ---------------------------------------------------------------------------

    def agrees_with_model(self, sample: int = SAMPLE) -> bool:
        """Do the first ``sample`` indexed Patients' rows match what this model gives them?
        (Also false for a store indexed before the finder's words were: none of its Patients
        has word rows, and every Patient with a name should.)

        A model trained with other blocking rules or name fields (``takamul mpi train``) gives
        nearly every record other slots or name rows, so a small sample tells a start whether
        the rows were written under another model: their Patients' versions have not changed,
        so ``stale`` would not see it, and candidates would be looked up where they are not."""
        with self._conn() as conn:
            ids = [pid for (pid,) in driver_execute(conn, FIRST_INDEXED, {"n": sample})]
            if not ids:
                return True
            held = self.held(conn, ids)
            stored = dict(driver_execute(conn, *_patients(conn, ids)))
        for pid in ids:
            content = stored.get(pid)
            if not content:
                continue  # deleted since: the start's ``stale`` drops its rows
            if self.expected(patient_record(pid, content)) != held[pid]:
                return False
        return True

    def clear(self, conn: Connection) -> None:
        """Drop every index row (before indexing every Patient again under a new model)."""
        for statement in CLEAR:
            driver_execute(conn, statement, {})
        with self._cache_lock:
            self._cache.clear()

    def stale(self) -> tuple[list[tuple[RegistryRecord, int]], list[str]]:
        """(records to index with their Patients' versions, patient ids whose rows to drop):
        Patients never indexed (a bulk load runs no write hooks) or stored since their index
        rows were written (their old rows dropped), and Patients deleted meanwhile."""
        params = {"patient": "Patient", "deleted": False}
        records, replaced = [], []
        with self._conn() as conn:
            for pid, content, version, indexed in driver_execute(conn, UNINDEXED, params):
                if indexed is not None:
                    replaced.append(pid)
                if content:
                    records.append((patient_record(pid, content), int(version)))
            orphans = [pid for (pid,) in driver_execute(conn, ORPHANS, params)]
        return records, replaced + orphans

    def index_many(
        self, conn: Connection, records: list[tuple[RegistryRecord, int]], dropped: list[str]
    ) -> None:
        """Write the index rows of many records at once (COPY on PostgreSQL) and drop the
        rows of ``dropped`` first (their earlier rows, or deleted Patients'): a start-up's
        catch-up after a bulk load, where a statement a record would take hours at a national
        population. A record never indexed has no rows to drop: at 220,000 new ones, a delete
        for each chunk of them took longer than the copy."""
        replaced = sorted(set(dropped))
        for start in range(0, len(replaced), CHUNK):
            chunk = replaced[start : start + CHUNK]
            for drop in DROP_IN.values():
                driver_execute(conn, listed(drop, ":p{i}", len(chunk)), numbered(chunk))
        indexed: list[tuple[Any, ...]] = []
        blocks: list[tuple[Any, ...]] = []
        names: list[tuple[Any, ...]] = []
        words: list[tuple[Any, ...]] = []
        for record, version in records:
            pid = record.patient_id
            indexed.append((pid, version, record.national_id))
            blocks.extend((slot, pid) for slot in sorted({s for _, s in self._slots(record)}))
            names.extend((pid, name, value) for name, value in self.term_values(record))
            words.extend((skel, pid, norm, arabic) for skel, norm, arabic in _word_rows(record))
        copy_rows(conn, mpi_indexed, ("patient_id", "version", "national_id"), indexed)
        copy_rows(conn, mpi_block, ("slot", "patient_id"), blocks)
        copy_rows(conn, mpi_name, ("patient_id", "field", "value"), names)
        copy_rows(conn, mpi_word, ("skel", "patient_id", "norm", "arabic"), words)
        for pid in dropped:
            self.forget(pid)
        for record, _ in records:
            self.forget(record.patient_id)

    # -- following other processes (the change journal) ---------------------------------------

    def follow(self, record: RegistryRecord) -> None:
        """Another process indexed ``record`` (its rows are in the tables): cache it."""
        self.saw(record)
        self._remembered(record, record.patient_id)

    def follow_removal(self, patient_id: str) -> None:
        self.forget(patient_id)
        self._remembered(None, patient_id)


class _Memo:
    """A transaction's lookups: national ID -> holders, slot -> patients (at most the cap)."""

    __slots__ = ("blocks", "holders", "over")

    def __init__(self) -> None:
        self.holders: dict[str, set[str]] = {}
        self.blocks: dict[int, set[str]] = {}
        self.over: set[int] = set()  # slots read full: more patients than any rule keeps

    def put(self, patient_id: str, national_id: str | None, slots: set[int]) -> None:
        """``patient_id`` now holds ``national_id`` and ``slots`` (and nothing else)."""
        for nid, held in self.holders.items():
            if nid == national_id:
                held.add(patient_id)
            else:
                held.discard(patient_id)
        # a slot read full is not known whole: read it again after any change
        for slot in self.over:
            del self.blocks[slot]
        self.over.clear()
        for slot, held in self.blocks.items():
            if slot in slots:
                held.add(patient_id)
            else:
                held.discard(patient_id)


def patient_record(pid: str, content: Any) -> RegistryRecord:
    """The registry's record of a Patient from its stored JSON (bytes, or a driver's view)."""
    body = orjson.loads(bytes(content) if isinstance(content, memoryview) else content)
    body.setdefault("id", pid)
    return from_patient(body)


def _blocks(conn: Connection, slots: list[int], cap: int) -> dict[int, list[str]]:
    """Each slot's patients, at most ``cap`` of each."""
    out: dict[int, list[str]] = {}
    if conn.dialect.name == "postgresql":
        for slot, pid in driver_execute(conn, BLOCKS_PG, {"slots": slots, "cap": cap}):
            out.setdefault(int(slot), []).append(pid)
        return out
    # SQLite runs in this process: a statement a slot costs microseconds, not a round trip
    for slot in slots:
        rows = driver_execute(conn, BLOCK_SQLITE, {"slot": slot, "cap": cap})
        if rows:
            out[slot] = [pid for (pid,) in rows]
    return out


def _patients(conn: Connection, patient_ids: list[str]) -> tuple[DriverSql, dict[str, Any]]:
    """The statement that reads these stored Patients' ids and contents."""
    if conn.dialect.name == "postgresql":
        return PATIENTS_PG, {"patient": "Patient", "deleted": False, "ids": patient_ids}
    params = {**numbered(patient_ids), "patient": "Patient", "deleted": False}
    return listed(PATIENTS_IN, ":p{i}", len(patient_ids)), params


class IndexRows(NamedTuple):
    """A Patient's rows besides ``mpi_indexed``: its slots, name values and finder words."""

    slots: frozenset[int]
    names: frozenset[tuple[str, str]]
    words: frozenset[tuple[str, str, bool]]


def _word_rows(record: RegistryRecord) -> set[tuple[str, str, bool]]:
    """(skeleton, normalised form, Arabic?) of each of the record's name words: the finder's."""
    return {(t.skel, t.norm, t.arabic) for t in name_words(record)}
