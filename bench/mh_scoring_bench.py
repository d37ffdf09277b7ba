"""Scoring on write (issue 15): what scoring a PHQ-9 QuestionnaireResponse in the writing
transaction adds to its create, p95 <= 5 ms, on SQLite and PostgreSQL.

    python bench/mh_scoring_bench.py [--db sqlite|postgresql|both] [--creates 400]

In one store with ``--patients`` patients, PHQ-9 responses are created one transaction each
(``Store.write`` -> ``Session.create``: validation, index rows, the version; what the API's
POST does inside its transaction), alternately with the mental-health write hook attached and
detached, so both series see the same store size, cache and machine load. A third series has
item 9 answered 1 (the hook then also writes the suicide-risk Flag and the stat Task). Writes
``bench/results/<date>-vm-mh-scoring-<db>.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from takamul.mentalhealth.instruments import instrument  # noqa: E402
from takamul.mentalhealth.service import MentalHealth  # noqa: E402
from takamul.settings import Settings  # noqa: E402
from takamul.store.repository import Session, Store  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "bench" / "work"
PHQ9 = instrument("phq-9")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def response(rng: random.Random, pid: str, item9: int) -> dict[str, Any]:
    values = [rng.randint(0, 3) for _ in range(8)] + [item9]
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": PHQ9.url,
        "status": "completed",
        "subject": {"reference": f"Patient/{pid}"},
        "authored": "2026-03-01T10:00:00+03:00",
        "item": [
            {"linkId": link_id, "answer": [{"valueInteger": v}]}
            for link_id, v in zip(PHQ9.items, values, strict=True)
        ],
    }


def database(kind: str) -> str:
    if kind == "sqlite":
        WORK.mkdir(parents=True, exist_ok=True)
        path = WORK / "mh-scoring.sqlite"
        for p in WORK.glob("mh-scoring.sqlite*"):
            p.unlink()
        return f"sqlite:///{path}"
    import psycopg

    name = "takamul_bench_mh_scoring"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def timed(store: Store, body: dict[str, Any]) -> float:
    t = time.perf_counter()
    store.write(lambda s: s.create(dict(body)))
    return (time.perf_counter() - t) * 1000


def run(kind: str, creates: int, patients: int) -> dict[str, str]:
    store = Store(Settings(database_url=database(kind), export_dir=WORK / "exports"))
    rng = random.Random(15)

    def setup(session: Session) -> None:
        session.update("Organization", "fac", {"resourceType": "Organization", "id": "fac"})
        for n in range(patients):
            session.update(
                "Patient",
                f"p{n}",
                {
                    "resourceType": "Patient",
                    "id": f"p{n}",
                    "managingOrganization": {"reference": "Organization/fac"},
                },
            )

    store.write(setup)
    mh = MentalHealth(store)
    mh.attach()
    hook = store.write_hooks[-1]
    series: dict[str, list[float]] = {"without scoring": [], "scored": [], "scored, item 9 = 1": []}
    plan: list[tuple[str, int, bool]] = [
        ("without scoring", 0, False),
        ("scored", 0, True),
        ("scored, item 9 = 1", 1, True),
    ]

    def attach(on: bool) -> None:
        if on and hook not in store.write_hooks:
            store.write_hooks.append(hook)
        elif not on and hook in store.write_hooks:
            store.write_hooks.remove(hook)

    for n in range(creates + 10):
        for name, item9, on in plan:
            attach(on)
            took = timed(store, response(rng, f"p{rng.randrange(patients)}", item9))
            if n >= 10:  # warm-up
                series[name].append(took)
    attach(True)
    store.close()
    figures = {
        f"{name}: p50 / p95 / p99 (ms)": (
            f"{pct(v, 0.5):.1f} / {pct(v, 0.95):.1f} / {pct(v, 0.99):.1f}"
        )
        for name, v in series.items()
    }
    base = series["without scoring"]
    for name in ("scored", "scored, item 9 = 1"):
        figures[f"added by scoring ({name}): p50 / p95 (ms)"] = (
            f"{pct(series[name], 0.5) - pct(base, 0.5):.1f} / "
            f"{pct(series[name], 0.95) - pct(base, 0.95):.1f}"
        )
    return figures


def write(kind: str, args: argparse.Namespace, figures: dict[str, str]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    load = os.getloadavg()
    out = RESULTS / f"{now:%Y-%m-%d}-vm-mh-scoring-{kind}.md"
    lines = [
        f"# Mental health: scoring on write ({kind})",
        "",
        f"- date: {now:%Y-%m-%d %H:%M} UTC; machine: vm, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} (other work shares the machine)",
        f"- {args.creates} PHQ-9 responses per series, each its own transaction "
        f"(Store.write -> Session.create), {args.patients} patients; series interleaved",
        "- target: scoring on write adds <= 5 ms p95 to a QuestionnaireResponse create",
        f"- command: `python bench/mh_scoring_bench.py --db {kind} --creates {args.creates}`",
        "",
        "| measure | value |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in figures.items()],
        "",
    ]
    out.write_text("\n".join(lines), encoding="utf-8")
    print(out.read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--creates", type=int, default=400)
    parser.add_argument("--patients", type=int, default=200)
    args = parser.parse_args()
    for kind in ("sqlite", "postgresql") if args.db == "both" else (args.db,):
        write(kind, args, run(kind, args.creates, args.patients))


if __name__ == "__main__":
    main()
