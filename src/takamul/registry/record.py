"""The registry's view of one Patient: every field the linker compares, normalised once
(`from_patient`), so comparisons are lookups and cheap string operations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from takamul.registry.arabic import fold_arabic
from takamul.registry.dates import birth_date_candidates, candidate_years
from takamul.registry.identifiers import national_id
from takamul.registry.names import NameChain, parse_human_name
from takamul.registry.phones import normalize_phone

__all__ = ["FATHER_NAME_EXT", "RegistryRecord", "from_patient"]

FATHER_NAME_EXT = "https://takamul.health/fhir/StructureDefinition/father-name"
NATIONALITY_EXT = "http://hl7.org/fhir/StructureDefinition/patient-nationality"


@dataclass(frozen=True, slots=True)
class RegistryRecord:
    """One Patient, normalised for linkage. Every field may be empty; none is mutable."""

    patient_id: str
    names: tuple[NameChain, ...]  # native and Latin names, each a chain
    sex: str | None
    birth_date: str | None  # as keyed
    birth_candidates: frozenset[str]  # Gregorian readings (see dates.birth_date_candidates)
    birth_years: frozenset[int]
    national_id: str | None
    national_id_system: str | None
    national_id_valid: bool | None  # None: no check digit known for its system
    phones: tuple[str, ...]  # E.164
    nationality: str | None
    region: str | None  # folded, case-folded
    city: str | None

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as a tuple of its fields (batch linking sends every record from the parsing
        # workers to the parent): half the cost of the dataclass default, a state dict.
        return (
            RegistryRecord,
            (
                self.patient_id,
                self.names,
                self.sex,
                self.birth_date,
                self.birth_candidates,
                self.birth_years,
                self.national_id,
                self.national_id_system,
                self.national_id_valid,
                self.phones,
                self.nationality,
                self.region,
                self.city,
            ),
        )

    @property
    def skeletons(self) -> frozenset[str]:
        """Every name skeleton of the record (a blocking key for the linker)."""
        return frozenset(s for chain in self.names for s in chain.skeletons)

    @property
    def birth_year(self) -> int | None:
        """The year as keyed (first four digits), if any."""
        return (
            int(self.birth_date[:4])
            if self.birth_date and self.birth_date[:4].isascii() and self.birth_date[:4].isdigit()
            else None
        )


@lru_cache(maxsize=10_000)
def _fold_place(value: str) -> str | None:
    return fold_arabic(value).casefold() or None


def _place(value: Any) -> str | None:
    return _fold_place(value) if isinstance(value, str) else None


def _nationality_of(ext: Mapping[str, Any] | None) -> str | None:
    for sub in (ext or {}).get("extension") or ():
        if sub.get("url") == "code":
            for coding in (sub.get("valueCodeableConcept") or {}).get("coding") or ():
                code = coding.get("code")
                if isinstance(code, str):
                    return _short(code)
    return None


# Short values met on most records (sex, nationality) as one string object each rather than
# one per record: less memory for 500,000 records and less to pickle between processes.
_SHORT: dict[str, str] = {}


def _short(value: str) -> str:
    got = _SHORT.get(value)
    if got is None:
        got = value if len(_SHORT) >= 1_000 else _SHORT.setdefault(value, value)
    return got


@lru_cache(maxsize=100_000)
def _birth(text: str) -> tuple[str, frozenset[str], frozenset[int]]:
    """The date as keyed (one string object for every record of that date: less memory and
    less to pickle), its readings and their years."""
    candidates = birth_date_candidates(text)
    return text, candidates, candidate_years(candidates)


def from_patient(resource: Mapping[str, Any]) -> RegistryRecord:
    """The registry record of a FHIR Patient (a dict as parsed from JSON; never modified)."""
    father: str | None = None
    nationality: str | None = None
    found_father = found_nationality = False
    for ext in resource.get("extension") or ():  # one pass for both extensions
        url = ext.get("url")
        if url == FATHER_NAME_EXT and not found_father:
            found_father = True
            value = ext.get("valueString")
            father = value if isinstance(value, str) else None
        elif url == NATIONALITY_EXT and not found_nationality:
            found_nationality = True
            nationality = _nationality_of(ext)
    chains = []
    for name in resource.get("name") or ():
        chain = parse_human_name(name, father)
        if chain is not None:
            chains.append(chain)
    birth = resource.get("birthDate")
    candidates: frozenset[str] = frozenset()
    years: frozenset[int] = frozenset()
    if isinstance(birth, str) and birth:
        birth, candidates, years = _birth(birth)
    else:
        birth = None
    nid = national_id(resource.get("identifier"))
    phones: list[str] = []
    for telecom in resource.get("telecom") or ():
        value = telecom.get("value")
        if telecom.get("system") in (None, "phone", "sms") and isinstance(value, str):
            e164 = normalize_phone(value)
            if e164 and e164 not in phones:
                phones.append(e164)
    address = (resource.get("address") or [{}])[0]
    gender = resource.get("gender")
    return RegistryRecord(
        patient_id=str(resource.get("id") or ""),
        names=tuple(chains),
        sex=_short(gender) if isinstance(gender, str) else None,
        birth_date=birth,
        birth_candidates=candidates,
        birth_years=years,
        national_id=nid.value if nid else None,
        national_id_system=nid.system if nid else None,
        national_id_valid=nid.valid if nid else None,
        phones=tuple(phones),
        nationality=nationality,
        region=_place(address.get("state")),
        city=_place(address.get("city")),
    )
