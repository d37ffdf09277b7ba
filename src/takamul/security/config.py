"""The security settings (token lifetime, lockout, sessions, rate limit, production mode), read
from ``TAKAMUL_*`` environment variables beside the server's own ``Settings``.

The key secret never appears in a repr, so that logging the config cannot leak it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

__all__ = ["ClientRate", "SecurityConfig", "fhir_base_of", "parse_rate_limits", "server_root"]

_TRUE = ("1", "true", "yes", "on")
DEFAULT_AUDIT_FLUSH_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    # Production refuses to start without a key secret, an https base URL and a signing key,
    # and with any demo client or user present (see Security.check_startup).
    production: bool = False
    # The public FHIR base (e.g. https://ehr.example.org/fhir): the audience of our access
    # tokens; the token endpoint and issuer derive from it. Unset: taken from each request.
    base_url: str | None = None
    # Encrypts the server's private signing keys at rest (JWE dir/A256GCM, key by HKDF).
    key_secret: str | None = field(default=None, repr=False)
    token_lifetime: int = 300  # seconds; SMART Backend Services: SHOULD NOT exceed 5 minutes
    max_token_lifetime: int = 3600  # the most `takamul token --lifetime` may ask for
    key_grace_seconds: int = 3600  # after a rotation, older keys still verify this long
    lockout_attempts: int = 5
    lockout_minutes: float = 15
    session_hours: float = 8  # absolute lifetime of a login session
    session_idle_minutes: float = 30  # a session unused this long ends
    min_password_length: int = 12
    rate_limit: float = 100.0  # requests per second per client (0: no limit)
    rate_burst: int = 200  # bucket size: requests allowed at once after a quiet period
    # Per-client rates that replace the default (a facility system reading in bulk):
    # TAKAMUL_RATE_LIMITS="olaya-ehr=1000,lab-feed=50/100" (requests/s, optional /burst)
    rate_limits: Mapping[str, ClientRate] = field(default_factory=lambda: MappingProxyType({}))
    # The server's audit writer appends what requests recorded every this many seconds, in one
    # transaction. Each append has a fixed cost (the chain head's lock, a statement, a commit:
    # about 1.5 ms of CPU on PostgreSQL, client and server), so longer rounds cost reads less;
    # events reach the database, and other processes' searches, at most this late.
    audit_flush_seconds: float = DEFAULT_AUDIT_FLUSH_SECONDS

    @classmethod
    def from_env(cls, **overrides: object) -> SecurityConfig:
        env = os.environ
        d = cls()
        config = cls(
            production=env.get("TAKAMUL_PRODUCTION", "false").lower() in _TRUE,
            base_url=(env.get("TAKAMUL_BASE_URL") or "").rstrip("/") or None,
            key_secret=_secret(env),
            token_lifetime=int(env.get("TAKAMUL_TOKEN_LIFETIME", d.token_lifetime)),
            max_token_lifetime=int(env.get("TAKAMUL_MAX_TOKEN_LIFETIME", d.max_token_lifetime)),
            key_grace_seconds=int(env.get("TAKAMUL_KEY_GRACE_SECONDS", d.key_grace_seconds)),
            lockout_attempts=int(env.get("TAKAMUL_LOCKOUT_ATTEMPTS", d.lockout_attempts)),
            lockout_minutes=float(env.get("TAKAMUL_LOCKOUT_MINUTES", d.lockout_minutes)),
            session_hours=float(env.get("TAKAMUL_SESSION_HOURS", d.session_hours)),
            session_idle_minutes=float(
                env.get("TAKAMUL_SESSION_IDLE_MINUTES", d.session_idle_minutes)
            ),
            min_password_length=int(env.get("TAKAMUL_MIN_PASSWORD_LENGTH", d.min_password_length)),
            rate_limit=float(env.get("TAKAMUL_RATE_LIMIT", d.rate_limit)),
            rate_burst=int(env.get("TAKAMUL_RATE_BURST", d.rate_burst)),
            rate_limits=parse_rate_limits(env.get("TAKAMUL_RATE_LIMITS", "")),
            audit_flush_seconds=_audit_flush_seconds(env),
        )
        clean = {k: v for k, v in overrides.items() if v is not None}
        return replace(config, **clean)  # type: ignore[arg-type]

    @property
    def https(self) -> bool:
        return bool(self.base_url and self.base_url.startswith("https://"))


def _audit_flush_seconds(env: Mapping[str, str]) -> float:
    text = env.get("TAKAMUL_AUDIT_FLUSH_SECONDS", "").strip()
    if not text:
        return DEFAULT_AUDIT_FLUSH_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 60:
        raise ValueError(
            f"TAKAMUL_AUDIT_FLUSH_SECONDS: '{text}' is not a number of seconds above 0 and at "
            "most 60 (the default, 0.2, writes the audit log five times a second)"
        )
    return seconds


@dataclass(frozen=True, slots=True)
class ClientRate:
    """One client's own rate limit: ``rate`` requests a second (0: none), ``burst`` at once."""

    rate: float
    burst: int


def parse_rate_limits(text: str) -> Mapping[str, ClientRate]:
    """``client=rate[/burst]`` pairs separated by commas; the burst defaults to two seconds'
    worth. A ValueError names the pair that is wrong."""
    out: dict[str, ClientRate] = {}
    for pair in (p.strip() for p in text.split(",")):
        if not pair:
            continue
        client, sep, value = pair.partition("=")
        rate_text, _, burst_text = value.partition("/")
        try:
            rate = float(rate_text)
            burst = int(burst_text) if burst_text else max(1, int(rate * 2))
        except ValueError:
            rate = burst = -1
        if not sep or not client.strip() or rate < 0 or burst < 1:
            raise ValueError(
                f"TAKAMUL_RATE_LIMITS: '{pair}' is not client=requests-per-second[/burst], "
                "e.g. olaya-ehr=1000 or lab-feed=50/100"
            )
        out[client.strip()] = ClientRate(rate, burst)
    return MappingProxyType(out)


def _secret(env: os._Environ[str] | dict[str, str]) -> str | None:
    # A file (Docker/Kubernetes secrets) is preferred over a variable, which other processes of
    # the same user can read from /proc.
    path = env.get("TAKAMUL_KEY_SECRET_FILE")
    if path:
        return Path(path).read_text(encoding="utf-8").strip() or None
    return env.get("TAKAMUL_KEY_SECRET") or None


def server_root(fhir_base: str) -> str:
    """The server's root URL (our token issuer) from its FHIR base: ``https://h/fhir`` ->
    ``https://h``; a base that does not end in ``/fhir`` is its own root."""
    base = fhir_base.rstrip("/")
    return base[: -len("/fhir")] if base.endswith("/fhir") else base


def fhir_base_of(config: SecurityConfig, request_base: str) -> str:
    """The FHIR base: the configured one, else the request's root + ``/fhir`` (as the API does)."""
    return config.base_url or request_base.rstrip("/") + "/fhir"
