"""The equity report: one self-contained HTML page (no network needed to open it) and the same
results as JSON for dashboards.

It answers "who is being left behind, where, and by how much?": per indicator an equiplot (each
dimension a line, each subgroup a dot on it, as HEAT draws them, with a legend naming every dot),
a trend chart with its axis and values, the summary measures of inequality, a map of spatial
access to care, and findings in plain language generated from the numbers. Each chart reads
without the tables. Charts are inline SVG; text runs in either direction (`dir="auto"`), so Arabic
and Persian labels display right to left.
"""

from __future__ import annotations

import html
import math
import tempfile
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from takamul.equity.access import AccessReport, Demand
from takamul.equity.heat import MeasureRow, compute_rows, read_template
from takamul.equity.indicators import UNKNOWN, IndicatorResults, heat_rows, result_dicts
from takamul.equity.measures import ComputeOptions, Measure

__all__ = [
    "EquityReport",
    "build_report",
    "gap_findings",
    "intersection_entries",
    "is_unknown",
    "render_html",
]

# Map colours (access terciles, worst first) and the ends of the ordered-dimension ramp.
PALETTE = ["#b2182b", "#ef8a62", "#fddbc7", "#d1e5f0", "#67a9cf", "#2166ac", "#5e3c99", "#1b7837"]
# Ordered dimensions go from warm (most disadvantaged) to cool (most advantaged), as in HEAT.
ORDERED_RAMP = ("#b2182b", "#ef8a62", "#f6d55c", "#67a9cf", "#08519c")
# Non-ordered dimensions: the Okabe-Ito colours, told apart with colour-vision deficiency too;
# past eight subgroups the marker shape changes, so no two subgroups of a dimension look alike.
QUALITATIVE = (
    "#e69f00",
    "#56b4e9",
    "#009e73",
    "#f0e442",
    "#0072b2",
    "#d55e00",
    "#cc79a7",
    "#000000",
)
SHAPES = ("circle", "square", "triangle", "diamond", "triangle-down")
UNKNOWN_COLOUR = "#888888"
SHOWN_MEASURES = ("d", "r", "sii", "rii", "aci", "rci", "bgv", "paf", "par", "idisw", "mld", "ti")
# Labels that mean "not recorded" whatever the dimension's own wording.
_UNKNOWN_LABELS = frozenset({"", UNKNOWN, "missing", "not recorded", "not stated", "not known"})


@dataclass
class EquityReport:
    """What the HTML and the JSON are made from."""

    title: str
    period_end: str
    people: int
    min_cell: int
    indicators: list[dict[str, Any]]
    measures: list[dict[str, Any]]
    findings: list[str]
    access: list[dict[str, Any]]
    trends: list[dict[str, Any]] = field(default_factory=list)
    # Each indicator by each pair of dimensions (only when the results were computed with pairs)
    intersections: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "periodEnd": self.period_end,
            "people": self.people,
            "minCell": self.min_cell,
            "indicators": self.indicators,
            "measures": self.measures,
            "findings": self.findings,
            "access": self.access,
            "trends": self.trends,
            "intersections": self.intersections,
        }


def _measures(results: IndicatorResults, options: ComputeOptions) -> list[MeasureRow]:
    """HEAT's measures of the results, through the HEAT Plus template the results export to
    (the same path an analyst cross-checking in HEAT Plus takes)."""
    rows = heat_rows(results)
    if not rows:
        return []
    columns = list(rows[0])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "heat.csv"
        lines = [",".join(columns)]
        lines += [",".join(_csv(r[c]) for c in columns) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return compute_rows(read_template(path), options)


def _csv(value: str) -> str:
    return f'"{value.replace(chr(34), chr(34) * 2)}"' if any(c in value for c in ',"\n') else value


def _indicator_entries(results: IndicatorResults) -> list[dict[str, Any]]:
    cells = result_dicts(results)
    out = []
    for ind in results.indicators:
        national = results.national(ind.id)
        dims = []
        for dim in results.dimensions:
            subgroups = [
                {
                    "subgroup": dim.label(value),
                    "estimate": e.estimate,
                    "ciLow": e.ci_lb,
                    "ciHigh": e.ci_ub,
                    "population": e.population,
                    "suppressed": e.suppressed or None,
                    "unknown": is_unknown(value, dim.label(value)),
                }
                for value, e in _ordered(results.by(ind.id, dim.id), dim)
            ]
            dims.append({"dimension": dim.name, "ordered": dim.ordered, "subgroups": subgroups})
        out.append(
            {
                "id": ind.id,
                "abbr": ind.abbr,
                "name": ind.name,
                "scale": ind.scale,
                "favourable": ind.favourable,
                "national": {
                    "estimate": national.estimate,
                    "ciLow": national.ci_lb,
                    "ciHigh": national.ci_ub,
                    "population": national.population,
                },
                "dimensions": dims,
                "cells": sum(1 for c in cells if c.get("indicator") == ind.id),
            }
        )
    return out


def intersection_entries(results: IndicatorResults) -> list[dict[str, Any]]:
    """Per indicator and pair of dimensions, every cell of the intersection (first dimension's
    subgroup, then the second's, each in its dimension's order), suppressed cells included with
    the reason ("primary" or "secondary"). Empty when the results have no pairs."""
    dims = {d.id: d for d in results.dimensions}
    rank = {d.id: i for i, d in enumerate(results.dimensions)}
    grouped: dict[tuple[str, str, str], list[tuple[str, str, Any]]] = {}
    for e in results.estimates:
        if e.dimension is None or e.dimension2 is None:
            continue
        pair = [(e.dimension, str(e.subgroup)), (e.dimension2, str(e.subgroup2))]
        (da, va), (db, vb) = sorted(pair, key=lambda dv: rank[dv[0]])
        grouped.setdefault((e.indicator, da, db), []).append((va, vb, e))
    out = []
    for (indicator, da, db), cells in grouped.items():
        a, b = dims[da], dims[db]
        cells.sort(key=lambda c: (_rank_in(a, c[0]), c[0], _rank_in(b, c[1]), c[1]))
        out.append(
            {
                "indicator": indicator,
                "dimension": a.name,
                "dimension2": b.name,
                "cells": [
                    {
                        "subgroup": a.label(va),
                        "subgroup2": b.label(vb),
                        "estimate": e.estimate,
                        "ciLow": e.ci_lb,
                        "ciHigh": e.ci_ub,
                        "population": e.population,
                        "suppressed": e.suppressed or None,
                        "unknown": is_unknown(va, a.label(va)) or is_unknown(vb, b.label(vb)),
                    }
                    for va, vb, e in cells
                ],
            }
        )
    return out


def _rank_in(dim: Any, value: str) -> int:
    """A subgroup's place in its dimension: its order for an ordered dimension, else 0 (then
    sorted by value)."""
    return dim.order.index(value) if dim.ordered and value in dim.order else len(dim.order or ())


def _ordered(by: dict[str, Any], dim: Any) -> list[tuple[str, Any]]:
    if dim.ordered:
        rank = {v: i for i, v in enumerate(dim.order)}
        return sorted(by.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))
    return sorted(by.items())


def _measure_entries(rows: Sequence[MeasureRow]) -> list[dict[str, Any]]:
    return [
        {
            "indicator": r.key.indicator_abbr,
            "dimension": r.key.dimension,
            "measure": r.measure.value,
            "estimate": r.result.estimate,
            "ciLow": r.result.ci_lb,
            "ciHigh": r.result.ci_ub,
        }
        for r in rows
    ]


def is_unknown(value: str | None, label: str | None = None) -> bool:
    """Whether a subgroup stands for people whose value was not recorded (the views' 'unknown'):
    they are shown, but are nobody's comparison in a finding."""
    if value is None or value.strip().lower() in _UNKNOWN_LABELS:
        return True
    return label is not None and label.strip().lower() in _UNKNOWN_LABELS


def _known(subgroup: dict[str, Any]) -> bool:
    # Reports built before subgroups carried the flag: fall back on the label.
    return not subgroup.get("unknown", is_unknown(subgroup["subgroup"]))


def gap_findings(indicators: list[dict[str, Any]], measures: list[dict[str, Any]]) -> list[str]:
    """Plain-language sentences: for each indicator, the dimension with the widest gap between
    its best and worst subgroup, and whether the gap's interval excludes no difference.

    Only subgroups with a published estimate and a known value take part: "unknown" (not
    recorded) is not a group of people one can be behind or ahead of.
    """
    diffs = {(m["indicator"], m["dimension"]): m for m in measures if m["measure"] == "d"}
    out = []
    for ind in indicators:
        unit = "%" if ind["scale"] == 100 else ""
        widest: tuple[float, dict[str, Any], dict[str, Any], dict[str, Any]] | None = None
        for dim in ind["dimensions"]:
            shown = [s for s in dim["subgroups"] if s["estimate"] is not None and _known(s)]
            if len(shown) < 2:
                continue
            low = min(shown, key=lambda s: s["estimate"])
            high = max(shown, key=lambda s: s["estimate"])
            gap = high["estimate"] - low["estimate"]
            if widest is None or gap > widest[0]:
                widest = (gap, dim, low, high)
        if widest is None:
            continue
        gap, dim, low, high = widest
        if gap <= 0:
            out.append(f"{ind['name']}: no gap between subgroups in any dimension.")
            continue
        worse, better = (low, high) if ind["favourable"] else (high, low)
        d = diffs.get((ind["abbr"], dim["dimension"]))
        certain = (
            d is not None
            and d["ciLow"] is not None
            and d["ciHigh"] is not None
            and (d["ciLow"] > 0 or d["ciHigh"] < 0)
        )
        national = ind["national"]["estimate"]
        out.append(
            f"{ind['name']}: {national:.1f}{unit} nationally. The widest gap is by "
            f"{dim['dimension']}: {worse['subgroup']} {worse['estimate']:.1f}{unit} against "
            f"{better['subgroup']} {better['estimate']:.1f}{unit} ({gap:.1f} points"
            + ("; its 95% confidence interval excludes zero)." if certain else ").")
            if national is not None
            else f"{ind['name']}: widest gap by {dim['dimension']} ({gap:.1f} points)."
        )
    return out


def _access_entries(access: AccessReport | None, demand: Demand | None) -> list[dict[str, Any]]:
    if access is None:
        return []
    centres: dict[str, tuple[float, float]] = {}
    if demand is not None:
        areas = np.asarray(demand.area, dtype=object)
        for area in set(areas.tolist()):
            mask = areas == area
            centres[str(area)] = (float(demand.lat[mask].mean()), float(demand.lon[mask].mean()))
    return [
        {
            "rank": a.rank,
            "area": a.area,
            "method": a.method,
            "score": a.score,
            "population": a.population,
            "nearestKm": a.nearest_mean,
            "lat": centres.get(str(a.area), (None, None))[0],
            "lon": centres.get(str(a.area), (None, None))[1],
        }
        for a in access.areas
    ]


TREND_DIMENSION = "income_quintile"


def trend_entries(series: Sequence[IndicatorResults]) -> list[dict[str, Any]]:
    """Per indicator, its national value and its poorest and richest quintiles at each period
    end (oldest first): whether a gap is closing."""
    out: list[dict[str, Any]] = []
    ordered = sorted(series, key=lambda r: r.period_end)
    if not ordered:
        return out
    for ind in ordered[-1].indicators:
        points = []
        for results in ordered:
            try:
                national = results.national(ind.id).estimate
            except KeyError:
                continue
            dim = next((d for d in results.dimensions if d.id == TREND_DIMENSION), None)
            by = results.by(ind.id, TREND_DIMENSION) if dim else {}
            low = by.get(dim.order[0]) if dim and dim.order else None
            high = by.get(dim.order[-1]) if dim and dim.order else None
            points.append(
                {
                    "periodEnd": results.period_end.isoformat(),
                    "national": national,
                    "poorest": low.estimate if low else None,
                    "richest": high.estimate if high else None,
                }
            )
        out.append({"id": ind.id, "name": ind.name, "scale": ind.scale, "points": points})
    return out


def build_report(
    results: IndicatorResults,
    access: AccessReport | None = None,
    demand: Demand | None = None,
    title: str = "Who is being left behind? — من يتخلف عن الركب؟",
    options: ComputeOptions | None = None,
    history: Sequence[IndicatorResults] = (),
) -> EquityReport:
    indicators = _indicator_entries(results)
    measures = _measure_entries(_measures(results, options or ComputeOptions(simulations=200)))
    return EquityReport(
        title=title,
        period_end=results.period_end.isoformat(),
        people=results.people,
        min_cell=results.min_cell,
        indicators=indicators,
        measures=measures,
        findings=gap_findings(indicators, measures),
        access=_access_entries(access, demand),
        trends=trend_entries([*history, results]) if history else [],
        intersections=intersection_entries(results),
    )


# -- HTML ------------------------------------------------------------------------------------


def _e(text: Any) -> str:
    return html.escape(str(text))


# Text in the SVGs is 11px; its width is estimated at 0.6 em a character (a little wider than
# the average of system sans-serif faces, Arabic included), so estimated boxes err on the safe side.
FONT_PX = 11
CHAR_PX = 0.6 * FONT_PX
LINE_PX = 14
LABEL_CHARS = 26  # dimension labels wrap at this many characters


def text_width(text: str, font_px: float = FONT_PX) -> float:
    """The estimated width of ``text`` in the report's SVGs (layout and its tests use it)."""
    return len(text) * 0.6 * font_px


def _fmt(value: float, unit: str = "") -> str:
    return f"{value:.1f}{unit}"


def _nice_ticks(hi: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``hi`` (1, 2, 2.5 or 5 times a power of ten)."""
    hi = hi if hi > 0 else 1.0  # all zero: still an axis with its ticks
    raw = hi / (count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    return [i * step for i in range(math.ceil(hi / step - 1e-9) + 1)]


def _tick_label(value: float) -> str:
    return f"{value:g}"


def _marker(shape: str, cx: float, cy: float, r: float, fill: str, stroke: str) -> str:
    """One marker of the equiplots; a dark outline keeps the light colours visible."""
    common = f'fill="{fill}" stroke="{stroke}" stroke-width="1"'
    if shape == "square":
        side = r * 1.7
        return (
            f'<rect x="{cx - side / 2:.1f}" y="{cy - side / 2:.1f}" width="{side:.1f}" '
            f'height="{side:.1f}" {common}/>'
        )
    if shape in ("triangle", "triangle-down", "diamond"):
        if shape == "triangle":
            pts = [(cx, cy - r * 1.2), (cx + r * 1.1, cy + r * 0.8), (cx - r * 1.1, cy + r * 0.8)]
        elif shape == "triangle-down":
            pts = [(cx, cy + r * 1.2), (cx + r * 1.1, cy - r * 0.8), (cx - r * 1.1, cy - r * 0.8)]
        else:
            pts = [(cx, cy - r * 1.2), (cx + r * 1.2, cy), (cx, cy + r * 1.2), (cx - r * 1.2, cy)]
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        return f'<polygon points="{points}" {common}/>'
    return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" {common}/>'


def _ramp(position: float) -> str:
    """The colour at ``position`` (0 = most disadvantaged, 1 = most advantaged) of the ramp."""
    where = position * (len(ORDERED_RAMP) - 1)
    i = min(int(where), len(ORDERED_RAMP) - 2)
    t = where - i
    a, b = ORDERED_RAMP[i], ORDERED_RAMP[i + 1]
    rgb = [round(int(a[k : k + 2], 16) * (1 - t) + int(b[k : k + 2], 16) * t) for k in (1, 3, 5)]
    return "#" + "".join(f"{c:02x}" for c in rgb)


def subgroup_styles(dim: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(colour, shape, hollow) of each subgroup of a dimension, in its order: no two known
    subgroups of a dimension share colour and shape; unknown ones are hollow grey circles."""
    known = [s for s in dim["subgroups"] if _known(s)]
    styles = []
    j = 0
    for s in dim["subgroups"]:
        if not _known(s):
            styles.append((UNKNOWN_COLOUR, "circle", True))
            continue
        if dim.get("ordered"):
            colour = _ramp(j / (len(known) - 1)) if len(known) > 1 else ORDERED_RAMP[0]
            shape = "circle"
        else:
            colour = QUALITATIVE[j % len(QUALITATIVE)]
            shape = SHAPES[(j // len(QUALITATIVE)) % len(SHAPES)]
        styles.append((colour, shape, False))
        j += 1
    return styles


def _wrap(text: str, chars: int = LABEL_CHARS) -> list[str]:
    return textwrap.wrap(text, chars, break_long_words=True) or [""]


def _legend_text(s: dict[str, Any], unit: str) -> str:
    name = s["subgroup"] if _known(s) else f"{s['subgroup'] or UNKNOWN} (not recorded)"
    if s["estimate"] is None:
        return f"{name}: suppressed"
    return f"{name}: {_fmt(s['estimate'], unit)}"


def _equiplot(ind: dict[str, Any]) -> str:
    """Each dimension a row: its name on the left (wrapped, the margin fitted to the longest
    line), a grey line from the lowest to the highest known subgroup, a marker per subgroup, and
    under it a legend naming each marker with its value."""
    unit = "%" if ind["scale"] == 100 else ""
    values = [
        s["estimate"]
        for d in ind["dimensions"]
        for s in d["subgroups"]
        if s["estimate"] is not None
    ]
    if not values:
        return "<p>All cells suppressed.</p>"
    ticks = [0.0, 25.0, 50.0, 75.0, 100.0] if ind["scale"] == 100 else _nice_ticks(max(values))
    hi = ticks[-1] or 1.0
    width, right, gap = 760, 24, 16
    wrapped = {d["dimension"]: _wrap(d["dimension"]) for d in ind["dimensions"]}
    longest = max(text_width(line) for lines in wrapped.values() for line in lines)
    left = math.ceil(longest + gap)
    plot = width - left - right

    def x(v: float) -> float:
        return left + plot * max(0.0, min(v / hi, 1.0))

    body: list[str] = []
    y = 22
    for dim in ind["dimensions"]:
        styles = subgroup_styles(dim)
        lines = wrapped[dim["dimension"]]
        first = y - (len(lines) - 1) * LINE_PX / 2 + 4
        tspans = "".join(
            f'<tspan x="{left - gap / 2}" y="{first + k * LINE_PX:.1f}">{_e(line)}</tspan>'
            for k, line in enumerate(lines)
        )
        body.append(f'<text class="dimension" text-anchor="end">{tspans}</text>')
        known = [s for s in dim["subgroups"] if s["estimate"] is not None and _known(s)]
        if len(known) >= 2:
            lo_v = min(s["estimate"] for s in known)
            hi_v = max(s["estimate"] for s in known)
            body.append(
                f'<line x1="{x(lo_v):.1f}" x2="{x(hi_v):.1f}" y1="{y}" y2="{y}" class="span"/>'
            )
        for s, (colour, shape, hollow) in zip(dim["subgroups"], styles, strict=True):
            if s["estimate"] is None:
                continue
            fill, stroke = ("#ffffff", colour) if hollow else (colour, "#333333")
            body.append(
                f'<g class="dot">{_marker(shape, x(s["estimate"]), y, 6, fill, stroke)}'
                f"<title>{_e(_legend_text(s, unit))}</title></g>"
            )
        # The legend: entries flow left to right under the row, wrapping at the right edge.
        ly = y + max(20, (len(lines) + 1) * LINE_PX / 2 + 6)
        lx = float(left)
        entries = []
        for s, (colour, shape, hollow) in zip(dim["subgroups"], styles, strict=True):
            label = _fit(_legend_text(s, unit), plot - 14)
            needed = 14 + text_width(label)
            if lx > left and lx + needed > width - right:
                lx, ly = float(left), ly + LINE_PX + 2
            fill, stroke = ("#ffffff", colour) if hollow else (colour, "#333333")
            mark = (
                "" if s["estimate"] is None else _marker(shape, lx + 5, ly - 4, 4.5, fill, stroke)
            )
            entries.append(
                f'<g class="legend-entry" data-subgroup="{_e(s["subgroup"])}">{mark}'
                f'<text x="{lx + 14:.1f}" y="{ly:.1f}">{_e(label)}</text></g>'
            )
            lx += needed + 14
        body.append(
            f'<g class="legend" data-dimension="{_e(dim["dimension"])}">{"".join(entries)}</g>'
        )
        y = math.ceil(max(ly + 10, y + (len(lines) - 1) * LINE_PX / 2 + 10)) + 24
    axis_y = y - 6
    line_y = axis_y - 14
    axis = [f'<line x1="{left}" x2="{left + plot}" y1="{line_y}" y2="{line_y}" class="axis"/>']
    for tick in ticks:
        axis.append(
            f'<text x="{x(tick):.1f}" y="{axis_y}" text-anchor="middle" class="tick">'
            f"{_tick_label(tick)}</text>"
        )
    axis_title = f"{ind['name']} ({'%' if unit else 'value'})"
    axis.append(
        f'<text x="{left + plot / 2:.1f}" y="{axis_y + LINE_PX + 2}" text-anchor="middle" '
        f'class="axis-title">{_e(_fit(axis_title, plot))}</text>'
    )
    height = axis_y + LINE_PX + 10
    title = f"Equiplot: {ind['name']} by dimension of inequality"
    return (
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'class="equiplot"><title>{_e(title)}</title>{"".join(body)}{"".join(axis)}</svg>'
    )


def _fit(text: str, room: float) -> str:
    """``text`` shortened with an ellipsis to fit ``room`` pixels (by the width estimate)."""
    most = int(room / CHAR_PX)
    return text if len(text) <= most else text[: max(most - 1, 1)] + "…"


TREND_LINES = (
    ("national", "National", "#444444"),
    ("poorest", "Poorest quintile", ORDERED_RAMP[0]),
    ("richest", "Richest quintile", ORDERED_RAMP[-1]),
)


def _trend_chart(trend: dict[str, Any]) -> str:
    """National, poorest and richest quintile over the period ends: is the gap closing? A y axis
    with ticks, the value at every point, the years under the points and a legend."""
    points = trend["points"]
    values = [p[k] for p in points for k, _, _ in TREND_LINES if p[k] is not None]
    if len(points) < 2 or not values:
        return ""
    percent = trend["scale"] == 100
    unit = "%" if percent else ""
    ticks = _nice_ticks(max(values))
    if percent:
        ticks = [t for t in ticks if t <= 100] or [0.0, 100.0]
    hi = ticks[-1] or 1.0
    width, height = 640, 280
    left = math.ceil(max(text_width(_tick_label(t)) for t in ticks) + 14)
    top, bottom, inner = 30, 64, 34
    plot_h = height - top - bottom
    x0, x1 = left + inner, width - 20 - inner

    def px(i: int) -> float:
        return x0 + (x1 - x0) * i / (len(points) - 1)

    def py(v: float) -> float:
        return top + plot_h * (1 - max(0.0, min(v / hi, 1.0)))

    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'class="trend"><title>{_e("Trend: " + trend["name"])}</title>',
        f'<text x="{left}" y="{top - 14}" class="axis-title">'
        f"{'Per cent of people' if percent else 'Value'}</text>",
    ]
    for tick in ticks:
        y = py(tick)
        parts.append(
            f'<line x1="{left}" x2="{width - 20}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="ytick">'
            f"{_tick_label(tick)}</text>"
        )
    parts.append(
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" class="axis"/>'
        f'<line x1="{left}" x2="{width - 20}" y1="{top + plot_h}" y2="{top + plot_h}" '
        'class="axis"/>'
    )
    for key, name, colour in TREND_LINES:
        line = [(px(i), py(p[key])) for i, p in enumerate(points) if p[key] is not None]
        if len(line) >= 2:
            coords = " ".join(f"{a:.1f},{b:.1f}" for a, b in line)
            parts.append(
                f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2">'
                f"<title>{_e(name)}</title></polyline>"
            )
    for i, p in enumerate(points):
        # Each value in its line's colour beside its point (left of the last points, right of
        # the others), stacked at least a line apart and kept inside the plot.
        present = sorted(
            (
                (py(p[key]), p[key], key, colour)
                for key, _, colour in TREND_LINES
                if p[key] is not None
            ),
            key=lambda t: t[0],
        )
        label_ys: list[float] = []
        for cy, *_ in present:
            label_ys.append(max(cy + 4, label_ys[-1] + 12) if label_ys else max(cy + 4, top + 8))
        overflow = label_ys[-1] - (top + plot_h - 3) if label_ys else 0
        if overflow > 0:
            label_ys = [y - overflow for y in label_ys]
        last = i == len(points) - 1
        for (cy, v, key, colour), ly in zip(present, label_ys, strict=True):
            cx = px(i)
            lx, anchor = (cx - 8, "end") if last else (cx + 8, "start")
            parts.append(
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{colour}" class="point"/>'
                f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}" fill="{colour}" '
                f'class="value" data-series="{key}">{_fmt(v, unit)}</text>'
            )
        parts.append(
            f'<text x="{px(i):.1f}" y="{top + plot_h + 18}" text-anchor="middle" class="xtick">'
            f"{_e(p['periodEnd'][:4])}</text>"
        )
    lx, ly = float(left), height - 12
    legend = []
    for key, name, colour in TREND_LINES:
        legend.append(
            f'<g class="legend-entry" data-series="{key}">'
            f'<line x1="{lx:.1f}" x2="{lx + 18:.1f}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" '
            f'stroke-width="2"/><text x="{lx + 22:.1f}" y="{ly}">{_e(name)}</text></g>'
        )
        lx += 22 + text_width(name) + 18
    parts.append(f'<g class="legend">{"".join(legend)}</g></svg>')
    return "".join(parts)


def _access_map(access: list[dict[str, Any]]) -> str:
    placed = [a for a in access if a["lat"] is not None and a["lon"] is not None]
    if not placed:
        return ""
    lats = [a["lat"] for a in placed]
    lons = [a["lon"] for a in placed]
    scores = [a["score"] for a in placed]
    width, height, pad = 640, 420, 30
    lo_lat, hi_lat, lo_lon, hi_lon = min(lats), max(lats), min(lons), max(lons)
    lo_s, hi_s = min(scores), max(scores)
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" class="map">']
    for a in placed:
        px = pad + (width - 2 * pad) * ((a["lon"] - lo_lon) / ((hi_lon - lo_lon) or 1))
        py = height - pad - (height - 2 * pad) * ((a["lat"] - lo_lat) / ((hi_lat - lo_lat) or 1))
        t = (a["score"] - lo_s) / ((hi_s - lo_s) or 1)
        if a["method"] == "nearest":
            t = 1 - t  # longer distance is worse
        colour = PALETTE[0] if t < 0.33 else PALETTE[1] if t < 0.66 else PALETTE[5]
        radius = 4 + 10 * (a["population"] / max(p["population"] for p in placed)) ** 0.5
        label = (
            f"{a['area']}: rank {a['rank']}, score {a['score']:.3g}, "
            f"nearest {a['nearestKm']:.1f} km"
        )
        parts.append(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="{radius:.1f}" fill="{colour}" '
            f'fill-opacity="0.8"><title>{_e(label)}</title></circle>'
        )
    parts.append("</svg>")
    return "".join(parts)


STYLE = """
body{font-family:system-ui,'Noto Sans Arabic','Vazirmatn',sans-serif;margin:2rem;max-width:72rem}
body{color:#222}h1{font-size:1.6rem}h2{margin-top:2.2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.9rem}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:start}
svg.equiplot,svg.trend,svg.map{max-width:100%;height:auto;display:block;margin:.5rem 0}
.equiplot text,.map text,.trend text{font-size:11px}
.equiplot .tick,.trend .xtick,.trend .ytick{fill:#555}
.axis-title{fill:#555}.trend .value{font-size:10px;paint-order:stroke;stroke:#fff;stroke-width:3px}
.axis{stroke:#999;stroke-width:1}.grid{stroke:#e4e4e4;stroke-width:1}
.span{stroke:#999;stroke-width:3}.finding{margin:.3rem 0}.muted{color:#666;font-size:.85rem}
"""


def render_html(report: EquityReport) -> str:
    """The report as one HTML document (inline CSS and SVG; nothing fetched when opened)."""
    out = [
        "<!doctype html>",
        '<html lang="en" dir="ltr"><head><meta charset="utf-8">',
        f"<title>{_e(report.title)}</title><style>{STYLE}</style></head><body>",
        f'<h1 dir="auto">{_e(report.title)}</h1>',
        f'<p class="muted">Period ending {_e(report.period_end)}; {report.people:,} people; '
        f"cells with fewer than {report.min_cell} people are suppressed.</p>",
        "<h2>Findings</h2>",
        *[f'<p class="finding" dir="auto">{_e(f)}</p>' for f in report.findings],
    ]
    for ind in report.indicators:
        nat = ind["national"]
        national = (
            f"{nat['estimate']:.1f} (95% CI {nat['ciLow']:.1f}–{nat['ciHigh']:.1f})"
            if nat["estimate"] is not None and nat["ciLow"] is not None
            else "suppressed"
        )
        out += [
            f'<h2 dir="auto">{_e(ind["name"])} ({_e(ind["abbr"])})</h2>',
            f"<p>National: {national}; "
            f"{'higher is better' if ind['favourable'] else 'lower is better'}.</p>",
            _equiplot(ind),
        ]
        trend = next((t for t in report.trends if t["id"] == ind["id"]), None)
        if trend is not None and (chart := _trend_chart(trend)):
            out += [
                "<p>Trend at each period end: national, poorest and richest income quintile.</p>",
                chart,
            ]
        rows = [m for m in report.measures if m["indicator"] == ind["abbr"]]
        rows = [m for m in rows if m["measure"] in SHOWN_MEASURES]
        if rows:
            out.append("<table><tr><th>dimension</th><th>measure</th><th>estimate</th>"
                       "<th>95% CI</th></tr>")  # fmt: skip
            for m in rows:
                ci = (
                    f"{m['ciLow']:.3g} – {m['ciHigh']:.3g}"
                    if m["ciLow"] is not None and m["ciHigh"] is not None
                    else ""
                )
                out.append(
                    f'<tr><td dir="auto">{_e(m["dimension"])}</td><td>{_e(m["measure"].upper())}'
                    f"</td><td>{m['estimate']:.3g}</td><td>{ci}</td></tr>"
                )
            out.append("</table>")
    if report.access:
        out += ["<h2>Spatial access to primary care</h2>", _access_map(report.access)]
        out.append("<table><tr><th>rank</th><th>area</th><th>score</th><th>nearest (km)</th>"
                   "<th>population</th></tr>")  # fmt: skip
        for a in report.access[:15]:
            out.append(
                f'<tr><td>{a["rank"]}</td><td dir="auto">{_e(a["area"])}</td>'
                f"<td>{a['score']:.3g}</td><td>{a['nearestKm']:.1f}</td>"
                f"<td>{a['population']:,.0f}</td></tr>"
            )
        out.append("</table>")
    out.append(
        '<p class="muted">Measures as the WHO Health Equity Assessment Toolkit defines them '
        "(Takamul's own implementation). Generated by <code>takamul equity report</code>.</p>"
    )
    out.append("</body></html>")
    return "\n".join(out)


def measure_codes() -> list[str]:
    return [m.value for m in Measure]


# -- charts for dashboards -------------------------------------------------------------------
# The web dashboard draws its own SVG from these layouts (its template writes the text, in the
# viewer's language and digits); the geometry, colours, markers and text estimates are the
# report's, so both read the same way.


@dataclass(frozen=True, slots=True)
class ChartText:
    """A line of text at (x, y); ``anchor`` as for left-to-right text: "start" puts its left
    edge at x, "end" its right edge."""

    text: str
    x: float
    y: float
    anchor: str


@dataclass(frozen=True, slots=True)
class ChartDot:
    series: int  # the legend entry it belongs to
    row: int
    value: float
    marker: str  # SVG of the marker (shape, colour; no text)


@dataclass(frozen=True, slots=True)
class ChartSeries:
    """A legend entry: a subgroup and how its markers look."""

    name: str
    swatch: str  # SVG of a small marker, for a 14x14 legend icon
    unknown: bool


@dataclass
class DotChart:
    """An equiplot: each row a line of dots on a common value axis."""

    width: int
    height: int
    rows: list[str]  # row labels
    labels: list[ChartText]  # row labels, wrapped
    spans: list[tuple[float, float, float]]  # (x1, x2, y): lowest to highest known dot of a row
    dots: list[ChartDot]
    series: list[ChartSeries]
    ticks: list[tuple[float, float]]  # (value, x)
    axis: tuple[float, float, float]  # (x1, x2, y)
    tick_y: float
    title_lines: list[ChartText]  # the axis title under the ticks
    reference: tuple[float, float, float] | None  # national value: (x, y1, y2)


def dot_chart(
    rows: Sequence[tuple[str, Sequence[tuple[int, float]]]],
    series: Sequence[dict[str, Any]],
    scale: float,
    axis_title: str,
    ordered: bool,
    reference: float | None = None,
    labels_at_end: bool = False,
    width: int = 720,
) -> DotChart:
    """The layout of an equiplot: ``rows`` are (label, [(series index, value)]); ``series`` are
    the subgroups dots belong to (report subgroup dicts: "subgroup", "unknown"), styled as the
    report styles a dimension's subgroups. Row labels sit before the plot (``labels_at_end``:
    after it, for right-to-left pages); every text is placed inside the width by the report's
    width estimate."""
    styles = subgroup_styles({"ordered": ordered, "subgroups": list(series)})
    values = [v for _, dots in rows for _, v in dots] + ([reference] if reference else [])
    ticks = (
        [0.0, 25.0, 50.0, 75.0, 100.0] if scale == 100 else _nice_ticks(max(values, default=1.0))
    )
    hi = ticks[-1] or 1.0
    wrapped = [_wrap(label) for label, _ in rows]
    label_room = max((text_width(line) for lines in wrapped for line in lines), default=0.0) + 16
    edge = 24.0  # room for half a tick label past the plot's ends
    x0, x1 = (edge, width - label_room) if labels_at_end else (label_room, width - edge)

    def x(v: float) -> float:
        return x0 + (x1 - x0) * max(0.0, min(v / hi, 1.0))

    labels: list[ChartText] = []
    spans: list[tuple[float, float, float]] = []
    dots: list[ChartDot] = []
    y = 12.0
    for r, ((_, row_dots), lines) in enumerate(zip(rows, wrapped, strict=True)):
        height = max(30.0, len(lines) * LINE_PX + 12)
        centre = y + height / 2
        first = centre - (len(lines) - 1) * LINE_PX / 2 + 4
        lx, anchor = (x1 + 8, "start") if labels_at_end else (x0 - 8, "end")
        labels += [ChartText(line, lx, first + k * LINE_PX, anchor) for k, line in enumerate(lines)]
        known = [v for i, v in row_dots if not series[i].get("unknown")]
        if len(known) >= 2:
            spans.append((x(min(known)), x(max(known)), centre))
        for i, v in row_dots:
            colour, shape, hollow = styles[i]
            fill, stroke = ("#ffffff", colour) if hollow else (colour, "#333333")
            dots.append(ChartDot(i, r, v, _marker(shape, x(v), centre, 6, fill, stroke)))
        y += height
    axis_y = y + 6
    tick_y = axis_y + LINE_PX + 2
    title_lines = [
        ChartText(line, (x0 + x1) / 2, tick_y + (k + 1) * LINE_PX + 4, "middle")
        for k, line in enumerate(_wrap(axis_title, max(int((x1 - x0) / CHAR_PX), 10)))
    ]
    legend = []
    for s, (colour, shape, hollow) in zip(series, styles, strict=True):
        fill, stroke = ("#ffffff", colour) if hollow else (colour, "#333333")
        legend.append(
            ChartSeries(str(s["subgroup"]), _marker(shape, 7, 7, 5, fill, stroke), not _known(s))
        )
    return DotChart(
        width=width,
        height=math.ceil(title_lines[-1].y + 8),
        rows=[label for label, _ in rows],
        labels=labels,
        spans=spans,
        dots=dots,
        series=legend,
        ticks=[(t, x(t)) for t in ticks],
        axis=(x0, x1, axis_y),
        tick_y=tick_y,
        title_lines=title_lines,
        reference=(x(reference), 8.0, axis_y) if reference is not None else None,
    )


@dataclass(frozen=True, slots=True)
class MapArea:
    """An area of the access map: its centre, a radius by population, its access tercile."""

    area: dict[str, Any]
    x: float
    y: float
    radius: float
    tercile: int  # 0 least access, 1 middle, 2 most access
    colour: str


ACCESS_TERCILE_COLOURS = (PALETTE[0], PALETTE[1], PALETTE[5])


def access_map_areas(
    access: Sequence[dict[str, Any]], width: int = 640, height: int = 420, pad: int = 30
) -> list[MapArea]:
    """The report's access map as positions (the same projection, sizes and terciles as its
    HTML map), for a dashboard to draw."""
    placed = [a for a in access if a.get("lat") is not None and a.get("lon") is not None]
    if not placed:
        return []
    lats = [a["lat"] for a in placed]
    lons = [a["lon"] for a in placed]
    scores = [a["score"] for a in placed]
    lo_lat, hi_lat, lo_lon, hi_lon = min(lats), max(lats), min(lons), max(lons)
    lo_s, hi_s = min(scores), max(scores)
    biggest = max(p["population"] for p in placed) or 1
    out = []
    for a in placed:
        px = pad + (width - 2 * pad) * ((a["lon"] - lo_lon) / ((hi_lon - lo_lon) or 1))
        py = height - pad - (height - 2 * pad) * ((a["lat"] - lo_lat) / ((hi_lat - lo_lat) or 1))
        t = (a["score"] - lo_s) / ((hi_s - lo_s) or 1)
        if a["method"] == "nearest":
            t = 1 - t  # longer distance is worse
        tercile = 0 if t < 0.33 else 1 if t < 0.66 else 2
        radius = 4 + 10 * (a["population"] / biggest) ** 0.5
        out.append(MapArea(a, px, py, radius, tercile, ACCESS_TERCILE_COLOURS[tercile]))
    return out
