"""``access``: spatial access to care from FHIR NDJSON, ranked by the most underserved area.

The lead registers ``access_app`` in ``takamul.cli``: ``app.add_typer(access_app)`` adds the
command as ``takamul access --input DIR ...``; ``app.add_typer(access_app, name="spatial")`` as
``takamul spatial access ...``. There is deliberately no callback: Typer ignores (and warns about)
a callback when a sub-application is added without a name.
"""

from __future__ import annotations

import csv
import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from takamul.equity.access import (
    AccessInputError,
    AccessReport,
    CostModel,
    CostTable,
    Demand,
    aggregate_to_areas,
    compute_access,
    load_fhir,
)

__all__ = ["access_app"]

access_app = typer.Typer(
    help="Spatial access to care: nearest facility and floating-catchment (2SFCA family) scores.",
    no_args_is_help=True,
)
# Results go to stdout; messages and errors to stderr, one line each whatever the terminal width.
out_console = Console(soft_wrap=True)
console = Console(stderr=True, soft_wrap=True)

# Exit code for input that cannot be used, as in takamul equity and takamul mpi.
BAD_INPUT = 2

CSV_COLUMNS = (
    "rank",
    "area",
    "method",
    "score",
    "population",
    "points",
    "nearest_mean",
    "nearest_max",
    "share_beyond_radius",
    "cost_unit",
)


class MethodChoice(StrEnum):
    two_sfca = "2sfca"
    e2sfca = "e2sfca"
    three_sfca = "3sfca"
    gravity = "gravity"
    hansen = "hansen"
    nearest = "nearest"


class AreaBy(StrEnum):
    region = "region"
    state = "state"


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]access: {escape(message)}[/]")
    return typer.Exit(BAD_INPUT)


def _read_links(path: Path) -> dict[str, str]:
    """Patient id → person from a CSV with ``patient_id`` and ``person`` (or ``person_id``)."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        fields = set(reader.fieldnames or [])
        person = "person" if "person" in fields else "person_id"
        if "patient_id" not in fields or person not in fields:
            raise AccessInputError(f"{path}: needs columns patient_id and person (or person_id)")
        return {row["patient_id"]: row[person] for row in reader if row["patient_id"]}


def _format(value: float, digits: int = 4) -> str:
    if math.isnan(value):
        return ""
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}g}"


def write_areas(path: Path, report: AccessReport, cost_unit: str) -> int:
    """Write one CSV row per area, most underserved first; returns the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for a in report.areas:
            writer.writerow(
                [
                    a.rank,
                    a.area,
                    a.method,
                    repr(a.score),
                    repr(a.population),
                    a.points,
                    repr(a.nearest_mean),
                    repr(a.nearest_max),
                    repr(a.share_beyond),
                    cost_unit,
                ]
            )
    return len(report.areas)


@access_app.command("access")
def access(
    inputs: Annotated[
        list[Path],
        typer.Option(
            "--input",
            "-i",
            help="NDJSON file or Bulk Data folder with Patient and Location (repeatable)",
        ),
    ],
    method: Annotated[
        MethodChoice, typer.Option("--method", "-m", help="Access measure")
    ] = MethodChoice.two_sfca,
    radius_km: Annotated[
        float,
        typer.Option(
            "--radius-km",
            help="Catchment radius (in the cost table's unit with --cost-table); "
            "E2SFCA/3SFCA bands are fitted to it",
        ),
    ] = 10.0,
    out: Annotated[Path | None, typer.Option("--out", help="Per-area CSV to write")] = None,
    facility_type: Annotated[
        list[str] | None,
        typer.Option(
            "--facility-type",
            "-t",
            help="Keep only Locations with this type code, e.g. PC or GACH (repeatable)",
        ),
    ] = None,
    area_by: Annotated[
        AreaBy, typer.Option("--area-by", help="Area: the region extension or address.state")
    ] = AreaBy.region,
    links: Annotated[
        Path | None,
        typer.Option(
            "--links",
            help="CSV patient_id,person: count a person's several records once",
        ),
    ] = None,
    cost_table: Annotated[
        Path | None,
        typer.Option(
            "--cost-table",
            help="CSV origin,destination,cost (origin = area, destination = Location id); "
            "replaces great-circle km, with demand aggregated per area",
        ),
    ] = None,
    beta: Annotated[
        float, typer.Option(help="Gravity/Hansen distance-decay exponent β (d^-β)")
    ] = 1.0,
    min_km: Annotated[
        float, typer.Option("--min-km", help="Gravity/Hansen: distances below this weigh as this")
    ] = 1.0,
    normalize: Annotated[
        bool, typer.Option(help="Divide scores by the population-weighted mean (1 = average)")
    ] = False,
    top: Annotated[int, typer.Option(help="Areas shown in the table", min=1)] = 15,
) -> None:
    """Rank areas by spatial access to care (lowest first) and write per-area results."""
    for path in inputs:
        if not path.exists():
            raise _fail(f"{path}: no such file or directory")
    if not (radius_km > 0 and math.isfinite(radius_km)):
        raise _fail("--radius-km must be a positive number")
    if method in (MethodChoice.gravity, MethodChoice.hansen) and not (beta > 0 and min_km > 0):
        raise _fail("--beta and --min-km must be positive for the gravity measures")
    try:
        person_of = _read_links(links) if links is not None else None
        demand, supply, stats = load_fhir(
            inputs,
            location_types=facility_type or None,
            area_by="state" if area_by is AreaBy.state else "region",
            person_of=person_of,
        )
    except (AccessInputError, OSError) as err:
        raise _fail(str(err)) from None
    if len(demand) == 0:
        raise _fail(
            f"no Patient with an address geolocation in the input "
            f"({stats.patient_records:,} Patient records read)"
        )
    if len(supply) == 0:
        wanted = f" of type {', '.join(facility_type)}" if facility_type else ""
        raise _fail(f"no facility Location{wanted} with a position in the input")

    cost: CostModel | None = None
    cost_unit = "km (great circle)"
    points: Demand = demand
    if cost_table is not None:
        points = aggregate_to_areas(demand)
        try:
            table = CostTable.from_csv(cost_table, points.ids, supply.ids)
        except (AccessInputError, OSError) as err:
            raise _fail(str(err)) from None
        cost, cost_unit = table, f"cost table {cost_table.name}"
        if table.unmatched_rows:
            console.print(
                f"[yellow]access: {table.unmatched_rows:,} cost-table row(s) name an unknown "
                "area or facility and were skipped[/]"
            )
    try:
        report = compute_access(
            points,
            supply,
            method.value,
            radius=radius_km,
            cost=cost,
            beta=beta,
            min_cost=min_km,
            normalize=normalize,
        )
    except AccessInputError as err:
        raise _fail(str(err)) from None

    console.print(
        f"access: {stats.persons:,} persons ({stats.patient_records:,} Patient records, "
        f"{stats.patients_without_position:,} without a position) at {len(points):,} demand "
        f"points; {len(supply):,} facilities; method {method.value}, radius {radius_km:g}"
    )
    worst = "longest distance" if method is MethodChoice.nearest else "lowest access"
    table_out = Table(title=f"Most underserved areas ({method.value}, {worst} first)")
    for column, justify in (
        ("rank", "right"),
        ("area", "left"),
        ("score", "right"),
        ("population", "right"),
        ("nearest (mean)", "right"),
        ("nearest (max)", "right"),
        (f"beyond {radius_km:g}", "right"),
    ):
        table_out.add_column(column, justify=justify)  # type: ignore[arg-type]
    for a in report.areas[:top]:
        table_out.add_row(
            str(a.rank),
            escape(a.area),
            _format(a.score),
            f"{a.population:,.0f}",
            _format(a.nearest_mean, 3),
            _format(a.nearest_max, 3),
            "" if math.isnan(a.share_beyond) else f"{a.share_beyond:.1%}",
        )
    out_console.print(table_out)
    if out is not None:
        try:
            rows = write_areas(out, report, cost_unit)
        except OSError as err:
            raise _fail(f"{out}: {err}") from None
        console.print(f"access: wrote {rows:,} areas to {escape(str(out))}")
