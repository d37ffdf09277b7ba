"""The synthetic population: same seed same bytes, valid R4, intact references, complete truth
files, loadable into the shared record, and the command-line entry point.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
from hijridate import Gregorian
from typer.testing import CliRunner

from takamul.fhir.validation import validate_resource
from takamul.synth import ConfigError, generate, load_config
from takamul.synth.calendars import as_native_calendar


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _resources(folder: Path) -> dict[str, list[dict[str, Any]]]:
    return {
        f.stem: [orjson.loads(line) for line in f.read_bytes().splitlines()]
        for f in sorted(folder.glob("*.ndjson"))
    }


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module", params=["SA", "IR"])
def population(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(f"synth-{request.param}")
    generate(load_config(country=request.param, patients=600, seed=7), out)
    return out


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path: Path) -> None:
    config = load_config(country="SA", patients=250, seed=11, block_persons=100)
    generate(config, tmp_path / "a")
    generate(config, tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    generate(load_config(country="SA", patients=250, seed=12, block_persons=100), tmp_path / "c")
    a, c = _digest(tmp_path / "a"), _digest(tmp_path / "c")
    assert a["Patient.ndjson"] != c["Patient.ndjson"]
    assert a["truth/persons.csv"] != c["truth/persons.csv"]


def test_worker_processes_write_the_same_bytes(tmp_path: Path) -> None:
    base = {"country": "IR", "patients": 300, "seed": 5, "block_persons": 80}
    generate(load_config(**base, workers=1), tmp_path / "one")
    generate(load_config(**base, workers=2), tmp_path / "two")
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")


def test_every_resource_type_validates_against_r4(population: Path) -> None:
    resources = _resources(population)
    expected = {
        "Patient", "Organization", "Location", "HealthcareService", "Practitioner",
        "PractitionerRole", "Encounter", "Condition", "Observation", "QuestionnaireResponse",
        "Immunization", "Procedure", "MedicationRequest", "ServiceRequest", "CarePlan",
        "RelatedPerson", "Coverage",
    }  # fmt: skip
    assert expected <= set(resources)
    for rtype, items in resources.items():
        # Every resource of the rarer types, a spread-out sample of the common ones.
        step = max(1, len(items) // 400)
        for body in items[::step]:
            assert body["resourceType"] == rtype
            errors = [i for i in validate_resource(body) if i.severity == "error"]
            assert not errors, (rtype, body["id"], errors[:3])


def test_every_reference_points_to_a_written_resource(population: Path) -> None:
    resources = _resources(population)
    ids = {f"{t}/{r['id']}" for t, items in resources.items() for r in items}
    assert len(ids) == sum(len(v) for v in resources.values()), "ids must be unique per type"
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "reference" and isinstance(value, str):
                    refs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for items in resources.values():
        for body in items:
            walk(body)
    assert len(refs) > 1000
    assert [r for r in refs if r not in ids] == []


def test_clinical_data_references_the_facilitys_own_patient_record(population: Path) -> None:
    resources = _resources(population)
    patient_org = {p["id"]: p["managingOrganization"]["reference"] for p in resources["Patient"]}
    checked = 0
    for enc in resources["Encounter"]:
        pid = enc["subject"]["reference"].split("/")[1]
        assert patient_org[pid] == enc["serviceProvider"]["reference"]
        checked += 1
    assert checked > 100


def test_truth_files_are_complete_and_consistent(population: Path) -> None:
    resources = _resources(population)
    links = _csv(population / "truth" / "links.csv")
    persons = _csv(population / "truth" / "persons.csv")
    registrations = _csv(population / "truth" / "registrations.csv")
    patient_ids = [p["id"] for p in resources["Patient"]]
    assert sorted(r["patient_id"] for r in links) == sorted(patient_ids)
    assert len(persons) == 600
    person_ids = {p["person"] for p in persons}
    assert {r["person"] for r in links} == person_ids
    per_person = Counter(r["person"] for r in links)
    assert all(per_person[p["person"]] == int(p["records"]) for p in persons)
    assert all(1 <= n <= 5 for n in per_person.values())
    assert [r["patient_id"] for r in registrations] == [r["patient_id"] for r in links]
    effects = orjson.loads((population / "truth" / "effects.json").read_bytes())
    assert effects["inequities"]["screening"]["income_rr"] == [0.6, 0.7, 0.8, 0.9, 1.0]
    manifest = orjson.loads((population / "manifest.json").read_bytes())
    assert {o["type"]: o["count"] for o in manifest["output"]} == {
        t: len(v) for t, v in resources.items()
    }


def test_names_are_written_in_native_script_unescaped(population: Path) -> None:
    raw = (population / "Patient.ndjson").read_bytes()
    assert b"\\u06" not in raw  # no JSON escapes of Arabic-block letters
    text = raw.decode()
    assert any("\u0600" <= ch <= "\u06ff" for ch in text)


def test_native_calendar_birth_dates_are_the_real_conversion(tmp_path: Path) -> None:
    config = load_config(
        country="SA", patients=300, seed=3, registrations={"native_calendar_birth_date": 0.5}
    )
    generate(config, tmp_path)
    births = {
        p["person"]: date.fromisoformat(p["birth_date"])
        for p in _csv(tmp_path / "truth/persons.csv")
    }
    variants = {
        r["patient_id"]: (r["person"], r["variants"])
        for r in _csv(tmp_path / "truth/registrations.csv")
    }
    seen = 0
    for line in (tmp_path / "Patient.ndjson").read_bytes().splitlines():
        patient = orjson.loads(line)
        person, kinds = variants[patient["id"]]
        if "native_calendar_birth_date" in kinds:
            b = births[person]
            h = Gregorian(b.year, b.month, b.day).to_hijri()
            assert patient["birthDate"] == f"{h.year:04d}-{h.month:02d}-{h.day:02d}"
            seen += 1
    assert seen > 100
    assert as_native_calendar(date(1990, 5, 17), "jalali") == "1369-02-27"


def test_population_loads_into_the_shared_record_and_is_searchable(
    tmp_path: Path,
) -> None:
    from takamul.settings import Settings
    from takamul.store import Store

    out = tmp_path / "pop"
    generate(load_config(country="SA", patients=300, seed=9), out)
    store = Store(Settings(database_url=f"sqlite:///{tmp_path / 'record.sqlite'}"))
    try:
        batch: list[tuple[str, str, dict[str, Any]]] = []
        counts: Counter[str] = Counter()
        for rtype, items in _resources(out).items():
            for body in items:
                batch.append((rtype, body["id"], body))
                counts[rtype] += 1
                if len(batch) >= 500:
                    store.write(lambda s, b=batch: [s.update(t, i, r) for t, i, r in b])
                    batch = []
        store.write(lambda s: [s.update(t, i, r) for t, i, r in batch])
        patients = _resources(out)["Patient"]
        arabic = next(
            n["family"]
            for p in patients
            for n in p["name"]
            if n["extension"][0]["valueCode"] == "ar"
        )
        with store.reading() as s:
            found = s.search(s.parse_search("Patient", [("family", arabic)]))
            assert found.total and found.total >= 1
            for match in found.matches:
                body = orjson.loads(match.content or b"{}")
                assert any(n["family"].startswith(arabic) for n in body["name"])
            total = s.search(s.parse_search("Patient", [("_summary", "count")]))
            assert total.total == counts["Patient"]
            diabetic = s.search(
                s.parse_search("Condition", [("code", "http://snomed.info/sct|44054006")])
            )
            assert diabetic.total == sum(
                1
                for c in _resources(out)["Condition"]
                if c["code"]["coding"][0]["code"] == "44054006"
            )
    finally:
        store.close()


def test_config_rejects_unknown_keys_and_reads_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(registrations={"no_such_rate": 1})
    with pytest.raises(ConfigError):
        load_config(country="FR")
    toml = tmp_path / "c.toml"
    toml.write_text('country = "IR"\n[inequities.screening]\nbase = 0.5\n')
    config = load_config(toml, patients=10)
    assert config["country"] == "IR" and config["patients"] == 10
    assert config["inequities"]["screening"]["base"] == 0.5
    assert config["inequities"]["screening"]["rural_rr"] == 0.75  # untouched keys keep defaults


def test_cli_synth_writes_the_bulk_layout(tmp_path: Path) -> None:
    from takamul.cli import app

    result = CliRunner().invoke(
        app,
        ["synth", "--country", "IR", "--patients", "50", "--seed", "2", "--years", "3",
         "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "Patient.ndjson").exists()
    assert (tmp_path / "truth" / "links.csv").exists()
    effects = orjson.loads((tmp_path / "truth" / "effects.json").read_bytes())
    assert effects["config"]["years"] == 3
    bad = CliRunner().invoke(app, ["synth", "--country", "XX", "--out", str(tmp_path)])
    assert bad.exit_code == 2


@pytest.mark.slow
def test_ten_thousand_persons_generate_and_validate(tmp_path: Path) -> None:
    summary = generate(load_config(country="SA", patients=10_000, seed=1, workers=2), tmp_path)
    assert summary.persons == 10_000
    by_type: defaultdict[str, int] = defaultdict(int)
    for f in tmp_path.glob("*.ndjson"):
        for line in f.read_bytes().splitlines():
            body = orjson.loads(line)
            assert not [i for i in validate_resource(body) if i.severity == "error"]
            by_type[body["resourceType"]] += 1
    assert dict(by_type) == summary.resources
