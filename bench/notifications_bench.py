"""Notification delivery (issue 16): p95 <= 1 s from commit to the subscriber at 100 events/s,
on SQLite and PostgreSQL.

    python bench/notifications_bench.py [--db sqlite|postgresql|both] [--rate 100] [--seconds 60]

A real server (``takamul serve``, access control and the audit log on, as production runs) on
a fresh store; a real subscriber endpoint (an HTTP server in this process); one Subscription
to the referral-task topic with ``full-resource`` content, filtered to the receiving clinic.
Facility clients then make referral Tasks over HTTP at ``--rate`` per second (paced, from four
threads) for ``--seconds``. Each event's delay is the time the notification arrived minus the
Task version's ``meta.lastUpdated`` (the server stamps it in the writing transaction; one
machine, one clock). Writes ``bench/results/<date>-vm-notifications-<db>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from joserfc.jwk import ECKey

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from takamul.notifications.subscriptions import BACKPORT  # noqa: E402
from takamul.notifications.topics import TOPIC_BASE  # noqa: E402
from takamul.security.service import Security  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "bench" / "work"
CENTRE, CLINIC = "bench-centre", "bench-clinic"
WRITERS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def database(kind: str) -> str:
    if kind == "sqlite":
        WORK.mkdir(parents=True, exist_ok=True)
        for p in WORK.glob("notifications.sqlite*"):
            p.unlink()
        return f"sqlite:///{WORK / 'notifications.sqlite'}"
    import psycopg

    name = "takamul_bench_notifications"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


class Receiver:
    """The subscriber: the arrival time of every event, by the Task version it carries."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrivals: dict[str, float] = {}  # "Task/id/version" -> arrival (epoch s)
        self.numbers: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                now = time.time()
                receiver.record(json.loads(body), now)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def record(self, bundle: dict[str, Any], now: float) -> None:
        with self.lock:
            for entry in bundle["entry"][1:]:
                task = entry.get("resource") or {}
                key = f"Task/{task.get('id')}/{task.get('meta', {}).get('versionId')}"
                self.arrivals.setdefault(key, now)
            for p in bundle["entry"][0]["resource"]["parameter"]:
                if p["name"] == "notification-event":
                    self.numbers.extend(
                        int(x["valueString"]) for x in p["part"] if x["name"] == "event-number"
                    )


def serve(db: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "TAKAMUL_AUTH": "true", "TAKAMUL_RATE_LIMIT": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "takamul.cli", "serve", "--db", db, "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/fhir"
    while True:
        try:
            if httpx.get(f"{base}/metadata", timeout=5).status_code == 200:
                return server, base
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            raise SystemExit("the server exited")
        time.sleep(0.5)


def client(security: Security, base: str, facility: str) -> httpx.Client:
    client_id = f"{facility}-{uuid.uuid4().hex[:6]}"
    key = ECKey.generate_key("P-384")
    jwks = {"keys": [{**key.as_dict(private=False), "kid": key.thumbprint()}]}
    security.clients.add(client_id, facility, jwks, "system/*.cruds", facility, ("clinician",))
    token = security.tokens.mint(client_id, "system/*.cruds", base)
    return httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {token}"})


def seed(centre: httpx.Client, admin: httpx.Client) -> tuple[str, str]:
    for org in (CENTRE, CLINIC):
        admin.put(f"/Organization/{org}", json={"resourceType": "Organization", "id": org})
    patient = centre.post(
        "/Patient",
        json={
            "resourceType": "Patient",
            "name": [{"given": ["Layla"], "family": "Haddad"}],
            "managingOrganization": {"reference": f"Organization/{CENTRE}"},
        },
    ).json()["id"]
    request = centre.post(
        "/ServiceRequest",
        json={
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "3457005"}]},
            "subject": {"reference": f"Patient/{patient}"},
            "requester": {"reference": f"Organization/{CENTRE}"},
            "performer": [{"reference": f"Organization/{CLINIC}"}],
        },
    ).json()["id"]
    return patient, request


def subscribe(clinic: httpx.Client, endpoint: str) -> str:
    body = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "benchmark",
        "criteria": TOPIC_BASE + "referral-task",
        "_criteria": {
            "extension": [
                {
                    "url": BACKPORT + "backport-filter-criteria",
                    "valueString": f"Task?owner=Organization/{CLINIC}",
                }
            ]
        },
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {
                "extension": [
                    {"url": BACKPORT + "backport-payload-content", "valueCode": "full-resource"}
                ]
            },
        },
    }
    r = clinic.post("/Subscription", json=body)
    r.raise_for_status()
    sid = str(r.json()["id"])
    deadline = time.time() + 30
    while clinic.get(f"/Subscription/{sid}").json()["status"] != "active":
        if time.time() > deadline:
            raise SystemExit("the subscription did not become active")
        time.sleep(0.2)
    return sid


def task(patient: str, request: str) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "focus": {"reference": f"ServiceRequest/{request}"},
        "for": {"reference": f"Patient/{patient}"},
        "requester": {"reference": f"Organization/{CENTRE}"},
        "owner": {"reference": f"Organization/{CLINIC}"},
    }


def load(
    clients: list[httpx.Client], body: dict[str, Any], rate: float, seconds: float, batch: int
) -> dict[str, float]:
    """Referral Tasks at ``rate`` per second in all, ``batch`` to a transaction Bundle; the
    commit stamp of each."""
    commits: dict[str, float] = {}
    lock = threading.Lock()
    start = time.time() + 0.5
    per_writer = rate / batch / len(clients)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": body, "request": {"method": "POST", "url": "Task"}}] * batch,
    }

    def writer(i: int, c: httpx.Client) -> None:
        n = 0
        while True:
            due = start + (n + i / len(clients)) / per_writer
            if due > start + seconds:
                return
            time.sleep(max(0.0, due - time.time()))
            if batch == 1:
                r = c.post("/Task", json=body)
                r.raise_for_status()
                made = [r.json()]
            else:
                r = c.post("", json=bundle)
                r.raise_for_status()
                made = [e["resource"] for e in r.json()["entry"]]
            with lock:
                for task in made:
                    stamp = datetime.fromisoformat(task["meta"]["lastUpdated"]).timestamp()
                    commits[f"Task/{task['id']}/{task['meta']['versionId']}"] = stamp
            n += 1

    threads = [threading.Thread(target=writer, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return commits


def run(kind: str, rate: float, seconds: float, batch: int) -> dict[str, str]:
    db = database(kind)
    server, base = serve(db)
    try:
        security = Security.open(db)
        admin_id = f"admin-{uuid.uuid4().hex[:6]}"
        key = ECKey.generate_key("P-384")
        jwks = {"keys": [{**key.as_dict(private=False), "kid": key.thumbprint()}]}
        security.clients.add(admin_id, "admin", jwks, "system/*.cruds", None, ("administrator",))
        admin = httpx.Client(
            base_url=base,
            timeout=60,
            headers={
                "Authorization": f"Bearer {security.tokens.mint(admin_id, 'system/*.cruds', base)}"
            },
        )
        centre = [client(security, base, CENTRE) for _ in range(WRITERS)]
        clinic = client(security, base, CLINIC)
        patient, request = seed(centre[0], admin)
        receiver = Receiver()
        subscribe(clinic, f"http://127.0.0.1:{receiver.port}/hook")
        began = time.time()
        commits = load(centre, task(patient, request), rate, seconds, batch)
        elapsed = time.time() - began
        deadline = time.time() + 60
        while len(receiver.arrivals) < len(commits) and time.time() < deadline:
            time.sleep(0.2)
        delays = [receiver.arrivals[k] - t for k, t in commits.items() if k in receiver.arrivals]
        numbers = list(dict.fromkeys(receiver.numbers))
        in_order = numbers == list(range(1, len(numbers) + 1))
    finally:
        server.terminate()
        server.wait(30)
    return {
        "referral Tasks written (events)": f"{len(commits):,} in {elapsed:.1f} s "
        f"({len(commits) / elapsed:.1f} per second)",
        "events received": f"{len(delays):,} (every event number once, in order after "
        f"de-duplication: {'yes' if in_order and len(numbers) == len(commits) else 'NO'})",
        "delay from commit, p50 / p95 / p99 / max (ms)": " / ".join(
            f"{pct(delays, q) * 1000:.0f}" for q in (0.5, 0.95, 0.99, 1.0)
        )
        if delays
        else "none received",
    }


def write(kind: str, args: argparse.Namespace, figures: dict[str, str]) -> Path:
    now = datetime.now(UTC)
    load_avg = os.getloadavg()
    lines = [
        f"# Notifications: delivery from commit to the subscriber ({kind})",
        "",
        f"- date: {now:%Y-%m-%d %H:%M} UTC; machine: vm, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average at the end {load_avg[0]:.1f} / "
        f"{load_avg[1]:.1f} / {load_avg[2]:.1f} (other work shares the machine)",
        "- one `takamul serve` process, access control and audit on; the subscriber is an HTTP "
        "server in the benchmark's process; one Subscription (topic referral-task, "
        "full-resource, filtered by owner); referral Tasks POSTed by 4 facility clients, paced "
        f"({args.batch} per request" + (", as a transaction Bundle)" if args.batch > 1 else ")"),
        "- target: notification delivery p95 <= 1 s from commit at 100 events/s",
        f"- command: `python bench/notifications_bench.py --db {kind} --rate {args.rate:g} "
        f"--seconds {args.seconds:g} --batch {args.batch}`",
        "",
        "| measure | value |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in figures.items()),
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = f"-batch{args.batch}" if args.batch > 1 else ""
    out = RESULTS / f"{now:%Y-%m-%d}-vm-notifications-{kind}{suffix}.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--batch", type=int, default=1, help="Tasks per request (a transaction Bundle when > 1)"
    )
    args = parser.parse_args()
    for kind in ("sqlite", "postgresql") if args.db == "both" else (args.db,):
        figures = run(kind, args.rate, args.seconds, args.batch)
        out = write(kind, args, figures)
        print(out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
