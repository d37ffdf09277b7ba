"""Chains and ``_has`` must not see what the requester may not see (issue 11, finding 1).

A property over every chained and reverse-chained search parameter that can reach the data of
this world, for every guard (scope, granular scope, patient context, facility, consent): the
answer to each search is the same before and after resources hidden from the requester are
added. Were any nested clause unguarded, a search naming a hidden value (a code only the hidden
resources have, a hidden patient's birth date) would start to match after they arrive. The
administrator, who sees everything, proves that the searches do reach the hidden resources.
Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from takamul.fhir.definitions import definitions
from tests.server import postgres_database, running_server
from tests.test_security_api import Server

LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
AMB = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}

# What the inner clause of a _has may ask of each source type: values of the visible world
# and values only hidden resources have.
HAS_INNER: dict[str, list[str]] = {
    "Observation": [
        f"code={LOINC}|44261-6",  # PHQ-9 total
        f"code={LOINC}|44249-1",  # PHQ-9 panel
        f"code={LOINC}|75622-1",  # HIV 1 and 2 tests
        f"code={LOINC}|2345-7",  # glucose (a laboratory result)
        f"code={LOINC}|8867-4",  # heart rate (visible)
        "category=laboratory",
        "value-quantity=gt10",
    ],
    "Condition": [f"code={ICD10}|F32.9", f"code={ICD10}|I10", "code=F32.9"],
    "Encounter": ["service-provider=Organization/org-b", "status=finished"],
    "Patient": ["name=Hidden", "birthdate=1971-02-03", "name=Visible", "gender=female"],
}
# What a chain may ask of a Patient it points at.
CHAIN_INNER = [
    "name=Hidden",
    "family=Hiddenfamily",
    "birthdate=1971-02-03",
    "birthdate=1980-05-06",
    "name=Visible",
    "gender=female",
]
HIDDEN = "Patient/p2-hidden"
SEARCHED = ("Patient", "Organization", "Observation", "Condition", "Encounter")


def nested_searches() -> list[tuple[str, list[tuple[str, str]]]]:
    """Every chained and reverse-chained search parameter from the R4 definitions that can
    reach this world's resources, with each inner value."""
    defs = definitions()
    searches: list[tuple[str, list[tuple[str, str]]]] = []
    for searched in SEARCHED:
        params = defs.search_params_for(searched)
        for code, param in sorted(params.items()):
            if param.type == "reference" and "Patient" in param.target:
                for inner in CHAIN_INNER:
                    name, value = inner.split("=", 1)
                    searches.append((searched, [(f"{code}:Patient.{name}", value)]))
        for source, inners in HAS_INNER.items():
            for code, param in sorted(defs.search_params_for(source).items()):
                if param.type != "reference" or searched not in param.target:
                    continue
                for inner in inners:
                    name, value = inner.split("=", 1)
                    searches.append((searched, [(f"_has:{source}:{code}:{name}", value)]))
    return searches


def observation(pid: str, code: str, category: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "performer": [{"reference": f"Patient/{pid}"}],
        "valueQuantity": {"value": 12, "unit": "{score}"},
        **extra,
    }


def condition(pid: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "code": {"coding": [{"system": ICD10, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
    }


def patient(name: str, family: str, born: str, org: str, gender: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "name": [{"given": [name], "family": family}],
        "birthDate": born,
        "gender": gender,
        "managingOrganization": {"reference": f"Organization/{org}"},
    }


def restriction(pid: str) -> dict[str, Any]:
    """The patient restricts mental health and HIV data to the mental health clinic."""
    act = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
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
        "patient": {"reference": f"Patient/{pid}"},
        "provision": {
            "type": "deny",
            "securityLabel": [{"system": act, "code": "PSY"}, {"system": act, "code": "HIV"}],
            "provision": [
                {
                    "type": "permit",
                    "actor": [
                        {
                            "role": {"text": "treating team"},
                            "reference": {"reference": "Organization/mh-clinic"},
                        }
                    ],
                }
            ],
        },
    }


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    env = {"TAKAMUL_AUTH": "true", "TAKAMUL_RATE_LIMIT": "100000", "TAKAMUL_RATE_BURST": "100000"}
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("nested") / "takamul.sqlite"
        url = f"sqlite:///{path}"
        with running_server(url, env) as base:
            yield Server(base, url)
    else:
        with postgres_database() as url, running_server(url, env) as base:
            yield Server(base, url)


def post(http: httpx.Client, body: dict[str, Any]) -> str:
    r = http.post(f"/{body['resourceType']}", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def visible_world(admin: httpx.Client) -> dict[str, str]:
    for org in ("org-a", "org-b", "mh-clinic"):
        r = admin.put(f"/Organization/{org}", json={"resourceType": "Organization", "id": org})
        assert r.status_code in (200, 201), r.text
    p1 = post(admin, patient("Visible", "Visiblefamily", "1980-05-06", "org-a", "male"))
    consenting = patient("Consenting", "Consentfamily", "1975-07-08", "org-a", "male")
    consenting["generalPractitioner"] = [{"reference": "Organization/mh-clinic"}]
    p3 = post(admin, consenting)
    post(admin, observation(p1, "8867-4", "vital-signs"))
    post(admin, observation(p3, "8867-4", "vital-signs"))
    post(admin, condition(p1, "I10"))
    # visible data that points at a patient who arrives later, hidden (a relative who took
    # the measurement): chains through it must not reveal who that is
    post(admin, observation(p1, "8867-4", "vital-signs", performer=[{"reference": HIDDEN}]))
    post(admin, restriction(p3))
    return {"p1": p1, "p3": p3}


def other_facility(admin: httpx.Client, clinic: httpx.Client, ids: dict[str, str]) -> None:
    """Another facility's patient and their record."""
    p2 = HIDDEN.split("/")[1]
    body = {**patient("Hidden", "Hiddenfamily", "1971-02-03", "org-b", "female"), "id": p2}
    assert admin.put(f"/{HIDDEN}", json=body).status_code == 201
    for code in ("44261-6", "44249-1", "75622-1"):
        post(admin, observation(p2, code, "survey"))
    post(admin, condition(p2, "F32.9"))
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": AMB,
        "subject": {"reference": f"Patient/{p2}"},
        "serviceProvider": {"reference": "Organization/org-b"},
    }
    post(admin, encounter)


def laboratory(admin: httpx.Client, clinic: httpx.Client, ids: dict[str, str]) -> None:
    """A laboratory result of a visible patient (outside vital-signs scopes)."""
    post(admin, observation(ids["p1"], "2345-7", "laboratory"))


def restricted(admin: httpx.Client, clinic: httpx.Client, ids: dict[str, str]) -> None:
    """Mental health and HIV data of the consenting patient, unlabelled, recorded by the
    treating team (nobody else may write what they may not see)."""
    p3 = ids["p3"]
    for code in ("44261-6", "44249-1", "75622-1"):
        post(clinic, observation(p3, code, "survey"))
    post(clinic, condition(p3, "F32.9"))


ALL = frozenset(
    {
        "scope: Patient only",
        "granular scope: vital signs",
        "patient context",
        "facility",
        "consent (ministry)",
    }
)
# Each stage adds resources and names the guards that must not notice them.
STAGES = (
    (other_facility, frozenset({"patient context", "facility"})),
    (laboratory, frozenset({"scope: Patient only", "granular scope: vital signs"})),
    (restricted, ALL),
)


def answers(http: httpx.Client) -> dict[str, tuple[int, tuple[str, ...], int | None]]:
    out = {}
    for searched, params in nested_searches():
        r = http.get(f"/{searched}", params=[*params, ("_count", "500")])
        key = f"{searched}?{params[0][0]}={params[0][1]}"
        if r.status_code != 200:
            assert r.json()["resourceType"] == "OperationOutcome"
            out[key] = (r.status_code, (), None)
            continue
        body = r.json()
        found = tuple(sorted(e["resource"]["id"] for e in body.get("entry", [])))
        out[key] = (200, found, body.get("total"))
    return out


def test_nested_searches_answer_the_same_whether_hidden_data_exists(server: Server) -> None:
    admin_id, _ = server.client("system/*.cruds", roles=("administrator",))
    admin = server.http(server.token(admin_id, "system/*.cruds"))
    ids = visible_world(admin)

    def client(scopes: str, facility: str | None = None, patient: str | None = None) -> Any:
        cid, _ = server.client(scopes, facility=facility, roles=("clinician",))
        return lambda: server.http(server.token(cid, scopes, patient=patient))

    guards = {
        "scope: Patient only": client("system/Patient.rs system/Organization.rs"),
        "granular scope: vital signs": client(
            "system/Patient.rs system/Organization.rs system/Encounter.rs "
            "system/Condition.rs system/Observation.rs?category=vital-signs"
        ),
        "patient context": client("patient/*.rs", patient=ids["p1"]),
        "facility": client("system/*.rs", facility="org-a"),
        "consent (ministry)": client("system/*.rs"),
    }
    clinic_id, _ = server.client("system/*.cruds", facility="mh-clinic", roles=("clinician",))
    clinic = server.http(server.token(clinic_id, "system/*.cruds"))
    assert set(guards) == ALL
    before = {name: answers(make()) for name, make in guards.items()}
    reached = 0
    for stage, blind in STAGES:
        admin_before = answers(admin)
        stage(admin, clinic, ids)
        admin_after = answers(admin)
        reached += sum(admin_before[k] != admin_after[k] for k in admin_before)
        for name in sorted(blind):
            after = answers(guards[name]())
            leaks = {k: (before[name][k], v) for k, v in after.items() if v != before[name][k]}
            assert not leaks, f"{stage.__name__}, {name}: {len(leaks)} searches leak: {leaks}"
        before = {name: answers(make()) for name, make in guards.items()}
    # the searches do reach what is hidden when nothing hides it
    assert reached > 50, reached


def test_has_on_a_type_the_token_cannot_search_is_refused(server: Server) -> None:
    cid, _ = server.client("system/Patient.rs")
    http = server.http(server.token(cid, "system/Patient.rs"))
    r = http.get("/Patient", params={"_has:Observation:subject:code": f"{LOINC}|44261-6"})
    assert r.status_code == 403, r.text
    assert "Observation" in r.json()["issue"][0]["diagnostics"]
    # a chain whose only target type it may not search is refused the same way
    r = http.get("/Patient", params={"general-practitioner:Practitioner.name": "x"})
    assert r.status_code == 403, r.text
