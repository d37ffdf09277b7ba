"""Batch and transaction Bundles: order, atomicity, urn:uuid and conditional references."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

JSON = {"Content-Type": "application/fhir+json"}


def _patient_entry(full_url: str, value: str) -> dict[str, Any]:
    return {
        "fullUrl": full_url,
        "resource": {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:test:bundle", "value": value}],
            "name": [{"family": "کریمی", "given": ["زهرا"]}],
        },
        "request": {"method": "POST", "url": "Patient"},
    }


def _observation(subject: str, value: str, status: str = "final") -> dict[str, Any]:
    return {
        "resource": {
            "resourceType": "Observation",
            "status": status,
            "identifier": [{"system": "urn:test:bundle", "value": value}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
            "subject": {"reference": subject},
        },
        "request": {"method": "POST", "url": "Observation"},
    }


def count(http: httpx.Client, rtype: str, value: str) -> int:
    r = http.get(
        f"/{rtype}", params={"identifier": f"urn:test:bundle|{value}", "_summary": "count"}
    )
    return int(r.json()["total"])


def test_transaction_resolves_urn_uuid_references(http: httpx.Client) -> None:
    value = uuid.uuid4().hex
    urn = f"urn:uuid:{uuid.uuid4()}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [_observation(urn, value), _patient_entry(urn, value)],
    }
    r = http.post("", json=bundle, headers=JSON)
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses == ["201", "201"]
    patient_id = result["entry"][1]["resource"]["id"]
    obs = result["entry"][0]["resource"]
    assert obs["subject"]["reference"] == f"Patient/{patient_id}"
    stored = http.get(f"/Observation/{obs['id']}").json()
    assert "urn:uuid" not in str(stored)


def test_transaction_is_atomic_when_last_entry_is_invalid(http: httpx.Client) -> None:
    value = uuid.uuid4().hex
    urn = f"urn:uuid:{uuid.uuid4()}"
    bad = _observation(urn, value, status="not-a-status-code!")
    bad["resource"]["status"] = ""  # empty strings are invalid FHIR JSON
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [_patient_entry(urn, value), _observation(urn, value), bad],
    }
    before = http.get("/_history", params={"_count": 1}).json()["total"]
    r = http.post("", json=bundle, headers=JSON)
    assert r.status_code == 400
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Bundle.entry[2]" in str(outcome)
    assert count(http, "Patient", value) == 0
    assert count(http, "Observation", value) == 0
    assert http.get("/_history", params={"_count": 1}).json()["total"] == before


def test_conditional_reference_resolved(http: httpx.Client) -> None:
    value = uuid.uuid4().hex
    created = http.post(
        "/Patient",
        headers=JSON,
        json={
            "resourceType": "Patient",
            "identifier": [{"system": "urn:test:bundle", "value": value}],
        },
    )
    pid = created.json()["id"]
    ref = f"Patient?identifier=urn:test:bundle|{value}"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [_observation(ref, value)]}
    r = http.post("", json=bundle, headers=JSON)
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{pid}"


def test_conditional_reference_matching_nothing_fails_naming_entry(http: httpx.Client) -> None:
    value = uuid.uuid4().hex
    ok = _observation(f"Patient/{uuid.uuid4().hex}", value)
    missing = _observation(f"Patient?identifier=urn:test:bundle|{value}", value)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [ok, missing]}
    r = http.post("", json=bundle, headers=JSON)
    assert r.status_code in (400, 404, 412)
    assert "Bundle.entry[1]" in str(r.json())
    assert count(http, "Observation", value) == 0


def test_conditional_reference_matching_several_fails(http: httpx.Client) -> None:
    value = uuid.uuid4().hex
    for _ in range(2):
        http.post(
            "/Patient",
            headers=JSON,
            json={
                "resourceType": "Patient",
                "identifier": [{"system": "urn:test:bundle", "value": value}],
            },
        )
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [_observation(f"Patient?identifier=urn:test:bundle|{value}", value)],
    }
    r = http.post("", json=bundle, headers=JSON)
    assert r.status_code == 412
    assert "more than one" in str(r.json())


def test_processing_order_delete_before_create(http: httpx.Client) -> None:
    pid = f"order-{uuid.uuid4().hex[:10]}"
    http.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid}, headers=JSON)
    value = uuid.uuid4().hex
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "id": pid, "gender": "female"},
                "request": {"method": "PUT", "url": f"Patient/{pid}"},
            },
            {"request": {"method": "GET", "url": f"Patient?_id={pid}"}},
            _patient_entry(f"urn:uuid:{uuid.uuid4()}", value),
            {"request": {"method": "DELETE", "url": f"Patient/{pid}"}},
        ],
    }
    r = http.post("", json=bundle, headers=JSON)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    # DELETE ran first, then POST, then PUT (re-creating), then GET saw the PUT.
    assert entries[3]["response"]["status"] == "204"
    assert entries[0]["response"]["status"] == "201"
    assert entries[1]["resource"]["total"] == 1
    assert http.get(f"/Patient/{pid}").json()["gender"] == "female"


def test_batch_entries_succeed_or_fail_independently(http: httpx.Client) -> None:
    value = uuid.uuid4().hex
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            _patient_entry(f"urn:uuid:{uuid.uuid4()}", value),
            {
                "resource": {"resourceType": "Patient", "birthDate": "yesterday"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {"request": {"method": "GET", "url": "Patient/does-not-exist-at-all"}},
        ],
    }
    r = http.post("", json=bundle, headers=JSON)
    assert r.status_code == 200
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses == ["201", "400", "404"]
    assert r.json()["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert count(http, "Patient", value) == 1


def test_transaction_if_none_exist(http: httpx.Client) -> None:
    value = uuid.uuid4().hex
    entry = _patient_entry(f"urn:uuid:{uuid.uuid4()}", value)
    entry["request"]["ifNoneExist"] = f"identifier=urn:test:bundle|{value}"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    assert (
        http.post("", json=bundle, headers=JSON).json()["entry"][0]["response"]["status"] == "201"
    )
    second = http.post("", json=bundle, headers=JSON).json()
    assert second["entry"][0]["response"]["status"] == "200"
    assert count(http, "Patient", value) == 1


def test_bundle_type_must_be_batch_or_transaction(http: httpx.Client) -> None:
    r = http.post("", json={"resourceType": "Bundle", "type": "collection"}, headers=JSON)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Bundle.type"]
