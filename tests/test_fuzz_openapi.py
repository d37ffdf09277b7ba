"""Every endpoint of the OpenAPI description fuzzed with schemathesis: whatever the generated
request, the server answers without a server error (5xx). Runs in-process on the ASGI app with
access control on and an administrator's token, so requests reach the handlers behind it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from takamul.api import create_app
from takamul.security.service import Security
from takamul.settings import Settings

# the fuzzer is one client sending thousands of requests: no rate limit in its way
os.environ["TAKAMUL_RATE_LIMIT"] = "1000000"
os.environ["TAKAMUL_RATE_BURST"] = "1000000"
_DIR = Path(tempfile.mkdtemp(prefix="takamul-fuzz-"))
_URL = f"sqlite:///{_DIR / 'takamul.sqlite'}"
APP = create_app(Settings(database_url=_URL, export_dir=_DIR / "exports"))
_SECURITY: Security = APP.state.security


def _admin_token() -> str:
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-384")
    key.ensure_kid()
    jwks = {"keys": [{**key.as_dict(private=False), "alg": "ES384"}]}
    _SECURITY.clients.add(
        "fuzz-admin", "fuzzer", jwks, "system/*.cruds", None, ("administrator", "registry-reviewer")
    )
    return _SECURITY.tokens.mint("fuzz-admin", "system/*.cruds", "http://testserver/fhir", 3600)


TOKEN = _admin_token()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_error(case: Any) -> None:
    response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
    )


HUGE = "99999999999999999999999"


@pytest.mark.parametrize(
    "path",
    [
        f"/fhir/Patient?_offset={HUGE}",
        f"/fhir/_history?_offset={HUGE}",
        f"/fhir/Patient/_history?_count={HUGE}",
        f"/fhir/Patient/x/_history/{HUGE}",
        "/fhir/Patient?_count=²",
        f"/mpi/reviews?_offset={HUGE}",
        f"/mpi/events?_count={HUGE}",
        f"/mpi/reviews/{HUGE}",
        f"/fhir/AuditEvent?_offset={HUGE}",
        f"/fhir/AuditEvent/{HUGE}",
    ],
)
def test_numbers_beyond_a_database_integer_are_client_errors(path: str) -> None:
    """Found by the fuzzer: such numbers overflowed the database driver (500)."""
    client = TestClient(APP, raise_server_exceptions=False)
    response = client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code in (400, 404), response.text
    assert response.json()["resourceType"] == "OperationOutcome"
