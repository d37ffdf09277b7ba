"""Authentication and authorization: SMART Backend Services end to end over HTTP (in process),
the refusals it owes, scopes and roles, people's logins, and the safe defaults."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from argon2 import PasswordHasher
from argon2.profiles import CHEAPEST
from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey
from sqlalchemy import inspect, select
from typer.testing import CliRunner

from takamul.fhir.outcome import FhirError
from takamul.security.cli import clients_app, keys_app, users_app
from takamul.security.cli import demo as demo_command
from takamul.security.cli import token as token_command
from takamul.security.config import SecurityConfig
from takamul.security.context import AccessContext, context_for_user
from takamul.security.errors import AuthError, OAuthError, SecurityStartupError
from takamul.security.roles import ROLES, facility_patient_searches, scopes_for_roles
from takamul.security.routes import Security, add_security_middleware, add_security_routes
from takamul.security.schema import security_metadata, security_user, signing_key
from takamul.security.scopes import ScopeError, ScopeSet, combine_restrictions, parse_scope
from takamul.security.users import UserDirectory
from takamul.store.engine import make_engines

BASE = "http://testserver"
FHIR = f"{BASE}/fhir"
TOKEN_URL = f"{BASE}/auth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PASSWORD = "correct horse battery staple"


class Clock:
    """A clock the tests move by hand (lockout periods, expiry, rotation grace)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def observation(oid: str, category: str, patient: str = "p1", system: str = CATEGORY) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [{"coding": [{"system": system, "code": category}]}],
        "code": {"text": "test"},
        "subject": {"reference": f"Patient/{patient}"},
    }


OBSERVATIONS = {
    "lab": observation("lab", "laboratory"),
    "vitals": observation("vitals", "vital-signs"),
}


def make_security(url: str, clock: Clock, **config: Any) -> Security:
    writer, reader = make_engines(url)
    return Security(
        writer,
        SecurityConfig(**config),
        clock=clock,
        hasher=PasswordHasher.from_parameters(CHEAPEST),  # fast; the default is tested apart
        reader=reader,
    )


def make_app(security: Security) -> FastAPI:
    app = FastAPI()
    add_security_routes(app, security)
    add_security_middleware(app, security)

    @app.exception_handler(FhirError)
    async def _fhir(_: Any, err: Exception) -> Any:
        from fastapi.responses import JSONResponse

        assert isinstance(err, FhirError)
        return JSONResponse(err.outcome(), err.status)

    @app.get("/fhir/Observation/{oid}")
    def read(oid: str, ctx: AccessContext = Depends(security.request_context)) -> dict:
        resource = OBSERVATIONS[oid]
        ctx.require("Observation", "r", resource)
        return {"id": oid, "who": ctx.who, "break_glass": ctx.break_glass}

    @app.get("/page")
    def page() -> HTMLResponse:
        return HTMLResponse("<p>hello</p>")

    return app


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def security(tmp_path: Path, clock: Clock) -> Iterator[Security]:
    sec = make_security(f"sqlite:///{tmp_path / 'sec.sqlite'}", clock)
    sec.check_startup(production=False)  # creates the first signing key
    yield sec
    sec.engine.dispose()


@pytest.fixture
def http(security: Security) -> Iterator[TestClient]:
    with TestClient(make_app(security), base_url=BASE) as client:
        yield client


def client_key(alg: str) -> ECKey | RSAKey:
    key: ECKey | RSAKey = (
        ECKey.generate_key("P-384") if alg == "ES384" else RSAKey.generate_key(2048)
    )
    key.ensure_kid()
    return key


def public_jwks(key: ECKey | RSAKey, alg: str) -> dict:
    return {"keys": [{**key.as_dict(private=False), "alg": alg}]}


def register(
    security: Security,
    alg: str = "ES384",
    client_id: str = "olaya-ehr",
    scopes: str = "system/*.rs system/Observation.cruds",
) -> ECKey | RSAKey:
    key = client_key(alg)
    security.clients.add(client_id, "Olaya EHR", public_jwks(key, alg), scopes, "phc-1")
    return key


def assertion(
    key: ECKey | RSAKey | OctKey,
    clock: Clock,
    client_id: str = "olaya-ehr",
    alg: str = "ES384",
    **overrides: Any,
) -> str:
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "exp": int(clock.now) + 240,
        "jti": str(uuid.uuid4()),
    }
    claims.update(overrides)
    header = {"alg": alg, "kid": key.kid, "typ": "JWT"}
    return jwt.encode(header, claims, key, algorithms=[alg])


def token_request(http: TestClient, signed: str, scope: str = "system/*.rs") -> Any:
    return http.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": signed,
        },
    )


def get_token(http: TestClient, key: ECKey | RSAKey, clock: Clock, alg: str = "ES384") -> str:
    response = token_request(http, assertion(key, clock, alg=alg))
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


# -- SMART Backend Services, end to end ------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_backend_services_flow(
    http: TestClient, security: Security, clock: Clock, alg: str
) -> None:
    key = register(security, alg)
    config = http.get("/fhir/.well-known/smart-configuration").json()
    assert config["token_endpoint"] == TOKEN_URL

    response = token_request(http, assertion(key, clock, alg=alg), "system/Observation.rs")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "system/Observation.rs"

    token = body["access_token"]
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["typ"] == "at+jwt" and header["alg"] == "ES384" and header["kid"]
    claims = security.tokens.verify(token, FHIR)
    assert claims.client_id == "olaya-ehr" and claims.facility == "phc-1"
    assert claims.expires_at - claims.issued_at == 300

    read = http.get("/fhir/Observation/lab", headers=bearer(token))
    assert read.status_code == 200, read.text
    assert read.json()["who"] == "client:olaya-ehr"
    me = http.get("/auth/me", headers=bearer(token)).json()
    assert me["facility"] == "phc-1" and me["scope"] == "system/Observation.rs"


def test_no_token_is_401_with_a_challenge(http: TestClient) -> None:
    response = http.get("/fhir/Observation/lab")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    issue = response.json()["issue"][0]
    assert issue["code"] == "login" and "Authorization: Bearer" in issue["diagnostics"]
    wrong_scheme = http.get("/fhir/Observation/lab", headers={"Authorization": "Basic eDp5"})
    assert wrong_scheme.status_code == 401


def test_expired_token_refused(http: TestClient, security: Security, clock: Clock) -> None:
    token = get_token(http, register(security), clock)
    assert http.get("/fhir/Observation/lab", headers=bearer(token)).status_code == 200
    clock.advance(301)
    response = http.get("/fhir/Observation/lab", headers=bearer(token))
    assert response.status_code == 401
    assert "expired" in response.json()["issue"][0]["diagnostics"]
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_token_of_unknown_key_refused(http: TestClient, clock: Clock) -> None:
    stranger = ECKey.generate_key("P-384", auto_kid=True)
    claims = {
        "iss": BASE,
        "sub": "olaya-ehr",
        "aud": FHIR,
        "scope": "system/*.cruds",
        "exp": int(clock.now) + 300,
        "jti": "x",
    }
    token = jwt.encode(
        {"alg": "ES384", "kid": stranger.kid, "typ": "at+jwt"}, claims, stranger, ["ES384"]
    )
    response = http.get("/fhir/Observation/lab", headers=bearer(token))
    assert response.status_code == 401
    assert "does not know" in response.json()["issue"][0]["diagnostics"]


def test_forged_signature_refused(http: TestClient, security: Security, clock: Clock) -> None:
    token = get_token(http, register(security), clock)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["scope"] = "system/*.cruds"  # escalate, keep the old signature
    forged = f"{header}.{b64(claims)}.{signature}"
    response = http.get("/fhir/Observation/lab", headers=bearer(forged))
    assert response.status_code == 401
    assert "signature" in response.json()["issue"][0]["diagnostics"]


def test_token_for_another_audience_refused(
    http: TestClient, security: Security, clock: Clock
) -> None:
    register(security)
    other = security.tokens.mint("olaya-ehr", "system/*.rs", "https://elsewhere.example/fhir")
    response = http.get("/fhir/Observation/lab", headers=bearer(other))
    assert response.status_code == 401
    assert "elsewhere.example" in response.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("alg", ["HS256", "none"])
def test_symmetric_and_unsigned_access_tokens_refused(
    http: TestClient, security: Security, clock: Clock, alg: str
) -> None:
    kid = security.keys.signing_key()[0].kid
    claims = {"iss": BASE, "sub": "x", "aud": FHIR, "scope": "system/*.cruds"}
    claims["exp"] = int(clock.now) + 300
    if alg == "none":
        token = f"{b64({'alg': 'none', 'kid': kid, 'typ': 'at+jwt'})}.{b64(claims)}."
    else:
        # An HMAC "signed" with the public key: the classic algorithm-confusion attack.
        public = json.dumps(security.jwks()["keys"][0]).encode()
        token = jwt.encode(
            {"alg": "HS256", "kid": kid, "typ": "at+jwt"},
            claims,
            OctKey.import_key(public),
            algorithms=["HS256"],
        )
    response = http.get("/fhir/Observation/lab", headers=bearer(token))
    assert response.status_code == 401
    assert alg in response.json()["issue"][0]["diagnostics"]


def test_assertion_replay_refused(http: TestClient, security: Security, clock: Clock) -> None:
    signed = assertion(register(security), clock)
    assert token_request(http, signed).status_code == 200
    again = token_request(http, signed)
    assert again.status_code == 401
    assert again.json()["error"] == "invalid_client"
    assert "already used" in again.json()["error_description"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"aud": f"{BASE}/other/token"}, "aud must be the token endpoint"),
        ({"sub": "someone-else"}, "sub must equal iss"),
        ({"exp": 1_800_000_000 + 3600}, "at most five minutes"),
        ({"exp": 1_800_000_000 - 120}, "expired"),
        ({"jti": ""}, "jti"),
    ],
)
def test_bad_assertion_claims_refused(
    http: TestClient, security: Security, clock: Clock, overrides: dict, message: str
) -> None:
    response = token_request(http, assertion(register(security), clock, **overrides))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert message in response.json()["error_description"]


def test_assertion_with_unregistered_kid_or_other_key_refused(
    http: TestClient, security: Security, clock: Clock
) -> None:
    register(security)
    impostor = ECKey.generate_key("P-384", auto_kid=True)
    response = token_request(http, assertion(impostor, clock))
    assert response.json()["error"] == "invalid_client"
    assert "no registered key" in response.json()["error_description"]
    # Right kid, wrong key: the signature does not verify.
    registered = security.clients.get("olaya-ehr")
    assert registered is not None
    impostor_same_kid = ECKey.generate_key("P-384", {"kid": registered.kids[0]})
    response = token_request(http, assertion(impostor_same_kid, clock))
    assert "signature" in response.json()["error_description"]


@pytest.mark.parametrize("alg", ["HS256", "none", "RS256"])
def test_assertion_algorithms_other_than_rs384_es384_refused(
    http: TestClient, security: Security, clock: Clock, alg: str
) -> None:
    register(security)
    claims = {"iss": "olaya-ehr", "sub": "olaya-ehr", "aud": TOKEN_URL, "jti": "j"}
    claims["exp"] = int(clock.now) + 60
    if alg == "none":
        signed = f"{b64({'alg': 'none', 'kid': 'k'})}.{b64(claims)}."
    elif alg == "HS256":
        signed = jwt.encode({"alg": alg, "kid": "k"}, claims, OctKey.import_key("s" * 32), [alg])
    else:
        rsa = RSAKey.generate_key(2048)
        signed = jwt.encode({"alg": alg, "kid": "k"}, claims, rsa, [alg])
    response = token_request(http, signed)
    assert response.status_code == 401
    assert "RS384 or ES384" in response.json()["error_description"]


def test_disabled_client_refused(http: TestClient, security: Security, clock: Clock) -> None:
    key = register(security)
    assert security.clients.set_active("olaya-ehr", False)
    response = token_request(http, assertion(key, clock))
    assert response.status_code == 401
    assert "disabled" in response.json()["error_description"]


def test_scope_escalation_is_invalid_scope(
    http: TestClient, security: Security, clock: Clock
) -> None:
    key = register(security, scopes="system/Observation.rs?category=laboratory")
    narrower = token_request(
        http,
        assertion(key, clock),
        f"system/Observation.r?category={CATEGORY}|laboratory",
    )
    assert narrower.status_code == 200, narrower.text
    for wider in ("system/Observation.rs", "system/*.rs", "system/Observation.cruds"):
        response = token_request(http, assertion(key, clock), wider)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_scope", wider
    malformed = token_request(http, assertion(key, clock), "system/Observation.sr")
    assert malformed.json()["error"] == "invalid_scope"
    patient_scope = token_request(http, assertion(key, clock), "patient/Observation.rs")
    assert patient_scope.json()["error"] == "invalid_scope"


def test_token_request_errors(http: TestClient, security: Security, clock: Clock) -> None:
    key = register(security)
    wrong_grant = http.post(
        "/auth/token", data={"grant_type": "password", "username": "a", "password": "b"}
    )
    assert wrong_grant.status_code == 400
    assert wrong_grant.json()["error"] == "unsupported_grant_type"
    no_type = http.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "client_assertion": assertion(key, clock)},
    )
    assert no_type.json()["error"] == "invalid_client"
    as_json = http.post("/auth/token", json={"grant_type": "client_credentials"})
    assert as_json.json()["error"] == "invalid_request"
    unknown = token_request(http, assertion(key, clock, client_id="nobody"))
    assert "not registered" in unknown.json()["error_description"]


def test_granular_scope_enforced_on_read(
    http: TestClient, security: Security, clock: Clock
) -> None:
    register(security, scopes="system/Observation.rs?category=laboratory")
    token = security.tokens.mint("olaya-ehr", "system/Observation.rs?category=laboratory", FHIR)
    assert http.get("/fhir/Observation/lab", headers=bearer(token)).status_code == 200
    refused = http.get("/fhir/Observation/vitals", headers=bearer(token))
    assert refused.status_code == 403
    assert refused.json()["issue"][0]["code"] == "forbidden"


# -- key rotation ------------------------------------------------------------------------------


def test_key_rotation_grace_then_retirement(
    http: TestClient, security: Security, clock: Clock
) -> None:
    register(security)
    old_kid = security.keys.signing_key()[0].kid
    old_token = security.tokens.mint("olaya-ehr", "system/*.rs", FHIR, lifetime=3600)

    new = security.keys.rotate(grace_seconds=600)
    assert new.kid != old_kid and security.keys.signing_key()[0].kid == new.kid
    assert {k["kid"] for k in http.get("/.well-known/jwks.json").json()["keys"]} == {
        old_kid,
        new.kid,
    }
    new_token = security.tokens.mint("olaya-ehr", "system/*.rs", FHIR, lifetime=3600)
    assert security.tokens.verify(new_token, FHIR).kid == new.kid

    clock.advance(300)  # within the grace period: the old key still verifies
    assert http.get("/fhir/Observation/lab", headers=bearer(old_token)).status_code == 200
    clock.advance(301)  # past it: retired
    response = http.get("/fhir/Observation/lab", headers=bearer(old_token))
    assert response.status_code == 401
    assert "retired" in response.json()["issue"][0]["diagnostics"]
    assert [k["kid"] for k in http.get("/.well-known/jwks.json").json()["keys"]] == [new.kid]
    assert http.get("/fhir/Observation/lab", headers=bearer(new_token)).status_code == 200

    assert security.keys.retire(new.kid)  # compromise: at once, cached tokens included
    assert http.get("/fhir/Observation/lab", headers=bearer(new_token)).status_code == 401


def test_jwks_and_smart_configuration(http: TestClient) -> None:
    jwks = http.get("/.well-known/jwks.json").json()
    assert jwks["keys"] and all("d" not in k for k in jwks["keys"])
    assert jwks["keys"][0]["crv"] == "P-384" and jwks["keys"][0]["alg"] == "ES384"
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        config = http.get(path).json()
        assert config["token_endpoint"] == TOKEN_URL
        assert config["jwks_uri"] == f"{BASE}/.well-known/jwks.json"
        assert config["grant_types_supported"] == ["client_credentials"]
        assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
        assert set(config["token_endpoint_auth_signing_alg_values_supported"]) == {
            "RS384",
            "ES384",
        }
        assert {"client-confidential-asymmetric", "permission-v2"} <= set(config["capabilities"])
        assert "system/*.rs" in config["scopes_supported"]


def test_signing_keys_sealed_with_the_secret(tmp_path: Path, clock: Clock) -> None:
    url = f"sqlite:///{tmp_path / 'sealed.sqlite'}"
    sealed = make_security(url, clock, key_secret="k" * 40)
    key = sealed.keys.create()
    with sealed.engine.connect() as conn:
        stored = conn.execute(select(signing_key.c.private_jwk)).scalar_one()
    assert not stored.startswith("{") and '"d"' not in stored  # a JWE, not the key
    assert sealed.keys.signing_key()[0].kid == key.kid
    wrong = make_security(url, clock, key_secret="w" * 40)
    assert "cannot be unsealed" in " ".join(wrong.keys.check_unsealable())


# -- client registration ----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Key size should be")
@pytest.mark.parametrize(
    ("jwk", "message"),
    [
        (lambda: ECKey.generate_key("P-384").as_dict(private=True), "private key"),
        (lambda: ECKey.generate_key("P-256").as_dict(private=False), "P-384"),
        (lambda: RSAKey.generate_key(1024).as_dict(private=False), "2048"),
        (lambda: OctKey.generate_key(256).as_dict(private=True), "Symmetric"),
        (lambda: {**ECKey.generate_key("P-384").as_dict(private=False), "alg": "ES256"}, "ES256"),
    ],
)
def test_registration_refuses_unfit_keys(security: Security, jwk: Any, message: str) -> None:
    with pytest.raises(FhirError, match=message):
        security.clients.add("c1", "C", {"keys": [jwk()]}, "system/*.rs")


def test_registration_from_pem_and_checks(security: Security) -> None:
    key = ECKey.generate_key("P-384")
    pem = key.as_pem(private=False).decode()
    client = security.clients.add("pem-client", "PEM", pem, "system/*.rs", roles=["analyst"])
    assert client.kids == [key.thumbprint()] and client.roles == ("analyst",)
    with pytest.raises(FhirError, match="already registered"):
        security.clients.add("pem-client", "PEM", pem, "system/*.rs")
    with pytest.raises(FhirError, match="not a SMART scope"):
        security.clients.add("c2", "C", pem, "everything")
    with pytest.raises(FhirError, match="Unknown role"):
        security.clients.add("c3", "C", pem, "system/*.rs", roles=["superuser"])


# -- scopes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "context", "rtype", "perms"),
    [
        ("system/*.cruds", "system", "*", "cruds"),
        ("user/Observation.rs", "user", "Observation", "rs"),
        ("patient/*.r", "patient", "*", "r"),
        ("patient/*.read", "patient", "*", "rs"),  # SMART v1
        ("user/Observation.write", "user", "Observation", "cud"),
        ("system/*.*", "system", "*", "cruds"),
    ],
)
def test_scope_parsing(text: str, context: str, rtype: str, perms: str) -> None:
    scope = parse_scope(text)
    assert not isinstance(scope, str)
    assert (scope.context, scope.resource_type, scope.permissions) == (context, rtype, perms)


@pytest.mark.parametrize(
    "text",
    [
        "system/*.sr",  # order
        "system/*.rr",
        "system/*.x",
        "system/Nonsense.rs",
        "device/*.rs",
        "system/Observation.rs?code:in=http://x",  # modifiers
        "system/Observation.rs?subject.name=x",  # chains
        "system/Observation.rs?category=",
        "everything",
    ],
)
def test_malformed_scopes_refused(text: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(text)


def test_granular_restriction_parsed_and_canonical() -> None:
    scope = parse_scope(f"patient/Observation.rs?category={CATEGORY}|laboratory")
    assert not isinstance(scope, str)
    assert scope.restrictions == (("category", f"{CATEGORY}|laboratory"),)
    assert str(scope) == f"patient/Observation.rs?category={CATEGORY}|laboratory"
    assert parse_scope("openid") == "openid"


@pytest.mark.parametrize(
    ("scopes", "rtype", "interaction", "allowed"),
    [
        ("system/*.cruds", "Patient", "d", True),
        ("system/*.rs", "Patient", "r", True),
        ("system/*.rs", "Patient", "u", False),
        ("system/*.rs", "Observation", "c", False),
        ("user/Observation.rs", "Observation", "s", True),
        ("user/Observation.rs", "Condition", "r", False),
        ("user/Observation.c", "Observation", "r", False),
        ("patient/*.r", "Observation", "r", True),
        ("patient/*.r", "Observation", "s", False),
        ("user/*.read", "Encounter", "s", True),
        ("user/*.write", "Encounter", "r", False),
        ("user/*.write", "Encounter", "d", True),
        ("openid fhirUser", "Patient", "r", False),
    ],
)
def test_allow_matrix(scopes: str, rtype: str, interaction: str, allowed: bool) -> None:
    assert ScopeSet.parse(scopes).allows(rtype, interaction) is allowed


@pytest.mark.parametrize(
    ("scope", "resource", "allowed"),
    [
        ("Observation.rs?category=laboratory", observation("a", "laboratory"), True),
        ("Observation.rs?category=laboratory", observation("a", "vital-signs"), False),
        (f"Observation.rs?category={CATEGORY}|laboratory", observation("a", "laboratory"), True),
        (
            f"Observation.rs?category={CATEGORY}|laboratory",
            observation("a", "laboratory", system="http://local/categories"),
            False,
        ),
        ("Observation.rs?category=laboratory,vital-signs", observation("a", "vital-signs"), True),
        ("Observation.rs?category=laboratory&status=final", observation("a", "laboratory"), True),
        (
            "Observation.rs?category=laboratory&status=amended",
            observation("a", "laboratory"),
            False,
        ),
        ("Observation.rs?subject=Patient/p1", observation("a", "laboratory"), True),
        ("Observation.rs?subject=Patient/p2", observation("a", "laboratory"), False),
        ("*.rs?category=laboratory", observation("a", "laboratory"), True),
        ("Observation.rs", {"resourceType": "Condition", "id": "c"}, False),
    ],
)
def test_granular_scopes_against_resources(scope: str, resource: dict, allowed: bool) -> None:
    assert ScopeSet.parse(f"user/{scope}").allows("Observation", "r", resource) is allowed


def test_search_restrictions() -> None:
    lab = "user/Observation.rs?category=laboratory"
    vitals = "user/Observation.rs?category=vital-signs"
    assert ScopeSet.parse(lab).search_restrictions("Observation") == [("category", "laboratory")]
    assert ScopeSet.parse(f"{lab} {vitals}").search_restrictions("Observation") == [
        ("category", "laboratory,vital-signs")
    ]
    assert ScopeSet.parse(f"{lab} user/Observation.s").search_restrictions("Observation") == []
    assert ScopeSet.parse(f"{lab} user/*.s").search_restrictions("Observation") == []
    odd = ScopeSet.parse(f"{lab} user/Observation.rs?status=final")
    with pytest.raises(AuthError) as refused:
        odd.search_restrictions("Observation")
    assert refused.value.status == 403
    with pytest.raises(AuthError):
        ScopeSet.parse("user/Observation.r").search_restrictions("Observation")


def test_combine_restrictions() -> None:
    a = (("category", "laboratory"), ("patient", "Patient/p"))
    b = (("category", "vital-signs"), ("patient", "Patient/p"))
    assert combine_restrictions([a, b]) == [
        ("category", "laboratory,vital-signs"),
        ("patient", "Patient/p"),
    ]
    assert combine_restrictions([a, (("patient", "Patient/p"),)]) == [("patient", "Patient/p")]
    assert combine_restrictions([a, ()]) == []
    assert combine_restrictions([]) is None
    assert combine_restrictions([(("code", "x"),), (("status", "final"),)]) is None


@pytest.mark.parametrize(
    ("allowed", "requested", "granted"),
    [
        ("system/*.rs", "system/Observation.r", True),
        ("system/*.rs", "system/*.cruds", False),
        ("system/*.rs", "user/*.rs", False),
        ("system/Observation.rs", "system/*.rs", False),
        ("system/Observation.rs", "system/Observation.rs?category=laboratory", True),
        ("system/Observation.rs?category=laboratory", "system/Observation.rs", False),
        (
            "system/Observation.rs?category=laboratory",
            f"system/Observation.s?category={CATEGORY}|laboratory",
            True,
        ),
        (
            f"system/Observation.rs?category={CATEGORY}|laboratory",
            "system/Observation.rs?category=laboratory",
            False,
        ),
        ("system/*.read", "system/Patient.rs", True),
        ("openid system/*.rs", "openid", True),
        ("system/*.rs", "offline_access", False),
    ],
)
def test_requested_scopes_granted_only_when_covered(
    allowed: str, requested: str, granted: bool
) -> None:
    result, refused = ScopeSet.parse(allowed).grant(ScopeSet.parse(requested))
    assert (not refused) is granted
    assert bool(result) is granted


# -- roles and contexts ---------------------------------------------------------------------------


def test_every_role_parses_and_analyst_reads_no_clinical_data() -> None:
    for name in ROLES:
        assert scopes_for_roles([name])
    analyst = scopes_for_roles(["analyst"])
    for rtype in ("Patient", "Observation", "Condition", "Person"):
        assert not analyst.allows(rtype, "r") and not analyst.allows(rtype, "s")
    assert "export-deidentified" in ROLES["analyst"].capabilities
    admin = scopes_for_roles(["administrator"])
    assert admin.allows("Organization", "c") and not admin.allows("Patient", "r")
    clinician = scopes_for_roles(["clinician"])
    assert clinician.allows("Observation", "u") and not clinician.allows("Observation", "d")


def test_caregiver_sees_only_the_patient_it_acts_for(security: Security) -> None:
    user = security.users.add(
        "son", PASSWORD, ["caregiver"], patient="Patient/fatimah", display_name="Son"
    )
    ctx = context_for_user(user)
    assert ctx.patient == "fatimah"
    assert ctx.allows("Observation", "r", observation("o", "laboratory", patient="fatimah"))
    assert not ctx.allows("Observation", "r", observation("o", "laboratory", patient="other"))
    assert ctx.allows("Patient", "r", {"resourceType": "Patient", "id": "fatimah"})
    assert not ctx.allows("Patient", "r", {"resourceType": "Patient", "id": "other"})
    assert not ctx.allows("Person", "r", {"resourceType": "Person", "id": "x"})
    assert not ctx.allows("Observation", "u", observation("o", "laboratory", patient="fatimah"))
    # R4's Patient compartment places an Observation by subject (or performer).
    assert ctx.search_restrictions("Observation") == [("subject", "Patient/fatimah")]
    assert ctx.search_restrictions("Encounter") == [("patient", "Patient/fatimah")]
    assert ctx.search_restrictions("Patient") == [("_id", "fatimah")]
    assert ctx.search_restrictions("Organization") == []
    with pytest.raises(AuthError):
        ctx.search_restrictions("Measure")  # outside the compartment, not reference data


def test_facility_searches() -> None:
    searches = facility_patient_searches("phc-1")
    assert ("Encounter", [("service-provider", "Organization/phc-1")], "patient") in searches
    assert ("Patient", [("organization", "Organization/phc-1")], "_id") in searches


def test_break_the_glass(http: TestClient, security: Security) -> None:
    security.users.add("dr", PASSWORD, ["clinician"], facility="phc-1")
    security.users.add("chw", PASSWORD, ["community-health-worker"], facility="phc-1")
    doctor = TestClient(http.app, base_url=BASE)
    doctor.post("/auth/login", json={"username": "dr", "password": PASSWORD})
    reason = "Unconscious patient in the emergency room"
    ok = doctor.get("/fhir/Observation/lab", headers={"X-Break-Glass-Reason": reason})
    assert ok.status_code == 200 and ok.json()["break_glass"] == reason
    arabic = doctor.get(
        "/fhir/Observation/lab", headers={"X-Break-Glass-Reason": quote("حالة طارئة خطيرة")}
    )
    assert arabic.json()["break_glass"] == "حالة طارئة خطيرة"
    short = doctor.get("/fhir/Observation/lab", headers={"X-Break-Glass-Reason": "because"})
    assert short.status_code == 403
    worker = TestClient(http.app, base_url=BASE)
    worker.post("/auth/login", json={"username": "chw", "password": PASSWORD})
    refused = worker.get("/fhir/Observation/lab", headers={"X-Break-Glass-Reason": reason})
    assert refused.status_code == 403
    assert "clinicians only" in refused.json()["issue"][0]["diagnostics"]


# -- people's logins ------------------------------------------------------------------------------


def test_argon2id_hash_with_the_default_profile(security: Security) -> None:
    directory = UserDirectory(security.engine, security.config, security.clock)
    directory.add("nurse", PASSWORD, ["clinician"], facility="phc-1")
    with security.engine.connect() as conn:
        stored = conn.execute(
            select(security_user.c.password_hash).where(security_user.c.username == "nurse")
        ).scalar_one()
    assert stored.startswith("$argon2id$") and "m=65536,t=3,p=4" in stored
    assert directory.login("nurse", PASSWORD).user.username == "nurse"


def test_login_sets_a_strict_cookie_and_logout_ends_it(
    http: TestClient, security: Security
) -> None:
    security.users.add("dr", PASSWORD, ["clinician"], facility="phc-1", display_name="Dr H")
    response = http.post("/auth/login", json={"username": "DR", "password": PASSWORD})
    assert response.status_code == 200, response.text
    cookie = response.headers["set-cookie"]
    assert "takamul_session=" in cookie and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain http here; https gets Secure and __Host-
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["roles"] == ["clinician"]
    me = http.get("/auth/me").json()
    assert me["who"] == "user:dr" and me["facility"] == "phc-1"
    assert http.get("/fhir/Observation/lab").status_code == 200
    assert http.post("/auth/logout").status_code == 204
    http.cookies.clear()
    assert http.get("/auth/me").status_code == 401


def test_wrong_password_and_unknown_user_look_the_same(
    http: TestClient, security: Security
) -> None:
    security.users.add("dr", PASSWORD, ["clinician"], facility="phc-1")
    wrong = http.post("/auth/login", json={"username": "dr", "password": "not the password"})
    unknown = http.post("/auth/login", json={"username": "nobody", "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert "set-cookie" not in wrong.headers


def test_lockout_after_five_failures_and_release(security: Security, clock: Clock) -> None:
    users = security.users
    users.add("dr", PASSWORD, ["clinician"], facility="phc-1")
    for _ in range(4):
        with pytest.raises(AuthError):
            users.login("dr", "wrong password!!")
    users.login("dr", PASSWORD)  # success resets the count
    for _ in range(4):
        with pytest.raises(AuthError):
            users.login("dr", "wrong password!!")
    users.login("dr", PASSWORD)  # still not locked: the failures were not consecutive
    for _ in range(5):
        with pytest.raises(AuthError):
            users.login("dr", "wrong password!!")
    with pytest.raises(AuthError):
        users.login("dr", PASSWORD)  # locked: even the right password is refused
    clock.advance(14 * 60)
    with pytest.raises(AuthError):
        users.login("dr", PASSWORD)
    clock.advance(61)
    assert users.login("dr", PASSWORD).user.username == "dr"
    user = users.get("dr")
    assert user is not None and user.failed_attempts == 0 and user.locked_until is None


def test_session_expiry_idle_and_absolute(security: Security, clock: Clock) -> None:
    users = security.users
    users.add("dr", PASSWORD, ["clinician"], facility="phc-1")
    session = users.login("dr", PASSWORD)
    assert users.session_user(session.token).username == "dr"
    clock.advance(31 * 60)
    with pytest.raises(AuthError, match="without use"):
        users.session_user(session.token)
    session = users.login("dr", PASSWORD)
    for _ in range(19):  # busy for almost 8 hours, never idle
        clock.advance(25 * 60)
        users.session_user(session.token)
    clock.advance(25 * 60)
    with pytest.raises(AuthError, match="ended"):
        users.session_user(session.token)
    users.set_active("dr", False)
    with pytest.raises(AuthError):
        users.login("dr", PASSWORD)


def test_login_rules(security: Security) -> None:
    with pytest.raises(FhirError, match="at least 12"):
        security.users.add("dr", "short", ["clinician"], facility="phc-1")
    with pytest.raises(FhirError, match="facility"):
        security.users.add("dr", PASSWORD, ["clinician"])
    with pytest.raises(FhirError, match="patient"):
        security.users.add("son", PASSWORD, ["caregiver"])
    with pytest.raises(FhirError, match="Unknown role"):
        security.users.add("x1", PASSWORD, ["root"])
    with pytest.raises(FhirError, match="Username"):
        security.users.add("a b", PASSWORD, ["analyst"])


# -- safe defaults --------------------------------------------------------------------------------


def test_rate_limit_per_client(tmp_path: Path, clock: Clock) -> None:
    security = make_security(
        f"sqlite:///{tmp_path / 'rl.sqlite'}", clock, rate_limit=1.0, rate_burst=2
    )
    security.check_startup(False)
    register(security)
    register(security, client_id="other-ehr")
    one = security.tokens.mint("olaya-ehr", "system/*.rs", FHIR)
    two = security.tokens.mint("other-ehr", "system/*.rs", FHIR)
    with TestClient(make_app(security), base_url=BASE) as http:
        for _ in range(2):
            assert http.get("/fhir/Observation/lab", headers=bearer(one)).status_code == 200
        limited = http.get("/fhir/Observation/lab", headers=bearer(one))
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "1"
        assert limited.json()["issue"][0]["code"] == "throttled"
        assert limited.headers["x-content-type-options"] == "nosniff"
        # Another client has its own bucket; time refills this one.
        assert http.get("/fhir/Observation/lab", headers=bearer(two)).status_code == 200
        clock.advance(1.0)
        assert http.get("/fhir/Observation/lab", headers=bearer(one)).status_code == 200
    security.engine.dispose()


def test_security_headers(http: TestClient, tmp_path: Path, clock: Clock) -> None:
    api = http.get("/.well-known/smart-configuration")
    assert api.headers["x-content-type-options"] == "nosniff"
    assert api.headers["referrer-policy"] == "no-referrer"
    assert "strict-transport-security" not in api.headers
    token = http.post("/auth/token", data={"grant_type": "client_credentials"})
    assert token.headers["cache-control"] == "no-store"
    page = http.get("/page")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    secure = make_security(
        f"sqlite:///{tmp_path / 'tls.sqlite'}", clock, base_url="https://ehr.example/fhir"
    )
    secure.check_startup(False)
    with TestClient(make_app(secure), base_url="https://ehr.example") as tls:
        response = tls.get("/.well-known/smart-configuration")
        assert response.headers["strict-transport-security"].startswith("max-age=")
        assert response.json()["token_endpoint"] == "https://ehr.example/auth/token"
        secure.users.add("dr", PASSWORD, ["clinician"], facility="phc-1")
        login = tls.post("/auth/login", json={"username": "dr", "password": PASSWORD})
        cookie = login.headers["set-cookie"]
        assert cookie.startswith("__Host-takamul_session=") and "Secure" in cookie
    secure.engine.dispose()


def test_production_mode_refuses_without_secrets(tmp_path: Path, clock: Clock) -> None:
    url = f"sqlite:///{tmp_path / 'prod.sqlite'}"
    bare = make_security(url, clock)
    with pytest.raises(SecurityStartupError) as refused:
        bare.check_startup(production=True)
    text = str(refused.value)
    assert "TAKAMUL_KEY_SECRET" in text and "TAKAMUL_BASE_URL" in text
    assert "no signing key" in text

    prod = make_security(
        url, clock, production=True, key_secret="s" * 43, base_url="https://ehr.example/fhir"
    )
    prod.keys.create()
    prod.clients.add(
        "demo-ehr", "Demo", public_jwks(client_key("ES384"), "ES384"), "system/*.rs", demo=True
    )
    with pytest.raises(SecurityStartupError, match="demo-ehr"):
        prod.check_startup()
    prod.clients.set_active("demo-ehr", False)
    assert prod.check_startup() == []

    http_base = make_security(url, clock, key_secret="s" * 43, base_url="http://ehr/fhir")
    with pytest.raises(SecurityStartupError, match="https"):
        http_base.check_startup(production=True)
    short = make_security(url, clock, key_secret="short", base_url="https://ehr/fhir")
    with pytest.raises(SecurityStartupError, match="at least 32"):
        short.check_startup(production=True)
    unsealed_db = make_security(f"sqlite:///{tmp_path / 'plain.sqlite'}", clock)
    unsealed_db.keys.create()
    unsealed = make_security(
        f"sqlite:///{tmp_path / 'plain.sqlite'}",
        clock,
        key_secret="s" * 43,
        base_url="https://ehr/fhir",
    )
    with pytest.raises(SecurityStartupError, match="unsealed"):
        unsealed.check_startup(production=True)


def test_secret_never_in_repr() -> None:
    config = SecurityConfig(key_secret="super-secret-value-" * 3)
    assert "super-secret" not in repr(config)


# -- the operator's commands ----------------------------------------------------------------------


def test_cli_register_mint_users_keys_demo(tmp_path: Path) -> None:
    import typer

    app = typer.Typer()
    app.add_typer(clients_app, name="clients")
    app.add_typer(users_app, name="users")
    app.add_typer(keys_app, name="keys")
    app.command("token")(token_command)
    app.command("demo")(demo_command)
    db = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    runner = CliRunner()

    def run(*args: str, stdin: str | None = None) -> str:
        no_db = args[:2] in (("clients", "keygen"), ("clients", "assertion"))
        with_db = list(args) if no_db else [*args, "--db", db]
        result = runner.invoke(app, with_db, input=stdin)
        assert result.exit_code == 0, result.output
        return result.stdout

    prefix = tmp_path / "keys" / "olaya"
    run("clients", "keygen", "--out", str(prefix))
    assert (Path(f"{prefix}.private.jwk").stat().st_mode & 0o777) == 0o600
    run(
        "clients",
        "add",
        "--id",
        "olaya-ehr",
        "--name",
        "Olaya",
        "--jwks",
        f"{prefix}.jwks.json",
        "--scopes",
        "system/*.rs",
        "--facility",
        "phc-1",
    )
    assert "olaya-ehr" in run("clients", "list")
    minted = run("token", "--client", "olaya-ehr", "--scope", "system/Patient.rs").strip()
    security = Security.open(db, SecurityConfig())
    verified = security.tokens.verify(minted, "http://127.0.0.1:8080/fhir")
    assert verified.client_id == "olaya-ehr" and str(verified.scopes) == "system/Patient.rs"

    # The assertion a facility system would make, accepted by the token endpoint.
    signed = run("clients", "assertion", "--client", "olaya-ehr", "--key", f"{prefix}.private.jwk")
    with TestClient(make_app(security), base_url="http://127.0.0.1:8080") as http:
        response = token_request(http, signed.strip())
        assert response.status_code == 200, response.text

    escalate = runner.invoke(
        app, ["token", "--client", "olaya-ehr", "--scope", "system/*.cruds", "--db", db]
    )
    assert escalate.exit_code == 1 and "may not be granted" in escalate.output

    run("users", "add", "--username", "dr", "--roles", "clinician", "--facility", "phc-1",
        "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert security.users.login("dr", PASSWORD).user.roles == ("clinician",)
    old = security.keys.signing_key()[0].kid
    run("keys", "rotate")
    run("keys", "list")
    assert len(security.keys.keys(fresh=True)) == 2  # another process rotated: re-read
    assert security.keys.signing_key()[0].kid != old

    run("demo", "--out", str(tmp_path / "demo"))
    assert set(security.clients.demo_clients()) == {"demo-facility-ehr", "demo-ministry"}
    assert "demo-clinician" in security.users.demo_users()
    with pytest.raises(SecurityStartupError):
        Security(
            security.engine,
            SecurityConfig(key_secret="s" * 40, base_url="https://e/fhir"),
        ).check_startup(production=True)
    security.engine.dispose()


# -- PostgreSQL -----------------------------------------------------------------------------------


# PostgreSQL is part of the test environment (.ci/run starts it): no skip when it is down
def test_postgresql_schema_and_flow(clock: Clock) -> None:
    from tests.server import postgres_database

    with postgres_database() as url:
        security = make_security(url, clock)
        try:
            tables = set(inspect(security.engine).get_table_names())
            assert set(security_metadata.tables) <= tables
            security.check_startup(False)
            key = register(security, "RS384")
            with TestClient(make_app(security), base_url=BASE) as http:
                signed = assertion(key, clock, alg="RS384")
                token = get_token_from(http, signed)
                assert http.get("/fhir/Observation/lab", headers=bearer(token)).status_code == 200
                assert token_request(http, signed).json()["error"] == "invalid_client"  # replay
            security.users.add("dr", PASSWORD, ["clinician"], facility="phc-1")
            for _ in range(5):
                with pytest.raises(AuthError):
                    security.users.login("dr", "wrong password!!")
            with pytest.raises(AuthError):
                security.users.login("dr", PASSWORD)
            clock.advance(15 * 60 + 1)
            session = security.users.login("dr", PASSWORD)
            assert security.users.session_user(session.token).username == "dr"
            with pytest.raises(OAuthError):
                security.tokens.mint("olaya-ehr", "system/*.cruds", FHIR)
        finally:
            security.engine.dispose()
            security.users.reader.dispose()


def get_token_from(http: TestClient, signed: str) -> str:
    response = token_request(http, signed)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def test_security_headers_once_each_and_never_over_the_routes_own() -> None:
    """The common answer gets the three headers appended ready-made; one that sets one of them
    itself, or is HTML, goes the long way (its own value kept, a CSP added)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from takamul.security.middleware import SecurityHeaders

    def answer(headers: list[tuple[bytes, bytes]], path: str = "/fhir/Patient/p") -> list[Any]:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"{}"})

        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "path": path, "scheme": "http", "headers": []}
        middleware = SecurityHeaders(app)
        # a loop of its own in a thread of its own: another test may leave one running here
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, middleware(scope, None, send)).result()  # type: ignore[arg-type]
        return [(k.decode().lower(), v.decode()) for k, v in sent[0]["headers"]]

    json_answer = answer([(b"content-type", b"application/fhir+json")])
    names = [k for k, _ in json_answer]
    for name in ("x-content-type-options", "referrer-policy", "x-frame-options"):
        assert names.count(name) == 1, name
    own = dict(answer([(b"x-frame-options", b"SAMEORIGIN")]))
    assert own["x-frame-options"] == "SAMEORIGIN" and own["referrer-policy"] == "no-referrer"
    html = dict(answer([(b"content-type", b"text/html; charset=utf-8")], "/app/"))
    assert "frame-ancestors 'none'" in html["content-security-policy"]
    assert "content-security-policy" not in dict(json_answer)
