"""The registry's view of one Patient: every field the linker compares, normalised once
(`from_patient`), so comparisons are lookups and cheap string operations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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

    @property
    def skeletons(self) -> frozenset[str]:
        """Every name skeleton of the record (a blocking key for the linker)."""
        return frozenset(s for chain in self.names for s in chain.skeletons)

    @property
    def birth_year(self) -> int | None:
        """The year as keyed (first four digits), if any."""
        return (
            int(self.birth_date[:4]) if self.birth_date and self.birth_date[:4].isdigit() else None
        )


def _place(value: Any) -> str | None:
    return fold_arabic(value).casefold() or None if isinstance(value, str) else None


def _extension(resource: Mapping[str, Any], url: str) -> Mapping[str, Any] | None:
    for ext in resource.get("extension") or ():
        if ext.get("url") == url:
            return ext
    return None


def _nationality(resource: Mapping[str, Any]) -> str | None:
    ext = _extension(resource, NATIONALITY_EXT)
    for sub in (ext or {}).get("extension") or ():
        if sub.get("url") == "code":
            for coding in (sub.get("valueCodeableConcept") or {}).get("coding") or ():
                code = coding.get("code")
                if isinstance(code, str):
                    return code
    return None


def from_patient(resource: Mapping[str, Any]) -> RegistryRecord:
    """The registry record of a FHIR Patient (a dict as parsed from JSON; never modified)."""
    father_ext = _extension(resource, FATHER_NAME_EXT)
    father = father_ext.get("valueString") if father_ext else None
    chains = []
    for name in resource.get("name") or ():
        chain = parse_human_name(name, father if isinstance(father, str) else None)
        if chain is not None:
            chains.append(chain)
    birth = resource.get("birthDate")
    birth = birth if isinstance(birth, str) and birth else None
    candidates = birth_date_candidates(birth) if birth else frozenset()
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
        sex=gender if isinstance(gender, str) else None,
        birth_date=birth,
        birth_candidates=candidates,
        birth_years=candidate_years(candidates),
        national_id=nid.value if nid else None,
        national_id_system=nid.system if nid else None,
        national_id_valid=nid.valid if nid else None,
        phones=tuple(phones),
        nationality=_nationality(resource),
        region=_place(address.get("state")),
        city=_place(address.get("city")),
    )
