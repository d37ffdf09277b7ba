"""Benchmark of ``takamul synth``: resources written per second and peak memory, by N.

Each run is a fresh process, so its peak RSS (parent plus workers) is its own.
Usage: .venv/bin/python bench/synth_bench.py [--sizes 1000 10000 50000] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def child(country: str, n: int, workers: int, out: str) -> None:
    from pathlib import Path

    from takamul.synth import generate, load_config

    summary = generate(load_config(country=country, patients=n, seed=1, workers=workers), Path(out))
    print(f"{summary.total} {summary.seconds:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--countries", nargs="+", default=["SA", "IR"])
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        country, n, workers, out = args.child
        child(country, int(n), int(workers), out)
        return
    print(f"{'country':8}{'persons':>9}{'workers':>8}{'resources':>11}{'seconds':>9}"
          f"{'res/s':>9}{'peak RSS MB':>13}")  # fmt: skip
    for country in args.countries:
        for n in args.sizes:
            for workers in args.workers:
                with tempfile.TemporaryDirectory() as out:
                    cmd = [sys.executable, __file__, "--child", country, str(n), str(workers), out]
                    started = time.perf_counter()
                    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
                    # wait4 gives the peak RSS of the largest single process of the run (the
                    # parent, or a worker when workers > 1), not their sum.
                    _, status, usage = os.wait4(proc.pid, 0)
                    wall = time.perf_counter() - started
                    assert proc.stdout is not None
                    total, seconds = proc.stdout.read().split()
                    if status != 0:
                        raise SystemExit(f"run failed: {cmd}")
                    rss_mb = usage.ru_maxrss / 1024  # KiB on Linux
                    rate = int(total) / float(seconds)
                    print(f"{country:8}{n:>9}{workers:>8}{int(total):>11}{float(seconds):>9.2f}"
                          f"{rate:>9.0f}{rss_mb:>13.0f}   (wall {wall:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
