"""Many rows into one table with one round trip: PostgreSQL's binary COPY, SQLite's
``executemany``, both straight on the driver.

For the dozen index rows of every resource, SQLAlchemy's per-row parameter processing cost more
than the inserts themselves, and on PostgreSQL one INSERT per row costs a round trip each.
The rows are tuples in the order of ``columns``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import BigInteger, Boolean, Connection, Float, Integer, LargeBinary, String, Table

__all__ = [
    "DriverSql",
    "copy_rows",
    "copy_tables",
    "driver_cursor",
    "driver_execute",
    "driver_pipeline",
    "listed",
    "numbered",
]

# Up to this many rows in all, the tables of one ``copy_tables`` call go in one statement on
# PostgreSQL; above it, by COPY.
ONE_STATEMENT_ROWS = 400
# Up to this many rows a table on average, one JSON parameter a table; above it, an array a
# column (``copy_tables``: measured at about 4 and 150 rows a table, the crossover between).
JSON_ROWS_PER_TABLE = 16


def driver_cursor(conn: Connection) -> Any:
    """The driver's own cursor under SQLAlchemy's connection (psycopg or sqlite3)."""
    return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]


class DriverSql:
    """One statement written once for both drivers, with ``:name`` parameters (sqlite3's named
    style), turned into psycopg's ``%(name)s`` for PostgreSQL. For small statements run many
    times a second (the registry's journal and membership rows), where SQLAlchemy's execution
    context cost several times the query. Write no ``%`` and no ``::`` cast in it."""

    __slots__ = ("sql",)

    def __init__(self, sql: str) -> None:
        self.sql = {"sqlite": sql, "postgresql": re.sub(r":(\w+)", r"%(\1)s", sql)}


@functools.lru_cache(maxsize=1024)
def listed(statement: str, item: str, n: int) -> DriverSql:
    """``statement`` with ``{items}`` replaced by ``n`` copies of ``item`` joined by commas,
    ``{i}`` in each copy its number: an ``IN`` list or the ``VALUES`` rows of a statement whose
    length varies, made once for each length and kept (a statement per length, so each is
    prepared once by the driver)."""
    items = ", ".join(item.replace("{i}", str(i)) for i in range(n))
    return DriverSql(statement.replace("{items}", items))


def numbered(values: Sequence[Any], name: str = "p") -> dict[str, Any]:
    """The parameters ``name0``, ``name1``, ... of a ``listed`` statement's items."""
    return {f"{name}{i}": value for i, value in enumerate(values)}


def driver_execute(
    conn: Connection, statement: DriverSql, params: Mapping[str, Any], binary: bool = False
) -> list[tuple[Any, ...]]:
    """Run ``statement`` on the driver in ``conn``'s transaction; its rows, if it has any.

    It bypasses SQLAlchemy's events, so a write transaction's pending version and index rows
    (``repository.PendingRows``) are not sent first: only for statements that name none of
    their tables. ``binary``: PostgreSQL sends the rows in binary form, for many rows of JSON
    bytes (a ``bytea`` in text form is twice its size, in hexadecimal, and decoded here)."""
    cursor = driver_cursor(conn)
    try:
        if binary and conn.dialect.name == "postgresql":
            cursor.execute(statement.sql["postgresql"], params, binary=True)
        else:
            cursor.execute(statement.sql[conn.dialect.name], params)
        return list(cursor.fetchall()) if cursor.description else []
    finally:
        cursor.close()


def driver_pipeline(
    conn: Connection, statements: Sequence[tuple[DriverSql, Mapping[str, Any]]]
) -> list[list[tuple[Any, ...]]]:
    """Run ``statements`` in order, as ``driver_execute`` would; their rows, each statement's.

    On PostgreSQL they go in one round trip (psycopg's pipeline mode): the server still runs
    each after the one before has finished, with its own snapshot under READ COMMITTED, so a
    statement after a lock sees what the lock's previous holder committed. For a few small
    statements in a row whose results nothing in between needs (the registry's, under its
    lock), where each round trip cost more than its statement."""
    if conn.dialect.name != "postgresql" or len(statements) < 2:
        return [driver_execute(conn, statement, params) for statement, params in statements]
    raw = conn.connection.dbapi_connection
    cursors = []
    with raw.pipeline():  # type: ignore[union-attr]
        for statement, params in statements:
            cursor = raw.cursor()  # type: ignore[union-attr]
            cursor.execute(statement.sql["postgresql"], params)
            cursors.append(cursor)
    try:
        return [list(c.fetchall()) if c.description else [] for c in cursors]
    finally:
        for cursor in cursors:
            cursor.close()


def copy_rows(
    conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    if not rows:
        return
    cursor = driver_cursor(conn)
    try:
        if conn.dialect.name == "postgresql":
            _copy(cursor, table, columns, rows)
        else:
            marks = ", ".join("?" for _ in columns)
            sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})"
            cursor.executemany(sql, rows)
    finally:
        cursor.close()


def copy_tables(
    conn: Connection, batches: Sequence[tuple[Table, Sequence[str], Sequence[tuple[Any, ...]]]]
) -> None:
    """The rows of several tables (table, columns, rows), as ``copy_rows`` would write them.

    On PostgreSQL a few rows go in one statement, each table's rows as a JSON parameter, or
    with more rows a table its columns as arrays (one ``INSERT ... SELECT`` per table, joined
    as data-modifying ``WITH`` clauses): a COPY costs two round trips, and a single write's
    version and index rows span some six tables, so its commit waited for a dozen. Many rows
    still go by COPY, faster per row."""
    batches = [b for b in batches if b[2]]
    if not batches:
        return
    total = sum(len(rows) for _, _, rows in batches)
    if conn.dialect.name != "postgresql" or total > ONE_STATEMENT_ROWS:
        for table, columns, rows in batches:
            copy_rows(conn, table, columns, rows)
        return
    tables = tuple((t, tuple(c)) for t, c, _ in batches)
    if total > JSON_ROWS_PER_TABLE * len(batches) or not _finite(
        tables, [rows for _, _, rows in batches]
    ):
        _unnest_statement(conn, tables, batches)
        return
    # Each table's rows as one JSON array of arrays (orjson, in C). psycopg dumps an array
    # parameter in Python, with a cost for each of the 44 arrays (a column each) of a single
    # write's version and index rows: a linked Patient create's 31 rows cost 458-466 us of
    # client CPU as arrays and 263-333 us as JSON, and the server's time 627-740 against
    # 487-720 us. With many rows a table the arrays win on the server: an audit batch of 150
    # events (300 rows, a 600-byte blob each) cost 13-17 us of PostgreSQL's CPU an event as
    # arrays, 22-24 as jsonb and 80 as json (whose ``->>`` parses the element again for each
    # field), the client's cost alike.
    params = [orjson.dumps(rows, default=_bytes_as_hex).decode() for _, _, rows in batches]
    cursor = driver_cursor(conn)
    try:
        cursor.execute(_json_sql(tables), params)
    finally:
        cursor.close()


def _bytes_as_hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()  # decode(..., 'hex') on the server: any bytes, not only UTF-8
    raise TypeError(f"cannot write {type(value).__name__} to a table row")


def _finite(
    tables: tuple[tuple[Table, tuple[str, ...]], ...], rows_of: Sequence[Sequence[tuple[Any, ...]]]
) -> bool:
    """No infinite or NaN float in a float8 column: JSON has no spelling for them (orjson
    writes null), so such rows go as arrays."""
    for (table, columns), rows in zip(tables, rows_of, strict=True):
        for i, name in enumerate(columns):
            if _pg_type(table.c[name].type) != "float8":
                continue
            for row in rows:
                value = row[i]
                if isinstance(value, float) and not math.isfinite(value):
                    return False
    return True


@functools.lru_cache(maxsize=256)
def _json_sql(tables: tuple[tuple[Table, tuple[str, ...]], ...]) -> str:
    clauses = []
    for n, (table, columns) in enumerate(tables):
        values = ", ".join(
            _from_json(f"r->>{i}", _pg_type(table.c[name].type)) for i, name in enumerate(columns)
        )
        clauses.append(
            f"t{n} AS (INSERT INTO {table.name} ({', '.join(columns)})"
            f" SELECT {values} FROM jsonb_array_elements(%s::jsonb) AS r)"
        )
    return "WITH " + ", ".join(clauses) + " SELECT 1"


def _from_json(text: str, pg_type: str) -> str:
    if pg_type == "bytea":
        return f"decode({text}, 'hex')"
    if pg_type in ("varchar", "text"):
        return text
    return f"({text})::{pg_type}"


def _unnest_statement(
    conn: Connection,
    tables: tuple[tuple[Table, tuple[str, ...]], ...],
    batches: Sequence[tuple[Table, Sequence[str], Sequence[tuple[Any, ...]]]],
) -> None:
    """The rows as one array parameter a column (``unnest``): for many rows a table, and for a
    float that JSON cannot spell."""
    params: list[list[Any]] = []
    for table, columns, rows in batches:
        for name, column in zip(columns, zip(*rows, strict=True), strict=True):
            if _pg_type(table.c[name].type) == "float8":
                # an array is dumped with one type: a column of 1.5 and 2 must be all floats
                params.append([v if v is None or type(v) is float else float(v) for v in column])
            else:
                params.append(list(column))
    cursor = driver_cursor(conn)
    try:
        cursor.execute(_unnest_sql(tables), params)
    finally:
        cursor.close()


@functools.lru_cache(maxsize=256)
def _unnest_sql(tables: tuple[tuple[Table, tuple[str, ...]], ...]) -> str:
    clauses = []
    for n, (table, columns) in enumerate(tables):
        arrays = ", ".join(f"%b::{_pg_type(table.c[name].type)}[]" for name in columns)
        clauses.append(
            f"t{n} AS (INSERT INTO {table.name} ({', '.join(columns)})"
            f" SELECT * FROM unnest({arrays}))"
        )
    return "WITH " + ", ".join(clauses) + " SELECT 1"


def _copy(
    cursor: Any, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    with cursor.copy(sql) as copy:
        copy.set_types([_pg_type(table.c[name].type) for name in columns])
        for row in rows:
            copy.write_row(row)


def _pg_type(column_type: Any) -> str:
    """The PostgreSQL type a binary COPY must name for a column (it converts nothing)."""
    if isinstance(column_type, BigInteger):
        return "int8"
    if isinstance(column_type, Integer):
        return "int4"
    if isinstance(column_type, Float):
        return "float8"
    if isinstance(column_type, Boolean):
        return "bool"
    if isinstance(column_type, LargeBinary):
        return "bytea"
    if isinstance(column_type, String) and type(column_type) is String:
        return "varchar"
    return "text"
