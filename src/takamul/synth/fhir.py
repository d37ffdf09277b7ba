"""Constants and tiny builders for the FHIR R4 JSON the generator writes.

Code systems, Takamul extension URLs and reference helpers live here so every module agrees.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ATC",
    "CVX",
    "EXT",
    "ICD10",
    "LOINC",
    "SID",
    "SNOMED",
    "TAKAMUL_CS",
    "cc",
    "coding",
    "ext",
    "ref",
]

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
CVX = "http://hl7.org/fhir/sid/cvx"
ATC = "http://www.whocc.no/atc"
UCUM = "http://unitsofmeasure.org"
V3_ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CAT = "http://terminology.hl7.org/CodeSystem/condition-category"
COND_CLIN = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ID_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
LOC_PHYS = "http://terminology.hl7.org/CodeSystem/location-physical-type"
LANG_EXT = "http://hl7.org/fhir/StructureDefinition/language"
GEO_EXT = "http://hl7.org/fhir/StructureDefinition/geolocation"
NATIONALITY_EXT = "http://hl7.org/fhir/StructureDefinition/patient-nationality"
ISO_COUNTRY = "urn:iso:std:iso:3166"

BASE = "https://takamul.health/fhir"
TAKAMUL_CS = f"{BASE}/CodeSystem"
SID = f"{BASE}/sid"


class EXT:
    """The Takamul Patient/facility extensions (documented as a profile in docs/synth.md)."""

    INCOME_QUINTILE = f"{BASE}/StructureDefinition/income-quintile"
    EDUCATION = f"{BASE}/StructureDefinition/education-level"
    URBAN_RURAL = f"{BASE}/StructureDefinition/urban-rural"
    REGION = f"{BASE}/StructureDefinition/region"
    INSURANCE = f"{BASE}/StructureDefinition/insurance-status"
    DISABILITY = f"{BASE}/StructureDefinition/disability"
    FATHER_NAME = f"{BASE}/StructureDefinition/father-name"
    CAPACITY = f"{BASE}/StructureDefinition/capacity"
    CATCHMENT_RADIUS = f"{BASE}/StructureDefinition/catchment-radius-km"
    SETTING = f"{BASE}/StructureDefinition/urban-rural"


def coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def cc(
    system: str, code: str, display: str | None = None, text: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [coding(system, code, display)]}
    if text:
        out["text"] = text
    return out


def ref(rtype: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{rid}"}


def ext(url: str, **value: Any) -> dict[str, Any]:
    """``ext(URL, valueInteger=3)``: one extension with its single value[x]."""
    return {"url": url, **value}
