"""The RESTful interactions of R4 http.html, driven over HTTP against SQLite and PostgreSQL.

Reads go through fhirpy, an independent FHIR client; status codes and headers through httpx.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhirpy import SyncFHIRClient

JSON = {"Content-Type": "application/fhir+json"}


def patient(**extra: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex
    body: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:mrn", "value": tag}],
        "name": [{"family": "القحطاني", "given": ["عبدالرحمن"]}, {"family": "Al-Qahtani"}],
        "gender": "male",
        "birthDate": "1970-05-01",
    }
    body.update(extra)
    return body


def create(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    r = http.post(f"/{body['resourceType']}", json=body, headers=JSON)
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_create_read_with_independent_client(http: httpx.Client, fhir: SyncFHIRClient) -> None:
    body = patient()
    r = http.post("/Patient", json=body, headers=JSON)
    assert r.status_code == 201
    created = r.json()
    assert r.headers["ETag"] == 'W/"1"'
    assert r.headers["Location"].endswith(f"/Patient/{created['id']}/_history/1")
    read = fhir.reference("Patient", created["id"]).to_resource()
    assert read["name"][0]["family"] == "القحطاني"  # Arabic text round-trips untouched
    assert read["name"][0]["given"] == ["عبدالرحمن"]
    meta = read["meta"]
    assert meta["versionId"] == "1" and meta["lastUpdated"] and meta["source"]


def test_fhirpy_save_update_and_search(fhir: SyncFHIRClient) -> None:
    tag = uuid.uuid4().hex
    p = fhir.resource(
        "Patient",
        identifier=[{"system": "urn:test:fhirpy", "value": tag}],
        name=[{"family": "Rezaei", "given": ["Maryam"]}],
        gender="female",
    )
    p.save()
    assert p["id"]
    p["birthDate"] = "1985-09-02"
    p.save()
    found = fhir.resources("Patient").search(identifier=f"urn:test:fhirpy|{tag}").fetch_all()
    assert [x["id"] for x in found] == [p["id"]]
    assert found[0]["birthDate"] == "1985-09-02"
    assert found[0]["meta"]["versionId"] == "2"


def test_vread_history_and_etags(http: httpx.Client) -> None:
    created = create(http, patient())
    pid = created["id"]
    r = http.put(f"/Patient/{pid}", json={**created, "gender": "other"}, headers=JSON)
    assert r.status_code == 200 and r.headers["ETag"] == 'W/"2"'
    assert http.get(f"/Patient/{pid}/_history/1").json()["gender"] == "male"
    assert http.get(f"/Patient/{pid}/_history/2").json()["gender"] == "other"
    assert http.get(f"/Patient/{pid}/_history/9").status_code == 404
    stale = http.put(f"/Patient/{pid}", json=created, headers={**JSON, "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    fresh = http.put(f"/Patient/{pid}", json=created, headers={**JSON, "If-Match": 'W/"2"'})
    assert fresh.status_code == 200 and fresh.headers["ETag"] == 'W/"3"'
    history = http.get(f"/Patient/{pid}/_history").json()
    assert history["type"] == "history" and history["total"] == 3
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["3", "2", "1"]
    paged = http.get(f"/Patient/{pid}/_history", params={"_count": 1}).json()
    assert len(paged["entry"]) == 1
    assert any(link["relation"] == "next" for link in paged["link"])


def test_history_since_type_and_system(http: httpx.Client) -> None:
    first = create(http, patient())
    since = first["meta"]["lastUpdated"]
    second = create(http, patient())
    type_history = http.get("/Patient/_history", params={"_since": since, "_count": 500}).json()
    ids = {e["resource"]["id"] for e in type_history.get("entry", [])}
    assert second["id"] in ids
    system = http.get("/_history", params={"_since": second["meta"]["lastUpdated"]}).json()
    assert second["id"] in {e["resource"]["id"] for e in system.get("entry", []) if "resource" in e}
    assert first["id"] not in {
        e["resource"]["id"] for e in system.get("entry", []) if "resource" in e
    }
    assert http.get("/_history", params={"_since": "yesterday"}).status_code == 400


def test_update_as_create_with_client_id(http: httpx.Client) -> None:
    pid = f"client-{uuid.uuid4().hex[:12]}"
    r = http.put(f"/Patient/{pid}", json=patient(id=pid), headers=JSON)
    assert r.status_code == 201
    assert http.get(f"/Patient/{pid}").json()["id"] == pid


def test_delete_then_read_gives_410(http: httpx.Client) -> None:
    pid = create(http, patient())["id"]
    assert http.delete(f"/Patient/{pid}").status_code == 204
    assert http.get(f"/Patient/{pid}").status_code == 410
    history = http.get(f"/Patient/{pid}/_history").json()
    assert history["entry"][0]["request"]["method"] == "DELETE"
    assert http.delete(f"/Patient/{pid}").status_code == 204  # idempotent
    assert http.get("/Patient/never-existed-xyz").status_code == 404


def test_prefer_return(http: httpx.Client) -> None:
    minimal = http.post("/Patient", json=patient(), headers={**JSON, "Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal.headers["Location"]
    oo = http.post(
        "/Patient", json=patient(), headers={**JSON, "Prefer": "return=OperationOutcome"}
    )
    assert oo.json()["resourceType"] == "OperationOutcome"
    full = http.post(
        "/Patient", json=patient(), headers={**JSON, "Prefer": "return=representation"}
    )
    assert full.json()["resourceType"] == "Patient"


def test_conditional_create(http: httpx.Client) -> None:
    body = patient()
    criteria = f"identifier=urn:test:mrn|{body['identifier'][0]['value']}"
    first = http.post("/Patient", json=body, headers={**JSON, "If-None-Exist": criteria})
    assert first.status_code == 201
    again = http.post("/Patient", json=body, headers={**JSON, "If-None-Exist": criteria})
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]


def test_32_concurrent_conditional_creates_make_one_resource(fhir_base: str) -> None:
    body = patient()
    value = body["identifier"][0]["value"]
    criteria = f"identifier=urn:test:mrn|{value}"

    def post(_: int) -> int:
        with httpx.Client(base_url=fhir_base, timeout=60) as client:
            r = client.post("/Patient", json=body, headers={**JSON, "If-None-Exist": criteria})
            return r.status_code

    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(post, range(32)))
    assert statuses.count(201) == 1, statuses
    assert statuses.count(200) == 31, statuses
    found = httpx.get(f"{fhir_base}/Patient", params={"identifier": f"urn:test:mrn|{value}"}).json()
    assert found["total"] == 1


def test_conditional_update(http: httpx.Client) -> None:
    body = patient()
    value = body["identifier"][0]["value"]
    created = http.put(
        "/Patient", params={"identifier": f"urn:test:mrn|{value}"}, json=body, headers=JSON
    )
    assert created.status_code == 201
    updated = http.put(
        "/Patient",
        params={"identifier": f"urn:test:mrn|{value}"},
        json={**body, "gender": "female"},
        headers=JSON,
    )
    assert updated.status_code == 200
    assert updated.json()["id"] == created.json()["id"]
    assert updated.json()["gender"] == "female"


def test_json_patch(http: httpx.Client) -> None:
    created = create(http, patient())
    ops = [
        {"op": "replace", "path": "/gender", "value": "female"},
        {"op": "add", "path": "/name/0/given/-", "value": "سعد"},
    ]
    r = http.patch(
        f"/Patient/{created['id']}",
        json=ops,
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["gender"] == "female"
    assert r.json()["name"][0]["given"] == ["عبدالرحمن", "سعد"]
    bad = http.patch(
        f"/Patient/{created['id']}",
        json=[{"op": "remove", "path": "/nothing"}],
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert bad.status_code == 422
    invalid = http.patch(
        f"/Patient/{created['id']}",
        json=[{"op": "replace", "path": "/gender", "value": 7}],
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert invalid.status_code == 400
    assert http.get(f"/Patient/{created['id']}").json()["meta"]["versionId"] == "2"


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/Patient", b'{"resourceType": "Patient", ', "not valid JSON"),
        ("/Patient", b'{"resourceType": "Observation", "status": "final"}', "URL is for Patient"),
        ("/Patient", b'{"resourceType": "Patient", "birthDate": "1970-13-01"}', "birthDate"),
        ("/Patient", b'{"resourceType": "Patient", "nmae": []}', "nmae"),
    ],
)
def test_bad_input_gives_operation_outcome(
    http: httpx.Client, path: str, body: bytes, expected: str
) -> None:
    r = http.post(path, content=body, headers=JSON)
    assert r.status_code == 400
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert expected in str(outcome)


def test_id_mismatch(http: httpx.Client) -> None:
    r = http.put("/Patient/abc", json=patient(id="xyz"), headers=JSON)
    assert r.status_code == 400
    issue = r.json()["issue"][0]
    assert "does not match" in issue["diagnostics"] and issue["expression"] == ["Patient.id"]


def test_oversized_body(http: httpx.Client) -> None:
    big = b'{"resourceType": "Patient", "text": "' + b"x" * (33 * 1024 * 1024) + b'"}'
    r = http.post("/Patient", content=big, headers=JSON)
    assert r.status_code == 413
    assert "larger than the limit" in r.json()["issue"][0]["diagnostics"]


def test_invalid_resource_lists_every_problem_and_writes_nothing(http: httpx.Client) -> None:
    value = uuid.uuid4().hex
    body = {
        "resourceType": "Observation",
        "identifier": [{"value": value}],
        "valueQuantity": {"value": "high"},
        "subject": {"reference": "not a reference"},
    }
    r = http.post("/Observation", json=body, headers=JSON)
    assert r.status_code == 400
    expressions = {e for i in r.json()["issue"] for e in i.get("expression", [])}
    assert {"Observation.status", "Observation.code"} <= expressions
    assert any(e.startswith("Observation.value") and "Quantity" in e for e in expressions)
    assert http.get("/Observation", params={"identifier": value}).json()["total"] == 0


def test_unknown_type_and_metadata(http: httpx.Client) -> None:
    assert http.get("/Spaceship/1").status_code == 404
    cap = http.get("/metadata").json()
    assert cap["resourceType"] == "CapabilityStatement" and cap["fhirVersion"] == "4.0.1"
    patient_caps = next(r for r in cap["rest"][0]["resource"] if r["type"] == "Patient")
    names = {p["name"] for p in patient_caps["searchParam"]}
    assert {"name", "identifier", "birthdate", "_id", "_lastUpdated"} <= names
    assert {i["code"] for i in patient_caps["interaction"]} >= {"read", "vread", "patch"}


def test_xml_body_is_refused_with_415(http: httpx.Client) -> None:
    r = http.post(
        "/Patient",
        content=b"<Patient xmlns='http://hl7.org/fhir'/>",
        headers={"Content-Type": "application/fhir+xml"},
    )
    assert r.status_code == 415
    assert "application/fhir+json" in r.json()["issue"][0]["diagnostics"]


def test_the_fast_read_route_takes_only_reads(http: httpx.Client) -> None:
    """The read route the router tries first must leave every other GET path to its own route:
    a type-level operation, a system path, an id FHIR does not allow, an unknown type."""
    pid = create(http, patient())["id"]
    assert http.get(f"/Patient/{pid}").json()["id"] == pid
    history = http.get("/Patient/_history", params={"_count": 1})
    assert history.status_code == 200 and history.json()["type"] == "history"
    found = http.get("/Patient/_search")  # POST only: never a Patient read as "_search"
    assert found.status_code in (404, 405) and found.json()["resourceType"] == "OperationOutcome"
    bad = http.get("/Patient/no$such*id")  # not a FHIR id: the read's own answer, not 405
    assert bad.status_code in (400, 404) and bad.json()["resourceType"] == "OperationOutcome"
    assert http.get("/Spaceship/abc").status_code == 404


def _own_get_types(routes: list[Any], fast: Any, depth: int) -> set[str]:
    """The types of the GET routes ``/fhir/<Type>`` (``depth`` 2) or ``/fhir/<Type>/{param}``
    (``depth`` 3) other than ``fast``."""
    from starlette.routing import Route

    return {
        r.path.split("/")[2]
        for r in routes
        if isinstance(r, Route)
        and r is not fast
        and "GET" in (r.methods or ())
        and r.path.count("/") == depth
        and r.path.split("/")[2][:1].isupper()
        and (depth == 2 or r.path.split("/")[3].startswith("{"))
    }


def test_no_route_of_its_own_is_shadowed_by_the_fast_read_route(tmp_path: Path) -> None:
    """Every GET route of the shape /fhir/<Type>/{param} is for a type the fast route leaves."""
    from starlette.routing import Route

    from takamul.api.app import OWN_READ_ROUTES, create_app
    from takamul.settings import Settings

    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/routes.sqlite", auth=True))
    fast = next(r for r in app.router.routes if getattr(r, "path", "").endswith("{rid:fhir_id}"))
    assert isinstance(fast, Route)
    own = _own_get_types(app.router.routes, fast, depth=3)
    assert own, "the audit log's AuditEvent read is such a route"
    assert own <= set(OWN_READ_ROUTES)
    for name in own:
        assert fast.path_regex.match(f"/fhir/{name}/x1") is None
    assert fast.path_regex.match("/fhir/Patient/x1") is not None
    assert fast.path_regex.match("/fhir/Patient/$everything") is None
    # tried first of all, ahead of FastAPI's documentation routes, which it cannot take
    assert app.router.routes[0] is fast
    for path in ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"):
        assert fast.path_regex.match(path) is None


def test_no_route_of_its_own_is_shadowed_by_the_fast_search_route(tmp_path: Path) -> None:
    """Every GET route of the shape /fhir/<Type> is for a type the fast search route leaves,
    and no system path or operation reaches that route."""
    from starlette.routing import Route

    from takamul.api.app import OWN_SEARCH_ROUTES, create_app
    from takamul.settings import Settings

    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/routes.sqlite", auth=True))
    fast = next(
        r for r in app.router.routes if getattr(r, "path", "").endswith("fhir_search_type}")
    )
    assert isinstance(fast, Route)
    own = _own_get_types(app.router.routes, fast, depth=2)
    assert own == {"AuditEvent"}, "the audit log's search is the one such route"
    assert own <= set(OWN_SEARCH_ROUTES)
    for name in own:
        assert fast.path_regex.match(f"/fhir/{name}") is None
    assert fast.path_regex.match("/fhir/Observation") is not None
    assert fast.path_regex.match("/fhir/AuditEventDefinition") is not None  # only the exact name
    for path in ("/fhir/metadata", "/fhir/_history", "/fhir/$export", "/fhir/Patient/_history"):
        assert fast.path_regex.match(path) is None
    assert app.router.routes[1] is fast


def test_a_search_by_the_fast_route_and_an_unknown_type(http: httpx.Client) -> None:
    pid = create(http, patient())["id"]
    found = http.get("/Patient", params={"_id": pid})
    assert found.status_code == 200 and [e["resource"]["id"] for e in found.json()["entry"]] == [
        pid
    ]
    for name in ("Spaceship", "spaceship"):
        r = http.get(f"/{name}")
        assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"


def test_telemetry_is_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from takamul.api.app import _telemetry

    monkeypatch.delenv("TAKAMUL_TELEMETRY", raising=False)
    assert _telemetry() == {"tracing": False, "metrics": False, "logs": False}
    monkeypatch.setenv("TAKAMUL_TELEMETRY", "true")
    assert _telemetry() == {"tracing": True, "metrics": True, "logs": True}


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("sqlite:///data/takamul.sqlite", True),
        ("postgresql://postgres@127.0.0.1:5432/takamul", True),
        ("postgresql://postgres@localhost/takamul", True),
        ("postgresql:///takamul", True),  # the default Unix socket
        ("postgresql:///takamul?host=/var/run/postgresql", True),
        ("postgresql://takamul@db.moh.example:5432/takamul", False),
        ("postgresql://takamul@10.20.0.5/takamul", False),
    ],
)
def test_reads_run_on_the_event_loop_only_next_to_their_database(
    monkeypatch: pytest.MonkeyPatch, url: str, local: bool
) -> None:
    from takamul.api.app import inline_reads

    monkeypatch.delenv("TAKAMUL_INLINE_READS", raising=False)
    assert inline_reads(url) is local
    monkeypatch.setenv("TAKAMUL_INLINE_READS", "false")
    assert inline_reads(url) is False
    monkeypatch.setenv("TAKAMUL_INLINE_READS", "true")
    assert inline_reads(url) is True
    monkeypatch.setenv("TAKAMUL_INLINE_READS", "sometimes")
    with pytest.raises(ValueError, match="TAKAMUL_INLINE_READS"):
        inline_reads(url)


def test_last_modified_is_an_english_http_date_whatever_the_locale() -> None:
    from email.utils import formatdate

    from takamul.store.records import http_date

    for epoch in (0.0, 951782400.0, 1733400000.123456, 1709251199.9, 4102444800.0):
        assert http_date(epoch) == formatdate(int(epoch), usegmt=True)
