"""Registry statuses: where each person in a chronic-disease programme stands on a date.

The rules are HEARTS's and Simple's (docs/programmes.md): a person registered less than 3
months before the date is ``registered-recently``; with no visit in 12 months,
``lost-to-follow-up``; otherwise the last measurement of the programme's kind in the 3 months
before the date says ``controlled`` or ``uncontrolled``, and without one the person is
``visited-no-measurement`` or ``missed-visit``. The person is the golden record: every
Patient record linked to one person (``mpi_member``) counts, whichever facility made it.

One grouped query per call reads the care facts of every registered person's records
(:mod:`takamul.programmes.facts`); the few values each status needs are packed into numbers
so that "the values of the last reading" is a ``MAX`` on both SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any

from dateutil.relativedelta import relativedelta
from sqlalchemy import select, text

from takamul.mpi.schema import mpi_member
from takamul.programmes.definitions import Catalog, Programme
from takamul.programmes.facts import (
    BP,
    DEATH,
    DIAGNOSIS,
    ENROLMENT,
    GLUCOSE,
    PATIENT,
    VISIT_KINDS,
    CareFacts,
    Fact,
    care_fact,
    day_number,
    from_day,
)
from takamul.store.repository import Store

__all__ = [
    "STATUSES",
    "PersonStatus",
    "Readings",
    "classify",
    "person_statuses",
    "readings_from_facts",
    "statuses",
]

STATUSES = (
    "controlled",
    "uncontrolled",
    "visited-no-measurement",
    "missed-visit",
    "visited",
    "lost-to-follow-up",
    "registered-recently",
)
# ties on one day: HbA1c says more than a fasting glucose, which says more than a random one
GLUCOSE_RANK = {"random-glucose": 1, "fasting-glucose": 2, "hba1c": 3}
RANK_GLUCOSE = {v: k for k, v in GLUCOSE_RANK.items()}
_BP_PACK = 1_000_000  # day * 10^6 + systolic * 10^3 + diastolic
_GLUCOSE_PACK = 10_000_000  # day * 10^7 + rank * 10^6 + round(value * 10)


@dataclass(slots=True)
class Readings:
    """What the care facts say about one person (all dates on or before the as-of date)."""

    registered: dict[str, int] = field(default_factory=dict)  # programme id -> day
    prior: set[str] = field(default_factory=set)  # condition keys diagnosed (heart-attack, ...)
    last_visit: int | None = None
    last_bp: tuple[int, float, float] | None = None  # day, systolic, diastolic
    last_glucose: tuple[int, str, float] | None = None  # day, test, value
    dead: bool = False
    facility: str | None = None
    facility_key: tuple[int, str] = (-1, "")
    patient_ids: list[str] = field(default_factory=list)
    birth: int | None = None
    sex: str | None = None


@dataclass(frozen=True, slots=True)
class PersonStatus:
    """One row of ``takamul programmes status``."""

    person_id: str
    patient_ids: tuple[str, ...]
    programme: str
    facility: str | None
    status: str
    registered_on: date
    last_visit: date | None
    last_measurement_date: date | None
    last_systolic: float | None
    last_diastolic: float | None
    last_glucose_test: str | None
    last_glucose_value: float | None
    risk: str  # high | normal
    overdue_days: int
    birth_date: date | None = None
    sex: str | None = None
    record_id: str | None = None  # the person's record at the responsible facility

    @property
    def in_control_denominator(self) -> bool:
        return self.status not in ("registered-recently",)


@lru_cache(maxsize=256)
def _months_before(day: date, months: int) -> int:
    """The day number ``months`` calendar months before ``day`` (cached: one as-of date is
    classified for a million persons, and relativedelta is slow)."""
    return (day - relativedelta(months=months)).toordinal() - date(1970, 1, 1).toordinal()


@lru_cache(maxsize=256)
def _bounds(as_of: date) -> tuple[int, int, int]:
    """The day numbers of ``as_of``, 3 months and 12 months before it."""
    d = day_number(as_of.isoformat())
    assert d is not None
    return d, _months_before(as_of, 3), _months_before(as_of, 12)


def age_on(birth: int | date, on: date) -> int:
    """Whole years from a birth date (or its day number) to ``on``."""
    born = birth if isinstance(birth, date) else from_day(birth)
    assert born is not None
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def _glucose_uncontrolled(programme: Programme, g: tuple[int, str, float] | None) -> bool:
    control = programme.control
    if g is None or control is None or control.measure != "glucose":
        return False
    return not control.glucose_controlled(g[1], g[2])


def _measurement(programme: Programme, r: Readings) -> tuple[int, bool] | None:
    """The last measurement of the programme's kind: (day, controlled)."""
    control = programme.control
    if control is None:
        return None
    if control.measure == "blood-pressure":
        if r.last_bp is None:
            return None
        return r.last_bp[0], control.bp_controlled(r.last_bp[1], r.last_bp[2])
    if r.last_glucose is None:
        return None
    day, test, value = r.last_glucose
    return day, control.glucose_controlled(test, value)


def classify(
    programme: Programme, r: Readings, as_of: date, person_id: str = ""
) -> PersonStatus | None:
    """The person's status in ``programme`` on ``as_of``, or None when not in the registry."""
    registered = r.registered.get(programme.id)
    if registered is None or r.dead:
        return None
    d, three, twelve = _bounds(as_of)
    measured = _measurement(programme, r)
    visited_recently = r.last_visit is not None and r.last_visit > three
    if registered > three:
        status = "registered-recently"
    elif r.last_visit is None or r.last_visit <= twelve:
        status = "lost-to-follow-up"
    elif programme.control is None:
        status = "visited" if visited_recently else "missed-visit"
    elif measured is not None and measured[0] > three:
        status = "controlled" if measured[1] else "uncontrolled"
    else:
        status = "visited-no-measurement" if visited_recently else "missed-visit"
    uncontrolled = measured is not None and not measured[1]
    due = (r.last_visit if r.last_visit is not None else registered) + programme.follow_up_days(
        uncontrolled
    )
    overdue = max(0, d - due)
    bp = r.last_bp  # blood pressure matters in every chronic programme (the risk rule)
    glucose = r.last_glucose if _measures_glucose(programme) else None
    return PersonStatus(
        person_id=person_id,
        patient_ids=tuple(sorted(r.patient_ids)),
        programme=programme.id,
        facility=r.facility,
        status=status,
        registered_on=from_day(registered) or as_of,
        last_visit=from_day(r.last_visit),
        last_measurement_date=from_day(measured[0]) if measured else None,
        last_systolic=bp[1] if bp else None,
        last_diastolic=bp[2] if bp else None,
        last_glucose_test=glucose[1] if glucose else None,
        last_glucose_value=glucose[2] if glucose else None,
        risk="high" if _high_risk(programme, r, overdue) else "normal",
        overdue_days=overdue,
        birth_date=from_day(r.birth),
        sex=r.sex,
        record_id=r.facility_key[1] or None,
    )


def _high_risk(programme: Programme, r: Readings, overdue: int) -> bool:
    rule = programme.high_risk
    if rule is None or overdue < rule.overdue_days:
        return False
    bp = r.last_bp
    if bp is not None and (bp[1] >= rule.systolic_at_least or bp[2] >= rule.diastolic_at_least):
        return True
    if (
        bp is not None
        and r.prior & set(rule.prior_events)
        and (
            bp[1] >= rule.prior_event_systolic_at_least
            or bp[2] >= rule.prior_event_diastolic_at_least
        )
    ):
        return True
    return (
        rule.uncontrolled_glucose
        and _measures_glucose(programme)
        and _glucose_uncontrolled(programme, r.last_glucose)
    )


def _measures_glucose(programme: Programme) -> bool:
    return programme.control is not None and programme.control.measure == "glucose"


# -- reading the care facts -----------------------------------------------------------------

# the registered persons: of the whole record, from the diagnoses' index
_REG_ALL = """reg AS (
  SELECT DISTINCT COALESCE(m.person_id, '~' || f.patient_id) AS person
  FROM care_fact f LEFT JOIN mpi_member m ON m.patient_id = f.patient_id
  WHERE f.kind IN ('{dx}', '{enrol}') AND f.code IN ({codes}) AND f.day <= :d
)"""
# ... or of some candidate persons (a facility's, a few records'), from their records' facts, so
# a facility's registry reads that facility's persons and not the nation's diagnoses
_REG_OF = """cand_pats AS (
  SELECT m.patient_id, m.person_id AS person
  FROM mpi_member m JOIN cand ON cand.person = m.person_id
  UNION ALL
  SELECT substr(cand.person, 2), cand.person FROM cand WHERE substr(cand.person, 1, 1) = '~'
),
reg AS (
  SELECT DISTINCT cp.person FROM cand_pats cp JOIN care_fact f ON f.patient_id = cp.patient_id
  WHERE f.kind IN ('{dx}', '{enrol}') AND f.code IN ({codes}) AND f.day <= :d
)"""

_QUERY = """
WITH {reg},
pats AS (
  SELECT m.patient_id, m.person_id AS person FROM mpi_member m JOIN reg ON reg.person = m.person_id
  UNION ALL
  SELECT substr(reg.person, 2), reg.person FROM reg WHERE substr(reg.person, 1, 1) = '~'
)
SELECT pats.person, g.* FROM pats JOIN (
  SELECT f.patient_id,
    {per_code}
    NULL AS last_visit, NULL AS last_bp, NULL AS last_glucose,
    MAX(CASE WHEN f.kind = '{death}' AND f.day <= :d THEN 1 END) AS dead,
    MAX(CASE WHEN f.kind = '{patient}' THEN f.org END) AS home,
    MAX(CASE WHEN f.kind = '{patient}' THEN f.day END) AS birth,
    MAX(CASE WHEN f.kind = '{patient}' THEN f.code END) AS sex
  FROM care_fact f
  WHERE f.kind IN ('{dx}', '{enrol}', '{death}', '{patient}')
    AND f.patient_id IN (SELECT patient_id FROM pats)
  GROUP BY f.patient_id
  UNION ALL
  SELECT f.patient_id,
    {no_code}
    MAX(f.day) AS last_visit,
    MAX(CASE WHEN f.kind = '{bp}'
        THEN CAST(f.day AS BIGINT) * {bp_pack} + CAST(ROUND(LEAST_(f.v1, 999)) AS BIGINT) * 1000
             + CAST(ROUND(LEAST_(f.v2, 999)) AS BIGINT) END) AS last_bp,
    MAX(CASE WHEN f.kind = '{glucose}'
        THEN CAST(f.day AS BIGINT) * {glucose_pack}
             + (CASE f.code WHEN 'hba1c' THEN 3 WHEN 'fasting-glucose' THEN 2 ELSE 1 END) * 1000000
             + CAST(ROUND(LEAST_(f.v1, 99999.9) * 10) AS BIGINT) END) AS last_glucose,
    NULL AS dead, NULL AS home, NULL AS birth, NULL AS sex
  FROM care_fact f
  WHERE f.kind IN ({visits}) AND f.day <= :d
    AND f.patient_id IN (SELECT patient_id FROM pats)
  GROUP BY f.patient_id
) g ON g.patient_id = pats.patient_id
"""


def _sql(
    store: Store, catalog: Catalog, programmes: Sequence[Programme], reg: str
) -> tuple[str, list[str]]:
    keys = sorted(
        {p.condition for p in programmes}
        | {p.id for p in programmes}
        | {e for p in programmes if p.high_risk for e in p.high_risk.prior_events}
    )
    codes = ", ".join(
        f"'{k}'" for k in {p.condition for p in programmes} | {p.id for p in programmes}
    )
    per_code = "".join(
        f"MIN(CASE WHEN f.kind IN ('{DIAGNOSIS}', '{ENROLMENT}') AND f.code = '{k}' "
        f"AND f.day <= :d THEN f.day END) AS c_{i},\n  "
        for i, k in enumerate(keys)
    )
    no_code = "".join(f"NULL AS c_{i}, " for i in range(len(keys)))
    least = "LEAST" if store.dialect == "postgresql" else "MIN"
    reg = reg.format(dx=DIAGNOSIS, enrol=ENROLMENT, codes=codes)
    sql = _QUERY.format(
        reg=reg,
        no_code=no_code,
        dx=DIAGNOSIS,
        enrol=ENROLMENT,
        codes=codes,
        per_code=per_code,
        visits=", ".join(f"'{k}'" for k in VISIT_KINDS),
        bp=BP,
        glucose=GLUCOSE,
        death=DEATH,
        patient=PATIENT,
        bp_pack=_BP_PACK,
        glucose_pack=_GLUCOSE_PACK,
    )
    return sql.replace("LEAST_", least), keys


def _merge(r: Readings, row: Sequence[Any], keys: list[str]) -> None:
    """Add one record's values (both parts of the query, combined) to its person's. ``row``
    holds person, patient_id, one first day per key, then the columns of ``_TAIL``."""
    pid = row[1]
    r.patient_ids.append(pid)
    for i, key in enumerate(keys, 2):
        day = row[i]
        if day is not None:
            have = r.registered.get(key)
            r.registered[key] = day if have is None or day < have else have
    last_visit, packed_bp, packed_glucose, dead, home, birth, sex = row[2 + len(keys) :]
    if last_visit is not None and (r.last_visit is None or last_visit > r.last_visit):
        r.last_visit = last_visit
    if home:
        # the responsible facility: the home of the record seen last (ties: the larger id)
        seen = (last_visit if last_visit is not None else -1, pid)
        if r.facility is None or seen > r.facility_key:
            r.facility, r.facility_key = home, seen
    if packed_bp is not None:
        packed = int(packed_bp)
        day, rest = divmod(packed, _BP_PACK)
        if r.last_bp is None or packed > _pack_bp(r.last_bp):
            r.last_bp = (day, float(rest // 1000), float(rest % 1000))
    if packed_glucose is not None:
        packed = int(packed_glucose)
        day, rest = divmod(packed, _GLUCOSE_PACK)
        rank, value = divmod(rest, 1_000_000)
        if r.last_glucose is None or packed > _pack_glucose(r.last_glucose):
            r.last_glucose = (day, RANK_GLUCOSE[rank], value / 10)
    if dead:
        r.dead = True
    if birth is not None and r.birth is None:
        r.birth = birth
    if sex and r.sex is None:
        r.sex = sex


def _pack_bp(bp: tuple[int, float, float]) -> int:
    return bp[0] * _BP_PACK + int(bp[1]) * 1000 + int(bp[2])


def _pack_glucose(g: tuple[int, str, float]) -> int:
    return g[0] * _GLUCOSE_PACK + GLUCOSE_RANK[g[1]] * 1_000_000 + round(g[2] * 10)


def readings(
    store: Store,
    catalog: Catalog,
    programmes: Sequence[Programme],
    as_of: date,
    patient_ids: Iterable[str] | None = None,
    facility: str | None = None,
) -> dict[str, Readings]:
    """Per person (``Person`` id, or ``~patient`` for a record not linked yet), the readings
    of every person registered in one of ``programmes`` by ``as_of``; only the persons of
    ``patient_ids`` when given, only persons with a record at ``facility`` when given."""
    candidates: list[str] = []
    params: dict[str, object] = {"d": day_number(as_of.isoformat())}
    if facility is not None:
        params["org"] = facility
        candidates.append(
            "SELECT COALESCE(m3.person_id, '~' || h.patient_id) AS person FROM care_fact h "
            "LEFT JOIN mpi_member m3 ON m3.patient_id = h.patient_id "
            f"WHERE h.org = :org AND h.kind = '{PATIENT}'"
        )
    if patient_ids is not None:
        wanted = sorted(set(patient_ids))
        if not wanted:
            return {}
        names = []
        for i, pid in enumerate(wanted):
            params[f"p{i}"] = pid
            names.append(f":p{i}")
        # the persons of these records: the filter goes on the person, so that all of a
        # person's records are read even when only one of them was named
        candidates.append(
            "SELECT COALESCE(m2.person_id, '~' || p.pid) AS person FROM (SELECT "
            + " UNION ALL SELECT ".join(f"{n} AS pid" for n in names)
            + ") p LEFT JOIN mpi_member m2 ON m2.patient_id = p.pid"
        )
    reg = _REG_ALL
    if candidates:
        # both filters: the persons in both
        cand = " INTERSECT ".join(
            f"SELECT person FROM ({c}) c{i}" for i, c in enumerate(candidates)
        )
        reg = f"cand AS ({cand}),\n" + _REG_OF
    sql, keys = _sql(store, catalog, programmes, reg)
    found: dict[str, Readings] = {}
    # each record comes in two rows (its registry facts and its visits): combine them
    records: dict[str, tuple[Any, ...]] = {}
    with store.reader.connect() as conn:
        if store.dialect == "postgresql":
            # the grouped rows of a large registry fit in memory instead of spilling to disk;
            # compiling the expressions (JIT) costs more than it saves on this query
            conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
            conn.exec_driver_sql("SET LOCAL jit = off")
        for row in conn.execute(text(sql), params):
            seen = records.get(row[1])
            if seen is None:
                records[row[1]] = tuple(row)
            else:
                records[row[1]] = tuple(
                    a if b is None else b for a, b in zip(seen, row, strict=True)
                )
    for values in records.values():
        r = found.get(values[0])
        if r is None:
            r = found[values[0]] = Readings()
        _merge(r, values, keys)
    for r in found.values():
        for key in ("heart-attack", "stroke"):
            if key in r.registered:
                r.prior.add(key)
        # a programme's registration is its condition's diagnosis or its own enrolment
        for p in programmes:
            days = [r.registered[k] for k in (p.condition, p.id) if k in r.registered]
            if days:
                r.registered[p.id] = min(days)
    return found


def statuses(
    store: Store,
    catalog: Catalog,
    as_of: date,
    programme_ids: Sequence[str] | None = None,
    patient_ids: Iterable[str] | None = None,
    facts: CareFacts | None = None,
    facility: str | None = None,
) -> list[PersonStatus]:
    """Every registered person's status in each programme on ``as_of`` (one row per person
    and programme), in person order. ``facts`` is caught up first when given, so statuses
    include what was bulk-loaded since the last pass. ``facility``: only the persons whose
    responsible facility (the home of the record they were seen with last) it is."""
    if facts is not None:
        facts.catch_up()
    chosen = (
        [catalog.programme(p) for p in programme_ids] if programme_ids else list(catalog.programmes)
    )
    found = readings(store, catalog, chosen, as_of, patient_ids, facility)
    rows: list[PersonStatus] = []
    for person in sorted(found):
        r = found[person]
        if facility is not None and r.facility != facility:
            continue
        pid = person[1:] if person.startswith("~") else person
        for p in chosen:
            if p.min_age and r.birth is not None:
                age = age_on(r.birth, as_of)
                if age < p.min_age:
                    continue
            status = classify(p, r, as_of, "" if person.startswith("~") else pid)
            if status is not None:
                rows.append(status)
    return rows


# -- one person, for the care gaps, decision support and the record page ----------------------


def person_records(store: Store, patient_ids: Iterable[str]) -> dict[str, str]:
    """Every Patient record of the persons of ``patient_ids``: record id -> person key."""
    ids = sorted(set(patient_ids))
    if not ids:
        return {}
    with store.reader.connect() as conn:
        linked = {
            r.patient_id: r.person_id
            for r in conn.execute(
                select(mpi_member.c.patient_id, mpi_member.c.person_id).where(
                    mpi_member.c.patient_id.in_(ids)
                )
            )
        }
        persons = sorted(set(linked.values()))
        found = {pid: "~" + pid for pid in ids if pid not in linked}
        if persons:
            for r in conn.execute(
                select(mpi_member.c.patient_id, mpi_member.c.person_id).where(
                    mpi_member.c.person_id.in_(persons)
                )
            ):
                found[r.patient_id] = r.person_id
    return found


def person_facts(store: Store, patient_ids: Iterable[str]) -> list[Fact]:
    """The care facts of the given Patient records (one indexed lookup)."""
    ids = sorted(set(patient_ids))
    if not ids:
        return []
    with store.reader.connect() as conn:
        rows = conn.execute(select(care_fact).where(care_fact.c.patient_id.in_(ids))).all()
    return [Fact(r.patient_id, r.kind, r.code, r.day, r.v1, r.v2, r.org) for r in rows]


def readings_from_facts(facts: Iterable[Fact], as_of: date) -> Readings:
    """One person's readings from their facts: the same values the grouped query packs."""
    d = day_number(as_of.isoformat())
    assert d is not None
    r = Readings()
    seen: set[str] = set()
    last_by_patient: dict[str, int] = {}
    homes: dict[str, str] = {}
    for f in facts:
        if f.patient_id not in seen:
            seen.add(f.patient_id)
            r.patient_ids.append(f.patient_id)
        if f.kind == PATIENT:
            if f.org:
                homes[f.patient_id] = f.org
            r.birth = r.birth if r.birth is not None else f.day
            r.sex = r.sex or f.code
            continue
        if f.day is None or f.day > d:
            continue
        if f.kind == DEATH:
            r.dead = True
        elif f.kind in (DIAGNOSIS, ENROLMENT) and f.code:
            r.registered[f.code] = min(f.day, r.registered.get(f.code, f.day))
        if f.kind in VISIT_KINDS:
            r.last_visit = f.day if r.last_visit is None else max(r.last_visit, f.day)
            last_by_patient[f.patient_id] = max(f.day, last_by_patient.get(f.patient_id, f.day))
        if f.kind == BP and f.v1 is not None and f.v2 is not None:
            reading = (f.day, float(round(min(f.v1, 999))), float(round(min(f.v2, 999))))
            if r.last_bp is None or _pack_bp(reading) > _pack_bp(r.last_bp):
                r.last_bp = reading
        if f.kind == GLUCOSE and f.v1 is not None and f.code in GLUCOSE_RANK:
            test = (f.day, f.code, round(min(f.v1, 99999.9) * 10) / 10)
            if r.last_glucose is None or _pack_glucose(test) > _pack_glucose(r.last_glucose):
                r.last_glucose = test
    ordered = sorted(homes, key=lambda p: (last_by_patient.get(p, -1), p))
    if ordered:
        latest = ordered[-1]
        r.facility = homes[latest]
        r.facility_key = (last_by_patient.get(latest, -1), latest)
    for key in ("heart-attack", "stroke"):
        if key in r.registered:
            r.prior.add(key)
    return r


def person_statuses(
    store: Store,
    catalog: Catalog,
    patient_ids: Iterable[str],
    as_of: date,
) -> tuple[Readings, list[PersonStatus]]:
    """The statuses of one person (all their records) in every programme, read by index."""
    records = person_records(store, patient_ids)
    r = readings_from_facts(person_facts(store, records), as_of)
    person = next(iter(records.values()), "")
    rows = []
    for p in catalog.programmes:
        days = [r.registered[k] for k in (p.condition, p.id) if k in r.registered]
        if not days:
            continue
        r.registered[p.id] = min(days)
        too_young = p.min_age and r.birth is not None
        if too_young and age_on(r.birth, as_of) < p.min_age:  # type: ignore[arg-type]
            continue
        status = classify(p, r, as_of, "" if person.startswith("~") else person)
        if status is not None:
            rows.append(status)
    return r, rows
