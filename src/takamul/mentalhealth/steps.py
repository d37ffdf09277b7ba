"""Stepped care as data: the steps of the collaborative-care programme and the rules that
propose the next step for a clinician to confirm.

The steps and rules live in ``data/stepped_care.json`` (sources cited there); a ministry
replaces the file (``--stepped-care FILE`` or ``TAKAMUL_STEPPED_CARE``) and an error names the
field to fix. A rule never changes anyone's care by itself: it writes a ``ServiceRequest``
(status ``draft``, intent ``proposal``, labelled PSY) and the clinician confirms it by updating
it to ``active`` (an ordinary FHIR update) or declines it (``revoked``).

Rules (also in docs/mental-health.md, "Stepped care"):

Current step
  The confirmed step requests of the person (status active or on-hold, any intent) authored
  on or before D: the one that started last (``occurrencePeriod.start``, else ``authoredOn``;
  ties: the higher step) is the current step, started then (never before enrolment). Without
  one, the person is on step 1 since ``enrolled_on`` (the registry's enrolment).
Step-up
  ``registry-status``: the registry's status on D is one of the rule's ``statuses`` and the
  person has been on the current step for at least its ``review_after_weeks``. The review
  point is the number of whole review intervals on the step (1 at 10 weeks, 2 at 20 ...).
  ``safety-flag``: the registry's unreviewed suicide-risk Flag (newer than the last
  psychiatric case review) was raised after the current step started (on or after enrolment
  for step 1 without a request: a flag on the day a confirmed step started is taken as the
  reason it started).
  ``to``: ``next`` (the current step + 1) or ``top``. Nothing is proposed beyond the top step.
Idempotency
  No proposal while the person has a pending one (a ``draft`` step request authored on or
  before D). The proposal's id is derived from the record, the step proposed, the current
  step's start and the review point (or the flag's date), so running again writes nothing new,
  and a proposal declined at one review point is proposed again only at the next one (or for
  a new flag).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select, text

from takamul.mentalhealth.registry import STATUSES, RegistryRow, registry
from takamul.mentalhealth.safety import psy_meta
from takamul.mentalhealth.scoring import derived_id
from takamul.store.guard import unguarded
from takamul.store.repository import Session, Store
from takamul.store.schema import resource

__all__ = [
    "RULE_KINDS",
    "STEP_SYSTEM",
    "CurrentStep",
    "Outcome",
    "Step",
    "StepUpRule",
    "SteppedCare",
    "SteppedCareError",
    "current_step",
    "load_stepped_care",
    "parse_stepped_care",
    "propose_steps",
]

STEP_SYSTEM = "https://takamul.health/fhir/CodeSystem/stepped-care"
RULE_SYSTEM = "https://takamul.health/fhir/CodeSystem/stepped-care-rule"
RULE_KINDS = ("registry-status", "safety-flag")
TARGETS = ("next", "top")
PRIORITIES = ("routine", "urgent", "asap", "stat")
CONFIRMED = {"active", "on-hold"}


class SteppedCareError(ValueError):
    """A stepped-care file that cannot be used; the message names the field to fix."""


@dataclass(frozen=True, slots=True)
class Step:
    number: int
    code: str
    title: str
    performer: str
    interventions: tuple[str, ...]
    review_after_days: int
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StepUpRule:
    id: str
    when: str  # one of RULE_KINDS
    statuses: tuple[str, ...]
    to: str  # next | top
    priority: str
    reason: str
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SteppedCare:
    programme: str
    steps: tuple[Step, ...]
    rules: tuple[StepUpRule, ...]
    sources: dict[str, str]

    @property
    def top(self) -> Step:
        return self.steps[-1]

    def step(self, number: int) -> Step:
        return self.steps[number - 1]

    def by_code(self, code: str) -> Step | None:
        return next((s for s in self.steps if s.code == code), None)


# -- the file ------------------------------------------------------------------------------------


def _need(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise SteppedCareError(f"{where}.{key} is missing")
    return obj[key]


def _text(obj: dict[str, Any], key: str, where: str) -> str:
    value = _need(obj, key, where)
    if not isinstance(value, str) or not value.strip():
        raise SteppedCareError(f"{where}.{key} must be a non-empty string, not {value!r}")
    return value


def _sources(obj: dict[str, Any], where: str, known: dict[str, str]) -> tuple[str, ...]:
    cited = obj.get("sources", [])
    if not isinstance(cited, list) or not cited:
        raise SteppedCareError(f"{where}.sources must list at least one key of 'sources'")
    for key in cited:
        if key not in known:
            raise SteppedCareError(
                f"{where}.sources: {key!r} is not in 'sources' (known: {', '.join(known)})"
            )
    return tuple(cited)


def _step(raw: Any, n: int, known: dict[str, str]) -> Step:
    where = f"steps[{n}]"
    if not isinstance(raw, dict):
        raise SteppedCareError(f"{where} must be an object")
    number = _need(raw, "step", where)
    if number != n + 1 or isinstance(number, bool):
        raise SteppedCareError(f"{where}.step must be {n + 1} (steps are numbered 1, 2, ...)")
    weeks = _need(raw, "review_after_weeks", where)
    if not isinstance(weeks, int) or isinstance(weeks, bool) or weeks < 1:
        raise SteppedCareError(f"{where}.review_after_weeks must be a whole number >= 1")
    interventions = raw.get("interventions", [])
    if not isinstance(interventions, list):
        raise SteppedCareError(f"{where}.interventions must be a list of strings")
    return Step(
        number=number,
        code=_text(raw, "code", where),
        title=_text(raw, "title", where),
        performer=_text(raw, "performer", where),
        interventions=tuple(str(i) for i in interventions),
        review_after_days=7 * weeks,
        sources=_sources(raw, where, known),
    )


def _rule(raw: Any, n: int, known: dict[str, str]) -> StepUpRule:
    where = f"step_up[{n}]"
    if not isinstance(raw, dict):
        raise SteppedCareError(f"{where} must be an object")
    when = _need(raw, "when", where)
    if when not in RULE_KINDS:
        raise SteppedCareError(f"{where}.when must be one of {', '.join(RULE_KINDS)}, not {when!r}")
    statuses = raw.get("statuses", [])
    if when == "registry-status":
        if not isinstance(statuses, list) or not statuses:
            raise SteppedCareError(f"{where}.statuses must list registry statuses")
        for s in statuses:
            if s not in STATUSES:
                raise SteppedCareError(
                    f"{where}.statuses: {s!r} is not a registry status ({', '.join(STATUSES)})"
                )
    to = raw.get("to", "next")
    if to not in TARGETS:
        raise SteppedCareError(f"{where}.to must be one of {', '.join(TARGETS)}, not {to!r}")
    priority = raw.get("priority", "routine")
    if priority not in PRIORITIES:
        raise SteppedCareError(
            f"{where}.priority must be one of {', '.join(PRIORITIES)}, not {priority!r}"
        )
    return StepUpRule(
        id=_text(raw, "id", where),
        when=when,
        statuses=tuple(statuses),
        to=to,
        priority=priority,
        reason=_text(raw, "reason", where),
        sources=_sources(raw, where, known),
    )


def parse_stepped_care(raw: Any) -> SteppedCare:
    """The stepped care of a JSON document; :class:`SteppedCareError` names what is wrong."""
    if not isinstance(raw, dict):
        raise SteppedCareError("the stepped-care file must hold one JSON object")
    known = _need(raw, "sources", "file")
    if not isinstance(known, dict) or not known:
        raise SteppedCareError("file.sources must map keys to citations")
    steps_raw = _need(raw, "steps", "file")
    if not isinstance(steps_raw, list) or len(steps_raw) < 2:
        raise SteppedCareError("file.steps must list at least two steps")
    steps = tuple(_step(s, n, known) for n, s in enumerate(steps_raw))
    codes = [s.code for s in steps]
    if len(set(codes)) != len(codes):
        raise SteppedCareError(f"steps[].code must be unique, not {codes}")
    rules_raw = _need(raw, "step_up", "file")
    if not isinstance(rules_raw, list) or not rules_raw:
        raise SteppedCareError("file.step_up must list at least one rule")
    rules = tuple(_rule(r, n, known) for n, r in enumerate(rules_raw))
    ids = [r.id for r in rules]
    if len(set(ids)) != len(ids):
        raise SteppedCareError(f"step_up[].id must be unique, not {ids}")
    return SteppedCare(
        programme=_text(raw, "programme", "file"),
        steps=steps,
        rules=rules,
        sources=dict(known),
    )


@lru_cache(maxsize=8)
def _load(path: str | None) -> SteppedCare:
    if path is None:
        source = resources.files("takamul.mentalhealth").joinpath("data/stepped_care.json")
        content, where = source.read_text(encoding="utf-8"), "the packaged stepped care"
    else:
        file = Path(path)
        if not file.is_file():
            raise SteppedCareError(f"The stepped-care file {path} does not exist")
        content, where = file.read_text(encoding="utf-8"), path
    try:
        raw = json.loads(content)
    except json.JSONDecodeError as err:
        raise SteppedCareError(f"{where} is not JSON: {err}") from err
    try:
        return parse_stepped_care(raw)
    except SteppedCareError as err:
        raise SteppedCareError(f"{where}: {err}") from None


def load_stepped_care(path: str | Path | None = None) -> SteppedCare:
    """The stepped care: ``path``, else ``TAKAMUL_STEPPED_CARE``, else the packaged file."""
    chosen = str(path) if path else os.environ.get("TAKAMUL_STEPPED_CARE") or None
    return _load(chosen)


# -- where each person stands ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CurrentStep:
    step: Step
    since: date
    request_id: str | None  # the confirmed ServiceRequest (None: step 1 from enrolment)


def _patient_of(request: dict[str, Any]) -> str | None:
    ref = (request.get("subject") or {}).get("reference")
    if isinstance(ref, str) and ref.startswith("Patient/"):
        return ref[len("Patient/") :].split("/")[0]
    return None


def _step_of(request: dict[str, Any], care: SteppedCare) -> Step | None:
    for c in (request.get("code") or {}).get("coding") or ():
        if isinstance(c, dict) and c.get("system") == STEP_SYSTEM:
            found = care.by_code(str(c.get("code")))
            if found is not None:
                return found
    return None


def _date(value: object) -> date | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _authored(request: dict[str, Any]) -> date | None:
    return _date(request.get("authoredOn"))


def _started(request: dict[str, Any]) -> date | None:
    period = request.get("occurrencePeriod") or {}
    return (
        _date(period.get("start")) or _date(request.get("occurrenceDateTime")) or _authored(request)
    )


def current_step(
    care: SteppedCare, requests: Iterable[dict[str, Any]], enrolled_on: date, as_of: date
) -> CurrentStep:
    """The person's current step on ``as_of`` from their step requests (module docstring)."""
    best: tuple[date, int, str, Step] | None = None
    for r in requests:
        step = _step_of(r, care)
        authored, started = _authored(r), _started(r)
        if step is None or r.get("status") not in CONFIRMED or authored is None:
            continue
        if authored > as_of or started is None or started > as_of:
            continue
        key = (max(started, enrolled_on), step.number, str(r.get("id")), step)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None:
        return CurrentStep(care.step(1), enrolled_on, None)
    return CurrentStep(best[3], best[0], best[2])


# -- proposing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the rules made of one person who met a step-up rule."""

    person: str  # the person id (or the record id when not linked)
    patient_id: str  # the record the proposal is written for
    current: int
    target: int | None  # None at the top step
    rules: tuple[str, ...]
    result: str  # proposed | already-proposed | pending | top-step
    request_id: str | None


def _step_requests(store: Store, care: SteppedCare) -> dict[str, list[dict[str, Any]]]:
    """Every stepped-care ServiceRequest by the record it is for.

    Driven from the code index with the steps' codes (an index lookup per code, whatever the
    planner's statistics say of a table just written to), then the resource by its key."""
    codes = {f"c{n}": s.code for n, s in enumerate(care.steps)}
    sql = text(
        "SELECT r.res_id, r.content FROM sp_token t JOIN resource r ON r.rid = t.rid "
        "WHERE t.res_type = 'ServiceRequest' AND t.param = 'code' AND t.system = :system "
        f"AND t.code IN ({', '.join(':' + k for k in codes)}) AND r.deleted = :f"
    )
    seen: set[str] = set()
    found: dict[str, list[dict[str, Any]]] = {}
    with store.reader.connect() as conn:
        for res_id, content in conn.execute(sql, {"f": False, "system": STEP_SYSTEM, **codes}):
            if res_id in seen:  # a request coded with two steps
                continue
            seen.add(res_id)
            body = orjson.loads(content)
            body["id"] = res_id
            patient = _patient_of(body)
            if patient is not None:
                found.setdefault(patient, []).append(body)
    return found


def _fired(
    care: SteppedCare, row: RegistryRow, now: CurrentStep, as_of: date
) -> list[tuple[StepUpRule, str]]:
    """The rules that fire for the person, each with the key of its occasion (the review
    point, or the flag's date) that makes the proposal's id."""
    fired = []
    on_step = (as_of - now.since).days
    for rule in care.rules:
        if rule.when == "registry-status":
            if row.status in rule.statuses and on_step >= now.step.review_after_days:
                fired.append((rule, f"r{on_step // now.step.review_after_days}"))
        elif rule.when == "safety-flag":
            flag = row.unreviewed_flag_on
            if flag is not None and (
                flag > now.since or (now.request_id is None and flag >= now.since)
            ):
                fired.append((rule, f"f{flag:%Y%m%d}"))
    return fired


def _target(care: SteppedCare, now: CurrentStep, rules: Sequence[StepUpRule]) -> Step | None:
    wanted = max(
        (care.top.number if r.to == "top" else now.step.number + 1 for r in rules), default=0
    )
    # nothing beyond the top step
    target = min(wanted, care.top.number)
    return care.step(target) if target > now.step.number else None


def _record(row: RegistryRow, session_requests: list[dict[str, Any]]) -> str:
    """The record the proposal is for: the one of the current step request, else of the
    episode, else the first of the person's records."""
    for r in session_requests:
        patient = _patient_of(r)
        if patient in row.patient_ids:
            return patient
    return row.patient_ids[0]


def _proposal(
    care: SteppedCare,
    patient_id: str,
    now: CurrentStep,
    target: Step,
    rules: Sequence[StepUpRule],
    request_id: str,
    row: RegistryRow,
    as_of: date,
) -> dict[str, Any]:
    urgent = [r.priority for r in rules if r.priority != "routine"]
    body: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": request_id,
        "meta": psy_meta(),
        "status": "draft",
        "intent": "proposal",
        "priority": urgent[0] if urgent else "routine",
        "category": [{"coding": [{"system": STEP_SYSTEM, "code": care.programme}]}],
        "code": {
            "coding": [{"system": STEP_SYSTEM, "code": target.code, "display": target.title}],
            "text": f"Step {target.number}: {target.title}",
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": as_of.isoformat(),
        "performerType": {"text": target.performer},
        "reasonCode": [
            {"coding": [{"system": RULE_SYSTEM, "code": r.id}], "text": r.reason} for r in rules
        ],
        "note": [
            {
                "text": f"Proposed by the stepped-care rules on {as_of.isoformat()}: step "
                f"{now.step.number} since {now.since.isoformat()}, registry status "
                f"{row.status}. Confirm by setting the status to active, decline by revoked."
            }
        ],
    }
    support = []
    if row.episode_id:
        support.append({"reference": f"EpisodeOfCare/{row.episode_id}"})
    if now.request_id:
        support.append({"reference": f"ServiceRequest/{now.request_id}"})
    if support:
        body["supportingInfo"] = support
    return body


def _exists(session: Session, resource_type: str, resource_id: str) -> bool:
    return (
        session.conn.execute(
            select(resource.c.rid).where(
                resource.c.res_type == resource_type, resource.c.res_id == resource_id
            )
        ).first()
        is not None
    )


def _decide(
    care: SteppedCare,
    row: RegistryRow,
    requests: list[dict[str, Any]],
    as_of: date,
) -> tuple[Outcome, dict[str, Any] | None]:
    """One person's outcome, and the proposal to write (None when nothing is to be written)."""
    mine = [r for r in requests if (_authored(r) or date.max) <= as_of]
    now = current_step(care, mine, row.enrolled_on, as_of)
    fired = _fired(care, row, now, as_of)
    person = row.person_id or row.patient_ids[0]
    if not fired:
        return Outcome(person, row.patient_ids[0], now.step.number, None, (), "none", None), None
    current = [r for r in mine if r.get("id") == now.request_id]
    patient_id = _record(row, current)
    names = tuple(rule.id for rule, _ in fired)
    target = _target(care, now, [rule for rule, _ in fired])
    if target is None:
        return Outcome(person, patient_id, now.step.number, None, names, "top-step", None), None
    pending = [r for r in mine if r.get("status") == "draft" and _step_of(r, care) is not None]
    if pending:
        return (
            Outcome(
                person, patient_id, now.step.number, target.number, names, "pending",
                str(pending[0]["id"]),
            ),
            None,
        )  # fmt: skip
    occasion = "-".join(key for _, key in fired)
    request_id = derived_id("mhstep", f"{patient_id}-{target.code}-{now.since:%Y%m%d}-{occasion}")
    body = _proposal(
        care, patient_id, now, target, [rule for rule, _ in fired], request_id, row, as_of
    )
    outcome = Outcome(
        person, patient_id, now.step.number, target.number, names, "proposed", request_id
    )
    return outcome, body


def propose_steps(
    store: Store,
    as_of: date,
    care: SteppedCare | None = None,
    *,
    rows: Sequence[RegistryRow] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Outcome]:
    """Apply the step-up rules to every person of the registry on ``as_of`` and write a draft
    proposal for each person who should step up and has none pending. Returns one outcome per
    person a rule fired for (``proposed``, ``already-proposed`` when the same proposal exists,
    ``pending``, ``top-step``)."""
    care = care or load_stepped_care()
    people = list(rows) if rows is not None else registry(store, as_of)
    by_record = _step_requests(store, care)
    decided: list[tuple[Outcome, dict[str, Any] | None]] = []
    for row in people:
        requests = [r for pid in row.patient_ids for r in by_record.get(pid, ())]
        outcome, body = _decide(care, row, requests, as_of)
        if outcome.rules:
            decided.append((outcome, body))
    to_write = [b for _, b in decided if b is not None]
    written: set[str] = set()
    chunk = 200
    for start in range(0, len(to_write), chunk):
        part = to_write[start : start + chunk]

        def work(session: Session, part: list[dict[str, Any]] = part) -> None:
            for body in part:
                # the id names the occasion: one that exists (pending, confirmed or declined)
                # was proposed before
                if not _exists(session, "ServiceRequest", body["id"]):
                    session.update("ServiceRequest", body["id"], body)
                    written.add(body["id"])

        with unguarded():
            store.write(work)
        if progress is not None:
            progress(min(start + chunk, len(to_write)), len(to_write))
    out = []
    for outcome, body in decided:
        if body is not None and body["id"] not in written:
            outcome = Outcome(
                outcome.person, outcome.patient_id, outcome.current, outcome.target,
                outcome.rules, "already-proposed", outcome.request_id,
            )  # fmt: skip
        out.append(outcome)
    return out
