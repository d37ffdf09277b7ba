"""``takamul equity report``: indicators, summary measures and spatial access in one
self-contained HTML page and its JSON; ``--publish`` keeps it in the shared record for the API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.markup import escape

from takamul.equity.access import compute_access, load_fhir
from takamul.equity.indicators import compute, load_definitions, prepare
from takamul.equity.indicators_cli import (
    DefsOpt,
    InputOpt,
    LinksOpt,
    _errors,
    _fail,
    console,
    load_population,
)
from takamul.equity.publish import publish_report
from takamul.equity.report import build_report, render_html

__all__ = ["report_app"]

report_app = typer.Typer()


@report_app.command("report")
def report_command(
    inputs: InputOpt = None,
    db: Annotated[
        str | None, typer.Option("--db", help="The shared record's database URL instead of files")
    ] = None,
    links: LinksOpt = None,
    definitions: DefsOpt = None,
    out: Annotated[Path, typer.Option("--out", help="The HTML report")] = Path("report.html"),
    json_out: Annotated[
        Path | None, typer.Option("--json", help="The same results as JSON")
    ] = None,
    access_method: Annotated[
        str, typer.Option(help="Spatial access measure: 2sfca, e2sfca, 3sfca, gravity, nearest")
    ] = "2sfca",
    radius_km: Annotated[float, typer.Option(help="Catchment radius (km)")] = 10.0,
    publish: Annotated[
        bool, typer.Option(help="Keep the report in the shared record (--db) for the API")
    ] = False,
    period_end: Annotated[
        str | None, typer.Option(help="End of the reporting period (YYYY-MM-DD)")
    ] = None,
    trend_years: Annotated[
        int, typer.Option(min=0, help="Earlier yearly periods for the trend charts")
    ] = 2,
    pairs: Annotated[
        bool,
        typer.Option(
            help="Also each pair of dimensions (intersections, for dashboards); more cells are "
            "then hidden: the complements of a small intersection too"
        ),
    ] = False,
) -> None:
    """Who is being left behind, where, and by how much: one HTML page (no network needed)."""
    with _errors():
        if publish and not db:
            raise _fail("--publish keeps the report in the shared record: give --db URL")
        if not inputs and not db:
            raise _fail("give the data: --input FILE_OR_DIR (repeatable) or --db DATABASE_URL")
        _con, pop = load_population(load_definitions(definitions), inputs, db, links, period_end, 1)
        defs = load_definitions(definitions)
        with console.status("indicators by every dimension"):
            results = compute(pop, pairs=pairs)
        history = []
        for years in range(trend_years, 0, -1):
            # the same views, an earlier period end: the person table is rebuilt for it
            earlier = results.period_end.replace(year=results.period_end.year - years)
            with console.status(f"trend: period ending {earlier.isoformat()}"):
                past = prepare(_con, defs, earlier)
                history.append(compute(past, dimensions=["income_quintile"], pairs=False))
        access = demand = None
        if inputs:
            with console.status("spatial access to primary care"):
                demand, supply, _stats = load_fhir(inputs, location_types={"PC"})
                if len(supply.ids) and len(demand.ids):
                    access = compute_access(demand, supply, access_method, radius=radius_km)  # type: ignore[arg-type]
        report = build_report(results, access, demand, history=history)
        html = render_html(report)
        out.write_text(html, encoding="utf-8")
        console.print(f"Wrote {escape(str(out))} ({len(report.findings)} findings)")
        data = report.as_json()
        if json_out:
            json_out.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
            console.print(f"Wrote {escape(str(json_out))}")
        if publish and db:
            from takamul.store.engine import make_engines

            writer, _ = make_engines(db)
            report_id = publish_report(writer, data, html)
            console.print(f"Published report {report_id}: GET /equity/report(.html)")
