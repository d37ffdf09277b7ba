"""The overdue list as follow-up Tasks on both stores: high risk first, one Task per person and
due date however often the run is repeated, and a person who came back leaves the list."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from takamul.cli import app
from takamul.equity.outreach import OUTREACH_SYSTEM
from takamul.programmes.definitions import load_catalog
from takamul.programmes.facts import CareFacts
from takamul.programmes.overdue import overdue, store_overdue
from takamul.programmes.status import statuses
from takamul.settings import Settings
from takamul.store.repository import Store
from tests.server import postgres_database
from tests.test_programmes_status import AS_OF, _build, bp


@pytest.fixture(params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    exports = tmp_path_factory.mktemp("exports")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('overdue') / 'takamul.sqlite'}"
        s = Store(Settings(database_url=url, export_dir=exports))
        _build(s)
        CareFacts(s, load_catalog()).attach()
        yield s
        s.close()
    else:
        with postgres_database() as url:
            s = Store(Settings(database_url=url, export_dir=exports))
            _build(s)
            CareFacts(s, load_catalog()).attach()
            yield s
            s.close()


def _tasks(store: Store) -> dict[str, dict]:
    with store.reading() as s:
        page = s.search(
            s.parse_search("Task", [("code", f"{OUTREACH_SYSTEM}|"), ("_count", "500")])
        )
    return {t.json()["for"]["reference"]: t.json() for t in page.matches}


def test_the_overdue_list_becomes_tasks_high_risk_first(store: Store) -> None:
    catalog = load_catalog()
    rows = statuses(store, catalog, AS_OF, ["hypertension"])
    listed = overdue(rows)
    assert listed[0].risk == "high"
    assert [r.risk for r in listed] == sorted((r.risk for r in listed), key=lambda x: x != "high")
    highs = [r for r in listed if r.risk == "high"]
    assert {r.patient_ids[0] for r in highs} == {"high-risk", "stroke"}
    run = store_overdue(store, catalog, rows, AS_OF, ["hypertension"])
    assert run.created == len(listed) and run.closed == 0
    tasks = _tasks(store)
    assert set(tasks) == {f"Patient/{r.record_id}" for r in listed}
    high = tasks["Patient/high-risk"]
    assert high["priority"] == "urgent" and high["owner"] == {"reference": "Organization/org-a"}
    assert high["code"]["coding"][0]["code"] == "hypertension-follow-up"
    assert "overdue by" in high["description"]
    assert tasks["Patient/missed"]["priority"] == "routine"
    # the same run again adds nothing
    again = store_overdue(store, catalog, rows, AS_OF, ["hypertension"])
    assert (again.created, again.existing, again.closed) == (0, len(listed), 0)


def test_a_person_who_came_back_leaves_the_worklist(store: Store) -> None:
    catalog = load_catalog()
    store_overdue(
        store, catalog, statuses(store, catalog, AS_OF, ["hypertension"]), AS_OF, ["hypertension"]
    )
    store.write(
        lambda s: s.update("Observation", "missed-bp8", bp("missed", 8, "2025-06-28", 120, 75))
    )
    rows = statuses(store, catalog, AS_OF, ["hypertension"])
    assert "missed" not in {r.patient_ids[0] for r in overdue(rows)}
    run = store_overdue(store, catalog, rows, AS_OF, ["hypertension"])
    assert run.closed == 1 and run.created == 0
    task = _tasks(store)["Patient/missed"]
    assert task["status"] == "completed"
    assert task["businessStatus"]["coding"][0]["code"] == "no-longer-overdue"


def test_the_cli_lists_or_stores_the_overdue(store: Store, tmp_path) -> None:
    url = store.settings.database_url
    out = tmp_path / "overdue.csv"
    listed = CliRunner().invoke(
        app,
        [
            "programmes",
            "overdue",
            "--db",
            url,
            "--as-of",
            "2025-06-30",
            "--programme",
            "hypertension",
            "--out",
            str(out),
        ],
    )
    assert listed.exit_code == 0, listed.output
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[1].split(",")[12] == "high"  # risk column of the first row
    stored = CliRunner().invoke(
        app, ["programmes", "overdue", "--db", url, "--as-of", "2025-06-30", "--limit", "2"]
    )
    assert stored.exit_code == 0, stored.output
    assert "2 new" in stored.output
