"""The ``takamul`` command: thin wrappers that call the packages."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from takamul.settings import Settings

if TYPE_CHECKING:
    from takamul.store import Store

app = typer.Typer(help="Takamul: the shared FHIR R4 health record.", no_args_is_help=True)
# soft_wrap: messages and paths stay on one line, whatever the terminal width.
console = Console(stderr=True, soft_wrap=True)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="sqlite:///path (default data/takamul.sqlite) or postgresql://...",
        envvar="TAKAMUL_DATABASE_URL",
    ),
]


@app.command()
def serve(
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
    workers: Annotated[int, typer.Option(help="Worker processes (PostgreSQL only)")] = 1,
    log_level: Annotated[
        str,
        typer.Option(
            help="Server log level: critical, error, warning, info (each worker says when it "
            "has started and is ready), debug"
        ),
    ] = "warning",
) -> None:
    """Serve the FHIR R4 API under /fhir."""
    import uvicorn

    settings = Settings.from_env(database_url=db)
    os.environ["TAKAMUL_DATABASE_URL"] = settings.database_url
    from takamul.store.cli import schema_ready

    levels = ("critical", "error", "warning", "info", "debug")
    level = log_level.lower()
    if level not in levels:
        raise typer.BadParameter(f"{log_level!r}: give one of {', '.join(levels)}")
    schema_ready(settings)  # the schema at this release's revision, or why not (exit 1)
    _catch_up_before_serving(settings)
    console.print(
        f"[bold]Takamul[/] FHIR R4 server on [cyan]http://{host}:{port}/fhir[/] "
        f"(store: {_redact(settings.database_url)})"
    )
    if workers > 1:
        uvicorn.run(
            "takamul.api.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=level,
        )
    else:
        from takamul.api.app import serving_app

        uvicorn.run(serving_app(settings), host=host, port=port, log_level=level)


def _catch_up_before_serving(settings: Settings) -> None:
    """What a bulk load left is caught up here, with its progress shown, before the server
    (each worker) starts: the server would otherwise do it silently before it answered. Opening
    the store here also creates the schema once, so that several workers do not race to."""
    from takamul.catchup import backlog
    from takamul.store import Store

    store = Store(settings)
    try:
        if found := backlog(store):
            console.print(
                f"catching up before serving: {found.unlinked:,} Patients without a person, "
                f"about {found.versions:,} resource versions since the last pass (after a bulk "
                "load, `takamul catch-up` saves this wait)"
            )
            _catch_up(store)
    finally:
        store.close()


@app.command()
def load(
    paths: Annotated[list[Path], typer.Argument(help="NDJSON files, Bundle files or folders")],
    db: DbOption = None,
    errors: Annotated[
        Path | None, typer.Option(help="NDJSON file of rejected lines (default: next to the DB)")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Resources per transaction")] = 1000,
    workers: Annotated[
        int | None, typer.Option(help="Processes that validate and index (default: cores - 1)")
    ] = None,
    catch_up: Annotated[
        bool,
        typer.Option(
            "--catch-up/--no-catch-up",
            help="Then link, extract care facts and score (see `takamul catch-up`); skip it "
            "when more loads follow, and run `takamul catch-up` once after the last",
        ),
    ] = True,
) -> None:
    """Load FHIR NDJSON and Bundle files into the shared record; resumes after interruption."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from takamul.bulk import load_paths
    from takamul.bulk.load import discover
    from takamul.store import Store

    settings = Settings.from_env(database_url=db)
    errors_path = errors or Path("data") / "load-errors.ndjson"
    try:
        total = sum(f.stat().st_size for f in discover(paths))
    except FileNotFoundError as err:
        console.print(f"[red]{err}[/]")
        raise typer.Exit(2) from err
    store = Store(settings)
    columns = (
        TextColumn("[bold]loading"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[resources]:,} resources, {task.fields[rate]:,.0f}/s"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("load", total=total, resources=0, rate=0.0)
        started = time.perf_counter()
        done = 0

        def report(n_bytes: int, n_resources: int) -> None:
            nonlocal done
            done += n_resources
            rate = done / max(time.perf_counter() - started, 1e-9)
            bar.update(task, advance=n_bytes, resources=done, rate=rate)

        summary = load_paths(
            store,
            paths,
            errors_path,
            batch_size=batch_size,
            workers=workers,
            progress=report,
        )
    console.print(
        f"loaded {summary.loaded}, updated {summary.updated}, rejected {summary.rejected}, "
        f"skipped (already loaded) {summary.skipped} from {summary.files} files in "
        f"{summary.seconds:.1f} s ({summary.rate:.0f} resources/s)"
    )
    if summary.rejected:
        console.print(f"[yellow]rejected lines and their reasons: {errors_path}[/]")
    try:
        if catch_up:
            # a bulk load runs no write hooks: do their work now, not at the server's start
            _catch_up(store)
        else:
            console.print("not caught up: run `takamul catch-up` after the last load")
    finally:
        store.close()


@app.command("catch-up")
def catch_up_command(db: DbOption = None) -> None:
    """Do what the write hooks would have done for resources stored without them (bulk
    loads): link Patients to persons, extract care facts, score questionnaire responses.
    Safe to run again; the server otherwise does it at start-up, before it answers."""
    from takamul.store import Store

    store = Store(Settings.from_env(database_url=db))
    try:
        _catch_up(store)
    finally:
        store.close()


def _catch_up(store: Store) -> None:
    """``takamul.catchup.catch_up`` with a progress line per phase and a summary."""
    from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

    from takamul.catchup import PHASES, catch_up

    columns = (
        SpinnerColumn(),
        TextColumn("[bold]catching up: {task.description}"),
        TextColumn("{task.completed:,} {task.fields[what]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def report(phase: str, done: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=None, what=PHASES[phase])
            bar.update(tasks[phase], completed=done)

        summary = catch_up(store, report)
    for phase, done in summary.done.items():
        console.print(
            f"caught up: {phase}, {done:,} {PHASES[phase]} in {summary.seconds[phase]:.1f} s"
        )


@app.command("load-demo")
def load_demo(db: DbOption = None) -> None:
    """Load the small demonstration data set (a transaction Bundle) into the store."""
    from takamul.demo import load_demo_bundle

    settings = Settings.from_env(database_url=db)
    count = load_demo_bundle(settings)
    console.print(f"Loaded {count} demonstration resources into {_redact(settings.database_url)}")


@app.command()
def validate(paths: list[Path]) -> None:
    """Validate FHIR JSON resource files against the R4 definitions; exit 1 if any is invalid."""
    import orjson

    from takamul.fhir.validation import validate_resource

    bad = 0
    for path in paths:
        issues = validate_resource(orjson.loads(path.read_bytes()))
        errors = [i for i in issues if i.severity == "error"]
        bad += bool(errors)
        for i in issues:
            console.print(f"{path}: {i.severity} at {i.expression}: {i.diagnostics}")
        if not errors:
            console.print(f"{path}: valid")
    raise typer.Exit(1 if bad else 0)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="Output folder (NDJSON + truth/)")],
    country: Annotated[str | None, typer.Option(help="SA or IR")] = None,
    patients: Annotated[int | None, typer.Option(help="Number of persons (people)")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed")] = None,
    years: Annotated[int | None, typer.Option(help="Years of clinical history")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON or TOML file of overrides")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes")] = None,
) -> None:
    """Write a synthetic national population (FHIR R4 NDJSON) and its truth files."""
    from takamul.synth.cli import run

    run(
        out,
        console,
        config,
        country=country,
        patients=patients,
        seed=seed,
        years=years,
        workers=workers,
    )


mpi_app = typer.Typer(
    help="Client registry: link Patient records to persons.", no_args_is_help=True
)
app.add_typer(mpi_app, name="mpi")


@mpi_app.command("link")
def mpi_link(
    input_path: Annotated[
        Path | None, typer.Argument(help="FHIR Patient NDJSON (or --db for the shared record)")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="CSV patient_id,person_id")] = Path(
        "links.csv"
    ),
    db: Annotated[
        str | None, typer.Option(help="Link the Patients of the shared record at this URL")
    ] = None,
    model_out: Annotated[Path | None, typer.Option(help="Write the trained model (JSON)")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Match probability for a link (default 0.95)")
    ] = None,
    workers: Annotated[int, typer.Option(help="Worker processes")] = 2,
    spark: Annotated[
        str | None,
        typer.Option(help="Run on Apache Spark at this master (e.g. local[*], spark://host:7077)"),
    ] = None,
) -> None:
    """Link Patient records (block, compare, train Fellegi-Sunter by EM, cluster)."""
    if (input_path is None) == (db is None):
        console.print("[red]mpi link: give an NDJSON file or --db URL (one of them)[/]")
        raise typer.Exit(2)
    if db is not None:
        from takamul.mpi.cli import run_link_store

        raise typer.Exit(
            run_link_store(Settings.from_env(database_url=db), out, console, threshold)
        )
    from takamul.registry.cli import run_link, run_link_spark

    assert input_path is not None
    if spark is not None:
        raise typer.Exit(run_link_spark(input_path, out, console, spark, threshold))
    raise typer.Exit(run_link(input_path, out, console, model_out, threshold, workers))


@mpi_app.command("train")
def mpi_train(
    db: DbOption = None,
    model_out: Annotated[Path | None, typer.Option(help="Also write the model (JSON)")] = None,
) -> None:
    """Train the linkage model on the stored Patients; the server links with it from its
    next start (until then, and before any training, it uses the packaged model)."""
    from takamul.mpi.cli import run_train_store

    raise typer.Exit(run_train_store(Settings.from_env(database_url=db), console, model_out))


@mpi_app.command("check")
def mpi_check(
    db: DbOption = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Rewrite the differing Patients' index rows")
    ] = False,
    show: Annotated[int, typer.Option(help="Differences to list")] = 50,
    workers: Annotated[
        int, typer.Option(help="Processes that recompute the rows (the cost is CPU)")
    ] = 1,
) -> None:
    """Recompute every stored Patient's registry index rows (block keys, national ID, name
    values) and compare them with the tables the registry looks candidates up in. Exit 0
    when they agree (or were all repaired), 1 when they differ. ``takamul db check`` does
    the same for the search index."""
    from takamul.mpi.cli import run_check_store

    raise typer.Exit(
        run_check_store(Settings.from_env(database_url=db), console, repair, show, workers)
    )


@mpi_app.command("evaluate")
def mpi_evaluate(
    links: Annotated[Path, typer.Argument(help="CSV patient_id,person_id")],
    truth: Annotated[Path, typer.Argument(help="CSV patient_id,person (truth/links.csv)")],
) -> None:
    """Pairwise and B-cubed precision, recall and F1 of links against the truth."""
    from takamul.registry.cli import run_evaluate

    raise typer.Exit(run_evaluate(links, truth, console))


def _register_subcommands() -> None:
    """Sub-applications that live with their package (each a Typer app of its own)."""
    from takamul.caregivers.cli import caregivers_app
    from takamul.careplans.cli import careplans_app
    from takamul.coordination.cli import referrals_app
    from takamul.equity.access_cli import access_app
    from takamul.equity.cli import equity_app
    from takamul.equity.indicators_cli import indicators_app
    from takamul.equity.report_cli import report_app
    from takamul.mentalhealth.cli import instruments_app, mh_app
    from takamul.programmes.cli import programmes_app
    from takamul.security.audit_cli import audit_app
    from takamul.security.cli import clients_app, demo, keys_app, token, users_app
    from takamul.security.deid import deid_app
    from takamul.store.cli import db_app
    from takamul.views.cli import views_app

    equity_app.add_typer(access_app)  # takamul equity access
    equity_app.add_typer(indicators_app, name="indicators")
    equity_app.add_typer(report_app)  # takamul equity report
    app.add_typer(equity_app, name="equity")
    app.add_typer(clients_app, name="clients")
    app.add_typer(users_app, name="users")
    app.add_typer(keys_app, name="keys")
    app.command("token")(token)
    app.command("demo-credentials")(demo)
    app.add_typer(audit_app, name="audit")
    app.add_typer(deid_app, name="deid")
    app.add_typer(views_app, name="views")
    app.add_typer(programmes_app, name="programmes")
    app.add_typer(mh_app, name="mh")
    # the instruments serve more than mental health (ZBI-12 screens caregivers' burden): also
    # ``takamul instruments install FILE``, the name the operators' guide uses
    app.add_typer(instruments_app, name="instruments")
    app.add_typer(caregivers_app, name="caregivers")
    app.add_typer(referrals_app, name="referrals")  # takamul referrals metrics
    app.add_typer(careplans_app, name="careplans")  # takamul careplans make
    app.add_typer(db_app, name="db")  # takamul db status|upgrade|check|backup


_register_subcommands()


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    app()
