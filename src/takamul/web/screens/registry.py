"""Care programmes: the registry of the viewer's facility (HEARTS/Simple), and a person's control
chart.

- **Registry** (``/app/registry``): for one programme and an as-of date (in the viewer's
  calendar), the count of persons by status, the control rate as HEARTS reports it (controlled
  over the persons registered for 3 months or more), and the overdue list: persons past their
  follow-up date, high risk first, then the most overdue, 50 a page. The statuses are
  ``Programmes.statuses(..., facility=...)``: the persons whose responsible facility is the
  viewer's (every record of a person counts, whichever facility made it).
- **Control chart** (``/app/registry/{patient}/chart``): the person's blood pressure or glucose
  series with the programme's targets.

Access: counts are aggregates of the facility's registry; every row of the overdue list names a
person, so it lists only the Patient records the viewer's guard lets through (a guarded
``Patient?_id=`` search for the page), and the chart reads the Patient through the guarded
session first (a hidden or missing one gives the patients screen's "not found" page). The chart
draws the measurements of the person's records the viewer may see: a registration hidden from
the viewer adds nothing to the page, as on the record page. Every page is audited.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import urlencode

import jdatetime
from fastapi import APIRouter, Request, Response
from hijridate import Gregorian
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from takamul.fhir.outcome import FhirError
from takamul.programmes.definitions import Programme
from takamul.programmes.facts import BP, GLUCOSE, Fact, from_day
from takamul.programmes.status import PersonStatus, person_facts, person_records
from takamul.security.context import MIN_REASON
from takamul.security.errors import AuthError
from takamul.store.repository import Session
from takamul.web.calendars import parse_date
from takamul.web.charts import LineChart, line_chart
from takamul.web.context import Screen, Viewer, WebServices
from takamul.web.i18n import N_, translations
from takamul.web.pages import page
from takamul.web.people import person_name
from takamul.web.record import PROGRAMME_TITLES, STATUS_LABELS, guarded_search
from takamul.web.render import Formatter
from takamul.web.screens.worklist import age_on

__all__ = ["PAGE_SIZE", "SCREEN", "Registry", "control_rate", "register", "typed_date"]

ROLES = frozenset({"clinician", "community-health-worker", "care-coordinator"})
SCREEN = Screen(
    "registry",
    "/registry",
    N_("Care programmes"),
    # the registry is a facility's: a login without one has none to show
    allowed=lambda viewer: bool(ROLES & viewer.access.roles) and bool(viewer.access.facility),
)
PAGE_SIZE = 50
CHART_POINTS = 120  # the newest readings of a series; a person followed for decades has more
# the statuses a programme's registry shows, in the HEARTS report's order
WITH_TARGET = (
    "controlled",
    "uncontrolled",
    "visited-no-measurement",
    "missed-visit",
    "lost-to-follow-up",
    "registered-recently",
)
WITHOUT_TARGET = ("visited", "missed-visit", "lost-to-follow-up", "registered-recently")
GLUCOSE_SERIES = {"fasting-glucose": N_("Fasting glucose"), "random-glucose": N_("Random glucose")}


@dataclass(frozen=True, slots=True)
class OverdueRow:
    """A person on the overdue list, named by a registration the viewer may see."""

    status: PersonStatus
    patient_id: str
    name: str
    birth_date: str | None
    age: int | None
    phone: str | None


@dataclass
class Registry:
    """What the registry page shows."""

    programme: Programme
    as_of: date
    counts: list[tuple[str, int]]
    registered: int
    rate: float | None  # controlled / (registered - registered recently); None: no denominator
    controlled: int
    denominator: int
    overdue_total: int  # overdue persons the viewer may see
    high_risk: int
    rows: list[OverdueRow] = field(default_factory=list)
    page: int = 1
    pages: int = 1


def control_rate(rows: list[PersonStatus]) -> tuple[int, int, float | None]:
    """(controlled, denominator, rate) as HEARTS reports it: persons registered less than 3
    months ago are not yet expected to be controlled, so they leave the denominator."""
    controlled = sum(1 for r in rows if r.status == "controlled")
    denominator = sum(1 for r in rows if r.in_control_denominator)
    return controlled, denominator, (controlled / denominator if denominator else None)


def typed_date(day: date, calendar: str) -> str:
    """``day`` as a person types it in their calendar (year-month-day, Western digits; the
    date inputs take any digits), for a form's value."""
    if calendar == "hijri":
        try:
            h = Gregorian(day.year, day.month, day.day).to_hijri()
            return f"{h.year:04d}-{h.month:02d}-{h.day:02d}"
        except (OverflowError, ValueError):
            return day.isoformat()
    if calendar == "jalali":
        j = jdatetime.date.fromgregorian(date=day)
        return f"{j.year:04d}-{j.month:02d}-{j.day:02d}"
    return day.isoformat()


def _facility_id(viewer: Viewer) -> str:
    return (viewer.access.facility or "").removeprefix("Organization/")


def _overdue_order(row: PersonStatus) -> tuple[bool, int, str]:
    return (row.risk != "high", -row.overdue_days, row.person_id or row.patient_ids[0])


def _registry(
    web: WebServices, viewer: Viewer, programme: Programme, as_of: date, page_no: int
) -> Registry:
    assert web.programmes is not None
    # kept between views and brought up to date with the changes since (not recomputed)
    rows = web.programmes.facility_statuses(_facility_id(viewer), programme.id, as_of)
    by_status = Counter(r.status for r in rows)
    shown = WITH_TARGET if programme.control is not None else WITHOUT_TARGET
    controlled, denominator, rate = control_rate(rows)
    overdue = sorted((r for r in rows if r.overdue_days > 0), key=_overdue_order)
    with web.guarded(viewer) as guard, web.store.reading() as session:
        # the facility's reachable patients narrow the list before paging (consent is
        # decided by the guarded search of the page's records)
        scope = guard.patients_in_scope()
        if scope is not None:
            overdue = [r for r in overdue if any(p in scope for p in r.patient_ids)]
        pages = max(1, -(-len(overdue) // PAGE_SIZE))
        page_no = min(max(1, page_no), pages)
        chosen = overdue[(page_no - 1) * PAGE_SIZE : page_no * PAGE_SIZE]
        wanted = sorted({p for r in chosen for p in r.patient_ids if scope is None or p in scope})
        visible = _visible_patients(session, wanted)
    found = [row for r in chosen if (row := _overdue_row(r, visible, viewer)) is not None]
    return Registry(
        programme=programme,
        as_of=as_of,
        counts=[(s, by_status.get(s, 0)) for s in shown],
        registered=len(rows),
        rate=rate,
        controlled=controlled,
        denominator=denominator,
        overdue_total=len(overdue),
        high_risk=sum(1 for r in overdue if r.risk == "high"),
        rows=found,
        page=page_no,
        pages=pages,
    )


def _visible_patients(session: Session, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The Patients of ``ids`` the session's guard lets through (one guarded search)."""
    if not ids:
        return {}
    found, _, _ = guarded_search(
        session, "Patient", [("_id", ",".join(ids)), ("_count", str(len(ids))), ("_total", "none")]
    )
    return {p["id"]: p for p in found}


def _overdue_row(
    status: PersonStatus, visible: dict[str, dict[str, Any]], viewer: Viewer
) -> OverdueRow | None:
    mine = f"Organization/{_facility_id(viewer)}"
    seen = [visible[p] for p in status.patient_ids if p in visible]
    if not seen:
        return None  # a person the viewer may not see is not listed
    # the viewer's own facility's registration names the person when there is one
    seen.sort(key=lambda p: (p.get("managingOrganization") or {}).get("reference") != mine)
    patient = seen[0]
    born = patient.get("birthDate")
    phones = [t for t in patient.get("telecom") or () if t.get("system") == "phone"]
    return OverdueRow(
        status=status,
        patient_id=str(patient["id"]),
        name=person_name(patient),
        birth_date=born,
        age=age_on(born, date.today()),
        phone=str(phones[0]["value"]) if phones and phones[0].get("value") else None,
    )


# -- the control chart ------------------------------------------------------------------------


@dataclass
class ControlChart:
    """One person's control chart page."""

    patient: dict[str, Any]
    programme: Programme
    statuses: list[PersonStatus]
    charts: list[tuple[str, Markup]]
    readings: list[tuple[str, str, str]]  # (ISO date, what, value text), newest first


def _series(facts: list[Fact]) -> tuple[list[Fact], dict[str, list[Fact]]]:
    bps = sorted((f for f in facts if f.kind == BP and f.day is not None and f.v1 and f.v2),
                 key=lambda f: f.day or 0)  # fmt: skip
    glucose: dict[str, list[Fact]] = {}
    for f in sorted(facts, key=lambda f: f.day or 0):
        if f.kind == GLUCOSE and f.day is not None and f.v1 is not None and f.code:
            glucose.setdefault(f.code, []).append(f)
    return bps[-CHART_POINTS:], {k: v[-CHART_POINTS:] for k, v in glucose.items()}


def _iso(f: Fact) -> str:
    day = from_day(f.day)
    assert day is not None
    return day.isoformat()


def _control_chart(
    web: WebServices, viewer: Viewer, patient_id: str, programme: Programme
) -> ControlChart:
    """The chart of the person behind ``patient_id``; FhirError 404 when the viewer may not
    see that Patient (as when it does not exist)."""
    assert web.programmes is not None
    records = person_records(web.store, [patient_id])
    with web.guarded(viewer), web.store.reading() as session:
        patient = session.read("Patient", patient_id).json()
        visible = _visible_patients(session, sorted(set(records) | {patient_id}))
    facts = person_facts(web.store, visible)
    statuses = web.programmes.person([patient_id], date.today())
    gettext = translations(viewer.prefs.lang).gettext
    fmt = Formatter(viewer.prefs)

    def label_date(iso: str) -> str:
        return str(fmt.date(iso).striptags()) or iso

    def target(value: float) -> tuple[str, float]:
        shown = f"{value:g}"
        return gettext("Target %(value)s") % {"value": fmt.num(shown)}, value

    catalog = web.programmes.catalog
    bp_control = (
        programme.control
        if programme.control is not None and programme.control.measure == "blood-pressure"
        else catalog.programme("hypertension").control
    )
    diabetes = catalog.programme("diabetes").control
    bps, glucose = _series(facts)
    charts: list[tuple[str, Markup]] = []
    readings: list[tuple[str, str, str]] = []
    if bps:
        title = gettext("Blood pressure")
        targets: tuple[tuple[str, float], ...] = (
            (target(bp_control.systolic_below), target(bp_control.diastolic_below))
            if bp_control
            else ()
        )
        chart = LineChart(
            title,
            "mmHg",
            {
                gettext("Systolic"): [(_iso(f), float(f.v1 or 0)) for f in bps],
                gettext("Diastolic"): [(_iso(f), float(f.v2 or 0)) for f in bps],
            },
            targets,
        )
        charts.append((title, line_chart(chart, "control-bp", label_date, fmt.num)))
        readings += [(_iso(f), title, f"{f.v1:g}/{f.v2:g} mmHg") for f in bps]
    if "hba1c" in glucose:
        title = gettext("HbA1c")
        points = glucose["hba1c"]
        chart = LineChart(
            title,
            "%",
            {title: [(_iso(f), float(f.v1 or 0)) for f in points]},
            (target(diabetes.hba1c_below),) if diabetes else (),
        )
        charts.append((title, line_chart(chart, "control-hba1c", label_date, fmt.num)))
        readings += [(_iso(f), title, f"{f.v1:g} %") for f in points]
    others = {k: v for k, v in glucose.items() if k in GLUCOSE_SERIES}
    if others:
        title = gettext("Blood glucose")
        targets = ()
        if diabetes:
            targets = tuple(
                target(limit)
                for key, limit in (
                    ("fasting-glucose", diabetes.fasting_below),
                    ("random-glucose", diabetes.random_below),
                )
                if key in others
            )
        chart = LineChart(
            title,
            "mg/dL",
            {
                gettext(GLUCOSE_SERIES[k]): [(_iso(f), float(f.v1 or 0)) for f in v]
                for k, v in others.items()
            },
            targets,
        )
        charts.append((title, line_chart(chart, "control-glucose", label_date, fmt.num)))
        readings += [
            (_iso(f), gettext(GLUCOSE_SERIES[k]), f"{f.v1:g} mg/dL")
            for k, v in others.items()
            for f in v
        ]
    readings.sort(key=lambda r: r[0], reverse=True)
    return ControlChart(patient, programme, statuses, charts, readings)


# -- pages ------------------------------------------------------------------------------------


def register(router: APIRouter, web: WebServices) -> None:
    @router.get("/registry")
    async def registry_page(request: Request) -> Response:
        viewer = web.viewer(request)
        if not SCREEN.allowed(viewer):
            return _refused(web, viewer)
        if web.programmes is None:
            return _refused(web, viewer, 503)
        catalog = web.programmes.catalog
        q = request.query_params
        ids = [p.id for p in catalog.programmes]
        wanted = q.get("programme") or ""
        programme = catalog.programme(wanted if wanted in ids else ids[0])
        typed = (q.get("as_of") or "").strip()[:40]
        problem = None
        as_of = _iso_date(q.get("on")) or date.today()
        if typed:
            # typed in the viewer's calendar; links and the language switch carry ``on`` (ISO),
            # which does not change meaning when the calendar does
            iso = parse_date(typed, viewer.prefs.calendar)
            if iso is None:
                problem = N_("The date is not a date of your calendar")
            else:
                as_of = date.fromisoformat(iso)
        page_no = int(q["page"]) if q.get("page", "").isdigit() else 1
        registry = await run_in_threadpool(_registry, web, viewer, programme, as_of, page_no)
        web.audit_page(
            request,
            viewer,
            "search",
            resource_type="Patient",
            query=(
                f"programme={programme.id}&as-of={as_of.isoformat()}"
                f"&facility={_facility_id(viewer)}&page={registry.page}"
            ),
            patient_ids=tuple(r.patient_id for r in registry.rows),
        )
        return page(
            web,
            viewer,
            "registry/registry.html",
            active=SCREEN.key,
            back=_page_link(programme.id, as_of, registry.page),
            registry=registry,
            programmes=[(p.id, _title(viewer, p)) for p in catalog.programmes],
            title=_title(viewer, programme),
            status_labels=STATUS_LABELS,
            typed=typed if problem else typed_date(as_of, viewer.prefs.calendar),
            problem=problem,
            page_link=lambda n: _page_link(programme.id, as_of, n),
        )

    @router.get("/registry/{patient_id}/chart")
    async def chart_page(patient_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        if not SCREEN.allowed(viewer):
            return _refused(web, viewer)
        if web.programmes is None:
            return _refused(web, viewer, 503)
        catalog = web.programmes.catalog
        wanted = request.query_params.get("programme")
        ids = [p.id for p in catalog.programmes]
        programme = catalog.programme(wanted if wanted in ids else ids[0])
        try:
            chart = await run_in_threadpool(_control_chart, web, viewer, patient_id, programme)
        except (FhirError, AuthError) as err:
            if err.status not in (403, 404, 410):
                raise
            web.audit_page(
                request, viewer, "read", status=404, resource_type="Patient",
                resource_id=patient_id, patient_ids=(patient_id,),
                outcome_text="not found or hidden",
            )  # fmt: skip
            # the patients screen's page, word for word: hidden and missing look the same
            return page(
                web, viewer, "patients/not_found.html", 404, active=SCREEN.key,
                patient_id=patient_id, may_break_glass=viewer.access.has("break-glass"),
                reason_problem=False, min_reason=MIN_REASON,
            )  # fmt: skip
        web.audit_page(
            request,
            viewer,
            "read",
            resource_type="Patient",
            resource_id=patient_id,
            patient_ids=(patient_id,),
            query=f"control-chart&programme={programme.id}",
        )
        return page(
            web,
            viewer,
            "registry/chart.html",
            active=SCREEN.key,
            back=f"/app/registry/{patient_id}/chart?programme={programme.id}",
            chart=chart,
            name=person_name(chart.patient),
            title=_title(viewer, programme),
            titles={p.id: _title(viewer, p) for p in catalog.programmes},
            status_labels=STATUS_LABELS,
        )


def _title(viewer: Viewer, programme: Programme) -> str:
    """The programme's title in the viewer's language when it is a packaged one."""
    packaged = PROGRAMME_TITLES.get(programme.id)
    if packaged is not None and packaged == programme.title:
        return translations(viewer.prefs.lang).gettext(packaged)
    return programme.title


def _page_link(programme: str, as_of: date, n: int) -> str:
    return "/app/registry?" + urlencode(
        {"programme": programme, "on": as_of.isoformat(), "page": n}
    )


def _iso_date(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text or "")
    except ValueError:
        return None


def _refused(web: WebServices, viewer: Viewer, status: int = 403) -> Response:
    message = N_(
        "The care programmes' registry is for the clinicians, community health workers and "
        "care coordinators of a facility."
    )
    if status == 503:
        message = N_("The care programmes are not running on this server.")
    return page(web, viewer, "frame/error.html", status, status=status, message=message)
