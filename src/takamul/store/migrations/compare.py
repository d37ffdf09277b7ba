"""Two databases' schemas described the same way and compared, table by table.

Both sides are read back from a database (never from SQLAlchemy's ``Table`` objects), so the
comparison sees what the dialect really made: column types with their collation
(``TEXT COLLATE "C"`` on PostgreSQL), nullability, defaults (a serial key's sequence), primary
keys, unique constraints, indexes with any ``WHERE`` or expression, and foreign keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, inspect

__all__ = ["TableShape", "describe", "differences"]

TableShape = dict[str, Any]
VERSION_TABLE = "alembic_version"
# a serial key's default names its sequence, qualified by the schema in a probe schema
_NEXTVAL = re.compile(r"nextval\('(?:[^'.]+\.)?([^']+)'")


def describe(
    conn: Connection, tables: Iterable[str] | None = None, schema: str | None = None
) -> dict[str, TableShape]:
    """table name -> its shape, for ``tables`` (default: every table but Alembic's own)."""
    found = inspect(conn)
    names = set(found.get_table_names(schema=schema)) - {VERSION_TABLE}
    if tables is not None:
        names &= set(tables)
    shapes = {name: _table(conn, found, name, schema) for name in sorted(names)}
    if conn.dialect.name == "postgresql":
        shapes["(sequences)"] = {"names": sorted(found.get_sequence_names(schema=schema))}
    return shapes


def _table(conn: Connection, found: Any, name: str, schema: str | None) -> TableShape:
    columns = {
        c["name"]: (
            str(c["type"].compile(dialect=conn.dialect)),
            bool(c["nullable"]),
            _default(c.get("default")),
        )
        for c in found.get_columns(name, schema=schema)
    }
    pk = found.get_pk_constraint(name, schema=schema)
    uniques = sorted(
        (u["name"] or "", tuple(u["column_names"]))
        for u in found.get_unique_constraints(name, schema=schema)
    )
    indexes = sorted(
        (
            i["name"] or "",
            tuple(str(c) for c in i["column_names"]),
            tuple(str(e) for e in i.get("expressions") or ()),
            bool(i["unique"]),
            repr(sorted((i.get("dialect_options") or {}).items())),
        )
        for i in found.get_indexes(name, schema=schema)
    )
    foreign = sorted(
        (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
        for f in found.get_foreign_keys(name, schema=schema)
    )
    return {
        "columns": columns,
        "primary key": (pk.get("name") or "", tuple(pk["constrained_columns"])),
        "unique": uniques,
        "indexes": indexes,
        "foreign keys": foreign,
    }


def _default(value: Any) -> str | None:
    return None if value is None else _NEXTVAL.sub(r"nextval('\1'", str(value))


def differences(have: dict[str, TableShape], want: dict[str, TableShape]) -> list[str]:
    """What differs, one line each, naming the table and the part (empty when equal)."""
    out: list[str] = []
    for name in sorted(set(have) | set(want)):
        if name not in want:
            out.append(f"{name}: a table the reference does not have")
        elif name not in have:
            out.append(f"{name}: missing")
        else:
            out.extend(_table_differences(name, have[name], want[name]))
    return out


def _table_differences(name: str, have: TableShape, want: TableShape) -> list[str]:
    out: list[str] = []
    columns_have, columns_want = have.get("columns", {}), want.get("columns", {})
    for column in sorted(set(columns_have) | set(columns_want)):
        a, b = columns_have.get(column), columns_want.get(column)
        if a != b:
            out.append(f"{name}.{column}: is {_column(a)}, expected {_column(b)}")
    for part in sorted(set(have) | set(want)):
        if part != "columns" and have.get(part) != want.get(part):
            out.append(f"{name} {part}: is {have.get(part)}, expected {want.get(part)}")
    return out


def _column(shape: tuple[str, bool, str | None] | None) -> str:
    if shape is None:
        return "absent"
    kind, nullable, default = shape
    return f"{kind} {'NULL' if nullable else 'NOT NULL'}" + (
        f" DEFAULT {default}" if default else ""
    )
