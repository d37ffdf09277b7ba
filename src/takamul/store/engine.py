"""Database engines for the two supported stores, SQLite (embedded default) and PostgreSQL.

Each dialect gets the settings it needs for safe concurrent writes, decided here once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DisconnectionError

from takamul.fhir.outcome import FhirError


def make_engines(url: str) -> tuple[Engine, Engine]:
    """(writer, reader) engines for ``sqlite:///path`` or ``postgresql://...``.

    SQLite needs two: writers take the write lock when they begin, readers must not (WAL lets
    them read a consistent snapshot beside a writer). PostgreSQL uses one engine for both.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database, True), _sqlite_engine(
            url, parsed.database, False
        )
    if parsed.get_backend_name() == "postgresql":
        engine = _postgres_engine(_psycopg(parsed), _postgres_pool())
        return engine, engine
    raise FhirError(
        500,
        f"Unsupported database URL scheme '{parsed.drivername}'; use sqlite:///path or postgresql://...",
    )


def statement_engine(url: str) -> Engine | None:
    """An engine whose connections run each statement in its own transaction (autocommit),
    for a request's short reads (None for an in-memory SQLite database). On SQLite the
    BEGIN and COMMIT around a one-statement read were about a third of a ``GET Patient/{id}``
    in-process (151 us with auth off).

    PostgreSQL:
    A pool of its own, because switching a pooled connection to autocommit and back is four
    driver calls per checkout, about a quarter of a primary-key read's CPU (217 -> 164 us per
    ``GET Patient/{id}`` in-process). ``TAKAMUL_DB_READ_POOL_SIZE`` connections kept (default
    10), ``TAKAMUL_DB_READ_MAX_OVERFLOW`` more under load (default 10)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            return None  # another connection would open another, empty, database
        return _sqlite_engine(url, parsed.database, immediate=False, statement=True)
    if parsed.get_backend_name() != "postgresql":
        return None
    options = _postgres_pool()
    options["pool_size"] = int(os.environ.get("TAKAMUL_DB_READ_POOL_SIZE", "10"))
    options["max_overflow"] = int(os.environ.get("TAKAMUL_DB_READ_MAX_OVERFLOW", "10"))
    # nothing to roll back when a connection comes back: every statement committed itself
    autocommit = {"isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None}
    return _postgres_engine(_psycopg(parsed), {**options, **autocommit})


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def database_is_local(url: str) -> bool:
    """The database is on this machine: an SQLite file, or PostgreSQL reached over a Unix
    socket or the loopback interface, so that a round trip takes tens of microseconds."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return True
    host = parsed.host or str(parsed.query.get("host") or "")
    return not host or host.startswith("/") or host in LOOPBACK_HOSTS


def _psycopg(url: URL) -> URL:
    """A bare postgresql:// URL names psycopg (3), the driver installed."""
    return url.set(drivername="postgresql+psycopg") if url.drivername == "postgresql" else url


def _postgres_engine(url: URL, options: dict[str, Any]) -> Engine:
    # no pool_pre_ping: it costs a round trip on every checkout (see ``_ping_when_idle``)
    engine = create_engine(url, **options)
    event.listen(engine, "connect", _custom_plans)
    _ping_when_idle(engine)
    return engine


def _postgres_pool() -> dict[str, Any]:
    """Connections of one process to PostgreSQL. Every server worker and CLI process holds a pool
    of its own, so their sum must stay under the server's max_connections (docs/operations.md):
    ``TAKAMUL_DB_POOL_SIZE`` kept open (default 20), ``TAKAMUL_DB_MAX_OVERFLOW`` more under load
    (default 20). Behind pgbouncer in transaction mode, ``TAKAMUL_DB_PREPARE_THRESHOLD=none``
    stops psycopg preparing statements on a server connection the next transaction may not get."""
    options: dict[str, Any] = {
        "pool_size": int(os.environ.get("TAKAMUL_DB_POOL_SIZE", "20")),
        "max_overflow": int(os.environ.get("TAKAMUL_DB_MAX_OVERFLOW", "20")),
    }
    threshold = os.environ.get("TAKAMUL_DB_PREPARE_THRESHOLD", "").strip().lower()
    if threshold:
        prepare = None if threshold in ("none", "off") else int(threshold)
        options["connect_args"] = {"prepare_threshold": prepare}
    return options


def _custom_plans(dbapi_conn: Any, _record: Any) -> None:
    """Plan every statement for its own values. psycopg prepares a statement on its fifth run,
    and PostgreSQL then switches to one generic plan if it looks no dearer than the five it made
    for real values; a search's generic plan cannot see which patient or code it looks for,
    guesses one row per clause, and on 10k persons read all 97,086 Encounter dates (about
    1 s) where the plan for the values reads none (bench/results/2026-12-05-vm-search-plans.md).
    Planning costs well under a millisecond; the statement is still parsed only once."""
    with dbapi_conn.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_custom_plan")
    dbapi_conn.commit()


# A connection idle for longer than this is tested before use (see ``_ping_when_idle``).
IDLE_PING_SECONDS = 10.0


def _ping_when_idle(engine: Engine) -> None:
    """Test a pooled connection before use only when it has been idle for a while.

    SQLAlchemy's ``pool_pre_ping`` tests it on every checkout: a round trip per request, about
    a fifth of a PostgreSQL read's time. A connection used within the last seconds is alive
    unless the server went away just then, which the request reports as an error and the pool
    recovers from (a disconnect invalidates the whole pool); one idle longer (after a restart,
    a failover, an idle timeout of a proxy) is pinged, and replaced if it does not answer.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
            return
        try:
            with dbapi_conn.cursor() as cursor:
                cursor.execute("SELECT 1")
            dbapi_conn.rollback()
        except Exception as err:  # any failure of the ping means: use a new connection
            raise DisconnectionError(f"a pooled connection did not answer: {err}") from err


def redacted(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_engine(
    url: str, database: str | None, immediate: bool, statement: bool = False
) -> Engine:
    """``statement``: connections without transactions of ours (``statement_engine``): each
    statement is SQLite's own implicit transaction, and nothing is rolled back on check-in."""
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    autocommit = {"isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None}
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        pool_size=20,
        max_overflow=20,
        **(autocommit if statement else {}),
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (see _on_begin).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA cache_size=-65536")
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.close()

    if statement:
        return engine

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock at the start, so two writers never both read then fail
        # to upgrade; SQLite serialises them and the busy timeout queues the second.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
