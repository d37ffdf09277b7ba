"""A programme's CarePlan and Goal for one person, as FHIR R4 resources (no store access).

The plan follows the person's registry status (``takamul.programmes.status``): its Goal is the
programme's control target from the catalog (``programmes/data/programmes.json``: HEARTS's blood
pressure < 140/90, Simple's blood sugar HbA1c < 7 %, fasting < 126 mg/dL, random < 200 mg/dL,
KDIGO's < 130/80 for CKD), judged on the person's last measurement the way the registry judges
it; its activity is the programme's follow-up visit, a reference to the overdue worklist
``Task`` when the overdue list made one, else a planned activity with the follow-up code and
the date it is due. Ids are derived from the programme and the person, so making the plan again
updates it instead of adding another.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from takamul.equity.outreach import OUTREACH_SYSTEM
from takamul.programmes.definitions import LOINC, PROGRAMME_SYSTEM, Catalog, Programme
from takamul.programmes.measures import MEASURE_BASE
from takamul.programmes.overdue import follow_up_code
from takamul.programmes.status import PersonStatus

__all__ = [
    "ACHIEVEMENT_SYSTEM",
    "CAREPLAN_SYSTEM",
    "GOAL_SYSTEM",
    "PlanInputs",
    "achievement",
    "care_plan",
    "control_goal",
    "follow_up_due",
    "goal_id",
    "person_key",
    "plan_id",
]

CAREPLAN_SYSTEM = "https://takamul.health/fhir/sid/care-plan"
GOAL_SYSTEM = "https://takamul.health/fhir/sid/care-plan-goal"
ACHIEVEMENT_SYSTEM = "http://terminology.hl7.org/CodeSystem/goal-achievement"
UCUM = "http://unitsofmeasure.org"
# Goal.achievementStatus from the registry status: the last measurement in the 3 months meets
# the target or not; without one (registered recently, no measurement, missed visits) the goal
# is still being sought
ACHIEVED = {"controlled": "achieved", "visited": "achieved", "uncontrolled": "not-achieved"}
ACHIEVEMENT_DISPLAY = {
    "achieved": "Achieved",
    "not-achieved": "Not Achieved",
    "in-progress": "In Progress",
}


@dataclass(frozen=True, slots=True)
class PlanInputs:
    """What the record holds for the plan besides the status (references, "Type/id")."""

    conditions: tuple[str, ...] = ()  # the programme's Conditions of the person
    care_teams: tuple[str, ...] = ()  # the person's current CareTeams
    task: str | None = None  # the open overdue follow-up Task, if any


def person_key(status: PersonStatus) -> str:
    """The person (golden record), or the one record of a person not linked yet."""
    return status.person_id or "~" + status.patient_ids[0]


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]


def plan_id(programme: str, person: str) -> str:
    return f"cp-{_digest(programme, person)}"


def goal_id(programme: str, person: str) -> str:
    return f"goal-{_digest(programme, person, 'control')}"


def achievement(status: str) -> str:
    return ACHIEVED.get(status, "in-progress")


def follow_up_due(programme: Programme, status: PersonStatus, as_of: date) -> date:
    """When the follow-up visit is (or was) due: the registry's own rule (30 days after an
    uncontrolled last visit, else the programme's interval, from registration without one)."""
    if status.overdue_days > 0:
        return as_of - timedelta(days=status.overdue_days)
    since = status.last_visit or status.registered_on
    return since + timedelta(days=programme.follow_up_days(status.status == "uncontrolled"))


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "comparator": "<", "unit": unit, "system": UCUM, "code": unit}


def _targets(catalog: Catalog, programme: Programme) -> tuple[str, list[dict[str, Any]]]:
    """The goal's words and targets from the programme's control rule."""
    control = programme.control
    if control is None:
        days = programme.follow_up_controlled
        return f"Seen at least every {days} days", []
    m = catalog.measurements
    if control.measure == "blood-pressure":
        bp = m["blood-pressure"]
        words = f"Blood pressure below {control.systolic_below:g}/{control.diastolic_below:g} mmHg"
        limits = (
            (bp["systolic"], control.systolic_below),
            (bp["diastolic"], control.diastolic_below),
        )
        return words, [
            {"measure": _loinc(code), "detailQuantity": _quantity(limit, "mm[Hg]")}
            for code, limit in limits
        ]
    words = (
        f"Blood sugar controlled: HbA1c below {control.hba1c_below:g} %, fasting glucose below "
        f"{control.fasting_below:g} mg/dL, random glucose below {control.random_below:g} mg/dL"
    )
    tests = (
        ("hba1c", control.hba1c_below),
        ("fasting-glucose", control.fasting_below),
        ("random-glucose", control.random_below),
    )
    return words, [
        {
            "measure": _loinc(m[test]["loinc"][0]),
            "detailQuantity": _quantity(limit, str(m[test].get("unit") or "%")),
        }
        for test, limit in tests
    ]


def _loinc(code: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code}]}


def _last_values(status: PersonStatus) -> str:
    if status.last_measurement_date is None:
        return "no measurement in the last 3 months"
    on = status.last_measurement_date.isoformat()
    if status.last_glucose_test and status.last_glucose_value is not None:
        return f"last {status.last_glucose_test} {status.last_glucose_value:g} on {on}"
    if status.last_systolic is not None and status.last_diastolic is not None:
        return f"last blood pressure {status.last_systolic:g}/{status.last_diastolic:g} on {on}"
    return f"last measured on {on}"


def control_goal(
    catalog: Catalog, programme: Programme, status: PersonStatus, inputs: PlanInputs
) -> dict[str, Any]:
    """The programme's Goal for the person, with its status from the latest values."""
    words, targets = _targets(catalog, programme)
    code = achievement(status.status)
    subject = status.record_id or status.patient_ids[0]
    goal: dict[str, Any] = {
        "resourceType": "Goal",
        "id": goal_id(programme.id, person_key(status)),
        "identifier": [
            {"system": GOAL_SYSTEM, "value": f"{programme.id}-control-{person_key(status)}"}
        ],
        # a person lost to follow-up is not being seen: the goal waits for their return
        "lifecycleStatus": "on-hold" if status.status == "lost-to-follow-up" else "active",
        "achievementStatus": {
            "coding": [
                {"system": ACHIEVEMENT_SYSTEM, "code": code, "display": ACHIEVEMENT_DISPLAY[code]}
            ]
        },
        "category": [
            {
                "coding": [
                    {"system": PROGRAMME_SYSTEM, "code": programme.id, "display": programme.title}
                ]
            }
        ],
        "description": {"text": words},
        "subject": {"reference": f"Patient/{subject}"},
        "startDate": status.registered_on.isoformat(),
        "statusReason": f"{status.status}: {_last_values(status)}",
        "note": [{"text": catalog.sources[s]} for s in programme.sources if s in catalog.sources],
    }
    if status.last_measurement_date is not None:
        goal["statusDate"] = status.last_measurement_date.isoformat()
    if targets:
        goal["target"] = targets
    if inputs.conditions:
        goal["addresses"] = [{"reference": c} for c in inputs.conditions]
    return goal


def _activity(
    programme: Programme, status: PersonStatus, inputs: PlanInputs, as_of: date
) -> dict[str, Any]:
    """The follow-up visit: the worklist Task when there is one, else the planned visit."""
    title = f"{programme.title} follow-up visit"
    if inputs.task:
        return {"reference": {"reference": inputs.task, "display": title}}
    due = follow_up_due(programme, status, as_of)
    detail: dict[str, Any] = {
        "kind": "Task",
        "instantiatesCanonical": [f"{MEASURE_BASE}{programme.id}-control"],
        "code": {
            "coding": [
                {"system": OUTREACH_SYSTEM, "code": follow_up_code(programme.id), "display": title}
            ],
            "text": title,
        },
        "status": "not-started" if due < as_of else "scheduled",
        "scheduledPeriod": {"start": due.isoformat()},
    }
    if status.facility:
        detail["performer"] = [{"reference": f"Organization/{status.facility}"}]
    return {"detail": detail}


def care_plan(
    programme: Programme,
    status: PersonStatus,
    inputs: PlanInputs,
    goal: dict[str, Any],
    as_of: date,
) -> dict[str, Any]:
    """The person's CarePlan in the programme (status active, intent plan)."""
    subject = status.record_id or status.patient_ids[0]
    plan: dict[str, Any] = {
        "resourceType": "CarePlan",
        "id": plan_id(programme.id, person_key(status)),
        "identifier": [
            {"system": CAREPLAN_SYSTEM, "value": f"{programme.id}-{person_key(status)}"}
        ],
        "status": "active",
        "intent": "plan",
        "category": [
            {
                "coding": [
                    {"system": PROGRAMME_SYSTEM, "code": programme.id, "display": programme.title}
                ],
                "text": f"{programme.title} care plan",
            }
        ],
        "title": f"{programme.title} care plan",
        "description": (
            f"Care in the {programme.title.lower()} programme: the control target and the "
            "follow-up visits the programme schedules"
        ),
        "subject": {"reference": f"Patient/{subject}"},
        "period": {"start": status.registered_on.isoformat()},
        "goal": [{"reference": f"Goal/{goal['id']}"}],
        "activity": [_activity(programme, status, inputs, as_of)],
    }
    if status.facility:
        plan["author"] = {"reference": f"Organization/{status.facility}"}
    if inputs.care_teams:
        plan["careTeam"] = [{"reference": t} for t in inputs.care_teams]
    if inputs.conditions:
        plan["addresses"] = [{"reference": c} for c in inputs.conditions]
    return plan
