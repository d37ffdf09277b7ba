"""Safety: a positive self-harm item (PHQ-9 item 9 >= 1, EPDS item 10 >= 1) never ends without
a Flag on the patient and an urgent Task, and an unacknowledged Task escalates.

The Flag and the Task are written in the transaction that stores the response, with ids derived
from the response's id, so writing the same response again (a retry, an amendment, a bulk load
caught up later) finds them instead of making more. Once written they belong to the people who
act on them: a re-write never resets a Task someone accepted or completed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import select

from takamul.equity.outreach import OUTREACH_SYSTEM
from takamul.fhir.outcome import FhirError
from takamul.fhir.sensitivity import ACT_CODE, DISPLAY
from takamul.mentalhealth.instruments import MH_SYSTEM
from takamul.mentalhealth.scoring import Score, derived_id
from takamul.store.repository import Session
from takamul.store.schema import resource
from takamul.store.search import matching_rids

__all__ = [
    "ESCALATED",
    "FLAG_CATEGORY",
    "SAFETY_CODE",
    "SUICIDE_RISK",
    "Escalation",
    "OwnerFacts",
    "SafetyReads",
    "due_safety_tasks",
    "escalate_hours",
    "escalate_tasks",
    "find_all",
    "psy_meta",
    "safety_flag",
    "safety_task",
]

SNOMED = "http://snomed.info/sct"
# SNOMED CT 225444004 |At risk for suicide (finding)| (SNOMED CT International,
# https://browser.ihtsdotools.org/?perspective=full&conceptId1=225444004)
SUICIDE_RISK = {"system": SNOMED, "code": "225444004", "display": "At risk for suicide (finding)"}
FLAG_CATEGORY = {
    "system": "http://terminology.hl7.org/CodeSystem/flag-category",
    "code": "clinical",
    "display": "Clinical",
}
SAFETY_CODE = "safety-follow-up"
ESCALATED = "escalated"
CARE_TEAM_CATEGORY = f"{MH_SYSTEM}|care-team"
# the collaborative-care enrolment (as ``takamul.mentalhealth.registry`` reads it)
CARE_PROGRAMME_SYSTEM = "https://takamul.health/fhir/CodeSystem/care-programme"
COLLABORATIVE_CARE = "collaborative-care"


def psy_meta() -> dict[str, Any]:
    """The PSY label, written explicitly: a Flag or Task code says nothing the value sets of
    ``fhir/sensitivity.py`` recognise as mental health, yet both reveal it."""
    return {"security": [{"system": ACT_CODE, "code": "PSY", "display": DISPLAY["PSY"]}]}


def escalate_hours() -> float:
    return float(os.environ.get("TAKAMUL_MH_ESCALATE_HOURS", "24"))


def find_all(
    session: Session, resource_type: str, params: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Every current resource matching ``params`` (``Session.find`` stops at two: it serves
    conditional interactions), read unguarded by the caller."""
    query = session.parse_search(resource_type, params)
    rows = session.conn.execute(
        select(resource.c.res_id, resource.c.version, resource.c.content)
        .where(resource.c.rid.in_(matching_rids(resource_type, query.filters)))
        .where(resource.c.deleted.is_(False))
        .order_by(resource.c.res_id)
    )
    out = []
    for row in rows:
        if row.content:
            body = orjson.loads(row.content)
            body.setdefault("id", row.res_id)
            out.append(body)
    return out


def _coded(concepts: Any, token: str) -> bool:
    """Whether a CodeableConcept (or a list of them) has the coding ``system|code``."""
    system, _, code = token.partition("|")
    items = concepts if isinstance(concepts, list) else [concepts]
    return any(
        isinstance(c, dict) and c.get("system") == system and c.get("code") == code
        for concept in items
        if isinstance(concept, dict)
        for c in concept.get("coding") or ()
    )


def _ref_id(ref: Any, resource_type: str) -> str | None:
    text = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(text, str) or not text.startswith(resource_type + "/"):
        return None
    return text[len(resource_type) + 1 :].split("/", 1)[0] or None


def safety_flag(response: Mapping[str, Any], response_id: str, score: Score) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Flag",
        "id": derived_id("mhf", response_id),
        "meta": psy_meta(),
        "status": "active",
        "category": [{"coding": [FLAG_CATEGORY]}],
        "code": {"coding": [SUICIDE_RISK], "text": "At risk for suicide"},
        "subject": response["subject"],
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/flag-detail",
                "valueReference": {"reference": f"QuestionnaireResponse/{response_id}"},
            }
        ],
    }
    if response.get("authored"):
        body["period"] = {"start": response["authored"]}
    if isinstance(response.get("encounter"), dict):
        body["encounter"] = response["encounter"]
    return body


@dataclass(frozen=True, slots=True)
class OwnerFacts:
    """What decides who follows a patient's safety Task up: the Patient (its facility), and
    the CareTeams and episodes of care that refer to it."""

    patient: Mapping[str, Any] | None
    teams: list[dict[str, Any]]
    episodes: list[dict[str, Any]]

    @classmethod
    def read(cls, session: Session, patient_id: str) -> OwnerFacts:
        """One patient's, by the key and the reference index (three reads)."""
        try:
            patient: Mapping[str, Any] | None = session.read("Patient", patient_id).json()
        except FhirError:  # a response may refer to a Patient not (yet) stored
            patient = None
        # by the reference index and filtered in ``_owner``: the search machinery (parsing, a
        # query per parameter) cost most of this hook's time
        target = f"Patient/{patient_id}"
        return cls(
            patient,
            session.referring("CareTeam", "subject", target),
            session.referring("EpisodeOfCare", "patient", target),
        )


@dataclass(frozen=True, slots=True)
class SafetyReads:
    """What a batch of responses needs for their safety follow-up, read in five statements
    for the whole batch (the catch-up's): which derived Flags and Tasks are stored already,
    and each subject's ``OwnerFacts``. One response at a time that was up to five round trips
    for each positive screen, most of the catch-up's time."""

    stored: frozenset[tuple[str, str]]
    patients: Mapping[str, dict[str, Any]]
    teams: Mapping[str, list[dict[str, Any]]]
    episodes: Mapping[str, list[dict[str, Any]]]

    @classmethod
    def read(cls, session: Session, responses: Mapping[str, Mapping[str, Any]]) -> SafetyReads:
        stored = {
            (kind, found)
            for kind, prefix in (("Flag", "mhf"), ("Task", "mht"))
            for found in session.current_many(kind, [derived_id(prefix, r) for r in responses])
        }
        patient_ids = sorted(
            {pid for body in responses.values() if (pid := _ref_id(body.get("subject"), "Patient"))}
        )
        targets = [f"Patient/{pid}" for pid in patient_ids]
        return cls(
            frozenset(stored),
            session.current_many("Patient", patient_ids),
            session.referring_many("CareTeam", "subject", targets),
            session.referring_many("EpisodeOfCare", "patient", targets),
        )

    def has(self, resource_type: str, resource_id: str) -> bool:
        """Stored when the batch was read (the batch itself writes only its own)."""
        return (resource_type, resource_id) in self.stored

    def owner_facts(self, patient_id: str) -> OwnerFacts:
        target = f"Patient/{patient_id}"
        return OwnerFacts(
            self.patients.get(patient_id),
            self.teams.get(target, []),
            self.episodes.get(target, []),
        )


def _owner(facts: OwnerFacts) -> tuple[dict[str, Any] | None, str | None]:
    """The patient's mental-health care team, else the responsible facility (the Patient's
    managingOrganization); the facility's id too, for escalation."""
    patient = facts.patient
    facility = _ref_id(patient.get("managingOrganization"), "Organization") if patient else None
    teams = [t for t in facts.teams if _coded(t.get("category"), CARE_TEAM_CATEGORY)]
    active = [t for t in teams if t.get("status") in ("active", None)]
    if active:
        return {"reference": f"CareTeam/{active[0]['id']}"}, facility
    # the care team of the person's collaborative-care episode (the registry's enrolment)
    episodes = [
        e
        for e in facts.episodes
        if e.get("status") in ("planned", "waitlist", "active", "onhold")
        and any(
            _coded(t, f"{CARE_PROGRAMME_SYSTEM}|{COLLABORATIVE_CARE}") for t in e.get("type") or ()
        )
    ]
    for episode in episodes:
        for ref in episode.get("team") or ():
            if _ref_id(ref, "CareTeam"):
                return {"reference": ref["reference"]}, facility
    if facility:
        return {"reference": f"Organization/{facility}"}, facility
    return None, None


def safety_task(
    session: Session,
    response: Mapping[str, Any],
    response_id: str,
    score: Score,
    reads: SafetyReads | None = None,
) -> dict[str, Any]:
    """The urgent Task of a positive self-harm item, owned by the patient's care team or
    facility (``reads``: what a batch read for it; else read here)."""
    inst = score.instrument
    patient_id = _ref_id(response.get("subject"), "Patient")
    owner, facility = (None, None)
    if patient_id:
        facts = reads.owner_facts(patient_id) if reads else OwnerFacts.read(session, patient_id)
        owner, facility = _owner(facts)
    body: dict[str, Any] = {
        "resourceType": "Task",
        "id": derived_id("mht", response_id),
        "meta": psy_meta(),
        "status": "requested",
        "intent": "order",
        "priority": "stat",
        "code": {
            "coding": [
                {
                    "system": OUTREACH_SYSTEM,
                    "code": SAFETY_CODE,
                    "display": "Safety follow-up of a positive self-harm item",
                }
            ]
        },
        # says that the self-harm item was positive, not what was answered: whoever follows
        # the Task up (a community health worker, too) need not see the answers
        "description": f"{inst.title}: positive self-harm item; assess suicide risk today",
        "focus": {"reference": f"QuestionnaireResponse/{response_id}"},
        "for": response["subject"],
        "reasonReference": {"reference": f"Flag/{derived_id('mhf', response_id)}"},
    }
    when = response.get("authored")
    if isinstance(when, str) and "T" in when:
        body["authoredOn"] = when
    else:
        body["authoredOn"] = datetime.now(UTC).isoformat(timespec="seconds")
    if owner:
        body["owner"] = owner
    if facility:
        body["requester"] = {"reference": f"Organization/{facility}"}
    if isinstance(response.get("encounter"), dict):
        body["encounter"] = response["encounter"]
    return body


@dataclass(frozen=True, slots=True)
class Escalation:
    task_id: str
    patient: str | None
    owner: str | None  # the new owner (the facility's parent), or None when there is none
    provenance_id: str


def _parse(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _facility_of(session: Session, task: Mapping[str, Any]) -> str | None:
    facility = _ref_id(task.get("requester"), "Organization") or _ref_id(
        task.get("owner"), "Organization"
    )
    if facility:
        return facility
    patient_id = _ref_id(task.get("for"), "Patient")
    if not patient_id:
        return None
    try:
        patient = session.read("Patient", patient_id).json()
    except FhirError:  # the patient may have been deleted since
        return None
    return _ref_id(patient.get("managingOrganization"), "Organization")


def due_safety_tasks(session: Session, now: datetime, hours: float | None = None) -> list[str]:
    """The ids of the safety Tasks still ``requested`` ``hours`` after they were authored and
    not yet escalated: what :func:`escalate_tasks` is then given, in batches."""
    limit = _escalation_limit(hours)
    tasks = find_all(
        session, "Task", [("code", f"{OUTREACH_SYSTEM}|{SAFETY_CODE}"), ("status", "requested")]
    )
    return [str(task["id"]) for task in tasks if _due_since(task, now, limit) is not None]


def _escalation_limit(hours: float | None) -> timedelta:
    return timedelta(hours=escalate_hours() if hours is None else hours)


def _due_since(task: Mapping[str, Any], now: datetime, limit: timedelta) -> datetime | None:
    """When the Task was authored, if it is due for escalation (still requested, not yet
    escalated, authored ``limit`` or more before ``now``); else None."""
    business = {c.get("code") for c in (task.get("businessStatus") or {}).get("coding", [])}
    authored = _parse(str(task.get("authoredOn") or ""))
    if task.get("status") != "requested" or ESCALATED in business or authored is None:
        return None
    return authored if now - authored >= limit else None


def _supervisor(session: Session, facility: str | None, known: dict[str, str | None]) -> str | None:
    """The facility's parent Organization (``partOf``; None: it has none, or the facility is
    unknown), read once a batch: a backlog's Tasks come from a few facilities each."""
    if not facility:
        return None
    if facility not in known:
        try:
            org = session.read("Organization", facility).json()
            known[facility] = _ref_id(org.get("partOf"), "Organization")
        except FhirError:  # an unknown facility has no supervisor
            known[facility] = None
    return known[facility]


def escalate_tasks(
    session: Session, task_ids: Sequence[str], now: datetime, hours: float | None = None
) -> list[Escalation]:
    """Escalate these safety Tasks, each read again in this transaction and escalated only if
    it is still due (someone may have acknowledged it since the candidates were read).

    The facility's supervisor is its parent Organization (``partOf``): the Task's owner becomes
    the parent; without a parent the Task stays with its owner and is marked escalated. Either
    way ``businessStatus`` says ``escalated`` (so it escalates once), a note says when and why,
    and a Provenance records the escalation of that version of the Task.
    """
    limit = _escalation_limit(hours)
    done: list[Escalation] = []
    supervisors: dict[str, str | None] = {}
    for task_id in task_ids:
        try:
            task = session.read("Task", task_id).json()
        except FhirError:  # deleted since the candidates were read
            continue
        authored = _due_since(task, now, limit)
        if authored is None:
            continue
        parent = _supervisor(session, _facility_of(session, task), supervisors)
        stamp = now.astimezone(UTC).isoformat(timespec="seconds")
        updated = dict(task)
        updated.pop("meta", None)
        updated["meta"] = psy_meta()
        updated["businessStatus"] = {
            "coding": [{"system": MH_SYSTEM, "code": ESCALATED, "display": "Escalated"}],
            "text": "escalated to the facility's supervisor"
            if parent
            else "escalated (the facility has no supervising organization)",
        }
        hours_open = (now - authored).total_seconds() / 3600
        text = (
            f"Not acknowledged {hours_open:.0f} h after it was raised "
            f"(limit {limit.total_seconds() / 3600:g} h): escalated"
        )
        if parent:
            updated["owner"] = {"reference": f"Organization/{parent}"}
            updated["restriction"] = {"recipient": [{"reference": f"Organization/{parent}"}]}
            text += f" to Organization/{parent}"
        updated["note"] = [*(task.get("note") or []), {"time": stamp, "text": text}]
        updated["lastModified"] = stamp
        written = session.update("Task", task_id, updated)
        provenance_id = derived_id("mhe", task_id)
        provenance = {
            "resourceType": "Provenance",
            "id": provenance_id,
            "meta": psy_meta(),
            "target": [{"reference": f"Task/{task_id}/_history/{written.version}"}],
            "recorded": stamp,
            "activity": {
                "coding": [{"system": MH_SYSTEM, "code": ESCALATED, "display": "Escalated"}],
                "text": text,
            },
            "agent": [
                {
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                "code": "assembler",
                            }
                        ]
                    },
                    "who": {"display": "Takamul mental-health safety escalation"},
                }
            ],
        }
        if task.get("for"):
            provenance["entity"] = [{"role": "source", "what": task["for"]}]
        session.update("Provenance", provenance_id, provenance)
        done.append(Escalation(task_id, _ref_id(task.get("for"), "Patient"), parent, provenance_id))
    return done
