"""The equity report: one self-contained HTML page (no network needed to open it) and the same
results as JSON for dashboards.

It answers "who is being left behind, where, and by how much?": per indicator an equiplot (each
dimension a line, each subgroup a dot on it, as HEAT draws them), the summary measures of
inequality, a map of spatial access to care, and findings in plain language generated from
the numbers. Charts are inline SVG; text runs in either direction (`dir="auto"`), so Arabic and
Persian labels display right to left.
"""

from __future__ import annotations

import html
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from takamul.equity.access import AccessReport, Demand
from takamul.equity.heat import MeasureRow, compute_rows, read_template
from takamul.equity.indicators import IndicatorResults, heat_rows, result_dicts
from takamul.equity.measures import ComputeOptions, Measure

__all__ = ["EquityReport", "build_report", "render_html"]

# Subgroup colours of the equiplots: ordered dimensions go from warm (disadvantaged) to cool.
PALETTE = ["#b2182b", "#ef8a62", "#fddbc7", "#d1e5f0", "#67a9cf", "#2166ac", "#5e3c99", "#1b7837"]
SHOWN_MEASURES = ("d", "r", "sii", "rii", "aci", "rci", "bgv", "paf", "par", "idisw", "mld", "ti")


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


def _findings(indicators: list[dict[str, Any]], measures: list[dict[str, Any]]) -> list[str]:
    """Plain-language sentences: for each indicator, the dimension with the widest gap between
    its best and worst subgroup, and whether the gap's interval excludes no difference."""
    diffs = {(m["indicator"], m["dimension"]): m for m in measures if m["measure"] == "d"}
    out = []
    for ind in indicators:
        unit = "%" if ind["scale"] == 100 else ""
        widest: tuple[float, dict[str, Any], dict[str, Any], dict[str, Any]] | None = None
        for dim in ind["dimensions"]:
            shown = [s for s in dim["subgroups"] if s["estimate"] is not None]
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
        findings=_findings(indicators, measures),
        access=_access_entries(access, demand),
        trends=trend_entries([*history, results]) if history else [],
    )


# -- HTML ------------------------------------------------------------------------------------


def _e(text: Any) -> str:
    return html.escape(str(text))


def _equiplot(ind: dict[str, Any]) -> str:
    """Each dimension a row: a grey line from lowest to highest subgroup, a dot per subgroup."""
    scale = float(ind["scale"] or 100) if ind["scale"] == 100 else None
    values = [
        s["estimate"]
        for d in ind["dimensions"]
        for s in d["subgroups"]
        if s["estimate"] is not None
    ]
    if not values:
        return "<p>All cells suppressed.</p>"
    hi = scale if scale else max(values) * 1.1 or 1.0
    width, left, row = 640, 170, 34
    height = row * len(ind["dimensions"]) + 30

    def x(v: float) -> float:
        return left + (width - left - 20) * max(0.0, min(v / hi, 1.0))

    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" class="equiplot">']
    for i, dim in enumerate(ind["dimensions"]):
        y = 20 + i * row
        shown = [s for s in dim["subgroups"] if s["estimate"] is not None]
        parts.append(
            f'<text x="{left - 8}" y="{y + 4}" text-anchor="end">{_e(dim["dimension"])}</text>'
        )
        if len(shown) >= 2:
            lo_v = min(s["estimate"] for s in shown)
            hi_v = max(s["estimate"] for s in shown)
            parts.append(
                f'<line x1="{x(lo_v):.1f}" x2="{x(hi_v):.1f}" y1="{y}" y2="{y}" class="span"/>'
            )
        for j, s in enumerate(shown):
            colour = PALETTE[j % len(PALETTE)]
            label = f"{s['subgroup']}: {s['estimate']:.1f}"
            parts.append(
                f'<circle cx="{x(s["estimate"]):.1f}" cy="{y}" r="6" fill="{colour}">'
                f"<title>{_e(label)}</title></circle>"
            )
    axis_y = height - 8
    for tick in np.linspace(0, hi, 5):
        parts.append(f'<text x="{x(tick):.1f}" y="{axis_y}" class="tick">{tick:.0f}</text>')
    parts.append("</svg>")
    return "".join(parts)


TREND_LINES = (("national", "#444"), ("poorest", PALETTE[0]), ("richest", PALETTE[5]))


def _trend_chart(trend: dict[str, Any]) -> str:
    """National, poorest and richest quintile over the period ends: is the gap closing?"""
    points = trend["points"]
    values = [p[k] for p in points for k, _ in TREND_LINES if p[k] is not None]
    if len(points) < 2 or not values:
        return ""
    width, height, pad = 420, 160, 30
    hi = float(trend["scale"]) if trend["scale"] == 100 else max(values) * 1.1 or 1.0

    def xy(i: int, v: float) -> str:
        x = pad + (width - 2 * pad) * i / (len(points) - 1)
        y = height - pad - (height - 2 * pad) * min(v / hi, 1.0)
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" class="trend">']
    for key, colour in TREND_LINES:
        line = [xy(i, p[key]) for i, p in enumerate(points) if p[key] is not None]
        if len(line) >= 2:
            parts.append(
                f'<polyline points="{" ".join(line)}" fill="none" stroke="{colour}" '
                f'stroke-width="2"><title>{key}</title></polyline>'
            )
    for i, p in enumerate(points):
        x = pad + (width - 2 * pad) * i / (len(points) - 1)
        parts.append(f'<text x="{x:.1f}" y="{height - 8}" class="tick">{p["periodEnd"][:4]}</text>')
    parts.append("</svg>")
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
.equiplot text,.map text,.trend text{font-size:11px}.trend .tick{text-anchor:middle}
.equiplot .tick{fill:#777;text-anchor:middle}
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
                "<p>Trend: national (grey), poorest quintile (red), richest quintile (blue).</p>",
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
