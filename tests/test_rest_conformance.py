"""REST conformance as an outside client sees it (issue 11, finding 7), on SQLite and PostgreSQL:
operations invoked with POST (as fhir-kit-client does by default), the framework's own 404 and
405 answers as OperationOutcomes, and compartment search (``Patient/p1/Observation``) with the
same results and the same guard as the equivalent search of the type.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhirpy import SyncFHIRClient
from joserfc.jwk import ECKey

from takamul.security.service import Security
from tests.server import postgres_database, running_server

JSON = {"Content-Type": "application/fhir+json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
FHIR_JSON = "application/fhir+json"
LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
SNOMED = "http://snomed.info/sct"


def create(http: httpx.Client, body: dict[str, Any]) -> str:
    r = http.post(f"/{body['resourceType']}", json=body, headers=JSON)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def observation(subject: str, code: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{subject}"},
        **extra,
    }


def outcome(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(FHIR_JSON), r.headers
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"] and body["issue"][0]["severity"] in ("error", "fatal")
    return dict(body)


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def all_pages(http: httpx.Client, first: httpx.Response) -> list[str]:
    """The ids of every page, following the server's own next links."""
    assert first.status_code == 200, first.text
    bundle = first.json()
    found = ids(bundle)
    while nxt := [link["url"] for link in bundle["link"] if link["relation"] == "next"]:
        bundle = http.get(nxt[0]).json()
        found += ids(bundle)
    return found


@pytest.fixture(scope="module")
def family(http: httpx.Client) -> dict[str, str]:
    """Two patients; p1 has three glucose results, a blood pressure, an encounter, and is the
    performer of a self-measured result of p2 (in p1's compartment through ``performer``)."""
    tag = uuid.uuid4().hex[:10]
    out = {"tag": tag}
    for key in ("p1", "p2"):
        out[key] = create(
            http, {"resourceType": "Patient", "name": [{"family": f"Conformance{tag}"}]}
        )
    for n in range(3):
        out[f"glucose{n}"] = create(http, observation(out["p1"], "2339-0"))
    out["bp"] = create(http, observation(out["p1"], "85354-9"))
    out["theirs"] = create(http, observation(out["p2"], "2339-0"))
    out["performed"] = create(
        http, observation(out["p2"], "8867-4", performer=[{"reference": f"Patient/{out['p1']}"}])
    )
    out["encounter"] = create(
        http,
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": f"Patient/{out['p1']}"},
        },
    )
    return out


# -- operations with POST ---------------------------------------------------------------------


def test_everything_with_post_and_no_body_is_the_get(
    http: httpx.Client, fhir: SyncFHIRClient, family: dict[str, str]
) -> None:
    p1 = family["p1"]
    got = http.get(f"/Patient/{p1}/$everything").json()
    # fhirpy's execute POSTs the operation without a body, as fhir-kit-client does
    posted = fhir.execute(f"Patient/{p1}/$everything", method="post")
    assert posted["resourceType"] == "Bundle" and posted["type"] == "searchset"
    assert sorted(ids(posted)) == sorted(ids(got))
    assert posted["total"] == got["total"]
    expected = {"p1", "glucose0", "glucose1", "glucose2", "bp", "performed", "encounter"}
    assert {family[k] for k in expected} <= set(ids(posted))  # with the registry's Person


def test_everything_with_a_parameters_body(
    http: httpx.Client, fhir: SyncFHIRClient, family: dict[str, str]
) -> None:
    p1 = family["p1"]
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_type", "valueCode": "Observation"},
            {"name": "_type", "valueCode": "Encounter"},
            {"name": "_count", "valueInteger": 2},
        ],
    }
    r = http.post(f"/Patient/{p1}/$everything", json=parameters, headers=JSON)
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["total"] == 6 and len(ids(bundle)) == 2
    types = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert types <= {"Observation", "Encounter"}
    paged = all_pages(http, r)
    assert len(paged) == 6 and family["encounter"] in paged and p1 not in paged
    later = {
        "resourceType": "Parameters",
        "parameter": [{"name": "_since", "valueInstant": "2999-01-01T00:00:00Z"}],
    }
    empty = fhir.execute(f"Patient/{p1}/$everything", method="post", data=later)
    assert empty["total"] == 0
    form = http.post(f"/Patient/{p1}/$everything", content="_type=Encounter", headers=FORM)
    assert ids(form.json()) == [family["encounter"]]


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{not json", 400),
        (b'{"resourceType": "Patient"}', 400),
        (b'{"resourceType": "Parameters", "parameter": {"name": "_type"}}', 400),
        (b'{"resourceType": "Parameters", "parameter": [{"valueCode": "Observation"}]}', 400),
        (b'{"resourceType": "Parameters", "parameter": [{"name": "_type"}]}', 400),
        (b'{"resourceType":"Parameters","parameter":[{"name":"_count","valueInteger":-1}]}', 400),
        (b'{"resourceType":"Parameters","parameter":[{"name":"start","valueDate":"2020"}]}', 400),
        (b'{"resourceType":"Parameters","parameter":[{"name":"_type","valueCode":"Nope"}]}', 400),
    ],
)
def test_a_malformed_operation_body_is_a_400(
    http: httpx.Client, family: dict[str, str], content: bytes, status: int
) -> None:
    r = http.post(f"/Patient/{family['p1']}/$everything", content=content, headers=JSON)
    outcome(r, status)


def test_everything_of_an_unknown_patient_is_a_404(http: httpx.Client) -> None:
    outcome(http.post("/Patient/no-such-patient/$everything"), 404)


# -- the framework's own answers --------------------------------------------------------------


def test_unknown_routes_and_methods_answer_with_an_operation_outcome(
    http: httpx.Client, fhir_base: str
) -> None:
    root = fhir_base.rsplit("/fhir", 1)[0]
    outcome(httpx.get(f"{root}/no-such-endpoint"), 404)
    outcome(http.get("/Patient/p1/_history/1/more/segments"), 404)
    refused = http.put("/Patient/p1/$everything")
    outcome(refused, 405)
    assert {"GET", "POST"} <= set(refused.headers["allow"].split(", "))
    post_only = http.get("/Patient/p1/Observation/_search")
    outcome(post_only, 405)
    assert post_only.headers["allow"] == "POST"


# -- compartment search -----------------------------------------------------------------------


def test_compartment_search_is_the_search_of_the_type(
    http: httpx.Client, fhir: SyncFHIRClient, family: dict[str, str]
) -> None:
    p1 = family["p1"]
    plain = http.get("/Observation", params={"patient": f"Patient/{p1}", "_count": 100}).json()
    inside = fhir.execute(f"Patient/{p1}/Observation", method="get", params={"_count": 100})
    # the compartment also holds what p1 performed (R4: subject or performer)
    assert sorted(ids(inside)) == sorted([*ids(plain), family["performed"]])
    assert inside["total"] == plain["total"] + 1
    coded: dict[str, str | int] = {"code": f"{LOINC}|2339-0", "_count": 2, "_sort": "_id"}
    equal = http.get("/Observation", params={**coded, "patient": f"Patient/{p1}"})
    compartment = http.get(f"/Patient/{p1}/Observation", params=coded)
    assert compartment.json()["total"] == equal.json()["total"] == 3
    assert all_pages(http, compartment) == all_pages(http, equal)
    self_link = next(x["url"] for x in compartment.json()["link"] if x["relation"] == "self")
    assert f"/Patient/{p1}/Observation?" in self_link
    posted = http.post(
        f"/Patient/{p1}/Observation/_search", content=f"code={LOINC}|85354-9", headers=FORM
    )
    assert ids(posted.json()) == [family["bp"]]
    included = http.get(
        f"/Patient/{p1}/Observation",
        params={"code": "85354-9", "_include": "Observation:subject"},
    ).json()
    assert ids(included, "include") == [p1]
    count = http.get(f"/Patient/{p1}/Observation", params={"_summary": "count"}).json()
    assert count["total"] == inside["total"]


def test_compartment_search_of_other_types_and_compartments(
    http: httpx.Client, family: dict[str, str]
) -> None:
    p1, p2 = family["p1"], family["p2"]
    assert ids(http.get(f"/Patient/{p1}/Encounter").json()) == [family["encounter"]]
    assert ids(http.get(f"/Patient/{p1}/Patient").json()) == [p1]  # in its own compartment
    assert ids(http.get(f"/Patient/{p2}/Encounter").json()) == []
    assert ids(http.get("/Patient/no-such-patient/Observation").json()) == []
    by_encounter = http.get(f"/Encounter/{family['encounter']}/Encounter").json()
    assert ids(by_encounter) == [family["encounter"]]
    outcome(http.get(f"/Patient/{p1}/Organization"), 400)  # not in the Patient compartment
    outcome(http.get(f"/Organization/{p1}/Patient"), 404)  # Organization has no compartment
    outcome(http.get(f"/Patient/{p1}/Spaceship"), 404)
    outcome(http.get(f"/Patient/{p1}/Observation", params={"no-such-param": "x"}), 400)


def test_the_capability_statement_declares_compartments_and_post(http: httpx.Client) -> None:
    rest = http.get("/metadata").json()["rest"][0]
    assert "http://hl7.org/fhir/CompartmentDefinition/patient" in rest["compartment"]
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert "everything" in {o["name"] for o in patient["operation"]}


# -- compartment search under a guard ---------------------------------------------------------


class Secured:
    """A server with access control on, and clients with tokens minted for it."""

    def __init__(self, base: str, db: str) -> None:
        self.base = base
        self.security = Security.open(db)

    def http(
        self,
        scopes: str,
        facility: str | None = None,
        roles: tuple[str, ...] = (),
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> httpx.Client:
        key = ECKey.generate_key("P-384")
        key.ensure_kid()
        client_id = f"c-{uuid.uuid4().hex[:10]}"
        jwks = {"keys": [{**key.as_dict(private=False), "alg": "ES384"}]}
        self.security.clients.add(client_id, "conformance test", jwks, scopes, facility, roles)
        token = self.security.tokens.mint(client_id, scopes, self.base, **kw)
        return httpx.Client(
            base_url=self.base,
            headers={"Authorization": f"Bearer {token}", **(headers or {})},
            timeout=60,
        )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def secured(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Secured]:
    env = {"TAKAMUL_AUTH": "true", "TAKAMUL_RATE_LIMIT": "10000", "TAKAMUL_RATE_BURST": "10000"}
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("conformance") / "takamul.sqlite"
        with running_server(f"sqlite:///{path}", env) as base:
            yield Secured(base, f"sqlite:///{path}")
    else:
        with postgres_database() as url, running_server(url, env) as base:
            yield Secured(base, url)


@pytest.fixture(scope="module")
def guarded_world(secured: Secured) -> dict[str, Any]:
    """Patients of two facilities with a laboratory and a vital-signs result each; a patient of
    org-a with a depression (restricted by consent to a mental health clinic) and an asthma."""
    admin = secured.http("system/*.cruds", roles=("administrator",))
    world: dict[str, Any] = {"admin": admin}
    for org in ("org-a", "org-b", "mh-clinic"):
        r = admin.put(f"/Organization/{org}", json={"resourceType": "Organization", "id": org})
        assert r.status_code in (200, 201), r.text
    for org in ("org-a", "org-b"):
        pid = create(
            admin,
            {
                "resourceType": "Patient",
                "managingOrganization": {"reference": f"Organization/{org}"},
            },
        )
        world[org] = pid
        for category in ("laboratory", "vital-signs"):
            body = observation(pid, "2339-0")
            body["category"] = [{"coding": [{"system": CATEGORY, "code": category}]}]
            world[f"{org}-{category}"] = create(admin, body)
    pid = world["org-a"]
    subject = {"reference": f"Patient/{pid}"}
    for key, code in (("depression", "35489007"), ("asthma", "195967001")):
        world[key] = create(
            admin,
            {
                "resourceType": "Condition",
                "code": {"coding": [{"system": SNOMED, "code": code}]},
                "subject": subject,
            },
        )
    consent = {
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
        "patient": subject,
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
                            "reference": {"reference": "Organization/mh-clinic"},
                        }
                    ],
                }
            ],
        },
    }
    create(admin, consent)
    return world


def same_as_the_search(client: httpx.Client, patient: str, rtype: str) -> list[str]:
    """The compartment's matches, checked to be those of the client's own search by subject,
    with the same total (a total must not count what the guard hides)."""
    compartment = client.get(f"/Patient/{patient}/{rtype}", params={"_count": 100})
    search = client.get(f"/{rtype}", params={"subject": f"Patient/{patient}", "_count": 100})
    assert compartment.status_code == search.status_code == 200, compartment.text
    assert sorted(ids(compartment.json())) == sorted(ids(search.json()))
    assert compartment.json()["total"] == search.json()["total"] == len(ids(search.json()))
    return ids(compartment.json())


def test_a_facility_sees_only_its_patients_compartments(
    secured: Secured, guarded_world: dict[str, Any]
) -> None:
    w = guarded_world
    clinic = secured.http("system/*.rs", facility="org-a", roles=("clinician",))
    mine = same_as_the_search(clinic, w["org-a"], "Observation")
    assert sorted(mine) == sorted([w["org-a-laboratory"], w["org-a-vital-signs"]])
    assert same_as_the_search(clinic, w["org-b"], "Observation") == []
    count = clinic.get(f"/Patient/{w['org-b']}/Observation", params={"_summary": "count"})
    assert count.json()["total"] == 0
    theirs = clinic.post(
        f"/Patient/{w['org-b']}/Observation/_search",
        content="_include=Observation:subject",
        headers=FORM,
    ).json()
    assert theirs.get("entry", []) == []
    # and the administrator, unguarded by facility, does see org-b's results there
    assert len(same_as_the_search(w["admin"], w["org-b"], "Observation")) == 2


def test_category_scopes_and_consent_hold_in_compartments(
    secured: Secured, guarded_world: dict[str, Any]
) -> None:
    w = guarded_world
    lab = secured.http("system/Observation.rs?category=laboratory")
    assert same_as_the_search(lab, w["org-a"], "Observation") == [w["org-a-laboratory"]]
    ministry = secured.http("system/*.rs")  # not the treating team of the consent
    assert same_as_the_search(ministry, w["org-a"], "Condition") == [w["asthma"]]
    # a clinician breaking the glass does see it there: the compartment holds it
    glass = secured.http(
        "system/*.rs",
        facility="org-b",
        roles=("clinician",),
        headers={"X-Break-Glass-Reason": "overdose, unconscious"},
    )
    assert sorted(same_as_the_search(glass, w["org-a"], "Condition")) == sorted(
        [w["depression"], w["asthma"]]
    )


def test_patient_context_and_missing_scopes_hold_in_compartments(
    secured: Secured, guarded_world: dict[str, Any]
) -> None:
    w = guarded_world
    app = secured.http("patient/*.rs", patient=w["org-b"])
    assert len(same_as_the_search(app, w["org-b"], "Observation")) == 2
    assert same_as_the_search(app, w["org-a"], "Observation") == []
    patients_only = secured.http("system/Patient.rs")
    outcome(patients_only.get(f"/Patient/{w['org-a']}/Observation"), 403)
    outcome(patients_only.post(f"/Patient/{w['org-a']}/Observation/_search"), 403)
    outcome(secured.http("system/*.rs").get(f"/Patient/{w['org-a']}/AuditEvent"), 403)
    nobody = httpx.get(f"{secured.base}/Patient/{w['org-a']}/Observation")
    outcome(nobody, 401)
