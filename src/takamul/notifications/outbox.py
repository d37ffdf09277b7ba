"""The write hook: a Subscription's channel is kept with the resource, and every change a topic
may announce is put in the outbox, both inside the transaction that stores them.

The outbox row only says "this version may belong to these topics": which subscriptions it
goes to, and under what event number, is decided after commit by the dispatcher, which reads
the committed record with each subscriber's own access rights.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import orjson
from sqlalchemy import delete, insert, select, update

from takamul.fhir.outcome import FhirError, OutcomeIssue
from takamul.notifications.schema import (
    notification_outbox,
    subscription_channel,
    subscription_event,
)
from takamul.notifications.subscriptions import Channel, channel_of
from takamul.notifications.topics import topics_of
from takamul.security.context import AccessContext
from takamul.store.guard import current_guard
from takamul.store.repository import Session

__all__ = ["SERVER_WRITE", "OutboxHook", "subscriber_json"]

# set while the dispatcher writes a Subscription's status: not a subscriber's change
SERVER_WRITE: ContextVar[bool] = ContextVar("takamul_notifications_server_write", default=False)
_WAKE = "notifications.wake"


def subscriber_json(access: AccessContext | None) -> str | None:
    """What the dispatcher needs to act with the subscriber's rights later (None: the system,
    a write made without access control)."""
    if access is None:
        return None
    return orjson.dumps(
        {
            "client_id": access.client_id,
            "user": access.user,
            "roles": sorted(access.roles),
            "facility": access.facility,
            "scopes": str(access.scopes),
            "patient": access.patient,
        }
    ).decode()


class OutboxHook:
    """``Store.write_hooks`` member; ``wake`` is called after a commit that filled the outbox."""

    def __init__(self, wake: Callable[[], None], clock: Callable[[], float]) -> None:
        self.wake = wake
        self.clock = clock

    def __call__(self, session: Session, rtype: str, rid: str, body: dict[str, Any] | None) -> None:
        if rtype == "Subscription":
            self._subscription(session, rid, body)
            return
        if body is None:
            return
        topics = topics_of(rtype, body)
        if not topics:
            return
        version = int((body.get("meta") or {}).get("versionId") or 1)
        session.conn.execute(
            insert(notification_outbox).values(
                topics=" ".join(topics),
                res_type=rtype,
                res_id=rid,
                version=version,
                created=version == 1,
                at=self.clock(),
                processed=False,
            )
        )
        if _WAKE not in session.extras:
            session.extras[_WAKE] = True
            session.after_commit.append(self.wake)

    def _subscription(self, session: Session, sid: str, body: dict[str, Any] | None) -> None:
        if body is None:
            session.conn.execute(
                delete(subscription_event).where(subscription_event.c.sub_id == sid)
            )
            session.conn.execute(
                delete(subscription_channel).where(subscription_channel.c.sub_id == sid)
            )
            return
        if SERVER_WRITE.get():
            return
        channel = channel_of(body)
        access = _access()
        _check_subscriber(access, channel)
        values = _channel_values(channel, subscriber_json(access))
        old = session.conn.execute(
            select(subscription_channel).where(subscription_channel.c.sub_id == sid)
        ).first()
        if old is None:
            session.conn.execute(
                insert(subscription_channel).values(
                    sub_id=sid, since=self.clock(), events=0, delivered=0, **values
                )
            )
        else:
            session.conn.execute(
                update(subscription_channel)
                .where(subscription_channel.c.sub_id == sid)
                .values(**_kept_subscriber(old, _changed(old, values, channel)))
            )
        session.after_commit.append(self.wake)


def _access() -> AccessContext | None:
    guard = current_guard.get()
    access = getattr(guard, "access", None)
    return access if isinstance(access, AccessContext) else None


def _check_subscriber(access: AccessContext | None, channel: Channel) -> None:
    """A subscriber must be allowed to read what its topic announces."""
    rtype = channel.topic.resource_type
    if access is not None and not access.allows(rtype, "r"):
        raise FhirError(
            403,
            OutcomeIssue(
                "error",
                "forbidden",
                f"Topic '{channel.topic.code}' announces {rtype} resources, which the granted "
                f"scopes ({access.scopes or 'none'}) do not allow reading",
                "Subscription.criteria",
            ),
        )


def _channel_values(channel: Channel, subscriber: str | None) -> dict[str, Any]:
    return {
        "topic": channel.topic.code,
        "filters": orjson.dumps([list(f) for f in channel.filters]).decode(),
        "endpoint": channel.endpoint,
        "headers": orjson.dumps(list(channel.headers)).decode(),
        "content": channel.content,
        "heartbeat": channel.heartbeat,
        "timeout": channel.timeout,
        "max_count": channel.max_count,
        "status": "off" if channel.status == "off" else "requested",
        "handshake_done": False,
        "subscriber": subscriber,
        "attempts": 0,
        "next_attempt": 0.0,
        "last_sent": 0.0,
        "error": None,
        "end_at": channel.end,
    }


def _changed(old: Any, values: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """An update keeps the delivery state unless the subscriber changed where or what is sent
    (then a new handshake), turned it off, or asked for it again (status requested)."""
    moved = any(old._mapping[k] != values[k] for k in ("topic", "filters", "endpoint", "headers"))
    if moved or channel.status in ("off", "requested") or old.status == "off":
        return values
    keep = ("status", "handshake_done", "attempts", "next_attempt", "last_sent", "error")
    return {k: v for k, v in values.items() if k not in keep}


def _kept_subscriber(old: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The subscriber stays who made the Subscription: an administrator who edits it does not
    lend the receiver their own wider rights."""
    return {**values, "subscriber": old.subscriber}
