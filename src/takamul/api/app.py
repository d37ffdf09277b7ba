"""The FastAPI application: routes that parse HTTP, call the interactions, and render FHIR JSON.

Thin by design: logic lives in ``takamul.store`` and ``takamul.rest.interactions``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import gc
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from takamul.api.access import add_access_control, export_requester
from takamul.api.equity import add_equity_routes
from takamul.api.mpi import add_registry_routes
from takamul.api.notifications import (
    LearnBase,
    add_notification_routes,
    advertise,
    still_active,
)
from takamul.api.programmes import add_programme_routes
from takamul.bulk.export import NDJSON_FORMATS, Exporter, ExportRequest
from takamul.caregivers.burden import Caregivers
from takamul.coordination.referrals import Referrals
from takamul.fhir.definitions import definitions
from takamul.fhir.outcome import FhirError, OutcomeIssue, operation_outcome
from takamul.fhir.search_values import date_range
from takamul.mentalhealth.routes import add_mh_routes
from takamul.mentalhealth.service import MentalHealth
from takamul.mpi.service import ClientRegistry
from takamul.notifications.service import Notifications
from takamul.programmes.service import Programmes
from takamul.rest import bundles, compartments
from takamul.rest import interactions as ix
from takamul.rest.capability import capability_statement
from takamul.rest.interactions import RequestContext, Result
from takamul.security.consent import consent_register
from takamul.settings import Settings
from takamul.store.engine import database_is_local
from takamul.store.guard import current_guard
from takamul.store.repository import Store
from takamul.web import add_web_app

FHIR_JSON = "application/fhir+json"
log = logging.getLogger("takamul.api")


def create_app(settings: Settings | None = None, store: Store | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    store = store or Store(settings)
    app = FastAPI(
        title="Takamul shared health record",
        version="0.1.0",
        docs_url="/docs",
        openapi_url="/openapi.json",
        telemetry=_telemetry(),
    )
    app.state.store = store
    app.state.settings = settings
    _first_routes(app, store)
    # every server raises the consent version with the Consents it writes (auth off too), so
    # that the restrictions other processes keep in memory follow them (security/consent.py)
    consent_register(store)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.exception_handler(FhirError)
    async def _fhir_error(_: Request, err: FhirError) -> Response:
        return _json(err.status, err.outcome())

    @app.exception_handler(HTTPException)
    async def _framework_error(request: Request, err: HTTPException) -> Response:
        # the router's own answers (no such route, method not allowed) speak FHIR too
        headers = dict(err.headers or {})
        if err.status_code == 405:
            # every method the path takes, not only those of the first route that matched it
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return _json(err.status_code, _framework_outcome(err, headers), headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, err: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in err.errors()
        )
        return _json(400, FhirError(400, f"The request is not valid: {problems}").outcome())

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> Response:
        log.exception("unexpected error")
        return _json(
            500,
            operation_outcome(
                [
                    OutcomeIssue(
                        "fatal",
                        "exception",
                        f"Internal error ({type(err).__name__}); see the server log",
                    )
                ]
            ),
        )

    if settings.auth:
        security = add_access_control(app, store, settings)
    elif os.environ.get("TAKAMUL_PRODUCTION", "").lower() in ("1", "true", "yes"):
        raise RuntimeError("TAKAMUL_AUTH=false (an open server) is refused in production; unset it")
    # the start's catch-up passes and the first searches are planned by these (a restored
    # store has none): refreshed first, as ``takamul catch-up`` does
    if refreshed := store.analyze_stale():
        log.info("planner statistics were missing or stale: analysed %s", ", ".join(refreshed))
    if settings.mpi:
        registry = ClientRegistry(store)
        linked = registry.attach()
        if linked:
            log.info("client registry: linked %d Patients stored without a person", linked)
        app.state.registry = registry
        add_registry_routes(app, registry, lambda r: _base(settings, r))
    add_equity_routes(app, store)
    programmes = Programmes(store)
    extracted = programmes.attach()
    if extracted:
        log.info("care programmes: read care facts from %d stored versions", extracted)
    app.state.programmes = programmes
    programmes.start_background()  # a new day's registries ready before the first view
    add_programme_routes(app, programmes, lambda r: _base(settings, r))
    mental_health = MentalHealth(store)  # scores responses and raises safety Tasks on write
    if caught := mental_health.attach():
        log.info("mental health: processed %d QuestionnaireResponses stored without hooks", caught)
    mental_health.start_background()
    Caregivers(store).attach()  # after the scoring hook: a high ZBI-12 makes a support referral
    app.state.mental_health = mental_health
    add_mh_routes(app)  # QuestionnaireResponse/$score
    Referrals(store).attach()  # referral Tasks keep to their state machine and parties
    # last: what a topic announces is what every hook before it let through and wrote
    notifications = _notifications(app, store, settings)
    add_notification_routes(app, notifications, lambda r: _base(settings, r))
    if settings.auth:
        # the people's web application: its sign-in uses the logins of access control
        add_web_app(
            app,
            store,
            security,
            app.state.audit,
            getattr(app.state, "registry", None),
            programmes,
        )
    _routes(app, store, settings)
    return app


def _telemetry() -> Any:
    """FastAPI's OpenTelemetry signals, on with ``TAKAMUL_TELEMETRY=true`` (off by default).
    Left on with no provider configured, FastAPI asked OpenTelemetry for its three providers on
    every request, to learn that there were none."""
    on = os.environ.get("TAKAMUL_TELEMETRY", "").strip().lower() in ("1", "true", "yes")
    return {"tracing": on, "metrics": on, "logs": on}


def _notifications(app: FastAPI, store: Store, settings: Settings) -> Notifications:
    security = getattr(app.state, "security", None)
    notifications = Notifications(
        store,
        settings.base_url,
        subscriber_active=still_active(security) if security is not None else None,
    )
    notifications.attach()
    notifications.start()
    app.state.notifications = notifications
    if settings.base_url is None:
        app.add_middleware(LearnBase, notifications=notifications)
    return notifications


def _base(settings: Settings, request: Request) -> str:
    return settings.base_url or str(request.base_url).rstrip("/") + "/fhir"


class FhirIdConvertor(Convertor[str]):
    """A path segment that is a valid FHIR id (the ``id`` datatype: ``[A-Za-z0-9\\-\\.]{1,64}``),
    so never an operation (``$everything``) or a system path (``_history``, ``_search``)."""

    regex = r"[A-Za-z0-9\-\.]{1,64}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


# Resource types whose reads a route of their own answers (the audit log's AuditEvents): the
# fast read route must never take them (tests/test_interactions.py checks every GET route).
OWN_READ_ROUTES = ("AuditEvent",)


class FhirTypeConvertor(FhirIdConvertor):
    """A path segment shaped like a resource type's name (checked against the definitions),
    other than those in ``OWN_READ_ROUTES``."""

    regex = "".join(f"(?!{name}/)" for name in OWN_READ_ROUTES) + "[A-Z][A-Za-z]{0,63}"


# Resource types whose type-level GET (a search) a route of their own answers.
OWN_SEARCH_ROUTES = ("AuditEvent",)


class FhirSearchTypeConvertor(FhirIdConvertor):
    """A whole path segment shaped like a resource type's name, other than those in
    ``OWN_SEARCH_ROUTES``: the type of a search (``/fhir/Observation``)."""

    regex = "".join(f"(?!{name}$)" for name in OWN_SEARCH_ROUTES) + "[A-Z][A-Za-z]{0,63}"


register_url_convertor("fhir_id", FhirIdConvertor())
register_url_convertor("fhir_type", FhirTypeConvertor())
register_url_convertor("fhir_search_type", FhirSearchTypeConvertor())


def _first_routes(app: FastAPI, store: Store) -> None:
    """The read of one resource, the commonest request, as the first route the router tries.

    The router tries routes in order until one matches, and with ~60 routes the read's place
    near the end cost about a fifth of an authorised read's CPU. Its path here matches only a
    resource type and a valid id, so no operation or system path (``Patient/$match``,
    ``Patient/_history``) can reach it; everything else it leaves to the later routes.

    A plain Starlette route, not FastAPI's: the read needs only its two path segments, and
    FastAPI's parameter solving and response handling were about a tenth of its CPU."""
    read = _read_endpoint(store)

    async def fast_read(request: Request) -> Response:
        params = request.path_params
        return cast(Response, await read(params["rtype"], params["rid"], request))

    app.add_route(
        "/fhir/{rtype:fhir_type}/{rid:fhir_id}", fast_read, methods=["GET"], include_in_schema=False
    )
    # ahead of FastAPI's own four (/openapi.json, /docs, ...), which no FHIR path can match
    app.router.routes.insert(0, app.router.routes.pop())


def _resource_type(store: Store, name: str) -> str:
    if not store.defs.is_resource_type(name):
        raise FhirError(404, f"Unknown resource type '{name}'", "not-supported")
    return name


def inline_reads(database_url: str) -> bool:
    """Whether the read of one resource and a search (``GET /fhir/<Type>``) run on the event
    loop (``TAKAMUL_INLINE_READS``: ``auto``, the default, ``true`` or ``false``).

    One indexed lookup costs less than the hand-off to a request thread when the database is on
    this machine: SQLite (16 clients: 1,392 -> 3,008 req/s) and PostgreSQL over a Unix socket
    or loopback (one worker, auth off: 1,661 -> 2,291 req/s, server CPU 0.63 -> 0.36 ms a
    read; the thread's wake-up and its contention for the GIL cost more than the query). A
    search is Python's work more than the database's, and in threads it contended for the GIL
    with the loop: a patient's observations, 16 clients, one worker, SQLite, 910 -> 1,842 req/s
    open (server CPU 1.38 -> 0.58 ms, p99 145 -> 17 ms) and 540 -> 1,017 with access control
    on (bench/results/2026-12-06-vm-auth-overhead-inline-searches-sqlite-postgresql.md). A long
    search holds the worker's other requests while it runs; the server's other workers go on.
    A PostgreSQL on another host would stall the worker's other requests for each round trip,
    so ``auto`` keeps both in a thread there."""
    choice = os.environ.get("TAKAMUL_INLINE_READS", "auto").strip().lower()
    if choice in ("1", "true", "yes", "on"):
        return True
    if choice in ("0", "false", "no", "off"):
        return False
    if choice != "auto":
        raise ValueError(f"TAKAMUL_INLINE_READS must be auto, true or false, not {choice!r}")
    return database_is_local(database_url)


def _read_endpoint(store: Store) -> Callable[..., Any]:
    inline = inline_reads(store.settings.database_url)

    async def read(rtype: str, rid: str, request: Request) -> Response:
        args = dict(_query(request))
        elements = args["_elements"].split(",") if "_elements" in args else None

        def work() -> Response:
            with store.reading(snapshot=False) as s:
                found = ix.read(
                    s, _resource_type(store, rtype), rid, args.get("_summary"), elements
                )
                return _result(found)

        return work() if inline else await _thread(work)

    return read


def _routes(app: FastAPI, store: Store, settings: Settings) -> None:
    count = settings.default_page_size

    def ctx(request: Request) -> RequestContext:
        prefer = _prefer(request)
        base = _base(settings, request)
        return RequestContext(
            base,
            prefer.get("return", "representation"),
            prefer.get("handling") == "lenient",
            request.headers.get("x-source"),
        )

    def rtype_of(name: str) -> str:
        return _resource_type(store, name)

    @app.get("/fhir/metadata")
    def metadata(request: Request) -> Response:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        return _json(200, advertise(capability_statement(ctx(request).base, now)))

    @app.post("/fhir")
    @app.post("/fhir/", include_in_schema=False)
    async def batch(request: Request) -> Response:
        body = await _json_body(request)
        c = ctx(request)
        return _json(200, await _thread(bundles.process, store, body, c, count))

    exporter = Exporter(store, settings.export_dir)
    app.state.exporter = exporter

    def kickoff(request: Request, kind: str, group_id: str | None = None) -> Response:
        export = replace(
            _export_request(request, kind, group_id),
            guard=current_guard.get(),
            requester=export_requester(request),
        )
        job_id = exporter.start(export)
        location = f"{ctx(request).base}/$export-poll-status/{job_id}"
        return Response(None, 202, {"Content-Location": location})

    @app.get("/fhir/$export")
    def export_system(request: Request) -> Response:
        return kickoff(request, "system")

    @app.get("/fhir/Patient/$export")
    def export_patients(request: Request) -> Response:
        return kickoff(request, "patient")

    @app.get("/fhir/Group/{group_id}/$export")
    def export_group(group_id: str, request: Request) -> Response:
        return kickoff(request, "group", group_id)

    @app.get("/fhir/$export-poll-status/{job_id}")
    def export_status(job_id: str, request: Request) -> Response:
        status = exporter.status(job_id, export_requester(request))
        if status.status == "failed":
            raise FhirError(500, f"The export failed: {status.error}", "exception")
        if status.status != "completed" or status.manifest is None:
            return Response(
                None, 202, {"X-Progress": status.progress or status.status, "Retry-After": "1"}
            )
        base = ctx(request).base
        manifest = dict(status.manifest)
        manifest["output"] = [
            {**o, "url": f"{base}/$export-file/{job_id}/{o['url']}"} for o in manifest["output"]
        ]
        return Response(orjson.dumps(manifest), 200, media_type="application/json")

    @app.delete("/fhir/$export-poll-status/{job_id}")
    def export_cancel(job_id: str, request: Request) -> Response:
        exporter.cancel(job_id, export_requester(request))
        return Response(None, 202)

    @app.get("/fhir/$export-file/{job_id}/{name}")
    def export_file(job_id: str, name: str, request: Request) -> Response:
        # the files of a job are its requester's, like the job (with access control on, the
        # request carries the token: the middleware refuses it without one)
        path = exporter.file_path(job_id, name, export_requester(request))
        return FileResponse(path, media_type="application/fhir+ndjson")

    @app.get("/fhir/_history")
    def system_history(request: Request) -> Response:
        with store.reading() as s:
            return _result(ix.history(s, None, None, _query(request), ctx(request), count))

    @app.get("/fhir/{rtype}/_history")
    def type_history(rtype: str, request: Request) -> Response:
        with store.reading() as s:
            return _result(
                ix.history(s, rtype_of(rtype), None, _query(request), ctx(request), count)
            )

    @app.get("/fhir/{rtype}")
    def search_get(rtype: str, request: Request) -> Response:
        # what ``fast_search`` leaves: a name not shaped like a type (answered 404), and the
        # API's description (OpenAPI)
        with store.reading(snapshot=False) as s:
            return _result(ix.search(s, rtype_of(rtype), _query(request), ctx(request)))

    inline = inline_reads(store.settings.database_url)

    async def fast_search(request: Request) -> Response:
        rtype = rtype_of(request.path_params["rtype"])
        params, c = _query(request), ctx(request)

        def work() -> Response:
            with store.reading(snapshot=False) as s:
                return _result(ix.search(s, rtype, params, c))

        return work() if inline else cast(Response, await _thread(work))

    # A plain Starlette route, tried second (after the read): FastAPI tries its ~60 routes in
    # order, at some microseconds each (and a router of the web application's in between
    # when access control is on), and a search was near the end.
    app.add_route(
        "/fhir/{rtype:fhir_search_type}", fast_search, methods=["GET"], include_in_schema=False
    )
    app.router.routes.insert(1, app.router.routes.pop())

    @app.post("/fhir/{rtype}/_search")
    async def search_post(rtype: str, request: Request) -> Response:
        params = _query(request) + await _form_params(request)
        c = ctx(request)

        def run() -> Result:
            with store.reading(snapshot=False) as s:
                return ix.search(s, rtype_of(rtype), params, c)

        return _result(await _thread(run))

    @app.post("/fhir/{rtype}")
    async def create(rtype: str, request: Request) -> Response:
        body = await _json_body(request)
        c = ctx(request)
        rtype_of(rtype)
        cond = request.headers.get("if-none-exist")
        return _result(await _thread(store.write, lambda s: ix.create(s, rtype, body, c, cond)))

    @app.put("/fhir/{rtype}")
    async def conditional_update(rtype: str, request: Request) -> Response:
        body = await _json_body(request)
        c = ctx(request)
        criteria = ix.criteria_of(_query(request))
        rtype_of(rtype)
        ix.check_type(body, rtype)
        return _result(
            await _thread(store.write, lambda s: ix.conditional_update(s, rtype, criteria, body, c))
        )

    @app.delete("/fhir/{rtype}")
    def conditional_delete(rtype: str, request: Request) -> Response:
        criteria = ix.criteria_of(_query(request))
        rtype_of(rtype)
        return _result(store.write(lambda s: ix.conditional_delete(s, rtype, criteria)))

    # every read whose path the fast route at the front did not take (an id not valid in FHIR
    # still gets the interaction's own answer, not the router's 404 or 405)
    app.add_api_route("/fhir/{rtype}/{rid}", _read_endpoint(store), methods=["GET"])

    @app.put("/fhir/{rtype}/{rid}")
    async def update(rtype: str, rid: str, request: Request) -> Response:
        body = await _json_body(request)
        c = ctx(request)
        rtype_of(rtype)
        ix.check_type(body, rtype)
        if_match = request.headers.get("if-match")
        return _result(
            await _thread(store.write, lambda s: ix.update(s, rtype, rid, body, c, if_match))
        )

    @app.patch("/fhir/{rtype}/{rid}")
    async def patch(rtype: str, rid: str, request: Request) -> Response:
        kind = request.headers.get("content-type", "")
        if "json-patch" not in kind:
            raise FhirError(
                415, f"PATCH takes application/json-patch+json, not '{kind}'", "not-supported"
            )
        ops = ix.parse_json(await request.body())
        c = ctx(request)
        rtype_of(rtype)
        if_match = request.headers.get("if-match")
        return _result(
            await _thread(store.write, lambda s: ix.patch(s, rtype, rid, ops, c, if_match))
        )

    @app.delete("/fhir/{rtype}/{rid}")
    def delete(rtype: str, rid: str) -> Response:
        rtype_of(rtype)
        return _result(store.write(lambda s: ix.delete(s, rtype, rid)))

    @app.get("/fhir/{rtype}/{rid}/_history")
    def instance_history(rtype: str, rid: str, request: Request) -> Response:
        with store.reading() as s:
            return _result(
                ix.history(s, rtype_of(rtype), rid, _query(request), ctx(request), count)
            )

    @app.get("/fhir/{rtype}/{rid}/_history/{vid}")
    def vread(rtype: str, rid: str, vid: str) -> Response:
        with store.reading() as s:
            return _result(ix.vread(s, rtype_of(rtype), rid, vid))

    @app.get("/fhir/Patient/{rid}/$everything")
    def everything(rid: str, request: Request) -> Response:
        with store.reading() as s:
            return _result(ix.everything(s, rid, _query(request), ctx(request), count))

    @app.post("/fhir/Patient/{rid}/$everything")
    async def everything_post(rid: str, request: Request) -> Response:
        # R4 operations.html: every operation may be invoked with POST, its parameters in a
        # Parameters body (or a form); fhir-kit-client and others POST by default
        params = _query(request) + await _operation_params(request)
        c = ctx(request)

        def run() -> Result:
            with store.reading() as s:
                return ix.everything(s, rid, params, c, count)

        return _result(await _thread(run))

    # Compartment search, after every fixed /{type}/{id}/... route so that those match first.
    @app.get("/fhir/{ctype}/{cid}/{rtype}")
    def compartment_search(ctype: str, cid: str, rtype: str, request: Request) -> Response:
        with store.reading() as s:
            return _result(compartments.search(s, ctype, cid, rtype, _query(request), ctx(request)))

    @app.post("/fhir/{ctype}/{cid}/{rtype}/_search")
    async def compartment_search_post(
        ctype: str, cid: str, rtype: str, request: Request
    ) -> Response:
        params = _query(request) + await _form_params(request)
        c = ctx(request)

        def run() -> Result:
            with store.reading() as s:
                return compartments.search(s, ctype, cid, rtype, params, c)

        return _result(await _thread(run))


# The request threads of a server process (``TAKAMUL_REQUEST_THREADS``, default 40: what
# anyio's limiter allowed before). Handed to directly, as anyio's ``to_thread`` (Starlette's
# ``run_in_threadpool``) spent about 15 us more CPU per hand-off, on every PostgreSQL read.
_REQUEST_THREADS = concurrent.futures.ThreadPoolExecutor(
    int(os.environ.get("TAKAMUL_REQUEST_THREADS", "40")), thread_name_prefix="takamul-request"
)


async def _thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` in a request thread with the request's context (its guard) and wait for it."""
    context = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_REQUEST_THREADS, functools.partial(context.run, fn, *args))


def _export_request(request: Request, kind: str, group_id: str | None) -> ExportRequest:
    """Check a $export kick-off (Bulk Data Access v2) and say what is wrong if it is not valid."""
    if "respond-async" not in request.headers.get("prefer", ""):
        raise FhirError(400, "A $export kick-off needs the header 'Prefer: respond-async'")
    args = dict(_query(request))
    unknown = set(args) - {"_type", "_since", "_outputFormat"}
    if unknown:
        raise FhirError(
            400, f"$export does not support {', '.join(sorted(unknown))}", "not-supported"
        )
    fmt = args.get("_outputFormat", "application/fhir+ndjson")
    if fmt not in NDJSON_FORMATS:
        raise FhirError(
            400,
            f"_outputFormat '{fmt}' is not supported; use application/fhir+ndjson",
            "not-supported",
        )
    types = None
    if args.get("_type"):
        types = tuple(t.strip() for t in args["_type"].split(",") if t.strip())
        unknown_types = [t for t in types if not definitions().is_resource_type(t)]
        if unknown_types:
            raise FhirError(400, f"Unknown resource type(s) in _type: {', '.join(unknown_types)}")
    since = None
    if args.get("_since"):
        try:
            since = date_range(args["_since"])[0]
        except ValueError as err:
            raise FhirError(400, f"_since must be a FHIR instant, not '{args['_since']}'") from err
    return ExportRequest(kind, str(request.url), types, since, group_id)


async def _form_params(request: Request) -> list[tuple[str, str]]:
    """The parameters of an application/x-www-form-urlencoded body, parsed here rather than
    pulling in a multipart parser that search never needs."""
    raw = await request.body()
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as err:
        raise FhirError(400, "The form body is not UTF-8; percent-encode the parameters") from err
    return parse_qsl(text, keep_blank_values=True)


async def _operation_params(request: Request) -> list[tuple[str, str]]:
    """The parameters of an operation invoked with POST: a Parameters resource (JSON), a form,
    or nothing; anything else is a 400 that says what to send."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        return await _form_params(request)
    raw = await request.body()
    if not raw.strip():
        return []
    if kind and "json" not in kind:
        raise FhirError(
            415,
            f"Content-Type '{kind}' is not supported; send a Parameters resource as "
            "application/fhir+json",
            "not-supported",
        )
    return ix.operation_parameters(ix.parse_json(raw))


async def _json_body(request: Request) -> Any:
    """The JSON body of a write; XML and other formats are refused with 415."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind and "json" not in kind:
        raise FhirError(
            415,
            f"Content-Type '{kind}' is not supported; send application/fhir+json",
            "not-supported",
        )
    return ix.parse_json(await request.body())


def _query(request: Request) -> list[tuple[str, str]]:
    if not request.scope.get("query_string"):
        return []  # most reads have none: no QueryParams parsed (about 2 µs a read)
    return list(request.query_params.multi_items())


def _prefer(request: Request) -> dict[str, str]:
    out = {}
    for part in request.headers.get("prefer", "").split(";"):
        for item in part.split(","):
            if "=" in item:
                k, v = item.split("=", 1)
                out[k.strip().lower()] = v.strip().strip('"')
    return out


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type=FHIR_JSON)


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= route.methods
    return sorted(methods)


def _framework_outcome(err: HTTPException, headers: dict[str, str]) -> dict[str, Any]:
    """The OperationOutcome of an answer the web framework gives itself."""
    code = {404: "not-found", 405: "not-supported"}.get(err.status_code, "processing")
    text = str(err.detail)
    if err.status_code == 404 and text == HTTPStatus.NOT_FOUND.phrase:
        text = "No such endpoint; see /fhir/metadata for what this server supports"
    elif err.status_code == 405 and text == HTTPStatus.METHOD_NOT_ALLOWED.phrase:
        allowed = headers.get("Allow") or "none"
        text = f"This endpoint does not take that method; it takes {allowed}"
    severity = "error" if err.status_code < 500 else "fatal"
    return operation_outcome([OutcomeIssue(severity, code, text)])


def _result(result: Result) -> Response:
    if result.body is None:
        return Response(None, result.status, result.headers)
    content = result.body if isinstance(result.body, bytes) else orjson.dumps(result.body)
    return Response(content, result.status, result.headers, media_type=FHIR_JSON)


class BodyLimit:
    """Refuse bodies over the limit with 413 and an OperationOutcome, before reading them whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if (
            length is not None
            and length.isascii()
            and length.isdigit()
            and int(length) > self.limit
        ):
            await self._refuse(send)
            return
        received = 0
        refused = False

        async def limited() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    refused = True
                    raise FhirError(413, self._message(), "too-costly")
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return (
            f"The request body is larger than the limit of {self.limit} bytes; split it "
            "into smaller Bundles or use bulk load (takamul load)"
        )

    async def _refuse(self, send: Send) -> None:
        body = orjson.dumps(
            operation_outcome([OutcomeIssue("error", "too-costly", self._message())])
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", FHIR_JSON.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


__all__ = ["app_from_env", "create_app", "serving_app"]


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` with several worker processes."""
    return serving_app(Settings.from_env())


def serving_app(settings: Settings) -> FastAPI:
    """The app as a server process runs it: built, then what its start made kept out of the
    cyclic garbage collector's passes (``settle_heap``)."""
    app = create_app(settings)
    settle_heap()
    return app


def settle_heap() -> None:
    """Collect once, then freeze what is alive (``gc.freeze``): the objects a server's start
    made (the registry's candidate index, the FHIR definitions and validators, the routes) live
    as long as the process, and each full pass of the cyclic collector walked all of them:
    170-480 ms in every worker of ``serve --workers 4`` on 10,000 persons (measured at the
    start; a pass while serving holds that worker's requests as long). Such a pass comes again
    whenever a quarter as many objects again have survived (an index that grows, caches);
    frozen, it walks only those. Reference counting still frees frozen objects; only a frozen
    cycle would stay."""
    gc.collect()
    gc.freeze()
