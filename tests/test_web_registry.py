"""The care programmes' registry screen and control chart in a real Chromium, on both stores:
hand-built persons at a facility of their own (every status of the hypertension registry, a
person with records at two facilities, a person of another facility), counts equal to
``statuses(...)`` computed directly, the overdue list high risk first, another facility's person
neither listed nor charted, ar/fa/en with their direction, axe-core, the CSP, and the record
page's open care gap.
"""

from __future__ import annotations

import os
import random
import re
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from takamul.programmes.definitions import load_catalog
from takamul.programmes.status import statuses
from takamul.registry.identifiers import luhn_valid
from takamul.settings import Settings
from takamul.store.repository import Store
from takamul.web.i18n import translations
from tests.test_programmes_status import bp, condition, encounter, patient
from tests.web_world import PASSWORD, WebSite, axe_violations, set_preferences, signed_in

# the same in every xdist worker of a run (test ids may be made from it), new in every run
RUN = (os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex)[:6]
FAC = f"org-reg-{RUN}"
AS_OF = date(2025, 6, 30)
SA_ID = "https://takamul.health/fhir/sid/sa-national-id"
LOGINS = {
    "chw": f"reg-chw-{RUN}",
    "clinician": f"reg-clin-{RUN}",
    "coordinator": f"reg-coord-{RUN}",
}
ROLE = {
    "chw": "community-health-worker",
    "clinician": "clinician",
    "coordinator": "care-coordinator",
}
# expected hypertension statuses on AS_OF at FAC (see the builders in test_programmes_status)
EXPECTED = {
    "controlled": 2,  # ctrl, two-fac (controlled by the reading taken at the other facility)
    "uncontrolled": 1,
    "visited-no-measurement": 1,
    "missed-visit": 2,  # high, normal-old
    "lost-to-follow-up": 1,
    "registered-recently": 1,
}
OVERDUE_ORDER = ("high", "lost", "normal-old", "recent")  # high risk first, then most overdue


def _pid(key: str) -> str:
    return f"r{RUN}-{key}"


def _saudi_id() -> str:
    stem = "1" + "".join(random.choice("0123456789") for _ in range(8))
    return next(stem + d for d in "0123456789" if luhn_valid(stem + d))


def _put(site: WebSite, body: dict[str, Any]) -> None:
    r = site.fhir.put(f"/{body['resourceType']}/{body['id']}", json=body)
    assert r.status_code in (200, 201), r.text


def _named(pid: str, org: str, given: str, **extra: Any) -> dict[str, Any]:
    return patient(pid, org, name=[{"given": [given], "family": f"الحربي-{RUN}"}], **extra)


@pytest.fixture(scope="module")
def world(web_site: WebSite) -> dict[str, str]:
    _put(
        web_site,
        {
            "resourceType": "Organization",
            "id": FAC,
            "name": "مركز النسيم الصحي",
            "address": [{"city": "Riyadh", "country": "SA"}],
        },
    )
    for key, login in LOGINS.items():
        web_site.security.users.add(login, PASSWORD, [ROLE[key]], FAC, f"Registry {key}")
    given = {
        "ctrl": "سعاد",
        "unctrl": "منيرة",
        "recent": "لطيفة",
        "high": "نورة",
        "normal-old": "هيا",
        "lost": "موضي",
        "vnm": "شيخة",
    }
    for key, name in given.items():
        _put(web_site, _named(_pid(key), FAC, name))
    resources = [
        condition(_pid("ctrl"), 1, "2024-01-10"),
        bp(_pid("ctrl"), 1, "2025-06-01", 139, 89, FAC),
        condition(_pid("unctrl"), 1, "2024-01-10"),
        bp(_pid("unctrl"), 1, "2025-06-01", 150, 95, FAC),
        condition(_pid("recent"), 1, "2025-05-01"),
        bp(_pid("recent"), 1, "2025-05-02", 170, 100, FAC),
        condition(_pid("high"), 1, "2024-01-10"),
        bp(_pid("high"), 1, "2025-01-10", 185, 115, FAC),
        condition(_pid("normal-old"), 1, "2023-01-10"),
        bp(_pid("normal-old"), 1, "2024-09-01", 120, 80, FAC),
        condition(_pid("lost"), 1, "2023-01-10"),
        encounter(_pid("lost"), 1, "2024-03-01", org=FAC),
        condition(_pid("vnm"), 1, "2024-01-10"),
        encounter(_pid("vnm"), 1, "2025-06-10", org=FAC),
    ]
    # one person registered here and in Tehran (the registry links them): the reading taken in
    # Tehran controls them, the visit here makes this facility the responsible one
    national_id = _saudi_id()
    same = {
        "identifier": [{"system": SA_ID, "value": national_id}],
        "telecom": [{"system": "phone", "value": "+966505550123"}],
    }
    _put(web_site, _named(_pid("two-fac"), FAC, "ريم", **same))
    _put(web_site, _named(_pid("two-fac-tehran"), "org-tehran", "ريم", **same))
    resources += [
        condition(_pid("two-fac"), 1, "2024-01-10"),
        bp(_pid("two-fac"), 1, "2025-02-01", 160, 100, FAC),
        encounter(_pid("two-fac"), 1, "2025-06-20", org=FAC),
        bp(_pid("two-fac-tehran"), 1, "2025-06-01", 120, 70, "org-tehran"),
    ]
    # a person of another facility only
    _put(web_site, _named(_pid("tehran"), "org-tehran", "زهرا"))
    resources += [
        condition(_pid("tehran"), 1, "2024-01-10"),
        bp(_pid("tehran"), 1, "2025-01-10", 190, 120, "org-tehran"),
    ]
    for body in resources:
        _put(web_site, body)
    return {key: _pid(key) for key in [*given, "two-fac", "two-fac-tehran", "tehran"]}


def _in_english(client: Any) -> Any:
    """An HTTP client's login switched to English and Gregorian (the facility is Saudi)."""
    token = client.get("/app/").text.split('data-csrf="')[1].split('"')[0]
    r = client.post(
        "/app/preferences",
        data={"csrf": token, "lang": "en", "calendar": "gregorian", "numerals": "latin"},
    )
    assert r.status_code == 303, r.text
    return client


def _registry_url(programme: str = "hypertension", on: date = AS_OF) -> str:
    return f"/app/registry?programme={programme}&on={on.isoformat()}"


def _counts(html: str) -> dict[str, int]:
    found = re.findall(
        r'<tr id="count-([a-z-]+)"><th scope="row">[^<]*</th><td data-count="(\d+)"', html
    )
    return {status: int(n) for status, n in found}


def _overdue_ids(html: str) -> list[str]:
    return re.findall(r'<tr id="person-([^"]+)" data-risk', html)


def test_counts_match_the_statuses_computed_directly(
    web_site: WebSite, world: dict[str, str], tmp_path: Path
) -> None:
    client = _in_english(web_site.login_http(LOGINS["chw"]))
    r = client.get(_registry_url())
    assert r.status_code == 200, r.text
    shown = _counts(r.text)
    store = Store(Settings(database_url=web_site.db, export_dir=tmp_path))
    try:
        direct = statuses(store, load_catalog(), AS_OF, ["hypertension"], facility=FAC)
    finally:
        store.close()
    computed = {s: sum(1 for row in direct if row.status == s) for s in EXPECTED}
    assert shown == computed == EXPECTED
    # the control rate as HEARTS reports it: controlled / (registered - registered recently)
    assert "29%" in r.text and "(2 controlled of 7 registered for 3 months or more)" in r.text
    two = next(row for row in direct if world["two-fac"] in row.patient_ids)
    assert set(two.patient_ids) == {world["two-fac"], world["two-fac-tehran"]}


def test_the_overdue_list_puts_high_risk_first_and_keeps_to_the_facility(
    web_site: WebSite, world: dict[str, str]
) -> None:
    client = _in_english(web_site.login_http(LOGINS["coordinator"]))
    html = client.get(_registry_url()).text
    listed = _overdue_ids(html)
    assert listed == [world[k] for k in OVERDUE_ORDER]
    assert re.search(rf'id="person-{world["high"]}" data-risk="high" data-overdue="141"', html)
    # the other facility's person (high risk, overdue) is neither listed nor charted
    assert world["tehran"] not in html and world["two-fac-tehran"] not in html
    r = client.get(f"/app/registry/{world['tehran']}/chart?programme=hypertension")
    assert r.status_code == 404
    assert "There is no patient record here that you may see." in r.text
    missing = client.get("/app/registry/no-such-patient/chart?programme=hypertension")
    assert missing.status_code == 404
    strip = re.compile(r"no-such-patient|" + re.escape(world["tehran"]))
    assert strip.sub("", missing.text) == strip.sub("", r.text)  # the same page, word for word
    # roles without the registry: refused, and not in the navigation
    analyst = web_site.login_http("analyst")
    assert analyst.get(_registry_url()).status_code == 403
    assert 'href="/app/registry"' not in web_site.login_http("reviewer").get("/app/").text
    # audited: the page view names the patients shown
    for _ in range(50):
        events = (
            web_site.fhir.get(
                "/AuditEvent", params={"agent": LOGINS["coordinator"], "subtype": "search"}
            )
            .json()
            .get("entry", [])
        )
        if events:
            break
        time.sleep(0.1)
    assert events


def test_the_control_chart_draws_the_visible_records_with_targets(
    web_site: WebSite, world: dict[str, str]
) -> None:
    client = _in_english(web_site.login_http(LOGINS["clinician"]))
    r = client.get(f"/app/registry/{world['two-fac']}/chart?programme=hypertension")
    assert r.status_code == 200, r.text
    svg = r.text.split('<svg class="chart"', 1)[1].split("</svg>", 1)[0]
    assert "Target 140" in svg and "Target 90" in svg
    assert svg.count("<circle") == 2  # systolic and diastolic of the one reading made here
    # the Tehran registration is hidden from this facility: its reading is not drawn
    assert '<time datetime="2025-02-01">' in r.text
    assert '<time datetime="2025-06-01">' not in r.text
    # the status still counts the person's every record
    assert "Controlled" in r.text or "Lost to follow-up" in r.text
    # CKD's target is 130/80
    ckd = client.get(f"/app/registry/{world['two-fac']}/chart?programme=ckd")
    assert "Target 130" in ckd.text and "Target 80" in ckd.text


def test_the_page_keeps_the_content_security_policy(
    web_site: WebSite, world: dict[str, str]
) -> None:
    client = _in_english(web_site.login_http(LOGINS["chw"]))
    for url in (_registry_url(), f"/app/registry/{world['high']}/chart?programme=hypertension"):
        r = client.get(url)
        csp = r.headers["content-security-policy"]
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert not re.search(r"<script(?![^>]*\bsrc=)", r.text)  # no inline script
        assert not re.search(r"\sstyle=|\son[a-z]+=", r.text)  # no style attribute or handler
        assert r.headers["cache-control"] == "no-store"
    # a date that is not a date of the calendar says so
    bad = client.get("/app/registry?programme=hypertension&as_of=2025-13-45")
    assert bad.status_code == 200 and "The date is not a date of your calendar" in bad.text


@pytest.mark.parametrize(
    ("lang", "calendar", "typed"),
    [
        ("ar", "hijri", "1447-01-05"),
        ("fa", "jalali", "1404-04-09"),
        ("en", "gregorian", "2025-06-30"),
    ],
)
def test_the_registry_in_three_languages(
    web_site: WebSite, chromium: Any, world: dict[str, str], lang: str, calendar: str, typed: str
) -> None:
    page = signed_in(chromium, web_site, LOGINS["chw"], bypass_csp=True)
    set_preferences(page, lang, calendar)
    page.goto(web_site.url("/app/registry"))
    assert page.locator("html").get_attribute("dir") == ("rtl" if lang in ("ar", "fa") else "ltr")
    gettext = translations(lang).gettext
    assert page.get_by_role("heading", name=gettext("Care programmes"), exact=True).is_visible()
    # the as-of date typed in the viewer's calendar (2025-06-30 in each)
    page.locator("#registry-programme").select_option("hypertension")
    page.locator("#registry-as-of").fill(typed)
    page.get_by_role("button", name=gettext("Show"), exact=True).click()
    page.wait_for_url("**as_of=*")
    assert page.locator('h2 time[datetime="2025-06-30"]').count() == 1
    counts = page.locator("table.registry-counts td").evaluate_all(
        "cells => cells.map(c => Number(c.dataset.count))"
    )
    assert counts == [EXPECTED[s] for s in EXPECTED]
    assert gettext("Uncontrolled") in page.locator("table.registry-counts").inner_text()
    rows = page.locator("table.registry-overdue tbody tr").evaluate_all(
        "rows => rows.map(r => r.id.slice('person-'.length))"
    )
    assert rows == [world[k] for k in OVERDUE_ORDER]
    assert axe_violations(page) == [], lang
    page.locator(f"#person-{world['high']}").get_by_role("link", name=gettext("Chart")).click()
    page.wait_for_url("**/chart?programme=hypertension")
    assert page.locator("svg.chart").count() == 1
    assert axe_violations(page) == [], f"{lang} chart"
    page.context.close()


def test_the_record_page_shows_an_open_gap(
    web_site: WebSite, chromium: Any, world: dict[str, str]
) -> None:
    page = signed_in(chromium, web_site, LOGINS["clinician"], bypass_csp=True)
    set_preferences(page, "ar", "hijri")
    page.goto(web_site.url(f"/app/patients/{world['high']}"))
    section = page.locator("#programmes")
    gettext = translations("ar").gettext
    assert section.get_by_role("heading", name=gettext("Care programmes and gaps")).is_visible()
    gap = section.locator("#gap-hypertension-control")
    assert gap.get_attribute("data-gap") == "open-gap"
    assert gettext("Hypertension control") in gap.inner_text()
    assert gettext("Open gap") in gap.inner_text()
    status = section.locator("#programme-hypertension").inner_text()
    assert gettext("Hypertension") in status
    assert axe_violations(page) == []
    page.context.close()
    # a registry reviewer reads Patients but no diagnoses: no programmes section
    reviewer = web_site.login_http("reviewer")
    html = reviewer.get(f"/app/patients/{world['high']}").text
    assert 'id="programmes"' not in html
