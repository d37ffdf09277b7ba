"""Care gaps: what preventive or chronic care a person is due, done, or about to be due.

One gap per measure for which the person is eligible, with the Da Vinci DEQM gap status
(http://hl7.org/fhir/us/davinci-deqm/CodeSystem/gaps-status):

- a **preventive** measure (screening every N days, or vaccine doses) is ``closed-gap`` when its
  evidence still counts at the end of the period, ``prospective-gap`` when it counts today but
  expires before the period ends (act before it opens), ``open-gap`` otherwise;
- a **chronic** measure (control of a programme) is ``closed-gap`` when the person's status on
  the day is ``controlled`` and ``open-gap`` for every other status that counts in the control
  denominator (persons registered recently are not yet measured).

"Today" is the earlier of the period's end and the as-of date, so a past period is judged at
its end.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

from dateutil.relativedelta import relativedelta

from takamul.programmes.definitions import Catalog, Prevention
from takamul.programmes.facts import EVIDENCE, Fact, day_number, from_day
from takamul.programmes.status import (
    PersonStatus,
    Readings,
    age_on,
    classify,
    person_facts,
    person_records,
    readings_from_facts,
)
from takamul.store.repository import Store

__all__ = ["GAPS_SYSTEM", "Gap", "PersonGaps", "measure_ids", "person_gaps"]

GAPS_SYSTEM = "http://hl7.org/fhir/us/davinci-deqm/CodeSystem/gaps-status"
OPEN, CLOSED, PROSPECTIVE = "open-gap", "closed-gap", "prospective-gap"


@dataclass(frozen=True, slots=True)
class Gap:
    """One measure for one person."""

    measure: str  # Measure id: a prevention id or '<programme>-control'
    title: str
    status: str  # open-gap | closed-gap | prospective-gap
    kind: str  # prevention | chronic
    due: date | None  # when the care is (or was) due
    last_done: date | None  # the latest evidence, or the last measurement
    detail: str  # why, in English (the stored DetectedIssue.detail)
    by: str  # who acts: chw | gp | specialist
    programme_status: PersonStatus | None = None


@dataclass(frozen=True)
class PersonGaps:
    person_id: str  # the Person, or '' for a record not linked yet
    patient_ids: tuple[str, ...]
    readings: Readings
    gaps: list[Gap]

    @property
    def open(self) -> list[Gap]:
        return [g for g in self.gaps if g.status == OPEN]


def measure_ids(catalog: Catalog) -> list[str]:
    """Every care-gap measure the catalog defines, in catalog order."""
    return [p.id for p in catalog.prevention] + [
        f"{p.id}-control" for p in catalog.programmes if p.control is not None
    ]


def _age(birth: date | None, day: date) -> int | None:
    return None if birth is None else age_on(birth, day)


def _prevention_gap(
    p: Prevention, r: Readings, facts: list[Fact], today: date, end: date, country: str
) -> Gap | None:
    birth, sex = from_day(r.birth), r.sex
    low, high = p.age_range(country)
    age = _age(birth, today)
    if age is None or not low <= age <= high or (p.sex and sex != p.sex):
        return None
    t = day_number(today.isoformat())
    assert t is not None
    if any(c in r.registered and r.registered[c] <= t for c in p.exclude_conditions):
        return None
    intervals = {f"{e.system}|{e.code}": e.every_days or p.every_days for e in p.evidence}
    done = sorted(
        (f.day, f.code or "")
        for f in facts
        if f.kind == EVIDENCE and f.code in intervals and f.day is not None and f.day <= t
    )
    if p.doses is not None:
        last = from_day(done[-1][0]) if done else None
        eligible = birth + relativedelta(years=low) if birth else today
        if len(done) >= p.doses:
            return Gap(p.id, p.title, CLOSED, "prevention", None, last, f"{len(done)} doses", p.by)
        return Gap(
            p.id, p.title, OPEN, "prevention", eligible, last,
            f"{len(done)} of {p.doses} doses recorded", p.by,
        )  # fmt: skip
    # the evidence that counts longest decides (a colonoscopy outlasts a stool test)
    valid_until: date | None = None
    last_done: date | None = None
    for day, code in done:
        done_on = from_day(day)
        assert done_on is not None
        until = done_on + timedelta(days=int(intervals[code] or 0))
        last_done = done_on if last_done is None or done_on > last_done else last_done
        valid_until = until if valid_until is None or until > valid_until else valid_until
    if valid_until is None:
        start = birth + relativedelta(years=low) if birth else today
        return Gap(p.id, p.title, OPEN, "prevention", start, None, "never recorded", p.by)
    if valid_until <= today:
        return Gap(
            p.id, p.title, OPEN, "prevention", valid_until, last_done,
            f"last done {last_done}, due again {valid_until}", p.by,
        )  # fmt: skip
    status = PROSPECTIVE if valid_until <= end else CLOSED
    return Gap(
        p.id, p.title, status, "prevention", valid_until, last_done,
        f"done {last_done}, due again {valid_until}", p.by,
    )  # fmt: skip


def _chronic_gaps(catalog: Catalog, r: Readings, today: date, person: str) -> list[Gap]:
    gaps = []
    for p in catalog.programmes:
        if p.control is None:
            continue
        days = [r.registered[k] for k in (p.condition, p.id) if k in r.registered]
        if not days:
            continue
        r.registered[p.id] = min(days)
        age = _age(from_day(r.birth), today)
        if p.min_age and age is not None and age < p.min_age:
            continue
        status = classify(p, r, today, person)
        if status is None or not status.in_control_denominator:
            continue
        controlled = status.status == "controlled"
        detail = {
            "controlled": "controlled at the last measurement",
            "uncontrolled": "not controlled at the last measurement",
            "visited-no-measurement": "visited in the last 3 months without a measurement",
            "missed-visit": "no visit in the last 3 months",
            "lost-to-follow-up": "no visit in the last 12 months",
        }.get(status.status, status.status)
        due = today - timedelta(days=status.overdue_days) if status.overdue_days else None
        gaps.append(
            Gap(
                f"{p.id}-control",
                f"{p.title} control",
                CLOSED if controlled else OPEN,
                "chronic",
                due,
                status.last_measurement_date,
                detail,
                "gp" if status.status == "uncontrolled" else "chw",
                status,
            )
        )
    return gaps


def person_gaps(
    store: Store,
    catalog: Catalog,
    patient_ids: Iterable[str],
    period_start: date,
    period_end: date,
    as_of: date | None = None,
    measures: Iterable[str] | None = None,
) -> PersonGaps:
    """The care gaps of the person behind ``patient_ids`` (all their records count)."""
    del period_start  # the evidence windows run back from the period's end
    today = min(as_of or date.today(), period_end)
    records = person_records(store, patient_ids)
    facts = person_facts(store, records)
    r = readings_from_facts(facts, today)
    person = next(iter(sorted(set(records.values()))), "")
    person_id = "" if person.startswith("~") else person
    gaps: list[Gap] = []
    for p in catalog.prevention:
        gap = _prevention_gap(p, r, facts, today, period_end, catalog.country)
        if gap is not None:
            gaps.append(gap)
    gaps.extend(_chronic_gaps(catalog, r, today, person_id))
    wanted = set(measures) if measures else None
    if wanted is not None:
        gaps = [g for g in gaps if g.measure in wanted]
    return PersonGaps(person_id, tuple(sorted(records)), r, gaps)
