"""A Task write looks up the Task's earlier versions by key (issue 17).

Every Task write asks for the version before it (the referral state machine's hook). The lookup
named the Task by (res_type, res_id), which no index of ``resource_version`` covers: it read
every Task version of the record, for each Task written, and at 350,000 persons the safety
escalation's first tick ran for over half an hour holding SQLite's write lock. It now goes
through the Task's rid and the (rid, version) key (``Session.earlier_versions``); the plans
must say so on both stores, and the answers stay those of the earlier versions.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Connection, event

from takamul.store import Store


@pytest.fixture
def store(either_store: Store) -> Store:
    return either_store


def _plan(conn: Connection, statement: str, params: Any) -> str:
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)
        return "\n".join(str(r[-1]) for r in rows)
    # an empty table is scanned whatever the indexes: ask for the plan with scans priced out
    conn.exec_driver_sql("SET enable_seqscan = off")
    try:
        return "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {statement}", params))
    finally:
        conn.exec_driver_sql("RESET enable_seqscan")


@pytest.mark.parametrize("limit", [1, None], ids=["previous", "history"])
def test_a_task_versions_are_found_by_key(store: Store, limit: int | None) -> None:
    """The statement the store sends for a Task's earlier versions, planned by the database."""
    sent: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        statement, params = args[2], args[3]
        if "resource_version" in statement:
            sent.append((statement, params))

    with store.reading() as session:
        event.listen(session.conn, "before_cursor_execute", capture)
        try:
            assert session.earlier_versions("Task", "t1", 2, limit=limit) == []
        finally:
            event.remove(session.conn, "before_cursor_execute", capture)
        assert len(sent) == 1
        plan = _plan(session.conn, *sent[0])
    assert "ix_version_type_updated" not in plan, plan
    if store.dialect == "sqlite":
        assert "(rid=? AND version" in plan, plan
    else:
        assert "uq_version_rid_version" in plan, plan


def test_the_version_before_is_the_one_written(store: Store) -> None:
    from takamul.coordination.referrals import _previous

    task = {
        "resourceType": "Task",
        "id": "t-lookup",
        "status": "requested",
        "intent": "order",
        "description": "first",
    }
    store.write(lambda s: s.update("Task", "t-lookup", task))
    store.write(lambda s: s.update("Task", "t-lookup", {**task, "description": "second"}))
    with store.reading() as s:
        before = _previous(s, "t-lookup", 2)
        assert before is not None and before["description"] == "first"
        assert _previous(s, "t-lookup", 1) is None
        assert [v and v["description"] for v in s.earlier_versions("Task", "t-lookup", 3)] == [
            "second",
            "first",
        ]
