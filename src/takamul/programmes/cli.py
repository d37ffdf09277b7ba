"""``takamul programmes``: registry statuses, the care facts they read, and HEARTS indicators."""

from __future__ import annotations

import csv
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from takamul.mpi.service import ClientRegistry, unlinked_patients
from takamul.programmes.definitions import DefinitionError, load_catalog
from takamul.programmes.facts import CareFacts
from takamul.programmes.status import PersonStatus, statuses
from takamul.settings import Settings
from takamul.store.repository import Store

__all__ = ["STATUS_COLUMNS", "programmes_app", "write_status_csv"]

programmes_app = typer.Typer(
    help="Care programmes: registry statuses, overdue lists and indicators.",
    no_args_is_help=True,
)
console = Console(stderr=True)

STATUS_COLUMNS = (
    "person_id",
    "patient_ids",
    "programme",
    "facility",
    "status",
    "registered_on",
    "last_visit",
    "last_measurement_date",
    "last_systolic",
    "last_diastolic",
    "last_glucose_test",
    "last_glucose_value",
    "risk",
    "overdue_days",
)

DbOption = Annotated[
    str | None, typer.Option("--db", help="Database URL (default: TAKAMUL_DATABASE_URL)")
]
ProgrammesFile = Annotated[
    Path | None,
    typer.Option("--programmes", help="A programme file of your own (default: the packaged one)"),
]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ";".join(str(v) for v in value)
    return str(value)


def write_status_csv(rows: list[PersonStatus], out: Path) -> None:
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(STATUS_COLUMNS)
        for r in rows:
            writer.writerow(_cell(getattr(r, c)) for c in STATUS_COLUMNS)


def _as_of(text: str | None) -> date:
    if text is None:
        return date.today()
    try:
        return date.fromisoformat(text)
    except ValueError:
        console.print(f"[red]--as-of must be a date YYYY-MM-DD, not {text!r}[/]")
        raise typer.Exit(2) from None


def _link_persons(store: Store) -> None:
    """Patients stored without a person (bulk-loaded before the server ran) are linked first,
    as the server does at start-up: otherwise each registration would count as a person of its
    own (and get its own overdue Task)."""
    if unlinked := unlinked_patients(store):
        console.print(f"linking {unlinked:,} Patient records to persons (the client registry)")
        ClientRegistry(store).attach()


def _catch_up(facts: CareFacts) -> None:
    """Extract the care facts of resources stored since the last pass, with a progress bar."""
    if not facts.behind():
        return
    with Progress(
        TextColumn("reading care facts from the record"),
        BarColumn(),
        TextColumn("{task.completed:,} versions"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("facts", total=None)
        facts.catch_up(lambda n: bar.update(task, completed=n))


@programmes_app.command("status")
def status(
    db: DbOption = None,
    programme: Annotated[
        list[str] | None,
        typer.Option(
            "--programme", help="hypertension, diabetes, ckd, asthma-copd (repeat; default all)"
        ),
    ] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="YYYY-MM-DD (default today)")] = None,
    out: Annotated[
        Path, typer.Option("--out", help="CSV, one row per person and programme")
    ] = Path("status.csv"),
    programmes_file: ProgrammesFile = None,
) -> None:
    """Each registered person's status on a date (controlled, uncontrolled, missed visit, ...)."""
    day = _as_of(as_of)
    try:
        catalog = load_catalog(programmes_file)
        chosen = [catalog.programme(p).id for p in programme or ()]
    except DefinitionError as err:
        console.print(f"[red]{err}[/]")
        raise typer.Exit(2) from None
    store = Store(Settings.from_env(database_url=db))
    try:
        _link_persons(store)
        facts = CareFacts(store, catalog)
        _catch_up(facts)
        started = time.perf_counter()
        rows = statuses(store, catalog, day, chosen or None)
        write_status_csv(rows, out)
        counts = Counter((r.programme, r.status) for r in rows)
        for (prog, st), n in sorted(counts.items()):
            console.print(f"  {prog:<14} {st:<24} {n:>9,}")
        console.print(
            f"{len(rows):,} statuses as of {day} in "
            f"{time.perf_counter() - started:.1f} s; wrote {out}"
        )
    finally:
        store.close()


@programmes_app.command("index")
def index(
    db: DbOption = None,
    rebuild: Annotated[
        bool, typer.Option(help="Extract every resource again (after changing the codes)")
    ] = False,
    programmes_file: ProgrammesFile = None,
) -> None:
    """Bring the care facts up to date with the record (the server does this at start-up)."""
    store = Store(Settings.from_env(database_url=db))
    try:
        facts = CareFacts(store, load_catalog(programmes_file))
        if rebuild:
            facts.forget()
        started = time.perf_counter()
        _catch_up(facts)
        console.print(f"care facts up to date in {time.perf_counter() - started:.1f} s")
    finally:
        store.close()


@programmes_app.command("overdue")
def overdue_command(
    db: DbOption = None,
    programme: Annotated[
        list[str] | None,
        typer.Option("--programme", help="hypertension, diabetes, ... (repeat; default all)"),
    ] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="YYYY-MM-DD (default today)")] = None,
    facility: Annotated[
        str | None, typer.Option("--facility", help="Only this Organization id's registry")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="At most this many new Tasks per facility")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the overdue list as CSV instead of storing Tasks"),
    ] = None,
    programmes_file: ProgrammesFile = None,
) -> None:
    """The overdue list, high risk first, as follow-up Tasks on each responsible facility's
    worklist (or as CSV with --out). Tasks of persons who came back are completed."""
    from takamul.programmes.overdue import overdue, store_overdue

    day = _as_of(as_of)
    try:
        catalog = load_catalog(programmes_file)
        chosen = [catalog.programme(p).id for p in programme or ()] or [
            p.id for p in catalog.programmes
        ]
    except DefinitionError as err:
        console.print(f"[red]{err}[/]")
        raise typer.Exit(2) from None
    store = Store(Settings.from_env(database_url=db))
    try:
        _link_persons(store)
        facts = CareFacts(store, catalog)
        _catch_up(facts)
        rows = statuses(store, catalog, day, chosen, facility=facility)
        if out is not None:
            write_status_csv(overdue(rows), out)
            console.print(f"{len(overdue(rows)):,} overdue persons; wrote {out}")
            return
        run = store_overdue(store, catalog, rows, day, chosen, limit)
        console.print(
            f"follow-up Tasks: {run.created:,} new, {run.existing:,} already open, "
            f"{run.closed:,} completed (no longer overdue)"
        )
    finally:
        store.close()


@programmes_app.command("indicators")
def indicators_command(
    db: DbOption = None,
    programme: Annotated[str, typer.Option("--programme", help="hypertension, diabetes, ...")] = (
        "hypertension"
    ),
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="The last month's end (default today)")
    ] = None,
    months: Annotated[int, typer.Option(help="Months of indicators, ending with --as-of")] = 12,
    quarters: Annotated[int, typer.Option(help="Quarterly registration cohorts")] = 4,
    country: Annotated[
        str | None, typer.Option(help="SA or IR: the estimated prevalence for coverage")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="CSV of the indicators")] = Path(
        "indicators.csv"
    ),
    reports: Annotated[
        Path | None, typer.Option(help="Also write the MeasureReports (NDJSON) here")
    ] = None,
    equity: Annotated[
        Path | None,
        typer.Option(help="Also write control by equity dimension (JSON) for the last month"),
    ] = None,
    programmes_file: ProgrammesFile = None,
) -> None:
    """HEARTS indicators (controlled, uncontrolled, missed visits, lost to follow-up, coverage)
    per facility, region and month; registration cohorts; control by equity dimension."""
    import json

    import orjson

    from takamul.programmes.indicators import (
        by_dimension,
        cohorts,
        indicator_rows,
        measure_report,
        month_ends,
    )

    day = _as_of(as_of)
    try:
        catalog = load_catalog(programmes_file, country)
        prog = catalog.programme(programme)
    except DefinitionError as err:
        console.print(f"[red]{err}[/]")
        raise typer.Exit(2) from None
    if months < 1 or quarters < 0:
        console.print("[red]--months must be at least 1 and --quarters at least 0[/]")
        raise typer.Exit(2)
    store = Store(Settings.from_env(database_url=db))
    try:
        _link_persons(store)
        _catch_up(CareFacts(store, catalog))
        ends = month_ends(day, months)
        with console.status(f"indicators for {len(ends)} months"):
            rows = indicator_rows(store, catalog, prog.id, ends, country)
        with out.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(
                ["programme", "period_end", "level", "unit", "indicator", "numerator",
                 "denominator", "value"]
            )  # fmt: skip
            for r in rows:
                writer.writerow(
                    [r.programme, r.period_end, r.level, r.unit, r.indicator, r.numerator,
                     r.denominator, "" if r.value is None else f"{r.value:g}"]
                )  # fmt: skip
        national = [r for r in rows if r.level == "country" and r.period_end == ends[-1]]
        for r in national:
            console.print(f"  {r.indicator:<24} {r.numerator:>8,} / {r.denominator:<8,} {r.value}%")
        for c in cohorts(store, catalog, prog.id, quarters, day):
            console.print(f"  cohort {c.quarter} ({c.registered:,} registered): {c.outcomes}")
        if reports is not None:
            units = sorted({(r.level, r.unit, r.period_end) for r in rows})
            with reports.open("wb") as handle:
                for level, unit, end in units:
                    handle.write(orjson.dumps(measure_report(prog, rows, level, unit, end)) + b"\n")
        if equity is not None:
            found = by_dimension(store, statuses(store, catalog, ends[-1], [prog.id]))
            equity.write_text(json.dumps(found, indent=2, ensure_ascii=False), encoding="utf-8")
        console.print(f"{len(rows):,} indicator values; wrote {out}")
    finally:
        store.close()
