"""Scoring QuestionnaireResponses by the published rules (pure functions, no store).

A response is recognised as one of our instruments by its ``questionnaire`` canonical (our url,
an alias such as ``http://loinc.org/q/44249-1``, with or without ``|version``) or, without one,
by its item linkIds. Answers count as scores when they are ``valueInteger`` (or an integral
``valueDecimal``), a ``valueCoding`` of the instrument's answer list, or a Coding carrying an
``ordinalValue`` extension. Missing items are handled by each instrument's rule (PHQ-9: prorate
with 1-2 missing, otherwise no score) and every reason for not scoring is an OperationOutcome
issue naming the item.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from takamul.fhir.outcome import OutcomeIssue, operation_outcome
from takamul.mentalhealth.instruments import (
    MH_SYSTEM,
    ORDINAL,
    Band,
    Instrument,
    instruments,
)

__all__ = [
    "SCORABLE",
    "Score",
    "derived_id",
    "identify",
    "iter_responses",
    "score_response",
    "scored_observation",
]

SCORABLE = ("completed", "amended")
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


@dataclass(slots=True)
class Score:
    instrument: Instrument
    total: int | None
    band: Band | None
    answers: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    prorated: bool = False
    issues: list[OutcomeIssue] = field(default_factory=list)

    @property
    def safety_value(self) -> int | None:
        item = self.instrument.safety_item
        return None if item is None else self.answers.get(item)

    @property
    def safety(self) -> bool:
        """A positive answer on the instrument's self-harm item (PHQ-9 item 9, EPDS item 10):
        judged on the answer itself, even when the form as a whole could not be scored."""
        value = self.safety_value
        return value is not None and value >= 1

    def outcome(self) -> dict[str, Any]:
        issues = list(self.issues)
        if self.total is not None:
            how = " (prorated)" if self.prorated else ""
            issues.append(
                OutcomeIssue(
                    "information",
                    "informational",
                    f"{self.instrument.title} total {self.total}{how}: "
                    f"{self.band.display if self.band else ''}",
                )
            )
        return operation_outcome(issues)


def _canonical(value: Any) -> str | None:
    return value.split("|", 1)[0] if isinstance(value, str) else None


def _items(items: Iterable[Any]) -> Iterator[dict[str, Any]]:
    for item in items:
        if isinstance(item, dict):
            yield item
            yield from _items(item.get("item") or ())
            for answer in item.get("answer") or ():
                if isinstance(answer, dict):
                    yield from _items(answer.get("item") or ())


def identify(response: Mapping[str, Any]) -> Instrument | None:
    """The instrument a response answers, or None when it is none of ours."""
    canonical = _canonical(response.get("questionnaire"))
    if canonical:
        for inst in instruments():
            if canonical in inst.canonicals():
                return inst
    link_ids = {i.get("linkId") for i in _items(response.get("item") or ())}
    best: Instrument | None = None
    best_key = (0, 0)
    for inst in instruments():
        hits = len(link_ids & set(inst.items))
        # most items matched; on a tie the shorter form (two PHQ items are a PHQ-2)
        key = (hits, -len(inst.items))
        if hits and key > best_key:
            best, best_key = inst, key
    return best


def _answer_score(inst: Instrument, answer: Mapping[str, Any]) -> int | None:
    if isinstance(answer.get("valueInteger"), int) and not isinstance(
        answer.get("valueInteger"), bool
    ):
        return int(answer["valueInteger"])
    decimal = answer.get("valueDecimal")
    if isinstance(decimal, int | float) and float(decimal).is_integer():
        return int(decimal)
    coding = answer.get("valueCoding")
    if isinstance(coding, dict):
        found = inst.score_of_code(coding.get("system"), coding.get("code"))
        if found is not None:
            return found
        for ext in coding.get("extension") or ():
            if isinstance(ext, dict) and ext.get("url") == ORDINAL:
                value = ext.get("valueDecimal")
                if isinstance(value, int | float) and float(value).is_integer():
                    return int(value)
    return None


def score_response(response: Mapping[str, Any], inst: Instrument | None = None) -> Score | None:
    """The score of a response (None when it answers none of our instruments)."""
    inst = inst or identify(response)
    if inst is None:
        return None
    score = Score(inst, None, None)
    status = response.get("status")
    found: dict[str, Mapping[str, Any]] = {}
    for item in _items(response.get("item") or ()):
        link_id = item.get("linkId")
        if link_id in inst.items and link_id not in found:
            found[link_id] = item
    top = inst.max_score
    for n, link_id in enumerate(inst.items):
        answered = found.get(link_id) or {}
        answers = [a for a in answered.get("answer") or () if isinstance(a, dict)]
        if not answers:
            score.missing.append(link_id)
            continue
        value = _answer_score(inst, answers[0])
        where = f"QuestionnaireResponse.item.where(linkId='{link_id}').answer[0]"
        if value is None or not 0 <= value <= top:
            score.issues.append(
                OutcomeIssue(
                    "warning",
                    "value",
                    f"Item {n + 1} ({link_id}) of {inst.title}: the answer is not a score "
                    f"0-{top} or an answer code of the instrument; counted as missing",
                    where,
                )
            )
            score.missing.append(link_id)
            continue
        score.answers[link_id] = value
    if status not in SCORABLE:
        score.issues.append(
            OutcomeIssue(
                "warning",
                "incomplete",
                f"The response is {status!r}: only completed or amended responses are scored",
                "QuestionnaireResponse.status",
            )
        )
        return score
    if len(score.missing) > inst.max_missing:
        rule = (
            f"at most {inst.max_missing} may be missing and are then prorated"
            if inst.max_missing
            else "every item must be answered"
        )
        score.issues.append(
            OutcomeIssue(
                "warning",
                "incomplete",
                f"No {inst.title} score: {len(score.missing)} of {len(inst.items)} items have no "
                f"usable answer ({', '.join(score.missing)}); {rule}",
                "QuestionnaireResponse.item",
            )
        )
        return score
    raw = sum(score.answers.values())
    if score.missing:
        # the instrument's proration: the mean of the answered items over the whole form
        exact = Decimal(raw * len(inst.items)) / Decimal(len(score.answers))
        score.total = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
        score.prorated = True
    else:
        score.total = raw
    score.band = inst.band(score.total)
    return score


def derived_id(prefix: str, response_id: str) -> str:
    """A deterministic id from the response's id (re-writing the response updates the same
    resource), hashed when prefix and id would not fit the 64 characters of a FHIR id."""
    candidate = f"{prefix}-{response_id}"
    if len(candidate) <= 64:
        return candidate
    return f"{prefix}-" + hashlib.sha256(response_id.encode()).hexdigest()[:40]


def scored_observation(
    response: Mapping[str, Any], response_id: str, score: Score
) -> dict[str, Any] | None:
    """The total-score Observation of a scored response (None when there is no score)."""
    if score.total is None or score.band is None:
        return None
    inst = score.instrument
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "id": derived_id("mhs", response_id),
        "status": "final",
        "category": [
            {"coding": [{"system": OBSERVATION_CATEGORY, "code": "survey", "display": "Survey"}]}
        ],
        "code": {"coding": [dict(inst.total_coding)], "text": f"{inst.title} total score"},
        "valueInteger": score.total,
        "interpretation": [
            {
                "coding": [
                    {
                        "system": MH_SYSTEM,
                        "code": f"{inst.id}-{score.band.code}",
                        "display": f"{inst.title} {score.band.display}",
                    }
                ],
                "text": score.band.display,
            }
        ],
        "derivedFrom": [{"reference": f"QuestionnaireResponse/{response_id}"}],
    }
    if isinstance(response.get("encounter"), dict):
        body["encounter"] = response["encounter"]
    subject = response.get("subject")
    if isinstance(subject, dict):
        kind = str(subject.get("reference", "")).split("/", 1)[0]
        if kind in OBSERVATION_SUBJECTS:
            body["subject"] = subject
        elif kind == "RelatedPerson":
            # a caregiver answering about themselves (ZBI-12): an Observation's subject cannot
            # be a RelatedPerson in R4, but its performer can
            body["performer"] = [subject]
    if response.get("authored"):
        body["effectiveDateTime"] = response["authored"]
    if score.prorated:
        body["note"] = [
            {
                "text": f"Prorated: {len(score.missing)} of {len(inst.items)} items missing "
                f"({', '.join(score.missing)})"
            }
        ]
    return body


# the types R4 allows as Observation.subject
OBSERVATION_SUBJECTS = frozenset({"Patient", "Group", "Device", "Location"})


def iter_responses(document: Any) -> Iterator[dict[str, Any]]:
    """The QuestionnaireResponses of a resource, a Bundle or a list of resources."""
    if isinstance(document, list):
        for entry in document:
            yield from iter_responses(entry)
    elif isinstance(document, dict):
        kind = document.get("resourceType")
        if kind == "QuestionnaireResponse":
            yield document
        elif kind == "Bundle":
            for entry in document.get("entry") or ():
                if isinstance(entry, dict):
                    yield from iter_responses(entry.get("resource"))
