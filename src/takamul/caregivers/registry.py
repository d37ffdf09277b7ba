"""The facility's registry of caregivers at high burden, on a date.

A row per caregiver (RelatedPerson) and patient cared for whose latest ZBI-12 total on or before
the date is at or above the cut-off, the patient being the facility's (``managingOrganization``).
The totals are the record's score Observations (``takamul.mentalhealth`` writes them on every
response; a facility's own total of the same response is read when ours was not written), each
traced to its response by ``derivedFrom`` for the caregiver who answered.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import astuple, dataclass, fields
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from takamul.caregivers.burden import (
    CAREGIVER_SYSTEM,
    SUPPORT_CODE,
    _read,
    _ref_id,
    caregiver_of,
    cutoff,
    patient_of,
    zbi12,
)
from takamul.mentalhealth.safety import find_all
from takamul.mentalhealth.scoring import derived_id
from takamul.store.guard import unguarded
from takamul.store.repository import Session, Store

__all__ = ["CaregiverRow", "registry", "write_registry_csv"]

FINAL = ("final", "amended", "corrected")


@dataclass(frozen=True, slots=True)
class CaregiverRow:
    caregiver_id: str
    caregiver_name: str
    patient_id: str
    latest_total: int
    latest_date: str
    previous_total: int | None
    change: int | None
    referral_id: str
    referral_status: str


@dataclass(frozen=True, slots=True)
class _Screen:
    day: str  # YYYY-MM-DD
    total: int
    response_id: str
    at: str = ""  # the instant in UTC, to order two screens of one day


def _utc(when: str) -> str:
    """``effectiveDateTime`` as a sortable UTC instant (a date alone: its day's start)."""
    try:
        moment = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        return when
    if moment.tzinfo is None:
        return moment.isoformat()
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat()


def _name(person: dict[str, Any] | None) -> str:
    for name in (person or {}).get("name") or ():
        if isinstance(name, dict):
            if name.get("text"):
                return str(name["text"])
            parts = [*(name.get("given") or ()), name.get("family") or ""]
            return " ".join(str(p) for p in parts if p)
    return ""


def _screens(session: Session, as_of: date) -> dict[tuple[str, str], list[_Screen]]:
    """Every ZBI-12 total on or before ``as_of``, per (caregiver, patient), oldest first; one
    per response (ours where both ours and the facility's were stored)."""
    coding = zbi12().total_coding
    by_response: dict[str, tuple[bool, _Screen, dict[str, Any]]] = {}
    for obs in find_all(session, "Observation", [("code", f"{coding['system']}|{coding['code']}")]):
        total, when = obs.get("valueInteger"), obs.get("effectiveDateTime")
        if obs.get("status") not in FINAL or not isinstance(total, int) or not when:
            continue
        day = str(when)[:10]
        if day > as_of.isoformat():
            continue
        for ref in obs.get("derivedFrom") or ():
            response_id = _ref_id(ref, "QuestionnaireResponse")
            if not response_id:
                continue
            ours = obs.get("id") == derived_id("mhs", response_id)
            if response_id in by_response and not ours:
                continue
            screen = _Screen(day, total, response_id, _utc(str(when)))
            by_response[response_id] = (ours, screen, obs)
    grouped: dict[tuple[str, str], list[_Screen]] = defaultdict(list)
    for response_id, (_, screen, _obs) in by_response.items():
        response = _read(session, "QuestionnaireResponse", response_id)
        if response is None or response.get("status") == "entered-in-error":
            continue
        caregiver = caregiver_of(response)
        patient = patient_of(session, response, caregiver) if caregiver else None
        if caregiver and patient:
            grouped[(caregiver, patient)].append(screen)
    for screens in grouped.values():
        screens.sort(key=lambda s: (s.day, s.at, s.response_id))
    return grouped


def _referral(session: Session, patient: str, caregiver: str, as_of: date) -> tuple[str, str]:
    """(id, status) of the latest support referral authored on or before ``as_of``."""
    found = [
        r
        for r in find_all(
            session,
            "ServiceRequest",
            [("subject", f"Patient/{patient}"), ("code", f"{CAREGIVER_SYSTEM}|{SUPPORT_CODE}")],
        )
        if any(
            isinstance(s, dict) and s.get("reference") == f"RelatedPerson/{caregiver}"
            for s in r.get("supportingInfo") or ()
        )
        and str(r.get("authoredOn") or "")[:10] <= as_of.isoformat()
    ]
    if not found:
        return "", ""
    latest = max(found, key=lambda r: (str(r.get("authoredOn") or ""), str(r.get("id"))))
    return str(latest.get("id")), str(latest.get("status") or "")


def registry(store: Store, facility: str, as_of: date) -> list[CaregiverRow]:
    """The caregivers at high burden of ``facility``'s patients on ``as_of`` (the cut-off as
    configured now), by caregiver and patient id."""
    org = facility.removeprefix("Organization/")
    high = cutoff()
    rows: list[CaregiverRow] = []
    with unguarded(), store.reading() as session:
        for (caregiver, patient), screens in sorted(_screens(session, as_of).items()):
            latest = screens[-1]
            if latest.total < high:
                continue
            cared_for = _read(session, "Patient", patient)
            if _ref_id((cared_for or {}).get("managingOrganization"), "Organization") != org:
                continue
            previous = screens[-2].total if len(screens) > 1 else None
            referral_id, status = _referral(session, patient, caregiver, as_of)
            rows.append(
                CaregiverRow(
                    caregiver_id=caregiver,
                    caregiver_name=_name(_read(session, "RelatedPerson", caregiver)),
                    patient_id=patient,
                    latest_total=latest.total,
                    latest_date=latest.day,
                    previous_total=previous,
                    change=None if previous is None else latest.total - previous,
                    referral_id=referral_id,
                    referral_status=status,
                )
            )
    return rows


COLUMNS = tuple(f.name for f in fields(CaregiverRow))


def write_registry_csv(rows: list[CaregiverRow], out: Path) -> int:
    """Write the rows as CSV (UTF-8, names untouched); returns the number written."""
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(["" if v is None else v for v in astuple(row)])
    return len(rows)
