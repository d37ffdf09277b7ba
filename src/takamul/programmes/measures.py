"""The care-gap measures as FHIR R4 ``Measure`` resources in the record.

One Measure per measure of :func:`takamul.programmes.gaps.measure_ids`: every preventive schedule
and the control of every programme with a control target. A Measure says in words who is eligible,
how often, which codes close the gap and where the rule comes from (the catalog's cited sources);
the populations are described in text, not CQL, because the rules are run by
:mod:`takamul.programmes.gaps`, not by a measure engine. The resources are written at server
start-up, and only when their content changed, so that ``$care-gaps`` answers can point at a
Measure a client can read (``GET /fhir/Measure?url=...``).
"""

from __future__ import annotations

from typing import Any

from takamul.fhir.outcome import FhirError
from takamul.programmes.definitions import Catalog, Prevention, Programme
from takamul.programmes.gaps import measure_ids
from takamul.store.repository import Session, Store

__all__ = [
    "IMPROVEMENT_NOTATION",
    "MEASURE_BASE",
    "measure_id_of_url",
    "measure_resource_id",
    "measure_resources",
    "measure_url",
    "population",
    "store_measures",
]

MEASURE_BASE = "https://takamul.health/fhir/Measure/"
IDENTIFIER_SYSTEM = "https://takamul.health/fhir/sid/care-measure"
SCORING = "http://terminology.hl7.org/CodeSystem/measure-scoring"
MEASURE_TYPE = "http://terminology.hl7.org/CodeSystem/measure-type"
IMPROVEMENT = "http://terminology.hl7.org/CodeSystem/measure-improvement-notation"
POPULATION = "http://terminology.hl7.org/CodeSystem/measure-population"
IMPROVEMENT_NOTATION = {
    "coding": [
        {
            "system": IMPROVEMENT,
            "code": "increase",
            "display": "Increased score indicates improvement",
        }
    ]
}
_POPULATION_DISPLAY = {
    "initial-population": "Initial Population",
    "denominator": "Denominator",
    "denominator-exclusion": "Denominator Exclusion",
    "numerator": "Numerator",
}
_SEX = {"female": "women", "male": "men"}
_BY = {
    "chw": "a community health worker",
    "gp": "a general practitioner",
    "specialist": "a specialist",
}


def measure_url(measure_id: str) -> str:
    return MEASURE_BASE + measure_id


def measure_resource_id(measure_id: str) -> str:
    return f"takamul-{measure_id}"


def measure_id_of_url(url: str) -> str | None:
    """The measure id of one of our canonical URLs (a ``|version`` suffix is ignored)."""
    url = url.split("|", 1)[0]
    if not url.startswith(MEASURE_BASE):
        return None
    return url[len(MEASURE_BASE) :] or None


def population(
    code: str, count: int | None = None, description: str | None = None
) -> dict[str, Any]:
    """A Measure or MeasureReport population of the standard code system."""
    out: dict[str, Any] = {
        "code": {
            "coding": [{"system": POPULATION, "code": code, "display": _POPULATION_DISPLAY[code]}]
        }
    }
    if description is not None:
        out["description"] = description
        # criteria is 1..1 in R4; the rule is run by takamul.programmes.gaps, so it is given as
        # text (Expression.language is an extensible binding) rather than as CQL
        out["criteria"] = {"language": "text/plain", "expression": description}
    if count is not None:
        out["count"] = count
    return out


def _name(measure_id: str) -> str:
    # Measure.name: usable as an identifier by machines (mea-0: [A-Z]([A-Za-z0-9_]){0,254})
    return "".join(part[:1].upper() + part[1:] for part in measure_id.replace("_", "-").split("-"))


def _codes(p: Prevention) -> str:
    parts = []
    for e in p.evidence:
        until = f" (counts {e.every_days} days)" if e.every_days else ""
        parts.append(f"`{e.system}|{e.code}`{until}")
    return ", ".join(parts)


def _ages(p: Prevention, country: str) -> str:
    low, high = p.age_range(country)
    others = "; ".join(
        f"{c}: {lo}-{hi}" for c, (lo, hi) in sorted(p.ages.items()) if c != "default"
    )
    text = f"aged {low} years and over" if high >= 150 else f"aged {low} to {high} years"
    return text + (f" (national ranges: {others}; default {p.ages['default'][0]}-"
                   f"{p.ages['default'][1]})" if others else "")  # fmt: skip


def _markdown(heading: str, items: list[str], sources: list[str]) -> str:
    text = heading + "\n\n" + "\n".join(f"- {i}" for i in items)
    if sources:
        text += "\n\nSources:\n\n" + "\n".join(f"- {s}" for s in sources)
    return text


def _sources(catalog: Catalog, keys: tuple[str, ...]) -> list[str]:
    return [catalog.sources[k] for k in keys if k in catalog.sources]


def _base(
    measure_id: str, title: str, description: str, kind: str, sources: list[str]
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Measure",
        "id": measure_resource_id(measure_id),
        "url": measure_url(measure_id),
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": measure_id}],
        "name": _name(measure_id),
        "title": title,
        "status": "active",
        "experimental": False,
        "subjectCodeableConcept": {
            "coding": [{"system": "http://hl7.org/fhir/resource-types", "code": "Patient"}]
        },
        "publisher": "Takamul",
        "description": description,
        "scoring": {"coding": [{"system": SCORING, "code": "proportion", "display": "Proportion"}]},
        "type": [{"coding": [{"system": MEASURE_TYPE, "code": kind}]}],
        "improvementNotation": IMPROVEMENT_NOTATION,
    }
    if sources:
        body["relatedArtifact"] = [{"type": "citation", "citation": s} for s in sources]
    return body


def _prevention_measure(catalog: Catalog, p: Prevention) -> dict[str, Any]:
    who = _SEX.get(p.sex or "", "people")
    eligible = f"{who.capitalize()} {_ages(p, catalog.country)}"
    if p.exclude_conditions:
        excluded = ", ".join(p.exclude_conditions)
        eligible += f", without a recorded diagnosis of {excluded}"
    if p.doses is not None:
        interval = f"{p.doses} doses recorded (any date)"
        numerator = f"{p.doses} or more doses recorded by the end of the period"
    else:
        interval = f"once every {p.every_days} days"
        numerator = (
            f"A record of one of the evidence codes that still counts at the end of the period "
            f"(done within {p.every_days} days, or the code's own interval)"
        )
    sources = _sources(catalog, p.sources)
    description = _markdown(
        f"**{p.title}**: a preventive schedule of Takamul's care programmes.",
        [
            f"Eligible: {eligible}.",
            f"Interval: {interval}; done by {_BY.get(p.by, p.by)}.",
            f"Evidence (Procedure, Observation, DiagnosticReport or Immunization codes): "
            f"{_codes(p)}.",
            "Gap status (DEQM): closed-gap when the evidence counts through the period's end, "
            "prospective-gap when it counts today but expires before the period ends, "
            "open-gap otherwise.",
        ],
        sources,
    )
    body = _base(p.id, p.title, description, "process", sources)
    populations = [
        population("initial-population", description=f"{eligible} on the evaluation date"),
        population("denominator", description="Equal to the initial population"),
    ]
    if p.exclude_conditions:
        populations.append(
            population(
                "denominator-exclusion",
                description=f"A diagnosis of {', '.join(p.exclude_conditions)} on or before "
                "the evaluation date",
            )
        )
    populations.append(population("numerator", description=numerator))
    body["group"] = [{"population": populations}]
    return body


def _target(p: Programme) -> str:
    control = p.control
    assert control is not None
    if control.measure == "blood-pressure":
        return (
            f"systolic < {control.systolic_below:g} and diastolic < {control.diastolic_below:g} "
            "mmHg at the last blood pressure"
        )
    return (
        f"HbA1c < {control.hba1c_below:g} %, fasting glucose < {control.fasting_below:g} mg/dL "
        f"or random glucose < {control.random_below:g} mg/dL at the last glucose test (an "
        "HbA1c wins over a fasting glucose over a random one on the same day)"
    )


def _condition_codes(catalog: Catalog, key: str) -> str:
    spec = catalog.conditions[key]
    snomed = ", ".join(spec["snomed"])
    icd = ", ".join(f"{c}*" for c in spec["icd10"])
    return f"SNOMED CT {snomed}; ICD-10 {icd}"


def _control_measure(catalog: Catalog, p: Programme) -> dict[str, Any]:
    measure_id = f"{p.id}-control"
    sources = _sources(catalog, p.sources)
    registry = (
        f"People aged {p.min_age} or more in the {p.title.lower()} registry: a Condition "
        f"({_condition_codes(catalog, p.condition)}) or an EpisodeOfCare of the programme "
        f"`{p.id}`, registered on or before the evaluation date, alive"
    )
    target = _target(p)
    description = _markdown(
        f"**{p.title} control**: a registry control indicator of Takamul's care programmes.",
        [
            f"Eligible: {registry}.",
            "Excluded: people registered less than 3 months before the evaluation date.",
            f"Met: {target}, measured in the 3 months before the evaluation date.",
            f"Follow-up: every {p.follow_up_controlled} days when controlled, every "
            f"{p.follow_up_uncontrolled} days when not.",
            "Gap status (DEQM): closed-gap when controlled; open-gap when not controlled, "
            "visited without a measurement, missed the visit, or lost to follow-up.",
        ],
        sources,
    )
    body = _base(measure_id, f"{p.title} control", description, "outcome", sources)
    body["group"] = [
        {
            "population": [
                population("initial-population", description=registry),
                population("denominator", description="The initial population"),
                population(
                    "denominator-exclusion",
                    description="Registered less than 3 months before the evaluation date",
                ),
                population("numerator", description=f"{target}, in the last 3 months"),
            ]
        }
    ]
    return body


def measure_resources(catalog: Catalog) -> list[dict[str, Any]]:
    """Every care-gap Measure of the catalog, in :func:`measure_ids` order."""
    prevention = {p.id: p for p in catalog.prevention}
    out = []
    for mid in measure_ids(catalog):
        if mid in prevention:
            out.append(_prevention_measure(catalog, prevention[mid]))
        else:
            out.append(_control_measure(catalog, catalog.programme(mid.removesuffix("-control"))))
    return out


def _unchanged(session: Session, body: dict[str, Any]) -> bool:
    try:
        stored = session.read("Measure", body["id"]).json()
    except FhirError as err:
        if err.status in (404, 410):
            return False
        raise
    return {k: v for k, v in stored.items() if k != "meta"} == body


def store_measures(store: Store, catalog: Catalog) -> list[str]:
    """Create or update the catalog's Measures whose content changed; the ids written.

    Internal work at start-up (no request guard). A Measure left over from an earlier catalog is
    kept: a stored MeasureReport may still point at it."""
    written = []
    for body in measure_resources(catalog):
        with store.reading() as session:
            if _unchanged(session, body):
                continue
        store.write(lambda s, b=body: s.update("Measure", b["id"], b))  # type: ignore[misc]
        written.append(body["id"])
    return written
