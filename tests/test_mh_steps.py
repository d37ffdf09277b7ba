"""Stepped care on both stores: hand-built persons at every edge of the step-up rules (the
review point at exactly 10 weeks on a step vs 9 weeks and 6 days; a pending proposal; the top
step; a safety flag before, on and after the day a step started), idempotency, confirmation by
an ordinary FHIR update through the server, a declined proposal proposed again only at the
next review point, and the validation of a ministry's own file."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from takamul.cli import app
from takamul.mentalhealth.registry import CARE_PROGRAMME_SYSTEM, registry
from takamul.mentalhealth.safety import find_all
from takamul.mentalhealth.steps import (
    STEP_SYSTEM,
    Outcome,
    SteppedCareError,
    current_step,
    load_stepped_care,
    parse_stepped_care,
    propose_steps,
)
from takamul.settings import Settings
from takamul.store.repository import Store
from tests.server import postgres_database, running_server

AS_OF = date(2025, 6, 30)
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
PACKAGED = Path(__file__).parent.parent / "src/takamul/mentalhealth/data/stepped_care.json"


def ago(days: int, base: date = AS_OF) -> str:
    return (base - timedelta(days=days)).isoformat()


def person(pid: str, enrolled_days: int, *phq9: tuple[int, int]) -> list[dict[str, Any]]:
    """A Patient, a collaborative-care episode and PHQ-9 totals (days before AS_OF, value)."""
    bodies: list[dict[str, Any]] = [
        {
            "resourceType": "Patient",
            "id": pid,
            "birthDate": "1980-03-01",
            "managingOrganization": {"reference": "Organization/org-a"},
        },
        {
            "resourceType": "EpisodeOfCare",
            "id": f"{pid}-eoc",
            "status": "active",
            "type": [{"coding": [{"system": CARE_PROGRAMME_SYSTEM, "code": "collaborative-care"}]}],
            "patient": {"reference": f"Patient/{pid}"},
            "managingOrganization": {"reference": "Organization/org-a"},
            "period": {"start": ago(enrolled_days)},
        },
    ]
    for n, (days, value) in enumerate(phq9):
        bodies.append(
            {
                "resourceType": "Observation",
                "id": f"{pid}-phq9-{n}",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "44261-6"}]},
                "subject": {"reference": f"Patient/{pid}"},
                "effectiveDateTime": f"{ago(days)}T10:00:00+03:00",
                "valueInteger": value,
            }
        )
    return bodies


def step_request(
    pid: str, step: int, started_days: int, status: str = "active", intent: str = "order"
) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": f"{pid}-step{step}",
        "status": status,
        "intent": intent,
        "code": {"coding": [{"system": STEP_SYSTEM, "code": f"step-{step}"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": ago(started_days + 2),
        "occurrencePeriod": {"start": ago(started_days)},
    }


def flag(pid: str, days: int) -> dict[str, Any]:
    return {
        "resourceType": "Flag",
        "id": f"{pid}-flag",
        "status": "active",
        "code": {"coding": [{"system": SNOMED, "code": "225444004"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": f"{ago(days)}T09:00:00+03:00"},
    }


NOT_IMPROVING = ((200, 14), (5, 12))  # a 14 % drop: no response
# person -> (resources, expected (current step, target step, result) or None: no rule fired)
WORLD: dict[str, tuple[list[dict[str, Any]], tuple[int, int | None, str] | None]] = {
    "ten-weeks": (person("ten-weeks", 70, (70, 14), (5, 12)), (1, 2, "proposed")),
    "nine-weeks": (person("nine-weeks", 69, (69, 14), (5, 12)), None),  # improving yet
    "responding": (person("responding", 120, (120, 14), (5, 7)), None),
    "step2-due": (  # on step 2 for exactly 10 weeks, still not improving
        [*person("step2-due", 200, *NOT_IMPROVING), step_request("step2-due", 2, 70)],
        (2, 3, "proposed"),
    ),
    "step2-early": (  # on step 2 for 69 days: not at the review point yet
        [*person("step2-early", 200, *NOT_IMPROVING), step_request("step2-early", 2, 69)],
        None,
    ),
    "step2-completed": (  # a completed step request is not the current step: back on step 1
        [
            *person("step2-completed", 200, *NOT_IMPROVING),
            step_request("step2-completed", 2, 100, status="completed"),
        ],
        (1, 2, "proposed"),
    ),
    "top": (  # on step 3 (the top step) and not improving: nothing beyond it
        [*person("top", 300, (300, 20), (5, 18)), step_request("top", 3, 90)],
        (3, None, "top-step"),
    ),
    "pending": (  # a draft proposal waits for a clinician: not proposed again
        [
            *person("pending", 200, *NOT_IMPROVING),
            step_request("pending", 2, 10, status="draft", intent="proposal"),
        ],
        (1, 2, "pending"),
    ),
    "flag": (  # responding, but a suicide-risk flag: an urgent step up
        [*person("flag", 120, (120, 14), (5, 7)), flag("flag", 3)],
        (1, 2, "proposed"),
    ),
    "flag-on-step-start": (  # the flag on the day step 2 started is why it started
        [
            *person("flag-on-step-start", 120, (120, 14), (5, 7)),
            step_request("flag-on-step-start", 2, 20),
            flag("flag-on-step-start", 20),
        ],
        None,
    ),
    "flag-after-step-start": (
        [
            *person("flag-after-step-start", 120, (120, 14), (5, 7)),
            step_request("flag-after-step-start", 2, 20),
            flag("flag-after-step-start", 19),
        ],
        (2, 3, "proposed"),
    ),
}


def _build(store: Store) -> None:
    bodies: list[dict[str, Any]] = [{"resourceType": "Organization", "id": "org-a"}]
    for resources, _ in WORLD.values():
        bodies += resources
    store.write(lambda s: [s.update(b["resourceType"], b["id"], b) for b in bodies])


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'takamul.sqlite'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> Iterator[Store]:
    s = Store(Settings(database_url=db_url, export_dir=tmp_path / "exports"))
    _build(s)
    yield s
    s.close()


def _by_person(outcomes: list[Outcome]) -> dict[str, Outcome]:
    # by record: a running server links the records to persons (golden records)
    return {o.patient_id: o for o in outcomes}


def _step_requests(store: Store) -> dict[str, dict[str, Any]]:
    with store.reading() as session:
        return {str(r["id"]): r for r in find_all(session, "ServiceRequest", [])}


def test_every_rule_edge(store: Store) -> None:
    outcomes = _by_person(propose_steps(store, AS_OF))
    assert set(outcomes) == {k for k, (_, want) in WORLD.items() if want is not None}
    for key, (_, want) in WORLD.items():
        if want is not None:
            o = outcomes[key]
            assert (o.current, o.target, o.result) == want, key
    assert outcomes["flag"].rules == ("safety-flag",)
    assert outcomes["ten-weeks"].rules == ("not-improving",)


def test_a_proposal_is_a_labelled_draft_for_a_clinician(store: Store) -> None:
    outcomes = _by_person(propose_steps(store, AS_OF))
    stored = _step_requests(store)
    body = stored[str(outcomes["ten-weeks"].request_id)]
    assert (body["status"], body["intent"], body["priority"]) == ("draft", "proposal", "routine")
    assert body["code"]["coding"][0] == {
        "system": STEP_SYSTEM,
        "code": "step-2",
        "display": load_stepped_care().step(2).title,
    }
    assert body["subject"] == {"reference": "Patient/ten-weeks"}
    assert body["authoredOn"] == AS_OF.isoformat()
    assert {"reference": "EpisodeOfCare/ten-weeks-eoc"} in body["supportingInfo"]
    assert [s["code"] for s in body["meta"]["security"]] == ["PSY"]
    assert body["reasonCode"][0]["coding"][0]["code"] == "not-improving"
    urgent = stored[str(outcomes["flag"].request_id)]
    assert urgent["priority"] == "urgent" and urgent["reasonCode"][0]["coding"][0]["code"] == (
        "safety-flag"
    )
    step3 = stored[str(outcomes["step2-due"].request_id)]
    assert step3["code"]["coding"][0]["code"] == "step-3"
    assert {"reference": "ServiceRequest/step2-due-step2"} in step3["supportingInfo"]
    # the top step and the pending one wrote nothing
    assert outcomes["top"].request_id is None
    assert sum(1 for r in stored.values() if r["status"] == "draft") == 5 + 1  # 5 new + pending


def test_running_twice_proposes_nothing_more(store: Store) -> None:
    first = propose_steps(store, AS_OF)
    before = _step_requests(store)
    again = _by_person(propose_steps(store, AS_OF))
    assert _step_requests(store).keys() == before.keys()
    proposed = [o.patient_id for o in first if o.result == "proposed"]
    assert proposed and all(again[p].result == "pending" for p in proposed)
    # even without the pending check (the registry read again later the same day), the derived
    # id finds the proposal already written
    later = _by_person(propose_steps(store, AS_OF + timedelta(days=1)))
    assert all(later[p].result == "pending" for p in proposed)
    # a day later only the two persons who reached their review point that day are proposed
    new = {r["subject"]["reference"] for k, r in _step_requests(store).items() if k not in before}
    assert new == {"Patient/nine-weeks", "Patient/step2-early"}
    assert {p for p, o in later.items() if o.result == "proposed"} == {"nine-weeks", "step2-early"}


def _put(base: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.put(
        f"{base}/ServiceRequest/{body['id']}",
        json=body,
        headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def test_confirmation_by_a_fhir_update_and_the_top_step(store: Store, db_url: str) -> None:
    first = _by_person(propose_steps(store, AS_OF))
    proposal_id = str(first["ten-weeks"].request_id)
    with running_server(db_url) as base:
        body = httpx.get(f"{base}/ServiceRequest/{proposal_id}", timeout=60).json()
        body["status"] = "active"  # the clinician confirms the proposal
        body["occurrencePeriod"] = {"start": AS_OF.isoformat()}
        confirmed = _put(base, body)
        assert confirmed["status"] == "active" and confirmed["meta"]["versionId"] == "2"
        # on step 2 from the confirmation: no proposal until its review point
        care = load_stepped_care()
        requests = [r for r in _step_requests(store).values() if r["subject"] == body["subject"]]
        now = current_step(care, requests, AS_OF - timedelta(days=70), AS_OF)
        assert (now.step.number, now.since, now.request_id) == (2, AS_OF, proposal_id)
        day69 = _by_person(propose_steps(store, AS_OF + timedelta(days=69)))
        assert "ten-weeks" not in day69
        day70 = _by_person(propose_steps(store, AS_OF + timedelta(days=70)))
        assert (day70["ten-weeks"].current, day70["ten-weeks"].target) == (2, 3)
        step3 = httpx.get(f"{base}/ServiceRequest/{day70['ten-weeks'].request_id}").json()
        step3["status"] = "active"
        step3["occurrencePeriod"] = {"start": (AS_OF + timedelta(days=70)).isoformat()}
        _put(base, step3)
    top = _by_person(propose_steps(store, AS_OF + timedelta(days=200)))
    assert (top["ten-weeks"].current, top["ten-weeks"].target, top["ten-weeks"].result) == (
        3,
        None,
        "top-step",
    )
    drafts = [r for r in _step_requests(store).values() if r["subject"] == body["subject"]]
    assert sorted(r["code"]["coding"][0]["code"] for r in drafts) == ["step-2", "step-3"]


def test_a_declined_proposal_returns_at_the_next_review_point(store: Store) -> None:
    first = _by_person(propose_steps(store, AS_OF))
    declined_id = str(first["ten-weeks"].request_id)
    body = _step_requests(store)[declined_id]
    body["status"] = "revoked"
    store.write(lambda s: s.update("ServiceRequest", declined_id, body))
    # 70 + 69 days on step 1: still the first review point
    same = _by_person(propose_steps(store, AS_OF + timedelta(days=69)))
    assert same["ten-weeks"].result == "already-proposed"
    assert same["ten-weeks"].request_id == declined_id
    assert _step_requests(store)[declined_id]["status"] == "revoked"
    # 140 days on step 1: the second review point proposes again
    second = _by_person(propose_steps(store, AS_OF + timedelta(days=70)))
    assert second["ten-weeks"].result == "proposed"
    assert second["ten-weeks"].request_id != declined_id


def test_the_cli_proposes_and_counts(store: Store, db_url: str) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["mh", "steps", "propose", "--db", db_url, "--as-of", AS_OF.isoformat()]
    )
    assert result.exit_code == 0, result.output
    assert "Patient/ten-weeks\tstep 1 -> 2\tnot-improving" in result.output
    assert f"{len(registry(store, AS_OF))} persons in the registry" in result.output
    assert "5 proposed" in result.output and "1 pending" in result.output
    again = runner.invoke(
        app, ["mh", "steps", "propose", "--db", db_url, "--as-of", AS_OF.isoformat()]
    )
    assert "proposed" not in again.output.split("registry:")[1]


# -- the file ------------------------------------------------------------------------------------


def _packaged() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(PACKAGED.read_text(encoding="utf-8"))
    return loaded


def test_the_packaged_file_cites_its_sources() -> None:
    care = load_stepped_care()
    assert [s.number for s in care.steps] == [1, 2, 3] and care.top.performer == "psychiatrist"
    assert {"mhgap-2.0", "nice-cg90", "nice-cg123", "iran-phc"} <= set(care.sources)
    assert all(s.sources for s in care.steps) and all(r.sources for r in care.rules)


@pytest.mark.parametrize(
    ("change", "names"),
    [
        (lambda d: d["steps"][1].update(review_after_weeks=0), "steps[1].review_after_weeks"),
        (lambda d: d["steps"][2].update(step=4), "steps[2].step must be 3"),
        (lambda d: d["steps"][0].pop("title"), "steps[0].title is missing"),
        (lambda d: d["steps"][0].update(sources=["who-2099"]), "steps[0].sources: 'who-2099'"),
        (lambda d: d["step_up"][0].update(statuses=["better"]), "step_up[0].statuses: 'better'"),
        (lambda d: d["step_up"][1].update(to="sideways"), "step_up[1].to must be one of"),
        (lambda d: d["step_up"][1].update(when="moon"), "step_up[1].when must be one of"),
        (lambda d: d["steps"][1].update(code="step-1"), "steps[].code must be unique"),
        (lambda d: d.pop("steps"), "file.steps is missing"),
    ],
)
def test_a_bad_file_names_the_field(change: Any, names: str) -> None:
    raw = _packaged()
    change(raw)
    with pytest.raises(SteppedCareError, match=re.escape(names)):
        parse_stepped_care(raw)


def test_a_ministry_file_replaces_the_steps(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _packaged()
    # Persian titles travel untouched; a safety flag goes straight to the top step
    raw["steps"][1]["title"] = "پزشک عمومی: دارو یا درمان روان‌شناختی کوتاه"
    raw["steps"].append({**raw["steps"][2], "step": 4, "code": "step-4", "title": "بستری"})
    raw["step_up"][1]["to"] = "top"
    path = tmp_path / "stepped-care-ir.json"
    path.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    monkeypatch.setenv("TAKAMUL_STEPPED_CARE", str(path))
    care = load_stepped_care()
    assert care.top.title == "بستری"
    outcomes = _by_person(propose_steps(store, AS_OF, care))
    assert (outcomes["flag"].target, outcomes["top"].target) == (4, 4)
    stored = _step_requests(store)
    step2 = stored[str(outcomes["ten-weeks"].request_id)]
    assert step2["code"]["coding"][0]["display"] == "پزشک عمومی: دارو یا درمان روان‌شناختی کوتاه"
    monkeypatch.setenv("TAKAMUL_STEPPED_CARE", str(tmp_path / "missing.json"))
    with pytest.raises(SteppedCareError, match=r"missing\.json does not exist"):
        load_stepped_care()


def test_the_cli_refuses_a_bad_file_naming_the_field(tmp_path: Path) -> None:
    raw = _packaged()
    raw["step_up"][0]["statuses"] = ["better"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    result = CliRunner().invoke(
        app,
        ["mh", "steps", "propose", "--db", f"sqlite:///{tmp_path / 'x.sqlite'}",
         "--stepped-care", str(path)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "step_up[0].statuses: 'better' is not a registry status" in result.output
