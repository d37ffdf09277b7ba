"""Consent: a patient restricts sensitive categories of their record to their treating team.

Sensitive data is recognised by its security label (``meta.security``, v3
ActInformationSensitivityPolicy: ``PSY`` mental health, ``HIV``, ``SEX`` sexual and
reproductive health), which the store adds on write from the cited value sets of
``takamul.fhir.sensitivity`` (ICD-10 and ATC hierarchies, LOINC instruments and tests, SNOMED CT
concepts); the codes are also read at check time, so data stored before a value set grew is
still protected.

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

from takamul.fhir.sensitivity import ACT_CODE, LABELS, code_label, sensitivity

__all__ = [
    "ACT_CODE",
    "LOGIN_SYSTEM",
    "Restriction",
    "authorises_caregiver",
    "restrictions_of",
    "sensitivity",
]


@dataclass(frozen=True, slots=True)
class Restriction:
    """One active Consent's denial: these labels, except for these actors."""

    consent_id: str
    labels: frozenset[str]
    permitted: frozenset[str]  # "Organization/x", "Practitioner/y", ...


def _label_of(coding: Mapping[str, Any]) -> str | None:
    system, code = coding.get("system"), coding.get("code")
    return code_label(str(system), code) if isinstance(code, str) else None


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
