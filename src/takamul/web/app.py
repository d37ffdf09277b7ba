"""The web application under ``/app/``: sign-in with people's logins, preferences, navigation
and the screens (``takamul.web.screens``), over the same store, guard and audit log as the API.

Security: session cookies as ``/auth/login`` sets them (HttpOnly, SameSite=Strict); a CSRF token
on every state-changing request; the server's Content-Security-Policy without ``unsafe-inline``
(no inline script or style in any template); every page of patient data audited.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from takamul.mpi.service import ClientRegistry
from takamul.programmes.service import Programmes
from takamul.security.audit import AuditLog, AuditRecord
from takamul.security.errors import AuthError
from takamul.security.routes import clear_session_cookies, set_session_cookie
from takamul.security.service import Security
from takamul.store.repository import Store
from takamul.web.context import CsrfRefused, Screen, SignInNeeded, WebServices, read_form
from takamul.web.i18n import LANGUAGES, language
from takamul.web.pages import page
from takamul.web.prefs import Preferences, PreferenceStore
from takamul.web.render import render

__all__ = ["SCREEN_MODULES", "add_web_app", "node_modules"]

STATIC = Path(__file__).parent / "static"
# Served from npm's node_modules (installed by `make` from package-lock.json), never copied
# into the repository.
VENDOR = {"htmx.min.js": ("htmx.org", "dist/htmx.min.js")}
SCREEN_MODULES = (
    "takamul.web.screens.patients",
    "takamul.web.screens.worklist",
    "takamul.web.screens.referrals",
    "takamul.web.screens.registry",
    "takamul.web.screens.mentalhealth",
    "takamul.web.screens.caregivers",
    "takamul.web.screens.review",
    "takamul.web.screens.equity",
    "takamul.web.screens.admin",
)
_STATIC_CACHE = {"Cache-Control": "public, max-age=3600"}


def node_modules() -> Path:
    """npm's folder: ``TAKAMUL_NODE_MODULES``, else the checkout's (an editable install)."""
    configured = os.environ.get("TAKAMUL_NODE_MODULES")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[3] / "node_modules"


def _screens() -> list[Screen]:
    found = []
    for name in SCREEN_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue  # a screen not built yet
            raise
        found.append(module.SCREEN)
    return found


def add_web_app(
    app: FastAPI,
    store: Store,
    security: Security,
    audit: AuditLog,
    registry: ClientRegistry | None = None,
    programmes: Programmes | None = None,
) -> WebServices:
    prefs = PreferenceStore(store.writer, store.reader)
    web = WebServices(store, security, audit, prefs, registry)
    web.programmes = programmes
    screens = _screens()
    web.screens = screens
    router = APIRouter(prefix="/app", include_in_schema=False)
    _frame_routes(router, web, screens)
    for name in SCREEN_MODULES:
        try:
            importlib.import_module(name).register(router, web)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
    app.include_router(router)
    _handlers(app, web)
    return web


def _handlers(app: FastAPI, web: WebServices) -> None:
    @app.exception_handler(SignInNeeded)
    async def _sign_in(_: Request, err: Exception) -> Response:
        assert isinstance(err, SignInNeeded)
        return RedirectResponse(f"/app/login?next={quote(err.next_path)}", 303)

    @app.exception_handler(CsrfRefused)
    async def _csrf(request: Request, err: Exception) -> Response:
        prefs = _anonymous_prefs(request)
        html = render(
            "frame/error.html", prefs, viewer=None, screens=[], status=403, message=str(err)
        )
        return HTMLResponse(html, 403)


def _anonymous_prefs(request: Request) -> Preferences:
    """Before sign-in: ``?lang=``, else the browser's Accept-Language, else English."""
    wanted = request.query_params.get("lang")
    if wanted not in LANGUAGES:
        header = request.headers.get("accept-language", "")
        tags = [t.split(";")[0].strip().split("-")[0].lower() for t in header.split(",")]
        wanted = next((t for t in tags if t in LANGUAGES), "en")
    lang = language(wanted)
    return Preferences(lang.code, lang.default_calendar, lang.default_numerals)


def _safe_next(value: str | None) -> str:
    # only our own pages: an open redirect would turn the sign-in page into a phishing tool
    if value and value.startswith("/app/") and not value.startswith("/app//"):
        return value
    return "/app/"


def _frame_routes(router: APIRouter, web: WebServices, screens: list[Screen]) -> None:
    @router.get("/static/vendor/{name}")
    def vendor(name: str) -> Response:
        if name not in VENDOR:
            return Response(status_code=404)
        package, path = VENDOR[name]
        file = node_modules() / package / path
        if not file.is_file():
            return Response(f"{package} is not installed: run `make` (npm ci) in the checkout", 503)
        return FileResponse(file, headers=_STATIC_CACHE, media_type="text/javascript")

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        file = STATIC / name
        if "/" in name or not file.is_file():
            return Response(status_code=404)
        return FileResponse(file, headers=_STATIC_CACHE)

    @router.get("/login")
    def login_form(request: Request) -> Response:
        prefs = _anonymous_prefs(request)
        html = render(
            "frame/login.html",
            prefs,
            viewer=None,
            screens=[],
            error=None,
            next=_safe_next(request.query_params.get("next")),
        )
        return HTMLResponse(html)

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await read_form(request)
        prefs = _anonymous_prefs(request)
        nxt = _safe_next(form.get("next"))
        try:
            session = await run_in_threadpool(
                web.security.users.login, form.get("username", ""), form.get("password", "")
            )
        except AuthError:
            web.audit.record(AuditRecord("login", status=401, user=form.get("username")))
            html = render(
                "frame/login.html", prefs, viewer=None, screens=[], next=nxt, error="wrong"
            )
            return HTMLResponse(html, 401)
        web.audit.record(AuditRecord("login", status=200, user=session.user.username))
        response = RedirectResponse(nxt, 303)
        set_session_cookie(response, session, web.security.https(request))
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        viewer = web.viewer(request)
        web.check_csrf(request, viewer, await read_form(request))
        web.security.users.logout(viewer.session)
        response = RedirectResponse("/app/login", 303)
        clear_session_cookies(response)
        return response

    @router.post("/preferences")
    async def preferences(request: Request) -> Response:
        viewer = web.viewer(request)
        form = await read_form(request)
        web.check_csrf(request, viewer, form)
        chosen = viewer.prefs.changed(**form)
        web.prefs.set(viewer.username, chosen)
        return RedirectResponse(_safe_next(form.get("back")), 303)

    @router.get("/")
    def home(request: Request) -> Response:
        viewer = web.viewer(request)
        return page(web, viewer, "frame/home.html")
