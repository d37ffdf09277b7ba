"""``takamul mpi check``: the registry's index rows (``registry_index = "store"``) compared with
the stored Patients, on SQLite and PostgreSQL. Each kind of damage is made on purpose and must
be found, on the Patient it was made on, and repaired; a start under a model with other
blocking rules indexes every Patient again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from bench.registry_eval import Config, generate
from sqlalchemy import insert, text
from typer.testing import CliRunner

from takamul.cli import app
from takamul.mpi.check import check_registry_index
from takamul.mpi.schema import mpi_model
from takamul.mpi.service import ClientRegistry, default_model
from takamul.mpi.stored_index import StoredCandidateIndex
from takamul.settings import Settings
from takamul.store import Store
from tests.registry_world import registered
from tests.server import postgres_database

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="module")
def registrations(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("regcheck")
    generate(Config(country="mixed", persons=30, seed=41), out, workers=1)
    return [orjson.loads(line) for line in (out / "patients.ndjson").read_bytes().splitlines()]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'check.sqlite'}"
        return
    with postgres_database() as database:
        yield database


def _open(url: str, index: str = "store") -> Store:
    return Store(dataclasses.replace(Settings(database_url=url), registry_index=index))


def _sql(store: Store, statement: str, **params: Any) -> None:
    with store.writer.begin() as conn:
        conn.execute(text(statement), params)


def _with_names(store: Store, ids: list[str]) -> list[str]:
    with store.reading() as s:
        named = {pid for (pid,) in s.conn.execute(text("SELECT DISTINCT patient_id FROM mpi_name"))}
    return [pid for pid in ids if pid in named]


def test_the_check_finds_each_kind_of_damage_where_it_was_made_and_repairs_it(
    url: str, registrations: list[dict[str, Any]]
) -> None:
    registered(url, registrations)
    ids = sorted(body["id"] for body in registrations)
    store = _open(url)
    try:
        clean = check_registry_index(store, batch=7)
        assert clean.location == "store" and clean.clean
        assert clean.patients == len(registrations) and clean.rows > 3 * len(registrations)

        a, b, c, d = ids[:4]
        e = _with_names(store, ids[4:])[0]
        first_slot = "SELECT slot FROM mpi_block WHERE patient_id = :p ORDER BY slot LIMIT 1"
        _sql(store, f"DELETE FROM mpi_block WHERE patient_id = :p AND slot IN ({first_slot})", p=a)
        _sql(store, "UPDATE mpi_indexed SET national_id = 'X-1' WHERE patient_id = :p", p=b)
        _sql(store, "UPDATE mpi_indexed SET version = 99 WHERE patient_id = :p", p=c)
        for table in ("mpi_block", "mpi_name", "mpi_word", "mpi_indexed"):
            _sql(store, f"DELETE FROM {table} WHERE patient_id = :p", p=d)
        f = next(pid for pid in _with_names(store, ids[4:]) if pid != e)
        _sql(store, "DELETE FROM mpi_word WHERE patient_id = :p", p=f)
        _sql(
            store, "INSERT INTO mpi_name (patient_id, field, value) VALUES (:p, 'given', 'zz')", p=e
        )
        _sql(store, "INSERT INTO mpi_block (slot, patient_id) VALUES (7, 'ghost')")
        _sql(store, "INSERT INTO mpi_indexed (patient_id, version) VALUES ('0-before-all', 1)")

        found = check_registry_index(store, batch=7)
        # the same ranges checked in two worker processes find the same
        parallel = check_registry_index(store, batch=7, workers=2)
        assert (parallel.differences, parallel.patients, parallel.rows) == (
            found.differences,
            found.patients,
            found.rows,
        )
        problems = {x.patient_id: x.problems for x in found.differences}
        assert set(problems) == {a, b, c, d, e, f, "ghost", "0-before-all"}
        assert found.damaged == 8 and found.repaired == 0
        assert problems[a] == ("blocks: 1 missing, 0 extra",)
        assert problems[b][0].startswith("national ID 'X-1'")
        assert problems[c] == ("indexed at version 99, stored at 1",)
        assert problems[d] == ("not indexed",)
        assert problems[e] == ("names: 0 missing, 1 extra",)
        assert len(problems[f]) == 1 and problems[f][0].startswith("words: ")
        assert problems[f][0].endswith(" missing, 0 extra")
        assert problems["ghost"] == ("not a stored Patient: 1 rows",)

        repaired = check_registry_index(store, repair=True, batch=7)
        assert repaired.damaged == repaired.repaired == 8
        after = check_registry_index(store, batch=7)
        assert after.clean, [x.describe() for x in after.differences]
        assert after.rows == clean.rows
    finally:
        store.close()

    # the repaired rows serve a new process's links: a second registration of d joins d
    store = _open(url)
    try:
        registry = ClientRegistry(store)
        registry.attach()
        body = next(x for x in registrations if x["id"] == d)
        store.write(lambda s: s.update("Patient", "again", {**body, "id": "again"}))
        assert registry.person_of("again") == registry.person_of(d)
    finally:
        store.close()


def test_a_start_under_a_model_with_other_blocking_rules_indexes_every_patient_again(
    url: str, registrations: list[dict[str, Any]]
) -> None:
    registered(url, registrations)
    model = default_model()
    other = dataclasses.replace(model, blocking=model.blocking[1:])
    store = _open(url)
    try:
        index = StoredCandidateIndex(other, store)
        assert not index.agrees_with_model()  # the rows were written under the default rules
        with store.writer.begin() as conn:
            conn.execute(insert(mpi_model).values(created=time.time(), model=other.to_json()))
        # the check recomputes with the stored model: every Patient's blocks differ
        stale = check_registry_index(store)
        assert stale.damaged == len(registrations)
        registry = ClientRegistry(store)
        assert registry.model.blocking == other.blocking
        registry.attach()
        assert check_registry_index(store).clean
        assert isinstance(registry.index, StoredCandidateIndex)
        assert registry.index.agrees_with_model()
    finally:
        store.close()


def test_the_command_reports_repairs_and_exits_by_the_result(
    url: str, registrations: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    registered(url, registrations[:10])
    store = _open(url)
    try:
        victim = sorted(b["id"] for b in registrations[:10])[3]
        _sql(store, "UPDATE mpi_indexed SET version = 7 WHERE patient_id = :p", p=victim)
    finally:
        store.close()
    monkeypatch.setenv("TAKAMUL_REGISTRY_INDEX", "store")
    runner = CliRunner()
    found = runner.invoke(app, ["mpi", "check", "--db", url])
    assert found.exit_code == 1, found.output
    assert f"Patient/{victim}: indexed at version 7, stored at 1" in found.output
    assert "1 Patients' rows differ" in found.output
    fixed = runner.invoke(app, ["mpi", "check", "--db", url, "--repair"])
    assert fixed.exit_code == 0 and "repaired 1" in fixed.output, fixed.output
    again = runner.invoke(app, ["mpi", "check", "--db", url])
    assert again.exit_code == 0 and "agrees with the Patients" in again.output, again.output


def test_with_the_index_in_memory_there_is_nothing_stored_to_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'memory.sqlite'}"
    store = _open(url, "auto")  # auto on SQLite: memory
    try:
        report = check_registry_index(store)
        assert report.location == "memory" and report.clean and report.patients == 0
    finally:
        store.close()
    monkeypatch.delenv("TAKAMUL_REGISTRY_INDEX", raising=False)
    result = CliRunner().invoke(app, ["mpi", "check", "--db", url])
    assert result.exit_code == 0 and "no index rows to check" in result.output, result.output
