"""The web application's patient finder on a linked store: words in the store
(``StoredNameFinder``, the registry's store index) against every registration's words in the
process (``NameFinder``, the memory index).

    python bench/finder_bench.py --db URL [--queries 1000] [--seed 7]

The store must hold Patients linked with the store index (``bench/mpi_realtime.py --index
store`` makes one). Queries are made from stored Patients' names as a clerk types them, four
kinds: the whole name, the first name alone, the first name and two letters of the last, two
letters. Each kind is timed with both finders (limit 200, as the web search asks), and their
answers compared. The in-memory finder's build is timed, with the process's resident memory
before and after it. Writes ``bench/results/<date>-vm-finder-<registrations>-<dialect>.md``.
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy import text  # noqa: E402

from takamul.mpi.stored_finder import StoredNameFinder  # noqa: E402
from takamul.mpi.stored_index import patient_record  # noqa: E402
from takamul.registry.finder import NameFinder  # noqa: E402
from takamul.settings import Settings  # noqa: E402
from takamul.store import Store  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LIMIT = 200  # the web search's CANDIDATES
KINDS = ("whole name", "first name", "first name + 2 letters", "2 letters")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def queries_of(bodies: list[dict[str, Any]], n: int, rng: random.Random) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for body in rng.sample(bodies, min(n, len(bodies))):
        name = (body.get("name") or [{}])[0]
        words = " ".join([*name.get("given", []), name.get("family", "")]).split()
        if len(words) < 2:
            continue
        out["whole name"].append(" ".join(words))
        out["first name"].append(words[0])
        out["first name + 2 letters"].append(f"{words[0]} {words[-1][:2]}")
        out["2 letters"].append(words[0][:2])
    return out


def timed(
    find: Callable[[str], list[str]], queries: list[str]
) -> tuple[list[float], list[list[str]]]:
    times, answers = [], []
    for query in queries:
        started = time.perf_counter()
        answers.append(find(query))
        times.append((time.perf_counter() - started) * 1000)
    return times, answers


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    store = Store(Settings.from_env(database_url=args.db))
    try:
        with store.reading() as session:
            rows = session.conn.execute(
                text(
                    "SELECT res_id, content FROM resource"
                    " WHERE res_type = 'Patient' AND NOT deleted"
                )
            ).all()
            words = session.conn.execute(text("SELECT count(*) FROM mpi_word")).scalar_one()
        bodies = [orjson.loads(bytes(c)) for _, c in rows]
        queries = queries_of(bodies, args.queries, random.Random(args.seed))
        del bodies
        stored = StoredNameFinder(store)
        if not stored.usable():
            raise SystemExit("no mpi_word rows: link the store with the store index first")

        gc.collect()
        before = rss_mb()
        started = time.perf_counter()
        memory = NameFinder()
        for pid, content in rows:
            memory.add(patient_record(pid, content))
        build = time.perf_counter() - started
        gc.collect()
        held = rss_mb() - before

        lines = []
        for kind in KINDS:
            qs = queries[kind]
            timed(lambda q: stored.find(q, limit=LIMIT), qs[:20])  # warm the connection
            s_times, s_answers = timed(lambda q: stored.find(q, limit=LIMIT), qs)
            m_times, m_answers = timed(lambda q: memory.find(q, limit=LIMIT), qs)
            same = sum(a == b for a, b in zip(s_answers, m_answers, strict=True))
            found = statistics.mean(len(a) for a in s_answers)
            print(
                kind, f"{pct(s_times, 50):.1f} {pct(m_times, 50):.1f}", file=sys.stderr, flush=True
            )
            lines.append(
                f"| {kind} | {len(qs)} | {found:.1f}"
                f" | {pct(s_times, 50):.2f} / {pct(s_times, 95):.2f}"
                f" | {pct(m_times, 50):.2f} / {pct(m_times, 95):.2f} | {same}/{len(qs)} |"
            )
    finally:
        store.close()
    dialect = store.dialect
    stamp = datetime.now(UTC)
    out = RESULTS / f"{stamp:%Y-%m-%d-%H%M}-vm-finder-{len(rows)}-{dialect}.md"
    report = [
        f"# Patient finder, words in the store against in memory, {stamp:%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: vm: 2 cores, Python {platform.python_version()}",
        f"- store: {dialect}, {len(rows):,} Patients linked with the store index, "
        f"{words:,} word rows (`mpi_word`)",
        f"- command: `python bench/finder_bench.py --db {dialect}://… --queries {args.queries}`",
        f"- the in-memory finder: built in {build:.1f} s from the Patients already read "
        "(parsed, as a server's build parses them); "
        f"the process's resident memory {held:+,.0f} MB "
        f"({held * 1024 * 1024 / max(1, len(rows)):,.0f} bytes a registration)",
        "",
        "| query | queries | ids found (mean, at most 200) | store p50 / p95 (ms) "
        "| memory p50 / p95 (ms) | same answer |",
        "| --- | --- | --- | --- | --- | --- |",
        *lines,
        "",
    ]
    out.write_text("\n".join(report))
    print("\n".join(report))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
