"""The collaborative-care registry on both stores: hand-built persons for every status and flag
and the edges of the rules (exactly 50 % is a response; 9 weeks vs 10 weeks in care; PHQ-9 4
vs 5; 30 vs 31 days since the last contact; a score at another facility counts for the
person), caseloads, the review queue and the consultant's recommendation, and a synthetic
population checked for internal consistency (its truth file for this registry is not written
yet)."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from takamul.fhir.outcome import FhirError
from takamul.mentalhealth.registry import (
    CARE_PROGRAMME_SYSTEM,
    CSV_COLUMNS,
    STATUSES,
    RegistryRow,
    caseload,
    record_recommendation,
    registry,
    review_queue,
    write_registry_csv,
)
from takamul.mpi.schema import mpi_member, mpi_metadata
from takamul.settings import Settings
from takamul.store.repository import Store
from tests.server import postgres_database

AS_OF = date(2025, 6, 30)
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"


def ago(days: int) -> str:
    return (AS_OF - timedelta(days=days)).isoformat()


def patient(pid: str, org: str = "org-a") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "gender": "female",
        "birthDate": "1980-03-01",
        "managingOrganization": {"reference": f"Organization/{org}"},
    }


def episode(
    pid: str,
    start: str,
    *,
    manager: str | None = "Practitioner/cm-1",
    team: str | None = None,
    org: str = "org-a",
    status: str = "active",
    end: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "EpisodeOfCare",
        "id": f"{pid}-eoc",
        "status": status,
        "type": [{"coding": [{"system": CARE_PROGRAMME_SYSTEM, "code": "collaborative-care"}]}],
        "patient": {"reference": f"Patient/{pid}"},
        "managingOrganization": {"reference": f"Organization/{org}"},
        "period": {"start": start, **({"end": end} if end else {})},
    }
    if manager:
        body["careManager"] = {"reference": manager}
    if team:
        body["team"] = [{"reference": f"CareTeam/{team}"}]
    return body


def score(pid: str, n: int, day: str, kind: str, value: int) -> dict[str, Any]:
    code = {"phq9": "44261-6", "gad7": "70274-6"}[kind]
    return {
        "resourceType": "Observation",
        "id": f"{pid}-{kind}-{n}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": f"{day}T10:00:00+03:00",
        "valueInteger": value,
    }


def encounter(pid: str, n: int, day: str, status: str = "finished") -> dict[str, Any]:
    # 01:00 local time is the previous day in UTC: the registry counts the local date
    return {
        "resourceType": "Encounter",
        "id": f"{pid}-enc-{n}",
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": f"{day}T01:00:00+03:00", "end": f"{day}T01:30:00+03:00"},
    }


def flag(pid: str, start: str, status: str = "active", code: str = "225444004") -> dict[str, Any]:
    return {
        "resourceType": "Flag",
        "id": f"{pid}-flag-{code}",
        "status": status,
        "code": {"coding": [{"system": SNOMED, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": start},
    }


def review(pid: str, day: str) -> dict[str, Any]:
    return {
        "resourceType": "ClinicalImpression",
        "id": f"{pid}-review",
        "status": "completed",
        "code": {
            "coding": [
                {
                    "system": "https://takamul.health/fhir/CodeSystem/collaborative-care",
                    "code": "psychiatric-case-review",
                }
            ]
        },
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": f"{day}T12:00:00+03:00",
        "summary": "Test fixture recommendation.",
    }


def diagnosis(pid: str, system: str, code: str, recorded: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": f"{pid}-dx",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "recordedDate": recorded,
    }


def scores(pid: str, kind: str, *series: tuple[int, int]) -> list[dict[str, Any]]:
    """(days before AS_OF, value) pairs."""
    return [score(pid, n, ago(days), kind, v) for n, (days, v) in enumerate(series)]


# person key -> (resources, expected (status, needs review, overdue, safety) or None: absent)
WORLD: dict[str, tuple[list[dict[str, Any]], tuple[str, bool, bool, bool] | None]] = {
    "new": (
        [episode("new", ago(27)), *scores("new", "phq9", (27, 15))],
        ("new", False, False, False),
    ),
    "four-weeks": (  # 28 days in care is no longer new; 12 -> 6 (exactly half): response
        [episode("four-weeks", ago(28)), *scores("four-weeks", "phq9", (28, 12), (2, 6))],
        ("response", False, False, False),
    ),
    "remission": (  # PHQ-9 4 and GAD-7 3
        [
            episode("remission", ago(120)),
            *scores("remission", "phq9", (120, 16), (10, 4)),
            *scores("remission", "gad7", (120, 12), (10, 3)),
        ],
        ("remission", False, False, False),
    ),
    "phq9-five": (  # PHQ-9 5 is not remission (16 -> 5 is a response)
        [episode("phq9-five", ago(120)), *scores("phq9-five", "phq9", (120, 16), (10, 5))],
        ("response", False, False, False),
    ),
    "gad7-five": (  # PHQ-9 in remission but GAD-7 5 is not; PHQ-9 16 -> 4 is a response
        [
            episode("gad7-five", ago(120)),
            *scores("gad7-five", "phq9", (120, 16), (10, 4)),
            *scores("gad7-five", "gad7", (120, 12), (10, 5)),
        ],
        ("response", False, False, False),
    ),
    "ten-weeks": (  # 12 -> 7 after exactly 70 days: not improving
        [episode("ten-weeks", ago(70)), *scores("ten-weeks", "phq9", (70, 12), (5, 7))],
        ("not-improving", True, False, False),
    ),
    "nine-weeks": (  # the same after 69 days: improving
        [episode("nine-weeks", ago(69)), *scores("nine-weeks", "phq9", (69, 12), (5, 7))],
        ("improving", False, False, False),
    ),
    "no-follow-up": (  # only the baseline after 12 weeks: nothing shows improvement
        [
            episode("no-follow-up", ago(84)),
            *scores("no-follow-up", "phq9", (84, 14)),
            encounter("no-follow-up", 0, ago(3)),
        ],
        ("not-improving", True, False, False),
    ),
    "reviewed": (  # not improving, reviewed after the latest score: off the queue
        [
            episode("reviewed", ago(100)),
            *scores("reviewed", "phq9", (100, 14), (20, 12)),
            review("reviewed", ago(10)),
        ],
        ("not-improving", False, False, False),
    ),
    "review-stale": (  # reviewed, then a new score still not improving: back on the queue
        [
            episode("review-stale", ago(100)),
            *scores("review-stale", "phq9", (100, 14), (20, 12)),
            review("review-stale", ago(25)),
        ],
        ("not-improving", True, False, False),
    ),
    "safety": (  # responding, but a suicide-risk flag not reviewed yet
        [
            episode("safety", ago(90)),
            *scores("safety", "phq9", (90, 15), (5, 7)),
            flag("safety", ago(29)),
        ],
        ("response", True, False, True),
    ),
    "safety-reviewed": (  # a recommendation after the flag: reviewed, still a safety flag
        [
            episode("safety-reviewed", ago(90)),
            *scores("safety-reviewed", "phq9", (90, 15), (5, 7)),
            flag("safety-reviewed", ago(29)),
            review("safety-reviewed", ago(20)),
        ],
        ("response", False, False, True),
    ),
    "flag-inactive": (
        [
            episode("flag-inactive", ago(90)),
            *scores("flag-inactive", "phq9", (90, 15), (5, 7)),
            flag("flag-inactive", ago(29), status="inactive"),
            flag("flag-inactive", ago(29), code="13790001"),  # not a suicide-risk code
        ],
        ("response", False, False, False),
    ),
    "overdue": (  # last contact 31 days ago
        [
            episode("overdue", ago(120)),
            *scores("overdue", "phq9", (120, 15), (60, 7)),
            encounter("overdue", 0, ago(31)),
            encounter("overdue", 1, ago(2), status="cancelled"),
        ],
        ("response", False, True, False),
    ),
    "contact-30": (  # last contact 30 days ago: not overdue yet
        [
            episode("contact-30", ago(120)),
            *scores("contact-30", "phq9", (120, 15), (60, 7)),
            encounter("contact-30", 0, ago(30)),
        ],
        ("response", False, False, False),
    ),
    "split": (  # enrolled at org-a, the latest score at another facility (org-b record)
        [
            patient("split-a", "org-a"),
            patient("split-b", "org-b"),
            episode("split-a", ago(100), team="team-1", manager=None),
            score("split-a", 0, ago(100), "phq9", 20),
            score("split-b", 1, ago(3), "phq9", 8),
        ],
        ("response", False, False, False),
    ),
    "dx-enrolled": (  # no episode: ICD-10 F33.1 and the first PHQ-9 >= 10 enrol
        [
            patient("dx-enrolled", "org-c"),
            diagnosis("dx-enrolled", ICD10, "F33.1", ago(200)),
            *scores("dx-enrolled", "phq9", (150, 8), (119, 14), (1, 12)),
        ],
        ("not-improving", True, False, False),
    ),
    "dx-gad7": (  # SNOMED anxiety disorder and GAD-7 10: enrolled on that day
        [
            patient("dx-gad7", "org-c"),
            diagnosis("dx-gad7", SNOMED, "197480006", ago(40)),
            *scores("dx-gad7", "gad7", (40, 10), (10, 5)),
        ],
        ("response", False, False, False),
    ),
    "score-no-dx": ([*scores("score-no-dx", "phq9", (30, 18))], None),
    "dx-no-positive": (
        [
            diagnosis("dx-no-positive", SNOMED, "35489007", ago(30)),
            score("dx-no-positive", 0, ago(5), "phq9", 9),
        ],
        None,
    ),
    "discharged": (  # a finished episode: out of the registry, the diagnosis rule does not apply
        [
            episode("discharged", ago(200), status="finished", end=ago(30)),
            diagnosis("discharged", SNOMED, "35489007", ago(200)),
            *scores("discharged", "phq9", (200, 18), (40, 4)),
        ],
        None,
    ),
    "future": ([episode("future", ago(-3))], None),
}
PERSON_OF = {"split-a": "person-split", "split-b": "person-split"}


def _build(store: Store) -> None:
    bodies: list[dict[str, Any]] = [
        {"resourceType": "Organization", "id": org, "name": org}
        for org in ("org-a", "org-b", "org-c")
    ]
    bodies += [
        {"resourceType": "Practitioner", "id": "cm-1"},
        {"resourceType": "Practitioner", "id": "cm-2"},
        {
            "resourceType": "PractitionerRole",
            "id": "cm-role-2",
            "practitioner": {"reference": "Practitioner/cm-2"},
        },
        {
            "resourceType": "CareTeam",
            "id": "team-1",
            "participant": [{"member": {"reference": "PractitionerRole/cm-role-2"}}],
            "managingOrganization": [{"reference": "Organization/org-a"}],
        },
    ]
    for key, (resources, _) in WORLD.items():
        have = {b["id"] for b in resources if b["resourceType"] == "Patient"}
        if key not in have and key != "split":
            bodies.append(patient(key))
        bodies += resources
    store.write(lambda s: [s.update(b["resourceType"], b["id"], b) for b in bodies])
    mpi_metadata.create_all(store.writer)
    with store.writer.begin() as conn:
        conn.execute(
            insert(mpi_member),
            [
                {
                    "patient_id": p,
                    "person_id": person,
                    "probability": 1.0,
                    "manual": False,
                    "updated": 0.0,
                }
                for p, person in PERSON_OF.items()
            ],
        )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    exports = tmp_path_factory.mktemp("exports")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('mh-registry') / 'takamul.sqlite'}"
        s = Store(Settings(database_url=url, export_dir=exports))
        _build(s)
        yield s
        s.close()
    else:
        with postgres_database() as url:
            s = Store(Settings(database_url=url, export_dir=exports))
            _build(s)
            yield s
            s.close()


def _key(row: RegistryRow) -> str:
    return "split" if row.person_id == "person-split" else row.patient_ids[0]


@pytest.fixture(scope="module")
def rows(store: Store) -> dict[str, RegistryRow]:
    return {_key(r): r for r in registry(store, AS_OF)}


def test_only_the_enrolled_are_in_the_registry(rows: dict[str, RegistryRow]) -> None:
    assert set(rows) == {k for k, (_, want) in WORLD.items() if want is not None}


@pytest.mark.parametrize("person", sorted(k for k, (_, want) in WORLD.items() if want))
def test_every_status_and_flag(rows: dict[str, RegistryRow], person: str) -> None:
    r = rows[person]
    assert (r.status, r.needs_psychiatric_review, r.overdue_contact, r.safety) == WORLD[person][1]


def test_the_values_of_a_row(rows: dict[str, RegistryRow]) -> None:
    r = rows["four-weeks"]
    assert (r.enrolled_on, r.weeks_in_care, r.baseline_phq9, r.latest_phq9) == (
        AS_OF - timedelta(days=28),
        4,
        12,
        6,
    )
    assert r.phq9_change_pct == -50.0 and r.baseline_gad7 is None and r.enrolment == "episode"
    assert (r.contacts, r.last_contact) == (2, AS_OF - timedelta(days=2))
    assert rows["ten-weeks"].weeks_in_care == 10 and rows["nine-weeks"].weeks_in_care == 9
    assert rows["remission"].gad7_change_pct == -75.0
    # the local date of a 01:00 +03:00 encounter is its own day, not the UTC one before it
    assert rows["contact-30"].last_contact == AS_OF - timedelta(days=30)
    # a cancelled encounter is no contact
    assert rows["overdue"].last_contact == AS_OF - timedelta(days=31)


def test_a_score_at_another_facility_counts_for_the_person(rows: dict[str, RegistryRow]) -> None:
    r = rows["split"]
    assert r.patient_ids == ("split-a", "split-b")
    assert (r.baseline_phq9, r.latest_phq9, r.phq9_change_pct) == (20, 8, -60.0)
    assert r.care_managers == ("PractitionerRole/cm-role-2",)
    assert r.facilities == ("org-a",)


def test_enrolment_by_diagnosis_and_first_positive_score(rows: dict[str, RegistryRow]) -> None:
    r = rows["dx-enrolled"]
    assert r.enrolment == "diagnosis-and-score"
    # the negative PHQ-9 (8) before is not the baseline; the enrolling score (14) is
    assert (r.enrolled_on, r.baseline_phq9, r.latest_phq9) == (AS_OF - timedelta(days=119), 14, 12)
    assert r.facilities == ("org-c",) and r.care_managers == ()
    assert rows["dx-gad7"].baseline_gad7 == 10 and rows["dx-gad7"].latest_gad7 == 5


def test_caseloads(store: Store) -> None:
    direct = {_key(r) for r in caseload(store, AS_OF, care_manager="Practitioner/cm-1")}
    episodes = {
        k
        for k, (res, want) in WORLD.items()
        if want and any(b["resourceType"] == "EpisodeOfCare" for b in res)
    }
    assert direct == episodes - {"split"}
    # through the episode's CareTeam
    assert [_key(r) for r in caseload(store, AS_OF, care_manager="PractitionerRole/cm-role-2")] == [
        "split"
    ]
    assert caseload(store, AS_OF, care_manager="Practitioner/cm-2") == []
    # a facility: its episodes, and the diagnosis-enrolled persons whose records it keeps
    assert {_key(r) for r in caseload(store, AS_OF, facility="org-c")} == {"dx-enrolled", "dx-gad7"}
    a = caseload(store, AS_OF, facility="org-a")
    assert "split" in {_key(r) for r in a} and a[0].needs_psychiatric_review
    with pytest.raises(FhirError):
        caseload(store, AS_OF, care_manager="cm-1")


def test_a_facility_or_care_manager_registry_is_the_full_registry_filtered(store: Store) -> None:
    # the facility and care manager registries start from their own records by index, not
    # from every episode and diagnosis: they must still find exactly the full registry's rows
    full = registry(store, AS_OF)
    facilities = {f for r in full for f in r.facilities} | {"org-none"}
    assert len(facilities) >= 3
    for facility in sorted(facilities):
        want = [r for r in full if facility in r.facilities]
        assert registry(store, AS_OF, facility=facility) == want, facility
    managers = {m for r in full for m in r.care_managers} | {"Practitioner/nobody"}
    assert len(managers) >= 3
    for manager in sorted(managers):
        want = [r for r in full if manager in r.care_managers]
        assert registry(store, AS_OF, care_manager=manager) == want, manager


def test_both_ways_of_reading_the_homes_agree(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import takamul.mentalhealth.registry as module

    looked_up = registry(store, AS_OF)
    monkeypatch.setattr(module, "LOOKED_UP", 0)  # the nation's way: one join
    assert registry(store, AS_OF) == looked_up
    assert any(r.facilities for r in looked_up)


def test_review_queue_order(rows: dict[str, RegistryRow]) -> None:
    queue = [_key(r) for r in review_queue(list(rows.values()))]
    # the unreviewed safety flag first, then not improving, longest in care first
    assert queue == ["safety", "dx-enrolled", "review-stale", "no-follow-up", "ten-weeks"]


def test_a_recommendation_after_the_flag_takes_the_person_off_the_queue(store: Store) -> None:
    pid = "safety"
    before = {_key(r): r for r in registry(store, AS_OF)}[pid]
    assert before.needs_psychiatric_review and before.unreviewed_flag_on == AS_OF - timedelta(
        days=29
    )
    with pytest.raises(FhirError):
        record_recommendation(store, pid, "Practitioner/psy-1", "  ")
    # a recommendation dated before the flag does not count
    record_recommendation(
        store,
        pid,
        "Practitioner/psy-1",
        "Test fixture text.",
        when=datetime(2025, 5, 1, 9, tzinfo=UTC),
    )
    assert {_key(r): r for r in registry(store, AS_OF)}[pid].needs_psychiatric_review
    rid = record_recommendation(
        store,
        pid,
        "Practitioner/psy-1",
        "Test fixture text: continue, call weekly.",
        when=datetime(2025, 6, 28, 9, tzinfo=UTC),
        scores=[f"{pid}-phq9-1"],
    )
    with store.reading() as s:
        stored = s.read("ClinicalImpression", rid).json()
    assert stored["assessor"]["reference"] == "Practitioner/psy-1"
    # mental-health data: labelled PSY, so the consent rules hide it
    assert {(c["system"], c["code"]) for c in stored["meta"]["security"]} >= {
        ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "PSY")
    }
    assert stored["investigation"][0]["item"] == [{"reference": f"Observation/{pid}-phq9-1"}]
    after = {_key(r): r for r in registry(store, AS_OF)}[pid]
    assert not after.needs_psychiatric_review and after.safety
    assert after.last_review == date(2025, 6, 28)
    # earlier as-of dates do not see the later review
    assert {_key(r): r for r in registry(store, date(2025, 6, 27))}[pid].needs_psychiatric_review


def test_the_csv(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "registry.csv"
    n = write_registry_csv(registry(store, AS_OF), out)
    with out.open(encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        found = list(reader)
    assert len(found) == n == sum(1 for _, want in WORLD.values() if want)
    split = next(r for r in found if r["person_id"] == "person-split")
    assert split["patient_ids"] == "split-a;split-b"
    assert split["phq9_change_pct"] == "-60" and split["status"] == "response"
    new = next(r for r in found if r["patient_ids"] == "new")
    assert new["person_id"] == "" and new["baseline_gad7"] == "" and new["weeks_in_care"] == "3"
    assert (new["needs_psychiatric_review"], new["safety"]) == ("false", "false")
    assert new["enrolled_on"] == ago(27) and new["last_contact"] == ago(27)


def test_the_command(store: Store, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from takamul.cli import app

    out = tmp_path / "registry.csv"
    url = store.settings.database_url
    args = ["mh", "registry", "--db", url, "--as-of", AS_OF.isoformat(), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with out.open(encoding="utf-8") as handle:
        found = {r["patient_ids"]: r for r in csv.DictReader(handle)}
    assert found["split-a;split-b"]["status"] == "response"
    assert found["ten-weeks"]["needs_psychiatric_review"] == "true"
    bad = CliRunner().invoke(app, ["mh", "registry", "--db", url, "--as-of", "30/06/2025"])
    assert bad.exit_code == 2 and "--as-of" in bad.output


# -- a synthetic population ---------------------------------------------------------------------

SYNTH_END = date(2024, 12, 31)


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from takamul.synth import generate, load_config

    out = tmp_path_factory.mktemp("mh-synth")
    generate(load_config(None, country="SA", patients=1500, seed=4242, years=5), out)
    return out


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def synth_store(
    request: pytest.FixtureRequest, population: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    from takamul.bulk.load import load_paths

    work = tmp_path_factory.mktemp("mh-synth-store")
    with (population / "truth" / "links.csv").open(encoding="utf-8") as handle:
        links = {r["patient_id"]: r["person"] for r in csv.DictReader(handle)}

    def ready(url: str) -> Store:
        s = Store(Settings(database_url=url, export_dir=work / "exports"))
        load_paths(s, sorted(population.glob("*.ndjson")), work / "errors.ndjson", workers=0)
        mpi_metadata.create_all(s.writer)
        with s.writer.begin() as conn:
            conn.execute(
                insert(mpi_member),
                [
                    {
                        "patient_id": p,
                        "person_id": person,
                        "probability": 1.0,
                        "manual": False,
                        "updated": 0.0,
                    }
                    for p, person in links.items()
                ],
            )
        return s

    if request.param == "sqlite":
        s = ready(f"sqlite:///{work / 'takamul.sqlite'}")
        yield s
        s.close()
    else:
        with postgres_database() as url:
            s = ready(url)
            yield s
            s.close()


def test_a_synthetic_population_is_consistent(synth_store: Store) -> None:
    # The registry against its own rules and plausible proportions (the generator's truth file
    # is compared in tests/test_synth_mentalhealth.py).
    rows = registry(synth_store, SYNTH_END)
    assert len(rows) >= 10, "the population should have persons enrolled by diagnosis and score"
    d = SYNTH_END
    for r in rows:
        assert r.status in STATUSES
        assert r.enrolled_on <= d and r.weeks_in_care == (d - r.enrolled_on).days // 7
        assert r.enrolment in ("episode", "diagnosis-and-score")
        if r.enrolment == "diagnosis-and-score":
            # enrolled on the enrolling score: a PHQ-9 or GAD-7 of 10 or more
            first = r.baseline_phq9 if r.baseline_phq9 is not None else r.baseline_gad7
            assert first is not None
            assert (r.baseline_phq9 or 0) >= 10 or (r.baseline_gad7 or 0) >= 10
        if r.status == "new":
            assert r.weeks_in_care < 4
        if r.status == "remission":
            assert all(v < 5 for v in (r.latest_phq9, r.latest_gad7) if v is not None)
        if r.status == "not-improving":
            assert r.weeks_in_care >= 10 and r.needs_psychiatric_review
        if r.last_contact is not None:
            assert r.enrolled_on <= r.last_contact <= d
            assert r.overdue_contact == ((d - r.last_contact).days > 30)
        assert len(set(r.patient_ids)) == len(r.patient_ids)
    counts = Counter(r.status for r in rows)
    # plausible: most persons enrolled years ago are past "new"; not every one improves, and
    # some do (the generator writes improving series for treated persons)
    assert counts["new"] < len(rows) / 2
    assert counts["not-improving"] + counts["improving"] > 0
    assert counts["response"] + counts["remission"] > 0
    # one row per person
    persons = [r.person_id for r in rows]
    assert len(persons) == len(set(persons)) and all(persons)
