"""The referrals screen over HTTP (no browser): each facility's received and sent lists, overdue
marked at the limit's edge and listed first, the owner's accept through the guarded FHIR update
(audited), another facility refused by the referral state machine with its words on the page,
and the page in Arabic and Persian, right to left.
"""

from __future__ import annotations

import base64
import html
import os
import re
import time
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey

from takamul.coordination.referrals import TASK_CODE_SYSTEM
from takamul.web.i18n import translations
from tests.web_world import FACILITIES, FreshToken, WebSite

# the same in every xdist worker of a run (test ids may be made from it), new in every run
RUN = (os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex)[:6]
RIYADH, TEHRAN = "org-riyadh", "org-tehran"


def ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


def facility_client(site: WebSite, facility: str) -> httpx.Client:
    """A FHIR client acting for ``facility`` (a clinician's system client bound to it)."""
    key = ECKey.generate_key("P-384")
    client_id = f"{facility}-{uuid.uuid4().hex[:8]}"
    jwks = {"keys": [{**key.as_dict(private=False), "kid": key.thumbprint(), "alg": "ES384"}]}
    site.security.clients.add(client_id, facility, jwks, "system/*.cruds", facility, ("clinician",))
    auth = FreshToken(site.security, client_id, site.root + "/fhir")
    return httpx.Client(base_url=site.root + "/fhir", timeout=60, auth=auth)


def _days_ago(days: int) -> str:
    # a calendar date: the server counts days in its local calendar, as date.today() does here
    return (date.today() - timedelta(days=days)).isoformat()


def refer(client: httpx.Client, patient: str, requester: str, owner: str, days_ago: int) -> str:
    """A ServiceRequest to ``owner`` and its referral Task, made ``days_ago`` days ago."""
    request = ok(
        client.post(
            "/ServiceRequest",
            json={
                "resourceType": "ServiceRequest",
                "status": "active",
                "intent": "order",
                "code": {"coding": [{"system": "urn:test", "code": f"cardiology-{RUN}"}]},
                "subject": {"reference": f"Patient/{patient}"},
                "requester": {"reference": f"Organization/{requester}"},
                "performer": [{"reference": f"Organization/{owner}"}],
                "authoredOn": _days_ago(days_ago),
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
        "authoredOn": _days_ago(days_ago),
        "requester": {"reference": f"Organization/{requester}"},
        "owner": {"reference": f"Organization/{owner}"},
    }
    return str(ok(client.post("/Task", json=task))["id"])


def accept_by_api(client: httpx.Client, task_id: str) -> None:
    task = ok(client.get(f"/Task/{task_id}"))
    ok(client.put(f"/Task/{task_id}", json={**task, "status": "accepted"}))


@pytest.fixture(scope="module")
def seeded(web_site: WebSite) -> Iterator[dict[str, str]]:
    """Referrals between the Riyadh and Tehran centres, at and past the overdue limits."""
    riyadh, tehran = facility_client(web_site, RIYADH), facility_client(web_site, TEHRAN)
    salma, maryam = web_site.ids["salma"], web_site.ids["maryam"]
    ids = {
        # Riyadh → Tehran, awaiting Tehran's answer: day 7 is within the limit, day 8 is not
        "waiting-7": refer(riyadh, salma, RIYADH, TEHRAN, 7),
        "waiting-8": refer(riyadh, salma, RIYADH, TEHRAN, 8),
        "accepted-30": refer(riyadh, salma, RIYADH, TEHRAN, 30),
        "accepted-31": refer(riyadh, salma, RIYADH, TEHRAN, 31),
        "to-accept": refer(riyadh, salma, RIYADH, TEHRAN, 1),
        # Tehran → Riyadh (a back-referral)
        "from-tehran": refer(tehran, maryam, TEHRAN, RIYADH, 2),
    }
    accept_by_api(tehran, ids["accepted-30"])
    accept_by_api(tehran, ids["accepted-31"])
    yield ids
    riyadh.close()
    tehran.close()


def signed_in(site: WebSite, login: str, lang: str = "en") -> httpx.Client:
    client = site.login_http(login)
    r = client.post(
        "/app/preferences",
        data={"lang": lang, "calendar": "gregorian", "numerals": "latin", "back": "/app/"}
        | {"csrf": csrf(client)},
    )
    assert r.status_code == 303, r.text
    return client


def csrf(client: httpx.Client, path: str = "/app/") -> str:
    r = client.get(path)
    assert r.status_code == 200, r.text
    found = re.search(r'name="csrf" value="([^"]+)"', r.text)
    assert found, "no CSRF token on the page"
    return html.unescape(found.group(1))


def section(page: str, key: str) -> str:
    """The ``received`` or ``sent`` section of the page."""
    found = re.search(rf'<section aria-labelledby="{key}-title">(.*?)</section>', page, re.S)
    assert found, f"no {key} section"
    return found.group(1)


def row_ids(page: str, key: str) -> list[str]:
    return re.findall(rf'<tr id="{key}-([^"]+)"', section(page, key))


def row(page: str, key: str, task_id: str) -> str:
    found = re.search(rf'<tr id="{key}-{task_id}"[^>]*>.*?</tr>', section(page, key), re.S)
    assert found, f"Task/{task_id} is not in the {key} list"
    return html.unescape(found.group(0))


def test_each_facility_sees_what_it_received_and_sent(
    web_site: WebSite, seeded: dict[str, str]
) -> None:
    riyadh = signed_in(web_site, "clinician")
    page = riyadh.get("/app/referrals").text
    sent, received = row_ids(page, "sent"), row_ids(page, "received")
    assert {seeded[k] for k in ("waiting-7", "waiting-8", "to-accept")} <= set(sent)
    assert seeded["from-tehran"] in received and seeded["from-tehran"] not in sent
    assert seeded["to-accept"] not in received
    mine = row(page, "sent", seeded["to-accept"])
    assert "سلمى" in mine and FACILITIES[TEHRAN][0] in mine  # the person, the other facility
    assert f"cardiology-{RUN}" in mine and "Awaiting answer" in mine
    assert "<button" not in mine  # the requester does not answer its own referral
    # Tehran: the mirror image, with Accept and Reject on what awaits its answer
    tehran = signed_in(web_site, "clinician-tehran")
    page = tehran.get("/app/referrals").text
    assert seeded["to-accept"] in row_ids(page, "received")
    assert seeded["from-tehran"] in row_ids(page, "sent")
    assert seeded["from-tehran"] not in row_ids(page, "received")
    theirs = row(page, "received", seeded["to-accept"])
    assert 'value="accept"' in theirs and 'value="reject"' in theirs
    assert FACILITIES[RIYADH][0] in theirs and "سلمى" in theirs  # referred: Tehran may see her
    assert "مریم" in row(page, "sent", seeded["from-tehran"])


def test_overdue_is_marked_at_the_limit_and_listed_first(
    web_site: WebSite, seeded: dict[str, str]
) -> None:
    page = signed_in(web_site, "clinician-tehran").get("/app/referrals").text
    marked = {
        k: "overdue-mark" in row(page, "received", seeded[k]) for k in seeded if k != "from-tehran"
    }
    assert marked == {
        "waiting-7": False,  # day 7: within the 7 days to accept
        "waiting-8": True,
        "accepted-30": False,  # day 30: within the 30 days to complete
        "accepted-31": True,
        "to-accept": False,
    }
    assert "Not accepted within 7 days" in row(page, "received", seeded["waiting-8"])
    assert "Not completed within 30 days" in row(page, "received", seeded["accepted-31"])
    order = row_ids(page, "received")
    overdue = [order.index(seeded[k]) for k in ("waiting-8", "accepted-31")]
    on_time = [order.index(seeded[k]) for k in ("waiting-7", "accepted-30", "to-accept")]
    assert max(overdue) < min(on_time)
    assert re.search(r"<td>8</td>", row(page, "received", seeded["waiting-8"]))  # days since made


def _audited(site: WebSite, task_id: str, user: str, status: str) -> list[Any]:
    """The audit log's update events of the Task by ``user`` (waiting out the log's buffer)."""
    for _ in range(50):
        r = site.fhir.get(
            "/AuditEvent", params={"entity": f"Task/{task_id}", "agent": user, "subtype": "update"}
        )
        events = [e["resource"] for e in ok(r).get("entry", [])]
        found = [e for e in events if e["outcome"] == status]
        if found:
            return found
        time.sleep(0.1)
    return []


def test_the_owner_accepts_and_it_is_audited(web_site: WebSite, seeded: dict[str, str]) -> None:
    tehran = signed_in(web_site, "clinician-tehran")
    task_id = seeded["to-accept"]
    r = tehran.post(
        f"/app/referrals/{task_id}/answer",
        data={"csrf": csrf(tehran, "/app/referrals"), "answer": "accept"},
    )
    assert r.status_code == 303, r.text
    task = ok(web_site.fhir.get(f"/Task/{task_id}"))
    assert task["status"] == "accepted" and task["meta"]["versionId"] == "2"
    assert task["note"][-1]["authorString"] == "Dr Reza Karimi"
    assert _audited(web_site, task_id, "clinician-tehran", "0")
    page = tehran.get("/app/referrals").text
    shown = row(page, "received", task_id)
    assert "Accepted" in shown and 'value="accept"' not in shown
    assert 'value="start"' in shown  # accepted: the owner's next move is to start it


def test_a_facility_cannot_answer_another_facilitys_referral(
    web_site: WebSite, seeded: dict[str, str]
) -> None:
    riyadh = signed_in(web_site, "clinician")  # the requester, not the owner
    task_id = seeded["waiting-7"]
    r = riyadh.post(
        f"/app/referrals/{task_id}/answer",
        data={"csrf": csrf(riyadh, "/app/referrals"), "answer": "accept"},
    )
    assert r.status_code == 422, r.text
    refusal = html.unescape(r.text)
    assert "The referral was not changed:" in refusal
    assert "only the owner (Organization/org-tehran) may accept the referral" in refusal
    assert ok(web_site.fhir.get(f"/Task/{task_id}"))["status"] == "requested"
    assert _audited(web_site, task_id, "clinician", "4")
    # a login of no facility's clinical staff does not reach the screen at all
    chw = web_site.login_http("chw")
    assert chw.get("/app/referrals").status_code == 403
    assert (
        chw.post(
            f"/app/referrals/{task_id}/answer", data={"csrf": csrf(chw), "answer": "accept"}
        ).status_code
        == 403
    )


@pytest.mark.parametrize("lang", ["ar", "fa"])
def test_the_screen_in_arabic_and_persian(
    web_site: WebSite, seeded: dict[str, str], lang: str
) -> None:
    client = signed_in(web_site, "clinician-tehran", lang)
    try:
        page = client.get("/app/referrals").text
        assert re.search(rf'<html[^>]*lang="{lang}"[^>]*dir="rtl"', page) or re.search(
            rf'<html[^>]*dir="rtl"[^>]*lang="{lang}"', page
        )
        t = translations(lang).gettext
        for msgid in ("Referrals", "Received", "Sent", "Overdue", "Referral type"):
            assert t(msgid) != msgid and t(msgid) in html.unescape(page)
        late = row(page, "received", seeded["waiting-8"])
        assert t("Not accepted within %(days)s days") % {"days": "7"} in late
    finally:
        signed_in(web_site, "clinician-tehran", "en")


# -- closing the loop: start, complete with the consult note, the requester reads it ----------

# Arabic with Arabic-Indic digits, a Persian line with ZWNJ (U+200C), a line break and markup
NOTE = "ملاحظة الاستشارة: ضغط الدم ١٤٠/٩٠ <b>&</b>\nپیگیری در مرکز ارجاع\u200cدهنده، دو هفته"


def referred_to_tehran(site: WebSite, status: str) -> str:
    """A new referral Riyadh → Tehran for Salma, moved by Tehran's API client to ``status``."""
    riyadh, tehran = facility_client(site, RIYADH), facility_client(site, TEHRAN)
    try:
        task_id = refer(riyadh, site.ids["salma"], RIYADH, TEHRAN, 1)
        for step in ("accepted", "in-progress")[: ("accepted", "in-progress").index(status) + 1]:
            task = ok(tehran.get(f"/Task/{task_id}"))
            ok(tehran.put(f"/Task/{task_id}", json={**task, "status": step}))
        return task_id
    finally:
        riyadh.close()
        tehran.close()


def notes_of(site: WebSite, patient: str) -> int:
    """How many DocumentReferences the record holds about the person."""
    r = site.fhir.get(
        "/DocumentReference", params={"subject": f"Patient/{patient}", "_count": "500"}
    )
    return len(ok(r).get("entry", []))


def complete_on_screen(client: httpx.Client, task_id: str, note: str) -> httpx.Response:
    return client.post(
        f"/app/referrals/{task_id}/complete",
        data={"csrf": csrf(client, "/app/referrals"), "note": note},
    )


def test_the_owner_starts_and_completes_with_a_consult_note_the_requester_reads(
    web_site: WebSite,
) -> None:
    task_id = referred_to_tehran(web_site, "accepted")
    tehran = signed_in(web_site, "clinician-tehran")
    shown = row(tehran.get("/app/referrals").text, "received", task_id)
    assert 'value="start"' in shown and "<textarea" not in shown
    r = tehran.post(
        f"/app/referrals/{task_id}/answer",
        data={"csrf": csrf(tehran, "/app/referrals"), "answer": "start"},
    )
    assert r.status_code == 303, r.text
    assert ok(web_site.fhir.get(f"/Task/{task_id}"))["status"] == "in-progress"
    shown = row(tehran.get("/app/referrals").text, "received", task_id)
    assert '<textarea id="note-' in shown and "Complete with feedback" in shown
    assert 'value="start"' not in shown
    r = complete_on_screen(tehran, task_id, NOTE)
    assert r.status_code == 303, r.text
    task = ok(web_site.fhir.get(f"/Task/{task_id}"))
    assert task["status"] == "completed" and task["meta"]["versionId"] == "4"
    [output] = task["output"]
    assert output["type"] == {"text": "feedback"}
    kind, document_id = output["valueReference"]["reference"].split("/")
    assert kind == "DocumentReference"
    document = ok(web_site.fhir.get(f"/DocumentReference/{document_id}"))
    assert document["status"] == "current"
    assert document["type"]["coding"][0]["system"] == "http://loinc.org"
    assert document["type"]["coding"][0]["code"] == "11488-4"
    assert document["subject"] == {"reference": f"Patient/{web_site.ids['salma']}"}
    assert document["author"] == [{"reference": f"Organization/{TEHRAN}"}]
    attachment = document["content"][0]["attachment"]
    assert attachment["contentType"] == "text/plain; charset=utf-8"
    assert base64.b64decode(attachment["data"]).decode("utf-8") == NOTE  # byte for byte
    assert _audited(web_site, task_id, "clinician-tehran", "0")
    # the requester: a link on its Sent list, and the note on the feedback page, escaped
    riyadh = signed_in(web_site, "clinician")
    sent = row(riyadh.get("/app/referrals").text, "sent", task_id)
    assert f'href="/app/referrals/{task_id}/feedback"' in sent and "Read the feedback" in sent
    page = riyadh.get(f"/app/referrals/{task_id}/feedback")
    assert page.status_code == 200, page.text
    assert "<b>&</b>" not in page.text  # the note's markup is text, not markup
    found = re.search(
        r'<pre class="note" dir="auto" id="feedback-text">(.*?)</pre>', page.text, re.S
    )
    assert found and html.unescape(found.group(1)) == NOTE
    assert FACILITIES[TEHRAN][0] in html.unescape(page.text)
    # a referral without feedback has no feedback page
    assert (
        riyadh.get(
            f"/app/referrals/{referred_to_tehran(web_site, 'accepted')}/feedback"
        ).status_code
        == 404
    )


def test_an_empty_note_or_a_refused_completion_writes_nothing(web_site: WebSite) -> None:
    salma = web_site.ids["salma"]
    tehran = signed_in(web_site, "clinician-tehran")
    started = referred_to_tehran(web_site, "in-progress")
    before = notes_of(web_site, salma)
    r = complete_on_screen(tehran, started, " \n\t")
    assert r.status_code == 422, r.text
    assert "The consult note is empty" in html.unescape(r.text)
    task = ok(web_site.fhir.get(f"/Task/{started}"))
    assert task["status"] == "in-progress" and "output" not in task
    # the state machine refuses completing a referral not yet started: the note is rolled back
    accepted = referred_to_tehran(web_site, "accepted")
    r = complete_on_screen(tehran, accepted, NOTE)
    assert r.status_code == 422, r.text
    assert "Task status accepted → completed is not allowed" in html.unescape(r.text)
    assert ok(web_site.fhir.get(f"/Task/{accepted}"))["status"] == "accepted"
    assert notes_of(web_site, salma) == before


def test_another_facility_cannot_complete_the_referral(web_site: WebSite) -> None:
    salma = web_site.ids["salma"]
    task_id = referred_to_tehran(web_site, "in-progress")
    riyadh = signed_in(web_site, "clinician")  # the requester, not the owner
    assert "<textarea" not in row(riyadh.get("/app/referrals").text, "sent", task_id)
    before = notes_of(web_site, salma)
    r = complete_on_screen(riyadh, task_id, NOTE)
    assert r.status_code == 422, r.text
    refusal = html.unescape(r.text)
    assert "The referral was not changed:" in refusal
    assert "only the owner (Organization/org-tehran) may complete the referral" in refusal
    task = ok(web_site.fhir.get(f"/Task/{task_id}"))
    assert task["status"] == "in-progress" and "output" not in task
    assert notes_of(web_site, salma) == before
    assert _audited(web_site, task_id, "clinician", "4")
