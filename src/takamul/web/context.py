"""The person behind a page: their session (the same login sessions as ``/auth/login``), the
``AccessContext`` the API would give them, their preferences, and the CSRF token of the
session. Pages read the store under that person's ``AccessGuard`` (no second data path, no
second set of rules) and every page of patient data is audited with the person as agent.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote

from fastapi import Request

from takamul.mpi.service import ClientRegistry
from takamul.programmes.service import Programmes
from takamul.security.audit import AuditLog, AuditRecord
from takamul.security.context import BREAK_GLASS_HEADER, AccessContext, session_cookie
from takamul.security.errors import AuthError
from takamul.security.guard import AccessGuard
from takamul.security.service import Security
from takamul.store.guard import guarded, unguarded
from takamul.store.repository import Store
from takamul.web.i18n import N_
from takamul.web.prefs import (
    Preferences,
    PreferenceStore,
    defaults_for_country,
    organization_country,
)

__all__ = [
    "CsrfRefused",
    "Screen",
    "SignInNeeded",
    "Viewer",
    "WebServices",
    "csrf_token",
    "read_form",
]

_MAX_FORM = 64 * 1024


class SignInNeeded(Exception):
    """The page needs a signed-in person; the app answers with the sign-in page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class CsrfRefused(Exception):
    """A state-changing request without the session's CSRF token (or from another origin)."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """A signed-in person as a page sees them."""

    access: AccessContext
    session: str  # the session token (from the HttpOnly cookie; never put in a page)
    prefs: Preferences

    @property
    def username(self) -> str:
        return self.access.user or ""

    @property
    def csrf(self) -> str:
        return csrf_token(self.session)

    def can(self, capability_or_role: str) -> bool:
        return capability_or_role in self.access.roles or self.access.has(capability_or_role)


@dataclass(frozen=True, slots=True)
class Screen:
    """A screen's place in the navigation and who may see it."""

    key: str
    path: str  # under /app
    label: str  # English msgid; the navigation translates it
    allowed: Callable[[Viewer], bool]


def csrf_token(session: str) -> str:
    """The CSRF token of a session: derived from the secret session token by a one-way hash, so
    a page that shows it does not show the session, and no server-side state is needed."""
    return hashlib.sha256(b"takamul-csrf\x00" + session.encode()).hexdigest()


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (forms and htmx posts), last value wins.
    Read by hand: a multipart parser is not needed for the app's small forms."""
    body = await request.body()
    if len(body) > _MAX_FORM:
        return {}
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        return {}


@dataclass
class WebServices:
    """What the pages use: the store, the security service, the audit log, preferences."""

    store: Store
    security: Security
    audit: AuditLog
    prefs: PreferenceStore
    registry: ClientRegistry | None = None  # the client registry, when it runs (TAKAMUL_MPI)
    screens: list[Screen] = field(default_factory=list)
    programmes: Programmes | None = None  # the care programmes (statuses, gaps)

    def viewer(self, request: Request, break_glass: str | None = None) -> Viewer:
        """The signed-in person of ``request``; ``SignInNeeded`` without a live session.
        ``break_glass``: the stated reason when a clinician breaks the glass for this page."""
        token = session_cookie(request.headers.get("cookie", ""))
        if not token:
            raise SignInNeeded(_next(request))
        headers: dict[str, str] = {"cookie": request.headers.get("cookie", "")}
        if break_glass is not None:
            headers[BREAK_GLASS_HEADER] = quote(break_glass)
        try:
            access = self.security.authenticate(headers, self._audience(request))
        except AuthError as err:
            if err.status == 401:
                raise SignInNeeded(_next(request)) from err
            raise
        return Viewer(access, token, self.preferences(access))

    def _audience(self, request: Request) -> str:
        return self.security.fhir_base(str(request.base_url))

    def preferences(self, access: AccessContext) -> Preferences:
        saved = self.prefs.get(access.user or "")
        if saved is not None:
            return saved
        return defaults_for_country(self._facility_country(access.facility))

    def _facility_country(self, facility: str | None) -> str | None:
        if not facility:
            return None
        org_id = facility.removeprefix("Organization/")
        # the facility's own directory entry, read for the system (a login's defaults)
        with unguarded(), self.store.reading() as session:
            try:
                return organization_country(session.read("Organization", org_id).content)
            except Exception:  # an unknown facility id: defaults of no country
                return None

    @contextmanager
    def guarded(self, viewer: Viewer) -> Iterator[AccessGuard]:
        """Store work as the viewer, under the API's guard."""
        guard = AccessGuard(viewer.access, self.store)
        with guarded(guard):
            yield guard

    def check_csrf(self, request: Request, viewer: Viewer, form: Mapping[str, str]) -> None:
        sent = form.get("csrf") or request.headers.get("x-csrf-token", "")
        if not hmac.compare_digest(sent.encode(), viewer.csrf.encode()):
            raise CsrfRefused(N_("The form's security token is missing or stale; reload the page"))
        check_origin(request)

    def audit_page(
        self,
        request: Request,
        viewer: Viewer,
        interaction: str,
        *,
        status: int = 200,
        resource_type: str | None = None,
        resource_id: str | None = None,
        patient_ids: tuple[str, ...] = (),
        query: str | None = None,
        outcome_text: str | None = None,
    ) -> None:
        """One audit record of a page view or action, the person as agent."""
        self.audit.record(
            AuditRecord.for_access(
                viewer.access,
                interaction,
                status=status,
                resource_type=resource_type,
                resource_id=resource_id,
                patient_ids=patient_ids,
                query=query,
                address=request.client.host if request.client else None,
                outcome_text=outcome_text,
            )
        )


def check_origin(request: Request) -> None:
    """A browser's cross-site post names another Origin: refuse it (defence in depth beside
    the token and the SameSite=Strict cookie)."""
    origin = request.headers.get("origin")
    if origin and origin != "null":
        own = f"{request.url.scheme}://{request.url.netloc}"
        if origin.rstrip("/") != own:
            raise CsrfRefused(N_("The request came from another site"))


def _next(request: Request) -> str:
    path = request.url.path
    return path + (f"?{request.url.query}" if request.url.query else "")
