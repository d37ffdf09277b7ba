"""Turning the search-index entries of a resource into rows of the index tables.

The entry dataclasses of ``takamul.fhir.search_values`` list their fields in the order of the
index tables' value columns, so a row is the entry's fields after (res_type, param).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from takamul.fhir.search_values import (
    DateEntry,
    NumberEntry,
    QuantityEntry,
    ReferenceEntry,
    SearchIndexer,
    StringEntry,
    TokenEntry,
    UriEntry,
)

# _id and _lastUpdated are columns of the resource table; indexing them again would only cost.
SKIPPED = frozenset({"_id", "_lastUpdated"})

KIND_OF: dict[type, str] = {
    StringEntry: "string",
    TokenEntry: "token",
    DateEntry: "date",
    ReferenceEntry: "reference",
    QuantityEntry: "quantity",
    NumberEntry: "number",
    UriEntry: "uri",
}
VALUE_COLUMNS: dict[str, tuple[str, ...]] = {
    kind: tuple(f.name for f in fields(entry)) for entry, kind in KIND_OF.items()
}

# a version row's columns as the store writes them (``seq`` comes from its sequence)
VERSION_COLUMNS = (
    "rid",
    "res_type",
    "res_id",
    "version",
    "last_updated",
    "method",
    "deleted",
    "content",
)
# the columns of each index table, in the order of ``index_tuples`` rows with the rid in front
INDEX_COLUMNS: dict[str, tuple[str, ...]] = {
    kind: ("rid", "res_type", "param", *columns) for kind, columns in VALUE_COLUMNS.items()
}


def index_tuples(
    indexer: SearchIndexer, resource_type: str, body: dict[str, Any]
) -> dict[str, list[tuple[Any, ...]]]:
    """kind -> rows ``(res_type, param, *values)``, the rid still to be put in front."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for code, entries in indexer.extract(body).items():
        if code in SKIPPED:
            continue
        for entry in entries:
            kind = KIND_OF[type(entry)]
            values = tuple(getattr(entry, c) for c in VALUE_COLUMNS[kind])
            rows.setdefault(kind, []).append((resource_type, code, *values))
    return rows


def index_rows(
    indexer: SearchIndexer, rid: int, resource_type: str, body: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    """kind -> rows as dicts by column name, for SQLAlchemy inserts."""
    out: dict[str, list[dict[str, Any]]] = {}
    for kind, rows in index_tuples(indexer, resource_type, body).items():
        names = ("res_type", "param", *VALUE_COLUMNS[kind])
        out[kind] = [{"rid": rid, **dict(zip(names, row, strict=True))} for row in rows]
    return out
