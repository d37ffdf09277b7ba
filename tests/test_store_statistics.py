"""Planner statistics that a restore or an interrupted load left missing or stale (issue 17):
the store finds them, the catch-up and the server's start refresh them first, and
``takamul db analyze`` refreshes them on demand. PostgreSQL, where the planner goes by them;
SQLite has nothing stale to report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

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
