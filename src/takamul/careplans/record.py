"""The care plans and care teams of one person as the record page shows them, read under
whatever guard is current (the viewer's), so a viewer sees exactly what the API would give it.

Plans are the person's active CarePlans with their Goals and the Tasks their activities refer
to (one search with ``_include``); teams are the current ones (the membership rule of
``security/roles.py``: status active or not recorded, period containing now) with each member's
name read from the directory or the record (what the viewer may not read is shown by the
reference's display, or its kind alone).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from takamul.equity.outreach import TASK_IDENTIFIER_SYSTEM
from takamul.fhir.outcome import FhirError
from takamul.programmes.definitions import PROGRAMME_SYSTEM
from takamul.security.roles import TEAM_STATUSES, current_period
from takamul.store.repository import Session

__all__ = [
    "ActivityView",
    "CareSection",
    "GoalView",
    "MemberView",
    "PlanView",
    "TeamView",
    "care_section",
]

PLAN_LIMIT = 20
_DUE_IN_IDENTIFIER = re.compile(r"-(\d{4})(\d{2})(\d{2})-")  # the overdue list's Task ids


@dataclass(frozen=True, slots=True)
class GoalView:
    description: str  # as recorded (English for the programmes' goals)
    targets: tuple[tuple[str, str, float, str], ...]  # (LOINC code, comparator, value, unit)
    lifecycle: str
    achievement: str | None
    status_date: str | None


@dataclass(frozen=True, slots=True)
class ActivityView:
    text: str  # the activity's words as recorded
    code: str | None  # its code (the programmes' follow-up code, say)
    status: str | None
    due: str | None  # ISO date
    task: str | None  # "Task/id" when the activity is a worklist Task


@dataclass(frozen=True, slots=True)
class PlanView:
    id: str
    programme: str | None
    title: str
    start: str | None
    goals: list[GoalView] = field(default_factory=list)
    activities: list[ActivityView] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MemberView:
    kind: str  # Organization, Practitioner, PractitionerRole, RelatedPerson, Patient, CareTeam
    name: str
    role: str | None
    start: str | None
    end: str | None


@dataclass(frozen=True, slots=True)
class TeamView:
    id: str
    name: str | None
    start: str | None
    end: str | None
    members: list[MemberView] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CareSection:
    plans: list[PlanView]
    teams: list[TeamView]


def _search(session: Session, rtype: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Matches and included resources; none when the viewer's role does not read the type."""
    try:
        page = session.search(session.parse_search(rtype, params))
    except FhirError as err:
        if err.status == 403:
            return []
        raise
    return [r.json() for r in (*page.matches, *page.included)]


def _text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    coding = (concept.get("coding") or [{}])[0]
    return str(concept.get("text") or coding.get("display") or coding.get("code") or "")


def _code(concept: Any) -> str | None:
    coding = ((concept or {}).get("coding") or [{}])[0] if isinstance(concept, dict) else {}
    return str(coding["code"]) if coding.get("code") else None


def _goal(goal: dict[str, Any]) -> GoalView:
    targets = []
    for t in goal.get("target") or ():
        q = t.get("detailQuantity") or {}
        code = _code(t.get("measure"))
        if code and isinstance(q.get("value"), int | float):
            targets.append(
                (code, str(q.get("comparator") or "="), float(q["value"]), str(q.get("unit") or ""))
            )
    return GoalView(
        _text(goal.get("description")),
        tuple(targets),
        str(goal.get("lifecycleStatus") or ""),
        _code(goal.get("achievementStatus")),
        goal.get("statusDate"),
    )


def task_due(task: dict[str, Any]) -> str | None:
    """When a Task is due: its restriction period's end, else the due date the overdue list
    writes into the follow-up Task's identifier (``<code>-YYYYMMDD-<person>``)."""
    end = ((task.get("restriction") or {}).get("period") or {}).get("end")
    if end:
        return str(end)[:10]
    for ident in task.get("identifier") or ():
        if ident.get("system") == TASK_IDENTIFIER_SYSTEM:
            found = _DUE_IN_IDENTIFIER.search(str(ident.get("value") or ""))
            if found:
                return "-".join(found.groups())
    return None


def _activity(activity: dict[str, Any], tasks: dict[str, dict[str, Any]]) -> ActivityView:
    ref = (activity.get("reference") or {}).get("reference")
    if ref:
        task = tasks.get(ref)
        text = _text((task or {}).get("code")) or str(activity["reference"].get("display") or "")
        if task is None:  # the viewer may not read it: what the plan says of it
            return ActivityView(text, None, None, None, ref)
        return ActivityView(text, _code(task.get("code")), task.get("status"), task_due(task), ref)
    detail = activity.get("detail") or {}
    period = detail.get("scheduledPeriod") or {}
    due = period.get("start") or period.get("end") or detail.get("scheduledString")
    return ActivityView(
        _text(detail.get("code")) or str(detail.get("description") or ""),
        _code(detail.get("code")),
        detail.get("status"),
        str(due)[:10] if due else None,
        None,
    )


def _programme(plan: dict[str, Any]) -> str | None:
    for concept in plan.get("category") or ():
        for c in concept.get("coding") or ():
            if c.get("system") == PROGRAMME_SYSTEM and c.get("code"):
                return str(c["code"])
    return None


def _plans(session: Session, refs: str) -> list[PlanView]:
    found = _search(
        session,
        "CarePlan",
        [
            ("patient", refs),
            ("status", "active"),
            ("_include", "CarePlan:goal"),
            ("_include", "CarePlan:activity-reference"),
            ("_count", str(PLAN_LIMIT)),
        ],
    )
    by_ref = {f"{r['resourceType']}/{r['id']}": r for r in found}
    tasks = {k: v for k, v in by_ref.items() if k.startswith("Task/")}
    plans = []
    for plan in (r for r in found if r["resourceType"] == "CarePlan"):
        goals = [by_ref.get(str(g.get("reference"))) for g in plan.get("goal") or ()]
        plans.append(
            PlanView(
                plan["id"],
                _programme(plan),
                str(plan.get("title") or _text((plan.get("category") or [{}])[0])),
                (plan.get("period") or {}).get("start"),
                [_goal(g) for g in goals if g is not None],
                [_activity(a, tasks) for a in plan.get("activity") or ()],
            )
        )
    return sorted(plans, key=lambda p: (p.programme or "~", p.title))


def _name(resource: dict[str, Any]) -> str:
    """A person's or organization's name as recorded."""
    if isinstance(resource.get("name"), str):
        return str(resource["name"])
    for n in resource.get("name") or ():
        text = n.get("text") or " ".join([*(n.get("given") or ()), n.get("family") or ""])
        if text.strip():
            return str(text).strip()
    return ""


def _names(session: Session, refs: Iterable[str]) -> dict[str, str]:
    """Names of the members the viewer may read ("Type/id" -> name); a PractitionerRole by its
    practitioner and organization."""
    by_type: dict[str, set[str]] = {}
    for ref in refs:
        kind, _, ident = ref.partition("/")
        if ident:
            by_type.setdefault(kind, set()).add(ident)
    out: dict[str, str] = {}
    for kind, ids in sorted(by_type.items()):
        params = [("_id", ",".join(sorted(ids))), ("_count", str(len(ids)))]
        if kind == "PractitionerRole":
            params += [("_include", "PractitionerRole:practitioner"),
                       ("_include", "PractitionerRole:organization")]  # fmt: skip
        found = {f"{r['resourceType']}/{r['id']}": r for r in _search(session, kind, params)}
        for ref, body in found.items():
            if ref.startswith(kind + "/"):
                out[ref] = _name(body)
            if kind == "PractitionerRole" and ref.startswith(kind + "/"):
                who = found.get(str((body.get("practitioner") or {}).get("reference")))
                org = found.get(str((body.get("organization") or {}).get("reference")))
                parts = [_name(who) if who else "", _name(org) if org else ""]
                out[ref] = " · ".join(p for p in parts if p)
    return out


def _teams(session: Session, teams: Iterable[dict[str, Any]], now: float) -> list[TeamView]:
    current = [
        t
        for t in teams
        if (t.get("status") or "active") in TEAM_STATUSES and current_period(t.get("period"), now)
    ]
    refs = {
        str((p.get("member") or {}).get("reference") or "")
        for t in current
        for p in t.get("participant") or ()
    }
    names = _names(session, sorted(r for r in refs if r))
    out = []
    for t in current:
        members = []
        for p in t.get("participant") or ():
            member = p.get("member") or {}
            ref = str(member.get("reference") or "")
            period = p.get("period") or {}
            if not current_period(period, now):
                continue
            members.append(
                MemberView(
                    ref.partition("/")[0] or "",
                    names.get(ref) or str(member.get("display") or ""),
                    _text((p.get("role") or [None])[0]) or None,
                    period.get("start"),
                    period.get("end"),
                )
            )
        period = t.get("period") or {}
        out.append(
            TeamView(t["id"], t.get("name"), period.get("start"), period.get("end"), members)
        )
    return out


def care_section(
    session: Session, patient_refs: str, teams: Iterable[dict[str, Any]], now: float
) -> CareSection:
    """The active care plans of ``patient_refs`` ("Patient/a,Patient/b") and the current teams
    among ``teams`` (the CareTeams the record page read), under the current guard."""
    return CareSection(_plans(session, patient_refs), _teams(session, teams, now))
