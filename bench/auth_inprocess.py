"""What security costs one read, measured in-process: the ASGI application called directly (no
HTTP server, no load generator), auth on and auth off alternating in rounds of
``GET Patient/{id}`` on the same store, with the CPU of the whole process (the audit writer's
thread included: the round ends with the audit queue written) and of the calling thread.

The store is the consent-bearing demo population of ``bench/auth_overhead.py``; the token is
a national system's (``system/*.rs``, no facility), as the main benchmark's auth-on row uses.

Usage::

    python bench/auth_inprocess.py --db postgresql [--rounds 6] [--requests 2000]
    python bench/auth_inprocess.py --db sqlite --store sqlite:///bench/work/ap.sqlite

Prints a JSON summary (µs of CPU a request, medians over rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.auth_overhead import (  # noqa: E402
    NATIONAL_CLIENT,
    database,
    facility_patients,
    load,
    loaded,
    mint,
    population,
    register_client,
)

HOST = b"bench.local"
BASE = "http://bench.local/fhir"


def make_app(db_url: str, auth: bool) -> Any:
    os.environ["TAKAMUL_RATE_LIMIT"] = "0"  # the limiter is measured by its own test
    from takamul.api.app import create_app
    from takamul.settings import Settings

    return create_app(replace(Settings.from_env(), database_url=db_url, auth=auth))


def scope_of(path: str, token: str) -> dict[str, Any]:
    headers = [(b"host", HOST), (b"accept", b"application/fhir+json")]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("bench.local", 80),
    }


def busy_seconds() -> float:
    """CPU time of the whole machine (every process: the database server's work too), from
    ``/proc/stat``; 0 where there is none."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


async def run_round(app: Any, paths: list[str], token: str) -> int:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    status = [0]

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]

    failures = 0
    for path in paths:
        await app(scope_of(path, token), receive, send)
        failures += status[0] != 200
    return failures


def measure(args: argparse.Namespace) -> dict[str, Any]:
    folder = population(args.patients, 1)
    patients = facility_patients(folder)
    with database(args.db, args.store) as db_url:
        if not loaded(db_url):
            load(db_url, folder)
            register_client(db_url)
        # the auth-on application first: in development it makes the signing key
        apps = {"on": make_app(db_url, True), "off": make_app(db_url, False)}
        token = mint(db_url, BASE, NATIONAL_CLIENT)
        audit = apps["on"].state.audit
        if args.flush_interval:
            audit.flush_interval = args.flush_interval
        if args.audit_at_end:
            # the writer's thread idle during a round; the round's events written at its end
            audit.flush_interval, audit.max_batch = 3600.0, 10**9
        paths = [f"/fhir/Patient/{p}" for p in patients]
        paths = (paths * (args.requests // len(paths) + 1))[: args.requests]
        loop = asyncio.new_event_loop()
        per: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        for mode in ("off", "on"):  # warm both before measuring
            loop.run_until_complete(
                run_round(apps[mode], paths[:200], token if mode == "on" else "")
            )
        audit.flush()
        for _ in range(args.rounds):
            for mode in args.modes.split(","):
                bearer = token if mode == "on" else ""
                cpu, thread, wall = time.process_time(), time.thread_time(), time.perf_counter()
                machine = busy_seconds()
                failures = loop.run_until_complete(run_round(apps[mode], paths, bearer))
                thread_used = time.thread_time() - thread
                if mode == "on":
                    audit.flush()
                n = len(paths)
                per[mode].append(
                    {
                        "process_us": (time.process_time() - cpu) / n * 1e6,
                        "thread_us": thread_used / n * 1e6,
                        "wall_us": (time.perf_counter() - wall) / n * 1e6,
                        "machine_us": (busy_seconds() - machine) / n * 1e6,
                        "failures": failures,
                    }
                )
        loop.close()
    return summarise(per)


def summarise(per: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode, rounds in per.items():
        if not rounds:
            return out
        out[mode] = {k: round(statistics.median(r[k] for r in rounds), 1) for k in rounds[0] if k}
        out[mode]["process_us_all"] = [round(r["process_us"], 1) for r in rounds]
    off, on = out["off"]["process_us"], out["on"]["process_us"]
    out["added_us"] = round(on - off, 1)
    out["added_in_thread_us"] = round(out["on"]["thread_us"] - out["off"]["thread_us"], 1)
    out["cpu_ratio"] = round(off / on, 3)
    if out["on"].get("machine_us"):
        out["machine_added_us"] = round(out["on"]["machine_us"] - out["off"]["machine_us"], 1)
        out["machine_ratio"] = round(out["off"]["machine_us"] / out["on"]["machine_us"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("--store", help="a kept store's URL (made on first use)")
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=2000, help="reads per round")
    parser.add_argument(
        "--audit-at-end",
        action="store_true",
        help="write a round's audit events after it, not beside it (to tell the writer's "
        "contention with the requests from its work)",
    )
    parser.add_argument(
        "--flush-interval",
        type=float,
        help="the audit writer's interval in seconds (default: the server's)",
    )
    parser.add_argument(
        "--modes", default="off,on", help="off,on (alternating); on alone to profile it"
    )
    args = parser.parse_args()
    print(json.dumps(measure(args), indent=2))


if __name__ == "__main__":
    main()
