"""Planner statistics that a restore or an interrupted load left missing or stale (issue 17):
the store finds them, the catch-up and the server's start refresh them first, and
``takamul db analyze`` refreshes them on demand. PostgreSQL, where the planner goes by them;
SQLite has nothing stale to report, and analyses after a write only the tables it grew."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text
from typer.testing import CliRunner

from takamul.cli import app
from takamul.settings import Settings
from takamul.store import Store
from tests.server import postgres_database

# tables that autovacuum must leave alone during the test: it would analyse them itself
WATCHED = ("resource", "sp_token")


def _patients(count: int) -> list[dict[str, Any]]:
    return [
        {
            "resourceType": "Patient",
            "id": f"st-{i}",
            "identifier": [{"system": "urn:test:mrn", "value": str(i)}],
        }
        for i in range(count)
    ]


def _stale_after_flush(url: str, table: str) -> list[str]:
    """The stale tables as a new process sees them, once the writers' counts reached the
    statistics (a backend reports them when it ends, a moment after its connection closes)."""
    deadline = time.monotonic() + 10
    while True:
        store = Store(Settings.from_env(database_url=url, auth=False))
        try:
            stale = store.stale_statistics()
        finally:
            store.close()
        if table in stale or time.monotonic() > deadline:
            return stale
        time.sleep(0.2)


def _write_unwatched(url: str, patients: int, analyze_first: bool) -> None:
    """Write ``patients`` Patients with autovacuum off for the watched tables (it would analyse
    them itself meanwhile); ``analyze_first``: with fresh statistics before the writes."""
    store = Store(Settings.from_env(database_url=url, auth=False))
    try:
        with store.writer.begin() as conn:
            for table in WATCHED:
                conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = off)"))
        if analyze_first:
            store.analyze(vacuum=True)
            assert "resource" not in store.stale_statistics()
        store.write(lambda s: [s.update("Patient", p["id"], p) for p in _patients(patients)])
    finally:
        store.close()  # its backends end and report what they wrote


def test_postgresql_statistics_found_stale_and_refreshed() -> None:
    with postgres_database() as url:
        # more than 1,000 rows changed since the last ANALYZE (and more than half the table)
        _write_unwatched(url, 1200, analyze_first=True)
        stale = _stale_after_flush(url, "resource")
        assert {"resource", "sp_token"} <= set(stale)

        refreshed = CliRunner().invoke(app, ["db", "analyze", "--stale", "--db", url])
        assert refreshed.exit_code == 0, refreshed.output
        assert "statistics refreshed (" in refreshed.output and "resource" in refreshed.output
        store = Store(Settings.from_env(database_url=url, auth=False))
        try:
            assert store.stale_statistics() == []
            assert store.analyze_stale() == []  # nothing left: nothing sampled again
            with store.reader.connect() as conn:
                analysed = conn.execute(
                    text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'resource'")
                ).scalar()
            assert analysed is not None  # by the command, not by autovacuum (off for it)
        finally:
            store.close()


def test_catch_up_refreshes_stale_statistics_first() -> None:
    with postgres_database() as url:
        _write_unwatched(url, 300, analyze_first=False)  # never analysed
        assert "resource" in _stale_after_flush(url, "resource")
        caught = CliRunner().invoke(app, ["catch-up", "--db", url])
        assert caught.exit_code == 0, caught.output
        lines = caught.output.splitlines()
        first = next(i for i, line in enumerate(lines) if line.startswith("caught up:"))
        assert lines[first].startswith("caught up: stale statistics, "), caught.output
        store = Store(Settings.from_env(database_url=url, auth=False))
        try:
            assert "resource" not in store.stale_statistics()
        finally:
            store.close()


def test_sqlite_reports_nothing_stale(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'stats.sqlite'}"
    store = Store(Settings.from_env(database_url=url, auth=False))
    try:
        store.write(lambda s: [s.update("Patient", p["id"], p) for p in _patients(50)])
        assert store.stale_statistics() == []
        assert store.analyze_stale() == []
    finally:
        store.close()
    analysed = CliRunner().invoke(app, ["db", "analyze", "--db", url])
    assert analysed.exit_code == 0, analysed.output
    assert "statistics refreshed" in analysed.output


def _counted(store: Store, table: str) -> int | None:
    """The rows of ``table`` that SQLite's last ANALYZE counted (None: no statistics)."""
    with store.reader.connect() as conn:
        if not conn.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'"
        ).first():
            return None
        value = conn.exec_driver_sql(
            "SELECT max(CAST(stat AS INTEGER)) FROM sqlite_stat1 WHERE tbl = ?", (table,)
        ).scalar()
        return None if value is None else int(value)


def _write_ndjson(path: Path, patients: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in patients))
    return path


def test_sqlite_analyses_only_the_tables_a_write_grew(tmp_path: Path) -> None:
    """SQLite's ANALYZE reads every index whole: after a load or a catch-up only the tables
    without statistics or grown by half since are analysed, not the whole store."""
    store = Store(Settings.from_env(database_url=f"sqlite:///{tmp_path / 's.sqlite'}", auth=False))
    try:
        store.write(lambda s: [s.update("Patient", p["id"], p) for p in _patients(1500)])
        first = store.refresh_statistics()
        assert "resource" in first and "sp_token" in first
        assert _counted(store, "resource") == 1500
        assert store.refresh_statistics() == []  # nothing grew: nothing read again

        more = [{**p, "id": f"more-{p['id']}"} for p in _patients(1100)]
        store.write(lambda s: [s.update("Patient", p["id"], p) for p in more])
        assert "resource" not in store.sqlite_grown_tables()  # 2,600 <= 1,000 + 1.5 x 1,500
        assert _counted(store, "resource") == 1500

        most = [{**p, "id": f"most-{p['id']}"} for p in _patients(1500)]
        store.write(lambda s: [s.update("Patient", p["id"], p) for p in most])
        assert "resource" in store.refresh_statistics()  # 4,100 > 1,000 + 1.5 x 1,500
        assert _counted(store, "resource") == 4100
    finally:
        store.close()


def _quiet(tmp_path: Path) -> list[str]:
    """A load alone (no catch-up after it), its rejected lines kept out of the repository."""
    return ["--no-catch-up", "--workers", "0", "--errors", str(tmp_path / "errors.ndjson")]


def test_sqlite_small_load_into_a_large_store_analyses_nothing_whole(tmp_path: Path) -> None:
    """A load ends by refreshing the statistics of what it grew (``takamul load``): the first
    load of a store analyses its tables, a small load after it none of the large ones."""
    url = f"sqlite:///{tmp_path / 'load.sqlite'}"
    first = _write_ndjson(tmp_path / "first.ndjson", _patients(1500))
    loaded = CliRunner().invoke(app, ["load", str(first), "--db", url, *_quiet(tmp_path)])
    assert loaded.exit_code == 0, loaded.output
    store = Store(Settings.from_env(database_url=url, auth=False))
    try:
        assert _counted(store, "resource") == 1500
        assert _counted(store, "sp_token") is not None
    finally:
        store.close()

    small = [{**p, "id": f"small-{p['id']}"} for p in _patients(40)]
    small_file = _write_ndjson(tmp_path / "small.ndjson", small)
    loaded = CliRunner().invoke(app, ["load", str(small_file), "--db", url, *_quiet(tmp_path)])
    assert loaded.exit_code == 0, loaded.output
    store = Store(Settings.from_env(database_url=url, auth=False))
    try:
        assert _counted(store, "resource") == 1500  # not read again for 40 rows
        with store.reader.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM resource").scalar() == 1540
    finally:
        store.close()


def test_a_server_start_after_a_few_writes_leaves_the_large_tables_statistics(
    tmp_path: Path,
) -> None:
    """The catch-up a server runs at its start (``takamul serve``) ends by refreshing the
    statistics of what it wrote: after a few writes into a large store, not the whole store
    again (at 350,000 persons that was a start of over ten minutes for 15 versions)."""
    from takamul.catchup import backlog, catch_up
    from takamul.cli import _catch_up_before_serving

    settings = Settings.from_env(database_url=f"sqlite:///{tmp_path / 'start.sqlite'}", auth=False)
    store = Store(settings)
    try:
        store.write(lambda s: [s.update("Patient", p["id"], p) for p in _patients(1500)])
        catch_up(store)  # as after a load: every table analysed once
        # the Patients and the registry's golden Persons
        assert _counted(store, "resource") == 3000
        counted = {t: _counted(store, t) for t in ("resource", "sp_token", "sp_string")}
        few = [{**p, "id": f"few-{p['id']}"} for p in _patients(15)]
        store.write(lambda s: [s.update("Patient", p["id"], p) for p in few])
        assert backlog(store)  # the start has something to catch up on
    finally:
        store.close()

    _catch_up_before_serving(settings)

    store = Store(settings)
    try:
        assert not backlog(store)  # the start caught up ...
        # ... and read none of the large tables again for 15 Patients
        assert {t: _counted(store, t) for t in counted} == counted
    finally:
        store.close()
