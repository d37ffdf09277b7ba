"""The FastAPI application: routes that parse HTTP, call the interactions, and render FHIR JSON.

Thin by design: logic lives in ``takamul.store`` and ``takamul.rest.interactions``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from takamul.fhir.outcome import FhirError, OutcomeIssue, operation_outcome
from takamul.rest import bundles
from takamul.rest import interactions as ix
from takamul.rest.capability import capability_statement
from takamul.rest.interactions import RequestContext, Result
from takamul.settings import Settings
from takamul.store.repository import Store

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
    )
    app.state.store = store
    app.state.settings = settings
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.exception_handler(FhirError)
    async def _fhir_error(_: Request, err: FhirError) -> Response:
        return _json(err.status, err.outcome())

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

    _routes(app, store, settings)
    return app


def _routes(app: FastAPI, store: Store, settings: Settings) -> None:
    count = settings.default_page_size

    def ctx(request: Request) -> RequestContext:
        prefer = _prefer(request)
        base = settings.base_url or str(request.base_url).rstrip("/") + "/fhir"
        return RequestContext(
            base,
            prefer.get("return", "representation"),
            prefer.get("handling") == "lenient",
            request.headers.get("x-source"),
        )

    def rtype_of(name: str) -> str:
        if not store.defs.is_resource_type(name):
            raise FhirError(404, f"Unknown resource type '{name}'", "not-supported")
        return name

    @app.get("/fhir/metadata")
    def metadata(request: Request) -> Response:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        return _json(200, capability_statement(ctx(request).base, now))

    @app.post("/fhir")
    @app.post("/fhir/", include_in_schema=False)
    async def batch(request: Request) -> Response:
        body = ix.parse_json(await request.body())
        c = ctx(request)
        return _json(200, await _thread(bundles.process, store, body, c, count))

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
        with store.reading() as s:
            return _result(ix.search(s, rtype_of(rtype), _query(request), ctx(request)))

    @app.post("/fhir/{rtype}/_search")
    async def search_post(rtype: str, request: Request) -> Response:
        # application/x-www-form-urlencoded, parsed here rather than pulling in a multipart
        # parser that search never needs.
        raw = (await request.body()).decode("utf-8", errors="strict")
        params = _query(request) + parse_qsl(raw, keep_blank_values=True)
        c = ctx(request)

        def run() -> Result:
            with store.reading() as s:
                return ix.search(s, rtype_of(rtype), params, c)

        return _result(await _thread(run))

    @app.post("/fhir/{rtype}")
    async def create(rtype: str, request: Request) -> Response:
        body = ix.parse_json(await request.body())
        c = ctx(request)
        rtype_of(rtype)
        cond = request.headers.get("if-none-exist")
        return _result(await _thread(store.write, lambda s: ix.create(s, rtype, body, c, cond)))

    @app.put("/fhir/{rtype}")
    async def conditional_update(rtype: str, request: Request) -> Response:
        body = ix.parse_json(await request.body())
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

    @app.get("/fhir/{rtype}/{rid}")
    def read(rtype: str, rid: str, request: Request) -> Response:
        args = dict(_query(request))
        elements = args["_elements"].split(",") if "_elements" in args else None
        with store.reading() as s:
            return _result(ix.read(s, rtype_of(rtype), rid, args.get("_summary"), elements))

    @app.put("/fhir/{rtype}/{rid}")
    async def update(rtype: str, rid: str, request: Request) -> Response:
        body = ix.parse_json(await request.body())
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


async def _thread(fn: Callable[..., Any], *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def _query(request: Request) -> list[tuple[str, str]]:
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
        if length is not None and length.isdigit() and int(length) > self.limit:
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


__all__ = ["Awaitable", "create_app"]


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` with several worker processes."""
    return create_app(Settings.from_env())
