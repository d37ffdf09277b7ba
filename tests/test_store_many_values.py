"""Searches that name more values than a statement takes parameters (issue 17).

A facility-bound search that names no patient is restricted to the facility's patients, all of
them named in the SQL; PostgreSQL's protocol takes at most 65,535 parameters per statement, so a
facility with more patients than that could not search at all. Long lists now go as one
parameter (``schema.values_in``); the answers must be the same as with a short list, totals too,
on both stores.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sqlalchemy import Column, Index, MetaData, String, Table, delete, insert, select

from takamul.rest import interactions as ix
from takamul.store import Store
from takamul.store.schema import MANY_VALUES, values_in

MANY = 70_000  # more than PostgreSQL's 65,535 parameters


@pytest.fixture
def store(either_store: Store) -> Store:
    return either_store


def _observation(oid: str, patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
    }


def _search(store: Store, rtype: str, params: list[tuple[str, str]]) -> dict[str, Any]:
    ctx = ix.RequestContext(base="http://example.org/fhir")
    with store.reading(snapshot=False) as session:
        result = ix.search(session, rtype, [*params, ("_total", "accurate")], ctx)
    assert result.status == 200
    return dict(result.body)


def _ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", [])}


def test_a_search_naming_more_values_than_a_statement_takes(store: Store) -> None:
    def seed(s: Any) -> None:
        for pid in ("p1", "p2", "p3"):
            s.update("Patient", pid, {"resourceType": "Patient", "id": pid})
            s.update("Observation", f"o-{pid}", _observation(f"o-{pid}", pid))

    store.write(seed)
    unknown = [f"nobody-{i}" for i in range(MANY)]
    assert MANY > MANY_VALUES
    for named in (["p1", "p3"], [*unknown, "p1", "p3"]):  # short list, then the long one
        patients = ",".join(f"Patient/{p}" for p in named)
        observations = _search(store, "Observation", [("patient", patients)])
        assert _ids(observations) == {"o-p1", "o-p3"}
        assert observations["total"] == 2
        by_id = _search(store, "Patient", [("_id", ",".join(named))])
        assert _ids(by_id) == {"p1", "p3"} and by_id["total"] == 2
    # the long list leaves nothing out that it names: every one of 1,001+ known ids is found
    known = _search(store, "Patient", [("_id", ",".join(["p2", *unknown[: MANY_VALUES + 1]]))])
    assert _ids(known) == {"p2"}


def test_a_long_list_is_looked_up_through_the_index(store: Store) -> None:
    """The one parameter of a long list must leave the column's index usable: on SQLite it
    was written ``col IN (SELECT value FROM json_each(?)) = 1``, which no index serves, and
    every batch job's look-up read the whole table (the care facts' first pass grew
    quadratically with the record)."""
    table = Table(
        "many_values_probe",
        MetaData(),
        Column("source", String(64), nullable=False),
        Column("kind", String(16), nullable=False),
        Index("ix_many_values_probe_source", "source"),
    )
    table.metadata.create_all(store.writer)
    wanted = [f"Observation/o{n}" for n in range(MANY_VALUES + 1)]
    rows = [{"source": f"Observation/o{n}", "kind": "obs"} for n in range(0, 3 * MANY_VALUES, 3)]
    with store.writer.begin() as conn:
        conn.execute(insert(table), rows)
        found = conn.execute(
            select(table.c.source).where(values_in(table.c.source, wanted), table.c.kind == "obs")
        ).all()
        deleted = conn.execute(delete(table).where(values_in(table.c.source, wanted))).rowcount
        statement = select(table.c.source).where(values_in(table.c.source, wanted))
        compiled = str(statement.compile(conn))
        if store.dialect == "sqlite":
            plan = " ".join(
                str(r[-1])
                for r in conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + compiled, (orjson.dumps(wanted).decode(),)
                )
            )
            assert "USING INDEX ix_many_values_probe_source" in plan or "COVERING INDEX" in plan
    expected = sum(1 for n in range(0, 3 * MANY_VALUES, 3) if n <= MANY_VALUES)
    assert len(found) == deleted == expected
    assert not compiled.rstrip().endswith(("= 1", "= true"))  # a predicate, not a value
