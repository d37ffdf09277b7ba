"""A facility's referrals: those it received (``Task.owner`` is the viewer's facility) and those
it sent (``Task.requester`` is), overdue first, and the owner's answer to a new one (accept or
reject) as an update of the Task through the FHIR update interaction under the viewer's guard,
so the referral state machine (``takamul.coordination.referrals``) decides who may do what and
its refusal is shown as it is worded. The owner then starts the referral and completes it with
its feedback: the consult note as a ``DocumentReference`` and the Task's completion, written in
one FHIR transaction Bundle (``takamul.rest.bundles.process``) under the same guard, so a
refusal of either writes neither. The requester reads the note from its Sent list.

Overdue is ``takamul.coordination.metrics.overdue`` on today's date with its per-type limits
(``ReferralRules``): not answered within N days, or not closed within M days of being made.
Patient names are read under the guard: a person the facility may not see is not named.
"""

from __future__ import annotations

import base64
import binascii
import copy
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from takamul.coordination.metrics import (
    Referral,
    ReferralRules,
    follow_history,
    overdue,
    referral_type,
    task_day,
)
from takamul.coordination.referrals import is_referral
from takamul.fhir.outcome import FhirError
from takamul.rest import bundles
from takamul.rest import interactions as ix
from takamul.rest.interactions import RequestContext
from takamul.store.repository import Session
from takamul.web.context import Screen, Viewer, WebServices, read_form
from takamul.web.i18n import N_
from takamul.web.pages import page
from takamul.web.people import person_name

__all__ = [
    "ANSWERS",
    "SCREEN",
    "Feedback",
    "ReferralRow",
    "answer",
    "complete",
    "feedback_of",
    "referral_lists",
    "register",
]

SCREEN = Screen(
    "referrals",
    "/referrals",
    N_("Referrals"),
    allowed=lambda viewer: (
        bool(viewer.access.facility)
        and bool({"clinician", "care-coordinator"} & viewer.access.roles)
    ),
)

SOURCE = "urn:takamul:web:referrals"
MAX_TASKS = 500  # one facility's referrals of a list at a time
MAX_VERSIONS = 100  # a referral's history: enough to date its answer and its closing
# the owner's moves by a button: the new Task status (accept/reject a requested referral, start
# an accepted one); completing needs the feedback and has its own form
ANSWERS = {"accept": "accepted", "reject": "rejected", "start": "in-progress"}
# the consult note's document type: LOINC 11488-4 "Consult note" (loinc.org/11488-4)
CONSULT_NOTE = {
    "coding": [{"system": "http://loinc.org", "code": "11488-4", "display": "Consult note"}],
    "text": "Consult note",
}
NOTE_TYPE = "text/plain; charset=utf-8"
# characters of a consult note typed on the screen: 10,000 Arabic letters percent-encoded
# (6 bytes each) still fit the 64 KiB form a page may post (context.read_form)
MAX_NOTE = 10_000
NOTE_TOO_LONG = N_("The consult note is too long for one feedback; shorten it.")
NOTE_EMPTY = N_("The consult note is empty; write the feedback for the referring facility.")
STATUS_LABELS = {
    "requested": N_("Awaiting answer"),
    "received": N_("Awaiting answer"),
    "accepted": N_("Accepted"),
    "in-progress": N_("In progress"),
    "on-hold": N_("On hold"),
    "completed": N_("Completed"),
    "failed": N_("Failed"),
    "rejected": N_("Rejected"),
    "cancelled": N_("Cancelled"),
}
NOT_ACCEPTED = N_("Not accepted within %(days)s days")
NOT_COMPLETED = N_("Not completed within %(days)s days")


@dataclass(frozen=True, slots=True)
class ReferralRow:
    """One referral of a list, as the viewer's facility sees it."""

    task_id: str
    status: str
    kind: str  # the referral type (ServiceRequest code)
    other: str  # the other facility's name
    patient_id: str | None
    name: str | None  # None: the guard does not let the facility see the person
    days: int  # since it was made
    overdue: str | None  # msgid (NOT_ACCEPTED or NOT_COMPLETED)
    overdue_days: int
    answerable: bool  # received and awaiting the owner's answer
    startable: bool = False  # received and accepted: the owner starts it
    completable: bool = False  # received and in progress: the owner completes it with feedback
    feedback: str | None = None  # the DocumentReference id of the feedback, when there is one

    @property
    def status_label(self) -> str:
        return STATUS_LABELS.get(self.status, N_("Unknown"))

    def order(self) -> tuple[bool, int, str]:
        """Overdue first, then the oldest first."""
        return (self.overdue is None, -self.days, self.task_id)


def referral_lists(
    session: Session, facility: str, today: date, rules: ReferralRules = ReferralRules()
) -> tuple[list[ReferralRow], list[ReferralRow]]:
    """The referrals the facility received and sent, each list overdue first."""
    names: dict[str, str] = {}
    received = _rows(session, "owner", facility, today, rules, names)
    sent = _rows(session, "requester", facility, today, rules, names)
    return received, sent


def _rows(
    session: Session,
    party: str,
    facility: str,
    today: date,
    rules: ReferralRules,
    names: dict[str, str],
) -> list[ReferralRow]:
    params = [
        (party, f"Organization/{facility}"),
        ("_include", "Task:focus"),
        ("_count", str(MAX_TASKS)),
    ]
    found = session.search(session.parse_search("Task", params))
    requests = {f"{r.resource_type}/{r.id}": r.json() for r in found.included}
    rows = []
    for match in found.matches:
        task = match.json()
        if not is_referral(task):
            continue
        request = requests.get(_reference(task.get("focus")))
        referral = _referral(session, task, request, today)
        if referral is None:
            continue
        other = referral.requester if party == "owner" else referral.owner
        rows.append(_row(session, task, referral, party, other, today, rules, names))
    return sorted(rows, key=ReferralRow.order)


def _reference(value: object) -> str:
    return str((value or {}).get("reference") or "") if isinstance(value, dict) else ""


def _id_of(value: object, kind: str) -> str:
    ref = _reference(value)
    return ref.removeprefix(f"{kind}/") if ref.startswith(f"{kind}/") else ""


def _referral(
    session: Session, task: dict[str, Any], request: dict[str, Any] | None, today: date
) -> Referral | None:
    """The referral as ``metrics`` follows it: its answer and closing dated from its history."""
    authored = task_day(task.get("authoredOn")) or task_day((request or {}).get("authoredOn"))
    if authored is None:
        return None  # undated: neither its age nor whether it is overdue can be said
    patient = _id_of(task.get("for"), "Patient") or _id_of(
        (request or {}).get("subject"), "Patient"
    )
    referral = Referral(
        str(task["id"]),
        patient or None,
        "",
        referral_type(request),
        _id_of(task.get("requester"), "Organization"),
        _id_of(task.get("owner"), "Organization"),
        authored,
    )
    stored, _ = session.history("Task", str(task["id"]), None, MAX_VERSIONS, 0)
    versions = [v.json() for v in reversed(stored) if v.content]
    # metrics has no public "follow one referral" yet; this is its own dating, not a copy
    follow_history(referral, versions, today)
    return referral


def _row(
    session: Session,
    task: dict[str, Any],
    referral: Referral,
    party: str,
    other: str,
    today: date,
    rules: ReferralRules,
    names: dict[str, str],
) -> ReferralRow:
    late = overdue([referral], today, rules)
    limits = rules.of(referral.kind)
    why, days = None, 0
    if late:
        accepting = late[0][1].startswith("not accepted")
        why = NOT_ACCEPTED if accepting else NOT_COMPLETED
        days = limits.accept_days if accepting else limits.complete_days
    status = str(task.get("status", ""))
    return ReferralRow(
        task_id=referral.task,
        status=status,
        kind=referral.kind,
        other=_facility_name(session, other, names),
        patient_id=referral.patient,
        name=_patient_name(session, referral.patient),
        days=(today - referral.authored).days,
        overdue=why,
        overdue_days=days,
        answerable=party == "owner" and status == "requested",
        startable=party == "owner" and status == "accepted",
        completable=party == "owner" and status == "in-progress",
        feedback=_feedback_document(task),
    )


def _feedback_document(task: dict[str, Any]) -> str | None:
    """The id of the first DocumentReference in the Task's output (the consult note)."""
    for output in task.get("output") or ():
        found = _id_of(output.get("valueReference"), "DocumentReference")
        if found:
            return found
    return None


def _facility_name(session: Session, org_id: str, names: dict[str, str]) -> str:
    if org_id and org_id not in names:
        try:
            names[org_id] = str(session.read("Organization", org_id).json().get("name") or org_id)
        except FhirError:
            names[org_id] = org_id
    return names.get(org_id, "")


def _patient_name(session: Session, patient_id: str | None) -> str | None:
    """The person's name when the guard lets the viewer read their record; else None."""
    if not patient_id:
        return None
    try:
        return person_name(session.read("Patient", patient_id).json())
    except FhirError:
        return None


# -- answering -------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def answered(task: dict[str, Any], status: str, who: str, reason: str, now: str) -> dict[str, Any]:
    """The Task with the owner's answer (a new dict): status, when, and why when rejected."""
    out = copy.deepcopy(task)
    out["status"] = status
    out["lastModified"] = now
    if status == "rejected" and reason:
        out["statusReason"] = {"text": reason}
    if status == "accepted":
        out["executionPeriod"] = {**(out.get("executionPeriod") or {}), "start": now}
    note = {"authorString": who, "time": now, "text": f"Referral {status}"}
    out["note"] = [*out.get("note", []), note]
    return out


def answer(
    web: WebServices, viewer: Viewer, base: str, task_id: str, status: str, reason: str
) -> str | None:
    """Update the referral Task to ``status`` under the viewer's guard; the patient's id."""
    with web.guarded(viewer):

        def work(session: Session) -> str | None:
            stored = session.read("Task", task_id)
            task = stored.json()
            if not is_referral(task):
                raise FhirError(404, f"Task/{task_id} is not a referral", "not-found")
            who = viewer.access.display_name or viewer.username
            changed = answered(task, status, who, reason, _now())
            ctx = RequestContext(base, source=SOURCE)
            ix.update(session, "Task", task_id, changed, ctx, f'W/"{stored.version}"')
            return _id_of(task.get("for"), "Patient") or None

        return web.store.write(work)


def consult_note(task: dict[str, Any], note: str, facility: str, now: str) -> dict[str, Any]:
    """The feedback DocumentReference: the note as UTF-8 text, byte for byte as typed."""
    document: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": "current",
        "type": copy.deepcopy(CONSULT_NOTE),
        "date": now,
        "author": [{"reference": f"Organization/{facility}"}],
        "content": [
            {
                "attachment": {
                    "contentType": NOTE_TYPE,
                    "data": base64.b64encode(note.encode("utf-8")).decode("ascii"),
                    "title": "Consult note",
                    "creation": now,
                }
            }
        ],
    }
    if task.get("for"):
        document["subject"] = copy.deepcopy(task["for"])
    if task.get("focus"):
        document["context"] = {"related": [copy.deepcopy(task["focus"])]}
    return document


def completed(task: dict[str, Any], document_url: str, who: str, now: str) -> dict[str, Any]:
    """The Task completed with its feedback (a new dict)."""
    out = copy.deepcopy(task)
    out["status"] = "completed"
    out["lastModified"] = now
    out["executionPeriod"] = {**(out.get("executionPeriod") or {}), "end": now}
    feedback = {"type": {"text": "feedback"}, "valueReference": {"reference": document_url}}
    out["output"] = [*out.get("output", []), feedback]
    out["note"] = [
        *out.get("note", []),
        {"authorString": who, "time": now, "text": "Referral completed"},
    ]
    return out


def complete(
    web: WebServices, viewer: Viewer, base: str, task_id: str, note: str
) -> tuple[str, str | None]:
    """Write the consult note and the Task's completion in one transaction Bundle under the
    viewer's guard: the state machine's refusal of the Task rolls the note back with it.
    Returns the DocumentReference's id and the patient's id."""
    with web.guarded(viewer):
        with web.store.reading() as session:
            stored = session.read("Task", task_id)
        task = stored.json()
        if not is_referral(task):
            raise FhirError(404, f"Task/{task_id} is not a referral", "not-found")
        now, document_url = _now(), f"urn:uuid:{uuid.uuid4()}"
        who = viewer.access.display_name or viewer.username
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": document_url,
                    "resource": consult_note(task, note, _facility(viewer), now),
                    "request": {"method": "POST", "url": "DocumentReference"},
                },
                {
                    "resource": completed(task, document_url, who, now),
                    # the version read: a change in between is refused, not overwritten
                    "request": {
                        "method": "PUT",
                        "url": f"Task/{task_id}",
                        "ifMatch": f'W/"{stored.version}"',
                    },
                },
            ],
        }
        response = bundles.process(web.store, bundle, RequestContext(base, source=SOURCE), 1)
    location = str(response["entry"][0]["response"]["location"])
    document_id = location.split("/")[1]
    return document_id, _id_of(task.get("for"), "Patient") or None


@dataclass(frozen=True, slots=True)
class Feedback:
    """A referral's consult note as the feedback page shows it."""

    task_id: str
    document_id: str
    text: str | None  # None: not a text note this page can show
    author: str  # the writing facility's name
    date: str | None
    patient_id: str | None


def feedback_of(session: Session, task_id: str, facility: str) -> Feedback | None:
    """The referral's feedback note, read under the session's guard; None when the Task is not a
    referral of ``facility`` (as requester or owner) or carries no DocumentReference feedback."""
    task = session.read("Task", task_id).json()
    parties = {_id_of(task.get(p), "Organization") for p in ("requester", "owner")}
    document_id = _feedback_document(task)
    if not is_referral(task) or facility not in parties or document_id is None:
        return None
    document = session.read("DocumentReference", document_id).json()
    authors = [_id_of(a, "Organization") for a in document.get("author") or ()]
    author = next((a for a in authors if a), "")
    return Feedback(
        task_id,
        document_id,
        _note_text(document),
        _facility_name(session, author, {}),
        document.get("date"),
        _id_of(document.get("subject"), "Patient") or None,
    )


def _note_text(document: dict[str, Any]) -> str | None:
    """The text of the first plain-text attachment with inline data."""
    for content in document.get("content") or ():
        attachment = content.get("attachment") or {}
        kind = str(attachment.get("contentType") or "")
        if kind.split(";")[0].strip() == "text/plain" and attachment.get("data"):
            try:
                return base64.b64decode(attachment["data"], validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
    return None


# -- pages -----------------------------------------------------------------------------------


def _facility(viewer: Viewer) -> str:
    return (viewer.access.facility or "").removeprefix("Organization/")


def _show(
    request: Request,
    web: WebServices,
    viewer: Viewer,
    status: int = 200,
    refusal: str = "",
    refusal_msgid: str = "",
) -> Response:
    try:
        rules = ReferralRules.configured()
    except ValueError as err:  # the operator's rules file: named, not guessed around
        return page(web, viewer, "frame/error.html", 500, status=500, message=str(err))
    with web.guarded(viewer), web.store.reading() as session:
        received, sent = referral_lists(session, _facility(viewer), date.today(), rules)
    web.audit_page(
        request,
        viewer,
        "search",
        resource_type="Task",
        query=f"owner|requester=Organization/{_facility(viewer)}",
        patient_ids=_patients([*received, *sent]),
    )
    return page(
        web,
        viewer,
        "referrals/lists.html",
        status,
        active=SCREEN.key,
        back="/app/referrals",
        received=received,
        sent=sent,
        refusal=refusal,
        refusal_msgid=refusal_msgid,
    )


def register(router: APIRouter, web: WebServices) -> None:
    @router.get("/referrals")
    def show_referrals(request: Request) -> Response:
        viewer = web.viewer(request)
        if not SCREEN.allowed(viewer):
            return _refused(web, viewer)
        return _show(request, web, viewer)

    @router.post("/referrals/{task_id}/answer")
    async def post_answer(task_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        form = await read_form(request)
        web.check_csrf(request, viewer, form)
        status = ANSWERS.get(form.get("answer", ""))
        if not SCREEN.allowed(viewer) or status is None:
            return _refused(web, viewer, 400 if status is None else 403)
        base = web.security.fhir_base(str(request.base_url))
        reason = form.get("reason", "").strip()[:500]
        try:
            patient = await run_in_threadpool(answer, web, viewer, base, task_id, status, reason)
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
            return await run_in_threadpool(_show, request, web, viewer, err.status, str(err))
        web.audit_page(
            request,
            viewer,
            "update",
            resource_type="Task",
            resource_id=task_id,
            patient_ids=(patient,) if patient else (),
        )
        return RedirectResponse("/app/referrals", 303)

    @router.post("/referrals/{task_id}/complete")
    async def post_complete(task_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        form = await read_form(request)
        web.check_csrf(request, viewer, form)
        if not SCREEN.allowed(viewer):
            return _refused(web, viewer)
        note = form.get("note", "")
        # a note is stored as typed or not at all: never cut short
        problem = NOTE_EMPTY if not note.strip() else NOTE_TOO_LONG if len(note) > MAX_NOTE else ""
        if problem:
            return await run_in_threadpool(_show, request, web, viewer, 422, "", problem)
        base = web.security.fhir_base(str(request.base_url))
        try:
            document, patient = await run_in_threadpool(complete, web, viewer, base, task_id, note)
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
            return await run_in_threadpool(_show, request, web, viewer, err.status, str(err))
        patients = (patient,) if patient else ()
        web.audit_page(
            request,
            viewer,
            "create",
            status=201,
            resource_type="DocumentReference",
            resource_id=document,
            patient_ids=patients,
        )
        web.audit_page(
            request,
            viewer,
            "update",
            resource_type="Task",
            resource_id=task_id,
            patient_ids=patients,
        )
        return RedirectResponse("/app/referrals", 303)

    @router.get("/referrals/{task_id}/feedback")
    def show_feedback(task_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        if not SCREEN.allowed(viewer):
            return _refused(web, viewer)
        try:
            with web.guarded(viewer), web.store.reading() as session:
                feedback = feedback_of(session, task_id, _facility(viewer))
        except FhirError as err:
            feedback = None
            web.audit_page(
                request, viewer, "read", status=err.status, resource_type="Task",
                resource_id=task_id, outcome_text=str(err),
            )  # fmt: skip
        if feedback is None:
            message = N_("No feedback of this referral is shown to your facility.")
            return page(web, viewer, "frame/error.html", 404, status=404, message=message)
        web.audit_page(
            request,
            viewer,
            "read",
            resource_type="DocumentReference",
            resource_id=feedback.document_id,
            patient_ids=(feedback.patient_id,) if feedback.patient_id else (),
        )
        return page(
            web,
            viewer,
            "referrals/feedback.html",
            active=SCREEN.key,
            back="/app/referrals",
            feedback=feedback,
        )


def _refused(web: WebServices, viewer: Viewer, status: int = 403) -> Response:
    message = N_("The referrals screen is for clinicians and care coordinators of a facility.")
    if status == 400:
        message = N_("A referral is answered by accepting, rejecting or starting it.")
    return page(web, viewer, "frame/error.html", status, status=status, message=message)


def _patients(rows: Iterable[ReferralRow]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(r.patient_id for r in rows if r.patient_id and r.name))
