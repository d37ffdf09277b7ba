"""The guard inside search clauses: chains and ``_has`` look into resources of other types, and
those resources answer to the same rules as the resources a search returns.

Without this a requester could learn what it may not see one query at a time: a client that may
search only Patients would find who has an HIV result through
``Patient?_has:Observation:subject:code=…``, and a facility would learn another facility's
patient's birth date through ``Observation?performer:Patient.birthdate=…``. So every nested
clause is narrowed exactly as a search of its type would be:

- a type the requester may not search is a 403 for ``_has`` (refusing it depends only on the
  token, so it reveals nothing); among a chain's possible target types those it may not search
  are dropped, and a 403 follows only when none is left;
- the guard's restrictions for the type (granular scopes, patient context, facility) are ANDed
  into the nested query as SQL;
- the guard's internal filters (consent, by label and patient) likewise;
- where the guard must check resources one by one (a database whose data is not yet labelled),
  the nested matches are checked with ``visible`` and only those it lets through take part, as
  row keys.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
from sqlalchemy import select

from takamul.fhir.outcome import FhirError
from takamul.store.guard import Guard
from takamul.store.query import Filter, HasFilter, ParamFilter, QueryParser, SpecialFilter
from takamul.store.schema import resource
from takamul.store.search import matching_rids

__all__ = ["guard_nested"]


def guard_nested(session: Any, guard: Guard, filters: list[Filter]) -> list[Filter]:
    """``filters`` with every chain and ``_has`` narrowed to what the guard lets through."""
    return [_guard_filter(session, guard, f) for f in filters]


def _guard_filter(session: Any, guard: Guard, f: Filter) -> Filter:
    if isinstance(f, HasFilter):
        guard.require(f.source_type, "s")
        return replace(f, inner=_scoped(session, guard, f.source_type, f.inner))
    if isinstance(f, ParamFilter) and f.chain is not None:
        allowed = [(t, inner) for t, inner in f.chain.inner if _may_search(guard, t)]
        if not allowed:
            # every target type is refused: say so, naming the first
            guard.require(f.chain.inner[0][0], "s")
        chain = replace(
            f.chain,
            inner=tuple((t, _scoped(session, guard, t, inner)) for t, inner in allowed),
        )
        return replace(f, chain=chain)
    return f


def _may_search(guard: Guard, resource_type: str) -> bool:
    try:
        guard.require(resource_type, "s")
    except FhirError:
        return False
    return True


def _scoped(
    session: Any, guard: Guard, resource_type: str, inner: tuple[Filter, ...]
) -> tuple[Filter, ...]:
    """The nested clauses on ``resource_type`` with the guard's rules for that type."""
    inner = tuple(guard_nested(session, guard, list(inner)))
    restrictions = guard.restrictions(session, resource_type)
    if restrictions:
        parser = QueryParser(resource_type, False, 1, 1)
        inner = (*inner, *parser.parse(restrictions).filters)
    inner = (*inner, *guard.filters(session, resource_type))
    if not guard.exhaustive(resource_type):
        return inner
    return (_visible_rows(session, guard, resource_type, inner),)


def _visible_rows(
    session: Any, guard: Guard, resource_type: str, inner: tuple[Filter, ...]
) -> SpecialFilter:
    """The nested matches the guard lets through, checked one by one, as row keys."""
    rows = session.conn.execute(
        select(resource.c.rid, resource.c.content).where(
            resource.c.rid.in_(matching_rids(resource_type, list(inner)))
        )
    )
    visible = tuple(
        str(row.rid)
        for row in rows
        if row.content and guard.visible(resource_type, _json(row.content), "r")
    )
    return SpecialFilter(resource_type, "_rid", None, visible)


def _json(content: bytes | str) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(content)
    return loaded
