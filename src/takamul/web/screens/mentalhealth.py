"""Mental health in primary care: the screening form, a care manager's caseload, the psychiatric
case-review queue, and the safety alert on the patient record.

- **Screening** (``/app/mentalhealth/screen/{patient}``): an instrument of
  ``takamul.mentalhealth.instruments`` (ZBI-12 only where its wording is installed), its items in
  the viewer's language where that wording is installed, else the item's code and a note (the
  wording of a validated instrument is never ours to write). Submitting stores a
  QuestionnaireResponse as the FHIR create interaction does, under the viewer's guard, in one
  transaction with the scoring hook (score Observation, and Flag and stat Task on a positive
  self-harm item); a response that cannot be scored is refused before anything is written.
- **Caseload** (``/app/mentalhealth``): the collaborative-care registry's rows of the viewer's
  persons (their Practitioner, found by the login's identifier, is the care manager) or of
  their facility, most urgent first (safety, needs review, overdue), a page at a time.
- **Review queue** (``/app/mentalhealth/review``): ``review_queue`` of the facility's caseload,
  with the consultant's recommendation recorded by ``record_recommendation``.
- **Safety alert** (``record_section``): what the patient record shows for an active
  suicide-risk Flag or an open safety Task, with the acknowledgement (Task status ``accepted``).

Access: every resource is read or written under the viewer's guard (the ``PSY`` label and the
patient's consent apply); the registry's rows are aggregates read by the registry, so a row
names a person only when the guarded Patient search lets them through, and shows scores only
when the guard lets the viewer see that person's scores. Answers and scores are shown to
clinicians only: a community health worker screens and sees that follow-up is due (and a safety
alert, which they must act on), never answers, scores or statuses. Every page is audited.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from takamul.equity.outreach import OUTREACH_SYSTEM
from takamul.fhir.outcome import FhirError
from takamul.mentalhealth.instruments import (
    Instrument,
    instrument,
    instruments,
    questionnaire,
    questions,
)
from takamul.mentalhealth.registry import (
    GAD7,
    PHQ9,
    RegistryRow,
    caseload,
    record_recommendation,
    review_queue,
)
from takamul.mentalhealth.safety import SAFETY_CODE, SUICIDE_RISK
from takamul.mentalhealth.scoring import Score, derived_id, score_response
from takamul.rest import interactions as ix
from takamul.security.audit import USER_SYSTEM
from takamul.security.errors import AuthError
from takamul.store.repository import Session
from takamul.web.context import Screen, Viewer, WebServices, read_form
from takamul.web.i18n import N_, translations
from takamul.web.pages import page
from takamul.web.people import person_name
from takamul.web.record import guarded_search

__all__ = [
    "PAGE_SIZE",
    "SCREEN",
    "RecordSection",
    "ScreeningForm",
    "build_response",
    "record_section",
    "register",
    "screening_form",
]

ROLES = frozenset({"clinician", "community-health-worker"})
SCORE_ROLES = frozenset({"clinician"})  # who sees answers, scores and statuses
SCREEN = Screen(
    "mentalhealth",
    "/mentalhealth",
    N_("Mental health"),
    # the caseload is a facility's: a login without one has none to show
    allowed=lambda viewer: bool(ROLES & viewer.access.roles) and bool(viewer.access.facility),
)
PAGE_SIZE = 25
SCORE_CHUNK = 200  # records per search for the scores a viewer may see
SOURCE = "urn:takamul:web:mentalhealth"
LOINC = "http://loinc.org"
OPEN_TASK = ("requested", "received")  # not acknowledged yet (escalation reads "requested")
ACKNOWLEDGED = "accepted"
SORTS = ("urgency", "weeks")
# the severity bands' displays of instruments.json, for extraction (shown translated)
BAND_LABELS = {
    "none-minimal": N_("none-minimal"),
    "minimal": N_("minimal"),
    "mild": N_("mild"),
    "moderate": N_("moderate"),
    "moderately severe": N_("moderately severe"),
    "severe": N_("severe"),
    "negative screen": N_("negative screen"),
    "positive screen": N_("positive screen"),
    "below cut-off": N_("below cut-off"),
    "probable depression": N_("probable depression"),
    "high caregiver burden": N_("high caregiver burden"),
}
STATUS_LABELS = {
    "new": N_("New (under 4 weeks)"),
    "remission": N_("Remission"),
    "response": N_("Response"),
    "not-improving": N_("Not improving"),
    "improving": N_("Improving"),
}


def sees_scores(viewer: Viewer) -> bool:
    return bool(SCORE_ROLES & viewer.access.roles)


def _facility_id(viewer: Viewer) -> str:
    return (viewer.access.facility or "").removeprefix("Organization/")


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


# -- the screening form ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Choice:
    score: int
    code: str | None  # the LOINC answer code, where the instrument codes its answers
    display: str | None  # installed wording in the viewer's language, else None


@dataclass(frozen=True, slots=True)
class Question:
    link_id: str
    number: int  # 1-based position among the scored items; 0 for an unscored item
    code: str | None  # LOINC item code
    text: str | None  # installed wording in the viewer's language, else None
    scored: bool
    choices: tuple[Choice, ...]


@dataclass(frozen=True, slots=True)
class ScreeningForm:
    instrument: Instrument
    questions: tuple[Question, ...]

    @property
    def worded(self) -> bool:
        """Every question has its installed wording in the viewer's language."""
        return all(q.text for q in self.questions)

    def bands(self, lang: str) -> list[tuple[int, str]]:
        gettext = translations(lang).gettext
        return [
            (b.min, gettext(BAND_LABELS.get(b.display, b.display))) for b in self.instrument.bands
        ]


def _text_in(item: Mapping[str, Any], form_language: str | None, lang: str) -> str | None:
    """The item's installed text in ``lang``: ``text`` when the form is in that language, else
    its ``translation`` extension for that language; None when not installed."""
    if form_language == lang and isinstance(item.get("text"), str) and item["text"].strip():
        return str(item["text"])
    for ext in (item.get("_text") or {}).get("extension") or ():
        parts = {e.get("url"): e for e in ext.get("extension") or () if isinstance(e, dict)}
        if parts.get("lang", {}).get("valueCode") == lang:
            content = parts.get("content", {}).get("valueString")
            if isinstance(content, str) and content.strip():
                return content
    return None


def _choice(option: Mapping[str, Any], form_language: str | None, lang: str) -> Choice | None:
    if isinstance(option.get("valueInteger"), int):
        return Choice(int(option["valueInteger"]), None, None)
    coding = option.get("valueCoding")
    if not isinstance(coding, dict):
        return None
    score = next(
        (
            e.get("valueDecimal")
            for e in option.get("extension") or ()
            if isinstance(e, dict) and str(e.get("url", "")).endswith("/ordinalValue")
        ),
        None,
    )
    if not isinstance(score, int | float):
        return None
    display = coding.get("display") if form_language == lang else None
    return Choice(int(score), coding.get("code"), display if isinstance(display, str) else None)


def screening_form(inst: Instrument, stored: Mapping[str, Any] | None, lang: str) -> ScreeningForm:
    """The form of ``inst`` from its stored Questionnaire (the structure alone when none is
    stored), with the wording installed in ``lang`` and nothing else."""
    body = stored or questionnaire(inst)
    form_language = body.get("language") if isinstance(body.get("language"), str) else None
    found: list[Question] = []
    for item in questions(body):
        link_id = str(item.get("linkId"))
        if link_id not in inst.items and link_id not in inst.unscored:
            continue
        choices = tuple(
            c
            for o in item.get("answerOption") or ()
            if isinstance(o, dict) and (c := _choice(o, form_language, lang)) is not None
        )
        scored = link_id in inst.items
        found.append(
            Question(
                link_id=link_id,
                number=inst.items.index(link_id) + 1 if scored else 0,
                code=inst.item_loinc.get(link_id),
                text=_text_in(item, form_language, lang),
                scored=scored,
                choices=choices,
            )
        )
    return ScreeningForm(inst, tuple(found))


def _worded(stored: Mapping[str, Any] | None) -> bool:
    return any(isinstance(i.get("text"), str) or i.get("_text") for i in questions(stored or {}))


def offered(stored: Mapping[str, dict[str, Any] | None]) -> list[Instrument]:
    """The instruments the form offers: every one, the ZBI-12 only where its (licensed)
    wording is installed."""
    return [i for i in instruments() if i.id != "zbi-12" or _worded(stored.get(i.id))]


def _stored_questionnaires(session: Session) -> dict[str, dict[str, Any] | None]:
    ids = ",".join(i.id for i in instruments())
    found, _, _ = guarded_search(session, "Questionnaire", [("_id", ids), ("_count", "50")])
    by_id = {q["id"]: q for q in found}
    return {i.id: by_id.get(i.id) for i in instruments()}


@dataclass(slots=True)
class Problems:
    """Why a submitted form was not stored: msgids with their values, shown translated."""

    messages: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def add(self, msgid: str, **values: str) -> None:
        self.messages.append((msgid, values))

    def __bool__(self) -> bool:
        return bool(self.messages)


def build_response(
    form: ScreeningForm,
    answers: Mapping[str, str],
    patient_id: str,
    author: Mapping[str, Any],
    authored: str,
) -> tuple[dict[str, Any], Score | None, Problems]:
    """The QuestionnaireResponse of the answers typed (form field = linkId, value = the score
    chosen), its score, and what is wrong with it (nothing may be stored then)."""
    inst = form.instrument
    problems = Problems()
    items: list[dict[str, Any]] = []
    for q in form.questions:
        value = (answers.get(q.link_id) or "").strip()
        if not value:
            continue
        choice = next((c for c in q.choices if str(c.score) == value), None)
        if choice is None:
            problems.add(
                N_("Question %(n)s: the answer is not one of its choices."),
                n=str(q.number or q.link_id),
            )
            continue
        answer: dict[str, Any]
        if choice.code is not None:
            answer = {"valueCoding": {"system": inst.answer_system or LOINC, "code": choice.code}}
        else:
            answer = {"valueInteger": choice.score}
        items.append({"linkId": q.link_id, "answer": [answer]})
    body: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": inst.url,
        "status": "completed",
        "subject": {"reference": f"Patient/{patient_id}"},
        "authored": authored,
        "author": dict(author),
        "item": items,
    }
    score = score_response(body, inst)
    if score is not None and score.total is None and not problems:
        unanswered = [str(inst.items.index(m) + 1) for m in score.missing]
        problems.add(
            N_("Answer questions %(numbers)s: at most %(allowed)s of %(total)s may be left out."),
            numbers=", ".join(unanswered),
            allowed=str(inst.max_missing),
            total=str(len(inst.items)),
        )
    return body, score, problems


def _author(session: Session, viewer: Viewer) -> tuple[dict[str, Any], str | None]:
    """The viewer as the response's author: their Practitioner when one carries the login's
    identifier (as the worklist records outcomes), else their name."""
    display = viewer.access.display_name or viewer.username
    practitioner = _practitioner(session, viewer)
    if practitioner:
        return {"reference": practitioner, "display": display}, practitioner
    return {"display": display}, None


def _practitioner(session: Session, viewer: Viewer) -> str | None:
    if not viewer.access.allows("Practitioner", "s"):
        return None
    found, _, _ = guarded_search(
        session,
        "Practitioner",
        [("identifier", f"{USER_SYSTEM}|{viewer.username}"), ("_count", "1")],
    )
    return f"Practitioner/{found[0]['id']}" if found else None


@dataclass(slots=True)
class ScreeningPage:
    patient: dict[str, Any]
    offered: list[Instrument]
    form: ScreeningForm | None


def _screening_page(
    web: WebServices, viewer: Viewer, patient_id: str, wanted: str | None
) -> ScreeningPage:
    """FhirError/AuthError 404 or 403 when the viewer may not see the Patient."""
    with web.guarded(viewer), web.store.reading() as session:
        patient = session.read("Patient", patient_id).json()
        stored = _stored_questionnaires(session)
    choices = offered(stored)
    chosen = next((i for i in choices if i.id == wanted), None)
    form = screening_form(chosen, stored.get(chosen.id), viewer.prefs.lang) if chosen else None
    return ScreeningPage(patient, choices, form)


def _submit(
    web: WebServices, viewer: Viewer, base: str, patient_id: str, inst: Instrument,
    answers: Mapping[str, str],
) -> tuple[str | None, ScreeningPage, Problems]:  # fmt: skip
    """Store the response as the FHIR create interaction does (one transaction with its
    scoring); (response id or None, the page, what was wrong)."""
    screening = _screening_page(web, viewer, patient_id, inst.id)
    if screening.form is None:
        problems = Problems()
        problems.add(N_("Choose one of the instruments offered."))
        return None, screening, problems
    with web.guarded(viewer):

        def work(session: Session) -> tuple[str | None, Problems]:
            author, _ = _author(session, viewer)
            assert screening.form is not None
            body, _, problems = build_response(screening.form, answers, patient_id, author, _now())
            if problems:
                return None, problems
            ctx = ix.RequestContext(base, source=SOURCE)
            stored = ix.create(session, "QuestionnaireResponse", body, ctx).stored
            assert stored is not None
            return stored.id, problems

        response_id, problems = web.store.write(work)
    return response_id, screening, problems


# -- the result of a screening -------------------------------------------------------------------


@dataclass(slots=True)
class ScreeningResult:
    response: dict[str, Any]
    patient: dict[str, Any]
    instrument: Instrument | None
    score: dict[str, Any] | None  # the score Observation, when the viewer may see it
    answers: list[tuple[Question, int | None]]
    alert: RecordSection | None


def _read_or_none(session: Session, resource_type: str, resource_id: str) -> dict[str, Any] | None:
    try:
        return session.read(resource_type, resource_id).json()
    except (FhirError, AuthError) as err:
        if err.status not in (403, 404, 410):
            raise
        return None


def _result(web: WebServices, viewer: Viewer, response_id: str) -> ScreeningResult:
    with web.guarded(viewer), web.store.reading() as session:
        response = session.read("QuestionnaireResponse", response_id).json()
        patient_id = str((response.get("subject") or {}).get("reference", "")).removeprefix(
            "Patient/"
        )
        patient = session.read("Patient", patient_id).json()
        score = (
            _read_or_none(session, "Observation", derived_id("mhs", response_id))
            if sees_scores(viewer)
            else None
        )
        stored = _stored_questionnaires(session)
    scored = score_response(response)
    answers: list[tuple[Question, int | None]] = []
    if scored is not None and sees_scores(viewer):
        inst = scored.instrument
        form = screening_form(inst, stored.get(inst.id), viewer.prefs.lang)
        answers = [(q, scored.answers.get(q.link_id)) for q in form.questions if q.scored]
    alert = record_section(web, viewer, [patient_id])
    return ScreeningResult(
        response, patient, scored.instrument if scored else None, score, answers, alert
    )


# -- the safety alert on the patient record -------------------------------------------------------


@dataclass(slots=True)
class RecordSection:
    """The mental-health part of a patient record: the safety alert (active suicide-risk
    Flags, open safety Tasks) and whether the viewer may screen the person."""

    patient_id: str
    flags: list[dict[str, Any]]
    tasks: list[dict[str, Any]]  # safety Tasks not acknowledged yet
    may_acknowledge: bool
    may_screen: bool

    @property
    def alert(self) -> bool:
        return bool(self.flags or self.tasks)


def _search_or_none(
    session: Session, resource_type: str, params: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """A guarded search, empty when the viewer may not search the type at all."""
    try:
        found, _, _ = guarded_search(session, resource_type, params)
    except AuthError as err:
        if err.status != 403:
            raise
        return []
    return found


def _suicide_risk(flag: Mapping[str, Any]) -> bool:
    return any(
        c.get("system") == SUICIDE_RISK["system"] and c.get("code") == SUICIDE_RISK["code"]
        for c in (flag.get("code") or {}).get("coding") or ()
    )


def record_section(
    web: WebServices, viewer: Viewer, patient_ids: Sequence[str]
) -> RecordSection | None:
    """What the patient record shows of mental health for the records ``patient_ids`` (those
    the viewer was shown); None for a viewer of no role of this screen."""
    if not patient_ids or not SCREEN.allowed(viewer):
        return None
    refs = ",".join(f"Patient/{p}" for p in patient_ids)
    with web.guarded(viewer), web.store.reading() as session:
        # R4 searches Flags by subject and date only: code and status are read here
        flags = [
            f
            for f in _search_or_none(session, "Flag", [("subject", refs), ("_count", "200")])
            if f.get("status") == "active" and _suicide_risk(f)
        ]
        tasks = _search_or_none(
            session,
            "Task",
            [
                ("subject", refs),
                ("code", f"{OUTREACH_SYSTEM}|{SAFETY_CODE}"),
                ("status", ",".join(OPEN_TASK)),
                ("_count", "50"),
            ],
        )
    return RecordSection(
        patient_id=patient_ids[0],
        flags=sorted(
            flags, key=lambda f: str((f.get("period") or {}).get("start", "")), reverse=True
        ),
        tasks=sorted(tasks, key=lambda t: str(t.get("authoredOn", "")), reverse=True),
        may_acknowledge=viewer.access.allows("Task", "u"),
        may_screen=viewer.access.allows("QuestionnaireResponse", "c"),
    )


def acknowledge(web: WebServices, viewer: Viewer, base: str, task_id: str) -> str:
    """Acknowledge a safety Task (status ``accepted``, a note of who and when) as the FHIR
    update interaction does, under the guard; returns the Task's patient id. A Task the viewer
    may not see is a 404; one acknowledged meanwhile a 409."""
    with web.guarded(viewer):

        def work(session: Session) -> str:
            stored = session.read("Task", task_id)
            task = stored.json()
            codes = {c.get("code") for c in (task.get("code") or {}).get("coding") or ()}
            if SAFETY_CODE not in codes:
                raise FhirError(404, f"Task/{task_id} is not a safety follow-up", "not-found")
            if task.get("status") not in OPEN_TASK:
                raise FhirError(409, f"Task/{task_id} is already {task.get('status')}", "conflict")
            now = _now()
            who = viewer.access.display_name or viewer.username
            task["status"] = ACKNOWLEDGED
            task["lastModified"] = now
            note = {"authorString": who, "time": now, "text": "Safety alert acknowledged"}
            task["note"] = [*(task.get("note") or []), note]
            ctx = ix.RequestContext(base, source=SOURCE)
            ix.update(session, "Task", task_id, task, ctx, f'W/"{stored.version}"')
            return str((task.get("for") or {}).get("reference", "")).removeprefix("Patient/")

        return web.store.write(work)


# -- the caseload and the review queue ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaseRow:
    """A person of the caseload, named by a registration the viewer may see."""

    row: RegistryRow
    patient_id: str
    name: str
    scores_shown: bool  # the viewer may see this person's scores (role and consent)


@dataclass(slots=True)
class Caseload:
    as_of: date
    scope: str  # "mine" | "facility"
    care_manager: str | None
    sort: str
    total: int
    rows: list[CaseRow]
    page: int
    pages: int
    seconds: float  # how long the registry took (reported on slow pages)


def urgency(row: RegistryRow, shown: bool = True) -> tuple[bool, bool, bool, int, str]:
    """Safety first, then needing psychiatric review, then overdue; then longest in care.
    ``shown``: the viewer may see the person's mental-health data; otherwise the safety and
    review flags do not move the row (its place would tell what the page hides)."""
    return (
        not (shown and row.safety),
        not (shown and row.needs_psychiatric_review),
        not row.overdue_contact,
        -row.weeks_in_care,
        row.person_id or row.patient_ids[0],
    )


def _by_weeks(row: RegistryRow) -> tuple[int, str]:
    return (-row.weeks_in_care, row.person_id or row.patient_ids[0])


def _rows(
    web: WebServices, viewer: Viewer, as_of: date, scope: str
) -> tuple[list[RegistryRow], str | None, float]:
    with web.guarded(viewer), web.store.reading() as session:
        manager = _practitioner(session, viewer) if scope == "mine" else None
    started = time.perf_counter()
    if manager:
        rows = caseload(web.store, as_of, care_manager=manager)
    else:
        rows = caseload(web.store, as_of, facility=_facility_id(viewer))
    return rows, manager, time.perf_counter() - started


def _with_visible_scores(session: Session, rows: Sequence[RegistryRow]) -> set[str]:
    """The patient ids among ``rows`` with a PHQ-9/GAD-7 score the guard shows the viewer (a
    consent restriction on PSY data hides them): one guarded ``_has`` search of the Patients
    (the guard applies to the reverse chain too), a few hundred persons at a time."""
    ids = sorted({p for r in rows for p in r.patient_ids})
    codes = f"{LOINC}|{PHQ9},{LOINC}|{GAD7}"
    seen: set[str] = set()
    for start in range(0, len(ids), SCORE_CHUNK):
        chunk = ids[start : start + SCORE_CHUNK]
        found = _search_or_none(
            session,
            "Patient",
            [
                ("_id", ",".join(chunk)),
                ("_has:Observation:subject:code", codes),
                ("_count", str(len(chunk))),
                ("_total", "none"),
            ],
        )
        seen |= {str(p["id"]) for p in found}
    return seen


def _shows_scores(row: RegistryRow, visible: set[str]) -> bool:
    measured = row.baseline_phq9 is not None or row.baseline_gad7 is not None
    return not measured or any(p in visible for p in row.patient_ids)


def _named(
    session: Session, viewer: Viewer, rows: list[RegistryRow], visible: set[str] | None
) -> list[CaseRow]:
    """The rows the viewer may see, each named by a visible registration (the viewer's own
    facility's first); ``visible``: the patients whose scores may be shown (None: nobody's)."""
    wanted = sorted({p for r in rows for p in r.patient_ids})
    if not wanted:
        return []
    found, _, _ = guarded_search(
        session, "Patient", [("_id", ",".join(wanted)), ("_count", str(len(wanted)))]
    )
    patients = {p["id"]: p for p in found}
    mine = f"Organization/{_facility_id(viewer)}"
    out = []
    for r in rows:
        seen = [patients[p] for p in r.patient_ids if p in patients]
        if not seen:
            continue  # a person the viewer may not see is not listed
        seen.sort(key=lambda p: (p.get("managingOrganization") or {}).get("reference") != mine)
        shown = visible is not None and _shows_scores(r, visible)
        out.append(CaseRow(r, str(seen[0]["id"]), person_name(seen[0]), shown))
    return out


def _caseload(
    web: WebServices, viewer: Viewer, as_of: date, scope: str, sort: str, page_no: int
) -> Caseload:
    rows, manager, seconds = _rows(web, viewer, as_of, scope)
    # one guard for the rest: it finds the facility's patients once
    with web.guarded(viewer) as guard, web.store.reading() as session:
        reach = guard.patients_in_scope()
        if reach is not None:
            rows = [r for r in rows if any(p in reach for p in r.patient_ids)]
        # whose flags may order the list and whose scores the page may show
        visible = _with_visible_scores(session, rows) if sees_scores(viewer) else None
        if sort == "urgency":
            shown = {id(r): visible is not None and _shows_scores(r, visible) for r in rows}
            rows = sorted(rows, key=lambda r: urgency(r, shown[id(r)]))
        else:
            rows = sorted(rows, key=_by_weeks)
        pages = max(1, -(-len(rows) // PAGE_SIZE))
        page_no = min(max(1, page_no), pages)
        chosen = rows[(page_no - 1) * PAGE_SIZE : page_no * PAGE_SIZE]
        named = _named(session, viewer, chosen, visible)
    return Caseload(
        as_of, "mine" if manager else "facility", manager, sort, len(rows), named, page_no,
        pages, seconds,
    )  # fmt: skip


def _review(web: WebServices, viewer: Viewer, as_of: date) -> tuple[list[CaseRow], str | None]:
    """The review queue of the viewer's facility; a person whose mental-health data the viewer
    may not see is not in it (their place in it would tell)."""
    rows = caseload(web.store, as_of, facility=_facility_id(viewer))
    with web.guarded(viewer) as guard, web.store.reading() as session:
        reach = guard.patients_in_scope()
        consultant = _practitioner(session, viewer)
        queue = [r for r in review_queue(rows) if reach is None or set(r.patient_ids) & reach]
        visible = _with_visible_scores(session, queue)
        queue = [r for r in queue if _shows_scores(r, visible)]
        return _named(session, viewer, queue[:PAGE_SIZE], visible), consultant


# -- pages ---------------------------------------------------------------------------------------


def _iso_date(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text or "")
    except ValueError:
        return None


def _safe_back(value: str | None, default: str) -> str:
    if value and value.startswith("/app/") and not value.startswith("/app//"):
        return value
    return default


def _caseload_link(scope: str, sort: str, as_of: date, n: int) -> str:
    query = {"scope": scope, "sort": sort, "on": as_of.isoformat(), "page": n}
    return "/app/mentalhealth?" + urlencode(query)


def _not_found(web: WebServices, viewer: Viewer, request: Request, what: str, rid: str) -> Response:
    web.audit_page(
        request, viewer, "read", status=404, resource_type=what, resource_id=rid,
        outcome_text="not found or hidden",
    )  # fmt: skip
    message = N_("There is nothing here that you may see.")
    return page(web, viewer, "frame/error.html", 404, status=404, message=message)


def _refused(web: WebServices, viewer: Viewer) -> Response:
    message = N_(
        "The mental health screens are for the clinicians and community health workers of a "
        "facility; the review queue is for clinicians."
    )
    return page(web, viewer, "frame/error.html", 403, status=403, message=message)


def _labels(viewer: Viewer) -> dict[str, Any]:
    gettext = translations(viewer.prefs.lang).gettext

    def band(display: str | None) -> str:
        return gettext(BAND_LABELS.get(display or "", display or ""))

    return {"status": {k: gettext(v) for k, v in STATUS_LABELS.items()}, "band": band}


def register(router: APIRouter, web: WebServices) -> None:
    _register_caseload(router, web)
    _register_screening(router, web)
    _register_safety(router, web)


def _register_caseload(router: APIRouter, web: WebServices) -> None:
    @router.get("/mentalhealth")
    async def caseload_page(request: Request) -> Response:
        viewer = web.viewer(request)
        if not SCREEN.allowed(viewer):
            return _refused(web, viewer)
        q = request.query_params
        as_of = _iso_date(q.get("on")) or date.today()
        scope = "facility" if q.get("scope") == "facility" else "mine"
        sort = q.get("sort") if q.get("sort") in SORTS else "urgency"
        page_no = int(q["page"]) if q.get("page", "").isdigit() else 1
        load = await run_in_threadpool(_caseload, web, viewer, as_of, scope, str(sort), page_no)
        web.audit_page(
            request, viewer, "search", resource_type="Patient",
            query=f"mh-caseload&scope={load.scope}&as-of={as_of.isoformat()}&page={load.page}",
            patient_ids=tuple(r.patient_id for r in load.rows),
        )  # fmt: skip
        return page(
            web, viewer, "mentalhealth/caseload.html", active=SCREEN.key,
            back=_caseload_link(load.scope, load.sort, as_of, load.page), load=load,
            scores=sees_scores(viewer), labels=_labels(viewer), tab="caseload",
            link=lambda **kw: _caseload_link(
                kw.get("scope", load.scope), kw.get("sort", load.sort), as_of, kw.get("n", 1)
            ),
        )  # fmt: skip

    @router.get("/mentalhealth/review")
    async def review_page(request: Request) -> Response:
        viewer = web.viewer(request)
        if not SCREEN.allowed(viewer) or not sees_scores(viewer):
            return _refused(web, viewer)
        as_of = _iso_date(request.query_params.get("on")) or date.today()
        queue, consultant = await run_in_threadpool(_review, web, viewer, as_of)
        web.audit_page(
            request, viewer, "search", resource_type="Patient",
            query=f"mh-review-queue&as-of={as_of.isoformat()}",
            patient_ids=tuple(r.patient_id for r in queue),
        )  # fmt: skip
        return page(
            web, viewer, "mentalhealth/review.html", active=SCREEN.key,
            back=f"/app/mentalhealth/review?on={as_of.isoformat()}", queue=queue,
            consultant=consultant, as_of=as_of, labels=_labels(viewer), tab="review", scores=True,
            recorded=request.query_params.get("recorded"),
        )  # fmt: skip

    @router.post("/mentalhealth/review/{patient_id}")
    async def recommend(patient_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        form = await read_form(request)
        web.check_csrf(request, viewer, form)
        if not SCREEN.allowed(viewer) or not sees_scores(viewer):
            return _refused(web, viewer)
        text = (form.get("recommendation") or "").strip()
        as_of = _iso_date(form.get("on")) or date.today()
        back = f"/app/mentalhealth/review?on={as_of.isoformat()}"
        with web.guarded(viewer), web.store.reading() as session:
            consultant = _practitioner(session, viewer)
        if not text or consultant is None:
            message = (
                N_("Write the recommendation before recording it.")
                if consultant
                else N_(
                    "Your login has no Practitioner record (identifier of your login), so the "
                    "review cannot name its consultant; ask an administrator to add one."
                )
            )
            return page(web, viewer, "frame/error.html", 400, status=400, message=message)

        def work() -> str:
            with web.guarded(viewer):
                return record_recommendation(web.store, patient_id, consultant, text)

        try:
            review_id = await run_in_threadpool(work)
        except (FhirError, AuthError) as err:
            if err.status not in (403, 404, 410):
                raise
            return _not_found(web, viewer, request, "Patient", patient_id)
        web.audit_page(
            request, viewer, "create", resource_type="ClinicalImpression",
            resource_id=review_id, patient_ids=(patient_id,),
        )  # fmt: skip
        return RedirectResponse(f"{back}&recorded={patient_id}", 303)


def _register_screening(router: APIRouter, web: WebServices) -> None:
    def show(
        request: Request, viewer: Viewer, screening: ScreeningPage, status: int = 200,
        problems: Problems | None = None, answers: Mapping[str, str] | None = None,
    ) -> Response:  # fmt: skip
        form = screening.form
        return page(
            web, viewer, "mentalhealth/screen.html", status, active=SCREEN.key,
            back=str(request.url.path) + (f"?instrument={form.instrument.id}" if form else ""),
            screening=screening, name=person_name(screening.patient), scores=sees_scores(viewer),
            bands=json.dumps(form.bands(viewer.prefs.lang)) if form else "[]",
            problems=problems or Problems(), answers=answers or {},
            stored=request.query_params.get("stored") == "1",
        )  # fmt: skip

    @router.get("/mentalhealth/screen/{patient_id}")
    async def screening_page(patient_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        if not SCREEN.allowed(viewer):
            return _refused(web, viewer)
        wanted = request.query_params.get("instrument")
        try:
            screening = await run_in_threadpool(_screening_page, web, viewer, patient_id, wanted)
        except (FhirError, AuthError) as err:
            if err.status not in (403, 404, 410):
                raise
            return _not_found(web, viewer, request, "Patient", patient_id)
        web.audit_page(
            request, viewer, "read", resource_type="Patient", resource_id=patient_id,
            patient_ids=(patient_id,), query=f"mh-screening&instrument={wanted or ''}",
        )  # fmt: skip
        return show(request, viewer, screening)

    @router.post("/mentalhealth/screen/{patient_id}")
    async def submit(patient_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        form = await read_form(request)
        web.check_csrf(request, viewer, form)
        if not SCREEN.allowed(viewer):
            return _refused(web, viewer)
        try:
            inst = instrument(form.get("instrument", ""))
        except FhirError:
            inst = instrument("phq-9")
        base = web.security.fhir_base(str(request.base_url))
        try:
            response_id, screening, problems = await run_in_threadpool(
                _submit, web, viewer, base, patient_id, inst, form
            )
        except (FhirError, AuthError) as err:
            if err.status in (404, 410):
                return _not_found(web, viewer, request, "Patient", patient_id)
            web.audit_page(
                request, viewer, "create", status=err.status,
                resource_type="QuestionnaireResponse", patient_ids=(patient_id,),
                outcome_text=str(err),
            )  # fmt: skip
            screening = await run_in_threadpool(_screening_page, web, viewer, patient_id, inst.id)
            problems = Problems()
            if err.status == 403:
                problems.add(N_("You may not record a screening for this person."))
            else:
                problems.add(N_("The record refused the response: %(reason)s"), reason=str(err))
            return show(request, viewer, screening, err.status, problems, form)
        if response_id is None:
            return show(request, viewer, screening, 422, problems, form)
        web.audit_page(
            request, viewer, "create", resource_type="QuestionnaireResponse",
            resource_id=response_id, patient_ids=(patient_id,),
        )  # fmt: skip
        if not sees_scores(viewer):
            # a community health worker does not read answers back (``roles.WITHHELD``): the
            # screening page says it is stored, and the record shows any follow-up due
            return RedirectResponse(f"/app/mentalhealth/screen/{patient_id}?stored=1", 303)
        return RedirectResponse(f"/app/mentalhealth/responses/{response_id}", 303)

    @router.get("/mentalhealth/responses/{response_id}")
    async def result_page(response_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        if not SCREEN.allowed(viewer):
            return _refused(web, viewer)
        try:
            result = await run_in_threadpool(_result, web, viewer, response_id)
        except (FhirError, AuthError) as err:
            if err.status not in (403, 404, 410):
                raise
            return _not_found(web, viewer, request, "QuestionnaireResponse", response_id)
        patient_id = str(result.patient["id"])
        web.audit_page(
            request, viewer, "read", resource_type="QuestionnaireResponse",
            resource_id=response_id, patient_ids=(patient_id,),
        )  # fmt: skip
        return page(
            web, viewer, "mentalhealth/result.html", active=SCREEN.key,
            back=f"/app/mentalhealth/responses/{response_id}", result=result,
            name=person_name(result.patient), scores=sees_scores(viewer), labels=_labels(viewer),
            mental_health=result.alert,
        )  # fmt: skip


def _register_safety(router: APIRouter, web: WebServices) -> None:
    @router.post("/mentalhealth/tasks/{task_id}/acknowledge")
    async def acknowledge_task(task_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        form = await read_form(request)
        web.check_csrf(request, viewer, form)
        if not SCREEN.allowed(viewer):
            return _refused(web, viewer)
        base = web.security.fhir_base(str(request.base_url))
        try:
            patient_id = await run_in_threadpool(acknowledge, web, viewer, base, task_id)
        except (FhirError, AuthError) as err:
            web.audit_page(
                request, viewer, "update", status=err.status, resource_type="Task",
                resource_id=task_id, outcome_text=str(err),
            )  # fmt: skip
            if err.status == 409:
                message = N_("Someone acknowledged this alert meanwhile; reload the page.")
                return page(web, viewer, "frame/error.html", 409, status=409, message=message)
            if err.status in (403, 404, 410):
                return _not_found(web, viewer, request, "Task", task_id)
            raise
        web.audit_page(
            request, viewer, "update", resource_type="Task", resource_id=task_id,
            patient_ids=(patient_id,), query="acknowledge",
        )  # fmt: skip
        back = _safe_back(form.get("back"), f"/app/patients/{patient_id}")
        return RedirectResponse(back, 303)
