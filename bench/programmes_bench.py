"""Care programme speed (issue 14): the statuses of every programme for 1,000,000 persons
(target <= 60 s on 2 cores), on SQLite or PostgreSQL.

    python bench/programmes_bench.py [--base 20000] [--replicas 50] [--db sqlite|postgresql]

How the 1,000,000 persons are made: a Saudi synthetic population of ``--base`` persons with five
years of history is written by ``takamul synth``; each of its resources is reduced to care facts
by the same extraction the server runs on every write (``takamul.programmes.facts.extract``),
and the facts and the person links (the truth file: what the client registry would have
linked) are copied ``--replicas`` times under new record and person ids into ``care_fact`` and
``mpi_member``. The status query reads nothing else, so the store measured holds what a store
of 1,000,000 persons would hold in those tables; the FHIR resources themselves are not stored
(loading ~60 M resources takes hours on this machine; docs/programmes.md, "Speed").
Writes ``bench/results/<date>-vm-programmes-status-<db>.md``.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import resource as rlimit
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from takamul.programmes.definitions import load_catalog  # noqa: E402
from takamul.programmes.facts import TYPES, CareFacts, _Codes, extract  # noqa: E402
from takamul.programmes.status import statuses  # noqa: E402
from takamul.settings import Settings  # noqa: E402
from takamul.store.repository import Store  # noqa: E402

WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"
AS_OF = date(2024, 12, 31)  # the synthetic population's end date


def synth(base: int, seed: int) -> Path:
    out = WORK / f"programmes-SA-{base}-{seed}"
    if not (out / "Patient.ndjson").is_file():
        command = [sys.executable, "-m", "takamul.cli", "synth", "--country", "SA"]
        command += ["--patients", str(base), "--seed", str(seed), "--years", "5"]
        subprocess.run([*command, "--out", str(out), "--workers", "2"], check=True, cwd=ROOT)
    return out


def base_facts(folder: Path) -> tuple[list[tuple[Any, ...]], dict[str, str]]:
    codes = _Codes(load_catalog())
    rows: list[tuple[Any, ...]] = []
    for res_type in TYPES:
        path = folder / f"{res_type}.ndjson"
        if not path.is_file():
            continue
        with path.open("rb") as handle:
            for line in handle:
                body = orjson.loads(line)
                source = f"{res_type}/{body['id']}"
                for f in extract(res_type, body, codes):
                    rows.append((f.patient_id, source, f.kind, f.code, f.day, f.v1, f.v2, f.org))
    with (folder / "truth" / "links.csv").open(encoding="utf-8") as handle:
        links = {r["patient_id"]: r["person"] for r in csv.DictReader(handle)}
    return rows, links


def database(kind: str, persons: int, reuse: bool) -> str:
    if kind == "sqlite":
        path = WORK / f"programmes-{persons}.sqlite"
        for p in WORK.glob(f"programmes-{persons}.sqlite*"):
            if not reuse:
                p.unlink()
        return f"sqlite:///{path}"
    import psycopg

    name = f"takamul_bench_programmes_{persons}"
    if reuse:
        return f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def fill(store: Store, facts: list[tuple[Any, ...]], links: dict[str, str], replicas: int) -> None:
    """``replicas`` copies of the facts and links, record and person ids suffixed ``.rK``."""
    columns = ("patient_id", "source", "kind", "code", "day", "v1", "v2", "org")
    with store.writer.begin() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        for k in range(replicas):
            s = f".r{k}"
            fact_rows = [(p + s, src + s, *rest) for p, src, *rest in facts]
            link_rows = [(p + s, person + s, 1.0, False, 0.0) for p, person in links.items()]
            if store.dialect == "postgresql":
                with cursor.copy(f"COPY care_fact ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in fact_rows:
                        copy.write_row(row)
                with cursor.copy(
                    "COPY mpi_member (patient_id, person_id, probability, manual, updated) "
                    "FROM STDIN"
                ) as copy:
                    for row in link_rows:
                        copy.write_row(row)
            else:
                cursor.executemany(
                    f"INSERT INTO care_fact ({', '.join(columns)}) VALUES (?,?,?,?,?,?,?,?)",
                    fact_rows,
                )
                cursor.executemany(
                    "INSERT INTO mpi_member (patient_id, person_id, probability, manual, updated)"
                    " VALUES (?,?,?,?,?)",
                    link_rows,
                )
            print(f"  replica {k + 1}/{replicas}", end="\r", flush=True)
    store.analyze()
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=int, default=20_000, help="persons synthesised")
    parser.add_argument("--replicas", type=int, default=50)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help="measure the store filled before")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    folder = synth(args.base, args.seed)
    t_synth = time.perf_counter() - t0
    facts, links = base_facts(folder)
    persons = len(set(links.values())) * args.replicas
    url = database(args.db, persons, args.reuse)
    store = Store(Settings(database_url=url, export_dir=WORK / "exports"))
    catalog = load_catalog()
    CareFacts(store, catalog)  # creates the tables
    t0 = time.perf_counter()
    if not args.reuse:
        fill(store, facts, links, args.replicas)
    t_fill = time.perf_counter() - t0
    times = []
    rows: list[Any] = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        rows = statuses(store, catalog, AS_OF)
        times.append(time.perf_counter() - t0)
    peak_mb = rlimit.getrusage(rlimit.RUSAGE_SELF).ru_maxrss / 1024
    by = Counter((r.programme, r.status) for r in rows)
    store.close()
    write(args, persons, len(facts) * args.replicas, len(links) * args.replicas, t_synth, t_fill,
          times, len(rows), by, peak_mb)  # fmt: skip


def write(
    args: argparse.Namespace,
    persons: int,
    facts: int,
    records: int,
    t_synth: float,
    t_fill: float,
    times: list[float],
    rows: int,
    by: Counter[tuple[str, str]],
    peak_mb: float,
) -> None:
    now = datetime.now(UTC)
    load = os.getloadavg()
    lines = [
        f"# Care programme statuses: {persons:,} persons ({args.db})",
        "",
        f"- date: {now:%Y-%m-%d %H:%M} UTC; machine: vm, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f}",
        f"- data: takamul synth SA, {args.base:,} persons, 5 years, seed {args.seed}, reduced to "
        f"care facts by the server's extraction and copied {args.replicas} times",
        "- target: statuses of every programme for 1,000,000 persons <= 60 s on 2 cores",
        f"- command: `python bench/programmes_bench.py --base {args.base} --replicas "
        f"{args.replicas} --db {args.db}`",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| persons | {persons:,} |",
        f"| Patient records (linked to persons) | {records:,} |",
        f"| care facts | {facts:,} |",
        f"| synthesis (s, 0 if cached) | {t_synth:.0f} |",
        f"| facts and links copied in (s) | {t_fill:.0f} |",
        f"| statuses, every programme, as of {AS_OF} (s), each run | "
        + " / ".join(f"{t:.1f}" for t in times)
        + " |",
        f"| status rows (person x programme) | {rows:,} |",
        f"| peak memory of the process (MB) | {peak_mb:,.0f} |",
        "",
        "| programme | status | persons |",
        "| --- | --- | --- |",
    ]
    for (prog, status), n in sorted(by.items()):
        lines.append(f"| {prog} | {status} | {n:,} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{now:%Y-%m-%d}-vm-programmes-status-{args.db}.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(path.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
