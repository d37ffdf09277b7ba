"""Reading a ``Subscription`` as the Subscriptions R5 Backport IG (STU 1.1) profiles it on R4
(``backport-subscription``) into what the dispatcher needs, with an OperationOutcome that names
the element when it cannot be served.

::

    {"resourceType": "Subscription", "status": "requested", "reason": "...",
     "criteria": "https://takamul.health/fhir/SubscriptionTopic/referral-task",
     "_criteria": {"extension": [{"url": FILTER, "valueString": "Task?owner=Organization/x"}]},
     "channel": {"type": "rest-hook", "endpoint": "https://...", "header": ["Authorization: ..."],
                 "payload": "application/fhir+json",
                 "_payload": {"extension": [{"url": CONTENT, "valueCode": "id-only"}]},
                 "extension": [{"url": HEARTBEAT, "valueUnsignedInt": 60}, ...]}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from takamul.fhir.outcome import FhirError, OutcomeIssue
from takamul.fhir.search_values import date_range
from takamul.notifications.topics import TOPIC_BASE, TOPICS, Topic, by_url

__all__ = [
    "BACKPORT",
    "CONTENTS",
    "Channel",
    "channel_of",
]

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
FILTER = BACKPORT + "backport-filter-criteria"
HEARTBEAT = BACKPORT + "backport-heartbeat-period"
TIMEOUT = BACKPORT + "backport-timeout"
MAX_COUNT = BACKPORT + "backport-max-count"
CONTENT = BACKPORT + "backport-payload-content"
CONTENTS = ("empty", "id-only", "full-resource")
DEFAULT_TIMEOUT, MAX_TIMEOUT = 10, 60
DEFAULT_MAX_COUNT, MAX_MAX_COUNT = 20, 100
MIN_HEARTBEAT = 1  # seconds; a subscriber asking for more often than this is refused


@dataclass(frozen=True, slots=True)
class Channel:
    """What a Subscription asks for, checked."""

    topic: Topic
    filters: tuple[tuple[str, str], ...]
    endpoint: str
    headers: tuple[str, ...]
    content: str
    heartbeat: int | None
    timeout: int
    max_count: int
    status: str  # as the subscriber wrote it: requested | active | error | off
    end: float | None


def _invalid(message: str, where: str, status: int = 422) -> FhirError:
    return FhirError(status, OutcomeIssue("error", "invalid", message, where))


def _extensions(element: Any, url: str) -> list[dict[str, Any]]:
    if not isinstance(element, dict):
        return []
    return [
        e for e in element.get("extension") or () if isinstance(e, dict) and e.get("url") == url
    ]


def _one_number(element: Any, url: str, where: str) -> int | None:
    found = _extensions(element, url)
    if not found:
        return None
    value = next((v for k, v in found[0].items() if k.startswith("value")), None)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _invalid(f"{url.rsplit('/', 1)[-1]} must be a whole number", where)
    return value


def _topic(subscription: Mapping[str, Any]) -> Topic:
    criteria = str(subscription.get("criteria") or "")
    topic = by_url(criteria)
    if topic is None:
        known = ", ".join(t.url for t in TOPICS.values())
        hint = (
            " (a query as criteria is an R4 query-based subscription, which this server does "
            "not offer)"
            if "?" in criteria and not criteria.startswith(TOPIC_BASE)
            else ""
        )
        raise _invalid(
            f"Subscription.criteria '{criteria}' is not a topic of this server{hint}; "
            f"use one of: {known}",
            "Subscription.criteria",
        )
    return topic


def _filters(subscription: Mapping[str, Any], topic: Topic) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    where = "Subscription._criteria.extension"
    for ext in _extensions(subscription.get("_criteria"), FILTER):
        text = str(ext.get("valueString") or "").strip()
        prefix, mark, query = text.partition("?")
        if not mark:
            query, prefix = prefix, topic.resource_type
        if prefix != topic.resource_type:
            raise _invalid(
                f"The filter '{text}' is about {prefix}, but topic '{topic.code}' announces "
                f"{topic.resource_type}",
                where,
            )
        pairs = parse_qsl(query, keep_blank_values=True)
        if not pairs:
            raise _invalid(f"The filter '{text}' names no parameter", where)
        for param, value in pairs:
            if param not in topic.filters:
                raise _invalid(
                    f"Topic '{topic.code}' cannot be filtered by '{param}'; it takes "
                    f"{', '.join(topic.filters)}",
                    where,
                )
            if not value.strip():
                raise _invalid(f"The filter '{param}' has no value", where)
            out.append((param, value))
    return tuple(out)


def _endpoint(channel: Mapping[str, Any]) -> str:
    endpoint = str(channel.get("endpoint") or "")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _invalid(
            f"Subscription.channel.endpoint '{endpoint}' must be an http(s) URL for rest-hook",
            "Subscription.channel.endpoint",
        )
    return endpoint


def _content(channel: Mapping[str, Any]) -> str:
    payload = channel.get("payload")
    found = _extensions(channel.get("_payload"), CONTENT)
    if payload is None:
        return "empty"
    if payload not in ("application/fhir+json", "application/json"):
        raise _invalid(
            f"Subscription.channel.payload '{payload}' is not served; use application/fhir+json",
            "Subscription.channel.payload",
        )
    content = str(found[0].get("valueCode") or "") if found else "id-only"
    if content not in CONTENTS:
        raise _invalid(
            f"backport-payload-content '{content}' is not one of {', '.join(CONTENTS)}",
            "Subscription.channel._payload.extension",
        )
    return content


def _end(subscription: Mapping[str, Any]) -> float | None:
    end = subscription.get("end")
    if not end:
        return None
    try:
        return date_range(str(end))[0]
    except ValueError as err:
        raise _invalid(f"Subscription.end '{end}' is not an instant", "Subscription.end") from err


def channel_of(subscription: Mapping[str, Any]) -> Channel:
    """The checked Channel of a Subscription, or a 422 naming what cannot be served."""
    topic = _topic(subscription)
    channel = subscription.get("channel") or {}
    if channel.get("type") != "rest-hook":
        raise _invalid(
            f"Subscription.channel.type '{channel.get('type')}' is not served; this server "
            "delivers by rest-hook (use $events to catch up)",
            "Subscription.channel.type",
        )
    headers = tuple(str(h) for h in channel.get("header") or ())
    for header in headers:
        name, colon, _ = header.partition(":")
        if not colon or not name.strip() or not header.isascii() or not header.isprintable():
            raise _invalid(
                f"Subscription.channel.header '{header[:40]}' must be 'Name: value' in printable "
                "ASCII (HTTP header values; percent-encode or base64 other text)",
                "Subscription.channel.header",
            )
    heartbeat = _one_number(channel, HEARTBEAT, "Subscription.channel.extension")
    if heartbeat is not None and heartbeat < MIN_HEARTBEAT:
        raise _invalid(
            f"backport-heartbeat-period must be at least {MIN_HEARTBEAT} second",
            "Subscription.channel.extension",
        )
    timeout = _one_number(channel, TIMEOUT, "Subscription.channel.extension") or DEFAULT_TIMEOUT
    max_count = _one_number(channel, MAX_COUNT, "Subscription.channel.extension")
    return Channel(
        topic=topic,
        filters=_filters(subscription, topic),
        endpoint=_endpoint(channel),
        headers=headers,
        content=_content(channel),
        heartbeat=heartbeat or None,
        timeout=min(max(timeout, 1), MAX_TIMEOUT),
        max_count=min(max(max_count or DEFAULT_MAX_COUNT, 1), MAX_MAX_COUNT),
        status=str(subscription.get("status") or "requested"),
        end=_end(subscription),
    )
