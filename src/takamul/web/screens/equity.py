"""The equity dashboard: the newest published equity report (``takamul equity report
--publish``), one indicator by one dimension or a pair of dimensions at a time: the equiplot,
the table with 95% intervals and suppression marks, the summary measures and the access map.

Nothing is recomputed: the page reads the report the analysts published, as
``GET /equity/report`` serves it, and only to the roles that route allows. Fixed labels
(dimension, indicator and measure names of the standard definitions) are translated; data
labels (subgroups, areas) are shown as published.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from takamul.equity.publish import latest_report
from takamul.equity.report import (
    ACCESS_TERCILE_COLOURS,
    DotChart,
    MapArea,
    access_map_areas,
    dot_chart,
    is_unknown,
)
from takamul.web.context import Screen, Viewer, WebServices
from takamul.web.i18n import N_, language, translations
from takamul.web.pages import fragment, page
from takamul.web.render import render

__all__ = ["SCREEN", "register"]

PUBLISH_COMMAND = "takamul equity report --db URL --publish"


def may_see_equity(viewer: Viewer) -> bool:
    """The rule of the API's /equity routes (``takamul.api.access.check_route``)."""
    access = viewer.access
    return access.has("export-deidentified") or "administrator" in access.roles


SCREEN = Screen("equity", "/equity", N_("Equity dashboard"), allowed=may_see_equity)

# The standard definitions' fixed names, translated where shown (others stay as published).
DIMENSION_NAMES = {
    "Household income quintile": N_("Household income quintile"),
    "Education (highest level, adults)": N_("Education (highest level, adults)"),
    "Region": N_("Region"),
    "Place of residence": N_("Place of residence"),
    "Sex": N_("Sex"),
    "Age group (years, at the end of the period)": N_(
        "Age group (years, at the end of the period)"
    ),
    "Nationality (ISO 3166)": N_("Nationality (ISO 3166)"),
    "Health coverage (payer, or uninsured)": N_("Health coverage (payer, or uninsured)"),
    "Disability": N_("Disability"),
}
INDICATOR_NAMES = {
    "dm_screen": N_("Diabetes screening coverage, adults 40+ without diabetes (3 years)"),
    "htn_screen": N_("Blood pressure screening, adults without hypertension (12 months)"),
    "breast_screen": N_("Breast cancer screening, women 50-69 (2 years)"),
    "cervical_screen": N_("Cervical cancer screening, women 30-49 (5 years)"),
    "imm_dtp3": N_("DTP3 immunization coverage, children aged 12-23 months"),
    "imm_mcv2": N_("MCV2 immunization coverage, children aged 24-35 months"),
    "dm_control": N_("Diabetes control: latest HbA1c below 7% (12 months)"),
    "bp_control": N_("Blood pressure control: latest below 140/90 mmHg (12 months)"),
    "dep_screen": N_("Depression screening, adults without diagnosed depression (12 months)"),
    "mh_gap": N_("Mental health treatment gap: depression or anxiety without care"),
    "mh_followup": N_("Follow-up within 60 days of a mental health referral (24 months)"),
    "cg_burden": N_("Caregiver burden screening, people with dementia or a disability (12 months)"),
    "travel_pc": N_("Travel distance to the nearest primary care centre (km)"),
}
MEASURE_NAMES = {
    "d": N_("Difference"),
    "r": N_("Ratio"),
    "aci": N_("Absolute concentration index"),
    "rci": N_("Relative concentration index"),
    "sii": N_("Slope index of inequality"),
    "rii": N_("Relative index of inequality"),
    "bgv": N_("Between-group variance"),
    "bgsd": N_("Between-group standard deviation"),
    "cov": N_("Coefficient of variation"),
    "idisu": N_("Index of disparity (unweighted)"),
    "idisw": N_("Index of disparity (weighted)"),
    "mdbu": N_("Mean difference from best performing subgroup (unweighted)"),
    "mdbw": N_("Mean difference from best performing subgroup (weighted)"),
    "mdmu": N_("Mean difference from mean (unweighted)"),
    "mdmw": N_("Mean difference from mean (weighted)"),
    "mdru": N_("Mean difference from reference subgroup (unweighted)"),
    "mdrw": N_("Mean difference from reference subgroup (weighted)"),
    "mld": N_("Mean log deviation"),
    "ti": N_("Theil index"),
    "paf": N_("Population attributable fraction"),
    "par": N_("Population attributable risk"),
}
MEASURE_ORDER = tuple(MEASURE_NAMES)


@dataclass(frozen=True, slots=True)
class Choice:
    """What the analyst asked for; ``dimension2`` empty for a single dimension."""

    indicator: str
    dimension: str
    dimension2: str = ""


@dataclass(frozen=True, slots=True)
class Cell:
    """A row of the table: a subgroup (or two, for a pair) and its published estimate."""

    subgroup: str
    subgroup2: str | None
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    population: int | None
    suppressed: str | None  # "primary" | "secondary" | None
    unknown: bool


@dataclass(frozen=True, slots=True)
class MeasureRow:
    """A summary measure of the indicator by the dimension, with its 95% interval."""

    code: str
    name: str  # translated
    estimate: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass
class Dashboard:
    """One indicator by one dimension or pair, as the page shows it."""

    choice: Choice
    report: dict[str, Any]
    indicator: dict[str, Any]
    indicators: list[tuple[str, str]]  # (id, shown name)
    dimensions: list[tuple[str, str]]  # (published name, shown name)
    percent: bool
    indicator_label: str = ""
    dimension_label: str = ""
    dimension2_label: str = ""
    cells: list[Cell] = field(default_factory=list)
    chart: DotChart | None = None
    measures: list[MeasureRow] = field(default_factory=list)
    problem: str | None = None  # why nothing is shown for the choice
    areas: list[MapArea] = field(default_factory=list)


def register(router: APIRouter, web: WebServices) -> None:
    @router.get("/equity")
    def equity(request: Request) -> Response:
        viewer = web.viewer(request)
        if not may_see_equity(viewer):
            return _not_allowed(web, viewer)
        found = latest_report(web.store.reader)
        params = request.query_params
        choice = Choice(
            params.get("indicator", ""), params.get("dimension", ""), params.get("dimension2", "")
        )
        partial = bool(request.headers.get("hx-request")) and not request.headers.get(
            "hx-history-restore-request"
        )
        if found is None:
            return page(
                web, viewer, "equity/none.html", active=SCREEN.key, back="/app/equity",
                command=PUBLISH_COMMAND,
            )  # fmt: skip
        tr = translations(viewer.prefs.lang).gettext
        rtl = language(viewer.prefs.lang).direction == "rtl"
        board = dashboard(orjson.loads(found[0]), choice, tr, rtl)
        web.audit_page(
            request,
            viewer,
            "read",
            query=f"equity-report indicator={board.choice.indicator} "
            f"dimension={board.choice.dimension} dimension2={board.choice.dimension2}",
        )
        if partial:
            return fragment(
                viewer,
                "equity/_results.html",
                board=board,
                number=number,
                significant=significant,
                access_colours=ACCESS_TERCILE_COLOURS,
            )
        return page(
            web,
            viewer,
            "equity/dashboard.html",
            active=SCREEN.key,
            back=_back(board.choice),
            board=board,
            number=number,
            significant=significant,
            access_colours=ACCESS_TERCILE_COLOURS,
        )


def _not_allowed(web: WebServices, viewer: Viewer) -> Response:
    """The frame's "not allowed" page. Rendered here: ``page()``'s own ``status`` argument
    would shadow the error template's ``status``."""
    html = render(
        "frame/error.html",
        viewer.prefs,
        viewer=viewer,
        screens=[s for s in web.screens if s.allowed(viewer)],
        status=403,
        message=N_("The equity dashboard needs the analyst or administrator role"),
    )
    return HTMLResponse(html, 403, headers={"Cache-Control": "no-store"})


def _back(choice: Choice) -> str:
    """The page to come back to after a change of preferences: the same choice."""
    chosen = {
        "indicator": choice.indicator,
        "dimension": choice.dimension,
        "dimension2": choice.dimension2,
    }
    return "/app/equity?" + urlencode({k: v for k, v in chosen.items() if v})


def dashboard(
    report: dict[str, Any], wanted: Choice, tr: Callable[[str], str], rtl: bool
) -> Dashboard:
    """The page's content for the choice; an unknown indicator or dimension falls back on the
    first one (a stale link still shows something), an unknown pair says so."""
    indicators = report.get("indicators") or []
    if not indicators:
        raise ValueError("the published report has no indicators")
    ind = next((i for i in indicators if i["id"] == wanted.indicator), indicators[0])
    names = [d["dimension"] for d in ind["dimensions"]]
    first = wanted.dimension if wanted.dimension in names else names[0]
    second = wanted.dimension2 if wanted.dimension2 in names and wanted.dimension2 != first else ""
    choice = Choice(ind["id"], first, second)
    board = Dashboard(
        choice=choice,
        report=report,
        indicator=ind,
        indicators=[(i["id"], indicator_name(i, tr)) for i in indicators],
        dimensions=[(n, dimension_name(n, tr)) for n in names],
        percent=ind["scale"] == 100,
        indicator_label=indicator_name(ind, tr),
        dimension_label=dimension_name(first, tr),
        dimension2_label=dimension_name(second, tr) if second else "",
        areas=access_map_areas(report.get("access") or []),
    )
    unit = "%" if board.percent else tr(N_("value"))
    title = f"{indicator_name(ind, tr)} ({unit})"
    if second:
        _pair(board, report, tr, title, rtl)
    else:
        _single(board, report, tr, title, rtl)
    return board


def _single(
    board: Dashboard,
    report: dict[str, Any],
    tr: Callable[[str], str],
    title: str,
    rtl: bool,
) -> None:
    ind, name = board.indicator, board.choice.dimension
    dim = next(d for d in ind["dimensions"] if d["dimension"] == name)
    subgroups = dim["subgroups"]
    board.cells = [
        Cell(
            s["subgroup"],
            None,
            s["estimate"],
            s["ciLow"],
            s["ciHigh"],
            s["population"],
            s.get("suppressed"),
            bool(s.get("unknown", is_unknown(s["subgroup"]))),
        )
        for s in subgroups
    ]
    dots = [(i, s["estimate"]) for i, s in enumerate(subgroups) if s["estimate"] is not None]
    if dots:
        board.chart = dot_chart(
            [(dimension_name(name, tr), dots)],
            subgroups,
            ind["scale"],
            title,
            bool(dim.get("ordered")),
            reference=ind["national"]["estimate"],
            labels_at_end=rtl,
        )
    board.measures = _measures(report, ind["abbr"], name, tr)


def _pair(
    board: Dashboard,
    report: dict[str, Any],
    tr: Callable[[str], str],
    title: str,
    rtl: bool,
) -> None:
    ind, first, second = board.indicator, board.choice.dimension, board.choice.dimension2
    found = _intersection(report, ind["id"], first, second)
    if found is None:
        board.problem = N_(
            "The published report has no intersections of these dimensions: publish it with --pairs"
        )
        return
    cells, swapped = found
    board.cells = [
        Cell(
            c["subgroup2"] if swapped else c["subgroup"],
            c["subgroup"] if swapped else c["subgroup2"],
            c["estimate"],
            c["ciLow"],
            c["ciHigh"],
            c["population"],
            c.get("suppressed"),
            bool(c.get("unknown")),
        )
        for c in cells
    ]
    if swapped:  # rows in the first chosen dimension's order
        order = {s["subgroup"]: k for k, s in enumerate(_subgroups(ind, first))}
        board.cells.sort(key=lambda c: order.get(c.subgroup, len(order)))
    series_names = list(dict.fromkeys(c.subgroup2 or "" for c in board.cells))
    series = [{"subgroup": n, "unknown": is_unknown(n, n)} for n in series_names]
    rows: dict[str, list[tuple[int, float]]] = {}
    for c in board.cells:
        dots = rows.setdefault(c.subgroup, [])
        if c.estimate is not None:
            dots.append((series_names.index(c.subgroup2 or ""), c.estimate))
    if any(rows.values()):
        ordered = any(d.get("ordered") for d in ind["dimensions"] if d["dimension"] == second)
        board.chart = dot_chart(
            list(rows.items()),
            series,
            ind["scale"],
            title,
            ordered,
            reference=ind["national"]["estimate"],
            labels_at_end=rtl,
        )


def _subgroups(ind: dict[str, Any], dimension: str) -> list[dict[str, Any]]:
    return next(d["subgroups"] for d in ind["dimensions"] if d["dimension"] == dimension)


def _intersection(
    report: dict[str, Any], indicator: str, first: str, second: str
) -> tuple[list[dict[str, Any]], bool] | None:
    """The cells of a pair and whether the report keeps it the other way round."""
    for entry in report.get("intersections") or []:
        if entry["indicator"] != indicator:
            continue
        if (entry["dimension"], entry["dimension2"]) == (first, second):
            return entry["cells"], False
        if (entry["dimension"], entry["dimension2"]) == (second, first):
            return entry["cells"], True
    return None


def _measures(
    report: dict[str, Any], abbr: str, dimension: str, tr: Callable[[str], str]
) -> list[MeasureRow]:
    """The report's measures of one indicator (by its abbreviation, as HEAT keys them) and
    dimension, in HEAT's order."""
    rows = [
        MeasureRow(
            m["measure"], tr(MEASURE_NAMES[m["measure"]]), m["estimate"], m["ciLow"],
            m["ciHigh"],
        )
        for m in report.get("measures") or []
        if m["indicator"] == abbr and m["dimension"] == dimension and m["measure"] in MEASURE_NAMES
    ]  # fmt: skip
    return sorted(rows, key=lambda m: MEASURE_ORDER.index(m.code))


def indicator_name(ind: dict[str, Any], tr: Callable[[str], str]) -> str:
    known = INDICATOR_NAMES.get(ind["id"])
    return tr(known) if known else str(ind["name"])


def dimension_name(name: str, tr: Callable[[str], str]) -> str:
    known = DIMENSION_NAMES.get(name)
    return tr(known) if known else name


def number(value: float | None, places: int = 1) -> str:
    """An estimate as the page writes it (the template turns its digits)."""
    return "" if value is None else f"{value:.{places}f}"


def significant(value: float | None) -> str:
    """A summary measure, three significant digits as the report writes them; whole numbers
    past a thousand without an exponent (1200, not 1.2e+03)."""
    if value is None:
        return ""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"
