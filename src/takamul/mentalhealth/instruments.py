"""The mental-health instruments as data: structure, LOINC codes, answer scores, scoring rules.

The wording of a validated instrument is not ours to write (a paraphrase is no longer the
validated instrument), so ``data/instruments.json`` holds no text: the Questionnaires stored at
start-up carry structure and codes, and ``install_wording`` adds the wording of a published
source (a Questionnaire, such as the PHQ-9 of ``hl7.fhir.r4.examples``, or a simple file of
linkId -> text in one language) after checking that it fits the structure.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from takamul.fhir.outcome import FhirError, OutcomeIssue

__all__ = [
    "LOINC",
    "MH_SYSTEM",
    "QUESTIONNAIRE_BASE",
    "Band",
    "Instrument",
    "install_wording",
    "instrument",
    "instruments",
    "merge_wording",
    "questionnaire",
    "questions",
]

LOINC = "http://loinc.org"
# our own codes: severity bands, the mental-health care team category, escalation states
MH_SYSTEM = "https://takamul.health/fhir/CodeSystem/mental-health"
QUESTIONNAIRE_BASE = "https://takamul.health/fhir/Questionnaire/"
ORDINAL = "http://hl7.org/fhir/StructureDefinition/ordinalValue"
TRANSLATION = "http://hl7.org/fhir/StructureDefinition/translation"


@dataclass(frozen=True, slots=True)
class Band:
    min: int
    code: str
    display: str


@dataclass(frozen=True, slots=True)
class AnswerOption:
    score: int
    code: str | None  # a LOINC answer code (LA...) where the form codes its answers


@dataclass(frozen=True, slots=True)
class Instrument:
    id: str
    name: str
    title: str
    panel: str | None  # LOINC panel code
    total_coding: dict[str, str]  # the code of the total-score Observation
    items: tuple[str, ...]  # scored linkIds, in form order
    item_loinc: dict[str, str]  # linkId -> LOINC item code (where LOINC codes the item)
    unscored: tuple[str, ...]  # linkIds of the form that are not summed (PHQ-9 difficulty)
    answer_system: str | None
    answer_value_set: str | None
    options: tuple[AnswerOption, ...]
    max_missing: int
    prorate: bool
    safety_item: str | None
    bands: tuple[Band, ...]
    aliases: tuple[str, ...]
    source: str

    @property
    def url(self) -> str:
        return QUESTIONNAIRE_BASE + self.id

    @property
    def total_code(self) -> str:
        return self.total_coding["code"]

    @property
    def max_score(self) -> int:
        return max(o.score for o in self.options)

    def score_of_code(self, system: str | None, code: str | None) -> int | None:
        for option in self.options:
            if (
                option.code is not None
                and option.code == code
                and system in (None, self.answer_system)
            ):
                return option.score
        return None

    def band(self, total: int) -> Band:
        found = self.bands[0]
        for band in self.bands:
            if total >= band.min:
                found = band
        return found

    def canonicals(self) -> set[str]:
        return {self.url, *self.aliases}

    def linkid_for(self, loinc_code: str) -> str | None:
        for link_id, code in self.item_loinc.items():
            if code == loinc_code:
                return link_id
        return loinc_code if loinc_code in self.unscored else None


def _bands(spec: Mapping[str, Any]) -> tuple[Band, ...]:
    bands = [Band(int(b["min"]), str(b["code"]), str(b["display"])) for b in spec["bands"]]
    env = spec.get("cutoff_env")
    if env and os.environ.get(env):
        # a configurable screening cut-off moves the single positive band (ZBI-12)
        cutoff = int(os.environ[env])
        bands = [bands[0], *(Band(cutoff, b.code, b.display) for b in bands[1:])]
    return tuple(bands)


def _instrument(spec: Mapping[str, Any]) -> Instrument:
    answers = spec["answers"]
    total_coding = spec.get("total_code") or {"system": LOINC, "code": spec["total"]}
    return Instrument(
        id=spec["id"],
        name=spec["name"],
        title=spec["title"],
        panel=spec.get("panel"),
        total_coding=dict(total_coding),
        items=tuple(i["linkId"] for i in spec["items"]),
        item_loinc={
            i["linkId"]: i["loinc"]
            for i in [*spec["items"], *spec.get("unscored", [])]
            if i.get("loinc")
        },
        unscored=tuple(i["linkId"] for i in spec.get("unscored", [])),
        answer_system=answers.get("system"),
        answer_value_set=answers.get("valueSet"),
        options=tuple(AnswerOption(int(o["score"]), o.get("code")) for o in answers["options"]),
        max_missing=int(spec.get("max_missing", 0)),
        prorate=bool(spec.get("prorate", False)),
        safety_item=spec.get("safety_item"),
        bands=_bands(spec),
        aliases=tuple(spec.get("aliases", [])),
        source=spec["source"],
    )


@cache
def _load() -> tuple[Instrument, ...]:
    text = resources.files("takamul.mentalhealth").joinpath("data/instruments.json").read_text()
    return tuple(_instrument(s) for s in json.loads(text)["instruments"])


def instruments() -> tuple[Instrument, ...]:
    return _load()


def instrument(instrument_id: str) -> Instrument:
    for found in _load():
        if found.id == instrument_id or found.name.lower() == instrument_id.lower():
            return found
    raise FhirError(
        404,
        f"Unknown instrument {instrument_id!r}; known: {', '.join(i.id for i in _load())}",
        "not-found",
    )


def _answer_options(inst: Instrument) -> list[dict[str, Any]]:
    options: list[dict[str, Any]] = []
    for o in inst.options:
        if o.code is not None:
            coding = {"system": inst.answer_system, "code": o.code}
            options.append(
                {
                    "valueCoding": coding,
                    "extension": [{"url": ORDINAL, "valueDecimal": o.score}],
                }
            )
        else:
            options.append({"valueInteger": o.score})
    return options


def questionnaire(inst: Instrument) -> dict[str, Any]:
    """The instrument's Questionnaire: structure, codes and answer scores, without wording."""
    items: list[dict[str, Any]] = []
    for link_id in (*inst.items, *inst.unscored):
        item: dict[str, Any] = {"linkId": link_id, "type": "choice"}
        if link_id in inst.item_loinc:
            item["code"] = [{"system": LOINC, "code": inst.item_loinc[link_id]}]
        item["required"] = link_id not in inst.unscored
        item["answerOption"] = _answer_options(inst)
        items.append(item)
    body: dict[str, Any] = {
        "resourceType": "Questionnaire",
        "id": inst.id,
        "url": inst.url,
        "name": inst.name,
        "title": inst.title,
        "status": "active",
        "subjectType": ["Patient"],
        "description": "Structure, codes and answer scores only; wording is installed from a "
        "published source. Scoring and source: " + inst.source,
        "item": items,
    }
    if inst.panel:
        body["code"] = [{"system": LOINC, "code": inst.panel}]
        # R4's Questionnaire ``code`` search parameter reads ``Questionnaire.item.code``, not
        # ``Questionnaire.code``: the items sit in a group coded with the panel (as LOINC forms
        # are laid out), so ``Questionnaire?code=http://loinc.org|44249-1`` finds the form
        body["item"] = [
            {
                "linkId": inst.panel,
                "code": [{"system": LOINC, "code": inst.panel}],
                "type": "group",
                "required": True,
                "item": items,
            }
        ]
    return body


def questions(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The question items of a Questionnaire (inside groups too), in form order."""
    found: list[dict[str, Any]] = []
    for item in body.get("item") or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "group":
            found.extend(questions(item))
        else:
            found.append(item)
    return found


_WORDING_KEYS = ("text", "_text", "prefix")


def merge_wording(structure: dict[str, Any], stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """``structure`` with the wording already installed in ``stored`` (item texts, their
    translations, answer displays and the form's language), so that a start-up that refreshes
    the structure never drops installed wording."""
    out = copy.deepcopy(structure)
    if not stored:
        return out
    if stored.get("language"):
        out["language"] = stored["language"]
    old = {i.get("linkId"): i for i in questions(stored)}
    for item in questions(out):
        before = old.get(item["linkId"])
        if not before:
            continue
        for key in _WORDING_KEYS:
            if key in before:
                item[key] = before[key]
        displays = {_option_key(o): o for o in before.get("answerOption") or ()}
        for option in item.get("answerOption") or ():
            prior = displays.get(_option_key(option))
            if prior and prior.get("valueCoding", {}).get("display"):
                option["valueCoding"]["display"] = prior["valueCoding"]["display"]
    return out


def _option_key(option: Mapping[str, Any]) -> str:
    if "valueCoding" in option:
        return "c:" + str((option.get("valueCoding") or {}).get("code"))
    return "i:" + str(option.get("valueInteger"))


def _translation(language: str, text: str) -> dict[str, Any]:
    return {
        "url": TRANSLATION,
        "extension": [
            {"url": "lang", "valueCode": language},
            {"url": "content", "valueString": text},
        ],
    }


def _set_text(item: dict[str, Any], form_language: str | None, language: str, text: str) -> None:
    """The form's own language goes to ``text``; another one becomes a translation."""
    if form_language in (None, language) or "text" not in item:
        item["text"] = text
        return
    ext = [
        e
        for e in (item.get("_text") or {}).get("extension", [])
        if not any(x.get("valueCode") == language for x in e.get("extension", []))
    ]
    item["_text"] = {"extension": [*ext, _translation(language, text)]}


def _wording_of_questionnaire(
    inst: Instrument, wording: Mapping[str, Any], issues: list[OutcomeIssue]
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """linkId -> text and linkId -> {answer key: display} of a Questionnaire, its items
    matched by our linkId or by their LOINC code."""
    texts: dict[str, str] = {}
    answers: dict[str, dict[str, str]] = {}
    known = {*inst.items, *inst.unscored}
    stack = [(f"Questionnaire.item[{n}]", i) for n, i in enumerate(wording.get("item") or ())]
    while stack:
        where, item = stack.pop(0)
        if not isinstance(item, dict):
            continue
        children = item.get("item") or ()
        stack.extend((f"{where}.item[{n}]", c) for n, c in enumerate(children))
        if item.get("type") == "group" or (children and not item.get("answerOption")):
            continue
        link_id = item.get("linkId") if item.get("linkId") in known else None
        if link_id is None:
            for coding in item.get("code") or ():
                if coding.get("system") == LOINC:
                    link_id = inst.linkid_for(str(coding.get("code")))
                    if link_id is None and coding.get("code") == inst.total_code:
                        link_id = "total"
        if link_id == "total":
            continue  # the total is computed, never asked
        if link_id is None:
            issues.append(
                OutcomeIssue(
                    "error",
                    "structure",
                    f"Item {item.get('linkId')!r} matches no item of {inst.title} (neither its "
                    f"linkId nor a LOINC code of the instrument)",
                    where,
                )
            )
            continue
        if isinstance(item.get("text"), str):
            texts[link_id] = item["text"]
        options = item.get("answerOption")
        if options:
            ours = {_option_key(o) for o in _answer_options(inst)}
            theirs = {_option_key(o) for o in options}
            if ours != theirs:
                issues.append(
                    OutcomeIssue(
                        "error",
                        "structure",
                        f"The answer options of {link_id} are {sorted(theirs)}; {inst.title} "
                        f"has {sorted(ours)}",
                        f"{where}.answerOption",
                    )
                )
            answers[link_id] = {
                _option_key(o): str(o["valueCoding"]["display"])
                for o in options
                if isinstance(o.get("valueCoding"), dict) and o["valueCoding"].get("display")
            }
        elif (
            item.get("answerValueSet")
            and link_id not in inst.unscored
            and item["answerValueSet"] != inst.answer_value_set
        ):
            issues.append(
                OutcomeIssue(
                    "error",
                    "structure",
                    f"The answers of {link_id} come from {item['answerValueSet']}; "
                    f"{inst.title} is scored on {inst.answer_value_set or 'integer scores'}",
                    f"{where}.answerValueSet",
                )
            )
    return texts, answers


def install_wording(
    wording: Mapping[str, Any],
    stored: Mapping[str, Any] | None,
    instrument_id: str | None = None,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """The instrument's Questionnaire with the wording of ``wording`` installed.

    ``wording`` is a Questionnaire (its items matched by linkId or LOINC code) or
    ``{"instrument": id, "language": code, "items": {linkId: text}}``. Every item must be
    known and every answer option present; every scored item must have text unless
    ``allow_missing``. Raises a FhirError naming each mismatch.
    """
    issues: list[OutcomeIssue] = []
    language = str(wording.get("language") or "en")
    if wording.get("resourceType") == "Questionnaire":
        inst = _identify(wording, instrument_id)
        texts, answers = _wording_of_questionnaire(inst, wording, issues)
    elif isinstance(wording.get("items"), dict):
        inst = instrument(str(instrument_id or wording.get("instrument") or ""))
        known = {*inst.items, *inst.unscored}
        texts, answers = {}, {}
        for link_id, text in wording["items"].items():
            if link_id not in known:
                issues.append(
                    OutcomeIssue(
                        "error",
                        "structure",
                        f"{link_id!r} is not an item of {inst.title} (items: {', '.join(known)})",
                        f"items.{link_id}",
                    )
                )
            elif not isinstance(text, str) or not text.strip():
                issues.append(
                    OutcomeIssue(
                        "error",
                        "required",
                        "The text must be a non-empty string",
                        f"items.{link_id}",
                    )
                )
            else:
                texts[link_id] = text
    else:
        raise FhirError(
            400,
            "A wording file is a Questionnaire or {'instrument', 'language', 'items': "
            "{linkId: text}}",
            "structure",
        )
    missing = [link_id for link_id in inst.items if link_id not in texts]
    if missing and not allow_missing:
        issues.append(
            OutcomeIssue(
                "error",
                "required",
                f"The wording has no text for {', '.join(missing)} of {inst.title} "
                "(install it with --allow-missing to keep those items without wording)",
                "item",
            )
        )
    if issues:
        raise FhirError(422, issues, "structure")
    body = merge_wording(questionnaire(inst), stored)
    form_language = body.get("language")
    if form_language is None:
        body["language"] = form_language = language
    for item in questions(body):
        link_id = item["linkId"]
        if link_id in texts:
            _set_text(item, form_language, language, texts[link_id])
        if form_language == language:
            for option in item.get("answerOption") or ():
                display = answers.get(link_id, {}).get(_option_key(option))
                if display and "valueCoding" in option:
                    option["valueCoding"]["display"] = display
    return body


def _identify(wording: Mapping[str, Any], instrument_id: str | None) -> Instrument:
    if instrument_id:
        return instrument(instrument_id)
    codes = {
        c.get("code")
        for c in wording.get("code") or ()
        if isinstance(c, dict) and c.get("system") == LOINC
    }
    url = wording.get("url")
    for inst in instruments():
        if (inst.panel and inst.panel in codes) or url in inst.canonicals():
            return inst
    raise FhirError(
        422,
        OutcomeIssue(
            "error",
            "structure",
            "The Questionnaire names no known instrument (by a LOINC panel code in "
            "Questionnaire.code or our url); pass --instrument",
            "Questionnaire.code",
        ),
        "structure",
    )
