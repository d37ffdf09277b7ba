"""Batch and transaction Bundles (http.html#transaction): processing order, atomicity, and the
resolution of ``urn:uuid:`` and conditional references before anything is stored.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from takamul.fhir.outcome import FhirError, OutcomeIssue
from takamul.rest import interactions as ix
from takamul.rest.interactions import RequestContext, Result
from takamul.store.repository import Session, Store, valid_id

# Transaction processing order of R4 http.html#trules.
ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


@dataclass(slots=True)
class Entry:
    index: int
    method: str
    url: str
    resource: Any
    full_url: str | None
    request: dict[str, Any]


def process(store: Store, bundle: Any, ctx: RequestContext, default_count: int) -> dict[str, Any]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirError(400, "POST to the base URL takes a Bundle of type batch or transaction")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise FhirError(
            400,
            OutcomeIssue(
                "error",
                "invalid",
                f"Bundle.type must be batch or transaction, not {kind!r}",
                "Bundle.type",
            ),
        )
    entries = _entries(bundle)
    if kind == "transaction":
        results = store.write(lambda s: _transaction(s, entries, ctx, default_count))
    else:
        results = [_batch_entry(store, e, ctx, default_count) for e in entries]
    return {
        "resourceType": "Bundle",
        "type": f"{kind}-response",
        "entry": [_response_entry(r, ctx) for r in results],
    }


def _entries(bundle: dict[str, Any]) -> list[Entry]:
    out = []
    for i, raw in enumerate(bundle.get("entry") or []):
        where = f"Bundle.entry[{i}]"
        request = raw.get("request") if isinstance(raw, dict) else None
        if not isinstance(request, dict) or "method" not in request or "url" not in request:
            raise FhirError(
                400,
                OutcomeIssue(
                    "error",
                    "required",
                    "Each entry needs request.method and request.url",
                    f"{where}.request",
                ),
            )
        method = str(request["method"]).upper()
        if method not in ORDER:
            raise FhirError(
                400,
                OutcomeIssue(
                    "error", "invalid", f"Unsupported method {method}", f"{where}.request"
                ),
            )
        out.append(
            Entry(i, method, str(request["url"]), raw.get("resource"), raw.get("fullUrl"), request)
        )
    return out


# -- transaction ---------------------------------------------------------------------


def _transaction(
    session: Session, entries: list[Entry], ctx: RequestContext, default_count: int
) -> list[Result]:
    ids = _assign_ids(session, entries)
    results: dict[int, Result] = {}
    for entry in sorted(entries, key=lambda e: (ORDER[e.method], e.index)):
        if entry.resource is not None:
            entry.resource = _rewrite(entry.resource, ids, session, entry.index)
        try:
            results[entry.index] = _run(session, entry, ctx, default_count, ids)
        except FhirError as err:
            raise FhirError(
                err.status,
                [
                    OutcomeIssue(
                        i.severity,
                        i.code,
                        f"Bundle.entry[{entry.index}]: {i.diagnostics}",
                        _prefix_expr(i.expression, entry.index),
                    )
                    for i in err.issues
                ],
            ) from err
    return [results[i] for i in range(len(entries))]


def _prefix_expr(expression: str | None, index: int) -> str:
    base = f"Bundle.entry[{index}].resource"
    return (
        f"{base}.{expression.split('.', 1)[1]}"
        if expression and "." in expression
        else (f"Bundle.entry[{index}]" if not expression else f"{base}")
    )


def _assign_ids(session: Session, entries: list[Entry]) -> dict[str, str]:
    """Map each entry's fullUrl (urn:uuid:...) to the Type/id it will have once stored."""
    ids: dict[str, str] = {}
    for e in entries:
        if not e.full_url or not isinstance(e.resource, dict):
            continue
        rtype = e.resource.get("resourceType")
        if e.method == "POST":
            cond = e.request.get("ifNoneExist")
            if cond:
                found = session.find_for_create(str(rtype), str(cond))
                if len(found) == 1:
                    ids[e.full_url] = found[0].reference
                    e.request["_existing"] = found[0].id
                    continue
                if len(found) > 1:
                    raise FhirError(
                        412,
                        f"Bundle.entry[{e.index}]: ifNoneExist matches several {rtype}",
                        "multiple-matches",
                    )
            new_id = str(uuid.uuid4())
            e.request["_assigned_id"] = new_id
            ids[e.full_url] = f"{rtype}/{new_id}"
        elif e.method == "PUT" and "?" not in e.url:
            ids[e.full_url] = e.url.strip("/")
        elif e.method == "PUT":
            target = _conditional_target(session, e)
            ids[e.full_url] = target
    return ids


def _conditional_target(session: Session, e: Entry) -> str:
    rtype, _, query = e.url.partition("?")
    found = session.find(rtype, parse_qsl(query, keep_blank_values=True))
    if len(found) > 1:
        raise FhirError(
            412,
            f"Bundle.entry[{e.index}]: the conditional update matches several {rtype}",
            "multiple-matches",
        )
    if found:
        e.request["_existing"] = found[0].id
        return found[0].reference
    new_id = str(e.resource.get("id") or uuid.uuid4())
    e.request["_assigned_id"] = new_id
    return f"{rtype}/{new_id}"


def _rewrite(resource: Any, ids: dict[str, str], session: Session, index: int) -> Any:
    """Replace urn:uuid: and conditional references (Type?criteria) with Type/id everywhere."""
    if isinstance(resource, dict):
        out = {}
        for k, v in resource.items():
            if k == "reference" and isinstance(v, str):
                out[k] = _resolve(v, ids, session, index)
            else:
                out[k] = _rewrite(v, ids, session, index)
        return out
    if isinstance(resource, list):
        return [_rewrite(v, ids, session, index) for v in resource]
    if isinstance(resource, str) and resource in ids and resource.startswith("urn:"):
        return ids[resource]  # e.g. a urn:uuid: in a canonical or uri element
    return resource


def _resolve(ref: str, ids: dict[str, str], session: Session, index: int) -> str:
    if ref in ids:
        return ids[ref]
    if ref.startswith("urn:uuid:"):
        raise FhirError(
            400,
            f"Bundle.entry[{index}]: reference {ref} points to no entry of the transaction",
            "not-found",
        )
    if "?" in ref and not ref.startswith(("http://", "https://")):
        rtype, _, query = ref.partition("?")
        found = session.find(rtype, parse_qsl(query, keep_blank_values=True))
        if len(found) != 1:
            how = "no" if not found else "more than one"
            raise FhirError(
                412,
                OutcomeIssue(
                    "error",
                    "not-found" if not found else "multiple-matches",
                    f"Bundle.entry[{index}]: the conditional reference '{ref}' matches {how} "
                    f"{rtype}; it must match exactly one",
                    f"Bundle.entry[{index}].resource",
                ),
            )
        ids[ref] = found[0].reference
        return ids[ref]
    return ref


def _run(
    session: Session, e: Entry, ctx: RequestContext, default_count: int, ids: dict[str, str]
) -> Result:
    path, _, query = e.url.partition("?")
    parts = [p for p in urlsplit(path).path.split("/") if p]
    params = parse_qsl(query, keep_blank_values=True)
    if e.method == "GET" or e.method == "HEAD":
        return _get(session, parts, params, ctx, default_count)
    if e.method == "DELETE":
        if len(parts) == 2:
            return ix.delete(session, parts[0], parts[1])
        return ix.conditional_delete(session, parts[0], params)
    if e.method == "POST":
        return _post(session, e, parts, ctx)
    if e.method == "PUT":
        return _put(session, e, parts, params, ctx)
    # PATCH with a Binary of JSON Patch, as R4 allows in bundles.
    ops = _patch_ops(e)
    return ix.patch(session, parts[0], parts[1], ops, ctx, e.request.get("ifMatch"))


def _post(session: Session, e: Entry, parts: list[str], ctx: RequestContext) -> Result:
    if len(parts) != 1:
        raise FhirError(400, f"POST url must be a resource type, not '{e.url}'")
    if "_existing" in e.request:
        return ix.read(session, parts[0], e.request["_existing"])
    assigned = e.request.get("_assigned_id")
    if assigned:
        ix.check_type(e.resource, parts[0])
        stored = session.update(
            parts[0],
            assigned,
            {**e.resource, "id": assigned},
            None,
            ix.WriteOptions(ctx.source),
            method="POST",
            expect_new=True,  # a new uuid4 of _assign_ids
        )
        stored.created = True
        return ix.resource_result(stored, ctx, 201, location=True)
    return ix.create(session, parts[0], e.resource, ctx, e.request.get("ifNoneExist"))


def _put(
    session: Session, e: Entry, parts: list[str], params: list[tuple[str, str]], ctx: RequestContext
) -> Result:
    if len(parts) == 2:
        return ix.update(session, parts[0], parts[1], e.resource, ctx, e.request.get("ifMatch"))
    rtype = parts[0]
    target = e.request.get("_existing") or e.request.get("_assigned_id")
    if target:
        ix.check_type(e.resource, rtype)
        if not valid_id(str(target)):
            raise FhirError(400, f"'{target}' is not a valid id")
        return ix.update(session, rtype, str(target), {**e.resource, "id": target}, ctx)
    return ix.conditional_update(session, rtype, params, e.resource, ctx)


def _get(
    session: Session,
    parts: list[str],
    params: list[tuple[str, str]],
    ctx: RequestContext,
    default_count: int,
) -> Result:
    if len(parts) == 1:
        return ix.search(session, parts[0], params, ctx)
    if len(parts) == 2:
        return ix.read(session, parts[0], parts[1])
    if len(parts) == 4 and parts[2] == "_history":
        return ix.vread(session, parts[0], parts[1], parts[3])
    if len(parts) == 3 and parts[2] == "$everything":
        return ix.everything(session, parts[1], params, ctx, default_count)
    raise FhirError(400, f"Unsupported GET url in a bundle: {'/'.join(parts)}")


def _patch_ops(e: Entry) -> Any:
    res = e.resource
    if isinstance(res, dict) and res.get("resourceType") == "Binary" and res.get("data"):
        import base64

        return orjson.loads(base64.b64decode(res["data"]))
    raise FhirError(
        400, f"Bundle.entry[{e.index}]: PATCH needs a Binary resource holding a JSON Patch document"
    )


# -- batch ---------------------------------------------------------------------------


def _batch_entry(store: Store, e: Entry, ctx: RequestContext, default_count: int) -> Result:
    try:
        if e.method in ("GET", "HEAD"):
            with store.reading() as session:
                return _run(session, e, ctx, default_count, {})
        return store.write(lambda s: _run(s, e, ctx, default_count, {}))
    except FhirError as err:
        return Result(err.status, err.outcome())


def _response_entry(result: Result, ctx: RequestContext) -> dict[str, Any]:
    response: dict[str, Any] = {"status": str(result.status)}
    if result.stored is not None:
        response["location"] = f"{result.stored.reference}/_history/{result.stored.version}"
        response["etag"] = result.stored.etag
    entry: dict[str, Any] = {}
    body = result.body
    if isinstance(body, bytes):
        body = orjson.loads(body)
    if isinstance(body, dict):
        if result.status >= 400:
            response["outcome"] = body
        else:
            entry["resource"] = body
            if result.stored is not None:
                entry["fullUrl"] = f"{ctx.base}/{result.stored.reference}"
    entry["response"] = response
    return entry


__all__ = ["process"]
