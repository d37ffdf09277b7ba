"""The community health worker's worklist: the outreach Tasks of the viewer's facility
(``takamul.equity.outreach`` makes them), most pressing first, and the outcome of each contact
recorded in one tap as an update of the Task, through the FHIR update interaction under the
viewer's guard.

Outcomes as FHIR R4 Task states (docs/web.md, "Worklist"): *reached* → ``in-progress``, *booked*
→ ``completed``, *unreachable* → ``failed``, *declined* → ``cancelled``; *agreed to visit* and
*remind later* keep the Task open (``on-hold``) and hide it for 7 or 30 days
(``restriction.period.start`` is the day it shows again: the default view lists only what is
due now, so a worker's list is always current); each with
``businessStatus`` and ``output`` coded in ``OUTCOME_SYSTEM``, ``lastModified``, the execution
period, and a note of who recorded it when. The last outcome can be undone: the Task's earlier
version comes back as a new version (history keeps both).

Overdue referrals: for those who may open the Referrals screen (a facility's care coordinator),
the list starts with the facility's referrals that are overdue on today's date
(``takamul.coordination.metrics.overdue`` with the operator's per-type limits,
``ReferralRules.configured``): received ones still waiting for its acceptance or its feedback,
and sent ones not yet accepted or answered by the other facility, each linking to its row on
the Referrals screen. They are read by that screen's own guarded search
(``referrals.referral_lists``) in the same guarded session as the outreach Tasks.

Facility: R4's Patient compartment has no Task, so the guard does not scope Tasks by facility
itself; every search and write here goes through a chain on ``Task.for`` (``patient._id``), and
the guard narrows chains to the facility's patients, so another facility's Task is neither
listed nor changed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from takamul.coordination.metrics import ReferralRules
from takamul.equity.outreach import OUTREACH_SYSTEM
from takamul.fhir.outcome import FhirError
from takamul.rest import interactions as ix
from takamul.rest.interactions import RequestContext
from takamul.security.audit import USER_SYSTEM
from takamul.store.repository import Session
from takamul.web.context import Screen, Viewer, WebServices, read_form
from takamul.web.i18n import N_
from takamul.web.pages import fragment, page
from takamul.web.people import person_name
from takamul.web.screens.referrals import NOT_ACCEPTED, referral_lists

__all__ = [
    "OUTCOMES",
    "OUTCOME_SYSTEM",
    "SCREEN",
    "Outcome",
    "OverdueReferral",
    "WorkItem",
    "apply_outcome",
    "overdue_referrals",
    "register",
    "undo_outcome",
]

SCREEN = Screen(
    "worklist",
    "/worklist",
    N_("Outreach worklist"),
    allowed=lambda viewer: bool(
        {"community-health-worker", "care-coordinator"} & viewer.access.roles
    ),
)

OUTCOME_SYSTEM = "https://takamul.health/fhir/CodeSystem/outreach-outcome"
SOURCE = "urn:takamul:web:worklist"
MAX_TASKS = 500  # one facility's open outreach at a time; more waits for the next run
PRIORITY_RANK = {"stat": 0, "asap": 1, "urgent": 2, "routine": 3}
OPEN = ("draft", "requested", "received", "accepted", "ready", "in-progress", "on-hold")
DONE = ("completed", "failed", "cancelled", "rejected")
SHOWS = {"open": OPEN, "later": OPEN, "done": DONE, "all": OPEN + DONE}
# only Tasks whose ``for`` is a Patient the viewer may see: the guard narrows the chain
VISIBLE_PATIENT = ("patient._id:missing", "false")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a contact came to, and the Task state that records it."""

    code: str
    label: str  # msgid: the button and the status shown
    status: str  # Task.status
    display: str  # the coding's display (stored data, English)
    reason: str | None  # Task.statusReason, when the Task ends without its aim
    hide_days: int | None = None  # kept open but off the list this many days

    @property
    def done(self) -> bool:
        return self.status in DONE


OUTCOMES: dict[str, Outcome] = {
    o.code: o
    for o in (
        Outcome("reached", N_("Reached"), "in-progress", "Reached", None),
        Outcome("booked", N_("Booked"), "completed", "Visit booked", None),
        Outcome(
            "unreachable",
            N_("Unreachable"),
            "failed",
            "Could not be reached",
            "Not reachable by the recorded phone or address",
        ),
        Outcome("declined", N_("Declined"), "cancelled", "Declined", "The person declined"),
        Outcome("agreed", N_("Agreed to visit"), "on-hold", "Agreed to visit", None, 7),
        Outcome("later", N_("Remind later"), "on-hold", "Remind later", None, 30),
    )
}
STATUS_LABELS = {
    "draft": N_("Draft"),
    "requested": N_("To do"),
    "received": N_("To do"),
    "accepted": N_("To do"),
    "ready": N_("To do"),
    "in-progress": N_("In progress"),
    "on-hold": N_("On hold"),
    "completed": N_("Completed"),
    "failed": N_("Not reached"),
    "cancelled": N_("Cancelled"),
    "rejected": N_("Rejected"),
    "entered-in-error": N_("Entered in error"),
}
PRIORITY_LABELS = {
    "stat": N_("Immediate"),
    "asap": N_("As soon as possible"),
    "urgent": N_("Urgent"),
    "routine": N_("Routine"),
}


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One row of the worklist: a Task and the person it is for."""

    task_id: str
    version: int
    status: str
    outcome: Outcome | None  # the last outcome recorded (businessStatus)
    priority: str
    action: str  # what to do (Task.code.text)
    reason: str  # why (Task.reasonCode.text)
    description: str
    due: str | None
    authored: str | None
    shows_again: str | None  # restriction.period.start: hidden from the default view until then
    patient_id: str
    name: str
    birth_date: str | None
    age: int | None
    phone: str | None

    @property
    def status_label(self) -> str:
        return STATUS_LABELS.get(self.status, N_("Unknown"))

    @property
    def priority_label(self) -> str:
        return PRIORITY_LABELS.get(self.priority, N_("Routine"))

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    def hidden_on(self, today: date) -> bool:
        """Put off (an outcome said when to call again) and not yet due again on ``today``."""
        start = (self.shows_again or "")[:10]
        return self.is_open and start > today.isoformat()

    def order(self) -> tuple[int, str, str, str]:
        """Priority (stat first), then the due date, then when it was asked (oldest first)."""
        return (
            PRIORITY_RANK.get(self.priority, len(PRIORITY_RANK)),
            self.due or "9999",
            self.authored or "9999",
            self.task_id,
        )


# -- reading ---------------------------------------------------------------------------------


def worklist(session: Session, show: str, today: date | None = None) -> list[WorkItem]:
    """The outreach Tasks the session's guard lets through, in worklist order. ``open`` leaves
    out the Tasks put off beyond ``today``, ``later`` lists only those; ``all`` and ``done``
    list every Task of their statuses."""
    params = [
        ("code", f"{OUTREACH_SYSTEM}|"),
        VISIBLE_PATIENT,
        ("status", ",".join(SHOWS[show])),
        ("_include", "Task:patient"),
        ("_count", str(MAX_TASKS)),
    ]
    found = session.search(session.parse_search("Task", params))
    patients = {p.id: p.json() for p in found.included if p.resource_type == "Patient"}
    items = [i for t in found.matches if (i := _item(t.json(), t.version, patients)) is not None]
    day = today or date.today()
    if show == "open":
        items = [i for i in items if not i.hidden_on(day)]
    elif show == "later":
        items = [i for i in items if i.hidden_on(day)]
    return sorted(items, key=WorkItem.order)


def _item(task: dict[str, Any], version: int, patients: dict[str, Any]) -> WorkItem | None:
    patient_id = _patient_id(task)
    patient = patients.get(patient_id or "")
    if patient_id is None or patient is None:
        return None  # a person the guard hides: not this facility's
    born = patient.get("birthDate")
    return WorkItem(
        task_id=str(task["id"]),
        version=version,
        status=str(task.get("status", "")),
        outcome=_outcome_of(task),
        priority=str(task.get("priority", "routine")),
        action=str((task.get("code") or {}).get("text") or _first_display(task.get("code"))),
        reason=str((task.get("reasonCode") or {}).get("text") or ""),
        description=str(task.get("description") or ""),
        due=((task.get("restriction") or {}).get("period") or {}).get("end"),
        authored=task.get("authoredOn"),
        shows_again=((task.get("restriction") or {}).get("period") or {}).get("start"),
        patient_id=patient_id,
        name=person_name(patient),
        birth_date=born,
        age=age_on(born, date.today()),
        phone=_phone(patient),
    )


def _patient_id(task: dict[str, Any]) -> str | None:
    ref = str((task.get("for") or {}).get("reference") or "")
    return ref.removeprefix("Patient/") if ref.startswith("Patient/") else None


def _first_display(concept: Any) -> str:
    for coding in (concept or {}).get("coding") or ():
        if coding.get("display"):
            return str(coding["display"])
    return ""


def _outcome_of(task: dict[str, Any]) -> Outcome | None:
    for coding in (task.get("businessStatus") or {}).get("coding") or ():
        if coding.get("system") == OUTCOME_SYSTEM and coding.get("code") in OUTCOMES:
            return OUTCOMES[coding["code"]]
    return None


def age_on(birth_date: str | None, today: date) -> int | None:
    """Whole years at ``today``; None for a missing or partial (year-only) birth date."""
    try:
        born = date.fromisoformat(birth_date or "")
    except ValueError:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def _phone(patient: dict[str, Any]) -> str | None:
    phones = [t for t in patient.get("telecom") or () if t.get("system") == "phone"]
    phones.sort(key=lambda t: (t.get("use") != "mobile", t.get("rank", 99)))
    return str(phones[0]["value"]) if phones and phones[0].get("value") else None


# -- overdue referrals -----------------------------------------------------------------------

# why a referral is on the list, as each end sees it: the receiver has something to do, the
# requester is waiting for the other facility
WAITING_ACCEPTANCE = N_("Waiting for your acceptance: made %(days)s days ago")
WAITING_FEEDBACK = N_("Waiting for your feedback: made %(days)s days ago")
NOT_YET_ACCEPTED = N_("Not yet accepted by %(facility)s after %(days)s days")
NO_FEEDBACK_YET = N_("No feedback yet from %(facility)s after %(days)s days")


@dataclass(frozen=True, slots=True)
class OverdueReferral:
    """A referral of the viewer's facility that is overdue today, as its worklist shows it."""

    task_id: str
    side: str  # "received" or "sent": its list (and row) on the Referrals screen
    why: str  # msgid, with %(days)s and %(facility)s
    days: int  # since it was made
    facility: str  # the facility at the other end (its name)
    kind: str  # the referral type
    patient_id: str | None
    name: str | None  # None: the guard does not let the facility see the person

    @property
    def link(self) -> str:
        return f"/app/referrals#{self.side}-{self.task_id}"


def overdue_referrals(
    session: Session, facility: str, today: date, rules: ReferralRules
) -> list[OverdueReferral]:
    """The facility's overdue referrals, read under the session's guard: those it received
    first (its own work), then those it sent; the oldest first in each."""
    received, sent = referral_lists(session, facility, today, rules)
    out = []
    for side, rows in (("received", received), ("sent", sent)):
        for row in rows:
            if row.overdue is None:
                continue
            accepting = row.overdue == NOT_ACCEPTED
            if side == "received":
                why = WAITING_ACCEPTANCE if accepting else WAITING_FEEDBACK
            else:
                why = NOT_YET_ACCEPTED if accepting else NO_FEEDBACK_YET
            out.append(
                OverdueReferral(
                    row.task_id, side, why, row.days, row.other, row.kind, row.patient_id, row.name
                )
            )
    return out  # each list came overdue first, oldest first


def _sees_referrals(viewer: Viewer) -> bool:
    from takamul.web.screens.referrals import SCREEN as REFERRALS

    return REFERRALS.allowed(viewer)


# -- recording an outcome -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recorder:
    """Who records an outcome, as the Task will name them."""

    username: str
    display: str
    practitioner: str | None  # "Practitioner/x" when the login has a Practitioner record

    def author(self) -> dict[str, Any]:
        if self.practitioner:
            return {"authorReference": {"reference": self.practitioner, "display": self.display}}
        return {"authorString": self.display}


def apply_outcome(task: dict[str, Any], outcome: Outcome, by: Recorder, now: str) -> dict[str, Any]:
    """The Task with ``outcome`` recorded (a new dict; ``task`` is left as it was)."""
    out = copy.deepcopy(task)
    coding = {"system": OUTCOME_SYSTEM, "code": outcome.code, "display": outcome.display}
    out["status"] = outcome.status
    out["businessStatus"] = {"coding": [coding], "text": outcome.display}
    if outcome.reason:
        out["statusReason"] = {"coding": [coding], "text": outcome.reason}
    else:
        out.pop("statusReason", None)
    out["output"] = [
        {
            "type": {
                "coding": [{"system": OUTCOME_SYSTEM, "code": "outcome", "display": "Outcome"}],
                "text": "Outreach outcome",
            },
            "valueCodeableConcept": {"coding": [coding], "text": outcome.display},
        }
    ]
    out["lastModified"] = now
    period = dict(out.get("executionPeriod") or {})
    period.setdefault("start", now)
    if outcome.done:
        period["end"] = now
    else:
        period.pop("end", None)
    out["executionPeriod"] = period
    _set_shows_again(out, outcome, now)
    if by.practitioner:
        out["owner"] = {"reference": by.practitioner, "display": by.display}
    note = {**by.author(), "time": now, "text": f"Outreach outcome: {outcome.display}"}
    out["note"] = [*out.get("note", []), note]
    return out


def _set_shows_again(task: dict[str, Any], outcome: Outcome, now: str) -> None:
    """``restriction.period.start``: the day a put-off Task shows again (the outcome's day plus
    its days); any other outcome means the Task is being worked now, so a put-off ends. The
    due date (``period.end``) stays unless it falls before that day; undo puts back the whole
    restriction."""
    restriction = dict(task.get("restriction") or {})
    period = dict(restriction.get("period") or {})
    if outcome.hide_days:
        day = date.fromisoformat(now[:10]) + timedelta(days=outcome.hide_days)
        period["start"] = day.isoformat()
        if period.get("end") and str(period["end"])[:10] < period["start"]:
            # a Period's start may not pass its end (FHIR per-04): due no earlier than shown
            period["end"] = period["start"]
    else:
        period.pop("start", None)
    if period:
        restriction["period"] = period
    else:
        restriction.pop("period", None)
    if restriction:
        task["restriction"] = restriction
    else:
        task.pop("restriction", None)


# What an outcome changes, and so what an undo puts back.
_OUTCOME_FIELDS = (
    "status",
    "businessStatus",
    "statusReason",
    "output",
    "executionPeriod",
    "owner",
    "restriction",
)


def undo_outcome(
    current: dict[str, Any], before: dict[str, Any], by: Recorder, now: str
) -> dict[str, Any]:
    """``current`` with the outcome fields of ``before`` back, its notes kept and one added."""
    out = copy.deepcopy(current)
    for name in _OUTCOME_FIELDS:
        if name in before:
            out[name] = copy.deepcopy(before[name])
        else:
            out.pop(name, None)
    undone = _outcome_of(current)
    what = undone.display if undone else "outcome"
    out["lastModified"] = now
    note = {**by.author(), "time": now, "text": f"Outreach outcome undone: {what}"}
    out["note"] = [*out.get("note", []), note]
    return out


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _recorder(session: Session, viewer: Viewer) -> Recorder:
    """The viewer, with their Practitioner record when one carries their login's identifier."""
    display = viewer.access.display_name or viewer.username
    practitioner = None
    if viewer.access.allows("Practitioner", "s"):
        query = session.parse_search(
            "Practitioner", [("identifier", f"{USER_SYSTEM}|{viewer.username}"), ("_count", "1")]
        )
        found = session.search(query).matches
        practitioner = found[0].reference if found else None
    return Recorder(viewer.username, display, practitioner)


def _visible_task(session: Session, task_id: str) -> tuple[dict[str, Any], int, str]:
    """The Task (content, version, patient id) if it is an outreach Task of a person the viewer
    may see; the same 404 otherwise, whether it is missing or another facility's."""
    query = session.parse_search("Task", [("_id", task_id), VISIBLE_PATIENT])
    found = session.search(query).matches
    if not found:
        raise FhirError(404, f"Task/{task_id} is not known", "not-found")
    task = found[0].json()
    patient = _patient_id(task)
    assert patient is not None  # the chain matched a Patient
    return task, found[0].version, patient


@dataclass(frozen=True, slots=True)
class Change:
    """An outcome recorded (or undone): the row as it now is."""

    item: WorkItem
    outcome: Outcome | None
    undone: bool


def record(web: WebServices, viewer: Viewer, base: str, task_id: str, outcome: Outcome) -> Change:
    """Record ``outcome`` on the Task, as the FHIR update interaction does, under the guard."""
    with web.guarded(viewer):

        def work(session: Session) -> Any:
            task, version, _ = _visible_task(session, task_id)
            changed = apply_outcome(task, outcome, _recorder(session, viewer), _now())
            ctx = RequestContext(base, source=SOURCE)
            return ix.update(session, "Task", task_id, changed, ctx, f'W/"{version}"')

        web.store.write(work)
        return Change(_reread(web, task_id), outcome, undone=False)


def undo(web: WebServices, viewer: Viewer, base: str, task_id: str, version: int) -> Change:
    """Put back the Task as it was before the outcome recorded as ``version`` (refused with a
    409 when the Task changed since, so nobody's later work is undone)."""
    with web.guarded(viewer):

        def work(session: Session) -> Any:
            task, current, _ = _visible_task(session, task_id)
            if current != version or _outcome_of(task) is None or version < 2:
                raise FhirError(409, "The Task changed since; nothing was undone", "conflict")
            before = session.vread("Task", task_id, str(version - 1)).json()
            restored = undo_outcome(task, before, _recorder(session, viewer), _now())
            ctx = RequestContext(base, source=SOURCE)
            return ix.update(session, "Task", task_id, restored, ctx, f'W/"{version}"')

        web.store.write(work)
        return Change(_reread(web, task_id), None, undone=True)


def _reread(web: WebServices, task_id: str) -> WorkItem:
    with web.store.reading() as session:
        query = session.parse_search(
            "Task", [("_id", task_id), VISIBLE_PATIENT, ("_include", "Task:patient")]
        )
        found = session.search(query)
    patients = {p.id: p.json() for p in found.included if p.resource_type == "Patient"}
    item = _item(found.matches[0].json(), found.matches[0].version, patients)
    assert item is not None
    return item


# -- pages -----------------------------------------------------------------------------------


def register(router: APIRouter, web: WebServices) -> None:
    @router.get("/worklist")
    def show_worklist(request: Request) -> Response:
        viewer = web.viewer(request)
        if not SCREEN.allowed(viewer):
            return _refused(web, viewer)
        show = request.query_params.get("show", "open")
        show = show if show in SHOWS else "open"
        facility = (viewer.access.facility or "").removeprefix("Organization/")
        with_referrals = show in ("open", "all") and _sees_referrals(viewer)
        referrals: list[OverdueReferral] | None = None
        problem = ""
        with web.guarded(viewer), web.store.reading() as session:
            items = worklist(session, show)
            if with_referrals:
                try:
                    rules = ReferralRules.configured()
                except ValueError as err:  # the operator's file: shown, not guessed around
                    problem = str(err)
                else:
                    referrals = overdue_referrals(session, facility, date.today(), rules)
        web.audit_page(
            request,
            viewer,
            "search",
            resource_type="Task",
            query=f"code={OUTREACH_SYSTEM}|&show={show}",
            patient_ids=_patients(items),
        )
        if referrals is not None:
            web.audit_page(
                request,
                viewer,
                "search",
                resource_type="Task",
                query=f"owner|requester=Organization/{facility}&overdue",
                patient_ids=tuple(
                    dict.fromkeys(r.patient_id for r in referrals if r.name and r.patient_id)
                ),
            )
        return page(
            web,
            viewer,
            "worklist/list.html",
            active=SCREEN.key,
            back=f"/app/worklist?show={show}",
            items=items,
            show=show,
            outcomes=OUTCOMES.values(),
            referrals=referrals,
            referral_problem=problem,
            with_referrals=with_referrals,
        )

    @router.post("/worklist/{task_id}/outcome")
    async def post_outcome(task_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        form = await read_form(request)
        web.check_csrf(request, viewer, form)
        outcome = OUTCOMES.get(form.get("outcome", ""))
        if not SCREEN.allowed(viewer) or outcome is None:
            return _refused(web, viewer, 400 if outcome is None else 403)
        base = web.security.fhir_base(str(request.base_url))
        return await _change(
            request, web, viewer, task_id, lambda: record(web, viewer, base, task_id, outcome)
        )

    @router.post("/worklist/{task_id}/undo")
    async def post_undo(task_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        form = await read_form(request)
        web.check_csrf(request, viewer, form)
        version = form.get("version", "")
        if not SCREEN.allowed(viewer) or not version.isdigit():
            return _refused(web, viewer, 400 if SCREEN.allowed(viewer) else 403)
        base = web.security.fhir_base(str(request.base_url))
        return await _change(
            request, web, viewer, task_id, lambda: undo(web, viewer, base, task_id, int(version))
        )


async def _change(
    request: Request, web: WebServices, viewer: Viewer, task_id: str, do: Any
) -> Response:
    try:
        change: Change = await run_in_threadpool(do)
    except FhirError as err:
        web.audit_page(
            request,
            viewer,
            "update",
            status=err.status,
            resource_type="Task",
            resource_id=task_id,
            outcome_text=str(err),
        )
        if err.status == 404:
            message = N_("This task is not on your worklist.")
            return page(web, viewer, "frame/error.html", 404, status=404, message=message)
        message = N_("The task changed meanwhile; reload the worklist and try again.")
        return page(web, viewer, "frame/error.html", 409, status=409, message=message)
    web.audit_page(
        request,
        viewer,
        "update",
        resource_type="Task",
        resource_id=task_id,
        patient_ids=(change.item.patient_id,),
    )
    if request.headers.get("hx-request") != "true":
        return RedirectResponse("/app/worklist", 303)
    return fragment(
        viewer,
        "worklist/_changed.html",
        item=change.item,
        change=change,
        outcomes=OUTCOMES.values(),
    )


def _refused(web: WebServices, viewer: Viewer, status: int = 403) -> Response:
    message = N_("The outreach worklist is for community health workers and care coordinators.")
    if status == 400:
        message = N_("That outcome is not one the worklist knows.")
    return page(web, viewer, "frame/error.html", status, status=status, message=message)


def _patients(items: Iterable[WorkItem]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i.patient_id for i in items))
