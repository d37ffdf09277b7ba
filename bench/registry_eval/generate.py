"""Population, registrations and truth files of the independent registry evaluation set.

The population is built household by household in fixed-size chunks of persons; each chunk has
its own random stream (seeded from the run's seed and the chunk number), so the output is the same
for a seed whatever the number of worker processes, and memory stays bounded (one chunk per
worker, records streamed to the files in chunk order).
"""

from __future__ import annotations

import array
import bisect
import csv
import datetime as dt
import hashlib
import io
import json
import math
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any

from . import names as N
from . import perturb as P
from .names import City, NameEntry

try:  # orjson (a project dependency) is ~10x faster; json gives the same bytes
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


GENERATOR = "takamul-bench-registry-eval"
VERSION = "1.0.0"
CHUNK_PERSONS = 2000  # persons per chunk: part of the definition of the output for a seed

SA_ID_SYSTEM = "https://www.moh.gov.sa/fhir/sid/national-id"
IR_ID_SYSTEM = "https://www.ncr.ir/fhir/sid/national-code"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V3_ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
MRN_SYSTEM = "https://registry-eval.invalid/fhir/sid/mrn/"

# registrations per person: 1..4, mean 2.4
REGISTRATIONS = ((1, 0.20), (2, 0.35), (3, 0.30), (4, 0.15))


@dataclass(frozen=True)
class Config:
    country: str  # SA, IR or mixed
    persons: int
    seed: int
    ref_date: dt.date = dt.date(2025, 12, 31)
    rates: P.ErrorRates = field(default_factory=P.ErrorRates)
    mixed_sa_share: float = 0.5
    facilities_per_country: int = 150


# --------------------------------------------------------------------------------------------
# persons
# --------------------------------------------------------------------------------------------
class Person:
    __slots__ = (
        "alt_phone",
        "birth",
        "city",
        "country",
        "family",
        "family_lat",
        "family_nat",
        "father",
        "father_id",
        "father_lat",
        "father_nat",
        "given",
        "given2",
        "given2_lat",
        "given_lat",
        "given_nat",
        "grand",
        "grand_lat",
        "grand_nat",
        "group",
        "home",
        "household",
        "idx",
        "line",
        "middle",
        "middle_lat",
        "mobile",
        "mother_id",
        "named_after",
        "nid",
        "phone",
        "role",
        "sadat",
        "sex",
        "son",
        "title",
        "twin_of",
    )

    def __init__(self, country: str, group: str, sex: str, birth: dt.date) -> None:
        self.idx = -1
        self.country = country
        self.group = group
        self.sex = sex
        self.birth = birth
        self.given: NameEntry = _EMPTY
        self.given_nat = ""
        self.given_lat = ""
        self.given2: NameEntry | None = None
        self.given2_lat = ""
        self.father: NameEntry | None = None
        self.father_nat = ""
        self.father_lat = ""
        self.grand: NameEntry | None = None
        self.grand_nat = ""
        self.grand_lat = ""
        self.family: NameEntry = _EMPTY
        self.family_nat = ""
        self.family_lat = ""
        self.middle: NameEntry | None = None
        self.middle_lat = ""
        self.title: tuple[str, str] | None = None  # Seyyed/Seyyedeh (native, Latin)
        self.sadat: tuple[str, str] | None = None
        self.nid = ""
        self.mobile: str | None = None
        self.phone: str | None = None  # the number records carry (own, or a parent's)
        self.alt_phone = ""
        self.home: str | None = None
        self.city: City = N.SA_CITY_LIST[0]
        self.line: tuple[str, str] | None = None
        self.household = ""
        self.role = ""
        self.father_id = -1
        self.mother_id = -1
        self.twin_of = -1
        self.named_after = -1
        self.son: Person | None = None

    @property
    def pid(self) -> str:
        return f"person-{self.idx:07d}"

    @property
    def latin_only(self) -> bool:
        return self.given.latin_only


_EMPTY = NameEntry(-1, "given", "", ("",), (1.0,), ("",), (1.0,))


def _pick(rng: Random, items: Sequence[tuple[Any, float]]) -> Any:
    x = rng.random() * sum(w for _, w in items)
    for v, w in items:
        x -= w
        if x <= 0:
            return v
    return items[-1][0]


def _poisson(rng: Random, mean: float) -> int:
    limit = math.exp(-mean)
    k, p = 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _egypt_spelling(rng: Random, e: NameEntry) -> str:
    """Egyptian-style romanisation (Mohamed, Abdelrahman, El-Sayed) for Arab residents."""
    if rng.random() < 0.6:
        for s in e.own:
            if s.startswith(("Abdel", "El-", "El ")) or s in ("Mohamed", "Ahmed", "Mahmoud"):
                return s
    return e.own_spelling(rng)


class PersonFactory:
    """Households of one chunk; persons get their global index when the chunk is assembled."""

    def __init__(self, rng: Random, cfg: Config) -> None:
        self.rng = rng
        self.cfg = cfg
        self.ref = cfg.ref_date
        self.sa_city_cw = _cum([c.weight for c in N.SA_CITY_LIST])
        self.ir_city_cw = _cum([c.weight for c in N.IR_CITY_LIST])

    # --- helpers ------------------------------------------------------------------------
    def birth_at_age(self, age_years: float) -> dt.date:
        days = int(age_years * 365.2425)
        b = self.ref - dt.timedelta(days=days)
        return max(b, dt.date(1925, 1, 1))

    def cap_age(self, age: float) -> float:
        """Ages above 99 redrawn within 94-99 (a fixed cap would give many the same date)."""
        return age if age < 99.0 else self.rng.uniform(94.0, 99.0)

    def wife_age(self, head_age: float, gap: float) -> float:
        age = head_age - max(0.0, self.rng.gauss(gap, 3.5))
        return age if age >= 18.0 else self.rng.uniform(18.0, max(18.5, head_age))

    def age_from_bins(self, bins: Sequence[tuple[int, int, float]]) -> float:
        lo, hi = _pick(self.rng, [((lo, hi), w) for lo, hi, w in bins])
        return self.rng.uniform(lo, hi + 1)

    def spell(self, e: NameEntry, egypt: bool = False) -> str:
        return _egypt_spelling(self.rng, e) if egypt else e.own_spelling(self.rng)

    def native_of(self, e: NameEntry) -> str:
        if e.native_alts and e.kind == "given" and self.rng.random() < 0.35:
            return e.native_alts[0]  # عبد الرحمن / محمد رضا written apart
        return e.native

    def city(self, country: str) -> City:
        if country == "SA":
            return N.SA_CITY_LIST[_bis(self.sa_city_cw, self.rng.random())]
        return N.IR_CITY_LIST[_bis(self.ir_city_cw, self.rng.random())]

    # --- Arab chains ----------------------------------------------------------------------
    def arab_person(
        self,
        group: str,
        sex: str,
        birth: dt.date,
        *,
        father: NameEntry | None = None,
        father_lat: str = "",
        grand: NameEntry | None = None,
        family: NameEntry | None = None,
        family_lat: str = "",
        given: NameEntry | None = None,
    ) -> Person:
        rng = self.rng
        p = Person("SA", group, sex, birth)
        band = N.cohort_band(birth.year)
        egypt = group == "arab_expat"
        lst = N.SA_MALE_LIST if sex == "male" else N.SA_FEMALE_LIST
        p.given = given or lst.draw(rng, band)
        p.father = father or N.SA_MALE_LIST.draw(rng, max(0, band - 1))
        p.grand = grand or N.SA_MALE_LIST.draw(rng, 0)
        if family is None:
            if group == "citizen":
                family = N.SA_FAMILY_LIST.draw(rng)
            elif rng.random() < 0.6:
                family = N.SA_MALE_LIST.draw(rng, 0)  # the great-grandfather's name
            else:
                family = N.ARAB_EXPAT_FAMILY_LIST.draw(rng)
        p.family = family
        p.given_nat, p.given_lat = self.native_of(p.given), self.spell(p.given, egypt)
        p.father_nat = self.native_of(p.father)
        p.father_lat = (
            father_lat if father_lat and rng.random() < 0.7 else self.spell(p.father, egypt)
        )
        p.grand_nat, p.grand_lat = self.native_of(p.grand), self.spell(p.grand, egypt)
        p.family_nat = family.native
        p.family_lat = (
            family_lat if family_lat and rng.random() < 0.7 else self.spell(family, egypt)
        )
        return p

    def arab_household(self, group: str) -> list[Person]:
        rng = self.rng
        if group == "citizen":
            kind = _pick(
                rng,
                [
                    ("family", 0.62),
                    ("three_gen", 0.12),
                    ("couple", 0.08),
                    ("single_elder", 0.06),
                    ("single_young", 0.12),
                ],
            )
            bins: Sequence[tuple[int, int, float]] = SA_HEAD_AGES
        else:
            kind = _pick(rng, [("family", 0.5), ("single_worker", 0.5)])
            bins = ((27, 34, 1.0), (35, 44, 1.1), (45, 55, 0.6))
        if kind in ("single_young", "single_elder", "single_worker"):
            if kind == "single_young":
                sex = "male" if rng.random() < 0.5 else "female"
                age = rng.uniform(18, 35)
            elif kind == "single_elder":
                sex = "female" if rng.random() < 0.65 else "male"
                age = self.cap_age(65 + rng.expovariate(1 / 9))
            else:
                sex = "male" if rng.random() < 0.92 else "female"
                age = rng.uniform(22, 60)
            p = self.arab_person(group, sex, self.birth_at_age(age))
            p.role = "single"
            return [p]
        head_age = self.age_from_bins(bins)
        head = self.arab_person(group, "male", self.birth_at_age(head_age))
        head.role = "father"
        wife_age = self.wife_age(head_age, 5.0)
        same_family = group == "citizen" and rng.random() < 0.3  # marriage within the family
        wife = self.arab_person(
            group,
            "female",
            self.birth_at_age(wife_age),
            family=head.family if same_family else None,
        )
        wife.role = "mother"
        members = [head, wife]
        if kind == "three_gen":
            if rng.random() < 0.5 and head_age + 22 < 98:
                gf = self.arab_person(
                    group,
                    "male",
                    self.birth_at_age(self.cap_age(head_age + rng.uniform(22, 35))),
                    given=head.father,
                    father=head.grand,
                    family=head.family,
                    family_lat=head.family_lat,
                )
                gf.role = "grandfather"
                members.append(gf)
            if rng.random() < 0.8 and head_age + 18 < 98:
                gm = self.arab_person(
                    group, "female", self.birth_at_age(self.cap_age(head_age + rng.uniform(18, 30)))
                )
                gm.role = "grandmother"
                members.append(gm)
        if kind != "couple":
            if group == "citizen":
                y = wife.birth.year
                mean = 6.5 if y < 1960 else 5.5 if y < 1970 else 4.2 if y < 1980 else 3.2
                mean = mean if y < 1990 else 2.6
            else:
                mean = 2.8
            births = self.births(wife, mean, first_age=21.0 if wife.birth.year < 1975 else 23.5)
            self.children(head, wife, births, members, group)
        return members

    def births(
        self, mother: Person, mean: float, first_age: float, at_home: float = 30.0
    ) -> list[tuple[dt.date, int]]:
        """Birth dates of the children still at home (younger than ``at_home``), twins as two
        equal dates."""
        rng = self.rng
        n = _poisson(rng, mean)
        out: list[tuple[dt.date, int]] = []
        age = max(17.0, rng.gauss(first_age, 2.5))
        for _ in range(n):
            if age > 45:
                break
            d = mother.birth + dt.timedelta(days=int(age * 365.2425))
            if d > self.ref:
                break
            child_age = (self.ref - d).days / 365.2425
            if child_age < at_home:
                twin = 2 if rng.random() < 0.012 else 1
                out.append((d, twin))
            age += 1.0 + rng.expovariate(1 / 1.6)
        return out

    def children(
        self,
        head: Person,
        wife: Person,
        births: list[tuple[dt.date, int]],
        members: list[Person],
        group: str,
    ) -> None:
        rng = self.rng
        used: set[int] = set()
        first_son = True
        for d, count in births:
            twin_sex = "male" if rng.random() < 0.5 else "female"
            prev: Person | None = None
            for t in range(count):
                if t == 1 and rng.random() < 0.65:
                    sex = twin_sex
                else:
                    sex = "male" if rng.random() < 0.512 else "female"
                if t == 0:
                    twin_sex = sex
                child = self.child(head, wife, sex, d, used, first_son and sex == "male", group)
                if sex == "male":
                    first_son = False
                child.role = "child"
                if prev is not None:
                    child.twin_of = -2  # resolved to an index when the chunk is assembled
                members.append(child)
                prev = child
                if head.son is None and sex == "male":
                    head.son = child
                    wife.son = child

    def child(
        self,
        head: Person,
        wife: Person,
        sex: str,
        birth: dt.date,
        used: set[int],
        eldest_son: bool,
        group: str,
    ) -> Person:
        rng = self.rng
        band = N.cohort_band(birth.year)
        if head.country == "IR":
            lst = N.IR_MALE_LIST if sex == "male" else N.IR_FEMALE_LIST
        elif group in ("citizen", "arab_expat"):
            lst = N.SA_MALE_LIST if sex == "male" else N.SA_FEMALE_LIST
        elif group == "south_asian":
            lst = N.SOUTH_ASIAN_MALE_LIST if sex == "male" else N.SOUTH_ASIAN_FEMALE_LIST
        else:
            lst = N.FILIPINO_MALE_LIST if sex == "male" else N.FILIPINO_FEMALE_LIST
        named_after = False
        given: NameEntry | None = None
        after_rate = 0.3 if group == "citizen" else 0.2 if head.country == "SA" else 0.08
        if eldest_son and head.father is not None and rng.random() < after_rate:
            given = head.father  # the eldest son named after his paternal grandfather
            named_after = True
        for _ in range(20):
            if given is not None and given.nid not in used:
                break
            given = lst.draw(rng, band)
        assert given is not None
        used.add(given.nid)
        if head.country == "IR":
            c = self.iranian(sex, birth, given=given, family=head.family, father=head.given)
            c.family_lat = head.family_lat if rng.random() < 0.7 else c.family_lat
            c.father_lat = head.given_lat if rng.random() < 0.7 else c.father_lat
            if head.title is not None:
                self.seyyed_title(c)
        elif group in ("citizen", "arab_expat"):
            c = self.arab_person(
                group,
                sex,
                birth,
                given=given,
                father=head.given,
                father_lat=head.given_lat,
                grand=head.father,
                family=head.family,
                family_lat=head.family_lat,
            )
        elif group == "south_asian":
            c = self.south_asian(sex, birth, given=given, family=head.family)
            c.family_lat = head.family_lat
        else:
            c = self.filipino(sex, birth, given=given, family=head.family, middle=wife.family)
            c.family_lat = head.family_lat
        if named_after:
            c.named_after = -2
        return c

    # --- residents of other origins ------------------------------------------------------
    def south_asian(
        self,
        sex: str,
        birth: dt.date,
        *,
        given: NameEntry | None = None,
        family: NameEntry | None = None,
    ) -> Person:
        rng = self.rng
        p = Person("SA", "south_asian", sex, birth)
        lst = N.SOUTH_ASIAN_MALE_LIST if sex == "male" else N.SOUTH_ASIAN_FEMALE_LIST
        p.given = given or lst.draw(rng)
        p.given_nat, p.given_lat = p.given.native, p.given.own_spelling(rng)
        if sex == "male" and rng.random() < 0.55:
            g2 = lst.draw(rng)
            if g2 is not p.given:
                p.given2, p.given2_lat = g2, g2.own_spelling(rng)
        p.family = family or N.SOUTH_ASIAN_FAMILY_LIST.draw(rng)
        p.family_nat, p.family_lat = p.family.native, p.family.own_spelling(rng)
        return p

    def filipino(
        self,
        sex: str,
        birth: dt.date,
        *,
        given: NameEntry | None = None,
        family: NameEntry | None = None,
        middle: NameEntry | None = None,
    ) -> Person:
        rng = self.rng
        p = Person("SA", "filipino", sex, birth)
        lst = N.FILIPINO_MALE_LIST if sex == "male" else N.FILIPINO_FEMALE_LIST
        p.given = given or lst.draw(rng)
        p.given_nat = p.given_lat = p.given.own[0]
        p.middle = middle or N.FILIPINO_FAMILY_LIST.draw(rng)
        p.middle_lat = p.middle.own_spelling(rng)
        p.family = family or N.FILIPINO_FAMILY_LIST.draw(rng)
        p.family_nat, p.family_lat = p.family.native, p.family.own_spelling(rng)
        return p

    def resident_household(self, group: str) -> list[Person]:
        rng = self.rng
        if group == "south_asian":
            kind = _pick(rng, [("single", 0.85), ("family", 0.15)])
            make = self.south_asian
        else:
            kind = _pick(rng, [("single_f", 0.5), ("single_m", 0.35), ("family", 0.15)])
            make = self.filipino
        if kind != "family":
            sex = "female" if kind == "single_f" else "male"
            if group == "south_asian":
                sex = "male" if rng.random() < 0.95 else "female"
            p = make(sex, self.birth_at_age(rng.uniform(22, 58)))
            p.role = "single"
            return [p]
        head = make("male", self.birth_at_age(rng.uniform(28, 52)))
        head.role = "father"
        wife = make("female", self.birth_at_age(rng.uniform(24, 45)))
        wife.role = "mother"
        members = [head, wife]
        self.children(head, wife, self.births(wife, 2.4, 26.0), members, group)
        return members

    # --- Iran ---------------------------------------------------------------------------
    def iranian(
        self,
        sex: str,
        birth: dt.date,
        *,
        given: NameEntry | None = None,
        family: NameEntry | None = None,
        father: NameEntry | None = None,
    ) -> Person:
        rng = self.rng
        p = Person("IR", "citizen", sex, birth)
        band = N.cohort_band(birth.year)
        lst = N.IR_MALE_LIST if sex == "male" else N.IR_FEMALE_LIST
        p.given = given or lst.draw(rng, band)
        p.given_nat, p.given_lat = self.native_of(p.given), p.given.own_spelling(rng)
        p.father = father or N.IR_MALE_LIST.draw(rng, max(0, band - 1))
        p.father_nat, p.father_lat = p.father.native, p.father.own_spelling(rng)
        p.family = family or N.IR_FAMILY_LIST.draw(rng)
        p.family_nat, p.family_lat = p.family.native, p.family.own_spelling(rng)
        return p

    def seyyed_title(self, p: Person) -> None:
        """Descendants of the Prophet: سید for men, سیده or the suffix سادات for women."""
        rng = self.rng
        if p.sex == "male":
            if rng.random() < 0.85:
                p.title = (N.SEYYED_MALE[0], _pick_spelling(rng, N.SEYYED_MALE[1]))
        else:
            x = rng.random()
            if x < 0.5:
                p.title = (N.SEYYED_FEMALE[0], _pick_spelling(rng, N.SEYYED_FEMALE[1]))
            elif x < 0.8:
                p.sadat = (N.SADAT[0], _pick_spelling(rng, N.SADAT[1]))

    def iranian_household(self) -> list[Person]:
        rng = self.rng
        kind = _pick(
            rng,
            [
                ("family", 0.66),
                ("three_gen", 0.08),
                ("couple", 0.12),
                ("single_elder", 0.08),
                ("single_young", 0.06),
            ],
        )
        if kind in ("single_young", "single_elder"):
            if kind == "single_young":
                sex = "male" if rng.random() < 0.5 else "female"
                age = rng.uniform(18, 35)
            else:
                sex = "female" if rng.random() < 0.6 else "male"
                age = self.cap_age(65 + rng.expovariate(1 / 9))
            p = self.iranian(sex, self.birth_at_age(age))
            if p.family.seyyed and rng.random() < 0.8:
                self.seyyed_title(p)
            p.role = "single"
            return [p]
        head_age = self.age_from_bins(IR_HEAD_AGES)
        head = self.iranian("male", self.birth_at_age(head_age))
        seyyed = head.family.seyyed and rng.random() < 0.8
        if seyyed:
            self.seyyed_title(head)
        head.role = "father"
        wife_age = self.wife_age(head_age, 4.0)
        wife = self.iranian("female", self.birth_at_age(wife_age))
        if wife.family.seyyed and rng.random() < 0.8:
            self.seyyed_title(wife)
        wife.role = "mother"
        members = [head, wife]
        if kind == "three_gen":
            if rng.random() < 0.5 and head_age + 22 < 98:
                gf = self.iranian(
                    "male",
                    self.birth_at_age(self.cap_age(head_age + rng.uniform(22, 35))),
                    given=head.father,
                    family=head.family,
                )
                if head.title is not None:
                    self.seyyed_title(gf)
                gf.role = "grandfather"
                members.append(gf)
            if rng.random() < 0.8 and head_age + 18 < 98:
                gm = self.iranian(
                    "female", self.birth_at_age(self.cap_age(head_age + rng.uniform(18, 30)))
                )
                gm.role = "grandmother"
                members.append(gm)
        if kind != "couple":
            y = wife.birth.year
            mean = 6.0 if y < 1955 else 4.5 if y < 1965 else 2.8 if y < 1975 else 2.0
            mean = mean if y < 1985 else 1.7 if y < 1995 else 1.6
            births = self.births(wife, mean, first_age=21.0 if y < 1970 else 25.0, at_home=25.0)
            self.children(head, wife, births, members, "citizen")
        return members

    # --- households ---------------------------------------------------------------------
    def household(self, country: str) -> list[Person]:
        rng = self.rng
        if country == "IR":
            members = self.iranian_household()
        else:
            group = _pick(
                rng,
                [
                    ("citizen", 0.45),
                    ("arab_expat", 0.17),
                    ("south_asian", 0.27),
                    ("filipino", 0.11),
                ],
            )
            if group in ("citizen", "arab_expat"):
                members = self.arab_household(group)
            else:
                members = self.resident_household(group)
        city = self.city(country)
        if country == "SA":
            line = rng.choice(N.SA_DISTRICTS)
        else:
            nat, lat = rng.choice(N.IR_STREETS)
            num = rng.randrange(1, 200)
            line = (f"{nat}، پلاک {num}", f"{lat}, No. {num}")
        landline = rng.random() < (0.3 if country == "SA" else 0.5)
        for m in members:
            m.city = city
            m.line = line
            m.home = "" if landline else None  # filled with the number once indexed
        return members


SA_HEAD_AGES = (
    (22, 29, 1.0),
    (30, 39, 1.3),
    (40, 49, 1.1),
    (50, 59, 0.8),
    (60, 69, 0.5),
    (70, 79, 0.25),
    (80, 92, 0.07),
)
IR_HEAD_AGES = (
    (22, 29, 0.7),
    (30, 39, 1.35),
    (40, 49, 1.35),
    (50, 59, 0.9),
    (60, 69, 0.65),
    (70, 79, 0.3),
    (80, 92, 0.1),
)


def _pick_spelling(rng: Random, spellings: Sequence[str]) -> str:
    return spellings[0] if rng.random() < 0.5 else rng.choice(spellings)


def _cum(ws: Sequence[float]) -> list[float]:
    out, acc = [], 0.0
    for w in ws:
        acc += w
        out.append(acc)
    return out


def _bis(cw: Sequence[float], u: float) -> int:
    return min(bisect.bisect_right(cw, u * cw[-1]), len(cw) - 1)


# --------------------------------------------------------------------------------------------
# identifiers and phones (unique per person through affine permutations of the index)
# --------------------------------------------------------------------------------------------
class Permutation:
    """A keyed bijection of [0, a*b): a 4-round mixed-radix Feistel network, so that numbers
    given to consecutive persons (members of one household) look unrelated."""

    def __init__(self, seed: int, label: str, a: int, b: int) -> None:
        h = hashlib.blake2b(f"{seed}:{label}".encode(), digest_size=32).digest()
        self.keys = [int.from_bytes(h[i : i + 8], "big") for i in range(0, 32, 8)]
        self.a = a
        self.b = b

    def __call__(self, x: int) -> int:
        left, right = divmod(x % (self.a * self.b), self.b)  # left in Z_a, right in Z_b
        size_l, size_r = self.a, self.b
        for k in self.keys:
            f = ((right * 0x9E3779B1 + k) ^ (k >> 17)) * 0x85EBCA6B
            f ^= f >> 29
            left, right = right, (left + f) % size_l
            size_l, size_r = size_r, size_l
        return left * size_r + right


class Numbers:
    def __init__(self, seed: int) -> None:
        self.sa = Permutation(seed, "sa-id", 10**4, 10**4)
        self.ir = Permutation(seed, "ir-id", 10**4, 10**5)
        self.mob = Permutation(seed, "mobile", 10**3, 10**4)
        self.land = Permutation(seed, "landline", 10**3, 10**4)

    def national_id(self, idx: int, country: str, group: str) -> str:
        if country == "SA":
            body = ("1" if group == "citizen" else "2") + f"{self.sa(idx):08d}"
            return body + P.luhn_check_digit(body)
        k = idx
        while True:
            body = f"{self.ir(k):09d}"
            code = body + P.iran_check_digit(body)
            if len(set(code)) > 1:
                return code
            k += 10**9 // 2

    def mobile(self, key: int, country: str) -> str:
        sub = f"{self.mob(key):07d}"
        h = (key * 2654435761 >> 7) & 0xFFFF
        if country == "SA":
            return SA_MOBILE[h % len(SA_MOBILE)] + sub
        return IR_MOBILE[h % len(IR_MOBILE)] + sub

    def landline(self, key: int, city: City, country: str) -> str:
        sub = self.land(key)
        if country == "SA":
            return f"0{city.area}{2 + sub % 8}{sub // 10:06d}"
        return f"0{city.area}{2 + sub % 8}{sub:07d}"


SA_MOBILE = ("50", "53", "55", "54", "56", "58", "59", "57", "50", "55")
IR_MOBILE = (
    "912",
    "913",
    "915",
    "916",
    "917",
    "919",
    "911",
    "914",
    "935",
    "936",
    "937",
    "938",
    "939",
    "930",
    "933",
    "901",
    "902",
    "903",
    "990",
    "921",
)


# --------------------------------------------------------------------------------------------
# facilities
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Facility:
    id: str
    country: str
    city: str  # native city name
    kind: str
    scripts: tuple[float, float, float, float]  # P(native), P(latin), P(both), P(mixed)
    caps: bool
    text: float
    address: float


SCRIPT_PROFILES = {
    ("SA", "public"): (0.50, 0.12, 0.34, 0.04),
    ("SA", "private"): (0.15, 0.50, 0.31, 0.04),
    ("IR", "public"): (0.86, 0.03, 0.09, 0.02),
    ("IR", "private"): (0.66, 0.14, 0.17, 0.03),
}


def make_facilities(cfg: Config, country: str) -> list[Facility]:
    rng = Random(f"registry-eval:facilities:{cfg.seed}:{country}")
    cities = N.SA_CITY_LIST if country == "SA" else N.IR_CITY_LIST
    cw = _cum([c.weight for c in cities])
    out = []
    for i in range(cfg.facilities_per_country):
        city = cities[_bis(cw, rng.random())] if i >= len(cities) else cities[i]
        kind = "public" if rng.random() < 0.65 else "private"
        out.append(
            Facility(
                id=f"{country.lower()}-fac-{i + 1:04d}",
                country=country,
                city=city.native,
                kind=kind,
                scripts=SCRIPT_PROFILES[(country, kind)],
                caps=rng.random() < cfg.rates.facility_caps,
                text=rng.choice((0.0, 0.5, 0.9, 1.0)),
                address=rng.choice((0.4, 0.7, 0.95)),
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# rendering one registration
# --------------------------------------------------------------------------------------------
class Part:
    __slots__ = ("entry", "join", "lat", "nat", "role")

    def __init__(
        self, role: str, entry: NameEntry | None, nat: str, lat: str, join: bool = False
    ) -> None:
        self.role = role
        self.entry = entry
        self.nat = nat
        self.lat = lat
        self.join = join  # merged into the next given element (nasab particle, Seyyed title)


_VARIABLE_ROLES = {"given", "given2", "father", "grand", "family", "middle", "title"}


def canonical_parts(p: Person) -> list[Part]:
    parts: list[Part] = []
    if p.title is not None:
        parts.append(Part("title", None, p.title[0], p.title[1], join=True))
    parts.append(Part("given", p.given, p.given_nat, p.given_lat))
    if p.sadat is not None:
        parts.append(Part("sadat", None, p.sadat[0], p.sadat[1]))
    if p.given2 is not None:
        parts.append(Part("given2", p.given2, p.given2.native, p.given2_lat))
    if p.country == "SA" and p.group in ("citizen", "arab_expat"):
        assert p.father is not None and p.grand is not None
        parts.append(Part("father", p.father, p.father_nat, p.father_lat))
        parts.append(Part("grand", p.grand, p.grand_nat, p.grand_lat))
    if p.middle is not None:
        parts.append(Part("middle", p.middle, p.middle.native, p.middle_lat))
    parts.append(Part("family", p.family, p.family_nat, p.family_lat))
    return parts


def chain_partial(rng: Random, p: Person, parts: list[Part]) -> list[Part] | None:
    roles = [x.role for x in parts]
    if "father" in roles:
        x = rng.random()
        if x < 0.45:
            drop = {"grand"}
        elif x < 0.88:
            drop = {"father", "grand"}
        else:
            drop = {"family"}
        return [q for q in parts if q.role not in drop]
    options: list[str] = []
    if "title" in roles:
        options.append("title")
    if "sadat" in roles:
        options.append("sadat")
    if p.given.parts and len(p.given.parts) >= 1:
        options.append("compound")
    if "given2" in roles:
        options.append("given2")
    if "middle" in roles:
        options.append("middle")
    if not options:
        return None
    what = rng.choice(options)
    if what == "compound":
        comp = rng.choice(p.given.parts)
        out = []
        for q in parts:
            if q.role == "given":
                q = Part("given", comp, comp.native, comp.own_spelling(rng))
            out.append(q)
        return out
    if what == "given2" and p.given.native == "محمد" and rng.random() < 0.6:
        return [q for q in parts if q.role != "given"]  # "Muhammad" as a prefix, left out
    if what == "middle" and rng.random() < 0.35:
        return [
            Part("middle", q.entry, q.nat, q.lat[0] + ".") if q.role == "middle" else q
            for q in parts
        ]
    return [q for q in parts if q.role != what]


_NASAB_LAT: dict[str, tuple[tuple[str, float], ...]] = {
    "male": (("bin", 0.6), ("Bin", 0.15), ("ibn", 0.1), ("b.", 0.05), ("ben", 0.05)),
    "female": (("bint", 0.8), ("Bint", 0.15), ("bt.", 0.05)),
}


def nasab(rng: Random, p: Person, parts: list[Part]) -> list[Part] | None:
    """bin/bint between the names of the chain (the first link, or every link)."""
    roles = [x.role for x in parts]
    if "father" not in roles:
        return None
    join = rng.random() < 0.5
    every = rng.random() < 0.6
    out: list[Part] = []
    first = True
    for q in parts:
        if q.role == "father" or (q.role == "grand" and every):
            female = first and p.sex == "female"
            lat = _pick(rng, _NASAB_LAT["female" if female else "male"])
            nat = "بنت" if female else ("بن" if rng.random() < 0.93 else "ابن")
            out.append(Part("nasab", None, nat, lat, join=join))
            first = False
        out.append(q)
    return out


def kunya(rng: Random, p: Person, parts: list[Part]) -> list[Part] | None:
    """Abu/Umm + the eldest son's name, instead of or before the given name."""
    if p.son is None or p.country != "SA" or p.group not in ("citizen", "arab_expat"):
        return None
    son = p.son
    if p.sex == "male":
        nat_p = _pick(rng, (("أبو", 0.6), ("ابو", 0.3), ("أبي", 0.1)))
        lat_p = _pick(rng, (("Abu", 0.6), ("Abou", 0.15), ("Abo", 0.15), ("Abi", 0.1)))
    else:
        nat_p = _pick(rng, (("أم", 0.7), ("ام", 0.3)))
        lat_p = _pick(rng, (("Umm", 0.55), ("Um", 0.2), ("Om", 0.15), ("Oum", 0.1)))
    sep = "-" if rng.random() < 0.1 else " "
    k = Part("kunya", None, f"{nat_p} {son.given_nat}", f"{lat_p}{sep}{son.given_lat}")
    if rng.random() < 0.4:
        return [k if q.role == "given" else q for q in parts]
    out: list[Part] = []
    for q in parts:
        if q.role == "given":
            out.append(k)
        out.append(q)
    return out


class Draft:
    """One HumanName being written: its given elements and family name, in one script."""

    __slots__ = ("family", "given", "script", "text_first")

    def __init__(self, script: str) -> None:
        self.script = script
        self.given: list[str] = []
        self.family: str | None = None
        self.text_first = False

    def fields(self) -> list[tuple[str, int]]:
        out = [("given", i) for i in range(len(self.given))]
        if self.family:
            out.append(("family", 0))
        return out

    def get(self, f: tuple[str, int]) -> str:
        return self.given[f[1]] if f[0] == "given" else (self.family or "")

    def set(self, f: tuple[str, int], v: str) -> None:
        if f[0] == "given":
            self.given[f[1]] = v
        else:
            self.family = v


def build_draft(parts: list[Part], scripts: list[str], script: str) -> Draft:
    d = Draft(script)
    pending = ""
    for q, s in zip(parts, scripts, strict=True):
        v = q.nat if s == "native" else q.lat
        if q.role == "family":
            d.family = v
            continue
        if q.role == "sadat" and d.given:
            d.given[-1] = f"{d.given[-1]} {v}"
            continue
        if q.join:
            pending = f"{pending}{v} "
            continue
        d.given.append(pending + v)
        pending = ""
    if pending:
        d.given.append(pending.strip())
    return d


def name_json(d: Draft, with_text: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"use": "official"}
    if with_text or d.text_first:
        if d.text_first and d.family:
            sep = "، " if d.script == "native" else ", "
            text = d.family + sep + " ".join(d.given)
        else:
            text = " ".join([*d.given, *([d.family] if d.family else [])])
        out["text"] = text
    if d.family:
        out["family"] = d.family
    if d.given:
        out["given"] = list(d.given)
    return out


_BABY_SA = {"male": ("مولود", "طفل"), "female": ("مولودة", "طفلة")}
_BABY_IR = {"male": ("نوزاد پسر", "نوزاد"), "female": ("نوزاد دختر", "نوزاد")}
_BABY_LAT = {"male": ("Baby Boy", "Baby", "Male Infant"), "female": ("Baby Girl", "Baby")}


class Renderer:
    def __init__(self, cfg: Config, numbers: Numbers) -> None:
        self.cfg = cfg
        self.rates = cfg.rates
        self.numbers = numbers
        self.facilities = {
            c: make_facilities(cfg, c)
            for c in (("SA", "IR") if cfg.country == "mixed" else (cfg.country,))
        }
        self.by_city: dict[tuple[str, str], list[Facility]] = {}
        for c, fs in self.facilities.items():
            for f in fs:
                self.by_city.setdefault((c, f.city), []).append(f)

    def facilities_for(self, rng: Random, p: Person, n: int) -> list[Facility]:
        local = self.by_city.get((p.country, p.city.native), [])
        everywhere = self.facilities[p.country]
        out: list[Facility] = []
        for _ in range(n * 6):
            if len(out) == n:
                break
            pool = local if local and rng.random() < 0.8 else everywhere
            f = rng.choice(pool)
            if f not in out:
                out.append(f)
        return out

    def render(
        self, rng: Random, p: Person, k: int, fac: Facility, persons: dict[int, Person]
    ) -> tuple[dict[str, Any], list[str]]:
        r = self.rates
        cls: list[str] = []
        clean = rng.random() < r.clean
        persian = p.country == "IR"
        infant = (self.cfg.ref_date - p.birth).days < 365

        # --- script ---------------------------------------------------------------------
        if p.latin_only:
            script = "latin"
        else:
            script = _pick(
                rng, list(zip(("native", "latin", "both", "mixed"), fac.scripts, strict=True))
            )

        # --- the name's structure ------------------------------------------------------------
        parts = canonical_parts(p)
        id_parent_used = False
        parent: Person | None = None
        if infant and not clean and rng.random() < r.id_parent:
            mother = persons.get(p.mother_id)
            father = persons.get(p.father_id)
            parent = (
                mother if mother is not None and (father is None or rng.random() < 0.8) else father
            )
            id_parent_used = parent is not None
        baby = id_parent_used and parent is not None and rng.random() < r.newborn_name
        if baby and parent is not None:
            parts = self.baby_parts(rng, p, parent, parts)
            cls.append("newborn_name")
        elif not clean:
            if rng.random() < r.chain_partial:
                new = chain_partial(rng, p, parts)
                if new is not None:
                    parts = new
                    cls.append("chain_partial")
            if rng.random() < r.nasab and p.country == "SA":
                new = nasab(rng, p, parts)
                if new is not None:
                    parts = new
                    cls.append("nasab")
            if rng.random() < r.kunya:
                new = kunya(rng, p, parts)
                if new is not None:
                    parts = new
                    cls.append("kunya")

        # --- the scripts of each part, and romanisation variation ----------------------------
        scripts_nat = ["native"] * len(parts)
        scripts_lat = ["latin"] * len(parts)
        drafts: list[Draft] = []
        if script in ("native", "both"):
            drafts.append(build_draft(parts, scripts_nat, "native"))
        if script in ("latin", "both"):
            drafts.append(build_draft(parts, scripts_lat, "latin"))
        if script == "mixed":
            fam_native = rng.random() < 0.5
            sc = [("native" if (q.role == "family") == fam_native else "latin") for q in parts]
            drafts.append(build_draft(parts, sc, "mixed"))
        romanised = not clean and rng.random() < r.romanisation
        if romanised and self.romanise(rng, p, parts, drafts, persian):
            cls.append("romanisation")

        # --- order ----------------------------------------------------------------------
        if not clean and rng.random() < r.name_order:
            d = rng.choice(drafts)
            if d.family and d.given:
                if rng.random() < 0.6:
                    fam = d.family
                    d.family = d.given[0]
                    d.given = [fam, *d.given[1:]]
                else:
                    d.text_first = True
                cls.append("name_order")

        # --- typing: OCR, keyboard, case and spaces ----------------------------------------------
        if not clean:
            for name, fn in (("ocr", P.ocr), ("keyboard", None), ("case_space", P.case_space)):
                if rng.random() < getattr(r, name):
                    d = rng.choice(drafts)
                    fs = d.fields()
                    if not fs:
                        continue
                    f = rng.choice(fs)
                    old = d.get(f)
                    new_s = P.keyboard(rng, old, persian) if fn is None else fn(rng, old)
                    if new_s is not None and new_s.strip() and new_s != old:
                        d.set(f, new_s)
                        cls.append(name)
            if fac.caps and any(d.script != "native" for d in drafts):
                changed = False
                for d in drafts:
                    if d.script == "native":
                        continue
                    for f in d.fields():
                        old = d.get(f)
                        up = "".join(c.upper() if c.isascii() else c for c in old)
                        if up != old:
                            d.set(f, up)
                            changed = True
                if changed and "case_space" not in cls:
                    cls.append("case_space")

        with_text = rng.random() < fac.text
        res: dict[str, Any] = {"resourceType": "Patient", "id": _record_id(self.cfg.seed, p.idx, k)}

        # --- identifiers --------------------------------------------------------------------
        idents: list[dict[str, Any]] = []
        nid: str | None = p.nid
        if id_parent_used and parent is not None:
            nid = parent.nid
            cls.append("id_parent")
        elif not clean:
            x = rng.random()
            if x < r.id_missing:
                nid = None
                cls.append("id_missing")
            elif x < r.id_missing + r.id_typo:
                t = P.id_typo(rng, p.nid, p.country)
                if t is not None:
                    nid = t
                    cls.append("id_typo")
        if nid is not None:
            idents.append(
                {
                    "use": "official",
                    "type": {"coding": [{"system": V2_0203, "code": "NI"}]},
                    "system": SA_ID_SYSTEM if p.country == "SA" else IR_ID_SYSTEM,
                    "value": nid,
                }
            )
        idents.append(
            {
                "use": "usual",
                "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
                "system": MRN_SYSTEM + fac.id,
                "value": _mrn(self.cfg.seed, p.idx, k),
            }
        )
        res["identifier"] = idents
        res["name"] = [name_json(d, with_text) for d in drafts]

        # --- telecom --------------------------------------------------------------------------
        telecom: list[dict[str, Any]] = []
        phone = p.phone
        fmt = "national"
        if not clean:
            x = rng.random()
            if x < r.phone_missing:
                phone = None
                cls.append("phone_missing")
            elif x < r.phone_missing + r.phone_changed and phone is not None:
                phone = p.alt_phone
                cls.append("phone_changed")
            if phone is not None and rng.random() < r.phone_format:
                fmt = P.other_phone_format(rng, p.country, script != "latin")
                cls.append("phone_format")
        if phone is not None:
            telecom.append(
                {"system": "phone", "value": P.format_phone(phone, p.country, fmt), "use": "mobile"}
            )
        if p.home and rng.random() < 0.3:
            telecom.append({"system": "phone", "value": p.home, "use": "home"})
        if telecom:
            res["telecom"] = telecom

        # --- sex ----------------------------------------------------------------------------------
        gender: str | None = p.sex
        if not clean:
            x = rng.random()
            if x < r.sex_missing:
                gender = None if rng.random() < 0.7 else "unknown"
                cls.append("sex_missing")
            elif x < r.sex_missing + r.sex_wrong:
                gender = "female" if p.sex == "male" else "male"
                cls.append("sex_wrong")
        if gender is not None:
            res["gender"] = gender

        # --- birth date -------------------------------------------------------------------
        bd = p.birth.isoformat()
        if not clean:
            x = rng.random()
            a, b, c = r.date_year_only, r.date_typo, r.date_calendar
            out: str | None = None
            name = ""
            if x < a:
                out, name = P.date_year_only(rng, p.birth, p.country), "date_year_only"
            elif x < a + b:
                out, name = P.date_typo(rng, p.birth, self.cfg.ref_date), "date_typo"
            elif x < a + b + c and (p.country == "IR" or p.group == "citizen"):
                # Hijri dates are those of Saudi citizens' civil records; residents' are Gregorian
                if p.country == "SA":
                    out = P.hijri_as_gregorian(p.birth)
                else:
                    out = P.jalali_as_gregorian(p.birth)
                name = "date_calendar"
            if out is not None and out != bd:
                bd = out
                cls.append(name)
        res["birthDate"] = bd

        # --- address, contact, organisation --------------------------------------------
        if rng.random() < fac.address:
            native_addr = script in ("native", "both", "mixed") and rng.random() < 0.85
            city = p.city.native if native_addr else p.city.latin[0]
            addr: dict[str, Any] = {"use": "home"}
            if p.line is not None and rng.random() < 0.5:
                addr["line"] = [p.line[0] if native_addr else p.line[1]]
            addr["city"] = city
            addr["country"] = p.country
            res["address"] = [addr]
        if p.country == "IR" and p.father is not None and rng.random() < 0.5:
            fname = p.father_nat if script != "latin" else p.father_lat
            res["contact"] = [
                {
                    "relationship": [{"coding": [{"system": V3_ROLE, "code": "FTH"}]}],
                    "name": {"given": [fname]},
                }
            ]
        res["managingOrganization"] = {"reference": f"Organization/{fac.id}"}
        cls.sort(key=P.CLASSES.index)
        return res, cls

    def baby_parts(self, rng: Random, p: Person, mother: Person, parts: list[Part]) -> list[Part]:
        """A newborn registered before naming: Baby Girl / B/O <mother> / مولودة / نوزاد."""
        nat = rng.choice(_BABY_IR[p.sex] if p.country == "IR" else _BABY_SA[p.sex])
        if mother.sex == "female" and rng.random() < 0.4:
            lat = f"B/O {mother.given_lat}" if rng.random() < 0.6 else f"Baby of {mother.given_lat}"
            nat = f"{'فرزند' if p.country == 'IR' else 'مولود'} {mother.given_nat}"
        else:
            lat = rng.choice(_BABY_LAT[p.sex])
        baby = Part("given", None, nat, lat)
        return [baby] + [q for q in parts if q.role == "family"]

    def romanise(
        self,
        rng: Random,
        p: Person,
        parts: list[Part],
        drafts: list[Draft],
        persian: bool,
    ) -> bool:
        """Another published or common spelling of one or two name parts, in one script."""
        idx = [i for i, q in enumerate(parts) if q.role in _VARIABLE_ROLES]
        if not idx:
            return False
        targets = rng.sample(idx, 2 if len(idx) > 1 and rng.random() < 0.3 else 1)
        d = rng.choice(drafts)
        changed = False
        new_parts = list(parts)
        for i in targets:
            q = parts[i]
            if d.script == "latin" or (d.script == "mixed" and rng.random() < 0.5):
                if q.role == "title":
                    opts = N.SEYYED_MALE[1] if p.sex == "male" else N.SEYYED_FEMALE[1]
                    alt: str | None = rng.choice([o for o in opts if o != q.lat] or [q.lat])
                elif q.entry is not None:
                    alt = q.entry.other_spelling(rng, q.lat)
                else:
                    alt = None
                if alt and alt != q.lat:
                    new_parts[i] = Part(q.role, q.entry, q.nat, alt, q.join)
                    changed = True
            else:
                alts = q.entry.native_alts if q.entry is not None else ()
                alt = P.native_variant(rng, q.nat, persian, alts)
                if alt and alt != q.nat:
                    new_parts[i] = Part(q.role, q.entry, alt, q.lat, q.join)
                    changed = True
        if changed:
            if d.script == "mixed":
                fam_native = bool(d.family) and P.is_arabic_script(d.family or "")
                sc = [
                    ("native" if (q.role == "family") == fam_native else "latin") for q in new_parts
                ]
            else:
                sc = [d.script] * len(new_parts)
            nd = build_draft(new_parts, sc, d.script)
            d.given, d.family = nd.given, nd.family
        return changed


def _record_id(seed: int, idx: int, k: int) -> str:
    return hashlib.blake2b(f"rec:{seed}:{idx}:{k}".encode(), digest_size=10).hexdigest()


def _mrn(seed: int, idx: int, k: int) -> str:
    h = hashlib.blake2b(f"mrn:{seed}:{idx}:{k}".encode(), digest_size=8).digest()
    return f"{int.from_bytes(h, 'big') % 10**8:08d}"


# --------------------------------------------------------------------------------------------
# chunks
# --------------------------------------------------------------------------------------------
@dataclass
class ChunkResult:
    chunk: int
    patients: bytes
    truth: str
    variations: str
    persons: str
    hard_negatives: str
    counts: Counter[str]
    keys: tuple[bytes, bytes, bytes]


def _country_for(rng: Random, cfg: Config) -> str:
    if cfg.country == "mixed":
        return "SA" if rng.random() < cfg.mixed_sa_share else "IR"
    return cfg.country


def build_persons(cfg: Config, chunk: int, numbers: Numbers) -> tuple[list[Person], Random]:
    rng = Random(f"registry-eval:{cfg.seed}:{chunk}")
    start = chunk * CHUNK_PERSONS
    n = min(CHUNK_PERSONS, cfg.persons - start)
    factory = PersonFactory(rng, cfg)
    persons: list[Person] = []
    hh = 0
    while len(persons) < n:
        country = _country_for(rng, cfg)
        members = factory.household(country)[: n - len(persons)]
        hid = f"hh-{chunk:05d}-{hh:05d}"
        hh += 1
        head: Person | None = None
        mother: Person | None = None
        prev_child: Person | None = None
        base = start + len(persons)
        for j, m in enumerate(members):
            m.idx = base + j
            m.household = hid
        for m in members:
            if m.role == "father":
                head = m
            elif m.role == "mother":
                mother = m
            elif m.role == "child":
                m.father_id = head.idx if head is not None else -1
                m.mother_id = mother.idx if mother is not None else -1
                if m.twin_of == -2 and prev_child is not None:
                    m.twin_of = prev_child.idx
                if m.named_after == -2:
                    gf = next((x for x in members if x.role == "grandfather"), None)
                    m.named_after = gf.idx if gf is not None else -1
                prev_child = m
        for m in members:
            if m.son is not None and m.son.idx < 0:
                m.son = None  # the son was cut off at the end of the chunk
        persons.extend(members)
        # identifiers and phones need the indices
        home = None
        if members and members[0].home is not None:
            home = numbers.landline(members[0].idx, members[0].city, members[0].country)
        adults = [m for m in members if (cfg.ref_date - m.birth).days >= 15 * 365]
        for m in members:
            m.nid = numbers.national_id(m.idx, m.country, m.group)
            m.home = home
            age = (cfg.ref_date - m.birth).days / 365.2425
            if age >= 15:
                m.mobile = numbers.mobile(m.idx, m.country)
            m.alt_phone = numbers.mobile(m.idx + 5_000_000, m.country)
        for m in members:
            age = (cfg.ref_date - m.birth).days / 365.2425
            if m.mobile is not None and not (age >= 75 and head is not None and rng.random() < 0.5):
                m.phone = m.mobile
            else:
                carer = mother if mother is not None and rng.random() < 0.7 else head
                if carer is None or carer.mobile is None or carer is m:
                    carer = adults[0] if adults else None
                m.phone = carer.mobile if carer is not None else m.alt_phone
    return persons, rng


def _name_strings(p: Person) -> tuple[str, str]:
    parts = canonical_parts(p)
    nat = " ".join(q.nat for q in parts if q.nat)
    lat = " ".join(q.lat for q in parts if q.lat)
    return nat, lat


def build_chunk(cfg: Config, chunk: int) -> ChunkResult:
    numbers = Numbers(cfg.seed)
    renderer = Renderer(cfg, numbers)
    persons, rng = build_persons(cfg, chunk, numbers)
    by_idx = {p.idx: p for p in persons}
    counts: Counter[str] = Counter()
    records: list[tuple[bytes, str, str, str]] = []
    id_parent_pairs: set[tuple[int, int]] = set()
    reg_values = [v for v, _ in REGISTRATIONS]
    reg_cw = _cum([w for _, w in REGISTRATIONS])
    for p in persons:
        n = reg_values[_bis(reg_cw, rng.random())]
        facs = renderer.facilities_for(rng, p, n)
        for k, fac in enumerate(facs):
            res, cls = renderer.render(rng, p, k, fac, by_idx)
            names_ = res["name"]
            script = _script_of(names_)
            counts[f"script:{script}"] += 1
            counts["records"] += 1
            if not cls:
                counts["clean"] += 1
            for c in cls:
                counts[f"class:{c}"] += 1
            if "id_parent" in cls:
                for ident in res["identifier"]:
                    if ident["type"]["coding"][0]["code"] == "NI":
                        for q in (p.mother_id, p.father_id):
                            if q in by_idx and by_idx[q].nid == ident["value"]:
                                id_parent_pairs.add((p.idx, q))
            records.append((_dumps(res), res["id"], p.pid, ";".join(cls)))
        counts[f"registrations:{len(facs)}"] += 1
    rng.shuffle(records)
    patients = b"".join(r[0] + b"\n" for r in records)
    truth = "".join(f"{r[1]},{r[2]}\n" for r in records)
    variations = "".join(f"{r[1]},{r[2]},{r[3]}\n" for r in records)

    pbuf = io.StringIO()
    w = csv.writer(pbuf, lineterminator="\n")
    hbuf = io.StringIO()
    hw = csv.writer(hbuf, lineterminator="\n")
    k1 = array.array("q")
    k2 = array.array("q")
    k3 = array.array("q")
    for p in persons:
        nat, lat = _name_strings(p)
        w.writerow(
            [
                p.pid,
                p.country,
                p.group,
                p.sex,
                p.birth.isoformat(),
                p.nid,
                p.household,
                p.role,
                by_idx[p.father_id].pid if p.father_id in by_idx else "",
                by_idx[p.mother_id].pid if p.mother_id in by_idx else "",
                by_idx[p.twin_of].pid if p.twin_of in by_idx else "",
                nat,
                lat,
            ]
        )
        counts[f"persons:{p.country}:{p.group}"] += 1
        counts["persons"] += 1
        age = (cfg.ref_date - p.birth).days // 365
        counts[f"age:{min(age // 10 * 10, 90):02d}"] += 1
        counts[f"sex:{p.sex}"] += 1
        if (cfg.ref_date - p.birth).days < 365:
            counts["infants"] += 1
        if p.twin_of in by_idx:
            hw.writerow([by_idx[p.twin_of].pid, p.pid, "twin"])
            counts["hard:twin"] += 1
        if p.named_after in by_idx:
            hw.writerow([by_idx[p.named_after].pid, p.pid, "named_after_grandfather"])
            counts["hard:named_after_grandfather"] += 1
        g = p.given.nid
        f = p.family.nid
        k1.append((g * 8192 + f) * 80000 + (p.birth.toordinal() - 690000))
        k3.append((g * 8192 + f) * 200 + (p.birth.year - 1880))
        if p.father is not None and p.country == "SA" and p.group in ("citizen", "arab_expat"):
            k2.append((g * 8192 + p.father.nid) * 8192 + f)
    for child, parent in sorted(id_parent_pairs):
        hw.writerow([by_idx[parent].pid, by_idx[child].pid, "id_parent"])
        counts["hard:id_parent"] += 1
    return ChunkResult(
        chunk,
        patients,
        truth,
        variations,
        pbuf.getvalue(),
        hbuf.getvalue(),
        counts,
        (k1.tobytes(), k2.tobytes(), k3.tobytes()),
    )


def _script_of(names_: list[dict[str, Any]]) -> str:
    if len(names_) == 2:
        return "both"
    n = names_[0]
    fields_ = [*n.get("given", []), n.get("family", "")]
    ar = [P.is_arabic_script(s) for s in fields_ if s]
    if all(ar):
        return "native"
    if not any(ar):
        return "latin"
    return "mixed"


_WORKER_CFG: Config | None = None


def _init_worker(cfg: Config) -> None:
    global _WORKER_CFG
    _WORKER_CFG = cfg


def _work(chunk: int) -> ChunkResult:
    assert _WORKER_CFG is not None
    return build_chunk(_WORKER_CFG, chunk)


def iter_chunks(cfg: Config, workers: int) -> Iterator[ChunkResult]:
    n_chunks = (cfg.persons + CHUNK_PERSONS - 1) // CHUNK_PERSONS
    if workers <= 1 or n_chunks <= 1:
        for c in range(n_chunks):
            yield build_chunk(cfg, c)
        return
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg,)) as pool:
        yield from pool.imap(_work, range(n_chunks), chunksize=1)


def _collisions(raw: list[bytes]) -> dict[str, int]:
    import numpy as np

    arr = np.frombuffer(b"".join(raw), dtype=np.int64)
    if arr.size == 0:
        return {"persons": 0, "persons_sharing": 0, "groups": 0, "largest_group": 0}
    _, counts = np.unique(arr, return_counts=True)
    shared = counts[counts > 1]
    return {
        "persons": int(arr.size),
        "persons_sharing": int(shared.sum()),
        "groups": int(shared.size),
        "largest_group": int(counts.max()),
    }


def generate(cfg: Config, out: Path, workers: int = 1) -> dict[str, Any]:
    """Write patients.ndjson, truth.csv, variations.csv, persons.csv, hard_negatives.csv and
    manifest.json to ``out``; returns the manifest."""
    if cfg.country not in ("SA", "IR", "mixed"):
        raise ValueError("country must be SA, IR or mixed")
    if cfg.persons < 1:
        raise ValueError("persons must be at least 1")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    counts: Counter[str] = Counter()
    keys: tuple[list[bytes], list[bytes], list[bytes]] = ([], [], [])
    with (
        open(out / "patients.ndjson", "wb") as fp,
        open(out / "truth.csv", "w", encoding="utf-8", newline="") as ft,
        open(out / "variations.csv", "w", encoding="utf-8", newline="") as fv,
        open(out / "persons.csv", "w", encoding="utf-8", newline="") as fpp,
        open(out / "hard_negatives.csv", "w", encoding="utf-8", newline="") as fh,
    ):
        ft.write("patient_id,person_id\n")
        fv.write("patient_id,person_id,classes\n")
        fpp.write(
            "person_id,country,group,sex,birth_date,national_id,household_id,role,"
            "father_id,mother_id,twin_of,name_native,name_latin\n"
        )
        fh.write("person_a,person_b,kind\n")
        for res in iter_chunks(cfg, workers):
            fp.write(res.patients)
            ft.write(res.truth)
            fv.write(res.variations)
            fpp.write(res.persons)
            fh.write(res.hard_negatives)
            counts.update(res.counts)
            for i in range(3):
                keys[i].append(res.keys[i])
    manifest = make_manifest(cfg, counts, keys)
    (out / "manifest.json").write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    manifest["_elapsed_seconds"] = round(time.perf_counter() - t0, 2)
    return manifest


def make_manifest(
    cfg: Config, counts: Counter[str], keys: tuple[list[bytes], list[bytes], list[bytes]]
) -> dict[str, Any]:
    records = counts["records"]

    def section(prefix: str) -> dict[str, int]:
        return {k[len(prefix) :]: v for k, v in sorted(counts.items()) if k.startswith(prefix)}

    classes = {c: counts.get(f"class:{c}", 0) for c in P.CLASSES}
    return {
        "generator": GENERATOR,
        "version": VERSION,
        "parameters": {
            "country": cfg.country,
            "persons": cfg.persons,
            "seed": cfg.seed,
            "ref_date": cfg.ref_date.isoformat(),
            "chunk_persons": CHUNK_PERSONS,
            "facilities_per_country": cfg.facilities_per_country,
            "mixed_sa_share": cfg.mixed_sa_share if cfg.country == "mixed" else None,
            "registrations_per_person": {str(v): w for v, w in REGISTRATIONS},
            "rates": cfg.rates.as_dict(),
        },
        "identifier_systems": {
            "SA": SA_ID_SYSTEM,
            "IR": IR_ID_SYSTEM,
            "mrn": MRN_SYSTEM + "{facility}",
        },
        "counts": {
            "persons": counts["persons"],
            "records": records,
            "clean_records": counts["clean"],
            "classes": classes,
            "class_rates": {
                c: round(v / records, 4) if records else 0.0 for c, v in classes.items()
            },
            "scripts": section("script:"),
            "registrations_per_person": section("registrations:"),
            "persons_by_group": section("persons:"),
            "persons_by_sex": section("sex:"),
            "persons_by_age_decade": section("age:"),
            "infants": counts["infants"],
            "hard_negative_pairs": section("hard:"),
        },
        "name_collisions": {
            "given+family+birthDate": _collisions(keys[0]),
            "given+father+family (Arab chains)": _collisions(keys[1]),
            "given+family+birth year": _collisions(keys[2]),
        },
        "name_lists": N.name_stats(),
    }
