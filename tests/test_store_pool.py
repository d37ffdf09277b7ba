"""The PostgreSQL pool: a connection idle for a while is tested before use and replaced when
the server has dropped it (a restart, a failover, a proxy's idle timeout), without the
round trip on every checkout that ``pool_pre_ping`` cost."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from takamul.settings import Settings
from takamul.store import Store, engine
from tests.server import POSTGRES_ADMIN_URL, postgres_database


@pytest.fixture
def store() -> Iterator[Store]:
    with postgres_database() as url:
        s = Store(Settings(database_url=url))
        try:
            yield s
        finally:
            s.close()


def _drop_connections(database: str) -> int:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
            (database,),
        ).fetchone()
    return int(row[0]) if row else 0


def _read_once(store: Store) -> int:
    with store.reading() as session:
        return int(session.conn.exec_driver_sql("SELECT 1").scalar_one())


def test_an_idle_connection_dropped_by_the_server_is_replaced(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _read_once(store) == 1
    database = store.writer.url.database
    assert database is not None
    assert _drop_connections(database) >= 1  # the pooled connection is gone on the server
    monkeypatch.setattr(engine, "IDLE_PING_SECONDS", 0.0)  # every pooled connection is "idle"
    assert _read_once(store) == 1  # pinged, found dead, replaced: the read succeeds


def test_a_connection_dropped_just_after_use_costs_at_most_one_request(store: Store) -> None:
    assert _read_once(store) == 1
    database = store.writer.url.database
    assert database is not None
    assert _drop_connections(database) >= 1
    # used a moment ago, so not pinged: the request on the dropped connection may fail ...
    failures = 0
    try:
        _read_once(store)
    except OperationalError:
        failures += 1
    # ... but the pool, invalidated by the disconnect, serves every later one
    assert [_read_once(store) for _ in range(3)] == [1, 1, 1]
    assert failures <= 1
