"""Care plans from the programmes on both stores: one CarePlan and Goal per registered person,
the goal judged on the latest values, the follow-up visit as the worklist Task when the overdue
list made one, made again without duplicates, and revoked when the person leaves the registry.
The hand-built world of tests/test_programmes_status.py is the population."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from takamul.careplans.plans import ACHIEVEMENT_SYSTEM, CAREPLAN_SYSTEM, goal_id, plan_id
from takamul.careplans.service import make_care_plans, make_person_plans
from takamul.cli import app
from takamul.fhir.validation import validate_resource
from takamul.programmes.definitions import PROGRAMME_SYSTEM, load_catalog
from takamul.programmes.facts import CareFacts
from takamul.programmes.overdue import overdue, store_overdue
from takamul.programmes.status import PersonStatus, statuses
from takamul.settings import Settings
from takamul.store.repository import Store
from tests.server import postgres_database
from tests.test_programmes_status import AS_OF, _build

VER_STATUS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    exports = tmp_path_factory.mktemp("exports")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('careplans') / 'takamul.sqlite'}"
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


def _all(store: Store, rtype: str, *params: tuple[str, str]) -> list[dict[str, Any]]:
    with store.reading() as s:
        page = s.search(s.parse_search(rtype, [*params, ("_count", "1000")]))
    return [m.json() for m in page.matches]


def _rows(store: Store, programme: str = "hypertension") -> dict[str, PersonStatus]:
    return {r.patient_ids[0]: r for r in statuses(store, load_catalog(), AS_OF, [programme])}


def _plan_of(store: Store, row: PersonStatus) -> dict[str, Any]:
    key = row.person_id or "~" + row.patient_ids[0]
    with store.reading() as s:
        return s.read("CarePlan", plan_id(row.programme, key)).json()


def _goal_of(store: Store, row: PersonStatus) -> dict[str, Any]:
    key = row.person_id or "~" + row.patient_ids[0]
    with store.reading() as s:
        return s.read("Goal", goal_id(row.programme, key)).json()


def _achievement(goal: dict[str, Any]) -> str:
    coding = goal["achievementStatus"]["coding"][0]
    assert coding["system"] == ACHIEVEMENT_SYSTEM
    return str(coding["code"])


def test_one_plan_and_goal_per_registered_person(store: Store) -> None:
    catalog = load_catalog()
    rows = _rows(store)
    run = make_care_plans(store, catalog, "htn", AS_OF)
    assert (run.created, run.updated, run.unchanged, run.revoked) == (len(rows), 0, 0, 0)
    plans = _all(store, "CarePlan", ("identifier", f"{CAREPLAN_SYSTEM}|"))
    assert len(plans) == len(rows)
    for plan in plans:
        assert not validate_resource(plan, "CarePlan"), plan
        assert plan["status"] == "active" and plan["intent"] == "plan"
        assert plan["category"][0]["coding"][0] == {
            "system": PROGRAMME_SYSTEM, "code": "hypertension", "display": "Hypertension"
        }  # fmt: skip
    ctrl = _plan_of(store, rows["ctrl"])
    assert ctrl["subject"] == {"reference": "Patient/ctrl"}
    assert ctrl["addresses"] == [{"reference": "Condition/ctrl-c1"}]
    assert ctrl["period"] == {"start": rows["ctrl"].registered_on.isoformat()}
    assert ctrl["author"] == {"reference": "Organization/org-a"}
    goal = _goal_of(store, rows["ctrl"])
    assert not validate_resource(goal, "Goal"), goal
    assert ctrl["goal"] == [{"reference": f"Goal/{goal['id']}"}]
    assert goal["lifecycleStatus"] == "active" and _achievement(goal) == "achieved"
    # HEARTS's target from the catalog, as two LOINC components
    targets = [
        (t["measure"]["coding"][0]["code"], t["detailQuantity"]["value"]) for t in goal["target"]
    ]
    assert targets == [("8480-6", 140.0), ("8462-4", 90.0)]
    assert all(t["detailQuantity"]["comparator"] == "<" for t in goal["target"])
    assert "HEARTS" in json.dumps(goal["note"])
    assert goal["statusDate"] == "2025-06-01" and "139/89" in goal["statusReason"]
    assert _achievement(_goal_of(store, rows["edge"])) == "not-achieved"  # 140/90
    ltfu = _goal_of(store, rows["ltfu"])
    assert ltfu["lifecycleStatus"] == "on-hold" and _achievement(ltfu) == "in-progress"


def test_diabetes_goal_is_simples_blood_sugar_target(store: Store) -> None:
    make_care_plans(store, load_catalog(), "dm", AS_OF)
    rows = _rows(store, "diabetes")
    goal = _goal_of(store, rows["a1c-69"])
    assert _achievement(goal) == "achieved"
    targets = {t["measure"]["coding"][0]["code"]: t["detailQuantity"] for t in goal["target"]}
    assert targets["4548-4"]["value"] == 7.0 and targets["4548-4"]["unit"] == "%"
    assert targets["1558-6"]["value"] == 126.0 and targets["2345-7"]["value"] == 200.0
    assert _achievement(_goal_of(store, rows["a1c-70"])) == "not-achieved"


def test_activities_are_the_worklist_task_or_the_planned_visit(store: Store) -> None:
    catalog = load_catalog()
    rows = _rows(store)
    make_care_plans(store, catalog, "hypertension", AS_OF)
    # before the overdue list: every follow-up is a planned activity with its due date
    missed = _plan_of(store, rows["missed"])["activity"][0]
    assert "reference" not in missed
    detail = missed["detail"]
    assert detail["code"]["coding"][0]["code"] == "hypertension-follow-up"
    assert detail["status"] == "not-started"  # overdue
    due = AS_OF.toordinal() - rows["missed"].overdue_days
    assert detail["scheduledPeriod"]["start"] == AS_OF.fromordinal(due).isoformat()
    assert detail["instantiatesCanonical"] == [
        "https://takamul.health/fhir/Measure/hypertension-control"
    ]
    ctrl = _plan_of(store, rows["ctrl"])["activity"][0]["detail"]
    assert ctrl["status"] == "scheduled" and ctrl["scheduledPeriod"]["start"] == "2025-08-30"
    # the overdue list's Tasks: the plans of the overdue persons now point at them
    listed = overdue(rows.values())
    store_overdue(store, catalog, list(rows.values()), AS_OF, ["hypertension"])
    tasks = {
        t["for"]["reference"]: t["id"]
        for t in _all(store, "Task", ("code", "https://takamul.health/fhir/CodeSystem/outreach|"))
    }
    run = make_care_plans(store, catalog, "hypertension", AS_OF)
    assert run.updated == len(listed) and run.created == 0
    for r in listed:
        activity = _plan_of(store, r)["activity"][0]
        assert activity == {
            "reference": {
                "reference": f"Task/{tasks[f'Patient/{r.record_id}']}",
                "display": "Hypertension follow-up visit",
            }
        }


def test_making_the_plans_again_changes_nothing(store: Store) -> None:
    catalog = load_catalog()
    first = make_care_plans(store, catalog, "hypertension", AS_OF)
    with store.reading() as s:
        before = s.conn.exec_driver_sql("SELECT COUNT(*) FROM resource_version").scalar()
    again = make_care_plans(store, catalog, "hypertension", AS_OF)
    assert (again.created, again.updated, again.revoked) == (0, 0, 0)
    assert again.unchanged == first.created
    with store.reading() as s:
        after = s.conn.exec_driver_sql("SELECT COUNT(*) FROM resource_version").scalar()
    assert after == before  # not even a new version
    assert len(_all(store, "CarePlan")) == first.created
    assert len(_all(store, "Goal")) == first.created


def test_the_care_team_is_referenced_while_current(store: Store) -> None:
    catalog = load_catalog()

    def team(tid: str, status: str) -> dict[str, Any]:
        return {
            "resourceType": "CareTeam",
            "id": tid,
            "status": status,
            "subject": {"reference": "Patient/ctrl"},
            "participant": [{"member": {"reference": "Organization/org-a"}}],
        }

    store.write(lambda s: s.update("CareTeam", "team-now", team("team-now", "active")))
    store.write(lambda s: s.update("CareTeam", "team-old", team("team-old", "inactive")))
    make_care_plans(store, catalog, "hypertension", AS_OF)
    assert _plan_of(store, _rows(store)["ctrl"])["careTeam"] == [{"reference": "CareTeam/team-now"}]


def test_a_person_who_leaves_the_registry_has_the_plan_revoked(store: Store) -> None:
    catalog = load_catalog()
    rows = _rows(store)
    make_care_plans(store, catalog, "hypertension", AS_OF)
    refuted = {
        "resourceType": "Condition",
        "id": "ctrl-c1",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
        "verificationStatus": {"coding": [{"system": VER_STATUS, "code": "refuted"}]},
        "subject": {"reference": "Patient/ctrl"},
        "onsetDateTime": "2024-01-10",
    }
    store.write(lambda s: s.update("Condition", "ctrl-c1", refuted))
    CareFacts(store, catalog).catch_up()
    run = make_care_plans(store, catalog, "hypertension", AS_OF)
    assert run.revoked == 1
    assert _plan_of(store, rows["ctrl"])["status"] == "revoked"
    assert _plan_of(store, rows["edge"])["status"] == "active"


def test_a_facility_run_makes_only_its_persons_plans(store: Store) -> None:
    catalog = load_catalog()
    rows = [r for r in _rows(store).values() if r.facility == "org-a"]
    run = make_care_plans(store, catalog, "hypertension", AS_OF, "Organization/org-a")
    assert run.created == len(rows) > 0
    other = make_care_plans(store, catalog, "hypertension", AS_OF, "Organization/nowhere")
    assert (other.created, other.revoked) == (0, 0)  # org-a's plans are not nowhere's to revoke


def test_one_persons_plans_for_the_record_page(store: Store) -> None:
    ids = make_person_plans(store, load_catalog(), ["ctrl"], AS_OF)
    assert len(ids) == 1
    with store.reading() as s:
        assert s.read("CarePlan", ids[0]).json()["subject"] == {"reference": "Patient/ctrl"}


def test_the_cli(store: Store) -> None:
    url = str(store.writer.url.render_as_string(hide_password=False))
    runner = CliRunner()
    args = ["careplans", "make", "--db", url, "--programme", "htn", "--as-of", AS_OF.isoformat()]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "created" in done.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and " 0 created, 0 updated" in again.output, again.output
    wrong = runner.invoke(app, [*args[:5], "nothing", "--as-of", "2025-06-30"])
    assert wrong.exit_code == 2 and "OperationOutcome" in wrong.output, wrong.output
    assert "hypertension" in wrong.output  # the error names the programmes
    bad_date = runner.invoke(app, [*args[:-1], "30/06/2025"])
    assert bad_date.exit_code == 2 and "--as-of" in bad_date.output


def test_the_record_page_reads_a_worklist_tasks_status_and_due_date() -> None:
    """An activity that is a worklist Task shows the Task's own status and due date: its
    restriction period's end, else the date in the overdue list's identifier."""
    from takamul.careplans.record import _activity, task_due
    from takamul.equity.outreach import OUTREACH_SYSTEM, TASK_IDENTIFIER_SYSTEM

    task = {
        "resourceType": "Task",
        "id": "t1",
        "status": "in-progress",
        "identifier": [
            {"system": TASK_IDENTIFIER_SYSTEM, "value": "hypertension-follow-up-20250415-p-1"}
        ],
        "code": {"coding": [{"system": OUTREACH_SYSTEM, "code": "hypertension-follow-up"}],
                 "text": "Hypertension follow-up visit"},
    }  # fmt: skip
    assert task_due(task) == "2025-04-15"
    assert task_due({**task, "restriction": {"period": {"end": "2025-05-01T00:00:00Z"}}}) == (
        "2025-05-01"
    )
    activity = {"reference": {"reference": "Task/t1", "display": "Hypertension follow-up visit"}}
    shown = _activity(activity, {"Task/t1": task})
    assert (shown.status, shown.due, shown.code, shown.task) == (
        "in-progress", "2025-04-15", "hypertension-follow-up", "Task/t1"
    )  # fmt: skip
    hidden = _activity(activity, {})  # the viewer may not read the Task
    assert (hidden.text, hidden.status, hidden.due) == ("Hypertension follow-up visit", None, None)
