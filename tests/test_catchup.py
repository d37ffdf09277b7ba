"""Catching up on a bulk load (issue 17): ``takamul load`` links, extracts care facts and
scores at its end, ``--no-catch-up`` leaves that to ``takamul catch-up``, and a second run
finds nothing to do. On both stores, through the command line as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, inspect, select
from typer.testing import CliRunner

from takamul.cli import app
from takamul.mentalhealth.instruments import instrument
from takamul.mpi.schema import mpi_member
from takamul.programmes.facts import care_fact
from takamul.settings import Settings
from takamul.store.repository import Session, Store
from tests.server import free_port, postgres_database

PHQ9 = instrument("phq-9")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catchup.sqlite'}"
        return
    with postgres_database() as url:
        yield url


def _patient(pid: str) -> dict[str, Any]:
    """Two registrations of one woman at two facilities (the same national ID)."""
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": "https://takamul.health/id/national-id", "value": "1048812345"}],
        "name": [{"family": "Al-Harbi", "given": ["Noura"]}],
        "gender": "female",
        "birthDate": "1984-03-02",
        "managingOrganization": {"reference": f"Organization/org-{pid}"},
    }


def _phq9(pid: str, rid: str, item9: int) -> dict[str, Any]:
    values = [2, 2, 1, 1, 1, 1, 1, 1, item9]
    return {
        "resourceType": "QuestionnaireResponse",
        "id": rid,
        "questionnaire": PHQ9.url,
        "status": "completed",
        "subject": {"reference": f"Patient/{pid}"},
        "authored": "2026-03-01T10:00:00Z",
        "item": [
            {"linkId": link_id, "answer": [{"valueInteger": v}]}
            for link_id, v in zip(PHQ9.items, values, strict=True)
        ],
    }


def _load_file(tmp_path: Path) -> Path:
    lines = [_patient("cu-a"), _patient("cu-b"), _phq9("cu-a", "qr-cu-a", 2)]
    path = tmp_path / "bulk.ndjson"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def _state(db: str) -> dict[str, Any]:
    store = Store(Settings.from_env(database_url=db))
    try:
        with store.reading() as session:
            members = session.conn.execute(select(mpi_member.c.person_id)).scalars().all()
            facts = session.conn.execute(select(func.count()).select_from(care_fact)).scalar()
            score = session.current("Observation", "mhs-qr-cu-a")
            task = session.current("Task", "mht-qr-cu-a")
        return {
            "members": len(members),
            "persons": len(set(members)),
            "facts": facts,
            "score": (score or {}).get("valueInteger"),
            "safety task": task is not None,
        }
    finally:
        store.close()


def test_load_catches_up_unless_told_not_to(db: str, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["load", str(_load_file(tmp_path)), "--db", db, "--errors", str(tmp_path / "e")]
    later = runner.invoke(app, [*args, "--workers", "0", "--no-catch-up"])
    assert later.exit_code == 0, later.output
    assert "takamul catch-up" in later.output  # tells the operator what is left to do
    assert _state(db) == {
        "members": 0,
        "persons": 0,
        "facts": 0,
        "score": None,
        "safety task": False,
    }

    caught = runner.invoke(app, ["catch-up", "--db", db])
    assert caught.exit_code == 0, caught.output
    assert "caught up: registry, 2 Patient records" in caught.output
    assert "caught up: mental health, 1 questionnaire responses" in caught.output
    # what the passes wrote is vacuumed and analysed (only when they wrote something)
    assert "caught up: statistics" in caught.output
    state = _state(db)
    assert state["members"] == 2 and state["persons"] == 1  # one woman, one golden record
    assert state["facts"] > 0
    assert state["score"] == 12 and state["safety task"]

    again = runner.invoke(app, ["catch-up", "--db", db])
    assert again.exit_code == 0, again.output
    assert "caught up: mental health, 0 questionnaire responses" in again.output
    assert "caught up: care facts, 0 resource versions" in again.output
    assert "statistics" not in again.output
    assert _state(db) == state


def test_load_catches_up_by_default(db: str, tmp_path: Path) -> None:
    args = ["load", str(_load_file(tmp_path)), "--db", db, "--errors", str(tmp_path / "e")]
    done = CliRunner().invoke(app, [*args, "--workers", "0"])
    assert done.exit_code == 0, done.output
    assert "loaded 3" in done.output and "caught up: care facts" in done.output
    state = _state(db)
    assert (state["members"], state["persons"], state["score"]) == (2, 1, 12)
    assert state["safety task"]


def test_serve_catches_up_first_and_shows_it(tmp_path: Path) -> None:
    """A server started on a store that a load left behind catches up before it serves, with
    the backlog and each phase on its console, not silently inside the first worker's start."""
    db = f"sqlite:///{tmp_path / 'serve.sqlite'}"
    args = ["load", str(_load_file(tmp_path)), "--db", db, "--errors", str(tmp_path / "e")]
    assert CliRunner().invoke(app, [*args, "--workers", "0", "--no-catch-up"]).exit_code == 0
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "takamul.cli",
                "serve",
                "--db",
                db,
                "--port",
                str(port),
                "--log-level",
                "info",
            ],
            env={**os.environ, "TAKAMUL_AUTH": "false"},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/fhir/metadata").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise AssertionError(f"the server did not start: {log.read_text()}")
        person = httpx.get(f"http://127.0.0.1:{port}/fhir/Person?link=Patient/cu-a").json()
    finally:
        server.terminate()
        server.wait(30)
    printed = log.read_text()
    assert "catching up before serving: 2 Patients without a person" in printed
    assert "caught up: registry, 2 Patient records" in printed
    assert printed.index("caught up: registry") < printed.index("FHIR R4 server on")
    # --log-level info: the worker says when it is ready (the benchmark waits for every one)
    assert "Application startup complete" in printed
    assert person["total"] == 1
    assert _state(db)["score"] == 12


def test_a_first_large_pass_builds_its_indexes_at_the_end(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first care-facts pass over many versions drops the indexes it does not read, scans the
    current resources in storage order and builds the indexes at its end: the same facts as a
    pass version by version with them, never doubled by a scan over facts already there, the
    indexes there afterwards, and a pass stopped before it built them has them built again by
    the next start."""
    from takamul.programmes.definitions import load_catalog
    from takamul.programmes.facts import DEFERRED_INDEXES, CareFacts

    args = ["load", str(_load_file(tmp_path)), "--db", db, "--errors", str(tmp_path / "e")]
    assert CliRunner().invoke(app, [*args, "--workers", "0", "--no-catch-up"]).exit_code == 0
    store = Store(Settings.from_env(database_url=db))

    def facts_and_indexes() -> tuple[list[tuple[Any, ...]], set[str]]:
        with store.reading() as session:
            rows = sorted((tuple(r) for r in session.conn.execute(select(care_fact))), key=repr)
        names = {i["name"] for i in inspect(store.writer).get_indexes("care_fact")}
        return rows, names

    try:
        facts = CareFacts(store, load_catalog())
        monkeypatch.setattr(CareFacts, "DEFER_INDEXES_FROM", 1)
        dropped: list[tuple[str, set[str]]] = []

        def watch(name: str) -> None:
            real = getattr(CareFacts, name)

            def watched(self: CareFacts, *a: Any) -> int:
                dropped.append((name, DEFERRED_INDEXES - facts_and_indexes()[1]))
                return int(real(self, *a))

            monkeypatch.setattr(CareFacts, name, watched)

        watch("_pass")
        watch("_scan")
        assert facts.catch_up() > 0
        assert dropped == [("_scan", set(DEFERRED_INDEXES))]  # the scan ran without them
        scanned, names = facts_and_indexes()
        assert names >= DEFERRED_INDEXES and scanned
        assert facts.backlog() == 0 and facts.catch_up() == 0  # its mark moved to the end

        facts.forget()
        monkeypatch.setattr(CareFacts, "DEFER_INDEXES_FROM", 10**9)
        facts.catch_up()
        assert dropped[-1] == ("_pass", set())  # this time version by version, with them
        assert facts_and_indexes()[0] == scanned

        # live writes while a first pass scans, one resource a batch: the Patient scanned
        # already and the one not yet are changed, their hook storing facts; each source's
        # facts are then stored once, the current version's
        facts.attach()
        facts.forget()
        monkeypatch.setattr(CareFacts, "DEFER_INDEXES_FROM", 1)
        monkeypatch.setattr(CareFacts, "BATCH", 1)
        written: list[int] = []

        def write_while_scanning(read: int) -> None:
            if not written:
                for pid in ("cu-a", "cu-b"):
                    changed = {**_patient(pid), "gender": "male"}
                    store.write(lambda s, pid=pid, body=changed: s.update("Patient", pid, body))
            written.append(read)

        facts.catch_up(write_while_scanning)
        assert dropped[-1][0] == "_scan" and written
        live, _ = facts_and_indexes()
        assert sorted(r for r in live if r[2] == "patient") == [
            ("cu-a", "Patient/cu-a", "patient", "male", 5174, None, None, "org-cu-a"),
            ("cu-b", "Patient/cu-b", "patient", "male", 5174, None, None, "org-cu-b"),
        ]
        facts.forget()
        monkeypatch.setattr(CareFacts, "DEFER_INDEXES_FROM", 10**9)
        facts.catch_up()
        assert facts_and_indexes()[0] == live  # what a pass version by version finds

        with store.writer.connect() as conn:  # a pass stopped before it built them
            CareFacts._defer_indexes(conn)
        assert not DEFERRED_INDEXES & facts_and_indexes()[1]
        CareFacts(store, load_catalog())
        assert facts_and_indexes()[1] >= DEFERRED_INDEXES
    finally:
        store.close()


def test_serve_refuses_an_unknown_log_level(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'serve.sqlite'}"
    refused = CliRunner().invoke(app, ["serve", "--db", db, "--log-level", "loud"])
    assert refused.exit_code != 0
    assert "'loud': give one of critical, error, warning, info, debug" in refused.output


def test_the_write_hook_keeps_one_set_of_facts_per_resource(either_store: Store) -> None:
    """A first version only adds its facts (there are none to replace); a later version and a
    deletion replace them, also when one transaction writes the resource twice."""
    from takamul.programmes.definitions import load_catalog
    from takamul.programmes.facts import CareFacts

    facts = CareFacts(either_store, load_catalog())
    facts.attach()
    patient = {"resourceType": "Patient", "id": "facts-1", "gender": "male"}

    def stored() -> list[tuple[Any, ...]]:
        with either_store.reading() as session:
            query = select(care_fact.c.kind, care_fact.c.code).where(
                care_fact.c.source == "Patient/facts-1"
            )
            return sorted(tuple(r) for r in session.conn.execute(query))

    either_store.write(lambda s: s.update("Patient", "facts-1", patient))  # version 1
    assert stored() == [("patient", "male")]
    either_store.write(lambda s: s.update("Patient", "facts-1", {**patient, "gender": "female"}))
    assert stored() == [("patient", "female")]

    def twice(session: Session) -> None:
        session.update("Patient", "facts-1", {**patient, "gender": "other"})
        session.update("Patient", "facts-1", {**patient, "gender": "unknown"})

    either_store.write(twice)
    assert stored() == [("patient", "unknown")]
    either_store.write(lambda s: s.delete("Patient", "facts-1"))
    assert stored() == []
