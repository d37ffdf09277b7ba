"""Real-time client registry benchmark: ``Patient/$match`` and link-on-create with a large
number of Patients stored (target: p95 <= 20 ms at 1,000,000 Patients).

    python bench/mpi_realtime.py [--persons 455000] [--queries 2000] [--db URL]
        [--index memory|store|auto]

Steps (each timed): synthesise a Saudi population (Patients only are loaded), bulk-load them
into a SQLite shared record (or ``--db``, a new PostgreSQL database; one that holds Patients
already is used as it is), start the client registry on it (``--index memory`` reads every
Patient into the in-memory candidate index, ``store`` writes the index tables, the first time;
then the Patients are linked as a batch), start it again in a process of its own (what each
further server process costs: seconds and resident memory), then measure
- ``$match``: the registry scoring a Patient against the index (the route adds JSON parsing
  and reading the matched Patients), for stored Patients without their id (they find
  themselves and their duplicates) and for persons of another seed (mostly no match);
- link-on-create: a new Patient created through the REST interaction layer in its own
  transaction (validation, storage, search index, linking, the Person golden record), for
  registrations of the other seed; the linking share is measured apart.
Writes ``bench/results/<date>-vm-mpi-realtime-<records>.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource as resource_module
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from takamul.bulk import load_paths  # noqa: E402
from takamul.mpi.membership import StoredMembership  # noqa: E402
from takamul.mpi.service import ClientRegistry  # noqa: E402
from takamul.rest import interactions as ix  # noqa: E402
from takamul.rest.interactions import RequestContext  # noqa: E402
from takamul.settings import Settings  # noqa: E402
from takamul.store import Store  # noqa: E402

WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"


def synth(persons: int, seed: int, years: int = 1) -> Path:
    out = WORK / f"mpi-synth-SA-{persons}-{seed}"
    if not (out / "Patient.ndjson").is_file():
        command = [sys.executable, "-m", "takamul.cli", "synth", "--country", "SA"]
        command += ["--patients", str(persons), "--seed", str(seed), "--years", str(years)]
        subprocess.run([*command, "--out", str(out)], check=True, cwd=ROOT)
    return out


def patients(path: Path) -> list[dict[str, Any]]:
    with path.open("rb") as fh:
        return [orjson.loads(line) for line in fh if line.strip()]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mb() -> float:
    return resource_module.getrusage(resource_module.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--persons", type=int, default=455_000)
    parser.add_argument("--seed", type=int, default=2001)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--db", default=None, help="a PostgreSQL URL (default: a SQLite file)")
    parser.add_argument("--index", choices=["memory", "store", "auto"], default="auto")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {}

    t = time.perf_counter()
    population = synth(args.persons, args.seed)
    newcomers = patients(synth(max(args.queries, 1000), args.seed + 1) / "Patient.ndjson")
    figures["synthesis (s, cached if 0)"] = f"{time.perf_counter() - t:.0f}"

    db = WORK / f"mpi-realtime-{args.persons}-{args.seed}.sqlite"
    url = args.db or f"sqlite:///{db}"
    marker = WORK / f"{db.name}.loaded"
    settings = Settings(
        database_url=url, export_dir=WORK / "exports", mpi=True, registry_index=args.index
    )
    if not (marker.exists() if not args.db else _holds_patients(url)):
        # Loading is set-up, not what is measured here: the generator's output is valid FHIR
        # (tested), so the load skips validation; it resumes if interrupted.
        loader = Store(replace(settings, validate=False))
        t = time.perf_counter()
        summary = load_paths(loader, [population / "Patient.ndjson"], WORK / "mpi-rt-errors.ndjson")
        figures["bulk load of the Patients (s)"] = f"{time.perf_counter() - t:.0f}"
        figures["Patients loaded (this run)"] = f"{summary.loaded:,}"
        loader.analyze()
        loader.close()
        if not args.db:
            marker.touch()
    store = Store(settings)

    t = time.perf_counter()
    registry = ClientRegistry(store)
    linked = registry.attach()
    attach_s = time.perf_counter() - t
    records = len(registry.index)
    figures["Patients in the registry"] = f"{records:,}"
    with store.reading() as s:
        persons = s.conn.execute(text("SELECT count(DISTINCT person_id) FROM mpi_member"))
        figures["persons"] = f"{persons.scalar_one():,}"
    figures["start-up: index built" + (" and batch-linked" if linked else "") + " (s)"] = (
        f"{attach_s:.0f}" + (f" ({linked:,} linked)" if linked else "")
    )
    figures["peak RSS after start-up (MB)"] = f"{rss_mb():,.0f}"
    again = subprocess.run(
        [sys.executable, __file__, "--start-only", url, args.index],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    figures["a further process's start: seconds; resident memory (MB)"] = (
        f"{float(again[0]):.1f}; {float(again[1]):,.0f} (of which before the start "
        f"{float(again[2]):,.0f})"
    )

    rng = random.Random(7)
    stored = patients(population / "Patient.ndjson")
    sample = [{k: v for k, v in p.items() if k != "id"} for p in rng.sample(stored, args.queries)]
    del stored
    for label, queries in (("stored persons", sample), ("new persons", newcomers[: args.queries])):
        times, found = [], 0
        for q in queries:
            t0 = time.perf_counter()
            results = registry.match(q)
            times.append((time.perf_counter() - t0) * 1000)
            found += bool(results)
        figures[f"$match, {label}: p50 / p95 / p99 (ms)"] = (
            f"{pct(times, 0.5):.2f} / {pct(times, 0.95):.2f} / {pct(times, 0.99):.2f}"
            f" ({found / len(queries):.0%} with a candidate)"
        )

    hook_ms: list[float] = []
    original = registry._link_written

    def timed(*a: Any) -> None:  # the linking, at the end of the write's transaction
        t0 = time.perf_counter()
        original(*a)
        hook_ms.append((time.perf_counter() - t0) * 1000)

    registry._link_written = timed
    ctx = RequestContext("http://bench/fhir", "minimal", False, None)
    create_ms = []
    for body in newcomers[: args.queries // 2]:
        fresh = {k: v for k, v in body.items() if k != "id"}
        t0 = time.perf_counter()
        store.write(lambda s, fresh=fresh: ix.create(s, "Patient", fresh, ctx, None))
        create_ms.append((time.perf_counter() - t0) * 1000)
    figures["create + link a Patient: p50 / p95 / p99 (ms)"] = (
        f"{pct(create_ms, 0.5):.2f} / {pct(create_ms, 0.95):.2f} / {pct(create_ms, 0.99):.2f}"
    )
    figures["of which linking (at the transaction's end): p50 / p95 (ms)"] = (
        f"{pct(hook_ms, 0.5):.2f} / {pct(hook_ms, 0.95):.2f}"
    )
    figures["peak RSS (MB)"] = f"{rss_mb():,.0f}"
    if isinstance(registry.membership, StoredMembership):
        figures["membership cached at the end (registrations)"] = f"{len(registry.membership):,}"
    store.close()
    write_result(records, figures, args)


def write_result(records: int, figures: dict[str, str], args: argparse.Namespace) -> None:
    now = datetime.now(UTC)
    load = os.getloadavg()
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [
        f"# Client registry, real time: {records:,} Patients stored",
        "",
        f"- date: {now:%Y-%m-%d %H:%M} UTC; machine: {platform.node()}, {os.cpu_count()} cores, "
        f"{mem_gb:.0f} GB, Python {platform.python_version()}; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}",
        f"- store: {'PostgreSQL' if args.db else 'SQLite'}; candidate index: {args.index}",
        f"- data: takamul synth, Saudi Arabia, {args.persons:,} persons, seed {args.seed} "
        f"(Patients only); queries: {args.queries:,}; new registrations from seed {args.seed + 1}",
        "- target: `$match` and link-on-create p95 <= 20 ms with 1,000,000 Patients stored",
        "- command: `python bench/mpi_realtime.py "
        f"--persons {args.persons} --queries {args.queries} --index {args.index}"
        f"{' --db postgresql://…' if args.db else ''}`",
        "",
        "| measure | value |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in figures.items()],
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    kind = "postgresql" if args.db else "sqlite"
    out = RESULTS / f"{now:%Y-%m-%d-%H%M}-vm-mpi-realtime-{records}-{kind}-{args.index}.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    print(f"wrote {out}")


def _holds_patients(url: str) -> bool:
    store = Store(Settings(database_url=url, mpi=False))
    try:
        with store.reading() as s:
            found = s.conn.exec_driver_sql(
                "SELECT 1 FROM resource WHERE res_type = 'Patient' LIMIT 1"
            ).first()
    finally:
        store.close()
    return found is not None


def start_only(url: str, index: str) -> None:
    """Attach a registry to an already linked store, in this process: print the seconds, the
    resident memory after it and before it (MB)."""
    before = current_rss_mb()
    store = Store(Settings(database_url=url, export_dir=WORK / "exports", registry_index=index))
    t = time.perf_counter()
    ClientRegistry(store).attach()
    took = time.perf_counter() - t
    print(f"{took:.3f} {current_rss_mb():.0f} {before:.0f}")
    store.close()


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--start-only":
        start_only(sys.argv[2], sys.argv[3])
    else:
        main()
