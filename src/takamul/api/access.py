"""Access control of the HTTP API: every FHIR and registry request is authenticated (SMART
access token or login session), its access context becomes the store guard of the request
(so every read, search, include, history, compartment and write answers to the scopes,
patient context and facility), and rules that are not about one resource type are checked here:
registry review needs its capability, bulk export is for clients not bound to a facility (and a
job, its status and its files are for its requester alone, see ``export_requester``), the audit
log is append-only.
"""

from __future__ import annotations

import atexit
import logging
import time
from collections.abc import Iterable
from functools import partial
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from takamul.bulk.export import ExportRequester
from takamul.fhir.outcome import FhirError, operation_outcome
from takamul.security.audit import (
    AuditLog,
    AuditRecord,
    create_audit_tables,
    parse_search_params,
)
from takamul.security.context import AccessContext
from takamul.security.errors import forbidden
from takamul.security.guard import AccessGuard
from takamul.security.routes import add_security_middleware, add_security_routes
from takamul.security.scopes import use_indexer
from takamul.security.service import Security
from takamul.settings import Settings
from takamul.store.guard import guarded
from takamul.store.repository import Store

__all__ = ["PUBLIC_PATHS", "add_access_control", "export_requester"]

log = logging.getLogger("takamul.api")

# Discovery and authentication itself; everything else under /fhir and /mpi needs a token.
PUBLIC_PATHS = ("/fhir/metadata", "/fhir/.well-known/")
PROTECTED = ("/fhir", "/mpi", "/equity")
AUDITED_PUBLIC = ("/auth/token", "/auth/login", "/auth/logout")
# FHIR bases remembered by the access control (one per scheme, Host and root path in use)
MAX_BASES_KEPT = 64


def _protected(path: str) -> bool:
    if path.startswith(PUBLIC_PATHS):
        return False
    return any(path == p or path.startswith(p + "/") for p in PROTECTED)


def check_route(access: AccessContext, method: str, path: str) -> None:
    """The rules of a request that are about the operation rather than a resource type."""
    if path.startswith("/equity") and not (
        access.has("export-deidentified") or "administrator" in access.roles
    ):
        raise forbidden("Equity reports need the analyst or administrator role")
    if path.startswith("/mpi/") and not access.has("registry-review"):
        raise forbidden("The client registry's review API needs the registry-reviewer role")
    if "$export" in path:
        if access.facility_scoped:
            raise forbidden(
                "Bulk export is for system clients not bound to a facility; a facility's "
                "clients search their own patients"
            )
        if not access.allows("Patient", "r"):
            raise forbidden("Bulk export needs read access to the exported types")
    if path.startswith("/fhir/AuditEvent"):
        if method != "GET":
            raise FhirError(
                405, "The audit log is append-only and written by the server", "not-supported"
            )
        if not access.has("audit-review"):
            raise forbidden("Reading the audit log needs the audit-review capability")
    segments = path.split("/")
    if len(segments) > 4 and segments[4] == "AuditEvent" and not access.has("audit-review"):
        # a compartment search of AuditEvent (Patient/p1/AuditEvent) reads audit data too
        raise forbidden("Reading audit events needs the audit-review capability")


def export_requester(request: Request) -> ExportRequester | None:
    """Who asks for, or about, an export job, with the grant it holds; None when access control
    is off (there is no one to tell apart)."""
    access: AccessContext | None = getattr(request.state, "access", None)
    if access is None:
        return None
    return ExportRequester(
        access.who, " ".join(sorted(str(access.scopes).split())), access.patient, access.facility
    )


def _audit_routes(app: FastAPI, audit: AuditLog, settings: Settings) -> None:
    """The audit log, read-only, as FHIR AuditEvents (writes are refused in check_route)."""

    @app.get("/fhir/AuditEvent")
    def audit_search(request: Request) -> Response:
        query = parse_search_params(
            list(request.query_params.multi_items()),
            settings.default_page_size,
            settings.max_page_size,
        )
        page = audit.find(query)
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": page.total,
            "entry": [{"resource": e, "search": {"mode": "match"}} for e in page.events],
        }
        return Response(orjson.dumps(bundle), 200, media_type="application/fhir+json")

    @app.get("/fhir/AuditEvent/{event_id}")
    def audit_read(event_id: str) -> Response:
        event = audit.read(event_id)
        if event is None:
            raise FhirError(404, f"AuditEvent/{event_id} is not known", "not-found")
        return Response(orjson.dumps(event), 200, media_type="application/fhir+json")


def _refusal(err: FhirError) -> Response:
    headers = dict(getattr(err, "headers", None) or {})
    return Response(
        orjson.dumps(operation_outcome(err.issues)),
        err.status,
        headers,
        media_type="application/fhir+json",
    )


def interaction_of(method: str, path: str) -> tuple[str, str | None, str | None]:
    """(interaction, resource type, id) of a request path, for the audit log."""
    parts = [p for p in path.split("/") if p]
    if parts and parts[0] == "auth":
        return (parts[1] if len(parts) > 1 else "auth"), None, None
    if parts and parts[0] == "mpi":
        return "registry-" + (parts[1] if len(parts) > 1 else "review"), None, None
    parts = parts[1:]  # after "fhir"
    if not parts:
        return ("transaction" if method == "POST" else "search-system"), None, None
    if any(p.startswith("$export") for p in parts):
        return "export", None, None
    rtype = parts[0] if parts[0][:1].isupper() else None
    rid = parts[1] if len(parts) > 1 and not parts[1].startswith(("_", "$")) else None
    if parts[-1] == "$everything":
        return "everything", "Patient", rid
    if parts[-1].startswith("$"):
        return parts[-1][1:], rtype, rid
    if "_history" in parts:
        if len(parts) == 4:
            return "vread", rtype, rid
        return (
            ("history-instance" if rid else "history-type" if rtype else "history-system"),
            (rtype),
            rid,
        )
    if len(parts) >= 3 and parts[2][:1].isupper():
        # compartment search: Patient/p1/Observation, or .../Observation/_search
        return "search", parts[2], None
    if parts[-1] == "_search" or (rid is None and method == "GET"):
        return "search", rtype, None
    verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    return verb.get(method, "read"), rtype, rid


def _patients(path: str, query: str, rtype: str | None, rid: str | None) -> tuple[str, ...]:
    found = [rid] if rtype == "Patient" and rid else []
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 4 and parts[:2] == ["fhir", "Patient"] and parts[3][:1].isupper():
        found.append(parts[2])  # a search in the patient's compartment
    if not query:
        return tuple(dict.fromkeys(found))
    params = QueryParams(query)
    for key in ("patient", "subject"):
        value = params.get(key)
        if value and "/" not in value.removeprefix("Patient/"):
            found.append(value.removeprefix("Patient/"))
    return tuple(dict.fromkeys(found))


def _audit(
    audit: AuditLog,
    scope: Scope,
    access: AccessContext | None,
    status: int,
    outcome_text: str | None = None,
    written: Iterable[str] = (),
) -> None:
    """``written``: the patients whose data the request wrote (from the bodies, which the URL
    does not show), so that a write, above all one made breaking the glass, is found by
    patient when it is reviewed. The request hands over what it knows, now (the time among
    it); the audit writer makes the record (``_record_of``), off the request's path."""
    audit.record_later(
        partial(
            _record_of,
            scope["method"],
            # the path and query straight from the ASGI scope: ``request.url`` parses a whole
            # URL, a cost on every audited request
            scope["path"],
            scope.get("query_string", b""),
            _address(scope),
            access,
            status,
            outcome_text,
            tuple(written),
            time.time(),
        )
    )


def _record_of(
    method: str,
    path: str,
    query_string: bytes,
    address: str | None,
    access: AccessContext | None,
    status: int,
    outcome_text: str | None,
    written: tuple[str, ...],
    when: float,
) -> AuditRecord:
    """The audit record of a request, from what ``_audit`` took of it."""
    query = query_string.decode("latin-1")
    interaction, rtype, rid = interaction_of(method, path)
    fields = {
        "status": status,
        "resource_type": rtype,
        "resource_id": rid,
        "query": query or None,
        "patient_ids": tuple(dict.fromkeys((*_patients(path, query, rtype, rid), *written))),
        "address": address,
        "outcome_text": outcome_text,
        "when": when,
    }
    if access is None:
        return AuditRecord(interaction, **fields)  # type: ignore[arg-type]
    return AuditRecord.for_access(access, interaction, **fields)


def _address(scope: Scope) -> str | None:
    client = scope.get("client")  # (host, port), straight from the scope: no Address object
    return str(client[0]) if client else None


# the request headers the access control reads (ASGI servers give names in lower case)
_READ_HEADERS = frozenset((b"authorization", b"cookie", b"host", b"x-break-glass-reason"))


def _headers(scope: Scope) -> dict[str, str]:
    """The headers access control reads, in one pass: Starlette's ``Headers`` scans and decodes
    the whole list for every lookup, and a request asks for four."""
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope.get("headers") or ()
        if name in _READ_HEADERS
    }


class AccessControl:
    """Authenticate, set the request's guard, audit: a pure ASGI middleware (Starlette's
    ``BaseHTTPMiddleware`` ran every request in a task of its own with memory streams, about
    0.6 ms of each auth-on read; profiled in bench/results/2026-12-05-vm-auth-overhead-*)."""

    def __init__(
        self, app: ASGIApp, *, security: Security, store: Store, audit: AuditLog, settings: Settings
    ) -> None:
        self.app = app
        self.security = security
        self.store = store
        self.audit = audit
        self.settings = settings
        self._bases: dict[tuple[Any, ...], str] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in AUDITED_PUBLIC:
            # sign-ins and token requests: who tried, and whether it worked
            answered = [500]
            try:
                await self._answer(scope, receive, send, answered)
            finally:
                _audit(self.audit, scope, None, answered[0])
            return
        if not _protected(path):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        headers = _headers(scope)
        base = self.settings.base_url or self._base_of(scope, request, headers.get("host"))
        access: AccessContext | None = None
        try:
            access = self.security.authenticate(headers, base)
            check_route(access, request.method, path)
        except FhirError as err:
            _audit(self.audit, scope, access, err.status, str(err))
            await _refusal(err)(scope, receive, send)
            return
        scope.setdefault("state", {})["access"] = access  # request.state.access downstream
        # the guard rides the request's context into its worker thread
        guard = AccessGuard(access, self.store)
        answered = [500]
        try:
            with guarded(guard):
                await self._answer(scope, receive, send, answered)
        finally:  # a request that failed is audited too
            _audit(self.audit, scope, access, answered[0], written=guard.written_patients)

    def _base_of(self, scope: Scope, request: Request, host: str | None) -> str:
        """The FHIR base the request was sent to (the audience its token must name), kept per
        scheme, Host and root path: Starlette builds it by parsing a whole URL, about a tenth
        of an authorised read's CPU. The Host is the caller's to choose, so few are kept."""
        key = (scope.get("scheme"), host, scope.get("root_path"))
        base = self._bases.get(key)
        if base is None:
            if len(self._bases) >= MAX_BASES_KEPT:
                self._bases.clear()
            base = self._bases[key] = str(request.base_url).rstrip("/") + "/fhir"
        return base

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, answered: list[int]
    ) -> None:
        """Run the app, keeping the status it answers with in ``answered[0]`` (it stays 500 if
        the app fails before answering)."""

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered[0] = int(message["status"])
            await send(message)

        await self.app(scope, receive, sending)


def add_access_control(app: FastAPI, store: Store, settings: Settings) -> Security:
    security = Security(store.writer, reader=store.reader)
    for warning in security.check_startup():
        log.warning("security: %s", warning)
    use_indexer(store.indexer)
    add_security_routes(app, security)
    app.state.security = security
    create_audit_tables(store.writer)
    # buffered: the read path does not pay a write per request (TAKAMUL_AUDIT_FLUSH_SECONDS)
    audit = AuditLog.for_store(
        store, buffered=True, flush_interval=security.config.audit_flush_seconds
    )
    app.state.audit = audit
    # written out at process exit rather than at ASGI shutdown: test clients run the lifespan
    # around each request, and the log must outlive them
    atexit.register(audit.close)
    _audit_routes(app, audit, settings)

    app.add_middleware(
        AccessControl, security=security, store=store, audit=audit, settings=settings
    )
    add_security_middleware(app, security)
    return security
