"""The dispatcher: after commit, it turns outbox rows into numbered events of the subscriptions
they match, and delivers them by rest-hook, with handshakes, heartbeats and retries.

One server process dispatches at a time (a lease in ``notification_lease``, renewed while it
works; another worker takes over when it lapses), so event numbers are given once, in order.
Delivery is at least once: an event is acknowledged (``delivered``) only after the endpoint
answered 2xx, and a notification is resent whole after a failure, after a back-off that doubles
up to a ceiling. A subscriber de-duplicating by event number therefore sees every event exactly
once and in order, through endpoint outages and server restarts alike (the outbox and the
events are in the database).

Access: what a notification carries passes the subscriber's own guard, the one its requests
get. An event is numbered only if the subscriber could read the focus when it happened; when
it is sent, content the subscriber may no longer read (a consent given since, a facility
link ended) goes without it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from sqlalchemy import insert, or_, select, update

from takamul.notifications.bundles import EventItem, StatusInfo, notification_bundle
from takamul.notifications.outbox import SERVER_WRITE
from takamul.notifications.schema import (
    notification_lease,
    notification_outbox,
    subscription_channel,
    subscription_event,
)
from takamul.notifications.topics import CARE_TEAM_MEMBER, TOPICS, filter_matches
from takamul.security.context import AccessContext
from takamul.security.guard import AccessGuard
from takamul.security.scopes import ScopeSet
from takamul.store.guard import Guard, guarded, unguarded
from takamul.store.repository import Session, Store
from takamul.store.schema import pairs_in, resource, resource_version, version_content

__all__ = ["DispatchSettings", "Dispatcher", "event_items", "subscriber_context"]

log = logging.getLogger("takamul.notifications")
LEASE = "dispatcher"
LIVE = ("requested", "active", "error")
Key = tuple[str, str, int]
BATCH = 500


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    poll: float = 0.25  # seconds between looks at the outbox when nothing wakes the dispatcher
    lease: float = 5.0  # seconds a dispatcher's lease lasts unless renewed
    backoff: float = 1.0  # the first retry's wait, doubled per failure
    backoff_max: float = 60.0
    workers: int = 4  # subscriptions delivered to at once


def subscriber_context(text: str | None) -> AccessContext | None:
    if not text:
        return None
    data = orjson.loads(text)
    return AccessContext(
        client_id=data.get("client_id"),
        user=data.get("user"),
        roles=frozenset(data.get("roles") or ()),
        facility=data.get("facility"),
        scopes=ScopeSet.parse(str(data.get("scopes") or "")),
        patient=data.get("patient"),
    )


class Dispatcher:
    def __init__(
        self,
        store: Store,
        base_url: Callable[[], str],
        settings: DispatchSettings,
        subscriber_active: Callable[[AccessContext], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.base_url = base_url
        self.settings = settings
        self.subscriber_active = subscriber_active
        self.clock = clock
        self.owner = uuid.uuid4().hex
        self.http = httpx.Client(follow_redirects=False)
        self._leased_until = 0.0
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="takamul-notify")
        self.woken = threading.Event()

    # -- the lease ----------------------------------------------------------------------

    def lead(self) -> bool:
        """Hold (take or renew) the dispatcher's lease; False while another process holds it."""
        now = self.clock()
        if self._leased_until - now > self.settings.lease / 2:
            return True
        until = now + self.settings.lease

        def work(s: Session) -> bool:
            taken = s.conn.execute(
                update(notification_lease)
                .where(
                    notification_lease.c.name == LEASE,
                    or_(notification_lease.c.owner == self.owner, notification_lease.c.until < now),
                )
                .values(owner=self.owner, until=until)
            ).rowcount
            if taken:
                return True
            held = s.conn.execute(
                select(notification_lease.c.owner).where(notification_lease.c.name == LEASE)
            ).first()
            if held is None:
                s.conn.execute(
                    insert(notification_lease).values(name=LEASE, owner=self.owner, until=until)
                )
                return True
            return False

        with unguarded():
            led = self.store.write(work)
        self._leased_until = until if led else 0.0
        return led

    def release(self) -> None:
        def work(s: Session) -> None:
            s.conn.execute(
                update(notification_lease)
                .where(notification_lease.c.name == LEASE, notification_lease.c.owner == self.owner)
                .values(until=0.0)
            )

        with unguarded():
            self.store.write(work)
        self._leased_until = 0.0

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.http.close()

    # -- one round ------------------------------------------------------------------------

    def step(self, wait: bool = False) -> bool:
        """Number what the outbox holds, then start every delivery that is due (``wait``: and
        wait for them, as tests and the benchmark do). False when there was nothing to do."""
        numbered = 0
        with unguarded():
            while self._pending() and (batch := self._number()):
                numbered += batch
                if batch < BATCH:
                    break
        futures = [self._pool.submit(self._deliver, sid) for sid in self._due()]
        if wait:
            for future in futures:
                future.result()
        return bool(numbered or futures)

    # -- numbering ------------------------------------------------------------------------

    def _pending(self) -> bool:
        """Anything in the outbox (a read: no write transaction while there is nothing)."""
        with self.store.reading() as s:
            return (
                s.conn.execute(
                    select(notification_outbox.c.seq)
                    .where(notification_outbox.c.processed.is_(False))
                    .limit(1)
                ).first()
                is not None
            )

    def _number(self) -> int:
        """One batch of the outbox in one transaction: rows done, events numbered."""

        def work(s: Session) -> int:
            rows = s.conn.execute(
                select(notification_outbox)
                .where(notification_outbox.c.processed.is_(False))
                .order_by(notification_outbox.c.seq)
                .limit(BATCH)
            ).all()
            if not rows:
                return 0
            channels = s.conn.execute(
                select(subscription_channel).where(subscription_channel.c.status.in_(LIVE))
            ).all()
            if channels:
                self._number_rows(s, rows, channels)
            s.conn.execute(
                update(notification_outbox)
                .where(notification_outbox.c.seq.in_([r.seq for r in rows]))
                .values(processed=True)
            )
            return len(rows)

        return self.store.write(work)

    def _number_rows(self, s: Session, rows: Sequence[Any], channels: Sequence[Any]) -> None:
        counters = {c.sub_id: int(c.events) for c in channels}
        guards: dict[str | None, Guard | None] = {}
        bodies = versions(s, [(r.res_type, r.res_id, r.version) for r in rows])
        # the search parameters the channels' filters name (and the care-team topic's patient)
        wanted = {"patient"} | {f[0] for c in channels for f in orjson.loads(c.filters)}
        events: list[dict[str, Any]] = []
        for row in rows:
            body = bodies.get((row.res_type, row.res_id, row.version))
            if body is None:
                continue
            entries = self.store.indexer.extract_some(body, wanted)
            topics = set(row.topics.split())
            for ch in channels:
                if ch.topic not in topics or row.at < ch.since:
                    continue
                if ch.end_at is not None and row.at > ch.end_at:
                    continue
                context = self._matches(s, ch, body, entries)
                if context is None or not self._visible(guards, ch.subscriber, body):
                    continue
                counters[ch.sub_id] += 1
                events.append(
                    {
                        "sub_id": ch.sub_id,
                        "number": counters[ch.sub_id],
                        "res_type": row.res_type,
                        "res_id": row.res_id,
                        "version": row.version,
                        "created": row.created,
                        "at": row.at,
                        "context": orjson.dumps(context).decode() if context else None,
                    }
                )
        if events:
            s.conn.execute(insert(subscription_event), events)
        for ch in channels:
            if counters[ch.sub_id] != ch.events:
                s.conn.execute(
                    update(subscription_channel)
                    .where(subscription_channel.c.sub_id == ch.sub_id)
                    .values(events=counters[ch.sub_id])
                )

    def _matches(
        self, s: Session, ch: Any, body: dict[str, Any], entries: dict[str, Any]
    ) -> list[str] | None:
        """The additional context of an event of ``ch`` for ``body`` (``[]`` when there is
        none), or None when the change does not match the channel's filters."""
        filters = [tuple(f) for f in orjson.loads(ch.filters)]
        for param, value in filters:
            if param != CARE_TEAM_MEMBER and not filter_matches(entries, param, value):
                return None
        if ch.topic != "care-team-encounter":
            return []
        members = [v for p, v in filters if p == CARE_TEAM_MEMBER]
        teams = _active_teams(s, entries, members)
        return teams or None

    def _visible(
        self, guards: dict[str | None, Guard | None], subscriber: str | None, body: dict[str, Any]
    ) -> bool:
        if subscriber not in guards:
            access = subscriber_context(subscriber)
            guards[subscriber] = None if access is None else AccessGuard(access, self.store)
        guard = guards[subscriber]
        return guard is None or guard.visible(str(body["resourceType"]), body, "r")

    # -- delivery -------------------------------------------------------------------------

    def _due(self) -> list[str]:
        now = self.clock()
        with self.store.reading() as s:
            rows = s.conn.execute(
                select(subscription_channel).where(
                    subscription_channel.c.status.in_(LIVE),
                    subscription_channel.c.next_attempt <= now,
                )
            ).all()
        due = [r.sub_id for r in rows if _wants_sending(r, now)]
        with self._lock:
            due = [sid for sid in due if sid not in self._in_flight]
            self._in_flight.update(due)
        return due

    def _deliver(self, sid: str) -> None:
        try:
            with unguarded():
                self._deliver_one(sid)
        except Exception:
            log.exception("notifications: delivery to Subscription/%s failed", sid)
        finally:
            with self._lock:
                self._in_flight.discard(sid)
            self.woken.set()

    def _deliver_one(self, sid: str) -> None:
        with self.store.reading() as s:
            ch = s.conn.execute(
                select(subscription_channel).where(subscription_channel.c.sub_id == sid)
            ).first()
            if ch is None or ch.status not in LIVE:
                return
            access = subscriber_context(ch.subscriber)
            if access is not None and self.subscriber_active and not self.subscriber_active(access):
                self._failed(ch, "The subscriber's client or login is disabled")
                return
            if not ch.handshake_done:
                kind, items = "handshake", []
            elif ch.delivered < ch.events:
                kind, items = "event-notification", self._items(s, ch, access)
            else:
                kind, items = "heartbeat", []
        self._send(ch, kind, items)

    def _items(self, s: Session, ch: Any, access: AccessContext | None) -> list[EventItem]:
        rows = s.conn.execute(
            select(subscription_event)
            .where(
                subscription_event.c.sub_id == ch.sub_id, subscription_event.c.number > ch.delivered
            )
            .order_by(subscription_event.c.number)
            .limit(ch.max_count)
        ).all()
        guard = None if access is None else AccessGuard(access, self.store)
        return event_items(s, rows, ch.content, guard)

    def _send(self, ch: Any, kind: str, items: list[EventItem]) -> None:
        # a handshake tells of a subscription not yet active; anything else of an active one
        status = "requested" if kind == "handshake" else "active"
        info = StatusInfo(ch.sub_id, TOPICS[ch.topic].url, status, int(ch.events))
        bundle = notification_bundle(self.base_url(), info, kind, items, ch.content)
        headers = {"Content-Type": "application/fhir+json"}
        for header in orjson.loads(ch.headers):
            name, _, value = str(header).partition(":")
            headers[name.strip()] = value.strip()
        try:
            answer = self.http.post(
                ch.endpoint, content=orjson.dumps(bundle), headers=headers, timeout=ch.timeout
            )
            problem = None if 200 <= answer.status_code < 300 else f"HTTP {answer.status_code}"
        except (httpx.HTTPError, ValueError) as err:  # unreachable, refused, timed out, bad URL
            problem = f"{type(err).__name__}: {err}"[:300]
        if problem is None:
            last = items[-1].number if items else int(ch.delivered)
            self._succeeded(ch, kind, last)
        else:
            self._failed(ch, f"{kind} to {ch.endpoint} failed: {problem}")

    def _succeeded(self, ch: Any, kind: str, last: int) -> None:
        now = self.clock()

        def work(s: Session) -> None:
            s.conn.execute(
                update(subscription_channel)
                .where(subscription_channel.c.sub_id == ch.sub_id)
                .values(
                    status="active",
                    handshake_done=True,
                    delivered=last,
                    attempts=0,
                    next_attempt=0.0,
                    last_sent=now,
                    error=None,
                )
            )
            if ch.status != "active":
                _set_status(s, ch.sub_id, "active", None)

        self.store.write(work)
        log.debug("notifications: %s to Subscription/%s delivered", kind, ch.sub_id)

    def _failed(self, ch: Any, problem: str) -> None:
        attempts = int(ch.attempts) + 1
        wait = min(self.settings.backoff_max, self.settings.backoff * 2 ** (attempts - 1))

        def work(s: Session) -> None:
            s.conn.execute(
                update(subscription_channel)
                .where(subscription_channel.c.sub_id == ch.sub_id)
                .values(
                    status="error",
                    attempts=attempts,
                    next_attempt=self.clock() + wait,
                    error=problem,
                )
            )
            if ch.status != "error":
                _set_status(s, ch.sub_id, "error", problem)

        self.store.write(work)
        log.info("notifications: %s; retrying in %.0f s", problem, wait)


def _wants_sending(ch: Any, now: float) -> bool:
    if not ch.handshake_done or ch.delivered < ch.events:
        return True
    return bool(ch.heartbeat) and ch.status == "active" and now - ch.last_sent >= ch.heartbeat


def event_items(
    s: Session, rows: Iterable[Any], content: str, guard: Guard | None
) -> list[EventItem]:
    """The events as they go out: the focus (and its content, for full-resource) only where
    ``guard`` lets the subscriber read that version now."""
    rows = list(rows)
    bodies = versions(s, [(r.res_type, r.res_id, r.version) for r in rows])
    items = []
    for row in rows:
        body = bodies.get((row.res_type, row.res_id, row.version))
        seen = body is not None and (guard is None or guard.visible(row.res_type, body, "r"))
        items.append(
            EventItem(
                number=int(row.number),
                at=float(row.at),
                focus=f"{row.res_type}/{row.res_id}" if seen and content != "empty" else None,
                version=int(row.version),
                created=bool(row.created),
                resource=body if seen and content == "full-resource" else None,
                context=tuple(orjson.loads(row.context)) if seen and row.context else (),
            )
        )
    return items


def versions(s: Session, keys: Sequence[tuple[str, str, int]]) -> dict[Key, dict[str, Any]]:
    """The stored versions named by (type, id, version), read in one query per chunk without
    the guard: the callers judge each with the guard that matters (the subscriber's, or the
    caller's for $events). Deleted versions are left out: nothing to announce."""
    found: dict[Key, dict[str, Any]] = {}
    wanted = list(dict.fromkeys(keys))
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        # by the resource's row key, then (rid, version): both unique indexes
        rids = {
            (r.res_type, r.res_id): r.rid
            for r in s.conn.execute(
                select(resource.c.rid, resource.c.res_type, resource.c.res_id).where(
                    pairs_in(
                        resource.c.res_type,
                        resource.c.res_id,
                        dict.fromkeys((t, i) for t, i, _ in chunk),
                    )
                )
            )
        }
        named = {(rids[(t, i)], v): (t, i, v) for t, i, v in chunk if (t, i) in rids}
        if not named:
            continue
        rows = s.conn.execute(
            select(resource_version.c.rid, resource_version.c.version, version_content())
            .where(pairs_in(resource_version.c.rid, resource_version.c.version, named))
            .where(resource_version.c.deleted.is_(False))
        )
        for r in rows:
            if r.content:
                found[named[(r.rid, int(r.version))]] = orjson.loads(r.content)
    return found


def _active_teams(s: Session, entries: dict[str, Any], members: list[str]) -> list[str]:
    """The active CareTeams of the encounter's patient, those with one of ``members`` if
    given, as references."""
    patients = [
        f"{e.target_type}/{e.target_id}"
        for e in entries.get("patient", ())
        if getattr(e, "target_type", None) == "Patient"
    ]
    found = []
    for patient in patients:
        for team in s.find("CareTeam", [("patient", patient), ("status", "active")]):
            body = team.json()
            names = {
                str((p.get("member") or {}).get("reference") or "")
                for p in body.get("participant") or ()
            }
            if not members or any(m in names for v in members for m in v.split(",")):
                found.append(team.reference)
    return found


def _set_status(s: Session, sid: str, status: str, error: str | None) -> None:
    """The Subscription resource shows the channel's status (and R4's ``error`` text)."""
    try:
        current = s.read("Subscription", sid).json()
    except Exception:
        return
    if current.get("status") == status and current.get("error") == error:
        return
    current["status"] = status
    if error:
        current["error"] = error
    else:
        current.pop("error", None)
    token = SERVER_WRITE.set(True)
    try:
        with guarded(None):
            s.update("Subscription", sid, current)
    finally:
        SERVER_WRITE.reset(token)
