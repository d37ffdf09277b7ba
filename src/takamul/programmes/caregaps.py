"""Care gaps over the API: the Da Vinci DEQM ``Measure/$care-gaps`` report and CDS Hooks cards.

A person's gaps (:func:`takamul.programmes.gaps.person_gaps`) become a DEQM gaps-in-care document
per person: a ``Composition`` (LOINC 96315-7 "Gaps in care report") with one section per measure,
the section's ``focus`` an individual ``MeasureReport`` and its entries the ``DetectedIssue`` of
the gap (code CAREGAP, the DEQM gap status as a modifier extension), and the ``Patient``. The
``Parameters`` of the operation hold one such document per person (``return``).

For decision support, the open gaps of one person become CDS Hooks 2.0 cards (a warning for an
uncontrolled condition or a high-risk overdue person, information otherwise).

Nothing here reads the record on the requester's behalf: the API reads the Patient through the
guarded session first and passes it in (see ``takamul.api.programmes``).
"""

from __future__ import annotations

import calendar
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from takamul.fhir.outcome import FhirError, OutcomeIssue
from takamul.programmes.definitions import Catalog
from takamul.programmes.gaps import CLOSED, GAPS_SYSTEM, OPEN, PROSPECTIVE, Gap, PersonGaps
from takamul.programmes.gaps import measure_ids as catalog_measure_ids
from takamul.programmes.measures import (
    IDENTIFIER_SYSTEM,
    IMPROVEMENT_NOTATION,
    measure_id_of_url,
    measure_resource_id,
    measure_url,
    population,
)
from takamul.programmes.service import Programmes
from takamul.store.repository import valid_id

__all__ = [
    "CARE_GAPS_PARAMETERS",
    "GAP_STATUSES",
    "GAP_STATUS_EXTENSION",
    "CareGapsQuery",
    "care_gaps",
    "cds_cards",
    "gaps_document",
    "parse_care_gaps",
]

GAP_STATUSES = (OPEN, CLOSED, PROSPECTIVE)
GAP_STATUS_EXTENSION = "http://hl7.org/fhir/us/davinci-deqm/StructureDefinition/extension-gapStatus"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LOINC = "http://loinc.org"
REPORT_TYPE = {"coding": [{"system": LOINC, "code": "96315-7", "display": "Gaps in care report"}]}
CAREGAP = {"coding": [{"system": ACT_CODE, "code": "CAREGAP", "display": "Care Gaps"}]}
AUTHOR = "Takamul shared health record, care programmes"
CARD_SOURCE = "Takamul care programmes"
_STATUS_DISPLAY = {OPEN: "Open Gap", CLOSED: "Closed Gap", PROSPECTIVE: "Prospective Gap"}
# the DEQM operation's parameters this server takes, and those it knows but does not support
CARE_GAPS_PARAMETERS = (
    "periodStart",
    "periodEnd",
    "subject",
    "organization",
    "status",
    "measureId",
    "measureUrl",
    "measureIdentifier",
)
_NOT_SUPPORTED = {
    "practitioner": "patients are not attributed to practitioners here; use organization",
    "topic": "measures have no topics here; name them with measureId or measureUrl",
    "program": "measures have no programs here; name them with measureId or measureUrl",
}
_IGNORED = ("_format", "_pretty")
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


@dataclass(frozen=True, slots=True)
class CareGapsQuery:
    """A checked ``$care-gaps`` request."""

    period_start: date
    period_end: date
    statuses: tuple[str, ...]
    measures: tuple[str, ...]  # measure ids; empty: every measure
    subject: str | None  # Patient id
    organization: str | None  # Organization id


def _bad(message: str, parameter: str, code: str = "invalid") -> FhirError:
    return FhirError(400, OutcomeIssue("error", code, message, parameter))


def _date(value: str, name: str, end: bool) -> date:
    """A FHIR date (YYYY, YYYY-MM or YYYY-MM-DD); a partial date means its first day as a start
    and its last day as an end."""
    m = _DATE.match(value.strip())
    try:
        if m is None:
            raise ValueError(value)
        year, month, day = int(m[1]), m[2], m[3]
        if month is None:
            return date(year, 12, 31) if end else date(year, 1, 1)
        if day is None:
            last = calendar.monthrange(year, int(month))[1]
            return date(year, int(month), last if end else 1)
        return date(year, int(month), int(day))
    except ValueError as err:
        raise _bad(f"{name} must be a FHIR date (YYYY-MM-DD), not {value[:40]!r}", name) from err


def _reference(value: str, rtype: str, name: str) -> str:
    """The id of ``Type/id`` (or a bare id) of the expected type."""
    text = value.strip()
    kind, _, rid = text.rpartition("/")
    if kind and kind.rsplit("/", 1)[-1] != rtype:
        raise _bad(
            f"{name} must reference a {rtype} ({rtype}/id), not {text[:60]!r}",
            name,
            "not-supported",
        )
    if not valid_id(rid):
        raise _bad(f"{name} must be {rtype}/id with a valid id, not {text[:60]!r}", name)
    return rid


def _measure(value: str, name: str, catalog: Catalog, known: list[str]) -> str:
    text = value.strip()
    if name == "measureUrl":
        found = measure_id_of_url(text)
    elif name == "measureIdentifier":
        system, bar, code = text.rpartition("|")
        found = code if (not bar or system == IDENTIFIER_SYSTEM) else None
    else:
        # the id of the Measure resource on this server, or the measure's own id
        found = text.removeprefix("Measure/").removeprefix("takamul-")
    if found not in known:
        raise _bad(
            f"{name} {text[:80]!r} is not a measure of this server; the measures are "
            + ", ".join(measure_resource_id(m) for m in known),
            name,
            "not-found",
        )
    return found


def parse_care_gaps(params: Iterable[tuple[str, str]], catalog: Catalog) -> CareGapsQuery:
    """Check the parameters of ``$care-gaps`` (query or Parameters, as name/value pairs); every
    problem is a 400 whose OperationOutcome names the parameter."""
    values: dict[str, list[str]] = {}
    for name, value in params:
        if name in _IGNORED:
            continue
        if name in _NOT_SUPPORTED:
            raise _bad(f"{name} is not supported: {_NOT_SUPPORTED[name]}", name, "not-supported")
        if name not in CARE_GAPS_PARAMETERS:
            raise _bad(
                f"Unknown $care-gaps parameter {name!r}; it takes "
                + ", ".join(CARE_GAPS_PARAMETERS),
                name,
                "not-supported",
            )
        values.setdefault(name, []).append(value)
    for name in ("periodStart", "periodEnd", "subject", "organization"):
        if len(values.get(name, ())) > 1:
            raise _bad(f"{name} may be given once", name)
    for name in ("periodStart", "periodEnd", "status"):
        if not values.get(name):
            raise _bad(f"$care-gaps needs {name}", name, "required")
    start = _date(values["periodStart"][0], "periodStart", end=False)
    end = _date(values["periodEnd"][0], "periodEnd", end=True)
    if end < start:
        raise _bad(f"periodEnd ({end}) is before periodStart ({start})", "periodEnd")
    statuses: list[str] = []
    for raw in values["status"]:
        for status in (s.strip() for s in raw.split(",")):
            if status not in GAP_STATUSES:
                raise _bad(
                    f"status {status[:40]!r} is not a gap status; use " + ", ".join(GAP_STATUSES),
                    "status",
                    "code-invalid",
                )
            if status not in statuses:
                statuses.append(status)
    subject = values.get("subject", [None])[0]
    organization = values.get("organization", [None])[0]
    if (subject is None) == (organization is None):
        raise _bad(
            "$care-gaps needs exactly one of subject (Patient/id) or organization "
            "(Organization/id)",
            "subject",
            "required",
        )
    known = catalog_measure_ids(catalog)
    measures: list[str] = []
    for name in ("measureId", "measureUrl", "measureIdentifier"):
        for raw in values.get(name, ()):
            found = _measure(raw, name, catalog, known)
            if found not in measures:
                measures.append(found)
    return CareGapsQuery(
        start,
        end,
        tuple(statuses),
        tuple(measures),
        _reference(subject, "Patient", "subject") if subject is not None else None,
        _reference(organization, "Organization", "organization")
        if organization is not None
        else None,
    )


# -- the gaps-in-care document ---------------------------------------------------------------


def _status_concept(status: str) -> dict[str, Any]:
    return {"coding": [{"system": GAPS_SYSTEM, "code": status, "display": _STATUS_DISPLAY[status]}]}


def _measure_report(
    gap: Gap, patient_ref: str, query: CareGapsQuery, now: str, rid: str
) -> dict[str, Any]:
    # the individual's result at the period's end: a prospective gap is met today but not
    # through the period, so it does not count in the numerator
    met = 1 if gap.status == CLOSED else 0
    return {
        "resourceType": "MeasureReport",
        "id": rid,
        "status": "complete",
        "type": "individual",
        "measure": measure_url(gap.measure),
        "subject": {"reference": patient_ref},
        "date": now,
        "reporter": {"display": AUTHOR},
        "period": {"start": query.period_start.isoformat(), "end": query.period_end.isoformat()},
        "improvementNotation": IMPROVEMENT_NOTATION,
        "group": [
            {
                "population": [
                    population("initial-population", 1),
                    population("denominator", 1),
                    population("numerator", met),
                ],
                "measureScore": {"value": met},
            }
        ],
    }


def _gap_text(gap: Gap) -> str:
    text = f"{gap.title}: {gap.detail}"
    if gap.due is not None and gap.status != CLOSED:
        text += f"; due {gap.due.isoformat()}"
    status = gap.programme_status
    if status is not None and status.overdue_days:
        text += f"; {status.overdue_days} days overdue, {status.risk} risk"
    return text


def _detected_issue(
    gap: Gap, patient_ref: str, report_url: str, today: date, rid: str
) -> dict[str, Any]:
    issue: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "id": rid,
        "modifierExtension": [
            {"url": GAP_STATUS_EXTENSION, "valueCodeableConcept": _status_concept(gap.status)}
        ],
        "status": "final",
        "code": CAREGAP,
        "patient": {"reference": patient_ref},
        "identifiedDateTime": today.isoformat(),
        "author": {"display": AUTHOR},
        "evidence": [{"detail": [{"reference": report_url}]}],
        "detail": _gap_text(gap),
    }
    if gap.programme_status is not None and gap.programme_status.risk == "high":
        issue["severity"] = "high"
    return issue


def gaps_document(
    gaps: PersonGaps,
    patient: dict[str, Any],
    query: CareGapsQuery,
    base: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The DEQM gaps-in-care document of one person: the gaps with the query's statuses."""
    moment = now or datetime.now(UTC)
    stamp = moment.isoformat(timespec="seconds")
    today = min(moment.date(), query.period_end)
    patient_url = f"{base}/Patient/{patient['id']}"
    # the generated resources are not stored: urn:uuid full URLs, and the Patient by its
    # absolute URL so that every reference resolves inside the document
    sections: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    for gap in gaps.gaps:
        if gap.status not in query.statuses:
            continue
        report_id, issue_id = str(uuid.uuid4()), str(uuid.uuid4())
        report_url, issue_url = f"urn:uuid:{report_id}", f"urn:uuid:{issue_id}"
        entries.append(
            {
                "fullUrl": report_url,
                "resource": _measure_report(gap, patient_url, query, stamp, report_id),
            }
        )
        entries.append(
            {
                "fullUrl": issue_url,
                "resource": _detected_issue(gap, patient_url, report_url, today, issue_id),
            }
        )
        sections.append(
            {
                "title": gap.title,
                "focus": {"reference": report_url},
                "entry": [{"reference": issue_url}],
            }
        )
    composition_id = str(uuid.uuid4())
    composition: dict[str, Any] = {
        "resourceType": "Composition",
        "id": composition_id,
        "status": "final",
        "type": REPORT_TYPE,
        "subject": {"reference": patient_url},
        "date": stamp,
        "author": [{"display": AUTHOR}],
        "title": "Gaps in care report",
        # the gaps-through period the report covers
        "event": [
            {
                "period": {
                    "start": query.period_start.isoformat(),
                    "end": query.period_end.isoformat(),
                }
            }
        ],
    }
    if sections:
        composition["section"] = sections
    bundle_id = str(uuid.uuid4())
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{bundle_id}"},
        "type": "document",
        "timestamp": stamp,
        "entry": [
            {"fullUrl": f"urn:uuid:{composition_id}", "resource": composition},
            *entries,
            {"fullUrl": patient_url, "resource": patient},
        ],
    }


def care_gaps(
    programmes: Programmes,
    query: CareGapsQuery,
    patients: Iterable[dict[str, Any]],
    base: str,
    now: datetime | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The ``Parameters`` answer for ``patients`` (already read under the requester's guard),
    one document per person, and the ids of the Patients reported on.

    A person with several records is reported once, under the first record given. For an
    organization, persons without a gap of the asked statuses are left out; a subject is
    always answered (its document may have no section)."""
    moment = now or datetime.now(UTC)
    # the record's dates are local calendar dates (docs/programmes.md), so is "today"
    as_of = now.date() if now is not None else date.today()
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    reported: list[str] = []
    for patient in patients:
        gaps = programmes.gaps(
            [patient["id"]],
            query.period_start,
            query.period_end,
            as_of=as_of,
            measures=query.measures or None,
        )
        key = gaps.person_id or patient["id"]
        if key in seen:
            continue
        seen.add(key)
        if query.organization is not None and not any(
            g.status in query.statuses for g in gaps.gaps
        ):
            continue
        out.append(
            {"name": "return", "resource": gaps_document(gaps, patient, query, base, moment)}
        )
        reported.append(patient["id"])
    params: dict[str, Any] = {"resourceType": "Parameters"}
    if out:
        params["parameter"] = out
    return params, reported


# -- CDS Hooks cards ---------------------------------------------------------------------------

SUMMARY_LIMIT = 140  # CDS Hooks 2.0: "<140-character summary"
_BY = {"chw": "community health worker", "gp": "general practitioner", "specialist": "specialist"}


def _short(text: str) -> str:
    return text if len(text) < SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 2].rstrip() + "…"


def _reading(gap: Gap) -> str | None:
    s = gap.programme_status
    if s is None or s.last_measurement_date is None:
        return None
    if s.last_glucose_test is not None and s.last_glucose_value is not None:
        unit = "%" if s.last_glucose_test == "hba1c" else "mg/dL"
        name = {"hba1c": "HbA1c", "fasting-glucose": "fasting glucose"}.get(
            s.last_glucose_test, "random glucose"
        )
        return f"{name} {s.last_glucose_value:g} {unit} on {s.last_measurement_date}"
    if s.last_systolic is not None and s.last_diastolic is not None:
        return f"BP {s.last_systolic:g}/{s.last_diastolic:g} mmHg on {s.last_measurement_date}"
    return None


def _summary(gap: Gap) -> str:
    s = gap.programme_status
    if s is not None and s.status == "uncontrolled":
        reading = _reading(gap)
        return _short(f"{gap.title}: not controlled" + (f" ({reading})" if reading else ""))
    if s is not None:
        overdue = f", {s.overdue_days} days overdue" if s.overdue_days else ""
        return _short(f"{gap.title}: {gap.detail}{overdue}")
    due = f" since {gap.due}" if gap.due is not None else ""
    return _short(f"{gap.title} due{due} ({gap.detail})")


def _card_detail(gap: Gap) -> str:
    s = gap.programme_status
    lines = [f"**{gap.title}**: open care gap.", ""]
    if s is not None:
        lines.append(f"- Registry status: {s.status} ({gap.detail})")
        reading = _reading(gap)
        if reading:
            lines.append(f"- Last measurement: {reading}")
        if s.last_visit is not None:
            lines.append(f"- Last visit: {s.last_visit}")
        if s.overdue_days:
            lines.append(f"- Overdue: {s.overdue_days} days ({s.risk} risk)")
    else:
        lines.append(f"- {gap.detail[:1].upper()}{gap.detail[1:]}")
        if gap.last_done is not None:
            lines.append(f"- Last done: {gap.last_done}")
        if gap.due is not None:
            lines.append(f"- Due: {gap.due}")
    lines.append(f"- Who acts: {_BY.get(gap.by, gap.by)}")
    return "\n".join(lines)


def _indicator(gap: Gap) -> str:
    s = gap.programme_status
    if s is not None and (s.status == "uncontrolled" or s.risk == "high"):
        return "warning"
    return "info"


def cds_cards(gaps: PersonGaps, base: str) -> list[dict[str, Any]]:
    """One CDS Hooks card per open gap (an uncontrolled condition is an open control gap)."""
    cards = []
    for gap in gaps.open:
        measure = f"{base}/Measure/{measure_resource_id(gap.measure)}"
        cards.append(
            {
                "uuid": str(uuid.uuid4()),
                "summary": _summary(gap),
                "detail": _card_detail(gap),
                "indicator": _indicator(gap),
                "source": {"label": CARD_SOURCE, "url": measure_url(gap.measure)},
                "links": [{"label": f"Measure: {gap.title}", "url": measure, "type": "absolute"}],
            }
        )
    # warnings first, as a clinician reads them
    cards.sort(key=lambda c: c["indicator"] != "warning")
    return cards
