"""From an indicator's gap to action: worklists of the people behind it, as FHIR Tasks and Lists.

For a favourable indicator (screening coverage, control) the people behind the gap are the
denominator's members not in the numerator; for an adverse one (the mental health treatment gap)
they are the numerator's members. They are filtered by subgroup (e.g. the poorest income
quintile), then ordered for community health workers:

1. **need**, highest first: the indicator's ``outreach.need`` SQL (risk factors for screening,
   the latest HbA1c for diabetes control, the latest PHQ-9/GAD-7 score for mental health);
2. **deprivation**: income quintile, poorest first (unknown last);
3. **distance** to the nearest primary care centre, farthest first (unknown last): the people
   least likely to come by themselves;
4. the person key, so the order is reproducible.

Each person becomes one ``Task`` (status ``requested``, intent ``plan``, ``for`` their Patient
record, ``owner`` their home facility's Organization or unassigned, ``priority`` ``urgent`` when
the need reaches the indicator's ``urgent_need``, else ``routine``), with an identifier and an
``ifNoneExist`` so a worklist run again does not duplicate open Tasks; a ``List`` (mode
``working``, ordered by priority) groups them, one per worklist or one per home facility. The
result is a transaction Bundle to POST to the shared record or to store with
:func:`store_bundle`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from takamul.equity.indicators import (
    EARLIEST,
    DefinitionError,
    Indicator,
    IndicatorError,
    Period,
    Population,
    check_sql,
)

__all__ = [
    "OUTREACH_SYSTEM",
    "TASK_IDENTIFIER_SYSTEM",
    "Candidate",
    "Worklist",
    "store_bundle",
    "worklist",
    "worklist_bundle",
]

OUTREACH_SYSTEM = "https://takamul.health/fhir/CodeSystem/outreach"
TASK_IDENTIFIER_SYSTEM = "https://takamul.health/fhir/sid/outreach-task"
LIST_ORDER_SYSTEM = "http://terminology.hl7.org/CodeSystem/list-order"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One person behind the gap, in worklist order (``rank`` 1 first)."""

    rank: int
    person_key: str
    patient_key: str  # the Patient record the Task is for (the person's first record)
    home_org_key: str | None
    need: float
    income_quintile: int | None
    distance_km: float | None
    subgroups: Mapping[str, str]
    priority: str  # urgent | routine


@dataclass(frozen=True)
class Worklist:
    indicator: Indicator
    period: Period
    filters: Mapping[str, str]
    candidates: list[Candidate]
    total: int  # people behind the gap before ``limit``
    title: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def worklist(
    pop: Population,
    indicator_id: str,
    filters: Mapping[str, str] | None = None,
    limit: int | None = None,
) -> Worklist:
    """The people behind an indicator's gap, filtered by subgroups and in priority order.

    ``filters`` maps dimension ids to a subgroup value, e.g. ``{"income_quintile": "1"}``.
    """
    defs = pop.definitions
    ind = defs.indicator(indicator_id)
    if ind.kind != "proportion":
        raise IndicatorError(f"{ind.id} is a {ind.kind}: only a proportion has people behind a gap")
    if ind.outreach is None:
        raise IndicatorError(f"{ind.id} has no outreach definition ({ind.source})")
    if limit is not None and limit < 1:
        raise IndicatorError(f"limit must be 1 or more, got {limit}")
    filters = dict(filters or {})
    conditions = [f"p.{defs.dimension(d).column} = {_quote(v)}" for d, v in filters.items()]
    check_sql(pop, ind)
    period = ind.period(pop.period_end)
    den = ind.sql("denominator", period)
    num = ind.sql("numerator", period)
    if ind.favourable:
        gap = (
            f"LEFT JOIN (SELECT DISTINCT person_key FROM ({num}) num_) q "
            "ON q.person_key = p.person_key"
        )
        conditions.append("q.person_key IS NULL")
    else:
        gap = (
            f"JOIN (SELECT DISTINCT person_key FROM ({num}) num_) q ON q.person_key = p.person_key"
        )
    need_join, need_col = "", "CAST(0 AS DOUBLE)"
    if ind.outreach.need:
        need = ind.sql("need", period)
        try:
            cols = [c.lower() for c in pop.backend.columns(need)]
        except Exception as err:
            raise DefinitionError(
                ind.source, ind.where("outreach.need"), f"SQL error: {err}"
            ) from err
        if "person_key" not in cols or "need" not in cols:
            raise DefinitionError(
                ind.source,
                ind.where("outreach.need"),
                f"must return person_key and need (got {cols})",
            )
        need_join = (
            f"LEFT JOIN (SELECT person_key, max(CAST(need AS DOUBLE)) AS need FROM ({need}) need_ "
            f"GROUP BY person_key) nd ON nd.person_key = p.person_key"
        )
        need_col = "coalesce(nd.need, 0.0)"
    dims = defs.dimensions
    dim_cols = ", ".join(f"p.{d.column}" for d in dims)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    sql = (
        f"SELECT p.person_key, p.patient_key, p.home_org_key, {need_col} AS need, "
        f"p.income_quintile, p.nearest_pc_km, {dim_cols} FROM person p "
        f"JOIN (SELECT DISTINCT person_key FROM ({den}) den_) d ON d.person_key = p.person_key "
        f"{gap} {need_join} {where} "
        f"ORDER BY need DESC, p.income_quintile ASC NULLS LAST, p.nearest_pc_km DESC NULLS LAST, "
        f"p.person_key"
    )
    rows = pop.backend.query(sql)
    urgent = ind.outreach.urgent_need
    candidates = [
        Candidate(
            rank=i + 1,
            person_key=str(r[0]),
            patient_key=str(r[1]),
            home_org_key=None if r[2] is None else str(r[2]),
            need=float(r[3]),
            income_quintile=None if r[4] is None else int(r[4]),
            distance_km=None if r[5] is None else float(r[5]),
            subgroups={d.id: str(v) for d, v in zip(dims, r[6:], strict=True)},
            priority="urgent" if urgent is not None and float(r[3]) >= urgent else "routine",
        )
        for i, r in enumerate(rows[:limit] if limit else rows)
    ]
    labels = [f"{defs.dimension(d).name}: {defs.dimension(d).label(v)}" for d, v in filters.items()]
    title = f"Outreach: {ind.outreach.action}" + (f" ({'; '.join(labels)})" if labels else "")
    return Worklist(ind, period, filters, candidates, len(rows), title)


def _task(wl: Worklist, c: Candidate, authored: str, owner: str) -> dict[str, Any]:
    ind = wl.indicator
    spec = ind.outreach
    assert spec is not None
    codings = [{"system": OUTREACH_SYSTEM, "code": ind.id, "display": spec.action}]
    if spec.code:
        codings.append(dict(spec.code))
    parts = [f"{spec.action} (gap in: {ind.name})", f"rank {c.rank} of {wl.total}"]
    if spec.need_description:
        parts.append(f"need {c.need:g} ({spec.need_description})")
    parts.append(
        f"income quintile {c.income_quintile}" if c.income_quintile else "income quintile unknown"
    )
    if c.distance_km is not None:
        parts.append(f"{c.distance_km:.1f} km from the nearest primary care centre")
    key = c.person_key.replace("/", "-")
    task: dict[str, Any] = {
        "resourceType": "Task",
        "identifier": [
            {
                "system": TASK_IDENTIFIER_SYSTEM,
                "value": f"{ind.id}-{wl.period.end.strftime('%Y%m%d')}-{key}",
            }
        ],
        "status": "requested",
        "intent": "plan",
        "priority": c.priority,
        "code": {"coding": codings, "text": spec.action},
        "description": "; ".join(parts),
        "for": {"reference": c.patient_key},
        "authoredOn": authored,
        "reasonCode": {"text": ind.name},
    }
    if owner == "home" and c.home_org_key:
        task["owner"] = {"reference": c.home_org_key}
    return task


def worklist_bundle(
    wl: Worklist,
    authored: datetime | None = None,
    owner: str = "home",
    lists: str = "one",
) -> dict[str, Any]:
    """A transaction Bundle: one Task per person and a List per worklist (``lists="one"``) or
    per home facility (``lists="facility"``), Lists in priority order.

    ``owner``: ``"home"`` (the person's home facility Organization) or ``"none"`` (unassigned).
    """
    if owner not in ("home", "none"):
        raise ValueError(f"owner must be 'home' or 'none', got {owner!r}")
    if lists not in ("one", "facility"):
        raise ValueError(f"lists must be 'one' or 'facility', got {lists!r}")
    when = (authored or datetime.now(UTC)).replace(microsecond=0)
    stamp = when.isoformat() if when.tzinfo else when.isoformat() + "Z"
    entries: list[dict[str, Any]] = []
    groups: dict[str | None, list[str]] = {}
    for c in wl.candidates:
        task = _task(wl, c, stamp, owner)
        full_url = f"urn:uuid:{uuid.uuid4()}"
        ident = task["identifier"][0]
        entries.append(
            {
                "fullUrl": full_url,
                "resource": task,
                "request": {
                    "method": "POST",
                    "url": "Task",
                    "ifNoneExist": f"identifier={ident['system']}|{ident['value']}",
                },
            }
        )
        group = c.home_org_key if lists == "facility" else None
        groups.setdefault(group, []).append(full_url)
    if not groups:
        groups[None] = []
    for group, urls in groups.items():
        title = wl.title + (f" - {group}" if group else "")
        lst: dict[str, Any] = {
            "resourceType": "List",
            "status": "current",
            "mode": "working",
            "title": title,
            "code": {
                "coding": [
                    {
                        "system": OUTREACH_SYSTEM,
                        "code": "worklist",
                        "display": "Community health worker outreach worklist",
                    }
                ],
                "text": wl.indicator.name,
            },
            "date": stamp,
            "orderedBy": {
                "coding": [
                    {
                        "system": LIST_ORDER_SYSTEM,
                        "code": "priority",
                        "display": "Sorted by Priority",
                    }
                ]
            },
            "note": [
                {
                    "text": f"{len(urls)} of {wl.total} people behind the gap in "
                    f"{wl.indicator.name} "
                    f"({_period_text(wl.period)}), "
                    "ordered by need, then income quintile (poorest first), then distance to "
                    "the nearest primary care centre (farthest first)."
                }
            ],
        }
        if urls:
            lst["entry"] = [{"item": {"reference": u}} for u in urls]
        else:
            lst["emptyReason"] = {"text": "No one is behind the gap for these subgroups"}
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": lst,
                "request": {"method": "POST", "url": "List"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _period_text(period: Period) -> str:
    if period.start == EARLIEST:
        return f"up to {period.end.isoformat()}"
    return f"period {period.start.isoformat()} to {period.end.isoformat()}"


def store_bundle(bundle: Mapping[str, Any], database_url: str) -> dict[str, Any]:
    """Process the transaction in the shared record (``takamul.rest.bundles.process``, one
    write transaction); returns the transaction-response Bundle."""
    from takamul.rest.bundles import process
    from takamul.rest.interactions import RequestContext
    from takamul.settings import Settings
    from takamul.store.repository import Store

    store = Store(Settings(database_url=database_url))
    try:
        return process(store, dict(bundle), RequestContext("urn:takamul:outreach"), 50)
    finally:
        store.close()
