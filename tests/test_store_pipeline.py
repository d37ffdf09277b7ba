"""``rowcopy.driver_pipeline``: statements in one round trip on PostgreSQL, one after another on
SQLite, with the same results as ``driver_execute`` one by one. The registry relies on one
more property, tried here against a real concurrent holder: a statement queued after a lock
sees what the lock's previous holder committed while it waited."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from takamul.settings import Settings
from takamul.store import Store
from takamul.store.rowcopy import DriverSql, driver_execute, driver_pipeline
from tests.server import postgres_database

CREATE = "CREATE TABLE pipe_note (n INTEGER NOT NULL)"
ADD = DriverSql("INSERT INTO pipe_note (n) VALUES (:n)")
ADD_RETURNING = DriverSql("INSERT INTO pipe_note (n) VALUES (:n) RETURNING n")
COUNT = DriverSql("SELECT count(*), coalesce(max(n), 0) FROM pipe_note")
LOCK = DriverSql("SELECT pg_advisory_xact_lock(:key)")
KEY = 7_000_017


@pytest.fixture
def postgres_store() -> Iterator[Store]:
    with postgres_database() as url:
        opened = Store(Settings(database_url=url))
        yield opened
        opened.close()


def _table(store: Store) -> None:
    with store.writer.begin() as conn:
        conn.execute(text(CREATE))


def test_results_in_order_and_the_same_as_one_by_one(either_store: Store) -> None:
    _table(either_store)
    statements: list[tuple[DriverSql, dict[str, Any]]] = [
        (ADD, {"n": 1}),
        (ADD_RETURNING, {"n": 2}),
        (COUNT, {}),
    ]
    with either_store.writer.begin() as conn:
        rows = driver_pipeline(conn, statements)
    assert rows == [[], [(2,)], [(2, 2)]]
    with either_store.writer.begin() as conn:
        assert driver_execute(conn, COUNT, {}) == [(2, 2)]  # committed with the transaction


def test_an_error_stops_the_pipeline_and_the_transaction_writes_nothing(
    either_store: Store,
) -> None:
    _table(either_store)
    bad = DriverSql("INSERT INTO pipe_note (n) VALUES (NULL)")
    with pytest.raises(Exception, match=r"(?i)null"), either_store.writer.begin() as conn:
        driver_pipeline(conn, [(ADD, {"n": 1}), (bad, {}), (ADD, {"n": 3})])
    with either_store.writer.begin() as conn:
        assert driver_execute(conn, COUNT, {}) == [(0, 0)]


def test_a_statement_after_a_lock_sees_what_its_holder_committed(postgres_store: Store) -> None:
    _table(postgres_store)
    holder = postgres_store.writer.connect()
    tx = holder.begin()
    driver_execute(holder, LOCK, {"key": KEY})
    driver_execute(holder, ADD, {"n": 41})
    seen: list[list[Any]] = []

    def waiter() -> None:
        with postgres_store.writer.begin() as conn:
            seen.extend(driver_pipeline(conn, [(LOCK, {"key": KEY}), (COUNT, {})]))

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive()  # waiting for the lock
    tx.commit()
    holder.close()
    thread.join(timeout=30)
    assert seen[-1] == [(1, 41)]
