"""Bulk export jobs and files belong to who asked for them (issue 11, finding 2), on SQLite and
PostgreSQL with access control on: another client, or the same client under another grant,
cannot poll, cancel or download a job (404, as if it did not exist); the files need the token,
and the manifest says so.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey
from sqlalchemy import inspect

from takamul.bulk.export import Exporter, ExportRequester
from takamul.fhir.outcome import FhirError
from takamul.security.service import Security
from takamul.settings import Settings
from takamul.store.repository import Store
from takamul.store.schema import export_job
from tests.server import postgres_database, running_server

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


class Secured:
    """A server with access control on; registers clients and mints their tokens."""

    def __init__(self, base: str, db: str) -> None:
        self.base = base
        self.security = Security.open(db)

    def client(self, scopes: str) -> str:
        key = ECKey.generate_key("P-384")
        key.ensure_kid()
        client_id = f"c-{uuid.uuid4().hex[:10]}"
        jwks = {"keys": [{**key.as_dict(private=False), "alg": "ES384"}]}
        self.security.clients.add(client_id, "export binding test", jwks, scopes, None, ())
        return client_id

    def http(self, client_id: str, scopes: str, **kw: Any) -> httpx.Client:
        token = self.security.tokens.mint(client_id, scopes, self.base, **kw)
        return httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def secured(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Secured]:
    env = {"TAKAMUL_AUTH": "true", "TAKAMUL_RATE_LIMIT": "10000", "TAKAMUL_RATE_BURST": "10000"}
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("export-binding") / "takamul.sqlite"
        with running_server(f"sqlite:///{path}", env) as base:
            yield Secured(base, f"sqlite:///{path}")
    else:
        with postgres_database() as url, running_server(url, env) as base:
            yield Secured(base, url)


@pytest.fixture(scope="module")
def record(secured: Secured) -> dict[str, str]:
    """Two patients with a result each."""
    admin_id = secured.client("system/*.cruds")
    admin = secured.http(admin_id, "system/*.cruds")
    out = {}
    for key in ("p1", "p2"):
        r = admin.post("/Patient", json={"resourceType": "Patient"})
        assert r.status_code == 201, r.text
        out[key] = r.json()["id"]
        r = admin.post(
            "/Observation",
            json={
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "glucose"},
                "subject": {"reference": f"Patient/{out[key]}"},
            },
        )
        assert r.status_code == 201, r.text
        out[f"obs-{key}"] = r.json()["id"]
    return out


def not_found(r: httpx.Response) -> None:
    assert r.status_code == 404, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


def kick_off(http: httpx.Client, **params: str) -> str:
    r = http.get("/$export", params=params, headers=ASYNC)
    assert r.status_code == 202, r.text
    return str(r.headers["Content-Location"])


def manifest_of(http: httpx.Client, location: str) -> dict[str, Any]:
    deadline = time.time() + 60
    while time.time() < deadline:
        r = http.get(location)
        if r.status_code == 200:
            return dict(r.json())
        assert r.status_code == 202, r.text
        time.sleep(0.1)
    raise AssertionError("export did not complete within 60 s")


def test_only_the_requester_polls_cancels_and_downloads(
    secured: Secured, record: dict[str, str]
) -> None:
    owner_id = secured.client("system/*.rs")
    owner = secured.http(owner_id, "system/*.rs")
    location = kick_off(owner, _type="Patient,Observation")
    # another system client, with fewer rights (no Observation): the job is not there
    other = secured.http(secured.client("system/Patient.rs"), "system/Patient.rs")
    peer = secured.http(secured.client("system/*.rs"), "system/*.rs")  # the same rights
    for stranger in (other, peer):
        not_found(stranger.get(location))
        not_found(stranger.delete(location))
    manifest = manifest_of(owner, location)  # the strangers' DELETEs cancelled nothing
    assert manifest["requiresAccessToken"] is True
    urls = {o["type"]: o["url"] for o in manifest["output"]}
    assert set(urls) == {"Patient", "Observation"}
    for stranger in (other, peer):
        not_found(stranger.get(location))
        for url in urls.values():
            not_found(stranger.get(url))
    observations = owner.get(urls["Observation"])
    assert observations.status_code == 200
    assert record["obs-p1"] in observations.text and record["obs-p2"] in observations.text
    no_token = httpx.get(urls["Observation"])
    assert no_token.status_code == 401
    assert no_token.json()["resourceType"] == "OperationOutcome"
    assert record["obs-p1"] not in no_token.text
    assert owner.delete(location).status_code == 202
    not_found(owner.get(location))


def test_the_same_client_under_another_grant_is_a_stranger(
    secured: Secured, record: dict[str, str]
) -> None:
    client_id = secured.client("system/*.rs")
    broad = secured.http(client_id, "system/*.rs")
    location = kick_off(broad, _type="Observation")
    manifest = manifest_of(broad, location)
    url = manifest["output"][0]["url"]
    # a later token of the same client with the same grant: still the requester
    again = secured.http(client_id, "system/*.rs")
    assert again.get(location).status_code == 200
    assert again.get(url).status_code == 200
    # a token of the same client that may read only Patients may not have the Observations
    narrow = secured.http(client_id, "system/Patient.rs")
    not_found(narrow.get(location))
    not_found(narrow.get(url))
    not_found(narrow.delete(location))
    assert broad.get(location).status_code == 200


def test_a_patient_context_cannot_reach_a_system_export(
    secured: Secured, record: dict[str, str]
) -> None:
    owner = secured.http(secured.client("system/*.rs"), "system/*.rs")
    location = kick_off(owner, _type="Observation")
    manifest = manifest_of(owner, location)
    app_id = secured.client("patient/*.rs")
    app = secured.http(app_id, "patient/*.rs", patient=record["p1"])
    not_found(app.get(location))
    not_found(app.get(manifest["output"][0]["url"]))
    # its own export is bound to its patient and found by it alone
    own = kick_off(app, _type="Observation")
    mine = manifest_of(app, own)
    assert mine["requiresAccessToken"] is True
    exported = app.get(mine["output"][0]["url"]).text
    assert record["obs-p1"] in exported and record["obs-p2"] not in exported
    other_patient = secured.http(app_id, "patient/*.rs", patient=record["p2"])
    not_found(other_patient.get(own))
    not_found(owner.get(own))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'takamul.sqlite'}"
    else:
        with postgres_database() as url:
            yield url


def test_a_database_from_before_binding_gains_the_table_and_old_jobs_belong_to_no_one(
    database_url: str, tmp_path: Path
) -> None:
    """An existing database has ``export_job`` but no requester table: the exporter adds it,
    and a job stored without a requester is nobody's once access control is on."""
    store = Store(Settings(database_url=database_url, export_dir=tmp_path / "exports"))
    try:
        # a database from before binding had export_job but no requester table (the schema
        # migrations now make both, so the old shape is made here)
        with store.writer.begin() as conn:
            conn.exec_driver_sql("DROP TABLE export_requester")
        assert "export_requester" not in inspect(store.writer).get_table_names()
        store.write(
            lambda s: s.conn.execute(
                export_job.insert().values(
                    job_id="old-job",
                    status="completed",
                    request="http://example.org/fhir/$export",
                    kind="system",
                    transaction_time=time.time(),
                    manifest=b'{"output": []}',
                )
            )
        )
        exporter = Exporter(store, tmp_path / "exports")
        try:
            assert "export_requester" in inspect(store.writer).get_table_names()
            assert exporter.status("old-job").status == "completed"  # an open server
            with pytest.raises(FhirError) as refused:
                exporter.status("old-job", ExportRequester("client:c1", "system/*.rs"))
            assert refused.value.status == 404
        finally:
            exporter.shutdown()
    finally:
        store.close()
