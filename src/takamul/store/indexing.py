"""Turning the search-index entries of a resource into rows of the index tables."""

from __future__ import annotations

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


def index_rows(
    indexer: SearchIndexer, rid: int, resource_type: str, body: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {}
    for code, entries in indexer.extract(body).items():
        if code in SKIPPED:
            continue
        for entry in entries:
            kind, values = _row(entry)
            values.update(rid=rid, res_type=resource_type, param=code)
            rows.setdefault(kind, []).append(values)
    return rows


def _row(entry: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, StringEntry):
        return "string", {"normalized": entry.normalized, "exact": entry.exact}
    if isinstance(entry, TokenEntry):
        return "token", {"system": entry.system, "code": entry.code, "text": entry.text}
    if isinstance(entry, DateEntry):
        return "date", {"low": entry.low, "high": entry.high}
    if isinstance(entry, ReferenceEntry):
        return "reference", {
            "target_type": entry.target_type,
            "target_id": entry.target_id,
            "url": entry.url,
        }
    if isinstance(entry, QuantityEntry):
        return "quantity", {
            "value": entry.value,
            "low": entry.low,
            "high": entry.high,
            "system": entry.system,
            "code": entry.code,
            "unit": entry.unit,
        }
    if isinstance(entry, NumberEntry):
        return "number", {"value": entry.value, "low": entry.low, "high": entry.high}
    if isinstance(entry, UriEntry):
        return "uri", {"value": entry.value}
    raise TypeError(f"unknown search index entry {entry!r}")
