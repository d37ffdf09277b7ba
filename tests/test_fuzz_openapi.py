"""Every endpoint of the OpenAPI description fuzzed with schemathesis: whatever the generated
request, the server answers without a server error (5xx). Runs in-process on the ASGI app with
access control on and an administrator's token, so requests reach the handlers behind it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings

from takamul.api import create_app
from takamul.security.service import Security
from takamul.settings import Settings

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
