"""HTTP routes of notifications: ``Subscription/{id}/$status`` and ``Subscription/{id}/$events``
(Subscriptions R5 Backport IG, STU 1.1), GET or POST; the Subscription itself is created,
changed and deleted through the ordinary FHIR interactions (its write hook checks it).

Both read the Subscription under the request's guard first (404 for one the requester may not
read), and ``$events`` gives each event's content only where the requester's guard allows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from takamul.notifications.service import Notifications
from takamul.notifications.subscriptions import BACKPORT
from takamul.notifications.topics import TOPICS
from takamul.rest import interactions as ix
from takamul.security.context import AccessContext
from takamul.security.service import Security

__all__ = ["LearnBase", "add_notification_routes", "advertise", "still_active"]

FHIR_JSON = "application/fhir+json"
# the backport's operations (STU 1.1) and how an R4 server lists the topics it offers
BACKPORT_OPERATIONS = "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/"
TOPIC_CANONICAL = BACKPORT + "capabilitystatement-subscriptiontopic-canonical"


def advertise(capability: dict[str, Any]) -> dict[str, Any]:
    """The CapabilityStatement with the topics and the $status and $events operations on the
    Subscription resource."""
    for rest in capability.get("rest") or ():
        for entry in rest.get("resource") or ():
            if entry.get("type") != "Subscription":
                continue
            entry["extension"] = [
                {"url": TOPIC_CANONICAL, "valueCanonical": t.url} for t in TOPICS.values()
            ]
            entry["supportedProfile"] = [BACKPORT + "backport-subscription"]
            entry["operation"] = [
                {"name": name, "definition": BACKPORT_OPERATIONS + f"backport-subscription-{name}"}
                for name in ("status", "events")
            ]
    return capability


def add_notification_routes(
    app: FastAPI, notifications: Notifications, base_of: Callable[[Request], str]
) -> None:
    """Add the operations (before the generic /fhir routes, so that they match first)."""

    async def params_of(request: Request) -> list[tuple[str, str]]:
        params = list(request.query_params.multi_items())
        if request.method == "POST":
            raw = await request.body()
            if raw.strip():
                params += ix.operation_parameters(ix.parse_json(raw))
        return params

    async def answer(work: Callable[[], dict[str, Any]]) -> Response:
        return Response(orjson.dumps(await run_in_threadpool(work)), 200, media_type=FHIR_JSON)

    async def status(sid: str, request: Request) -> Response:
        base = base_of(request)

        def work() -> dict[str, Any]:
            with notifications.store.reading() as s:
                return notifications.status(s, sid, base)

        return await answer(work)

    async def events(sid: str, request: Request) -> Response:
        base = base_of(request)
        params = await params_of(request)

        def work() -> dict[str, Any]:
            with notifications.store.reading() as s:
                return notifications.events(s, sid, base, params)

        return await answer(work)

    for method in ("GET", "POST"):  # R4 operations.html: every operation may be POSTed
        for name, route in (("status", status), ("events", events)):
            app.add_api_route(
                f"/fhir/Subscription/{{sid}}/${name}",
                route,
                methods=[method],
                operation_id=f"subscription_{name}_{method.lower()}",
            )


class LearnBase:
    """Tells the notifications service the server's FHIR base from the first request when no
    ``TAKAMUL_BASE_URL`` is set: notifications are sent from a thread with no request to ask
    (a pure ASGI wrapper, so it costs the read path nothing once learnt)."""

    def __init__(self, app: ASGIApp, notifications: Notifications) -> None:
        self.app = app
        self.notifications = notifications

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.notifications.base_url is None and scope["type"] == "http":
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if host and str(scope.get("path", "")).startswith("/fhir"):
                self.notifications.base_url = f"{scope.get('scheme', 'http')}://{host}/fhir"
        await self.app(scope, receive, send)


def still_active(security: Security) -> Callable[[AccessContext], bool]:
    """Whether a subscriber's client or login is still enabled: a disabled one is sent nothing
    more (its subscription goes to error until it is enabled again)."""

    def check(access: AccessContext) -> bool:
        if access.client_id:
            client = security.clients.get(access.client_id)
            return client is not None and client.active
        if access.user:
            user = security.users.get(access.user)
            return user is not None and user.active
        return True

    return check
