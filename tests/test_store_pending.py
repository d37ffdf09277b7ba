"""A write transaction's version and index rows wait in the session (``PendingRows``) until a
statement that could read them, or the commit. These tests try the ways a waiting row could be
lost, doubled or left behind: a resource updated in the transaction that created it (its
waiting index rows replaced), a savepoint rolled back after writes, a statement naming no index
table in between, and a search inside the transaction. On both stores."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select, text

from takamul.store import Store
from takamul.store.repository import Session, _may_read_pending
from takamul.store.schema import INDEX_TABLES, resource_version


def _patient(pid: str, family: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family}]}


def _by_family(store: Store, family: str) -> list[str]:
    with store.reading() as session:
        return sorted(r.id for r in session.find("Patient", [("family", family)]))


def _index_rows(store: Store, pid: str) -> int:
    with store.reading() as session:
        rid = session._row("Patient", pid)
        assert rid is not None
        return sum(
            int(
                session.conn.execute(
                    select(func.count()).select_from(table).where(table.c.rid == rid.rid)
                ).scalar_one()
            )
            for table in INDEX_TABLES.values()
        )


def test_an_update_in_the_creating_transaction_replaces_the_waiting_index_rows(
    either_store: Store,
) -> None:
    def work(session: Session) -> None:
        session.update("Patient", "p1", _patient("p1", "Haddad"))
        session.update("Patient", "p1", _patient("p1", "Karimi"))

    either_store.write(work)
    assert _by_family(either_store, "Haddad") == []
    assert _by_family(either_store, "Karimi") == ["p1"]
    either_store.write(lambda s: s.update("Patient", "p2", _patient("p2", "Karimi")))
    # the same number of index rows as a Patient written once
    assert _index_rows(either_store, "p1") == _index_rows(either_store, "p2")


def test_rows_written_inside_a_rolled_back_savepoint_are_never_sent(either_store: Store) -> None:
    def work(session: Session) -> None:
        session.update("Patient", "kept", _patient("kept", "Nasser"))
        with pytest.raises(RuntimeError), session.conn.begin_nested():
            session.update("Patient", "gone", _patient("gone", "Nasser"))
            raise RuntimeError("entry failed")

    either_store.write(work)
    assert _by_family(either_store, "Nasser") == ["kept"]
    with either_store.reading() as session:
        versions = session.conn.execute(
            select(resource_version.c.res_id).where(resource_version.c.res_type == "Patient")
        ).all()
    assert [v.res_id for v in versions] == ["kept"]


def test_statements_naming_no_index_table_let_the_rows_wait_and_a_search_sees_them(
    either_store: Store,
) -> None:
    seen: list[list[str]] = []

    def work(session: Session) -> None:
        session.update("Patient", "p1", _patient("p1", "Rahimi"))
        session.conn.execute(text("SELECT 1"))  # names no index table: the rows may wait
        assert session.pending.index, "rows were sent before anything could read them"
        seen.append(sorted(r.id for r in session.find("Patient", [("family", "Rahimi")])))
        assert not session.pending.index  # a search names the index tables: sent first

    either_store.write(work)
    assert seen == [["p1"]]
    assert _by_family(either_store, "Rahimi") == ["p1"]


@pytest.mark.parametrize(
    ("sql", "reads"),
    [
        ("SELECT pg_advisory_xact_lock(1)", False),
        ("INSERT INTO mpi_change (patient_id) VALUES (%s)", False),
        ("SELECT rid FROM sp_token WHERE rid = 1", True),
        ("  select content from resource_version", True),
        ("DELETE FROM sp_reference WHERE rid = ?", True),
        ("SAVEPOINT sa_savepoint_1", True),
        ("ROLLBACK TO SAVEPOINT sa_savepoint_1", True),
        ("SELECT rid FROM resource_versions_archive", False),
    ],
)
def test_which_statements_send_the_waiting_rows(sql: str, reads: bool) -> None:
    assert _may_read_pending(sql) is reads


def test_a_few_rows_of_mixed_numbers_go_in_one_statement(either_store: Store) -> None:
    """A date to the second and a date to the day give their index rows' bounds as an int and a
    float: sent together in one statement, each column goes as an array of one type (that mix
    failed on PostgreSQL, caught by the official examples)."""

    def encounter(eid: str, start: str) -> dict[str, Any]:
        return {
            "resourceType": "Encounter",
            "id": eid,
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "period": {"start": start, "end": start},
        }

    def work(session: Session) -> None:
        session.update("Encounter", "second", encounter("second", "2017-03-03T14:06:00Z"))
        session.update("Encounter", "day", encounter("day", "2016-01-01"))

    either_store.write(work)
    with either_store.reading() as session:
        found = session.find("Encounter", [("date", "ge2017-01-01")])
        assert [r.id for r in found] == ["second"]
        found = session.find("Encounter", [("date", "2016-01-01")])
        assert [r.id for r in found] == ["day"]
