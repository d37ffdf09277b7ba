"""HEARTS indicators of the chronic-disease programmes, per facility, region and month, as FHIR
``MeasureReport``s, and control by every equity dimension through the equity engine.

Definitions (Simple's "What we report", the HEARTS monitoring module):

- *registered*: persons in the registry on the date (alive);
- *under care*: registered 3 months or more before the date and not lost to follow-up: the
  denominator of control, uncontrolled, visited-no-measurement and missed visits;
- *lost to follow-up*: no visit in 12 months, as a share of those registered 3 months or more
  before the date;
- *coverage*: registered persons against the estimated number with the condition (the
  programme's ``estimated_prevalence`` of the country times the adults with a record at the
  facility);
- *cohort*: the persons registered in a quarter, by their status at the end of the next quarter
  (controlled, uncontrolled, visited without a measurement, missed visit).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from dateutil.relativedelta import relativedelta
from sqlalchemy import select, text

from takamul.equity.measures import difference_and_ratio, percentage_subgroup
from takamul.programmes.definitions import Catalog, Programme
from takamul.programmes.facts import PATIENT, day_number
from takamul.programmes.status import PersonStatus, statuses
from takamul.store.repository import Store
from takamul.store.schema import resource
from takamul.views.evaluate import compile_view

__all__ = [
    "EQUITY_DIMENSIONS",
    "INDICATORS",
    "Cohort",
    "IndicatorRow",
    "Tally",
    "by_dimension",
    "chosen_dimensions",
    "cohorts",
    "dimension_values",
    "indicator_rows",
    "measure_report",
    "month_ends",
]

MEASURE_BASE = "https://takamul.health/fhir/Measure"
INDICATORS = (
    "controlled",
    "uncontrolled",
    "visited-no-measurement",
    "missed-visit",
    "lost-to-follow-up",
    "coverage",
)
_POP = "http://terminology.hl7.org/CodeSystem/measure-population"


@dataclass(slots=True)
class Tally:
    """Counts behind the indicators of one unit (a facility, a region, the country)."""

    registered: int = 0
    recent: int = 0
    lost: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    adults: int = 0  # persons old enough for the programme with a record here

    def add(self, row: PersonStatus) -> None:
        self.registered += 1
        self.by_status[row.status] += 1
        if row.status == "registered-recently":
            self.recent += 1
        elif row.status == "lost-to-follow-up":
            self.lost += 1

    @property
    def under_care(self) -> int:
        return self.registered - self.recent - self.lost

    def rate(self, indicator: str, prevalence: float | None) -> tuple[int, int, float | None]:
        """(numerator, denominator, percentage) of one indicator."""
        if indicator == "coverage":
            expected = round(self.adults * prevalence) if prevalence else 0
            return self.registered, expected, _pct(self.registered, expected)
        if indicator == "lost-to-follow-up":
            base = self.registered - self.recent
            return self.lost, base, _pct(self.lost, base)
        n = self.by_status[indicator]
        return n, self.under_care, _pct(n, self.under_care)


def _pct(n: int, d: int) -> float | None:
    return None if d <= 0 else round(100.0 * n / d, 2)


@dataclass(frozen=True, slots=True)
class IndicatorRow:
    programme: str
    period_end: date  # the month's last day
    level: str  # facility | region | country
    unit: str
    indicator: str
    numerator: int
    denominator: int
    value: float | None  # percentage


def month_ends(last: date, months: int) -> list[date]:
    """The last day of each of ``months`` months ending with ``last``'s month, oldest first."""
    first_of_next = (last.replace(day=1) + relativedelta(months=1)).replace(day=1)
    ends = [first_of_next - relativedelta(months=k) - timedelta(days=1) for k in range(months)]
    return sorted(ends)


def _regions(store: Store) -> dict[str, str]:
    """Organization id -> its region (address state, else district or city)."""
    found: dict[str, str] = {}
    with store.reader.connect() as conn:
        orgs = conn.execute(
            select(resource.c.res_id, resource.c.content).where(
                resource.c.res_type == "Organization", resource.c.deleted.is_(False)
            )
        )
        for row in orgs:
            body = orjson.loads(row.content) if row.content else {}
            for address in body.get("address") or ():
                name = address.get("state") or address.get("district") or address.get("city")
                if name:
                    found[row.res_id] = name
                    break
    return found


def _adults(store: Store, programme: Programme, as_of: date) -> dict[str, int]:
    """Per facility, the persons with a record there old enough for the programme."""
    born_by = day_number((as_of - relativedelta(years=programme.min_age)).isoformat())
    sql = text(
        "SELECT f.org, COUNT(DISTINCT COALESCE(m.person_id, '~' || f.patient_id)) AS n "
        "FROM care_fact f LEFT JOIN mpi_member m ON m.patient_id = f.patient_id "
        f"WHERE f.kind = '{PATIENT}' AND f.org IS NOT NULL AND f.day <= :born_by "
        "GROUP BY f.org"
    )
    with store.reader.connect() as conn:
        return {r.org: int(r.n) for r in conn.execute(sql, {"born_by": born_by})}


def _tallies(
    rows: Iterable[PersonStatus], regions: dict[str, str], adults: dict[str, int]
) -> dict[tuple[str, str], Tally]:
    found: dict[tuple[str, str], Tally] = {}
    for row in rows:
        facility = row.facility or "unknown"
        region = regions.get(facility, "unknown")
        for key in (("facility", facility), ("region", region), ("country", "all")):
            found.setdefault(key, Tally()).add(row)
    for org, n in adults.items():
        for key in (("facility", org), ("region", regions.get(org, "unknown"))):
            found.setdefault(key, Tally()).adults += n
    found.setdefault(("country", "all"), Tally()).adults = sum(adults.values())
    return found


def indicator_rows(
    store: Store,
    catalog: Catalog,
    programme_id: str,
    ends: Sequence[date],
    country: str | None = None,
) -> list[IndicatorRow]:
    """Every indicator per facility, region and the country at each month end in ``ends``."""
    programme = catalog.programme(programme_id)
    prevalence = programme.prevalence.get((country or catalog.country).upper())
    regions = _regions(store)
    out: list[IndicatorRow] = []
    for end in ends:
        rows = statuses(store, catalog, end, [programme.id])
        tallies = _tallies(rows, regions, _adults(store, programme, end))
        for (level, unit), tally in sorted(tallies.items()):
            for indicator in INDICATORS:
                if indicator == "coverage" and not prevalence:
                    continue
                if programme.control is None and indicator in ("controlled", "uncontrolled"):
                    continue
                n, d, value = tally.rate(indicator, prevalence)
                out.append(IndicatorRow(programme.id, end, level, unit, indicator, n, d, value))
    return out


@dataclass(frozen=True, slots=True)
class Cohort:
    programme: str
    quarter: str  # e.g. 2024-Q3: registered in that quarter
    outcome_on: date  # the end of the next quarter
    registered: int
    outcomes: dict[str, int]


def _quarter_start(day: date) -> date:
    return date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)


def cohorts(
    store: Store, catalog: Catalog, programme_id: str, quarters: int, as_of: date
) -> list[Cohort]:
    """Quarterly registration cohorts with their status at the end of the next quarter (the last
    ``quarters`` cohorts whose next quarter has ended by ``as_of``)."""
    programme = catalog.programme(programme_id)
    # the newest cohort whose following quarter is over
    start = _quarter_start(as_of) - relativedelta(months=6)
    if _quarter_start(as_of) + relativedelta(months=3) - timedelta(days=1) <= as_of:
        start += relativedelta(months=3)
    out = []
    for k in range(quarters):
        q_start = start - relativedelta(months=3 * k)
        q_end = q_start + relativedelta(months=3) - timedelta(days=1)
        outcome_on = q_start + relativedelta(months=6) - timedelta(days=1)
        rows = [
            r
            for r in statuses(store, catalog, outcome_on, [programme.id])
            if q_start <= r.registered_on <= q_end
        ]
        label = f"{q_start.year}-Q{(q_start.month - 1) // 3 + 1}"
        out.append(
            Cohort(
                programme.id, label, outcome_on, len(rows), dict(Counter(r.status for r in rows))
            )
        )
    return sorted(out, key=lambda c: c.quarter)


# -- FHIR ----------------------------------------------------------------------------------------


def measure_report(
    programme: Programme, rows: Sequence[IndicatorRow], level: str, unit: str, end: date
) -> dict[str, Any]:
    """One summary ``MeasureReport``: a group per indicator of one unit and month."""
    mine = [r for r in rows if r.level == level and r.unit == unit and r.period_end == end]
    groups = []
    for r in mine:
        group: dict[str, Any] = {
            "code": {"coding": [{"system": f"{MEASURE_BASE}/indicator", "code": r.indicator}],
                     "text": r.indicator},
            "population": [
                {"code": {"coding": [{"system": _POP, "code": "numerator"}]}, "count": r.numerator},
                {"code": {"coding": [{"system": _POP, "code": "denominator"}]},
                 "count": r.denominator},
            ],
        }  # fmt: skip
        if r.value is not None:
            group["measureScore"] = {
                "value": r.value,
                "unit": "%",
                "system": "http://unitsofmeasure.org",
                "code": "%",
            }
        groups.append(group)
    report: dict[str, Any] = {
        "resourceType": "MeasureReport",
        "id": f"hearts-{programme.id}-{level}-{unit}-{end:%Y%m}".replace("/", "-")[:64],
        "status": "complete",
        "type": "summary",
        "measure": f"{MEASURE_BASE}/{programme.id}-control",
        "date": end.isoformat(),
        "period": {"start": end.replace(day=1).isoformat(), "end": end.isoformat()},
        "improvementNotation": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/measure-improvement-notation",
                    "code": "increase",
                }
            ]
        },
        "group": groups,
    }
    if level == "facility" and unit != "unknown":
        report["reporter"] = {"reference": f"Organization/{unit}"}
    elif level == "region":
        report["reporter"] = {"display": f"Region: {unit}"}
    return report


# -- equity --------------------------------------------------------------------------------------

EQUITY_DIMENSIONS = {
    "income_quintile": True,
    "region": False,
    "urban_rural": False,
    "sex": False,
    "nationality": False,
    "education": True,
}


def chosen_dimensions(requested: Sequence[str] | None) -> list[str]:
    """The equity dimensions a command's ``--by`` names ('all' for every one); a ValueError
    names one that does not exist."""
    dimensions = (
        list(EQUITY_DIMENSIONS) if requested and "all" in requested else list(requested or ())
    )
    unknown = [d for d in dimensions if d not in EQUITY_DIMENSIONS]
    if unknown:
        raise ValueError(
            f"unknown dimension {unknown[0]!r}; the dimensions are: "
            f"{', '.join(EQUITY_DIMENSIONS)} (or all)"
        )
    return dimensions


def dimension_values(store: Store, patient_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Equity columns of the Patients (the equity engine's patient view)."""
    # the equity engine's own Patient view, so a dimension means the same thing everywhere
    view = compile_view(Path(str(resources.files("takamul.equity") / "data/views/patient.json")))
    ids = sorted(set(patient_ids))
    out: dict[str, dict[str, Any]] = {}
    with store.reader.connect() as conn:
        for start in range(0, len(ids), 2000):
            chunk = ids[start : start + 2000]
            found = conn.execute(
                select(resource.c.res_id, resource.c.content).where(
                    resource.c.res_type == "Patient", resource.c.res_id.in_(chunk)
                )
            )
            for row in found:
                if row.content:
                    for values in view.dicts([orjson.loads(row.content)]):
                        values["sex"] = values.get("gender")
                        out[row.res_id] = values
    return out


def by_dimension(store: Store, rows: Sequence[PersonStatus]) -> list[dict[str, Any]]:
    """Control among persons under care by each equity dimension, with the HEAT difference and
    ratio (favourable indicator: the most advantaged subgroup is the reference)."""
    under = [r for r in rows if r.status not in ("registered-recently", "lost-to-follow-up")]
    values = dimension_values(store, (r.record_id or r.patient_ids[0] for r in under))
    out = []
    for dim, ordered in EQUITY_DIMENSIONS.items():
        counts: dict[str, list[int]] = {}
        for r in under:
            v = values.get(r.record_id or r.patient_ids[0], {}).get(dim)
            if v in (None, ""):
                continue
            c = counts.setdefault(str(v), [0, 0])
            c[1] += 1
            c[0] += r.status == "controlled"
        subgroups = [
            percentage_subgroup(name, 100.0 * n / d, d, ordered)
            for name, (n, d) in sorted(counts.items())
        ]
        entry: dict[str, Any] = {
            "dimension": dim,
            "subgroups": [
                {
                    "subgroup": s.name,
                    "controlled_pct": round(s.estimate, 2),
                    "under_care": int(s.population or 0),
                }
                for s in subgroups
            ],
        }
        difference, ratio = difference_and_ratio(subgroups, ordered)
        if difference is not None:  # computed (a number, or why not applicable)
            entry["d"], entry["r"] = difference, ratio
        out.append(entry)
    return out
