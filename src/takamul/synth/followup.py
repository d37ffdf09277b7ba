"""Care-programme follow-up of people registered with hypertension or diabetes (issue 14).

A ``Plan`` is drawn for each registered person from a stream of their own, so the block's stream
(everything generated before issue 14) is not shifted by it. The plan says how the person is
followed: lost to follow-up, a missed recent visit, no recent measurement, blood pressure control,
prior heart attack or stroke, and death. The plan also gates what is written for the person (a
lost person's later visits are not written; nothing is written after a death) and keeps the books
of what was written: visits, blood pressures, glucose tests and diagnoses.

Those books, classified with the programme rules as of the configuration's ``end_date``, are
``truth/programme_status.csv``. The rules are re-implemented here on purpose and the status engine
(``takamul.programmes``) is not imported: the truth must be an independent reckoning of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, timedelta
from random import Random
from typing import Any

from takamul.synth import tables
from takamul.synth.people import Person

__all__ = ["STATUS_COLUMNS", "Plan", "draw_plan", "minus_months"]

STATUS_COLUMNS = [
    "person_id",
    "programme",
    "status",
    "registered_on",
    "last_visit",
    "last_systolic",
    "last_diastolic",
]
PROGRAMMES = ("diabetes", "hypertension")
# HEARTS registers adults with hypertension; children with diabetes are followed as well (ISPAD)
MIN_AGE = {"diabetes": 0, "hypertension": 18}

# LOINC codes the rules read. Glucose kinds rank HbA1c over fasting over random on one day.
BP_PANEL = "85354-9"
SYSTOLIC, DIASTOLIC = "8480-6", "8462-4"
GLUCOSE = {"4548-4": "hba1c", "1558-6": "fasting_glucose", "2345-7": "random_glucose"}
_RANK = {"hba1c": 0, "fasting_glucose": 1, "random_glucose": 2}
_TARGET = {"hba1c": 7.0, "fasting_glucose": 126.0, "random_glucose": 200.0}  # below = controlled

# Where each resource type carries the date the rules (and the muting) go by.
_WHEN: dict[str, tuple[str, ...]] = {
    "Encounter": ("period", "start"),
    "Observation": ("effectiveDateTime",),
    "MedicationRequest": ("authoredOn",),
    "MedicationDispense": ("whenHandedOver",),
    "Procedure": ("performedDateTime",),
    "QuestionnaireResponse": ("authored",),
    "ServiceRequest": ("authoredOn",),
    "CarePlan": ("period", "start"),
    "Immunization": ("occurrenceDateTime",),
    "Condition": ("onsetDateTime",),
}
# Contacts that do not end when a person stops coming: the diagnosis stays on the problem list
# and vaccination campaigns reach people outside the programme's clinics.
_NOT_SILENCED = ("Condition", "Immunization")


def minus_months(day: date, months: int) -> date:
    """``day`` minus calendar months, the day clamped to the month's end (as relativedelta)."""
    total = day.year * 12 + day.month - 1 - months
    year, month = divmod(total, 12)
    month += 1
    following = date(year + (month == 12), month % 12 + 1, 1)
    return date(year, month, min(day.day, (following - timedelta(days=1)).day))


def _when(rtype: str, body: dict[str, Any]) -> str | None:
    path = _WHEN.get(rtype)
    if path is None:
        return None
    value: Any = body.get(path[0])
    if len(path) == 2 and isinstance(value, dict):
        value = value.get(path[1])
    return value[:10] if isinstance(value, str) else None


@dataclass(slots=True)
class Plan:
    """How one registered person is followed, and the books of what was written for them."""

    programmes: tuple[str, ...]
    rng: Random
    end: date
    engagement: str  # active, lost or missed
    interval: float  # days between programme follow-up visits
    hypertension_controlled: bool = True
    died: date | None = None
    last_contact: date | None = None  # lost or missed: no visit-making resource after it
    unmeasured: bool = False  # no programme measurement in the last 3 months
    prior: dict[str, date] = field(default_factory=dict)  # heart_attack / stroke -> onset
    birth: date | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    # the books
    diagnosed: dict[str, str] = field(default_factory=dict)
    visits: list[str] = field(default_factory=list)
    bps: dict[str, tuple[float, float]] = field(default_factory=dict)
    glucose: dict[str, dict[str, float]] = field(default_factory=dict)
    _died: str = ""
    _silent_after: str = ""
    _unmeasured_after: str = ""
    _codes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._died = self.died.isoformat() if self.died else ""
        self._silent_after = self.last_contact.isoformat() if self.last_contact else ""
        self._unmeasured_after = minus_months(self.end, 3).isoformat() if self.unmeasured else ""
        conditions = tables.clinical()["conditions"]
        self._codes = {conditions[k]["snomed"]: k for k in PROGRAMMES}

    # -- gate and books ---------------------------------------------------------------------

    def accept(self, rtype: str, body: dict[str, Any]) -> bool:
        """Whether ``body`` is written for the person; what is written goes into the books."""
        when = _when(rtype, body)
        if when is None:
            return True
        if self._died and when > self._died:
            return False
        if self._silent_after and when > self._silent_after and rtype not in _NOT_SILENCED:
            return False
        if rtype == "Observation":
            return self._observation(when, body)
        if rtype == "Encounter":
            if body.get("status") == "finished":
                self.visits.append(when)
        elif rtype == "MedicationRequest":
            if body.get("status") in ("active", "completed"):
                self.visits.append(when)
        elif rtype == "MedicationDispense":
            if body.get("status") == "completed":
                self.visits.append(when)
        elif rtype == "Condition":
            name = self._codes.get(body["code"]["coding"][0]["code"])
            if name and (name not in self.diagnosed or when < self.diagnosed[name]):
                self.diagnosed[name] = when
        return True

    def _observation(self, when: str, body: dict[str, Any]) -> bool:
        code = body["code"]["coding"][0]["code"]
        if code == BP_PANEL:
            if (
                self._unmeasured_after
                and when > self._unmeasured_after
                and "hypertension" in self.programmes
            ):
                return False  # the person's programme measurements stop 3 months before the end
            if when in self.bps:
                return False  # one reading a day: the rules order readings by date only
            values = {
                c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"]
                for c in body["component"]
            }
            self.bps[when] = (values[SYSTOLIC], values[DIASTOLIC])
            self.visits.append(when)
        elif code in GLUCOSE:
            if (
                self._unmeasured_after
                and when > self._unmeasured_after
                and "diabetes" in self.programmes
            ):
                return False  # the person's programme measurements stop 3 months before the end
            kinds = self.glucose.setdefault(when, {})
            kind = GLUCOSE[code]
            if kind in kinds:
                return False  # one test of a kind a day, for the same reason
            kinds[kind] = body["valueQuantity"]["value"]
            self.visits.append(when)
        return True

    # -- readings -----------------------------------------------------------------------------

    def bp(self, day: date) -> tuple[int, int]:
        """A blood pressure of the person's control state (older readings may drift from it)."""
        rng, s = self.rng, self.settings
        controlled = self.hypertension_controlled
        if day <= minus_months(self.end, 12) and rng.random() < s["reading_drift"]:
            controlled = not controlled  # control varies over the years; the last year holds
        if rng.random() < s["edge_reading"]:
            # the thresholds themselves: 139/89 is controlled, 140/90 (or either half) is not
            if controlled:
                return 139, 89
            return ((140, 90), (140, 84), (132, 90))[int(rng.random() * 3)]
        if controlled:
            return (
                min(139, max(100, round(rng.gauss(127, 7)))),
                min(89, max(60, round(rng.gauss(79, 5)))),
            )
        if rng.random() < s["severe_reading"]:
            return 180 + int(rng.random() * 25), 110 + int(rng.random() * 12)
        sys_, dia = round(rng.gauss(152, 10)), round(rng.gauss(92, 7))
        if sys_ < 140 and dia < 90:
            sys_ = 140 + int(rng.random() * 20)
        return min(sys_, 220), max(min(dia, 125), 60)

    def glucose_value(self, kind: str, controlled: bool) -> float:
        """A glucose result of ``kind`` on the right side of its target (edges included)."""
        u, edge = self.rng.random(), self.rng.random() < self.settings["edge_reading"]
        if kind == "hba1c":
            if edge:
                return 6.9 if controlled else 7.0
            return round(5.8 + u * 1.1, 1) if controlled else round(7.1 + u * 4.4, 1)
        if kind == "fasting_glucose":
            if edge:
                return 125.0 if controlled else 126.0
            return float(round(85 + u * 40 if controlled else 127 + u * 140))
        if edge:
            return 199.0 if controlled else 200.0
        return float(round(100 + u * 99 if controlled else 201 + u * 150))

    # -- the status as of the end date -----------------------------------------------------

    def rows(self, person_id: str) -> list[list[str]]:
        """``truth/programme_status.csv`` rows: the rules applied to the books as of end_date."""
        end = self.end.isoformat()
        if self._died and self._died <= end:
            return []  # death takes the person out of every registry
        m3, m12 = minus_months(self.end, 3).isoformat(), minus_months(self.end, 12).isoformat()
        visits = [v for v in self.visits if v <= end]
        last_visit = max(visits, default="")
        bp_days = [d for d in self.bps if d <= end]
        last_bp = self.bps[max(bp_days)] if bp_days else None
        rows = []
        for programme in self.programmes:
            registered = self.diagnosed.get(programme)
            if registered is None or registered > end or self._younger(programme):
                continue
            if registered > m3:
                status = "registered-recently"
            elif not any(v > m12 for v in visits):
                status = "lost-to-follow-up"
            else:
                status = self._control(programme, m3, end) or (
                    "visited-no-measurement" if any(v > m3 for v in visits) else "missed-visit"
                )
            rows.append(
                [
                    person_id,
                    programme,
                    status,
                    registered,
                    last_visit,
                    _num(last_bp[0]) if last_bp else "",
                    _num(last_bp[1]) if last_bp else "",
                ]
            )
        return rows

    def _younger(self, programme: str) -> bool:
        """Younger on end_date than the programme's minimum age."""
        if self.birth is None:
            return False
        b, e = self.birth, self.end
        age = e.year - b.year - ((e.month, e.day) < (b.month, b.day))
        return age < MIN_AGE[programme]

    def _control(self, programme: str, m3: str, end: str) -> str | None:
        if programme == "hypertension":
            days = [d for d in self.bps if m3 < d <= end]
            if not days:
                return None
            sys_, dia = self.bps[max(days)]
            return "controlled" if sys_ < 140 and dia < 90 else "uncontrolled"
        days = [d for d in self.glucose if m3 < d <= end]
        if not days:
            return None
        tests = self.glucose[max(days)]
        kind = min(tests, key=_RANK.__getitem__)
        return "controlled" if tests[kind] < _TARGET[kind] else "uncontrolled"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def draw_plan(
    config: dict[str, Any], start: date, p: Person, household: list[Person]
) -> Plan | None:
    """The follow-up plan of a person registered for hypertension or diabetes, else None."""
    end = date.fromisoformat(config["end_date"])
    programmes = tuple(k for k in PROGRAMMES if k in p.conditions and p.conditions[k] <= end)
    if not programmes:
        return None
    s = config["programmes"]
    rng = Random(f"{config['seed']}/{config['country']}/{p.index}/programmes")
    first = max(min(p.conditions[k] for k in programmes), start)
    # Every diagnosis (and its first treatment) is a contact, so a person stops coming only
    # after the last of them, and dies after it and after the births of their own children.
    latest = max([*p.conditions.values(), first])
    births = [m.birth for m in household if (m.mother is p or m.father is p) and m.birth <= end]
    m3, m12 = minus_months(end, 3), minus_months(end, 12)
    lo_days, hi_days = s["follow_up_days"]
    interval = lo_days + rng.random() * (hi_days - lo_days)
    died: date | None = None
    if p.age >= s["death_min_age"]:
        rate = 0.0
        for age, value in s["death_per_year_by_age"]:
            if p.age >= age:
                rate = value
        years = (end - first).days / 365.25
        earliest = max([latest, *births]) + timedelta(days=30)
        if rng.random() < 1 - math.pow(1 - rate, years) and earliest < end:
            died = earliest + timedelta(days=int(rng.random() * (end - earliest).days))
    u = rng.random()
    last_contact: date | None = None
    engagement = "active"
    lost_lo = max(latest + timedelta(days=30), m12 - timedelta(days=730))
    if u < s["lost_to_follow_up"] and lost_lo < m12:
        engagement = "lost"
        last_contact = lost_lo + timedelta(days=int(rng.random() * (m12 - lost_lo).days))
    elif u < s["lost_to_follow_up"] + s["missed_visit"] and latest + timedelta(days=30) <= m3:
        engagement, last_contact = "missed", m3
    unmeasured = engagement == "active" and rng.random() < s["unmeasured"]
    controlled = True
    prior: dict[str, date] = {}
    if "hypertension" in programmes:
        h = config["inequities"]["hypertension_control"]
        controlled = rng.random() < h["base"] * h["income_rr"][p.quintile - 1]
        for event in ("heart_attack", "stroke"):
            if rng.random() < s[f"prior_{event}"]:
                lo = max(p.conditions["hypertension"], start - timedelta(days=3650))
                hi = min(end, died or end, last_contact or end)
                if lo < hi:
                    prior[event] = lo + timedelta(days=int(rng.random() * (hi - lo).days))
    return Plan(
        programmes,
        rng,
        end,
        engagement,
        interval,
        hypertension_controlled=controlled,
        died=died,
        last_contact=last_contact,
        unmeasured=unmeasured,
        prior=prior,
        birth=p.birth,
        settings=s,
    )
