"""Make the fixture of a store written by an earlier release, for tests/test_migrations.py.

    .venv/bin/python scripts/previous_release_store.py [COMMIT]   (default 6c83c72)

The release's own code (taken from git with ``git archive``) starts its server on a new SQLite
store, and a few requests write a small record through it: Patients linked into persons by the
client registry, Observations, an update, a delete, a transaction, searches; then a few events
are appended to its audit log. The fixture is what that release left behind:

- ``<commit>-sqlite.sql``: the DDL of that store's tables, indexes and triggers, verbatim;
- ``<commit>-postgresql.sql``: what that release's ``create_all`` and audit log emit for the
  same tables on PostgreSQL (captured from its code, not written by hand);
- ``<commit>-rows.json``: every row of every table, typed (bytes in base64).

The test loads them into an empty store of each kind, so it upgrades a store exactly as that
release made it, without needing the git history at test time. This file runs twice: here, and
as ``--write STORE OUT`` under the old release's code (PYTHONPATH at its src).
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import os
import pkgutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "migrations"
FHIR = {"Content-Type": "application/fhir+json"}
NATIONAL_ID = "https://takamul.health/fhir/sid/national-id"


def main(commit: str = "6c83c72") -> None:
    archive = subprocess.run(
        ["git", "archive", commit, "src"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tempfile.TemporaryDirectory(prefix="takamul-release-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        work = Path(tmp) / "out"
        work.mkdir()
        env = {**os.environ, "PYTHONPATH": str(Path(tmp) / "src"), "TAKAMUL_AUTH": "false"}
        env["TAKAMUL_EXPORT_DIR"] = str(Path(tmp) / "export")
        store = Path(tmp) / "store.sqlite"
        command = [sys.executable, str(Path(__file__).resolve()), "--write", str(store), str(work)]
        subprocess.run(command, cwd=tmp, env=env, check=True)
        OUT.mkdir(parents=True, exist_ok=True)
        for name in ("sqlite.sql", "postgresql.sql", "rows.json"):
            target = OUT / f"{commit}-{name}"
            target.write_bytes((work / name).read_bytes())
            print(f"wrote {target.relative_to(ROOT)}")
    tables = json.loads((OUT / f"{commit}-rows.json").read_text())
    print({name: len(t["rows"]) for name, t in tables.items() if t["rows"]})


# -- under the old release's code -----------------------------------------------------------


def _patient(pid: str, family: str, given: str, birth: str, nid: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"family": family, "given": [given]}],
        "gender": "female",
        "birthDate": birth,
        "identifier": [{"system": NATIONAL_ID, "value": nid}],
    }


def _systolic(oid: str, pid: str, when: str, value: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": "mm[Hg]",
            "system": "http://unitsofmeasure.org",
            "code": "mm[Hg]",
        },
    }


def _visit_bundle() -> dict[str, Any]:
    org = "urn:uuid:3f8e5a52-3c1e-4d7a-9b0e-5c0f6d1e2a01"
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p2"},
        "serviceProvider": {"reference": org},
        "period": {"start": "2024-02-11T09:00:00+03:00", "end": "2024-02-11T09:20:00+03:00"},
    }
    organization = {
        "resourceType": "Organization",
        "name": "Health centre 7",
        "identifier": [{"system": "https://takamul.health/fhir/sid/facility", "value": "HC7"}],
    }
    post_organization = {"method": "POST", "url": "Organization"}
    entries = [
        {"fullUrl": org, "resource": organization, "request": post_organization},
        {"resource": encounter, "request": {"method": "POST", "url": "Encounter"}},
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _write_record(settings: Any) -> None:
    from fastapi.testclient import TestClient

    from takamul.api import create_app

    def ok(response: Any) -> None:
        assert response.status_code < 300, response.text

    with TestClient(create_app(settings)) as client:
        people = [
            ("p1", "Al-Harbi", "Noura", "1980-02-03", "1000000001"),
            ("p2", "Rahimi", "Zahra", "1975-11-30", "1000000002"),
            # the same person registered again elsewhere: the registry links both
            ("p3", "Al-Harbi", "Noura", "1980-02-03", "1000000001"),
        ]
        for person in people:
            ok(client.put(f"/fhir/Patient/{person[0]}", json=_patient(*person), headers=FHIR))
        readings = [("p1", "2024-01-05", 150), ("p1", "2024-03-09", 138), ("p2", "2024-02-11", 128)]
        for i, (pid, day, value) in enumerate(readings, start=1):
            body = _systolic(f"o{i}", pid, f"{day}T09:30:00+03:00", value)
            ok(client.put(f"/fhir/Observation/o{i}", json=body, headers=FHIR))
        changed = _systolic("o2", "p1", "2024-03-09T09:30:00+03:00", 135)
        ok(client.put("/fhir/Observation/o2", json=changed, headers=FHIR))  # a second version
        gone = _systolic("gone", "p2", "2024-01-01", 120)
        ok(client.put("/fhir/Observation/gone", json=gone, headers=FHIR))
        ok(client.delete("/fhir/Observation/gone"))
        ok(client.post("/fhir", json=_visit_bundle(), headers=FHIR))
        ok(client.get("/fhir/Observation", params={"subject": "Patient/p1", "code": "8480-6"}))
        ok(client.get("/fhir/Patient", params={"name": "noura"}))


def _write_audit(settings: Any) -> None:
    """Events as that release appended them: a client, a user, a broken glass, a refusal."""
    from takamul.security.audit import AuditLog, AuditRecord, create_audit_tables
    from takamul.store import Store

    store = Store(settings)
    create_audit_tables(store.writer)
    log = AuditLog.for_store(store)
    records = [
        AuditRecord("create", 201, client_id="his-7", resource_type="Patient",
                    resource_id="p1", patient_ids=("p1",), facility="Organization/hc7"),
        AuditRecord("search", 200, client_id="his-7", user="nurse.huda", roles=("nurse",),
                    resource_type="Observation", query="subject=Patient/p1&code=8480-6",
                    patient_ids=("p1",)),
        AuditRecord("read", 200, user="dr.saleh", roles=("physician",), resource_type="Patient",
                    resource_id="p2", patient_ids=("p2",),
                    break_glass_reason="unconscious on arrival, no consent on file"),
        AuditRecord("delete", 200, client_id="his-7", resource_type="Observation",
                    resource_id="gone", patient_ids=("p2",)),
        AuditRecord("read", 403, client_id="lab-2", resource_type="Patient", resource_id="p3",
                    outcome_text="outside the facility"),
    ]  # fmt: skip
    for record in records:
        log.record(record)
    log.close()
    store.close()


def _release_tables() -> list[Any]:
    from sqlalchemy import MetaData, Table

    import takamul

    found: dict[int, Any] = {}
    for info in pkgutil.walk_packages(takamul.__path__, "takamul."):
        for value in vars(importlib.import_module(info.name)).values():
            if isinstance(value, MetaData):
                found[id(value)] = value
            elif isinstance(value, Table):
                found[id(value.metadata)] = value.metadata
    return list(found.values())


def _write_ddl(engine: Any, metadatas: list[Any], present: set[str], out: Path) -> None:
    from sqlalchemy import create_mock_engine
    from sqlalchemy.dialects import postgresql

    from takamul.security import audit

    with engine.connect() as conn:
        ddl = [
            row[0]
            for row in conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL "
                "ORDER BY type = 'trigger', rowid"
            )
        ]
    (out / "sqlite.sql").write_text("\n;;\n".join(ddl) + "\n", encoding="utf-8")

    dialect = postgresql.dialect()
    statements: list[str] = []

    def capture(sql: Any, *_args: Any, **_kwargs: Any) -> None:
        statements.append(" ".join(str(sql.compile(dialect=dialect)).split()))

    mock = create_mock_engine("postgresql://", capture)  # type: ignore[arg-type]
    for md in metadatas:
        tables = [t for t in md.tables.values() if t.name in present]
        md.create_all(mock, tables=tables, checkfirst=False)
    if "audit_log" in present:
        statements += list(audit._PG_FUNCTIONS)
        statements += [f"CREATE TRIGGER {name} {ddl}" for name, _, ddl in audit._PG_TRIGGERS]
    (out / "postgresql.sql").write_text("\n;;\n".join(statements) + "\n", encoding="utf-8")


def _plain(value: Any) -> Any:
    return {"b64": base64.b64encode(value).decode()} if isinstance(value, bytes) else value


def write(store_path: Path, out: Path) -> None:
    from sqlalchemy import create_engine, inspect, select

    from takamul.settings import Settings

    settings = Settings.from_env(database_url=f"sqlite:///{store_path}", auth=False)
    _write_record(settings)
    _write_audit(settings)
    metadatas = _release_tables()
    engine = create_engine(f"sqlite:///{store_path}")
    present = set(inspect(engine).get_table_names())
    _write_ddl(engine, metadatas, present, out)
    rows: dict[str, Any] = {}
    with engine.connect() as conn:
        for md in metadatas:
            for table in md.tables.values():
                if table.name in present:
                    rows[table.name] = {
                        "columns": [c.name for c in table.columns],
                        "rows": [[_plain(v) for v in r] for r in conn.execute(select(table))],
                    }
    text = json.dumps(rows, indent=0, sort_keys=True) + "\n"
    (out / "rows.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        write(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main(*sys.argv[1:2])
