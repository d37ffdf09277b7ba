"""Consent: a patient restricts sensitive categories of their record to their treating team.

Sensitive data is recognised by its security label (``meta.security``, v3
ActInformationSensitivityPolicy: ``PSY`` mental health, ``HIV``, ``SEX`` sexual and
reproductive health) or by its codes (ICD-10 chapters, SNOMED CT and LOINC codes in
``SENSITIVE_CODES``), so data that arrives unlabelled is still protected.

A restriction is a FHIR ``Consent`` of the patient, ``status`` active, whose ``provision`` is a
``deny`` listing the categories as ``securityLabel`` and, nested, ``permit`` provisions whose
``actor`` are the treating team (Organizations, or their Practitioners' roles)::

    {"resourceType": "Consent", "status": "active",
     "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                            "code": "patient-privacy"}]},
     "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
     "patient": {"reference": "Patient/p1"},
     "provision": {"type": "deny",
       "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                          "code": "PSY"}],
       "provision": [{"type": "permit",
                      "actor": [{"role": {...},
                                 "reference": {"reference": "Organization/mh-clinic"}}]}]}}

Restricted data is visible only to a requester whose facility is a permitted actor (or while
breaking the glass, audited). Anything else sees it as if it did not exist.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACT_CODE",
    "LOGIN_SYSTEM",
    "SENSITIVE_CODES",
    "Restriction",
    "authorises_caregiver",
    "restrictions_of",
    "sensitivity",
]

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LABELS = ("PSY", "HIV", "SEX")

# Codes that make a resource sensitive whatever its labels. ICD-10 by chapter prefix; SNOMED CT
# and LOINC codes of what the record holds for these categories (the synthetic population's
# depression, anxiety, PHQ-9, GAD-7, their medicines' ATC group).
ICD10_PREFIXES: dict[str, tuple[str, ...]] = {
    "PSY": ("F",),
    "HIV": ("B20", "B21", "B22", "B23", "B24", "Z21"),
    "SEX": ("O", "Z30", "Z31", "Z32", "Z33", "Z34", "Z35", "Z36", "Z37", "Z39", "N96", "N97"),
}
SENSITIVE_CODES: dict[tuple[str, str], str] = {
    ("http://snomed.info/sct", "35489007"): "PSY",  # depressive disorder
    ("http://snomed.info/sct", "197480006"): "PSY",  # anxiety disorder
    ("http://snomed.info/sct", "74732009"): "PSY",  # mental disorder
    ("http://snomed.info/sct", "86406008"): "HIV",  # HIV infection
    ("http://snomed.info/sct", "77386006"): "SEX",  # pregnancy
    ("http://loinc.org", "44261-6"): "PSY",  # PHQ-9 total
    ("http://loinc.org", "70274-6"): "PSY",  # GAD-7 total
    ("http://loinc.org", "75622-1"): "HIV",  # HIV 1 and 2 tests
}
ICD10_SYSTEMS = ("http://hl7.org/fhir/sid/icd-10", "http://hl7.org/fhir/sid/icd-10-cm")
ATC = "http://www.whocc.no/atc"
ATC_PREFIXES = {"PSY": ("N05", "N06"), "HIV": ("J05AR", "J05AF", "J05AG")}
# where a resource says what it is about
CODE_ELEMENTS = (
    "code",
    "category",
    "reasonCode",
    "type",
    "medicationCodeableConcept",
    "vaccineCode",
)


@dataclass(frozen=True, slots=True)
class Restriction:
    """One active Consent's denial: these labels, except for these actors."""

    consent_id: str
    labels: frozenset[str]
    permitted: frozenset[str]  # "Organization/x", "Practitioner/y", ...


def _codings(resource: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for element in CODE_ELEMENTS:
        value = resource.get(element)
        for concept in value if isinstance(value, list) else [value]:
            if isinstance(concept, dict):
                yield from (c for c in concept.get("coding") or () if isinstance(c, dict))


def _label_of(coding: Mapping[str, Any]) -> str | None:
    system, code = coding.get("system"), coding.get("code")
    if not isinstance(code, str):
        return None
    found = SENSITIVE_CODES.get((str(system), code))
    if found:
        return found
    if system in ICD10_SYSTEMS:
        for label, prefixes in ICD10_PREFIXES.items():
            if code.upper().startswith(prefixes):
                return label
    if system == ATC:
        for label, prefixes in ATC_PREFIXES.items():
            if code.upper().startswith(prefixes):
                return label
    return None


def sensitivity(resource: Mapping[str, Any]) -> frozenset[str]:
    """The sensitive categories of a resource: its labels and what its codes say."""
    labels = {
        s.get("code")
        for s in (resource.get("meta") or {}).get("security") or ()
        if isinstance(s, dict) and s.get("code") in LABELS
    }
    labels.update(label for c in _codings(resource) if (label := _label_of(c)))
    return frozenset(str(x) for x in labels)


def restrictions_of(consent: Mapping[str, Any]) -> Restriction | None:
    """The restriction an active patient-privacy Consent makes, if it makes one."""
    if consent.get("resourceType") != "Consent" or consent.get("status") != "active":
        return None
    provision = consent.get("provision") or {}
    if provision.get("type") != "deny":
        return None
    labels = frozenset(
        str(s.get("code"))
        for s in provision.get("securityLabel") or ()
        if isinstance(s, dict) and s.get("code") in LABELS
    )
    labels |= frozenset(
        label
        for cls in provision.get("class") or ()
        if isinstance(cls, dict) and (label := _label_of(cls))
    )
    if not labels:
        return None
    permitted = frozenset(
        str(ref)
        for nested in provision.get("provision") or ()
        if isinstance(nested, dict) and nested.get("type") == "permit"
        for actor in nested.get("actor") or ()
        if isinstance(actor, dict)
        and isinstance(ref := (actor.get("reference") or {}).get("reference"), str)
    )
    return Restriction(str(consent.get("id")), labels, permitted)


# How a Consent names a person who may act for the patient: by their login or client id.
LOGIN_SYSTEM = "https://takamul.health/fhir/sid/login"


def authorises_caregiver(consent: Mapping[str, Any], who: Iterable[str]) -> bool:
    """An active Consent permitting one of ``who`` (login or client ids) to act for the
    patient: a ``permit`` provision (top level or nested) whose actor's reference carries the
    identifier ``LOGIN_SYSTEM|<id>``. A recorded legal authority is entered the same way."""
    if consent.get("resourceType") != "Consent" or consent.get("status") != "active":
        return False
    names = set(who)
    top = consent.get("provision") or {}
    provisions = [top, *(top.get("provision") or ())]
    for provision in provisions:
        if not isinstance(provision, dict) or provision.get("type") != "permit":
            continue
        for actor in provision.get("actor") or ():
            identifier = ((actor or {}).get("reference") or {}).get("identifier") or {}
            if identifier.get("system") == LOGIN_SYSTEM and identifier.get("value") in names:
                return True
    return False
