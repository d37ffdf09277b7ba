"""HTTP routes of the client registry: ``Patient/$match`` (FHIR) and the review API (JSON).

Thin: parsing and rendering only; the decisions live in ``takamul.mpi.service``. Errors are
OperationOutcomes like everywhere else on the server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from takamul.fhir.outcome import FhirError, OutcomeIssue
from takamul.fhir.validation import validate_resource
from takamul.mpi.service import ClientRegistry, MatchResult
from takamul.rest import interactions as ix
from takamul.store.guard import current_guard

__all__ = ["add_registry_routes", "parse_match_parameters"]

MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
JSON = "application/json"


def parse_match_parameters(body: Any) -> tuple[dict[str, Any], bool, int | None]:
    """(resource, onlyCertainMatches, count) of a $match Parameters body, or a clear error."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FhirError(400, "$match takes a Parameters resource", "invalid")
    resource: dict[str, Any] | None = None
    only_certain = False
    count: int | None = None
    for n, p in enumerate(body.get("parameter") or ()):
        name = p.get("name") if isinstance(p, dict) else None
        where = f"Parameters.parameter[{n}]"
        if name == "resource":
            resource = p.get("resource")
        elif name == "onlyCertainMatches":
            if not isinstance(p.get("valueBoolean"), bool):
                raise FhirError(400, OutcomeIssue("error", "invalid", "needs valueBoolean", where))
            only_certain = p["valueBoolean"]
        elif name == "count":
            value = p.get("valueInteger")
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise FhirError(
                    400, OutcomeIssue("error", "invalid", "needs a positive valueInteger", where)
                )
            count = value
        else:
            raise FhirError(
                400,
                OutcomeIssue("error", "not-supported", f"unknown $match parameter {name!r}", where),
            )
    if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
        raise FhirError(
            400,
            OutcomeIssue(
                "error",
                "required",
                "$match needs a 'resource' parameter holding a Patient",
                "Parameters.parameter",
            ),
        )
    problems = [i for i in validate_resource(resource, "Patient") if i.severity == "error"]
    if problems:
        raise FhirError(400, [_inside_parameters(i) for i in problems])
    return resource, only_certain, count


def _inside_parameters(issue: Any) -> OutcomeIssue:
    """An issue of the Patient, located inside the Parameters that carried it."""
    where = (issue.expression or "Patient").removeprefix("Patient").lstrip(".")
    path = "Parameters.parameter.resource" + (f".{where}" if where else "")
    return OutcomeIssue("error", issue.code, issue.diagnostics, path)


def match_bundle(results: list[MatchResult], patients: dict[str, Any], base: str) -> dict[str, Any]:
    entries = []
    for m in results:
        body = patients.get(m.patient_id)
        if body is None:
            continue
        entries.append(
            {
                "fullUrl": f"{base}/Patient/{m.patient_id}",
                "resource": body,
                "search": {
                    "extension": [{"url": MATCH_GRADE, "valueCode": m.grade}],
                    "mode": "match",
                    "score": round(m.probability, 6),
                },
            }
        )
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}


def _json(status: int, body: Any) -> Response:
    return Response(orjson.dumps(body), status, media_type=JSON)


async def _body(request: Request) -> dict[str, Any]:
    body = ix.parse_json(await request.body())
    if not isinstance(body, dict):
        raise FhirError(400, "The request body must be a JSON object")
    return body


def _optional(body: dict[str, Any], key: str) -> str | None:
    return None if body.get(key) is None else _text(body, key)


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise FhirError(
            400, OutcomeIssue("error", "required", f"'{key}' must be a non-empty string", key)
        )
    return value.strip()


def _two(body: dict[str, Any]) -> tuple[str, str]:
    patients = body.get("patients")
    if (
        not isinstance(patients, list)
        or len(patients) != 2
        or not all(isinstance(p, str) and p for p in patients)
    ):
        raise FhirError(
            400,
            OutcomeIssue("error", "required", "'patients' must list two Patient ids", "patients"),
        )
    return patients[0].removeprefix("Patient/"), patients[1].removeprefix("Patient/")


def _row_id(value: str, what: str) -> int:
    """A review or event number; anything else (or beyond a 63-bit row id) is not found."""
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise FhirError(404, f"There is no {what} {value!r}", "not-found")
    return int(value)


def add_registry_routes(
    app: FastAPI, registry: ClientRegistry, base_of: Callable[[Request], str]
) -> None:

    @app.post("/fhir/Patient/$match")
    async def match(request: Request) -> Response:
        body = ix.parse_json(await request.body())
        resource, only_certain, count = parse_match_parameters(body)
        base = base_of(request)

        def run() -> bytes:
            # off the event loop: scoring waits for a registry write in progress
            results = registry.match(resource, only_certain)
            patients = registry.patients([m.patient_id for m in results])
            guard = current_guard.get()
            if guard is not None:
                # scored in memory, so the store's guard is applied here: only the Patients the
                # requester may read come back
                guard.require("Patient", "s")
                results = [
                    m
                    for m in results
                    if m.patient_id in patients
                    and guard.visible("Patient", patients[m.patient_id], "r")
                ]
            results = results[: count or 10]
            return orjson.dumps(match_bundle(results, patients, base))

        content = await run_in_threadpool(run)
        return Response(content, 200, media_type="application/fhir+json")

    @app.get("/mpi/reviews")
    def reviews(request: Request) -> Response:
        args = dict(request.query_params)
        status = args.get("status", "open")
        count = ix._int_param("_count", args.get("_count"), 50)
        offset = ix._int_param("_offset", args.get("_offset"), 0)
        items, total = registry.reviews(None if status == "all" else status, count, offset)
        return _json(200, {"total": total, "reviews": items})

    @app.get("/mpi/reviews/{review_id}")
    def review(review_id: str) -> Response:
        return _json(200, registry.review(_row_id(review_id, "review")))

    @app.post("/mpi/reviews/{review_id}")
    async def decide(review_id: str, request: Request) -> Response:
        body = await _body(request)
        number = _row_id(review_id, "review")
        decision = _text(body, "decision")
        event = await run_in_threadpool(
            registry.decide,
            number,
            decision,
            _text(body, "reviewer"),
            _optional(body, "reason"),
        )
        return _json(200, {"event": event, "review": registry.review(number)})

    @app.post("/mpi/link")
    async def link(request: Request) -> Response:
        body = await _body(request)
        a, b = _two(body)
        event = await run_in_threadpool(
            registry.link, a, b, _text(body, "reviewer"), _optional(body, "reason")
        )
        return _json(200, {"event": event, "person": registry.person_of(a)})

    @app.post("/mpi/not-duplicate")
    async def not_duplicate(request: Request) -> Response:
        body = await _body(request)
        a, b = _two(body)
        event = await run_in_threadpool(
            registry.not_duplicate, a, b, _text(body, "reviewer"), _optional(body, "reason")
        )
        return _json(
            200, {"event": event, "persons": [registry.person_of(a), registry.person_of(b)]}
        )

    @app.post("/mpi/unlink")
    async def unlink(request: Request) -> Response:
        body = await _body(request)
        pid = _text(body, "patient").removeprefix("Patient/")
        event = await run_in_threadpool(
            registry.unlink, pid, _text(body, "reviewer"), _optional(body, "reason")
        )
        return _json(200, {"event": event, "person": registry.person_of(pid)})

    @app.get("/mpi/events")
    def events(request: Request) -> Response:
        args = dict(request.query_params)
        count = ix._int_param("_count", args.get("_count"), 50)
        patient = args.get("patient")
        return _json(200, {"events": registry.events(patient, count)})

    @app.post("/mpi/events/{event_id}/revert")
    async def revert(event_id: str, request: Request) -> Response:
        body = await _body(request)
        event = await run_in_threadpool(
            registry.revert,
            _row_id(event_id, "registry event"),
            _text(body, "reviewer"),
            _optional(body, "reason"),
        )
        return _json(200, {"event": event})

    @app.get("/mpi/patients/{patient_id}")
    def patient(patient_id: str) -> Response:
        person, members, manual = registry.placement(patient_id)
        if person is None:
            raise FhirError(404, f"Patient/{patient_id} is not in the client registry", "not-found")
        return _json(
            200,
            {
                "patient": f"Patient/{patient_id}",
                "person": f"Person/{person}",
                "members": [f"Patient/{p}" for p in members],
                "manual": manual,
                "decisions": registry.decisions(patient_id),
            },
        )
