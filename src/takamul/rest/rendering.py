"""Rendering of stored resources and search pages as FHIR JSON: Bundles, links, summaries."""

from __future__ import annotations

from functools import cache
from typing import Any
from urllib.parse import urlencode

import orjson

from takamul.fhir.definitions import definitions
from takamul.store.records import SearchPage, StoredResource, instant

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "Resource encoded in summary mode",
}


def subset(body: dict[str, Any], summary: str | None, elements: list[str] | None) -> dict[str, Any]:
    """Apply ``_summary`` (true, text, data) or ``_elements`` to one resource."""
    if (summary in (None, "false", "count")) and not elements:
        return body
    rtype = body["resourceType"]
    keep = {"resourceType", "id", "meta"}
    mandatory, in_summary = _top_level_names(rtype)
    if summary == "data":
        kept = {k: v for k, v in body.items() if k != "text"}
    else:
        if summary == "true":
            wanted = set(in_summary)
        elif summary == "text":
            wanted = {"text"} | mandatory
        else:
            wanted = set(elements or ()) | mandatory
        kept = {
            k: v
            for k, v in body.items()
            if k in keep or k.lstrip("_") in wanted or _choice_stem(k, wanted)
        }
    meta = dict(kept.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    kept["meta"] = meta
    return kept


@cache
def _top_level_names(resource_type: str) -> tuple[frozenset[str], frozenset[str]]:
    """(required, in-summary) top-level element names of a type, computed once per type."""
    elements = [
        el for p, el in definitions().types[resource_type].elements.items() if p.count(".") == 1
    ]
    return (
        frozenset(el.name for el in elements if el.min > 0),
        frozenset(el.name for el in elements if el.summary),
    )


def _choice_stem(key: str, wanted: set[str]) -> bool:
    # valueQuantity is the element value[x]: _elements=value keeps it.
    return any(key.startswith(w) and key[len(w) : len(w) + 1].isupper() for w in wanted)


def search_bundle(
    page: SearchPage,
    base: str,
    resource_type: str,
    used: list[tuple[str, str]],
    summary: str | None,
    elements: list[str] | None,
    outcome: dict[str, Any] | None = None,
) -> dict[str, Any]:
    entries = [_entry(base, s, "match", summary, elements) for s in page.matches] + [
        _entry(base, s, "include", summary, elements) for s in page.included
    ]
    if outcome is not None:
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if page.total is not None:
        bundle["total"] = page.total
    bundle["link"] = _links(base, resource_type, used, page)
    bundle["entry"] = entries
    if not entries:
        del bundle["entry"]
    return bundle


def _entry(
    base: str, stored: StoredResource, mode: str, summary: str | None, elements: list[str] | None
) -> dict[str, Any]:
    body = subset(stored.json(), summary, elements)
    return {"fullUrl": f"{base}/{stored.reference}", "resource": body, "search": {"mode": mode}}


def _links(
    base: str, resource_type: str, used: list[tuple[str, str]], page: SearchPage
) -> list[dict[str, str]]:
    def url(offset: int) -> str:
        params = [*used, ("_count", str(page.count)), ("_offset", str(offset))]
        params = [p for p in params if p[0] != "_count"] + [("_count", str(page.count))]
        return f"{base}/{resource_type}?{urlencode(params)}"

    links = [{"relation": "self", "url": url(page.offset)}, {"relation": "first", "url": url(0)}]
    if page.has_next:
        links.append({"relation": "next", "url": url(page.offset + page.count)})
    if page.offset > 0:
        links.append({"relation": "previous", "url": url(max(0, page.offset - page.count))})
    if page.total is not None and page.total_exact and page.count > 0:
        last = max(0, (page.total - 1) // page.count * page.count)
        links.append({"relation": "last", "url": url(last)})
    return links


def history_bundle(
    versions: list[StoredResource],
    total: int,
    base: str,
    path: str,
    count: int,
    offset: int,
    since: str | None,
) -> dict[str, Any]:
    entries = []
    for v in versions:
        entry: dict[str, Any] = {"fullUrl": f"{base}/{v.reference}"}
        if v.content:
            entry["resource"] = v.json()
        entry["request"] = {
            "method": v.method,
            "url": v.resource_type if v.method == "POST" else v.reference,
        }
        entry["response"] = {
            "status": "201" if v.method == "POST" else ("204" if v.deleted else "200"),
            "etag": v.etag,
            "lastModified": instant(v.last_updated),
        }
        entries.append(entry)

    extra = [("_since", since)] if since else []
    links = paging_links(f"{base}{path}", extra, count, offset, total)
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "history",
        "total": total,
        "link": links,
    }
    if entries:
        bundle["entry"] = entries
    return bundle


def paging_links(
    url: str, params: list[tuple[str, str]], count: int, offset: int, total: int
) -> list[dict[str, str]]:
    """self, next and previous links of an offset-paged Bundle (history, $everything)."""

    def link(off: int) -> str:
        return f"{url}?{urlencode([*params, ('_count', str(count)), ('_offset', str(off))])}"

    links = [{"relation": "self", "url": link(offset)}]
    if offset + count < total:
        links.append({"relation": "next", "url": link(offset + count)})
    if offset > 0:
        links.append({"relation": "previous", "url": link(max(0, offset - count))})
    return links


def dumps(body: Any) -> bytes:
    return orjson.dumps(body)
