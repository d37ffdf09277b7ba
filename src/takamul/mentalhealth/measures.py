"""Measures of the mental-health programme on a date D, per facility and overall, as FHIR
``MeasureReport``s, and by every equity dimension through the equity engine.

Definitions (also in docs/mental-health.md, "Measures"); dates are the local calendar dates
written in the resources; the last 12 months are the days after D - 12 months up to D:

- ``screening-coverage``: adults (18 or over on D, alive) with a PHQ-2 (55758-7) or PHQ-9
  (44261-6) total score in the last 12 months, over the adults registered (a Patient record).
- ``phq9-follow-up-4-8-weeks``: of the adults whose first positive PHQ-9 (>= 10) in the 12
  months ending 56 days before D (so the window has closed by D), those with another PHQ-9 28
  to 56 days after it (4 and 8 weeks, both included).
- ``response-6-months`` / ``remission-6-months`` (MN Community Measurement, Depression
  Response / Remission at Six Months, NQF 1884 / 0711; AIMS Center): of the adults whose first
  PHQ-9 >= 10 (the index) falls in the 12 months ending 6 months + 60 days before D, those
  whose last PHQ-9 in the window 6 months +/- 60 days after the index is at most half the
  index score (response) or below 5 (remission). No score in the window: not a response.
- ``safety-ack-median-hours`` / ``safety-ack-p90-hours``: safety Tasks (a positive self-harm
  item: PHQ-9 item 9, EPDS item 10) authored in the last 12 months: the hours from
  ``authoredOn`` to the first version of the Task in an acknowledging status (accepted,
  in-progress, on-hold, completed, failed), timed by its ``lastModified``, else its
  ``meta.lastUpdated``, on or before D. Median of the acknowledged; p90 by nearest rank; the
  numerator counts the acknowledged, the denominator every such Task (the rest: never
  acknowledged by D).

A person is the golden record (``mpi_member``); their facilities are the
``managingOrganization`` of each of their records, and a person counts once at each and once
overall.
"""

from __future__ import annotations

import calendar
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from dateutil.relativedelta import relativedelta
from sqlalchemy import Connection, text

from takamul.equity.measures import difference_and_ratio, percentage_subgroup
from takamul.equity.outreach import OUTREACH_SYSTEM
from takamul.mentalhealth.safety import SAFETY_CODE
from takamul.mpi.schema import mpi_metadata

# the equity engine's patient view and dimensions, as the programme indicators use them
from takamul.programmes.indicators import EQUITY_DIMENSIONS, dimension_values
from takamul.store.repository import Store
from takamul.store.schema import VERSION_CONTENT_SQL

__all__ = [
    "ACKNOWLEDGED",
    "EQUITY_DIMENSIONS",
    "MEASURES",
    "MeasureRow",
    "PersonMeasures",
    "by_dimension",
    "measure_reports",
    "measure_rows",
    "person_measures",
]

MEASURE_URL = "https://takamul.health/fhir/Measure/mental-health"
MEASURE_SYSTEM = f"{MEASURE_URL}/measure"
LOINC = "http://loinc.org"
PHQ2 = "55758-7"
PHQ9 = "44261-6"
POSITIVE = 10
FOLLOW_UP_DAYS = (28, 56)  # 4 and 8 weeks after the positive screen, both included
OUTCOME_MONTHS = 6
OUTCOME_WINDOW_DAYS = 60  # MN Community Measurement: six months +/- 60 days
ADULT = 18
ACKNOWLEDGED = frozenset({"accepted", "in-progress", "on-hold", "completed", "failed"})
PROPORTIONS = (
    "screening-coverage",
    "phq9-follow-up-4-8-weeks",
    "response-6-months",
    "remission-6-months",
)
TIMES = ("safety-ack-median-hours", "safety-ack-p90-hours")
MEASURES = PROPORTIONS + TIMES
_FINAL = {"final", "amended", "corrected"}
_POP = "http://terminology.hl7.org/CodeSystem/measure-population"


# -- reading -------------------------------------------------------------------------------------


def _json(dialect: str, path: str) -> str:
    if dialect == "postgresql":
        return "j #>> '{" + path.replace(".", ",") + "}'"
    return f"json_extract(j, '$.{path}')"


def _doc(dialect: str) -> str:
    if dialect == "postgresql":
        return "convert_from(r.content, 'UTF8')::jsonb AS j"
    return "CAST(r.content AS TEXT) AS j"


def _patients(conn: Connection) -> Iterable[tuple[str, Any, Any, Any, Any]]:
    """(id, birthDate, deceasedBoolean, deceasedDateTime, managingOrganization reference)."""
    d = conn.dialect.name
    fields = ", ".join(
        _json(d, p)
        for p in (
            "birthDate",
            "deceasedBoolean",
            "deceasedDateTime",
            "managingOrganization.reference",
        )
    )
    sql = (
        f"SELECT res_id, {fields} FROM (SELECT r.res_id, {_doc(d)} FROM resource r "
        "WHERE r.res_type = 'Patient' AND r.deleted = :f) s"
    )
    yield from conn.execute(text(sql), {"f": False})


def _scores(conn: Connection) -> Iterable[tuple[str, str, Any, Any, Any, Any, Any, Any]]:
    """(patient id, code, status, effectiveDateTime, effectivePeriod.start, issued,
    valueInteger, valueQuantity.value) of the PHQ-2 and PHQ-9 totals."""
    d = conn.dialect.name
    fields = ", ".join(
        _json(d, p)
        for p in (
            "status",
            "effectiveDateTime",
            "effectivePeriod.start",
            "issued",
            "valueInteger",
            "valueQuantity.value",
        )
    )
    sql = (
        f"SELECT patient_id, code, {fields} FROM (SELECT x.target_id AS patient_id, t.code, "
        f"{_doc(d)} FROM resource r "
        "JOIN sp_token t ON t.rid = r.rid AND t.res_type = 'Observation' AND t.param = 'code' "
        "AND t.system = :loinc AND t.code IN (:phq2, :phq9) "
        "JOIN sp_reference x ON x.rid = r.rid AND x.res_type = 'Observation' "
        "AND x.param = 'subject' AND x.target_type = 'Patient' "
        "WHERE r.res_type = 'Observation' AND r.deleted = :f) s"
    )
    yield from conn.execute(text(sql), {"f": False, "loinc": LOINC, "phq2": PHQ2, "phq9": PHQ9})


def _safety_tasks(conn: Connection) -> dict[str, list[dict[str, Any]]]:
    """Every version of every safety Task, oldest first, by Task id."""
    sql = text(
        f"SELECT v.res_id, v.version, v.last_updated, {VERSION_CONTENT_SQL} "
        "FROM resource_version v WHERE v.res_type = 'Task' AND v.rid IN ("
        "SELECT t.rid FROM sp_token t WHERE t.res_type = 'Task' AND t.param = 'code' "
        "AND t.system = :system AND t.code = :code) ORDER BY v.res_id, v.version"
    )
    found: dict[str, list[dict[str, Any]]] = {}
    for res_id, _version, updated, content in conn.execute(
        sql, {"system": OUTREACH_SYSTEM, "code": SAFETY_CODE}
    ):
        body = orjson.loads(content) if content else {"status": "deleted"}
        body["_stored"] = float(updated)
        found.setdefault(res_id, []).append(body)
    return found


def _members(conn: Connection) -> dict[str, str]:
    return {
        p: person
        for p, person in conn.execute(text("SELECT patient_id, person_id FROM mpi_member"))
    }


# -- dates ---------------------------------------------------------------------------------------


def _local_day(value: object) -> date | None:
    """The local calendar date of a full FHIR date or dateTime."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _born(value: object) -> date | None:
    """A birth date; a partial one (YYYY or YYYY-MM) as its latest day, so an adult is
    surely 18."""
    if not isinstance(value, str):
        return None
    try:
        if len(value) == 4:
            return date(int(value), 12, 31)
        if len(value) == 7:
            year, month = int(value[:4]), int(value[5:7])
            return date(year, month, calendar.monthrange(year, month)[1])
    except ValueError:
        return None
    return _local_day(value)


def _moment(value: object) -> datetime | None:
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _truthy(value: object) -> bool:
    return value in (True, 1, "true", "1")


def _age(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


# -- per person ----------------------------------------------------------------------------------


@dataclass(slots=True)
class PersonMeasures:
    """One person's part in each measure: None when not in its denominator."""

    key: str  # the person id, or "~record-id" for a record not linked to a person
    records: list[str] = field(default_factory=list)
    facilities: set[str] = field(default_factory=set)
    born: date | None = None
    deceased: bool = False  # deceasedBoolean true
    died: date | None = None  # deceasedDateTime: alive before that day
    phq2: list[date] = field(default_factory=list)
    phq9: list[tuple[date, str, int]] = field(default_factory=list)  # (day, dateTime, value)
    screened: bool | None = None
    followed_up: bool | None = None
    response: bool | None = None
    remission: bool | None = None
    ack_hours: list[float | None] = field(default_factory=list)  # None: not acknowledged

    def adult(self, on: date) -> bool:
        alive = not self.deceased and (self.died is None or self.died > on)
        return alive and self.born is not None and _age(self.born, on) >= ADULT

    def outcome(self, measure: str) -> bool | None:
        return {
            "screening-coverage": self.screened,
            "phq9-follow-up-4-8-weeks": self.followed_up,
            "response-6-months": self.response,
            "remission-6-months": self.remission,
        }[measure]


def _score_day(status: object, *when: object) -> date | None:
    if status not in _FINAL:
        return None
    for w in when:
        day = _local_day(w)
        if day is not None:
            return day
    return None


def _value(*values: object) -> int | None:
    for v in values:
        try:
            return round(float(v))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
    return None


def _read(
    store: Store, progress: Callable[[str], None]
) -> tuple[dict[str, PersonMeasures], dict[str, list[dict[str, Any]]]]:
    """The persons with their records, facilities and scores; the safety Tasks' versions."""
    mpi_metadata.create_all(store.writer)  # a record without the client registry yet
    persons: dict[str, PersonMeasures] = {}
    with store.reader.connect() as conn, conn.begin():
        member = _members(conn)

        def of(patient_id: str) -> PersonMeasures:
            key = member.get(patient_id) or "~" + patient_id
            p = persons.get(key)
            if p is None:
                p = persons[key] = PersonMeasures(key)
            return p

        progress("reading the registered persons")
        for pid, birth, dead, died, org in _patients(conn):
            p = of(pid)
            p.records.append(pid)
            born = _born(birth)
            if born is not None and (p.born is None or born < p.born):
                p.born = born
            p.deceased = p.deceased or _truthy(dead)
            died_on = _local_day(died)
            if died_on is not None and (p.died is None or died_on < p.died):
                p.died = died_on
            if isinstance(org, str) and org.startswith("Organization/"):
                p.facilities.add(org.split("/")[1])
        progress("reading the PHQ-2 and PHQ-9 scores")
        for pid, code, status, at, period, issued, v_int, v_qty in _scores(conn):
            day = _score_day(status, at, period, issued)
            value = _value(v_int, v_qty)
            if day is None or value is None:
                continue
            p = of(pid)
            if code == PHQ2:
                p.phq2.append(day)
            else:
                p.phq9.append((day, str(at or period or issued), value))
        progress("reading the safety Tasks")
        tasks = _safety_tasks(conn)
    for p in persons.values():
        p.phq9.sort()
        p.records.sort()
    return persons, tasks


def _acknowledged_at(versions: Sequence[dict[str, Any]]) -> datetime | None:
    for v in versions:
        if v.get("status") in ACKNOWLEDGED:
            stamp = _moment(v.get("lastModified")) or _moment(
                (v.get("meta") or {}).get("lastUpdated")
            )
            return stamp or datetime.fromtimestamp(v["_stored"], UTC)
    return None


def _index(
    phq9: Sequence[tuple[date, str, int]], start: date, end: date
) -> tuple[date, int] | None:
    """The first PHQ-9 >= 10 with start < day <= end."""
    for day, _, value in phq9:
        if start < day <= end and value >= POSITIVE:
            return day, value
    return None


@dataclass(frozen=True, slots=True)
class _Windows:
    """The periods of the measures on one date, computed once for every person."""

    as_of: date
    year_ago: date  # the last 12 months: after this day, up to as_of
    follow_up_end: date  # positive screens up to this day have a closed 4-8 week window
    follow_up_start: date
    outcome_end: date  # indexes up to this day have a closed 6-month window
    outcome_start: date

    @classmethod
    def on(cls, as_of: date) -> _Windows:
        close = as_of - timedelta(days=FOLLOW_UP_DAYS[1])
        end = as_of - relativedelta(months=OUTCOME_MONTHS) - timedelta(days=OUTCOME_WINDOW_DAYS)
        year = relativedelta(years=1)
        return cls(as_of, as_of - year, close, close - year, end, end - year)


def _classify(p: PersonMeasures, w: _Windows) -> None:
    p.screened = any(w.year_ago < d <= w.as_of for d in p.phq2) or any(
        w.year_ago < d <= w.as_of for d, _, _ in p.phq9
    )
    index = _index(p.phq9, w.follow_up_start, w.follow_up_end)
    if index is not None:
        low, high = (index[0] + timedelta(days=n) for n in FOLLOW_UP_DAYS)
        p.followed_up = any(low <= d <= high for d, _, _ in p.phq9)
    index = _index(p.phq9, w.outcome_start, w.outcome_end)
    if index is not None:
        target = index[0] + relativedelta(months=OUTCOME_MONTHS)
        window = timedelta(days=OUTCOME_WINDOW_DAYS)
        found = [v for d, _, v in p.phq9 if target - window <= d <= target + window]
        last = found[-1] if found else None  # sorted by day, then dateTime
        p.response = last is not None and 2 * last <= index[1]
        p.remission = last is not None and last < 5


def person_measures(
    store: Store, as_of: date, progress: Callable[[str], None] | None = None
) -> list[PersonMeasures]:
    """Every person with a record, with their part in each measure on ``as_of``."""
    say = progress or (lambda _: None)
    persons, tasks = _read(store, say)
    say("classifying")
    member_of = {r: p for p in persons.values() for r in p.records}
    year_ago = as_of - relativedelta(years=1)
    for versions in tasks.values():
        current = versions[-1]
        authored = _moment(current.get("authoredOn"))
        ref = str((current.get("for") or {}).get("reference") or "")
        p = member_of.get(ref.removeprefix("Patient/"))
        if authored is None or p is None or current.get("status") in ("entered-in-error",):
            continue
        if not year_ago < authored.date() <= as_of:
            continue
        acked = _acknowledged_at(versions)
        if acked is not None and acked.date() > as_of:
            acked = None
        p.ack_hours.append(None if acked is None else (acked - authored).total_seconds() / 3600)
    adults = [p for p in persons.values() if p.adult(as_of)]
    windows = _Windows.on(as_of)
    for p in adults:
        _classify(p, windows)
    return sorted(adults, key=lambda p: p.key)


# -- rows ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeasureRow:
    measure: str
    facility: str  # an Organization id, or "all"
    numerator: int
    denominator: int
    value: float | None  # a percentage, or hours
    unit: str  # "%" or "h"
    dimension: str = ""
    subgroup: str = ""
    difference: float | str | None = None  # HEAT D and R (by dimension only)
    ratio: float | str | None = None


def _pct(n: int, d: int) -> float | None:
    return None if d <= 0 else round(100.0 * n / d, 2)


def nearest_rank(values: Sequence[float], share: float) -> float:
    """The smallest value with at least ``share`` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _unit_rows(people: Sequence[PersonMeasures], facility: str, **extra: Any) -> list[MeasureRow]:
    rows = []
    for m in PROPORTIONS:
        outcomes = [p.outcome(m) for p in people]
        n = sum(1 for o in outcomes if o)
        d = sum(1 for o in outcomes if o is not None)
        rows.append(MeasureRow(m, facility, n, d, _pct(n, d), "%", **extra))
    hours = [h for p in people for h in p.ack_hours]
    done = [h for h in hours if h is not None]
    median = round(statistics.median(done), 2) if done else None
    p90 = round(nearest_rank(done, 0.9), 2) if done else None
    rows.append(MeasureRow(TIMES[0], facility, len(done), len(hours), median, "h", **extra))
    rows.append(MeasureRow(TIMES[1], facility, len(done), len(hours), p90, "h", **extra))
    return rows


def measure_rows(people: Sequence[PersonMeasures]) -> list[MeasureRow]:
    """Every measure per facility (sorted) and overall (``all``, last)."""
    by_facility: dict[str, list[PersonMeasures]] = {}
    for p in people:
        for f in p.facilities or {"unknown"}:
            by_facility.setdefault(f, []).append(p)
    rows = []
    for facility in sorted(by_facility):
        rows += _unit_rows(by_facility[facility], facility)
    return rows + _unit_rows(people, "all")


# -- equity --------------------------------------------------------------------------------------


def by_dimension(
    store: Store, people: Sequence[PersonMeasures], dimensions: Sequence[str] | None = None
) -> list[MeasureRow]:
    """Every measure by each equity dimension (the equity engine's patient view; a person's
    values are those of their first record that has the dimension), with the HEAT difference
    and ratio of the proportions."""
    chosen = list(dimensions or EQUITY_DIMENSIONS)
    values = dimension_values(store, (r for p in people for r in p.records))
    rows: list[MeasureRow] = []
    for dim in chosen:
        ordered = EQUITY_DIMENSIONS[dim]
        groups: dict[str, list[PersonMeasures]] = {}
        for p in people:
            v = next(
                (values[r][dim] for r in p.records if values.get(r, {}).get(dim) not in (None, "")),
                None,
            )
            if v is not None:
                groups.setdefault(str(v), []).append(p)
        per_group = {
            name: _unit_rows(members, "all", dimension=dim, subgroup=name)
            for name, members in sorted(groups.items())
        }
        for m in MEASURES:
            found = [next(r for r in rs if r.measure == m) for rs in per_group.values()]
            summary: tuple[float | str | None, ...] = (None, None)
            if m in PROPORTIONS:
                subgroups = [
                    percentage_subgroup(r.subgroup, r.value, r.denominator, ordered)
                    for r in found
                    if r.value is not None
                ]
                summary = difference_and_ratio(subgroups, ordered)
            rows += found
            rows.append(
                MeasureRow(m, "all", 0, 0, None, found[0].unit if found else "", dim, "",
                           summary[0], summary[1])
            )  # fmt: skip
    return rows


# -- FHIR ----------------------------------------------------------------------------------------


def _population(code: str, count: int) -> dict[str, Any]:
    return {"code": {"coding": [{"system": _POP, "code": code}]}, "count": count}


def _score(row: MeasureRow) -> dict[str, Any]:
    unit = {"%": "%", "h": "h"}[row.unit]
    return {"value": row.value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}


def _group(row: MeasureRow, strata: Sequence[MeasureRow]) -> dict[str, Any]:
    group: dict[str, Any] = {
        "code": {"coding": [{"system": MEASURE_SYSTEM, "code": row.measure}], "text": row.measure},
        "population": [
            _population("numerator", row.numerator),
            _population("denominator", row.denominator),
        ],
    }
    if row.value is not None:
        group["measureScore"] = _score(row)
    stratifiers: dict[str, list[dict[str, Any]]] = {}
    for s in strata:
        if s.measure != row.measure or not s.subgroup:
            continue
        stratum: dict[str, Any] = {
            "value": {"text": s.subgroup},
            "population": [
                _population("numerator", s.numerator),
                _population("denominator", s.denominator),
            ],
        }
        if s.value is not None:
            stratum["measureScore"] = _score(s)
        stratifiers.setdefault(s.dimension, []).append(stratum)
    if stratifiers:
        group["stratifier"] = [
            {"code": [{"text": dim}], "stratum": strata_of}
            for dim, strata_of in stratifiers.items()
        ]
    return group


def measure_reports(
    rows: Sequence[MeasureRow], as_of: date, strata: Sequence[MeasureRow] = ()
) -> list[dict[str, Any]]:
    """One summary ``MeasureReport`` per facility and one overall (with the equity strata as
    ``stratifier``s), a group per measure."""
    reports = []
    for facility in dict.fromkeys(r.facility for r in rows):
        mine = [r for r in rows if r.facility == facility]
        report: dict[str, Any] = {
            "resourceType": "MeasureReport",
            "id": f"mh-{facility}-{as_of:%Y%m%d}".replace("/", "-")[:64],
            "status": "complete",
            "type": "summary",
            "measure": MEASURE_URL,
            "date": as_of.isoformat(),
            "period": {
                "start": (as_of - relativedelta(years=1) + timedelta(days=1)).isoformat(),
                "end": as_of.isoformat(),
            },
            "group": [_group(r, strata if facility == "all" else ()) for r in mine],
        }
        if facility not in ("all", "unknown"):
            report["reporter"] = {"reference": f"Organization/{facility}"}
        reports.append(report)
    return reports
