"""The consolidated record of one person as a page shows it, read under the viewer's guard.

The golden record is the person's registrations that the viewer may see: the registry knows
all of a person's registrations, but a registration the guard hides (another facility's,
without consent or breaking the glass) adds nothing to the page, not even its existence.
Everything else is FHIR search on those registrations, as any API client would run it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from dateutil.relativedelta import relativedelta

from takamul.fhir.outcome import FhirError
from takamul.programmes.gaps import Gap
from takamul.programmes.service import Programmes
from takamul.programmes.status import PersonStatus
from takamul.store.repository import Session
from takamul.web.i18n import N_

__all__ = [
    "ACTOR_LABELS",
    "GAP_STATUS_LABELS",
    "GAP_TITLES",
    "PROGRAMME_TITLES",
    "STATUS_LABELS",
    "TRENDS",
    "PatientRecord",
    "ProgrammeSection",
    "Trend",
    "guarded_search",
    "load_record",
    "may_see_programmes",
    "organization_names",
    "programme_section",
]

LOINC = "http://loinc.org"


@dataclass(frozen=True, slots=True)
class TrendSpec:
    key: str
    label: str  # English msgid
    code: str  # LOINC of the observation
    components: tuple[tuple[str, str], ...] = ()  # (LOINC, msgid) of a panel's series
    unit: str = ""


TRENDS = (
    TrendSpec(
        "bp",
        N_("Blood pressure"),
        "85354-9",
        (("8480-6", N_("Systolic")), ("8462-4", N_("Diastolic"))),
        "mmHg",
    ),
    TrendSpec("hba1c", N_("HbA1c"), "4548-4", unit="%"),
    TrendSpec("weight", N_("Weight"), "29463-7", unit="kg"),
    TrendSpec("bmi", N_("Body mass index"), "39156-5", unit="kg/m²"),
    TrendSpec("phq9", N_("PHQ-9 score"), "44261-6"),
)
# A page shows the newest of each list; the rest is a search away (and the page stays fast
# for a patient with thousands of resources).
LIST_LIMIT = 100
TREND_POINTS = 60


@dataclass
class Trend:
    spec: TrendSpec
    series: dict[str, list[tuple[str, float]]]  # series msgid -> (date, value), oldest first


@dataclass
class PatientRecord:
    patient: dict[str, Any]
    registrations: list[dict[str, Any]]  # the person's registrations the viewer may see
    person: str | None
    problems: list[dict[str, Any]] = field(default_factory=list)
    medications: list[dict[str, Any]] = field(default_factory=list)
    allergies: list[dict[str, Any]] = field(default_factory=list)
    immunizations: list[dict[str, Any]] = field(default_factory=list)
    encounters: list[dict[str, Any]] = field(default_factory=list)
    care_teams: list[dict[str, Any]] = field(default_factory=list)
    trends: list[Trend] = field(default_factory=list)
    organizations: dict[str, str] = field(default_factory=dict)  # "Organization/x" -> name

    def facility(self, resource: dict[str, Any]) -> str | None:
        """The facility a resource was recorded at, by name when the record knows it."""
        ref = (
            (resource.get("serviceProvider") or {}).get("reference")
            or (resource.get("managingOrganization") or {}).get("reference")
            or (resource.get("performer") or [{}])[0].get("reference")
        )
        if not ref:
            return None
        return self.organizations.get(ref, ref)


def guarded_search(
    session: Session, resource_type: str, params: list[tuple[str, str]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int | None]:
    """(matches, included, total) of a search, under whatever guard is current."""
    query = session.parse_search(resource_type, params)
    found = session.search(query)
    return (
        [r.json() for r in found.matches],
        [r.json() for r in found.included],
        found.total,
    )


def load_record(
    session: Session, patient_id: str, members: Iterable[str], person: str | None
) -> PatientRecord:
    """The record of ``patient_id`` and the other registrations ``members`` of its person.
    A FhirError 404 when the viewer may not see ``patient_id`` (as when it does not exist)."""
    patient = session.read("Patient", patient_id).json()
    others = sorted(set(members) - {patient_id})
    registrations = [patient]
    if others:
        seen, _, _ = guarded_search(
            session, "Patient", [("_id", ",".join(others)), ("_count", str(len(others)))]
        )
        registrations += seen
    record = PatientRecord(patient, registrations, person)
    refs = ",".join(f"Patient/{r['id']}" for r in registrations)
    _clinical(session, record, refs)
    _encounters(session, record, refs)
    _trends(session, record, refs)
    record.organizations = organization_names(session, (*record.registrations, *record.encounters))
    return record


def _newest(
    session: Session, rtype: str, refs: str, sort: str, *extra: tuple[str, str]
) -> list[dict[str, Any]]:
    try:
        found, _, _ = guarded_search(
            session,
            rtype,
            [
                ("patient", refs),
                ("_sort", sort),
                ("_count", str(LIST_LIMIT)),
                ("_total", "none"),
                *extra,
            ],
        )
    except FhirError as err:
        if err.status == 403:  # the viewer's role does not read this type: the section is empty
            return []
        raise
    return found


def _clinical(session: Session, record: PatientRecord, refs: str) -> None:
    record.problems = _newest(session, "Condition", refs, "-recorded-date")
    record.medications = _newest(session, "MedicationRequest", refs, "-authoredon")
    record.allergies = _newest(session, "AllergyIntolerance", refs, "-date")
    record.immunizations = _newest(session, "Immunization", refs, "-date")
    record.care_teams = _newest(session, "CareTeam", refs, "-_lastUpdated")


def _encounters(session: Session, record: PatientRecord, refs: str) -> None:
    record.encounters = _newest(session, "Encounter", refs, "-date")


def _trends(session: Session, record: PatientRecord, refs: str) -> None:
    """The newest measurements of each charted code, one indexed search per code: a patient
    followed for decades has thousands of observations, a chart needs its last few dozen."""
    for spec in TRENDS:
        try:
            found, _, _ = guarded_search(
                session,
                "Observation",
                [
                    ("patient", refs),
                    ("code", f"{LOINC}|{spec.code}"),
                    ("_sort", "-date"),
                    ("_count", str(TREND_POINTS)),
                    ("_total", "none"),
                ],
            )
        except FhirError as err:
            if err.status == 403:
                return
            raise
        series: dict[str, list[tuple[str, float]]] = {}
        for obs in found:
            when = obs.get("effectiveDateTime") or (obs.get("effectivePeriod") or {}).get("start")
            if when:
                for label, value in _values(obs, spec):
                    series.setdefault(label, []).append((when[:10], value))
        if series:
            record.trends.append(Trend(spec, {k: sorted(v) for k, v in series.items()}))


def _has_code(concept: Any, code: str) -> bool:
    return any(c.get("code") == code for c in (concept or {}).get("coding") or [])


def _values(obs: dict[str, Any], spec: TrendSpec) -> list[tuple[str, float]]:
    if spec.components:
        out = []
        for component in obs.get("component") or []:
            for code, label in spec.components:
                value = (component.get("valueQuantity") or {}).get("value")
                if _has_code(component.get("code"), code) and isinstance(value, int | float):
                    out.append((label, float(value)))
        return out
    value = (obs.get("valueQuantity") or {}).get("value")
    if value is None and isinstance(obs.get("valueInteger"), int):
        value = obs["valueInteger"]
    return [(spec.label, float(value))] if isinstance(value, int | float) else []


def organization_names(session: Session, resources: Iterable[dict[str, Any]]) -> dict[str, str]:
    """ "Organization/x" -> name, for the facilities the resources name (managing or serving)
    that the viewer may see; one guarded search."""
    refs = {
        ref
        for r in resources
        for ref in (
            (r.get("serviceProvider") or {}).get("reference"),
            (r.get("managingOrganization") or {}).get("reference"),
        )
        if ref and ref.startswith("Organization/")
    }
    if not refs:
        return {}
    ids = ",".join(sorted(ref.split("/", 1)[1] for ref in refs))
    try:
        found, _, _ = guarded_search(session, "Organization", [("_id", ids), ("_count", "1000")])
    except FhirError:  # a role without directory reads: names stay references
        return {}
    return {f"Organization/{o['id']}": o.get("name") or o["id"] for o in found}


# -- care programmes (issue 14) ----------------------------------------------------------------
# The catalog's titles are English data (a ministry may replace the file); the packaged ones
# have msgids here, so they are translated when they match and shown as written otherwise.
PROGRAMME_TITLES = {
    "hypertension": N_("Hypertension"),
    "diabetes": N_("Diabetes"),
    "ckd": N_("Chronic kidney disease"),
    "asthma-copd": N_("Asthma and COPD"),
}
GAP_TITLES = (
    N_("Breast cancer screening (mammography)"),
    N_("Cervical cancer screening"),
    N_("Colorectal cancer screening (faecal immunochemical test)"),
    N_("Diabetes screening (HbA1c or fasting glucose)"),
    N_("Measles-containing vaccine, two doses by age 2"),
    N_("DTP-containing vaccine, three doses by age 1"),
    N_("Hypertension control"),
    N_("Diabetes control"),
    N_("Chronic kidney disease control"),
)
STATUS_LABELS = {
    "controlled": N_("Controlled"),
    "uncontrolled": N_("Uncontrolled"),
    "visited-no-measurement": N_("Visited, no measurement"),
    "missed-visit": N_("Missed visit"),
    "visited": N_("Visited"),
    "lost-to-follow-up": N_("Lost to follow-up"),
    "registered-recently": N_("Registered recently"),
}
GAP_STATUS_LABELS = {
    "open-gap": N_("Open gap"),
    "prospective-gap": N_("Due within the year"),
    "closed-gap": N_("Closed"),
}
ACTOR_LABELS = {
    "chw": N_("Community health worker"),
    "gp": N_("General practitioner"),
    "specialist": N_("Specialist"),
}


@dataclass(frozen=True)
class ProgrammeSection:
    """A person's programme statuses and the gaps still to close (open or due within the
    period), for the record page."""

    statuses: list[PersonStatus]
    gaps: list[Gap]
    period_end: date


def may_see_programmes(can_read: Any) -> bool:
    """Statuses and gaps are made of diagnoses and measurements: only for a viewer whose role
    reads both (a registry reviewer reads Patients but no clinical data)."""
    return bool(can_read("Condition", "r") and can_read("Observation", "r"))


def programme_section(programmes: Programmes, patient_id: str, today: date) -> ProgrammeSection:
    """The statuses on ``today`` and the gaps over the coming year of the person behind
    ``patient_id``. The caller has read that Patient under the viewer's guard first; the
    statuses and gaps are the person's (every record counts, as the programme rules say)."""
    end = today + relativedelta(years=1)
    statuses = programmes.person([patient_id], today)
    gaps = programmes.gaps([patient_id], period_start=today, period_end=end, as_of=today)
    still = [g for g in gaps.gaps if g.status != "closed-gap"]
    # open first, then those falling due, each soonest due first
    still.sort(key=lambda g: (g.status != "open-gap", g.due or date.max, g.measure))
    return ProgrammeSection(statuses, still, end)
