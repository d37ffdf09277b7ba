"""Registration of one person at 1-5 facilities as separate Patient records, each differing as
real registrations do (script, spelling, partial chains, typos, IDs, phones, calendars).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from random import Random
from typing import Any

from takamul.synth.calendars import as_native_calendar
from takamul.synth.facilities import Facility, Network
from takamul.synth.fhir import (
    EXT,
    GEO_EXT,
    ID_TYPE,
    ISO_COUNTRY,
    LANG_EXT,
    NATIONALITY_EXT,
    SID,
    TAKAMUL_CS,
    cc,
    coding,
    ext,
    ref,
)
from takamul.synth.names import NameEntry, arabic_letter_forms, typo
from takamul.synth.people import Person
from takamul.synth.sampling import Weighted

__all__ = ["Record", "Registrar"]

# Kinds of facility a person may also be registered at, with relative weights.
_EXTRA_KINDS = {
    "hospital": 3.0,
    "lab": 2.0,
    "pharmacy": 1.5,
    "phc": 1.0,
    "specialist": 1.0,
    "mental_health": 0.7,
}


@dataclass(slots=True)
class Record:
    patient_id: str
    facility: Facility
    script: str
    variants: list[str] = field(default_factory=list)


class Registrar:
    def __init__(self, config: dict[str, Any], table: dict[str, Any], network: Network) -> None:
        self.rc = config["registrations"]
        self.country = table["code"]
        self.table = table
        self.network = network
        self.end = date.fromisoformat(config["end_date"])
        self.count = Weighted([1, 2, 3, 4, 5], self.rc["count_weights"])
        scripts = self.rc["script"]
        self.script = Weighted(list(scripts), list(scripts.values()))
        self.lang = table["language"]
        self.calendar = table["calendar"]
        self.specialists = [f for f in network.facilities if f.kind == "specialist"]

    def facilities(self, rng: Random, p: Person) -> list[Facility]:
        """The home facility first, then 0-4 other facilities, one per kind."""
        chosen = [p.home]
        k = self.count.pick(rng)
        kinds = dict(_EXTRA_KINDS)
        if p.home.kind == "health_house":
            kinds["phc"] = 4.0  # rural Iranians are referred up to the rural health centre
        if "depression" in p.conditions or "anxiety" in p.conditions:
            kinds["mental_health"] = 3.0
        while len(chosen) < k and kinds:
            kind = Weighted(list(kinds), list(kinds.values())).pick(rng)
            del kinds[kind]
            options = (
                self.specialists
                if kind == "specialist"
                else [f for f in self.network.of(p.region, kind) if f not in chosen]
            )
            if options:
                chosen.append(options[int(rng.random() * len(options))])
        return chosen

    def register(self, rng: Random, p: Person, emit: Any) -> list[Record]:
        records = []
        for n, facility in enumerate(self.facilities(rng, p), start=1):
            record = Record(f"pat-{p.index:07d}-{n}", facility, self.script.pick(rng))
            body = self._patient(rng, p, record)
            if p.died is not None:
                body["deceasedDateTime"] = p.died.isoformat()  # every registration hears of it
            emit("Patient", body)
            records.append(record)
        return records

    # -- one Patient ------------------------------------------------------------------------

    def _patient(self, rng: Random, p: Person, rec: Record) -> dict[str, Any]:
        rc, v = self.rc, rec.variants
        partial = p.father_name is not None and rng.random() < rc["partial_name_chain"]
        if partial:
            v.append("partial_name_chain")
        translit = rec.script != "native" and rng.random() < rc["transliteration_variant"]
        names: list[dict[str, Any]] = []
        if rec.script in ("native", "both"):
            names.append(self._native_name(p, partial, rng, v))
        if rec.script in ("latin", "both"):
            names.append(self._latin_name(p, partial, rng, translit, v))
        if rng.random() < rc["typo"]:
            target = names[int(rng.random() * len(names))]
            key = "family" if rng.random() < 0.5 else "given"
            if key == "family":
                target["family"] = typo(rng, target["family"])
            else:
                target["given"][0] = typo(rng, target["given"][0])
            target["text"] = " ".join([*target["given"], target["family"]])
            v.append("typo")

        identifiers = [
            {
                "use": "usual",
                "type": cc(ID_TYPE, "MR", "Medical record number"),
                "system": f"{SID}/mrn/{rec.facility.fid}",
                "value": f"{rec.facility.fid.upper()}-{p.index:07d}",
            }
        ]
        nid: str | None = p.national_id
        parent = p.mother or p.father
        age_days = (self.end - p.birth).days
        if (
            age_days < rc["newborn_max_age_days"]
            and parent is not None
            and rng.random() < rc["newborn_parent_id"]
        ):
            nid = parent.national_id
            v.append("newborn_parent_id")
        else:
            u = rng.random()
            if u < rc["national_id_missing"]:
                nid = None
                v.append("national_id_missing")
            elif u < rc["national_id_missing"] + rc["national_id_mistyped"]:
                nid = _mistype(rng, p.national_id)
                v.append("national_id_mistyped")
        if nid is not None:
            spec = self.table["national_id"][
                p.group if "newborn_parent_id" not in v else (parent.group if parent else p.group)
            ]
            identifiers.append(
                {
                    "use": "official",
                    "type": cc(ID_TYPE, "NI" if p.group == "citizen" else "PPN"),
                    "system": spec["system"],
                    "value": nid,
                }
            )

        phone = p.phone
        if p.household_phone != p.phone and (
            p.age < 18 or rng.random() < rc["shared_family_phone"]
        ):
            phone = p.household_phone
            v.append("shared_family_phone")

        birth = p.birth.isoformat()
        if rng.random() < rc["native_calendar_birth_date"]:
            native = as_native_calendar(p.birth, self.calendar)
            if native is not None and _is_date(native):
                birth = native
                v.append("native_calendar_birth_date")
        elif (
            p.birth.day <= 12
            and p.birth.day != p.birth.month
            and rng.random() < rc["day_month_swap"]
        ):
            birth = f"{p.birth.year:04d}-{p.birth.day:02d}-{p.birth.month:02d}"
            v.append("day_month_swap")

        extensions = self._extensions(p)
        if self.country == "IR" and p.father_name is not None and not partial:
            extensions.append(ext(EXT.FATHER_NAME, valueString=p.father_name.native))
        address: dict[str, Any] = {
            "extension": [
                {
                    "url": GEO_EXT,
                    "extension": [
                        {"url": "latitude", "valueDecimal": p.lat},
                        {"url": "longitude", "valueDecimal": p.lon},
                    ],
                }
            ],
            "use": "home",
            "state": p.region.name,
            "country": self.country,
        }
        if p.urban:
            address["city"] = p.region.city
        return {
            "resourceType": "Patient",
            "id": rec.patient_id,
            "extension": extensions,
            "identifier": identifiers,
            "active": True,
            "name": names,
            "telecom": [{"system": "phone", "value": phone, "use": "mobile"}],
            "gender": p.sex,
            "birthDate": birth,
            "address": [address],
            "managingOrganization": ref("Organization", rec.facility.org_id),
        }

    def _native_name(self, p: Person, partial: bool, rng: Random, v: list[str]) -> dict[str, Any]:
        given = [p.given.native]
        if self.table["name_style"] == "chain" and p.father_name and p.grandfather_name:
            chain = [p.father_name.native, p.grandfather_name.native]
            given += chain[: (int(rng.random() * 2)) if partial else 2]
        family = p.family.native
        if (
            self.country == "IR"
            and rng.random() < self.rc["arabic_letter_forms"]
            and any(ch in "یک" for ch in given[0] + family)
        ):
            given = [arabic_letter_forms(g) for g in given]
            family = arabic_letter_forms(family)
            v.append("arabic_letter_forms")
        return {
            "extension": [ext(LANG_EXT, valueCode=self.lang)],
            "use": "official",
            "text": " ".join([*given, family]),
            "family": family,
            "given": given,
        }

    def _latin_name(
        self, p: Person, partial: bool, rng: Random, translit: bool, v: list[str]
    ) -> dict[str, Any]:
        rate = 1.0 if translit else 0.0
        changed = False

        def form(entry: NameEntry) -> str:
            nonlocal changed
            text, was_variant = entry.latin_form(rng, rate)
            changed |= was_variant
            return text

        given = [form(p.given)]
        if self.table["name_style"] == "chain" and p.father_name and p.grandfather_name:
            chain = [form(p.father_name), form(p.grandfather_name)]
            given += chain[: (int(rng.random() * 2)) if partial else 2]
        family = form(p.family)
        if changed:
            v.append("transliteration_variant")
        return {
            "extension": [ext(LANG_EXT, valueCode=f"{self.lang}-Latn")],
            "use": "usual",
            "text": " ".join([*given, family]),
            "family": family,
            "given": given,
        }

    def _extensions(self, p: Person) -> list[dict[str, Any]]:
        region_cs = f"{TAKAMUL_CS}/{self.country.lower()}-region"
        out = [
            {
                "url": NATIONALITY_EXT,
                "extension": [
                    {"url": "code", "valueCodeableConcept": cc(ISO_COUNTRY, p.nationality)}
                ],
            },
            ext(EXT.REGION, valueCoding=coding(region_cs, p.region.code, p.region.name)),
            ext(EXT.URBAN_RURAL, valueCode="urban" if p.urban else "rural"),
            ext(EXT.INCOME_QUINTILE, valueInteger=p.quintile),
        ]
        if p.education:
            out.append(
                ext(EXT.EDUCATION, valueCoding=coding(f"{TAKAMUL_CS}/education-level", p.education))
            )
        out.append(
            ext(
                EXT.INSURANCE,
                valueCoding=coding(
                    f"{TAKAMUL_CS}/insurance-status",
                    p.payer[0] if p.payer else "uninsured",
                    p.payer[1] if p.payer else "No insurance or coverage",
                ),
            )
        )
        out.append(ext(EXT.DISABILITY, valueBoolean=p.disability))
        return out


def _mistype(rng: Random, value: str) -> str:
    i = 1 + int(rng.random() * (len(value) - 1))
    if rng.random() < 0.5 and i + 1 < len(value) and value[i] != value[i + 1]:
        return value[:i] + value[i + 1] + value[i] + value[i + 2 :]
    digit = str((int(value[i]) + 1 + int(rng.random() * 9)) % 10)
    return value[:i] + digit + value[i + 1 :]


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True
