"""Backup and restore as docs/operations.md tells operators to do it: a PostgreSQL store through
``pg_dump -Fc`` and ``pg_restore`` into a new database, an SQLite store through
``takamul db backup`` while it is open; every resource reads back, the audit chain verifies,
the search index agrees, the schema revision came along and the copy takes new writes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from takamul.cli import app
from takamul.security.audit import AuditLog, AuditRecord, create_audit_tables
from takamul.settings import Settings
from takamul.store import Store
from takamul.store.migrations import head_revision
from takamul.store.schema import resource
from tests.server import postgres_database

PEOPLE = 40


def _settings(url: str) -> Settings:
    return Settings.from_env(database_url=url, auth=False)


def _write_record(url: str) -> dict[tuple[str, str], bytes | None]:
    """Patients with observations, an update and a deletion, and an audited event per
    patient; every resource's current content by (type, id)."""
    store = Store(_settings(url))
    try:

        def work(session: Any) -> None:
            for i in range(PEOPLE):
                pid = f"p{i}"
                patient = {"resourceType": "Patient", "id": pid, "name": [{"family": f"F{i}"}]}
                session.update("Patient", pid, patient)
                for j, day in enumerate(("2024-01-05", "2024-03-09")):
                    oid = f"o{i}-{j}"
                    session.update("Observation", oid, _observation(oid, pid, day, 120 + i))
            session.update("Observation", "o0-1", _observation("o0-1", "p0", "2024-03-09", 99))
            session.delete("Observation", "o1-1")

        store.write(work)
        create_audit_tables(store.writer)
        log = AuditLog.for_store(store)
        for i in range(PEOPLE):
            record = AuditRecord(
                "read", 200, client_id="his-1", resource_type="Patient", resource_id=f"p{i}",
                patient_ids=(f"p{i}",),
            )  # fmt: skip
            log.record(record)
        log.close()
        with store.reading() as session:
            rows = session.conn.execute(
                resource.select().with_only_columns(
                    resource.c.res_type, resource.c.res_id, resource.c.content
                )
            ).all()
        return {(r.res_type, r.res_id): r.content for r in rows}
    finally:
        store.close()


def _observation(oid: str, pid: str, day: str, value: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": day,
        "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
    }


def _assert_same_record(url: str, before: dict[tuple[str, str], bytes | None]) -> None:
    runner = CliRunner()
    verified = runner.invoke(app, ["audit", "verify", "--db", url])
    assert verified.exit_code == 0, verified.output
    checked = runner.invoke(app, ["db", "check", "--db", url])
    assert checked.exit_code == 0 and "agrees" in checked.output, checked.output
    status = runner.invoke(app, ["db", "status", "--db", url])
    assert status.exit_code == 0 and f"at revision {head_revision()}" in status.output

    store = Store(_settings(url))
    try:
        with store.reading() as session:
            for (res_type, res_id), content in before.items():
                if content is None:
                    with pytest.raises(Exception, match="deleted"):
                        session.read(res_type, res_id)
                else:
                    assert session.read(res_type, res_id).content == content
            page = session.search(
                session.parse_search("Observation", [("value-quantity", "lt100")])
            )
            assert [r.id for r in page.matches] == ["o0-1"]
            assert session.history("Observation", "o0-1", None, 10, 0)[1] == 2
        # the copy's sequences continue after the restored rows: new writes get new keys
        created = store.write(
            lambda s: s.create({"resourceType": "Patient", "name": [{"family": "N"}]})
        )
        assert created.created
        log = AuditLog.for_store(store)
        log.record(AuditRecord("read", 200, client_id="his-1", resource_type="Patient"))
        log.close()
        assert AuditLog.for_store(store).verify().checked == PEOPLE + 1
    finally:
        store.close()


@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="pg_dump is not installed")
def test_pg_dump_and_pg_restore_keep_the_record_and_its_audit_chain(tmp_path: Path) -> None:
    dump = tmp_path / "takamul.dump"
    with postgres_database() as source:
        before = _write_record(source)
        subprocess.run(["pg_dump", "-Fc", "-f", str(dump), source], check=True)
    with postgres_database() as target:
        restore = ["pg_restore", "--no-owner", "--exit-on-error", "-d", target, str(dump)]
        subprocess.run(restore, check=True)
        # the restore copied no planner statistics: the documented next step refreshes them
        analysed = CliRunner().invoke(app, ["db", "analyze", "--db", target])
        assert analysed.exit_code == 0 and "statistics refreshed" in analysed.output
        store = Store(_settings(target))
        try:
            assert store.stale_statistics() == []
        finally:
            store.close()
        _assert_same_record(target, before)
        # the restored log is still append-only: its triggers came along
        store = Store(_settings(target))
        try:
            refused = pytest.raises(DBAPIError, match="append-only")
            with refused, store.writer.begin() as conn:
                conn.execute(text("UPDATE audit_log SET recorded = 0"))
        finally:
            store.close()


def test_db_backup_copies_an_open_sqlite_store(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'live.sqlite'}"
    before = _write_record(source)
    copy = tmp_path / "backup" / "copy.sqlite"
    copy.parent.mkdir()
    store = Store(_settings(source))  # open, as a running server holds it
    try:
        result = CliRunner().invoke(app, ["db", "backup", str(copy), "--db", source])
        assert result.exit_code == 0, result.output
    finally:
        store.close()
    assert sorted(p.name for p in copy.parent.iterdir()) == ["copy.sqlite"]  # one file, no WAL
    _assert_same_record(f"sqlite:///{copy}", before)
    again = CliRunner().invoke(app, ["db", "backup", str(copy), "--db", source])
    assert again.exit_code == 2 and "exists" in again.output
