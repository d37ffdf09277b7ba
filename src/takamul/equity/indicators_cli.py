"""``takamul equity indicators``: population indicators by equity dimension, and outreach
worklists.

``takamul.cli`` registers ``indicators_app`` under the equity command
(``equity_app.add_typer(indicators_app, name="indicators")``).

```sh
takamul equity indicators compute -i data/synth-sa --links data/synth-sa/truth/links.csv \\
    --out results.csv --heat heat-template.csv --json results.json
takamul equity indicators outreach --indicator dm_screen -i data/synth-sa --quintile 1 \\
    --limit 200 --out worklist-bundle.json
```
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from takamul.equity.indicators import (
    DEFAULT_MIN_CELL,
    Definitions,
    IndicatorError,
    IndicatorResults,
    Population,
    compute,
    default_period_end,
    load_definitions,
    load_links,
    materialize_views,
    prepare,
    write_csv,
    write_heat,
    write_json,
)

__all__ = ["indicators_app"]

indicators_app = typer.Typer(
    help="Population indicators by equity dimension (with 95% CIs) and outreach worklists.",
    no_args_is_help=True,
)
console = Console(stderr=True, soft_wrap=True)
# Exit code for input that cannot be used, as in the other takamul commands.
BAD_INPUT = 2

InputOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--input", "-i", help="NDJSON file or folder (a Bulk Data export, takamul synth output)"
    ),
]
LinksOpt = Annotated[
    Path | None,
    typer.Option(
        "--links",
        help="CSV patient_id,person (truth/links.csv, takamul mpi link): count a person's "
        "records once; golden-record Person resources in the input are used anyway",
    ),
]
DefsOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--definitions", help="Indicator definition file or folder (default: the standard set)"
    ),
]
PeriodOpt = Annotated[
    str | None,
    typer.Option(
        "--period-end",
        help="Last day of the periods, YYYY-MM-DD (default: the manifest's transactionTime, "
        "else today)",
    ),
]


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]indicators: {escape(message)}[/red]")
    return typer.Exit(BAD_INPUT)


def _period_end(text: str | None, inputs: list[Path] | None) -> date:
    if text is None:
        return default_period_end(inputs)
    try:
        return date.fromisoformat(text)
    except ValueError as err:
        raise _fail(f"--period-end must be a date YYYY-MM-DD, got {text!r}") from err


@contextmanager
def _errors() -> Iterator[None]:
    """Every expected failure becomes a red message and exit status 2."""
    import duckdb

    from takamul.views.source import SourceError

    try:
        yield
    except (IndicatorError, SourceError, ValueError) as err:
        raise _fail(str(err)) from err
    except duckdb.Error as err:
        raise _fail(f"SQL error: {str(err).splitlines()[0]}") from err
    except OSError as err:
        raise _fail(str(err)) from err


def load_population(
    defs: Definitions,
    inputs: list[Path] | None,
    db: str | None,
    links: Path | None,
    period_end: str | None,
    workers: int,
) -> tuple[Any, Population]:
    import duckdb

    end = _period_end(period_end, inputs)
    pairs = load_links(links) if links else None
    con = duckdb.connect()
    started = time.perf_counter()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("views", total=len(defs.views))

        def done(view: str, rows: int) -> None:
            progress.update(task, advance=1, description=f"views ({view}: {rows:,} rows)")

        counts = materialize_views(
            con,
            defs,
            inputs=inputs if inputs else None,
            db_url=None if inputs else db,
            links=pairs,
            workers=workers,
            progress=done,
        )
    rows = sum(counts.values())
    console.print(
        f"Views: {len(counts)} tables, {rows:,} rows in {time.perf_counter() - started:.1f} s"
    )
    pop = prepare(con, defs, end)
    how = (
        f"{pop.records:,} Patient records"
        if pop.linked
        else "no person links: each Patient record counts as a person"
    )
    console.print(f"Population: {pop.people:,} {pop.unit}s ({how}), period end {end.isoformat()}")
    return con, pop


def _need_data(inputs: list[Path] | None, db: str | None) -> None:
    if not inputs and not db:
        raise _fail("give the data: --input FILE_OR_DIR (repeatable) or --db DATABASE_URL")


def _format(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" + ("%" if unit == "%" else f" {unit}" if unit else "")


def _summary(results: IndicatorResults) -> Table:
    table = Table(title=f"National values ({results.unit}s, period ending {results.period_end})")
    # Ids (typed next with --indicator) and numbers are never cut; the headers give way.
    width = max(len(i.id) for i in results.indicators)
    table.add_column("Indicator", no_wrap=True, min_width=width)
    table.add_column("Better", no_wrap=True)
    table.add_column("People", justify="right", no_wrap=True)
    table.add_column("Estimate", justify="right", no_wrap=True)
    table.add_column("95% CI", justify="right", no_wrap=True)
    table.add_column("Cells", justify="right")
    table.add_column("Hidden", justify="right")
    for ind in results.indicators:
        e = results.national(ind.id)
        cells = [x for x in results.estimates if x.indicator == ind.id]
        hidden = sum(1 for x in cells if x.suppressed)
        ci = f"{e.ci_lb:.1f}-{e.ci_ub:.1f}" if e.ci_lb is not None and e.ci_ub is not None else "-"
        table.add_row(
            ind.id,
            "higher" if ind.favourable else "lower",
            "-" if e.population is None else f"{e.population:,}",
            _format(e.estimate, ind.unit),
            ci,
            f"{len(cells):,}",
            f"{hidden:,}",
        )
    return table


@indicators_app.callback()
def _indicators() -> None:
    """Population indicators by equity dimension (with 95% CIs) and outreach worklists."""


@indicators_app.command("compute")
def compute_command(
    inputs: InputOpt = None,
    db: Annotated[
        str | None, typer.Option("--db", help="The shared record's database URL instead of files")
    ] = None,
    links: LinksOpt = None,
    definitions: DefsOpt = None,
    indicator: Annotated[
        list[str] | None, typer.Option("--indicator", help="Only these indicators (repeatable)")
    ] = None,
    dimensions: Annotated[
        str | None,
        typer.Option(
            "--dimensions",
            help="Comma-separated dimension ids (default: all: income_quintile, education, "
            "region, urban_rural, sex, age_group, nationality, coverage, disability)",
        ),
    ] = None,
    pairs: Annotated[
        bool, typer.Option("--pairs/--no-pairs", help="Also every pair of dimensions")
    ] = True,
    min_cell: Annotated[
        int, typer.Option("--min-cell", min=0, help="Suppress cells with fewer people than this")
    ] = DEFAULT_MIN_CELL,
    confidence: Annotated[float, typer.Option(help="Confidence level of the intervals")] = 0.95,
    period_end: PeriodOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Tidy CSV of every estimate")] = None,
    heat: Annotated[
        Path | None,
        typer.Option("--heat", help="HEAT Plus data template CSV (for takamul equity measures)"),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="JSON of every estimate")] = None,
    setting: Annotated[str, typer.Option(help="HEAT 'setting' column")] = "National",
    source: Annotated[str, typer.Option(help="HEAT 'source' column")] = "Takamul shared record",
    iso3: Annotated[str, typer.Option(help="HEAT 'iso3' column, e.g. SAU")] = "",
    workers: Annotated[
        int, typer.Option(min=1, help="Processes evaluating the views in parallel")
    ] = 1,
) -> None:
    """Compute every indicator nationally, by each dimension and by each pair of dimensions."""
    with _errors():
        if not 0.0 < confidence < 1.0:
            raise _fail(f"--confidence must be between 0 and 1, got {confidence}")
        _need_data(inputs, db)
        defs = load_definitions(definitions)
        dims = [d.strip() for d in dimensions.split(",") if d.strip()] if dimensions else None
        for name in dims or []:
            defs.dimension(name)  # an unknown dimension fails before the data are read
        for name in indicator or []:
            defs.indicator(name)
        _con, pop = load_population(defs, inputs, db, links, period_end, workers)
        results = compute(
            pop,
            dimensions=dims,
            pairs=pairs,
            min_cell=min_cell,
            confidence=confidence,
            indicators=indicator,
        )
        console.print(
            f"Indicators: {len(results.indicators)} x {len(results.dimensions)} dimensions"
            f"{' and pairs' if pairs else ''}: {len(results.estimates):,} estimates in "
            f"{results.seconds:.1f} s (cells under {min_cell} people suppressed)"
        )
        console.print(_summary(results))
        if out:
            n = write_csv(results, out)
            console.print(f"Wrote {n:,} rows to {escape(str(out))}")
        if json_out:
            write_json(results, json_out)
            console.print(f"Wrote {escape(str(json_out))}")
        if heat:
            n = write_heat(results, heat, setting=setting, source=source, iso3=iso3)
            console.print(f"Wrote {n:,} HEAT template rows to {escape(str(heat))}")


@indicators_app.command("outreach")
def outreach_command(
    indicator: Annotated[str, typer.Option("--indicator", help="Indicator id, e.g. dm_screen")],
    inputs: InputOpt = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="The shared record's database URL: read from it when there is no --input, and "
            "store the Tasks and Lists in it unless --out is given",
        ),
    ] = None,
    links: LinksOpt = None,
    definitions: DefsOpt = None,
    quintile: Annotated[
        int | None,
        typer.Option("--quintile", min=1, max=5, help="Only this income quintile (1 = poorest)"),
    ] = None,
    filters: Annotated[
        list[str] | None,
        typer.Option("--filter", help="DIMENSION=VALUE, e.g. urban_rural=rural (repeatable)"),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="At most this many people")
    ] = None,
    owner: Annotated[
        str, typer.Option(help="Task owner: 'home' (home facility) or 'none' (unassigned)")
    ] = "home",
    lists: Annotated[str, typer.Option(help="'one' List, or one per home 'facility'")] = "one",
    period_end: PeriodOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the transaction Bundle (JSON) here")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes evaluating the views")] = 1,
) -> None:
    """Worklist of the people behind an indicator's gap, as FHIR Tasks grouped by a List."""
    from takamul.equity.outreach import store_bundle, worklist, worklist_bundle

    with _errors():
        if out is None and db is None:
            raise _fail("say where the worklist goes: --out bundle.json or --db DATABASE_URL")
        chosen: dict[str, str] = {}
        for item in filters or []:
            name, sep, value = item.partition("=")
            if not sep or not name.strip() or not value.strip():
                raise _fail(f"--filter must be DIMENSION=VALUE, got {item!r}")
            chosen[name.strip()] = value.strip()
        if quintile is not None:
            chosen["income_quintile"] = str(quintile)
        _need_data(inputs, db)
        defs = load_definitions(definitions)
        wanted = defs.indicator(indicator)  # checked before the data are read
        if wanted.kind != "proportion" or wanted.outreach is None:
            raise _fail(f"{wanted.id} has no outreach: only a proportion with an outreach section")
        for name in chosen:
            defs.dimension(name)
        _con, pop = load_population(defs, inputs, db, links, period_end, workers)
        wl = worklist(pop, indicator, chosen, limit)
        bundle = worklist_bundle(wl, owner=owner, lists=lists)
        urgent = sum(1 for c in wl.candidates if c.priority == "urgent")
        console.print(
            f"{wl.title}: {len(wl.candidates):,} of {wl.total:,} people ({urgent:,} urgent)"
        )
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(bundle, ensure_ascii=False, indent=1), encoding="utf-8")
            console.print(
                f"Wrote a transaction Bundle of {len(bundle['entry']):,} entries to "
                f"{escape(str(out))}"
            )
        else:
            assert db is not None
            response = store_bundle(bundle, db)
            console.print(f"Stored {len(response['entry']):,} resources in the shared record")
