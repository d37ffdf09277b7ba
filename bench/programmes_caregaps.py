"""``Measure/$care-gaps`` for one person in a store of 1,000,000 Patients (issue 14 target:
p95 <= 50 ms), over HTTP.

    python bench/programmes_caregaps.py [--base 20000] [--replicas 50] [--patient-replicas 23]

Runs after ``bench/programmes_bench.py --db postgresql`` (same ``--base`` and ``--replicas``):
that store holds the care facts and person links of 1,000,000 persons. This script bulk-loads
``--patient-replicas`` copies of the synthetic Patients (ids suffixed ``.rK`` as the facts
are; about 1,000,000 Patients) with ``takamul load``, marks the care facts current (they were
copied in, not extracted), starts ``takamul serve`` (access control off: this measures the
operation, not the token check; the client registry off: its first start would link the
million, 47 min) and times ``$care-gaps`` for Patients drawn at random. Writes
``bench/results/<date>-vm-programmes-caregaps-postgresql.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import psycopg

from web_pages import free_port, pct  # the web bench's helpers (bench/ is on the path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from takamul.programmes.definitions import load_catalog  # noqa: E402

WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"


def patients_file(folder: Path, copies: int) -> tuple[Path, list[str]]:
    out = WORK / f"caregaps-patients-{folder.name}-{copies}.ndjson"
    lines = (folder / "Patient.ndjson").read_bytes().splitlines()
    ids: list[str] = []
    with out.open("wb") as handle:
        for k in range(copies):
            for line in lines:
                body = orjson.loads(line)
                body["id"] = f"{body['id']}.r{k}"
                ids.append(body["id"])
                handle.write(orjson.dumps(body) + b"\n")
    return out, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=int, default=20_000)
    parser.add_argument("--replicas", type=int, default=50)
    parser.add_argument("--patient-replicas", type=int, default=23)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--skip-load", action="store_true")
    args = parser.parse_args()
    folder = WORK / f"programmes-SA-{args.base}-{args.seed}"
    persons = args.base * args.replicas
    url = f"postgresql://postgres@127.0.0.1:5432/takamul_bench_programmes_{persons}"
    path, ids = patients_file(folder, args.patient_replicas)
    t_load = 0.0
    if not args.skip_load:
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "takamul.cli", "load", str(path), "--db", url,
             "--errors", str(WORK / "caregaps-load-errors.ndjson")],
            check=True, cwd=ROOT,
        )  # fmt: skip
        t_load = time.perf_counter() - t0
    with psycopg.connect(url, autocommit=True) as conn:
        seq = conn.execute("SELECT max(seq) FROM resource_version").fetchone()
        stored = conn.execute("SELECT count(*) FROM resource WHERE res_type = 'Patient'").fetchone()
        conn.execute("DELETE FROM care_fact_state")
        conn.execute(
            "INSERT INTO care_fact_state (key, value) VALUES ('seq', %s), ('digest', %s)",
            (str(seq[0] if seq else 0), load_catalog().digest),
        )
    port = free_port()
    env = {**os.environ, "TAKAMUL_AUTH": "false", "TAKAMUL_MPI": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "takamul.cli", "serve", "--db", url, "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        t0 = time.perf_counter()
        with httpx.Client(timeout=120) as client:
            while True:
                try:
                    if client.get(f"{base}/metadata").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.5)
            startup = time.perf_counter() - t0
            rng = random.Random(11)
            times: list[float] = []
            gaps = 0
            for i in range(args.requests + 20):
                pid = rng.choice(ids)
                params: list[tuple[str, str | int | float | bool | None]] = [
                    ("subject", f"Patient/{pid}"), ("periodStart", "2024-01-01"),
                    ("periodEnd", "2024-12-31"), ("status", "open-gap"),
                    ("status", "closed-gap"), ("status", "prospective-gap"),
                ]  # fmt: skip
                t = time.perf_counter()
                r = client.get(f"{base}/Measure/$care-gaps", params=params)
                elapsed = (time.perf_counter() - t) * 1000
                assert r.status_code == 200, r.text[:500]
                if i >= 20:  # the first requests warm the caches
                    times.append(elapsed)
                    gaps += r.text.count('"DetectedIssue"')
    finally:
        server.terminate()
        server.wait(timeout=30)
    write(args, stored[0] if stored else 0, t_load, startup, times, gaps)


def write(
    args: argparse.Namespace,
    patients: int,
    t_load: float,
    startup: float,
    times: list[float],
    gaps: int,
) -> None:
    now = datetime.now(UTC)
    load = os.getloadavg()
    lines = [
        f"# Measure/$care-gaps for one person: {patients:,} Patients stored (postgresql)",
        "",
        f"- date: {now:%Y-%m-%d %H:%M} UTC; machine: vm, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f}",
        f"- data: the store of `bench/programmes_bench.py --base {args.base} --replicas "
        f"{args.replicas}` (care facts of {args.base * args.replicas:,} persons) with "
        f"{args.patient_replicas} copies of the synthetic Patients bulk-loaded",
        "- target: `$care-gaps` for one person p95 <= 50 ms in the 1,000,000-Patient store",
        "- server: one process, access control and the client registry off (see the script)",
        f"- command: `python bench/programmes_caregaps.py --base {args.base} --replicas "
        f"{args.replicas} --patient-replicas {args.patient_replicas}`",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| Patients stored | {patients:,} |",
        f"| bulk load of the Patients (s, 0 if skipped) | {t_load:.0f} |",
        f"| server start-up (s) | {startup:.1f} |",
        f"| requests timed | {len(times):,} |",
        f"| p50 / p95 / p99 (ms) | {pct(times, 0.5):.1f} / {pct(times, 0.95):.1f} / "
        f"{pct(times, 0.99):.1f} |",
        f"| gaps returned (DetectedIssue), in all | {gaps:,} |",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{now:%Y-%m-%d}-vm-programmes-caregaps-postgresql.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(path.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
