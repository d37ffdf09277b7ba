"""Care programmes as data: chronic-disease registries and preventive schedules.

The packaged file (``data/programmes.json``) cites a source for every rule; a ministry replaces it
with its own file (``--programmes FILE`` or ``TAKAMUL_PROGRAMMES``) to change a schedule, an age
range or a control target without code. The file is checked when it is read, and an error names
the programme and the field to fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "Catalog",
    "Control",
    "DefinitionError",
    "Evidence",
    "Prevention",
    "Programme",
    "load_catalog",
]

SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
LOINC = "http://loinc.org"
PROGRAMME_SYSTEM = "https://takamul.health/fhir/CodeSystem/care-programme"
MEASURES = ("blood-pressure", "glucose")


class DefinitionError(ValueError):
    """A programme file that cannot be used; the message names what to fix."""


@dataclass(frozen=True, slots=True)
class Control:
    """The control target of a chronic programme, met by the last measurement."""

    measure: str  # blood-pressure | glucose
    systolic_below: float = 0.0
    diastolic_below: float = 0.0
    hba1c_below: float = 0.0
    fasting_below: float = 0.0
    random_below: float = 0.0

    def bp_controlled(self, systolic: float, diastolic: float) -> bool:
        return systolic < self.systolic_below and diastolic < self.diastolic_below

    def glucose_controlled(self, test: str, value: float) -> bool:
        limit = {
            "hba1c": self.hba1c_below,
            "fasting-glucose": self.fasting_below,
            "random-glucose": self.random_below,
        }[test]
        return value < limit


@dataclass(frozen=True, slots=True)
class HighRisk:
    """Simple's high-risk rule for the overdue list."""

    overdue_days: int
    systolic_at_least: float
    diastolic_at_least: float
    prior_events: tuple[str, ...]
    prior_event_systolic_at_least: float
    prior_event_diastolic_at_least: float
    uncontrolled_glucose: bool


@dataclass(frozen=True, slots=True)
class Programme:
    """A chronic-disease registry: who is in it, how often they are seen, what control means."""

    id: str
    title: str
    condition: str
    min_age: int
    control: Control | None
    follow_up_controlled: int
    follow_up_uncontrolled: int
    high_risk: HighRisk | None
    schedule: tuple[dict[str, Any], ...]
    prevalence: dict[str, float]
    sources: tuple[str, ...]

    def follow_up_days(self, uncontrolled: bool) -> int:
        return self.follow_up_uncontrolled if uncontrolled else self.follow_up_controlled


@dataclass(frozen=True, slots=True)
class Evidence:
    """A code whose record closes a preventive gap, and for how long."""

    system: str
    code: str
    every_days: int | None  # None: the prevention's own interval


@dataclass(frozen=True, slots=True)
class Prevention:
    """A preventive schedule: screening every N days, or a number of vaccine doses."""

    id: str
    title: str
    sex: str | None
    ages: dict[str, tuple[int, int]]
    every_days: int | None
    doses: int | None
    by: str
    evidence: tuple[Evidence, ...]
    exclude_conditions: tuple[str, ...]
    sources: tuple[str, ...]

    def age_range(self, country: str) -> tuple[int, int]:
        return self.ages.get(country) or self.ages["default"]


@dataclass(frozen=True)
class Catalog:
    """Every programme and preventive schedule, and the code sets that recognise their data."""

    programmes: tuple[Programme, ...]
    prevention: tuple[Prevention, ...]
    conditions: dict[str, dict[str, tuple[str, ...]]]
    measurements: dict[str, dict[str, Any]]
    sources: dict[str, str]
    digest: str  # of the code sets: a change means the care facts must be extracted again
    country: str = "default"
    by_id: dict[str, Programme] = field(default_factory=dict)

    def programme(self, programme_id: str) -> Programme:
        found = self.by_id.get(programme_id)
        if found is None:
            known = ", ".join(p.id for p in self.programmes)
            raise DefinitionError(f"No programme {programme_id!r}; the programmes are: {known}")
        return found

    def prevention_by_id(self, prevention_id: str) -> Prevention:
        for p in self.prevention:
            if p.id == prevention_id:
                return p
        known = ", ".join(p.id for p in self.prevention)
        raise DefinitionError(f"No preventive schedule {prevention_id!r}; they are: {known}")


def _need(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise DefinitionError(f"{where}: '{key}' is missing")
    return obj[key]


def _control(raw: dict[str, Any] | None, where: str) -> Control | None:
    if raw is None:
        return None
    measure = _need(raw, "measure", where)
    if measure not in MEASURES:
        raise DefinitionError(f"{where}.control.measure must be one of {MEASURES}, not {measure!r}")
    if measure == "blood-pressure":
        return Control(
            measure,
            systolic_below=float(_need(raw, "systolic_below", where + ".control")),
            diastolic_below=float(_need(raw, "diastolic_below", where + ".control")),
        )
    return Control(
        measure,
        hba1c_below=float(_need(raw, "hba1c_below", where + ".control")),
        fasting_below=float(_need(raw, "fasting_below", where + ".control")),
        random_below=float(_need(raw, "random_below", where + ".control")),
    )


def _high_risk(raw: dict[str, Any] | None) -> HighRisk | None:
    if raw is None:
        return None
    return HighRisk(
        overdue_days=int(raw.get("overdue_days", 30)),
        systolic_at_least=float(raw.get("systolic_at_least", 180)),
        diastolic_at_least=float(raw.get("diastolic_at_least", 110)),
        prior_events=tuple(raw.get("prior_events", ())),
        prior_event_systolic_at_least=float(raw.get("prior_event_systolic_at_least", 140)),
        prior_event_diastolic_at_least=float(raw.get("prior_event_diastolic_at_least", 90)),
        uncontrolled_glucose=bool(raw.get("uncontrolled_glucose", False)),
    )


def _programme(raw: dict[str, Any], conditions: dict[str, Any], n: int) -> Programme:
    where = f"programmes[{n}]"
    pid = _need(raw, "id", where)
    where = f"programme {pid!r}"
    condition = _need(raw, "condition", where)
    if condition not in conditions:
        raise DefinitionError(f"{where}: condition {condition!r} is not in 'conditions'")
    follow = _need(raw, "follow_up_days", where)
    prevalence = {
        k: float(v) for k, v in (raw.get("estimated_prevalence") or {}).items() if k != "source"
    }
    risk = _high_risk(raw.get("high_risk"))
    for event in risk.prior_events if risk else ():
        if event not in conditions:
            raise DefinitionError(f"{where}.high_risk: prior event {event!r} is not a condition")
    return Programme(
        id=pid,
        title=_need(raw, "title", where),
        condition=condition,
        min_age=int(raw.get("min_age", 0)),
        control=_control(raw.get("control"), where),
        follow_up_controlled=int(_need(follow, "controlled", where + ".follow_up_days")),
        follow_up_uncontrolled=int(_need(follow, "uncontrolled", where + ".follow_up_days")),
        high_risk=risk,
        schedule=tuple(raw.get("schedule", ())),
        prevalence=prevalence,
        sources=tuple(raw.get("sources", ())),
    )


def _prevention(raw: dict[str, Any], n: int) -> Prevention:
    pid = _need(raw, "id", f"prevention[{n}]")
    where = f"prevention {pid!r}"
    ages = {k: (int(v[0]), int(v[1])) for k, v in _need(raw, "ages", where).items()}
    if "default" not in ages:
        raise DefinitionError(f"{where}.ages needs a 'default' range")
    every = raw.get("every_days")
    doses = raw.get("doses")
    if (every is None) == (doses is None):
        raise DefinitionError(f"{where}: give exactly one of 'every_days' or 'doses'")
    evidence = tuple(
        Evidence(_need(e, "system", where), _need(e, "code", where), e.get("every_days"))
        for e in _need(raw, "evidence", where)
    )
    return Prevention(
        id=pid,
        title=_need(raw, "title", where),
        sex=raw.get("sex"),
        ages=ages,
        every_days=int(every) if every is not None else None,
        doses=int(doses) if doses is not None else None,
        by=raw.get("by", "gp"),
        evidence=evidence,
        exclude_conditions=tuple(raw.get("exclude_conditions", ())),
        sources=tuple(raw.get("sources", ())),
    )


def parse_catalog(raw: dict[str, Any], country: str = "default") -> Catalog:
    """A catalog from the JSON document; :class:`DefinitionError` says what is wrong."""
    conditions = {
        key: {
            "snomed": tuple(spec.get("snomed", ())),
            "icd10": tuple(spec.get("icd10", ())),
        }
        for key, spec in _need(raw, "conditions", "the programme file").items()
    }
    measurements = dict(_need(raw, "measurements", "the programme file"))
    for key in ("blood-pressure", "hba1c", "fasting-glucose", "random-glucose"):
        _need(measurements, key, "measurements")
    programmes = tuple(
        _programme(p, conditions, n) for n, p in enumerate(_need(raw, "programmes", "file"))
    )
    prevention = tuple(_prevention(p, n) for n, p in enumerate(raw.get("prevention", ())))
    ids = [p.id for p in programmes] + [p.id for p in prevention]
    if len(ids) != len(set(ids)):
        raise DefinitionError("programme and prevention ids must be unique")
    for p in prevention:
        for c in p.exclude_conditions:
            if c not in conditions:
                raise DefinitionError(f"prevention {p.id!r}: unknown condition {c!r}")
    codes = {
        "conditions": conditions,
        "measurements": measurements,
        "programmes": sorted(p.id for p in programmes),
        "evidence": sorted(f"{e.system}|{e.code}" for p in prevention for e in p.evidence),
    }
    digest = hashlib.sha256(json.dumps(codes, sort_keys=True).encode()).hexdigest()[:16]
    return Catalog(
        programmes=programmes,
        prevention=prevention,
        conditions=conditions,
        measurements=measurements,
        sources=dict(raw.get("sources", {})),
        digest=digest,
        country=country,
        by_id={p.id: p for p in programmes},
    )


@lru_cache(maxsize=8)
def _load(path: str | None, country: str) -> Catalog:
    if path is None:
        text = resources.files("takamul.programmes").joinpath("data/programmes.json").read_text()
        where = "the packaged programmes"
    else:
        file = Path(path)
        if not file.is_file():
            raise DefinitionError(f"The programme file {path} does not exist")
        text, where = file.read_text(encoding="utf-8"), path
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise DefinitionError(f"{where} is not JSON: {err}") from err
    return parse_catalog(raw, country)


def load_catalog(path: str | Path | None = None, country: str | None = None) -> Catalog:
    """The programme catalog: ``path``, else ``TAKAMUL_PROGRAMMES``, else the packaged one.

    ``country`` (``SA``, ``IR``; else ``TAKAMUL_COUNTRY``) picks national age ranges."""
    chosen = str(path) if path else os.environ.get("TAKAMUL_PROGRAMMES") or None
    return _load(chosen, (country or os.environ.get("TAKAMUL_COUNTRY") or "default").upper())
