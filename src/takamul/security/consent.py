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

import calendar
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
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


def authorises_caregiver(
    consent: Mapping[str, Any], who: Iterable[str], now: datetime | None = None
) -> bool:
    """An active Consent permitting one of ``who`` (login or client ids) to act for the
    patient: a ``permit`` provision (top level or nested) whose actor's reference carries the
    identifier ``LOGIN_SYSTEM|<id>``, within the provision's ``period`` (and the top level's)
    at ``now``. A recorded legal authority is entered the same way."""
    if consent.get("resourceType") != "Consent" or consent.get("status") != "active":
        return False
    names = set(who)
    top = consent.get("provision") or {}
    at = now or datetime.now(UTC)
    if not _in_period(top.get("period"), at):
        return False  # an expired consent authorises nothing, nested permits included
    provisions = [top, *(top.get("provision") or ())]
    for provision in provisions:
        if not isinstance(provision, dict) or provision.get("type") != "permit":
            continue
        if not _in_period(provision.get("period"), at):
            continue
        for actor in provision.get("actor") or ():
            identifier = ((actor or {}).get("reference") or {}).get("identifier") or {}
            if identifier.get("system") == LOGIN_SYSTEM and identifier.get("value") in names:
                return True
    return False


def _in_period(period: Any, at: datetime) -> bool:
    """``at`` lies in a FHIR Period (a date-only bound covers its whole day; no period, or an
    unreadable bound, does not limit)."""
    if not isinstance(period, dict):
        return True
    start, end = _instant(period.get("start"), time.min), _instant(period.get("end"), time.max)
    return (start is None or start <= at) and (end is None or at <= end)


def _instant(value: Any, edge: time) -> datetime | None:
    """A bound as an instant: a partial date (year, year-month, date) at its first moment
    (``time.min``) or its last (``time.max``)."""
    if not isinstance(value, str):
        return None
    try:
        if len(value) <= 10:
            parts = [int(p) for p in value.split("-")]
            year, month, day = [*parts, 0, 0][:3]
            last = edge == time.max
            month = month or (12 if last else 1)
            day = day or (calendar.monthrange(year, month)[1] if last else 1)
            return datetime.combine(date(year, month, day), edge, UTC)
        found = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return found if found.tzinfo else found.replace(tzinfo=UTC)
