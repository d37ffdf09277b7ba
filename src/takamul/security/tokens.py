"""The token endpoint of SMART Backend Services and our access tokens.

A client authenticates with a JWT it signs (RS384 or ES384) with a key registered for it
(``client_credentials`` + ``private_key_jwt``, RFC 7523); the server answers with a short-lived
access token (an RFC 9068 ``at+jwt``) signed by its current key, carrying the granted scopes,
the client's facility and roles. ``verify`` checks such a token on every API request.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError
from sqlalchemy import Engine, delete, insert
from sqlalchemy.exc import IntegrityError

from takamul.security.clients import CLIENT_ALGORITHMS, Client, ClientRegistry
from takamul.security.config import SecurityConfig, server_root
from takamul.security.errors import OAuthError, unauthenticated
from takamul.security.keys import SIGNING_ALGORITHMS, KeyRing
from takamul.security.schema import assertion_jti
from takamul.security.scopes import ScopeError, ScopeSet

__all__ = [
    "ASSERTION_TYPE",
    "MAX_ASSERTION_SECONDS",
    "AccessToken",
    "TokenService",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_SECONDS = 300  # SMART: an assertion's exp is no more than five minutes ahead
CLOCK_SKEW = 60  # seconds of disagreement tolerated between a client's clock and ours
ACCESS_TOKEN_TYPE = "at+jwt"  # RFC 9068: keeps our other JWTs from passing as access tokens
_CACHE_SIZE = 10_000  # verified tokens kept (each until it expires)
# How long a client's registration (active or disabled) is taken as read: disabling a client
# refuses the tokens it holds on every server within this many seconds.
CLIENT_RECHECK_SECONDS = 1.0

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A verified access token."""

    token_id: str  # jti, for the audit log (never the token itself)
    client_id: str
    scopes: ScopeSet
    facility: str | None
    roles: tuple[str, ...]
    patient: str | None  # the launch patient of patient/ scopes
    issued_at: int
    expires_at: int
    kid: str
    issuer: str
    audience: str


class TokenService:
    def __init__(
        self,
        keys: KeyRing,
        clients: ClientRegistry,
        engine: Engine,
        config: SecurityConfig,
        clock: Clock,
    ) -> None:
        self.keys = keys
        self.clients = clients
        self.engine = engine
        self.config = config
        self.clock = clock
        # verified tokens by their text, each until its exp (never past it)
        self._cache: dict[str, AccessToken] = {}
        # client id -> (active, when read): disabling a client ends its tokens' use
        self._clients: dict[str, tuple[bool, float]] = {}
        self._lock = threading.Lock()

    # -- the token endpoint -----------------------------------------------------------

    def exchange(self, form: Mapping[str, str], token_url: str, fhir_base: str) -> dict[str, Any]:
        """Answer a token request (its form fields); raises ``OAuthError``."""
        grant_type = form.get("grant_type")
        if not grant_type:
            raise OAuthError("invalid_request", "grant_type is required (client_credentials)")
        if grant_type != "client_credentials":
            raise OAuthError(
                "unsupported_grant_type",
                f"grant_type '{grant_type}' is not supported; use client_credentials",
            )
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError(
                "invalid_client", f"client_assertion_type must be {ASSERTION_TYPE} (SMART)"
            )
        assertion = form.get("client_assertion")
        if not assertion:
            raise OAuthError("invalid_client", "client_assertion (a signed JWT) is required")
        client = self.authenticate_client(assertion, token_url)
        if form.get("client_id") not in (None, client.client_id):
            raise OAuthError("invalid_client", "client_id does not match the assertion's iss")
        granted = self._grant(client, form.get("scope", ""))
        token, expires_in = self.issue(client, granted, fhir_base)
        return {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": expires_in,
            "scope": str(granted),
        }

    def authenticate_client(self, assertion: str, token_url: str) -> Client:
        """The client whose signed assertion this is, after every check SMART asks for."""
        header, unverified = _peek(assertion)
        alg = header.get("alg")
        if alg not in CLIENT_ALGORITHMS:
            raise OAuthError(
                "invalid_client", f"client_assertion must be signed with RS384 or ES384, not {alg}"
            )
        if str(header.get("typ", "JWT")).upper() != "JWT":
            raise OAuthError("invalid_client", "client_assertion header typ must be JWT")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise OAuthError("invalid_client", "client_assertion header needs the kid of its key")
        client_id = unverified.get("iss")
        if not isinstance(client_id, str) or not client_id:
            raise OAuthError("invalid_client", "client_assertion needs iss = your client_id")
        client = self.clients.get(client_id)
        if client is None:
            raise OAuthError("invalid_client", f"Client '{client_id}' is not registered")
        if not client.active:
            raise OAuthError("invalid_client", f"Client '{client_id}' is disabled")
        key = client.key(kid)
        if key is None:
            raise OAuthError(
                "invalid_client",
                f"Client '{client_id}' has no registered key with kid '{kid}' "
                f"(registered: {', '.join(client.kids)})",
            )
        try:
            claims = jwt.decode(assertion, key, algorithms=[alg]).claims
        except JoseError as err:
            raise OAuthError(
                "invalid_client",
                f"The client_assertion signature does not verify with key '{kid}' ({err.error})",
            ) from err
        self._check_assertion(claims, client_id, token_url)
        return client

    def _check_assertion(self, claims: dict[str, Any], client_id: str, token_url: str) -> None:
        now = self.clock()
        if claims.get("sub") != client_id:
            raise OAuthError("invalid_client", "client_assertion sub must equal iss (client_id)")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if token_url.rstrip("/") not in [str(a).rstrip("/") for a in audiences]:
            raise OAuthError(
                "invalid_client", f"client_assertion aud must be the token endpoint {token_url}"
            )
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise OAuthError("invalid_client", "client_assertion needs exp (seconds since epoch)")
        if exp + CLOCK_SKEW < now:
            raise OAuthError("invalid_client", "client_assertion has expired")
        if exp > now + MAX_ASSERTION_SECONDS + CLOCK_SKEW:
            raise OAuthError(
                "invalid_client", "client_assertion exp must be at most five minutes ahead"
            )
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > now + CLOCK_SKEW:
            raise OAuthError("invalid_client", "client_assertion is not valid yet (nbf)")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise OAuthError("invalid_client", "client_assertion needs a unique jti (1-256 chars)")
        self._claim_jti(client_id, jti, float(exp) + CLOCK_SKEW, now)

    def _claim_jti(self, client_id: str, jti: str, expires: float, now: float) -> None:
        # The primary key makes a second use fail inside the database, across workers.
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(assertion_jti).where(assertion_jti.c.expires < now))
                conn.execute(
                    insert(assertion_jti).values(client_id=client_id, jti=jti, expires=expires)
                )
        except IntegrityError as err:
            raise OAuthError(
                "invalid_client", "client_assertion jti was already used (replay refused)"
            ) from err

    def _grant(self, client: Client, scope_text: str) -> ScopeSet:
        if not scope_text.strip():
            raise OAuthError("invalid_scope", "scope is required, e.g. system/*.rs")
        try:
            requested = ScopeSet.parse(scope_text)
        except ScopeError as err:
            raise OAuthError("invalid_scope", str(err)) from err
        granted, refused = client.scopes.grant(requested)
        if refused:
            raise OAuthError(
                "invalid_scope",
                f"Client '{client.client_id}' may not be granted {' '.join(refused)} "
                f"(allowed: {client.scopes})",
            )
        if "patient" in granted.contexts:
            raise OAuthError(
                "invalid_scope",
                "patient/ scopes need a launch patient, which Backend Services do not have; "
                "ask for system/ scopes",
            )
        return granted

    # -- issuing ----------------------------------------------------------------------

    def issue(
        self,
        client: Client,
        granted: ScopeSet,
        fhir_base: str,
        lifetime: int | None = None,
        patient: str | None = None,
    ) -> tuple[str, int]:
        """(signed access token, seconds it lives) for ``client`` with ``granted`` scopes."""
        seconds = lifetime or self.config.token_lifetime
        key, private = self.keys.signing_key()
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": server_root(fhir_base),
            "sub": client.client_id,
            "client_id": client.client_id,
            "aud": fhir_base.rstrip("/"),
            "scope": str(granted),
            "iat": now,
            "exp": now + seconds,
            "jti": secrets.token_urlsafe(16),
        }
        if client.facility:
            claims["facility"] = client.facility
        if client.roles:
            claims["roles"] = list(client.roles)
        if patient:
            claims["patient"] = patient
        header = {"alg": key.algorithm, "kid": key.kid, "typ": ACCESS_TOKEN_TYPE}
        return jwt.encode(header, claims, private, algorithms=[key.algorithm]), seconds

    def mint(
        self,
        client_id: str,
        scopes: str,
        fhir_base: str,
        lifetime: int | None = None,
        patient: str | None = None,
    ) -> str:
        """An access token for a registered client without an assertion (``takamul token``):
        still never more than the client's allowed scopes, never longer than the maximum."""
        client = self.clients.get(client_id)
        if client is None:
            raise OAuthError("invalid_client", f"Client '{client_id}' is not registered")
        if not client.active:
            raise OAuthError("invalid_client", f"Client '{client_id}' is disabled")
        if lifetime is not None and not 0 < lifetime <= self.config.max_token_lifetime:
            raise OAuthError(
                "invalid_request",
                f"lifetime must be 1 to {self.config.max_token_lifetime} seconds",
            )
        try:
            requested = ScopeSet.parse(scopes)
        except ScopeError as err:
            raise OAuthError("invalid_scope", str(err)) from err
        granted, refused = client.scopes.grant(requested)
        if refused or not granted:
            raise OAuthError(
                "invalid_scope",
                f"Client '{client_id}' may not be granted {' '.join(refused) or 'nothing'} "
                f"(allowed: {client.scopes})",
            )
        if "patient" in granted.contexts and not patient:
            raise OAuthError("invalid_scope", "patient/ scopes need --patient (the Patient id)")
        return self.issue(client, granted, fhir_base, lifetime, patient)[0]

    # -- verifying --------------------------------------------------------------------

    def verify(self, token: str, audience: str | None) -> AccessToken:
        """The access token, verified: signature by a key not retired, typ, exp, iss and aud
        (``audience`` = our FHIR base; None only to learn the client for rate limiting).

        Raises a 401 ``AuthError`` that says what is wrong.
        """
        cached = self._cache.get(token)
        if cached is not None and self._still_valid(cached):
            checked = cached
        else:
            checked = self._verify(token)
            self._keep(token, checked)
        self._check_audience(checked, audience)
        if not self._client_active(checked.client_id):
            raise unauthenticated(
                f"Client '{checked.client_id}' is disabled; its tokens are no longer accepted"
            )
        return checked

    def _keep(self, token: str, checked: AccessToken) -> None:
        with self._lock:
            if len(self._cache) >= _CACHE_SIZE:
                now = self.clock()
                expired = [t for t, a in self._cache.items() if a.expires_at <= now]
                for text in expired or [next(iter(self._cache))]:
                    del self._cache[text]
            self._cache[token] = checked

    def _still_valid(self, token: AccessToken) -> bool:
        return self.clock() < token.expires_at and self.keys.verification_key(token.kid) is not None

    def _client_active(self, client_id: str) -> bool:
        """The client is not disabled, as read at most ``CLIENT_RECHECK_SECONDS`` ago (one
        primary-key lookup a second per client). A token we signed for a client that is not
        registered keeps what it was issued with."""
        now = self.clock()
        known = self._clients.get(client_id)
        if known is not None and 0 <= now - known[1] < CLIENT_RECHECK_SECONDS:
            return known[0]
        client = self.clients.get(client_id)
        active = client is None or client.active
        with self._lock:
            if len(self._clients) >= _CACHE_SIZE:
                self._clients.clear()
            self._clients[client_id] = (active, now)
        return active

    def _verify(self, token: str) -> AccessToken:
        try:
            compact = jws.extract_compact(token.encode("ascii"))
        except (JoseError, ValueError, UnicodeEncodeError) as err:
            raise unauthenticated("The bearer token is not a JWT") from err
        header = compact.protected
        alg = header.get("alg")
        if alg not in SIGNING_ALGORITHMS:
            raise unauthenticated(f"Access tokens are signed with ES384 or RS384, not {alg}")
        if header.get("typ") != ACCESS_TOKEN_TYPE:
            raise unauthenticated("The bearer token is not an access token of this server")
        kid = header.get("kid")
        key = self.keys.verification_key(kid) if isinstance(kid, str) else None
        if key is None:
            raise unauthenticated(
                "The access token was signed by a key this server does not know or has "
                "retired; get a new token"
            )
        if key.algorithm != alg:
            raise unauthenticated(f"Key {kid} signs with {key.algorithm}, not {alg}")
        try:
            claims = jwt.decode(token, key.public, algorithms=[key.algorithm]).claims
        except JoseError as err:
            raise unauthenticated("The access token signature does not verify") from err
        return self._access_token(claims, str(kid))

    def _access_token(self, claims: dict[str, Any], kid: str) -> AccessToken:
        exp = claims.get("exp")
        if not isinstance(exp, int):
            raise unauthenticated("The access token has no exp")
        if self.clock() >= exp:
            raise unauthenticated("The access token has expired; get a new one")
        try:
            scopes = ScopeSet.parse(str(claims.get("scope", "")))
        except ScopeError as err:
            raise unauthenticated(f"The access token's scope is not valid: {err}") from err
        roles = claims.get("roles", [])
        return AccessToken(
            token_id=str(claims.get("jti", "")),
            client_id=str(claims.get("sub", "")),
            scopes=scopes,
            facility=_optional(claims.get("facility")),
            roles=tuple(str(r) for r in roles) if isinstance(roles, list) else (),
            patient=_optional(claims.get("patient")),
            issued_at=int(claims.get("iat", 0)),
            expires_at=exp,
            kid=kid,
            issuer=str(claims.get("iss", "")),
            audience=str(claims.get("aud", "")),
        )

    def _check_audience(self, token: AccessToken, audience: str | None) -> None:
        if audience is None:
            return
        if token.audience != audience.rstrip("/"):
            raise unauthenticated(
                f"The access token is for {token.audience}, not this server ({audience})"
            )
        if token.issuer != server_root(audience):
            raise unauthenticated(
                f"The access token was issued by {token.issuer}, not {server_root(audience)}"
            )


def _peek(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims before verification: only to find the client and its key."""
    try:
        compact = jws.extract_compact(assertion.encode("ascii"))
        claims = json.loads(compact.payload)
    except (JoseError, ValueError, UnicodeEncodeError) as err:
        raise OAuthError("invalid_client", "client_assertion is not a signed JWT") from err
    if not isinstance(claims, dict):
        raise OAuthError("invalid_client", "client_assertion claims are not a JSON object")
    return dict(compact.protected), claims


def _optional(value: Any) -> str | None:
    return str(value) if value else None
