"""The tables of the shared record: current resources, every version, and one search index per
search-parameter type, created once at start-up (no schema work per request).

Index rows point at the integer ``rid`` of a resource so that searches join on small keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    false,
    func,
    or_,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement

metadata = MetaData()

# Binary order on both stores, so that a prefix search is a range scan on the index
# (SQLite compares text bytewise by default; PostgreSQL needs the "C" collation for that).
OrderedText = Text().with_variant(Text(collation="C"), "postgresql")

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid; BigInteger on PostgreSQL.
RowId = BigInteger().with_variant(Integer(), "sqlite")

resource = Table(
    "resource",
    metadata,
    Column("rid", RowId, primary_key=True, autoincrement=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", Float, nullable=False),  # epoch seconds, for _lastUpdated and _since
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content", LargeBinary, nullable=True),  # orjson bytes of the current version
    # the patient whose compartment holds the resource ('' for none): the distribution column
    # of a sharded record (docs/scale.md), kept on every write; revision 0006
    Column("compartment", String(64), nullable=False, server_default=""),
    UniqueConstraint("res_type", "res_id", name="uq_resource_type_id"),
    Index("ix_resource_type_updated", "res_type", "last_updated"),
)

resource_version = Table(
    "resource_version",
    metadata,
    Column("seq", RowId, primary_key=True, autoincrement=True),  # global order of changes
    Column("rid", BigInteger, nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", Float, nullable=False),
    Column("method", String(8), nullable=False),  # POST | PUT | PATCH | DELETE
    Column("deleted", Boolean, nullable=False, default=False),
    # A past version's JSON. The current version's is kept once, in ``resource.content``: this
    # is NULL while the version is current and filled when the next version or a deletion
    # replaces it (revision 0012). Read it through ``version_content`` / ``VERSION_CONTENT_SQL``.
    Column("content", LargeBinary, nullable=True),
    Column("compartment", String(64), nullable=False, server_default=""),
    UniqueConstraint("rid", "version", name="uq_version_rid_version"),
    Index("ix_version_updated", "last_updated"),
    Index("ix_version_type_updated", "res_type", "last_updated"),
)


def current_content() -> ColumnElement[Any]:
    """The resource's JSON when a ``resource_version`` row is its current version, else NULL
    (correlated with the version row of the statement)."""
    return (
        select(resource.c.content)
        .where(resource.c.rid == resource_version.c.rid)
        .where(resource.c.version == resource_version.c.version)
        .scalar_subquery()
    )


def version_content() -> ColumnElement[Any]:
    """A version's JSON (``content``): its own, or the resource's while it is the current one.
    Storing the current JSON once saved about a fifth of the record (1.1 KB a resource)."""
    return func.coalesce(resource_version.c.content, current_content()).label("content")


def version_columns() -> list[ColumnElement[Any]]:
    """Every column of ``resource_version``, with ``content`` as ``version_content`` gives it."""
    return [c for c in resource_version.c if c.name != "content"] + [version_content()]


# ``version_content`` in SQL text, for a version row aliased ``v`` (a column named content).
VERSION_CONTENT_SQL = (
    "COALESCE(v.content, (SELECT r.content FROM resource r"
    " WHERE r.rid = v.rid AND r.version = v.version)) AS content"
)

# Facts about the store itself, such as which one-time migrations have run.
store_setting = Table(
    "store_setting",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

# A conditional create claims its criteria here inside the same transaction as the insert: the
# unique key makes concurrent creates with the same criteria collide in the database itself.
conditional_claim = Table(
    "conditional_claim",
    metadata,
    Column("res_type", String(64), primary_key=True),
    Column("criteria_hash", String(64), primary_key=True),
    Column("rid", BigInteger, nullable=False),
)

# How far a bulk load got in each input file, committed with each batch, so that a load run
# again after an interruption skips what is already stored instead of writing it twice.
load_checkpoint = Table(
    "load_checkpoint",
    metadata,
    Column("source_key", String(64), primary_key=True),  # hash of path, size and mtime
    Column("source", Text, nullable=False),
    Column("lines_done", BigInteger, nullable=False),
    Column("completed", Boolean, nullable=False, default=False),
)

# Bulk Data $export jobs, kept in the store so that any API worker can answer a poll.
export_job = Table(
    "export_job",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),  # accepted|running|completed|failed|cancelled
    Column("request", Text, nullable=False),
    Column("kind", String(16), nullable=False),  # system | patient | group
    Column("group_id", String(64), nullable=True),
    Column("types", Text, nullable=True),  # comma-separated _type
    Column("since", Float, nullable=True),
    Column("transaction_time", Float, nullable=False),
    Column("progress", Text, nullable=True),
    Column("manifest", LargeBinary, nullable=True),
    Column("error", Text, nullable=True),
)


# The value indexes end with the rid (revision 0005): a clause's candidates, a count and the
# other clauses' checks are then answered from the index alone, without reading the table.
def _index_table(name: str, *columns: Column, indexes: tuple[tuple[str, ...], ...]) -> Table:
    table = Table(
        name,
        metadata,
        Column("rid", BigInteger, nullable=False),
        Column("res_type", String(64), nullable=False),
        Column("param", String(64), nullable=False),
        *columns,
    )
    Index(f"ix_{name}_rid", table.c.rid)
    for cols in indexes:
        Index(f"ix_{name}_{'_'.join(cols)}", *(table.c[c] for c in ("res_type", "param", *cols)))
    return table


sp_string = _index_table(
    "sp_string",
    Column("normalized", OrderedText, nullable=False),
    Column("exact", Text, nullable=False),
    indexes=(("normalized", "rid"),),
)
sp_token = _index_table(
    "sp_token",
    Column("system", Text, nullable=True),
    Column("code", Text, nullable=True),
    Column("text", OrderedText, nullable=True),
    indexes=(("code", "system", "rid"),),
)
sp_date = _index_table(
    "sp_date",
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    indexes=(("low", "high", "rid"), ("high", "low", "rid")),
)
sp_reference = _index_table(
    "sp_reference",
    Column("target_type", String(64), nullable=True),
    Column("target_id", String(64), nullable=True),
    Column("url", Text, nullable=True),
    indexes=(("target_id", "target_type", "rid"), ("url",)),
)
# Reverse lookups (_revinclude, _has, chains, $everything) start from the target.
Index("ix_sp_reference_target", sp_reference.c.target_type, sp_reference.c.target_id)
sp_quantity = _index_table(
    "sp_quantity",
    Column("value", Float, nullable=False),
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    Column("system", Text, nullable=True),
    Column("code", Text, nullable=True),
    Column("unit", Text, nullable=True),
    indexes=(("value",),),
)
sp_number = _index_table(
    "sp_number",
    Column("value", Float, nullable=False),
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    indexes=(("value",),),
)
sp_uri = _index_table(
    "sp_uri",
    Column("value", OrderedText, nullable=False),
    indexes=(("value",),),
)

INDEX_TABLES: dict[str, Table] = {
    "string": sp_string,
    "token": sp_token,
    "date": sp_date,
    "reference": sp_reference,
    "quantity": sp_quantity,
    "number": sp_number,
    "uri": sp_uri,
}


def pairs_in(
    first: ColumnElement[Any], second: ColumnElement[Any], pairs: Iterable[tuple[Any, Any]]
) -> ColumnElement[bool]:
    """``(first, second) IN pairs`` that both stores answer from a two-column index.

    SQLite answers a row-value ``IN`` list by scanning the whole index (a bulk load's lookup of
    1,000 stored resources took 0.26 s at 336k resources and grew with the store); grouped by
    the first column, ``first = a AND second IN (...) OR ...`` is one index search per pair.
    """
    grouped: dict[Any, list[Any]] = {}
    for a, b in pairs:
        grouped.setdefault(a, []).append(b)
    clauses = [and_(first == a, second.in_(bs)) for a, bs in grouped.items()]
    return or_(*clauses) if clauses else false()


# Longer lists than this go to the database as one parameter (``values_in``).
MANY_VALUES = 1000


class _ManyValues(ColumnElement[bool]):
    """``column IN values`` with the values in one bound parameter (see ``values_in``)."""

    type = Boolean()
    inherit_cache = False  # the values are part of the statement: none is cached
    # A predicate in itself, as a comparison is. Without this, SQLAlchemy wrote it on SQLite
    # (no boolean type) as ``source IN (SELECT value FROM json_each(?)) = 1``, which no index
    # serves: every batch job's look-up of more than ``many`` values read the whole table.
    # The care facts' first pass deleted each batch's old facts that way, 77 -> 264 ms a batch
    # as the table filled at 30,000 persons (712 s at 100,000 against PostgreSQL's 167 s).
    _is_implicitly_boolean = True

    def __init__(self, column: ColumnElement[Any], values: list[Any]) -> None:
        self.column = column
        self.values = values


@compiles(_ManyValues, "postgresql")
def _many_values_postgresql(element: _ManyValues, compiler: Any, **kw: Any) -> str:
    array = bindparam(None, element.values, type_=ARRAY(element.column.type))
    return f"{compiler.process(element.column, **kw)} = ANY({compiler.process(array, **kw)})"


@compiles(_ManyValues)
def _many_values_json(element: _ManyValues, compiler: Any, **kw: Any) -> str:
    listed = bindparam(None, orjson.dumps(element.values).decode(), type_=Text())
    column = compiler.process(element.column, **kw)
    return f"{column} IN (SELECT value FROM json_each({compiler.process(listed, **kw)}))"


def values_in(
    column: ColumnElement[Any], values: Iterable[Any], many: int = MANY_VALUES
) -> ColumnElement[bool]:
    """``column IN values`` for any number of values.

    Each value of an ``IN`` list is a bound parameter, and PostgreSQL's protocol takes at most
    65,535 per statement: a facility-bound search of a facility with more patients than that
    failed. A long list goes as one parameter instead: an array on PostgreSQL (``= ANY``), JSON
    on SQLite (``IN (SELECT value FROM json_each(...))``); a short one stays a plain list.
    ``many``: the longest plain list (a batch job's lower bound spares psycopg from parsing a
    statement of thousands of placeholders on every batch, which it does not cache)."""
    listed = list(values)
    if len(listed) <= many:
        return column.in_(listed)
    return _ManyValues(column, listed)
