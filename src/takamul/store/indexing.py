"""Turning the search-index entries of a resource into rows of the index tables.

The entry dataclasses of ``takamul.fhir.search_values`` list their fields in the order of the
index tables' value columns, so a row is the entry's fields after (res_type, param).
"""

from __future__ import annotations

from dataclasses import fields
from functools import cache
from typing import Any

from takamul.fhir.definitions import definitions
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
    "compartment",
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


@cache
def _compartment_params() -> dict[str, frozenset[str]]:
    return {t: frozenset(ps) for t, ps in definitions().patient_compartment().items()}


def compartment_of(
    resource_type: str, resource_id: str, index: dict[str, list[tuple[Any, ...]]]
) -> str:
    """The patient whose compartment holds a resource, from its index rows: a Patient's own id;
    else the least patient id its compartment parameters (R4 CompartmentDefinition patient)
    refer to; '' for a resource in no patient's compartment. The least, so that the rule
    gives one answer for a resource in several compartments and SQL can apply it too
    (revision 0006 fills stored rows with ``min``)."""
    if resource_type == "Patient":
        return resource_id
    params = _compartment_params().get(resource_type)
    if not params:
        return ""
    patients = [
        row[3]
        for row in index.get("reference", ())
        if row[1] in params and row[2] == "Patient" and row[3]
    ]
    return min(patients) if patients else ""
