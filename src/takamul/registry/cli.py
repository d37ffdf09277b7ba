"""The bodies of ``takamul mpi link`` and ``takamul mpi evaluate``: Rich progress and tables.

Kept here so the commands in ``takamul.cli`` stay thin wrappers; each returns an exit code.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from takamul.registry.evaluate import EvaluationError, compare_files
from takamul.registry.linking import link_records, read_records, write_links

__all__ = ["run_evaluate", "run_link", "run_link_spark"]


def run_link(
    input_path: Path,
    out: Path,
    console: Console,
    model_out: Path | None = None,
    threshold: float | None = None,
    workers: int = 2,
) -> int:
    if not input_path.is_file():
        console.print(f"[red]mpi link: {input_path}: no such file[/]")
        return 2
    if threshold is not None and not 0.0 < threshold < 1.0:
        console.print(f"[red]mpi link: --threshold must be in (0, 1), got {threshold}[/]")
        return 2
    started = time.perf_counter()
    steps: dict[str, float] = {}
    try:
        with console.status("reading Patient records") as status:
            records = read_records(input_path, workers=workers)
            steps["reading"] = time.perf_counter() - started
            # The records live until the process ends and hold no cycles: out of the cyclic
            # collector's sight, no collection walks their millions of objects again.
            gc.freeze()
            status.update(f"linking {len(records):,} records: blocking")
            names = iter(["comparing", "training", "scoring", "clustering", "writing"])

            def on_step(done: str) -> None:
                status.update(f"linking {len(records):,} records: {next(names, 'writing')}")

            result = link_records(records, threshold=threshold, workers=workers, on_step=on_step)
            steps.update(result.seconds)
            writing = time.perf_counter()
            write_links(result, out)
            if model_out is not None:
                model_out.parent.mkdir(parents=True, exist_ok=True)
                model_out.write_bytes(result.model.to_json())
            steps["writing"] = time.perf_counter() - writing
    except (orjson.JSONDecodeError, UnicodeDecodeError) as err:
        console.print(f"[red]mpi link: {input_path} is not FHIR NDJSON: {err}[/]")
        return 2
    seconds = time.perf_counter() - started
    table = Table(title="takamul mpi link", show_header=False)
    table.add_row("records", f"{len(records):,}")
    table.add_row("candidate pairs", f"{result.pairs:,}")
    table.add_row(f"links (p ≥ {result.model.threshold:.2f})", f"{result.edges:,}")
    table.add_row("links refused (ID conflict)", f"{result.refused_edges:,}")
    table.add_row("persons (clusters)", f"{result.clusters:,}")
    table.add_row("match prior λ (all pairs)", f"{result.model.prior:.3g}")
    for rule, n in result.blocking.capped_blocks.items():
        table.add_row(f"capped blocks {rule}", f"{n:,}")
    table.add_row(
        "seconds",
        f"{seconds:.1f} (" + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()) + ")",
    )
    table.add_row("records/s", f"{len(records) / max(seconds, 1e-9):,.0f}")
    console.print(table)
    console.print(f"Wrote {out}" + (f" and {model_out}" if model_out else ""))
    return 0


def run_evaluate(links: Path, truth: Path, console: Console) -> int:
    try:
        scores = compare_files(links, truth)
    except EvaluationError as err:
        console.print(f"[red]mpi evaluate: {err}[/]")
        return 2
    table = Table(title=f"{links.name} against {truth.name} ({scores.records:,} records)")
    for column in ("", "precision", "recall", "F1"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row("pairwise", f"{scores.precision:.4f}", f"{scores.recall:.4f}", f"{scores.f1:.4f}")
    table.add_row(
        "B-cubed",
        f"{scores.bcubed_precision:.4f}",
        f"{scores.bcubed_recall:.4f}",
        f"{scores.bcubed_f1:.4f}",
    )
    console.print(table)
    console.print(
        f"pairs: true {scores.true_pairs:,}, predicted {scores.predicted_pairs:,}, "
        f"correct {scores.true_positive_pairs:,}"
        + (
            f"; {scores.missing_in_links:,} truth records not in the links"
            if scores.missing_in_links
            else ""
        )
    )
    return 0


def run_link_spark(
    input_path: Path, out: Path, console: Console, master: str, threshold: float | None = None
) -> int:
    """``takamul mpi link INPUT --spark MASTER``: the same linkage on Apache Spark (national
    scale; ``local[*]`` runs it on this machine's cores)."""
    import os
    import sys

    if not input_path.exists():
        console.print(f"[red]mpi link: {input_path}: no such file[/]")
        return 2
    try:
        from pyspark.sql import SparkSession

        from takamul.registry.spark import link_records_spark
    except ImportError:
        console.print("[red]mpi link --spark needs PySpark: pip install 'takamul[spark]'[/]")
        return 2
    # executors run this interpreter, where takamul is importable
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    started = time.perf_counter()
    existing = SparkSession.getActiveSession()  # a caller's session is left running
    spark = (
        SparkSession.builder.master(master)
        .appName("takamul-mpi-link")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    try:
        with console.status(f"linking on Spark ({master})"):
            result = link_records_spark(spark, input_path, threshold=threshold)
            result.write_csv(out)
    finally:
        if existing is None:
            spark.stop()
    console.print(
        f"Linked on Spark ({master}) in {time.perf_counter() - started:.1f} s; wrote {out}"
    )
    return 0
