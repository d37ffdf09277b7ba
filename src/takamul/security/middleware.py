"""Two ASGI middlewares: security headers on every response, and a per-client token-bucket
rate limit that answers 429 with an OperationOutcome and ``Retry-After``.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, so that streamed responses (NDJSON
exports) pass through untouched and the hot read path pays only a header append.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping

import orjson
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from takamul.fhir.outcome import OutcomeIssue, operation_outcome
from takamul.security.config import ClientRate

__all__ = ["CSP_DOCS", "CSP_HTML", "RateLimit", "SecurityHeaders", "TokenBucket"]

CSP_HTML = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
# FastAPI's Swagger UI and ReDoc pages load their code from a CDN and start with an inline
# script; only those pages get this wider policy.
CSP_DOCS = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src 'self' https://fonts.gstatic.com; img-src 'self' data: https:; "
    "worker-src 'self' blob:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/redoc")


class SecurityHeaders:
    """``nosniff``, ``Referrer-Policy``, ``X-Frame-Options`` everywhere; ``Cache-Control:
    no-store`` on /auth/*; a Content-Security-Policy on HTML; HSTS when served over https."""

    def __init__(self, app: ASGIApp, https: bool = False) -> None:
        self.app = app
        self.https = https

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        https = self.https or scope.get("scheme") == "https"

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = message.get("headers") or []
                if https or path.startswith("/auth/") or _has_any(raw, _SPECIAL):
                    _add_headers(MutableHeaders(scope=message), path, https)
                else:
                    # the common answer (JSON over http, none of these set by the route):
                    # three ready-made headers appended, no header object built per response
                    message["headers"] = [*raw, *_ALWAYS]
            await send(message)

        await self.app(scope, receive, with_headers)


_ALWAYS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
# answers that need ``_add_headers``' rules: HTML (a CSP), or a route that set one of these
_SPECIAL = frozenset({name for name, _ in _ALWAYS})


def _has_any(raw: list[tuple[bytes, bytes]], names: frozenset[bytes]) -> bool:
    for name, value in raw:
        lower = name.lower()
        if lower in names or (lower == b"content-type" and value.startswith(b"text/html")):
            return True
    return False


def _add_headers(headers: MutableHeaders, path: str, https: bool) -> None:
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    if path.startswith("/auth/"):
        # Tokens and session answers must not be kept by any cache (RFC 6749 §5.1).
        headers["Cache-Control"] = "no-store"
        headers["Pragma"] = "no-cache"
    if headers.get("content-type", "").startswith("text/html"):
        headers.setdefault("Content-Security-Policy", CSP_DOCS if path in DOCS_PATHS else CSP_HTML)
    if https:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")


class TokenBucket:
    """Per-key token buckets: ``rate`` tokens a second up to ``burst``; one per request.
    ``clients`` gives some clients (keys ``client:<id>``) their own rate and burst, e.g. a
    facility system that reads in bulk (a rate of 0: not limited)."""

    _MAX_KEYS = 100_000

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float],
        clients: Mapping[str, ClientRate] | None = None,
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self.clock = clock
        self._own = {f"client:{c}": (r.rate, max(r.burst, 1)) for c, r in (clients or {}).items()}
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0 or any(rate > 0 for rate, _ in self._own.values())

    def limit(self, key: str) -> tuple[float, int]:
        """(rate, burst) of a key: its client's own, else the default."""
        return self._own.get(key, (self.rate, self.burst))

    def take(self, key: str) -> float:
        """0 if the request may go ahead, else the seconds until it may."""
        rate, burst = self.limit(key)
        if rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(burst), now))
            tokens = min(float(burst), tokens + (now - at) * rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                self._prune(now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / rate

    def _prune(self, now: float) -> None:
        # Buckets that have refilled are the same as absent ones: drop them when memory grows.
        if len(self._buckets) <= self._MAX_KEYS:
            return

        def full(key: str) -> float:
            rate, burst = self.limit(key)
            return burst / rate if rate > 0 else 0.0

        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full(k)}


class RateLimit:
    """Limit requests per client (the verified ``sub`` of a bearer token), else per address."""

    def __init__(
        self, app: ASGIApp, bucket: TokenBucket, identify: Callable[[str], str | None]
    ) -> None:
        self.app = app
        self.bucket = bucket
        self.identify = identify  # bearer token -> client id, None if it does not verify

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.bucket.enabled:
            await self.app(scope, receive, send)
            return
        wait = self.bucket.take(self._key(scope))
        if wait > 0:
            await _too_many(send, wait)
            return
        await self.app(scope, receive, send)

    def _key(self, scope: Scope) -> str:
        auth = Headers(scope=scope).get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            # Only a token that verifies names a client: a forged sub must not drain (or
            # escape) someone else's bucket.
            client = self.identify(token.strip())
            if client:
                return f"client:{client}"
        peer = scope.get("client")
        return f"addr:{peer[0] if peer else 'unknown'}"


async def _too_many(send: Send, wait: float) -> None:
    seconds = max(1, math.ceil(wait))
    body = orjson.dumps(
        operation_outcome(
            [
                OutcomeIssue(
                    "error",
                    "throttled",
                    f"Too many requests from this client; retry after {seconds} s",
                )
            ]
        )
    )
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/fhir+json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(seconds).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
