"""The community health worker's outreach worklist in a real Chromium: only the facility's Tasks
(another facility's never), most pressing first, outcomes recorded in one tap as FHIR updates of
the Task (read back through the API), undone, audited, in Arabic, Persian and English, with
axe-core on every state.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import date
from typing import Any

import pytest

from takamul.equity.outreach import OUTREACH_SYSTEM, TASK_IDENTIFIER_SYSTEM
from takamul.web.i18n import translations
from takamul.web.screens.worklist import (
    OUTCOME_SYSTEM,
    OUTCOMES,
    Recorder,
    age_on,
    apply_outcome,
    undo_outcome,
)
from tests.web_world import WebSite, axe_violations, set_preferences, signed_in

# the same in every xdist worker of a run (test ids may be made from it), new in every run
RUN = (os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex)[:6]


def _patient(site: WebSite, given: str, family: str, org: str, phone: str) -> str:
    body = {
        "resourceType": "Patient",
        "name": [{"given": [given], "family": f"{family}-{RUN}"}],
        "birthDate": "1972-05-14",
        "gender": "female",
        "telecom": [{"system": "phone", "value": phone, "use": "mobile"}],
        "managingOrganization": {"reference": f"Organization/{org}"},
    }
    r = site.fhir.post("/Patient", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _task(site: WebSite, patient: str, priority: str, authored: str, due: str | None) -> str:
    task: dict[str, Any] = {
        "resourceType": "Task",
        "identifier": [{"system": TASK_IDENTIFIER_SYSTEM, "value": f"wl-{RUN}-{uuid.uuid4()}"}],
        "status": "requested",
        "intent": "plan",
        "priority": priority,
        "code": {
            "coding": [{"system": OUTREACH_SYSTEM, "code": "diabetes-control"}],
            "text": "Invite for an HbA1c test",
        },
        "description": f"Invite for an HbA1c test (gap in: diabetes control); run {RUN}",
        "for": {"reference": f"Patient/{patient}"},
        "authoredOn": authored,
        "reasonCode": {"text": "Diabetes control"},
        "owner": {"reference": "Organization/org-riyadh"},
    }
    if due:
        task["restriction"] = {"period": {"end": due}}
    r = site.fhir.post("/Task", json=task)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.fixture(scope="module")
def seeded(web_site: WebSite) -> dict[str, str]:
    """Four Tasks of Riyadh patients in a known order, one of a Tehran patient (stat)."""
    huda = _patient(web_site, "هدى", "الزهراني", "org-riyadh", "+966501234567")
    fatima = _patient(web_site, "فاطمة", "الغامدي", "org-riyadh", "+966502345678")
    nasser = _patient(web_site, "ناصر", "القحطاني", "org-riyadh", "+966503456789")
    reza = _patient(web_site, "رضا", "احمدی", "org-tehran", "+989121234567")
    return {
        # expected order: stat, asap, urgent (due earlier), urgent (due later), routine
        "stat": _task(web_site, huda, "stat", "2026-11-02T08:00:00Z", None),
        "asap": _task(web_site, fatima, "asap", "2026-11-01T08:00:00Z", None),
        "urgent-early": _task(web_site, nasser, "urgent", "2026-11-05T08:00:00Z", "2026-12-10"),
        "urgent-late": _task(web_site, huda, "urgent", "2026-10-01T08:00:00Z", "2026-12-20"),
        "routine": _task(web_site, fatima, "routine", "2026-09-01T08:00:00Z", None),
        "tehran": _task(web_site, reza, "stat", "2026-09-01T08:00:00Z", None),
        "huda": huda,
        "tehran-patient": reza,
    }


MINE = ("stat", "asap", "urgent-early", "urgent-late", "routine")


def _row_ids(page: Any) -> list[str]:
    ids = page.locator("table.worklist tbody tr").evaluate_all("rows => rows.map(r => r.id)")
    return [i.removeprefix("task-") for i in ids]


def _task_json(site: WebSite, task_id: str) -> dict[str, Any]:
    r = site.fhir.get(f"/Task/{task_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _audited(site: WebSite, task_id: str, user: str, status: str = "0") -> list[Any]:
    """The audit log's update events of the Task by ``user`` (waiting out the log's buffer)."""
    for _ in range(50):
        r = site.fhir.get(
            "/AuditEvent", params={"entity": f"Task/{task_id}", "agent": user, "subtype": "update"}
        )
        assert r.status_code == 200, r.text
        events = [e["resource"] for e in r.json().get("entry", [])]
        found = [e for e in events if e["outcome"] == status]
        if found:
            return found
        time.sleep(0.1)
    return []


def _label(lang: str, msgid: str) -> str:
    return translations(lang).gettext(msgid)


def test_the_worklist_shows_only_the_facilitys_tasks_most_pressing_first(
    web_site: WebSite, chromium: Any, seeded: dict[str, str]
) -> None:
    page = signed_in(chromium, web_site, "chw", bypass_csp=True)
    set_preferences(page, "en", "gregorian")
    page.goto(web_site.url("/app/worklist"))
    assert page.get_by_role("heading", name="Outreach worklist").is_visible()
    shown = _row_ids(page)
    assert seeded["tehran"] not in shown
    assert [i for i in shown if i in {seeded[k] for k in MINE}] == [seeded[k] for k in MINE]
    row = page.locator(f"#task-{seeded['urgent-early']}")
    assert row.get_by_role("link", name="+966503456789").get_attribute("href") == (
        "tel:+966503456789"
    )
    assert row.locator("time[datetime='2026-12-10']").is_visible()  # due
    assert row.locator("time[datetime='1972-05-14']").is_visible()  # born
    assert "Invite for an HbA1c test" in row.inner_text()
    # the navigation offers the screen to the CHW; a clinician neither sees it nor reaches it
    assert page.get_by_role("link", name="Outreach worklist").count() >= 1
    page.context.close()
    clinician = web_site.login_http("clinician")
    r = clinician.get("/app/worklist")
    assert r.status_code == 403
    assert 'href="/app/worklist"' not in clinician.get("/app/").text


def test_another_facilitys_task_cannot_be_changed(
    web_site: WebSite, seeded: dict[str, str]
) -> None:
    client = web_site.login_http("chw")
    token = client.get("/app/").text.split('data-csrf="')[1].split('"')[0]
    r = client.post(
        f"/app/worklist/{seeded['tehran']}/outcome",
        data={"outcome": "declined", "csrf": token},
    )
    assert r.status_code == 404
    assert _task_json(web_site, seeded["tehran"])["status"] == "requested"
    assert _audited(web_site, seeded["tehran"], "chw", status="4")
    # without the CSRF token nothing happens either
    r = client.post(f"/app/worklist/{seeded['routine']}/outcome", data={"outcome": "booked"})
    assert r.status_code == 403
    assert _task_json(web_site, seeded["routine"])["status"] == "requested"


@pytest.mark.parametrize(
    ("lang", "calendar", "key", "outcome", "status"),
    [
        ("ar", "hijri", "stat", "reached", "in-progress"),
        ("fa", "jalali", "asap", "booked", "completed"),
        ("en", "gregorian", "urgent-late", "unreachable", "failed"),
    ],
)
def test_an_outcome_is_one_tap_and_updates_the_task(
    web_site: WebSite,
    chromium: Any,
    seeded: dict[str, str],
    lang: str,
    calendar: str,
    key: str,
    outcome: str,
    status: str,
) -> None:
    page = signed_in(chromium, web_site, "chw", bypass_csp=True)
    set_preferences(page, lang, calendar)
    page.goto(web_site.url("/app/worklist?show=all"))
    assert page.locator("html").get_attribute("lang") == lang
    assert axe_violations(page) == [], lang
    task_id = seeded[key]
    before = _task_json(web_site, task_id)
    row = page.locator(f"#task-{task_id}")
    row.get_by_role("button", name=_label(lang, OUTCOMES[outcome].label), exact=True).click()
    status_region = page.get_by_role("status")
    status_region.get_by_role("button", name=_label(lang, "Undo")).wait_for()
    # the Task in the store, read back through the FHIR API
    task = _task_json(web_site, task_id)
    assert task["status"] == status
    assert task["businessStatus"]["coding"][0] == {
        "system": OUTCOME_SYSTEM,
        "code": outcome,
        "display": OUTCOMES[outcome].display,
    }
    assert task["output"][0]["valueCodeableConcept"]["coding"][0]["code"] == outcome
    assert task["lastModified"] and task["note"][-1]["authorString"] == "Noura Al-Qahtani"
    assert int(task["meta"]["versionId"]) == int(before["meta"]["versionId"]) + 1
    assert _audited(web_site, task_id, "chw")
    # the swapped row says so, and the page stays accessible
    row = page.locator(f"#task-{task_id}")
    assert _label(lang, OUTCOMES[outcome].label) in row.inner_text()
    assert axe_violations(page) == [], f"{lang} after the outcome"
    if lang == "ar":
        # undo: the Task is as it was, the history keeps both (a new version)
        with page.expect_response(f"**/worklist/{task_id}/undo") as undo_response:
            status_region.get_by_role("button", name=_label(lang, "Undo")).click()
        assert undo_response.value.status == 200, undo_response.value.text()
        page.locator(f"#task-{task_id}").get_by_role(
            "button", name=_label(lang, "Reached"), exact=True
        ).wait_for()
        for _ in range(50):
            undone = _task_json(web_site, task_id)
            if undone["status"] == "requested":
                break
            time.sleep(0.1)
        assert undone["status"] == "requested"
        assert "businessStatus" not in undone and "output" not in undone
        assert undone["note"][-1]["text"].startswith("Outreach outcome undone")
        assert int(undone["meta"]["versionId"]) == int(before["meta"]["versionId"]) + 2
    page.context.close()


def test_the_status_filter_separates_open_and_finished_tasks(
    web_site: WebSite, chromium: Any, seeded: dict[str, str]
) -> None:
    client = web_site.login_http("coordinator")  # care coordinators use the worklist too
    token = client.get("/app/").text.split('data-csrf="')[1].split('"')[0]
    r = client.post(
        f"/app/worklist/{seeded['routine']}/outcome", data={"outcome": "declined", "csrf": token}
    )
    assert r.status_code == 303  # without htmx: back to the worklist
    task = _task_json(web_site, seeded["routine"])
    assert task["status"] == "cancelled"
    assert task["statusReason"]["text"] == "The person declined"
    assert task["note"][-1]["authorString"] == "Huda Al-Shehri"
    page = signed_in(chromium, web_site, "coordinator", bypass_csp=True)
    set_preferences(page, "en", "gregorian")
    page.goto(web_site.url("/app/worklist"))
    assert seeded["routine"] not in _row_ids(page)
    page.get_by_label("Show").select_option("done")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**show=done")
    assert seeded["routine"] in _row_ids(page)
    assert seeded["urgent-early"] not in _row_ids(page)
    assert axe_violations(page) == []
    page.context.close()


def test_outcomes_map_to_fhir_task_states() -> None:
    by = Recorder("chw", "Noura", "Practitioner/p1")
    task = {"resourceType": "Task", "status": "requested", "owner": {"reference": "Organization/o"}}
    now = "2026-12-01T10:00:00Z"
    reached = apply_outcome(task, OUTCOMES["reached"], by, now)
    assert (reached["status"], reached["executionPeriod"]) == ("in-progress", {"start": now})
    assert reached["owner"]["reference"] == "Practitioner/p1"
    assert reached["note"][0]["authorReference"]["reference"] == "Practitioner/p1"
    booked = apply_outcome(reached, OUTCOMES["booked"], by, "2026-12-02T10:00:00Z")
    assert booked["status"] == "completed"
    assert booked["executionPeriod"] == {"start": now, "end": "2026-12-02T10:00:00Z"}
    assert "statusReason" not in booked and len(booked["note"]) == 2
    assert apply_outcome(task, OUTCOMES["unreachable"], by, now)["status"] == "failed"
    assert apply_outcome(task, OUTCOMES["declined"], by, now)["status"] == "cancelled"
    back = undo_outcome(booked, reached, by, now)
    assert back["status"] == "in-progress" and back["executionPeriod"] == {"start": now}
    assert task == {
        "resourceType": "Task",
        "status": "requested",
        "owner": {"reference": "Organization/o"},
    }
    assert age_on("1972-05-14", date(2026, 5, 13)) == 53
    assert age_on("1972", date(2026, 5, 13)) is None
