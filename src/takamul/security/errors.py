"""The two ways security refuses a request: a FHIR ``OperationOutcome`` (401/403 on the API) and
an OAuth 2.0 error (RFC 6749 §5.2) on the token endpoint, which OAuth clients expect as JSON.
"""

from __future__ import annotations

from typing import Any

from takamul.fhir.outcome import FhirError

__all__ = ["AuthError", "OAuthError", "SecurityStartupError", "forbidden", "unauthenticated"]


class AuthError(FhirError):
    """A FhirError that also carries response headers (``WWW-Authenticate`` on 401, RFC 6750)."""

    def __init__(
        self, status: int, message: str, code: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, message, code)
        self.headers = headers or {}


def unauthenticated(message: str, error: str = "invalid_token") -> AuthError:
    """401: no credentials, or credentials that do not hold; says which and what to do."""
    # RFC 6750 §3: a request without credentials gets a bare challenge, one with a bad token
    # gets error="invalid_token"; the description is ASCII-safe and quote-free for the header.
    challenge = 'Bearer realm="takamul"'
    if error:
        safe = message.replace('"', "'").encode("ascii", "replace").decode("ascii")
        challenge += f', error="{error}", error_description="{safe}"'
    return AuthError(401, message, "login", {"WWW-Authenticate": challenge})


def forbidden(message: str) -> AuthError:
    """403: who is asking is known, and is not allowed this."""
    return AuthError(403, message, "forbidden")


class OAuthError(Exception):
    """An error of the token endpoint: ``error`` is one of RFC 6749 §5.2's codes."""

    def __init__(self, error: str, description: str, status: int | None = None) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        # invalid_client is 401 (the client failed to authenticate); the others are 400.
        self.status = status or (401 if error == "invalid_client" else 400)

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "error_description": self.description}


class SecurityStartupError(RuntimeError):
    """The server must not start: production mode without what production needs."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"Refusing to start in production mode:\n{lines}")
