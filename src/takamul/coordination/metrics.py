"""Loop metrics of referrals on a date D: per route (requester facility type → owner facility
type), per referral type, overall, and by every equity dimension through the equity engine.

Definitions (also in docs/coordination.md, "Loop metrics"). A referral is a referral Task
(``referrals.is_referral``) authored in the 12 months up to D (``Task.authoredOn``, else its
ServiceRequest's, as a local calendar date); a status change is dated by the version's
``Task.lastModified``, else its ``meta.lastUpdated``, and only changes dated on or before D
count. Days are calendar days after the day it was authored.

- ``referrals-made``: the referrals (a count).
- ``accepted``: accepted (or further: in-progress, on-hold, completed, failed) by D, of those made.
- ``completed-30-days``: completed within 30 days (day 30 included), of those made 30 days or
  more before D (the window has closed).
- ``feedback-returned``: completed by D with the feedback in ``Task.output``, of those made: the
  loop closed (Patel et al., JGIM 2018: 34.8 % of primary-care referrals).
- ``days-to-acceptance-median`` / ``days-to-completion-median``: of those accepted / completed.
- ``overdue-acceptance``: not answered (accepted, rejected or cancelled) within N days of those
  made more than N days before D; ``overdue-completion``: not closed (a final status) within M
  days of those made more than M days before D. N and M per referral type
  (``ReferralRules``; 7 and 30 by default).
"""

from __future__ import annotations

import gc
import os
import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
from dateutil.relativedelta import relativedelta
from sqlalchemy import Connection, select, text

from takamul.coordination.referrals import FINAL, is_referral
from takamul.equity.measures import difference_and_ratio, percentage_subgroup
from takamul.programmes.indicators import EQUITY_DIMENSIONS, dimension_values
from takamul.store.repository import Store
from takamul.store.schema import VERSION_CONTENT_SQL, resource

__all__ = [
    "EQUITY_DIMENSIONS",
    "METRICS",
    "RULES_VARIABLE",
    "MetricRow",
    "Referral",
    "ReferralRules",
    "by_dimension",
    "follow_history",
    "metric_rows",
    "overdue",
    "read_referrals",
    "task_day",
]

ACCEPTED = frozenset({"accepted", "in-progress", "on-hold", "completed", "failed"})
COMPLETION_WINDOW = 30
PROPORTIONS = ("accepted", "completed-30-days", "feedback-returned")
MEDIANS = ("days-to-acceptance-median", "days-to-completion-median")
OVERDUE = ("overdue-acceptance", "overdue-completion")
METRICS = ("referrals-made", *PROPORTIONS, *MEDIANS, *OVERDUE)
ALL = "all"
RULES_VARIABLE = "TAKAMUL_REFERRAL_RULES"  # the operator's rules file, for the server and CLI


@dataclass(frozen=True, slots=True)
class Limits:
    accept_days: int
    complete_days: int


@dataclass(frozen=True, slots=True)
class ReferralRules:
    """Days to acceptance (N) and to completion (M) before a referral is overdue, per
    referral type (a ServiceRequest code or category code), with a default."""

    default: Limits = Limits(7, 30)
    types: Mapping[str, Limits] = field(default_factory=dict)

    def of(self, referral_type: str) -> Limits:
        return self.types.get(referral_type, self.default)

    @classmethod
    def load(cls, path: Path) -> ReferralRules:
        """``{"default": {"accept_days": 7, "complete_days": 30}, "types": {"<code>": {...}}}``;
        a ValueError that names what is wrong."""
        try:
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as err:
            raise ValueError(f"{path}: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object with 'default' and 'types'")
        default = _limits(data.get("default", {}), Limits(7, 30), f"{path}: default")
        types = data.get("types", {})
        if not isinstance(types, dict):
            raise ValueError(f"{path}: 'types' must map a referral type code to its limits")
        return cls(
            default, {str(k): _limits(v, default, f"{path}: types.{k}") for k, v in types.items()}
        )

    @classmethod
    def configured(cls) -> ReferralRules:
        """The operator's rules: the file ``TAKAMUL_REFERRAL_RULES`` names, read on every call
        (a few bytes) so an edit takes effect without a restart; the defaults when unset. A
        ValueError that names the file and what is wrong, never a silent fallback."""
        path = os.environ.get(RULES_VARIABLE, "").strip()
        return cls.load(Path(path)) if path else cls()


def _limits(value: object, fallback: Limits, where: str) -> Limits:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object with accept_days and complete_days")
    out = []
    for key, default in (
        ("accept_days", fallback.accept_days),
        ("complete_days", fallback.complete_days),
    ):
        days = value.get(key, default)
        if not isinstance(days, int) or isinstance(days, bool) or days < 0:
            raise ValueError(
                f"{where}.{key} must be a whole number of days (0 or more), not {days!r}"
            )
        out.append(days)
    return Limits(out[0], out[1])


# -- reading -------------------------------------------------------------------------------------


# Every version of the referral Tasks that may have been made in the window: a Task's
# ``authoredOn`` is indexed as a UTC range, and a local calendar date lies within 14 hours of it,
# so a day's margin on each side keeps every candidate (the exact window is applied in Python);
# a Task without ``authoredOn`` is dated by its ServiceRequest, so it is read too. In row-key
# order, so one referral's versions come together and the store reads them in index order.
_TASK_VERSIONS = text(
    f"SELECT v.rid, v.res_id, {VERSION_CONTENT_SQL} FROM resource_version v "
    "WHERE v.res_type = 'Task' "
    "AND v.rid IN (SELECT f.rid FROM sp_reference f WHERE f.res_type = 'Task' "
    "AND f.param = 'focus' AND f.target_type = 'ServiceRequest' AND (f.rid IN ("
    "SELECT d.rid FROM sp_date d WHERE d.res_type = 'Task' AND d.param = 'authored-on' "
    "AND d.low < :until AND d.high > :since) OR NOT EXISTS (SELECT 1 FROM sp_date n "
    "WHERE n.rid = f.rid AND n.res_type = 'Task' AND n.param = 'authored-on'))) "
    "ORDER BY v.rid, v.version"
)
_OF_TYPE = text("SELECT res_id, content FROM resource WHERE res_type = :t AND deleted = :f")


def task_day(value: object) -> date | None:
    """The local calendar date a Task's date or dateTime names (None unless a full date)."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _ref(value: object) -> tuple[str, str]:
    ref = str((value or {}).get("reference") or "") if isinstance(value, dict) else ""
    kind, _, rid = ref.rpartition("/")
    return kind.rsplit("/", 1)[-1], rid


def facility_type(org: Mapping[str, Any]) -> str:
    """The type of a facility: its first ``Organization.type``'s text (the synthetic
    population's "Rural Health House", "Primary Health Care Centre"...), else its display or
    code."""
    for concept in org.get("type") or ():
        if concept.get("text"):
            return str(concept["text"])
        for coding in concept.get("coding") or ():
            if coding.get("display") or coding.get("code"):
                return str(coding.get("display") or coding.get("code"))
    return "unknown"


def referral_type(request: Mapping[str, Any] | None) -> str:
    """The ServiceRequest's code (first coding's code), else its category's, else text."""
    for concept in [(request or {}).get("code"), *((request or {}).get("category") or ())]:
        if isinstance(concept, dict):
            for coding in concept.get("coding") or ():
                if coding.get("code"):
                    return str(coding["code"])
            if concept.get("text"):
                return str(concept["text"])
    return "unspecified"


@dataclass(slots=True)
class Referral:
    """One referral as it stood on D."""

    task: str
    patient: str | None
    route: str
    kind: str
    requester: str
    owner: str
    authored: date
    accepted: date | None = None
    answered: date | None = None
    closed: date | None = None
    completed: date | None = None
    feedback: bool = False

    def days(self, day: date | None) -> int | None:
        return None if day is None else (day - self.authored).days


def _directory(conn: Connection) -> tuple[dict[str, str], dict[str, str]]:
    """Facility type by Organization id; organization by Practitioner and PractitionerRole."""
    types = {
        rid: facility_type(orjson.loads(c))
        for rid, c in conn.execute(_OF_TYPE, {"t": "Organization", "f": False})
        if c
    }
    org_of: dict[str, str] = {}
    for rid, content in conn.execute(_OF_TYPE, {"t": "PractitionerRole", "f": False}):
        role = orjson.loads(content) if content else {}
        kind, org = _ref(role.get("organization"))
        if kind == "Organization" and org:
            org_of[f"PractitionerRole/{rid}"] = org
            _, practitioner = _ref(role.get("practitioner"))
            org_of.setdefault(f"Practitioner/{practitioner}", org)
    return types, org_of


def _facility(party: object, org_of: Mapping[str, str]) -> str:
    kind, rid = _ref(party)
    if kind == "Organization":
        return rid
    return org_of.get(f"{kind}/{rid}", "")


def _moment(version: Mapping[str, Any]) -> date | None:
    return task_day(version.get("lastModified")) or task_day(
        (version.get("meta") or {}).get("lastUpdated")
    )


def follow_history(referral: Referral, versions: Sequence[Mapping[str, Any]], as_of: date) -> None:
    """Date, from the Task's versions, the first acceptance, answer, closure and completion on
    or before D (the metrics and the Referrals screen read a referral's history the same way)."""
    for v in versions:
        status, day = v.get("status"), _moment(v)
        if day is None or day > as_of:
            continue
        if status in ACCEPTED and referral.accepted is None:
            # a record loaded in bulk holds only its last version: the execution period's
            # start still dates the acceptance (the owner starts work when it accepts)
            started = task_day((v.get("executionPeriod") or {}).get("start"))
            referral.accepted = started if started is not None and started <= day else day
        if status not in ("requested", "draft", "received") and referral.answered is None:
            referral.answered = referral.accepted if status in ACCEPTED else day
        if status in FINAL and referral.closed is None:
            referral.closed = day
        if status == "completed" and referral.completed is None:
            referral.completed = day
            referral.feedback = any(_ref(o.get("valueReference"))[1] for o in v.get("output") or ())


def _service_requests(conn: Connection, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The referrals' ServiceRequests by id, read in chunks (not every ServiceRequest)."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 2000):
        rows = conn.execute(
            select(resource.c.res_id, resource.c.content).where(
                resource.c.res_type == "ServiceRequest",
                resource.c.res_id.in_(ids[start : start + 2000]),
                resource.c.deleted.is_(False),
            )
        )
        found.update({r.res_id: _slim_request(orjson.loads(r.content)) for r in rows if r.content})
    return found


def _slim_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """What a referral keeps of its ServiceRequest: its date, type and parties (the rest of
    hundreds of thousands of them need not stay in memory)."""
    return {
        k: request[k]
        for k in ("authoredOn", "code", "category", "requester", "subject")
        if k in request
    }


@contextmanager
def _no_collection() -> Iterator[None]:
    """Without the cyclic garbage collector: the parsed versions are plain acyclic dicts, and
    its passes over hundreds of thousands of them cost more than the parsing itself."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _epoch(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def _task_histories(
    conn: Connection, start: date, as_of: date
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(Task id, its versions oldest first) of every referral Task that may have been made in
    the window, streamed one Task at a time."""
    window = {"since": _epoch(start) - 86400, "until": _epoch(as_of) + 2 * 86400}
    rows = conn.execution_options(stream_results=True, yield_per=5000).execute(
        _TASK_VERSIONS, window
    )
    current: int | None = None
    task_id = ""
    versions: list[dict[str, Any]] = []
    for rid, res_id, content in rows:
        if rid != current:
            if versions:
                yield task_id, versions
            current, task_id, versions = rid, res_id, []
        if content:
            versions.append(orjson.loads(content))
    if versions:
        yield task_id, versions


@dataclass(slots=True)
class _Candidate:
    """A referral Task as read, before its ServiceRequest is known."""

    referral: Referral
    current: dict[str, Any]


def read_referrals(
    store: Store, as_of: date, progress: Callable[[str], None] | None = None
) -> list[Referral]:
    """The referrals made in the 12 months up to ``as_of``, as they stood on that day."""
    say = progress or (lambda _: None)
    start = as_of - relativedelta(years=1)
    candidates: list[_Candidate] = []
    with _no_collection(), store.reader.connect() as conn, conn.begin():
        say("reading the facilities")
        types, org_of = _directory(conn)
        say("reading the referral Tasks")
        for task_id, versions in _task_histories(conn, start, as_of):
            current = versions[-1]
            if not is_referral(current) or current.get("status") == "entered-in-error":
                continue
            authored = task_day(current.get("authoredOn"))
            if authored is not None and not start < authored <= as_of:
                continue  # within the SQL margin, outside the window
            referral = Referral(task_id, None, "", "", "", "", authored or as_of)
            follow_history(referral, versions, as_of)
            candidates.append(_Candidate(referral, _slim(current)))
        say("reading the ServiceRequests")
        focus = {_ref(c.current.get("focus"))[1] for c in candidates}
        requests = _service_requests(conn, sorted(focus))
        window = (start, as_of)
        found = [r for c in candidates if (r := _complete(c, requests, types, org_of, window))]
    return sorted(found, key=lambda r: r.task)


# what of a Task's current version a referral keeps once its history has been followed
_KEPT = ("authoredOn", "focus", "for", "requester", "owner")


def _slim(task: Mapping[str, Any]) -> dict[str, Any]:
    return {k: task[k] for k in _KEPT if k in task}


def _complete(
    candidate: _Candidate,
    requests: Mapping[str, Mapping[str, Any]],
    types: Mapping[str, str],
    org_of: Mapping[str, str],
    window: tuple[date, date],
) -> Referral | None:
    """The referral with what its ServiceRequest says (its date if the Task has none, its type,
    its parties if the Task lacks them); None when it was not made in the window."""
    current, referral = candidate.current, candidate.referral
    request = requests.get(_ref(current.get("focus"))[1])
    authored = task_day(current.get("authoredOn")) or task_day((request or {}).get("authoredOn"))
    if authored is None or not window[0] < authored <= window[1]:
        return None  # undated, or (dated by its ServiceRequest) outside the window
    requester = _facility(current.get("requester") or (request or {}).get("requester"), org_of)
    owner = _facility(current.get("owner"), org_of)
    patient = _ref(current.get("for") or (request or {}).get("subject"))
    referral.authored = authored
    referral.patient = patient[1] if patient[0] == "Patient" else None
    referral.route = f"{types.get(requester, 'unknown')} → {types.get(owner, 'unknown')}"
    referral.kind = referral_type(request)
    referral.requester, referral.owner = requester, owner
    return referral


# -- rows ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricRow:
    metric: str
    route: str
    referral_type: str
    numerator: int
    denominator: int
    value: float | None  # a count, a percentage or days
    unit: str  # "n", "%" or "d"
    dimension: str = ""
    subgroup: str = ""
    difference: float | str | None = None  # HEAT D and R (by dimension only)
    ratio: float | str | None = None


def _pct(n: int, d: int) -> float | None:
    return None if d <= 0 else round(100.0 * n / d, 2)


def _within(days: int | None, limit: int) -> bool:
    return days is not None and days <= limit


@dataclass(frozen=True, slots=True)
class _Course:
    """What the metrics ask of one referral on D, worked out once: a referral is counted in
    four groups (its route and type, its route, its type, overall) and in its equity subgroups."""

    accepted: int | None  # days to the first acceptance
    completed: int | None  # days to completion
    feedback: bool
    window_closed: bool  # made 30 days or more before D
    completed_in_window: bool  # completed within 30 days, day 30 included
    late_accept: bool | None  # None: not yet N days old; else not answered within N days
    late_close: bool | None  # None: not yet M days old; else not closed within M days


def _course(r: Referral, as_of: date, rules: ReferralRules) -> _Course:
    limits, age = rules.of(r.kind), (as_of - r.authored).days
    completed = r.days(r.completed)
    return _Course(
        r.days(r.accepted),
        completed,
        r.feedback,
        age >= COMPLETION_WINDOW,
        _within(completed, COMPLETION_WINDOW),
        None if age <= limits.accept_days else not _within(r.days(r.answered), limits.accept_days),
        None
        if age <= limits.complete_days
        else not _within(r.days(r.closed), limits.complete_days),
    )


def _unit_rows(courses: Sequence[_Course], route: str, kind: str, **extra: Any) -> list[MetricRow]:
    made = len(courses)

    def row(metric: str, n: int, d: int, value: float | None, unit: str) -> MetricRow:
        return MetricRow(metric, route, kind, n, d, value, unit, **extra)

    closed_window = [c for c in courses if c.window_closed]
    accepted = [c.accepted for c in courses if c.accepted is not None]
    completed = [c.completed for c in courses if c.completed is not None]
    late_accept = [c.late_accept for c in courses if c.late_accept is not None]
    late_close = [c.late_close for c in courses if c.late_close is not None]
    n_accept, n_close = sum(late_accept), sum(late_close)
    n30 = sum(1 for c in closed_window if c.completed_in_window)
    fed = sum(1 for c in courses if c.feedback)
    return [
        row("referrals-made", made, made, float(made), "n"),
        row("accepted", len(accepted), made, _pct(len(accepted), made), "%"),
        row("completed-30-days", n30, len(closed_window), _pct(n30, len(closed_window)), "%"),
        row("feedback-returned", fed, made, _pct(fed, made), "%"),
        row(MEDIANS[0], len(accepted), made, _median(accepted), "d"),
        row(MEDIANS[1], len(completed), made, _median(completed), "d"),
        row("overdue-acceptance", n_accept, len(late_accept), float(n_accept), "n"),
        row("overdue-completion", n_close, len(late_close), float(n_close), "n"),
    ]


def _median(days: Iterable[int | None]) -> float | None:
    known = [d for d in days if d is not None]
    return float(statistics.median(known)) if known else None


def metric_rows(
    referrals: Sequence[Referral], as_of: date, rules: ReferralRules = ReferralRules()
) -> list[MetricRow]:
    """Every metric per (route, type), per route, per type and overall (``all``), sorted."""
    groups: dict[tuple[str, str], list[_Course]] = {}
    everyone = []
    for r in referrals:
        course = _course(r, as_of, rules)
        everyone.append(course)
        for key in ((r.route, r.kind), (r.route, ALL), (ALL, r.kind)):
            groups.setdefault(key, []).append(course)
    rows: list[MetricRow] = []
    for route, kind in sorted(groups):
        rows += _unit_rows(groups[route, kind], route, kind)
    return rows + _unit_rows(everyone, ALL, ALL)


def overdue(
    referrals: Sequence[Referral], as_of: date, rules: ReferralRules = ReferralRules()
) -> list[tuple[Referral, str]]:
    """The referrals still open and overdue on D, with why (for both facilities' worklists)."""
    out = []
    for r in referrals:
        limits, age = rules.of(r.kind), (as_of - r.authored).days
        if r.answered is None and age > limits.accept_days:
            out.append((r, f"not accepted within {limits.accept_days} days"))
        elif r.closed is None and age > limits.complete_days:
            out.append((r, f"not completed within {limits.complete_days} days"))
    return out


# -- equity --------------------------------------------------------------------------------------


def _heat(
    rows: Sequence[MetricRow], ordered: bool
) -> tuple[float | str | None, float | str | None]:
    """HEAT difference and ratio of a proportion (favourable) through the equity engine."""
    subgroups = [
        percentage_subgroup(r.subgroup, r.value, r.denominator, ordered)
        for r in rows
        if r.value is not None and r.denominator > 0
    ]
    return difference_and_ratio(subgroups, ordered)


def by_dimension(
    store: Store,
    referrals: Sequence[Referral],
    as_of: date,
    rules: ReferralRules = ReferralRules(),
    dimensions: Sequence[str] | None = None,
) -> list[MetricRow]:
    """Every metric by each equity dimension of the referred patient (the equity engine's
    patient view), with the HEAT difference and ratio of the proportions."""
    values = dimension_values(store, (r.patient for r in referrals if r.patient))
    rows: list[MetricRow] = []
    courses = [_course(r, as_of, rules) for r in referrals]
    for dim in dimensions or list(EQUITY_DIMENSIONS):
        groups: dict[str, list[_Course]] = {}
        for r, course in zip(referrals, courses, strict=True):
            v = values.get(r.patient or "", {}).get(dim)
            if v not in (None, ""):
                groups.setdefault(str(v), []).append(course)
        per_group = [
            _unit_rows(members, ALL, ALL, dimension=dim, subgroup=name)
            for name, members in sorted(groups.items())
        ]
        for metric in METRICS:
            found = [next(r for r in rs if r.metric == metric) for rs in per_group]
            d, ratio = (
                _heat(found, EQUITY_DIMENSIONS[dim]) if metric in PROPORTIONS else (None, None)
            )
            unit = found[0].unit if found else ""
            rows += [*found, MetricRow(metric, ALL, ALL, 0, 0, None, unit, dim, "", d, ratio)]
    return rows


COLUMNS = tuple(MetricRow.__dataclass_fields__)
