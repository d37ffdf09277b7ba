"""The HTTP side of security: the token endpoint, SMART discovery, our JWK Set, login and
logout for people, and the middlewares; ``add_security_routes`` and ``add_security_middleware``
are what the API calls.

Register the routes before the FHIR routes: ``/fhir/.well-known/smart-configuration`` would
otherwise be taken by ``/fhir/{type}/{id}``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from takamul.fhir.outcome import FhirError
from takamul.security.context import SESSION_COOKIE, SESSION_COOKIE_HTTPS, session_cookie
from takamul.security.errors import AuthError, OAuthError
from takamul.security.middleware import RateLimit, SecurityHeaders
from takamul.security.service import Security
from takamul.security.users import Session

__all__ = [
    "Security",
    "add_security_middleware",
    "add_security_routes",
    "clear_session_cookies",
    "set_session_cookie",
]

FHIR_JSON = "application/fhir+json"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_MAX_FORM = 64 * 1024  # a token request is a few kilobytes; more is not one


def add_security_routes(app: FastAPI, security: Security) -> None:
    """``POST /auth/token``, ``GET /.well-known/smart-configuration`` (also under /fhir),
    ``GET /.well-known/jwks.json``, ``POST /auth/login``, ``POST /auth/logout``,
    ``GET /auth/me``; and the handler that adds ``WWW-Authenticate`` to 401s."""
    app.state.security = security

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, err: Exception) -> Response:
        assert isinstance(err, AuthError)
        return _fhir(err.status, err.outcome(), err.headers)

    @app.post("/auth/token", tags=["security"])
    async def token(request: Request) -> Response:
        fhir_base = security.fhir_base(str(request.base_url))
        try:
            form = _form(request.headers.get("content-type", ""), await request.body())
            result = await run_in_threadpool(
                security.tokens.exchange, form, security.token_url(fhir_base), fhir_base
            )
        except OAuthError as err:
            return _oauth(err.status, err.body())
        return _oauth(200, result)

    def smart_configuration(request: Request) -> Response:
        body = security.smart_configuration(security.fhir_base(str(request.base_url)))
        return Response(orjson.dumps(body), 200, media_type="application/json")

    app.add_api_route(
        "/.well-known/smart-configuration", smart_configuration, methods=["GET"], tags=["security"]
    )
    app.add_api_route(
        "/fhir/.well-known/smart-configuration",
        smart_configuration,
        methods=["GET"],
        tags=["security"],
    )

    @app.get("/.well-known/jwks.json", tags=["security"])
    def jwks() -> Response:
        return Response(orjson.dumps(security.jwks()), 200, media_type="application/jwk-set+json")

    @app.post("/auth/login", tags=["security"])
    async def login(request: Request) -> Response:
        username, password = _credentials(await request.body())
        session = await run_in_threadpool(security.users.login, username, password)
        user = session.user
        body = {
            "username": user.username,
            "display_name": user.display_name,
            "roles": list(user.roles),
            "facility": user.facility,
            "patient": user.patient,
            "expires": int(session.expires),
        }
        response = Response(orjson.dumps(body), 200, _NO_STORE, media_type="application/json")
        set_session_cookie(response, session, security.https(request))
        return response

    @app.post("/auth/logout", tags=["security"])
    def logout(request: Request) -> Response:
        token = session_cookie(request.headers.get("cookie", ""))
        if token:
            security.users.logout(token)
        response = Response(None, 204, _NO_STORE)
        clear_session_cookies(response)
        return response

    @app.get("/auth/me", tags=["security"])
    def me(request: Request) -> Response:
        ctx = security.request_context(request)
        body = {
            "who": ctx.who,
            "client_id": ctx.client_id,
            "user": ctx.user,
            "display_name": ctx.display_name,
            "roles": sorted(ctx.roles),
            "facility": ctx.facility,
            "patient": ctx.patient,
            "scope": str(ctx.scopes),
            "capabilities": sorted(ctx.capabilities),
        }
        return Response(orjson.dumps(body), 200, _NO_STORE, media_type="application/json")


def set_session_cookie(response: Response, session: Session, https: bool) -> None:
    """The session's cookie, for the API's login and the web app's sign-in alike: HttpOnly,
    SameSite=Strict, and over https ``__Host-`` and Secure."""
    response.set_cookie(
        SESSION_COOKIE_HTTPS if https else SESSION_COOKIE,
        session.token,
        max_age=int(session.expires - session.created),
        path="/",
        secure=https,
        httponly=True,
        samesite="strict",
    )


def clear_session_cookies(response: Response) -> None:
    """Both cookie names removed (a browser may hold either)."""
    for name in (SESSION_COOKIE, SESSION_COOKIE_HTTPS):
        response.delete_cookie(name, path="/", secure=name == SESSION_COOKIE_HTTPS, httponly=True)


def add_security_middleware(app: FastAPI, security: Security) -> None:
    """Security headers (outermost, so that 429s get them too) and the rate limit."""
    app.add_middleware(RateLimit, bucket=security.limiter, identify=security.identify)
    app.add_middleware(SecurityHeaders, https=security.config.https)


def _form(content_type: str, body: bytes) -> dict[str, str]:
    """The token request's form fields (RFC 6749 §3.2: form-encoded, each field once)."""
    if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise OAuthError(
            "invalid_request", "Send the token request as application/x-www-form-urlencoded"
        )
    if len(body) > _MAX_FORM:
        raise OAuthError("invalid_request", "The token request is too large")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as err:
        raise OAuthError("invalid_request", "The token request is not UTF-8") from err
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError("invalid_request", f"'{name}' appears more than once")
        form[name] = value
    return form


def _credentials(body: bytes) -> tuple[str, str]:
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise FhirError(400, 'Send {"username": ..., "password": ...} as JSON') from err
    if not isinstance(data, dict):
        raise FhirError(400, 'Send {"username": ..., "password": ...} as JSON')
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        raise FhirError(400, "username and password are required (strings)", "required")
    return username, password


def _oauth(status: int, body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), status, _NO_STORE, media_type="application/json")


def _fhir(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type=FHIR_JSON)
