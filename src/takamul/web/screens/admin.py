"""Administration: logins, Backend Services clients, the server's signing keys and the audit log,
through the security service the CLI uses (``Security.users``, ``.clients``, ``.keys``) and the
audit log's own search and chain verification (as ``takamul audit verify`` does).

Each part needs its capability (manage-users, manage-clients, manage-keys, audit-review); every
change needs the session's CSRF token and is written to the audit log with the administrator as
agent, as is every look at the audit log.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from takamul.fhir.outcome import FhirError
from takamul.security.audit import AuditQuery, VerifyResult
from takamul.security.clients import Client
from takamul.security.keys import SigningKey
from takamul.security.roles import ROLES
from takamul.security.users import User
from takamul.web.context import Screen, Viewer, WebServices, read_form
from takamul.web.i18n import N_
from takamul.web.pages import page

__all__ = ["SCREEN", "SECTIONS", "register"]

CAPABILITIES = ("manage-users", "manage-clients", "manage-keys", "audit-review")
SCREEN = Screen(
    "admin",
    "/admin",
    N_("Administration"),
    allowed=lambda viewer: any(viewer.access.has(c) for c in CAPABILITIES),
)


@dataclass(frozen=True, slots=True)
class Section:
    key: str
    label: str
    capability: str


SECTIONS = (
    Section("logins", N_("Logins"), "manage-users"),
    Section("clients", N_("Clients"), "manage-clients"),
    Section("keys", N_("Signing keys"), "manage-keys"),
    Section("audit", N_("Audit log"), "audit-review"),
)
ROLE_LABELS = {
    "clinician": N_("Clinician"),
    "community-health-worker": N_("Community health worker"),
    "care-coordinator": N_("Care coordinator"),
    "analyst": N_("Equity analyst"),
    "registry-reviewer": N_("Registry reviewer"),
    "administrator": N_("Administrator"),
    "caregiver": N_("Caregiver acting for a patient"),
}
# What a change did, for the message after it (?done=...)
DONE = {
    "created": N_("The login was created."),
    "disabled": N_("The login was disabled; its sessions have ended."),
    "enabled": N_("The login was enabled."),
    "unlocked": N_("The login was unlocked."),
    "client-disabled": N_("The client was disabled."),
    "client-enabled": N_("The client was enabled."),
    "rotated": N_("A new signing key signs from now on; older keys verify until their end."),
}
INTERACTIONS = (
    "read",
    "search",
    "create",
    "update",
    "delete",
    "everything",
    "export",
    "login",
    "user-create",
    "user-disable",
    "user-enable",
    "user-unlock",
    "client-disable",
    "client-enable",
    "key-rotate",
)
AUDIT_PAGE = 100
OUTCOME_LABELS = {
    "0": N_("Success"),
    "4": N_("Refused"),
    "8": N_("Server error"),
    "12": N_("Failure"),
}


def _sections(viewer: Viewer) -> list[Section]:
    return [s for s in SECTIONS if viewer.access.has(s.capability)]


# -- what the pages show ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRow:
    kid: str
    algorithm: str
    created: str
    state: str  # signing | verifying | retired
    until: str | None  # the end of verification of a key being retired


def key_rows(keys: list[SigningKey], now: float) -> list[KeyRow]:
    """The keys newest first, the one that signs named (the newest never scheduled to retire)."""
    signing = next((k.kid for k in keys if k.retired_at is None), None)
    rows = []
    for k in keys:
        if k.kid == signing:
            state = "signing"
        elif k.active_at(now):
            state = "verifying"
        else:
            state = "retired"
        until = _iso(k.retired_at) if k.retired_at is not None else None
        rows.append(KeyRow(k.kid, k.algorithm, _iso(k.created), state, until))
    return rows


@dataclass(frozen=True, slots=True)
class EventRow:
    """An AuditEvent as the audit page lists it."""

    seq: str
    day: str  # ISO date, for fmt.date
    clock: str  # HH:MM:SS UTC
    interaction: str
    what: str
    patients: str
    who: str
    outcome: str
    break_glass: str | None  # the stated reason


def event_row(event: dict[str, Any]) -> EventRow:
    recorded = str(event.get("recorded", ""))
    return EventRow(
        seq=str(event.get("id", "")),
        day=recorded[:10],
        clock=recorded[11:19],
        interaction=next(
            (
                str(c.get("code", ""))
                for c in event.get("subtype") or ()
                if "takamul" in str(c.get("system", ""))
            ),
            "",
        ),
        what=_what(event),
        patients=", ".join(_patients(event)),
        who=" / ".join(
            str(((a.get("who") or {}).get("identifier") or {}).get("value"))
            for a in event.get("agent") or ()
            if ((a.get("who") or {}).get("identifier") or {}).get("value")
        ),
        outcome=str(event.get("outcome", "")),
        break_glass=_break_glass(event),
    )


def _what(event: dict[str, Any]) -> str:
    for entity in event.get("entity") or ():
        what = (entity.get("what") or {}).get("reference")
        if what:
            return str(what)
        code = (entity.get("type") or {}).get("code")
        query = entity.get("query")
        if query:
            text = base64.b64decode(query).decode(errors="replace")
            return f"{code}?{text}" if code and code[:1].isupper() else text
    return ""


def _patients(event: dict[str, Any]) -> list[str]:
    return [
        str((e.get("what") or {}).get("reference", "")).removeprefix("Patient/")
        for e in event.get("entity") or ()
        if (e.get("role") or {}).get("code") == "1"
    ]


def _break_glass(event: dict[str, Any]) -> str | None:
    for purpose in event.get("purposeOfEvent") or ():
        if any(c.get("code") == "ETREAT" for c in purpose.get("coding") or ()):
            return str(purpose.get("text") or "")
    return None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True, slots=True)
class AuditFilters:
    patient: str
    user: str
    interaction: str
    break_glass: bool

    @classmethod
    def of(cls, params: dict[str, str]) -> AuditFilters:
        return cls(
            params.get("patient", "").strip().removeprefix("Patient/"),
            params.get("user", "").strip(),
            params.get("interaction", "").strip(),
            params.get("break_glass") == "1",
        )

    def query(self) -> AuditQuery:
        return AuditQuery(
            patient=self.patient or None,
            agent=self.user or None,
            interaction=(self.interaction,) if self.interaction else (),
            break_glass=self.break_glass,
            count=AUDIT_PAGE,
        )

    def text(self) -> str:
        shown = {"patient": self.patient, "user": self.user, "interaction": self.interaction}
        if self.break_glass:
            shown["break_glass"] = "1"
        return urlencode({k: v for k, v in shown.items() if v})


# -- routes ----------------------------------------------------------------------------------


def register(router: APIRouter, web: WebServices) -> None:
    _index(router, web)
    _logins(router, web)
    _clients(router, web)
    _keys(router, web)
    _audit(router, web)


def _allowed(web: WebServices, request: Request, capability: str) -> Viewer | Response:
    """The viewer if they hold ``capability``; else the page that says no."""
    viewer = web.viewer(request)
    if viewer.access.has(capability):
        return viewer
    message = N_("This part of the administration needs a capability your role does not have.")
    return page(web, viewer, "frame/error.html", 403, status=403, message=message)


def _section_page(
    web: WebServices, viewer: Viewer, section: str, status: int = 200, **ctx: object
) -> Response:
    return page(
        web,
        viewer,
        f"admin/{section}.html",
        status,
        active=SCREEN.key,
        back=f"/app/admin/{section}",
        sections=_sections(viewer),
        section=section,
        **ctx,
    )


def _done(request: Request) -> str | None:
    return DONE.get(request.query_params.get("done", ""))


def _index(router: APIRouter, web: WebServices) -> None:
    @router.get("/admin")
    def admin_home(request: Request) -> Response:
        viewer = web.viewer(request)
        sections = _sections(viewer)
        if not sections:
            message = N_("Administration is for administrators.")
            return page(web, viewer, "frame/error.html", 403, status=403, message=message)
        return RedirectResponse(f"/app/admin/{sections[0].key}", 303)


async def _action(
    web: WebServices,
    request: Request,
    capability: str,
    interaction: str,
    target: str | Callable[[dict[str, str]], str],
    change: Callable[[dict[str, str]], object],
) -> tuple[Viewer, dict[str, str], FhirError | None] | Response:
    """A checked, audited change: capability, CSRF, the change, its audit record."""
    allowed = _allowed(web, request, capability)
    if isinstance(allowed, Response):
        return allowed
    viewer = allowed
    form = await read_form(request)
    web.check_csrf(request, viewer, form)
    error: FhirError | None = None
    try:
        await run_in_threadpool(change, form)
    except FhirError as err:
        error = err
    web.audit_page(
        request,
        viewer,
        interaction,
        status=error.status if error else 200,
        query=target(form) if callable(target) else target,
        outcome_text=str(error) if error else None,
    )
    return viewer, form, error


def _logins(router: APIRouter, web: WebServices) -> None:
    users = web.security.users

    def show(viewer: Viewer, request: Request, status: int = 200, **ctx: Any) -> Response:
        with web.guarded(viewer), web.store.reading() as session:
            query = session.parse_search("Organization", [("_count", "500"), ("_sort", "name")])
            orgs = [
                (o.id, str(o.json().get("name") or o.id)) for o in session.search(query).matches
            ]
        logins: list[User] = users.all()
        ctx.setdefault("form", {})
        return _section_page(
            web,
            viewer,
            "logins",
            status,
            logins=logins,
            now=time.time(),
            organizations=orgs,
            roles=[(r, ROLE_LABELS.get(r, r)) for r in ROLES],
            role_labels=ROLE_LABELS,
            done=_done(request),
            **ctx,
        )

    @router.get("/admin/logins")
    def logins_page(request: Request) -> Response:
        allowed = _allowed(web, request, "manage-users")
        return allowed if isinstance(allowed, Response) else show(allowed, request)

    def create(form: dict[str, str]) -> None:
        chosen = [r for r in ROLES if form.get(f"role-{r}") == "on"]
        users.add(
            form.get("username", ""),
            form.get("password", ""),
            chosen,
            form.get("facility") or None,
            form.get("display_name", "").strip() or None,
            form.get("patient", "").strip() or None,
        )

    @router.post("/admin/logins")
    async def create_login(request: Request) -> Response:
        done = await _action(web, request, "manage-users", "user-create", _username_target, create)
        if isinstance(done, Response):
            return done
        viewer, form, error = done
        if error is not None:
            kept = {k: v for k, v in form.items() if k not in ("password", "csrf")}
            return show(viewer, request, 400, error=str(error), form=kept)
        return RedirectResponse("/app/admin/logins?done=created", 303)

    @router.post("/admin/logins/{username}/active")
    async def login_active(username: str, request: Request) -> Response:
        def change(form: dict[str, str]) -> None:
            users.set_active(username, form.get("active") == "1")

        form_active = (await read_form(request)).get("active") == "1"
        verb = "enable" if form_active else "disable"
        done = await _action(
            web, request, "manage-users", f"user-{verb}", f"username={username}", change
        )
        return _after(done, f"/app/admin/logins?done={verb}d")

    @router.post("/admin/logins/{username}/unlock")
    async def login_unlock(username: str, request: Request) -> Response:
        done = await _action(
            web,
            request,
            "manage-users",
            "user-unlock",
            f"username={username}",
            lambda _: users.unlock(username),
        )
        return _after(done, "/app/admin/logins?done=unlocked")


def _username_target(form: dict[str, str]) -> str:
    return f"username={form.get('username', '').strip().lower()}"


def _after(
    done: tuple[Viewer, dict[str, str], FhirError | None] | Response, success: str
) -> Response:
    if isinstance(done, Response):
        return done
    _, _, error = done
    if error is not None:
        # a login or client that is not there (any other refusal is a 400 of the service)
        return RedirectResponse(success.split("?")[0] + "?done=none", 303)
    return RedirectResponse(success, 303)


def _clients(router: APIRouter, web: WebServices) -> None:
    clients = web.security.clients

    @router.get("/admin/clients")
    def clients_page(request: Request) -> Response:
        allowed = _allowed(web, request, "manage-clients")
        if isinstance(allowed, Response):
            return allowed
        found: list[Client] = clients.all()
        return _section_page(
            web,
            allowed,
            "clients",
            clients=found,
            role_labels=ROLE_LABELS,
            iso_day=_iso,
            done=_done(request),
        )

    @router.post("/admin/clients/{client_id}/active")
    async def client_active(client_id: str, request: Request) -> Response:
        def change(form: dict[str, str]) -> None:
            if not clients.set_active(client_id, form.get("active") == "1"):
                raise FhirError(404, f"No client '{client_id}'", "not-found")

        active = (await read_form(request)).get("active") == "1"
        verb = "enable" if active else "disable"
        done = await _action(
            web, request, "manage-clients", f"client-{verb}", f"client_id={client_id}", change
        )
        return _after(done, f"/app/admin/clients?done=client-{verb}d")


def _keys(router: APIRouter, web: WebServices) -> None:
    ring = web.security.keys

    @router.get("/admin/keys")
    def keys_page(request: Request) -> Response:
        allowed = _allowed(web, request, "manage-keys")
        if isinstance(allowed, Response):
            return allowed
        now = time.time()
        rows = key_rows(ring.keys(fresh=True), now)
        grace = web.security.config.key_grace_seconds
        return _section_page(
            web, allowed, "keys", keys=rows, grace_hours=round(grace / 3600, 1), done=_done(request)
        )

    @router.post("/admin/keys/rotate")
    async def rotate(request: Request) -> Response:
        # older keys keep verifying for the grace period, so tokens in flight stay valid
        grace = max(web.security.config.key_grace_seconds, web.security.config.token_lifetime)

        def change(_: dict[str, str]) -> None:
            ring.rotate(grace)

        done = await _action(web, request, "manage-keys", "key-rotate", "keys=rotate", change)
        return _after(done, "/app/admin/keys?done=rotated")


def _audit(router: APIRouter, web: WebServices) -> None:
    @router.get("/admin/audit")
    async def audit_page(request: Request) -> Response:
        allowed = _allowed(web, request, "audit-review")
        if isinstance(allowed, Response):
            return allowed
        viewer = allowed
        filters = AuditFilters.of(dict(request.query_params))
        # looking at the audit log is itself audited, as GET /fhir/AuditEvent is
        web.audit_page(
            request,
            viewer,
            "search",
            resource_type="AuditEvent",
            query=filters.text() or "_count=100",
        )
        chain, found = await run_in_threadpool(_read_log, web, filters)
        return _section_page(
            web,
            viewer,
            "audit",
            chain=chain,
            events=[event_row(e) for e in found.events],
            total=found.total,
            filters=filters,
            interactions=INTERACTIONS,
            outcome_labels=OUTCOME_LABELS,
        )


def _read_log(web: WebServices, filters: AuditFilters) -> tuple[VerifyResult, Any]:
    web.audit.flush()  # what is still queued (this very look included) is shown too
    return web.audit.verify(), web.audit.find(filters.query())
