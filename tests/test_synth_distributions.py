"""Statistics of the synthetic population: the census pyramid, prevalences by age band, every
configured inequity recovered from the FHIR data, and the rates of registration variants.
"""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from takamul.synth import generate, load_config, tables
from takamul.synth.geo import haversine_km

SIZES = {"SA": 15_000, "IR": 8_000}


@dataclass
class Pop:
    country: str
    config: dict[str, Any]
    persons: dict[str, dict[str, str]]
    link: dict[str, str]  # Patient id -> person
    registrations: list[dict[str, str]]
    conditions: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    condition_code: dict[str, str] = field(default_factory=dict)  # Condition id -> name
    screened: set[str] = field(default_factory=set)
    hba1c_latest: dict[str, tuple[str, float]] = field(default_factory=dict)
    mh_referred: set[str] = field(default_factory=set)
    covered: set[str] = field(default_factory=set)
    travel: dict[str, float] = field(default_factory=dict)


def _lines(folder: Path, rtype: str, needle: bytes = b"") -> list[dict[str, Any]]:
    path = folder / f"{rtype}.ndjson"
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if needle in x]


def _subject(body: dict[str, Any], key: str = "subject") -> str:
    ref: str = body[key]["reference"]
    return ref.split("/", 1)[1]


@pytest.fixture(scope="module", params=["SA", "IR"])
def pop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pop:
    country = request.param
    out = tmp_path_factory.mktemp(f"stats-{country}")
    config = load_config(country=country, patients=SIZES[country], seed=2024)
    generate(config, out)
    with (out / "truth/persons.csv").open(encoding="utf-8") as h:
        persons = {r["person"]: r for r in csv.DictReader(h)}
    with (out / "truth/registrations.csv").open(encoding="utf-8") as h:
        registrations = list(csv.DictReader(h))
    pop = Pop(country, config, persons, {r["patient_id"]: r["person"] for r in registrations},
              registrations)  # fmt: skip
    names = {v["snomed"]: k for k, v in tables.clinical()["conditions"].items()}
    for c in _lines(out, "Condition"):
        name = names.get(c["code"]["coding"][0]["code"])
        if name:
            pop.conditions[name].add(pop.link[_subject(c)])
            pop.condition_code[c["id"]] = name
    for proc in _lines(out, "Procedure", b"171183004"):
        pop.screened.add(pop.link[_subject(proc)])
    for obs in _lines(out, "Observation", b'"4548-4"'):
        person = pop.link[_subject(obs)]
        when = obs["effectiveDateTime"]
        if person not in pop.hba1c_latest or when > pop.hba1c_latest[person][0]:
            pop.hba1c_latest[person] = (when, obs["valueQuantity"]["value"])
    for sr in _lines(out, "ServiceRequest", b"183524004"):
        reason = sr["reasonReference"][0]["reference"].split("/")[1]
        if pop.condition_code.get(reason) in ("depression", "anxiety"):
            pop.mh_referred.add(pop.link[_subject(sr)])
    for cov in _lines(out, "Coverage"):
        pop.covered.add(pop.link[_subject(cov, "beneficiary")])
    positions = {
        loc["id"]: (loc["position"]["latitude"], loc["position"]["longitude"])
        for loc in _lines(out, "Location")
    }
    for patient in _lines(out, "Patient"):
        person = pop.link[patient["id"]]
        if patient["id"].endswith("-1"):  # the home registration
            geo = patient["address"][0]["extension"][0]["extension"]
            org = patient["managingOrganization"]["reference"].split("/")[1]
            lat, lon = positions["loc-" + org.removeprefix("org-")]
            pop.travel[person] = haversine_km(
                geo[0]["valueDecimal"], geo[1]["valueDecimal"], lat, lon
            )
    return pop


def _within(observed: float, expected: float, n: float, z: float = 4.0) -> bool:
    """Binomial agreement: ``observed`` successes out of ``n`` versus probability ``expected``."""
    sd = math.sqrt(max(n * expected * (1 - expected), 1e-9))
    return abs(observed - n * expected) <= z * sd + 1


def test_age_sex_pyramid_and_nationality_match_the_census(pop: Pop) -> None:
    table = tables.country(pop.country)
    persons = list(pop.persons.values())
    n = len(persons)
    target = [0.0] * 34
    for g, spec in table["groups"].items():
        m, f = spec["age_shares_male"], spec["age_shares_female"]
        for b in range(17):
            target[b] += spec["share"] * spec["male_share"] * m[b] / sum(m)
            target[17 + b] += spec["share"] * (1 - spec["male_share"]) * f[b] / sum(f)
        group = [p for p in persons if p["group"] == g]
        assert abs(len(group) / n - spec["share"]) < 0.01, g
        male = sum(p["sex"] == "male" for p in group) / len(group)
        assert abs(male - spec["male_share"]) < 0.035, (g, male)
    total = sum(target)
    cells = Counter(
        (0 if p["sex"] == "male" else 17) + min(int(p["age"]) // 5, 16) for p in persons
    )
    for cell in range(34):
        assert abs(cells[cell] / n - target[cell] / total) < 0.013, (cell, cells[cell] / n)


def test_each_country_has_its_own_shape(pop: Pop) -> None:
    people = list(pop.persons.values())
    old = sum(int(p["age"]) >= 60 for p in people) / len(people)
    if pop.country == "SA":
        # A large working-age, mostly male non-Saudi population and few older people.
        non_citizens = [p for p in people if p["group"] == "non_citizen"]
        workers = [p for p in non_citizens if 25 <= int(p["age"]) < 55]
        assert len(workers) / len(non_citizens) > 0.6
        assert sum(p["sex"] == "male" for p in workers) / len(workers) > 0.72
        assert old < 0.085
    else:
        assert old > 0.09  # Iran's older structure
        assert sum(p["nationality"] == "AF" for p in people) / len(people) > 0.01


def test_condition_prevalence_by_age_band_follows_the_table(pop: Pop) -> None:
    clinical = tables.clinical()
    bands = clinical["age_bands"]
    rr = pop.config["conditions"]["income_rr"]
    for name, spec in clinical["conditions"].items():
        table = spec[pop.country]
        expected: defaultdict[int, float] = defaultdict(float)
        variance: defaultdict[int, float] = defaultdict(float)
        observed: Counter[int] = Counter()
        for pid, p in pop.persons.items():
            band = max(i for i, lo in enumerate(bands) if int(p["age"]) >= lo)
            prob = table[p["sex"]][band] * rr[name][int(p["income_quintile"]) - 1]
            expected[band] += prob
            variance[band] += prob * (1 - prob)
            observed[band] += pid in pop.conditions[name]
        for band in range(len(bands)):
            slack = 4 * math.sqrt(variance[band]) + 2
            assert abs(observed[band] - expected[band]) <= slack, (
                name,
                band,
                observed[band],
                expected[band],
            )
    diabetes = pop.conditions["diabetes"]
    old = [pid for pid, p in pop.persons.items() if 45 <= int(p["age"]) < 60]
    young = [pid for pid, p in pop.persons.items() if 18 <= int(p["age"]) < 30]
    assert sum(p in diabetes for p in old) / len(old) > 3 * sum(p in diabetes for p in young) / len(
        young
    )


def _ratio(pop: Pop, members: list[str], outcome: set[str], predicted: dict[str, float]) -> float:
    """Observed over expected, the indirect standardisation used to recover one factor."""
    observed = sum(m in outcome for m in members)
    return observed / sum(predicted[m] for m in members)


def test_screening_gaps_by_income_rurality_and_citizenship_are_recovered(pop: Pop) -> None:
    s = pop.config["inequities"]["screening"]
    eligible = [
        pid for pid, p in pop.persons.items()
        if int(p["age"]) >= s["min_age"] and pid not in pop.conditions["diabetes"]
    ]  # fmt: skip
    assert {pid for pid in eligible if pop.persons[pid]["screened"] == "1"} == (
        pop.screened & set(eligible)
    )

    def predicted(without: str) -> dict[str, float]:
        out = {}
        for pid in eligible:
            p = pop.persons[pid]
            prob = s["base"]
            if without != "income":
                prob *= s["income_rr"][int(p["income_quintile"]) - 1]
            if without != "rural" and p["urban"] == "0":
                prob *= s["rural_rr"]
            if without != "citizen" and p["group"] != "citizen":
                prob *= s["non_citizen_rr"]
            out[pid] = prob
        return out

    income = predicted("income")
    q = {
        k: [pid for pid in eligible if pop.persons[pid]["income_quintile"] == str(k)]
        for k in (1, 5)
    }
    rr_q1 = _ratio(pop, q[1], pop.screened, income) / _ratio(pop, q[5], pop.screened, income)
    assert abs(rr_q1 - s["income_rr"][0]) < 0.12, rr_q1
    rural = predicted("rural")
    r = [pid for pid in eligible if pop.persons[pid]["urban"] == "0"]
    u = [pid for pid in eligible if pop.persons[pid]["urban"] == "1"]
    rr_rural = _ratio(pop, r, pop.screened, rural) / _ratio(pop, u, pop.screened, rural)
    assert abs(rr_rural - s["rural_rr"]) < 0.12, rr_rural
    if pop.country == "SA":  # Iran's non-citizens are too few at this size for a ratio
        cit = predicted("citizen")
        nc = [pid for pid in eligible if pop.persons[pid]["group"] != "citizen"]
        c = [pid for pid in eligible if pop.persons[pid]["group"] == "citizen"]
        rr_nc = _ratio(pop, nc, pop.screened, cit) / _ratio(pop, c, pop.screened, cit)
        assert abs(rr_nc - s["non_citizen_rr"]) < 0.12, rr_nc


def test_diabetes_control_is_worse_at_lower_income(pop: Pop) -> None:
    d = pop.config["inequities"]["diabetes_control"]
    control: dict[int, list[bool]] = defaultdict(list)
    for pid in pop.conditions["diabetes"]:
        if pid in pop.hba1c_latest:
            q = int(pop.persons[pid]["income_quintile"])
            control[q].append(pop.hba1c_latest[pid][1] < 7.0)
    for q, values in control.items():
        assert _within(sum(values), d["base"] * d["income_rr"][q - 1], len(values)), q
    rate = {q: sum(v) / len(v) for q, v in control.items()}
    assert rate[1] < rate[3] < rate[5]


def test_travel_to_primary_care_is_longer_when_rural_and_remote(pop: Pop) -> None:
    t = pop.config["inequities"]["travel"]
    groups: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
    for pid, km in pop.travel.items():
        p = pop.persons[pid]
        groups[(p["urban"], p["remote"])].append(km)
        assert abs(km - float(p["travel_km"])) < 0.05  # the truth file states the distance
    mean = {k: sum(v) / len(v) for k, v in groups.items()}
    assert abs(mean[("1", "0")] / t["urban_km"] - 1) < 0.1
    assert abs(mean[("0", "0")] / t["rural_km"] - 1) < 0.1
    assert abs(mean[("0", "1")] / mean[("0", "0")] / t["remote_factor"] - 1) < 0.2


def test_unmet_mental_health_need_is_larger_in_rural_areas(pop: Pop) -> None:
    m = pop.config["inequities"]["mental_health_treatment"]
    need = pop.conditions["depression"] | pop.conditions["anxiety"]
    by_setting: dict[str, list[bool]] = defaultdict(list)
    for pid in need:
        by_setting[pop.persons[pid]["urban"]].append(pid in pop.mh_referred)
    urban, rural = by_setting["1"], by_setting["0"]
    assert _within(sum(urban), m["base"], len(urban))
    assert _within(sum(rural), m["base"] * m["rural_rr"], len(rural))
    assert sum(rural) / len(rural) < sum(urban) / len(urban)


def test_non_citizens_have_lower_coverage(pop: Pop) -> None:
    ins = pop.config["inequities"]["insurance"]
    for group in ("citizen", "non_citizen"):
        members = [pid for pid, p in pop.persons.items() if p["group"] == group]
        covered = sum(pid in pop.covered for pid in members)
        assert _within(covered, ins[group], len(members)), group


def test_registration_counts_and_variant_rates_match_the_config(pop: Pop) -> None:
    rc = pop.config["registrations"]
    per_person = Counter(r["person"] for r in pop.registrations)
    histogram = Counter(per_person.values())
    weights = rc["count_weights"]
    n = len(pop.persons)
    for k in (1, 2, 3):  # 4 and 5 can be capped by the facilities near a person
        assert _within(histogram[k], weights[k - 1] / sum(weights), n), k
    records = pop.registrations
    variants = [set(r["variants"].split(";")) - {""} for r in records]
    scripts = Counter(r["script"] for r in records)
    for script, share in rc["script"].items():
        assert _within(scripts[script], share, len(records)), script

    def rate(kind: str, among: list[int]) -> None:
        assert len(among) > 30, kind  # enough eligible records for the rate to mean something
        hits = sum(kind in variants[i] for i in among)
        assert _within(hits, rc[kind], len(among)), (kind, hits, len(among))

    everyone = list(range(len(records)))
    rate("typo", everyone)
    latin = [i for i, r in enumerate(records) if r["script"] != "native"]
    rate("transliteration_variant", latin)  # nearly every name has a variant spelling
    rate("partial_name_chain", everyone)
    ordinary = [i for i in everyone if "newborn_parent_id" not in variants[i]]
    rate("national_id_missing", ordinary)
    rate("national_id_mistyped", ordinary)
    infants = [
        i for i, r in enumerate(records)
        if int(pop.persons[r["person"]]["age"]) == 0 and pop.persons[r["person"]]["mother"]
    ]  # fmt: skip
    rate("newborn_parent_id", infants)
    adults = [
        i for i, r in enumerate(records)
        if int(pop.persons[r["person"]]["age"]) >= 18 and pop.persons[r["person"]]["role"] != "head"
        and pop.persons[r["person"]]["role"] != "single"
    ]  # fmt: skip
    rate("shared_family_phone", adults)
    rate("native_calendar_birth_date", everyone)
    swappable = [
        i for i, r in enumerate(records)
        if (b := pop.persons[r["person"]]["birth_date"]) and int(b[8:]) <= 12
        and int(b[8:]) != int(b[5:7]) and "native_calendar_birth_date" not in variants[i]
    ]  # fmt: skip
    rate("day_month_swap", swappable)
    if pop.country == "IR":
        native = [i for i, r in enumerate(records) if r["script"] != "latin"]
        hits = sum("arabic_letter_forms" in variants[i] for i in native)
        assert 0 < hits <= rc["arabic_letter_forms"] * len(native) * 1.2
