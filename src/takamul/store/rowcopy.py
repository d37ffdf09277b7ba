"""Many rows into one table with one round trip: PostgreSQL's binary COPY, SQLite's
``executemany``, both straight on the driver.

For the dozen index rows of every resource, SQLAlchemy's per-row parameter processing cost more
than the inserts themselves, and on PostgreSQL one INSERT per row costs a round trip each.
The rows are tuples in the order of ``columns``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, Boolean, Connection, Float, Integer, LargeBinary, String, Table

__all__ = ["copy_rows", "driver_cursor"]


def driver_cursor(conn: Connection) -> Any:
    """The driver's own cursor under SQLAlchemy's connection (psycopg or sqlite3)."""
    return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]


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
