"""Notification Bundles and the status resource they begin with, as the Subscriptions R5
Backport IG (STU 1.1) renders them on R4: a ``history`` Bundle whose first entry is a
``Parameters`` resource (profile ``backport-subscription-status-r4``) standing for R5's
SubscriptionStatus, followed by the focus resources (full-resource), their references only
(id-only) or nothing (empty). Event numbers are strings: R4 has no integer64.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from takamul.store.records import instant

__all__ = ["EventItem", "notification_bundle", "status_parameters"]

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
STATUS_PROFILE = BACKPORT + "backport-subscription-status-r4"
NOTIFICATION_PROFILE = BACKPORT + "backport-subscription-notification-r4"


@dataclass(frozen=True, slots=True)
class EventItem:
    """One numbered event as it goes out: ``resource`` is None when the content is not sent
    (id-only, or what the subscriber may no longer see), ``focus`` None when even the
    reference is withheld."""

    number: int
    at: float
    focus: str | None  # Type/id
    version: int
    created: bool
    resource: dict[str, Any] | None
    context: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StatusInfo:
    subscription_id: str
    topic_url: str
    status: str
    events: int  # events since the subscription started
    error: str | None = None


def status_parameters(
    base: str, info: StatusInfo, kind: str, items: Sequence[EventItem] = ()
) -> dict[str, Any]:
    """The R4 rendering of a SubscriptionStatus (``kind``: handshake, heartbeat,
    event-notification, query-status or query-event)."""
    parameters: list[dict[str, Any]] = [
        {
            "name": "subscription",
            "valueReference": {"reference": f"{base}/Subscription/{info.subscription_id}"},
        },
        {"name": "topic", "valueCanonical": info.topic_url},
        {"name": "status", "valueCode": info.status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(info.events)},
    ]
    for item in items:
        part: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(item.number)},
            {"name": "timestamp", "valueInstant": instant(item.at)},
        ]
        if item.focus is not None:
            part.append({"name": "focus", "valueReference": {"reference": f"{base}/{item.focus}"}})
            part.extend(
                {"name": "additional-context", "valueReference": {"reference": f"{base}/{ref}"}}
                for ref in item.context
            )
        parameters.append({"name": "notification-event", "part": part})
    if info.error and info.status == "error":
        parameters.append({"name": "error", "valueCodeableConcept": {"text": info.error}})
    return {
        "resourceType": "Parameters",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": parameters,
    }


def notification_bundle(
    base: str, info: StatusInfo, kind: str, items: Sequence[EventItem] = (), content: str = "empty"
) -> dict[str, Any]:
    """A notification Bundle of ``kind`` with the events ``items``."""
    status = status_parameters(base, info, kind, items)
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{status['id']}",
            "resource": status,
            "request": {
                "method": "GET",
                "url": f"{base}/Subscription/{info.subscription_id}/$status",
            },
            "response": {"status": "200"},
        }
    ]
    if content != "empty":
        entries.extend(_focus_entry(base, item) for item in items if item.focus is not None)
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": instant(max((i.at for i in items), default=0.0) or time.time()),
        "entry": entries,
    }


def _focus_entry(base: str, item: EventItem) -> dict[str, Any]:
    rtype = str(item.focus).split("/", 1)[0]
    entry: dict[str, Any] = {"fullUrl": f"{base}/{item.focus}"}
    if item.resource is not None:
        entry["resource"] = item.resource
    entry["request"] = (
        {"method": "POST", "url": rtype} if item.created else {"method": "PUT", "url": item.focus}
    )
    entry["response"] = {
        "status": "201" if item.created else "200",
        "etag": f'W/"{item.version}"',
    }
    return entry
