"""Real-time registry on a replay of the independent evaluation set through the API (issue 12).

Every registration of a ``bench.registry_eval`` set is written to a running server with
``PUT /fhir/Patient/{id}`` (link on create, in the write's transaction), in the set's order, as
facilities would send them; then each Patient's person is read from ``/mpi/patients/{id}`` and
the clustering is scored against the truth and set beside the batch run on the same records.
The server starts on an empty store with the packaged model (what a new deployment runs).

    .venv/bin/python bench/registry_replay.py [--data bench/work/regeval-SA-3000-1001]

Writes bench/results/<date>-vm-registry-replay.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.mpi_bench import load, machine  # noqa: E402
from bench.registry_accuracy import dataset  # noqa: E402
from bench.run import RESULTS, Server  # noqa: E402
from takamul.mpi.service import default_model  # noqa: E402
from takamul.registry.evaluate import compare_files  # noqa: E402
from takamul.registry.linking import link_records, write_links  # noqa: E402
from takamul.registry.record import from_patient  # noqa: E402


def replay(folder: Path, work: Path) -> tuple[Path, list[float]]:
    os.environ["TAKAMUL_AUTH"] = "false"
    server = Server(f"sqlite:///{work / 'replay.sqlite'}", 1)
    root = server.base.rsplit("/fhir", 1)[0]
    latencies: list[float] = []
    ids: list[str] = []
    try:
        with httpx.Client(base_url=server.base, timeout=60) as http:
            for line in (folder / "patients.ndjson").open("rb"):
                patient = orjson.loads(line)
                started = time.perf_counter()
                r = http.put(f"/Patient/{patient['id']}", content=line.strip(), headers={
                    "Content-Type": "application/fhir+json"})  # fmt: skip
                latencies.append((time.perf_counter() - started) * 1000)
                if r.status_code not in (200, 201):
                    raise SystemExit(f"{patient['id']}: {r.status_code} {r.text[:300]}")
                ids.append(patient["id"])
        links = work / "links-replay.csv"
        with httpx.Client(base_url=root, timeout=60) as api, links.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["patient_id", "person_id"])
            for pid in ids:
                writer.writerow([pid, api.get(f"/mpi/patients/{pid}").json()["person"]])
    finally:
        server.stop()
    return links, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()
    folder = args.data or dataset("SA", 3000, 1001)
    work = Path(tempfile.mkdtemp(prefix="replay-"))
    batch = work / "links-batch.csv"
    command = [sys.executable, "-m", "takamul.cli", "mpi", "link"]
    subprocess.run(
        [*command, str(folder / "patients.ndjson"), "--out", str(batch)],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    # the batch run with the model real time links with: what is left between the two paths
    # once the model is the same is the order of arrival
    packaged = work / "links-batch-packaged.csv"
    records = [from_patient(orjson.loads(line)) for line in (folder / "patients.ndjson").open("rb")]
    write_links(link_records(records, model=default_model(), workers=2), packaged)
    links, latencies = replay(folder, work)
    truth = folder / "truth.csv"
    rt, bt = compare_files(links, truth), compare_files(batch, truth)
    bp = compare_files(packaged, truth)
    latencies.sort()
    p50 = statistics.median(latencies)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    now = datetime.now(UTC)
    text = "\n".join(
        [
            f"# Real-time registry: replay of an independent set, {now:%Y-%m-%d %H:%M} UTC",
            "",
            f"- machine: {machine()}; 1-minute load average at the end {load()[0]:.1f}",
            f"- data: `{folder.name}` ({rt.records:,} registrations, `bench.registry_eval`)",
            "- real time: each registration `PUT` through the API on an empty SQLite store"
            " (link on create, packaged model); batch: `takamul mpi link` on the same file"
            " (model trained on it), and the batch run with the packaged model",
            "",
            "| path | precision | recall | F1 | B-cubed F1 |",
            "| --- | --- | --- | --- | --- |",
            f"| real time (API) | {rt.precision:.4f} | {rt.recall:.4f} | {rt.f1:.4f} "
            f"| {rt.bcubed_f1:.4f} |",
            f"| batch | {bt.precision:.4f} | {bt.recall:.4f} | {bt.f1:.4f} | {bt.bcubed_f1:.4f} |",
            f"| batch, packaged model | {bp.precision:.4f} | {bp.recall:.4f} | {bp.f1:.4f} "
            f"| {bp.bcubed_f1:.4f} |",
            "",
            f"Create with linking, whole request: p50 {p50:.1f} ms, p95 {p95:.1f} ms.",
            "",
        ]
    )
    path = RESULTS / f"{now:%Y-%m-%d}-vm-registry-replay.md"
    path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
