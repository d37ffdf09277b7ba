"""Facilities of the health system: primary care (and Iran's rural health houses), hospitals,
mental health services, labs and pharmacies, with their staff, catchments and capacities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random
from typing import Any

from takamul.synth.fhir import (
    EXT,
    LANG_EXT,
    LOC_PHYS,
    ORG_TYPE,
    SID,
    SNOMED,
    TAKAMUL_CS,
    V3_ROLE,
    cc,
    coding,
    ext,
    ref,
)
from takamul.synth.geo import offset
from takamul.synth.names import NamePool, pool
from takamul.synth.sampling import Weighted

__all__ = ["Emit", "Facility", "Network", "Region", "build_network"]

Emit = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Region:
    code: str
    name: str
    native: str
    city: str
    city_native: str
    share: float
    lat: float
    lon: float
    urban: float
    remote: bool

    @property
    def location_id(self) -> str:
        return f"region-{self.code}"


@dataclass(slots=True)
class Facility:
    fid: str
    kind: str
    region: Region
    urban: bool
    lat: float
    lon: float
    name: str
    native: str
    capacity: int
    # (role key, PractitionerRole id, Practitioner id) of the staff, e.g. ("gp", "prr-7", "pr-7")
    staff: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def org_id(self) -> str:
        return f"org-{self.fid}"

    @property
    def loc_id(self) -> str:
        return f"loc-{self.fid}"

    @property
    def service_id(self) -> str:
        return f"hcs-{self.fid}"

    def role(self, key: str, rng: Random) -> str | None:
        """A PractitionerRole id of staff with role ``key`` (first choice), else any staff."""
        matches = [s[1] for s in self.staff if s[0] == key] or [s[1] for s in self.staff]
        return matches[int(rng.random() * len(matches))] if matches else None


# kind: (English label, Arabic label, Persian label, v3 RoleCode, role code display,
#        SNOMED service type, service display)
_KINDS: dict[str, tuple[str, str, str, str, str, str, str]] = {
    "phc": (
        "Primary Health Care Centre",
        "مركز الرعاية الصحية الأولية",
        "مرکز خدمات جامع سلامت",
        "PC",
        "primary care clinic",
        "394814009",
        "General practice",
    ),
    "health_house": (
        "Rural Health House",
        "بيت الصحة الريفي",
        "خانه بهداشت",
        "COMM",
        "Community Location",
        "394814009",
        "General practice",
    ),
    "hospital": (
        "General Hospital",
        "مستشفى عام",
        "بیمارستان عمومی",
        "GACH",
        "Hospitals; General Acute Care Hospital",
        "394802001",
        "General medicine",
    ),
    "specialist": (
        "Specialist Hospital",
        "مستشفى تخصصي",
        "بیمارستان تخصصی",
        "HOSP",
        "Hospital",
        "394583002",
        "Endocrinology",
    ),
    "mental_health": (
        "Mental Health Centre",
        "مركز الصحة النفسية",
        "مرکز سلامت روان",
        "PSYCHF",
        "Psychiatric Care Facility",
        "394587001",
        "Psychiatry",
    ),
    "lab": (
        "Medical Laboratory",
        "مختبر طبي",
        "آزمایشگاه پزشکی",
        "OUTLAB",
        "outpatient laboratory",
        "394915009",
        "General pathology",
    ),
    "pharmacy": (
        "Pharmacy",
        "صيدلية",
        "داروخانه",
        "PHARM",
        "Pharmacy",
        "420295001",
        "Pharmacy service",
    ),
}

# role key: (SNOMED occupation, display, SNOMED specialty, specialty display)
_ROLES: dict[str, tuple[str, str, str, str]] = {
    "gp": ("62247001", "General practitioner", "394814009", "General practice"),
    "nurse": ("224535009", "Registered nurse", "394814009", "General practice"),
    "chw": ("chw", "Community health worker", "394814009", "General practice"),
    "physician": ("309343006", "Physician", "394802001", "General medicine"),
    "endocrinologist": ("61894003", "Endocrinologist", "394583002", "Endocrinology"),
    "nephrologist": ("11911009", "Nephrologist", "394589003", "Nephrology"),
    "obstetrician": ("11935004", "Obstetrician", "394585009", "Obstetrics and gynecology"),
    "psychiatrist": ("80584001", "Psychiatrist", "394587001", "Psychiatry"),
    "psychologist": ("59944000", "Psychologist", "394587001", "Psychiatry"),
    "pharmacist": ("46255001", "Pharmacist", "420295001", "Pharmacy service"),
}

_STAFF: dict[str, list[str]] = {
    "phc": ["gp", "gp", "nurse", "nurse", "psychologist"],
    "health_house": ["chw", "chw"],
    "hospital": ["physician", "endocrinologist", "obstetrician", "psychiatrist", "nurse", "nurse"],
    "specialist": ["endocrinologist", "nephrologist", "psychiatrist", "nurse"],
    "mental_health": ["psychiatrist", "psychologist", "psychologist", "nurse"],
    "lab": [],
    "pharmacy": ["pharmacist"],
}

_CAPACITY = {  # registered-list size or beds, before scaling by a random factor
    "phc": 10000,
    "health_house": 1500,
    "hospital": 200,
    "specialist": 300,
    "mental_health": 40,
    "lab": 200,
    "pharmacy": 150,
}


@dataclass(slots=True)
class Network:
    """Every facility, indexed for the choices people make."""

    regions: list[Region]
    facilities: list[Facility]
    by_region: dict[tuple[str, str], list[Facility]]  # (region code, kind) -> facilities
    payers: dict[str, Weighted[tuple[str, str, str]]]  # group -> (code, name, native)

    def of(self, region: Region, kind: str) -> list[Facility]:
        return self.by_region.get((region.code, kind), [])

    def home(self, rng: Random, region: Region, urban: bool, country: str) -> Facility:
        """The first-contact facility: an Iranian rural resident's is a health house."""
        if not urban and country == "IR":
            houses = self.of(region, "health_house")
            if houses:
                return houses[int(rng.random() * len(houses))]
        phcs = [f for f in self.of(region, "phc") if f.urban == urban] or self.of(region, "phc")
        return phcs[int(rng.random() * len(phcs))]

    def nearest_phc(self, region: Region, lat: float, lon: float) -> Facility:
        return min(self.of(region, "phc"), key=lambda f: (f.lat - lat) ** 2 + (f.lon - lon) ** 2)


def _regions(table: dict[str, Any]) -> list[Region]:
    total = sum(r["population"] for r in table["regions"])
    return [
        Region(
            r["code"],
            r["name"],
            r["native"],
            r["city"],
            r["city_native"],
            r["population"] / total,
            r["lat"],
            r["lon"],
            r["urban"],
            r["remote"],
        )
        for r in table["regions"]
    ]


def _count(persons: float, per: float, minimum: int = 1) -> int:
    return max(minimum, round(persons / per))


def build_network(table: dict[str, Any], config: dict[str, Any], emit: Emit) -> Network:
    """Create and emit every facility, its staff and the payers; sizes scale with N."""
    rng = Random(f"{config['seed']}/{table['code']}/facilities")
    fc = config["facilities"]
    n = config["patients"]
    country = table["code"]
    regions = _regions(table)
    native_pool = pool("persian" if country == "IR" else "arab")
    facilities: list[Facility] = []
    by_region: dict[tuple[str, str], list[Facility]] = {}
    counter = [0, 0]  # facilities, practitioners
    largest = max(regions, key=lambda r: r.share)

    def add(region: Region, kind: str, urban: bool) -> None:
        counter[0] += 1
        fid = f"{kind.replace('_', '')}-{counter[0]:05d}"
        if urban:
            lat, lon = offset(
                region.lat,
                region.lon,
                fc["urban_radius_km"] * math.sqrt(rng.random()),
                rng.random() * 2 * math.pi,
            )
        else:
            lo, hi = fc["remote_rural_radius_km" if region.remote else "rural_radius_km"]
            lat, lon = offset(
                region.lat, region.lon, lo + (hi - lo) * rng.random(), rng.random() * 2 * math.pi
            )
        label, ar, fa, *_ = _KINDS[kind]
        seq = len(by_region.get((region.code, kind), [])) + 1
        place = region.city if urban else f"{region.name} rural"
        place_native = region.city_native if urban else region.native
        native_label = fa if country == "IR" else ar
        facility = Facility(
            fid,
            kind,
            region,
            urban,
            lat,
            lon,
            f"{place} {label} {seq}",
            f"{native_label} {seq} - {place_native}",
            int(_CAPACITY[kind] * (0.6 + 0.8 * rng.random())),
        )
        facilities.append(facility)
        by_region.setdefault((region.code, kind), []).append(facility)

    for region in regions:
        people = n * region.share
        n_phc = _count(people, fc["persons_per_phc"])
        n_urban = max(1, round(n_phc * region.urban))
        for _ in range(n_urban):
            add(region, "phc", True)
        for _ in range(max(1, n_phc - n_urban)):
            add(region, "phc", False)
        if country == "IR":
            rural = people * (1 - region.urban)
            for _ in range(_count(rural, fc["persons_per_health_house"])):
                add(region, "health_house", False)
        for _ in range(_count(people, fc["persons_per_hospital"])):
            add(region, "hospital", True)
        n_spec = round(people / fc["persons_per_specialist_hospital"])
        for _ in range(max(n_spec, 1 if region is largest else 0)):
            add(region, "specialist", True)
        add(region, "mental_health", True)
        for _ in range(_count(people, fc["persons_per_lab"])):
            add(region, "lab", True)
        for _ in range(_count(people, fc["persons_per_pharmacy"])):
            add(region, "pharmacy", True)

    for region in regions:
        emit("Location", _region_location(region, country))
    for facility in facilities:
        _emit_facility(facility, country, emit)
        for key in _STAFF[facility.kind]:
            if key == "psychologist" and facility.kind == "phc" and rng.random() > 0.3:
                continue  # most primary care centres have no psychologist of their own
            counter[1] += 1
            _emit_staff(facility, key, counter[1], native_pool, country, rng, emit)
    payers: dict[str, Weighted[tuple[str, str, str]]] = {}
    for group, rows in table["payers"].items():
        payers[group] = Weighted([(r[0], r[1], r[2]) for r in rows], [r[3] for r in rows])
        for code, name, native, _ in rows:
            emit(
                "Organization",
                {
                    "resourceType": "Organization",
                    "id": f"payer-{code}",
                    "active": True,
                    "type": [cc(ORG_TYPE, "pay", "Payer")],
                    "name": native,
                    "alias": [name],
                    "address": [{"country": country}],
                },
            )
    return Network(regions, facilities, by_region, payers)


def _region_location(region: Region, country: str) -> dict[str, Any]:
    return {
        "resourceType": "Location",
        "id": region.location_id,
        "status": "active",
        "name": region.native,
        "alias": [region.name],
        "mode": "kind",
        "physicalType": cc(LOC_PHYS, "jdn", "Jurisdiction"),
        "identifier": [{"system": f"{SID}/{country.lower()}-region", "value": region.code}],
        "position": {"latitude": region.lat, "longitude": region.lon},
        "address": {"state": region.name, "country": country},
    }


def _emit_facility(f: Facility, country: str, emit: Emit) -> None:
    label, _ar, _fa, role_code, role_display, service_code, service_display = _KINDS[f.kind]
    address = {
        "city": f.region.city if f.urban else None,
        "state": f.region.name,
        "country": country,
    }
    address = {k: v for k, v in address.items() if v}
    setting = ext(EXT.SETTING, valueCode="urban" if f.urban else "rural")
    emit(
        "Organization",
        {
            "resourceType": "Organization",
            "id": f.org_id,
            "identifier": [{"system": f"{SID}/facility", "value": f.fid}],
            "active": True,
            "type": [cc(ORG_TYPE, "prov", "Healthcare Provider", text=label)],
            "name": f.native,
            "alias": [f.name],
            "address": [address],
        },
    )
    emit(
        "Location",
        {
            "resourceType": "Location",
            "id": f.loc_id,
            "extension": [setting, ext(EXT.CAPACITY, valueInteger=f.capacity)],
            "status": "active",
            "name": f.native,
            "alias": [f.name],
            "mode": "instance",
            "type": [cc(V3_ROLE, role_code, role_display)],
            "physicalType": cc(LOC_PHYS, "bu", "Building"),
            "address": address,
            "position": {"latitude": f.lat, "longitude": f.lon},
            "managingOrganization": ref("Organization", f.org_id),
        },
    )
    radius = 5.0 if f.urban else 25.0
    if f.kind in ("hospital", "specialist", "mental_health"):
        radius = 60.0
    emit(
        "HealthcareService",
        {
            "resourceType": "HealthcareService",
            "id": f.service_id,
            "extension": [
                ext(EXT.CATCHMENT_RADIUS, valueDecimal=radius),
                ext(EXT.CAPACITY, valueInteger=f.capacity),
            ],
            "active": True,
            "providedBy": ref("Organization", f.org_id),
            "type": [cc(SNOMED, service_code, service_display)],
            "name": f"{label}: {service_display}",
            "location": [ref("Location", f.loc_id)],
            "coverageArea": [ref("Location", f.region.location_id)],
        },
    )


def _emit_staff(
    f: Facility,
    key: str,
    number: int,
    names: NamePool,
    country: str,
    rng: Random,
    emit: Emit,
) -> None:
    sex = "female" if key in ("nurse", "chw", "obstetrician") or rng.random() < 0.35 else "male"
    given, family = names.given(rng, sex), names.family.pick(rng)
    pr_id, prr_id = f"pr-{number:06d}", f"prr-{number:06d}"
    lang = "fa" if country == "IR" else "ar"
    emit(
        "Practitioner",
        {
            "resourceType": "Practitioner",
            "id": pr_id,
            "identifier": [{"system": f"{SID}/{country.lower()}-practitioner", "value": pr_id}],
            "active": True,
            "name": [
                {
                    "extension": [ext(LANG_EXT, valueCode=lang)],
                    "text": f"{given.native} {family.native}",
                    "family": family.native,
                    "given": [given.native],
                },
                {
                    "extension": [ext(LANG_EXT, valueCode=f"{lang}-Latn")],
                    "text": f"{given.latin[0]} {family.latin[0]}",
                    "family": family.latin[0],
                    "given": [given.latin[0]],
                },
            ],
            "gender": sex,
        },
    )
    occupation, display, specialty, specialty_display = _ROLES[key]
    code = (
        cc(f"{TAKAMUL_CS}/practitioner-role", "chw", "Community health worker (behvarz)")
        if key == "chw"
        else cc(SNOMED, occupation, display)
    )
    emit(
        "PractitionerRole",
        {
            "resourceType": "PractitionerRole",
            "id": prr_id,
            "active": True,
            "practitioner": ref("Practitioner", pr_id),
            "organization": ref("Organization", f.org_id),
            "code": [code],
            "specialty": [{"coding": [coding(SNOMED, specialty, specialty_display)]}],
            "location": [ref("Location", f.loc_id)],
            "healthcareService": [ref("HealthcareService", f.service_id)],
        },
    )
    f.staff.append((key, prr_id, pr_id))
