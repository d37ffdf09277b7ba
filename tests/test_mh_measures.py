"""The mental-health measures on both stores: hand-built persons at every edge of the rules
(12 months back from the date, 18 years old, a follow-up 27/28/56/57 days after the positive
screen, a window still open, 6 months -60/-61 and +60/+61 days, the last score in the window
counts, no follow-up at all, a safety Task never acknowledged or acknowledged after the date,
an escalation that is no acknowledgment), per facility and overall, by equity dimension through
the equity engine, as MeasureReports the store accepts, and through the CLI."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from dateutil.relativedelta import relativedelta
from sqlalchemy import insert
from typer.testing import CliRunner

from takamul.cli import app
from takamul.equity.outreach import OUTREACH_SYSTEM
from takamul.mentalhealth.measures import (
    MEASURES,
    PROPORTIONS,
    MeasureRow,
    PersonMeasures,
    by_dimension,
    measure_reports,
    measure_rows,
    nearest_rank,
    person_measures,
)
from takamul.mpi.schema import mpi_member, mpi_metadata
from takamul.settings import Settings
from takamul.store.repository import Store
from tests.server import postgres_database

AS_OF = date(2025, 6, 30)
LOINC = "http://loinc.org"
SD = "https://takamul.health/fhir/StructureDefinition"
FU_INDEX = AS_OF - timedelta(days=100)  # a positive screen whose follow-up window has closed
OUT_INDEX = date(2024, 6, 1)  # an index whose 6-month window (+60 days) closed by AS_OF
TARGET = OUT_INDEX + relativedelta(months=6)  # 2024-12-01


def days(base: date, n: int) -> date:
    return base + timedelta(days=n)


def patient(
    pid: str, born: str = "1980-03-01", org: str = "org-a", quintile: int = 1, **extra: Any
) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "birthDate": born,
        "managingOrganization": {"reference": f"Organization/{org}"},
        "extension": [
            {"url": f"{SD}/income-quintile", "valueInteger": quintile},
            {"url": f"{SD}/urban-rural", "valueCode": "rural" if quintile == 1 else "urban"},
        ],
        **extra,
    }


def score(pid: str, n: int, day: date, value: int, code: str = "44261-6") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"{pid}-s{n}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": f"{day.isoformat()}T10:00:00+03:00",
        "valueInteger": value,
    }


def phq9(pid: str, *series: tuple[date, int]) -> list[dict[str, Any]]:
    return [score(pid, n, d, v) for n, (d, v) in enumerate(series)]


# record -> (resources besides the Patient, expected (screened, followed up, response,
# remission); None: not in that denominator; the whole tuple None: not an adult)
Expected = tuple[bool | None, bool | None, bool | None, bool | None] | None
WORLD: dict[str, tuple[dict[str, Any], list[dict[str, Any]], Expected]] = {
    "phq2": (
        patient("phq2"),
        [score("phq2", 0, days(AS_OF, -200), 1, "55758-7")],
        (True, None, None, None),
    ),
    "edge-in": (
        patient("edge-in"),
        phq9("edge-in", (date(2024, 7, 1), 3)),
        (True, None, None, None),
    ),
    "edge-out": (
        patient("edge-out"),
        phq9("edge-out", (date(2024, 6, 30), 3)),
        (False, None, None, None),
    ),
    "unscreened": (patient("unscreened", quintile=5), [], (False, None, None, None)),
    "child": (patient("child", born="2010-01-01"), phq9("child", (days(AS_OF, -3), 2)), None),
    "seventeen": (patient("seventeen", born="2007-07-01"), [], None),
    "eighteen": (patient("eighteen", born="2007-06-30", quintile=5), [], (False, None, None, None)),
    "dead": (patient("dead", deceasedBoolean=True), [], None),
    "died": (patient("died", deceasedDateTime="2025-06-30T08:00:00+03:00"), [], None),
    "dies-later": (  # alive on AS_OF
        patient("dies-later", deceasedDateTime="2025-07-01T08:00:00+03:00"),
        [],
        (False, None, None, None),
    ),
    "fu-28": (
        patient("fu-28", quintile=5),
        phq9("fu-28", (FU_INDEX, 12), (days(FU_INDEX, 28), 9)),
        (True, True, None, None),
    ),
    "fu-27": (
        patient("fu-27"),
        phq9("fu-27", (FU_INDEX, 12), (days(FU_INDEX, 27), 9)),
        (True, False, None, None),
    ),
    "fu-56": (
        patient("fu-56", quintile=5),
        phq9("fu-56", (FU_INDEX, 15), (days(FU_INDEX, 56), 9)),
        (True, True, None, None),
    ),
    "fu-57": (
        patient("fu-57"),
        phq9("fu-57", (FU_INDEX, 15), (days(FU_INDEX, 57), 9)),
        (True, False, None, None),
    ),
    "fu-none": (patient("fu-none"), phq9("fu-none", (FU_INDEX, 10)), (True, False, None, None)),
    "fu-open": (
        patient("fu-open"),
        phq9("fu-open", (days(AS_OF, -55), 14)),
        (True, None, None, None),
    ),
    "fu-negative": (
        patient("fu-negative"),
        phq9("fu-negative", (FU_INDEX, 9), (days(FU_INDEX, 40), 9)),
        (True, None, None, None),
    ),
    "out-half": (
        patient("out-half", quintile=5),
        phq9("out-half", (OUT_INDEX, 20), (TARGET, 10)),
        (True, False, True, False),
    ),
    "out-remission": (
        patient("out-remission", quintile=5),
        phq9("out-remission", (OUT_INDEX, 20), (TARGET, 4)),
        (True, False, True, True),
    ),
    "out-minus-60": (
        patient("out-minus-60"),
        phq9("out-minus-60", (OUT_INDEX, 12), (days(TARGET, -60), 4)),
        (True, False, True, True),
    ),
    "out-minus-61": (
        patient("out-minus-61"),
        phq9("out-minus-61", (OUT_INDEX, 12), (days(TARGET, -61), 4)),
        (True, False, False, False),
    ),
    "out-plus-60": (
        patient("out-plus-60"),
        phq9("out-plus-60", (OUT_INDEX, 12), (days(TARGET, 60), 6)),
        (True, False, True, False),
    ),
    "out-plus-61": (
        patient("out-plus-61"),
        phq9("out-plus-61", (OUT_INDEX, 12), (days(TARGET, 61), 3)),
        (True, False, False, False),
    ),
    "out-last": (
        patient("out-last"),
        phq9("out-last", (OUT_INDEX, 16), (days(TARGET, -10), 3), (days(TARGET, 10), 12)),
        (True, False, False, False),
    ),
    "out-none": (
        patient("out-none"),
        phq9("out-none", (OUT_INDEX, 16)),
        (False, False, False, False),
    ),
    "linked-a": (
        patient("linked-a"),
        [score("linked-a", 0, days(AS_OF, -30), 0, "55758-7")],
        (True, None, None, None),
    ),
    "linked-b": (patient("linked-b", org="org-b"), [], (True, None, None, None)),
}
PERSON_OF = {"linked-a": "person-linked", "linked-b": "person-linked"}


def task(pid: str, authored: str, status: str = "requested", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "id": f"{pid}-safety",
        "status": status,
        "intent": "order",
        "priority": "stat",
        "code": {"coding": [{"system": OUTREACH_SYSTEM, "code": "safety-follow-up"}]},
        "for": {"reference": f"Patient/{pid}"},
        "authoredOn": authored,
        **extra,
    }


RAISED = "2025-06-01T10:00:00+03:00"
# record -> the versions of its safety Task, oldest first; the expected hours (None: never
# acknowledged by AS_OF; absent: not counted)
TASKS: dict[str, list[dict[str, Any]]] = {
    "fu-28": [
        task("fu-28", RAISED),
        task("fu-28", RAISED, "accepted", lastModified="2025-06-01T12:30:00+03:00"),
    ],
    "fu-27": [
        task("fu-27", RAISED),
        task("fu-27", RAISED, "in-progress", lastModified="2025-06-01T20:00:00+03:00"),
        task("fu-27", RAISED, "completed", lastModified="2025-06-03T20:00:00+03:00"),
    ],
    "fu-56": [
        task("fu-56", RAISED),
        task("fu-56", RAISED, "completed", lastModified="2025-06-02T16:00:00+03:00"),
    ],
    "fu-57": [  # escalated after 24 h (still requested), then accepted at 26 h
        task("fu-57", RAISED),
        task(
            "fu-57",
            RAISED,
            lastModified="2025-06-02T10:00:00+03:00",
            businessStatus={"text": "escalated"},
        ),
        task("fu-57", RAISED, "accepted", lastModified="2025-06-02T12:00:00+03:00"),
    ],
    "fu-none": [task("fu-none", RAISED)],  # never acknowledged
    "out-half": [
        task("out-half", RAISED),
        task("out-half", RAISED, "accepted", lastModified="2025-07-01T09:00:00+03:00"),
    ],
    "out-none": [task("out-none", "2024-06-30T10:00:00+03:00")],  # raised over 12 months ago
    "edge-in": [task("edge-in", RAISED, "entered-in-error")],
}
EXPECTED_HOURS: dict[str, list[float | None]] = {
    "fu-28": [2.5],
    "fu-27": [10.0],
    "fu-56": [30.0],
    "fu-57": [26.0],
    "fu-none": [None],
    "out-half": [None],  # acknowledged the day after AS_OF
}


def _build(store: Store) -> None:
    bodies: list[dict[str, Any]] = [
        {"resourceType": "Organization", "id": org} for org in ("org-a", "org-b")
    ]
    for body, resources, _ in WORLD.values():
        bodies += [body, *resources]
    store.write(lambda s: [s.update(b["resourceType"], b["id"], b) for b in bodies])
    for versions in TASKS.values():
        for version in versions:  # each a new version of the Task, as a clinician writes it
            store.write(lambda s, v=version: s.update("Task", v["id"], v))
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
def db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('mh-measures') / 'takamul.sqlite'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture(scope="module")
def store(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(Settings(database_url=db_url, export_dir=tmp_path_factory.mktemp("exports")))
    _build(s)
    yield s
    s.close()


@pytest.fixture(scope="module")
def people(store: Store) -> list[PersonMeasures]:
    return person_measures(store, AS_OF)


def _of(people: list[PersonMeasures]) -> dict[str, PersonMeasures]:
    return {r: p for p in people for r in p.records}


def test_only_living_adults_count(people: list[PersonMeasures]) -> None:
    adults = {r for r, (_, _, want) in WORLD.items() if want is not None}
    assert set(_of(people)) == adults
    assert len(people) == len(adults) - 1  # the two linked records are one person


@pytest.mark.parametrize("record", sorted(r for r, (_, _, want) in WORLD.items() if want))
def test_every_edge_per_person(people: list[PersonMeasures], record: str) -> None:
    p = _of(people)[record]
    assert (p.screened, p.followed_up, p.response, p.remission) == WORLD[record][2]


def test_hours_to_acknowledge_each_safety_task(people: list[PersonMeasures]) -> None:
    found = {r: p.ack_hours for r, p in _of(people).items() if p.ack_hours}
    assert found == EXPECTED_HOURS


def _expected(records: list[str], measure: str) -> tuple[int, int]:
    column = PROPORTIONS.index(measure)
    persons = {PERSON_OF.get(r, r): WORLD[r][2] for r in records if WORLD[r][2] is not None}
    values = [want[column] for want in persons.values() if want is not None]
    return sum(1 for v in values if v), sum(1 for v in values if v is not None)


def test_rows_per_facility_and_overall(people: list[PersonMeasures]) -> None:
    rows = {(r.measure, r.facility): r for r in measure_rows(people)}
    org_a = [
        r
        for r, (body, _, _) in WORLD.items()
        if body["managingOrganization"]["reference"] == "Organization/org-a"
    ]
    org_b = [r for r, (body, _, _) in WORLD.items() if r not in org_a]
    for measure in PROPORTIONS:
        for facility, records in (
            ("org-a", [*org_a, "linked-b"]),
            ("org-b", org_b),
            ("all", list(WORLD)),
        ):
            n, d = _expected(records, measure)
            r = rows[(measure, facility)]
            assert (r.numerator, r.denominator) == (n, d), (measure, facility)
            assert r.value == (round(100 * n / d, 2) if d else None)
    # the linked person is screened at org-b by the PHQ-2 taken at org-a
    assert (
        rows[("screening-coverage", "org-b")].numerator,
        rows[("screening-coverage", "org-b")].denominator,
    ) == (1, 1)
    acked = [h for hours in EXPECTED_HOURS.values() for h in hours if h is not None]
    median, p90 = rows[("safety-ack-median-hours", "all")], rows[("safety-ack-p90-hours", "all")]
    assert (median.numerator, median.denominator) == (4, 6)
    assert median.value == statistics.median(acked) == 18.0
    assert p90.value == 30.0 and p90.unit == "h"
    assert nearest_rank([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 0.9) == 9.0
    assert nearest_rank([5.0], 0.9) == 5.0


def test_by_equity_dimension(store: Store, people: list[PersonMeasures]) -> None:
    rows = by_dimension(store, people, ["income_quintile", "urban_rural"])
    cells = {(r.measure, r.dimension, r.subgroup): r for r in rows}
    for quintile in ("1", "5"):
        records = [
            r
            for r, (body, _, _) in WORLD.items()
            if str(body["extension"][0]["valueInteger"]) == quintile
        ]
        for measure in PROPORTIONS:
            n, d = _expected(records, measure)
            r = cells[(measure, "income_quintile", quintile)]
            assert (r.numerator, r.denominator) == (n, d), (measure, quintile)
    q1 = cells[("screening-coverage", "income_quintile", "1")].value
    q5 = cells[("screening-coverage", "income_quintile", "5")].value
    summary = cells[("screening-coverage", "income_quintile", "")]
    assert q1 is not None and q5 is not None
    # HEAT's difference of an ordered favourable indicator: most advantaged - least
    assert summary.difference == pytest.approx(q5 - q1, abs=1e-3)
    assert summary.ratio == pytest.approx(q5 / q1, abs=1e-3)
    assert {r.subgroup for r in rows if r.dimension == "urban_rural" and r.subgroup} == {
        "rural",
        "urban",
    }
    assert {r.measure for r in rows} == set(MEASURES)


def test_measure_reports_are_fhir_the_store_accepts(
    store: Store, people: list[PersonMeasures]
) -> None:
    rows = measure_rows(people)
    strata = by_dimension(store, people, ["income_quintile"])
    reports = measure_reports(rows, AS_OF, strata)
    assert [r["id"] for r in reports] == [
        "mh-org-a-20250630",
        "mh-org-b-20250630",
        "mh-all-20250630",
    ]
    overall = reports[-1]
    assert (overall["type"], overall["period"]) == (
        "summary",
        {"start": "2024-07-01", "end": "2025-06-30"},
    )
    assert [g["code"]["coding"][0]["code"] for g in overall["group"]] == list(MEASURES)
    coverage = overall["group"][0]
    assert [s["code"][0]["text"] for s in coverage["stratifier"]] == ["income_quintile"]
    assert reports[0]["reporter"] == {"reference": "Organization/org-a"}
    assert "stratifier" not in reports[0]["group"][0]
    for report in reports:  # validated on write
        store.write(lambda s, b=report: s.update("MeasureReport", b["id"], b))


def test_the_cli_writes_csv_and_reports(db_url: str, store: Store, tmp_path: Path) -> None:
    out, ndjson = tmp_path / "measures.csv", tmp_path / "reports.ndjson"
    result = CliRunner().invoke(
        app,
        [
            "mh",
            "measures",
            "--db",
            db_url,
            "--as-of",
            AS_OF.isoformat(),
            "--out",
            str(out),
            "--by",
            "income_quintile",
            "--reports",
            str(ndjson),
        ],
    )
    assert result.exit_code == 0, result.output
    with out.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    overall = {r["measure"]: r for r in rows if r["facility"] == "all" and not r["dimension"]}
    assert overall["safety-ack-median-hours"]["value"] == "18"
    expected: list[MeasureRow] = [
        r for r in measure_rows(person_measures(store, AS_OF)) if r.facility == "all"
    ]
    for r in expected:
        got = overall[r.measure]
        assert (int(got["numerator"]), int(got["denominator"])) == (r.numerator, r.denominator)
    assert any(r["dimension"] == "income_quintile" and r["subgroup"] == "5" for r in rows)
    assert len([orjson.loads(line) for line in ndjson.read_bytes().splitlines()]) == 3
    bad = CliRunner().invoke(
        app, ["mh", "measures", "--db", db_url, "--by", "shoe_size", "--out", str(out)]
    )
    assert bad.exit_code == 2 and "shoe_size" in bad.output
