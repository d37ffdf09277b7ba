"""Scoring on write and safety on both stores, through every way the record accepts a response:
POST, PUT, a transaction, a batch and ``takamul load`` (a bulk load, caught up afterwards).
A positive PHQ-9 item 9 always ends in exactly one Flag and one Task; a negative one in none.
Escalation runs on a controlled clock."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from takamul.cli import app
from takamul.fhir.validation import validate_resource
from takamul.mentalhealth.instruments import instrument, questions
from takamul.mentalhealth.service import MentalHealth
from takamul.settings import Settings
from takamul.store.repository import Store
from tests.server import postgres_database, running_server

ROOT = Path(__file__).resolve().parents[1]
PHQ9 = instrument("phq-9")
AUTHORED = "2026-03-01T10:00:00Z"
SAFETY = "https://takamul.health/fhir/CodeSystem/outreach|safety-follow-up"
PATHS = ["post", "put", "transaction", "batch", "load"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def record(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(database URL, FHIR base) of a running server with a region, two facilities (one under
    the region) and no background ticks (the tests drive the clock)."""
    env = {"TAKAMUL_MH_INTERVAL_SECONDS": "0"}
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('mh') / 'mh.sqlite'}"
        with running_server(url, env) as base:
            _setup(base)
            yield url, base
    else:
        with postgres_database() as url, running_server(url, env) as base:
            _setup(base)
            yield url, base


def _setup(base: str) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        for body in (
            {"resourceType": "Organization", "id": "region", "name": "Region"},
            {
                "resourceType": "Organization",
                "id": "fac",
                "name": "Facility",
                "partOf": {"reference": "Organization/region"},
            },
            {"resourceType": "Organization", "id": "lone", "name": "Facility without parent"},
        ):
            assert client.put(f"/Organization/{body['id']}", json=body).status_code in (200, 201)


def patient(pid: str, org: str = "fac") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"family": "Test", "given": [pid]}],
        "managingOrganization": {"reference": f"Organization/{org}"},
    }


def phq9(pid: str, item9: int, rid: str | None = None) -> dict[str, Any]:
    values = [1, 1, 1, 1, 1, 1, 1, 1, item9]
    body: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": PHQ9.url,
        "status": "completed",
        "subject": {"reference": f"Patient/{pid}"},
        "authored": AUTHORED,
        "item": [
            {"linkId": link_id, "answer": [{"valueInteger": v}]}
            for link_id, v in zip(PHQ9.items, values, strict=True)
        ],
    }
    if rid:
        body["id"] = rid
    return body


def _search(client: httpx.Client, path: str) -> list[dict[str, Any]]:
    got = client.get(path)
    assert got.status_code == 200, got.text
    return [
        e["resource"]
        for e in got.json().get("entry", [])
        if e.get("search", {}).get("mode", "match") == "match"
    ]


def _write(url: str, client: httpx.Client, how: str, pid: str, item9: int, tmp: Path) -> str:
    """Store a Patient and a PHQ-9 response the ``how`` way; the response's id."""
    rid = f"qr-{pid}"
    if how == "post":
        assert client.put(f"/Patient/{pid}", json=patient(pid)).status_code in (200, 201)
        made = client.post("/QuestionnaireResponse", json=phq9(pid, item9))
        assert made.status_code == 201, made.text
        return str(made.json()["id"])
    if how == "put":
        assert client.put(f"/Patient/{pid}", json=patient(pid)).status_code in (200, 201)
        done = client.put(f"/QuestionnaireResponse/{rid}", json=phq9(pid, item9, rid))
        assert done.status_code in (200, 201), done.text
        return rid
    if how in ("transaction", "batch"):
        bundle = {
            "resourceType": "Bundle",
            "type": how,
            "entry": [
                {"resource": patient(pid), "request": {"method": "PUT", "url": f"Patient/{pid}"}},
                {
                    "resource": phq9(pid, item9, rid),
                    "request": {"method": "PUT", "url": f"QuestionnaireResponse/{rid}"},
                },
            ],
        }
        answer = client.post("", json=bundle)
        assert answer.status_code == 200, answer.text
        for entry in answer.json()["entry"]:
            assert entry["response"]["status"].startswith("20"), entry
        return rid
    assert how == "load"
    path = tmp / f"{pid}.ndjson"
    path.write_text(json.dumps(patient(pid)) + "\n" + json.dumps(phq9(pid, item9, rid)) + "\n")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "takamul.cli",
            "load",
            str(path),
            "--db",
            url,
            "--workers",
            "1",
            "--errors",
            str(tmp / f"{pid}-errors.ndjson"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return rid


def _psy(resource: dict[str, Any]) -> bool:
    return any(s.get("code") == "PSY" for s in resource.get("meta", {}).get("security", []))


@pytest.mark.parametrize("how", PATHS)
def test_positive_item9_always_yields_one_flag_and_one_task(
    record: tuple[str, str], how: str, tmp_path: Path
) -> None:
    url, base = record
    pid = f"pos-{how}-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=base, timeout=60) as client:
        rid = _write(url, client, how, pid, 2, tmp_path)
        # the same response again (a retry, a resend): still one of each
        if how != "post":
            _write(url, client, how, pid, 2, tmp_path)
        flags = _search(client, f"/Flag?subject=Patient/{pid}")
        tasks = _search(client, f"/Task?patient=Patient/{pid}&code={SAFETY}")
        assert len(flags) == 1 and len(tasks) == 1, (flags, tasks)
        flag, task = flags[0], tasks[0]
        assert flag["status"] == "active" and flag["code"]["coding"][0]["code"] == "225444004"
        assert flag["category"][0]["coding"][0]["code"] == "clinical"
        assert task["priority"] == "stat" and task["status"] == "requested"
        assert task["intent"] == "order"
        assert task["focus"] == {"reference": f"QuestionnaireResponse/{rid}"}
        assert task["owner"] == {"reference": "Organization/fac"}  # no mental-health team
        score = client.get(f"/Observation/mhs-{rid}")
        assert score.status_code == 200, score.text
        obs = score.json()
        assert obs["valueInteger"] == 10 and obs["code"]["coding"][0]["code"] == "44261-6"
        assert obs["interpretation"][0]["coding"][0]["code"] == "phq-9-moderate"
        assert obs["derivedFrom"] == [{"reference": f"QuestionnaireResponse/{rid}"}]
        assert obs["effectiveDateTime"] == AUTHORED
        assert obs["subject"] == {"reference": f"Patient/{pid}"}
        # everything of mental health carries PSY, so consent rules apply to it
        response = client.get(f"/QuestionnaireResponse/{rid}").json()
        assert all(_psy(r) for r in (flag, task, obs, response))
        labelled = _search(client, f"/Task?patient=Patient/{pid}&_security=PSY")
        assert len(labelled) == 1
        # stored without validating again (the hook's cost): valid R4 as built
        for kind, stored in (("Flag", flag), ("Task", task)):
            errors = [i for i in validate_resource(stored, kind) if i.severity == "error"]
            assert errors == [], (kind, errors)


@pytest.mark.parametrize("how", PATHS)
def test_negative_item9_yields_no_flag_and_no_task(
    record: tuple[str, str], how: str, tmp_path: Path
) -> None:
    url, base = record
    pid = f"neg-{how}-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=base, timeout=60) as client:
        rid = _write(url, client, how, pid, 0, tmp_path)
        assert _search(client, f"/Flag?subject=Patient/{pid}") == []
        assert _search(client, f"/Task?patient=Patient/{pid}") == []
        # but the score is there
        assert client.get(f"/Observation/mhs-{rid}").json()["valueInteger"] == 8


def test_rewriting_updates_the_score_and_keeps_an_acknowledged_task(
    record: tuple[str, str],
) -> None:
    _, base = record
    pid = f"amend-{uuid.uuid4().hex[:6]}"
    rid = f"qr-{pid}"
    with httpx.Client(base_url=base, timeout=60) as client:
        client.put(f"/Patient/{pid}", json=patient(pid))
        client.put(f"/QuestionnaireResponse/{rid}", json=phq9(pid, 1, rid))
        task = client.get(f"/Task/mht-{rid}").json()
        task["status"] = "accepted"  # a clinician acknowledged it
        assert client.put(f"/Task/mht-{rid}", json=task).status_code == 200
        amended = phq9(pid, 3, rid)
        amended["status"] = "amended"
        client.put(f"/QuestionnaireResponse/{rid}", json=amended)
        assert client.get(f"/Observation/mhs-{rid}").json()["valueInteger"] == 11
        assert client.get(f"/Task/mht-{rid}").json()["status"] == "accepted"
        assert len(_search(client, f"/Task?patient=Patient/{pid}")) == 1
        history = client.get(f"/Observation/mhs-{rid}/_history").json()
        assert history["total"] == 2  # created, then updated once (not duplicated)


def test_an_incomplete_response_is_stored_without_a_score(record: tuple[str, str]) -> None:
    _, base = record
    pid = f"inc-{uuid.uuid4().hex[:6]}"
    rid = f"qr-{pid}"
    body = phq9(pid, 0, rid)
    for item in body["item"][:3]:
        item.pop("answer")
    with httpx.Client(base_url=base, timeout=60) as client:
        client.put(f"/Patient/{pid}", json=patient(pid))
        assert client.put(f"/QuestionnaireResponse/{rid}", json=body).status_code == 201
        assert client.get(f"/Observation/mhs-{rid}").status_code == 404


def test_a_facility_score_is_not_duplicated(record: tuple[str, str]) -> None:
    """A response whose facility already recorded the same total (as the synthetic data does)
    gets no second score Observation; a different total gets ours."""
    _, base = record
    pid = f"fs-{uuid.uuid4().hex[:6]}"
    rid = f"qr-{pid}"
    with httpx.Client(base_url=base, timeout=60) as client:
        client.put(f"/Patient/{pid}", json=patient(pid))
        client.put(f"/Observation/fac-{pid}", json=_facility_score(pid))
        client.put(f"/QuestionnaireResponse/{rid}", json=phq9(pid, 0, rid))
        assert client.get(f"/Observation/mhs-{rid}").status_code == 404
        client.put(f"/QuestionnaireResponse/{rid}", json=phq9(pid, 2, rid))
        assert client.get(f"/Observation/mhs-{rid}").json()["valueInteger"] == 10


def test_the_mental_health_care_team_owns_the_task(record: tuple[str, str]) -> None:
    _, base = record
    pid = f"team-{uuid.uuid4().hex[:6]}"
    rid = f"qr-{pid}"
    with httpx.Client(base_url=base, timeout=60) as client:
        client.put(f"/Patient/{pid}", json=patient(pid))
        team = {
            "resourceType": "CareTeam",
            "id": f"ct-{pid}",
            "status": "active",
            "category": [
                {
                    "coding": [
                        {
                            "system": "https://takamul.health/fhir/CodeSystem/mental-health",
                            "code": "care-team",
                        }
                    ]
                }
            ],
            "subject": {"reference": f"Patient/{pid}"},
        }
        assert client.put(f"/CareTeam/ct-{pid}", json=team).status_code == 201
        client.put(f"/QuestionnaireResponse/{rid}", json=phq9(pid, 1, rid))
        task = client.get(f"/Task/mht-{rid}").json()
        assert task["owner"] == {"reference": f"CareTeam/ct-{pid}"}
        # without a categorised team: the team of the collaborative-care episode
        other = f"ep-{pid}"
        client.put(f"/Patient/{other}", json=patient(other))
        plain_team = {
            "resourceType": "CareTeam",
            "id": f"ct-{other}",
            "status": "active",
            "subject": {"reference": f"Patient/{other}"},
        }
        client.put(f"/CareTeam/ct-{other}", json=plain_team)
        episode = {
            "resourceType": "EpisodeOfCare",
            "id": f"eoc-{other}",
            "status": "active",
            "type": [
                {
                    "coding": [
                        {
                            "system": "https://takamul.health/fhir/CodeSystem/care-programme",
                            "code": "collaborative-care",
                        }
                    ]
                }
            ],
            "patient": {"reference": f"Patient/{other}"},
            "team": [{"reference": f"CareTeam/ct-{other}"}],
        }
        assert client.put(f"/EpisodeOfCare/eoc-{other}", json=episode).status_code == 201
        client.put(f"/QuestionnaireResponse/qr-{other}", json=phq9(other, 1, f"qr-{other}"))
        task = client.get(f"/Task/mht-qr-{other}").json()
        assert task["owner"] == {"reference": f"CareTeam/ct-{other}"}


def test_escalation_after_the_timeout_on_a_controlled_clock(record: tuple[str, str]) -> None:
    url, base = record
    up, alone = f"esc-{uuid.uuid4().hex[:6]}", f"esl-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=base, timeout=60) as client:
        client.put(f"/Patient/{up}", json=patient(up, "fac"))
        client.put(f"/Patient/{alone}", json=patient(alone, "lone"))
        client.put(f"/QuestionnaireResponse/qr-{up}", json=phq9(up, 3, f"qr-{up}"))
        client.put(f"/QuestionnaireResponse/qr-{alone}", json=phq9(alone, 1, f"qr-{alone}"))
        store = Store(Settings.from_env(database_url=url))
        try:
            service = MentalHealth(store)
            start = datetime(2026, 3, 1, 10, tzinfo=UTC)
            mine = {f"mht-qr-{up}", f"mht-qr-{alone}"}
            early = service.escalate(start + timedelta(hours=23, minutes=59))
            assert not mine & {e.task_id for e in early}
            due = {e.task_id: e for e in service.escalate(start + timedelta(hours=24, minutes=1))}
            assert mine <= set(due)
            assert due[f"mht-qr-{up}"].owner == "region" and due[f"mht-qr-{alone}"].owner is None
            # escalated once: a later run does not escalate again
            again = service.escalate(start + timedelta(hours=72))
            assert not mine & {e.task_id for e in again}
            # a shorter configured time escalates earlier
            hurried = f"esh-{uuid.uuid4().hex[:6]}"
            client.put(f"/Patient/{hurried}", json=patient(hurried))
            client.put(
                f"/QuestionnaireResponse/qr-{hurried}", json=phq9(hurried, 1, f"qr-{hurried}")
            )
            quick = service.escalate(start + timedelta(hours=3), hours=2)
            assert f"mht-qr-{hurried}" in {e.task_id for e in quick}
        finally:
            store.close()
        task = client.get(f"/Task/mht-qr-{up}").json()
        assert task["owner"] == {"reference": "Organization/region"}
        assert task["priority"] == "stat" and task["status"] == "requested"
        assert task["businessStatus"]["coding"][0]["code"] == "escalated"
        assert "escalated to Organization/region" in task["note"][-1]["text"]
        lone = client.get(f"/Task/mht-qr-{alone}").json()
        assert lone["owner"] == {"reference": "Organization/lone"}
        assert lone["businessStatus"]["coding"][0]["code"] == "escalated"
        provenance = client.get(f"/Provenance/{due[f'mht-qr-{up}'].provenance_id}").json()
        assert provenance["target"][0]["reference"].startswith(f"Task/mht-qr-{up}/_history/")
        assert provenance["recorded"].startswith("2026-03-02T10:01")
        assert _psy(provenance) and _psy(task)


def test_escalate_command_uses_the_given_clock(record: tuple[str, str]) -> None:
    url, base = record
    pid = f"cli-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=base, timeout=60) as client:
        client.put(f"/Patient/{pid}", json=patient(pid))
        client.put(f"/QuestionnaireResponse/qr-{pid}", json=phq9(pid, 2, f"qr-{pid}"))
    runner = CliRunner()
    early = runner.invoke(app, ["mh", "escalate", "--db", url, "--now", "2026-03-01T12:00:00Z"])
    assert early.exit_code == 0, early.output
    assert f"mht-qr-{pid}" not in early.output
    late = runner.invoke(app, ["mh", "escalate", "--db", url, "--now", "2026-03-05T12:00:00Z"])
    assert late.exit_code == 0, late.output
    assert f"Task/mht-qr-{pid}\tPatient/{pid}\tOrganization/region" in late.output


def test_instruments_are_questionnaires_searchable_by_code(record: tuple[str, str]) -> None:
    url, base = record
    with httpx.Client(base_url=base, timeout=60) as client:
        for code, qid in (("44249-1", "phq-9"), ("69737-5", "gad-7"), ("71354-5", "epds")):
            found = _search(client, f"/Questionnaire?code=http://loinc.org|{code}")
            assert [q["id"] for q in found] == [qid]
            assert found[0]["url"] == f"https://takamul.health/fhir/Questionnaire/{qid}"
        assert client.get("/Questionnaire/zbi-12").status_code == 200
    store = Store(Settings.from_env(database_url=url))
    try:
        # the server stored them at start-up: another start-up writes nothing
        assert MentalHealth(store).install_instruments() == []
    finally:
        store.close()


def _examples_phq9() -> Path:
    """The official example (npm package hl7.fhir.r4.examples, fetched as the other tests of
    the official examples do: a test that needs it fails rather than skips without it)."""
    from tests.fhir_examples import examples_dir

    path = examples_dir() / "Questionnaire-phq-9-questionnaire.json"
    assert path.is_file(), f"{path} is missing from hl7.fhir.r4.examples"
    return path


def test_install_the_phq9_wording_of_the_fhir_examples(
    record: tuple[str, str], tmp_path: Path
) -> None:
    """The PHQ-9 Questionnaire of hl7.fhir.r4.examples 4.0.1 names its items by LOINC code
    (linkIds such as ``LittleInterest``) and lacks item 9 (44260-8): it installs only with
    --allow-missing, and item 9 keeps no wording."""
    source = _examples_phq9()
    url, base = record
    runner = CliRunner()
    strict = runner.invoke(app, ["mh", "instruments", "install", str(source), "--db", url])
    assert strict.exit_code == 1
    assert "44260-8" in strict.output and "OperationOutcome" in strict.output
    done = runner.invoke(
        app, ["mh", "instruments", "install", str(source), "--db", url, "--allow-missing"]
    )
    assert done.exit_code == 0, done.output
    example = json.loads(source.read_text())
    by_code = {i["code"][0]["code"]: i["text"] for i in example["item"]}
    with httpx.Client(base_url=base, timeout=60) as client:
        stored = client.get("/Questionnaire/phq-9").json()
    texts = {i["linkId"]: i.get("text") for i in questions(stored)}
    for link_id in PHQ9.items[:8]:
        assert texts[link_id] == by_code[link_id]
    assert texts["44260-8"] is None
    # the start-up refresh keeps the installed wording
    store = Store(Settings.from_env(database_url=url))
    try:
        assert "phq-9" not in MentalHealth(store).install_instruments()
    finally:
        store.close()


def test_install_a_wording_file_and_refuse_a_mismatch(
    record: tuple[str, str], tmp_path: Path
) -> None:
    url, base = record
    gad7 = instrument("gad-7")
    # FIXTURE wording: placeholders, not the instrument's text
    items = {link_id: f"FIXTURE item {n + 1}" for n, link_id in enumerate(gad7.items)}
    good = tmp_path / "gad7-fixture.json"
    good.write_text(json.dumps({"instrument": "gad-7", "language": "ar", "items": items}))
    runner = CliRunner()
    ok = runner.invoke(app, ["mh", "instruments", "install", str(good), "--db", url])
    assert ok.exit_code == 0, ok.output
    # the same command under the name the issue and the operators' guide use
    again = runner.invoke(app, ["instruments", "install", str(good), "--db", url])
    assert again.exit_code == 0, again.output
    bad = tmp_path / "gad7-bad-fixture.json"
    bad.write_text(
        json.dumps({"instrument": "gad-7", "language": "ar", "items": {**items, "69999-9": "x"}})
    )
    refused = runner.invoke(app, ["mh", "instruments", "install", str(bad), "--db", url])
    assert refused.exit_code == 1 and "69999-9" in refused.output
    wrong_answers = tmp_path / "q-fixture.json"
    wrong_answers.write_text(
        json.dumps(
            {
                "resourceType": "Questionnaire",
                "code": [{"system": "http://loinc.org", "code": "69737-5"}],
                "item": [
                    {
                        "linkId": link_id,
                        "text": "FIXTURE",
                        "type": "choice",
                        "answerOption": [{"valueInteger": 0}, {"valueInteger": 1}],
                    }
                    for link_id in gad7.items
                ],
            }
        )
    )
    mismatch = runner.invoke(app, ["mh", "instruments", "install", str(wrong_answers), "--db", url])
    assert mismatch.exit_code == 1 and "answer options" in mismatch.output
    with httpx.Client(base_url=base, timeout=60) as client:
        stored = client.get("/Questionnaire/gad-7").json()
    assert stored["language"] == "ar"
    assert [i.get("text") for i in questions(stored)] == list(items.values())


def test_score_operation_explains_why_no_score(record: tuple[str, str]) -> None:
    _, base = record
    with httpx.Client(base_url=base, timeout=60) as client:
        scored = client.post("/QuestionnaireResponse/$score", json=phq9("nobody", 2))
        assert scored.status_code == 200, scored.text
        issues = scored.json()["issue"]
        assert any("PHQ-9 total 10" in i["diagnostics"] for i in issues)
        assert any(i["code"] == "business-rule" for i in issues)  # item 9 positive
        incomplete = phq9("nobody", 0)
        for item in incomplete["item"][:3]:
            item.pop("answer")
        parameters = {
            "resourceType": "Parameters",
            "parameter": [{"name": "response", "resource": incomplete}],
        }
        refused = client.post("/QuestionnaireResponse/$score", json=parameters)
        assert refused.status_code == 422
        text = " ".join(i["diagnostics"] for i in refused.json()["issue"])
        assert "3 of 9 items" in text and "44250-9" in text
        other = client.post("/QuestionnaireResponse/$score", json={"resourceType": "Patient"})
        assert other.status_code == 400 and other.json()["resourceType"] == "OperationOutcome"
        # nothing was stored
        assert _search(client, "/QuestionnaireResponse?subject=Patient/nobody") == []


def _facility_score(pid: str) -> dict[str, Any]:
    """The facility's own PHQ-9 total (8) of ``qr-{pid}``."""
    return {
        "resourceType": "Observation",
        "id": f"fac-{pid}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "valueInteger": 8,
        "derivedFrom": [{"reference": f"QuestionnaireResponse/qr-{pid}"}],
    }


def _mh_team(pid: str) -> dict[str, Any]:
    category = {
        "system": "https://takamul.health/fhir/CodeSystem/mental-health",
        "code": "care-team",
    }
    return {
        "resourceType": "CareTeam",
        "id": f"ct-{pid}",
        "status": "active",
        "category": [{"coding": [category]}],
        "subject": {"reference": f"Patient/{pid}"},
    }


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_start_up_catches_up_on_a_bulk_load_made_without_hooks(
    backend: str, tmp_path: Path
) -> None:
    """A bulk load by another process (``load_paths`` runs no hooks and, unlike ``takamul
    load``, no catch-up) is scored and safety-checked by the next start-up's catch-up, once."""
    from takamul.bulk import load_paths

    def check(url: str) -> None:
        store = Store(Settings.from_env(database_url=url))
        try:
            service = MentalHealth(store)
            service.attach()  # an empty record: nothing to catch up
            store.write_hooks.clear()  # the load below runs as in another process
            path = tmp_path / "bulk.ndjson"
            lines = [patient("bulk-p"), patient("bulk-n"), phq9("bulk-p", 3, "qr-bulk-p")]
            lines.append(phq9("bulk-n", 0, "qr-bulk-n"))
            # the catch-up reads a batch's derived scores and care teams at once: a facility's
            # own score of the same total is kept alone, and the team owns the safety Task
            lines += [patient("bulk-f"), phq9("bulk-f", 0, "qr-bulk-f"), _facility_score("bulk-f")]
            lines.append(_mh_team("bulk-p"))
            # positive too, in the same batch, without a team: its facility owns the Task
            lines += [patient("bulk-o", org="clinic-o"), phq9("bulk-o", 2, "qr-bulk-o")]
            path.write_text("".join(json.dumps(r) + "\n" for r in lines))
            load_paths(store, [path], tmp_path / "errors.ndjson", workers=1)
            with store.reading() as session:
                assert session.find("Flag", [("subject", "Patient/bulk-p")]) == []
            restarted = MentalHealth(store)
            assert restarted.attach() == 4  # four responses caught up
            assert restarted.catch_up() == 0  # and not again
            with store.reading() as session:
                flags = session.find("Flag", [("subject", "Patient/bulk-p")])
                tasks = session.find("Task", [("patient", "Patient/bulk-p"), ("code", SAFETY)])
                assert [f.id for f in flags] == ["mhf-qr-bulk-p"]
                assert [t.id for t in tasks] == ["mht-qr-bulk-p"]
                assert session.find("Flag", [("subject", "Patient/bulk-n")]) == []
                assert session.read("Observation", "mhs-qr-bulk-n").json()["valueInteger"] == 8
                assert session.read_any("Task", "mht-qr-bulk-p").json()["owner"] == {
                    "reference": "CareTeam/ct-bulk-p"
                }
                assert session.read_any("Task", "mht-qr-bulk-o").json()["owner"] == {
                    "reference": "Organization/clinic-o"
                }
                derived = session.find(
                    "Observation", [("derived-from", "QuestionnaireResponse/qr-bulk-f")]
                )
                assert [o.id for o in derived] == ["fac-bulk-f"]
        finally:
            store.close()

    if backend == "sqlite":
        check(f"sqlite:///{tmp_path / 'bulk.sqlite'}")
    else:
        with postgres_database() as url:
            check(url)


def test_escalation_writes_in_batches(
    record: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog of due Tasks is escalated a batch a transaction, so that other writers (on
    SQLite, every other writer) get their turn between batches; every due Task is escalated."""
    import takamul.mentalhealth.service as mh_service

    url, base = record
    ids = [f"esb-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    with httpx.Client(base_url=base, timeout=60) as client:
        for pid in ids:
            client.put(f"/Patient/{pid}", json=patient(pid, "lone"))
            client.put(f"/QuestionnaireResponse/qr-{pid}", json=phq9(pid, 1, f"qr-{pid}"))
    store = Store(Settings.from_env(database_url=url))
    transactions: list[int] = []
    write = store.write

    def counted(work: Any, *args: Any, **kwargs: Any) -> Any:
        result = write(work, *args, **kwargs)
        transactions.append(len(result))
        return result

    monkeypatch.setattr(mh_service, "ESCALATION_BATCH", 1)
    monkeypatch.setattr(store, "write", counted)
    try:
        # long after every Task of this module was raised: all of them are due
        escalated = MentalHealth(store).escalate(datetime(2030, 1, 1, tzinfo=UTC))
    finally:
        store.close()
    assert {f"mht-qr-{pid}" for pid in ids} <= {e.task_id for e in escalated}
    # one Task a transaction, the candidates read once beforehand (no empty last batch)
    assert transactions == [1] * len(escalated)


def test_a_task_acknowledged_after_the_candidates_were_read_is_not_escalated(
    record: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch reads its Tasks again: one acknowledged between the reading of the
    candidates and its batch stays as the clinician left it."""
    import takamul.mentalhealth.service as mh_service

    url, base = record
    pid = f"ack-{uuid.uuid4().hex[:6]}"
    task_id = f"mht-qr-{pid}"
    with httpx.Client(base_url=base, timeout=60) as client:
        client.put(f"/Patient/{pid}", json=patient(pid, "lone"))
        client.put(f"/QuestionnaireResponse/qr-{pid}", json=phq9(pid, 1, f"qr-{pid}"))
        store = Store(Settings.from_env(database_url=url))
        read_candidates = mh_service.due_safety_tasks

        def then_acknowledged(*args: Any, **kwargs: Any) -> list[str]:
            found = read_candidates(*args, **kwargs)
            assert task_id in found
            task = client.get(f"/Task/{task_id}").json()
            task["status"] = "accepted"
            assert client.put(f"/Task/{task_id}", json=task).status_code == 200
            return found

        monkeypatch.setattr(mh_service, "due_safety_tasks", then_acknowledged)
        try:
            escalated = MentalHealth(store).escalate(datetime(2030, 1, 1, tzinfo=UTC))
        finally:
            store.close()
        assert task_id not in {e.task_id for e in escalated}
        after = client.get(f"/Task/{task_id}").json()
    assert after["status"] == "accepted"
    assert "businessStatus" not in after or all(
        c.get("code") != "escalated" for c in after["businessStatus"].get("coding", [])
    )
