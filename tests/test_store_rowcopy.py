"""``rowcopy.copy_tables``: every column type the store's tables use comes back exactly as
written, on both stores and by each of PostgreSQL's three ways (a JSON parameter a table for a
few rows a table, arrays for more or when a float is not finite, COPY for many rows)."""

from __future__ import annotations

import math
import sqlite3
from typing import Any

import psycopg
import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    select,
)

from takamul.store import Store
from takamul.store.rowcopy import JSON_ROWS_PER_TABLE, ONE_STATEMENT_ROWS, copy_tables

meta = MetaData()
every_type = Table(
    "rowcopy_every_type",
    meta,
    Column("big", BigInteger),
    Column("small", Integer),
    Column("real", Float),
    Column("flag", Boolean),
    Column("raw", LargeBinary),
    Column("short", String(64)),
    Column("long", Text),
)
other = Table(
    "rowcopy_other", meta, Column("n", Integer, nullable=False), Column("word", String(16))
)
# the drivers' own errors: copy_tables runs on the driver, under SQLAlchemy
REFUSED = (sqlite3.IntegrityError, psycopg.errors.NotNullViolation)
COLUMNS = ("big", "small", "real", "flag", "raw", "short", "long")

ROWS: list[tuple[Any, ...]] = [
    (2**62, -(2**31), 1.5, True, b"\x00\xff\x80 not utf-8", "محمد", 'a "quoted" \\ back'),
    (-1, 0, 2, False, b'{"resourceType":"Patient"}', "Ali\tAl-Qahtani", "\\u0000 as text"),
    (None, None, None, None, None, None, None),
    (7, 7, 1e-300, True, b"", "", "علی رضایی — Persian, with ی and ک"),
    (8, 8, 0.1 + 0.2, False, bytes(range(256)), "x" * 64, "line\nbreak\r\n"),
]


def _round_trip(store: Store, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    meta.create_all(store.writer)
    with store.writer.begin() as conn:
        copy_tables(conn, [(every_type, COLUMNS, rows), (other, ("n", "word"), [(1, "one")])])
    with store.writer.connect() as conn:
        got = [tuple(r) for r in conn.execute(select(every_type))]
        assert [tuple(r) for r in conn.execute(select(other))] == [(1, "one")]
    return got


def _same(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> None:
    key = repr  # rows in any order; NaN never equals itself, so compare spellings
    assert sorted(map(key, got)) == sorted(map(key, [_as_read(r) for r in want]))


def _as_read(row: tuple[Any, ...]) -> tuple[Any, ...]:
    # integers written to a float column come back as floats
    big, small, real, flag, raw, short, long = row
    return (big, small, None if real is None else float(real), flag, raw, short, long)


def test_a_few_rows_of_every_type_come_back_exactly(either_store: Store) -> None:
    _same(_round_trip(either_store, ROWS), ROWS)


@pytest.mark.parametrize("odd", [math.inf, -math.inf, math.nan])
def test_a_float_json_cannot_spell_is_still_written(either_store: Store, odd: float) -> None:
    rows = [*ROWS, (9, 9, odd, True, b"x", "odd", "float")]
    got = _round_trip(either_store, rows)
    (value,) = [r[2] for r in got if r[0] == 9]
    if math.isnan(odd) and either_store.dialect == "sqlite":
        assert value is None  # SQLite has no NaN: it stores NULL
    else:
        assert value == odd or (math.isnan(odd) and math.isnan(value))
    _same([r for r in got if r[0] != 9], ROWS)


def test_rows_past_the_json_share_go_as_arrays_and_come_back_the_same(
    either_store: Store,
) -> None:
    rows = [*ROWS * 8, *ROWS * 8]  # about 80 rows in one of two tables: arrays, one statement
    assert 2 * JSON_ROWS_PER_TABLE < len(rows) + 1 <= ONE_STATEMENT_ROWS
    _same(_round_trip(either_store, rows), rows)


def test_many_rows_go_by_copy_and_come_back_the_same(either_store: Store) -> None:
    rows = [
        (n, n, n / 3, n % 2 == 0, bytes([n % 256]) * 3, f"s{n}", f"ل{n}")
        for n in range(ONE_STATEMENT_ROWS + 10)
    ]
    _same(_round_trip(either_store, rows), rows)


def test_a_failed_statement_writes_nothing(either_store: Store) -> None:
    meta.create_all(either_store.writer)
    with pytest.raises(REFUSED, match=r"(?i)not.null"), either_store.writer.begin() as conn:
        copy_tables(conn, [(every_type, COLUMNS, ROWS[:2]), (other, ("n", "word"), [(None, "x")])])
    with either_store.writer.connect() as conn:
        assert list(conn.execute(select(every_type))) == []
        assert list(conn.execute(select(other))) == []
