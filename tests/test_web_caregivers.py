"""The caregivers screen over HTTP (no browser), on SQLite and PostgreSQL: a caregiver's login
sees the person it acts for only while their consent is in force (a revoked or expired one
shows nothing of them), is refused another person, answers its own ZBI-12 (a high burden
proposes support and the result page says so), a clinician records a screen for a caregiver,
and the facility's registry lists its caregivers at high burden and no other facility's; the
pages in Arabic and Persian read right to left and names round-trip untouched.

No ZBI wording is written here (the instrument is licensed): answers are scores only.
"""

from __future__ import annotations

import html
import os
import re
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey
from playwright.sync_api import expect

from takamul.caregivers.burden import CAREGIVER_SYSTEM, SUPPORT_CODE
from takamul.coordination.referrals import TASK_CODE_SYSTEM
from takamul.equity.outreach import OUTREACH_SYSTEM
from takamul.mentalhealth.safety import find_all
from takamul.security.consent import LOGIN_SYSTEM
from takamul.settings import Settings
from takamul.store.guard import unguarded
from takamul.store.repository import Store
from takamul.web.i18n import translations
from tests.web_world import (
    PASSWORD,
    FreshToken,
    WebSite,
    axe_violations,
    set_preferences,
    signed_in,
)

# the same in every xdist worker of a run (test ids may be made from it), new in every run
RUN = (os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex)[:6]
FAC, OTHER = f"org-cg-{RUN}", f"org-cg-other-{RUN}"
CLIN, CLIN_OTHER = f"cg-clin-{RUN}", f"cg-clin-other-{RUN}"
# caregiver logins: consent in force, revoked later, expired, never given
CG, CG_REVOKED, CG_EXPIRED, CG_NONE, CG_PSY = (
    f"cg-{k}-{RUN}" for k in ("ok", "rev", "exp", "none", "psy")
)
ZBI_URL = "https://takamul.health/fhir/Questionnaire/zbi-12"
ITEMS = [f"zbi12-{n}" for n in range(1, 13)]
TODAY = date.today()
CAREGIVER_NAME = "عبدالرحمن القحطاني"
PATIENT_GIVEN = "فاطمة"


def _put(site: WebSite, body: dict[str, Any]) -> None:
    r = site.fhir.put(f"/{body['resourceType']}/{body['id']}", json=body)
    assert r.status_code in (200, 201), r.text


def _pid(key: str) -> str:
    return f"cg{RUN}-{key}"


def _consent(key: str, login: str, **provision: Any) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": f"{_pid(key)}-consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "treatment",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{_pid(key)}"},
        "provision": {
            "type": "permit",
            "actor": [
                {
                    "role": {"text": "caregiver"},
                    "reference": {"identifier": {"system": LOGIN_SYSTEM, "value": login}},
                }
            ],
            **provision,
        },
    }


def _family(site: WebSite, key: str, org: str, login: str | None, name: str) -> None:
    """A patient of ``org`` and their caregiver (``<pid>-rp``), who carries ``login``."""
    _put(
        site,
        {
            "resourceType": "Patient",
            "id": _pid(key),
            "name": [{"given": [PATIENT_GIVEN], "family": f"{key}-{RUN}"}],
            "birthDate": "1941-02-03",
            "managingOrganization": {"reference": f"Organization/{org}"},
        },
    )
    related: dict[str, Any] = {
        "resourceType": "RelatedPerson",
        "id": f"{_pid(key)}-rp",
        "patient": {"reference": f"Patient/{_pid(key)}"},
        "relationship": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "SON"}
                ],
                "text": "ابن",
            }
        ],
        "name": [{"text": name}],
    }
    if login:
        related["identifier"] = [{"system": LOGIN_SYSTEM, "value": login}]
    _put(site, related)


def _zbi(key: str, total: int, authored: str) -> dict[str, Any]:
    values = [min(4, max(0, total - 4 * n)) for n in range(12)]
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": ZBI_URL,
        "status": "completed",
        "subject": {"reference": f"Patient/{_pid(key)}"},
        "source": {"reference": f"RelatedPerson/{_pid(key)}-rp"},
        "author": {"reference": f"RelatedPerson/{_pid(key)}-rp"},
        "authored": authored,
        "item": [
            {"linkId": link, "answer": [{"valueInteger": v}]}
            for link, v in zip(ITEMS, values, strict=True)
        ],
    }


def _care(site: WebSite) -> None:
    """What the record holds of the cared-for person: care due (one overdue), an appointment,
    a referral under way, a medication; and a finished Task that is not care due."""
    pid = f"Patient/{_pid('main')}"
    yesterday, soon = (TODAY - timedelta(days=3)).isoformat(), (TODAY + timedelta(days=9))
    bodies: list[dict[str, Any]] = [
        {
            "resourceType": "Task",
            "id": f"{_pid('main')}-due",
            "status": "requested",
            "intent": "plan",
            "code": {
                "coding": [{"system": OUTREACH_SYSTEM, "code": "bp-follow-up"}],
                "text": "قياس ضغط الدم",
            },
            "for": {"reference": pid},
            "authoredOn": (TODAY - timedelta(days=30)).isoformat(),
            "restriction": {"period": {"end": yesterday}},
        },
        {
            "resourceType": "Task",
            "id": f"{_pid('main')}-done",
            "status": "completed",
            "intent": "plan",
            "code": {"text": "finished-task-not-shown"},
            "for": {"reference": pid},
        },
        {
            "resourceType": "Appointment",
            "id": f"{_pid('main')}-appt",
            "status": "booked",
            "description": "مراجعة السكري",
            "start": f"{soon.isoformat()}T09:00:00+03:00",
            "end": f"{soon.isoformat()}T09:20:00+03:00",
            "participant": [{"actor": {"reference": pid}, "status": "accepted"}],
        },
        {
            "resourceType": "ServiceRequest",
            "id": f"{_pid('main')}-sr",
            "status": "active",
            "intent": "order",
            "code": {"text": "Cardiology consult"},
            "subject": {"reference": pid},
            "requester": {"reference": f"Organization/{FAC}"},
            "performer": [{"reference": f"Organization/{OTHER}"}],
        },
        {
            "resourceType": "Task",
            "id": f"{_pid('main')}-ref",
            "status": "requested",
            "intent": "order",
            "code": {"coding": [{"system": TASK_CODE_SYSTEM, "code": "fulfill"}]},
            "focus": {"reference": f"ServiceRequest/{_pid('main')}-sr"},
            "for": {"reference": pid},
            "authoredOn": (TODAY - timedelta(days=2)).isoformat(),
            "requester": {"reference": f"Organization/{FAC}"},
            "owner": {"reference": f"Organization/{OTHER}"},
        },
        {
            "resourceType": "MedicationRequest",
            "id": f"{_pid('main')}-med",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"text": "Metformin 500 mg"},
            "subject": {"reference": pid},
            "dosageInstruction": [{"text": "حبة مع العشاء"}],
        },
    ]
    referral = [b for b in bodies if b["resourceType"] == "Task" and "focus" in b]
    for body in bodies:
        if body not in referral:
            _put(site, body)
    with _facility_client(site, FAC) as requester:  # only the requester may make a referral
        for body in referral:
            r = requester.put(f"/Task/{body['id']}", json=body)
            assert r.status_code in (200, 201), r.text


def _facility_client(site: WebSite, facility: str) -> httpx.Client:
    """A FHIR client of ``facility`` (a clinician's system client bound to it)."""
    key = ECKey.generate_key("P-384")
    client_id = f"{facility}-{uuid.uuid4().hex[:8]}"
    jwks = {"keys": [{**key.as_dict(private=False), "kid": key.thumbprint(), "alg": "ES384"}]}
    site.security.clients.add(client_id, facility, jwks, "system/*.cruds", facility, ("clinician",))
    auth = FreshToken(site.security, client_id, site.root + "/fhir")
    return httpx.Client(base_url=site.root + "/fhir", timeout=60, auth=auth)


def _psy_restriction(key: str) -> dict[str, Any]:
    consent = _consent(key, "nobody")
    consent["id"] = f"{_pid(key)}-psy"
    consent["scope"]["coding"][0]["code"] = "patient-privacy"
    consent["provision"] = {
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
    }
    return consent


@pytest.fixture(scope="module")
def world(web_site: WebSite) -> dict[str, str]:
    for org, name in ((FAC, "مركز العليا الصحي"), (OTHER, "درمانگاه قلب")):
        _put(
            web_site,
            {
                "resourceType": "Organization",
                "id": org,
                "name": name,
                "address": [{"city": "Riyadh", "country": "SA"}],
            },
        )
    users = web_site.security.users
    users.add(CLIN, PASSWORD, ["clinician"], FAC, "Dr Huda")
    users.add(CLIN_OTHER, PASSWORD, ["clinician"], OTHER, "Dr Reza")
    _family(web_site, "main", FAC, CG, CAREGIVER_NAME)
    _family(web_site, "rev", FAC, CG_REVOKED, "مریم")
    _family(web_site, "exp", FAC, CG_EXPIRED, "Hassan")
    _family(web_site, "none", FAC, CG_NONE, "Layla")
    _family(web_site, "away", OTHER, None, "کاوه رضایی")  # the other facility's caregiver
    for login, key in ((CG, "main"), (CG_REVOKED, "rev"), (CG_EXPIRED, "exp"), (CG_NONE, "none")):
        users.add(login, PASSWORD, ["caregiver"], None, f"Caregiver {key}", _pid(key))
    _put(web_site, _consent("main", CG))
    _put(web_site, _consent("rev", CG_REVOKED))
    ended = (TODAY - timedelta(days=1)).isoformat()
    _put(web_site, _consent("exp", CG_EXPIRED, period={"start": "2020-01-01", "end": ended}))
    _care(web_site)
    # a patient who keeps mental health data (the burden screens too) to the other facility
    _family(web_site, "psy", FAC, CG_PSY, "Samir")
    users.add(CG_PSY, PASSWORD, ["caregiver"], None, "Caregiver psy", _pid("psy"))
    _put(web_site, _consent("psy", CG_PSY))
    r = web_site.fhir.post("/QuestionnaireResponse", json=_zbi("psy", 40, _now()))
    assert r.status_code == 201, r.text
    _put(web_site, _psy_restriction("psy"))
    # the other facility's caregiver screened at high burden through the API
    r = web_site.fhir.post("/QuestionnaireResponse", json=_zbi("away", 30, _now()))
    assert r.status_code == 201, r.text
    return {"away-response": r.json()["id"]}


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _client(site: WebSite, login: str, lang: str = "en") -> httpx.Client:
    client = site.login_http(login)
    calendar, numerals = {"en": ("gregorian", "latin"), "ar": ("hijri", "arab")}.get(
        lang, ("jalali", "persian")
    )
    r = client.post(
        "/app/preferences",
        data={"csrf": _csrf(client), "lang": lang, "calendar": calendar, "numerals": numerals},
    )
    assert r.status_code == 303, r.text
    return client


def _csrf(client: httpx.Client) -> str:
    return client.get("/app/").text.split('data-csrf="')[1].split('"')[0]


def _audited(site: WebSite, user: str, patient: str, outcome: str) -> bool:
    """The audit log holds a read of ``patient`` by ``user`` with ``outcome`` (it writes
    behind, so wait a little)."""
    for _ in range(50):
        r = site.fhir.get("/AuditEvent", params={"agent": user, "patient": f"Patient/{patient}"})
        events = [e["resource"] for e in r.json().get("entry", [])]
        if any(e["outcome"] == outcome for e in events):
            return True
        time.sleep(0.1)
    return False


def _section(page: str, key: str) -> str:
    found = re.search(
        rf'<section class="card" aria-labelledby="{key}-h" id="{key}">(.*?)</section>', page, re.S
    )
    assert found, f"no {key} section"
    return html.unescape(found.group(1))


def _no_inline_code(page: str) -> None:
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)
    assert not re.search(r"\sstyle=|\son[a-z]+=", page)


def test_with_consent_the_caregiver_sees_the_person_they_care_for(
    web_site: WebSite, world: dict[str, str]
) -> None:
    client = _client(web_site, CG)
    home = client.get("/app/")
    assert 'href="/app/caregivers"' in home.text
    r = client.get("/app/caregivers")
    assert r.status_code == 200, r.text
    page = r.text
    assert PATIENT_GIVEN in page and 'id="cg-no-consent"' not in page
    due = _section(page, "cg-due")
    assert "قياس ضغط الدم" in due and "Overdue" in due and "finished-task-not-shown" not in page
    assert "مراجعة السكري" in _section(page, "cg-appointments")
    referrals = _section(page, "cg-referrals")
    assert "Cardiology consult" in referrals and "درمانگاه قلب" in referrals
    assert 'data-status="requested"' in referrals and "Awaiting answer" in referrals
    medications = _section(page, "cg-medications")
    assert "Metformin 500 mg" in medications and "حبة مع العشاء" in medications
    burden = _section(page, "cg-burden")
    assert f'href="/app/caregivers/burden/{_pid("main")}-rp"' in burden
    _no_inline_code(page)
    assert _audited(web_site, CG, _pid("main"), "0")


def test_another_patient_is_refused(web_site: WebSite, world: dict[str, str]) -> None:
    client = _client(web_site, CG)
    r = client.get(f"/app/caregivers/for/{_pid('rev')}")
    assert r.status_code == 403
    assert PATIENT_GIVEN not in r.text and "acts for one person only" in r.text
    assert client.get(f"/app/caregivers/for/{_pid('main')}").status_code == 200
    # another caregiver's form and another patient's caregiver: the same page as nothing
    other = client.get(f"/app/caregivers/burden/{_pid('rev')}-rp")
    assert other.status_code == 404 and "مریم" not in other.text
    assert _audited(web_site, CG, _pid("rev"), "4")  # the refusal is audited (minor failure)


@pytest.mark.parametrize("login", [CG_NONE, CG_EXPIRED])
def test_without_consent_in_force_nothing_of_the_person_is_shown(
    web_site: WebSite, world: dict[str, str], login: str
) -> None:
    client = _client(web_site, login)
    r = client.get("/app/caregivers")
    assert r.status_code == 403
    assert 'id="cg-no-consent"' in r.text and "No consent in force" in r.text
    assert PATIENT_GIVEN not in r.text and "1941" not in r.text
    form = client.get("/app/caregivers/burden")
    assert form.status_code == 403 and 'id="cg-no-consent"' in form.text
    # the API agrees: the same guard
    key = "none" if login == CG_NONE else "exp"
    assert client.get(f"/fhir/Patient/{_pid(key)}").status_code == 403


def test_a_deleted_record_is_not_found(web_site: WebSite, world: dict[str, str]) -> None:
    login = f"cg-gone-{RUN}"
    _family(web_site, "gone", FAC, login, "Nadia")
    web_site.security.users.add(login, PASSWORD, ["caregiver"], None, "Caregiver", _pid("gone"))
    _put(web_site, _consent("gone", login))
    client = _client(web_site, login)
    assert client.get("/app/caregivers").status_code == 200
    assert web_site.fhir.delete(f"/Patient/{_pid('gone')}").status_code in (200, 204)
    r = client.get("/app/caregivers")
    assert r.status_code == 404 and PATIENT_GIVEN not in r.text


def test_a_revoked_consent_hides_the_person_again(web_site: WebSite, world: dict[str, str]) -> None:
    client = _client(web_site, CG_REVOKED)
    assert client.get("/app/caregivers").status_code == 200
    consent = web_site.fhir.get(f"/Consent/{_pid('rev')}-consent").json()
    _put(web_site, {**consent, "status": "inactive"})  # R4: a withdrawn consent is inactive
    r = client.get("/app/caregivers")
    assert r.status_code == 403 and 'id="cg-no-consent"' in r.text
    assert PATIENT_GIVEN not in r.text and "مریم" not in r.text
    assert _audited(web_site, CG_REVOKED, _pid("rev"), "4")


def _answers(total: int) -> dict[str, str]:
    values = [min(4, max(0, total - 4 * n)) for n in range(12)]
    return {link: str(v) for link, v in zip(ITEMS, values, strict=True)}


def _support(site: WebSite, key: str) -> list[dict[str, Any]]:
    found = site.fhir.get(
        "/ServiceRequest",
        params={"subject": f"Patient/{_pid(key)}", "code": f"{CAREGIVER_SYSTEM}|{SUPPORT_CODE}"},
    ).json()
    return [e["resource"] for e in found.get("entry", [])]


def test_the_caregiver_screens_their_own_burden_and_support_is_proposed(
    web_site: WebSite, world: dict[str, str]
) -> None:
    client = _client(web_site, CG)
    own = client.get("/app/caregivers/burden")
    assert own.status_code == 303
    url = own.headers["location"]
    assert url == f"/app/caregivers/burden/{_pid('main')}-rp"
    form = client.get(url)
    assert form.status_code == 200, form.text
    assert form.text.count('data-scored="true"') == 12 and 'id="mh-total"' in form.text
    stored = web_site.fhir.get("/Questionnaire/zbi-12").json()
    if not any(i.get("text") for g in stored.get("item", []) for i in g.get("item", [g])):
        assert 'id="mh-wording-note"' in form.text and "Question 12" in form.text
    _no_inline_code(form.text)
    # an unanswered item: nothing is stored, the answers given stay
    partial = {k: v for k, v in _answers(20).items() if k != "zbi12-12"}
    refused = client.post(url, data={"csrf": _csrf(client), **partial})
    assert refused.status_code == 422 and "Nothing was stored." in refused.text
    assert _support(web_site, "main") == []
    r = client.post(url, data={"csrf": _csrf(client), **_answers(20)})
    assert r.status_code == 303, r.text
    response_id = r.headers["location"].rsplit("/", 1)[1]
    response = web_site.fhir.get(f"/QuestionnaireResponse/{response_id}").json()
    assert response["subject"] == {"reference": f"Patient/{_pid('main')}"}
    assert response["source"] == {"reference": f"RelatedPerson/{_pid('main')}-rp"}
    assert response["author"] == {"reference": f"RelatedPerson/{_pid('main')}-rp"}
    assert response["questionnaire"] == ZBI_URL
    support = _support(web_site, "main")
    assert len(support) == 1 and support[0]["status"] == "active"
    result = client.get(r.headers["location"])
    assert result.status_code == 200, result.text
    assert 'data-total="20"' in result.text and 'data-high="true"' in result.text
    assert "Support has been proposed for you." in result.text
    assert f'data-support="{support[0]["id"]}"' in result.text
    # the view lists the screen; another caregiver's login does not reach it
    assert f"/app/caregivers/responses/{response_id}" in client.get("/app/caregivers").text
    assert _client(web_site, CG_NONE).get(r.headers["location"]).status_code == 403


def test_a_consent_keeping_mental_health_data_away_refuses_the_caregivers_screen(
    web_site: WebSite, world: dict[str, str], tmp_path: Path
) -> None:
    """The guard judges the PSY label, not who answered (docs/caregivers.md): the caregiver
    still sees the person, not their earlier screen, and a new one is refused, stored nowhere."""
    client = _client(web_site, CG_PSY)
    view = client.get("/app/caregivers")
    assert view.status_code == 200 and "/app/caregivers/responses/" not in view.text
    url = f"/app/caregivers/burden/{_pid('psy')}-rp"
    r = client.post(url, data={"csrf": _csrf(client), **_answers(30)})
    assert r.status_code == 403 and "You may not record a burden screen" in r.text
    # what the record holds, read for the system: only the screen written before the consent
    store = Store(Settings(database_url=web_site.db, export_dir=tmp_path / "exports"))
    try:
        with unguarded(), store.reading() as session:
            held = find_all(
                session, "QuestionnaireResponse", [("subject", f"Patient/{_pid('psy')}")]
            )
    finally:
        store.close()
    assert len(held) == 1


def test_a_clinician_records_a_screen_for_a_caregiver(
    web_site: WebSite, world: dict[str, str]
) -> None:
    client = _client(web_site, CLIN)
    found = client.get("/app/caregivers", params={"name": "Hassan"}).text
    assert f'id="found-{_pid("exp")}-rp"' in found
    url = f"/app/caregivers/burden/{_pid('exp')}-rp"
    assert url in found
    r = client.post(url, data={"csrf": _csrf(client), **_answers(8)})
    assert r.status_code == 303, r.text
    response_id = r.headers["location"].rsplit("/", 1)[1]
    response = web_site.fhir.get(f"/QuestionnaireResponse/{response_id}").json()
    assert response["source"] == {"reference": f"RelatedPerson/{_pid('exp')}-rp"}
    assert response["author"]["display"] == "Dr Huda"  # who recorded it
    result = client.get(r.headers["location"]).text
    assert 'data-total="8"' in result and 'data-high="false"' in result
    assert "below cut-off" in result and 'id="cg-support"' not in result
    assert _support(web_site, "exp") == []
    # the other facility's caregiver is not this clinician's to screen
    away = client.get(f"/app/caregivers/burden/{_pid('away')}-rp")
    assert away.status_code == 404 and "کاوه" not in away.text


def test_the_registry_lists_the_facilitys_caregivers_at_high_burden(
    web_site: WebSite, world: dict[str, str]
) -> None:
    # this facility's caregiver screened twice late today through the API (after any screen of
    # the other tests): the later one is the latest, whatever their ids' order
    day = TODAY.isoformat()
    for rid, total, at in (("zz", 14, "23:58"), ("aa", 25, "23:59")):
        _put(web_site, {**_zbi("main", total, f"{day}T{at}:00+00:00"), "id": f"{_pid(rid)}-zbi"})
    page = _client(web_site, CLIN).get("/app/caregivers").text
    rows = re.findall(r'<tr id="cg-([^"]+)"', page)
    assert f"{_pid('main')}-rp" in rows and f"{_pid('away')}-rp" not in rows
    assert f"{_pid('exp')}-rp" not in rows  # screened below the cut-off
    # at high burden, but the patient's consent keeps mental health data from this facility:
    # being on the list would tell it
    assert f"{_pid('psy')}-rp" not in rows
    assert "Samir" not in page.split('id="cg-find-h"')[0]  # still a caregiver one may find
    row = html.unescape(page.split(f'<tr id="cg-{_pid("main")}-rp"')[1].split("</tr>")[0])
    assert CAREGIVER_NAME in row and PATIENT_GIVEN in row and ">25 " in row.replace("·", " ")
    assert "Proposed" in row and "+11" in row  # 25 after 14 on the same day
    result = _client(web_site, CLIN).get(f"/app/caregivers/responses/{_pid('aa')}-zbi").text
    assert 'data-high="true"' in result and "Support has been proposed for the caregiver." in result
    other = _client(web_site, CLIN_OTHER).get("/app/caregivers").text
    other_rows = re.findall(r'<tr id="cg-([^"]+)"', other)
    assert f"{_pid('away')}-rp" in other_rows and f"{_pid('main')}-rp" not in other_rows
    assert "کاوه رضایی" in other
    # a caregiver's login has no registry: its page is the person it cares for
    assert 'id="cg-registry"' not in _client(web_site, CG).get("/app/caregivers").text


@pytest.mark.parametrize(("lang", "digit"), [("ar", "٠١٢٣٤٥٦٧٨٩"), ("fa", "۰۱۲۳۴۵۶۷۸۹")])
def test_arabic_and_persian_read_right_to_left(
    web_site: WebSite, world: dict[str, str], lang: str, digit: str
) -> None:
    gettext = translations(lang).gettext
    client = _client(web_site, CG, lang)
    page = client.get("/app/caregivers").text
    assert f'<html lang="{lang}" dir="rtl">' in page
    assert gettext("Care due") in page and gettext("Care due") != "Care due"
    assert gettext("Your own wellbeing as a caregiver") in page
    assert PATIENT_GIVEN in page and "حبة مع العشاء" in html.unescape(page)
    form = client.get(f"/app/caregivers/burden/{_pid('main')}-rp").text
    assert gettext("Caregiver burden screen") in form
    assert any(d in form for d in digit)  # item numbers in the chosen digits
    registry = _client(web_site, CLIN, lang).get("/app/caregivers").text
    assert 'dir="rtl"' in registry and gettext("Find a caregiver") in registry


def test_a_consent_authorises_only_within_its_period() -> None:
    """The guard's rule for caregivers (``authorises_caregiver``): a permit provision, or the
    consent's top level, whose period has ended or not begun authorises nothing; a date-only,
    year-month or year bound covers the whole of it."""
    from takamul.security.consent import authorises_caregiver

    now = datetime(2026, 12, 5, 1, 0, tzinfo=UTC)

    def allows(period: dict[str, str] | None, top: dict[str, str] | None = None) -> bool:
        consent = _consent("unit", "login")
        if period is not None:
            consent["provision"]["period"] = period
        if top is not None:
            consent["provision"] = {"type": "deny", "period": top, "provision": [
                {**consent["provision"], "type": "permit"}
            ]}  # fmt: skip
        return authorises_caregiver(consent, ["login"], now)

    assert allows(None) and allows({"start": "2026-01-01"}) and allows({"end": "2026-12-05"})
    assert allows({"end": "2026-12"}) and allows({"end": "2026"})
    assert not allows({"end": "2026-12-04"}) and not allows({"end": "2026-11"})
    assert not allows({"end": "2026-12-05T00:59:00Z"}) and not allows({"start": "2027"})
    assert not allows({"start": "2026-12-05T02:00:00+00:00"})
    assert allows(None, top={"end": "2027-01-01"}) and not allows(None, top={"end": "2025"})
    assert not authorises_caregiver({**_consent("unit", "login"), "status": "inactive"}, ["login"])


def test_the_burden_form_in_the_browser(
    web_site: WebSite, chromium: Any, world: dict[str, str]
) -> None:
    """The caregiver's own form: the running total and band as answers are picked, in English
    and in Arabic (right to left, Arabic-Indic digits); axe on the view and the form."""
    page = signed_in(chromium, web_site, CG, bypass_csp=True)
    for lang, calendar, numerals in (("en", "gregorian", "latin"), ("ar", "hijri", "arab")):
        gettext = translations(lang).gettext
        set_preferences(page, lang, calendar, numerals)
        page.goto(web_site.url("/app/caregivers"))
        assert page.locator("html").get_attribute("dir") == ("rtl" if lang == "ar" else "ltr")
        expect(page.locator("#cg-due")).to_contain_text("قياس ضغط الدم")
        assert axe_violations(page) == [], f"{lang} view"
        page.locator("#cg-screen-link").click()
        page.wait_for_url("**/app/caregivers/burden/*")
        total = page.locator("#mh-total")
        for link, value in zip(ITEMS, [4, 4, 4, 1], strict=False):
            page.locator(f'#q-{link} input[value="{value}"]').check()
        expect(total).to_have_attribute("data-total", "13")
        shown = total.inner_text()
        assert gettext("high caregiver burden") in shown, shown
        if lang == "ar":
            assert "١٣" in shown and "٤٨" in shown
        else:
            assert "Total 13 of 48, high caregiver burden; 4 of 12" in shown
        assert axe_violations(page) == [], f"{lang} form"
    page.context.close()
