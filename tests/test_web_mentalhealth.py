"""The mental health screens in a real server (and Chromium), on SQLite and PostgreSQL: the
screening form's running total, a stored screening scored on write with its safety Flag and stat
Task, the alert on the patient record and its acknowledgement, a refused submission that writes
nothing, the caseload most urgent first, the psychiatric case-review queue and the consultant's
recommendation, what a community health worker sees (no answers, no scores), a consent that
hides a person's scores, axe-core, and Arabic and Persian right to left with their digits and
calendars.

The world: a facility of its own with a clinician (the care manager and consultant: a
Practitioner carries the login's identifier) and a community health worker; persons enrolled in
collaborative care on dates relative to today, their PHQ-9 scores written as the record holds
them, one screened positive on item 9 through the API.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from takamul.mentalhealth.instruments import QUESTIONNAIRE_BASE, install_wording
from takamul.mentalhealth.registry import REVIEW_CODE, REVIEW_SYSTEM, RegistryRow
from takamul.mentalhealth.safety import CARE_PROGRAMME_SYSTEM, COLLABORATIVE_CARE
from takamul.security.audit import USER_SYSTEM
from takamul.web.i18n import translations
from takamul.web.screens.mentalhealth import urgency
from tests.web_world import PASSWORD, WebSite, axe_violations, set_preferences, signed_in

# the same in every xdist worker of a run (test ids may be made from it), new in every run
RUN = (os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex)[:6]
FAC = f"org-mh-{RUN}"
OTHER = f"org-mh-other-{RUN}"
CLIN = f"mh-clin-{RUN}"
CHW = f"mh-chw-{RUN}"
PRACTITIONER = f"prac-{RUN}"
TODAY = datetime.now(UTC).date()
LOINC = "http://loinc.org"
PHQ9_ITEMS = (
    "44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3",
    "44260-8",
)  # fmt: skip
GAD7_ITEMS = ("69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7")
ANSWERS = ("LA6568-5", "LA6569-3", "LA6570-1", "LA6571-9")  # LOINC LL358-3, scored 0..3
# the caseload, most urgent first: a safety flag, then not improving (needs review), then
# overdue for contact, then the rest by weeks in care (the consent-restricted person's hidden
# data does not move them)
CASELOAD_ORDER = ("safety", "stuck", "overdue", "consent", "new")
REVIEW_ORDER = ("safety", "stuck")


def _pid(key: str) -> str:
    return f"mh{RUN}-{key}"


def _day(days_ago: int) -> str:
    return (TODAY - timedelta(days=days_ago)).isoformat()


def _put(site: WebSite, body: dict[str, Any]) -> None:
    r = site.fhir.put(f"/{body['resourceType']}/{body['id']}", json=body)
    assert r.status_code in (200, 201), r.text


def _episode(key: str, days_ago: int) -> dict[str, Any]:
    return {
        "resourceType": "EpisodeOfCare",
        "id": f"{_pid(key)}-ep",
        "status": "active",
        "type": [{"coding": [{"system": CARE_PROGRAMME_SYSTEM, "code": COLLABORATIVE_CARE}]}],
        "patient": {"reference": f"Patient/{_pid(key)}"},
        "managingOrganization": {"reference": f"Organization/{FAC}"},
        "period": {"start": _day(days_ago)},
        "careManager": {"reference": f"Practitioner/{PRACTITIONER}"},
    }


def _phq9_total(key: str, n: int, days_ago: int, value: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"{_pid(key)}-s{n}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "44261-6"}]},
        "subject": {"reference": f"Patient/{_pid(key)}"},
        "effectiveDateTime": f"{_day(days_ago)}T10:00:00+00:00",
        "valueInteger": value,
    }


def _phq9_response(pid: str, answers: list[int]) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": QUESTIONNAIRE_BASE + "phq-9",
        "subject": {"reference": f"Patient/{pid}"},
        "authored": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "item": [
            {"linkId": link, "answer": [{"valueCoding": {"system": LOINC, "code": ANSWERS[a]}}]}
            for link, a in zip(PHQ9_ITEMS, answers, strict=True)
        ],
    }


def _consent(pid: str) -> dict[str, Any]:
    """The patient denies mental health data to everyone but another clinic."""
    return {
        "resourceType": "Consent",
        "id": f"{pid}-consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{pid}"},
        "provision": {
            "type": "deny",
            "securityLabel": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}
            ],
            "provision": [
                {
                    "type": "permit",
                    "actor": [
                        {
                            "role": {"text": "treating team"},
                            "reference": {"reference": f"Organization/{OTHER}"},
                        }
                    ],
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def world(web_site: WebSite) -> dict[str, str]:
    for org, name in ((FAC, "مركز الروضة الصحي"), (OTHER, "عيادة الصحة النفسية")):
        _put(
            web_site,
            {
                "resourceType": "Organization",
                "id": org,
                "name": name,
                "address": [{"city": "Riyadh", "country": "SA"}],
            },
        )
    web_site.security.users.add(CLIN, PASSWORD, ["clinician"], FAC, "Dr Sara Al-Mutairi")
    web_site.security.users.add(CHW, PASSWORD, ["community-health-worker"], FAC, "Maha CHW")
    _put(
        web_site,
        {
            "resourceType": "Practitioner",
            "id": PRACTITIONER,
            "identifier": [{"system": USER_SYSTEM, "value": CLIN}],
            "name": [{"given": ["سارة"], "family": "المطيري"}],
        },
    )
    names = {
        "new": "جواهر", "stuck": "نوف", "overdue": "عبير", "safety": "ريم",
        "consent": "أمل", "screen": "هند",
    }  # fmt: skip
    for key, given in names.items():
        _put(
            web_site,
            {
                "resourceType": "Patient",
                "id": _pid(key),
                "name": [{"given": [given], "family": f"السبيعي-{RUN}"}],
                "gender": "female",
                "birthDate": "1990-05-01",
                "managingOrganization": {"reference": f"Organization/{FAC}"},
            },
        )
    resources = [
        _episode("new", 10),
        _phq9_total("new", 1, 10, 12),
        _episode("stuck", 100),  # 14 weeks, 18 -> 16: not improving, needs review
        _phq9_total("stuck", 1, 100, 18),
        _phq9_total("stuck", 2, 5, 16),
        _episode("overdue", 60),  # 8 weeks, improving; last contact 45 days ago
        _phq9_total("overdue", 1, 60, 15),
        _phq9_total("overdue", 2, 45, 12),
        _episode("safety", 40),
        _phq9_total("safety", 1, 40, 20),
        _episode("consent", 50),
        _phq9_total("consent", 1, 50, 14),
        _phq9_total("consent", 2, 3, 11),
        _consent(_pid("consent")),
    ]
    for body in resources:
        _put(web_site, body)
    # item 9 answered 2 through the API: the server raises the Flag and the stat Task
    r = web_site.fhir.post(
        "/QuestionnaireResponse", json=_phq9_response(_pid("safety"), [2] * 8 + [2])
    )
    assert r.status_code == 201, r.text
    return {key: _pid(key) for key in names} | {"safety-response": r.json()["id"]}


def _prefs(client: httpx.Client, lang: str, calendar: str, numerals: str) -> httpx.Client:
    """The login's language, calendar and digits (kept for the login, as people's are)."""
    r = client.post(
        "/app/preferences",
        data={"csrf": _csrf(client), "lang": lang, "calendar": calendar, "numerals": numerals},
    )
    assert r.status_code == 303, r.text
    return client


def _english(client: httpx.Client) -> httpx.Client:
    return _prefs(client, "en", "gregorian", "latin")


def _csrf(client: httpx.Client) -> str:
    return client.get("/app/").text.split('data-csrf="')[1].split('"')[0]


def _case_ids(html: str) -> list[str]:
    return re.findall(r'<tr id="case-([^"]+)"', html)


def _responses_of(site: WebSite, pid: str) -> list[dict[str, Any]]:
    bundle = site.fhir.get("/QuestionnaireResponse", params={"subject": f"Patient/{pid}"}).json()
    return [e["resource"] for e in bundle.get("entry", [])]


def test_the_caseload_puts_the_most_urgent_first_and_keeps_consent(
    web_site: WebSite, world: dict[str, str]
) -> None:
    client = _english(web_site.login_http(CLIN))
    r = client.get(f"/app/mentalhealth?on={TODAY.isoformat()}")
    assert r.status_code == 200, r.text
    assert "Your persons in collaborative care" in r.text  # the care manager's own caseload
    assert _case_ids(r.text) == [world[k] for k in CASELOAD_ORDER]
    row = re.search(rf'<tr id="case-{world["safety"]}"[^>]*>', r.text)
    assert row and 'data-safety="true"' in row.group(0) and 'data-review="true"' in row.group(0)
    stuck = r.text.split(f'id="case-{world["stuck"]}"')[1].split("</tr>")[0]
    assert ">18<" in stuck and ">16<" in stuck and "-11.1 %" in stuck and "Not improving" in stuck
    overdue = re.search(rf'<tr id="case-{world["overdue"]}"[^>]*>', r.text)
    assert overdue and 'data-overdue="true"' in overdue.group(0)
    # the person whose consent keeps mental health data from this facility: listed (the
    # enrolment is not restricted), but no score, status or flag of theirs is shown
    consent = r.text.split(f'id="case-{world["consent"]}"')[1].split("</tr>")[0]
    assert "consent restricts mental health data" in consent and ">14<" not in consent
    assert "data-safety" not in consent
    # longest in care first, and the facility's caseload (the same persons here)
    weeks = client.get(f"/app/mentalhealth?on={TODAY.isoformat()}&sort=weeks").text
    assert _case_ids(weeks) == [world[k] for k in ("stuck", "overdue", "consent", "safety", "new")]
    facility = client.get(f"/app/mentalhealth?on={TODAY.isoformat()}&scope=facility").text
    assert "The facility&#39;s persons" in facility or "The facility's persons" in facility
    assert _case_ids(facility) == _case_ids(r.text)
    csp = r.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and not re.search(r"<script(?![^>]*\bsrc=)", r.text)
    assert not re.search(r"\sstyle=|\son[a-z]+=", r.text)


def test_the_review_queue_and_a_recorded_recommendation(
    web_site: WebSite, world: dict[str, str]
) -> None:
    client = _english(web_site.login_http(CLIN))
    url = f"/app/mentalhealth/review?on={TODAY.isoformat()}"
    html = client.get(url).text
    assert re.findall(r'<li id="review-([^"]+)"', html) == [world[k] for k in REVIEW_ORDER]
    assert world["consent"] not in html  # hidden data keeps a person out of the queue
    text = "زيادة جرعة السيرترالين ومراجعة بعد أسبوعين"  # Arabic round-trips untouched
    r = client.post(
        f"/app/mentalhealth/review/{world['stuck']}",
        data={"csrf": _csrf(client), "recommendation": text, "on": TODAY.isoformat()},
    )
    assert r.status_code == 303, r.text
    found = web_site.fhir.get(
        "/ClinicalImpression", params={"subject": f"Patient/{world['stuck']}"}
    ).json()
    reviews = [e["resource"] for e in found.get("entry", [])]
    assert [c["code"]["coding"][0]["code"] for c in reviews] == [REVIEW_CODE]
    assert reviews[0]["code"]["coding"][0]["system"] == REVIEW_SYSTEM
    assert [c["summary"] for c in reviews] == [text]
    assert reviews[0]["assessor"]["reference"] == f"Practitioner/{PRACTITIONER}"
    after = client.get(url + "&recorded=1").text
    assert re.findall(r'<li id="review-([^"]+)"', after) == [world["safety"]]
    assert "The recommendation is recorded." in after
    # an empty recommendation is refused and writes nothing
    empty = client.post(
        f"/app/mentalhealth/review/{world['safety']}",
        data={"csrf": _csrf(client), "recommendation": "  ", "on": TODAY.isoformat()},
    )
    assert empty.status_code == 400 and "Write the recommendation" in empty.text
    none = web_site.fhir.get(
        "/ClinicalImpression", params={"subject": f"Patient/{world['safety']}"}
    ).json()
    assert not none.get("entry")


def test_a_community_health_worker_sees_follow_up_not_answers_or_scores(
    web_site: WebSite, world: dict[str, str]
) -> None:
    client = _english(web_site.login_http(CHW))
    r = client.get(f"/app/mentalhealth?on={TODAY.isoformat()}")
    assert r.status_code == 200, r.text
    assert set(_case_ids(r.text)) == {world[k] for k in CASELOAD_ORDER}
    assert "PHQ-9" not in r.text and "data-safety" not in r.text and "Not improving" not in r.text
    assert "Follow-up due" in r.text  # the overdue person
    assert client.get("/app/mentalhealth/review").status_code == 403
    # a stored response is not theirs to read back (their role never reads answers): the
    # result page answers as for what does not exist
    result = client.get(f"/app/mentalhealth/responses/{world['safety-response']}")
    assert result.status_code == 404, result.text
    assert "mh-score" not in result.text and "Total" not in result.text
    # their own screening: stored, and the screening page says so without the answers
    form = {"csrf": _csrf(client), "instrument": "phq-9"}
    form |= {link: "1" for link in PHQ9_ITEMS}
    made = client.post(f"/app/mentalhealth/screen/{world['new']}", data=form)
    assert made.status_code == 303, made.text
    assert made.headers["location"] == f"/app/mentalhealth/screen/{world['new']}?stored=1"
    stored = client.get(made.headers["location"])
    assert 'id="mh-stored"' in stored.text and "mh-score" not in stored.text
    # the record shows that an urgent follow-up is due (the Task), not the answer
    record = client.get(f"/app/patients/{world['safety']}").text
    assert 'role="alert"' in record and "Acknowledge the alert" in record
    assert "answered 2" not in record


def test_a_refused_submission_writes_nothing_and_says_why(
    web_site: WebSite, world: dict[str, str]
) -> None:
    client = _english(web_site.login_http(CLIN))
    before = _responses_of(web_site, world["new"])
    form = {"csrf": _csrf(client), "instrument": "phq-9"}
    form |= {link: "1" for link in PHQ9_ITEMS[:6]}  # three of nine unanswered: no score
    r = client.post(f"/app/mentalhealth/screen/{world['new']}", data=form)
    assert r.status_code == 422
    assert "Nothing was stored." in r.text and "Answer questions 7, 8, 9" in r.text
    assert 'value="1" data-score="1" checked' in r.text  # the answers given are kept
    bad = client.post(f"/app/mentalhealth/screen/{world['new']}", data={**form, PHQ9_ITEMS[6]: "7"})
    assert bad.status_code == 422 and "Question 7: the answer is not one of its choices" in bad.text
    assert _responses_of(web_site, world["new"]) == before
    # a person of no facility of the viewer: the same page as a missing one
    hidden = client.get(f"/app/mentalhealth/screen/{world['new']}x")
    assert hidden.status_code == 404


def _install(site: WebSite, wording: dict[str, Any]) -> None:
    """Install a wording file as ``takamul mh instruments install`` would, through the API."""
    stored = site.fhir.get(f"/Questionnaire/{wording['instrument']}").json()
    _put(site, install_wording(wording, stored))


def test_installed_wording_shows_in_its_language_only(
    web_site: WebSite, world: dict[str, str]
) -> None:
    client = web_site.login_http(CLIN)
    url = f"/app/mentalhealth/screen/{world['screen']}"
    assert 'value="zbi-12"' not in client.get(url).text  # licensed: offered once installed
    # fixture wording (it says so): never the instruments' own text
    gad7 = {
        "instrument": "gad-7",
        "language": "ar",
        "items": {link: f"[نص اختبار، ليس نص الأداة] {n}" for n, link in enumerate(GAD7_ITEMS, 1)},
    }
    _install(web_site, gad7)
    zbi = {
        "instrument": "zbi-12",
        "language": "en",
        "items": {f"zbi12-{n}": f"[fixture text, not the ZBI] {n}" for n in range(1, 13)},
    }
    _install(web_site, zbi)
    arabic = _prefs(client, "ar", "hijri", "arab").get(url + "?instrument=gad-7").text
    assert arabic.count("[نص اختبار، ليس نص الأداة]") == 7 and 'id="mh-wording-note"' not in arabic
    english = _english(client).get(url + "?instrument=gad-7").text
    assert "نص اختبار" not in english and 'id="mh-wording-note"' in english
    zbi_page = client.get(url + "?instrument=zbi-12").text
    assert 'value="zbi-12" selected' in zbi_page
    assert zbi_page.count("[fixture text, not the ZBI]") == 12


def test_screening_in_the_browser(web_site: WebSite, chromium: Any, world: dict[str, str]) -> None:
    """The running total as answers are picked, the stored score, the safety alert and its
    Task, the alert on the record and its acknowledgement; axe on each page."""
    page = signed_in(chromium, web_site, CLIN, bypass_csp=True)
    set_preferences(page, "en", "gregorian")
    page.goto(web_site.url(f"/app/mentalhealth/screen/{world['screen']}"))
    page.locator("#mh-instrument").select_option("phq-9")
    page.get_by_role("button", name="Open the form").click()
    form = page.locator("#mh-form")
    expect(form).to_be_visible()
    # no wording is installed on this server: codes and the note, never invented wording
    expect(page.locator("#mh-wording-note")).to_be_visible()
    assert page.locator("#q-44260-8 legend").inner_text().startswith("9. 44260-8")
    total = page.locator("#mh-total")
    page.locator('#q-44250-9 input[value="2"]').check()
    expect(total).to_have_attribute("data-total", "2")
    expect(total).to_contain_text("Total 2 of 27, none-minimal; 1 of 9")
    for link in PHQ9_ITEMS[1:8]:
        page.locator(f'#q-{link} input[value="1"]').check()
    page.locator('#q-44260-8 input[value="1"]').check()
    expect(total).to_contain_text("Total 10 of 27, moderate; 9 of 9")
    assert axe_violations(page) == [], "form"
    page.get_by_role("button", name="Store the screening").click()
    page.wait_for_url("**/app/mentalhealth/responses/*")
    response_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#mh-score")).to_have_attribute("data-total", "10")
    expect(page.locator("#mh-score")).to_contain_text("Total 10: moderate")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Safety alert: at risk of suicide")
    assert axe_violations(page) == [], "result"
    task = web_site.fhir.get(f"/Task/mht-{response_id}").json()
    assert task["priority"] == "stat" and task["status"] == "requested"
    score = web_site.fhir.get(f"/Observation/mhs-{response_id}").json()
    assert score["valueInteger"] == 10
    assert score["derivedFrom"] == [{"reference": f"QuestionnaireResponse/{response_id}"}]
    # the patient record: the banner, the stat Task, acknowledged from there
    page.goto(web_site.url(f"/app/patients/{world['screen']}"))
    banner = page.locator("#mh-alert")
    expect(banner).to_be_visible()
    assert banner.get_attribute("role") == "alert"
    expect(banner.locator(f"#task-mht-{response_id}")).to_be_visible()
    assert axe_violations(page) == [], "record"
    banner.get_by_role("button", name="Acknowledge the alert").click()
    expect(page.locator(".mh-acknowledged")).to_be_visible()
    acknowledged = web_site.fhir.get(f"/Task/mht-{response_id}").json()
    assert acknowledged["status"] == "accepted"
    assert acknowledged["note"][-1]["authorString"] == "Dr Sara Al-Mutairi"
    for _ in range(50):  # the acknowledgement is audited (the audit log writes behind)
        events = web_site.fhir.get(
            "/AuditEvent", params={"agent": CLIN, "subtype": "update"}
        ).json()
        if events.get("entry"):
            break
        time.sleep(0.1)
    assert events.get("entry")
    page.context.close()


def test_arabic_and_persian_read_right_to_left(
    web_site: WebSite, chromium: Any, world: dict[str, str]
) -> None:
    page = signed_in(chromium, web_site, CLIN, bypass_csp=True)
    for lang, calendar, numerals, digit in (
        ("ar", "hijri", "arab", "٠١٢٣٤٥٦٧٨٩"),
        ("fa", "jalali", "persian", "۰۱۲۳۴۵۶۷۸۹"),
    ):
        gettext = translations(lang).gettext
        set_preferences(page, lang, calendar, numerals)
        page.goto(web_site.url(f"/app/mentalhealth?on={TODAY.isoformat()}"))
        assert page.locator("html").get_attribute("dir") == "rtl"
        expect(
            page.get_by_role("heading", name=gettext("Mental health caseload"), exact=True)
        ).to_be_visible()
        heading = page.locator("#caseload-h").inner_text()
        assert any(d in heading for d in digit), heading  # the as-of date in the digits chosen
        shown = page.locator(f'#caseload-h time[datetime="{TODAY.isoformat()}"]')
        assert shown.count() == 1
        ids = page.locator("table.mh-caseload tbody tr").evaluate_all(
            "rows => rows.map(r => r.id.slice('case-'.length))"
        )
        assert ids[0] == world["safety"]
        assert gettext("Safety alert") in page.locator(f"#case-{world['safety']}").inner_text()
        assert axe_violations(page) == [], lang
        page.goto(web_site.url(f"/app/mentalhealth/screen/{world['screen']}?instrument=gad-7"))
        page.locator('#q-69725-0 input[value="3"]').check()
        expect(page.locator("#mh-total")).to_have_attribute("data-total", "3")
        assert digit[3] in page.locator("#mh-total").inner_text()
        assert axe_violations(page) == [], f"{lang} form"
    page.context.close()


def _row(key: str, **flags: Any) -> RegistryRow:
    values: dict[str, Any] = {
        "person_id": key, "patient_ids": (key,), "enrolled_on": TODAY, "enrolment": "episode",
        "weeks_in_care": 12, "baseline_phq9": 15, "latest_phq9": 14, "baseline_gad7": None,
        "latest_gad7": None, "phq9_change_pct": -6.7, "gad7_change_pct": None,
        "status": "not-improving", "needs_psychiatric_review": False, "overdue_contact": False,
        "safety": False, "last_contact": TODAY, "contacts": 2, "care_managers": (),
        "facilities": (FAC,), "unreviewed_flag_on": None, "last_review": None,
        "episode_id": None,
    }  # fmt: skip
    return RegistryRow(**(values | flags))


def test_hidden_flags_do_not_move_a_person_up_the_caseload() -> None:
    rows = [
        _row("plain", weeks_in_care=30),
        _row("overdue", overdue_contact=True),
        _row("review", needs_psychiatric_review=True),
        _row("safety", safety=True, needs_psychiatric_review=True, weeks_in_care=2),
    ]
    seen = sorted(rows, key=lambda r: urgency(r, True))
    assert [r.person_id for r in seen] == ["safety", "review", "overdue", "plain"]
    # the same persons for a viewer who may see none of their mental health data: only the
    # overdue contact (not mental-health data) and the weeks in care order them
    hidden = sorted(rows, key=lambda r: urgency(r, False))
    assert [r.person_id for r in hidden] == ["overdue", "plain", "review", "safety"]
