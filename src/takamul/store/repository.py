"""Reading and writing the shared record: versions, conditional interactions, history, search.

Every write runs in one database transaction that covers the resource, its version and its
search-index rows, so a failed request writes nothing.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    event,
    false,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError

from takamul.fhir.definitions import definitions
from takamul.fhir.outcome import FhirError, OutcomeIssue, not_found
from takamul.fhir.search_values import SearchIndexer
from takamul.fhir.sensitivity import label_sensitive
from takamul.fhir.validation import validate_resource
from takamul.settings import Settings
from takamul.store.engine import IDLE_PING_SECONDS, make_engines, redacted, statement_engine
from takamul.store.guard import Guard, current_guard
from takamul.store.indexing import INDEX_COLUMNS, VERSION_COLUMNS, compartment_of, index_tuples
from takamul.store.labels import ensure_labelled
from takamul.store.migrations import prepare_at_start
from takamul.store.nested import guard_nested
from takamul.store.query import IncludeSpec, QueryParser, SearchQuery
from takamul.store.records import SearchPage, StoredResource, instant
from takamul.store.rowcopy import DriverSql, copy_tables, driver_cursor, driver_execute
from takamul.store.schema import (
    INDEX_TABLES,
    conditional_claim,
    resource,
    resource_version,
    sp_reference,
    values_in,
    version_columns,
    version_content,
)
from takamul.store.search import matching_rids, sort_expressions, typed_keys
from takamul.store.totals import Total, exact_count, search_total

T = TypeVar("T")

# A bulk load's update of stored resources (``bulkwrite``), built once: building it per batch
# cost more than executing it.
UPDATE_RESOURCE = (
    update(resource)
    .where(resource.c.rid == bindparam("b_rid"))
    .values(
        version=bindparam("version"),
        last_updated=bindparam("last_updated"),
        deleted=bindparam("deleted"),
        content=bindparam("content"),
        compartment=bindparam("compartment"),
    )
)
_CURRENT_COLUMNS = "rid, res_type, res_id, version, last_updated, deleted, content"
SELECT_CURRENT_SQL = {
    "postgresql": f"SELECT {_CURRENT_COLUMNS} FROM resource WHERE res_type = %s AND res_id = %s",
    "sqlite": f"SELECT {_CURRENT_COLUMNS} FROM resource WHERE res_type = ? AND res_id = ?",
}
# A write's own statements on the resource table, straight on the driver too: through
# SQLAlchemy's execution each cost about as much CPU as its round trip. They touch only the
# resource table (or, for the replaced version's JSON, a row already sent), so they need not
# send the transaction's pending rows first. SQLite has no row locks: its write transaction
# holds the database's one write lock from BEGIN IMMEDIATE.
# (with the compartment: a deletion's version row keeps it)
_LOCKED = (
    f"SELECT {_CURRENT_COLUMNS}, compartment FROM resource WHERE res_type = %s AND res_id = %s"
)
SELECT_CURRENT_FOR_UPDATE_SQL = {
    "postgresql": _LOCKED + " FOR UPDATE",
    "sqlite": _LOCKED.replace("%s", "?"),
}
INSERT_RESOURCE_SQL = DriverSql(
    "INSERT INTO resource (res_type, res_id, version, last_updated, deleted, content,"
    " compartment) VALUES (:res_type, :res_id, :version, :last_updated, :deleted, :content,"
    " :compartment) RETURNING rid"
)
UPDATE_RESOURCE_SQL = DriverSql(
    "UPDATE resource SET version = :version, last_updated = :last_updated, deleted = :deleted,"
    " content = :content, compartment = :compartment WHERE rid = :b_rid"
)
# The version being replaced keeps its JSON in its own row from now on: while current, the
# JSON is stored once, in ``resource.content`` (``schema.version_content``). It runs only for a
# version row already sent (``Session._keep_replaced`` patches a pending one instead).
KEEP_VERSION_CONTENT_SQL = DriverSql(
    "UPDATE resource_version SET content = :b_content WHERE rid = :b_rid AND version = :b_version"
)


class CurrentRow(NamedTuple):
    """A row of ``SELECT_CURRENT_SQL``."""

    rid: int
    res_type: str
    res_id: str
    version: int
    last_updated: float
    deleted: bool
    content: bytes | None
    compartment: str | None = None  # read only when the row is locked for a write


# written once as SQL: write hooks run it on every write, and building the expression each time
# cost more than running it
SELECT_REFERRING = text(
    "SELECT r.res_id, r.content FROM resource r WHERE r.deleted = :f AND r.rid IN ("
    "SELECT x.rid FROM sp_reference x WHERE x.target_type = :target_type "
    "AND x.target_id = :target_id AND x.res_type = :res_type AND x.param = :param) "
    "ORDER BY r.res_id"
)
# A resource's index rows dropped before its new ones are written (an update, a delete):
# ``Session._drop_index`` first takes that rid's rows out of the pending ones, so the rows still
# waiting belong to other resources and the delete cannot touch them. On PostgreSQL one
# statement for all seven tables (seven round trips were an eighth of a linked Patient create).
DROP_INDEX = {
    kind: DriverSql(f"DELETE FROM {table.name} WHERE rid = :b_rid")
    for kind, table in INDEX_TABLES.items()
}
_DROP_INDEX_CTES = ", ".join(
    f"d_{kind} AS (DELETE FROM {table.name} WHERE rid = :b_rid)"
    for kind, table in INDEX_TABLES.items()
)
DROP_INDEX_PG = DriverSql(f"WITH {_DROP_INDEX_CTES} SELECT 1")
# An update on PostgreSQL in one statement: the new current row, the old index rows dropped
# and, when the replaced version's row was sent already, its JSON kept there (three round trips
# were a quarter of the store's part of a registry-linked create, whose golden record is an
# update). Data-modifying CTEs on separate tables; each statement sees the same snapshot.
_REPLACE_PG = (
    f"WITH {_DROP_INDEX_CTES}"
    ", current_row AS (UPDATE resource SET version = :version, last_updated = :last_updated,"
    " deleted = :deleted, content = :content, compartment = :compartment WHERE rid = :b_rid)"
)
REPLACE_PG = DriverSql(_REPLACE_PG + " SELECT 1")
REPLACE_KEEPING_PG = DriverSql(
    _REPLACE_PG + ", kept AS (UPDATE resource_version SET content = :b_content"
    " WHERE rid = :b_rid AND version = :b_version) SELECT 1"
)
# Statements that send the pending rows themselves, only when one could change their answer
# (``Session.referring``): a write hook's look-up between a batch's writes otherwise sent the
# rows of every write before it, a COPY per table each time.
SENDS_OWN_PENDING = frozenset({SELECT_REFERRING})
# The tables pending rows go to: a statement that names none of them cannot read those rows
# (the store has no views or triggers over them), so the rows may wait for one that does or for
# the commit. A linked Patient create sent its own rows before the registry's statements (a lock,
# its journal and members) and the golden Person's at commit: a COPY per table, twice over.
_PENDING_TABLES = re.compile(
    r"\b(?:resource_version|" + "|".join(t.name for t in INDEX_TABLES.values()) + r")\b"
)
# Statements that may be followed by a rollback to a savepoint: rows written before it must be
# in the database by then, or the rollback would leave them behind to be sent later.
_PLAIN_DML = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")
_REF = {name: i for i, name in enumerate(INDEX_COLUMNS["reference"])}
_VERSION = {name: i for i, name in enumerate(VERSION_COLUMNS)}
PENDING = "takamul.pending_rows"
# a batch job's id lists longer than this go as one array parameter (``values_in``)
BATCH_LIST = 100
# A write transaction's statements are key lookups and inserts, the same plan whatever the
# values: PostgreSQL may keep one generic plan for each (the store otherwise plans every
# statement for its values, which searches need, ``engine._custom_plans``). Planning each of
# the forty-odd statements of a Patient create linked by the client registry cost about 12 of
# its 28 ms (one client, 10,000 persons). Reverts at the transaction's end.
GENERIC_PLANS = "SET LOCAL plan_cache_mode = auto"
ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.")
RETRIES = 20


def valid_id(value: str) -> bool:
    return 0 < len(value) <= 64 and all(c in ID_CHARS for c in value)


@dataclass(frozen=True, slots=True)
class WriteOptions:
    source: str | None = None  # meta.source when the client sent none
    # written by the server itself from validated parts (the registry's golden records):
    # validating them again on every Patient write would double the write's cost
    trusted: bool = False


# Called in the writing transaction after every stored version of a resource, with the
# stored body (None for a delete): how the client registry links a Patient as it is stored,
# without the store knowing about the registry.
WriteHook = Callable[["Session", str, str, "dict[str, Any] | None"], None]


class PendingRows:
    """The version and search-index rows of a transaction's writes not yet sent.

    A transaction Bundle of a hundred resources wrote some eight statements per resource, each
    a round trip; the version and index rows now wait here and go together (``copy_tables``)
    when the transaction next runs a statement that could read them (one that names their
    tables, or a savepoint: the writer engine's ``before_cursor_execute`` listener sends them,
    ``_may_read_pending``), and at commit. So every read inside the transaction still sees
    every write before it. The write's own statements on the driver (``DriverSql``) bypass the
    listener, each safely: those on the resource table, the replaced version's JSON (only for
    a version row already sent) and the drop of a resource's index rows (its waiting rows are
    dropped first).
    """

    def __init__(self) -> None:
        self.versions: list[tuple[Any, ...]] = []
        self.index: dict[str, list[tuple[Any, ...]]] = {}

    def refer_to(self, resource_type: str, param: str, target_type: str, target_id: str) -> bool:
        """Whether a pending reference index row says ``resource_type.param`` -> target."""
        kind, p, tt, ti = _REF["res_type"], _REF["param"], _REF["target_type"], _REF["target_id"]
        return any(
            row[ti] == target_id
            and row[tt] == target_type
            and row[p] == param
            and row[kind] == resource_type
            for row in self.index.get("reference", ())
        )

    def keep_content(self, rid: int, version: int, content: bytes) -> bool:
        """Give a pending version row its JSON (the next version replaces it in the same
        transaction); False when that row was sent already."""
        at_rid, at_version, at_content = _VERSION["rid"], _VERSION["version"], _VERSION["content"]
        for i in range(len(self.versions) - 1, -1, -1):
            row = self.versions[i]
            if row[at_rid] == rid and row[at_version] == version:
                self.versions[i] = (*row[:at_content], content, *row[at_content + 1 :])
                return True
        return False

    def forget(self, rid: int) -> None:
        """Drop the pending index rows of one resource (its index is being replaced)."""
        for kind, rows in self.index.items():
            if any(row[0] == rid for row in rows):
                self.index[kind] = [row for row in rows if row[0] != rid]

    def flush(self, conn: Connection) -> None:
        versions, index = self.versions, self.index
        if not versions and not index:
            return
        self.versions, self.index = [], {}
        batches: list[tuple[Table, Sequence[str], list[tuple[Any, ...]]]]
        batches = [(resource_version, VERSION_COLUMNS, versions)]
        batches += [(INDEX_TABLES[k], INDEX_COLUMNS[k], rows) for k, rows in index.items()]
        copy_tables(conn, batches)


def _send_pending(
    conn: Connection, _cursor: Any, _sql: str, _params: Any, context: Any, _many: bool
) -> None:
    """Before any statement of a writing connection (``before_cursor_execute`` sees them all,
    driver SQL too): send the pending rows unless it touches only the resource table."""
    pending: PendingRows | None = conn.info.get(PENDING)
    if pending is None or not (pending.versions or pending.index):
        return
    compiled = getattr(context, "compiled", None)
    if compiled is not None and compiled.statement in SENDS_OWN_PENDING:
        return
    if _may_read_pending(_sql):
        pending.flush(conn)


@functools.lru_cache(maxsize=4096)
def _may_read_pending(sql: str) -> bool:
    """Whether a statement could see the pending rows: it names one of their tables, or is not
    plain DML (a savepoint: a rollback to it must find the rows written before it sent)."""
    head = sql.lstrip()[:6].upper()
    return not head.startswith(_PLAIN_DML) or _PENDING_TABLES.search(sql) is not None


# seconds a kept statement-reader connection may wait unused before it goes back to the pool
# (which tests a connection idle this long before use: ``engine.IDLE_PING_SECONDS``)
KEPT_IDLE = IDLE_PING_SECONDS


# pg_advisory_xact_lock key of ``Store.analyze_stale`` ("takanl" in ASCII)
ANALYZE_LOCK = 0x74616B616E6C
# Tables of the current schema with rows but never analysed, or with more rows changed since
# their last ANALYZE than 1,000 and half the table. Not autovacuum's own threshold (50 rows and
# a tenth): a backend reports its changes when it ends, so the writes of a catch-up that then
# ran ANALYZE were still counted after it, and every start would have sampled those again.
_STALE_STATISTICS = """
SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = current_schema() AND s.n_live_tup + s.n_mod_since_analyze > 0
  AND (COALESCE(s.last_analyze, s.last_autoanalyze) IS NULL
       OR s.n_mod_since_analyze > 1000 + 0.5 * GREATEST(c.reltuples, 0))
"""


def _sqlite_counted_rows(conn: Connection) -> dict[str, int]:
    """Each table's rows as SQLite's last ANALYZE counted them (``sqlite_stat1``: the first
    number of an index's statistics is its entries; the largest is the table's rows, for a
    partial index holds fewer). Empty before any ANALYZE."""
    exists = conn.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'"
    ).first()
    if exists is None:
        return {}
    rows = conn.exec_driver_sql(
        "SELECT tbl, max(CAST(stat AS INTEGER)) FROM sqlite_stat1 GROUP BY tbl"
    ).all()
    return {str(table): int(count or 0) for table, count in rows}


class Store:
    """The shared record on one database (SQLite file or PostgreSQL)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.writer, self.reader = make_engines(settings.database_url)
        # connections that read outside any transaction of ours (``reading(snapshot=False)``)
        self.statement_reader = statement_engine(settings.database_url)
        # the last statement-reader connection given back, kept out of the pool for the next
        self._slot: Connection | None = None
        self._slot_since = 0.0
        self._slot_lock = threading.Lock()
        event.listen(self.writer, "before_cursor_execute", _send_pending)
        prepare_at_start(self.writer, redacted(settings.database_url))
        self.indexer = SearchIndexer()
        self.defs = definitions()
        self.write_hooks: list[WriteHook] = []
        ensure_labelled(self)
        # every stored patient resource carries its sensitivity labels: consent is SQL
        self.labels_complete = True

    @property
    def dialect(self) -> str:
        return self.writer.dialect.name

    def analyze(self, vacuum: bool = False) -> list[str]:
        """Refresh the planner's statistics, as after a bulk load, so searches keep good plans.

        ``vacuum`` (PostgreSQL): also ``VACUUM`` the tables, which marks the new rows visible to
        every transaction in the visibility map. Until then an index-only scan (a count, a
        search's candidates) still visits the table for every row it finds, and the first
        reader of each page writes its hint bits. At 100,000 persons, with a cold cache, a
        count of the 26,583 Conditions with one code visited 26,583 table rows and dirtied
        6,418 pages (168 ms); after ``VACUUM``, none (13 ms).
        Autovacuum does this too, but only later (or never, where it is off), and a load is the
        moment the work is known. Pages already all-visible are skipped, so a small load into a
        large store costs little. SQLite has no visibility map: only ANALYZE there.

        Returns the store's tables (all of them are analysed), sorted.
        """
        vacuum = vacuum and self.dialect == "postgresql"
        with self.writer.connect() as conn:
            if vacuum:
                # VACUUM cannot run inside a transaction block
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("VACUUM (ANALYZE)" if vacuum else "ANALYZE")
            conn.commit()
            return sorted(inspect(conn).get_table_names())

    def refresh_statistics(self) -> list[str]:
        """After a bulk write (a load, a catch-up): the planner's statistics of what it wrote.

        PostgreSQL: ``VACUUM (ANALYZE)`` of every table (``analyze``): it samples, and skips the
        pages already all-visible, so a small load into a large store costs little.
        SQLite: ``ANALYZE`` of only the tables without statistics or grown by more than half
        since (``sqlite_grown_tables``). SQLite's ANALYZE reads every index whole: at 350,000
        persons (a 41 GB file) the whole store took 12 to 15 minutes on this machine, paid
        again by the catch-up right after the load and by every small load into a large store.
        Returns the tables analysed (PostgreSQL: all of them)."""
        if self.dialect == "postgresql":
            return self.analyze(vacuum=True)
        grown = self.sqlite_grown_tables()
        if grown:
            self.vacuum(grown)
        return grown

    def sqlite_grown_tables(self) -> list[str]:
        """SQLite's tables that hold rows and have no statistics, or more than 1,000 rows and
        half again what their statistics counted (PostgreSQL's rule in ``stale_statistics``).
        A table's rows are estimated by its highest rowid, which finds them without reading
        the table; deletes make it an overestimate, which only analyses a table again."""
        with self.reader.connect() as conn:
            counted = _sqlite_counted_rows(conn)
            grown = []
            for table in sorted(inspect(conn).get_table_names()):
                quoted = '"' + table.replace('"', '""') + '"'
                rows = conn.exec_driver_sql(f"SELECT max(rowid) FROM {quoted}").scalar()
                if not rows:
                    continue
                if table not in counted or rows > 1000 + 1.5 * counted[table]:
                    grown.append(table)
        return grown

    def vacuum(self, tables: Sequence[str]) -> None:
        """``VACUUM (ANALYZE)`` of ``tables`` (PostgreSQL; ``ANALYZE`` on SQLite): after many rows
        were written into them at once, so index-only scans skip the table (``analyze``)."""
        quoted = ", ".join('"' + name.replace('"', '""') + '"' for name in tables)
        with self.writer.connect() as conn:
            if self.dialect == "postgresql":
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                conn.exec_driver_sql(f"VACUUM (ANALYZE) {quoted}")
            else:
                # SQLite's ANALYZE names one table at a time
                for name in tables:
                    conn.exec_driver_sql('ANALYZE "' + name.replace('"', '""') + '"')
            conn.commit()

    def stale_statistics(self) -> list[str]:
        """The store's tables whose planner statistics are missing or far behind (PostgreSQL):
        a restore (``pg_restore`` copies no statistics), or a load that ended before its
        ANALYZE. Until autovacuum comes round to them, the planner guesses,
        and its guesses turned the catch-up's batch lookups into scans of whole tables: at
        50,000 persons restored from a dump, care facts took 438 s and mental health 103 s;
        after the 1.8 s ``ANALYZE``, 32 s and 38 s. SQLite: none (its planner goes by the
        indexes there are, and its ANALYZE reads every index whole)."""
        if self.dialect != "postgresql":
            return []
        with self.reader.connect() as conn:
            rows = conn.exec_driver_sql(_STALE_STATISTICS).all()
        return sorted(str(name) for (name,) in rows)

    def analyze_stale(self) -> list[str]:
        """``ANALYZE`` the tables of ``stale_statistics`` (a second or so each: it samples);
        returns them. Server processes starting together take turns (an advisory lock), so
        the others find the statistics fresh instead of sampling the same tables again."""
        if self.dialect != "postgresql":
            return []
        with self.writer.connect() as conn, conn.begin():
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(key)s)", {"key": ANALYZE_LOCK})
            stale = sorted(str(name) for (name,) in conn.exec_driver_sql(_STALE_STATISTICS))
            if stale:
                quoted = ('"' + name.replace('"', '""') + '"' for name in stale)
                conn.exec_driver_sql("ANALYZE " + ", ".join(quoted))
        return stale

    def close(self) -> None:
        with self._slot_lock:
            kept, self._slot = self._slot, None
        if kept is not None:
            kept.close()
        self.writer.dispose()
        self.reader.dispose()
        if self.statement_reader is not None:
            self.statement_reader.dispose()

    @contextmanager
    def reading(self, snapshot: bool = True) -> Iterator[Session]:
        """A reading session. ``snapshot=False``: no transaction around its statements, for a
        request's short reads: PostgreSQL's READ COMMITTED gives each statement its own
        snapshot anyway, and BEGIN and COMMIT were two of a read's three round trips (on
        SQLite, each statement is its own implicit read transaction). Server-side cursors
        (``yield_per``) and ``SET LOCAL`` need the default."""
        if not snapshot and self.statement_reader is not None:
            with self._statement_connection(self.statement_reader) as conn:
                yield Session(self, conn)
            return
        with self.reader.connect() as conn, conn.begin():
            yield Session(self, conn)

    @contextmanager
    def _statement_connection(self, engine: Engine) -> Iterator[Connection]:
        """A connection of the statement reader, through a slot that keeps the last one given
        back: checking a connection out of SQLAlchemy's pool and back costs about 20 µs of CPU,
        a sixth of a key read on PostgreSQL. One connection is kept (the one a server worker's
        event loop, which runs reads inline, takes again and again); readers at the same time
        go to the pool. Kept longer than ``KEPT_IDLE_SECONDS`` unused, it goes back to the pool,
        which pings it before its next use; one that an error other than the request's own
        (a FHIR error: not found, refused) went through is dropped."""
        with self._slot_lock:
            conn, self._slot = self._slot, None
        if conn is not None and (
            conn.closed or conn.invalidated or time.monotonic() - self._slot_since > KEPT_IDLE
        ):
            conn.close()
            conn = None
        if conn is None:
            conn = engine.connect()
        try:
            yield conn
        except FhirError:
            self._give_back(conn)
            raise
        except BaseException:
            conn.invalidate()  # it may be broken (a database restart): the pool opens another
            conn.close()
            raise
        self._give_back(conn)

    def _give_back(self, conn: Connection) -> None:
        with self._slot_lock:
            if self._slot is None and not conn.closed:
                self._slot, self._slot_since = conn, time.monotonic()
                return
        conn.close()

    def write(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one write transaction, again from the start if a concurrent writer
        won a race for the same key (a new id or a new version).

        The session's ``after_commit`` callbacks run once the transaction has committed and
        its ``after_rollback`` callbacks when it did not (in-memory state such as the registry's
        candidate index follows the database, never a write that was rolled back).
        """
        for attempt in range(RETRIES):
            session: Session | None = None
            try:
                with self.writer.connect() as conn, conn.begin():
                    if conn.dialect.name == "postgresql":
                        conn.exec_driver_sql(GENERIC_PLANS)
                    session = Session(self, conn)
                    session.writing = True
                    conn.info[PENDING] = session.pending
                    try:
                        result = work(session)
                        session.run_before_commit()
                        session.pending.flush(conn)
                    finally:
                        conn.info.pop(PENDING, None)
                session.finish(committed=True)
                return result
            except IntegrityError as err:
                if session is not None:
                    session.finish(committed=False)
                if attempt == RETRIES - 1:
                    raise FhirError(
                        409, f"The write kept conflicting with concurrent writes: {err}", "conflict"
                    ) from err
            except OperationalError as err:
                if session is not None:
                    session.finish(committed=False)
                if not ("locked" in str(err) or _deadlock(err)) or attempt == RETRIES - 1:
                    raise
            except BaseException as err:
                if session is not None:
                    session.finish(committed=False)
                if not _deadlock(err) or attempt == RETRIES - 1:
                    raise
            time.sleep(0.002 * (attempt + 1))
        raise AssertionError("unreachable")


def _deadlock(err: BaseException) -> bool:
    """PostgreSQL ended the transaction to break a deadlock (SQLSTATE 40P01), as it may
    between registry links that lock persons in two rounds: nothing was written, run it again.
    Raised by SQLAlchemy (the driver's error in ``orig``) or by the driver itself."""
    return getattr(getattr(err, "orig", err), "sqlstate", None) == "40P01"


class Session:
    """One transaction on the store: every method sees and writes the same snapshot."""

    def __init__(self, store: Store, conn: Connection) -> None:
        self.store = store
        self.conn = conn
        self.defs = store.defs
        self.after_commit: list[Callable[[], None]] = []
        self.after_rollback: list[Callable[[], None]] = []
        # run inside the transaction once its work is done, before it commits: a write hook
        # gathers its own rows over the transaction's writes and stores them here at once
        self.before_commit: list[Callable[[], None]] = []
        # after every other one: work that takes a lock other processes wait for (the
        # registry's), held from there to the commit only
        self.last_before_commit: list[Callable[[], None]] = []
        # per-transaction state of write hooks (the registry's undo log)
        self.extras: dict[str, Any] = {}
        self.pending = PendingRows()
        # a write transaction (``Store.write``): its statements see its own writes before commit
        self.writing = False

    def run_before_commit(self) -> None:
        """The ``before_commit`` callbacks, then the ``last_before_commit`` ones, until none is
        left: a callback's own writes (the registry's golden records) may call on other hooks,
        which gather them for a callback of their own."""
        while True:
            if self.before_commit:
                callbacks, self.before_commit = self.before_commit, []
            elif self.last_before_commit:
                callbacks, self.last_before_commit = self.last_before_commit, []
            else:
                return
            for callback in callbacks:
                callback()

    def finish(self, committed: bool) -> None:
        """Run the callbacks of how the transaction ended (each list once)."""
        callbacks = self.after_commit if committed else self.after_rollback
        self.after_commit, self.after_rollback = [], []
        for callback in callbacks:
            callback()

    def _written(self, resource_type: str, resource_id: str, body: dict[str, Any] | None) -> None:
        for hook in self.store.write_hooks:
            hook(self, resource_type, resource_id, body)

    # -- reads ------------------------------------------------------------------------

    def _row(self, resource_type: str, resource_id: str, lock: bool = False) -> Any:
        statements = SELECT_CURRENT_FOR_UPDATE_SQL if lock else SELECT_CURRENT_SQL
        # Straight to the driver: the current version is read by every read and every write,
        # and SQLAlchemy's execution context cost more than the query (PostgreSQL: about 130
        # against 60 us of CPU). It reads only the resource table, so a transaction's pending
        # version and index rows need not be sent first.
        cursor = driver_cursor(self.conn)
        try:
            cursor.execute(statements[self.conn.dialect.name], (resource_type, resource_id))
            found = cursor.fetchone()
        finally:
            cursor.close()
        return None if found is None else CurrentRow(*found)

    def referring(self, resource_type: str, param: str, target: str) -> list[dict[str, Any]]:
        """The current ``resource_type`` resources whose ``param`` refers to ``target``
        ("Type/id"), in id order: one range scan of the reverse reference index. Not guarded:
        for the server's own checks inside a write (write hooks), not for a requester's read."""
        target_type, _, target_id = target.partition("/")
        params = {
            "f": False,
            "target_type": target_type,
            "target_id": target_id,
            "res_type": resource_type,
            "param": param,
        }
        pending: PendingRows | None = self.conn.info.get(PENDING)
        if pending is not None and pending.refer_to(resource_type, param, target_type, target_id):
            pending.flush(self.conn)
        out = []
        for row in self.conn.execute(SELECT_REFERRING, params):
            if row.content:
                body: dict[str, Any] = orjson.loads(row.content)
                body.setdefault("id", row.res_id)
                out.append(body)
        return out

    def current(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The current body of one resource (None when missing or deleted), by the key read:
        inside a write transaction it does not send the pending rows first, as a read through
        SQLAlchemy would. Not guarded, as ``referring``: for the server's own checks."""
        row = self._row(resource_type, resource_id)
        if row is None or row.deleted or not row.content:
            return None
        body: dict[str, Any] = orjson.loads(row.content)
        return body

    def current_many(self, resource_type: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The current bodies of many ``resource_type`` resources by id, deleted and missing
        ones left out: one statement. For batch jobs over what a bulk load stored without
        hooks, where one read per resource was a round trip each and, between the batch's
        writes, sent their pending rows one resource at a time. Not guarded, as ``referring``."""
        found: dict[str, dict[str, Any]] = {}
        if not ids:
            return found
        statement = select(resource.c.res_id, resource.c.content).where(
            resource.c.res_type == resource_type,
            values_in(resource.c.res_id, ids, many=BATCH_LIST),
            resource.c.deleted == false(),
        )
        for row in self.conn.execute(statement):
            if row.content:
                body: dict[str, Any] = orjson.loads(row.content)
                body.setdefault("id", row.res_id)
                found[row.res_id] = body
        return found

    def referring_many(
        self, resource_type: str, param: str, targets: Sequence[str]
    ) -> dict[str, list[dict[str, Any]]]:
        """``referring`` for many targets ("Type/id") at once: each target's current referrers
        in id order (targets that none refers to left out). One statement, for batch jobs."""
        by_type: dict[str, list[str]] = {}
        for target in targets:
            target_type, _, target_id = target.partition("/")
            by_type.setdefault(target_type, []).append(target_id)
        found: dict[str, list[dict[str, Any]]] = {}
        for target_type, target_ids in by_type.items():
            statement = (
                select(sp_reference.c.target_id, resource.c.res_id, resource.c.content)
                .join(resource, resource.c.rid == sp_reference.c.rid)
                .where(
                    sp_reference.c.target_type == target_type,
                    values_in(sp_reference.c.target_id, target_ids, many=BATCH_LIST),
                    sp_reference.c.res_type == resource_type,
                    sp_reference.c.param == param,
                    resource.c.deleted == false(),
                )
                .order_by(resource.c.res_id)
            )
            seen: set[tuple[str, str]] = set()  # a resource may refer to a target twice
            for row in self.conn.execute(statement):
                if row.content and (row.target_id, row.res_id) not in seen:
                    seen.add((row.target_id, row.res_id))
                    body: dict[str, Any] = orjson.loads(row.content)
                    body.setdefault("id", row.res_id)
                    found.setdefault(f"{target_type}/{row.target_id}", []).append(body)
        return found

    def read(self, resource_type: str, resource_id: str, interaction: str = "r") -> StoredResource:
        row = self._row(resource_type, resource_id)
        if row is None:
            raise not_found(resource_type, resource_id)
        stored = _stored(row)
        guard = current_guard.get()
        if guard is not None:
            guard.require(resource_type, interaction)
            # a resource the requester may not see is answered as if it did not exist
            if not self._may_see(guard, stored, interaction):
                raise not_found(resource_type, resource_id)
        if stored.deleted:
            raise FhirError(410, f"{resource_type}/{resource_id} was deleted", "deleted")
        return stored

    def _may_see(self, guard: Guard, stored: StoredResource, interaction: str = "r") -> bool:
        """The guard lets the requester see this version; a deletion is seen by whoever could
        see the resource before it was deleted (its last live version), so that an authorised
        reader gets 410 Gone and the history, and anyone else the 404 of what does not exist."""
        if not stored.deleted:
            if stored.content is None:
                return guard.visible(stored.resource_type, {}, interaction)
            return guard.visible_stored(stored.resource_type, stored.content, interaction)
        row = self.conn.execute(
            select(version_content())
            .where(
                resource_version.c.rid == _rid_of(stored.resource_type, stored.id),
                resource_version.c.deleted == false(),
                resource_version.c.version < stored.version,
            )
            .order_by(resource_version.c.version.desc())
            .limit(1)
        ).first()
        if row is None or not row.content:
            return False
        return guard.visible(stored.resource_type, orjson.loads(row.content), interaction)

    def read_any(self, resource_type: str, resource_id: str) -> StoredResource:
        """The current version, deleted or not (for instance history)."""
        row = self._row(resource_type, resource_id)
        if row is None:
            raise not_found(resource_type, resource_id)
        stored = _stored(row)
        guard = current_guard.get()
        if guard is not None:
            guard.require(resource_type, "r")
            if not self._may_see(guard, stored):
                raise not_found(resource_type, resource_id)
        return stored

    def vread(self, resource_type: str, resource_id: str, version: str) -> StoredResource:
        if not (version.isascii() and version.isdigit()) or len(version) > 9:
            raise not_found(resource_type, f"{resource_id}/_history/{version}")
        row = self.conn.execute(
            select(*version_columns()).where(
                and_(
                    resource_version.c.rid == _rid_of(resource_type, resource_id),
                    resource_version.c.version == int(version),
                )
            )
        ).first()
        if row is None:
            raise not_found(resource_type, f"{resource_id}/_history/{version}")
        stored = _stored(row, method=row.method)
        guard = current_guard.get()
        if guard is not None:
            guard.require(resource_type, "r")
            if not self._may_see(guard, stored):
                raise not_found(resource_type, f"{resource_id}/_history/{version}")
        if stored.deleted:
            raise FhirError(
                410, f"Version {version} of {resource_type}/{resource_id} is a deletion", "deleted"
            )
        return stored

    def earlier_versions(
        self, resource_type: str, resource_id: str, version: int, limit: int | None = None
    ) -> list[dict[str, Any] | None]:
        """The versions of a resource before ``version``, newest first, as stored (None for a
        deletion), at most ``limit``. Not through the guard: for the store's own rules on a
        write (a referral's state machine compares a Task with its earlier versions), never
        for what a requester is shown."""
        query = (
            select(version_content())
            .where(
                resource_version.c.rid == _rid_of(resource_type, resource_id),
                resource_version.c.version < version,
            )
            .order_by(resource_version.c.version.desc())
            .limit(limit)
        )
        return [
            orjson.loads(row.content) if row.content else None for row in self.conn.execute(query)
        ]

    def history(
        self,
        resource_type: str | None,
        resource_id: str | None,
        since: float | None,
        count: int,
        offset: int,
    ) -> tuple[list[StoredResource], int]:
        conds: list[ColumnElement[bool]] = []
        if resource_type:
            conds.append(resource_version.c.res_type == resource_type)
        if resource_type and resource_id:
            conds.append(resource_version.c.rid == _rid_of(resource_type, resource_id))
        elif resource_id:
            conds.append(resource_version.c.res_id == resource_id)
        if since is not None:
            # Half a microsecond of slack absorbs float rounding of the parsed instant.
            conds.append(resource_version.c.last_updated >= since - 5e-7)
        where = and_(*conds) if conds else None
        total_stmt = select(func.count()).select_from(resource_version)
        stmt = select(*version_columns()).order_by(resource_version.c.seq.desc())
        if where is not None:
            total_stmt = total_stmt.where(where)
            stmt = stmt.where(where)
        guard = current_guard.get()
        if guard is not None:
            return self._guarded_history(guard, stmt, count, offset)
        total = self.conn.execute(total_stmt).scalar_one()
        rows = self.conn.execute(stmt.limit(count).offset(offset)).all()
        return [_stored(r, method=r.method) for r in rows], total

    def _guarded_history(
        self, guard: Guard, stmt: Any, count: int, offset: int
    ) -> tuple[list[StoredResource], int]:
        """History shows only versions the requester may read (a deletion only of a type it
        may read); the total counts what it may see, so counting by hand is unavoidable."""
        visible: list[StoredResource] = []
        for row in self.conn.execute(stmt):
            stored = _stored(row, method=row.method)
            if not _may(guard, stored.resource_type, "r"):
                continue
            if self._may_see(guard, stored):
                visible.append(stored)
        return visible[offset : offset + count], len(visible)

    # -- search -----------------------------------------------------------------------

    def parse_search(
        self, resource_type: str, params: list[tuple[str, str]], lenient: bool = False
    ) -> SearchQuery:
        settings = self.store.settings
        guard = current_guard.get()
        if guard is not None:
            guard.require(resource_type, "s")
            params = [*params, *guard.restrictions(self, resource_type, params)]
        query = QueryParser(
            resource_type, lenient, settings.default_page_size, settings.max_page_size
        ).parse(params)
        if guard is not None:
            query.filters = guard_nested(self, guard, query.filters)
            query.filters += guard.filters(self, resource_type)
        return query

    def search(self, query: SearchQuery) -> SearchPage:
        guard = current_guard.get()
        if guard is not None and guard.exhaustive(query.resource_type):
            return self._exhaustive_search(guard, query)
        rids = matching_rids(query.resource_type, query.filters)
        if query.summary == "count":
            return SearchPage([], [], exact_count(self.conn, rids), query.offset, 0)
        # the page and one row more: whether a next page exists, and, when the matches end on
        # this page, their total without counting them (most searches about one patient fit
        # a page; the count was a second statement for each)
        stmt = (
            select(resource)
            .where(resource.c.rid.in_(rids))
            .order_by(*sort_expressions(query.resource_type, query.sort))
            .limit(query.count + 1)
            .offset(query.offset)
        )
        rows = self.conn.execute(stmt).all()
        more: bool | None = len(rows) > query.count
        if query.total == "none":
            total = Total(None, True)
        elif not more and (rows or query.offset == 0):
            total = Total(query.offset + len(rows), True)
        else:
            total = search_total(self.conn, rids, query.total)
        if total.exact and total.value is not None:
            more = None  # the total tells
        rows = rows[: query.count]
        matches = [_stored(r) for r in rows]
        included = self._includes(query, [r.rid for r in rows], matches)
        guard = current_guard.get()
        if guard is not None:
            # included resources answer to the same rules as a read of each of them
            included = [
                r
                for r in included
                if _may(guard, r.resource_type, "r")
                and guard.visible(r.resource_type, r.json(), "r")
            ]
        return SearchPage(
            matches,
            included,
            total.value,
            query.offset,
            query.count,
            query.warnings,
            total_exact=total.exact,
            more=more,
        )

    def _exhaustive_search(self, guard: Guard, query: SearchQuery) -> SearchPage:
        """Every match checked by the guard and the total counted from what it lets through,
        so neither ``Bundle.total`` nor ``_summary=count`` reveals what it hides."""
        rtype = query.resource_type
        stmt = (
            select(resource)
            .where(resource.c.rid.in_(matching_rids(rtype, query.filters)))
            .order_by(*sort_expressions(rtype, query.sort))
        )
        visible = [
            (row.rid, stored)
            for row in self.conn.execute(stmt)
            if guard.visible(rtype, (stored := _stored(row)).json(), "r")
        ]
        total: int | None = len(visible)
        if query.summary == "count":
            return SearchPage([], [], total, query.offset, 0)
        more = query.offset + query.count < len(visible)
        if query.total == "none":
            total = None
        page = visible[query.offset : query.offset + query.count]
        matches = [stored for _, stored in page]
        included = [
            r
            for r in self._includes(query, [rid for rid, _ in page], matches)
            if _may(guard, r.resource_type, "r") and guard.visible(r.resource_type, r.json(), "r")
        ]
        return SearchPage(
            matches, included, total, query.offset, query.count, query.warnings, more=more
        )

    def find(self, resource_type: str, params: list[tuple[str, str]]) -> list[StoredResource]:
        """All current resources matching search parameters (for conditional interactions)."""
        # the requester's own criteria, before the guard adds its restrictions
        if not QueryParser(resource_type, False, 1, 1).parse(params).filters:
            raise FhirError(
                412, "A conditional request needs at least one search criterion", "invalid"
            )
        query = self.parse_search(resource_type, params)
        stmt = select(resource).where(
            resource.c.rid.in_(matching_rids(resource_type, query.filters))
        )
        guard = current_guard.get()
        if guard is None:
            return [_stored(r) for r in self.conn.execute(stmt.limit(2))]
        # a match the requester may not see is not a match: neither its existence nor its
        # content may come back through If-None-Exist, a conditional update or delete, or a
        # conditional reference (the row-by-row check covers consent, which SQL cannot)
        found: list[StoredResource] = []
        for row in self.conn.execute(stmt):
            stored = _stored(row)
            if guard.visible(resource_type, stored.json(), "r"):
                found.append(stored)
                if len(found) == 2:
                    break
        return found

    def _includes(
        self, query: SearchQuery, rids: list[int], matches: list[StoredResource]
    ) -> list[StoredResource]:
        """_include and _revinclude over the page; the :iterate ones once more over what they
        brought in (one further level, which covers the usual uses such as
        MedicationRequest -> Medication -> Organization)."""
        if not rids or not (query.includes or query.revincludes):
            return []
        seen = {(m.resource_type, m.id) for m in matches}
        first = [s for s in query.includes if not s.iterate]
        first_rev = [s for s in query.revincludes if not s.iterate]
        out = self._include_pass(first, first_rev, matches, seen)
        again = [s for s in query.includes if s.iterate]
        again_rev = [s for s in query.revincludes if s.iterate]
        if again or again_rev:
            out += self._include_pass(again, again_rev, matches + out, seen)
        return out

    def _include_pass(
        self,
        includes: list[IncludeSpec],
        revincludes: list[IncludeSpec],
        sources: list[StoredResource],
        seen: set[tuple[str, str]],
    ) -> list[StoredResource]:
        out: list[StoredResource] = []
        for spec in includes:
            rids = [s.rid for s in sources if s.resource_type == spec.source_type]
            if not rids:
                continue
            conds: list[ColumnElement[bool]] = [
                sp_reference.c.rid.in_(rids),
                sp_reference.c.target_id.is_not(None),
            ]
            if spec.param is not None:
                conds.append(sp_reference.c.param == spec.param.code)
            if spec.target_type:
                conds.append(sp_reference.c.target_type == spec.target_type)
            targets = self.conn.execute(
                select(sp_reference.c.target_type, sp_reference.c.target_id).where(and_(*conds))
            ).all()
            out.extend(self._fetch_keys({(t, i) for t, i in targets} - seen, seen))
        for spec in revincludes:
            keys = [(m.resource_type, m.id) for m in sources]
            conds = [
                sp_reference.c.res_type == spec.source_type,
                typed_keys(sp_reference.c.target_type, sp_reference.c.target_id, keys),
            ]
            if spec.param is not None:
                conds.append(sp_reference.c.param == spec.param.code)
            source_rids = select(sp_reference.c.rid).where(and_(*conds))
            rows = self.conn.execute(
                select(resource).where(
                    and_(resource.c.rid.in_(source_rids), resource.c.deleted == false())
                )
            ).all()
            for row in rows:
                key = (row.res_type, row.res_id)
                if key not in seen:
                    seen.add(key)
                    out.append(_stored(row))
        return out

    def _fetch_keys(
        self, keys: set[tuple[str, str]], seen: set[tuple[str, str]]
    ) -> list[StoredResource]:
        if not keys:
            return []
        rows = self.conn.execute(
            select(resource).where(
                and_(
                    typed_keys(resource.c.res_type, resource.c.res_id, keys),
                    resource.c.deleted == false(),
                )
            )
        ).all()
        seen.update(keys)
        return [_stored(r) for r in rows]

    def compartment(
        self, patient_id: str, since: float | None, types: list[str] | None, count: int, offset: int
    ) -> tuple[list[StoredResource], int]:
        """The Patient compartment (CompartmentDefinition 'patient' of R4) of one patient."""
        self.read("Patient", patient_id)
        # One scan of the patient's references (the reverse reference index leads with the
        # target) and the Patient itself, as one set of rids: an OR of an IN-subquery per type
        # made PostgreSQL read the whole resource table for every page (2.6 s at 336k).
        kinds = [
            and_(sp_reference.c.res_type == rtype, sp_reference.c.param.in_(params))
            for rtype, params in self.defs.patient_compartment().items()
            if types is None or rtype in types
        ]
        parts = []
        if types is None or "Patient" in types:
            parts.append(
                select(resource.c.rid).where(
                    resource.c.res_type == "Patient", resource.c.res_id == patient_id
                )
            )
        if kinds:
            parts.append(
                select(sp_reference.c.rid).where(
                    sp_reference.c.target_type == "Patient",
                    sp_reference.c.target_id == patient_id,
                    or_(*kinds),
                )
            )
        members = union_all(*parts) if len(parts) > 1 else parts[0] if parts else None
        if members is None:
            return [], 0
        conds: list[ColumnElement[bool]] = [
            resource.c.deleted == false(),
            resource.c.rid.in_(members),
        ]
        if since is not None:
            conds.append(resource.c.last_updated >= since - 5e-7)
        where = and_(*conds)
        total = self.conn.execute(
            select(func.count()).select_from(resource).where(where)
        ).scalar_one()
        guard = current_guard.get()
        if guard is not None:
            every = [
                stored
                for r in self.conn.execute(select(resource).where(where).order_by(resource.c.rid))
                if _may(guard, (stored := _stored(r)).resource_type, "r")
                and guard.visible(stored.resource_type, stored.json(), "r")
            ]
            return every[offset : offset + count], len(every)
        rows = self.conn.execute(
            select(resource).where(where).order_by(resource.c.rid).limit(count).offset(offset)
        ).all()
        return [_stored(r) for r in rows], total

    # -- writes -----------------------------------------------------------------------

    def create(
        self,
        body: dict[str, Any],
        if_none_exist: str | None = None,
        options: WriteOptions = WriteOptions(),
    ) -> StoredResource:
        resource_type = body.get("resourceType")
        if not isinstance(resource_type, str) or not self.defs.is_resource_type(resource_type):
            raise FhirError(400, f"Unknown resourceType {resource_type!r}", "invalid")
        if if_none_exist:
            claim = self._lock_criteria(resource_type, if_none_exist)
            found = self.find(resource_type, parse_criteria(if_none_exist))
            if len(found) > 1:
                raise FhirError(
                    412,
                    f"If-None-Exist '{if_none_exist}' matches more than one "
                    f"{resource_type}; make the criteria more selective",
                    "multiple-matches",
                )
            if found:
                found[0].created = False
                return found[0]
        stored = self._put(
            resource_type, str(uuid.uuid4()), body, None, "POST", options, expect_new=True
        )
        if if_none_exist:
            self.conn.execute(
                update(conditional_claim)
                .where(claim)
                .values(rid=self._row(resource_type, stored.id).rid)
            )
        return stored

    def find_for_create(self, resource_type: str, criteria: str) -> list[StoredResource]:
        """Matches of If-None-Exist criteria, searched under the criteria's lock."""
        self._lock_criteria(resource_type, criteria)
        return self.find(resource_type, parse_criteria(criteria))

    def _lock_criteria(self, resource_type: str, criteria: str) -> ColumnElement[bool]:
        """Hold the database lock of one conditional-create criteria until this transaction ends.

        The claim row is a mutex in the database itself: a concurrent create with the same
        criteria waits on it, then searches and finds what the first one stored. Searching only
        after taking the lock is what makes If-None-Exist safe under concurrent requests.
        """
        key = hashlib.sha256(canonical_criteria(criteria).encode()).hexdigest()
        where = and_(
            conditional_claim.c.res_type == resource_type, conditional_claim.c.criteria_hash == key
        )
        try:
            with self.conn.begin_nested():
                self.conn.execute(
                    insert(conditional_claim).values(
                        res_type=resource_type, criteria_hash=key, rid=0
                    )
                )
        except IntegrityError:
            self.conn.execute(select(conditional_claim.c.rid).where(where).with_for_update())
        return where

    def update(
        self,
        resource_type: str,
        resource_id: str,
        body: dict[str, Any],
        if_match: str | None = None,
        options: WriteOptions = WriteOptions(),
        method: str = "PUT",
        expect_new: bool = False,
    ) -> StoredResource:
        """Store a version of ``resource_type/resource_id``. ``expect_new``: the id was made
        here just now (a transaction's POST), so there is no stored row to read first; the
        unique key still refuses a clash."""
        _check_body_type(body, resource_type)
        body_id = body.get("id")
        if body_id is None:
            raise FhirError(
                400,
                OutcomeIssue(
                    "error",
                    "required",
                    "An update must carry the resource id in the body",
                    f"{resource_type}.id",
                ),
            )
        if body_id != resource_id:
            raise FhirError(
                400,
                OutcomeIssue(
                    "error",
                    "invalid",
                    f"The id in the body ('{body_id}') does not match the id in the URL "
                    f"('{resource_id}')",
                    f"{resource_type}.id",
                ),
            )
        if not valid_id(resource_id):
            raise FhirError(400, f"'{resource_id}' is not a valid FHIR id ([A-Za-z0-9-.]{{1,64}})")
        return self._put(
            resource_type, resource_id, body, if_match, method, options, expect_new=expect_new
        )

    def conditional_update(
        self,
        resource_type: str,
        criteria: list[tuple[str, str]],
        body: dict[str, Any],
        options: WriteOptions = WriteOptions(),
    ) -> StoredResource:
        _check_body_type(body, resource_type)
        found = self.find(resource_type, criteria)
        if len(found) > 1:
            raise FhirError(
                412,
                f"The criteria match more than one {resource_type}; make them more selective",
                "multiple-matches",
            )
        if found:
            target = found[0].id
            if body.get("id") not in (None, target):
                raise FhirError(
                    400,
                    f"The id in the body ('{body.get('id')}') is not the id of "
                    f"the matching resource ('{target}')",
                )
            body = {**body, "id": target}
            return self._put(resource_type, target, body, None, "PUT", options)
        if body.get("id"):
            return self.update(resource_type, str(body["id"]), body, None, options)
        return self._put(
            resource_type, str(uuid.uuid4()), body, None, "POST", options, expect_new=True
        )

    def delete(self, resource_type: str, resource_id: str) -> StoredResource | None:
        row = self._row(resource_type, resource_id, lock=True)
        guard = current_guard.get()
        if guard is not None:
            guard.require(resource_type, "d")
            if (
                row is not None
                and not row.deleted
                and not guard.visible(resource_type, orjson.loads(row.content), "d")
            ):
                raise not_found(resource_type, resource_id)
        if row is None or row.deleted:
            return None  # deleting what is not there succeeds (http.html#delete)
        now = _now(row.last_updated)
        version = row.version + 1
        self._keep_replaced(row)
        self.conn.execute(
            update(resource)
            .where(resource.c.rid == row.rid)
            .values(version=version, last_updated=now, deleted=True, content=None)
        )
        self.conn.execute(
            insert(resource_version).values(
                rid=row.rid,
                res_type=resource_type,
                res_id=resource_id,
                version=version,
                last_updated=now,
                method="DELETE",
                deleted=True,
                content=None,
                compartment=row.compartment,
            )
        )
        self._drop_index(row.rid)
        self._written(resource_type, resource_id, None)
        return StoredResource(resource_type, resource_id, version, now, True, None, "DELETE")

    # -- the one path every version takes ---------------------------------------------

    def _put(
        self,
        resource_type: str,
        resource_id: str,
        body: dict[str, Any],
        if_match: str | None,
        method: str,
        options: WriteOptions,
        expect_new: bool = False,
    ) -> StoredResource:
        row = None if expect_new else self._row(resource_type, resource_id, lock=True)
        guard = current_guard.get()
        if guard is not None:
            self._check_write(guard, resource_type, resource_id, body, row)
        current = 0 if row is None else row.version
        if if_match is not None:
            check_if_match(if_match, current, resource_type, resource_id)
        now = _now(row.last_updated if row is not None else None)
        version = current + 1
        stored_body = self._prepare(body, resource_type, resource_id, version, now, options)
        content = orjson.dumps(stored_body)
        index = index_tuples(self.store.indexer, resource_type, stored_body)
        compartment = compartment_of(resource_type, resource_id, index)
        values = {
            "res_type": resource_type,
            "res_id": resource_id,
            "version": version,
            "last_updated": now,
            "deleted": False,
            "content": content,
            "compartment": compartment,
        }
        if row is None:
            ((rid,),) = driver_execute(self.conn, INSERT_RESOURCE_SQL, values)
        else:
            rid = row.rid
            self._replace(row, values)
        # the current version's JSON is the resource's (``schema.version_content``)
        self.pending.versions.append(
            (rid, resource_type, resource_id, version, now, method, False, None, compartment)
        )
        self._add_index(rid, index)
        self._written(resource_type, resource_id, stored_body)
        return StoredResource(
            resource_type,
            resource_id,
            version,
            now,
            False,
            content,
            method,
            created=row is None or bool(row.deleted),
        )

    def _replace(self, row: Any, values: dict[str, Any]) -> None:
        """Make ``values`` the current row of ``row``'s resource, keeping the replaced
        version's JSON and dropping its index rows (the new ones are pending)."""
        keep = self._must_keep(row)
        if self.store.dialect != "postgresql":
            if keep:
                driver_execute(self.conn, KEEP_VERSION_CONTENT_SQL, _kept(row))
            driver_execute(self.conn, UPDATE_RESOURCE_SQL, {**values, "b_rid": row.rid})
            self._drop_index(row.rid)
            return
        self.pending.forget(row.rid)
        params = {**values, "b_rid": row.rid, **(_kept(row) if keep else {})}
        driver_execute(self.conn, REPLACE_KEEPING_PG if keep else REPLACE_PG, params)

    def _keep_replaced(self, row: Any) -> None:
        """The current version, about to be replaced, keeps its JSON in its own row."""
        if self._must_keep(row):
            driver_execute(self.conn, KEEP_VERSION_CONTENT_SQL, _kept(row))

    def _must_keep(self, row: Any) -> bool:
        """Whether the replaced version's JSON must be written to its row already sent (a
        pending row just takes it)."""
        if row.deleted or row.content is None:
            return False
        return not self.pending.keep_content(row.rid, row.version, row.content)

    def _check_write(
        self, guard: Guard, resource_type: str, resource_id: str, body: dict[str, Any], row: Any
    ) -> None:
        """A create needs 'c' on the new content; an update 'u' on the old and the new (a
        requester may not move a resource out of, or into, what it may see)."""
        exists = row is not None and not row.deleted
        interaction = "u" if exists else "c"
        guard.require(resource_type, interaction)
        if exists and not guard.visible(resource_type, orjson.loads(row.content), "u"):
            raise not_found(resource_type, resource_id)
        new = {**body, "resourceType": resource_type, "id": resource_id}
        if not guard.visible(resource_type, new, interaction):
            raise FhirError(
                403,
                f"The granted access does not allow writing this {resource_type}: it falls "
                "outside the patients, facility or categories the token covers. A facility "
                "starts treating another facility's patient through their referral or care "
                "team, or by breaking the glass (header X-Break-Glass-Reason, audited)",
                "forbidden",
            )

    def _prepare(
        self,
        body: dict[str, Any],
        resource_type: str,
        resource_id: str,
        version: int,
        now: float,
        options: WriteOptions,
    ) -> dict[str, Any]:
        if self.store.settings.validate and not options.trusted:
            problems = [i for i in validate_resource(body, resource_type) if i.severity == "error"]
            if problems:
                raise FhirError(
                    400,
                    [OutcomeIssue("error", i.code, i.diagnostics, i.expression) for i in problems],
                )
        # labelled before it is stored and indexed, so every path sees the label
        body = label_sensitive(body)
        meta = dict(body.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = instant(now)
        if "source" not in meta:
            meta["source"] = options.source or "urn:takamul:api"
        out = {"resourceType": resource_type, "id": resource_id, "meta": meta}
        out.update({k: v for k, v in body.items() if k not in ("resourceType", "id", "meta")})
        return out

    def reindex(self, rid: int, resource_type: str, body: dict[str, Any]) -> None:
        """Replace a resource's index rows (a migration that changed its content in place)."""
        self._drop_index(rid)
        self._write_index(rid, resource_type, body)

    def _write_index(self, rid: int, resource_type: str, body: dict[str, Any]) -> None:
        self._add_index(rid, index_tuples(self.store.indexer, resource_type, body))

    def _add_index(self, rid: int, index: dict[str, list[tuple[Any, ...]]]) -> None:
        pending = self.pending.index
        for kind, rows in index.items():
            pending.setdefault(kind, []).extend((rid, *row) for row in rows)

    def _drop_index(self, rid: int) -> None:
        self.pending.forget(rid)
        if self.store.dialect == "postgresql":
            driver_execute(self.conn, DROP_INDEX_PG, {"b_rid": rid})
            return
        for statement in DROP_INDEX.values():
            driver_execute(self.conn, statement, {"b_rid": rid})


# -- helpers -------------------------------------------------------------------------


def _kept(row: Any) -> dict[str, Any]:
    return {"b_rid": row.rid, "b_version": row.version, "b_content": row.content}


def _may(guard: Guard, resource_type: str, interaction: str) -> bool:
    try:
        guard.require(resource_type, interaction)
    except FhirError:
        return False
    return True


def _rid_of(resource_type: str, resource_id: str) -> Any:
    """The resource's rid, as a subquery: its versions are then found through the (rid,
    version) key; resource_version has no index on (res_type, res_id), so a condition on
    those read every version of the type (a full scan per vread at national scale)."""
    return (
        select(resource.c.rid)
        .where(resource.c.res_type == resource_type, resource.c.res_id == resource_id)
        .scalar_subquery()
    )


def _stored(row: Any, method: str = "PUT") -> StoredResource:
    return StoredResource(
        row.res_type,
        row.res_id,
        row.version,
        row.last_updated,
        bool(row.deleted),
        row.content,
        method,
        rid=row.rid,
    )


def _now(previous: float | None) -> float:
    # Whole microseconds, as meta.lastUpdated shows them, so that a client's _since taken from
    # a lastUpdated finds that very version; strictly after the previous version, so that
    # histories stay ordered even when the clock is coarse.
    now = round(time.time(), 6)
    if previous is not None and now <= previous:
        now = round(previous + 1e-6, 6)
    return now


def _check_body_type(body: dict[str, Any], resource_type: str) -> None:
    if body.get("resourceType") != resource_type:
        raise FhirError(
            400,
            OutcomeIssue(
                "error",
                "invalid",
                f"The body is a {body.get('resourceType')!r} but the URL is for {resource_type}",
                "resourceType",
            ),
        )


def check_if_match(if_match: str, current: int, resource_type: str, resource_id: str) -> None:
    wanted = if_match.strip()
    if wanted.startswith("W/"):
        wanted = wanted[2:]
    wanted = wanted.strip('"')
    if wanted != str(current):
        raise FhirError(
            412,
            OutcomeIssue(
                "error",
                "conflict",
                f"If-Match asked for version {wanted} but {resource_type}/{resource_id} is at "
                f"version {current}; read it again and re-apply your change",
            ),
        )


def parse_criteria(criteria: str) -> list[tuple[str, str]]:
    """``identifier=a|b&name=x`` (optionally with a leading ``Type?``) as (name, value) pairs."""
    from urllib.parse import parse_qsl

    text = criteria.split("?", 1)[1] if "?" in criteria else criteria
    return parse_qsl(text, keep_blank_values=True)


def canonical_criteria(criteria: str) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted(parse_criteria(criteria)))
