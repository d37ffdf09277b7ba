"""Batch client-registry benchmark: ``takamul mpi link`` on a synthetic population (Saudi)
(target: 500,000 Patient records in <= 60 s with ``--workers 2`` on 2 cores, peak memory
<= 4 GB, pairwise precision >= 0.98 and F1 >= 0.95), scored against the generator's truth.

    .venv/bin/python bench/mpi_bench.py [--persons 230000] [--seed 1235] [--runs 1]

Steps: synthesise the population unless it is there already (``takamul synth``, about 2.2
Patient records a person; only ``Patient.ndjson`` and ``truth/`` are kept, the clinical
resources are deleted), run the link as a subprocess under ``/usr/bin/time -v`` while sampling
the memory of its process tree (parent and forked workers), read the seconds per step from
its output, evaluate the links (pairwise and B-cubed), and write
``bench/results/<date>-<host>-mpi-batch.md``. The cores are shared with whatever else runs:
every run is reported with the load average before and after it, and the table's headline
is the run that started on the quietest machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from takamul.registry.evaluate import Scores, compare_files  # noqa: E402

WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"
STEPS = ("reading", "blocking", "comparing", "training", "scoring", "clustering", "writing")
TIME = Path("/usr/bin/time")


def synth(country: str, persons: int, seed: int) -> Path:
    """The population's folder, generated on first use with the default years of history:
    ``--years`` changes the generator's draws, so the Patients would not be those measured
    in docs/registry.md."""
    out = WORK / f"mpi-batch-{country}-{persons}-{seed}"
    if (out / "Patient.ndjson").is_file() and (out / "truth" / "links.csv").is_file():
        return out
    command = [sys.executable, "-m", "takamul.cli", "synth", "--country", country]
    command += ["--patients", str(persons), "--seed", str(seed), "--out", str(out)]
    subprocess.run(command, check=True, cwd=ROOT)
    for path in out.glob("*.ndjson"):  # ~5 GB of clinical resources the link never reads
        if path.name != "Patient.ndjson":
            path.unlink()
    return out


def load() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return one, five, fifteen


# -- memory of the process tree --------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            out.extend(int(x) for x in text.split())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def _tree(pid: int) -> list[int]:
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(_children(p))
    return seen


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB; PSS shares the pages a forked worker has in common
    with its parent between them, so the sum of PSS is the memory the tree really uses."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return rss, pss


@dataclass
class TreeSampler:
    """Samples the summed RSS and PSS of a process and its descendants in a thread."""

    pid: int
    interval: float = 0.5
    peak_rss_kb: int = 0
    peak_pss_kb: int = 0
    peak_processes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = _tree(self.pid)
            sizes = [_memory_kb(p) for p in pids]
            self.peak_rss_kb = max(self.peak_rss_kb, sum(r for r, _ in sizes))
            self.peak_pss_kb = max(self.peak_pss_kb, sum(p for _, p in sizes))
            self.peak_processes = max(self.peak_processes, sum(1 for r, _ in sizes if r))
            self._stop.wait(self.interval)


# -- one run ---------------------------------------------------------------------------------


@dataclass
class Run:
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    wall: float
    cpu: float
    cpu_percent: str
    max_rss_mb: float  # the largest single process (/usr/bin/time -v)
    tree_rss_mb: float  # parent + workers at once, shared pages counted in each
    tree_pss_mb: float  # parent + workers at once, shared pages counted once
    records: int
    pairs: int
    links: int
    clusters: int
    steps: dict[str, float]
    scores: Scores


def _number(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    return int(m.group(1).replace(",", "")) if m else 0


def _time_v(text: str, label: str) -> str:
    m = re.search(rf"^\s*{re.escape(label)}: (.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else ""


def run_once(patients: Path, truth: Path, workers: int, out_dir: Path) -> Run:
    links = out_dir / "links.csv"
    command = [sys.executable, "-m", "takamul.cli", "mpi", "link", str(patients)]
    command += ["--out", str(links), "--workers", str(workers)]
    timed = TIME.is_file()
    if timed:
        command = [str(TIME), "-v", *command]
    # A wide, plain console so the result table is one line per row.
    env = {**os.environ, "COLUMNS": "240", "NO_COLOR": "1", "TERM": "dumb"}
    before = load()
    started = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sampler = TreeSampler(proc.pid)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    sampler.stop()
    after = load()
    if proc.returncode != 0:
        raise SystemExit(f"mpi link failed ({proc.returncode}):\n{stdout}\n{stderr}")
    text = stdout + stderr  # the command's table goes to stderr, as does /usr/bin/time's
    m = re.search(r"seconds\s*│?\s*([\d.]+) \(([^)]*)\)", text)
    steps = {}
    if m:
        for part in m.group(2).split(","):
            name, value = part.split()
            steps[name] = float(value)
    if timed:
        cpu = float(_time_v(stderr, "User time (seconds)")) + float(
            _time_v(stderr, "System time (seconds)")
        )
        max_rss_mb = int(_time_v(stderr, "Maximum resident set size (kbytes)")) / 1024
        cpu_percent = _time_v(stderr, "Percent of CPU this job got")
    else:
        import resource

        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu, max_rss_mb, cpu_percent = usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, ""
    return Run(
        load_before=before,
        load_after=after,
        wall=wall,
        cpu=cpu,
        cpu_percent=cpu_percent,
        max_rss_mb=max_rss_mb,
        tree_rss_mb=sampler.peak_rss_kb / 1024,
        tree_pss_mb=sampler.peak_pss_kb / 1024,
        records=_number(r"records\s*│?\s*([\d,]+)", text),
        pairs=_number(r"candidate pairs\s*│?\s*([\d,]+)", text),
        links=_number(r"links \(p ≥ [\d.]+\)\s*│?\s*([\d,]+)", text),
        clusters=_number(r"persons \(clusters\)\s*│?\s*([\d,]+)", text),
        steps=steps,
        scores=compare_files(links, truth),
    )


# -- the report ------------------------------------------------------------------------------


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.node()}: {os.cpu_count()} cores, {mem:.0f} GiB, "
        f"Python {platform.python_version()}"
    )


def _load(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in values)


def report(runs: list[Run], args: argparse.Namespace, command: str) -> str:
    now = datetime.now(UTC)
    best = min(range(len(runs)), key=lambda k: (runs[k].load_before[0], runs[k].wall))
    head = runs[best]
    columns = [
        "run",
        "load before",
        "load after",
        "wall s",
        "records/s",
        *(f"{step} s" for step in STEPS),
        "CPU s (user+sys)",
        "peak RSS, largest process",
        "peak RSS / PSS, all processes",
    ]
    lines = [
        f"# Batch client registry benchmark (`takamul mpi link`), {now:%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: {machine()}; shared with other engineers' processes, so each run "
        "shows the load average (1 / 5 / 15 min) before and after it",
        f"- data: synthetic population, {args.country}, {args.persons:,} persons, seed "
        f"{args.seed}: {head.records:,} Patient records (`{command}`)",
        f"- command: `takamul mpi link Patient.ndjson --out links.csv --workers {args.workers}`"
        " under `/usr/bin/time -v`, memory of the process tree sampled every 0.5 s",
        "- target: 500,000 records in <= 60 s on 2 cores, peak memory <= 4 GB, pairwise "
        "precision >= 0.98 and F1 >= 0.95",
        "",
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    for k, r in enumerate(runs):
        mark = f"**{k + 1}**" if k == best else str(k + 1)
        steps = " | ".join(f"{r.steps.get(s, 0.0):.1f}" for s in STEPS)
        lines.append(
            f"| {mark} | {_load(r.load_before)} | {_load(r.load_after)} | {r.wall:.1f} | "
            f"{r.records / r.wall:,.0f} | {steps} | {r.cpu:.1f} ({r.cpu_percent}) | "
            f"{r.max_rss_mb:,.0f} MB | {r.tree_rss_mb:,.0f} / {r.tree_pss_mb:,.0f} MB |"
        )
    s = head.scores
    target_met = (
        head.wall <= 60.0
        and head.tree_pss_mb <= 4096
        and s.precision >= 0.98
        and s.f1 >= 0.95
        and head.records >= 500_000
    )
    lines += [
        "",
        f"Wall seconds include interpreter start and imports; step seconds are the command's "
        f"own. Headline (run {best + 1}, the quietest start): {head.records:,} records in "
        f"{head.wall:.1f} s, {head.records / head.wall:,.0f} records/s, peak "
        f"{head.tree_pss_mb:,.0f} MB (PSS, all processes): target "
        f"**{'met' if target_met else 'not met'}**.",
        "",
        f"Links ({head.records:,} records; {head.pairs:,} candidate pairs, {head.links:,} "
        f"links at p >= 0.95, {head.clusters:,} clusters for {args.persons:,} true persons):",
        "",
        "| measure | precision | recall | F1 |",
        "| --- | --- | --- | --- |",
        f"| pairwise | {s.precision:.4f} | {s.recall:.4f} | {s.f1:.4f} |",
        f"| B-cubed | {s.bcubed_precision:.4f} | {s.bcubed_recall:.4f} | {s.bcubed_f1:.4f} |",
        "",
        f"True pairs {s.true_pairs:,}, predicted {s.predicted_pairs:,}, correct "
        f"{s.true_positive_pairs:,}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--persons", type=int, default=230_000)
    parser.add_argument("--seed", type=int, default=1235)
    parser.add_argument("--country", default="SA", choices=["SA", "IR"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1, help="repeat; the quietest is headline")
    parser.add_argument("--data", type=Path, help="a population folder instead of generating")
    args = parser.parse_args()

    data = args.data or synth(args.country, args.persons, args.seed)
    command = f"takamul synth --country {args.country} --patients {args.persons} --seed {args.seed}"
    runs = []
    out_dir = Path(tempfile.mkdtemp(prefix="mpi-bench-"))
    try:
        for k in range(args.runs):
            run = run_once(
                data / "Patient.ndjson", data / "truth" / "links.csv", args.workers, out_dir
            )
            print(
                f"run {k + 1}: load {_load(run.load_before)} -> {_load(run.load_after)}; "
                f"{run.records:,} records in {run.wall:.1f} s ({run.steps}); "
                f"peak {run.max_rss_mb:,.0f} MB largest process, "
                f"{run.tree_pss_mb:,.0f} MB PSS all; pairwise P {run.scores.precision:.4f} "
                f"R {run.scores.recall:.4f} F1 {run.scores.f1:.4f}",
                flush=True,
            )
            runs.append(run)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    text = report(runs, args, command)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{datetime.now(UTC):%Y-%m-%d}-{platform.node()}-mpi-batch.md"
    out.write_text(text, encoding="utf-8")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
