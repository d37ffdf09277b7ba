"""A request's short reads (``Store.reading(snapshot=False)``) take their connection through a
slot that keeps the last one given back, instead of the pool each time. These tests try what
could go wrong with a kept connection: one left broken by an error, one the database closed
while it waited, two readers at once, one kept too long, one kept past the store's close. On
both stores."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from takamul.fhir.outcome import FhirError
from takamul.store import Store, repository


def _patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": "Haddad"}]}


def _dbapi(store: Store) -> Any:
    """The driver connection a short read runs on now."""
    with store.reading(snapshot=False) as session:
        return session.conn.connection.dbapi_connection


def test_the_next_read_takes_the_kept_connection_even_after_a_not_found(
    either_store: Store,
) -> None:
    either_store.write(lambda s: s.update("Patient", "p1", _patient("p1")))
    first = _dbapi(either_store)
    assert _dbapi(either_store) is first
    with pytest.raises(FhirError), either_store.reading(snapshot=False) as session:
        session.read("Patient", "nobody")  # the request's own error: the connection is fine
    assert _dbapi(either_store) is first


def test_a_connection_an_unexpected_error_went_through_is_not_kept(either_store: Store) -> None:
    first = _dbapi(either_store)
    with pytest.raises(RuntimeError), either_store.reading(snapshot=False):
        raise RuntimeError("a failure that may have left the connection in any state")
    # dropped: the pool closed it and opens another
    assert _dbapi(either_store) is not first


def test_readers_at_the_same_time_do_not_share_a_connection(either_store: Store) -> None:
    either_store.write(lambda s: s.update("Patient", "p1", _patient("p1")))
    with either_store.reading(snapshot=False) as outer:
        with either_store.reading(snapshot=False) as inner:
            both = (outer.conn.connection.dbapi_connection, inner.conn.connection.dbapi_connection)
            assert both[0] is not both[1]
            assert inner.read("Patient", "p1").id == "p1"
        assert outer.read("Patient", "p1").id == "p1"
    # one of the two is kept, the other went back to the pool
    assert _dbapi(either_store) in both


def test_a_connection_kept_too_long_goes_back_to_the_pool(
    either_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _dbapi(either_store)
    kept = either_store._slot
    assert kept is not None
    monkeypatch.setattr(repository, "KEPT_IDLE", -1.0)  # anything kept is kept too long
    _dbapi(either_store)
    # given back to the pool (which tests a connection idle this long before handing it out)
    assert kept.closed and either_store._slot is not kept


def test_closing_the_store_closes_the_kept_connection(either_store: Store) -> None:
    _dbapi(either_store)
    slot = either_store._slot
    assert slot is not None and not slot.closed
    either_store.close()
    assert slot.closed and either_store._slot is None


@pytest.mark.parametrize("either_store", ["postgresql"], indirect=True)
def test_a_kept_connection_the_database_closed_costs_one_read_at_most(
    either_store: Store,
) -> None:
    """PostgreSQL ends the kept connection's session (a restart, an administrator): the read
    that finds it fails, and the next opens another."""
    either_store.write(lambda s: s.update("Patient", "p1", _patient("p1")))
    with either_store.reading(snapshot=False) as session:
        backend = session.conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with either_store.writer.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
    failures = 0
    for _ in range(2):
        try:
            with either_store.reading(snapshot=False) as session:
                assert session.read("Patient", "p1").id == "p1"
        except Exception:  # the terminated connection, found by the first read
            failures += 1
    assert failures <= 1
    with either_store.reading(snapshot=False) as session:
        assert session.read("Patient", "p1").id == "p1"
        pid = session.conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    assert pid != backend
