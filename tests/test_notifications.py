"""Topic-based Subscriptions (Subscriptions R5 Backport IG, STU 1.1, on R4) end to end, on SQLite
and PostgreSQL: a real server in a subprocess with access control on, and a real HTTP receiver.

- A Subscription that cannot be served is refused with an OperationOutcome naming the element,
  and nothing is stored.
- The handshake makes a subscription active; heartbeats come when nothing else does.
- A receiver that is down for a while, across a restart of the server, then back, receives
  every event exactly once in order of event number after de-duplication.
- A subscriber without the patient's consent never receives restricted content (a safety
  Flag), while the clinic the consent permits does (the positive control).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey

from takamul.coordination.referrals import TASK_CODE_SYSTEM
from takamul.equity.outreach import OUTREACH_SYSTEM
from takamul.mentalhealth.instruments import QUESTIONNAIRE_BASE
from takamul.notifications.subscriptions import BACKPORT
from takamul.notifications.topics import TOPIC_BASE
from takamul.security.service import Security
from tests.server import free_port, postgres_database, running_server

CENTRE, CLINIC, OTHER = "nt-centre", "nt-clinic", "nt-other"
LOINC = "http://loinc.org"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PHQ9_ITEMS = ("44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5",
              "44253-3", "44260-8")  # fmt: skip
ANSWERS = ("LA6568-5", "LA6569-3", "LA6570-1", "LA6571-9")  # LOINC LL358-3, scored 0..3
ENV = {
    "TAKAMUL_AUTH": "true",
    "TAKAMUL_RATE_LIMIT": "10000",
    "TAKAMUL_RATE_BURST": "10000",
    "TAKAMUL_NOTIFY_POLL": "0.1",
    "TAKAMUL_NOTIFY_BACKOFF_MAX": "1",
    "TAKAMUL_NOTIFY_LEASE": "2",
}


class Receiver:
    """A subscriber's endpoint: records every notification Bundle it is sent, answers 200;
    can be taken down (the port refuses connections) and brought back on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bundles: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.bundles.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def of(self, sid: str, kind: str | None = None) -> list[dict[str, Any]]:
        """The status Parameters of the notifications about ``sid`` (of ``kind``)."""
        with self._lock:
            bundles = list(self.bundles)
        out = []
        for bundle in bundles:
            status = bundle["entry"][0]["resource"]
            values = {p["name"]: p for p in status["parameter"]}
            ref = values["subscription"]["valueReference"]["reference"]
            if ref.endswith(f"/Subscription/{sid}") and (
                kind is None or values["type"]["valueCode"] == kind
            ):
                out.append({"status": status, "bundle": bundle})
        return out

    def numbers(self, sid: str) -> list[int]:
        """Event numbers in the order they arrived (duplicates kept)."""
        return [
            int(part["valueString"])
            for n in self.of(sid, "event-notification")
            for p in n["status"]["parameter"]
            if p["name"] == "notification-event"
            for part in p["part"]
            if part["name"] == "event-number"
        ]


@dataclass
class Site:
    db: str
    base: str = ""
    security: Security | None = None
    clients: dict[str, httpx.Client] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    def connect(self, base: str) -> None:
        """Clients of the three facilities and the ministry for a (re)started server."""
        self.base = base
        self.security = self.security or Security.open(self.db)
        for name, facility in (("centre", CENTRE), ("clinic", CLINIC), ("other", OTHER),
                               ("ministry", None)):  # fmt: skip
            client_id = f"nt-{name}"
            if self.security.clients.get(client_id) is None:
                key = ECKey.generate_key("P-384")
                jwks = {"keys": [{**key.as_dict(private=False), "kid": key.thumbprint()}]}
                role = "administrator" if facility is None else "clinician"
                self.security.clients.add(
                    client_id, name, jwks, "system/*.cruds", facility, (role,)
                )
            token = self.security.tokens.mint(client_id, "system/*.cruds", base)
            self.clients[name] = httpx.Client(
                base_url=base, timeout=60, headers={"Authorization": f"Bearer {token}"}
            )


def ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


def wait_for(what: Callable[[], Any], seconds: float = 30.0) -> Any:
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds} s: {what}")


def _database(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if kind == "sqlite":
        path: Path = tmp_path_factory.mktemp("notify") / "takamul.sqlite"
        yield f"sqlite:///{path}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _database(request.param, tmp_path_factory)


@pytest.fixture(params=["sqlite", "postgresql"])
def own_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A store of the test's own, for a test that stops and starts its server."""
    yield from _database(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def site(db: str) -> Iterator[Site]:
    """A running server, seeded: the centre's patient, treated in collaborative care by the
    clinic, whose Consent denies mental-health data (PSY) to all but the clinic."""
    s = Site(db)
    with running_server(db, ENV) as base:
        s.connect(base)
        _seed(s)
        yield s


def _seed(s: Site) -> None:
    admin = s.clients["ministry"]
    for org in (CENTRE, CLINIC, OTHER):
        ok(admin.put(f"/Organization/{org}", json={"resourceType": "Organization", "id": org}))
    patient = ok(
        admin.post(
            "/Patient",
            json={
                "resourceType": "Patient",
                "name": [{"given": ["نرگس"], "family": "رضایی"}],
                "managingOrganization": {"reference": f"Organization/{CENTRE}"},
            },
        )
    )["id"]
    s.ids["patient"] = patient
    ok(
        admin.post(
            "/EpisodeOfCare",
            json={
                "resourceType": "EpisodeOfCare",
                "status": "active",
                "patient": {"reference": f"Patient/{patient}"},
                "managingOrganization": {"reference": f"Organization/{CLINIC}"},
            },
        )
    )
    ok(admin.post("/Consent", json=_consent(patient)))
    s.ids["note"] = ok(
        admin.post(
            "/DocumentReference",
            json={
                "resourceType": "DocumentReference",
                "status": "current",
                "subject": {"reference": f"Patient/{patient}"},
                "content": [{"attachment": {"contentType": "text/plain", "title": "پاسخ ارجاع"}}],
            },
        )
    )["id"]


def _consent(patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "provision": {
            "type": "deny",
            "securityLabel": [{"system": ACT, "code": "PSY"}],
            "provision": [
                {
                    "type": "permit",
                    "actor": [
                        {
                            "role": {"text": "treating team"},
                            "reference": {"reference": f"Organization/{CLINIC}"},
                        }
                    ],
                }
            ],
        },
    }


def subscription(
    topic: str, endpoint: str, filters: tuple[str, ...] = (), **channel: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Subscription",
        "meta": {"profile": [BACKPORT + "backport-subscription"]},
        "status": "requested",
        "reason": "اطلاع‌رسانی ارجاع‌ها",
        "criteria": TOPIC_BASE + topic,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "header": ["X-Receiver-Key: narges-1"],
            "payload": "application/fhir+json",
            "_payload": {
                "extension": [
                    {
                        "url": BACKPORT + "backport-payload-content",
                        "valueCode": channel.get("content", "full-resource"),
                    }
                ]
            },
        },
    }
    if filters:
        body["_criteria"] = {
            "extension": [
                {"url": BACKPORT + "backport-filter-criteria", "valueString": f} for f in filters
            ]
        }
    if "heartbeat" in channel:
        body["channel"]["extension"] = [
            {
                "url": BACKPORT + "backport-heartbeat-period",
                "valueUnsignedInt": channel["heartbeat"],
            }
        ]
    return body


def refer(s: Site) -> str:
    """The centre refers its patient to the clinic: a ServiceRequest and its Task."""
    centre = s.clients["centre"]
    request = ok(
        centre.post(
            "/ServiceRequest",
            json={
                "resourceType": "ServiceRequest",
                "status": "active",
                "intent": "order",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "3457005"}]},
                "subject": {"reference": f"Patient/{s.ids['patient']}"},
                "requester": {"reference": f"Organization/{CENTRE}"},
                "performer": [{"reference": f"Organization/{CLINIC}"}],
            },
        )
    )["id"]
    task = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "code": {"coding": [{"system": TASK_CODE_SYSTEM, "code": "fulfill"}]},
        "focus": {"reference": f"ServiceRequest/{request}"},
        "for": {"reference": f"Patient/{s.ids['patient']}"},
        "requester": {"reference": f"Organization/{CENTRE}"},
        "owner": {"reference": f"Organization/{CLINIC}"},
    }
    return str(ok(centre.post("/Task", json=task))["id"])


def accept(s: Site, task_id: str) -> None:
    clinic = s.clients["clinic"]
    task = ok(clinic.get(f"/Task/{task_id}"))
    ok(clinic.put(f"/Task/{task_id}", json={**task, "status": "accepted"}))


def subscribe(s: Site, who: str, body: dict[str, Any]) -> str:
    return str(ok(s.clients[who].post("/Subscription", json=body))["id"])


def status_of(s: Site, who: str, sid: str) -> dict[str, Any]:
    bundle = ok(s.clients[who].get(f"/Subscription/{sid}/$status"))
    params = bundle["entry"][0]["resource"]["parameter"]
    return {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in params}


# -- refused subscriptions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"criteria": "Task?status=requested"}, "Subscription.criteria"),
        ({"criteria": TOPIC_BASE + "no-such-topic"}, "Subscription.criteria"),
        (
            {"_criteria": {"extension": [{"url": BACKPORT + "backport-filter-criteria",
                                          "valueString": "Task?subject=Patient/1"}]}},
            "Subscription._criteria.extension",
        ),
        (
            {"_criteria": {"extension": [{"url": BACKPORT + "backport-filter-criteria",
                                          "valueString": "Encounter?patient=Patient/1"}]}},
            "Subscription._criteria.extension",
        ),
        ({"channel": {"type": "websocket"}}, "Subscription.channel.type"),
        ({"channel": {"type": "rest-hook", "endpoint": "ftp://x"}},
         "Subscription.channel.endpoint"),
    ],
)  # fmt: skip
def test_a_subscription_that_cannot_be_served_is_refused(
    site: Site, change: dict[str, Any], where: str
) -> None:
    marker = uuid.uuid4().hex
    body = {**subscription("referral-task", "http://127.0.0.1:9/x"), "reason": marker, **change}
    r = site.clients["centre"].post("/Subscription", json=body)
    assert r.status_code == 422, r.text
    issue = r.json()["issue"][0]
    assert issue["expression"] == [where], issue
    found = ok(site.clients["ministry"].get("/Subscription", params={"_count": "200"}))
    assert marker not in json.dumps(found)  # nothing was stored


# -- handshake, events, heartbeat -------------------------------------------------------


def test_handshake_events_and_heartbeat(site: Site) -> None:
    receiver = Receiver()
    receiver.start()
    try:
        sid = subscribe(
            site,
            "clinic",
            subscription("referral-task", receiver.url, (f"Task?owner=Organization/{CLINIC}",),
                         heartbeat=1),
        )  # fmt: skip
        wait_for(lambda: receiver.of(sid, "handshake"))
        wait_for(lambda: ok(site.clients["clinic"].get(f"/Subscription/{sid}"))["status"]
                 == "active")  # fmt: skip
        task_id = refer(site)
        accept(site, task_id)
        wait_for(lambda: receiver.numbers(sid) == [1, 2] or len(receiver.numbers(sid)) >= 2)
        assert receiver.numbers(sid)[:2] == [1, 2]
        first = receiver.of(sid, "event-notification")[0]["bundle"]
        assert first["type"] == "history"
        assert first["entry"][1]["resource"]["id"] == task_id
        assert first["entry"][1]["resource"]["status"] == "requested"
        assert first["entry"][1]["request"]["method"] == "POST"
        wait_for(lambda: receiver.of(sid, "heartbeat"), 10)
        status = status_of(site, "clinic", sid)
        assert status["status"] == "active" and status["type"] == "query-status"
        assert status["events-since-subscription-start"] == "2"
        events = ok(site.clients["clinic"].get(f"/Subscription/{sid}/$events",
                                               params={"eventsSinceNumber": "2"}))  # fmt: skip
        assert [e["resource"]["status"] for e in events["entry"][1:]] == ["accepted"]
    finally:
        receiver.stop()


def test_a_filter_keeps_other_facilities_referrals_out(site: Site) -> None:
    receiver = Receiver()
    receiver.start()
    try:
        sid = subscribe(
            site,
            "other",
            subscription("referral-task", receiver.url, (f"Task?owner=Organization/{OTHER}",)),
        )
        wait_for(lambda: receiver.of(sid, "handshake"))
        refer(site)
        time.sleep(2)
        assert receiver.numbers(sid) == []
        assert status_of(site, "other", sid)["events-since-subscription-start"] == "0"
        # and only the subscriber (and administrators) read a Subscription with its headers
    finally:
        receiver.stop()


# -- down, restart, back: exactly once, in order -----------------------------------------


def test_down_across_a_restart_then_back_gets_every_event_once_in_order(own_db: str) -> None:
    receiver = Receiver()
    receiver.start()
    site = Site(own_db)
    with running_server(own_db, ENV) as base:
        site.connect(base)
        _seed(site)
        sid = subscribe(
            site,
            "centre",
            subscription("referral-task", receiver.url, (f"Task?requester=Organization/{CENTRE}",),
                         content="id-only"),
        )  # fmt: skip
        wait_for(lambda: receiver.of(sid, "handshake"))
        tasks = [refer(site) for _ in range(3)]
        wait_for(lambda: len(set(receiver.numbers(sid))) >= 3)
        receiver.stop()  # the subscriber goes down
        tasks += [refer(site) for _ in range(4)]
        for task_id in tasks[:2]:
            accept(site, task_id)
        wait_for(
            lambda: ok(site.clients["centre"].get(f"/Subscription/{sid}"))["status"] == "error"
        )
    # the server is stopped and started again while the subscriber is still down
    with running_server(own_db, ENV) as base:
        site.connect(base)
        tasks += [refer(site) for _ in range(3)]
        receiver.start()  # back, on the same port
        total = 3 + 4 + 2 + 3
        wait_for(lambda: len(set(receiver.numbers(sid))) >= total, 60)
        arrived = receiver.numbers(sid)
        deduplicated = list(dict.fromkeys(arrived))
        assert deduplicated == list(range(1, total + 1)), arrived
        # acknowledged once the last delivery's answer is recorded
        status = wait_for(
            lambda: (st := status_of(site, "centre", sid))["status"] == "active" and st
        )
        assert status["events-since-subscription-start"] == str(total)
        events = ok(site.clients["centre"].get(f"/Subscription/{sid}/$events"))
        numbers = [
            part["valueString"]
            for p in events["entry"][0]["resource"]["parameter"]
            if p["name"] == "notification-event"
            for part in p["part"]
            if part["name"] == "event-number"
        ]
        assert numbers == [str(n) for n in range(1, total + 1)]
        # id-only: references to what changed, no content
        assert len(events["entry"]) == 1 + total
        assert all("resource" not in e for e in events["entry"][1:])
        receiver.stop()


# -- consent ---------------------------------------------------------------------------


def phq9(patient: str, answers: list[int]) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": QUESTIONNAIRE_BASE + "phq-9",
        "subject": {"reference": f"Patient/{patient}"},
        "authored": "2026-11-02T10:00:00+03:00",
        "item": [
            {"linkId": link, "answer": [{"valueCoding": {"system": LOINC, "code": ANSWERS[a]}}]}
            for link, a in zip(PHQ9_ITEMS, answers, strict=True)
        ],
    }


def test_no_restricted_content_without_the_consent(site: Site) -> None:
    receiver = Receiver()
    receiver.start()
    try:
        patient = site.ids["patient"]
        flt = (f"Flag?patient=Patient/{patient}",)
        centre = subscribe(site, "centre", subscription("safety-alert", receiver.url, flt))
        clinic = subscribe(site, "clinic", subscription("safety-alert", receiver.url, flt))
        wait_for(lambda: receiver.of(centre, "handshake"))
        wait_for(lambda: receiver.of(clinic, "handshake"))
        screening = phq9(patient, [2, 2, 1, 1, 1, 1, 1, 1, 2])  # item 9 positive
        ok(site.clients["clinic"].post("/QuestionnaireResponse", json=screening))
        # the clinic, whom the consent permits, is told: the positive control
        wait_for(lambda: receiver.numbers(clinic) == [1])
        flag = receiver.of(clinic, "event-notification")[0]["bundle"]["entry"][1]["resource"]
        assert flag["resourceType"] == "Flag"
        assert any(s["code"] == "PSY" for s in flag["meta"]["security"])
        time.sleep(2)  # the centre's notification would have come by now
        assert receiver.numbers(centre) == []
        assert flag["id"] not in json.dumps(receiver.of(centre))
        assert status_of(site, "centre", centre)["events-since-subscription-start"] == "0"
        events = ok(site.clients["centre"].get(f"/Subscription/{centre}/$events"))
        assert flag["id"] not in json.dumps(events)
        # the clinic's own $events, read by the centre: not its subscription to read
        r = site.clients["centre"].get(f"/Subscription/{clinic}/$events")
        assert r.status_code == 404 or flag["id"] not in r.text
    finally:
        receiver.stop()


def test_the_capability_statement_lists_the_topics_and_operations(site: Site) -> None:
    capability = ok(httpx.get(site.base + "/metadata"))
    entry = next(r for r in capability["rest"][0]["resource"] if r["type"] == "Subscription")
    topics = {e["valueCanonical"] for e in entry["extension"]}
    assert TOPIC_BASE + "referral-task" in topics and TOPIC_BASE + "safety-alert" in topics
    assert {o["name"] for o in entry["operation"]} == {"status", "events"}


def test_encounters_of_patients_on_a_care_team(site: Site) -> None:
    """The clinic on the patient's care team hears of the patient's encounters elsewhere; an
    encounter of a patient with no care team is no event of the topic."""
    receiver = Receiver()
    receiver.start()
    try:
        admin, centre = site.clients["ministry"], site.clients["centre"]
        patient = site.ids["patient"]
        team = ok(
            admin.post(
                "/CareTeam",
                json={
                    "resourceType": "CareTeam",
                    "status": "active",
                    "subject": {"reference": f"Patient/{patient}"},
                    "participant": [{"member": {"reference": f"Organization/{CLINIC}"}}],
                },
            )
        )["id"]
        lonely = ok(
            centre.post(
                "/Patient",
                json={
                    "resourceType": "Patient",
                    "name": [{"given": ["Omar"]}],
                    "managingOrganization": {"reference": f"Organization/{CENTRE}"},
                },
            )
        )["id"]
        sid = subscribe(
            site,
            "clinic",
            subscription(
                "care-team-encounter",
                receiver.url,
                (f"Encounter?care-team-member=Organization/{CLINIC}",),
                content="id-only",
            ),
        )
        wait_for(lambda: receiver.of(sid, "handshake"))
        for who in (lonely, patient):
            ok(
                centre.post(
                    "/Encounter",
                    json={
                        "resourceType": "Encounter",
                        "status": "finished",
                        "class": {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                            "code": "AMB",
                        },
                        "subject": {"reference": f"Patient/{who}"},
                        "serviceProvider": {"reference": f"Organization/{CENTRE}"},
                    },
                )
            )
        wait_for(lambda: receiver.numbers(sid) == [1])
        status = receiver.of(sid, "event-notification")[0]["status"]
        event = next(p for p in status["parameter"] if p["name"] == "notification-event")
        context = [p["valueReference"]["reference"] for p in event["part"]
                   if p["name"] == "additional-context"]  # fmt: skip
        assert context == [f"{site.base}/CareTeam/{team}"]
        time.sleep(1)
        assert receiver.numbers(sid) == [1]  # the patient with no care team made no event
    finally:
        receiver.stop()


def test_care_gaps_on_the_worklist(site: Site) -> None:
    receiver = Receiver()
    receiver.start()
    try:
        centre = site.clients["centre"]
        sid = subscribe(
            site,
            "centre",
            subscription("care-gap", receiver.url, (f"Task?owner=Organization/{CENTRE}",)),
        )
        wait_for(lambda: receiver.of(sid, "handshake"))
        gap = ok(
            centre.post(
                "/Task",
                json={
                    "resourceType": "Task",
                    "status": "requested",
                    "intent": "plan",
                    "code": {"coding": [{"system": OUTREACH_SYSTEM, "code": "htn-follow-up"}]},
                    "for": {"reference": f"Patient/{site.ids['patient']}"},
                    "owner": {"reference": f"Organization/{CENTRE}"},
                },
            )
        )["id"]
        wait_for(lambda: receiver.numbers(sid) == [1])
        bundle = receiver.of(sid, "event-notification")[0]["bundle"]
        assert bundle["entry"][1]["resource"]["id"] == gap
    finally:
        receiver.stop()


def test_only_the_subscriber_sees_its_subscription(site: Site) -> None:
    """A Subscription holds the receiver's headers (often a secret) and its events tell what
    happened to whom: another facility's client finds it on no path; an administrator does."""
    sid = subscribe(site, "centre", subscription("referral-task", "http://127.0.0.1:9/hook"))
    other, admin = site.clients["other"], site.clients["ministry"]
    assert ok(site.clients["centre"].get(f"/Subscription/{sid}"))["id"] == sid
    assert ok(admin.get(f"/Subscription/{sid}"))["id"] == sid
    for path in (f"/Subscription/{sid}", f"/Subscription/{sid}/_history/1",
                 f"/Subscription/{sid}/$status", f"/Subscription/{sid}/$events"):  # fmt: skip
        r = other.get(path)
        assert r.status_code == 404, (path, r.text)
    for path, params in (
        ("/Subscription", {"_id": sid}),
        ("/Subscription", {"_count": "500"}),
        ("/Subscription/_history", {"_count": "500"}),
        (f"/Subscription/{sid}/_history", {}),
        ("/_history", {"_count": "500"}),
    ):
        r = other.get(path, params=params)
        assert r.status_code in (200, 404), r.text
        if r.status_code == 200:
            found = [e.get("resource", {}).get("id") for e in r.json().get("entry", [])]
            assert sid not in found and sid not in json.dumps(r.json().get("entry", [])), path
    counted = ok(other.get("/Subscription", params={"_id": sid, "_summary": "count"}))
    assert counted["total"] == 0
    body = ok(admin.get(f"/Subscription/{sid}"))
    assert other.put(f"/Subscription/{sid}", json={**body, "status": "off"}).status_code in (
        403,
        404,
    )
    assert other.delete(f"/Subscription/{sid}").status_code in (403, 404)
    # still there and not switched off: neither write took (its version may still move on:
    # the dispatcher records the failed handshake to port 9 as status error meanwhile)
    after = ok(admin.get(f"/Subscription/{sid}"))
    assert after["status"] != "off"
    history = ok(admin.get(f"/Subscription/{sid}/_history"))
    assert all(e["resource"].get("status") != "off" for e in history["entry"] if "resource" in e)
