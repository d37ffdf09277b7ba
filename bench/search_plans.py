"""The benchmark's five searches against a store that is already loaded: p50/p95 over HTTP, one
client at a time, as bench/run.py measures them (its ``search_urls`` and ``loadgen``).

Usage:
    python bench/search_plans.py DB_URL DATA_FOLDER [--seconds 10] [--workers 2] [--rounds 1]

Run it on a store loaded from DATA_FOLDER (``takamul load --db DB_URL DATA_FOLDER``). Access
control is off: these figures are about the plans of the queries, not about security.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import Server, loadgen, ndjson_files, search_urls  # noqa: E402

POPULATED = "encounters by date with _include, weeks of 2024"


def measure(db_url: str, data: Path, seconds: float, workers: int) -> dict[str, dict[str, float]]:
    server = Server(db_url, workers, auth=False)
    try:
        urls = search_urls(server.base, ndjson_files(data))
        # the benchmark's weeks are in 2025, after the synthetic record ends (2024-12-31):
        # the same weeks of 2024 hold encounters
        urls[POPULATED] = [
            u.replace("=ge2025-", "=ge2024-").replace("=lt2025-", "=lt2024-")
            for u in urls["encounters by date with _include"]
        ]
        return {name: loadgen(found, 1, seconds) for name, found in urls.items()}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("db_url")
    parser.add_argument("data", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0, help="per search")
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument("--rounds", type=int, default=1, help="servers started one after another")
    args = parser.parse_args()
    for round_no in range(1, args.rounds + 1):
        figures = measure(args.db_url, args.data, args.seconds, args.workers)
        for name, r in figures.items():
            print(
                f"round {round_no}: {name}: p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, "
                f"p99 {r['p99_ms']:.1f} ms, {r['rps']:.0f} req/s, errors {r.get('errors', 0)}"
            )
        print(json.dumps({"round": round_no, "figures": figures}), flush=True)


if __name__ == "__main__":
    main()
