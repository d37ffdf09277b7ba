"""The FHIR RESTful interactions (http.html), shared by the HTTP routes and Bundle entries.

Each takes a store Session and the parsed request and returns a Result; status codes and
headers follow R4 http.html.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import orjson

from takamul.fhir.outcome import FhirError, OutcomeIssue, operation_outcome
from takamul.fhir.search_values import date_range
from takamul.rest.rendering import history_bundle, paging_links, search_bundle, subset
from takamul.store.records import StoredResource
from takamul.store.repository import Session, WriteOptions, check_if_match, parse_criteria


@dataclass(slots=True)
class Result:
    status: int
    body: bytes | dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    stored: StoredResource | None = None


@dataclass(frozen=True, slots=True)
class RequestContext:
    base: str  # e.g. http://host:8080/fhir
    prefer_return: str = "representation"
    lenient: bool = False
    source: str | None = None


def resource_result(
    stored: StoredResource, ctx: RequestContext, status: int = 200, location: bool = False
) -> Result:
    headers = {"ETag": stored.etag, "Last-Modified": stored.last_modified}
    if location:
        headers["Location"] = f"{ctx.base}/{stored.reference}/_history/{stored.version}"
    body: bytes | dict[str, Any] | None = stored.content
    if ctx.prefer_return == "minimal":
        body = None
    elif ctx.prefer_return == "OperationOutcome":
        verb = "Created" if status == 201 else "Stored"
        body = operation_outcome(
            [
                OutcomeIssue(
                    "information",
                    "informational",
                    f"{verb} {stored.reference} version {stored.version}",
                )
            ]
        )
    return Result(status, body, headers, stored)


def read(
    session: Session,
    rtype: str,
    rid: str,
    summary: str | None = None,
    elements: list[str] | None = None,
) -> Result:
    stored = session.read(rtype, rid)
    headers = {"ETag": stored.etag, "Last-Modified": stored.last_modified}
    if summary or elements:
        return Result(200, subset(stored.json(), summary, elements), headers, stored)
    return Result(200, stored.content, headers, stored)


def vread(session: Session, rtype: str, rid: str, vid: str) -> Result:
    stored = session.vread(rtype, rid, vid)
    return Result(
        200, stored.content, {"ETag": stored.etag, "Last-Modified": stored.last_modified}, stored
    )


def create(
    session: Session,
    rtype: str,
    body: dict[str, Any],
    ctx: RequestContext,
    if_none_exist: str | None = None,
) -> Result:
    check_type(body, rtype)
    stored = session.create(body, if_none_exist, WriteOptions(ctx.source))
    if not stored.created:
        return resource_result(stored, ctx, 200)
    return resource_result(stored, ctx, 201, location=True)


def update(
    session: Session,
    rtype: str,
    rid: str,
    body: dict[str, Any],
    ctx: RequestContext,
    if_match: str | None = None,
) -> Result:
    stored = session.update(rtype, rid, body, if_match, WriteOptions(ctx.source))
    return resource_result(stored, ctx, 201 if stored.created else 200, location=stored.created)


def conditional_update(
    session: Session,
    rtype: str,
    criteria: list[tuple[str, str]],
    body: dict[str, Any],
    ctx: RequestContext,
) -> Result:
    stored = session.conditional_update(rtype, criteria, body, WriteOptions(ctx.source))
    return resource_result(stored, ctx, 201 if stored.created else 200, location=stored.created)


def patch(
    session: Session,
    rtype: str,
    rid: str,
    operations: Any,
    ctx: RequestContext,
    if_match: str | None = None,
) -> Result:
    current = session.read(rtype, rid)
    if if_match is not None:
        # Before applying the patch: a stale version is a 412 whatever the patch holds.
        check_if_match(if_match, current.version, rtype, rid)
    if not isinstance(operations, list):
        raise FhirError(400, "A JSON Patch body must be an array of operations (RFC 6902)")
    try:
        patched = jsonpatch.JsonPatch(operations).apply(current.json())
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as err:
        raise FhirError(422, f"The JSON Patch cannot be applied: {err}", "processing") from err
    if patched.get("id") != rid or patched.get("resourceType") != rtype:
        raise FhirError(422, "A patch must not change resourceType or id", "processing")
    stored = session.update(rtype, rid, patched, None, WriteOptions(ctx.source), method="PATCH")
    return resource_result(stored, ctx, 200)


def delete(session: Session, rtype: str, rid: str) -> Result:
    stored = session.delete(rtype, rid)
    headers = {"ETag": stored.etag} if stored else {}
    return Result(204, None, headers)


def conditional_delete(session: Session, rtype: str, criteria: list[tuple[str, str]]) -> Result:
    found = session.find(rtype, criteria)
    if len(found) > 1:
        raise FhirError(
            412,
            f"The criteria match more than one {rtype}; conditional delete of "
            "several resources is not supported",
            "multiple-matches",
        )
    if found:
        session.delete(rtype, found[0].id)
    return Result(204)


def search(
    session: Session, rtype: str, params: list[tuple[str, str]], ctx: RequestContext
) -> Result:
    query = session.parse_search(rtype, params, ctx.lenient)
    page = session.search(query)
    outcome = operation_outcome(query.warnings) if query.warnings else None
    bundle = search_bundle(
        page, ctx.base, rtype, query.used, query.summary, query.elements, outcome
    )
    return Result(200, bundle)


def history(
    session: Session,
    rtype: str | None,
    rid: str | None,
    params: list[tuple[str, str]],
    ctx: RequestContext,
    default_count: int,
) -> Result:
    args = dict(params)
    unknown = set(args) - {"_since", "_count", "_offset", "_format", "_pretty", "_at", "_list"}
    if unknown and not ctx.lenient:
        raise FhirError(
            400, f"Unknown history parameter(s): {', '.join(sorted(unknown))}", "not-supported"
        )
    since_text = args.get("_since")
    since = _instant_param("_since", since_text) if since_text else None
    count = _int_param("_count", args.get("_count"), default_count)
    offset = _int_param("_offset", args.get("_offset"), 0)
    if rid is not None and rtype is not None:
        session.read_any(rtype, rid)
    versions, total = session.history(rtype, rid, since, count, offset)
    path = "" if rtype is None else f"/{rtype}" + ("" if rid is None else f"/{rid}")
    bundle = history_bundle(
        versions, total, ctx.base, f"{path}/_history", count, offset, since_text
    )
    return Result(200, bundle)


# Patient-everything's parameters that are implemented (start and end are not).
EVERYTHING_PARAMS = frozenset({"_since", "_type", "_count", "_offset", "_format", "_pretty"})


def everything(
    session: Session,
    patient_id: str,
    params: list[tuple[str, str]],
    ctx: RequestContext,
    default_count: int,
) -> Result:
    args = dict(params)
    unknown = set(args) - EVERYTHING_PARAMS
    if unknown and not ctx.lenient:
        raise FhirError(
            400,
            f"Patient/$everything does not support {', '.join(sorted(unknown))}; it takes "
            f"{', '.join(sorted(EVERYTHING_PARAMS - {'_format', '_pretty'}))}",
            "not-supported",
        )
    since = _instant_param("_since", args["_since"]) if "_since" in args else None
    # _type may repeat (a Parameters body carries one type per parameter) or list types
    types = [t for k, v in params if k == "_type" for t in v.split(",") if t] or None
    for t in types or []:
        if not session.defs.is_resource_type(t):
            raise FhirError(400, f"Unknown resource type '{t}' in _type")
    count = _int_param("_count", args.get("_count"), default_count)
    offset = _int_param("_offset", args.get("_offset"), 0)
    rows, total = session.compartment(patient_id, since, types, count, offset)
    extra = [(k, v) for k, v in params if k in ("_since", "_type")]
    links = paging_links(
        f"{ctx.base}/Patient/{patient_id}/$everything", extra, count, offset, total
    )
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
    }
    if rows:
        bundle["entry"] = [
            {
                "fullUrl": f"{ctx.base}/{r.reference}",
                "resource": r.json(),
                "search": {"mode": "match"},
            }
            for r in rows
        ]
    return Result(200, bundle)


# -- parsing helpers -----------------------------------------------------------------


# The value[x] types a Parameters body of an operation may carry, as query-string text.
PARAMETER_VALUES = (
    "valueString",
    "valueCode",
    "valueUri",
    "valueInstant",
    "valueDateTime",
    "valueDate",
    "valueInteger",
    "valuePositiveInt",
    "valueUnsignedInt",
    "valueId",
)


def operation_parameters(body: Any) -> list[tuple[str, str]]:
    """(name, value) pairs of a Parameters resource with primitive values, as in a query."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FhirError(
            400,
            "The body of an operation must be a Parameters resource "
            '({"resourceType": "Parameters", "parameter": [...]})',
        )
    entries = body.get("parameter", [])
    if not isinstance(entries, list):
        raise FhirError(400, "Parameters.parameter must be an array", "structure")
    out = []
    for n, entry in enumerate(entries):
        where = f"Parameters.parameter[{n}]"
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise FhirError(
                400, OutcomeIssue("error", "required", "Each parameter needs a name", where)
            )
        values = [entry[k] for k in PARAMETER_VALUES if k in entry]
        if len(values) != 1 or isinstance(values[0], (dict, list, bool)) or values[0] is None:
            raise FhirError(
                400,
                OutcomeIssue(
                    "error",
                    "invalid",
                    f"Parameter '{name}' needs exactly one primitive value "
                    f"({', '.join(PARAMETER_VALUES)})",
                    where,
                ),
            )
        out.append((name, str(values[0])))
    return out


def check_type(body: Any, rtype: str) -> None:
    if not isinstance(body, dict):
        raise FhirError(400, "The body must be a JSON object holding a FHIR resource")
    if body.get("resourceType") != rtype:
        raise FhirError(
            400,
            OutcomeIssue(
                "error",
                "invalid",
                f"The body is a {body.get('resourceType')!r} but the URL is for {rtype}; send the "
                f"resource to its own type's endpoint",
                "resourceType",
            ),
        )


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise FhirError(400, "The request body is empty; send a FHIR resource as JSON")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise FhirError(
            400,
            OutcomeIssue(
                "error",
                "structure",
                f"The body is not valid JSON: {err}. Send application/fhir+json",
            ),
        ) from err


MAX_INT_PARAM = 2**31 - 1  # beyond it a database integer overflows


def _int_param(name: str, value: str | None, default: int) -> int:
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_INT_PARAM:
        raise FhirError(
            400, f"{name} must be an integer from 0 to {MAX_INT_PARAM}, not '{value[:40]}'"
        )
    return int(value)


def _instant_param(name: str, value: str) -> float:
    try:
        return date_range(value)[0]
    except ValueError as err:
        raise FhirError(400, f"{name} must be a FHIR instant, not '{value}'") from err


def criteria_of(query: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in query if k not in ("_format", "_pretty")]


__all__ = ["RequestContext", "Result", "parse_criteria"]
