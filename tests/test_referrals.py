"""Closed-loop referrals (issue 16) over HTTP with access control on, on SQLite and PostgreSQL:
every allowed and every forbidden change of a referral Task's status, by the right and by the
wrong party; completion without feedback; a back-referral; a transaction that breaks a rule
writes nothing; Tasks that are not referrals behave as before.

The parties are system clients bound to two facilities of the web test world: the Riyadh centre
refers its patient to the Tehran clinic (the owner). A wrong party's change is refused like a
forbidden transition, 422 ``business-rule`` (see docs/coordination.md, "Who may"), and every
refusal is checked by reading the Task back: same status, same version.
"""

from __future__ import annotations

import csv
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey
from typer.testing import CliRunner

from takamul.cli import app
from takamul.coordination.metrics import (
    MetricRow,
    ReferralRules,
    by_dimension,
    metric_rows,
    overdue,
    read_referrals,
)
from takamul.coordination.referrals import FINAL, TASK_CODE_SYSTEM, TRANSITIONS
from takamul.settings import Settings
from takamul.store.guard import unguarded
from takamul.store.repository import Session, Store
from tests.server import postgres_database
from tests.web_world import WebSite

RIYADH, TEHRAN = "org-riyadh", "org-tehran"
STATUSES = ("requested", "accepted", "in-progress", "on-hold", "completed", "failed", "rejected",
            "cancelled")  # fmt: skip
# the moves that reach each status from requested, each by its party ("owner"/"requester")
PATHS: dict[str, list[str]] = {
    "requested": [],
    "accepted": ["accepted"],
    "in-progress": ["accepted", "in-progress"],
    "on-hold": ["accepted", "in-progress", "on-hold"],
    "completed": ["accepted", "in-progress", "completed"],
    "failed": ["accepted", "in-progress", "failed"],
    "rejected": ["rejected"],
    "cancelled": ["cancelled"],
}


@dataclass
class Parties:
    riyadh: httpx.Client
    tehran: httpx.Client
    nobody: httpx.Client  # the administrators' system client: bound to no facility
    patient: str
    note: str  # a DocumentReference: the consult note fed back on completion


def _client(site: WebSite, facility: str) -> httpx.Client:
    key = ECKey.generate_key("P-384")
    client_id = f"{facility}-{uuid.uuid4().hex[:8]}"
    jwks = {"keys": [{**key.as_dict(private=False), "kid": key.thumbprint(), "alg": "ES384"}]}
    scopes = "system/*.cruds"
    site.security.clients.add(client_id, facility, jwks, scopes, facility, ("clinician",))
    token = site.security.tokens.mint(client_id, scopes, site.root + "/fhir")
    return httpx.Client(
        base_url=site.root + "/fhir", timeout=60, headers={"Authorization": f"Bearer {token}"}
    )


def ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.fixture(scope="module")
def parties(web_site: WebSite) -> Iterator[Parties]:
    riyadh, tehran = _client(web_site, RIYADH), _client(web_site, TEHRAN)
    patient = web_site.ids["salma"]
    note = ok(
        riyadh.post(
            "/DocumentReference",
            json={
                "resourceType": "DocumentReference",
                "status": "current",
                "subject": {"reference": f"Patient/{patient}"},
                "content": [{"attachment": {"contentType": "text/plain", "title": "رد الاستشارة"}}],
            },
        )
    )["id"]
    yield Parties(riyadh, tehran, web_site.fhir, patient, note)
    riyadh.close()
    tehran.close()


def refer(p: Parties, requester: str = RIYADH, owner: str = TEHRAN) -> str:
    """A ServiceRequest to ``owner`` and its referral Task, made by ``requester``."""
    client = p.riyadh if requester == RIYADH else p.tehran
    request = ok(
        client.post(
            "/ServiceRequest",
            json={
                "resourceType": "ServiceRequest",
                "status": "active",
                "intent": "order",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "3457005"}]},
                "subject": {"reference": f"Patient/{p.patient}"},
                "requester": {"reference": f"Organization/{requester}"},
                "performer": [{"reference": f"Organization/{owner}"}],
            },
        )
    )
    return str(
        ok(client.post("/Task", json=referral_task(p, request["id"], requester, owner)))["id"]
    )


def referral_task(p: Parties, request: str, requester: str, owner: str) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "code": {"coding": [{"system": TASK_CODE_SYSTEM, "code": "fulfill"}]},
        "focus": {"reference": f"ServiceRequest/{request}"},
        "for": {"reference": f"Patient/{p.patient}"},
        "authoredOn": "2026-11-02T09:00:00+03:00",
        "requester": {"reference": f"Organization/{requester}"},
        "owner": {"reference": f"Organization/{owner}"},
    }


def party_for(p: Parties, status: str, requester: str = RIYADH) -> httpx.Client:
    """The client whose move it is to reach ``status`` (cancel: the requester)."""
    requester_side = status == "cancelled"
    riyadh_moves = requester_side == (requester == RIYADH)
    return p.riyadh if riyadh_moves else p.tehran


def move(p: Parties, client: httpx.Client, task_id: str, status: str) -> httpx.Response:
    task = ok(client.get(f"/Task/{task_id}"))
    task["status"] = status
    if status == "completed":
        task["output"] = feedback(p)
    return client.put(f"/Task/{task_id}", json=task)


def feedback(p: Parties) -> list[dict[str, Any]]:
    """``Task.output``: the consult note sent back to the requester."""
    note = {"reference": f"DocumentReference/{p.note}"}
    return [{"type": {"text": "consult note"}, "valueReference": note}]


def walk(p: Parties, task_id: str, statuses: list[str], requester: str = RIYADH) -> None:
    for status in statuses:
        ok(move(p, party_for(p, status, requester), task_id, status))


def assert_refused(
    p: Parties, r: httpx.Response, task_id: str, before: dict[str, Any], after: str
) -> None:
    assert r.status_code == 422, r.text
    issue = r.json()["issue"][0]
    assert issue["code"] == "business-rule"
    assert f"Task status {before['status']} → {after} is not allowed" in issue["diagnostics"]
    now = ok(p.riyadh.get(f"/Task/{task_id}"))
    assert now["status"] == before["status"]
    assert now["meta"]["versionId"] == before["meta"]["versionId"]


def allowed(before: str, after: str) -> bool:
    if before == "on-hold":
        return after in ("cancelled", "in-progress")  # PATHS hold it from in-progress
    return after in TRANSITIONS.get(before, {})


@pytest.mark.parametrize("before", STATUSES)
def test_every_transition_by_the_right_party(parties: Parties, before: str) -> None:
    """From each status, every other status is tried by the party whose move it would be:
    the allowed ones are stored, the others refused with nothing written."""
    for after in STATUSES:
        if after == before:
            continue
        task_id = refer(parties)
        walk(parties, task_id, PATHS[before])
        was = ok(parties.riyadh.get(f"/Task/{task_id}"))
        r = move(parties, party_for(parties, after), task_id, after)
        if allowed(before, after):
            assert ok(r)["status"] == after
        else:
            assert before in FINAL or after not in TRANSITIONS.get(before, {}), (before, after)
            assert_refused(parties, r, task_id, was, after)


def test_on_hold_returns_only_to_where_it_left(parties: Parties) -> None:
    held_accepted = refer(parties)
    walk(parties, held_accepted, ["accepted", "on-hold"])
    was = ok(parties.tehran.get(f"/Task/{held_accepted}"))
    assert_refused(parties, move(parties, parties.tehran, held_accepted, "in-progress"),
                   held_accepted, was, "in-progress")  # fmt: skip
    assert ok(move(parties, parties.tehran, held_accepted, "accepted"))["status"] == "accepted"
    held_started = refer(parties)
    walk(parties, held_started, PATHS["on-hold"])
    was = ok(parties.tehran.get(f"/Task/{held_started}"))
    assert_refused(parties, move(parties, parties.tehran, held_started, "accepted"),
                   held_started, was, "accepted")  # fmt: skip
    assert ok(move(parties, parties.tehran, held_started, "in-progress"))["status"] == "in-progress"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("requested", "accepted"),
        ("requested", "rejected"),
        ("accepted", "in-progress"),
        ("in-progress", "completed"),
        ("in-progress", "failed"),
        ("in-progress", "on-hold"),
    ],
)
def test_only_the_owner_moves_the_work(parties: Parties, before: str, after: str) -> None:
    """The requester, and a client bound to no facility, may not make the owner's moves."""
    task_id = refer(parties)
    walk(parties, task_id, PATHS[before])
    was = ok(parties.riyadh.get(f"/Task/{task_id}"))
    r = move(parties, parties.riyadh, task_id, after)
    assert_refused(parties, r, task_id, was, after)
    assert "only the owner (Organization/org-tehran)" in r.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("before", ["requested", "accepted", "in-progress", "on-hold"])
def test_only_the_requester_cancels(parties: Parties, before: str) -> None:
    task_id = refer(parties)
    walk(parties, task_id, PATHS[before])
    was = ok(parties.riyadh.get(f"/Task/{task_id}"))
    r = move(parties, parties.tehran, task_id, "cancelled")
    assert_refused(parties, r, task_id, was, "cancelled")
    assert "only the requester (Organization/org-riyadh)" in r.json()["issue"][0]["diagnostics"]
    assert ok(move(parties, parties.riyadh, task_id, "cancelled"))["status"] == "cancelled"


def test_completion_needs_feedback(parties: Parties) -> None:
    task_id = refer(parties)
    walk(parties, task_id, PATHS["in-progress"])
    task = ok(parties.tehran.get(f"/Task/{task_id}"))
    bare = {**task, "status": "completed"}
    assert_refused(parties, parties.tehran.put(f"/Task/{task_id}", json=bare), task_id, task,
                   "completed")  # fmt: skip
    # an output that is not a consult note, report or document is no feedback either
    wrong = {**bare, "output": [{"type": {"text": "x"}, "valueString": "seen"}]}
    assert_refused(parties, parties.tehran.put(f"/Task/{task_id}", json=wrong), task_id, task,
                   "completed")  # fmt: skip
    done = ok(move(parties, parties.tehran, task_id, "completed"))
    assert done["output"][0]["valueReference"]["reference"] == f"DocumentReference/{parties.note}"
    # and the requester reads the feedback back
    assert ok(parties.riyadh.get(f"/Task/{task_id}"))["output"] == done["output"]


def test_the_requester_makes_the_referral(parties: Parties) -> None:
    request = ok(parties.riyadh.get("/ServiceRequest", params={"_count": "1"}))["entry"][0]
    body = referral_task(parties, request["resource"]["id"], RIYADH, TEHRAN)
    r = parties.tehran.post("/Task", json=body)  # the owner cannot refer to itself for them
    assert r.status_code == 422 and r.json()["issue"][0]["code"] == "business-rule", r.text
    r = parties.riyadh.post("/Task", json={**body, "status": "accepted"})
    assert r.status_code == 422 and "created as requested" in r.text, r.text


def test_parties_do_not_change(parties: Parties) -> None:
    task_id = refer(parties)
    task = ok(parties.riyadh.get(f"/Task/{task_id}"))
    moved = {**task, "owner": {"reference": f"Organization/{RIYADH}"}}
    r = parties.riyadh.put(f"/Task/{task_id}", json=moved)
    assert r.status_code == 422 and "Task.owner" in r.text, r.text
    assert ok(parties.riyadh.get(f"/Task/{task_id}"))["owner"] == task["owner"]


def test_back_referral_from_specialist_to_primary_care(parties: Parties) -> None:
    """The clinic refers the patient back to the centre: the same rules with the roles
    swapped."""
    task_id = refer(parties, requester=TEHRAN, owner=RIYADH)
    was = ok(parties.riyadh.get(f"/Task/{task_id}"))
    assert_refused(parties, move(parties, parties.tehran, task_id, "accepted"), task_id, was,
                   "accepted")  # fmt: skip
    walk(parties, task_id, ["accepted", "in-progress"], requester=TEHRAN)
    was = ok(parties.riyadh.get(f"/Task/{task_id}"))
    assert_refused(parties, move(parties, parties.riyadh, task_id, "cancelled"), task_id, was,
                   "cancelled")  # fmt: skip
    assert ok(move(parties, parties.riyadh, task_id, "completed"))["status"] == "completed"


def test_a_transaction_with_a_forbidden_change_writes_nothing(parties: Parties) -> None:
    task_id = refer(parties)
    walk(parties, task_id, ["accepted"])
    was = ok(parties.tehran.get(f"/Task/{task_id}"))
    marker = uuid.uuid4().hex
    jumped = {**was, "status": "completed", "output": feedback(parties)}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "identifier": [{"system": "urn:test:referrals", "value": marker}],
                    "code": {"text": "seen in clinic"},
                    "subject": {"reference": f"Patient/{parties.patient}"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {"resource": jumped, "request": {"method": "PUT", "url": f"Task/{task_id}"}},
        ],
    }
    r = parties.tehran.post("", json=bundle)
    assert_refused(parties, r, task_id, was, "completed")
    found = ok(
        parties.tehran.get("/Observation", params={"identifier": f"urn:test:referrals|{marker}"})
    )
    assert found.get("total", len(found.get("entry", []))) == 0 and not found.get("entry")


def test_other_tasks_are_not_governed(parties: Parties) -> None:
    """A worklist Task (no ServiceRequest focus) goes from completed back to requested, by
    anyone who may write it, as before."""
    task = ok(
        parties.riyadh.post(
            "/Task",
            json={
                "resourceType": "Task",
                "status": "completed",
                "intent": "plan",
                "for": {"reference": f"Patient/{parties.patient}"},
                "focus": {"reference": f"DocumentReference/{parties.note}"},
            },
        )
    )
    assert ok(move(parties, parties.riyadh, task["id"], "requested"))["status"] == "requested"


# -- loop metrics on hand-built referrals --------------------------------------------------------

AS_OF = date(2026, 12, 31)
HOUSE, CENTRE, SPECIALIST = (
    "Rural Health House",
    "Primary Health Care Centre",
    "Specialist Hospital",
)
CONSULT, SERVICE = "3457005", "306206005"  # SNOMED: patient referral; referral to service
# task id: (requester, owner, type, patient, authored, [(status, day, with feedback)])
REFERRALS: dict[str, tuple[str, str, str, str, str, list[tuple[str, str, bool]]]] = {
    # accepted on day 7 (on time) and completed on day 30 (within 30 days)
    "ra": ("hh", "phc", CONSULT, "pf", "2026-11-01", [
        ("accepted", "2026-11-08", False), ("in-progress", "2026-11-09", False),
        ("completed", "2026-12-01", True)]),
    # accepted on day 8 (late) and completed on day 31 (not within 30 days)
    "rb": ("hh", "phc", CONSULT, "pf", "2026-11-01", [
        ("accepted", "2026-11-09", False), ("in-progress", "2026-11-10", False),
        ("completed", "2026-12-02", True)]),
    # completed on day 10 without feedback (a bulk load; the server would refuse it)
    "rc": ("phc", "spec", SERVICE, "pf", "2026-11-10", [
        ("accepted", "2026-11-11", False), ("completed", "2026-11-20", False)]),
    "rd": ("phc", "spec", SERVICE, "pm", "2026-11-10", []),  # never answered
    # the back-referral, 11 days old: outside the 30-day windows
    "re": ("spec", "phc", CONSULT, "pm", "2026-12-20", [("accepted", "2026-12-21", False)]),
    "rf": ("hh", "phc", CONSULT, "pm", "2025-10-01", []),  # outside the 12 months
    # accepted after D: not accepted as of D; 6 days old, not yet overdue
    "rg": ("hh", "phc", CONSULT, "pm", "2026-12-25", [("accepted", "2027-01-05", False)]),
}  # fmt: skip
FACILITY_TYPES = {"hh": HOUSE, "phc": CENTRE, "spec": SPECIALIST}


NOTE = [{"type": {"text": "reply"}, "valueReference": {"reference": "DocumentReference/note"}}]


def _directory(s: Session) -> None:
    for org, label in FACILITY_TYPES.items():
        body = {"resourceType": "Organization", "id": org, "type": [{"text": label}]}
        s.update("Organization", org, body)
    for pid, sex in (("pf", "female"), ("pm", "male")):
        s.update("Patient", pid, {"resourceType": "Patient", "id": pid, "gender": sex})
    attachment = {"title": "reply"}
    note = {"resourceType": "DocumentReference", "id": "note", "status": "current"}
    s.update("DocumentReference", "note", {**note, "content": [{"attachment": attachment}]})


def _referral(s: Session, tid: str) -> dict[str, Any]:
    """The ServiceRequest and the Task as requested, dated the day it was authored."""
    requester, owner, kind, pid, authored, _ = REFERRALS[tid]
    coding = {"system": "http://snomed.info/sct", "code": kind}
    s.update("ServiceRequest", tid, {
        "resourceType": "ServiceRequest", "id": tid, "status": "active", "intent": "order",
        "subject": {"reference": f"Patient/{pid}"}, "code": {"coding": [coding]},
    })  # fmt: skip
    task = {
        "resourceType": "Task", "id": tid, "status": "requested", "intent": "order",
        "focus": {"reference": f"ServiceRequest/{tid}"},
        "for": {"reference": f"Patient/{pid}"},
        "authoredOn": f"{authored}T10:00:00+03:00",
        "lastModified": f"{authored}T10:00:00+03:00",
        "requester": {"reference": f"Organization/{requester}"},
        "owner": {"reference": f"Organization/{owner}"},
    }  # fmt: skip
    s.update("Task", tid, task)
    return task


def _build(store: Store) -> None:
    """Every referral's versions, one write each (a bulk load: unguarded)."""
    with unguarded():
        store.write(_directory)
        for tid, (*_, steps) in REFERRALS.items():
            task = store.write(lambda s, t=tid: _referral(s, t))
            for status, day, fed in steps:
                task = {**task, "status": status, "lastModified": f"{day}T12:00:00+03:00"}
                if fed:
                    task["output"] = NOTE
                store.write(lambda s, t=dict(task): s.update("Task", t["id"], t))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def metrics_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    exports = tmp_path_factory.mktemp("exports")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('referrals') / 'metrics.sqlite'}"
        store = Store(Settings(database_url=url, export_dir=exports))
        _build(store)
        yield store
        store.close()
    else:
        with postgres_database() as url:
            store = Store(Settings(database_url=url, export_dir=exports))
            _build(store)
            yield store
            store.close()


def _metric(rows: list[MetricRow], metric: str, route: str = "all", kind: str = "all") -> MetricRow:
    return next(
        r
        for r in rows
        if (r.metric, r.route, r.referral_type, r.dimension) == (metric, route, kind, "")
    )


def test_loop_metrics_overall(metrics_store: Store) -> None:
    referrals = read_referrals(metrics_store, AS_OF)
    assert sorted(r.task for r in referrals) == ["ra", "rb", "rc", "rd", "re", "rg"]
    rows = metric_rows(referrals, AS_OF)
    expected = {  # (numerator, denominator, value)
        "referrals-made": (6, 6, 6.0),
        "accepted": (4, 6, 66.67),
        "completed-30-days": (2, 4, 50.0),  # ra on day 30 counts, rb on day 31 does not
        "feedback-returned": (2, 6, 33.33),
        "days-to-acceptance-median": (4, 6, 4.0),  # 1, 1, 7, 8
        "days-to-completion-median": (3, 6, 30.0),  # 10, 30, 31
        "overdue-acceptance": (2, 5, 2.0),  # rb (day 8) and rd; ra on day 7 is on time
        "overdue-completion": (2, 4, 2.0),  # rb (closed on day 31) and rd
    }
    for metric, (n, d, value) in expected.items():
        row = _metric(rows, metric)
        assert (row.numerator, row.denominator, row.value) == (n, d, value), metric


def test_loop_metrics_per_route_and_type(metrics_store: Store) -> None:
    rows = metric_rows(read_referrals(metrics_store, AS_OF), AS_OF)
    up = f"{HOUSE} → {CENTRE}"
    assert _metric(rows, "referrals-made", up).value == 3  # ra, rb, rg
    assert _metric(rows, "completed-30-days", up, CONSULT).value == 50.0
    specialist = f"{CENTRE} → {SPECIALIST}"
    assert _metric(rows, "feedback-returned", specialist).numerator == 0
    assert _metric(rows, "accepted", specialist, SERVICE).value == 50.0
    back = _metric(rows, "accepted", f"{SPECIALIST} → {CENTRE}")
    assert (back.numerator, back.denominator) == (1, 1)
    assert _metric(rows, "referrals-made", kind=SERVICE).value == 2


def test_overdue_per_referral_type(metrics_store: Store, tmp_path: Path) -> None:
    referrals = read_referrals(metrics_store, AS_OF)
    assert {(r.task, why) for r, why in overdue(referrals, AS_OF)} == {
        ("rd", "not accepted within 7 days")
    }
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps({"types": {SERVICE: {"accept_days": 0}}}))
    rules = ReferralRules.load(rules_file)
    row = _metric(metric_rows(referrals, AS_OF, rules), "overdue-acceptance")
    assert (row.numerator, row.denominator) == (3, 5)  # rc (day 1 > 0) joins rb and rd
    rules_file.write_text('{"default": {"accept_days": -1}}')
    with pytest.raises(ValueError, match="accept_days"):
        ReferralRules.load(rules_file)


def test_loop_metrics_by_equity_dimension(metrics_store: Store) -> None:
    referrals = read_referrals(metrics_store, AS_OF)
    rows = by_dimension(metrics_store, referrals, AS_OF, dimensions=["sex"])
    accepted = {r.subgroup: r for r in rows if r.metric == "accepted"}
    assert (accepted["female"].numerator, accepted["female"].denominator) == (3, 3)
    assert (accepted["male"].numerator, accepted["male"].denominator) == (1, 3)
    summary = accepted[""]
    assert isinstance(summary.difference, float)
    assert abs(summary.difference) == pytest.approx(66.67, abs=0.01)


def test_metrics_command(metrics_store: Store, tmp_path: Path) -> None:
    out = tmp_path / "metrics.csv"
    db = metrics_store.settings.database_url
    result = CliRunner().invoke(
        app, ["referrals", "metrics", "--db", db, "--as-of", "2026-12-31", "--out", str(out),
              "--by", "sex", "--overdue", str(tmp_path / "overdue.csv")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with out.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    overall = next(r for r in rows if r["metric"] == "accepted" and r["route"] == "all"
                   and r["referral_type"] == "all" and not r["dimension"])  # fmt: skip
    assert (overall["numerator"], overall["denominator"], overall["value"]) == ("4", "6", "66.67")
    assert any(r["dimension"] == "sex" and r["subgroup"] == "male" for r in rows)
    assert "rd" in (tmp_path / "overdue.csv").read_text()
    bad = CliRunner().invoke(app, ["referrals", "metrics", "--db", db, "--as-of", "31/12/2026"])
    assert bad.exit_code == 2 and "not a date" in bad.output


def test_a_practitioner_owner_is_acted_for_by_their_organization(
    parties: Parties, web_site: WebSite
) -> None:
    """Owner ``Practitioner/P``: the facility of P's PractitionerRole makes the owner's moves."""
    doctor = ok(web_site.fhir.post("/Practitioner", json={"resourceType": "Practitioner"}))["id"]
    ok(
        web_site.fhir.post(
            "/PractitionerRole",
            json={
                "resourceType": "PractitionerRole",
                "practitioner": {"reference": f"Practitioner/{doctor}"},
                "organization": {"reference": f"Organization/{TEHRAN}"},
            },
        )
    )
    task_id = refer(parties)
    task = ok(parties.riyadh.get(f"/Task/{task_id}"))
    body = {k: v for k, v in task.items() if k not in ("id", "meta")}
    body["owner"] = {"reference": f"Practitioner/{doctor}"}
    task_id = str(ok(parties.riyadh.post("/Task", json=body))["id"])
    was = ok(parties.riyadh.get(f"/Task/{task_id}"))
    r = move(parties, parties.riyadh, task_id, "accepted")
    assert_refused(parties, r, task_id, was, "accepted")
    assert f"only the owner (Practitioner/{doctor})" in r.json()["issue"][0]["diagnostics"]
    assert ok(move(parties, parties.tehran, task_id, "accepted"))["status"] == "accepted"


def test_a_patch_takes_the_same_check(parties: Parties) -> None:
    task_id = refer(parties)
    was = ok(parties.tehran.get(f"/Task/{task_id}"))
    r = parties.tehran.patch(
        f"/Task/{task_id}",
        json=[{"op": "replace", "path": "/status", "value": "completed"}],
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert_refused(parties, r, task_id, was, "completed")


def test_a_referral_loaded_as_its_last_version_is_dated_by_its_execution_period() -> None:
    from takamul.coordination.metrics import Referral, follow_history

    referral = Referral("t", "p", "route", "kind", "a", "b", date(2025, 3, 1))
    last = {
        "status": "completed",
        "lastModified": "2025-03-20T10:00:00+03:00",
        "executionPeriod": {"start": "2025-03-04T09:00:00+03:00", "end": "2025-03-20"},
        "output": [{"valueReference": {"reference": "DocumentReference/note"}}],
    }
    follow_history(referral, [last], date(2025, 6, 30))
    assert (referral.accepted, referral.answered) == (date(2025, 3, 4), date(2025, 3, 4))
    assert referral.completed == date(2025, 3, 20) and referral.feedback
    # without an execution period, the version's own date (as before)
    bare = Referral("t", "p", "route", "kind", "a", "b", date(2025, 3, 1))
    follow_history(
        bare, [{k: v for k, v in last.items() if k != "executionPeriod"}], date(2025, 6, 30)
    )
    assert bare.accepted == date(2025, 3, 20)
