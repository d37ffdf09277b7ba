"""Patients: search (name in any script or spelling, national ID, phone, birth date in the
viewer's calendar; as you type) with results grouped by person, and the consolidated record
of one person with break-the-glass for clinicians.

Every resource shown comes from a search or read under the viewer's guard; the name finder
and the registry only propose patient ids, which the guarded search then filters.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy import Column, Float, MetaData, String, Table, delete, insert, select
from starlette.concurrency import run_in_threadpool

from takamul.careplans.record import CareSection, care_section
from takamul.fhir.outcome import FhirError
from takamul.mpi.stored_finder import StoredNameFinder
from takamul.registry.finder import LiveNameFinder, PatientFinder
from takamul.registry.record import from_patient
from takamul.security.context import MAX_REASON, MIN_REASON
from takamul.security.errors import AuthError
from takamul.store.repository import Session
from takamul.web.calendars import latin_digits, parse_date
from takamul.web.charts import LineChart, line_chart
from takamul.web.context import Screen, Viewer, WebServices, read_form
from takamul.web.i18n import N_, translations
from takamul.web.pages import fragment, page
from takamul.web.record import (
    ACTOR_LABELS,
    GAP_STATUS_LABELS,
    PROGRAMME_TITLES,
    STATUS_LABELS,
    PatientRecord,
    ProgrammeSection,
    guarded_search,
    load_record,
    may_see_programmes,
    organization_names,
    programme_section,
)
from takamul.web.render import Formatter
from takamul.web.screens.mentalhealth import record_section

__all__ = ["SCREEN", "register"]

SCREEN = Screen(
    "patients", "/patients", N_("Patients"), allowed=lambda v: v.access.allows("Patient", "s")
)
RESULTS = 25  # people on one page of results
CANDIDATES = 200  # patient ids the name finder proposes to the guarded search
GLASS_MINUTES = 60  # a broken glass stays open this long for that patient and session

_meta = MetaData()
# Break-the-glass grants of the web app: for one session and one patient, for an hour, with
# the reason stated; every page served under one is audited with that reason.
web_break_glass = Table(
    "web_break_glass",
    _meta,
    Column("session_hash", String(64), primary_key=True),
    Column("patient_id", String(64), primary_key=True),
    Column("reason", String(MAX_REASON), nullable=False),
    Column("expires", Float, nullable=False),
)


@dataclass
class Person:
    """One person in the results: the registrations of theirs the viewer may see."""

    key: str
    registrations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Results:
    people: list[Person]
    total: int
    problem: str | None = None  # a msgid saying what is wrong with the query
    more: bool = False
    organizations: dict[str, str] = field(default_factory=dict)  # reference -> name


def register(router: APIRouter, web: WebServices) -> None:
    _meta.create_all(web.store.writer)
    finder = _finder(web)

    @router.get("/patients")
    async def search_page(request: Request) -> Response:
        viewer = web.viewer(request)
        query = _query(request)
        results = await run_in_threadpool(_search, web, finder, viewer, query)
        if any(query.values()):
            _audit_search(web, request, viewer, results)
        return page(
            web, viewer, "patients/search.html", active=SCREEN.key, back="/app/patients",
            query=query, results=results,
        )  # fmt: skip

    @router.get("/patients/results")
    async def results_fragment(request: Request) -> Response:
        viewer = web.viewer(request)
        query = _query(request)
        results = await run_in_threadpool(_search, web, finder, viewer, query)
        if any(query.values()):
            _audit_search(web, request, viewer, results)
        return fragment(viewer, "patients/_results.html", query=query, results=results)

    @router.get("/patients/{patient_id}")
    async def record_page(patient_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        reason = _open_glass(web, viewer, patient_id)
        if reason is not None:
            viewer = web.viewer(request, break_glass=reason)
        return await run_in_threadpool(_record, web, request, viewer, patient_id)

    @router.post("/patients/{patient_id}/break-glass")
    async def break_glass(patient_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        form = await read_form(request)
        web.check_csrf(request, viewer, form)
        reason = " ".join(form.get("reason", "").split())
        if not viewer.access.has("break-glass"):
            return _not_found(web, viewer, patient_id, 403)
        if not MIN_REASON <= len(reason) <= MAX_REASON:
            return _not_found(web, viewer, patient_id, 400, reason_problem=True)
        _grant_glass(web, viewer, patient_id, reason)
        return RedirectResponse(f"/app/patients/{patient_id}", 303)


# -- search ---------------------------------------------------------------------------------


def _finder(web: WebServices) -> PatientFinder:
    """With the registry's index in the store, its words there (written as the registry links
    each Patient); else the names of every registration, built in the background and kept
    current by a write hook (after each commit)."""
    registry = web.registry
    if registry is not None and registry.stored is not None:
        return StoredNameFinder(web.store)
    finder = LiveNameFinder(registry.index.records if registry is not None else tuple)

    def follow(session: Session, rtype: str, rid: str, body: dict[str, Any] | None) -> None:
        if rtype != "Patient":
            return
        if body is None:
            session.after_commit.append(lambda: finder.remove(rid))
        else:
            record = from_patient(body)
            session.after_commit.append(lambda: finder.add(record))

    web.store.write_hooks.append(follow)
    finder.start()
    return finder


def _query(request: Request) -> dict[str, str]:
    q = request.query_params
    return {k: (q.get(k) or "").strip()[:200] for k in ("q", "born")}


def _digits(text: str) -> str:
    return "".join(ch for ch in latin_digits(text) if ch.isdigit())


def _search(
    web: WebServices, finder: PatientFinder, viewer: Viewer, query: dict[str, str]
) -> Results:
    text, born = query["q"], query["born"]
    if not text and not born:
        return Results([], 0)
    params: list[tuple[str, str]] = []
    if born:
        iso = parse_date(born, viewer.prefs.calendar)
        if iso is None:
            return Results([], 0, N_("The birth date is not a date of your calendar"))
        params.append(("birthdate", iso))
    digits = _digits(text)
    with web.guarded(viewer) as guard, web.store.reading() as session:
        if text and len(digits) >= 6 and len(digits) >= len(text.replace(" ", "")) - 1:
            found = _by_number(session, digits, params)
        elif text:
            # a facility's own patients first narrow the names (the guarded search decides)
            scope = guard.patients_in_scope()
            found = _by_name(session, finder, text, params, scope)
        else:
            found, _, _ = guarded_search(session, "Patient", [*params, ("_count", "1000")])
        results = _group(web, found)
        results.organizations = organization_names(
            session, (r for p in results.people for r in p.registrations)
        )
    return results


def _by_number(
    session: Session, digits: str, params: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """A national ID or a phone number: both are tried (a clerk types either into the box)."""
    phones = {digits, f"+{digits}"}
    if digits.startswith("0"):
        phones |= {f"+966{digits[1:]}", f"+98{digits[1:]}"}
    found: dict[str, dict[str, Any]] = {}
    for key, value in (("identifier", digits), ("phone", ",".join(sorted(phones)))):
        matches, _, _ = guarded_search(session, "Patient", [(key, value), *params])
        found.update((m["id"], m) for m in matches)
    return list(found.values())


def _by_name(
    session: Session,
    finder: PatientFinder,
    text: str,
    params: list[tuple[str, str]],
    scope: frozenset[str] | None,
) -> list[dict[str, Any]]:
    if not finder.usable():
        # no registry in this server: the FHIR name search (prefix, same script only)
        matches, _, _ = guarded_search(session, "Patient", [("name", text), *params])
        return matches
    ids = finder.find(text, limit=CANDIDATES, within=scope)
    if not ids:
        return []
    order = {pid: n for n, pid in enumerate(ids)}
    matches, _, _ = guarded_search(
        session, "Patient", [("_id", ",".join(ids)), ("_count", str(len(ids))), *params]
    )
    return sorted(matches, key=lambda m: order.get(m["id"], len(order)))


def _group(web: WebServices, found: list[dict[str, Any]]) -> Results:
    people: dict[str, Person] = {}
    for patient in found:
        person = web.registry.person_of(patient["id"]) if web.registry else None
        key = person or f"Patient/{patient['id']}"
        people.setdefault(key, Person(key)).registrations.append(patient)
    listed = list(people.values())
    return Results(listed[:RESULTS], len(listed), more=len(listed) > RESULTS)


def _audit_search(web: WebServices, request: Request, viewer: Viewer, results: Results) -> None:
    shown = tuple(r["id"] for p in results.people for r in p.registrations)
    web.audit_page(
        request, viewer, "search", resource_type="Patient", patient_ids=shown,
        query=str(request.url.query) or None,
    )  # fmt: skip


# -- the record -----------------------------------------------------------------------------


def _record(web: WebServices, request: Request, viewer: Viewer, patient_id: str) -> Response:
    person = web.registry.person_of(patient_id) if web.registry else None
    members = _members(web, person)
    try:
        with web.guarded(viewer), web.store.reading() as session:
            record = load_record(session, patient_id, members, person)
            care = _care(session, record)
    except (FhirError, AuthError) as err:
        if err.status not in (403, 404, 410):
            raise
        web.audit_page(
            request, viewer, "read", status=404, resource_type="Patient",
            resource_id=patient_id, patient_ids=(patient_id,), outcome_text="not found or hidden",
        )  # fmt: skip
        return _not_found(web, viewer, patient_id, 404)
    shown = tuple(r["id"] for r in record.registrations)
    web.audit_page(
        request, viewer, "read", resource_type="Patient", resource_id=patient_id,
        patient_ids=shown,
    )  # fmt: skip
    return page(
        web, viewer, "patients/record.html", active=SCREEN.key,
        back=f"/app/patients/{patient_id}", record=record, charts=_charts(viewer, record),
        programmes=_programmes(web, viewer, patient_id),
        programme_labels=_programme_labels(web, viewer),
        programme_chart=any(s.key == "registry" and s.allowed(viewer) for s in web.screens),
        mental_health=record_section(web, viewer, shown),  # safety alert (screens/mentalhealth)
        care=care, care_labels=_care_labels(viewer),
    )  # fmt: skip


def _programmes(web: WebServices, viewer: Viewer, patient_id: str) -> ProgrammeSection | None:
    """The care programmes section: after the Patient was read under the viewer's guard, and
    only for a role that reads diagnoses and measurements."""
    if web.programmes is None or not may_see_programmes(viewer.access.allows):
        return None
    return programme_section(web.programmes, patient_id, date.today())


def _programme_labels(web: WebServices, viewer: Viewer) -> dict[str, Any]:
    """Programme and measure titles in the viewer's language where the catalog's English text
    is a packaged one (a ministry's own titles are shown as written); status names."""
    gettext = translations(viewer.prefs.lang).gettext
    titles: dict[str, str] = {}
    if web.programmes is not None:
        for p in web.programmes.catalog.programmes:
            packaged = PROGRAMME_TITLES.get(p.id) == p.title
            titles[p.id] = gettext(p.title) if packaged else p.title
    return {
        "programmes": titles,
        "measure": gettext,  # msgids of the packaged measure titles are in record.py
        "status": {k: gettext(v) for k, v in STATUS_LABELS.items()},
        "gap": {k: gettext(v) for k, v in GAP_STATUS_LABELS.items()},
        "by": {k: gettext(v) for k, v in ACTOR_LABELS.items()},
    }


def _care(session: Session, record: PatientRecord) -> CareSection:
    """The person's active care plans and current care teams, read under the viewer's guard
    (a facility that is not on the person's team reaches neither: the record is a 404)."""
    refs = ",".join(f"Patient/{r['id']}" for r in record.registrations)
    return care_section(session, refs, record.care_teams, time.time())


# what the care plan and team show, in the viewer's language (codes not listed show as coded)
GOAL_MEASURES = {
    "8480-6": N_("Systolic blood pressure"),
    "8462-4": N_("Diastolic blood pressure"),
    "4548-4": N_("HbA1c"),
    "1558-6": N_("Fasting glucose"),
    "2345-7": N_("Random glucose"),
}
ACHIEVEMENT_LABELS = {
    "achieved": N_("Achieved"),
    "not-achieved": N_("Not achieved"),
    "in-progress": N_("In progress"),
    "improving": N_("Improving"),
    "worsening": N_("Worsening"),
    "no-change": N_("No change"),
    "sustaining": N_("Sustaining"),
    "no-progress": N_("No progress"),
    "not-attainable": N_("Not attainable"),
}
LIFECYCLE_LABELS = {
    "active": N_("Active"),
    "on-hold": N_("On hold"),
    "proposed": N_("Proposed"),
    "planned": N_("Planned"),
    "accepted": N_("Accepted"),
    "completed": N_("Completed"),
    "cancelled": N_("Cancelled"),
}
ACTIVITY_LABELS = {  # CarePlan activity statuses and the Task statuses of worklist activities
    "not-started": N_("Not started (overdue)"),
    "scheduled": N_("Scheduled"),
    "in-progress": N_("In progress"),
    "on-hold": N_("On hold"),
    "completed": N_("Completed"),
    "cancelled": N_("Cancelled"),
    "stopped": N_("Stopped"),
    "requested": N_("On the worklist"),
    "accepted": N_("Accepted"),
    "ready": N_("Ready"),
    "failed": N_("Failed"),
    "rejected": N_("Rejected"),
}
MEMBER_KINDS = {
    "Organization": N_("Facility"),
    "Practitioner": N_("Practitioner"),
    "PractitionerRole": N_("Practitioner"),
    "RelatedPerson": N_("Family member or carer"),
    "Patient": N_("The patient"),
    "CareTeam": N_("Team"),
}


def _care_labels(viewer: Viewer) -> dict[str, Any]:
    gettext = translations(viewer.prefs.lang).gettext
    return {
        name: {k: gettext(v) for k, v in table.items()}
        for name, table in (
            ("measure", GOAL_MEASURES),
            ("achievement", ACHIEVEMENT_LABELS),
            ("lifecycle", LIFECYCLE_LABELS),
            ("activity", ACTIVITY_LABELS),
            ("kind", MEMBER_KINDS),
        )
    }


def _members(web: WebServices, person: str | None) -> list[str]:
    if web.registry is None or person is None:
        return []
    # the registry's membership, all of it, as every server process has committed it; the
    # guarded search then filters it
    return web.registry.members_of(person)


def _charts(viewer: Viewer, record: PatientRecord) -> list[Any]:
    gettext = translations(viewer.prefs.lang).gettext
    fmt = Formatter(viewer.prefs)

    def label_date(iso: str) -> str:
        shown = fmt.date(iso)
        return str(shown.striptags()) if shown else iso

    out = []
    for n, trend in enumerate(record.trends):
        chart = LineChart(
            gettext(trend.spec.label),
            trend.spec.unit,
            {gettext(name): points for name, points in trend.series.items()},
        )
        out.append((chart.title, line_chart(chart, f"trend-{n}", label_date, fmt.num)))
    return out


def _not_found(
    web: WebServices, viewer: Viewer, patient_id: str, status: int, reason_problem: bool = False
) -> Response:
    """The same page for a patient that does not exist and one the viewer may not see; a
    clinician may break the glass from it (which says nothing about existence either)."""
    return page(
        web, viewer, "patients/not_found.html", status, active=SCREEN.key,
        patient_id=patient_id, may_break_glass=viewer.access.has("break-glass"),
        reason_problem=reason_problem, min_reason=MIN_REASON,
    )  # fmt: skip


# -- break the glass ------------------------------------------------------------------------


def _session_hash(viewer: Viewer) -> str:
    return hashlib.sha256(b"takamul-glass\x00" + viewer.session.encode()).hexdigest()


def _grant_glass(web: WebServices, viewer: Viewer, patient_id: str, reason: str) -> None:
    key = _session_hash(viewer)
    with web.store.writer.connect() as conn, conn.begin():
        conn.execute(
            delete(web_break_glass).where(
                (web_break_glass.c.session_hash == key)
                & (web_break_glass.c.patient_id == patient_id)
            )
        )
        conn.execute(
            insert(web_break_glass).values(
                session_hash=key, patient_id=patient_id, reason=reason,
                expires=time.time() + GLASS_MINUTES * 60,
            )
        )  # fmt: skip


def _open_glass(web: WebServices, viewer: Viewer, patient_id: str) -> str | None:
    if not viewer.access.has("break-glass"):
        return None
    with web.store.reader.connect() as conn:
        row = conn.execute(
            select(web_break_glass.c.reason).where(
                (web_break_glass.c.session_hash == _session_hash(viewer))
                & (web_break_glass.c.patient_id == patient_id)
                & (web_break_glass.c.expires > time.time())
            )
        ).first()
    return None if row is None else str(row.reason)
