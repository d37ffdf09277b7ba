"""The CapabilityStatement: exactly the interactions, parameters and operations implemented."""

from __future__ import annotations

from functools import cache
from typing import Any

from takamul import __version__
from takamul.fhir.definitions import FHIR_VERSION, definitions
from takamul.rest.compartments import compartment_canonicals
from takamul.store.query import SUPPORTED_MODIFIERS
from takamul.store.totals import EXACT_UP_TO

TYPE_INTERACTIONS = [
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
]
SEARCHABLE_TYPES = frozenset(SUPPORTED_MODIFIERS)
BULK = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition"
PATIENT_EXPORT = f"{BULK}/patient-export"
GROUP_EXPORT = f"{BULK}/group-export"
DEQM_CARE_GAPS = "http://hl7.org/fhir/us/davinci-deqm/OperationDefinition/care-gaps"
# a result parameter, listed so that a client can see which totals the server gives
TOTAL_PARAM = {
    "name": "_total",
    "type": "special",
    "documentation": (
        "none | estimate | accurate (search.html#total). estimate, also what a search that "
        f"does not ask gets, counts exactly up to {EXACT_UP_TO:,} matches; above that "
        "PostgreSQL gives its planner's estimate (SQLite counts). _summary=count is exact."
    ),
}


def capability_statement(base: str, now: str) -> dict[str, Any]:
    resources = _resource_entries()
    return _statement(base, now, resources)


@cache
def _resource_entries() -> list[dict[str, Any]]:
    """The per-type part, the same for every request: built once (146 types, 1,300 params)."""
    defs = definitions()
    resources = []
    for rtype in sorted(defs.resource_types):
        params = [
            {"name": p.code, "definition": p.url, "type": p.type}
            for p in defs.search_params_for(rtype).values()
            if p.type in SEARCHABLE_TYPES and p.expression
        ]
        params += [
            {
                "name": "_id",
                "definition": "http://hl7.org/fhir/SearchParameter/Resource-id",
                "type": "token",
            },
            {
                "name": "_lastUpdated",
                "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
                "type": "date",
            },
            TOTAL_PARAM,
        ]
        seen: set[str] = set()
        params = [p for p in params if not (p["name"] in seen or seen.add(p["name"]))]  # type: ignore[func-returns-value]
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": [{"code": c} for c in TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "logical"],
            "searchInclude": ["*", *_reference_includes(rtype)],
            "searchRevInclude": ["*"],
            "searchParam": params,
        }
        if rtype == "Patient":
            entry["operation"] = [
                {
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                },
                {"name": "export", "definition": f"{BULK}/patient-export"},
            ]
        if rtype == "Group":
            entry["operation"] = [{"name": "export", "definition": f"{BULK}/group-export"}]
        if rtype == "Measure":
            entry["operation"] = [{"name": "care-gaps", "definition": DEQM_CARE_GAPS}]
        resources.append(entry)
    return resources


def _statement(base: str, now: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now,
        "publisher": "Takamul",
        "kind": "instance",
        "software": {"name": "Takamul", "version": __version__},
        "implementation": {"description": "Takamul shared health record", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Search modifiers: string :exact :contains :missing; "
                    "token :not :text :missing; "
                    "reference :Type :missing and one-level chains; uri :below :above; prefixes "
                    "eq ne gt lt ge le sa eb ap on date, number and quantity. "
                    "Composite and special "
                    "parameters are not supported. _has one level; _include/_revinclude one "
                    "level, :iterate one further level. Compartment search "
                    "([type]/[id]/[type], GET or POST _search) for every compartment listed. "
                    "Operations take GET or POST (a Parameters resource or a form)."
                ),
                "resource": resources,
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "history-system"},
                ],
                "operation": [{"name": "export", "definition": f"{BULK}/export"}],
                "compartment": compartment_canonicals(),
            }
        ],
    }


def _reference_includes(rtype: str) -> list[str]:
    params = definitions().search_params_for(rtype).values()
    return sorted(f"{rtype}:{p.code}" for p in params if p.type == "reference")
