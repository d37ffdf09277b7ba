"""People and households: age and sex by the census pyramid, nationality, region, urban or
rural, income, education, insurance, disability, names and the latent conditions they carry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, timedelta
from random import Random
from typing import Any

from takamul.synth import tables
from takamul.synth.facilities import Facility, Network, Region
from takamul.synth.geo import offset
from takamul.synth.names import NameEntry, pool
from takamul.synth.sampling import Quota, Weighted

__all__ = ["BANDS", "HouseholdFactory", "Person", "band_of"]

BANDS = 17  # five-year bands 0-4 ... 75-79 and 80+
EDUCATION = ("none", "primary", "secondary", "tertiary")


def band_of(age: int) -> int:
    return min(age // 5, BANDS - 1)


@dataclass(slots=True, eq=False)
class Person:
    index: int
    household: str
    role: str  # head, spouse, child, elderly_parent, single
    group: str  # citizen, non_citizen
    nationality: str
    sex: str
    age: int
    birth: date
    given: NameEntry
    family: NameEntry
    father_name: NameEntry | None
    grandfather_name: NameEntry | None
    region: Region
    urban: bool
    quintile: int
    education: str
    insured: bool
    payer: tuple[str, str, str] | None
    disability: bool
    national_id: str
    phone: str
    household_phone: str
    home: Facility
    lat: float
    lon: float
    travel_km: float
    mother: Person | None = None
    father: Person | None = None
    spouse: Person | None = None
    conditions: dict[str, date] = field(default_factory=dict)
    died: date | None = None  # set by the care-programme plan (synth.followup) before registration

    @property
    def pid(self) -> str:
        return f"P{self.index:07d}"


def luhn_digit(digits: str) -> str:
    """The Luhn check digit of ``digits`` (the last digit of a Saudi national or iqama id)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return str((10 - total % 10) % 10)


def _ir_digit(digits: str) -> str:
    r = sum(int(d) * (10 - i) for i, d in enumerate(digits)) % 11
    return str(r if r < 2 else 11 - r)


def national_id(index: int, group: str, country: str) -> str:
    """A unique, check-digit-valid ID: the person number scrambled by a bijection."""
    if country == "SA":
        body = f"{(index * 48271 + 12345678) % 10**8:08d}"
        stem = ("1" if group == "citizen" else "2") + body
        return stem + luhn_digit(stem)
    stem = f"{(index * 48271 + 123456789) % 10**9:09d}"
    if group != "citizen":
        stem = "9" + stem[1:]  # foreign nationals' numbers set apart (a Takamul convention)
    return stem + _ir_digit(stem)


class HouseholdFactory:
    """Builds households one at a time, tracking the census pyramid per nationality group."""

    def __init__(self, config: dict[str, Any], network: Network) -> None:
        self.config = config
        self.country = config["country"]
        self.table = tables.country(self.country)
        self.clinical = tables.clinical()
        self.network = network
        self.end = date.fromisoformat(config["end_date"])
        gain = config["households"]["quota_gain"]
        groups = self.table["groups"]
        self.group_names = list(groups)
        self.group_quota = Quota([groups[g]["share"] for g in self.group_names], gain)
        self.cells: dict[str, Quota] = {}
        self.types: dict[str, Weighted[str]] = {}
        self.nationalities: dict[str, Weighted[str]] = {}
        self.income: dict[tuple[str, bool], Weighted[int]] = {}
        for g, spec in groups.items():
            m, f = spec["age_shares_male"], spec["age_shares_female"]
            ms, fs = spec["male_share"] / sum(m), (1 - spec["male_share"]) / sum(f)
            self.cells[g] = Quota([x * ms for x in m] + [x * fs for x in f], gain)
            self.types[g] = Weighted(
                [t[0] for t in spec["household_types"]], [t[1] for t in spec["household_types"]]
            )
            self.nationalities[g] = Weighted(
                [n[0] for n in spec["nationalities"]], [n[1] for n in spec["nationalities"]]
            )
            for urban in (True, False):
                weights = spec["income_urban" if urban else "income_rural"]
                self.income[(g, urban)] = Weighted([1, 2, 3, 4, 5], weights)
        self.regions = Weighted(network.regions, [r.share for r in network.regions])
        ed = config["education"]
        self.education = [Weighted(list(EDUCATION), row) for row in ed["by_quintile"]]
        self.disability = self.table["disability_by_age"]
        self.bands = self.clinical["age_bands"]
        self.rr = config["conditions"]["income_rr"]

    # -- ages -------------------------------------------------------------------------------

    def _age(self, rng: Random, group: str, sex: str | None, lo: int, hi: int) -> tuple[str, int]:
        lo, hi = max(lo, 0), min(hi, 100)
        if hi < lo:
            hi = lo
        sexes = (0, 1) if sex is None else ((0,) if sex == "male" else (1,))
        feasible = [s * BANDS + b for s in sexes for b in range(band_of(lo), band_of(hi) + 1)]
        cell = self.cells[group].pick(rng, feasible)
        s, b = divmod(cell, BANDS)
        if b == BANDS - 1:
            top_lo = max(lo, 80)
            # ages past 80 thin out quickly (about a sixth fewer each year)
            age = min(hi, top_lo + int(-math.log(1.0 - rng.random()) * 6.0))
        else:
            a_lo, a_hi = max(lo, b * 5), min(hi, b * 5 + 4)
            age = a_lo + int(rng.random() * (a_hi - a_lo + 1))
        return ("male" if s == 0 else "female"), age

    # -- households ---------------------------------------------------------------------------

    def household(self, rng: Random, hh_id: str, first_index: int) -> list[Person]:
        # Groups are balanced in persons, not households: citizen households are larger.
        g_index = self.group_quota.most_lagging()
        group = self.group_names[g_index]
        kind = self.types[group].pick(rng)
        spec = self.table["groups"][group]
        region = self.regions.pick(rng)
        urban = rng.random() < region.urban
        quintile = self.income[(group, urban)].pick(rng)
        nationality = self.nationalities[group].pick(rng)
        names = pool(self.table["name_pools"][nationality])
        home = self.network.home(rng, region, urban, self.country)
        travel = self.config["inequities"]["travel"]
        mean_km = travel["urban_km"] if urban else travel["rural_km"]
        if region.remote:
            mean_km *= travel["remote_factor"]
        # A gamma(2) distance: few live at the door, a long tail lives far away.
        km = mean_km * (-math.log((1.0 - rng.random()) * (1.0 - rng.random()))) / 2.0
        lat, lon = offset(home.lat, home.lon, km, rng.random() * 2 * math.pi)
        shared = dict(
            group=group,
            nationality=nationality,
            region=region,
            urban=urban,
            quintile=quintile,
            home=home,
            lat=lat,
            lon=lon,
            travel_km=round(km, 3),
            household=hh_id,
        )
        members: list[Person] = []
        family = names.family.pick(rng)
        household_phone = ""

        def person(
            role: str,
            sex: str,
            age: int,
            fam: NameEntry,
            father: NameEntry | None,
            grandfather: NameEntry | None,
        ) -> Person:
            nonlocal household_phone
            index = first_index + len(members)
            p = self._person(
                rng, index, role, sex, age, names.given(rng, sex), fam, father, grandfather, shared
            )
            if not household_phone:
                household_phone = p.phone
            p.household_phone = household_phone
            members.append(p)
            return p

        def parents_names() -> tuple[NameEntry, NameEntry]:
            return names.given(rng, "male"), names.given(rng, "male")

        head: Person | None = None
        mother: Person | None = None
        if kind in ("family", "couple"):
            _, age = self._age(rng, group, "male", 20, 85)
            head = person("head", "male", age, family, *parents_names())
            _, sp_age = self._age(rng, group, "female", max(18, age - 15), max(18, age + 2))
            # A wife keeps her own family's name in both countries.
            mother = person("spouse", "female", sp_age, names.family.pick(rng), *parents_names())
            head.spouse, mother.spouse = mother, head
        elif kind == "single_parent":
            _, age = self._age(rng, group, "female", 20, 55)
            mother = person("head", "female", age, family, *parents_names())
            head = mother
        else:
            lo, hi = (65, 100) if kind == "single_elderly" else (20, 64)
            sex, age = self._age(rng, group, None, lo, hi)
            head = person("single", sex, age, family, *parents_names())

        if kind in ("family", "single_parent") and mother is not None:
            n_children = 1 + _poisson_small(rng, max(spec["children_mean"] - 1.0, 0.0))
            oldest = min(mother.age - 17, 40)
            youngest = max(0, mother.age - 45)
            dad = head if head is not None and head.sex == "male" else None
            for _ in range(n_children):
                if oldest < youngest:
                    break
                sex, age = self._age(rng, group, None, youngest, oldest)
                father_name = dad.given if dad else names.given(rng, "male")
                grandfather = dad.father_name if dad else names.given(rng, "male")
                child = person("child", sex, age, family, father_name, grandfather)
                child.mother, child.father = mother, dad
            if head is not None and rng.random() < spec["elderly_relative"]:
                sex, age = self._age(rng, group, None, max(60, head.age + 18), 100)
                fam = family if sex == "male" else names.family.pick(rng)
                grandfather = names.given(rng, "male")
                elder = person(
                    "elderly_parent",
                    sex,
                    age,
                    fam,
                    head.grandfather_name if sex == "male" else grandfather,
                    names.given(rng, "male"),
                )
                if sex == "male" and head.father_name is not None:
                    elder.given = head.father_name  # the head's father carries the head's chain
        self.group_quota.add(g_index, len(members))
        return members

    def _person(
        self,
        rng: Random,
        index: int,
        role: str,
        sex: str,
        age: int,
        given: NameEntry,
        family: NameEntry,
        father: NameEntry | None,
        grandfather: NameEntry | None,
        shared: dict[str, Any],
    ) -> Person:
        group: str = shared["group"]
        quintile: int = shared["quintile"]
        birth = self.end - timedelta(days=int(age * 365.25 + rng.random() * 365))
        if age >= 25:
            education = self.education[quintile - 1].pick(rng)
            ed = self.config["education"]
            if age >= ed["older_shift_age"] and rng.random() < ed["older_none_extra"]:
                education = "none"
        elif age >= 18:
            education = "secondary" if rng.random() < 0.8 else "primary"
        else:
            education = ""
        ineq = self.config["inequities"]["insurance"]
        insured = rng.random() < ineq[group]
        payer = self.network.payers[group].pick(rng) if insured else None
        disability = rng.random() < _step(self.disability, age)
        p = Person(
            index=index,
            role=role,
            sex=sex,
            age=age,
            birth=birth,
            given=given,
            family=family,
            father_name=father,
            grandfather_name=grandfather,
            education=education,
            insured=insured,
            payer=payer,
            disability=disability,
            national_id=national_id(index, group, self.country),
            phone=f"{self.table['phone_prefix']}{(index * 7919 + 1234567) % 10**8:08d}",
            household_phone="",
            **shared,
        )
        self._conditions(rng, p)
        return p

    def _conditions(self, rng: Random, p: Person) -> None:
        b = 0
        for i, lo in enumerate(self.bands):
            if p.age >= lo:
                b = i
        for name, spec in self.clinical["conditions"].items():
            prevalence = spec[self.country][p.sex][b] * self.rr[name][p.quintile - 1]
            if rng.random() < prevalence:
                years_ago = rng.random() * min(p.age, 12)
                p.conditions[name] = self.end - timedelta(days=int(years_ago * 365.25))


def _step(table: list[list[float]], age: int) -> float:
    value = 0.0
    for lo, v in table:
        if age >= lo:
            value = v
    return value


def _poisson_small(rng: Random, lam: float) -> int:
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k
