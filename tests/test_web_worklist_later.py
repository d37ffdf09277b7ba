"""Outcomes that put a person off for a while: "agreed to visit" (7 days) and "remind later"
(30 days) keep the Task open (``on-hold``) with ``restriction.period.start`` on the day it shows
again; the worklist's default view leaves it out until then, the "later" view and "all" list
it, and once that day has come (back-dated through the store) it is on the list again. Undo puts
the restriction back as it was. In a real Chromium on both stores.
"""

from __future__ import annotations

import os
import uuid
from datetime import date, timedelta
from typing import Any

import pytest

from takamul.web.screens.worklist import (
    OUTCOME_SYSTEM,
    OUTCOMES,
    Recorder,
    apply_outcome,
    undo_outcome,
)
from tests.test_web_worklist import _patient, _row_ids, _task, _task_json
from tests.web_world import WebSite, axe_violations, set_preferences, signed_in

# the same in every xdist worker of a run (test ids may be made from it), new in every run
RUN = (os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex)[:6]


@pytest.fixture(scope="module")
def later(web_site: WebSite) -> dict[str, str]:
    amal = _patient(web_site, "أمل", f"السبيعي{RUN}", "org-riyadh", "+966504440001")
    sara = _patient(web_site, "سارة", f"الدوسري{RUN}", "org-riyadh", "+966504440002")
    return {
        "agreed": _task(web_site, amal, "urgent", "2026-11-03T08:00:00Z", "2026-12-01"),
        "later": _task(web_site, sara, "routine", "2026-11-04T08:00:00Z", None),
        "undo": _task(web_site, sara, "routine", "2026-11-05T08:00:00Z", None),
    }


def _csrf(client: Any) -> str:
    return str(client.get("/app/").text.split('data-csrf="')[1].split('"')[0])


def _shown(client: Any, show: str | None = None) -> str:
    url = "/app/worklist" + (f"?show={show}" if show else "")
    r = client.get(url)
    assert r.status_code == 200, r.text
    return str(r.text)


def test_outcomes_that_put_off_keep_the_task_open_until_a_day() -> None:
    by = Recorder("chw", "Noura", None)
    task = {
        "resourceType": "Task",
        "status": "requested",
        "restriction": {"repetitions": 1, "period": {"end": "2026-12-05"}},
    }
    agreed = apply_outcome(task, OUTCOMES["agreed"], by, "2026-12-01T10:00:00Z")
    assert agreed["status"] == "on-hold"
    assert agreed["businessStatus"]["coding"][0] == {
        "system": OUTCOME_SYSTEM,
        "code": "agreed",
        "display": "Agreed to visit",
    }
    # shows again 7 days on; a due date before that moves with it (a Period's start <= end)
    assert agreed["restriction"] == {
        "repetitions": 1,
        "period": {"start": "2026-12-08", "end": "2026-12-08"},
    }
    assert "end" not in agreed["executionPeriod"]  # still open
    reminded = apply_outcome(task, OUTCOMES["later"], by, "2026-12-01T10:00:00Z")
    assert reminded["restriction"]["period"]["start"] == "2026-12-31"
    # a later outcome works the Task now: the put-off ends, the (moved) due date stays
    reached = apply_outcome(reminded, OUTCOMES["reached"], by, "2026-12-02T10:00:00Z")
    assert reached["restriction"] == {"repetitions": 1, "period": {"end": "2026-12-31"}}
    # undo puts the restriction back as it was
    assert (
        undo_outcome(agreed, task, by, "2026-12-01T10:05:00Z")["restriction"]
        == (task["restriction"])
    )
    bare = {"resourceType": "Task", "status": "requested"}
    assert "restriction" not in undo_outcome(
        apply_outcome(bare, OUTCOMES["later"], by, "2026-12-01T10:00:00Z"), bare, by, "x"
    )


@pytest.mark.parametrize(("key", "days"), [("agreed", 7), ("later", 30)])
def test_a_put_off_task_leaves_the_list_and_comes_back_on_its_day(
    web_site: WebSite, chromium: Any, later: dict[str, str], key: str, days: int
) -> None:
    task_id = later[key]
    page = signed_in(chromium, web_site, "chw", bypass_csp=True)
    set_preferences(page, "fa" if key == "agreed" else "en", "gregorian")
    page.goto(web_site.url("/app/worklist"))
    assert task_id in _row_ids(page)
    label = page.locator(f"#task-{task_id} button[value={key}]")
    label.click()
    page.get_by_role("status").locator("time[datetime]").first.wait_for()
    today = date.today()
    again = (today + timedelta(days=days)).isoformat()
    task = _task_json(web_site, task_id)
    assert task["status"] == "on-hold"
    assert task["businessStatus"]["coding"][0]["code"] == key
    assert task["restriction"]["period"]["start"] == again
    assert "end" not in task["executionPeriod"]
    # the swapped row says when it shows again (the "agreed" Task was due before that day, so
    # its due date moved to it too), and the page stays accessible
    shown = page.locator(f"#task-{task_id} time[datetime='{again}']").count()
    assert shown == (2 if key == "agreed" else 1)
    assert axe_violations(page) == [], key
    # the default view leaves it out; "later" and "all" list it
    page.goto(web_site.url("/app/worklist"))
    assert task_id not in _row_ids(page)
    page.goto(web_site.url("/app/worklist?show=later"))
    assert task_id in _row_ids(page)
    assert axe_violations(page) == [], f"{key} later view"
    page.goto(web_site.url("/app/worklist?show=all"))
    assert task_id in _row_ids(page)
    # its day comes: back-dated through the store (the FHIR update interaction)
    task["restriction"]["period"]["start"] = today.isoformat()
    r = web_site.fhir.put(f"/Task/{task_id}", json=task)
    assert r.status_code == 200, r.text
    page.goto(web_site.url("/app/worklist"))
    assert task_id in _row_ids(page)
    page.goto(web_site.url("/app/worklist?show=later"))
    assert task_id not in _row_ids(page)
    page.context.close()


def test_undo_brings_a_put_off_task_back_at_once(web_site: WebSite, later: dict[str, str]) -> None:
    client = web_site.login_http("coordinator")
    token = _csrf(client)
    task_id = later["undo"]
    before = _task_json(web_site, task_id)
    r = client.post(
        f"/app/worklist/{task_id}/outcome",
        data={"outcome": "later", "csrf": token},
        headers={"HX-Request": "true"},
    )
    assert r.status_code == 200, r.text
    assert task_id not in _shown(client)
    version = _task_json(web_site, task_id)["meta"]["versionId"]
    r = client.post(
        f"/app/worklist/{task_id}/undo",
        data={"version": version, "csrf": token},
        headers={"HX-Request": "true"},
    )
    assert r.status_code == 200, r.text
    undone = _task_json(web_site, task_id)
    assert undone["status"] == before["status"]
    assert "restriction" not in undone and "businessStatus" not in undone
    assert f'id="task-{task_id}"' in _shown(client)
