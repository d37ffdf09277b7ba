"""Caregivers: the caregiver's view of the patient they act for, their own ZBI-12 burden
screen, and the facility's registry of caregivers at high burden (see ``docs/caregivers.md``).

- **Caregiver view** (``/app/caregivers``, role ``caregiver``): the patient the login acts for
  (its ``AccessContext.patient``): name, care due (open Tasks about the patient, overdue when
  past their due date), upcoming appointments, referrals under way and their status, active
  medications, and the caregiver's own burden screens. Only while the patient's Consent (or a
  legal authority) permits the login: the guard refuses every read otherwise, and the page then
  says so and shows nothing of the patient. Another patient is refused (403), audited.
- **Burden screen** (``/app/caregivers/burden/{RelatedPerson}``): the ZBI-12 answered by the
  caregiver as ``docs/caregivers.md`` specifies it (``subject`` the Patient cared for,
  ``source`` the RelatedPerson; ``author`` the RelatedPerson when the caregiver fills it in,
  the clinician's Practitioner when a clinician records it), stored through the FHIR create
  interaction under the viewer's guard, in one transaction with the score and, at high burden,
  the support ``ServiceRequest`` the caregivers hook proposes. The items show the wording the
  operator installed in the viewer's language, else their numbers (the ZBI is licensed).
- **Registry** (``/app/caregivers``, clinicians of a facility): ``caregivers.registry`` of the
  viewer's facility, each row shown only when the guard lets the viewer see the patient, the
  caregiver and their burden scores (a consent keeping ``PSY`` data from the facility hides
  the row: being on it is mental-health data); and a search of the facility's caregivers by
  name, to record a screen for one.

Every read goes through the viewer's ``AccessGuard`` and every page is audited.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from takamul.caregivers.burden import CAREGIVER_SYSTEM, OPEN, SUPPORT_CODE, caregiver_of, zbi12
from takamul.caregivers.registry import CaregiverRow, registry
from takamul.coordination.referrals import is_referral
from takamul.fhir.outcome import FhirError
from takamul.mentalhealth.scoring import derived_id, identify
from takamul.rest import interactions as ix
from takamul.security.audit import USER_SYSTEM
from takamul.security.consent import LOGIN_SYSTEM
from takamul.security.errors import AuthError
from takamul.store.repository import Session
from takamul.web.calendars import parse_date
from takamul.web.context import Screen, Viewer, WebServices, read_form
from takamul.web.i18n import N_, translations
from takamul.web.pages import page
from takamul.web.people import person_name
from takamul.web.record import guarded_search
from takamul.web.screens.mentalhealth import (
    Problems,
    ScreeningForm,
    build_response,
    screening_form,
)
from takamul.web.screens.registry import typed_date

__all__ = [
    "SCREEN",
    "CareSummary",
    "acts_for",
    "burden_response",
    "care_summary",
    "register",
]


def _caregiver(viewer: Viewer) -> bool:
    return "caregiver" in viewer.access.roles and bool(viewer.access.patient)


def _clinician(viewer: Viewer) -> bool:
    return "clinician" in viewer.access.roles and bool(viewer.access.facility)


SCREEN = Screen(
    "caregivers",
    "/caregivers",
    N_("Caregivers"),
    allowed=lambda viewer: _caregiver(viewer) or _clinician(viewer),
)
SOURCE = "urn:takamul:web:caregivers"
LIST_LIMIT = 100
FIND_LIMIT = 50
# a Task still to be done (FHIR Workflow): the care due, or a referral under way
OPEN_TASK = "draft,requested,received,accepted,ready,in-progress,on-hold"
UPCOMING = "proposed,pending,booked,arrived,checked-in,waitlist"
BAND_LABELS = {
    "below cut-off": N_("below cut-off"),
    "high caregiver burden": N_("high caregiver burden"),
}
REFERRAL_STATUS = {
    "draft": N_("Being prepared"),
    "requested": N_("Awaiting answer"),
    "received": N_("Awaiting answer"),
    "accepted": N_("Accepted"),
    "ready": N_("Accepted"),
    "in-progress": N_("In progress"),
    "on-hold": N_("On hold"),
}
SUPPORT_STATUS = {
    "draft": N_("Being prepared"),
    "active": N_("Proposed"),
    "on-hold": N_("On hold"),
    "completed": N_("Completed"),
    "revoked": N_("Withdrawn"),
}
NO_CONSENT = N_(
    "You may act for this person only while their consent (or a legal authority) permitting "
    "you is recorded and in force. None is in force now, so nothing of their record is shown. "
    "Ask their health facility to record the consent again."
)
OTHER_PATIENT = N_("Your login acts for one person only; this is not that person.")
REFUSED = N_(
    "The caregivers screens are for caregivers acting for a patient and for the clinicians of a "
    "facility."
)
NOT_FOUND = N_("There is nothing here that you may see.")
NO_RELATED_PERSON = N_(
    "The record does not name you as this person's caregiver yet (a RelatedPerson carrying your "
    "login). Ask their health facility to record you, then screen your burden here."
)


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _search(
    session: Session, resource_type: str, params: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """A guarded search; empty when the viewer's role does not search the type."""
    try:
        found, _, _ = guarded_search(session, resource_type, params)
    except (FhirError, AuthError) as err:
        if err.status != 403:
            raise
        return []
    return found


def _read(session: Session, resource_type: str, resource_id: str) -> dict[str, Any] | None:
    """A guarded read; None when the viewer may not see it (or it does not exist)."""
    try:
        body: dict[str, Any] = session.read(resource_type, resource_id).json()
    except (FhirError, AuthError) as err:
        if err.status not in (403, 404, 410):
            raise
        return None
    return body


def _ref_id(value: Any, resource_type: str) -> str | None:
    ref = value.get("reference") if isinstance(value, dict) else None
    if isinstance(ref, str) and ref.startswith(resource_type + "/"):
        return ref[len(resource_type) + 1 :] or None
    return None


def _concept_text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or ():
        if isinstance(coding, dict) and (coding.get("display") or coding.get("code")):
            return str(coding.get("display") or coding.get("code"))
    return ""


class ConsentMissing(Exception):
    """The caregiver's login may not act for the patient now (no consent in force)."""


# -- the caregiver's view ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CareDue:
    task_id: str
    what: str
    due: str | None  # YYYY-MM-DD
    overdue: bool
    status: str


@dataclass(frozen=True, slots=True)
class ReferralLine:
    task_id: str
    what: str
    to: str  # the facility that owns it, by name when the viewer may see it
    status: str
    authored: str | None


@dataclass(frozen=True, slots=True)
class BurdenLine:
    response_id: str
    authored: str | None
    total: int | None
    band: str | None


@dataclass(slots=True)
class CareSummary:
    patient: dict[str, Any]
    caregiver: dict[str, Any] | None  # the viewer's RelatedPerson, when the record names one
    care_due: list[CareDue] = field(default_factory=list)
    appointments: list[dict[str, Any]] = field(default_factory=list)
    referrals: list[ReferralLine] = field(default_factory=list)
    medications: list[dict[str, Any]] = field(default_factory=list)
    burden: list[BurdenLine] = field(default_factory=list)


def acts_for(web: WebServices, viewer: Viewer) -> None:
    """``ConsentMissing`` unless the guard lets the caregiver act for their patient now (the
    same check the API makes on every request of the login)."""
    with web.guarded(viewer) as guard:
        try:
            guard.require("Patient", "r")
        except (FhirError, AuthError) as err:
            if err.status != 403:
                raise
            raise ConsentMissing(str(err)) from err


def own_related_person(session: Session, viewer: Viewer, patient_id: str) -> dict[str, Any] | None:
    """The viewer's RelatedPerson for the patient: the one carrying the login's identifier
    (``LOGIN_SYSTEM``, as the Consent names the login, or the user system of Practitioners)."""
    who = viewer.username
    found = _search(
        session,
        "RelatedPerson",
        [
            ("patient", f"Patient/{patient_id}"),
            ("identifier", f"{LOGIN_SYSTEM}|{who},{USER_SYSTEM}|{who}"),
            ("_count", "2"),
        ],
    )
    return found[0] if found else None


def _organization_names(session: Session, refs: set[str]) -> dict[str, str]:
    ids = sorted(r.removeprefix("Organization/") for r in refs if r.startswith("Organization/"))
    if not ids:
        return {}
    found = _search(session, "Organization", [("_id", ",".join(ids)), ("_count", str(len(ids)))])
    return {f"Organization/{o['id']}": str(o.get("name") or o["id"]) for o in found}


def _care_and_referrals(
    session: Session, patient: str, today: date
) -> tuple[list[CareDue], list[ReferralLine]]:
    tasks = _search(
        session,
        "Task",
        [("patient", f"Patient/{patient}"), ("status", OPEN_TASK), ("_count", str(LIST_LIMIT))],
    )
    care: list[CareDue] = []
    referral_tasks = [t for t in tasks if is_referral(t)]
    for task in tasks:
        if is_referral(task):
            continue
        due = ((task.get("restriction") or {}).get("period") or {}).get("end")
        day = str(due)[:10] if due else None
        what = _concept_text(task.get("code")) or str(task.get("description") or "")
        overdue = day is not None and day < today.isoformat()
        care.append(CareDue(str(task["id"]), what, day, overdue, str(task.get("status"))))
    care.sort(key=lambda c: (not c.overdue, c.due or "9999", c.task_id))
    owners = {str((t.get("owner") or {}).get("reference") or "") for t in referral_tasks}
    names = _organization_names(session, owners)
    referrals = []
    for task in referral_tasks:
        focus = _ref_id(task.get("focus"), "ServiceRequest")
        request = _read(session, "ServiceRequest", focus) if focus else None
        owner = str((task.get("owner") or {}).get("reference") or "")
        what = _concept_text((request or {}).get("code")) or str(task.get("description") or "")
        referrals.append(
            ReferralLine(
                str(task["id"]),
                what,
                names.get(owner, (task.get("owner") or {}).get("display") or owner),
                str(task.get("status")),
                task.get("authoredOn"),
            )
        )
    referrals.sort(key=lambda r: str(r.authored or ""), reverse=True)
    return care, referrals


def _appointments(session: Session, patient: str, today: date) -> list[dict[str, Any]]:
    found = _search(
        session,
        "Appointment",
        [
            ("patient", f"Patient/{patient}"),
            ("date", f"ge{today.isoformat()}"),
            ("status", UPCOMING),
            ("_count", str(LIST_LIMIT)),
        ],
    )
    return sorted(found, key=lambda a: str(a.get("start") or ""))


def _medications(session: Session, patient: str) -> list[dict[str, Any]]:
    found = _search(
        session,
        "MedicationRequest",
        [("patient", f"Patient/{patient}"), ("status", "active"), ("_count", str(LIST_LIMIT))],
    )
    return sorted(found, key=lambda m: str(m.get("authoredOn") or ""), reverse=True)


def medication_text(request: Mapping[str, Any]) -> str:
    what = _concept_text(request.get("medicationCodeableConcept"))
    if not what:
        what = str((request.get("medicationReference") or {}).get("display") or "")
    return what


def dosage_text(request: Mapping[str, Any]) -> str:
    return "; ".join(
        str(d["text"])
        for d in request.get("dosageInstruction") or ()
        if isinstance(d, dict) and d.get("text")
    )


def _burden_of(session: Session, patient: str, caregiver: str) -> list[BurdenLine]:
    """The caregiver's own ZBI-12 screens for the patient, newest first, with their stored
    scores (read under the guard: a consent keeping PSY data away hides them)."""
    responses = _search(
        session,
        "QuestionnaireResponse",
        [
            ("subject", f"Patient/{patient}"),
            ("source", f"RelatedPerson/{caregiver}"),
            ("_count", str(LIST_LIMIT)),
        ],
    )
    mine = [r for r in responses if (i := identify(r)) is not None and i.id == zbi12().id]
    lines = []
    for response in mine:
        score = _read(session, "Observation", derived_id("mhs", str(response["id"])))
        total = (score or {}).get("valueInteger")
        band = zbi12().band(total).display if isinstance(total, int) else None
        lines.append(
            BurdenLine(
                str(response["id"]),
                response.get("authored"),
                total if isinstance(total, int) else None,
                band,
            )
        )
    lines.sort(key=lambda b: str(b.authored or ""), reverse=True)
    return lines


def care_summary(web: WebServices, viewer: Viewer, patient: str, today: date) -> CareSummary:
    """What the caregiver's view shows of ``patient``, every read under the viewer's guard;
    ``ConsentMissing`` when the guard refuses the login (no consent in force)."""
    acts_for(web, viewer)
    with web.guarded(viewer), web.store.reading() as session:
        body = session.read("Patient", patient).json()
        caregiver = own_related_person(session, viewer, patient)
        summary = CareSummary(body, caregiver)
        summary.care_due, summary.referrals = _care_and_referrals(session, patient, today)
        summary.appointments = _appointments(session, patient, today)
        summary.medications = _medications(session, patient)
        if caregiver is not None:
            summary.burden = _burden_of(session, patient, str(caregiver["id"]))
    return summary


# -- the burden screen ---------------------------------------------------------------------------


@dataclass(slots=True)
class BurdenPage:
    caregiver: dict[str, Any]  # the RelatedPerson
    patient: dict[str, Any]
    form: ScreeningForm


def _burden_page(web: WebServices, viewer: Viewer, caregiver_id: str) -> BurdenPage:
    """The form for ``caregiver_id``; a FhirError 404 when the viewer may not see the
    caregiver or their patient (or, for a caregiver's login, it is not their own record)."""
    if _caregiver(viewer):
        acts_for(web, viewer)
    with web.guarded(viewer), web.store.reading() as session:
        related = session.read("RelatedPerson", caregiver_id).json()
        patient_id = _ref_id(related.get("patient"), "Patient")
        if patient_id is None:
            raise FhirError(404, f"RelatedPerson/{caregiver_id} names no patient", "not-found")
        if _caregiver(viewer):
            own = own_related_person(session, viewer, patient_id)
            if own is None or own.get("id") != caregiver_id:
                raise FhirError(404, "not this login's caregiver record", "not-found")
        patient = session.read("Patient", patient_id).json()
        stored = _read(session, "Questionnaire", zbi12().id)
    return BurdenPage(related, patient, screening_form(zbi12(), stored, viewer.prefs.lang))


def _author(session: Session, viewer: Viewer, caregiver_id: str) -> dict[str, Any]:
    """Who recorded the answers: the caregiver themselves, else the clinician's Practitioner
    (by the login's identifier, as the other screens find it), else their name."""
    if _caregiver(viewer):
        return {"reference": f"RelatedPerson/{caregiver_id}"}
    display = viewer.access.display_name or viewer.username
    found = _search(
        session,
        "Practitioner",
        [("identifier", f"{USER_SYSTEM}|{viewer.username}"), ("_count", "1")],
    )
    if found:
        return {"reference": f"Practitioner/{found[0]['id']}", "display": display}
    return {"display": display}


def burden_response(
    form: ScreeningForm,
    answers: Mapping[str, str],
    patient_id: str,
    caregiver_id: str,
    author: Mapping[str, Any],
    authored: str,
) -> tuple[dict[str, Any], Problems]:
    """The ZBI-12 response of the answers typed: ``subject`` the patient cared for, ``source``
    the caregiver who answered (``docs/caregivers.md``), and what is wrong with it."""
    body, _, problems = build_response(form, answers, patient_id, author, authored)
    body["source"] = {"reference": f"RelatedPerson/{caregiver_id}"}
    return body, problems


def _submit(
    web: WebServices, viewer: Viewer, base: str, caregiver_id: str, answers: Mapping[str, str]
) -> tuple[str | None, BurdenPage, Problems]:
    screen = _burden_page(web, viewer, caregiver_id)
    patient_id = str(screen.patient["id"])
    with web.guarded(viewer):

        def work(session: Session) -> tuple[str | None, Problems]:
            author = _author(session, viewer, caregiver_id)
            body, problems = burden_response(
                screen.form, answers, patient_id, caregiver_id, author, _now()
            )
            if problems:
                return None, problems
            ctx = ix.RequestContext(base, source=SOURCE)
            stored = ix.create(session, "QuestionnaireResponse", body, ctx).stored
            assert stored is not None
            return stored.id, problems

        response_id, problems = web.store.write(work)
    return response_id, screen, problems


@dataclass(slots=True)
class BurdenResult:
    response: dict[str, Any]
    caregiver: dict[str, Any] | None
    patient: dict[str, Any]
    total: int | None
    band: str | None
    high: bool
    cutoff: int
    support: dict[str, Any] | None  # the open support referral for this caregiver, if any


def _support(session: Session, patient: str, caregiver: str) -> dict[str, Any] | None:
    """The caregiver's support referral the viewer may see: the open one, else the newest."""
    found = [
        r
        for r in _search(
            session,
            "ServiceRequest",
            [
                ("subject", f"Patient/{patient}"),
                ("code", f"{CAREGIVER_SYSTEM}|{SUPPORT_CODE}"),
                ("_count", str(LIST_LIMIT)),
            ],
        )
        if any(
            isinstance(s, dict) and s.get("reference") == f"RelatedPerson/{caregiver}"
            for s in r.get("supportingInfo") or ()
        )
    ]
    found.sort(key=lambda r: (r.get("status") in OPEN, str(r.get("authoredOn") or "")))
    return found[-1] if found else None


def _result(web: WebServices, viewer: Viewer, response_id: str) -> BurdenResult:
    """A stored burden screen; a FhirError 404 when it is no caregiver's ZBI-12 the viewer may
    see (a caregiver's login sees only its own)."""
    if _caregiver(viewer):
        acts_for(web, viewer)
    with web.guarded(viewer), web.store.reading() as session:
        response = session.read("QuestionnaireResponse", response_id).json()
        inst = identify(response)
        caregiver_id = caregiver_of(response)
        patient_id = _ref_id(response.get("subject"), "Patient")
        if inst is None or inst.id != zbi12().id or not caregiver_id or not patient_id:
            raise FhirError(404, f"QuestionnaireResponse/{response_id} is no burden screen")
        if _caregiver(viewer):
            own = own_related_person(session, viewer, patient_id)
            if own is None or own.get("id") != caregiver_id:
                raise FhirError(404, "another caregiver's screen", "not-found")
        patient = session.read("Patient", patient_id).json()
        caregiver = _read(session, "RelatedPerson", caregiver_id)
        score = _read(session, "Observation", derived_id("mhs", response_id))
        support = _support(session, patient_id, caregiver_id)
    value = (score or {}).get("valueInteger")
    total = value if isinstance(value, int) else None
    cut = zbi12().bands[-1].min
    band = zbi12().band(total).display if total is not None else None
    return BurdenResult(
        response, caregiver, patient, total, band, total is not None and total >= cut, cut, support
    )


# -- the facility's registry ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegistryLine:
    row: CaregiverRow
    caregiver_name: str
    patient_name: str


@dataclass(frozen=True, slots=True)
class FoundCaregiver:
    caregiver_id: str
    name: str
    patient_id: str
    patient_name: str
    relationship: str


def _facility(viewer: Viewer) -> str:
    return (viewer.access.facility or "").removeprefix("Organization/")


def _registry(web: WebServices, viewer: Viewer, as_of: date) -> list[RegistryLine]:
    """The facility's caregivers at high burden, each row only when the guard lets the viewer
    see the patient, the caregiver and the patient's burden scores."""
    rows = registry(web.store, _facility(viewer), as_of)
    if not rows:
        return []
    patients = sorted({r.patient_id for r in rows})
    carers = sorted({r.caregiver_id for r in rows})
    coding = zbi12().total_coding
    with web.guarded(viewer), web.store.reading() as session:
        seen = {
            p["id"]: p
            for p in _search(
                session, "Patient", [("_id", ",".join(patients)), ("_count", str(len(patients)))]
            )
        }
        related = {
            p["id"]: p
            for p in _search(
                session, "RelatedPerson", [("_id", ",".join(carers)), ("_count", str(len(carers)))]
            )
        }
        scored = {
            _ref_id(o.get("subject"), "Patient")
            for o in _search(
                session,
                "Observation",
                [
                    ("subject", ",".join(f"Patient/{p}" for p in seen)),
                    ("code", f"{coding['system']}|{coding['code']}"),
                    ("_count", "1000"),
                ],
            )
        } if seen else set()  # fmt: skip
    return [
        RegistryLine(r, person_name(related[r.caregiver_id]), person_name(seen[r.patient_id]))
        for r in rows
        if r.patient_id in seen and r.caregiver_id in related and r.patient_id in scored
    ]


def _shown(rows: list[RegistryLine], found: list[FoundCaregiver]) -> tuple[str, ...]:
    """The patients a registry page names, for its audit record."""
    return tuple(sorted({r.row.patient_id for r in rows} | {f.patient_id for f in found}))


def _relationship(related: Mapping[str, Any]) -> str:
    return ", ".join(_concept_text(c) for c in related.get("relationship") or () if c)


def _find(web: WebServices, viewer: Viewer, name: str) -> list[FoundCaregiver]:
    """Caregivers of the patients the viewer may see, by name (prefix, any script)."""
    params = [("_count", str(FIND_LIMIT)), ("_sort", "-_lastUpdated")]
    if name:
        params.append(("name", name))
    with web.guarded(viewer), web.store.reading() as session:
        found = _search(session, "RelatedPerson", params)
        ids = sorted({p for r in found if (p := _ref_id(r.get("patient"), "Patient"))})
        patients = (
            {
                p["id"]: p
                for p in _search(
                    session, "Patient", [("_id", ",".join(ids)), ("_count", str(len(ids)))]
                )
            }
            if ids
            else {}
        )
    out = []
    for r in found:
        pid = _ref_id(r.get("patient"), "Patient")
        if pid in patients:
            out.append(
                FoundCaregiver(
                    str(r["id"]), person_name(r), str(pid), person_name(patients[str(pid)]),
                    _relationship(r),
                )
            )  # fmt: skip
    return out


# -- pages ---------------------------------------------------------------------------------------


def _labels(viewer: Viewer) -> dict[str, Any]:
    gettext = translations(viewer.prefs.lang).gettext

    def band(display: str | None) -> str:
        return gettext(BAND_LABELS.get(display or "", display or ""))

    return {
        "band": band,
        "referral": {k: gettext(v) for k, v in REFERRAL_STATUS.items()},
        "support": {k: gettext(v) for k, v in SUPPORT_STATUS.items()},
    }


def _message(web: WebServices, viewer: Viewer, status: int, message: str, **ctx: Any) -> Response:
    return page(
        web, viewer, "caregivers/message.html", status, active=SCREEN.key, status=status,
        message=message, **ctx,
    )  # fmt: skip


def _as_of(viewer: Viewer, typed: str | None, on: str | None) -> date:
    """The registry's date: typed in the viewer's calendar (``as_of``), else ``on`` (ISO, as
    links carry it), else today."""
    iso = parse_date((typed or "").strip()[:40], viewer.prefs.calendar) if typed else None
    for text in (iso, on):
        try:
            return date.fromisoformat(text or "")
        except ValueError:
            continue
    return date.today()


def register(router: APIRouter, web: WebServices) -> None:
    _register_views(router, web)
    _register_burden(router, web)


def _register_views(router: APIRouter, web: WebServices) -> None:
    @router.get("/caregivers")
    async def home(request: Request) -> Response:
        viewer = web.viewer(request)
        if _caregiver(viewer):
            return await _caregiver_view(request, viewer, str(viewer.access.patient))
        if not _clinician(viewer):
            return _message(web, viewer, 403, REFUSED)
        q = request.query_params
        as_of = _as_of(viewer, q.get("as_of"), q.get("on"))
        name = (q.get("name") or "").strip()[:100]
        rows = await run_in_threadpool(_registry, web, viewer, as_of)
        found = await run_in_threadpool(_find, web, viewer, name)
        web.audit_page(
            request, viewer, "search", resource_type="RelatedPerson",
            query=f"caregiver-registry&as-of={as_of.isoformat()}&name={name}",
            patient_ids=_shown(rows, found),
        )  # fmt: skip
        return page(
            web, viewer, "caregivers/registry.html", active=SCREEN.key,
            back=f"/app/caregivers?on={as_of.isoformat()}", rows=rows, found=found, name=name,
            as_of=as_of, labels=_labels(viewer), typed=typed_date(as_of, viewer.prefs.calendar),
        )  # fmt: skip

    @router.get("/caregivers/for/{patient_id}")
    async def acting_for(patient_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        if not _caregiver(viewer):
            return _message(web, viewer, 403, REFUSED)
        return await _caregiver_view(request, viewer, patient_id)

    async def _caregiver_view(request: Request, viewer: Viewer, patient_id: str) -> Response:
        if patient_id != viewer.access.patient:
            web.audit_page(
                request, viewer, "read", status=403, resource_type="Patient",
                resource_id=patient_id, patient_ids=(patient_id,),
                outcome_text="a caregiver acts for one patient only",
            )  # fmt: skip
            return _message(web, viewer, 403, OTHER_PATIENT)
        try:
            summary = await run_in_threadpool(care_summary, web, viewer, patient_id, date.today())
        except ConsentMissing as err:
            web.audit_page(
                request, viewer, "read", status=403, resource_type="Patient",
                resource_id=patient_id, patient_ids=(patient_id,), outcome_text=str(err),
            )  # fmt: skip
            return _message(web, viewer, 403, NO_CONSENT, consent=True)
        except (FhirError, AuthError) as err:
            if err.status not in (403, 404, 410):
                raise
            web.audit_page(
                request, viewer, "read", status=404, resource_type="Patient",
                resource_id=patient_id, patient_ids=(patient_id,), outcome_text=str(err),
            )  # fmt: skip
            return _message(web, viewer, 404, NOT_FOUND)  # e.g. the record was deleted
        web.audit_page(
            request, viewer, "read", resource_type="Patient", resource_id=patient_id,
            patient_ids=(patient_id,), query="caregiver-view",
        )  # fmt: skip
        return page(
            web, viewer, "caregivers/view.html", active=SCREEN.key, back="/app/caregivers",
            summary=summary, name=person_name(summary.patient), labels=_labels(viewer),
            today=date.today().isoformat(), medication_text=medication_text,
            dosage_text=dosage_text,
        )  # fmt: skip


def _register_burden(router: APIRouter, web: WebServices) -> None:
    def show(
        request: Request, viewer: Viewer, screen: BurdenPage, status: int = 200,
        problems: Problems | None = None, answers: Mapping[str, str] | None = None,
    ) -> Response:  # fmt: skip
        gettext = translations(viewer.prefs.lang).gettext
        bands = [(b.min, gettext(BAND_LABELS.get(b.display, b.display))) for b in zbi12().bands]
        return page(
            web, viewer, "caregivers/burden.html", status, active=SCREEN.key,
            back=str(request.url.path), screen=screen, name=person_name(screen.patient),
            caregiver_name=person_name(screen.caregiver), bands=json.dumps(bands),
            self_report=_caregiver(viewer),
            problems=problems or Problems(), answers=answers or {}, cutoff=zbi12().bands[-1].min,
        )  # fmt: skip

    def refused(request: Request, viewer: Viewer, err: Exception, what: str, rid: str) -> Response:
        if isinstance(err, ConsentMissing):
            web.audit_page(
                request, viewer, "read", status=403, resource_type=what, resource_id=rid,
                patient_ids=(str(viewer.access.patient),), outcome_text=str(err),
            )  # fmt: skip
            return _message(web, viewer, 403, NO_CONSENT, consent=True)
        web.audit_page(
            request, viewer, "read", status=404, resource_type=what, resource_id=rid,
            outcome_text="not found or hidden",
        )  # fmt: skip
        return _message(web, viewer, 404, NOT_FOUND)

    @router.get("/caregivers/burden")
    async def own_form(request: Request) -> Response:
        viewer = web.viewer(request)
        if not _caregiver(viewer):
            return _message(web, viewer, 403, REFUSED)
        patient_id = str(viewer.access.patient)

        def find() -> dict[str, Any] | None:
            acts_for(web, viewer)
            with web.guarded(viewer), web.store.reading() as session:
                return own_related_person(session, viewer, patient_id)

        try:
            own = await run_in_threadpool(find)
        except ConsentMissing as err:
            return refused(request, viewer, err, "Patient", patient_id)
        if own is None:
            return _message(web, viewer, 404, NO_RELATED_PERSON)
        return RedirectResponse(f"/app/caregivers/burden/{own['id']}", 303)

    @router.get("/caregivers/burden/{caregiver_id}")
    async def form_page(caregiver_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        if not SCREEN.allowed(viewer):
            return _message(web, viewer, 403, REFUSED)
        try:
            screen = await run_in_threadpool(_burden_page, web, viewer, caregiver_id)
        except (ConsentMissing, FhirError, AuthError) as err:
            if isinstance(err, FhirError | AuthError) and err.status not in (403, 404, 410):
                raise
            return refused(request, viewer, err, "RelatedPerson", caregiver_id)
        web.audit_page(
            request, viewer, "read", resource_type="RelatedPerson", resource_id=caregiver_id,
            patient_ids=(str(screen.patient["id"]),), query="caregiver-burden-form",
        )  # fmt: skip
        return show(request, viewer, screen)

    @router.post("/caregivers/burden/{caregiver_id}")
    async def submit(caregiver_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        form = await read_form(request)
        web.check_csrf(request, viewer, form)
        if not SCREEN.allowed(viewer):
            return _message(web, viewer, 403, REFUSED)
        base = web.security.fhir_base(str(request.base_url))
        try:
            response_id, screen, problems = await run_in_threadpool(
                _submit, web, viewer, base, caregiver_id, form
            )
        except (ConsentMissing, FhirError, AuthError) as err:
            if isinstance(err, ConsentMissing) or err.status in (404, 410):
                return refused(request, viewer, err, "RelatedPerson", caregiver_id)
            web.audit_page(
                request, viewer, "create", status=err.status,
                resource_type="QuestionnaireResponse", outcome_text=str(err),
            )  # fmt: skip
            screen = await run_in_threadpool(_burden_page, web, viewer, caregiver_id)
            problems = Problems()
            if err.status == 403:
                problems.add(N_("You may not record a burden screen for this caregiver."))
            else:
                problems.add(N_("The record refused the response: %(reason)s"), reason=str(err))
            return show(request, viewer, screen, err.status, problems, form)
        patient_id = str(screen.patient["id"])
        if response_id is None:
            return show(request, viewer, screen, 422, problems, form)
        web.audit_page(
            request, viewer, "create", resource_type="QuestionnaireResponse",
            resource_id=response_id, patient_ids=(patient_id,),
        )  # fmt: skip
        return RedirectResponse(f"/app/caregivers/responses/{response_id}", 303)

    @router.get("/caregivers/responses/{response_id}")
    async def result_page(response_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        if not SCREEN.allowed(viewer):
            return _message(web, viewer, 403, REFUSED)
        try:
            result = await run_in_threadpool(_result, web, viewer, response_id)
        except (ConsentMissing, FhirError, AuthError) as err:
            if isinstance(err, FhirError | AuthError) and err.status not in (403, 404, 410):
                raise
            return refused(request, viewer, err, "QuestionnaireResponse", response_id)
        web.audit_page(
            request, viewer, "read", resource_type="QuestionnaireResponse",
            resource_id=response_id, patient_ids=(str(result.patient["id"]),),
        )  # fmt: skip
        return page(
            web, viewer, "caregivers/result.html", active=SCREEN.key,
            back=f"/app/caregivers/responses/{response_id}", result=result,
            name=person_name(result.patient),
            caregiver_name=person_name(result.caregiver) if result.caregiver else "",
            labels=_labels(viewer), self_report=_caregiver(viewer),
        )  # fmt: skip
