"""``takamul db``: the store's schema (status, upgrade), its search index (check, repair) and an
online backup of an embedded SQLite store. See docs/operations.md."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from takamul.fhir.outcome import FhirError
from takamul.settings import Settings
from takamul.store.backup import backup_sqlite

if TYPE_CHECKING:
    from takamul.store import Store

__all__ = ["db_app", "print_check", "schema_ready"]

db_app = typer.Typer(
    help="The store's database: schema migrations, search index check and repair, planner "
    "statistics, backup.",
    no_args_is_help=True,
)
console = Console(stderr=True, soft_wrap=True)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="sqlite:///path (default data/takamul.sqlite) or postgresql://...",
        envvar="TAKAMUL_DATABASE_URL",
    ),
]


def _url(db: str | None) -> str:
    return Settings.from_env(database_url=db).database_url


def _where(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _open_store(settings: Settings, command: str) -> Store:
    """The store, or the reason it cannot be opened and exit 2."""
    from takamul.store import Store

    try:
        return Store(settings)
    except (FhirError, SQLAlchemyError) as err:
        console.print(f"[red]{command}: {err}[/]", highlight=False)
        raise typer.Exit(2) from err


def schema_ready(settings: Settings) -> None:
    """Bring the schema to this release as the server's start does, or say plainly why not and
    exit 1 (rather than a traceback from inside the server's start)."""
    from takamul.store.engine import make_engines
    from takamul.store.migrations import SchemaError, prepare_at_start

    writer, reader = make_engines(settings.database_url)
    try:
        prepare_at_start(writer, _where(settings.database_url))
    except SchemaError as err:
        console.print(f"[red]{err}[/]", highlight=False)
        raise typer.Exit(1) from err
    finally:
        writer.dispose()
        reader.dispose()


@db_app.command("status")
def status_command(db: DbOption = None) -> None:
    """Where the schema stands: its revision, this release's head, what an upgrade would run.

    Exit 0 when up to date, 1 when an upgrade is due."""
    from takamul.store.engine import make_engines
    from takamul.store.migrations import read_state

    url = _url(db)
    writer, reader = make_engines(url)
    try:
        with reader.connect() as conn:
            state = read_state(conn)
    finally:
        writer.dispose()
        reader.dispose()
    pending = state.pending()
    console.print(
        f"{_where(url)}: {state.describe()}; this release's head is {state.head}"
        + (f"; pending: {', '.join(pending)}" if pending else "; up to date"),
        highlight=False,
    )
    raise typer.Exit(0 if not pending else 1)


@db_app.command("upgrade")
def upgrade_command(
    db: DbOption = None,
    revision: Annotated[str, typer.Option(help="Target revision")] = "head",
) -> None:
    """Bring the store's schema to this release (a store made before migrations is adopted
    at the baseline first, if its tables are the baseline's). One transaction; back up first."""
    from takamul.store.engine import make_engines
    from takamul.store.migrations import SchemaError, upgrade

    url = _url(db)
    writer, reader = make_engines(url)
    started = time.perf_counter()
    try:
        done = upgrade(writer, revision)
    except SchemaError as err:
        console.print(f"[red]db upgrade: {err}[/]", highlight=False)
        raise typer.Exit(1) from err
    finally:
        writer.dispose()
        reader.dispose()
    if not done.applied:
        console.print(f"{_where(url)}: already at {done.after}", highlight=False)
        return
    adopted = " (adopted: made before migrations)" if done.adopted else ""
    console.print(
        f"{_where(url)}: {done.before.describe()} -> {done.after}{adopted}; ran "
        f"{', '.join(done.applied)} in {time.perf_counter() - started:.1f} s",
        highlight=False,
    )


@db_app.command("check")
def check_command(
    db: DbOption = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Rewrite the damaged resources' index rows")
    ] = False,
    show: Annotated[int, typer.Option(help="Differences to list")] = 50,
    workers: Annotated[
        int, typer.Option(help="Processes that recompute the index (the cost is CPU)")
    ] = 1,
) -> None:
    """Recompute every resource's search index rows from its content and compare them with the
    index tables. Exit 0 when they agree (or were all repaired), 1 when they differ."""
    from takamul.store.dbcheck import check_index, count_resources

    settings = Settings.from_env(database_url=db)
    store = _open_store(settings, "db check")
    try:
        total = count_resources(store)
        columns = (
            TextColumn("[bold]checking"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("check", total=total)
            report = check_index(
                store,
                repair=repair,
                progress=lambda n: bar.update(task, completed=n),
                workers=workers,
            )
    finally:
        store.close()
    summary = f"{report.resources:,} resources, {report.rows:,} index rows: " + (
        "the index agrees with the resources"
        if report.clean
        else f"{report.damaged:,} damaged ({report.missing:,} rows missing, {report.extra:,} extra)"
    )
    raise typer.Exit(
        print_check(console, [d.describe() for d in report.differences], summary, show=show,
                    damaged=report.damaged, repaired=report.repaired if repair else None)
    )  # fmt: skip


def print_check(
    console: Console,
    differences: list[str],
    summary: str,
    show: int,
    damaged: int,
    repaired: int | None,
) -> int:
    """A check's report (``db check``, ``mpi check``): the first ``show`` differences, the
    summary (with what was repaired, when ``repaired`` is not None) and the exit code: 0 when
    nothing differs or everything was repaired, 1 when not."""
    for difference in differences[:show]:
        console.print(f"  {difference}", highlight=False)
    if len(differences) > show or damaged > len(differences):
        console.print("  ... and more (--show N lists more)", highlight=False)
    if repaired is not None and damaged:
        summary += f"; repaired {repaired:,}"
    console.print(summary, highlight=False)
    return 0 if not damaged or repaired == damaged else 1


@db_app.command("analyze")
def analyze_command(
    db: DbOption = None,
    stale: Annotated[
        bool,
        typer.Option("--stale", help="Only the tables whose statistics are missing or out of date"),
    ] = False,
) -> None:
    """Refresh the planner's statistics (PostgreSQL: and VACUUM, so that index-only scans skip
    the table). Run it after a pg_restore, which copies no statistics: until then searches and
    the catch-up are planned on guesses."""
    settings = Settings.from_env(database_url=db)
    store = _open_store(settings, "db analyze")
    started = time.perf_counter()
    try:
        with console.status("analysing the store's tables"):
            if stale:
                tables = store.analyze_stale()
                what = ", ".join(tables) if tables else "none was stale"
            else:
                what = f"{len(store.analyze(vacuum=True))} tables"
    finally:
        store.close()
    console.print(
        f"{_where(settings.database_url)}: statistics refreshed ({what}) in "
        f"{time.perf_counter() - started:.1f} s",
        highlight=False,
    )


@db_app.command("backup")
def backup_command(
    target: Annotated[Path, typer.Argument(help="The backup file to write (must not exist)")],
    db: DbOption = None,
) -> None:
    """Copy an SQLite store with SQLite's online backup API: a consistent copy while the
    server keeps running. (PostgreSQL: pg_dump -Fc, see docs/operations.md.)"""
    url = make_url(_url(db))
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        console.print(
            "[red]db backup copies an SQLite store; back up PostgreSQL with pg_dump -Fc "
            "(docs/operations.md)[/]"
        )
        raise typer.Exit(2)
    if not Path(url.database).is_file():
        console.print(f"[red]db backup: no such SQLite database: {url.database}[/]")
        raise typer.Exit(2)
    if target.exists():
        console.print(f"[red]db backup: {target} exists; choose a new file[/]")
        raise typer.Exit(2)
    started = time.perf_counter()
    pages = backup_sqlite(Path(url.database), target)
    console.print(
        f"backed up {url.database} to {target} ({pages:,} pages, "
        f"{target.stat().st_size / 1e6:,.1f} MB) in {time.perf_counter() - started:.1f} s",
        highlight=False,
    )
