"""Writing the programmes' care plans: for every person in a programme's registry (or one
person), the CarePlan and its Goal, updated in place when made again.

A run reads what the plan refers to by searches of the person's records (their programme
Conditions, current CareTeams and open overdue follow-up Task: under the caller's guard when
there is one, so a plan refers only to what its writer may see), builds the resources
(:mod:`takamul.careplans.plans`) and writes only what changed, so a second run on the same day
writes nothing. A plan of a person who left the registry (died, diagnosis refuted) or whose
responsible facility is no longer the one the run is for is ``revoked`` by a run that covers
them. Writes go through the store's session: a caller under a requester's guard (the web app)
may write only plans of patients it may see; the CLI is the system's own work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from takamul.careplans.plans import (
    CAREPLAN_SYSTEM,
    PlanInputs,
    care_plan,
    control_goal,
    person_key,
    plan_id,
)
from takamul.equity.outreach import OUTREACH_SYSTEM
from takamul.fhir.outcome import FhirError
from takamul.programmes.definitions import PROGRAMME_SYSTEM, Catalog, Programme
from takamul.programmes.facts import _Codes
from takamul.programmes.overdue import OPEN, follow_up_code
from takamul.programmes.status import PersonStatus, person_statuses, statuses
from takamul.security.roles import TEAM_STATUSES, current_period
from takamul.store.records import StoredResource
from takamul.store.repository import Session, Store

__all__ = ["ALIASES", "PlanRun", "make_care_plans", "make_person_plans", "programme_id"]

# short names people type for the programmes (the catalog's ids also work)
ALIASES = {"htn": "hypertension", "dm": "diabetes", "t2d": "diabetes", "copd": "asthma-copd"}
BATCH = 200  # persons per write transaction
ENDED_CONDITION = {"resolved", "inactive", "remission"}


@dataclass(frozen=True, slots=True)
class PlanRun:
    created: int
    updated: int
    unchanged: int
    revoked: int


def programme_id(catalog: Catalog, name: str) -> str:
    """The catalog's programme for ``name`` (its id or a short alias); DefinitionError names
    the programmes otherwise."""
    return catalog.programme(ALIASES.get(name.lower(), name)).id


def _codings(concept: Any) -> Iterable[tuple[str, str]]:
    for c in (concept or {}).get("coding") or () if isinstance(concept, dict) else ():
        if isinstance(c, dict) and c.get("system") and c.get("code"):
            yield str(c["system"]), str(c["code"])


def _of_patient(
    session: Session, rtype: str, record: str, *params: tuple[str, str]
) -> list[dict[str, Any]]:
    """A patient's resources of a type by search, so that under a requester's guard (the web
    app, the API) the plan refers only to what that requester may see; none when its role
    does not read the type."""
    try:
        page = session.search(
            session.parse_search(rtype, [("patient", record), *params, ("_count", "1000")])
        )
    except FhirError as err:
        if err.status == 403:
            return []
        raise
    return [m.json() for m in page.matches]


def _records(status: PersonStatus) -> list[str]:
    return [f"Patient/{p}" for p in status.patient_ids]


def _conditions(
    session: Session, codes: _Codes, programme: Programme, records: list[str]
) -> list[str]:
    """The person's Conditions of the programme's condition, not refuted nor resolved."""
    found = []
    for record in records:
        for c in _of_patient(session, "Condition", record):
            verification = {code for _, code in _codings(c.get("verificationStatus"))}
            clinical = {code for _, code in _codings(c.get("clinicalStatus"))}
            if verification & {"refuted", "entered-in-error"} or clinical & ENDED_CONDITION:
                continue
            if programme.condition in codes.conditions_of(c.get("code")):
                found.append(f"Condition/{c['id']}")
    return sorted(found)


def _care_teams(session: Session, records: list[str], now: float) -> list[str]:
    """The person's current CareTeams (the same rule as membership: status active or not
    recorded, period containing now)."""
    found = []
    for record in records:
        for t in _of_patient(session, "CareTeam", record):
            if (t.get("status") or "active") in TEAM_STATUSES and current_period(
                t.get("period"), now
            ):
                found.append(f"CareTeam/{t['id']}")
    return sorted(found)


def _open_task(session: Session, programme: Programme, records: list[str]) -> str | None:
    """The newest open overdue follow-up Task of the programme (its identifier carries the
    due date, so the greatest is the latest)."""
    wanted = follow_up_code(programme.id)
    open_states = set(OPEN.split(","))
    best: tuple[str, str] | None = None
    for record in records:
        for task in _of_patient(session, "Task", record, ("code", f"{OUTREACH_SYSTEM}|{wanted}")):
            if task.get("status") not in open_states:
                continue
            if (OUTREACH_SYSTEM, wanted) not in set(_codings(task.get("code"))):
                continue
            key = str(((task.get("identifier") or [{}])[0]).get("value") or "")
            if best is None or key > best[0]:
                best = (key, f"Task/{task['id']}")
    return best[1] if best else None


def _write(session: Session, body: dict[str, Any]) -> str:
    """Create, update or leave ``body`` (by its id): 'created', 'updated' or 'unchanged'."""
    rtype, rid = body["resourceType"], body["id"]
    try:
        current = session.read(rtype, rid).json()
    except FhirError as err:
        if err.status not in (404, 410):
            raise
        current = None
    if current is not None:
        current.pop("meta", None)
        if current == body:
            return "unchanged"
    session.update(rtype, rid, body)
    return "created" if current is None else "updated"


def _plan_person(
    session: Session,
    catalog: Catalog,
    codes: _Codes,
    status: PersonStatus,
    as_of: date,
    now: float,
) -> str:
    programme = catalog.programme(status.programme)
    records = _records(status)
    inputs = PlanInputs(
        conditions=tuple(_conditions(session, codes, programme, records)),
        care_teams=tuple(_care_teams(session, records, now)),
        task=_open_task(session, programme, records),
    )
    goal = control_goal(catalog, programme, status, inputs)
    _write(session, goal)
    return _write(session, care_plan(programme, status, inputs, goal, as_of))


def _now(as_of: date) -> float:
    """The instant a plan is made for: the end of ``as_of`` (a team current that day counts)."""
    return datetime.combine(as_of, time.max, UTC).timestamp()


def write_plans(
    store: Store, catalog: Catalog, rows: Sequence[PersonStatus], as_of: date
) -> dict[str, int]:
    """The plans of ``rows``, in transactions of ``BATCH`` persons; counts by outcome."""
    codes = _Codes(catalog)
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    now = _now(as_of)
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]

        def work(session: Session, chunk: Sequence[PersonStatus] = chunk) -> list[str]:
            return [_plan_person(session, catalog, codes, r, as_of, now) for r in chunk]

        for outcome in store.write(work):
            counts[outcome] += 1
    return counts


def _revoke_others(store: Store, programme: str, kept: set[str], facility: str | None) -> int:
    """Revoke the programme's active plans this run did not make (of ``facility``'s persons
    when given: the plans it authored)."""

    def work(session: Session) -> int:
        params = [("category", f"{PROGRAMME_SYSTEM}|{programme}"), ("status", "active")]
        params.append(("identifier", f"{CAREPLAN_SYSTEM}|"))
        author = {"reference": f"Organization/{facility}"} if facility else None
        stale: list[StoredResource] = []
        offset = 0
        while True:  # every active plan of the programme, a page at a time
            paged = [*params, ("_count", "1000"), ("_offset", str(offset))]
            page = session.search(session.parse_search("CarePlan", paged))
            stale.extend(m for m in page.matches if m.id not in kept)
            offset += len(page.matches)
            if not page.matches or not page.has_next:
                break
        n = 0
        for stored in stale:
            body = stored.json()
            # CarePlan has no author search parameter in R4: filtered here
            if author and body.get("author") != author:
                continue
            body.pop("meta", None)
            body["status"] = "revoked"
            session.update("CarePlan", stored.id, body)
            n += 1
        return n

    return store.write(work)


def make_care_plans(
    store: Store,
    catalog: Catalog,
    programme: str,
    as_of: date,
    facility: str | None = None,
) -> PlanRun:
    """Every registered person's plan in ``programme`` on ``as_of`` (only the persons whose
    responsible facility is ``facility``, when given). Care facts must be current (the CLI
    and ``Programmes.statuses`` catch them up)."""
    pid = programme_id(catalog, programme)
    org = facility.removeprefix("Organization/") if facility else None
    rows = statuses(store, catalog, as_of, [pid], facility=org)
    counts = write_plans(store, catalog, rows, as_of)
    kept = {plan_id(pid, person_key(r)) for r in rows}
    revoked = _revoke_others(store, pid, kept, org)
    return PlanRun(counts["created"], counts["updated"], counts["unchanged"], revoked)


def make_person_plans(
    store: Store,
    catalog: Catalog,
    patient_ids: Iterable[str],
    as_of: date,
    programmes: Sequence[str] | None = None,
) -> list[str]:
    """The plans of one person (all their records count) in each programme they are in (or
    those named): for the API or the web app, under the caller's guard. Returns the CarePlan
    ids written or found unchanged."""
    wanted = {programme_id(catalog, p) for p in programmes} if programmes else None
    _, rows = person_statuses(store, catalog, patient_ids, as_of)
    rows = [r for r in rows if wanted is None or r.programme in wanted]
    write_plans(store, catalog, rows, as_of)
    return [plan_id(r.programme, person_key(r)) for r in rows]
