"""The ``Security`` facade the server holds: keys, clients, users and tokens over one database,
the security settings, ``authenticate``, the discovery documents and the start-up check.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from argon2 import PasswordHasher
from sqlalchemy import Engine
from starlette.requests import Request

from takamul.security.clients import CLIENT_ALGORITHMS, ClientRegistry
from takamul.security.config import SecurityConfig, fhir_base_of, server_root
from takamul.security.context import AccessContext, authenticate
from takamul.security.errors import AuthError, SecurityStartupError
from takamul.security.keys import KeyRing
from takamul.security.middleware import TokenBucket
from takamul.security.schema import create_security_tables
from takamul.security.tokens import TokenService
from takamul.security.users import UserDirectory

__all__ = ["MIN_SECRET_LENGTH", "Security"]

MIN_SECRET_LENGTH = 32
SCOPES_SUPPORTED = (
    "system/*.rs",
    "system/*.cruds",
    "system/*.read",
    "system/Observation.rs?category=laboratory",
    "user/*.rs",
    "user/*.cruds",
    "patient/*.rs",
)


class Security:
    """Authentication and authorization for one server (or one CLI command)."""

    def __init__(
        self,
        engine: Engine,
        config: SecurityConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        hasher: PasswordHasher | None = None,
        reader: Engine | None = None,
    ) -> None:
        """``engine`` writes (the store's writer); ``reader`` serves lookups (the store's
        reader on SQLite, where the writer takes the write lock at BEGIN)."""
        self.engine = engine
        self.config = config or SecurityConfig.from_env()
        self.clock = clock
        create_security_tables(engine)
        self.keys = KeyRing(engine, self.config.key_secret, clock, reader=reader)
        self.clients = ClientRegistry(engine, clock, reader)
        self.users = UserDirectory(engine, self.config, clock, hasher, reader)
        self.tokens = TokenService(self.keys, self.clients, engine, self.config, clock)
        self.limiter = TokenBucket(
            self.config.rate_limit, self.config.rate_burst, clock, self.config.rate_limits
        )

    @classmethod
    def open(cls, database_url: str, config: SecurityConfig | None = None) -> Security:
        """For the CLI: the writer engine of ``database_url`` (SQLite or PostgreSQL)."""
        from takamul.store.engine import make_engines

        writer, reader = make_engines(database_url)
        return cls(writer, config, reader=reader)

    # -- addresses --------------------------------------------------------------------

    def fhir_base(self, request_base: str) -> str:
        """Our FHIR base: configured, else from the request's root URL."""
        return fhir_base_of(self.config, request_base)

    def token_url(self, fhir_base: str) -> str:
        return server_root(fhir_base) + "/auth/token"

    # -- requests ---------------------------------------------------------------------

    def authenticate(
        self, headers: Mapping[str, str], fhir_base: str | None = None
    ) -> AccessContext:
        """The ``AccessContext`` of a request (see ``context.authenticate``); ``fhir_base`` is
        needed when the configuration has no base URL."""
        audience = fhir_base or self.config.base_url
        if audience is None:
            raise ValueError("authenticate needs fhir_base when TAKAMUL_BASE_URL is not set")
        return authenticate(headers, tokens=self.tokens, users=self.users, audience=audience)

    def request_context(self, request: Request) -> AccessContext:
        """For ``Depends(security.request_context)`` on a FastAPI route."""
        return self.authenticate(request.headers, self.fhir_base(str(request.base_url)))

    def identify(self, token: str) -> str | None:
        """The client of a bearer token that verifies (audience not checked), else None: how
        the rate limiter tells clients apart."""
        try:
            return self.tokens.verify(token, None).client_id
        except AuthError:
            return None

    def https(self, request: Request) -> bool:
        return self.config.https or request.url.scheme == "https"

    # -- discovery --------------------------------------------------------------------

    def smart_configuration(self, fhir_base: str) -> dict[str, Any]:
        """``/.well-known/smart-configuration`` (SMART App Launch v2, Backend Services)."""
        root = server_root(fhir_base)
        return {
            "issuer": root,
            "jwks_uri": f"{root}/.well-known/jwks.json",
            "token_endpoint": f"{root}/auth/token",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": list(CLIENT_ALGORITHMS),
            "scopes_supported": list(SCOPES_SUPPORTED),
            "capabilities": ["client-confidential-asymmetric", "permission-v2", "permission-v1"],
        }

    def jwks(self) -> dict[str, Any]:
        return self.keys.jwks()

    # -- start-up ---------------------------------------------------------------------

    def check_startup(self, production: bool | None = None) -> list[str]:
        """Development: make sure a signing key exists; return warnings to print.

        Production: raise ``SecurityStartupError`` listing every missing piece (key secret,
        https base URL, a sealed signing key) and every demo client or user still active.
        """
        if production is None:
            production = self.config.production
        if not production:
            return self._development()
        problems = self._secret_problems() + self._base_problems() + self._key_problems()
        demo_clients = self.clients.demo_clients()
        if demo_clients:
            problems.append(
                f"demo clients are registered ({', '.join(demo_clients)}): disable them with "
                "`takamul clients disable --id ...`"
            )
        demo_users = self.users.demo_users()
        if demo_users:
            problems.append(
                f"demo logins exist ({', '.join(demo_users)}): disable them with "
                "`takamul users disable --username ...`"
            )
        if problems:
            raise SecurityStartupError(problems)
        return []

    def _development(self) -> list[str]:
        self.keys.ensure_signing_key()
        warnings = []
        if not self.config.key_secret:
            warnings.append("signing keys are stored unsealed (set TAKAMUL_KEY_SECRET)")
        demo = self.clients.demo_clients() + self.users.demo_users()
        if demo:
            warnings.append(f"DEMO credentials are active: {', '.join(demo)}")
        return warnings

    def _secret_problems(self) -> list[str]:
        secret = self.config.key_secret
        if not secret:
            return [
                "TAKAMUL_KEY_SECRET (or TAKAMUL_KEY_SECRET_FILE) is not set: it seals the "
                'signing keys at rest; make one with `python -c "import secrets; '
                'print(secrets.token_urlsafe(32))"`'
            ]
        if len(secret) < MIN_SECRET_LENGTH:
            return [f"TAKAMUL_KEY_SECRET must have at least {MIN_SECRET_LENGTH} characters"]
        return []

    def _base_problems(self) -> list[str]:
        if not self.config.base_url:
            return [
                "TAKAMUL_BASE_URL is not set: tokens need a fixed audience, not one taken from "
                "the Host header (e.g. https://ehr.example.org/fhir)"
            ]
        if not self.config.https:
            return [f"TAKAMUL_BASE_URL must be https in production, not {self.config.base_url}"]
        return []

    def _key_problems(self) -> list[str]:
        now = self.clock()
        keys = [k for k in self.keys.keys(fresh=True) if k.active_at(now)]
        if not any(k.retired_at is None for k in keys):
            return ["no signing key: create one with `takamul keys rotate` (key secret set)"]
        unsealed = [k.kid for k in keys if not k.sealed]
        if unsealed:
            return [
                f"signing keys stored unsealed ({', '.join(unsealed)}): run `takamul keys "
                "rotate` with TAKAMUL_KEY_SECRET set, then `takamul keys retire` the old ones"
            ]
        return self.keys.check_unsealable() if self.config.key_secret else []
