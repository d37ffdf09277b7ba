"""``takamul views``: run a SQL on FHIR ViewDefinition over NDJSON files or the shared record.

Registered by ``takamul.cli`` as a sub-application. Errors (a bad view, a bad NDJSON line, a
value a column cannot hold) are printed as one clear line and exit with status 2; output goes
to a temporary file renamed into place only on success, so a failed run leaves no half file.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from takamul.views.evaluate import CompiledView, compile_view
from takamul.views.output import OutputFormat, write_rows
from takamul.views.source import (
    SourceError,
    count_database,
    iter_database,
    iter_ndjson,
    total_bytes,
)
from takamul.views.viewdef import ViewError, load_view

__all__ = ["run_view", "views_app"]

views_app = typer.Typer(
    help="SQL on FHIR v2 views: flatten FHIR resources into tables (csv, ndjson, parquet, DuckDB).",
    no_args_is_help=True,
)

_SUFFIX_FORMATS = {
    ".csv": OutputFormat.csv,
    ".ndjson": OutputFormat.ndjson,
    ".jsonl": OutputFormat.ndjson,
    ".parquet": OutputFormat.parquet,
    ".duckdb": OutputFormat.duckdb,
    ".db": OutputFormat.duckdb,
}


@views_app.callback()
def _views() -> None:
    """SQL on FHIR v2 views: flatten FHIR resources into tables (csv, ndjson, parquet, DuckDB)."""
    # A callback keeps ``run`` a sub-command even while it is the only one.


# The data a view reads, as every command over views takes it (views run, deid run).
InputsOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--input",
        "-i",
        help="NDJSON file, or folder of *.ndjson files; repeat for several",
        show_default=False,
    ),
]
SourceDbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Read the current resources from the shared record (sqlite:///... or "
        "postgresql://...) instead of files",
        show_default=False,
    ),
]


@views_app.command("run")
def run_command(
    view: Annotated[Path, typer.Argument(help="ViewDefinition JSON file", show_default=False)],
    inputs: InputsOption = None,
    db: SourceDbOption = None,
    fmt: Annotated[
        OutputFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="Output format (default: from the --out suffix, else csv)",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Output file (default: standard output, csv or ndjson only)",
            show_default=False,
        ),
    ] = None,
    table: Annotated[
        str | None,
        typer.Option(help="Table name for --format duckdb (default: the view's name)"),
    ] = None,
) -> None:
    """Evaluate VIEW over the input resources and write its rows."""
    console = Console(stderr=True, soft_wrap=True)
    raise typer.Exit(run_view(view, inputs or [], db, fmt, out, table, console))


def _fail(console: Console, message: str) -> int:
    console.print(f"[red]views run: {message}[/]", highlight=False)
    return 2


def run_view(
    view_path: Path,
    inputs: list[Path],
    db: str | None,
    fmt: OutputFormat | None,
    out: Path | None,
    table: str | None,
    console: Console,
) -> int:
    """The body of ``takamul views run``; returns the exit status."""
    if bool(inputs) == bool(db):
        return _fail(console, "give the resources with --input FILE_OR_DIR or --db DATABASE_URL")
    if fmt is None:
        fmt = _SUFFIX_FORMATS.get(out.suffix.lower(), OutputFormat.csv) if out else OutputFormat.csv
    if out is None and fmt in (OutputFormat.parquet, OutputFormat.duckdb):
        return _fail(console, f"--format {fmt.value} needs --out FILE")
    try:
        view = compile_view(load_view(view_path))
    except ViewError as err:
        return _fail(console, f"invalid view {view_path}: {err}")

    started = time.perf_counter()
    counted = {"resources": 0}
    try:
        with _Progress(console) as progress:
            if inputs:
                total = total_bytes(inputs, view.resource_type)
                update = progress(total, "bytes")
                resources = iter_ndjson(inputs, view.resource_type, update)
            else:
                assert db is not None
                total = count_database(db, view.resource_type)
                update = progress(total, "resources")
                resources = iter_database(db, view.resource_type, progress=update)
            rows = view.run(_counting(resources, counted))
            n_rows = _write(view, rows, fmt, out, table)
    except SourceError as err:
        return _fail(console, str(err))
    except ViewError as err:
        return _fail(console, f"{view_path}: {err}")
    except OSError as err:  # the output (inputs that cannot be read are SourceErrors)
        return _fail(console, f"cannot write {err.filename or out}: {err.strerror or err}")
    seconds = time.perf_counter() - started
    n = counted["resources"]
    target = f" to {out}" if out else ""
    console.print(
        f"views run: {view.view.table_name}: {n_rows:,} rows from {n:,} resources{target} "
        f"in {seconds:.1f} s ({n / max(seconds, 1e-9):,.0f} resources/s)",
        highlight=False,
    )
    return 0


def _counting(
    resources: Iterator[dict[str, Any]], counted: dict[str, int]
) -> Iterator[dict[str, Any]]:
    for resource in resources:
        counted["resources"] += 1
        yield resource


def _write(
    view: CompiledView, rows: Iterator[Any], fmt: OutputFormat, out: Path | None, table: str | None
) -> int:
    if out is None:
        stream = sys.stdout.buffer
        n = write_rows(view, rows, fmt, stream)
        stream.flush()
        return n
    if fmt is OutputFormat.duckdb:
        # A DuckDB file may hold other tables: write into it directly, not via a copy.
        out.parent.mkdir(parents=True, exist_ok=True)
        return write_rows(view, rows, fmt, out, table)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        n = write_rows(view, rows, fmt, partial, table)
        partial.replace(out)
        return n
    finally:
        partial.unlink(missing_ok=True)


class _Progress:
    """A Rich progress bar on a terminal; nothing when stderr is not one (pipes, CI logs)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar: Any = None

    def __enter__(self) -> Callable[[int, str], Callable[[int], None]]:
        return self.start

    def start(self, total: int, unit: str) -> Callable[[int], None]:
        if not self.console.is_terminal:
            return lambda done: None
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        label = "{task.completed:,.0f}/{task.total:,.0f} " + unit
        self.bar = Progress(
            TextColumn("[bold]views run"),
            BarColumn(),
            TextColumn(label),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.bar.start()
        task = self.bar.add_task("run", total=total)
        bar = self.bar

        def update(done: int) -> None:
            bar.update(task, completed=done)

        return update

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
