"""The care plan and care team on the patient record page (issue 16), over HTTP on SQLite and
PostgreSQL: a facility on the person's care team sees the plan's goal with its status, the
follow-up activity with its due date and the team's members with their roles, in Arabic or
Persian (right to left); a facility on no team gets the page of a patient it may not see, with
no plan or team content, and neither the CarePlan nor the Goal through the FHIR API."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import httpx
import pytest

from takamul.careplans.plans import goal_id, plan_id
from takamul.careplans.service import make_person_plans
from takamul.programmes.definitions import load_catalog
from takamul.settings import Settings
from takamul.store.repository import Store
from tests.web_world import PASSWORD, WebSite, axe_violations, signed_in

LOINC = "http://loinc.org"
# the same in every xdist worker of a run (test ids are made from it), new in every run
SUFFIX = (os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex)[:6]
HOME = f"cpw-home-{SUFFIX}"
MEMBER_SA = f"cpw-sa-{SUFFIX}"  # on the team through its practitioner; Arabic by its country
MEMBER_IR = f"cpw-ir-{SUFFIX}"  # on the team itself; Persian
OUTSIDER = f"cpw-out-{SUFFIX}"
TODAY = date.today()


@dataclass
class World:
    patient: str
    family: str
    plan: str
    goal: str
    doctor_name: str
    daughter_name: str


def created(r: httpx.Response) -> str:
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def ref(kind: str, ident: str) -> dict[str, str]:
    return {"reference": f"{kind}/{ident}"}


def _bp(pid: str, day: date, systolic: int, diastolic: int) -> dict[str, Any]:
    def comp(code: str, value: int) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "valueQuantity": {"value": value, "unit": "mm[Hg]",
                              "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        }  # fmt: skip

    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "subject": ref("Patient", pid),
        "effectiveDateTime": day.isoformat(),
        "component": [comp("8480-6", systolic), comp("8462-4", diastolic)],
    }


@pytest.fixture(scope="module")
def world(web_site: WebSite) -> World:
    admin = web_site.fhir
    for org, country in ((HOME, "SA"), (MEMBER_SA, "SA"), (MEMBER_IR, "IR"), (OUTSIDER, "SA")):
        body = {"resourceType": "Organization", "id": org, "name": org,
                "address": [{"country": country}]}  # fmt: skip
        created(admin.put(f"/Organization/{org}", json=body))
        web_site.security.users.add(f"u-{org}", PASSWORD, ["clinician"], org, org)
    family = f"Cpfam{SUFFIX}"
    pid = created(
        admin.post(
            "/Patient",
            json={
                "resourceType": "Patient",
                "name": [{"given": ["Fatima"], "family": family}],
                "birthDate": "1955-05-05",
                "gender": "female",
                "managingOrganization": ref("Organization", HOME),
            },
        )
    )
    onset = (TODAY - timedelta(days=400)).isoformat()
    created(
        admin.post(
            "/Condition",
            json={
                "resourceType": "Condition",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
                "subject": ref("Patient", pid),
                "onsetDateTime": onset,
            },
        )
    )
    created(admin.post("/Observation", json=_bp(pid, TODAY - timedelta(days=5), 152, 96)))
    doctor_name = f"Dr Sami {SUFFIX}"
    doctor = created(
        admin.post(
            "/Practitioner",
            json={"resourceType": "Practitioner", "name": [{"text": doctor_name}]},
        )
    )
    created(
        admin.post(
            "/PractitionerRole",
            json={
                "resourceType": "PractitionerRole",
                "active": True,
                "practitioner": ref("Practitioner", doctor),
                "organization": ref("Organization", MEMBER_SA),
            },
        )
    )
    daughter_name = f"Amina {SUFFIX}"
    daughter = created(
        admin.post(
            "/RelatedPerson",
            json={
                "resourceType": "RelatedPerson",
                "patient": ref("Patient", pid),
                "name": [{"text": daughter_name}],
            },
        )
    )
    team = {
        "resourceType": "CareTeam",
        "status": "active",
        "name": "Hypertension team",
        "subject": ref("Patient", pid),
        "period": {"start": onset},
        "participant": [
            {"member": ref("Practitioner", doctor), "role": [{"text": "GP"}],
             "period": {"start": onset}},
            {"member": ref("Organization", MEMBER_IR)},
            {"member": ref("RelatedPerson", daughter), "role": [{"text": "caregiver"}]},
        ],
    }  # fmt: skip
    created(admin.post("/CareTeam", json=team))
    store = Store(Settings(database_url=web_site.db))
    try:
        # the server keeps the care facts and links the Patient; the plan is made as the CLI
        # or a service would make it
        [made] = make_person_plans(store, load_catalog(), [pid], TODAY)
        with store.reading() as s:
            plan = s.read("CarePlan", made).json()
    finally:
        store.close()
    person = plan["identifier"][0]["value"].removeprefix("hypertension-")
    assert made == plan_id("hypertension", person)
    return World(pid, family, made, goal_id("hypertension", person), doctor_name, daughter_name)


@pytest.fixture(scope="module")
def pages(web_site: WebSite, world: World) -> Iterator[dict[str, httpx.Client]]:
    out = {org: web_site.login_http(f"u-{org}") for org in (MEMBER_SA, MEMBER_IR, OUTSIDER)}
    yield out
    for client in out.values():
        client.close()


def test_a_member_facility_sees_the_plan_and_team_in_arabic(
    pages: dict[str, httpx.Client], world: World
) -> None:
    r = pages[MEMBER_SA].get(f"/app/patients/{world.patient}")
    assert r.status_code == 200, r.text[:300]
    html = r.text
    assert 'dir="rtl"' in html and 'lang="ar"' in html
    assert f'id="plan-{world.plan}"' in html
    assert "خطة رعاية" in html  # "... care plan"
    assert 'data-achievement="not-achieved"' in html and "لم يتحقق" in html  # 152/96
    assert "ضغط الدم الانقباضي" in html and "&lt; ١٤٠ mmHg" in html  # Arabic-Indic digits
    # the follow-up visit, 30 days after an uncontrolled visit
    due = (TODAY - timedelta(days=5) + timedelta(days=30)).isoformat()
    assert f'datetime="{due}"' in html and 'data-status="scheduled"' in html
    assert world.doctor_name in html and world.daughter_name in html
    assert "caregiver" in html and "GP" in html
    assert 'data-kind="RelatedPerson"' in html and 'data-kind="Organization"' in html


def test_a_member_facility_sees_the_plan_in_persian(
    pages: dict[str, httpx.Client], world: World
) -> None:
    r = pages[MEMBER_IR].get(f"/app/patients/{world.patient}")
    assert r.status_code == 200, r.text[:300]
    assert 'lang="fa"' in r.text and 'dir="rtl"' in r.text
    assert "برنامهٔ مراقبت" in r.text and f'id="plan-{world.plan}"' in r.text


def test_a_facility_on_no_team_sees_no_plan_or_team(
    pages: dict[str, httpx.Client], world: World
) -> None:
    outsider = pages[OUTSIDER]
    r = outsider.get(f"/app/patients/{world.patient}")
    assert r.status_code == 404
    for marker in (world.plan, world.doctor_name, world.daughter_name, world.family, "care-plans"):
        assert marker not in r.text
    assert outsider.get(f"/fhir/CarePlan/{world.plan}").status_code == 404
    assert outsider.get(f"/fhir/Goal/{world.goal}").status_code == 404
    found = outsider.get("/fhir/CarePlan", params={"patient": f"Patient/{world.patient}"})
    assert found.status_code == 200 and found.json()["total"] == 0
    # the members read them through the API too (patient compartment: facility scoping)
    member = pages[MEMBER_SA]
    assert member.get(f"/fhir/CarePlan/{world.plan}").status_code == 200
    assert member.get(f"/fhir/Goal/{world.goal}").status_code == 200


def test_the_care_sections_pass_axe(web_site: WebSite, chromium: Any, world: World) -> None:
    page = signed_in(chromium, web_site, f"u-{MEMBER_SA}", bypass_csp=True)
    try:
        page.goto(web_site.url(f"/app/patients/{world.patient}"))
        assert page.locator("html").get_attribute("dir") == "rtl"
        assert page.locator("#care-plans table.care-goals").is_visible()
        assert page.locator("#care-team table.care-team").is_visible()
        assert axe_violations(page) == []
    finally:
        page.context.close()
