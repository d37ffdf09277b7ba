"""The overdue list: registered persons whose follow-up is due, high risk first, as Tasks on
the responsible facility's worklist.

Order (Simple's): high risk first (overdue >= 30 days with a blood pressure >= 180/110, or a
prior heart attack or stroke with >= 140/90, or uncontrolled blood sugar), then the most
overdue, then the person. Each person becomes one ``Task`` per programme and due date
(``status`` requested, ``intent`` plan, ``code`` in the outreach code system so the community
health worker's worklist lists it, ``owner`` the responsible facility, ``for`` the person's
record there, ``priority`` urgent for high risk), stored with ``ifNoneExist`` on its identifier
so a run repeated the same day adds nothing. An open follow-up Task of a person who is no
longer overdue (they came back) is completed by the next run, so a worker's list stays current.
Call outcomes ("agreed to visit" hides the Task for 7 days, "remind later" for 30) are recorded
on the Task in the web worklist.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from takamul.equity.outreach import OUTREACH_SYSTEM, TASK_IDENTIFIER_SYSTEM
from takamul.programmes.definitions import Catalog
from takamul.programmes.status import PersonStatus
from takamul.rest.bundles import process
from takamul.rest.interactions import RequestContext
from takamul.store.repository import Store

__all__ = [
    "FOLLOW_UP",
    "OverdueRun",
    "follow_up_code",
    "overdue",
    "overdue_bundle",
    "store_overdue",
]

FOLLOW_UP = "follow-up"
OPEN = "requested,received,accepted,ready,in-progress,on-hold"


def follow_up_code(programme: str) -> str:
    return f"{programme}-{FOLLOW_UP}"


def overdue(rows: Iterable[PersonStatus]) -> list[PersonStatus]:
    """The overdue persons in worklist order: high risk, most overdue, person."""
    due = [r for r in rows if r.overdue_days > 0 and r.status != "registered-recently"]
    return sorted(
        due,
        key=lambda r: (r.risk != "high", -r.overdue_days, r.person_id or r.patient_ids[0]),
    )


def _describe(r: PersonStatus, title: str) -> str:
    parts = [f"{title} follow-up overdue by {r.overdue_days} days ({r.status})"]
    if r.last_visit:
        parts.append(f"last visit {r.last_visit.isoformat()}")
    if r.last_systolic is not None:
        parts.append(f"last blood pressure {r.last_systolic:g}/{r.last_diastolic:g}")
    if r.last_glucose_test:
        parts.append(f"last {r.last_glucose_test} {r.last_glucose_value:g}")
    if r.risk == "high":
        parts.append("high risk")
    return "; ".join(parts)


def _task(r: PersonStatus, title: str, as_of: date, stamp: str) -> dict[str, Any]:
    due = as_of.toordinal() - r.overdue_days
    key = (r.person_id or r.patient_ids[0]).replace("/", "-")
    patient = r.record_id or r.patient_ids[0]
    task: dict[str, Any] = {
        "resourceType": "Task",
        "identifier": [
            {
                "system": TASK_IDENTIFIER_SYSTEM,
                "value": f"{follow_up_code(r.programme)}-{date.fromordinal(due):%Y%m%d}-{key}",
            }
        ],
        "status": "requested",
        "intent": "plan",
        "priority": "urgent" if r.risk == "high" else "routine",
        "code": {
            "coding": [
                {
                    "system": OUTREACH_SYSTEM,
                    "code": follow_up_code(r.programme),
                    "display": f"{title} follow-up visit",
                }
            ],
            "text": f"{title} follow-up visit",
        },
        "description": _describe(r, title),
        "for": {"reference": f"Patient/{patient}"},
        "authoredOn": stamp,
        "reasonCode": {"text": f"{title}: {r.status}"},
    }
    if r.facility:
        task["owner"] = {"reference": f"Organization/{r.facility}"}
    return task


def overdue_bundle(
    catalog: Catalog,
    rows: Sequence[PersonStatus],
    as_of: date,
    limit_per_facility: int | None = None,
    authored: datetime | None = None,
) -> dict[str, Any]:
    """A transaction Bundle of follow-up Tasks for the overdue persons in ``rows``."""
    stamp = (authored or datetime.now(UTC)).replace(microsecond=0).isoformat()
    taken: dict[str | None, int] = {}
    entries = []
    for r in overdue(rows):
        if limit_per_facility is not None and taken.get(r.facility, 0) >= limit_per_facility:
            continue
        taken[r.facility] = taken.get(r.facility, 0) + 1
        task = _task(r, catalog.programme(r.programme).title, as_of, stamp)
        ident = task["identifier"][0]
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": task,
                "request": {
                    "method": "POST",
                    "url": "Task",
                    "ifNoneExist": f"identifier={ident['system']}|{ident['value']}",
                },
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


@dataclass(frozen=True, slots=True)
class OverdueRun:
    created: int
    existing: int
    closed: int


def _close_returned(
    store: Store, programmes: Sequence[str], still_due: set[str], stamp: str
) -> int:
    """Complete the open follow-up Tasks of persons who are no longer overdue."""
    closed = 0
    for programme in programmes:
        code = f"{OUTREACH_SYSTEM}|{follow_up_code(programme)}"

        def work(session: Any, code: str = code) -> int:
            n = 0
            offset = 0
            stale = []
            while True:  # every open follow-up Task, a page at a time
                params = [("code", code), ("status", OPEN), ("_count", "1000")]
                params.append(("_offset", str(offset)))
                page = session.search(session.parse_search("Task", params))
                stale.extend(page.matches)
                offset += len(page.matches)
                if not page.matches or not page.has_next:
                    break
            for stored in stale:
                body = stored.json()
                ident = (body.get("identifier") or [{}])[0].get("value", "")
                if ident in still_due:
                    continue
                body["status"] = "completed"
                body["businessStatus"] = {
                    "coding": [
                        {"system": OUTREACH_SYSTEM, "code": "no-longer-overdue",
                         "display": "No longer overdue"}
                    ],
                    "text": "The person was seen; the follow-up is no longer overdue",
                }  # fmt: skip
                body["lastModified"] = stamp
                session.update("Task", stored.id, body)
                n += 1
            return n

        closed += store.write(work)
    return closed


def store_overdue(
    store: Store,
    catalog: Catalog,
    rows: Sequence[PersonStatus],
    as_of: date,
    programmes: Sequence[str],
    limit_per_facility: int | None = None,
) -> OverdueRun:
    """Store the follow-up Tasks (one transaction) and complete those no longer due."""
    bundle = overdue_bundle(catalog, rows, as_of, limit_per_facility)
    # every overdue person's Task stays open, also those beyond this run's limit
    everyone = overdue_bundle(catalog, rows, as_of)
    still_due = {e["resource"]["identifier"][0]["value"] for e in everyone["entry"]}
    response = process(store, bundle, RequestContext("urn:takamul:programmes"), 50)
    created = sum(1 for e in response.get("entry", ()) if e["response"]["status"].startswith("201"))
    stamp = datetime.now(UTC).replace(microsecond=0).isoformat()
    closed = _close_returned(store, programmes, still_due, stamp)
    return OverdueRun(created, len(bundle["entry"]) - created, closed)
