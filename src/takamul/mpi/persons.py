"""Golden records: the FHIR ``Person`` that stands for one person behind many Patient records.

Its ``link`` entries point at the Patient records with an assurance level from the match
probability (FHIR's identity-assuranceLevel codes), and it carries the consolidated
demographics a clinician looking at the person expects: every distinct name, identifier and
phone of the member records, the most common sex and birth date, the latest address.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["GOLDEN_RECORD_TAG", "Member", "assurance_level", "match_grade", "person_body"]

# Marks the Persons the registry keeps (a client may store Person resources of its own, such
# as the FHIR examples; those are not golden records and the registry never touches them).
GOLDEN_RECORD_TAG = {
    "system": "https://takamul.health/fhir/CodeSystem/client-registry",
    "code": "golden-record",
    "display": "Golden record kept by the client registry",
}

# FHIR R4 identity-assuranceLevel: level1 little or no confidence ... level4 very high.
ASSURANCE_MANUAL = "level4"  # a reviewer confirmed it


def assurance_level(probability: float, manual: bool, certain: float, probable: float) -> str:
    """Assurance of a Person.link from how the record came to belong to the person."""
    if manual:
        return ASSURANCE_MANUAL
    if probability >= certain:
        return "level3"
    if probability >= probable:
        return "level2"
    return "level1"


def match_grade(probability: float, certain: float, probable: float) -> str:
    """The match-grade of a $match result (certain | probable | possible)."""
    if probability >= certain:
        return "certain"
    if probability >= probable:
        return "probable"
    return "possible"


@dataclass(frozen=True, slots=True)
class Member:
    patient_id: str
    assurance: str
    patient: dict[str, Any] | None  # the Patient's current body (None if unreadable)


def _distinct(items: list[Any], limit: int = 10) -> list[Any]:
    seen: list[Any] = []
    for item in items:
        if item not in seen:
            seen.append(item)
        if len(seen) >= limit:
            break
    return seen


def person_body(person_id: str, members: Sequence[Member]) -> dict[str, Any]:
    """The Person resource of one person from its members (ordered, most assured first)."""
    patients = [m.patient for m in members if m.patient is not None]
    body: dict[str, Any] = {
        "resourceType": "Person",
        "id": person_id,
        "meta": {"tag": [GOLDEN_RECORD_TAG]},
        "active": True,
    }
    names = _distinct([n for p in patients for n in p.get("name") or ()])
    if names:
        body["name"] = names
    identifiers = _distinct([i for p in patients for i in p.get("identifier") or ()])
    if identifiers:
        body["identifier"] = identifiers
    telecom = _distinct([t for p in patients for t in p.get("telecom") or ()])
    if telecom:
        body["telecom"] = telecom
    for key, field in (("gender", "gender"), ("birthDate", "birthDate")):
        values = Counter(p[field] for p in patients if isinstance(p.get(field), str))
        if values:
            body[key] = values.most_common(1)[0][0]
    addresses = [p["address"][0] for p in patients if p.get("address")]
    if addresses:
        body["address"] = [addresses[-1]]
    body["link"] = [
        {"target": {"reference": f"Patient/{m.patient_id}"}, "assurance": m.assurance}
        for m in members
    ]
    return body
