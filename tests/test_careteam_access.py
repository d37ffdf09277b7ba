"""Care team membership gives access (issue 16), through the one guard on every path, on SQLite
and PostgreSQL, over HTTP with access control on.

The world: a patient managed by a home centre, with a blood pressure, a diabetes diagnosis and a
PHQ-9 (mental health: labelled PSY), and an active CareTeam whose members are

* ``Organization/ct-org`` (an organization member),
* ``Practitioner/<doctor>``, who holds an active PractitionerRole at ``ct-prac``,
* ``PractitionerRole/<nurse>`` at ``ct-role``,
* ``PractitionerRole/<behvarz>``, a community health worker's role at ``ct-chw``,
* a ``RelatedPerson`` (the patient's daughter, who has a caregiver login),
* ``Organization/ct-ended`` whose participation ended in 2020,
* ``Practitioner/<retired>``, whose only PractitionerRole (at ``ct-retired``) is inactive;

and an inactive CareTeam naming ``ct-inactive``. ``ct-none`` is on no team: the control.
Every path is asked by a clinician of each facility; the member facilities must see the
patient's data, the others nothing. A second patient's Consent keeps PSY data to the home
centre: members see their blood pressure, never their PHQ-9.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.web_world import PASSWORD, WebSite

LOINC = "http://loinc.org"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PHQ9_ITEMS = (
    "44250-9",
    "44255-8",
    "44259-0",
    "44254-1",
    "44251-7",
    "44258-2",
    "44252-5",
    "44253-3",
    "44260-8",
)
NOT_AT_ALL = "LA6568-5"
# the same in every xdist worker of a run (test ids are made from it), new in every run
SUFFIX = (os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex)[:6]
HOME = f"ct-home-{SUFFIX}"
MEMBERS = {  # facility -> how it is on the team
    f"ct-org-{SUFFIX}": "organization member",
    f"ct-prac-{SUFFIX}": "its practitioner is a member",
    f"ct-role-{SUFFIX}": "its PractitionerRole is a member",
    f"ct-chw-{SUFFIX}": "its community health worker's role is a member",
}
NOT_MEMBERS = {
    f"ct-none-{SUFFIX}": "on no team (the control)",
    f"ct-ended-{SUFFIX}": "its participation ended",
    f"ct-retired-{SUFFIX}": "its practitioner's role is inactive",
    f"ct-inactive-{SUFFIX}": "on an inactive team",
}
CHW_FACILITY = f"ct-chw-{SUFFIX}"
CHW_LOGIN = f"ct-behvarz-{SUFFIX}"
CAREGIVER_LOGIN = f"ct-daughter-{SUFFIX}"
LOGIN_SYSTEM = "https://takamul.health/fhir/sid/login"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"


def login_of(facility: str) -> str:
    return f"doc-{facility}"


@dataclass
class World:
    patient: str
    name: str  # a family name no one else has (for chains)
    bp: str
    condition: str
    phq9: str
    restricted: str  # a second patient, whose Consent keeps PSY to the home centre
    restricted_bp: str
    restricted_phq9: str
    team: str
    related: str


def created(r: httpx.Response) -> str:
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def ref(kind: str, ident: str) -> dict[str, str]:
    return {"reference": f"{kind}/{ident}"}


def blood_pressure(pid: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "subject": ref("Patient", pid),
        "effectiveDateTime": "2026-11-20",
        "component": [
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": {"value": 150, "unit": "mm[Hg]"},
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": {"value": 95, "unit": "mm[Hg]"},
            },
        ],
    }


def phq9(pid: str) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": "https://takamul.health/fhir/Questionnaire/phq-9",
        "subject": ref("Patient", pid),
        "authored": "2026-11-02T10:00:00+03:00",
        "item": [
            {"linkId": link, "answer": [{"valueCoding": {"system": LOINC, "code": NOT_AT_ALL}}]}
            for link in PHQ9_ITEMS
        ],
    }


def psy_consent(pid: str) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
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
        "patient": ref("Patient", pid),
        "provision": {
            "type": "deny",
            "securityLabel": [{"system": ACT, "code": "PSY"}],
            "provision": [
                {"type": "permit", "actor": [{"role": {"text": "treating team"},
                                              "reference": ref("Organization", HOME)}]}
            ],
        },
    }  # fmt: skip


def team(pid: str, status: str, participants: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "CareTeam",
        "status": status,
        "subject": ref("Patient", pid),
        "period": {"start": "2026-01-01"},
        "participant": participants,
        "managingOrganization": [ref("Organization", HOME)],
    }


def practitioner_role(
    admin: httpx.Client, facility: str, code: str, active: bool = True
) -> tuple[str, str]:
    """A Practitioner and their PractitionerRole at ``facility``."""
    doctor = created(admin.post("/Practitioner", json={"resourceType": "Practitioner"}))
    role = created(
        admin.post(
            "/PractitionerRole",
            json={
                "resourceType": "PractitionerRole",
                "active": active,
                "practitioner": ref("Practitioner", doctor),
                "organization": ref("Organization", facility),
                "code": [{"coding": [{"system": "http://snomed.info/sct", "code": code}]}],
            },
        )
    )
    return doctor, role


def make_patient(admin: httpx.Client, family: str) -> str:
    return created(
        admin.post(
            "/Patient",
            json={
                "resourceType": "Patient",
                "name": [{"given": ["هند"], "family": family}],
                "birthDate": "1950-02-03",
                "gender": "female",
                "managingOrganization": ref("Organization", HOME),
            },
        )
    )


@pytest.fixture(scope="module")
def world(web_site: WebSite) -> World:
    admin = web_site.fhir
    for org in (HOME, *MEMBERS, *NOT_MEMBERS):
        created(admin.put(f"/Organization/{org}", json={"resourceType": "Organization", "id": org}))
        web_site.security.users.add(login_of(org), PASSWORD, ["clinician"], org, org)
    web_site.security.users.add(
        CHW_LOGIN, PASSWORD, ["community-health-worker"], CHW_FACILITY, "Behvarz"
    )
    name = f"Ctfam{SUFFIX}"
    pid = make_patient(admin, name)
    other = make_patient(admin, name + "b")
    web_site.security.users.add(
        CAREGIVER_LOGIN, PASSWORD, ["caregiver"], None, "Daughter", patient=pid
    )
    condition = created(
        admin.post(
            "/Condition",
            json={
                "resourceType": "Condition",
                "clinicalStatus": {"coding": [{"code": "active"}]},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
                "subject": ref("Patient", pid),
            },
        )
    )
    related = created(
        admin.post(
            "/RelatedPerson",
            json={
                "resourceType": "RelatedPerson",
                "patient": ref("Patient", pid),
                "relationship": [{"coding": [{"system": ROLE_CODE, "code": "DAU"}]}],
            },
        )
    )  # fmt: skip
    doctor, _ = practitioner_role(admin, f"ct-prac-{SUFFIX}", "158965000")
    _, nurse = practitioner_role(admin, f"ct-role-{SUFFIX}", "224535009")
    _, behvarz = practitioner_role(admin, CHW_FACILITY, "309398001")  # health worker
    retired, _ = practitioner_role(admin, f"ct-retired-{SUFFIX}", "158965000", active=False)
    members = [
        {"member": ref("Organization", f"ct-org-{SUFFIX}")},
        {"member": ref("Practitioner", doctor)},
        {"member": ref("PractitionerRole", nurse)},
        {"member": ref("PractitionerRole", behvarz), "role": [{"text": "community health worker"}]},
        {"member": ref("RelatedPerson", related), "role": [{"text": "caregiver"}]},
        {"member": ref("Organization", f"ct-ended-{SUFFIX}"),
         "period": {"start": "2019-01-01", "end": "2020-01-01"}},
        {"member": ref("Practitioner", retired)},
    ]  # fmt: skip
    team_id = created(admin.post("/CareTeam", json=team(pid, "active", members)))
    created(admin.post("/CareTeam", json=team(other, "active", members)))
    inactive = [{"member": ref("Organization", f"ct-inactive-{SUFFIX}")}]
    created(admin.post("/CareTeam", json=team(pid, "inactive", inactive)))
    created(admin.post("/CareTeam", json=team(other, "inactive", inactive)))
    bp = created(admin.post("/Observation", json=blood_pressure(pid)))
    response = created(admin.post("/QuestionnaireResponse", json=phq9(pid)))
    other_bp = created(admin.post("/Observation", json=blood_pressure(other)))
    other_phq9 = created(admin.post("/QuestionnaireResponse", json=phq9(other)))
    created(admin.post("/Consent", json=psy_consent(other)))
    return World(pid, name, bp, condition, response, other, other_bp, other_phq9, team_id, related)


@pytest.fixture(scope="module")
def clients(web_site: WebSite, world: World) -> Iterator[dict[str, httpx.Client]]:
    logins = [login_of(f) for f in (*MEMBERS, *NOT_MEMBERS)] + [CHW_LOGIN, CAREGIVER_LOGIN]
    out = {login: web_site.login_http(login) for login in logins}
    yield out
    for client in out.values():
        client.close()


# -- what an answer reveals -----------------------------------------------------------------


def ids_in(r: httpx.Response) -> set[str]:
    """Every resource id an answer holds, at any depth (Bundles, batch answers)."""
    if r.status_code >= 400 or "json" not in r.headers.get("content-type", ""):
        return set()
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("resourceType"), str) and isinstance(node.get("id"), str):
                found.add(node["id"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(r.json())
    return found


Ask = Callable[[httpx.Client, World], httpx.Response]


def get(url: str, **params: str) -> Ask:
    def ask(c: httpx.Client, w: World) -> httpx.Response:
        filled = {k.replace("__", ":"): v.format(w=w) for k, v in params.items()}
        return c.get("/fhir/" + url.format(w=w), params=filled)

    return ask


PATIENT = "Patient/{w.patient}"
# every path to the patient's data, and what it must return to a member
PATHS: dict[str, tuple[Ask, str]] = {
    "read Patient": (get(PATIENT), "patient"),
    "read Observation": (get("Observation/{w.bp}"), "bp"),
    "vread Observation": (get("Observation/{w.bp}/_history/1"), "bp"),
    "history Observation": (get("Observation/{w.bp}/_history"), "bp"),
    "read CareTeam": (get("CareTeam/{w.team}"), "team"),
    "read RelatedPerson": (get("RelatedPerson/{w.related}"), "related"),
    "Observation?subject": (get("Observation", subject=PATIENT), "bp"),
    "Observation?code": (get("Observation", code=f"{LOINC}|85354-9", _count="500"), "bp"),
    "Condition?patient": (get("Condition", patient=PATIENT), "condition"),
    "CareTeam?patient": (get("CareTeam", patient=PATIENT), "team"),
    "Patient?family": (get("Patient", family="{w.name}"), "patient"),
    "Patient _revinclude": (
        get("Patient", _id="{w.patient}", _revinclude="Observation:subject"),
        "bp",
    ),
    "Observation _include": (
        get("Observation", _id="{w.bp}", _include="Observation:subject"),
        "patient",
    ),
    "CareTeam _include subject": (
        get("CareTeam", _id="{w.team}", _include="CareTeam:subject"),
        "patient",
    ),
    "chain subject:Patient.family": (
        get("Observation", **{"subject:Patient.family": "{w.name}"}),
        "bp",
    ),
    "_has Observation": (
        get("Patient", family="{w.name}", **{"_has__Observation__subject__code": "85354-9"}),
        "patient",
    ),
    "_has CareTeam": (
        get("Patient", family="{w.name}", **{"_has__CareTeam__patient__status": "active"}),
        "patient",
    ),
    "compartment Observation": (get(PATIENT + "/Observation"), "bp"),
    "compartment Condition": (get(PATIENT + "/Condition"), "condition"),
    "$everything": (get(PATIENT + "/$everything", _count="500"), "bp"),
    "batch GETs": (
        lambda c, w: c.post(
            "/fhir",
            json={
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [
                    {"request": {"method": "GET", "url": f"Observation/{w.bp}"}},
                    {
                        "request": {
                            "method": "GET",
                            "url": f"Observation?subject=Patient/{w.patient}",
                        }
                    },
                ],
            },
        ),
        "bp",
    ),
}


def expected(w: World, key: str) -> str:
    return str(getattr(w, key))


@pytest.mark.parametrize("path", sorted(PATHS))
def test_members_reach_the_patient_and_others_do_not(
    clients: dict[str, httpx.Client], world: World, path: str
) -> None:
    ask, what = PATHS[path]
    wanted = expected(world, what)
    for facility, how in MEMBERS.items():
        r = ask(clients[login_of(facility)], world)
        assert r.status_code == 200, (path, facility, how, r.text[:300])
        assert wanted in ids_in(r), f"{path}: a facility whose {how} does not see {what}"
    for facility, why in NOT_MEMBERS.items():
        r = ask(clients[login_of(facility)], world)
        assert r.status_code in (200, 403, 404), (path, facility, r.text[:300])
        leaked = ids_in(r) & {world.patient, world.bp, world.condition, world.team, world.related}
        assert not leaked, f"{path} reveals {leaked} to a facility {why}"
        if r.status_code == 200 and r.json().get("resourceType") == "Bundle":
            assert r.json().get("total", 0) == 0 or "batch" in path, (path, facility)


def test_the_community_health_worker_member_still_never_reads_mental_health_answers(
    clients: dict[str, httpx.Client], world: World
) -> None:
    """The CHW of a member facility follows the patient up but the roles' WITHHELD rule keeps
    the PHQ-9 answers from them; a clinician of the same member facility reads them."""
    chw = clients[CHW_LOGIN]
    assert chw.get(f"/fhir/Observation/{world.bp}").status_code == 200
    assert chw.get(f"/fhir/QuestionnaireResponse/{world.phq9}").status_code == 404
    found = chw.get("/fhir/QuestionnaireResponse", params={"subject": f"Patient/{world.patient}"})
    assert found.status_code == 200 and world.phq9 not in ids_in(found)
    everything = chw.get(f"/fhir/Patient/{world.patient}/$everything")
    assert world.phq9 not in ids_in(everything) and world.bp in ids_in(everything)
    doctor = clients[login_of(CHW_FACILITY)]
    assert doctor.get(f"/fhir/QuestionnaireResponse/{world.phq9}").status_code == 200


@pytest.mark.parametrize("facility", sorted(MEMBERS))
def test_consent_restrictions_still_apply_to_members(
    clients: dict[str, httpx.Client], world: World, facility: str
) -> None:
    """The second patient keeps PSY data to the home centre: a member facility sees their
    blood pressure and never their PHQ-9, on any path."""
    c = clients[login_of(facility)]
    assert c.get(f"/fhir/Observation/{world.restricted_bp}").status_code == 200
    assert c.get(f"/fhir/QuestionnaireResponse/{world.restricted_phq9}").status_code == 404
    pat = f"Patient/{world.restricted}"
    for r in (
        c.get("/fhir/QuestionnaireResponse", params={"subject": pat}),
        c.get(f"/fhir/{pat}/$everything"),
        c.get("/fhir/Patient", params={"_id": world.restricted,
                                       "_revinclude": "QuestionnaireResponse:subject"}),
    ):  # fmt: skip
        assert r.status_code == 200, r.text
        assert world.restricted_phq9 not in ids_in(r)
        assert world.restricted_phq9 not in r.text


def test_a_related_person_on_the_team_acts_only_with_the_patients_consent(
    web_site: WebSite, clients: dict[str, httpx.Client], world: World
) -> None:
    """The daughter is on the care team; her caregiver login is still refused until the
    patient's Consent permits it, then reads the patient's record."""
    caregiver = clients[CAREGIVER_LOGIN]
    refused = caregiver.get(f"/fhir/Patient/{world.patient}")
    assert refused.status_code == 403, refused.text
    assert "consent" in refused.text.lower()
    assert caregiver.get("/fhir/Observation").status_code == 403
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": ref("Patient", world.patient),
        "provision": {"type": "permit", "actor": [{
            "role": {"text": "caregiver"},
            "reference": {"identifier": {"system": LOGIN_SYSTEM, "value": CAREGIVER_LOGIN}},
        }]},
    }  # fmt: skip
    created(web_site.fhir.post("/Consent", json=consent))
    allowed = caregiver.get(f"/fhir/Patient/{world.patient}")
    assert allowed.status_code == 200, allowed.text
    assert world.bp in ids_in(caregiver.get("/fhir/Observation"))


def test_membership_does_not_open_bulk_export(
    clients: dict[str, httpx.Client], world: World
) -> None:
    member = clients[login_of(f"ct-org-{SUFFIX}")]
    for url in ("/fhir/$export", "/fhir/Patient/$export"):
        r = member.get(url, headers={"Prefer": "respond-async"})
        assert r.status_code == 403, r.text


@pytest.mark.parametrize(("facility", "status"), [(f, 200) for f in sorted(MEMBERS)]
                         + [(f, 404) for f in sorted(NOT_MEMBERS)])  # fmt: skip
def test_the_web_record_page_follows_membership(
    clients: dict[str, httpx.Client], world: World, facility: str, status: int
) -> None:
    page = clients[login_of(facility)].get(f"/app/patients/{world.patient}")
    assert page.status_code == status, page.text[:300]
    assert (world.name in page.text) == (status == 200)


def test_the_web_search_finds_the_patient_for_members_only(
    clients: dict[str, httpx.Client], world: World
) -> None:
    """The web app's patient search narrows names to the facility's reach (the guard's own
    list), so a member finds the patient by name and a non-member does not."""
    for facility in (*MEMBERS, *NOT_MEMBERS):
        page = clients[login_of(facility)].get("/app/patients", params={"q": world.name})
        assert page.status_code == 200, page.text[:300]
        assert (world.patient in page.text) == (facility in MEMBERS), facility


def test_membership_ends_with_the_team_or_the_role(web_site: WebSite, world: World) -> None:
    """A team made inactive, a participation ended and a role deactivated each stop the
    access they gave, at the next request."""
    admin = web_site.fhir
    pid = make_patient(admin, f"Ctend{SUFFIX}")
    doctor, role = practitioner_role(admin, f"ct-prac-{SUFFIX}", "158965000")
    body = team(pid, "active", [{"member": ref("Practitioner", doctor)}])
    team_id = created(admin.post("/CareTeam", json=body))
    reader = web_site.login_http(login_of(f"ct-prac-{SUFFIX}"))
    try:
        assert reader.get(f"/fhir/Patient/{pid}").status_code == 200
        created(admin.put(f"/CareTeam/{team_id}", json={**body, "id": team_id,
                                                         "status": "inactive"}))  # fmt: skip
        assert reader.get(f"/fhir/Patient/{pid}").status_code == 404
        ended = {"member": ref("Practitioner", doctor), "period": {"end": "2026-01-31"}}
        created(admin.put(f"/CareTeam/{team_id}", json={**body, "id": team_id,
                                                         "participant": [ended]}))  # fmt: skip
        assert reader.get(f"/fhir/Patient/{pid}").status_code == 404
        created(admin.put(f"/CareTeam/{team_id}", json={**body, "id": team_id}))
        assert reader.get(f"/fhir/Patient/{pid}").status_code == 200
        stored = admin.get(f"/PractitionerRole/{role}").json()
        created(admin.put(f"/PractitionerRole/{role}", json={**stored, "active": False}))
        assert reader.get(f"/fhir/Patient/{pid}").status_code == 404
    finally:
        reader.close()


def test_a_facility_cannot_give_itself_a_team_member(web_site: WebSite, world: World) -> None:
    """Writing a PractitionerRole at one's own facility for a practitioner on another
    facility's patient's team, or a CareTeam naming oneself, is refused (403) and opens
    nothing; the directory's administrators record such roles."""
    outsider = web_site.login_http(login_of(f"ct-none-{SUFFIX}"))
    try:
        team_body = web_site.fhir.get(f"/CareTeam/{world.team}").json()
        doctor = next(
            p["member"]["reference"]
            for p in team_body["participant"]
            if p["member"]["reference"].startswith("Practitioner/")
        )
        role = {
            "resourceType": "PractitionerRole",
            "active": True,
            "practitioner": {"reference": doctor},
            "organization": ref("Organization", f"ct-none-{SUFFIX}"),
        }
        refused = outsider.post("/fhir/PractitionerRole", json=role)
        assert refused.status_code == 403, refused.text
        assert "PractitionerRole" in refused.text
        claim = team(
            world.patient, "active", [{"member": ref("Organization", f"ct-none-{SUFFIX}")}]
        )
        assert outsider.post("/fhir/CareTeam", json=claim).status_code == 403
        assert outsider.get(f"/fhir/Patient/{world.patient}").status_code == 404
        # a practitioner on no team of another's patient: the facility records its own staff
        fresh = created(web_site.fhir.post("/Practitioner", json={"resourceType": "Practitioner"}))
        own = {**role, "practitioner": ref("Practitioner", fresh)}
        assert outsider.post("/fhir/PractitionerRole", json=own).status_code == 201
    finally:
        outsider.close()


def test_the_membership_rule_on_its_own() -> None:
    """``roles.current_participant``: status, the team's and the participant's periods."""
    from takamul.fhir.search_values import date_range
    from takamul.security.roles import current_participant, current_period

    now = date_range("2026-06-15")[0]
    me = frozenset({"Organization/f"})
    team = {"status": "active", "participant": [{"member": {"reference": "Organization/f"}}]}
    assert current_participant(team, me, now)
    assert current_participant({**team, "status": None}, me, now)  # no status recorded
    for status in ("proposed", "suspended", "inactive", "entered-in-error"):
        assert not current_participant({**team, "status": status}, me, now), status
    assert not current_participant(team, frozenset({"Organization/g"}), now)
    assert current_period({"end": "2026-06-15"}, now)  # to the end of that day
    assert not current_period({"end": "2026-06-14"}, now)
    assert not current_period({"start": "2026-06-16"}, now)  # not begun
    assert not current_period({"end": "15/06/2026"}, now)  # malformed: grants nothing
    assert not current_participant({**team, "period": {"end": "2026-01-01"}}, me, now)
    ended = {**team, "participant": [{"member": {"reference": "Organization/f"},
                                      "period": {"end": "2026-01-01"}}]}  # fmt: skip
    assert not current_participant(ended, me, now)


def test_the_targeted_reach_agrees_with_the_whole_list(web_site: WebSite, world: World) -> None:
    """A read asks whether the facility reaches its few patients (``_reached``), a search that
    names no patient takes the facility's whole list (``_patients``): the two must agree for
    every facility and every patient, members and not, the team's patient and the other."""
    from takamul.security.context import AccessContext
    from takamul.security.guard import AccessGuard
    from takamul.security.scopes import ScopeSet
    from takamul.settings import Settings
    from takamul.store.repository import Store

    store = Store(Settings(database_url=web_site.db))
    try:
        with store.reading() as session:
            everyone = {
                str(r[0])
                for r in session.conn.exec_driver_sql(
                    "SELECT res_id FROM resource WHERE res_type = 'Patient'"
                )
            }
        assert {world.patient, world.restricted} <= everyone
        for facility in (HOME, *MEMBERS, *NOT_MEMBERS):
            access = AccessContext(
                client_id=f"{facility}-ehr",
                user=None,
                roles=frozenset({"clinician"}),
                facility=facility,
                scopes=ScopeSet.parse("system/*.rs"),
            )
            whole = AccessGuard(access, store)._patients()
            for pid in sorted(everyone):
                alone = AccessGuard(access, store)._reached({pid})
                assert alone == whole & {pid}, (facility, pid)
            together = AccessGuard(access, store)._reached(set(everyone))
            assert together == whole & everyone, facility
            if facility in (HOME, f"ct-none-{SUFFIX}"):  # not vacuous: one reaches, one not
                assert (world.patient in whole) == (facility == HOME)
    finally:
        store.close()
