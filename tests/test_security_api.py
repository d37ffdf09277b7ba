"""What an attacker or a curious insider would try, against a real server with access control
on (SQLite and PostgreSQL): no token, expired, forged and foreign tokens, scope escalation,
another facility's patients through every path, enumeration by 403 versus 404, category scopes,
patient context, break-the-glass, the append-only audit log, oversized and malformed payloads.
Each refusal must come with the right status and an OperationOutcome, and be audited.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from takamul.security.audit import AuditLog
from takamul.security.service import Security
from tests.server import postgres_database, running_server

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
LAB = "http://terminology.hl7.org/CodeSystem/observation-category"


class Server:
    def __init__(self, base: str, db: str) -> None:
        self.base = base
        self.root = base.rsplit("/fhir", 1)[0]
        self.db = db
        self.security = Security.open(db)

    def client(
        self, scopes: str, facility: str | None = None, roles: tuple[str, ...] = ()
    ) -> tuple[str, ECKey]:
        key = ECKey.generate_key("P-384")
        key.ensure_kid()
        client_id = f"c-{uuid.uuid4().hex[:10]}"
        jwks = {"keys": [{**key.as_dict(private=False), "alg": "ES384"}]}
        self.security.clients.add(client_id, "test system", jwks, scopes, facility, roles)
        return client_id, key

    def token(self, client_id: str, scopes: str, **kw: Any) -> str:
        return self.security.tokens.mint(client_id, scopes, self.base, **kw)

    def http(self, token: str | None, **headers: str) -> httpx.Client:
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.Client(base_url=self.base, headers=headers, timeout=60)


# "postgresql-threads": reads and searches in request threads, as against a database on another
# host (``TAKAMUL_INLINE_READS=false``), so that the guard is tried on both ways of running them
@pytest.fixture(scope="module", params=["sqlite", "postgresql", "postgresql-threads"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    env = {"TAKAMUL_AUTH": "true", "TAKAMUL_RATE_LIMIT": "10000", "TAKAMUL_RATE_BURST": "10000"}
    if request.param == "postgresql-threads":
        env["TAKAMUL_INLINE_READS"] = "false"
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("secure") / "takamul.sqlite"
        url = f"sqlite:///{path}"
        with running_server(url, env) as base:
            yield Server(base, url)
    else:
        with postgres_database() as url, running_server(url, env) as base:
            yield Server(base, url)


@pytest.fixture(scope="module")
def world(server: Server) -> dict[str, Any]:
    """Two facilities with a patient each, observations of two categories, an admin token."""
    admin_id, _ = server.client("system/*.cruds", roles=("administrator",))
    admin = server.http(server.token(admin_id, "system/*.cruds"))
    ids: dict[str, Any] = {"admin": admin}
    for org in ("org-a", "org-b"):
        admin.put(
            f"/Organization/{org}", json={"resourceType": "Organization", "id": org, "name": org}
        )
        r = admin.post(
            "/Patient",
            json={
                "resourceType": "Patient",
                "name": [{"family": f"Patient of {org}"}],
                "managingOrganization": {"reference": f"Organization/{org}"},
            },
        )
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        ids[org] = pid
        for category in ("laboratory", "vital-signs"):
            r = admin.post(
                "/Observation",
                json={
                    "resourceType": "Observation",
                    "status": "final",
                    "category": [{"coding": [{"system": LAB, "code": category}]}],
                    "code": {"text": category},
                    "subject": {"reference": f"Patient/{pid}"},
                },
            )
            assert r.status_code == 201, r.text
            ids[f"{org}-{category}"] = r.json()["id"]
    return ids


def audited(server: Server, patient: str, wanted: Any) -> list[dict[str, Any]]:
    """The AuditEvents about ``patient``, read from the server's database (another process)
    until ``wanted(events)`` holds: its audit writer appends every TAKAMUL_AUDIT_FLUSH_SECONDS
    (0.2 s by default). Gives up after 10 s with what it found."""
    log = AuditLog.from_url(server.db)
    try:
        deadline = time.monotonic() + 10
        while True:
            events = log.search(patient=patient, count=100).events
            if wanted(events) or time.monotonic() > deadline:
                return events
            time.sleep(0.05)
    finally:
        log.close()


def _glass_reason(events: list[dict[str, Any]], reason: str) -> bool:
    return any(
        c.get("code") == "ETREAT" and reason in str(e)
        for e in events
        for agent in e.get("agent", [])
        for p in agent.get("purposeOfUse", [])
        for c in p.get("coding", [])
    )


def outcome(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    return dict(body)


def facility_client(
    server: Server, org: str = "org-a", scopes: str = "system/*.cruds"
) -> httpx.Client:
    cid, _ = server.client(scopes, facility=org, roles=("clinician",))
    return server.http(server.token(cid, scopes))


# -- authentication ----------------------------------------------------------------------------


def test_no_token_is_refused_with_a_challenge(server: Server) -> None:
    r = server.http(None).get("/Patient")
    outcome(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert server.http(None).get("/metadata").status_code == 200  # discovery stays open
    assert httpx.get(f"{server.root}/.well-known/smart-configuration").status_code == 200


def test_forged_expired_and_foreign_tokens_are_refused(
    server: Server, world: dict[str, Any]
) -> None:
    cid, _ = server.client("system/*.rs")
    good = server.token(cid, "system/*.rs")
    head, body, signature = good.split(".")
    forged = f"{head}.{body}.{signature[:-4]}AAAA"
    outcome(server.http(forged).get("/Patient"), 401)
    foreign = server.security.tokens.mint(cid, "system/*.rs", "https://elsewhere.example/fhir")
    outcome(server.http(foreign).get("/Patient"), 401)
    short = server.token(cid, "system/*.rs", lifetime=1)
    time.sleep(2.5)
    outcome(server.http(short).get("/Patient"), 401)
    outcome(server.http("not-a-jwt").get("/Patient"), 401)


def test_backend_services_flow_over_http(server: Server, world: dict[str, Any]) -> None:
    cid, key = server.client("system/Patient.rs")
    claims = {
        "iss": cid,
        "sub": cid,
        "aud": f"{server.root}/auth/token",
        "exp": int(time.time()) + 240,
        "jti": str(uuid.uuid4()),
    }
    signed = jwt.encode(
        {"alg": "ES384", "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=["ES384"]
    )
    form = {
        "grant_type": "client_credentials",
        "scope": "system/Patient.rs",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": signed,
    }
    r = httpx.post(f"{server.root}/auth/token", data=form)
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    assert server.http(token).get(f"/Patient/{world['org-a']}").status_code == 200
    replay = httpx.post(f"{server.root}/auth/token", data=form)
    assert replay.status_code in (400, 401)
    assert replay.json()["error"] in ("invalid_client", "invalid_grant")
    escalate = httpx.post(
        f"{server.root}/auth/token",
        data={**form, "scope": "system/*.cruds", "client_assertion": jwt.encode(
            {"alg": "ES384", "kid": key.kid}, {**claims, "jti": str(uuid.uuid4())}, key,
            algorithms=["ES384"])},
    )  # fmt: skip
    assert escalate.status_code == 400 and escalate.json()["error"] == "invalid_scope"


# -- scopes ------------------------------------------------------------------------------------


def test_scope_escalation_is_refused_everywhere(server: Server, world: dict[str, Any]) -> None:
    cid, _ = server.client("system/Patient.rs")
    http = server.http(server.token(cid, "system/Patient.rs"))
    outcome(http.get(f"/Observation/{world['org-a-laboratory']}"), 403)
    outcome(http.get("/Observation"), 403)
    outcome(http.post("/Patient", json={"resourceType": "Patient"}), 403)
    outcome(http.delete(f"/Patient/{world['org-a']}"), 403)
    before = world["admin"].get("/Patient", params={"_summary": "count"}).json()["total"]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            }
        ],
    }
    outcome(http.post("", json=bundle), 403)
    assert world["admin"].get("/Patient", params={"_summary": "count"}).json()["total"] == before
    # _include of a type the token may not read brings nothing back
    included = http.get(
        "/Patient", params={"_id": world["org-a"], "_revinclude": "Observation:subject"}
    ).json()
    assert {e["resource"]["resourceType"] for e in included["entry"]} == {"Patient"}


def test_category_scopes_filter_reads_searches_and_counts(
    server: Server, world: dict[str, Any]
) -> None:
    scope = "system/Observation.rs?category=laboratory"
    cid, _ = server.client(scope)
    http = server.http(server.token(cid, scope))
    lab, vitals = world["org-a-laboratory"], world["org-a-vital-signs"]
    assert http.get(f"/Observation/{lab}").status_code == 200
    hidden = outcome(http.get(f"/Observation/{vitals}"), 404)
    missing = outcome(http.get("/Observation/no-such-observation"), 404)
    assert hidden["issue"][0]["code"] == missing["issue"][0]["code"]  # no enumeration
    found = http.get("/Observation", params={"subject": f"Patient/{world['org-a']}"}).json()
    assert {e["resource"]["id"] for e in found["entry"]} == {lab}
    count = http.get("/Observation", params={"_summary": "count"}).json()["total"]
    assert (
        count
        == world["admin"]
        .get("/Observation", params={"category": "laboratory", "_summary": "count"})
        .json()["total"]
    )


# -- facilities --------------------------------------------------------------------------------


def test_a_facility_sees_its_patients_and_not_anothers(
    server: Server, world: dict[str, Any]
) -> None:
    http = facility_client(server, "org-a")
    mine, theirs = world["org-a"], world["org-b"]
    assert http.get(f"/Patient/{mine}").status_code == 200
    refused = outcome(http.get(f"/Patient/{theirs}"), 404)  # as if it did not exist
    nothing = outcome(http.get("/Patient/no-such-patient"), 404)
    assert refused["issue"][0]["code"] == nothing["issue"][0]["code"]
    outcome(http.get(f"/Patient/{theirs}/$everything"), 404)
    outcome(http.get(f"/Patient/{theirs}/_history"), 404)
    outcome(http.get(f"/Observation/{world['org-b-laboratory']}"), 404)
    patients = http.get("/Patient", params={"_count": 500}).json()
    assert mine in {e["resource"]["id"] for e in patients["entry"]}
    assert theirs not in {e["resource"]["id"] for e in patients["entry"]}
    assert http.get("/Patient", params={"_summary": "count"}).json()["total"] == len(
        patients["entry"]
    )
    obs = http.get("/Observation", params={"_include": "Observation:subject", "_count": 500}).json()
    refs = {e["resource"]["id"] for e in obs["entry"]}
    assert world["org-b-laboratory"] not in refs and theirs not in refs
    everything = http.get(f"/Patient/{mine}/$everything").json()
    assert all(
        e["resource"].get("subject", {}).get("reference", f"Patient/{mine}") == f"Patient/{mine}"
        for e in everything["entry"]
    )
    outcome(http.put(f"/Patient/{theirs}", json={"resourceType": "Patient", "id": theirs}), 404)
    outcome(
        http.post(
            "/Observation",
            json={
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": f"Patient/{theirs}"},
            },
        ),
        403,
    )
    outcome(http.get("/$export", headers={"Prefer": "respond-async"}), 403)


def test_naming_patients_in_a_search_never_widens_the_facility(
    server: Server, world: dict[str, Any]
) -> None:
    """A search that names only the facility's own patients is answered without ANDing the
    facility's whole patient list (it cannot widen anything); one that names another
    facility's patient, alone or beside its own, gets the facility's restriction."""
    http = facility_client(server, "org-a")
    mine, theirs = world["org-a"], world["org-b"]

    def ids(rtype: str, **params: str) -> set[str]:
        bundle = http.get(f"/{rtype}", params=params).json()
        return {e["resource"]["id"] for e in bundle.get("entry", [])}

    assert ids("Patient", _id=mine) == {mine}
    assert ids("Patient", _id=theirs) == set()
    assert ids("Patient", _id=f"{mine},{theirs}") == {mine}
    own_obs = ids("Observation", patient=f"Patient/{mine}")
    assert own_obs and world["org-a-laboratory"] in own_obs
    assert ids("Observation", patient=f"Patient/{theirs}") == set()
    assert ids("Observation", subject=f"Patient/{theirs}") == set()
    assert ids("Observation", patient=theirs) == set()
    both = ids("Observation", patient=f"Patient/{mine},Patient/{theirs}")
    assert both == own_obs
    assert ids("Observation", **{"subject:Patient": theirs}) == set()


def test_a_task_is_guarded_as_data_of_the_patient_it_is_for(
    server: Server, world: dict[str, Any]
) -> None:
    """R4 leaves Task out of the Patient compartment; a facility must still not list, read,
    count, include or change the Tasks about another facility's patients (found by the web
    worklist's tests: every facility saw every outreach Task)."""
    admin = world["admin"]
    tasks = {}
    for org in ("org-a", "org-b"):
        r = admin.post(
            "/Task",
            json={
                "resourceType": "Task",
                "status": "requested",
                "intent": "plan",
                "description": f"outreach for the patient of {org}",
                "for": {"reference": f"Patient/{world[org]}"},
            },
        )
        assert r.status_code == 201, r.text
        tasks[org] = r.json()["id"]
    http = facility_client(server, "org-a")
    listed = {
        e["resource"]["id"]
        for e in http.get("/Task", params={"_count": 500}).json().get("entry", [])
    }
    assert tasks["org-a"] in listed and tasks["org-b"] not in listed
    total = http.get("/Task", params={"_summary": "count"}).json()["total"]
    assert total == len(listed)
    outcome(http.get(f"/Task/{tasks['org-b']}"), 404)
    outcome(http.get(f"/Task/{tasks['org-b']}/_history"), 404)
    theirs = admin.get(f"/Task/{tasks['org-b']}").json()
    outcome(http.put(f"/Task/{tasks['org-b']}", json={**theirs, "status": "cancelled"}), 404)
    assert admin.get(f"/Task/{tasks['org-b']}").json()["status"] == "requested"
    by_chain = http.get("/Task", params={"patient.name": "Patient of org-b"}).json()
    assert not by_chain.get("entry")
    has = http.get("/Patient", params={"_has:Task:patient:status": "requested"}).json()
    assert world["org-b"] not in {e["resource"]["id"] for e in has.get("entry", [])}


def test_a_facility_cannot_grant_itself_a_patient(server: Server, world: dict[str, Any]) -> None:
    """Writing an Encounter that names itself as service provider does not make another
    facility's patient its own (issue 11, finding 3): not by a create, an update-as-create, a
    conditional create or a transaction entry. A referral by the patient's facility does; so
    does breaking the glass, audited with its reason."""
    admin = world["admin"]

    def patient_of_b() -> str:
        body = {
            "resourceType": "Patient",
            "name": [{"family": "Referred"}],
            "managingOrganization": {"reference": "Organization/org-b"},
        }
        return str(admin.post("/Patient", json=body).json()["id"])

    def encounter(pid: str) -> dict[str, Any]:
        return {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": f"Patient/{pid}"},
            "serviceProvider": {"reference": "Organization/org-a"},
        }

    pid = patient_of_b()
    http = facility_client(server, "org-a")
    outcome(http.get(f"/Patient/{pid}"), 404)
    refused = outcome(http.post("/Encounter", json=encounter(pid)), 403)
    assert "X-Break-Glass-Reason" in str(refused)
    own_id = f"self-{pid[:8]}"
    outcome(http.put(f"/Encounter/{own_id}", json={**encounter(pid), "id": own_id}), 403)
    outcome(
        http.post("/Encounter", json=encounter(pid), headers={"If-None-Exist": "status=finished"}),
        403,
    )
    entry = {"resource": encounter(pid), "request": {"method": "POST", "url": "Encounter"}}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    assert http.post("", json=bundle).status_code == 403
    for kind in ("ServiceRequest", "CareTeam", "EpisodeOfCare"):
        assert admin.get(kind, params={"patient": pid}).json().get("total") == 0
    assert admin.get("/Encounter", params={"patient": pid}).json()["total"] == 0
    outcome(facility_client(server, "org-a").get(f"/Patient/{pid}"), 404)

    # the patient's own facility refers them: evidence org-a could not write alone
    referral = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{pid}"},
        "performer": [{"reference": "Organization/org-a"}],
    }
    assert (
        facility_client(server, "org-b").post("/ServiceRequest", json=referral).status_code == 201
    )
    assert facility_client(server, "org-a").get(f"/Patient/{pid}").status_code == 200

    # self-declared: only by breaking the glass, with the reason in the audit log
    other = patient_of_b()
    cid, _ = server.client("system/*.cruds", facility="org-a", roles=("clinician",))
    reason = "walked in with chest pain, no referral"
    glass = server.http(server.token(cid, "system/*.cruds"), **{"X-Break-Glass-Reason": reason})
    assert glass.post("/Encounter", json=encounter(other)).status_code == 201
    assert facility_client(server, "org-a").get(f"/Patient/{other}").status_code == 200
    events = audited(server, other, lambda found: _glass_reason(found, reason))
    assert _glass_reason(events, reason), events


def test_deleted_resources_stay_gone_and_historic_for_who_may_read_them(
    server: Server, world: dict[str, Any]
) -> None:
    """With access control on, a reader allowed the type and patient gets R4's 410 Gone and
    the history of a deleted resource; anyone else still gets the 404 of what does not exist
    (issue 11, finding 5)."""
    admin = world["admin"]
    body = {
        "resourceType": "Patient",
        "name": [{"family": "Deleted"}],
        "managingOrganization": {"reference": "Organization/org-b"},
    }
    pid = admin.post("/Patient", json=body).json()["id"]
    assert admin.delete(f"/Patient/{pid}").status_code in (200, 204)
    outcome(admin.get(f"/Patient/{pid}"), 410)
    history = admin.get(f"/Patient/{pid}/_history")
    assert history.status_code == 200, history.text
    entries = history.json()["entry"]
    assert [e["request"]["method"] for e in entries] == ["DELETE", "POST"]
    assert admin.get(f"/Patient/{pid}/_history/1").status_code == 200
    outcome(admin.get(f"/Patient/{pid}/_history/2"), 410)
    mine = facility_client(server, "org-b", "system/*.rs")
    outcome(mine.get(f"/Patient/{pid}"), 410)
    assert mine.get(f"/Patient/{pid}/_history").status_code == 200
    # another facility, and a token without Patient, learn nothing
    theirs = facility_client(server, "org-a", "system/*.rs")
    nothing = outcome(theirs.get("/Patient/never-existed"), 404)
    gone = outcome(theirs.get(f"/Patient/{pid}"), 404)
    assert gone["issue"][0]["code"] == nothing["issue"][0]["code"]
    outcome(theirs.get(f"/Patient/{pid}/_history"), 404)
    outcome(theirs.get(f"/Patient/{pid}/_history/2"), 404)
    system = theirs.get("/_history", params={"_count": 1000}).json()
    assert pid not in {e.get("request", {}).get("url", "") for e in system.get("entry", [])}
    assert not any(pid in e.get("fullUrl", "") for e in system.get("entry", []))


def test_break_the_glass_needs_a_reason_and_is_flagged(
    server: Server, world: dict[str, Any]
) -> None:
    cid, _ = server.client("system/*.rs", facility="org-a", roles=("clinician",))
    token = server.token(cid, "system/*.rs")
    theirs = world["org-b"]
    outcome(server.http(token).get(f"/Patient/{theirs}"), 404)
    glass = server.http(token, **{"X-Break-Glass-Reason": "unconscious in the emergency room"})
    assert glass.get(f"/Patient/{theirs}").status_code == 200
    events = audited(server, theirs, lambda found: _glass_reason(found, ""))
    purposes = {
        c["code"]
        for e in events
        for agent in e.get("agent", [])
        for p in agent.get("purposeOfUse", [])
        for c in p.get("coding", [])
    }
    assert "ETREAT" in purposes


def test_a_caregiver_acts_for_one_patient_only_with_consent(
    server: Server, world: dict[str, Any]
) -> None:
    cid, _ = server.client("patient/*.rs", roles=("caregiver",))
    http = server.http(server.token(cid, "patient/*.rs", patient=world["org-a"]))
    refused = outcome(http.get(f"/Patient/{world['org-a']}"), 403)
    assert "consent" in str(refused)
    consent = {
        "resourceType": "Consent",
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
        "patient": {"reference": f"Patient/{world['org-a']}"},
        "provision": {
            "type": "permit",
            "actor": [
                {
                    "role": {"text": "caregiver"},
                    "reference": {
                        "identifier": {
                            "system": "https://takamul.health/fhir/sid/login",
                            "value": cid,
                        }
                    },
                }
            ],
        },
    }
    assert world["admin"].post("/Consent", json=consent).status_code == 201
    assert http.get(f"/Patient/{world['org-a']}").status_code == 200
    outcome(http.get(f"/Patient/{world['org-b']}"), 404)
    found = http.get("/Observation").json()
    assert {e["resource"]["subject"]["reference"] for e in found["entry"]} == {
        f"Patient/{world['org-a']}"
    }


# -- registry, audit, payloads -------------------------------------------------------------------


def test_registry_review_needs_its_role(server: Server, world: dict[str, Any]) -> None:
    http = facility_client(server, "org-a")
    outcome(httpx.get(f"{server.root}/mpi/reviews", headers=http.headers), 403)
    cid, _ = server.client("system/*.rs", roles=("registry-reviewer",))
    reviewer = server.token(cid, "system/*.rs")
    r = httpx.get(f"{server.root}/mpi/reviews", headers={"Authorization": f"Bearer {reviewer}"})
    assert r.status_code == 200


def test_the_audit_log_is_append_only_complete_and_verifies(
    server: Server, world: dict[str, Any]
) -> None:
    cid, _ = server.client("system/*.cruds", roles=("administrator",))
    http = server.http(server.token(cid, "system/*.cruds"))
    outcome(http.post("/AuditEvent", json={"resourceType": "AuditEvent"}), 405)
    outcome(http.delete("/AuditEvent/1"), 405)
    nobody = facility_client(server, "org-a")
    outcome(nobody.get("/AuditEvent"), 403)
    server.http(None).get(f"/Patient/{world['org-b']}")  # a refused request, audited
    # no wait: the server writes its own queue before it searches its log (one worker)
    events = http.get("/AuditEvent", params={"_count": 1000}).json()
    assert events["total"] > 10
    outcomes = {e["outcome"] for e in (x["resource"] for x in events["entry"])}
    assert {"0", "4"} <= outcomes
    httpx.post(f"{server.root}/auth/token", data={"grant_type": "password"})  # refused, audited
    events = http.get("/AuditEvent", params={"_count": 1000}).json()
    assert any(x["resource"]["type"].get("code") == "110114" for x in events["entry"])
    log = AuditLog.from_url(server.db)
    try:
        assert log.verify().ok
    finally:
        log.close()


def test_oversized_and_malformed_payloads(server: Server, world: dict[str, Any]) -> None:
    cid, _ = server.client("system/*.cruds")
    http = server.http(
        server.token(cid, "system/*.cruds"), **{"Content-Type": "application/fhir+json"}
    )
    outcome(http.post("/Patient", content=b"{not json"), 400)
    outcome(http.post("/Patient", content=b"[" * 40 + b"]" * 40), 400)
    big = b'{"resourceType":"Patient","text":"' + b"x" * (33 * 1024 * 1024) + b'"}'
    assert http.post("/Patient", content=big).status_code == 413


# -- consent -------------------------------------------------------------------------------------

SNOMED = "http://snomed.info/sct"


@pytest.fixture(scope="module")
def consented(server: Server, world: dict[str, Any]) -> dict[str, Any]:
    """A patient of org-a who restricted mental health data to the mental health clinic."""
    admin = world["admin"]
    admin.put("/Organization/mh-clinic", json={"resourceType": "Organization", "id": "mh-clinic"})
    pid = admin.post(
        "/Patient",
        json={
            "resourceType": "Patient",
            "name": [{"family": "Consenting"}],
            "managingOrganization": {"reference": "Organization/org-a"},
        },
    ).json()["id"]
    subject = {"reference": f"Patient/{pid}"}
    depression = admin.post(
        "/Condition",
        json={
            "resourceType": "Condition",
            "code": {"coding": [{"system": SNOMED, "code": "35489007"}]},
            "subject": subject,
        },
    ).json()["id"]
    asthma = admin.post(
        "/Condition",
        json={
            "resourceType": "Condition",
            "code": {"coding": [{"system": SNOMED, "code": "195967001"}]},
            "subject": subject,
        },
    ).json()["id"]
    admin.post(
        "/Encounter",
        json={
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": subject,
            "serviceProvider": {"reference": "Organization/mh-clinic"},
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
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
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
    r = admin.post("/Consent", json=consent)
    assert r.status_code == 201, r.text
    return {"patient": pid, "depression": depression, "asthma": asthma}


def test_consent_restricts_mental_health_data_on_every_path(
    server: Server, consented: dict[str, Any]
) -> None:
    pid, hidden, shown = consented["patient"], consented["depression"], consented["asthma"]
    cid, _ = server.client("system/*.rs")
    http = server.http(server.token(cid, "system/*.rs"))  # the ministry: not the treating team
    outcome(http.get(f"/Condition/{hidden}"), 404)
    assert http.get(f"/Condition/{shown}").status_code == 200
    found = http.get("/Condition", params={"subject": f"Patient/{pid}"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [shown] and found["total"] == 1
    count = http.get("/Condition", params={"subject": f"Patient/{pid}", "_summary": "count"})
    assert count.json()["total"] == 1
    rev = http.get("/Patient", params={"_id": pid, "_revinclude": "Condition:subject"}).json()
    assert hidden not in {e["resource"]["id"] for e in rev["entry"]}
    everything = http.get(f"/Patient/{pid}/$everything").json()
    assert hidden not in {e["resource"]["id"] for e in everything["entry"]}
    outcome(http.get(f"/Condition/{hidden}/_history"), 404)
    system_history = http.get("/_history", params={"_count": 1000}).json()
    assert hidden not in {e.get("resource", {}).get("id") for e in system_history.get("entry", [])}
    # the facility managing the record is not the treating team either
    org_a = facility_client(server, "org-a", "system/*.rs")
    outcome(org_a.get(f"/Condition/{hidden}"), 404)
    # the treating team sees it; so does a clinician breaking the glass
    assert (
        facility_client(server, "mh-clinic", "system/*.rs").get(f"/Condition/{hidden}").status_code
        == 200
    )
    gid, _ = server.client("system/*.rs", facility="org-b", roles=("clinician",))
    glass = server.http(
        server.token(gid, "system/*.rs"), **{"X-Break-Glass-Reason": "overdose, unconscious"}
    )
    assert glass.get(f"/Condition/{hidden}").status_code == 200


def test_consent_holds_in_bulk_export(server: Server, consented: dict[str, Any]) -> None:
    cid, _ = server.client("system/*.rs")
    http = server.http(server.token(cid, "system/*.rs"))
    kick = http.get("/$export", params={"_type": "Condition"}, headers={"Prefer": "respond-async"})
    assert kick.status_code == 202, kick.text
    poll = kick.headers["content-location"]
    for _ in range(100):
        status = http.get(poll)
        if status.status_code == 200:
            break
        time.sleep(0.2)
    assert status.status_code == 200, status.text
    exported = b"".join(http.get(item["url"]).content for item in status.json()["output"]).decode()
    assert consented["asthma"] in exported and consented["depression"] not in exported


def test_conditional_interactions_do_not_match_what_is_hidden(
    server: Server, consented: dict[str, Any]
) -> None:
    """If-None-Exist, conditional update and conditional delete match only what the requester
    may see: a hidden match neither comes back nor blocks, and a request without criteria of
    its own is still refused (the guard's restrictions are not criteria)."""
    pid, hidden = consented["patient"], consented["depression"]
    cid, _ = server.client("system/*.cruds")
    http = server.http(server.token(cid, "system/*.cruds"))  # the ministry: not the treating team
    asthma = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": SNOMED, "code": "195967001"}]},
        "subject": {"reference": f"Patient/{pid}"},
    }
    created = http.post("/Condition", json=asthma, headers={"If-None-Exist": f"_id={hidden}"})
    assert created.status_code == 201, created.text
    assert created.json()["id"] != hidden and "35489007" not in created.text
    deleted = http.delete("/Condition", params={"_id": hidden})
    assert deleted.status_code in (200, 204), deleted.text
    assert world_admin_reads(server, f"/Condition/{hidden}") == 200  # still there
    facility = facility_client(server, "org-a")
    outcome(facility.put("/Patient", json={"resourceType": "Patient"}), 412)


def world_admin_reads(server: Server, path: str) -> int:
    """Status of a read by the treating team (who may see restricted data)."""
    return facility_client(server, "mh-clinic", "system/*.rs").get(path).status_code
