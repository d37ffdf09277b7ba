"""``takamul db check``: deliberately broken search index rows (one deleted, one altered, stray
ones added) are each found on both stores, ``--repair`` fixes them, and the check is then clean."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update
from typer.testing import CliRunner

from takamul.cli import app
from takamul.settings import Settings
from takamul.store import Store
from takamul.store.dbcheck import check_index
from takamul.store.schema import resource, sp_date, sp_string, sp_token
from tests.server import postgres_database

SYSTOLIC = {"system": "http://loinc.org", "code": "8480-6"}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'check.sqlite'}"
    else:
        with postgres_database() as url:
            yield url


def _observation(oid: str, pid: str, day: str, value: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [SYSTOLIC]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": day,
        "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
    }


def _record(store: Store) -> dict[str, int]:
    """A small record; the rid of each resource."""

    def work(session: Any) -> None:
        for pid, family in (("p1", "Al-Harbi"), ("p2", "Rahimi")):
            body = {"resourceType": "Patient", "id": pid, "name": [{"family": family}]}
            session.update("Patient", pid, body)
        session.update("Observation", "o1", _observation("o1", "p1", "2024-01-05", 150))
        session.update("Observation", "o2", _observation("o2", "p1", "2024-03-09", 138))
        session.update("Observation", "o3", _observation("o3", "p2", "2024-02-11", 128))
        session.delete("Observation", "o3")

    store.write(work)
    with store.reading() as session:
        rows = session.conn.execute(select(resource.c.res_id, resource.c.rid)).all()
    return {row.res_id: row.rid for row in rows}


def _break(store: Store, rids: dict[str, int]) -> None:
    def work(session: Any) -> None:
        conn = session.conn
        # one row deleted: o1 is no longer found by its code
        conn.execute(
            delete(sp_token).where(sp_token.c.rid == rids["o1"], sp_token.c.param == "code")
        )
        # one row altered: o2's date moved a day later
        conn.execute(
            update(sp_date)
            .where(sp_date.c.rid == rids["o2"], sp_date.c.param == "date")
            .values(low=sp_date.c.low + 86400, high=sp_date.c.high + 86400)
        )
        # stray rows: a name p1 does not have, a row of the deleted o3, a row of no resource
        stray = {"res_type": "Patient", "param": "name", "normalized": "zz", "exact": "Zz"}
        conn.execute(insert(sp_string).values(rid=rids["p1"], **stray))
        conn.execute(
            insert(sp_token).values(
                rid=rids["o3"], res_type="Observation", param="status", code="final"
            )
        )
        conn.execute(insert(sp_string).values(rid=987654, **stray))

    store.write(work)


def _codes(store: Store) -> list[str]:
    with store.reading() as session:
        page = session.search(session.parse_search("Observation", [("code", "8480-6")]))
    return sorted(r.id for r in page.matches)


def test_check_finds_each_broken_row_and_repair_fixes_them(db_url: str) -> None:
    store = Store(Settings.from_env(database_url=db_url, auth=False))
    try:
        rids = _record(store)
        assert check_index(store).clean
        _break(store, rids)
        assert _codes(store) == ["o2"]  # the damage shows in searches

        report = check_index(store, batch=2)  # small batches: rid ranges meet correctly
        found = {(d.resource, d.kind): d for d in report.differences}
        assert set(found) == {
            ("Observation/o1", "token"),
            ("Observation/o2", "date"),
            ("Patient/p1", "string"),
            ("Observation/o3", "token"),
            ("(no resource, rid 987654)", "string"),
        }
        o1 = found[("Observation/o1", "token")]
        assert [r[1] for r in o1.missing] == ["code"] and not o1.extra
        assert found[("Observation/o2", "date")].wrong_params() == ["date"]
        assert [r[2] for r in found[("Patient/p1", "string")].extra] == ["zz"]
        assert report.damaged == 5 and report.missing == 2 and report.extra == 4
        assert "wrong date" in found[("Observation/o2", "date")].describe()

        # the same in two worker processes, batch by batch
        parallel = check_index(store, batch=2, workers=2)
        assert {(d.resource, d.kind) for d in parallel.differences} == set(found)
        assert (parallel.resources, parallel.rows) == (report.resources, report.rows)

        repaired = check_index(store, repair=True)
        assert repaired.damaged == repaired.repaired == 5
        assert check_index(store).clean
        assert _codes(store) == ["o1", "o2"]
    finally:
        store.close()


def test_the_db_check_command(db_url: str) -> None:
    store = Store(Settings.from_env(database_url=db_url, auth=False))
    try:
        _break(store, _record(store))
    finally:
        store.close()
    runner = CliRunner()
    found = runner.invoke(app, ["db", "check", "--db", db_url])
    assert found.exit_code == 1, found.output
    assert "Observation/o1 sp_token: 1 missing (code)" in found.output
    assert "Observation/o2 sp_date: wrong date" in found.output
    assert "(no resource, rid 987654) sp_string: 1 extra (name)" in found.output
    assert "5 damaged (2 rows missing, 4 extra)" in found.output
    repaired = runner.invoke(app, ["db", "check", "--db", db_url, "--repair", "--workers", "2"])
    assert repaired.exit_code == 0 and "repaired 5" in repaired.output
    clean = runner.invoke(app, ["db", "check", "--db", db_url])
    assert clean.exit_code == 0 and "the index agrees with the resources" in clean.output
