"""The ``Notifications`` service: the write hook, the dispatcher's thread, and the answers of
``Subscription/{id}/$status`` and ``$events``.

Settings (environment): ``TAKAMUL_NOTIFY_POLL`` (seconds between looks at the outbox when no
commit in this process woke the dispatcher; 0.25), ``TAKAMUL_NOTIFY_BACKOFF_MAX`` (the longest
wait between retries to a failing endpoint; 60), ``TAKAMUL_NOTIFY_LEASE`` (seconds a
dispatcher's lease lasts; 5), ``TAKAMUL_NOTIFY=false`` to run no dispatcher in this process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import select

from takamul.fhir.outcome import FhirError, OutcomeIssue
from takamul.notifications.bundles import StatusInfo, notification_bundle, status_parameters
from takamul.notifications.dispatcher import Dispatcher, DispatchSettings, event_items
from takamul.notifications.outbox import OutboxHook
from takamul.notifications.schema import (
    notifications_metadata,
    subscription_channel,
    subscription_event,
)
from takamul.notifications.subscriptions import CONTENTS
from takamul.notifications.topics import TOPICS
from takamul.security.context import AccessContext
from takamul.store.guard import OWNED, current_guard
from takamul.store.repository import Session, Store

__all__ = ["MAX_EVENTS", "Notifications", "settings_from_env", "subscriber_of"]

log = logging.getLogger("takamul.notifications")
IDLE = 1.0  # seconds between looks at a quiet outbox
GATHER = 0.05  # seconds a woken dispatcher waits for the commits that follow
MAX_EVENTS = 1_000  # events in one $events answer; ask again from the last number for more


def settings_from_env() -> DispatchSettings:
    env = os.environ
    return DispatchSettings(
        poll=float(env.get("TAKAMUL_NOTIFY_POLL", "0.25")),
        lease=float(env.get("TAKAMUL_NOTIFY_LEASE", "5")),
        backoff_max=float(env.get("TAKAMUL_NOTIFY_BACKOFF_MAX", "60")),
    )


class Notifications:
    def __init__(
        self,
        store: Store,
        base_url: str | None = None,
        settings: DispatchSettings | None = None,
        subscriber_active: Callable[[AccessContext], bool] | None = None,
    ) -> None:
        notifications_metadata.create_all(store.writer)
        self.store = store
        self.base_url = base_url
        self.dispatcher = Dispatcher(
            store,
            lambda: self.base_url or "http://localhost/fhir",
            settings or settings_from_env(),
            subscriber_active,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def attach(self) -> None:
        """Keep channels and the outbox with the record (a write hook); a Subscription is its
        subscriber's to see (``store.guard.OWNED``)."""
        self.store.write_hooks.append(OutboxHook(self.wake, time.time))
        OWNED["Subscription"] = subscriber_of

    def wake(self) -> None:
        self.dispatcher.woken.set()

    # -- the dispatcher's thread ----------------------------------------------------------

    def start(self) -> None:
        """Run the dispatcher in a daemon thread (``TAKAMUL_NOTIFY=false``: not here)."""
        if self._thread is not None or os.environ.get("TAKAMUL_NOTIFY", "").lower() in (
            "0",
            "false",
            "no",
        ):
            return
        self._thread = threading.Thread(target=self._run, name="takamul-notifications", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        try:
            self.dispatcher.release()
        except Exception:  # the database may be gone at shutdown; the lease lapses anyway
            log.debug("notifications: lease not released", exc_info=True)
        self.dispatcher.close()

    def _run(self) -> None:
        settings = self.dispatcher.settings
        failures = 0
        while not self._stop.is_set():
            # commits arriving together are numbered in one round (one write transaction),
            # at the cost of at most GATHER seconds of delay
            time.sleep(GATHER)
            self.dispatcher.woken.clear()
            wait = settings.poll
            try:
                busy = self.dispatcher.lead() and self.dispatcher.step()
                failures = 0
                if not busy:
                    # nothing to number or send: look less often (a commit in this process
                    # still wakes the dispatcher at once; other workers' commits wait this long)
                    wait = max(settings.poll, IDLE)
            except Exception:
                failures += 1
                log.exception("notifications: dispatch round failed; trying again")
                wait = min(30.0, settings.poll * 2**failures)
            self.dispatcher.woken.wait(wait)

    def run_once(self) -> None:
        """One round, waiting for its deliveries (tests and benchmarks without the thread)."""
        if self.dispatcher.lead():
            self.dispatcher.step(wait=True)

    # -- $status and $events --------------------------------------------------------------

    def _channel(self, s: Session, sid: str) -> Any:
        """The channel of a Subscription the requester may read (404 as for a read)."""
        s.read("Subscription", sid)  # under the request's guard
        ch = s.conn.execute(
            select(subscription_channel).where(subscription_channel.c.sub_id == sid)
        ).first()
        if ch is None:
            raise FhirError(404, f"Subscription/{sid} has no channel", "not-found")
        return ch

    def status(self, s: Session, sid: str, base: str) -> dict[str, Any]:
        """``$status``: a searchset Bundle with the subscription's status resource."""
        ch = self._channel(s, sid)
        info = _info(ch)
        resource = status_parameters(base, info, "query-status")
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": 1,
            "entry": [
                {
                    "fullUrl": f"urn:uuid:{resource['id']}",
                    "resource": resource,
                    "search": {"mode": "match"},
                }
            ],
        }

    def events(
        self, s: Session, sid: str, base: str, params: list[tuple[str, str]]
    ) -> dict[str, Any]:
        """``$events``: the stored events in a range, as a ``query-event`` notification, their
        content passing the requester's own guard."""
        ch = self._channel(s, sid)
        args = dict(params)
        first = _number(args, "eventsSinceNumber", 1)
        last = _number(args, "eventsUntilNumber", int(ch.events))
        content = args.get("content", ch.content)
        if content not in CONTENTS:
            raise FhirError(
                400,
                OutcomeIssue(
                    "error",
                    "invalid",
                    f"content '{content}' is not one of {', '.join(CONTENTS)}",
                    "content",
                ),
            )
        rows = s.conn.execute(
            select(subscription_event)
            .where(
                subscription_event.c.sub_id == sid,
                subscription_event.c.number >= first,
                subscription_event.c.number <= last,
            )
            .order_by(subscription_event.c.number)
            .limit(MAX_EVENTS)
        ).all()
        items = event_items(s, rows, content, current_guard.get())
        return notification_bundle(base, _info(ch), "query-event", items, content)


def subscriber_of(store: Store, sid: str) -> str | None:
    """Who made the Subscription ``sid`` (``AccessContext.who``), None when no requester did."""
    with store.reading() as s:
        row = s.conn.execute(
            select(subscription_channel.c.subscriber).where(subscription_channel.c.sub_id == sid)
        ).first()
    if row is None or not row.subscriber:
        return None
    data = orjson.loads(row.subscriber)
    return f"client:{data['client_id']}" if data.get("client_id") else f"user:{data.get('user')}"


def _info(ch: Any) -> StatusInfo:
    return StatusInfo(ch.sub_id, TOPICS[ch.topic].url, ch.status, int(ch.events), ch.error)


def _number(args: dict[str, str], name: str, default: int) -> int:
    raw = args.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise FhirError(
            400, OutcomeIssue("error", "invalid", f"{name} must be a whole number", name)
        )
    return int(raw)
