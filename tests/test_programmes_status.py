"""Registry statuses of hand-built persons on both stores: every status, every edge of the rules
(140/90 is uncontrolled, 139/89 controlled; registered 2 months ago is excluded; a reading at
another facility counts for the person), the overdue list's risk, and live updates."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert
from typer.testing import CliRunner

from takamul.cli import app
from takamul.mpi.schema import mpi_member
from takamul.programmes.definitions import load_catalog
from takamul.programmes.facts import CareFacts
from takamul.programmes.status import PersonStatus, person_statuses, statuses
from takamul.settings import Settings
from takamul.store.repository import Store
from tests.server import postgres_database

AS_OF = date(2025, 6, 30)
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"


def patient(pid: str, org: str = "org-a", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "gender": "female",
        "birthDate": "1960-03-01",
        "managingOrganization": {"reference": f"Organization/{org}"},
        **extra,
    }


def condition(pid: str, n: int, onset: str, code: str = "38341003", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": f"{pid}-c{n}",
        "code": {"coding": [{"system": SNOMED, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "onsetDateTime": onset,
        **extra,
    }


def bp(
    pid: str, n: int, day: str, systolic: int, diastolic: int, org: str = "org-a"
) -> dict[str, Any]:
    def comp(code: str, value: int) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "valueQuantity": {
                "value": value,
                "unit": "mm[Hg]",
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]",
            },
        }

    return {
        "resourceType": "Observation",
        "id": f"{pid}-bp{n}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": f"{day}T10:00:00+03:00",
        "performer": [{"reference": f"Organization/{org}"}],
        "component": [comp("8480-6", systolic), comp("8462-4", diastolic)],
    }


def glucose(pid: str, n: int, day: str, code: str, value: float, unit: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"{pid}-g{n}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": f"{day}T09:00:00+03:00",
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
    }


def encounter(
    pid: str, n: int, day: str, status: str = "finished", org: str = "org-a"
) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": f"{pid}-e{n}",
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": f"{day}T08:00:00+03:00"},
        "serviceProvider": {"reference": f"Organization/{org}"},
    }


HBA1C, FASTING, RANDOM = "4548-4", "1558-6", "2345-7"
DIABETES = "44054006"

# person -> (resources, expected status per programme)
WORLD: dict[str, tuple[list[dict[str, Any]], dict[str, str]]] = {
    "ctrl": (
        [condition("ctrl", 1, "2024-01-10"), bp("ctrl", 1, "2025-06-01", 139, 89)],
        {"hypertension": "controlled"},
    ),
    "edge": (
        [condition("edge", 1, "2024-01-10"), bp("edge", 1, "2025-06-01", 140, 90)],
        {"hypertension": "uncontrolled"},
    ),
    "dia-only-high": (
        [
            condition("dia-only-high", 1, "2024-01-10"),
            bp("dia-only-high", 1, "2025-06-01", 120, 90),
        ],
        {"hypertension": "uncontrolled"},
    ),
    "recent": (
        [condition("recent", 1, "2025-04-30"), bp("recent", 1, "2025-05-02", 170, 100)],
        {"hypertension": "registered-recently"},
    ),
    "three-months": (
        # registered exactly 3 months before: no longer recent
        [condition("three-months", 1, "2025-03-30"), bp("three-months", 1, "2025-06-01", 120, 70)],
        {"hypertension": "controlled"},
    ),
    "day-after": (
        [condition("day-after", 1, "2025-03-31"), bp("day-after", 1, "2025-06-01", 120, 70)],
        {"hypertension": "registered-recently"},
    ),
    "ltfu": (
        [condition("ltfu", 1, "2023-01-01"), encounter("ltfu", 1, "2024-06-30")],
        {"hypertension": "lost-to-follow-up"},
    ),
    "nomeas": (
        [
            condition("nomeas", 1, "2024-01-01"),
            bp("nomeas", 1, "2025-01-05", 150, 95),
            encounter("nomeas", 1, "2025-05-15"),
            encounter("nomeas", 2, "2025-06-20", status="cancelled"),
        ],
        {"hypertension": "visited-no-measurement"},
    ),
    "missed": (
        [condition("missed", 1, "2024-01-01"), encounter("missed", 1, "2025-02-01")],
        {"hypertension": "missed-visit"},
    ),
    "medicine": (
        [
            condition("medicine", 1, "2024-01-01"),
            {
                "resourceType": "MedicationRequest",
                "id": "medicine-m1",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": {"text": "amlodipine 5 mg"},
                "subject": {"reference": "Patient/medicine"},
                "authoredOn": "2025-06-10",
            },
        ],
        {"hypertension": "visited-no-measurement"},
    ),
    "dead": (
        [condition("dead", 1, "2024-01-01"), bp("dead", 1, "2025-06-01", 120, 70)],
        {},
    ),
    "refuted": (
        [
            condition(
                "refuted",
                1,
                "2024-01-01",
                verificationStatus={
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                            "code": "refuted",
                        }
                    ]
                },
            ),
            bp("refuted", 1, "2025-06-01", 160, 100),
        ],
        {},
    ),
    "icd": (
        [
            condition("icd", 1, "2024-01-01", code="I11.9")
            | {"code": {"coding": [{"system": ICD10, "code": "I11.9"}]}}
        ],
        {"hypertension": "lost-to-follow-up"},
    ),
    "enrolled": (
        [
            {
                "resourceType": "EpisodeOfCare",
                "id": "enrolled-eoc",
                "status": "active",
                "type": [
                    {
                        "coding": [
                            {
                                "system": "https://takamul.health/fhir/CodeSystem/care-programme",
                                "code": "hypertension",
                            }
                        ]
                    }
                ],
                "patient": {"reference": "Patient/enrolled"},
                "managingOrganization": {"reference": "Organization/org-b"},
                "period": {"start": "2024-02-01"},
            },
            bp("enrolled", 1, "2025-06-15", 130, 80),
        ],
        {"hypertension": "controlled"},
    ),
    "high-risk": (
        [condition("high-risk", 1, "2024-01-01"), bp("high-risk", 1, "2025-01-10", 185, 100)],
        {"hypertension": "missed-visit"},
    ),
    "stroke": (
        [
            condition("stroke", 1, "2024-01-01"),
            condition("stroke", 2, "2023-05-01", code="230690007"),
            bp("stroke", 1, "2025-01-10", 145, 85),
        ],
        {"hypertension": "missed-visit"},
    ),
    # diabetes: the last glucose test of any kind decides
    "a1c-69": (
        [
            condition("a1c-69", 1, "2024-01-01", code=DIABETES),
            glucose("a1c-69", 1, "2025-06-01", HBA1C, 6.9, "%"),
        ],
        {"diabetes": "controlled"},
    ),
    "a1c-70": (
        [
            condition("a1c-70", 1, "2024-01-01", code=DIABETES),
            glucose("a1c-70", 1, "2025-06-01", HBA1C, 7.0, "%"),
        ],
        {"diabetes": "uncontrolled"},
    ),
    "fasting": (
        [
            condition("fasting", 1, "2024-01-01", code=DIABETES),
            glucose("fasting", 1, "2025-05-01", HBA1C, 9.0, "%"),
            glucose("fasting", 2, "2025-06-01", FASTING, 125, "mg/dL"),
        ],
        {"diabetes": "controlled"},
    ),
    "fasting-mmol": (
        [
            condition("fasting-mmol", 1, "2024-01-01", code=DIABETES),
            glucose("fasting-mmol", 1, "2025-06-01", FASTING, 7.1, "mmol/L"),
        ],
        {"diabetes": "uncontrolled"},
    ),
    "random": (
        [
            condition("random", 1, "2024-01-01", code=DIABETES),
            glucose("random", 1, "2025-06-01", RANDOM, 200, "mg/dL"),
        ],
        {"diabetes": "uncontrolled"},
    ),
    "same-day": (
        [
            condition("same-day", 1, "2024-01-01", code=DIABETES),
            glucose("same-day", 1, "2025-06-01", FASTING, 100, "mg/dL"),
            glucose("same-day", 2, "2025-06-01", HBA1C, 8.0, "%"),
        ],
        {"diabetes": "uncontrolled"},
    ),
    "both": (
        [
            condition("both", 1, "2024-01-01"),
            condition("both", 2, "2024-01-01", code=DIABETES),
            bp("both", 1, "2025-06-01", 120, 70),
        ],
        {"hypertension": "controlled", "diabetes": "visited-no-measurement"},
    ),
}

# one person, two records at two facilities: the diagnosis at one, the reading at the other
SPLIT = (
    [patient("split-a", "org-a"), condition("split-a", 1, "2024-01-01")],
    [patient("split-b", "org-b"), bp("split-b", 1, "2025-06-10", 120, 80, org="org-b")],
)


def _build(store: Store) -> None:
    def work(session: Any) -> None:
        for pid, (resources, _) in WORLD.items():
            extra = {"deceasedDateTime": "2025-03-01"} if pid == "dead" else {}
            body = patient(pid, **extra)
            session.update("Patient", pid, body)
            for r in resources:
                session.update(r["resourceType"], r["id"], r)
        for group in SPLIT:
            for r in group:
                session.update(r["resourceType"], r["id"], r)

    store.write(work)
    mpi_member.create(store.writer, checkfirst=True)
    with store.writer.begin() as conn:
        conn.execute(
            insert(mpi_member),
            [
                {
                    "patient_id": p,
                    "person_id": "person-split",
                    "probability": 1.0,
                    "manual": False,
                    "updated": 0.0,
                }
                for p in ("split-a", "split-b")
            ],
        )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('programmes') / 'takamul.sqlite'}"
        s = Store(Settings(database_url=url, export_dir=tmp_path_factory.mktemp("exports")))
        _build(s)
        yield s
        s.close()
    else:
        with postgres_database() as url:
            s = Store(Settings(database_url=url, export_dir=tmp_path_factory.mktemp("exports")))
            _build(s)
            yield s
            s.close()


def _by_key(rows: list[PersonStatus]) -> dict[tuple[str, str], PersonStatus]:
    found = {}
    for r in rows:
        key = r.person_id or r.patient_ids[0]
        found[(key, r.programme)] = r
    return found


@pytest.fixture(scope="module")
def result(store: Store) -> dict[tuple[str, str], PersonStatus]:
    catalog = load_catalog()
    facts = CareFacts(store, catalog)
    facts.attach()
    return _by_key(statuses(store, catalog, AS_OF, facts=facts))


@pytest.mark.parametrize("person", sorted(WORLD))
def test_every_status_and_edge(result: dict[tuple[str, str], PersonStatus], person: str) -> None:
    expected = WORLD[person][1]
    got = {prog: r.status for (key, prog), r in result.items() if key == person}
    assert got == expected


def test_a_reading_at_another_facility_counts_for_the_person(
    result: dict[tuple[str, str], PersonStatus],
) -> None:
    row = result[("person-split", "hypertension")]
    assert row.status == "controlled"
    assert row.patient_ids == ("split-a", "split-b")
    assert (row.last_systolic, row.last_diastolic) == (120, 80)
    # the facility is the home of the record last seen
    assert row.facility == "org-b"


def test_overdue_and_high_risk(result: dict[tuple[str, str], PersonStatus]) -> None:
    high = result[("high-risk", "hypertension")]
    # uncontrolled: follow-up in 30 days from 2025-01-10, so due 2025-02-09
    assert high.overdue_days == (AS_OF - date(2025, 2, 9)).days
    assert high.risk == "high"
    stroke = result[("stroke", "hypertension")]
    assert stroke.risk == "high"  # prior stroke and 145/85
    missed = result[("missed", "hypertension")]
    # no reading: follow-up 90 days after the last visit; 140 days overdue but no high BP
    assert missed.overdue_days == (AS_OF - date(2025, 5, 2)).days
    assert missed.risk == "normal"
    assert result[("ctrl", "hypertension")].overdue_days == 0
    enrolled = result[("enrolled", "hypertension")]
    assert enrolled.registered_on == date(2024, 2, 1)


def test_a_new_reading_changes_the_status_on_the_next_read(store: Store) -> None:
    catalog = load_catalog()
    facts = CareFacts(store, catalog)
    facts.attach()
    before = _by_key(statuses(store, catalog, AS_OF, ["hypertension"], patient_ids=["missed"]))
    assert before[("missed", "hypertension")].status == "missed-visit"
    store.write(
        lambda s: s.update("Observation", "missed-bp9", bp("missed", 9, "2025-06-29", 128, 82))
    )
    after = _by_key(statuses(store, catalog, AS_OF, ["hypertension"], patient_ids=["missed"]))
    assert after[("missed", "hypertension")].status == "controlled"
    assert after[("missed", "hypertension")].last_measurement_date == date(2025, 6, 29)
    store.write(lambda s: s.delete("Observation", "missed-bp9"))
    again = _by_key(statuses(store, catalog, AS_OF, ["hypertension"], patient_ids=["missed"]))
    assert again[("missed", "hypertension")].status == "missed-visit"


@pytest.mark.usefixtures("result")  # the care facts extracted, whichever test runs first
def test_one_record_of_a_person_brings_the_whole_person(store: Store) -> None:
    rows = statuses(store, load_catalog(), AS_OF, ["hypertension"], patient_ids=["split-b"])
    assert [(r.person_id, r.patient_ids, r.status) for r in rows] == [
        ("person-split", ("split-a", "split-b"), "controlled")
    ]


@contextmanager
def _fresh(store: Store, tmp_path: Path) -> Iterator[str]:
    """A new database of the same kind with the same world: the CLI links the records the
    world left unlinked, which would change the module's store under the other tests."""
    if store.dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
        built = Store(Settings(database_url=url, export_dir=tmp_path / "exports"))
        _build(built)
        built.close()
        yield url
    else:
        with postgres_database() as url:
            built = Store(Settings(database_url=url, export_dir=tmp_path / "exports"))
            _build(built)
            built.close()
            yield url


def test_the_cli_writes_one_row_per_person_and_programme(store: Store, tmp_path: Path) -> None:
    with _fresh(store, tmp_path) as url:
        _cli_writes_one_row_per_person(url, tmp_path)


def _cli_writes_one_row_per_person(url: str, tmp_path: Path) -> None:
    out = tmp_path / "status.csv"
    run = CliRunner().invoke(
        app,
        [
            "programmes",
            "status",
            "--db",
            url,
            "--programme",
            "hypertension",
            "--as-of",
            "2025-06-30",
            "--out",
            str(out),
        ],
    )
    assert run.exit_code == 0, run.output
    with out.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "person_id",
        "patient_ids",
        "programme",
        "facility",
        "status",
        "registered_on",
        "last_visit",
        "last_measurement_date",
        "last_systolic",
        "last_diastolic",
        "last_glucose_test",
        "last_glucose_value",
        "risk",
        "overdue_days",
    ]
    split = next(r for r in rows if r["person_id"] == "person-split")
    assert split["patient_ids"] == "split-a;split-b" and split["status"] == "controlled"
    assert {r["programme"] for r in rows} == {"hypertension"}
    # records bulk-loaded without a person are linked first, as the server does at start-up:
    # every row names a person
    assert "linking" in run.output and all(r["person_id"] for r in rows)
    bad = CliRunner().invoke(
        app, ["programmes", "status", "--db", url, "--programme", "gout", "--out", str(out)]
    )
    assert bad.exit_code == 2 and "No programme 'gout'" in bad.output


def test_one_person_read_by_index_agrees_with_the_grouped_query(
    store: Store, result: dict[tuple[str, str], PersonStatus]
) -> None:
    catalog = load_catalog()
    for person in [*WORLD, "split-a"]:
        _, rows = person_statuses(store, catalog, [person], AS_OF)
        for row in rows:
            key = row.person_id or row.patient_ids[0]
            assert result[(key, row.programme)] == row, person
        expected = {
            k for k in result if k[0] in (person, "person-split" if person == "split-a" else "")
        }
        assert {(r.person_id or r.patient_ids[0], r.programme) for r in rows} == expected


@pytest.mark.usefixtures("result")  # the care facts extracted, whichever test runs first
def test_a_facility_registry_holds_the_persons_it_is_responsible_for(store: Store) -> None:
    catalog = load_catalog()
    everyone = statuses(store, catalog, AS_OF, ["hypertension"])
    at_b = statuses(store, catalog, AS_OF, ["hypertension"], facility="org-b")
    assert [r.person_id for r in at_b] == ["person-split"]
    at_a = statuses(store, catalog, AS_OF, ["hypertension"], facility="org-a")
    assert len(at_a) + len(at_b) == len(everyone)
    assert all(r.facility == "org-a" for r in at_a)
