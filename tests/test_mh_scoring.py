"""Scoring by the published rules, on hand-built responses (no wording: answers are scores or
LOINC answer codes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from takamul.cli import app
from takamul.fhir.validation import validate_resource
from takamul.mentalhealth.instruments import instrument, instruments, questionnaire, questions
from takamul.mentalhealth.scoring import (
    derived_id,
    identify,
    iter_responses,
    score_response,
    scored_observation,
)

PHQ9 = instrument("phq-9")
GAD7 = instrument("gad-7")
LA = {0: "LA6568-5", 1: "LA6569-3", 2: "LA6570-1", 3: "LA6571-9"}


def response(
    inst_id: str,
    values: list[int | None],
    status: str = "completed",
    questionnaire_url: str | None = "default",
    codings: bool = False,
) -> dict[str, Any]:
    inst = instrument(inst_id)
    items = []
    for link_id, value in zip(inst.items, values, strict=True):
        if value is None:
            items.append({"linkId": link_id})
        elif codings:
            items.append(
                {
                    "linkId": link_id,
                    "answer": [{"valueCoding": {"system": "http://loinc.org", "code": LA[value]}}],
                }
            )
        else:
            items.append({"linkId": link_id, "answer": [{"valueInteger": value}]})
    body: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "id": "r1",
        "status": status,
        "subject": {"reference": "Patient/p1"},
        "authored": "2026-03-01T10:00:00Z",
        "item": items,
    }
    if questionnaire_url:
        body["questionnaire"] = inst.url if questionnaire_url == "default" else questionnaire_url
    return body


def spread(total: int, n: int, top: int = 3) -> list[int]:
    """``n`` item scores summing to ``total``."""
    values = [0] * n
    for i in range(total):
        values[i % n] += 1
    assert max(values) <= top
    return values


@pytest.mark.parametrize(
    ("total", "band"),
    [
        (0, "minimal"),
        (4, "minimal"),
        (5, "mild"),
        (9, "mild"),
        (10, "moderate"),
        (14, "moderate"),
        (15, "moderately-severe"),
        (19, "moderately-severe"),
        (20, "severe"),
        (27, "severe"),
    ],
)
def test_phq9_every_severity_boundary(total: int, band: str) -> None:
    score = score_response(response("phq-9", spread(total, 9)))
    assert score is not None and score.total == total
    assert score.band is not None and score.band.code == band
    assert not score.prorated


@pytest.mark.parametrize(
    ("total", "band"),
    [
        (0, "minimal"),
        (4, "minimal"),
        (5, "mild"),
        (9, "mild"),
        (10, "moderate"),
        (14, "moderate"),
        (15, "severe"),
        (21, "severe"),
    ],
)
def test_gad7_every_severity_boundary(total: int, band: str) -> None:
    score = score_response(response("gad-7", spread(total, 7)))
    assert score is not None and score.total == total and score.band is not None
    assert score.band.code == band


@pytest.mark.parametrize(
    ("inst_id", "total", "band"),
    [
        ("phq-2", 2, "negative"),
        ("phq-2", 3, "positive"),
        ("gad-2", 2, "negative"),
        ("gad-2", 3, "positive"),
        ("epds", 12, "negative"),
        ("epds", 13, "positive"),
        ("zbi-12", 12, "negative"),
        ("zbi-12", 13, "positive"),
    ],
)
def test_screen_cut_offs(inst_id: str, total: int, band: str) -> None:
    inst = instrument(inst_id)
    score = score_response(response(inst_id, spread(total, len(inst.items), inst.max_score)))
    assert score is not None and score.total == total and score.band is not None
    assert score.band.code == band


def test_zbi12_cut_off_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    from takamul.mentalhealth import instruments as module

    monkeypatch.setenv("TAKAMUL_MH_ZBI12_CUTOFF", "17")
    module._load.cache_clear()
    try:
        zbi = module.instrument("zbi-12")
        assert zbi.band(16).code == "negative" and zbi.band(17).code == "positive"
    finally:
        monkeypatch.delenv("TAKAMUL_MH_ZBI12_CUTOFF")
        module._load.cache_clear()
    assert module.instrument("zbi-12").band(13).code == "positive"


@pytest.mark.parametrize(("item9", "safety"), [(0, False), (1, True), (2, True), (3, True)])
def test_item9_at_each_answer(item9: int, safety: bool) -> None:
    values = [1, 1, 1, 1, 1, 1, 1, 1, item9]
    score = score_response(response("phq-9", values))
    assert score is not None
    assert score.safety_value == item9
    assert score.safety is safety
    assert score.total == 8 + item9


def test_item9_counts_even_when_the_form_cannot_be_scored() -> None:
    values: list[int | None] = [None, None, None, 0, 0, 0, 0, 0, 2]
    score = score_response(response("phq-9", values))
    assert score is not None and score.total is None
    assert score.safety and score.safety_value == 2


@pytest.mark.parametrize(
    ("values", "total"),
    [
        # one missing: 8 answered summing 10 -> 10 * 9 / 8 = 11.25 -> 11
        ([2, 2, 2, 2, 1, 1, 0, 0, None], 11),
        # two missing: 7 answered summing 7 -> 9 -> 9
        ([1, 1, 1, 1, 1, 1, 1, None, None], 9),
        # two missing: 7 answered summing 11 -> 14.14 -> 14 (moderate, not 11's mild edge)
        ([3, 3, 2, 1, 1, 1, 0, None, None], 14),
        # 7 answered summing 3 -> 3.857 -> 4 (half rounds up: 8 answered summing 5 is 5.625)
        ([1, 1, 1, 0, 0, 0, 0, None, None], 4),
    ],
)
def test_phq9_prorates_one_or_two_missing(values: list[int | None], total: int) -> None:
    score = score_response(response("phq-9", values))
    assert score is not None and score.prorated and score.total == total
    assert score.missing == [PHQ9.items[i] for i, v in enumerate(values) if v is None]


def test_phq9_three_missing_is_not_scored_and_says_why() -> None:
    score = score_response(response("phq-9", [1, 1, 1, 1, 1, 1, None, None, None]))
    assert score is not None and score.total is None and score.band is None
    outcome = score.outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    text = " ".join(i["diagnostics"] for i in outcome["issue"])
    assert "3 of 9 items" in text and "44253-3" in text and "at most 2" in text
    assert scored_observation(response("phq-9", [1] * 6 + [None] * 3), "r1", score) is None


def test_gad7_prorates_one_missing_only() -> None:
    one = score_response(response("gad-7", [3, 3, 3, 3, 3, 2, None]))
    assert one is not None and one.total == 20 and one.prorated  # 17 * 7 / 6 = 19.83
    two = score_response(response("gad-7", [3, 3, 3, 3, 3, None, None]))
    assert two is not None and two.total is None


def test_screens_allow_no_missing_item() -> None:
    score = score_response(response("phq-2", [3, None]))
    assert score is not None and score.total is None


def test_in_progress_is_not_scored() -> None:
    score = score_response(response("phq-9", [1] * 9, status="in-progress"))
    assert score is not None and score.total is None
    assert any("in-progress" in i.diagnostics for i in score.issues)


def test_answer_codes_score_like_integers() -> None:
    values = [3, 2, 1, 0, 3, 2, 1, 0, 1]
    coded = score_response(response("phq-9", values, codings=True))
    plain = score_response(response("phq-9", values))
    assert coded is not None and plain is not None
    assert coded.total == plain.total == 13 and coded.safety


def test_an_answer_out_of_range_counts_as_missing() -> None:
    score = score_response(response("phq-9", [4, 1, 1, 1, 1, 1, 1, 1, 0]))
    assert score is not None and score.prorated and score.missing == ["44250-9"]
    assert score.total == 8  # 7 over 8 answered items: 7 * 9 / 8 = 7.875
    assert any(i.severity == "warning" and "44250-9" in i.diagnostics for i in score.issues)


def test_identified_by_alias_version_or_link_ids() -> None:
    synth = response("phq-9", [0] * 9, questionnaire_url="http://loinc.org/q/44249-1")
    assert identify(synth) == PHQ9
    versioned = response("gad-7", [0] * 7, questionnaire_url=GAD7.url + "|1.0")
    assert identify(versioned) == GAD7
    assert identify(response("phq-9", [0] * 9, questionnaire_url=None)) == PHQ9
    assert identify(response("phq-2", [0, 0], questionnaire_url=None)) == instrument("phq-2")
    other = {"resourceType": "QuestionnaireResponse", "status": "completed", "item": []}
    assert identify(other) is None and score_response(other) is None


def test_the_synthetic_populations_responses_score_to_their_own_totals() -> None:
    """The synthetic data writes its total as an item too: it must not be summed."""
    spec = json.loads(
        (Path(__file__).parents[1] / "src/takamul/synth/data/clinical.json").read_text()
    )["questionnaires"]
    for key, inst_id in (("phq9", "phq-9"), ("gad7", "gad-7"), ("epds", "epds")):
        s = spec[key]
        values = spread(11, len(s["items"]))
        body = {
            "resourceType": "QuestionnaireResponse",
            "questionnaire": s["url"],
            "status": "completed",
            "item": [
                {"linkId": c, "answer": [{"valueInteger": v}]}
                for c, v in zip(s["items"], values, strict=True)
            ]
            + [{"linkId": s["total"], "answer": [{"valueInteger": 11}]}],
        }
        score = score_response(body)
        assert score is not None and score.instrument.id == inst_id and score.total == 11
        assert score.instrument.total_code == s["total"]


def test_scored_observation_shape() -> None:
    body = response("phq-9", [2] * 9)
    score = score_response(body)
    assert score is not None
    obs = scored_observation(body, "r1", score)
    assert obs is not None
    assert obs["id"] == "mhs-r1" and obs["status"] == "final"
    assert obs["code"]["coding"][0] == {"system": "http://loinc.org", "code": "44261-6"}
    assert obs["valueInteger"] == 18
    assert obs["interpretation"][0]["coding"][0]["code"] == "phq-9-moderately-severe"
    assert obs["derivedFrom"] == [{"reference": "QuestionnaireResponse/r1"}]
    assert obs["effectiveDateTime"] == body["authored"] and obs["subject"] == body["subject"]
    assert obs["category"][0]["coding"][0]["code"] == "survey"
    # stored without validating again (the hook's cost): it must be valid as built, prorated too
    prorated = response("phq-9", [2] * 7 + [None, None])
    prorated_score = score_response(prorated)
    assert prorated_score is not None
    for built in (obs, scored_observation(prorated, "r1", prorated_score)):
        assert built is not None
        assert [i for i in validate_resource(built, "Observation") if i.severity == "error"] == []


def test_a_caregiver_answering_about_themselves_is_the_performer_not_the_subject() -> None:
    # R4 allows Patient, Group, Device or Location as Observation.subject, not RelatedPerson
    body = response("zbi-12", [2] * 12)
    body["subject"] = {"reference": "RelatedPerson/caregiver-1"}
    score = score_response(body)
    assert score is not None and score.total == 24
    obs = scored_observation(body, "z1", score)
    assert obs is not None
    assert "subject" not in obs and obs["performer"] == [body["subject"]]
    assert [i for i in validate_resource(obs, "Observation") if i.severity == "error"] == []


def test_derived_ids_fit_and_are_deterministic() -> None:
    long_id = "x" * 64
    assert derived_id("mhs", "abc") == "mhs-abc"
    assert len(derived_id("mhs", long_id)) <= 64
    assert derived_id("mhs", long_id) == derived_id("mhs", long_id) != derived_id("mht", long_id)


def test_questionnaires_carry_codes_and_scores_but_no_wording() -> None:
    for inst in instruments():
        q = questionnaire(inst)
        assert q["url"] == f"https://takamul.health/fhir/Questionnaire/{inst.id}"
        assert [i["linkId"] for i in questions(q)][: len(inst.items)] == list(inst.items)
        assert all("text" not in i for i in questions(q))
        scores = {
            o.get("valueInteger", o.get("extension", [{}])[0].get("valueDecimal"))
            for o in questions(q)[0]["answerOption"]
        }
        assert scores == set(range(inst.max_score + 1))
    assert questionnaire(PHQ9)["code"] == [{"system": "http://loinc.org", "code": "44249-1"}]
    assert instrument("gad-7").panel == "69737-5" and instrument("epds").total_code == "99046-5"
    assert PHQ9.safety_item == "44260-8" and PHQ9.total_code == "44261-6"


def test_iter_responses_reads_bundles_and_lists() -> None:
    a, b = response("phq-9", [0] * 9), response("gad-7", [0] * 7)
    bundle = {
        "resourceType": "Bundle",
        "entry": [{"resource": a}, {"resource": {"resourceType": "Patient"}}],
    }
    assert list(iter_responses([bundle, b])) == [a, b]


def test_cli_score_prints_totals_bands_and_outcomes(tmp_path: Path) -> None:
    good = response("phq-9", [3, 3, 3, 3, 3, 3, 3, 0, 1])
    good["id"] = "good"
    bad = response("gad-7", [1, 1, 1, 1, 1, None, None])
    bad["id"] = "bad"
    path = tmp_path / "in.ndjson"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    result = CliRunner().invoke(app, ["mh", "score", str(path)])
    assert result.exit_code == 1, result.output  # one response could not be scored
    assert "QuestionnaireResponse/good" in result.output and "22" in result.output
    assert "severe" in result.output and "SAFETY" in result.output
    assert "QuestionnaireResponse/bad" in result.output and "no score" in result.output
    assert "OperationOutcome" in result.output and "2 of 7 items" in result.output
    path.write_text(json.dumps({"resourceType": "Bundle", "entry": [{"resource": good}]}))
    ok = CliRunner().invoke(app, ["mh", "score", str(path)])
    assert ok.exit_code == 0 and "PHQ-9\t22" in ok.output
