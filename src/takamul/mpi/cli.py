"""Bodies of the registry commands that work on the shared record (``--db``): link its
Patients in batch, and train a model on them that the server then links with.

Kept here so ``takamul.cli`` stays a thin wrapper; each returns an exit code.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import insert

from takamul.mpi.schema import mpi_metadata, mpi_model
from takamul.mpi.service import _patients
from takamul.registry.linking import link_records, write_links
from takamul.registry.record import RegistryRecord, from_patient
from takamul.settings import Settings
from takamul.store.cli import print_check
from takamul.store.repository import Store

__all__ = ["run_check_store", "run_link_store", "run_train_store"]


def _store_records(store: Store, console: Console) -> list[RegistryRecord]:
    with (
        console.status("reading the Patients of the shared record") as status,
        store.reading() as s,
    ):
        records = []
        for n, (_, body) in enumerate(_patients(s), 1):
            records.append(from_patient(body))
            if n % 20_000 == 0:
                status.update(f"reading the Patients of the shared record: {n:,}")
    return records


def run_link_store(settings: Settings, out: Path, console: Console, threshold: float | None) -> int:
    """``takamul mpi link --db URL --out links.csv``: the batch run over the shared record."""
    store = Store(settings)
    try:
        started = time.perf_counter()
        records = _store_records(store, console)
        if not records:
            console.print("[yellow]mpi link: the shared record holds no Patient[/]")
        with console.status(f"linking {len(records):,} records"):
            result = link_records(records, threshold=threshold, workers=2)
        write_links(result, out)
        console.print(
            f"Linked {len(records):,} Patients into {result.clusters:,} persons in "
            f"{time.perf_counter() - started:.1f} s; wrote {out}"
        )
        return 0
    finally:
        store.close()


def run_train_store(settings: Settings, console: Console, model_out: Path | None) -> int:
    """``takamul mpi train --db URL``: estimate m, u and λ on the stored Patients and keep the
    model in the database; the server links with the newest stored model from its next start."""
    store = Store(settings)
    try:
        records = _store_records(store, console)
        if len(records) < 100:
            console.print(
                f"[red]mpi train: {len(records)} Patients are too few to estimate a model; "
                "load the population first (at least 100 records)[/]"
            )
            return 2
        with console.status(f"training on {len(records):,} records"):
            result = link_records(records, workers=2)
        data = result.model.to_json()
        mpi_metadata.create_all(store.writer)
        with store.writer.connect() as conn:
            conn.execute(insert(mpi_model).values(created=time.time(), model=data))
            conn.commit()
        if model_out is not None:
            model_out.write_bytes(data)
        console.print(
            f"Trained on {len(records):,} Patients ({result.pairs:,} candidate pairs, "
            f"λ {result.model.prior:.4f}); stored in the database"
            + (f" and {model_out}" if model_out else "")
            + ". Restart the server to link with it."
        )
        return 0
    finally:
        store.close()


def run_check_store(
    settings: Settings, console: Console, repair: bool, show: int, workers: int = 1
) -> int:
    """``takamul mpi check --db URL [--repair]``: the registry's index rows against the stored
    Patients (``takamul.mpi.check``). 0 when they agree (or were all repaired), 1 when not."""
    from takamul.mpi.check import check_registry_index, count_patients

    store = Store(settings)
    try:
        columns = (
            TextColumn("[bold]checking"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
        )  # fmt: skip
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("check", total=count_patients(store))
            report = check_registry_index(
                store,
                repair=repair,
                progress=lambda n: bar.update(task, completed=n),
                workers=workers,
            )
    finally:
        store.close()
    if report.location != "store":
        console.print(
            "the registry's candidate index is kept in each server process's memory "
            "(TAKAMUL_REGISTRY_INDEX=memory, or auto on SQLite): no index rows to check",
            highlight=False,
        )
        return 0
    summary = f"{report.patients:,} Patients, {report.rows:,} registry index rows: " + (
        "the registry's index agrees with the Patients"
        if report.clean
        else f"{report.damaged:,} Patients' rows differ"
    )
    differences = [d.describe() for d in report.differences]
    repaired = report.repaired if repair else None
    return print_check(console, differences, summary, show, report.damaged, repaired)
