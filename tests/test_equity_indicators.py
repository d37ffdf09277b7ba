"""Population indicators by equity dimension: recovery of the synthetic population's configured
inequities, intervals, suppression, the HEAT export, outreach worklists, the CLI and Spark.

The recovery tests generate a synthetic Saudi population (seed 31, not the registry's held-out
1234 and 4321) whose inequities are set in its configuration (``truth/effects.json``) and whose
realised outcomes are in ``truth/persons.csv``; the indicators computed from the FHIR data must
find them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from itertools import combinations
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from takamul.equity import indicators as ind
from takamul.equity.heat import compute_rows, read_template
from takamul.equity.indicators_cli import indicators_app
from takamul.equity.measures import Measure
from takamul.equity.outreach import store_bundle, worklist, worklist_bundle
from takamul.fhir.validation import validate_resource
from takamul.registry.dates import native_calendar_date
from takamul.synth import generate, load_config

SEED = 31
PERSONS = 4000
SMALL_SEED = 23
SMALL_PERSONS = 600


# Configured values compared with a subgroup's interval below (5 + 2 screening, 5 diabetes
# control, 2 treatment gap, 2 DTP3): each plain 95% interval misses its configured value 5% of
# the time, so they are checked together with Bonferroni-adjusted (simultaneous 95%) intervals.
COMPARISONS = 16
SIMULTANEOUS = 1 - 0.05 / COMPARISONS


@dataclass
class Synthetic:
    folder: Path
    persons: list[dict[str, str]]
    effects: dict[str, Any]  # the configured inequities (truth/effects.json)
    config: dict[str, Any]  # the resolved configuration
    population: ind.Population
    results: ind.IndicatorResults  # 95% intervals
    simultaneous: ind.IndicatorResults  # Bonferroni-adjusted intervals


def _synth(folder: Path, persons: int, seed: int, years: int = 5) -> Path:
    generate(load_config(country="SA", patients=persons, seed=seed, years=years), folder)
    return folder


def _population(folder: Path) -> ind.Population:
    defs = ind.load_definitions()
    con = duckdb.connect()
    links = ind.load_links(folder / "truth" / "links.csv")
    ind.materialize_views(con, defs, inputs=[folder], links=links)
    return ind.prepare(con, defs, ind.default_period_end([folder]))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    folder = _synth(tmp_path_factory.mktemp("indicators") / "synth", PERSONS, SEED)
    with (folder / "truth" / "persons.csv").open(encoding="utf-8") as handle:
        # The indicators leave out people who died (a deceased Patient record), so the truth
        # they are checked against does too.
        persons = [p for p in csv.DictReader(handle) if not p["died"]]
    effects = json.loads((folder / "truth" / "effects.json").read_text(encoding="utf-8"))
    pop = _population(folder)
    return Synthetic(
        folder,
        persons,
        effects["inequities"],
        effects["config"],
        pop,
        ind.compute(pop),
        ind.compute(pop, confidence=SIMULTANEOUS),
    )


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _synth(tmp_path_factory.mktemp("small") / "synth", SMALL_PERSONS, SMALL_SEED, 2)


def _inside(e: ind.Estimate, expected: float) -> bool:
    assert e.ci_lb is not None and e.ci_ub is not None
    return e.ci_lb <= expected <= e.ci_ub


# -- confidence intervals on hand examples ------------------------------------------------------


def test_wilson_interval_hand_examples() -> None:
    # Newcombe RG, Stat Med 1998;17:857-872, Table I (method 3, Wilson score): 81/263, 15/148,
    # 0/20, 1/29.
    lb, ub = ind.wilson_interval([81, 15, 0, 1], [263, 148, 20, 29])
    assert [round(v, 4) for v in lb] == [0.2553, 0.0624, 0.0, 0.0061]
    assert [round(v, 4) for v in ub] == [0.3662, 0.1605, 0.1611, 0.1718]
    # By hand, 5/10: centre (0.5 + z²/20)/(1 + z²/10) = 0.5; half-width
    # z·sqrt(0.025 + z²/400)/(1 + z²/10) = 0.263407 (z = 1.959964).
    lb, ub = ind.wilson_interval([5, 10], [10, 10])
    assert lb[0] == pytest.approx(0.5 - 0.263407, abs=1e-6)
    assert ub[0] == pytest.approx(0.5 + 0.263407, abs=1e-6)
    assert ub[1] == 1.0 and lb[1] == pytest.approx(0.722467, abs=1e-6)  # 10/10: 1 - 0.2775


def test_t_quantiles_and_mean_interval() -> None:
    # Student's t 97.5% points (any table): exact for 1 and 2 df, Cornish-Fisher above.
    assert ind.t_quantile(0.975, 1) == pytest.approx(12.706205, rel=1e-6)
    assert ind.t_quantile(0.975, 2) == pytest.approx(4.302653, rel=1e-6)
    assert ind.t_quantile(0.975, 3) == pytest.approx(3.182446, rel=2e-3)
    assert ind.t_quantile(0.975, 9) == pytest.approx(2.262157, rel=1e-5)
    assert ind.t_quantile(0.975, 30) == pytest.approx(2.042272, rel=1e-6)
    assert ind.t_quantile(0.975, 1e6) == pytest.approx(1.959966, rel=1e-6)
    # 1, 2, ..., 10: mean 5.5, sd sqrt(55/6) = 3.02765, se 0.957427, t(9) 2.262157.
    values = list(range(1, 11))
    mean, sd, se, lb, ub = ind.mean_interval(
        [10], [sum(values)], [sum(v * v for v in values)], 0.95
    )
    assert mean[0] == 5.5
    assert sd[0] == pytest.approx(math.sqrt(55 / 6))
    assert se[0] == pytest.approx(0.957427, rel=1e-6)
    assert lb[0] == pytest.approx(5.5 - 2.262157 * 0.957427, rel=1e-5)
    assert ub[0] == pytest.approx(5.5 + 2.262157 * 0.957427, rel=1e-5)


# -- recovery of the configured inequities --------------------------------------------------------


def test_screening_by_income_quintile_recovers_configuration(synthetic: Synthetic) -> None:
    """P(screened) = base x income_rr[q] x rural_rr (rural) x non_citizen_rr (non-citizens)."""
    s = synthetic.effects["screening"]
    by_q = synthetic.simultaneous.by("dm_screen", "income_quintile")
    for q in range(1, 6):
        eligible = [
            p for p in synthetic.persons if p["screened"] != "" and p["income_quintile"] == str(q)
        ]
        factors = [
            (1.0 if p["urban"] == "1" else s["rural_rr"])
            * (1.0 if p["group"] == "citizen" else s["non_citizen_rr"])
            for p in eligible
        ]
        expected = 100 * s["base"] * s["income_rr"][q - 1] * sum(factors) / len(factors)
        realised = 100 * sum(p["screened"] == "1" for p in eligible) / len(eligible)
        e = by_q[str(q)]
        assert _inside(e, expected), (q, expected, e)
        # The same people as the truth (birth dates keyed in the Hijri calendar are read in it),
        # so the estimate is the realised share.
        assert e.population == len(eligible)
        assert e.estimate == pytest.approx(realised, abs=1e-9)
    q1, q5 = by_q["1"], by_q["5"]
    assert q1.ci_ub is not None and q5.ci_lb is not None and q1.ci_ub < q5.ci_lb


def test_screening_rural_urban_recovers_configuration(synthetic: Synthetic) -> None:
    s = synthetic.effects["screening"]
    by_place = synthetic.simultaneous.by("dm_screen", "urban_rural")
    for place, flag in (("urban", "1"), ("rural", "0")):
        eligible = [p for p in synthetic.persons if p["screened"] != "" and p["urban"] == flag]
        expected = (
            100
            * s["base"]
            * sum(
                s["income_rr"][int(p["income_quintile"]) - 1]
                * (1.0 if p["group"] == "citizen" else s["non_citizen_rr"])
                for p in eligible
            )
            / len(eligible)
            * (1.0 if place == "urban" else s["rural_rr"])
        )
        assert _inside(by_place[place], expected), (place, expected, by_place[place])


def test_diabetes_control_by_income_quintile_recovers_configuration(synthetic: Synthetic) -> None:
    """P(HbA1c < 7%) = base x income_rr[q] among people with diabetes."""
    d = synthetic.effects["diabetes_control"]
    by_q = synthetic.simultaneous.by("dm_control", "income_quintile")
    for q in range(1, 6):
        expected = 100 * d["base"] * d["income_rr"][q - 1]
        assert _inside(by_q[str(q)], expected), (q, expected, by_q[str(q)])
    # Among the same people (diabetes and an HbA1c in the period), the estimate is the truth.
    pop = synthetic.population
    dm = pop.definitions.indicator("dm_control")
    den = dm.sql("denominator", dm.period(pop.period_end))
    members = {
        k.removeprefix("Person/") for (k,) in pop.backend.query(f"SELECT person_key FROM ({den}) d")
    }
    for q in range(1, 6):
        same = [
            p
            for p in synthetic.persons
            if p["person"] in members and p["income_quintile"] == str(q)
        ]
        realised = 100 * sum(p["diabetes_controlled"] == "1" for p in same) / len(same)
        assert synthetic.results.by("dm_control", "income_quintile")[str(q)].estimate == (
            pytest.approx(realised, abs=1e-9)
        )


def test_mental_health_treatment_gap_rural_urban(synthetic: Synthetic) -> None:
    """Unmet need = 1 - base x rural_rr (rural) among people with depression or anxiety."""
    m = synthetic.effects["mental_health_treatment"]
    by_place = synthetic.simultaneous.by("mh_gap", "urban_rural")
    for place, flag, rr in (("urban", "1", 1.0), ("rural", "0", m["rural_rr"])):
        expected = 100 * (1 - m["base"] * rr)
        assert _inside(by_place[place], expected), (place, expected, by_place[place])
        cases = [p for p in synthetic.persons if p["mh_treated"] != "" and p["urban"] == flag]
        assert by_place[place].population == len(cases)
        realised = 100 * sum(p["mh_treated"] == "0" for p in cases) / len(cases)
        assert by_place[place].estimate == pytest.approx(realised, abs=1e-9)


def test_travel_distance_rural_farther_than_urban(synthetic: Synthetic) -> None:
    by_place = synthetic.results.by("travel_pc", "urban_rural")
    rural, urban = by_place["rural"], by_place["urban"]
    assert urban.ci_ub is not None and rural.ci_lb is not None
    assert urban.ci_ub < rural.ci_lb
    # Nobody's nearest primary care centre is farther than their home facility (truth).
    rows = synthetic.population.backend.query("SELECT person_key, nearest_pc_km FROM person")
    nearest = {k.split("/", 1)[1]: km for k, km in rows}
    for p in synthetic.persons:
        assert nearest[p["person"]] <= float(p["travel_km"]) + 0.01


def _at_least(k: int, probabilities: list[float]) -> float:
    """P(at least k successes) of independent Bernoulli trials (Poisson binomial)."""
    dist = [1.0]
    for p in probabilities:
        dist = [
            (dist[i] if i < len(dist) else 0.0) * (1 - p) + (dist[i - 1] * p if i else 0.0)
            for i in range(len(dist) + 1)
        ]
    return sum(dist[k:])


def test_dtp3_coverage_recovers_per_dose_rate(synthetic: Synthetic) -> None:
    """Each scheduled dose is given with P = c (x rural_rr when rural), on day age_days + U{0..13};
    DTP3 counts children aged 12-23 months with 3 DTP-containing doses (the 18-month booster
    counts, as in WHO's definition)."""
    schedule = json.loads(
        (Path(ind.__file__).parent.parent / "synth" / "data" / "SA.json").read_text("utf-8")
    )["immunization_schedule"]
    dtp = {"01", "1", "20", "22", "50", "102", "106", "107", "110", "120", "146"}
    doses = [d["age_days"] for d in schedule if d["cvx"] in dtp]
    end = date.fromisoformat(synthetic.config["end_date"])
    cover = synthetic.config["care"]["immunization_dose_coverage"]
    by_place = synthetic.simultaneous.by("imm_dtp3", "urban_rural")
    for place, flag in (("urban", "1"), ("rural", "0")):
        c = cover * (1.0 if flag == "1" else synthetic.effects["immunization"]["rural_rr"])
        chances = []
        for p in synthetic.persons:
            birth = date.fromisoformat(p["birth_date"])
            months = (end.year - birth.year) * 12 + end.month - birth.month - (birth.day > end.day)
            if p["urban"] == flag and 12 <= months <= 23:
                days = (end - birth).days
                due = [min(max((days - a + 1) / 14, 0.0), 1.0) for a in doses]
                chances.append(_at_least(3, [c * d for d in due]))
        expected = 100 * sum(chances) / len(chances)
        assert _inside(by_place[place], expected), (place, expected, by_place[place])


def test_intersections_and_unknowns(synthetic: Synthetic) -> None:
    res = synthetic.results
    cell = res.get("dm_screen", "income_quintile", "1", "urban_rural", "rural")
    assert cell is not None and cell.population is not None
    eligible = [
        p
        for p in synthetic.persons
        if p["screened"] != "" and p["income_quintile"] == "1" and p["urban"] == "0"
    ]
    assert 0.95 * len(eligible) <= cell.population <= len(eligible)
    # Children have no education level: they are the 'unknown' subgroup, not dropped.
    assert (
        res.by("imm_dtp3", "education")["unknown"].population == res.national("imm_dtp3").population
    )
    # 9 dimensions, 36 pairs, 13 indicators.
    assert len(res.dimensions) == 9 and len(res.indicators) == 13
    pairs = {(e.dimension, e.dimension2) for e in res.estimates if e.dimension2}
    assert len(pairs) == 36


# -- suppression ----------------------------------------------------------------------------------


def test_small_cells_are_suppressed(synthetic: Synthetic) -> None:
    pop = synthetic.population
    exact = ind.compute(pop, min_cell=0, indicators=["dm_control", "mh_gap"])
    true_n = {(e.indicator, e.key): e.population for e in exact.estimates}
    assert all(e.suppressed == "" for e in exact.estimates)
    for threshold in (10, 40):
        res = ind.compute(pop, min_cell=threshold, indicators=["dm_control", "mh_gap"])
        assert {(e.indicator, e.key) for e in res.estimates} == set(true_n)
        for e in res.estimates:
            n = true_n[(e.indicator, e.key)]
            assert n is not None
            if n < threshold:
                assert e.suppressed == "primary"
            if e.suppressed:
                assert e.estimate is None and e.ci_lb is None and e.population is None
                assert e.numerator is None and e.se is None
            else:
                assert e.population == n and n >= threshold and e.estimate is not None
        # Secondary suppression: no total minus its published parts gives a hidden cell.
        for name in ("dm_control", "mh_gap"):
            hidden = {e.key: bool(e.suppressed) for e in res.estimates if e.indicator == name}
            assert _recoverable(hidden) == []
        assert any(e.suppressed == "secondary" for e in res.estimates)


Key = tuple[str | None, str | None, str | None, str | None]


def _recoverable(hidden: dict[Key, bool]) -> list[tuple[Key, list[Key]]]:
    """Totals (with their parts) that have exactly one hidden member, which is then the total
    minus (or the sum of) the published ones. Written apart from the module's own margins: the
    national total is the sum of each dimension's subgroups and of each pair's cells; a subgroup
    is the sum of its row (or column) of each pair."""
    national: Key = (None, None, None, None)
    sums: dict[tuple[Key, frozenset[str]], list[Key]] = {}
    for key in hidden:
        d1, v1, d2, v2 = key
        if d1 is not None and d2 is None:
            sums.setdefault((national, frozenset([d1])), []).append(key)
        elif d1 is not None and d2 is not None:
            sums.setdefault((national, frozenset([d1, d2])), []).append(key)
            sums.setdefault(((d1, v1, None, None), frozenset([d1, d2])), []).append(key)
            sums.setdefault(((d2, v2, None, None), frozenset([d1, d2])), []).append(key)
    found = []
    for (total, _), parts in sums.items():
        assert total in hidden, f"no total {total} for {parts}"
        if sum(hidden[k] for k in [total, *parts]) == 1:
            found.append((total, parts))
    return found


@st.composite
def _tables(draw: st.DrawFn) -> tuple[dict[Key, int], int]:
    """Denominators of a random population by three dimensions (2-4 subgroups each): the
    national cell, every subgroup and every pair, as GROUPING SETS gives them (no empty
    cells but the national one), and a threshold."""
    sizes = [draw(st.integers(2, 4)) for _ in range(3)]
    people = draw(
        st.lists(st.tuples(*(st.integers(0, k - 1) for k in sizes)), min_size=0, max_size=300)
    )
    names = ("region", "sex", "quintile")
    counts: dict[Key, int] = {(None, None, None, None): len(people)}
    for person in people:
        values = [(names[i], f"v{v}") for i, v in enumerate(person)]
        for d, v in values:
            counts[(d, v, None, None)] = counts.get((d, v, None, None), 0) + 1
        for (d1, v1), (d2, v2) in combinations(values, 2):
            counts[(d1, v1, d2, v2)] = counts.get((d1, v1, d2, v2), 0) + 1
    return counts, draw(st.integers(0, 40))


@settings(max_examples=300, deadline=None)
@given(_tables(), st.randoms(use_true_random=False))
def test_secondary_suppression_is_complete_and_deterministic(
    table: tuple[dict[Key, int], int], rnd: random.Random
) -> None:
    """For any table: primary suppression is exactly the cells below the threshold, no total has
    exactly one hidden member (a hidden cell would be its total minus the published cells, a
    hidden total the sum of its published parts), and the result does not depend on the order
    the cells come in (the engine returns them in any order)."""
    counts, min_cell = table
    state = ind.suppress(counts, min_cell)
    assert set(state) == set(counts)
    for key, n in counts.items():
        assert (state[key] == "primary") == (n < min_cell or n == 0)
        assert state[key] in ("", "primary", "secondary")
    assert _recoverable({k: bool(v) for k, v in state.items()}) == []
    shuffled = list(counts.items())
    rnd.shuffle(shuffled)
    assert ind.suppress(dict(shuffled), min_cell) == state


def test_suppression_hides_a_published_total_s_last_hidden_part() -> None:
    """A by-hand table: region A has 8 people (primary). Its row of the region x sex table and
    the region margin each need a second hidden cell: the smallest published one, ties broken
    by key, whatever the order of the input."""
    counts: dict[Key, int] = {
        (None, None, None, None): 108,
        ("region", "A", None, None): 8,
        ("region", "B", None, None): 50,
        ("region", "C", None, None): 50,
        ("sex", "f", None, None): 54,
        ("sex", "m", None, None): 54,
        ("region", "A", "sex", "f"): 4,
        ("region", "A", "sex", "m"): 4,
        ("region", "B", "sex", "f"): 25,
        ("region", "B", "sex", "m"): 25,
        ("region", "C", "sex", "f"): 25,
        ("region", "C", "sex", "m"): 25,
    }
    for order in (list(counts), list(reversed(counts))):
        state = ind.suppress({k: counts[k] for k in order}, 10)
        hidden = {k: v for k, v in state.items() if v}
        assert hidden == {
            ("region", "A", None, None): "primary",
            ("region", "A", "sex", "f"): "primary",
            ("region", "A", "sex", "m"): "primary",
            # The region margin: B and C tie at 50, B comes first. Then B's row needs a second
            # hidden cell (f before m), and so does the male column (B before C).
            ("region", "B", None, None): "secondary",
            ("region", "B", "sex", "f"): "secondary",
            ("region", "B", "sex", "m"): "secondary",
        }, order
        assert _recoverable({k: bool(v) for k, v in state.items()}) == []


# -- birth dates in another calendar, and the codes of the definitions ---------------------------

END = date(2024, 12, 31)
ICD10 = "http://hl7.org/fhir/sid/icd-10"
EXT = "https://takamul.health/fhir/StructureDefinition/"


def _patient(pid: str, birth: str, country: str | None = "SA", quintile: int = 1) -> dict[str, Any]:
    address: dict[str, Any] = {"use": "home"}
    if country is not None:
        address["country"] = country
    return {
        "resourceType": "Patient",
        "id": pid,
        "extension": [{"url": EXT + "income-quintile", "valueInteger": quintile}],
        "gender": "female",
        "birthDate": birth,
        "address": [address],
    }


def _hba1c(pid: str, percent: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"hba1c-{pid}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2024-06-01",
        "valueQuantity": {"value": percent, "unit": "%", "system": "http://unitsofmeasure.org",
                          "code": "%"},
    }  # fmt: skip


def _diagnosis(pid: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": f"dx-{pid}",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                       "condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": ICD10, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "onsetDateTime": "2020-03-01",
    }  # fmt: skip


def _records(
    folder: Path, resources: list[dict[str, Any]], links: list[tuple[str, str]] | None = None
) -> ind.Population:
    """The person table of a handful of FHIR resources (NDJSON), at the end of 2024."""
    folder.mkdir(parents=True, exist_ok=True)
    for rtype in {r["resourceType"] for r in resources}:
        lines = [json.dumps(r) for r in resources if r["resourceType"] == rtype]
        (folder / f"{rtype}.ndjson").write_text("\n".join(lines) + "\n", encoding="utf-8")
    defs = ind.load_definitions()
    con = duckdb.connect()
    ind.materialize_views(con, defs, inputs=[folder], links=links)
    return ind.prepare(con, defs, END)


def test_birth_date_keyed_in_hijri_gives_the_age(tmp_path: Path) -> None:
    """A birth date recorded only in the Hijri calendar (keyed into birthDate as if Gregorian,
    as the synthetic registrations do) is read in it: the person has an age and is counted by
    the age-based indicators. 15 June 1970 is 10 Rabi' al-Thani 1390 (Umm al-Qura) and
    25 Khordad 1349 (Solar Hijri)."""
    from takamul.synth.calendars import as_native_calendar

    born = date(1970, 6, 15)
    assert as_native_calendar(born, "hijri") == "1390-04-10"
    assert as_native_calendar(born, "jalali") == "1349-03-25"
    assert native_calendar_date("1390-04-10", "hijri") == "1970-06-15"
    assert native_calendar_date("1349-03-25", "jalali") == "1970-06-15"
    assert native_calendar_date("1390-13-01", "hijri") is None  # no 13th month
    assert native_calendar_date("1390", "hijri") is None  # a year alone is no date
    with pytest.raises(ValueError, match="unknown calendar"):
        native_calendar_date("1390-04-10", "coptic")
    pop = _records(
        tmp_path,
        [
            _patient("sa-hijri", "1390-04-10", "SA"),
            _patient("ir-jalali", "1349-03-25", "IR"),
            _patient("gregorian", "1970-06-15", "SA"),
            # No country: a year only the Hijri calendar has (1420 AH = 1999-2000) is read in
            # it; one both calendars have (1390) stays unknown.
            _patient("no-country-1420", "1420-01-01", None),
            _patient("no-country-1390", "1390-04-10", None),
            # One person, two records: the one keyed in the Gregorian calendar is preferred.
            _patient("two-a", "1390-04-10", "SA"),
            _patient("two-b", "1970-06-16", "SA"),
            *[_hba1c(pid, 5.5) for pid in ("sa-hijri", "ir-jalali", "gregorian", "two-a")],
        ],
        links=[("Patient/two-a", "Person/two"), ("Patient/two-b", "Person/two")],
    )
    rows = pop.backend.query(
        "SELECT person_key, birth_date, birth_calendar, age, age_months, age_group FROM person"
    )
    people = {r[0]: r[1:] for r in rows}
    # 54 years and 6 months at 31 December 2024.
    assert people["Patient/sa-hijri"] == ("1970-06-15", "hijri", 54, 654, "50-59")
    assert people["Patient/ir-jalali"] == ("1970-06-15", "jalali", 54, 654, "50-59")
    assert people["Patient/gregorian"] == ("1970-06-15", "gregorian", 54, 654, "50-59")
    assert people["Patient/no-country-1420"][:3] == ("1999-04-17", "hijri", 25)
    assert people["Patient/no-country-1390"][2:] == (None, None, "unknown")
    assert people["Person/two"][:2] == ("1970-06-16", "gregorian")

    # Diabetes screening counts adults of 40 and more: the Hijri- and Jalali-keyed persons too.
    res = ind.compute(pop, min_cell=0, indicators=["dm_screen"], dimensions=["age_group"])
    national = res.national("dm_screen")
    assert (national.population, national.numerator) == (4, 4)
    assert res.by("dm_screen", "age_group")["50-59"].population == 4


def _icd10_range(text: str) -> list[str]:
    """The three-character categories of a range such as E10-E14."""
    first, last = text.split("-")
    assert first[0] == last[0], text
    return [f"{first[0]}{n:02d}" for n in range(int(first[1:]), int(last[1:]) + 1)]


def test_diabetes_codes_of_the_definition_are_the_codes_the_sql_uses(tmp_path: Path) -> None:
    """Every ICD-10 category of the documented diabetes range (WHO ICD-10 block E10-E14,
    including E12, malnutrition-related diabetes) excludes a person from diabetes screening and
    puts them in diabetes control; E15 (non-diabetic hypoglycaemic coma) does neither."""
    defs = ind.load_definitions()
    ranges = {
        (i.id, c["role"]): c["code"]
        for i in defs.indicators
        if i.id in ("dm_screen", "dm_control")
        for c in i.codes
        if c["system"] == ICD10
    }
    assert ranges == {
        ("dm_screen", "exclusion"): "E10-E14",
        ("dm_control", "denominator"): "E10-E14",
    }
    categories = _icd10_range("E10-E14")
    assert categories == ["E10", "E11", "E12", "E13", "E14"]
    resources: list[dict[str, Any]] = []
    for code in [*(f"{c}.9" for c in categories), "E15"]:
        pid = code.replace(".", "-").lower()
        resources += [_patient(pid, "1970-01-01"), _diagnosis(pid, code), _hba1c(pid, 6.5)]
    pop = _records(tmp_path, resources)

    def members(indicator: str) -> set[str]:
        i = defs.indicator(indicator)
        sql = i.sql("denominator", i.period(END))
        return {k for (k,) in pop.backend.query(f"SELECT DISTINCT person_key FROM ({sql}) d")}

    assert members("dm_screen") == {"Patient/e15"}
    assert members("dm_control") == {f"Patient/{c.lower()}-9" for c in categories}


# -- HEAT export ----------------------------------------------------------------------------------


def test_heat_export_round_trips_to_summary_measures(synthetic: Synthetic, tmp_path: Path) -> None:
    path = tmp_path / "heat.csv"
    n = ind.write_heat(synthetic.results, path, setting="Saudi Arabia", iso3="SAU")
    template = read_template(path)
    assert template.rows_read == n
    group = next(
        g
        for g in template.groups
        if g.key.indicator_abbr == "dm_screen" and g.key.dimension == "Household income quintile"
    )
    assert group.data.ordered and group.data.favourable and group.data.scale == 100.0
    assert [s.order for s in sorted(group.data.subgroups, key=lambda s: s.order or 0)] == [
        1,
        2,
        3,
        4,
        5,
    ]
    national = synthetic.results.national("dm_screen").estimate
    assert group.data.setting_average == pytest.approx(national)
    from takamul.equity.heat import Template

    rows = compute_rows(Template((group,), len(group.lines)))
    measures = {r.measure: r.result for r in rows}
    for m in (Measure.D, Measure.R, Measure.SII):
        assert m in measures
    # Coverage rises with income: richest minus poorest > 0, ratio > 1, slope > 0.
    assert measures[Measure.D].estimate > 10
    assert measures[Measure.R].estimate > 1.5
    assert measures[Measure.SII].estimate > 0
    # Adverse indicators keep their direction; unknown and suppressed subgroups are left out.
    gap = next(g for g in template.groups if g.key.indicator_abbr == "mh_gap")
    assert not gap.data.favourable
    assert all(s.name != "unknown" for g in template.groups for s in g.data.subgroups)


# -- outreach ------------------------------------------------------------------------------------


def test_outreach_worklist_right_people_in_order(synthetic: Synthetic, tmp_path: Path) -> None:
    pop = synthetic.population
    wl = worklist(pop, "dm_screen", {"income_quintile": "1"})
    got = {c.person_key.removeprefix("Person/") for c in wl.candidates}
    truth = {
        p["person"]
        for p in synthetic.persons
        if p["screened"] == "0" and p["income_quintile"] == "1"
    }
    # The unscreened eligible adults of the poorest quintile, with those whose birth date is
    # recorded only in the Hijri calendar.
    assert got == truth
    assert wl.total == len(wl.candidates)
    keys = [
        (-c.need, c.income_quintile, -(c.distance_km or 0.0), c.person_key) for c in wl.candidates
    ]
    assert keys == sorted(keys)
    assert [c.rank for c in wl.candidates] == list(range(1, len(wl.candidates) + 1))
    assert all((c.priority == "urgent") == (c.need >= 3) for c in wl.candidates)
    assert all(c.subgroups["income_quintile"] == "1" for c in wl.candidates)

    short = worklist(pop, "dm_screen", {"income_quintile": "1"}, limit=25)
    assert [c.person_key for c in short.candidates] == [c.person_key for c in wl.candidates[:25]]
    bundle = worklist_bundle(short)
    assert bundle["type"] == "transaction"
    tasks = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Task"]
    lists = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "List"]
    assert len(tasks) == 25 and len(lists) == 1
    for entry in bundle["entry"]:
        errors = [i for i in validate_resource(entry["resource"]) if i.severity == "error"]
        assert not errors, (entry["resource"]["resourceType"], errors)
    records = {k for (k,) in pop.backend.query("SELECT patient_key FROM src_patient")}
    for entry, c in zip(tasks, short.candidates, strict=True):
        task = entry["resource"]
        assert task["status"] == "requested" and task["intent"] == "plan"
        assert task["for"]["reference"] == c.patient_key and c.patient_key in records
        assert task["owner"]["reference"] == c.home_org_key
        assert task["code"]["coding"][0]["code"] == "dm_screen"
    items = [e["item"]["reference"] for e in lists[0]["resource"]["entry"]]
    assert items == [e["fullUrl"] for e in tasks]

    # Stored in the shared record; run again, the Tasks are found, not duplicated.
    url = f"sqlite:///{tmp_path / 'takamul.sqlite'}"
    first = store_bundle(bundle, url)
    assert [e["response"]["status"][:3] for e in first["entry"]] == ["201"] * 26
    again = store_bundle(worklist_bundle(short), url)
    assert [e["response"]["status"][:3] for e in again["entry"][:25]] == ["200"] * 25


def test_outreach_adverse_indicator_takes_the_numerator(synthetic: Synthetic) -> None:
    wl = worklist(synthetic.population, "mh_gap", {"urban_rural": "rural"})
    untreated = {
        p["person"] for p in synthetic.persons if p["mh_treated"] == "0" and p["urban"] == "0"
    }
    assert {c.person_key.removeprefix("Person/") for c in wl.candidates} == untreated
    with pytest.raises(ind.IndicatorError, match="only a proportion"):
        worklist(synthetic.population, "travel_pc")


# -- definitions and errors -----------------------------------------------------------------------


def _indicator_file(tmp_path: Path, **changes: Any) -> Path:
    base: dict[str, Any] = {
        "id": "adults",
        "name": "Adults",
        "kind": "proportion",
        "favourable": True,
        "period": {"lookback_months": 12},
        "denominator": "SELECT person_key FROM person",
        "numerator": "SELECT person_key FROM person WHERE age >= 18",
    }
    base.update(changes)
    for key in [k for k, v in base.items() if v is None]:
        del base[key]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"indicators": [base]}), encoding="utf-8")
    return path


def test_bad_definitions_name_the_file_and_field(synthetic: Synthetic, tmp_path: Path) -> None:
    with pytest.raises(ind.DefinitionError) as err:
        ind.load_definitions([_indicator_file(tmp_path, numerator=None)])
    assert "mine.json" in str(err.value) and "indicators[0] (adults).numerator" in str(err.value)
    with pytest.raises(ind.DefinitionError, match=r"indicators\[0\] \(adults\).kind"):
        ind.load_definitions([_indicator_file(tmp_path, kind="ratio")])
    with pytest.raises(ind.DefinitionError, match=r"period\.lookback_months"):
        ind.load_definitions([_indicator_file(tmp_path, period={"lookback_months": 0})])

    pop = synthetic.population
    for changes, message in (
        ({"numerator": "SELECT person_key FROM person WHERE $nowhere"}, r"unknown placeholder"),
        ({"numerator": "SELECT person_key FROM person WHERE no_such_column = 1"}, "SQL error"),
        ({"denominator": "SELECT patient_key FROM person"}, "column 'person_key'"),
    ):
        defs = ind.load_definitions([_indicator_file(tmp_path, **changes)])
        mine = ind.Population(**{**pop.__dict__, "definitions": defs})
        with pytest.raises(ind.DefinitionError, match=message) as err:
            ind.compute(mine)
        assert "mine.json" in str(err.value) and "indicators[0] (adults)" in str(err.value)

    # Age groups are data: a dimensions file of one's own replaces the standard one.
    dims = json.loads((ind.INDICATORS_DIR / "dimensions.json").read_text(encoding="utf-8"))
    dims["age_groups"] = [{"label": "minor", "min": 0, "max": 17}, {"label": "adult", "min": 18}]
    dims_path = tmp_path / "dims.json"
    dims_path.write_text(json.dumps(dims), encoding="utf-8")
    defs = ind.load_definitions([_indicator_file(tmp_path), dims_path])
    assert isinstance(pop.backend, ind.DuckBackend)
    mine = ind.prepare(pop.backend.con, defs, pop.period_end)
    res = ind.compute(mine, dimensions=["age_group"], pairs=False)
    adults = res.by("adults", "age_group")
    assert set(adults) <= {"minor", "adult", "unknown"}
    assert adults["adult"].estimate == 100.0 and adults["minor"].estimate == 0.0
    ind.prepare(pop.backend.con, pop.definitions, pop.period_end)  # the fixture's tables again
    bad = dict(dims, age_groups=[{"label": "a", "min": 0, "max": 10}, {"label": "b", "min": 12}])
    dims_path.write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(ind.DefinitionError, match=r"dims.json: age_groups\[1\].min"):
        ind.load_definitions([_indicator_file(tmp_path), dims_path])


# -- command line ---------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_compute_and_outreach(small: Path, tmp_path: Path) -> None:
    out, heat, js = tmp_path / "r.csv", tmp_path / "heat.csv", tmp_path / "r.json"
    links = str(small / "truth" / "links.csv")
    result = runner.invoke(
        indicators_app,
        ["compute", "-i", str(small), "--links", links, "--out", str(out), "--heat", str(heat),
         "--json", str(js), "--dimensions", "income_quintile,urban_rural,sex", "--min-cell", "5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "dm_screen" in result.output and "National values" in result.output
    with out.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["dimension"] for r in rows} == {"", "income_quintile", "urban_rural", "sex"}
    assert all(r["estimate"] == "" for r in rows if r["suppressed"])
    assert all(int(r["population"]) >= 5 for r in rows if not r["suppressed"])
    assert read_template(heat).groups
    doc = json.loads(js.read_text(encoding="utf-8"))
    assert doc["unit_of_analysis"] == "person" and len(doc["indicators"]) == 13

    bundle_path = tmp_path / "bundle.json"
    result = runner.invoke(
        indicators_app,
        ["outreach", "--indicator", "dm_screen", "-i", str(small), "--links", links,
         "--quintile", "1", "--limit", "10", "--out", str(bundle_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    bundle = json.loads(bundle_path.read_text(encoding="utf-8"))
    assert 1 <= sum(e["resource"]["resourceType"] == "Task" for e in bundle["entry"]) <= 10


def test_cli_compute_is_deterministic(small: Path, tmp_path: Path) -> None:
    """Byte-identical input gives byte-identical output in separate processes with different
    hash seeds (DuckDB's threads return the cells in any order): a cell hidden in one run and
    published in another would be recovered by comparing the runs. Every total keeps no hidden
    member or at least two."""
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"run{seed}"
        out.mkdir()
        command = [
            sys.executable, "-m", "takamul.cli", "equity", "indicators", "compute",
            "-i", str(small), "--links", str(small / "truth" / "links.csv"),
            "--out", str(out / "r.csv"), "--json", str(out / "r.json"),
            "--heat", str(out / "heat.csv"),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        outputs.append([(out / name).read_bytes() for name in ("r.csv", "r.json", "heat.csv")])
    assert outputs[0] == outputs[1]
    with (tmp_path / "run1" / "r.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for name in {r["indicator"] for r in rows}:
        hidden: dict[Key, bool] = {
            (
                r["dimension"] or None,
                r["subgroup"] or None,
                r["dimension2"] or None,
                r["subgroup2"] or None,
            ): r["suppressed"] != ""
            for r in rows
            if r["indicator"] == name
        }
        assert _recoverable(hidden) == [], name
    assert any(r["suppressed"] == "secondary" for r in rows)


def test_cli_errors_exit_2(small: Path, tmp_path: Path) -> None:
    result = runner.invoke(indicators_app, ["compute"])
    assert result.exit_code == 2 and "--input" in result.output
    result = runner.invoke(indicators_app, ["compute", "-i", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such file or folder" in result.output
    bad = _indicator_file(tmp_path, numerator=None)
    result = runner.invoke(indicators_app, ["compute", "-i", str(small), "--definitions", str(bad)])
    assert result.exit_code == 2
    assert "mine.json" in result.output and "indicators[0] (adults).numerator" in result.output
    result = runner.invoke(
        indicators_app, ["compute", "-i", str(small), "--dimensions", "income,sex"]
    )
    assert result.exit_code == 2 and "unknown dimension 'income'" in result.output
    result = runner.invoke(indicators_app, ["outreach", "--indicator", "nope", "-i", str(small)])
    assert result.exit_code == 2 and "--out" in result.output
    result = runner.invoke(
        indicators_app,
        ["outreach", "--indicator", "nope", "-i", str(small), "--out", str(tmp_path / "b.json")],
    )
    assert result.exit_code == 2 and "unknown indicator 'nope'" in result.output


def test_cli_reads_and_stores_in_the_shared_record(small: Path, tmp_path: Path) -> None:
    """--db: the views read the shared record's database, and outreach stores its Tasks there."""
    from takamul.views.source import iter_database

    url = f"sqlite:///{tmp_path / 'record.sqlite'}"
    entries = []
    for rtype in ("Location", "Patient", "Condition", "Procedure", "Observation"):
        with (small / f"{rtype}.ndjson").open(encoding="utf-8") as handle:
            for line in handle:
                resource = json.loads(line)
                # The first 150 persons' records (ids are <kind>-<person>-<n>) and all places.
                if rtype != "Location" and int(resource["id"].split("-")[1]) >= 150:
                    continue
                request = {"method": "PUT", "url": f"{rtype}/{resource['id']}"}
                entries.append({"resource": resource, "request": request})
    store_bundle({"resourceType": "Bundle", "type": "batch", "entry": entries}, url)
    result = runner.invoke(
        indicators_app,
        ["compute", "--db", url, "--dimensions", "sex", "--no-pairs", "--period-end", "2024-12-31"],
    )
    assert result.exit_code == 0, result.output
    assert "patient record" in result.output and "dm_screen" in result.output
    result = runner.invoke(
        indicators_app,
        ["outreach", "--indicator", "dm_screen", "--db", url, "--limit", "5", "--owner", "none",
         "--period-end", "2024-12-31"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tasks = list(iter_database(url, "Task"))
    assert 1 <= len(tasks) <= 5 and all("owner" not in t for t in tasks)
    assert len(list(iter_database(url, "List"))) == 1


# -- Spark ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    import pyspark.sql as pyspark_sql  # a dev dependency: the Spark path always runs

    os.environ["PYSPARK_PYTHON"] = sys.executable  # executors need takamul importable
    session = (
        pyspark_sql.SparkSession.builder.master("local[2]")
        .appName("takamul-indicators-test")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        # Tiny data: adaptive execution re-plans every stage, which costs more than the queries
        # themselves (measured on the shared VM: 37 s without it, 57 s with it, for this test).
        .config("spark.sql.adaptive.enabled", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_spark_equals_duckdb(small: Path, spark: Any) -> None:
    """The same views and indicator SQL on Spark give the same national and by-income rows.

    Indicators chosen to cover every SQL construct of the standard set: anti-joins and UNION
    ALL (dm_screen), max_by (dm_control), HAVING count(DISTINCT) (imm_dtp3), days_between
    (mh_followup), a nested anti-join (mh_gap) and a mean with the nearest-facility distance
    (travel_pc, SQL cross join on Spark, numpy on DuckDB).
    """
    chosen = ["dm_screen", "dm_control", "imm_dtp3", "mh_followup", "mh_gap", "travel_pc"]
    options: dict[str, Any] = {
        "dimensions": ["income_quintile"],
        "pairs": False,
        "indicators": chosen,
        "min_cell": 1,
    }
    links = ind.load_links(small / "truth" / "links.csv")
    local = ind.compute(_population(small), **options)
    on_spark = ind.compute_spark(spark, small, links=links, **options)
    assert on_spark.engine == "spark" and local.engine == "duckdb"
    mine = {(e.indicator, e.key): e for e in local.estimates}
    theirs = {(e.indicator, e.key): e for e in on_spark.estimates}
    assert set(mine) == set(theirs) and len(mine) > len(chosen)
    for key, a in mine.items():
        b = theirs[key]
        assert (a.population, a.numerator, a.suppressed) == (
            b.population,
            b.numerator,
            b.suppressed,
        )
        for x, y in ((a.estimate, b.estimate), (a.ci_lb, b.ci_lb), (a.ci_ub, b.ci_ub)):
            assert (x is None) == (y is None)
            if x is not None and y is not None:
                assert x == pytest.approx(y, rel=1e-9, abs=1e-9), key
