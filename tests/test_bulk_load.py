"""`takamul load`: NDJSON, Bundles and folders; bad lines reported, resumable, on both stores."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from takamul.bulk import load_paths
from takamul.settings import Settings
from takamul.store import Store
from takamul.store.schema import resource, resource_version
from tests.server import postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store(Settings(database_url=f"sqlite:///{tmp_path / 'load.sqlite'}"))
        yield s
        s.close()
    else:
        with postgres_database() as url:
            s = Store(Settings(database_url=url))
            yield s
            s.close()


def patients(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "resourceType": "Patient",
            "id": f"p{i}",
            "gender": "female",
            "name": [{"family": "رضایی", "given": [f"Maryam{i}"]}],
        }
        for i in range(start, start + n)
    ]


def write_ndjson(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(
        b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows)
    )
    return path


def counts(store: Store) -> tuple[int, int]:
    with store.reading() as s:
        current = s.conn.execute(select(func.count()).select_from(resource)).scalar_one()
        versions = s.conn.execute(select(func.count()).select_from(resource_version)).scalar_one()
    return int(current), int(versions)


def test_ndjson_with_bad_lines(store: Store, tmp_path: Path) -> None:
    rows: list[Any] = patients(5)
    rows.insert(2, b"{not json")
    rows.insert(4, {"resourceType": "Patient", "id": "bad", "birthDate": "31/12/1999"})
    rows.insert(5, {"resourceType": "Nonsense", "id": "n1"})
    src = write_ndjson(tmp_path / "Patient.ndjson", rows)
    errors = tmp_path / "errors.ndjson"
    summary = load_paths(store, [src], errors, batch_size=3, workers=0)
    assert (summary.loaded, summary.updated, summary.rejected) == (5, 0, 3)
    reported = [orjson.loads(line) for line in errors.read_bytes().splitlines()]
    assert [r["line"] for r in reported] == [3, 5, 6]
    assert "birthDate" in str(reported[1]["outcome"])
    assert reported[1]["id"] == "bad"
    with store.reading() as s:
        got = s.read("Patient", "p3").json()
    assert got["name"][0]["family"] == "رضایی" and got["meta"]["versionId"] == "1"
    assert counts(store) == (5, 5)


def test_resume_after_interruption_duplicates_nothing(store: Store, tmp_path: Path) -> None:
    src = write_ndjson(tmp_path / "Patient.ndjson", patients(50))
    errors = tmp_path / "errors.ndjson"
    calls = {"n": 0}

    def interrupt(_bytes: int, _resources: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_paths(store, [src], errors, batch_size=10, workers=0, progress=interrupt)
    assert counts(store) == (20, 20)
    summary = load_paths(store, [src], errors, batch_size=10, workers=0)
    assert summary.skipped == 20 and summary.loaded == 30
    assert counts(store) == (50, 50)  # every resource once, one version each
    again = load_paths(store, [src], errors, batch_size=10, workers=0)
    assert again.loaded + again.updated == 0


def test_folder_bundles_and_updates(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write_ndjson(folder / "a.ndjson", patients(3))
    collection = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": p} for p in patients(2, start=2)],
    }
    (folder / "b.json").write_bytes(orjson.dumps(collection))
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:2a1f7a0e-8f3b-4a55-9d8e-1c2b3a4d5e6f",
                "resource": {"resourceType": "Patient", "gender": "male"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "weight"},
                    "subject": {"reference": "urn:uuid:2a1f7a0e-8f3b-4a55-9d8e-1c2b3a4d5e6f"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    (folder / "c.json").write_bytes(orjson.dumps(transaction))
    summary = load_paths(store, [folder], tmp_path / "e.ndjson", workers=0)
    assert summary.files == 3
    # p2 comes twice: created by a.ndjson, updated by b.json.
    assert (summary.loaded, summary.updated, summary.rejected) == (6, 1, 0)
    with store.reading() as s:
        assert s.read("Patient", "p2").version == 2
        obs = s.search(s.parse_search("Observation", [("code:text", "weight")])).matches
    assert obs[0].json()["subject"]["reference"].startswith("Patient/")


def test_worker_processes_give_the_same_result(tmp_path: Path) -> None:
    store = Store(Settings(database_url=f"sqlite:///{tmp_path / 'w.sqlite'}"))
    src = write_ndjson(tmp_path / "Patient.ndjson", patients(300))
    summary = load_paths(store, [src], tmp_path / "e.ndjson", batch_size=200, workers=2)
    assert summary.loaded == 300
    with store.reading() as s:
        found = s.search(s.parse_search("Patient", [("given", "maryam29"), ("_count", "100")]))
    assert {m.id for m in found.matches} == {"p29"} | {f"p{i}" for i in range(290, 300)}
    store.close()


def test_cli_load_reports_summary(tmp_path: Path) -> None:
    src = write_ndjson(tmp_path / "Patient.ndjson", [*patients(4), b"{oops"])
    db = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    errors = tmp_path / "errors.ndjson"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "takamul.cli",
            "load",
            str(src),
            "--db",
            db,
            "--errors",
            str(errors),
            "--workers",
            "0",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "loaded 4" in run.stderr and "rejected 1" in run.stderr
    assert errors.exists()
    missing = subprocess.run(
        [sys.executable, "-m", "takamul.cli", "load", str(tmp_path / "nope"), "--db", db],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_a_folder_with_a_bulk_data_manifest_loads_what_it_lists(
    store: Store, tmp_path: Path
) -> None:
    """An export's folder holds its manifest, and often files kept beside the data: the files
    the manifest lists are loaded (a downloaded file by its URL's last segment), nothing else
    is read as resources, and a listed file that is missing stops the load before it writes."""
    folder = tmp_path / "export"
    (folder / "truth").mkdir(parents=True)
    write_ndjson(folder / "Patient.ndjson", patients(3))
    write_ndjson(folder / "Patient-old.ndjson", patients(2, start=10))  # not listed
    (folder / "truth" / "effects.json").write_text('{"income_rr": [1.0, 1.4]}')
    manifest: dict[str, Any] = {
        "transactionTime": "2026-12-01T00:00:00Z",
        "request": "https://fhir.example.org/fhir/$export",
        "requiresAccessToken": True,
        "output": [{"type": "Patient", "url": "https://fhir.example.org/x/Patient.ndjson"}],
        "error": [],
    }
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest))
    errors = tmp_path / "errors.ndjson"

    summary = load_paths(store, [folder], errors, workers=0)
    assert (summary.files, summary.loaded, summary.rejected) == (1, 3, 0)
    summary = load_paths(store, [folder / "manifest.json"], errors, workers=0)
    assert (summary.files, summary.loaded, summary.rejected) == (1, 0, 0)  # done already
    assert counts(store) == (3, 3)

    manifest["output"].append({"type": "Observation", "url": "Observation.ndjson"})
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest))
    write_ndjson(folder / "Patient.ndjson", patients(5, start=20))  # a new export
    with pytest.raises(FileNotFoundError, match=r"lists Observation\.ndjson"):
        load_paths(store, [folder], errors, workers=0)
    assert counts(store) == (3, 3)


def test_loading_synth_output_rejects_nothing(tmp_path: Path) -> None:
    """`takamul synth` writes a manifest and truth files beside its NDJSON: loading its folder
    loads every resource it wrote and rejects none."""
    out = tmp_path / "synth"
    synth = [sys.executable, "-m", "takamul.cli", "synth", "--country", "SA"]
    subprocess.run([*synth, "--patients", "30", "--out", str(out)], check=True)
    wrote = sum(o["count"] for o in orjson.loads((out / "manifest.json").read_bytes())["output"])
    db = f"sqlite:///{tmp_path / 'synth.sqlite'}"
    load = [sys.executable, "-m", "takamul.cli", "load", str(out), "--db", db]
    run = subprocess.run(
        [*load, "--errors", str(tmp_path / "errors.ndjson"), "--workers", "0", "--no-catch-up"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert f"loaded {wrote}, updated 0, rejected 0" in run.stderr.replace("\n", " ")


def test_a_load_leaves_its_rows_ready_for_index_only_scans(store: Store, tmp_path: Path) -> None:
    """PostgreSQL: every page the load wrote is all-visible (VACUUM ran), so a count or a
    search's candidates read the index alone; both stores: the planner's statistics are fresh."""
    load_paths(store, [write_ndjson(tmp_path / "p.ndjson", patients(300))], tmp_path / "e.ndjson")
    with store.writer.connect() as conn:
        if store.dialect == "postgresql":
            pages = conn.exec_driver_sql(
                "SELECT relname, relpages, relallvisible FROM pg_class "
                "WHERE relname IN ('resource', 'sp_string', 'sp_token')"
            ).all()
            assert len(pages) == 3
            for name, total, visible in pages:
                assert total > 0 and visible == total, name
            vacuumed = conn.exec_driver_sql(
                "SELECT last_vacuum FROM pg_stat_user_tables WHERE relname = 'resource'"
            ).scalar_one()
            assert vacuumed is not None
        else:
            analysed = conn.exec_driver_sql(
                "SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'sp_string'"
            ).scalar_one()
            assert analysed > 0
