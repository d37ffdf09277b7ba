"""``takamul equity report``: a self-contained HTML page (equiplots, summary measures, access
map, findings) and its JSON, published to the shared record and served by the API."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from takamul.api import create_app
from takamul.cli import app
from takamul.settings import Settings
from takamul.synth import generate, load_config


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
