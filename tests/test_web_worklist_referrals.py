"""Overdue referrals on a facility's worklist, over HTTP (no browser), on SQLite and PostgreSQL:
the requesting and the receiving facility each see the overdue referral, worded for its end and
linking to its row on the Referrals screen; a third facility does not; referrals not yet overdue
do not appear; the operator's rules file (``TAKAMUL_REFERRAL_RULES``) changes the days, and a
broken one is named on the page; Arabic and Persian, right to left.
"""

from __future__ import annotations

import html
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey

from takamul.coordination.referrals import TASK_CODE_SYSTEM
from takamul.web.i18n import translations
from tests.server import postgres_database, running_server
from tests.web_world import FACILITIES, PASSWORD, FreshToken, WebSite, _site

# the same in every xdist worker of a run (test ids may be made from it), new in every run
RUN = (os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex)[:6]
RIYADH, TEHRAN, THIRD = "org-riyadh", "org-tehran", "org-third"
CARDIOLOGY, URGENT = f"cardiology-{RUN}", f"urgent-{RUN}"


@dataclass
class World:
    site: WebSite
    rules: Path  # the file TAKAMUL_REFERRAL_RULES names for the server
    ids: dict[str, str]


def ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


def _facility_client(site: WebSite, facility: str) -> httpx.Client:
    key = ECKey.generate_key("P-384")
    client_id = f"{facility}-{uuid.uuid4().hex[:8]}"
    jwks = {"keys": [{**key.as_dict(private=False), "kid": key.thumbprint(), "alg": "ES384"}]}
    site.security.clients.add(client_id, facility, jwks, "system/*.cruds", facility, ("clinician",))
    auth = FreshToken(site.security, client_id, site.root + "/fhir")
    return httpx.Client(base_url=site.root + "/fhir", timeout=60, auth=auth)


def _refer(client: httpx.Client, patient: str, days_ago: int, code: str = CARDIOLOGY) -> str:
    """Riyadh refers ``patient`` to Tehran, ``days_ago`` days ago (a calendar date, as the
    server counts days)."""
    made = (date.today() - timedelta(days=days_ago)).isoformat()
    request = ok(
        client.post(
            "/ServiceRequest",
            json={
                "resourceType": "ServiceRequest",
                "status": "active",
                "intent": "order",
                "code": {"coding": [{"system": "urn:test", "code": code}]},
                "subject": {"reference": f"Patient/{patient}"},
                "requester": {"reference": f"Organization/{RIYADH}"},
                "performer": [{"reference": f"Organization/{TEHRAN}"}],
                "authoredOn": made,
            },
        )
    )
    task = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "code": {"coding": [{"system": TASK_CODE_SYSTEM, "code": "fulfill"}]},
        "focus": {"reference": f"ServiceRequest/{request['id']}"},
        "for": {"reference": f"Patient/{patient}"},
        "authoredOn": made,
        "requester": {"reference": f"Organization/{RIYADH}"},
        "owner": {"reference": f"Organization/{TEHRAN}"},
    }
    return str(ok(client.post("/Task", json=task))["id"])


def _seed(site: WebSite) -> dict[str, str]:
    ok(
        site.fhir.put(
            f"/Organization/{THIRD}",
            json={"resourceType": "Organization", "id": THIRD, "name": "Third Centre"},
        )
    )
    for login, facility in (("coord-tehran", TEHRAN), ("coord-third", THIRD)):
        site.security.users.add(login, PASSWORD, ["care-coordinator"], facility, login)
    riyadh, tehran = _facility_client(site, RIYADH), _facility_client(site, TEHRAN)
    salma = site.ids["salma"]
    ids = {
        "late-accept": _refer(riyadh, salma, 8),  # day 8: past the 7 days to accept
        "on-time": _refer(riyadh, salma, 7),  # day 7: still on time
        "late-feedback": _refer(riyadh, salma, 31),  # accepted, day 31: past the 30 days
        "feedback-on-time": _refer(riyadh, salma, 30),  # accepted, day 30: on time
        "urgent": _refer(riyadh, salma, 5, URGENT),  # on time unless its type has 3 days
    }
    for key in ("late-feedback", "feedback-on-time"):
        task = ok(tehran.get(f"/Task/{ids[key]}"))
        ok(tehran.put(f"/Task/{ids[key]}", json={**task, "status": "accepted"}))
    riyadh.close()
    tehran.close()
    return ids


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    rules = tmp_path_factory.mktemp("rules") / "referral-rules.json"
    rules.write_text("{}", encoding="utf-8")  # the defaults: 7 and 30 days
    env = {
        "TAKAMUL_AUTH": "true",
        "TAKAMUL_RATE_LIMIT": "10000",
        "TAKAMUL_RATE_BURST": "10000",
        "TAKAMUL_REFERRAL_RULES": str(rules),
    }
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('web') / 'takamul.sqlite'}"
        with running_server(url, env) as base:
            site = _site(base, url)
            yield World(site, rules, _seed(site))
    else:
        with postgres_database() as url, running_server(url, env) as base:
            site = _site(base, url)
            yield World(site, rules, _seed(site))


def _worklist(site: WebSite, login: str, lang: str = "en") -> str:
    client = site.login_http(login)
    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/app/").text)
    assert found, "no CSRF token on the page"
    r = client.post(
        "/app/preferences",
        data={"lang": lang, "calendar": "gregorian", "numerals": "latin", "back": "/app/"}
        | {"csrf": html.unescape(found.group(1))},
    )
    assert r.status_code == 303, r.text
    r = client.get("/app/worklist")
    assert r.status_code == 200, r.text
    return r.text


def _section(page: str) -> str:
    found = re.search(
        r'<section aria-labelledby="overdue-referrals-title".*?</section>', page, re.S
    )
    assert found, "no overdue referrals section"
    return html.unescape(found.group(0))


def _listed(page: str) -> dict[str, str]:
    """Task id -> its row, of the overdue referrals on the worklist."""
    rows = re.finditer(r'<tr id="overdue-(?:received|sent)-([^"]+)".*?</tr>', _section(page), re.S)
    return {found.group(1): found.group(0) for found in rows}


def test_both_ends_see_the_overdue_referral_and_no_one_else(world: World) -> None:
    ids, tehran_name = world.ids, FACILITIES[TEHRAN][0]
    riyadh = _listed(_worklist(world.site, "coordinator"))
    assert set(riyadh) == {ids["late-accept"], ids["late-feedback"]}
    late = riyadh[ids["late-accept"]]
    assert f'Not yet accepted by <bdi dir="auto">{tehran_name}</bdi> after 8 days' in late
    assert f'href="/app/referrals#sent-{ids["late-accept"]}"' in late
    assert "سلمى" in late and CARDIOLOGY in late
    assert (
        f'No feedback yet from <bdi dir="auto">{tehran_name}</bdi> after 31 days'
        in (riyadh[ids["late-feedback"]])
    )
    tehran = _listed(_worklist(world.site, "coord-tehran"))
    assert set(tehran) == {ids["late-accept"], ids["late-feedback"]}
    assert "Waiting for your acceptance: made 8 days ago" in tehran[ids["late-accept"]]
    assert "Waiting for your feedback: made 31 days ago" in tehran[ids["late-feedback"]]
    assert f'href="/app/referrals#received-{ids["late-accept"]}"' in tehran[ids["late-accept"]]
    third = _worklist(world.site, "coord-third")
    assert _listed(third) == {} and "No overdue referrals for your facility." in _section(third)
    assert not any(task in third for task in ids.values())


def test_the_link_leads_to_the_referrals_row(world: World) -> None:
    client = world.site.login_http("coord-tehran")
    page = client.get("/app/referrals").text
    assert f'<tr id="received-{world.ids["late-accept"]}"' in page


def test_a_worker_without_the_referrals_screen_has_no_referral_section(world: World) -> None:
    page = _worklist(world.site, "chw")
    assert "overdue-referrals" not in page and world.ids["late-accept"] not in page


def test_the_rules_file_changes_the_days(world: World) -> None:
    ids = world.ids
    assert ids["urgent"] not in _listed(_worklist(world.site, "coordinator"))
    world.rules.write_text(json.dumps({"types": {URGENT: {"accept_days": 3}}}), encoding="utf-8")
    try:
        riyadh = _listed(_worklist(world.site, "coordinator"))
        assert "after 5 days" in riyadh[ids["urgent"]]
        assert ids["urgent"] in _listed(_worklist(world.site, "coord-tehran"))
        assert ids["on-time"] not in riyadh  # the default still holds for the other types
        world.rules.write_text('{"default": {"accept_days": "a week"}}', encoding="utf-8")
        section = _section(_worklist(world.site, "coordinator"))
        assert "The referral rules file could not be read" in section
        assert "accept_days must be a whole number of days" in section
        # the Referrals screen names it too, rather than failing without a word
        r = world.site.login_http("coordinator").get("/app/referrals")
        assert r.status_code == 500 and "accept_days must be a whole number of days" in r.text
    finally:
        world.rules.write_text("{}", encoding="utf-8")
    assert ids["urgent"] not in _listed(_worklist(world.site, "coordinator"))


@pytest.mark.parametrize("lang", ["ar", "fa"])
def test_in_arabic_and_persian(world: World, lang: str) -> None:
    page = _worklist(world.site, "coord-tehran", lang)
    assert re.search(rf'<html[^>]*lang="{lang}"[^>]*dir="rtl"', page) or re.search(
        rf'<html[^>]*dir="rtl"[^>]*lang="{lang}"', page
    )
    words = translations(lang)
    section = _section(page)
    assert words.gettext("Overdue referrals") in section
    waiting = words.gettext("Waiting for your acceptance: made %(days)s days ago")
    assert waiting != "Waiting for your acceptance: made %(days)s days ago"
    assert waiting % {"days": "8"} in section
    riyadh = _section(_worklist(world.site, "coordinator", lang))
    sent = words.gettext("Not yet accepted by %(facility)s after %(days)s days")
    # the facility's name isolated inside the sentence, whatever the word order
    other = f'<bdi dir="auto">{FACILITIES[TEHRAN][0]}</bdi>'
    assert sent % {"facility": other, "days": "8"} in riyadh
