"""``takamul equity report``: a self-contained HTML page (equiplots, summary measures, access
map, findings) and its JSON, published to the shared record and served by the API."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from takamul.api import create_app
from takamul.cli import app
from takamul.equity.report import EquityReport, gap_findings, render_html, subgroup_styles
from takamul.settings import Settings
from takamul.synth import generate, load_config

# The tests' own estimate of SVG text width (11px sans-serif): 0.6 em a character is wider than
# the average glyph of the common faces, so a text inside this box is inside the chart.
FONT_PX = 11
CHAR_PX = 0.6 * FONT_PX


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report-synth")
    generate(load_config(None, country="SA", patients=1500, seed=41, years=2), out)
    return out


@pytest.fixture(scope="module")
def report(population: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    folder = tmp_path_factory.mktemp("report")
    db = f"sqlite:///{folder / 'takamul.sqlite'}"
    html, data = folder / "report.html", folder / "report.json"
    args = ["equity", "report", "--input", str(population), "--out", str(html)]
    result = CliRunner().invoke(app, [*args, "--json", str(data), "--db", db, "--publish"])
    assert result.exit_code == 0, result.output
    return html, data, db


def test_the_page_is_self_contained(report: tuple[Path, Path, str]) -> None:
    page = report[0].read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    # nothing to fetch when it is opened: no external script, style, image or font
    assert not re.search(r"""(src|href)=["']?https?://""", page)
    assert "<script" not in page
    assert page.count('class="equiplot"') >= 10
    assert 'class="map"' in page
    assert 'class="trend"' in page
    assert "من يتخلف عن الركب" in page and 'dir="auto"' in page  # Arabic kept, either direction


def test_json_carries_indicators_measures_findings_and_access(
    report: tuple[Path, Path, str],
) -> None:
    data = orjson.loads(report[1].read_bytes())
    ids = {i["id"] for i in data["indicators"]}
    assert {"dm_screen", "dm_control", "mh_gap", "travel_pc"} <= ids
    screening = next(i for i in data["indicators"] if i["id"] == "dm_screen")
    income = next(d for d in screening["dimensions"] if d["ordered"] and "ncome" in d["dimension"])
    shown = [s for s in income["subgroups"] if s["estimate"] is not None]
    assert len(shown) >= 4 and all(s["ciLow"] <= s["estimate"] <= s["ciHigh"] for s in shown)
    assert all(s["population"] is None or s["population"] >= data["minCell"] for s in shown)
    measures = {(m["indicator"], m["measure"]) for m in data["measures"]}
    assert ("dm_screen", "sii") in measures and ("dm_screen", "d") in measures
    assert any("dm_screen" in f or "Diabetes screening" in f for f in data["findings"])
    assert data["access"] and data["access"][0]["rank"] == 1
    trend = next(t for t in data["trends"] if t["id"] == "dm_screen")
    ends = [p["periodEnd"] for p in trend["points"]]
    assert len(ends) == 3 and ends == sorted(ends)  # two earlier years and the report's
    assert all(p["national"] is not None for p in trend["points"])


def test_the_api_serves_the_published_report(
    report: tuple[Path, Path, str], tmp_path: Path
) -> None:
    db = report[2]
    open_app = create_app(Settings(database_url=db, export_dir=tmp_path, auth=False, mpi=False))
    client = TestClient(open_app)
    r = client.get("/equity/report")
    assert r.status_code == 200 and r.json()["indicators"]
    page = client.get("/equity/report.html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    secured = TestClient(create_app(Settings(database_url=db, export_dir=tmp_path, mpi=False)))
    assert secured.get("/equity/report").status_code == 401


def test_report_needs_data() -> None:
    result = CliRunner().invoke(app, ["equity", "report", "--out", "x.html"])
    assert result.exit_code == 2


# -- readable charts (issue 11, finding 8) --------------------------------------------------------


def _svgs(page: str, kind: str) -> list[ET.Element]:
    """The inline SVGs of one class, parsed as XML (the report writes them well-formed)."""
    found = re.findall(rf'<svg[^>]*class="{kind}".*?</svg>', page, re.S)
    return [ET.fromstring(svg) for svg in found]


def _view_box(svg: ET.Element) -> tuple[float, float]:
    _, _, width, height = (float(v) for v in svg.attrib["viewBox"].split())
    return width, height


def _text_lines(svg: ET.Element) -> list[tuple[str, float, float, str]]:
    """(text, x, y, anchor) of every line of text: a <text> or each of its <tspan>s."""
    out = []
    for text in svg.iter("text"):
        anchor = text.get("text-anchor", "start")
        spans = list(text.iter("tspan"))
        if spans:
            out += [
                (t.text or "", float(t.attrib["x"]), float(t.attrib["y"]), anchor) for t in spans
            ]
        else:
            out.append((text.text or "", float(text.attrib["x"]), float(text.attrib["y"]), anchor))
    return out


def _assert_text_fits(svg: ET.Element) -> None:
    width, height = _view_box(svg)
    for text, x, y, anchor in _text_lines(svg):
        w = len(text) * CHAR_PX
        lo = {"start": x, "middle": x - w / 2, "end": x - w}[anchor]
        assert lo >= 0, f"{text!r} starts at {lo:.0f}, left of the chart"
        assert lo + w <= width, f"{text!r} ends at {lo + w:.0f}, right of the chart ({width:.0f})"
        assert FONT_PX <= y <= height, f"{text!r} at y {y} outside the chart (0-{height:.0f})"


def _title(svg: ET.Element) -> str:
    title = svg.find("title")
    assert title is not None and title.text
    return title.text


MARKERS = ("circle", "rect", "polygon")


def _marker_key(entry: ET.Element) -> tuple[str, str, str] | None:
    mark = next((c for c in entry if c.tag in MARKERS), None)
    if mark is None:
        return None
    return mark.tag, mark.attrib["fill"], mark.attrib["stroke"]


def test_every_equiplot_has_a_legend_naming_each_subgroup(report: tuple[Path, Path, str]) -> None:
    page = report[0].read_text(encoding="utf-8")
    data = orjson.loads(report[1].read_bytes())
    plots = {_title(svg): svg for svg in _svgs(page, "equiplot")}
    checked = 0
    for ind in data["indicators"]:
        svg = plots.get(f"Equiplot: {ind['name']} by dimension of inequality")
        if svg is None:  # every cell suppressed: no chart
            continue
        legends = {
            g.attrib["data-dimension"]: g for g in svg.iter("g") if g.get("class") == "legend"
        }
        assert set(legends) == {d["dimension"] for d in ind["dimensions"]}
        unit = "%" if ind["scale"] == 100 else ""
        for dim in ind["dimensions"]:
            entries = [e for e in legends[dim["dimension"]] if e.get("class") == "legend-entry"]
            assert [e.attrib["data-subgroup"] for e in entries] == [
                s["subgroup"] for s in dim["subgroups"]
            ]
            keys = []
            for entry, s in zip(entries, dim["subgroups"], strict=True):
                label = "".join(entry.itertext())
                if s["estimate"] is None:
                    assert label.endswith("suppressed") and _marker_key(entry) is None
                    continue
                assert f"{s['estimate']:.1f}{unit}" in label
                key = _marker_key(entry)
                assert key is not None
                keys.append(key)
            # the legend's markers tell every subgroup of the dimension apart
            assert len(set(keys)) == len(keys), dim["dimension"]
            checked += len(entries)
    assert checked > 100


def test_chart_labels_fit_inside_the_charts(report: tuple[Path, Path, str]) -> None:
    page = report[0].read_text(encoding="utf-8")
    svgs = _svgs(page, "equiplot") + _svgs(page, "trend")
    assert len(svgs) >= 20
    for svg in svgs:
        _assert_text_fits(svg)
    # the long dimension names are there, whole, wrapped over lines rather than cut
    plot = _svgs(page, "equiplot")[0]
    names = [" ".join(t.text or "" for t in text.iter("tspan")) for text in plot.iter("text")]
    assert "Health coverage (payer, or uninsured)" in names


def test_trend_charts_have_a_y_axis_and_the_values(report: tuple[Path, Path, str]) -> None:
    page = report[0].read_text(encoding="utf-8")
    data = orjson.loads(report[1].read_bytes())
    charts = {_title(svg): svg for svg in _svgs(page, "trend")}
    assert charts
    for trend in data["trends"]:
        svg = charts.get(f"Trend: {trend['name']}")
        if svg is None:
            continue
        ticks = [(float(t.attrib["y"]), float(t.text or "")) for t in svg.iter("text")
                 if t.get("class") == "ytick"]  # fmt: skip
        assert len(ticks) >= 3
        # higher values higher up: sorted by position the labels go down
        by_height = [v for _, v in sorted(ticks)]
        assert by_height == sorted(by_height, reverse=True) and by_height[-1] == 0
        points = [p[k] for p in trend["points"] for k in ("national", "poorest", "richest")]
        unit = "%" if trend["scale"] == 100 else ""
        values = sorted(t.text or "" for t in svg.iter("text") if t.get("class") == "value")
        assert values == sorted(f"{v:.1f}{unit}" for v in points if v is not None)
        assert max(v for v in points if v is not None) <= max(by_height)
        legend = [e.get("data-series") for e in svg.iter("g") if e.get("class") == "legend-entry"]
        assert legend == ["national", "poorest", "richest"]


def test_no_finding_compares_with_unknown(report: tuple[Path, Path, str]) -> None:
    data = orjson.loads(report[1].read_bytes())
    assert data["findings"]
    assert not [f for f in data["findings"] if "unknown" in f.lower()]
    subgroups = [s for i in data["indicators"] for d in i["dimensions"] for s in d["subgroups"]]
    assert all(isinstance(s["unknown"], bool) for s in subgroups)
    unknown = {s["subgroup"] for s in subgroups if s["unknown"]}
    # the two sides of a gap: "by <dimension>: <worse> <value> against <better> <value>"
    sides = [(f": {label} ", f"against {label} ") for label in unknown]
    assert not [f for f in data["findings"] for side in sides if side[0] in f or side[1] in f]


def _subgroup(name: str, estimate: float | None, unknown: bool = False) -> dict[str, Any]:
    return {
        "subgroup": name,
        "estimate": estimate,
        "ciLow": None if estimate is None else estimate - 2,
        "ciHigh": None if estimate is None else estimate + 2,
        "population": None if estimate is None else 100,
        "suppressed": "primary" if estimate is None else None,
        "unknown": unknown,
    }


LONG_DIMENSION = "Education (highest level completed by any adult member of the household)"


def _made_up_report() -> EquityReport:
    """A report made by hand: an 'unknown' subgroup with the widest gap, long labels, a
    suppressed cell, twelve non-ordered subgroups, a trend."""
    education = {
        "dimension": LONG_DIMENSION,
        "ordered": True,
        "subgroups": [
            _subgroup("Primary", 40.0),
            _subgroup("Secondary", 50.0),
            _subgroup("unknown", 95.0, unknown=True),
        ],
    }
    region = {
        "dimension": "Region",
        "ordered": False,
        "subgroups": [
            _subgroup(f"Province number {i:02d} of the Kingdom", 45.0 + i) for i in range(12)
        ]
        + [_subgroup("Tabuk", None)],
    }
    indicator = {
        "id": "dm_screen",
        "abbr": "dm_screen",
        "name": "Diabetes screening coverage, adults 40+ without diabetes (3 years)",
        "scale": 100.0,
        "favourable": True,
        "national": {"estimate": 50.0, "ciLow": 48.0, "ciHigh": 52.0, "population": 1200},
        "dimensions": [education, region],
        "cells": 15,
    }
    points = [
        {"periodEnd": "2022-12-31", "national": 30.0, "poorest": 20.0, "richest": 41.5},
        {"periodEnd": "2023-12-31", "national": 35.0, "poorest": 35.0, "richest": None},
        {"periodEnd": "2024-12-31", "national": 50.0, "poorest": 44.0, "richest": 58.0},
    ]
    indicators = [indicator]
    return EquityReport(
        title="Test",
        period_end="2024-12-31",
        people=1200,
        min_cell=10,
        indicators=indicators,
        measures=[],
        findings=gap_findings(indicators, []),
        access=[],
        trends=[{"id": "dm_screen", "name": indicator["name"], "scale": 100.0, "points": points}],
    )


def test_findings_leave_unknown_subgroups_out() -> None:
    report = _made_up_report()
    # 'unknown' (95%) against Primary (40%) would be the widest gap; Region's is the widest of
    # the known subgroups: 45% against 56%.
    assert report.findings == [
        "Diabetes screening coverage, adults 40+ without diabetes (3 years): 50.0% nationally. "
        "The widest gap is by Region: Province number 00 of the Kingdom 45.0% against "
        "Province number 11 of the Kingdom 56.0% (11.0 points)."
    ]
    # Without the flag, a subgroup labelled 'unknown' is recognised by its label.
    for dim in report.indicators[0]["dimensions"]:
        for s in dim["subgroups"]:
            del s["unknown"]
    assert gap_findings(report.indicators, []) == report.findings


def test_made_up_report_charts_are_readable() -> None:
    report = _made_up_report()
    page = render_html(report)
    (plot,) = _svgs(page, "equiplot")
    _assert_text_fits(plot)
    (trend,) = _svgs(page, "trend")
    _assert_text_fits(trend)
    legend = {g.attrib["data-dimension"]: g for g in plot.iter("g") if g.get("class") == "legend"}
    education = ["".join(e.itertext()) for e in legend[LONG_DIMENSION]]
    assert education == ["Primary: 40.0%", "Secondary: 50.0%", "unknown (not recorded): 95.0%"]
    # the unknown subgroup is drawn hollow and grey, and is not part of the grey span
    styles = subgroup_styles(report.indicators[0]["dimensions"][0])
    assert styles[2] == ("#888888", "circle", True)
    region = [e for e in legend["Region"] if e.get("class") == "legend-entry"]
    assert len(region) == 13 and "".join(region[-1].itertext()) == "Tabuk: suppressed"
    keys = [_marker_key(e) for e in region[:12]]
    assert None not in keys and len(set(keys)) == 12  # twelve distinct colour-and-shape markers
    values = sorted(t.text or "" for t in trend.iter("text") if t.get("class") == "value")
    assert values == sorted(
        ["30.0%", "20.0%", "41.5%", "35.0%", "35.0%", "50.0%", "44.0%", "58.0%"]
    )
    ticks = [t.text for t in trend.iter("text") if t.get("class") == "ytick"]
    assert ticks == ["0", "20", "40", "60"]
