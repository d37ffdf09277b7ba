"""Bulk Data Access v2 $export over HTTP: kick-off, polling, manifest, files, cancel."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import orjson
import pytest

JSON = {"Content-Type": "application/fhir+json"}
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


def wait_for_manifest(http: httpx.Client, location: str) -> dict[str, Any]:
    deadline = time.time() + 60
    while time.time() < deadline:
        r = http.get(location)
        if r.status_code == 200:
            return dict(r.json())
        assert r.status_code == 202, r.text
        assert r.headers.get("X-Progress") and r.headers.get("Retry-After")
        time.sleep(0.1)
    raise AssertionError("export did not complete within 60 s")


def download(http: httpx.Client, manifest: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in manifest["output"]:
        if item["type"] == rtype:
            r = http.get(item["url"])
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("application/fhir+ndjson")
            out.extend(orjson.loads(line) for line in r.content.splitlines() if line)
    return out


@pytest.fixture(scope="module")
def family(http: httpx.Client) -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    ids = {}
    for key in ("a", "b"):
        ids[key] = http.post(
            "/Patient",
            headers=JSON,
            json={"resourceType": "Patient", "name": [{"family": f"Export{tag}"}]},
        ).json()["id"]
        ids[f"obs-{key}"] = http.post(
            "/Observation",
            headers=JSON,
            json={
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": tag},
                "subject": {"reference": f"Patient/{ids[key]}"},
            },
        ).json()["id"]
    ids["org"] = http.post(
        "/Organization", headers=JSON, json={"resourceType": "Organization", "name": f"org {tag}"}
    ).json()["id"]
    ids["group"] = http.post(
        "/Group",
        headers=JSON,
        json={
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": f"Patient/{ids['a']}"}}],
        },
    ).json()["id"]
    return ids


def test_system_export(http: httpx.Client, family: dict[str, str]) -> None:
    r = http.get("/$export", params={"_type": "Patient,Organization"}, headers=ASYNC)
    assert r.status_code == 202, r.text
    manifest = wait_for_manifest(http, r.headers["Content-Location"])
    # an open server (no access control) has no token to require; with access control on the
    # files need the requester's token (tests/test_export_binding.py)
    assert manifest["requiresAccessToken"] is False
    assert manifest["transactionTime"]
    assert "_type=Patient" in manifest["request"]
    assert {o["type"] for o in manifest["output"]} == {"Patient", "Organization"}
    assert manifest["error"] == []
    patients = {p["id"] for p in download(http, manifest, "Patient")}
    assert {family["a"], family["b"]} <= patients
    orgs = download(http, manifest, "Organization")
    assert family["org"] in {o["id"] for o in orgs}
    counts = {o["type"]: o["count"] for o in manifest["output"]}
    assert counts["Patient"] == len(download(http, manifest, "Patient"))


def test_patient_and_group_export(http: httpx.Client, family: dict[str, str]) -> None:
    r = http.get("/Patient/$export", params={"_type": "Observation,Organization"}, headers=ASYNC)
    manifest = wait_for_manifest(http, r.headers["Content-Location"])
    obs = {o["id"] for o in download(http, manifest, "Observation")}
    assert {family["obs-a"], family["obs-b"]} <= obs
    assert "Organization" not in {o["type"] for o in manifest["output"]}  # not in compartment
    r = http.get(f"/Group/{family['group']}/$export", headers=ASYNC)
    manifest = wait_for_manifest(http, r.headers["Content-Location"])
    assert {p["id"] for p in download(http, manifest, "Patient")} == {family["a"]}
    assert {o["id"] for o in download(http, manifest, "Observation")} == {family["obs-a"]}


def test_since(http: httpx.Client, family: dict[str, str]) -> None:
    later = http.post("/Patient", headers=JSON, json={"resourceType": "Patient"}).json()
    r = http.get(
        "/$export",
        params={"_type": "Patient", "_since": later["meta"]["lastUpdated"]},
        headers=ASYNC,
    )
    manifest = wait_for_manifest(http, r.headers["Content-Location"])
    ids = {p["id"] for p in download(http, manifest, "Patient")}
    assert later["id"] in ids and family["a"] not in ids


def test_cancel(http: httpx.Client, family: dict[str, str]) -> None:
    r = http.get("/$export", headers=ASYNC)
    location = r.headers["Content-Location"]
    assert http.delete(location).status_code == 202
    assert http.get(location).status_code == 404


@pytest.mark.parametrize(
    ("path", "params", "headers"),
    [
        ("/$export", {}, {}),  # no Prefer: respond-async
        ("/$export", {"_outputFormat": "text/csv"}, ASYNC),
        ("/$export", {"_type": "Spaceship"}, ASYNC),
        ("/$export", {"_since": "last week"}, ASYNC),
        ("/Group/no-such-group/$export", {}, ASYNC),
    ],
)
def test_bad_kickoff(
    http: httpx.Client, path: str, params: dict[str, str], headers: dict[str, str]
) -> None:
    r = http.get(path, params=params, headers=headers)
    assert r.status_code in (400, 404)
    assert r.json()["resourceType"] == "OperationOutcome"


def test_api_answers_during_export(http: httpx.Client, family: dict[str, str]) -> None:
    r = http.get("/$export", headers=ASYNC)
    started = time.perf_counter()
    assert http.get(f"/Patient/{family['a']}").status_code == 200
    assert time.perf_counter() - started < 2
    wait_for_manifest(http, r.headers["Content-Location"])
