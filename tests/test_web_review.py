"""The registry review queue in a real Chromium: the uncertain pairs the client registry queued
(registrations of one name in Arabic or Persian script and in Latin letters, with a mis-keyed
sex), shown side by side in both scripts and both calendars; a reviewer links a pair, undoes
it, keeps another apart, unlinks a record; a clinician has no access; axe-core in ar, fa, en.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from takamul.web.prefs import Preferences
from takamul.web.render import render
from tests.web_world import PASSWORD, WebSite, axe_violations, set_preferences, signed_in

REVIEWER = "review-screen-reviewer"  # this module's own login: its preferences are its own
GOLDEN = "https://takamul.health/fhir/CodeSystem/client-registry|golden-record"


def _patient(
    names: list[dict[str, Any]], born: str, sex: str, phone: str, org: str
) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "name": names,
        "birthDate": born,
        "gender": sex,
        "telecom": [{"system": "phone", "value": phone}],
        "managingOrganization": {"reference": f"Organization/{org}"},
    }


# Each pair: one registration in Arabic or Persian script, one in Latin letters, the same birth
# date, different phones and a mis-keyed sex: the registry queues them (p about 0.5). Names and
# dates are this module's own, so no other module's patients meet them in a block.
PAIRS = {
    "link": (
        _patient(
            [
                {"given": ["منيرة"], "family": "الرشيدي"},
                {"given": ["Munira"], "family": "Al-Rashidi"},
            ],
            "1988-06-21",
            "female",
            "+966501230002",
            "org-riyadh",
        ),
        _patient(
            [{"given": ["Mounira"], "family": "Al-Rashidi"}],
            "1988-06-21",
            "male",
            "+966551239992",
            "org-tehran",
        ),
    ),
    "apart": (
        _patient(
            [{"given": ["جواهر"], "family": "القرني"}],
            "1979-10-14",
            "female",
            "+966501230003",
            "org-riyadh",
        ),
        _patient(
            [{"given": ["Jawaher"], "family": "Al-Qarni"}],
            "1979-10-14",
            "male",
            "+966551239993",
            "org-riyadh",
        ),
    ),
    "unlink": (
        _patient(
            [{"given": ["شیرین"], "family": "کاظمی"}],
            "1991-01-30",
            "female",
            "+989121234567",
            "org-tehran",
        ),
        _patient(
            [{"given": ["Shirin"], "family": "Kazemi"}],
            "1991-01-30",
            "male",
            "+989359876543",
            "org-tehran",
        ),
    ),
    "show": (
        _patient(
            [{"given": ["هيفاء"], "family": "العسيري"}],
            "1966-12-02",
            "female",
            "+966501230004",
            "org-riyadh",
        ),
        _patient(
            [{"given": ["Haifa"], "family": "Al-Asiri"}],
            "1966-12-02",
            "male",
            "+966551239994",
            "org-tehran",
        ),
    ),
}


class Pairs(dict[str, dict[str, Any]]):
    """Pair name -> {"a": id, "b": id, "review": review id}."""


@contextmanager
def _mpi(site: WebSite) -> Iterator[httpx.Client]:
    """The review API with a reviewer's session."""
    client = site.login_http(REVIEWER)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def pairs(web_site: WebSite) -> Iterator[Pairs]:
    web_site.security.users.add(REVIEWER, PASSWORD, ["registry-reviewer"], None, "Sara Al-Mutlaq")
    found = Pairs()
    for key, (a, b) in PAIRS.items():
        ids = []
        for body in (a, b):
            r = web_site.fhir.post("/Patient", json=body)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        found[key] = {"a": ids[0], "b": ids[1]}
    with _mpi(web_site) as api:
        queue = api.get("/mpi/reviews", params={"_count": 1000}).json()["reviews"]
    for key, pair in found.items():
        wanted = {f"Patient/{pair['a']}", f"Patient/{pair['b']}"}
        mine = [q for q in queue if {q["a"]["patient"], q["b"]["patient"]} == wanted]
        assert len(mine) == 1, f"{key} was not queued for review"
        pair["review"] = mine[0]["id"]
    yield found


def _person(site: WebSite, pid: str) -> str:
    bundle = site.fhir.get("/Person", params={"link": f"Patient/{pid}", "_tag": GOLDEN}).json()
    assert bundle["total"] == 1, bundle
    return str(bundle["entry"][0]["resource"]["id"])


def _open_reviews(site: WebSite) -> set[int]:
    with _mpi(site) as api:
        return {q["id"] for q in api.get("/mpi/reviews", params={"_count": 1000}).json()["reviews"]}


def _audited(site: WebSite, patient: str, interaction: str) -> bool:
    """The audit log has the reviewer's ``interaction`` on the patient (written within 0.2 s
    by the server's buffered log, later on a loaded machine: asked for up to 10 s)."""
    for _ in range(100):
        bundle = site.fhir.get(
            "/AuditEvent", params={"patient": patient, "agent": REVIEWER, "subtype": interaction}
        ).json()
        if bundle.get("total", 0) > 0:
            return True
        time.sleep(0.1)
    return False


def _reviewer(chromium: Any, site: WebSite, lang: str, calendar: str) -> Any:
    page = signed_in(chromium, site, REVIEWER, bypass_csp=True)
    set_preferences(page, lang, calendar, "latin")
    return page


def test_pairs_are_shown_in_both_scripts_and_both_calendars_in_each_language(
    web_site: WebSite, chromium: Any, pairs: Pairs
) -> None:
    show = pairs["show"]
    # 1966-12-02 in each calendar, as calendars.show_date writes it
    dates = {
        "ar": ("hijri", "19 شعبان 1386 هـ", "2 ديسمبر 1966"),
        "fa": ("jalali", "11 آذر 1345", "2 دسامبر 1966"),
        "en": ("gregorian", "2 December 1966", None),
    }
    for lang, (calendar, native, gregorian) in dates.items():
        page = _reviewer(chromium, web_site, lang, calendar)
        page.goto(web_site.url("/app/review"))
        assert page.locator("html").get_attribute("lang") == lang
        row = page.locator("tr", has_text="هيفاء العسيري")
        assert row.count() == 1
        assert "Haifa Al-Asiri" in row.inner_text()
        assert axe_violations(page) == [], f"queue {lang}"
        row.get_by_role("link").click()
        page.wait_for_url(f"**/app/review/{show['review']}")
        table = page.get_by_role("table")
        # names as written, each script isolated in <bdi>
        bdis = table.locator("bdi").all_inner_texts()
        assert "هيفاء" in bdis and "Haifa" in bdis and "العسيري" in bdis and "Al-Asiri" in bdis
        born = table.get_by_role("row").filter(has=page.locator("time")).first
        times = born.locator("time")
        assert times.first.get_attribute("datetime") == "1966-12-02"
        text = born.inner_text()
        assert native in text, (lang, text)
        if gregorian:
            assert gregorian in text, (lang, text)
        # the facilities holding each record, and the per-field evidence
        assert "مركز الملز الصحي" in table.inner_text() and "درمانگاه ونک" in table.inner_text()
        assert axe_violations(page) == [], f"pair {lang}"
        page.context.close()


def test_a_reviewer_links_a_pair_and_undoes_it(
    web_site: WebSite, chromium: Any, pairs: Pairs
) -> None:
    pair = pairs["link"]
    assert _person(web_site, pair["a"]) != _person(web_site, pair["b"])
    page = _reviewer(chromium, web_site, "ar", "hijri")
    page.goto(web_site.url(f"/app/review/{pair['review']}"))
    page.get_by_label("السبب (اختياري)").fill("الاسم نفسه بخطين، والجنس مُدخل خطأ")
    page.get_by_role("button", name="ربط: شخص واحد").click()
    page.wait_for_load_state()
    # the next pair (or the emptied queue) is shown, with what was done and a way back
    assert f"/app/review/{pair['review']}" not in page.url
    assert page.get_by_role("status").is_visible()
    assert _person(web_site, pair["a"]) == _person(web_site, pair["b"])
    assert pair["review"] not in _open_reviews(web_site)
    assert _audited(web_site, pair["a"], "registry-link")
    assert axe_violations(page) == [], "after link (ar)"
    page.get_by_role("status").get_by_role("button", name="تراجع").click()
    page.wait_for_url(f"**/app/review/{pair['review']}?*")
    assert _person(web_site, pair["a"]) != _person(web_site, pair["b"])
    assert _audited(web_site, pair["a"], "registry-revert")
    assert page.get_by_text("السجلان لشخصين مختلفين.").is_visible()
    assert axe_violations(page) == [], "after undo (ar)"
    page.context.close()


def test_not_a_duplicate_takes_the_pair_out_of_the_queue(
    web_site: WebSite, chromium: Any, pairs: Pairs
) -> None:
    pair = pairs["apart"]
    page = _reviewer(chromium, web_site, "fa", "jalali")
    page.goto(web_site.url(f"/app/review/{pair['review']}"))
    page.get_by_role("button", name="تکراری نیست").click()
    page.wait_for_load_state()
    assert page.get_by_role("status").is_visible()
    assert pair["review"] not in _open_reviews(web_site)
    assert _person(web_site, pair["a"]) != _person(web_site, pair["b"])
    assert axe_violations(page) == [], "after not a duplicate (fa)"
    page.goto(web_site.url("/app/review"))
    assert page.locator("tr", has_text="جواهر القرني").count() == 0
    with _mpi(web_site) as api:
        decisions = api.get(f"/mpi/patients/{pair['a']}").json()["decisions"]
    assert [(d["decision"], d["reviewer"]) for d in decisions] == [("not-duplicate", REVIEWER)]
    assert _audited(web_site, pair["a"], "registry-not-duplicate")
    page.context.close()


def test_a_reviewer_unlinks_a_record_from_its_person(
    web_site: WebSite, chromium: Any, pairs: Pairs
) -> None:
    pair = pairs["unlink"]
    with _mpi(web_site) as api:  # linked first, through the review API
        r = api.post("/mpi/link", json={"patients": [pair["a"], pair["b"]], "reviewer": REVIEWER})
        assert r.status_code == 200, r.text
    assert _person(web_site, pair["a"]) == _person(web_site, pair["b"])
    page = _reviewer(chromium, web_site, "en", "gregorian")
    page.goto(web_site.url(f"/app/review/{pair['review']}"))
    assert page.get_by_text("The two records belong to one person.").is_visible()
    assert axe_violations(page) == [], "linked pair (en)"
    page.get_by_label("Reason for unlinking record B (optional)").fill("different people")
    page.get_by_role("button", name="Unlink record B").click()
    page.wait_for_url(f"**/app/review/{pair['review']}?*")
    assert page.get_by_text("The two records belong to different persons.").is_visible()
    assert _person(web_site, pair["a"]) != _person(web_site, pair["b"])
    # the review's record B is one of the pair (the registry orders a review's two ids itself)
    assert _audited(web_site, pair["a"], "registry-unlink") or _audited(
        web_site, pair["b"], "registry-unlink"
    )
    # later, from the pair's own page: its last decision can be undone
    page.goto(web_site.url(f"/app/review/{pair['review']}"))
    assert axe_violations(page) == [], "unlinked pair (en)"
    page.get_by_role("button", name="Undo this decision").click()
    page.wait_for_url(f"**/app/review/{pair['review']}?*")
    assert _person(web_site, pair["a"]) == _person(web_site, pair["b"])
    assert page.get_by_text("The two records belong to one person.").is_visible()
    page.context.close()


def test_a_clinician_has_no_review_screen(web_site: WebSite, chromium: Any) -> None:
    page = signed_in(chromium, web_site, "clinician")
    # the shared login's preferences are whatever other modules left: say which we read
    set_preferences(page, "ar", "hijri")
    assert page.locator("nav a[href='/app/review']").count() == 0
    response = page.goto(web_site.url("/app/review"))
    assert response is not None and response.status == 403
    assert page.get_by_role("heading", name="غير مسموح").is_visible()
    page.context.close()


def test_decisions_need_the_sessions_csrf_token(web_site: WebSite, pairs: Pairs) -> None:
    pair = pairs["show"]
    with _mpi(web_site) as client:
        r = client.post(f"/app/review/{pair['review']}/decide", data={"decision": "link"})
        assert r.status_code == 403
        assert client.get("/app/review/999999999").status_code == 404
        assert client.get("/app/review/not-a-number").status_code == 404
        past_the_end = client.get("/app/review", params={"page": "999"})  # the last page
        assert past_the_end.status_code == 200
        assert 'class="review-queue"' in past_the_end.text  # not an empty page
    assert pair["review"] in _open_reviews(web_site)


@pytest.mark.parametrize(
    ("lang", "says"),
    [
        ("ar", "سجل المرضى الرئيسي معطّل"),
        ("fa", "ثبت مرکزی بیماران روی این سرور خاموش است"),
        ("en", "The client registry is turned off"),
    ],
)
def test_without_a_registry_the_screen_says_so(lang: str, says: str) -> None:
    viewer = SimpleNamespace(
        csrf="t", username="r", access=SimpleNamespace(display_name="R", break_glass=None)
    )
    prefs = Preferences(lang, "gregorian", "latin")
    html = render("review/queue.html", prefs, viewer=viewer, screens=[], off=True, action=None)
    assert says in html
