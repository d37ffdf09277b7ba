"""The roles people (and clients) hold, as data: the SMART scopes each implies, the capabilities
beyond scopes (break-the-glass, de-identified export, registry review, administration), and
whether the role sees only its facility's patients.

Facility scoping, for the server: a facility-scoped context with ``facility = F`` sees a patient
when one of ``FACILITY_LINKS`` ties the patient to ``Organization/F``: F manages the patient's
record or is their registered primary care (its own patients), or F treated them, runs an
episode of care for them, was referred them, or is on their care team (those it treats). The
searches are in ``facility_patient_searches``. Break-the-glass (clinicians, with a reason)
lifts facility scoping for that request, never the scopes, and is flagged for review.

Care team membership (``FacilityLink.membership``; docs/careplans.md): F is on a patient's
care team when a participant's ``member`` is ``Organization/F``, or a practitioner of F — a
``PractitionerRole`` of F, or a ``Practitioner`` with one (a community health worker is one such
practitioner) — counting only current roles (``active`` not false, ``period`` not ended) and
current memberships: the team's ``status`` active (or not recorded: R4 makes it optional), its
``period`` and the participant's ``period`` containing now. A ``RelatedPerson`` or ``Patient``
member ties no facility: a caregiver acts for the patient only through the patient's consent
(``security/consent.py``), whatever team they are on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from takamul.fhir.outcome import FhirError
from takamul.fhir.search_values import date_range
from takamul.security.scopes import ScopeSet

__all__ = [
    "CAPABILITIES",
    "FACILITY_LINKS",
    "MEMBER_TYPES",
    "ROLES",
    "TEAM_STATUSES",
    "FacilityLink",
    "Role",
    "capabilities_for_roles",
    "current_participant",
    "current_period",
    "facility_patient_searches",
    "role",
    "scopes_for_roles",
    "validate_roles",
    "withheld_labels",
]

# What a scope cannot say: operations and duties outside FHIR resource permissions.
CAPABILITIES = {
    "break-glass": "read a patient's record outside the facility, with a reason, flagged",
    "export-deidentified": "run $export and analytics on de-identified views only",
    "registry-review": "decide the client registry's review pairs (link / not duplicate)",
    "manage-clients": "register, disable and list Backend Services clients",
    "manage-users": "create logins, assign roles, unlock accounts",
    "manage-keys": "rotate and retire the server's signing keys",
    "audit-review": "read the audit log, including break-the-glass accesses",
    "act-for-patient": "act for one patient (consent checked by the consent module)",
}


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    title: str
    scopes: tuple[str, ...]
    capabilities: frozenset[str]
    facility_scoped: bool  # sees only the patients of its facility (see the module docstring)
    needs_patient: bool  # acts for one patient: the login names the Patient
    description: str


_REFERENCE_READ = (
    "user/Organization.rs",
    "user/Location.rs",
    "user/Practitioner.rs",
    "user/PractitionerRole.rs",
    "user/HealthcareService.rs",
)

ROLES: dict[str, Role] = {
    r.name: r
    for r in (
        Role(
            "clinician",
            "Clinician",
            # No delete: a clinical record is corrected (status entered-in-error), not erased.
            ("user/*.crus",),
            frozenset({"break-glass"}),
            facility_scoped=True,
            needs_patient=False,
            description="Doctors, nurses, pharmacists: the whole record of the patients their "
            "facility manages or treats.",
        ),
        Role(
            "community-health-worker",
            "Community health worker",
            (
                "user/Patient.rs",
                "user/RelatedPerson.rs",
                "user/Condition.rs",
                "user/Observation.crs",
                "user/Immunization.rs",
                "user/Encounter.crs",
                "user/Questionnaire.rs",
                "user/QuestionnaireResponse.crus",
                "user/Task.rus",
                "user/CarePlan.rs",
                "user/CareTeam.rs",
                "user/Appointment.crus",
                "user/Communication.crs",
                "user/ServiceRequest.crs",
                *_REFERENCE_READ,
            ),
            frozenset(),
            facility_scoped=True,
            needs_patient=False,
            description="Outreach worklists, screening (PHQ-9, GAD-7), follow-up, referrals.",
        ),
        Role(
            "care-coordinator",
            "Care coordinator",
            (
                "user/Patient.rs",
                "user/RelatedPerson.crus",
                "user/Condition.rs",
                "user/Observation.rs",
                "user/Encounter.rs",
                "user/EpisodeOfCare.crus",
                "user/ServiceRequest.crus",
                "user/Task.crus",
                "user/CarePlan.crus",
                "user/CareTeam.crus",
                "user/Goal.crus",
                "user/Communication.crs",
                "user/CommunicationRequest.crus",
                "user/Appointment.crus",
                "user/Consent.rs",
                "user/Questionnaire.rs",
                "user/QuestionnaireResponse.rs",
                *_REFERENCE_READ,
            ),
            frozenset(),
            facility_scoped=True,
            needs_patient=False,
            description="Referrals that close the loop, care plans and care teams with family.",
        ),
        Role(
            "analyst",
            "Equity analyst",
            # No identified clinical read at all: population data comes through de-identified
            # views and $export (capability below), which the de-identification module serves.
            (
                "user/Organization.rs",
                "user/Location.rs",
                "user/HealthcareService.rs",
                "user/Measure.rs",
                "user/MeasureReport.rs",
                "user/Library.rs",
            ),
            frozenset({"export-deidentified"}),
            facility_scoped=False,
            needs_patient=False,
            description="Indicators by equity dimension, de-identified extracts; no names.",
        ),
        Role(
            "registry-reviewer",
            "Registry reviewer",
            ("user/Patient.rs", "user/Person.rus", "user/RelatedPerson.rs", *_REFERENCE_READ),
            frozenset({"registry-review"}),
            facility_scoped=False,
            needs_patient=False,
            description="Decides possible duplicates in the national client registry.",
        ),
        Role(
            "administrator",
            "Administrator",
            # Directory and definitional resources only: running the system is not a reason
            # to read patients' records.
            (
                "user/Organization.cruds",
                "user/Location.cruds",
                "user/Practitioner.cruds",
                "user/PractitionerRole.cruds",
                "user/HealthcareService.cruds",
                "user/Endpoint.cruds",
                "user/Questionnaire.cruds",
                "user/ValueSet.cruds",
                "user/CodeSystem.cruds",
                "user/Measure.cruds",
                "user/Library.cruds",
            ),
            frozenset({"manage-clients", "manage-users", "manage-keys", "audit-review"}),
            facility_scoped=False,
            needs_patient=False,
            description="Clients, logins, keys, directory data and the audit log.",
        ),
        Role(
            "caregiver",
            "Caregiver acting for a patient",
            (
                "patient/*.rs",
                "patient/QuestionnaireResponse.cru",  # caregiver-reported measures
                "patient/Communication.cr",
            ),
            frozenset({"act-for-patient"}),
            facility_scoped=False,
            needs_patient=True,
            description="A family member acting for a dependent, with the patient's consent.",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class FacilityLink:
    """A search that ties patients to a facility: ``resource_type?org_param=Organization/F``,
    the patients being the ``patient_param`` references of the matches."""

    resource_type: str
    patient_param: str  # "_id" for Patient itself
    org_param: str
    meaning: str
    # a team membership: ``org_param`` may also name a practitioner of F (``MEMBER_TYPES``),
    # and the link counts only while the team and the participation are current
    membership: bool = False


FACILITY_LINKS: tuple[FacilityLink, ...] = (
    FacilityLink("Patient", "_id", "organization", "manages the patient's record"),
    FacilityLink("Patient", "_id", "general-practitioner", "is the patient's primary care"),
    FacilityLink("Encounter", "patient", "service-provider", "treated the patient"),
    FacilityLink("EpisodeOfCare", "patient", "organization", "runs an episode of care"),
    FacilityLink("ServiceRequest", "patient", "performer", "was referred the patient"),
    FacilityLink(
        "CareTeam",
        "patient",
        "participant",
        "is on the patient's care team, itself or through its practitioners",
        membership=True,
    ),
)

# The members that tie a facility to a team's patient: the facility itself, and its
# practitioners (a PractitionerRole at it, or a Practitioner holding one). RelatedPerson,
# Patient and CareTeam members tie none (a nested team is not followed).
MEMBER_TYPES = ("Organization", "Practitioner", "PractitionerRole")
# A team's memberships count while its status is one of these, or absent (R4: 0..1); proposed,
# suspended, inactive and entered-in-error teams give nobody access.
TEAM_STATUSES = frozenset({"active"})


def current_period(period: Mapping[str, Any] | None, now: float) -> bool:
    """``period`` (a FHIR Period, or none) contains the epoch second ``now``: begun and not
    ended (an end date counts to the end of that day, as the search index reads it)."""
    if not period:
        return True
    try:
        start = period.get("start")
        end = period.get("end")
        if isinstance(start, str) and date_range(start)[0] > now:
            return False
        return not (isinstance(end, str) and date_range(end)[1] <= now)
    except ValueError:
        return False  # a malformed period grants nothing


def current_participant(team: Mapping[str, Any], members: frozenset[str], now: float) -> bool:
    """A current participant of ``team`` is one of ``members`` ("Type/id" references)."""
    if (team.get("status") or "active") not in TEAM_STATUSES:
        return False
    if not current_period(team.get("period"), now):
        return False
    for participant in team.get("participant") or ():
        member = str((participant.get("member") or {}).get("reference") or "")
        if member in members and current_period(participant.get("period"), now):
            return True
    return False


def facility_patient_searches(facility: str) -> list[tuple[str, list[tuple[str, str]], str]]:
    """(resource type, search params, patient param) per link: the patients of ``facility``
    are the union of the ``patient param`` values of what these searches return (a membership
    link also through the facility's practitioners, and only while current: the guard's query,
    ``security/guard.py``, is the rule)."""
    ref = facility if facility.startswith("Organization/") else f"Organization/{facility}"
    return [(ln.resource_type, [(ln.org_param, ref)], ln.patient_param) for ln in FACILITY_LINKS]


def role(name: str) -> Role:
    try:
        return ROLES[name]
    except KeyError:
        raise FhirError(
            400, f"Unknown role '{name}'; the roles are {', '.join(ROLES)}", "value"
        ) from None


def validate_roles(names: Iterable[str]) -> tuple[str, ...]:
    """The roles, de-duplicated in order; a 400 FhirError names any unknown one."""
    out = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
    for name in out:
        role(name)
    return out


# What a role never reads, whatever the patient's consent: (labels, resource types). A
# community health worker screens and follows people up (the safety Task, the worklist, the
# episode) but the answers and scores of mental-health instruments and the psychiatric review
# are for the treating clinicians (issue 15: "sees that follow-up is due, not the answers").
WITHHELD: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "community-health-worker": (
        frozenset({"PSY"}),
        frozenset({"QuestionnaireResponse", "Observation", "ClinicalImpression"}),
    ),
}


def withheld_labels(names: Iterable[str], resource_type: str) -> frozenset[str]:
    """The sensitivity labels whose ``resource_type`` resources these roles may not read: those
    every role that reads the type withholds (a login that is also a clinician reads them)."""
    held = tuple(sorted(set(names)))
    readers = [n for n in held if n in ROLES and _scopes((n,)).allows(resource_type, "r")]
    withheld: frozenset[str] | None = None
    for name in readers:
        labels, types = WITHHELD.get(name, (frozenset(), frozenset()))
        mine = labels if resource_type in types else frozenset()
        withheld = mine if withheld is None else withheld & mine
    return withheld or frozenset()


@cache
def _scopes(names: tuple[str, ...]) -> ScopeSet:
    return ScopeSet.parse([s for n in names for s in role(n).scopes])


def scopes_for_roles(names: Iterable[str]) -> ScopeSet:
    """The union of the scopes the roles imply."""
    return _scopes(tuple(sorted(set(names))))


def capabilities_for_roles(names: Iterable[str]) -> frozenset[str]:
    return frozenset(c for n in names for c in role(n).capabilities)
