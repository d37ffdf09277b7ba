"""Sensitive data recognised by its codes, from cited value sets, and labelled on write.

A national record cannot rely on every facility labelling its mental health, HIV and sexual
health data: a PHQ-9 panel sent without ``meta.security`` is still mental health data. So the
store labels every resource whose codes fall in one of the value sets of
``data/sensitive-codes.json`` (v3 ActInformationSensitivityPolicy ``PSY``, ``HIV``, ``SEX``)
before it is stored and indexed: the label is then part of the stored resource, seen alike by
reads, searches (``_security``), exports, views and de-identified extracts, and by the consent
check. Codes are matched exactly (LOINC, SNOMED CT) or by prefix where a classification nests its
codes by prefix (ICD-10 chapters and blocks, ATC groups), so a prefix covers its hierarchy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from takamul.fhir.definitions import definitions

__all__ = [
    "ACT_CODE",
    "LABELS",
    "SensitiveValueSet",
    "code_label",
    "label_sensitive",
    "sensitivity",
    "value_sets",
]

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LABELS = ("PSY", "HIV", "SEX")
DISPLAY = {
    "PSY": "psychiatry information sensitivity",
    "HIV": "HIV/AIDS information sensitivity",
    "SEX": "sexuality and reproductive health information sensitivity",
}
# Where a resource says what it is about (one level deep, plus Observation components).
CODE_ELEMENTS = (
    "code",
    "category",
    "reasonCode",
    "type",
    "class",
    "medicationCodeableConcept",
    "vaccineCode",
    "valueCodeableConcept",
    "conclusionCode",
)
LOINC = "http://loinc.org"


@dataclass(frozen=True, slots=True)
class SensitiveValueSet:
    id: str
    label: str
    systems: frozenset[str]
    codes: frozenset[str]
    prefixes: tuple[str, ...]
    source: str

    def contains(self, system: str, code: str) -> bool:
        if system not in self.systems:
            return False
        return code in self.codes or code.upper().startswith(self.prefixes)


@cache
def value_sets() -> tuple[SensitiveValueSet, ...]:
    """The value sets of ``data/sensitive-codes.json`` (each with its source)."""
    text = resources.files("takamul.fhir").joinpath("data/sensitive-codes.json").read_text()
    return tuple(
        SensitiveValueSet(
            vs["id"],
            vs["label"],
            frozenset(vs["systems"]),
            frozenset(vs.get("codes", ())),
            tuple(p.upper() for p in vs.get("prefixes", ())),
            vs["source"],
        )
        for vs in json.loads(text)["valueSets"]
    )


@cache
def code_label(system: str, code: str) -> str | None:
    """The sensitivity label of one coded concept, or None."""
    for vs in value_sets():
        if vs.contains(system, code):
            return vs.label
    return None


def _concepts(resource: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for element in CODE_ELEMENTS:
        yield from _as_concepts(resource.get(element))
    for component in resource.get("component") or ():
        if isinstance(component, dict):
            yield from _as_concepts(component.get("code"))
            yield from _as_concepts(component.get("valueCodeableConcept"))


def _as_concepts(value: Any) -> Iterable[Mapping[str, Any]]:
    for concept in value if isinstance(value, list) else [value]:
        if isinstance(concept, dict):
            yield concept


def _codings(resource: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    for concept in _concepts(resource):
        # a Coding where a CodeableConcept is expected (Encounter.class) counts as one
        codings = concept.get("coding") if "coding" in concept else [concept]
        for coding in codings or ():
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                yield str(coding.get("system")), coding["code"]
    if resource.get("resourceType") == "QuestionnaireResponse":
        yield from _response_codes(resource)


def _response_codes(response: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """A QuestionnaireResponse has no code of its own: the LOINC form it answers (a canonical
    ending in the LOINC code, ``http://loinc.org/q/44249-1``) and item linkIds that are LOINC
    codes (the usual convention for LOINC forms) say what it is. A form that is not LOINC's
    (the record's own EPDS, with local linkIds) is known by its canonical: its last segment as
    a code of the base before it, ``(https://takamul.health/fhir/Questionnaire, epds)``."""
    questionnaire = response.get("questionnaire")
    if isinstance(questionnaire, str):
        base, _, name = questionnaire.split("|", 1)[0].rstrip("/").rpartition("/")
        yield LOINC, name
        if base:
            yield base, name
    stack = list(response.get("item") or ())
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("linkId"), str):
                yield LOINC, item["linkId"].lstrip("/")
            stack.extend(item.get("item") or ())


def sensitivity(resource: Mapping[str, Any]) -> frozenset[str]:
    """The sensitive categories of a resource: its labels and what its codes say."""
    labels = {
        str(s.get("code"))
        for s in (resource.get("meta") or {}).get("security") or ()
        if isinstance(s, dict) and s.get("code") in LABELS
    }
    labels.update(
        label for system, code in _codings(resource) if (label := code_label(system, code))
    )
    return frozenset(labels)


def label_sensitive(resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` with a ``meta.security`` label for every sensitive category its codes
    fall in (labels it already carries are kept as sent; nothing else changes). Only data about
    a patient (the Patient compartment) is labelled: a Questionnaire defining the PHQ-9 is not
    anyone's mental health data."""
    if str(resource.get("resourceType")) not in definitions().patient_data():
        return resource
    found = sensitivity(resource)
    if not found:
        return resource
    meta = dict(resource.get("meta") or {})
    security = list(meta.get("security") or ())
    present = {s.get("code") for s in security if isinstance(s, dict)}
    added = [
        {"system": ACT_CODE, "code": label, "display": DISPLAY[label]}
        for label in LABELS
        if label in found and label not in present
    ]
    if not added:
        return resource
    meta["security"] = security + added
    return {**resource, "meta": meta}
