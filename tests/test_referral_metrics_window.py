"""The loop metrics read only the referrals that may have been made in the 12 months up to D
(the ``authored-on`` index range with a day's margin, for speed), yet count exactly the same
ones as the whole history would: a local calendar date at either end of the window whatever
the time zone (UTC+14 to UTC-12), a Task without ``authoredOn`` dated by its ServiceRequest,
and nothing older or newer. SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest

from takamul.coordination.metrics import read_referrals
from takamul.settings import Settings
from takamul.store.guard import unguarded
from takamul.store.repository import Session, Store
from tests.server import postgres_database

AS_OF = date(2026, 6, 30)  # the window: 2025-07-01 to 2026-06-30, local calendar dates
# task id -> (Task.authoredOn, ServiceRequest.authoredOn); None: not given
REFERRALS: dict[str, tuple[str | None, str | None]] = {
    "last-day-east": ("2026-06-30T23:30:00+14:00", None),  # UTC 2026-06-30 09:30
    "last-day-west": ("2026-06-30T23:30:00-12:00", None),  # UTC 2026-07-01 11:30
    "first-day-east": ("2025-07-01T00:30:00+14:00", None),  # UTC 2025-06-30 10:30
    "first-day-west": ("2025-07-01T00:30:00-12:00", None),  # UTC 2025-07-01 12:30
    "day-before-west": ("2025-06-30T23:30:00-12:00", None),  # UTC 2025-07-01 11:30: out
    "day-after-east": ("2026-07-01T00:30:00+14:00", None),  # UTC 2026-06-30 10:30: out
    "by-its-request": (None, "2026-01-15"),
    "request-too-old": (None, "2024-01-15"),
    "two-years-ago": ("2024-06-30", None),
}
INSIDE = {"last-day-east", "last-day-west", "first-day-east", "first-day-west", "by-its-request"}


def _write(s: Session) -> None:
    s.update("Organization", "a", {"resourceType": "Organization", "id": "a"})
    s.update("Organization", "b", {"resourceType": "Organization", "id": "b"})
    for tid, (task_day, request_day) in REFERRALS.items():
        request: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "id": tid,
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/p"},
        }
        if request_day:
            request["authoredOn"] = request_day
        s.update("ServiceRequest", tid, request)
        task: dict[str, Any] = {
            "resourceType": "Task",
            "id": tid,
            "status": "requested",
            "intent": "order",
            "focus": {"reference": f"ServiceRequest/{tid}"},
            "for": {"reference": "Patient/p"},
            "requester": {"reference": "Organization/a"},
            "owner": {"reference": "Organization/b"},
        }
        if task_day:
            task["authoredOn"] = task_day
        s.update("Task", tid, task)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    exports = tmp_path_factory.mktemp("exports")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('window') / 'window.sqlite'}"
        built = Store(Settings(database_url=url, export_dir=exports, mpi=False))
        with unguarded():
            built.write(_write)
        yield built
        built.close()
    else:
        with postgres_database() as url:
            built = Store(Settings(database_url=url, export_dir=exports, mpi=False))
            with unguarded():
                built.write(_write)
            yield built
            built.close()


def test_the_window_is_the_local_calendar_dates(store: Store) -> None:
    found = {r.task: r for r in read_referrals(store, AS_OF)}
    assert set(found) == INSIDE
    assert found["by-its-request"].authored == date(2026, 1, 15)
    assert found["last-day-west"].authored == AS_OF
    assert (found["first-day-east"].requester, found["first-day-east"].owner) == ("a", "b")
