"""Benchmark of the population indicators: every standard indicator for ~1,000,000 people,
broken down by every equity dimension and every pair of dimensions, on DuckDB.

Times separately (a) the SQL on FHIR views materialised into DuckDB, (b) the person table (one
row per person, ages, dimensions, nearest primary care centre) and (c) the indicators
(numerators, denominators, GROUPING SETS, intervals, suppression); writes
``bench/results/<date>-vm-equity-indicators.md``.

The default input is the synthetic population of the client registry benchmark
(``takamul synth --country SA --patients 455000 --seed 2001 --years 1``): about a million
Patient records of 455,000 persons. Unit "records": each Patient record counts as a person (a
million "people", the size the target is stated for); unit "persons": the truth links join a
person's records (455,000 people). Both run by default, on the same materialised views.

Usage: .venv/bin/python bench/equity_bench.py [--data DIR] [--units records persons]
       [--views-db FILE] [--threads 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT / "bench" / "work" / "mpi-synth-SA-455000-2001"
TARGET_SECONDS = 60.0


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        load = os.getloadavg()
        return f"load average: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"


def _rss_mb() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return me, children


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--units",
        nargs="+",
        choices=["records", "persons"],
        default=["records", "persons"],
        help="records: each Patient record is a person; persons: truth/links.csv joins them",
    )
    parser.add_argument(
        "--views-db",
        type=Path,
        default=None,
        help="DuckDB file holding the materialised views; reused when it exists",
    )
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads")
    parser.add_argument("--workers", type=int, default=2, help="processes evaluating views")
    parser.add_argument("--out", type=Path, default=None, help="results markdown file")
    args = parser.parse_args()

    import duckdb

    from takamul.equity.indicators import (
        IndicatorResults,
        compute,
        default_period_end,
        insert_links,
        load_definitions,
        load_links,
        materialize_views,
        prepare,
    )

    if not (args.data / "Patient.ndjson").is_file():
        raise SystemExit(
            f"{args.data}: no Patient.ndjson; generate it with: takamul synth --country SA "
            f"--patients 455000 --seed 2001 --years 1 --out {args.data}"
        )
    load_before = _uptime()
    defs = load_definitions()
    reuse = args.views_db is not None and args.views_db.exists()
    con = duckdb.connect(str(args.views_db) if args.views_db else ":memory:")
    con.execute(f"SET threads = {args.threads}")

    started = time.perf_counter()
    if reuse:
        counts = {
            name: int(con.execute(f"SELECT count(*) FROM {name}").fetchone()[0])  # type: ignore[index]
            for (name,) in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'src_%'"
            ).fetchall()
        }
        views_note = f"reused from {args.views_db.name}, materialised by an earlier run"
    else:
        counts = materialize_views(
            con,
            defs,
            inputs=[args.data],
            workers=args.workers,
            progress=lambda view, rows: print(f"  view {view}: {rows:,} rows", flush=True),
        )
        views_note = f"{args.workers} worker processes"
    views_s = time.perf_counter() - started
    # Read now: a child forked later (uptime) would report this process's size as its own.
    worker_rss = _rss_mb()[1] if not reuse else None
    print(f"views: {views_s:.1f} s ({views_note})", flush=True)
    counts.pop("src_person_link", None)

    end = default_period_end([args.data])
    runs: list[tuple[str, int, int, float, float, float, IndicatorResults]] = []
    for unit in args.units:
        started = time.perf_counter()
        con.execute("DELETE FROM src_person_link")
        if unit == "persons":
            insert_links(con, load_links(args.data / "truth" / "links.csv"))
        links_s = time.perf_counter() - started
        started = time.perf_counter()
        pop = prepare(con, defs, end)
        prepare_s = time.perf_counter() - started
        print(f"person table: {pop.people:,} {pop.unit}s in {prepare_s:.1f} s", flush=True)
        started = time.perf_counter()
        results = compute(pop)
        compute_s = time.perf_counter() - started
        print(f"indicators: {len(results.estimates):,} estimates in {compute_s:.1f} s", flush=True)
        runs.append((unit, pop.people, pop.records, links_s, prepare_s, compute_s, results))
    load_after = _uptime()
    rss_self = _rss_mb()[0]

    total_rows = sum(counts.values())
    rss_line = f"Peak RSS: {rss_self:,.0f} MB (this process, DuckDB in memory)" + (
        f"; {worker_rss:,.0f} MB (largest view worker process)."
        if worker_rss is not None
        else " (views reused: no worker processes)."
    )
    first = runs[0][6]
    now = datetime.now(UTC)
    out = args.out or ROOT / "bench" / "results" / f"{now:%Y-%m-%d}-vm-equity-indicators.md"
    data = args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data
    lines = [
        f"# Equity indicators benchmark, {now:%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: vm: {_machine()}; DuckDB {duckdb.__version__}, {args.threads} threads",
        f"- `uptime` before: `{load_before}`",
        f"- `uptime` after: `{load_after}`",
        "- the machine is shared with other engineers' jobs: the load average above is the "
        "competition for its 2 cores during the run",
        f"- data: `{data}` ({runs[0][2]:,} Patient records); period end {end.isoformat()}",
        f"- {len(first.indicators)} indicators x {len(first.dimensions)} dimensions: national, "
        f"each dimension and each of the "
        f"{len(first.dimensions) * (len(first.dimensions) - 1) // 2} pairs; min cell "
        f"{first.min_cell}",
        "- units: *records* counts each Patient record as a person (a person's duplicate "
        "registrations separately: the million-row case); *persons* joins a person's records "
        "with `truth/links.csv`",
        "",
        f"Views materialised into DuckDB: {views_s:.1f} s ({len(counts)} tables, "
        f"{total_rows:,} rows; {views_note}).",
        "",
        "| unit | people | person table (s) | indicators (s) | **indicator computation (s)** "
        "| estimates | target <= 60 s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for unit, people, _records, _links_s, prepare_s, compute_s, results in runs:
        total = prepare_s + compute_s
        verdict = "met" if total <= TARGET_SECONDS else "NOT met"
        lines.append(
            f"| {unit} | {people:,} | {prepare_s:.1f} | {compute_s:.1f} | **{total:.1f}** | "
            f"{len(results.estimates):,} | {verdict} |"
        )
    lines += [
        "",
        "Person table: one row per person with ages, the 9 dimensions and the nearest primary "
        "care centre (numpy), plus the person-keyed event tables. Indicators: numerators, "
        "denominators, GROUPING SETS, Wilson/t intervals, primary and secondary suppression. "
        "Loading the links (patient, person) into DuckDB for *persons* is not included: "
        + ", ".join(f"{r[3]:.1f} s" for r in runs if r[0] == "persons")
        + ".",
        "",
        rss_line,
        "",
        "| view table | rows |",
        "| --- | ---: |",
        *[f"| {name} | {n:,} |" for name, n in sorted(counts.items())],
    ]
    for unit, _people, _records, _l, _p, _c, results in runs:
        lines += [
            "",
            f"National values ({unit}):",
            "",
            "| indicator | denominator | estimate | 95% CI |",
            "| --- | ---: | ---: | --- |",
        ]
        for ind in results.indicators:
            e = results.national(ind.id)
            est = "-" if e.estimate is None else f"{e.estimate:.2f} {ind.unit}"
            ci = "-" if e.ci_lb is None or e.ci_ub is None else f"{e.ci_lb:.2f} - {e.ci_ub:.2f}"
            pop_n = "-" if e.population is None else f"{e.population:,}"
            lines.append(f"| {ind.id} | {pop_n} | {est} | {ci} |")
    lines.append("")
    lines.append(f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
