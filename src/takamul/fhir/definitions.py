"""The R4 (4.0.1) definitions the server runs on, loaded once from the compact derived table.

The table is derived by ``scripts/derive_definitions.py`` from the official ``hl7.fhir.r4.examples``
4.0.1 package; nothing here is written by hand per resource type.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any

FHIR_VERSION = "4.0.1"

# FHIRPath system types that the snapshot uses for the value of primitives and for Element.id.
PRIMITIVE_TYPES = frozenset(
    {
        "base64Binary",
        "boolean",
        "canonical",
        "code",
        "date",
        "dateTime",
        "decimal",
        "id",
        "instant",
        "integer",
        "markdown",
        "oid",
        "positiveInt",
        "string",
        "time",
        "unsignedInt",
        "uri",
        "url",
        "uuid",
        "xhtml",
    }
)


@dataclass(frozen=True, slots=True)
class TypeRef:
    """An allowed type of an element; ``targets``: the types a Reference may point to."""

    code: str
    targets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ElementDef:
    path: str
    min: int
    max: str  # "1", "*", or "0" for prohibited
    types: tuple[TypeRef, ...] = ()
    ref: str | None = None  # contentReference: the element reuses the definition at this path
    summary: bool = False
    modifier: bool = False

    @property
    def is_array(self) -> bool:
        return self.max != "1" and self.max != "0"

    @property
    def is_choice(self) -> bool:
        return self.path.endswith("[x]")

    @property
    def name(self) -> str:
        """The last path segment, without the ``[x]`` of a choice element."""
        last = self.path.rsplit(".", 1)[-1]
        return last[:-3] if last.endswith("[x]") else last


@dataclass(frozen=True, slots=True)
class SearchParamDef:
    url: str
    code: str
    base: tuple[str, ...]
    type: str  # number | date | string | token | reference | composite | quantity | uri | special
    expression: str | None
    target: tuple[str, ...] = ()
    components: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class TypeDef:
    name: str
    kind: str  # primitive-type | complex-type | resource | logical
    abstract: bool
    base: str | None
    elements: dict[str, ElementDef] = field(repr=False)

    def children(self, path: str) -> dict[str, ElementDef]:
        """Direct child elements of ``path`` keyed by their JSON name stem."""
        return _children(self, path)


def _children(typedef: TypeDef, path: str) -> dict[str, ElementDef]:
    prefix = path + "."
    out = {}
    for p, el in typedef.elements.items():
        if p.startswith(prefix) and "." not in p[len(prefix) :]:
            out[el.name] = el
    return out


class Definitions:
    """All R4 types, search parameters and compartments, indexed for the server's lookups."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self._patient_compartment: Mapping[str, list[str]] | None = None
        self._patient_data: Mapping[str, list[str]] | None = None
        self.source: str = raw["source"]
        self.types: dict[str, TypeDef] = {
            name: TypeDef(
                name=name,
                kind=t["kind"],
                abstract=t["abstract"],
                base=t["base"],
                elements={
                    path: ElementDef(
                        path=path,
                        min=e["min"],
                        max=e["max"],
                        types=tuple(
                            TypeRef(x["code"], tuple(x.get("targets", ())))
                            for x in e.get("types", ())
                        ),
                        ref=e.get("ref"),
                        summary=e.get("summary", False),
                        modifier=e.get("modifier", False),
                    )
                    for path, e in t["elements"].items()
                },
            )
            for name, t in raw["types"].items()
        }
        self.primitive_regex: dict[str, str] = raw["primitives"]
        self.search_params: list[SearchParamDef] = [
            SearchParamDef(
                url=p["url"],
                code=p["code"],
                base=tuple(p["base"]),
                type=p["type"],
                expression=p.get("expression"),
                target=tuple(p.get("target", ())),
                components=tuple(
                    (c["definition"], c["expression"]) for c in p.get("component", ())
                ),
            )
            for p in raw["searchParameters"]
        ]
        self.compartments: dict[str, dict[str, list[str]]] = raw["compartments"]
        self.resource_types: frozenset[str] = frozenset(
            n for n, t in self.types.items() if t.kind == "resource" and not t.abstract
        )
        self._params_by_type: dict[str, dict[str, SearchParamDef]] = {}
        for rtype in self.resource_types:
            self._params_by_type[rtype] = self._collect_params(rtype)

    def _collect_params(self, rtype: str) -> dict[str, SearchParamDef]:
        lineage = {rtype, "Resource"}
        if self.types[rtype].base == "DomainResource":
            lineage.add("DomainResource")
        return {p.code: p for p in self.search_params if lineage.intersection(p.base)}

    def search_params_for(self, resource_type: str) -> dict[str, SearchParamDef]:
        """The search parameters that apply to ``resource_type``, by code (own and inherited)."""
        return self._params_by_type.get(resource_type, {})

    def is_resource_type(self, name: str) -> bool:
        return name in self.resource_types

    def patient_compartment(self) -> Mapping[str, list[str]]:
        """Resource type -> the parameters that place a resource in a Patient's compartment."""
        if self._patient_compartment is None:
            self._patient_compartment = MappingProxyType(
                {k: v for k, v in self.compartments["Patient"].items() if v}
            )
        return self._patient_compartment

    def patient_data(self) -> Mapping[str, list[str]]:
        """Resource type -> the parameters that make a resource data about a patient: the
        Patient compartment and the types R4 leaves out of it although they name the patient
        they are about (``PATIENT_DATA_BEYOND_COMPARTMENT``). Access control, consent labels
        and exports go by this, so that a Task about a patient is guarded as that patient's.
        Made once: the guard asks several times a search (building it each time was about a
        tenth of a guarded search's CPU)."""
        if self._patient_data is None:
            self._patient_data = MappingProxyType(
                {**self.patient_compartment(), **PATIENT_DATA_BEYOND_COMPARTMENT}
            )
        return self._patient_data


# R4's CompartmentDefinition for Patient has no Task, yet Task.for names the patient a task is
# about (outreach, referrals, follow-up): its ``patient`` search parameter is
# ``Task.for.where(resolve() is Patient)``. Left out, a facility's Tasks would be open to every
# facility (found by an outside check of the worklist, issue 13).
PATIENT_DATA_BEYOND_COMPARTMENT: dict[str, list[str]] = {"Task": ["patient"]}


@cache
def definitions() -> Definitions:
    """The R4 definitions, parsed once per process."""
    data = resources.files("takamul.fhir").joinpath("data/r4-definitions.json.gz").read_bytes()
    return Definitions(json.loads(gzip.decompress(data)))
