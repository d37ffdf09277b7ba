"""The equity dashboard in a real Chromium: the newest published report, one indicator by one
dimension or a pair; the equiplot with a legend entry per subgroup, the table with 95%
intervals and suppression marks, the summary measures and the access map, in Arabic, Persian
and English, with every chart label inside its chart and no serious axe violation. A clinician
gets no dashboard; without a published report the page says how to publish one."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import orjson
import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import expect
from typer.testing import CliRunner

from takamul.api import create_app
from takamul.cli import app
from takamul.security.audit import AuditLog
from takamul.security.service import Security
from takamul.settings import Settings
from takamul.synth import generate, load_config
from tests.web_world import PASSWORD, WebSite, axe_violations, set_preferences, signed_in

INDICATOR = "dm_screen"
INCOME = "Household income quintile"
REGION = "Region"
SEX = "Sex"
# what a screen reader hears, per language (the .po files' translations)
WORDS = {
    "en": {
        "title": "Equity dashboard",
        "indicator": "Indicator",
        "dimension": "Dimension of inequality",
        "dimension2": "Second dimension (intersection)",
        "equiplot": "Equiplot",
        "suppressed": "Suppressed",
        "sii": "Slope index of inequality",
        "income": INCOME,
        "region": REGION,
        "sex": SEX,
        "access": "Spatial access to primary care",
    },
    "ar": {
        "title": "لوحة الإنصاف الصحي",
        "indicator": "المؤشر",
        "dimension": "بُعد عدم المساواة",
        "dimension2": "بُعد ثانٍ (تقاطع)",
        "equiplot": "مخطط الإنصاف",
        "suppressed": "محجوب",
        "sii": "مؤشر ميل عدم المساواة",
        "income": "خُمس دخل الأسرة",
        "region": "المنطقة",
        "sex": "الجنس",
        "access": "الوصول المكاني إلى الرعاية الأولية",
    },
    "fa": {
        "title": "داشبورد عدالت در سلامت",
        "indicator": "شاخص",
        "dimension": "بُعد نابرابری",
        "dimension2": "بُعد دوم (تقاطع)",
        "equiplot": "نمودار عدالت",
        "suppressed": "پنهان‌شده",
        "sii": "شاخص شیب نابرابری",
        "income": "پنجک درآمد خانوار",
        "region": "منطقه",
        "sex": "جنس",
        "access": "دسترسی مکانی به مراقبت‌های اولیه",
    },
}
DIGITS = {"latin": "0-9", "arab": "٠-٩", "persian": "۰-۹"}
# (text, box) of every <text> of the dashboard's SVGs whose box, measured by the browser, leaves
# the SVG's viewBox: a label cut by the chart's edge
CUT_LABELS = """() => [...document.querySelectorAll("svg.equity-chart")].flatMap(svg => {
  const v = svg.viewBox.baseVal;
  return [...svg.querySelectorAll("text")].map(t => [t.textContent, t.getBBox()])
    .filter(([_, b]) => b.x < v.x - 0.5 || b.y < v.y - 0.5
      || b.x + b.width > v.x + v.width + 0.5 || b.y + b.height > v.y + v.height + 0.5)
    .map(([text, b]) => [text, [b.x, b.y, b.width, b.height]]);
})"""


@pytest.fixture(scope="module")
def published(web_site: WebSite, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A report of a small synthetic population (with intersections and spatial access),
    published into the test server's store as ``takamul equity report --publish`` does."""
    folder = tmp_path_factory.mktemp("web-equity")
    population = folder / "population"
    generate(load_config(None, country="SA", patients=800, seed=41, years=2), population)
    args = ["equity", "report", "--input", str(population), "--db", web_site.db, "--publish"]
    out = ["--out", str(folder / "report.html"), "--json", str(folder / "report.json")]
    result = CliRunner().invoke(app, [*args, *out, "--pairs", "--trend-years", "0"])
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = orjson.loads((folder / "report.json").read_bytes())
    return report


def _indicator(report: dict[str, Any]) -> dict[str, Any]:
    return next(i for i in report["indicators"] if i["id"] == INDICATOR)


def _subgroups(report: dict[str, Any], dimension: str) -> list[dict[str, Any]]:
    ind = _indicator(report)
    return next(d["subgroups"] for d in ind["dimensions"] if d["dimension"] == dimension)


def _choose(page: Any, words: dict[str, str], field: str, value: str, heading: str) -> None:
    """Pick an option; htmx swaps the results in (the heading names the choice)."""
    page.get_by_role("combobox", name=words[field], exact=True).select_option(value)
    # htmx pushes the choice into the address once the results are swapped in
    page.wait_for_url(lambda url: f"{field}={value}" in unquote_plus(url))
    page.get_by_role("heading", level=2).filter(has_text=heading).wait_for()


def _check_readable(page: Any, numerals: str) -> None:
    assert page.evaluate(CUT_LABELS) == []
    assert page.locator("svg.equity-chart text").count() > 0
    other = "".join(v for k, v in DIGITS.items() if k != numerals)
    ticks = page.locator("svg.equity-chart text.equity-tick").all_text_contents()
    assert ticks and all(re.fullmatch(f"[{DIGITS[numerals]}.]+", t) for t in ticks), ticks
    cells = " ".join(page.locator("table.equity-table td").all_inner_texts())
    assert re.search(f"[{DIGITS[numerals]}]", cells) and not re.search(f"[{other}]", cells)
    assert axe_violations(page) == []


@pytest.mark.parametrize(
    ("lang", "calendar", "numerals"),
    [("ar", "hijri", "arab"), ("fa", "jalali", "persian"), ("en", "gregorian", "latin")],
)
def test_analyst_reads_an_indicator_by_dimension_and_pair(
    web_site: WebSite,
    chromium: Any,
    published: dict[str, Any],
    lang: str,
    calendar: str,
    numerals: str,
) -> None:
    words = WORDS[lang]
    page = signed_in(chromium, web_site, "analyst", bypass_csp=True)
    set_preferences(page, lang, calendar, numerals)
    page.get_by_role("navigation").get_by_role("link", name=words["title"]).click()
    expect(page.get_by_role("heading", level=1, name=words["title"])).to_be_visible()
    assert page.locator("html").get_attribute("dir") == ("ltr" if lang == "en" else "rtl")

    # one dimension: income quintile, an equiplot with a legend entry per subgroup
    _choose(page, words, "indicator", INDICATOR, heading="")
    _choose(page, words, "dimension", INCOME, words["income"])
    assert f"indicator={INDICATOR}" in page.url  # pushed: a link to this view
    chart = page.get_by_role("img", name=re.compile(words["equiplot"]))
    assert chart.is_visible()
    income = _subgroups(published, INCOME)
    legend = page.locator("figure.equity-figure").first.locator(".equity-legend li")
    assert legend.count() == len(income) + 1  # every subgroup and the national average
    for s in income:
        assert legend.filter(has_text=s["subgroup"]).count() == 1
    rows = page.locator("table.equity-table").first.locator("tbody tr")
    assert rows.count() == len(income)
    shown = next(s for s in income if s["estimate"] is not None)
    row = rows.filter(has_text=shown["subgroup"]).first
    low = re.escape(_digits(f"{shown['ciLow']:.1f}", numerals))
    high = re.escape(_digits(f"{shown['ciHigh']:.1f}", numerals))
    assert re.search(f"{low} – {high}", row.inner_text())  # the 95% interval as published
    measures = page.get_by_role("table").filter(has_text=words["sii"])
    assert measures.get_by_role("rowheader", name=re.compile(words["sii"])).count() == 1
    assert page.get_by_role("heading", name=words["access"]).is_visible()
    assert page.get_by_role("img", name=re.compile("")).count() >= 2  # equiplot and map
    _check_readable(page, numerals)

    # region: small regions are suppressed, and the table says so and why
    _choose(page, words, "dimension", REGION, words["region"])
    hidden = [s for s in _subgroups(published, REGION) if s["suppressed"]]
    assert hidden, "the seeded report has suppressed regions"
    marked = page.locator("tr.equity-suppressed")
    assert marked.count() == len(hidden)
    first = marked.filter(has_text=hidden[0]["subgroup"])
    assert words["suppressed"] in first.inner_text()
    assert re.search(f"[{DIGITS[numerals]}]", first.inner_text())  # "fewer than N people"
    _check_readable(page, numerals)

    # a pair: income quintile by sex, each row a quintile, a legend entry per sex
    _choose(page, words, "dimension", INCOME, words["income"])
    _choose(page, words, "dimension2", SEX, words["sex"])
    assert "dimension2=Sex" in page.url
    pair = next(
        p
        for p in published["intersections"]
        if p["indicator"] == INDICATOR and {p["dimension"], p["dimension2"]} == {INCOME, SEX}
    )
    assert page.locator("table.equity-table").first.locator("tbody tr").count() == len(
        pair["cells"]
    )
    sexes = {c["subgroup2"] for c in pair["cells"]}
    legend = page.locator("figure.equity-figure").first.locator(".equity-legend li")
    assert legend.count() == len(sexes) + 1
    _check_readable(page, numerals)
    page.context.close()


def _digits(text: str, numerals: str) -> str:
    table = {"arab": "٠١٢٣٤٥٦٧٨٩", "persian": "۰۱۲۳۴۵۶۷۸۹"}.get(numerals)
    return text.translate(str.maketrans("0123456789", table)) if table else text


def test_the_form_works_without_javascript_and_views_are_audited(
    web_site: WebSite, published: dict[str, Any]
) -> None:
    log = AuditLog.from_url(web_site.db)
    before = log.search(agent="analyst", count=1).total
    client = web_site.login_http("analyst")
    client.post(
        "/app/preferences",
        data={"lang": "en", "calendar": "gregorian", "numerals": "latin", "csrf": _csrf(client)},
    )
    r = client.get("/app/equity", params={"indicator": "mh_gap", "dimension": REGION})
    assert r.status_code == 200 and r.text.startswith("<!doctype html>")
    assert "Mental health treatment gap" in r.text and 'class="equity-chart"' in r.text
    # htmx asks for the results only
    part = client.get(
        "/app/equity",
        params={"indicator": "mh_gap", "dimension": REGION},
        headers={"HX-Request": "true"},
    )
    assert part.status_code == 200 and part.text.lstrip().startswith('<div id="equity-results"')
    # a stale or made-up choice falls back on what the report has
    r = client.get("/app/equity", params={"indicator": "nope", "dimension": "nope"})
    assert r.status_code == 200 and 'class="equity-chart"' in r.text
    deadline = time.time() + 10
    while log.search(agent="analyst", count=1).total < before + 3 and time.time() < deadline:
        time.sleep(0.2)
    events = log.search(agent="analyst", count=5).events
    queries = [
        base64.b64decode(e["entity"][0]["query"]).decode()
        for e in events
        if e.get("entity") and e["entity"][0].get("query")
    ]
    assert any("indicator=mh_gap" in q and f"dimension={REGION}" in q for q in queries), queries


def _csrf(client: Any) -> str:
    return str(client.get("/app/").text.split('data-csrf="')[1].split('"')[0])


def test_a_clinician_gets_no_dashboard(web_site: WebSite, chromium: Any) -> None:
    page = signed_in(chromium, web_site, "clinician", bypass_csp=True)
    set_preferences(page, "en", "gregorian", "latin")
    assert page.get_by_role("navigation").get_by_role("link", name="Equity dashboard").count() == 0
    response = page.goto(web_site.url("/app/equity"))
    assert response is not None and response.status == 403
    assert page.get_by_role("heading", name="Not allowed").is_visible()
    assert page.locator("svg.equity-chart").count() == 0
    assert axe_violations(page) == []
    page.context.close()


def test_without_a_published_report_the_page_says_how_to_publish(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    settings = Settings(database_url=db, export_dir=tmp_path, auth=True, mpi=False)
    client = TestClient(create_app(settings), base_url="https://testserver")
    Security.open(db).users.add("analyst-empty", PASSWORD, ["analyst"], None, "Analyst")
    r = client.post(
        "/app/login",
        data={"username": "analyst-empty", "password": PASSWORD, "next": "/app/equity"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    page = client.get("/app/equity")
    assert page.status_code == 200
    assert "No equity report has been published yet" in page.text
    assert "takamul equity report --db URL --publish" in page.text
