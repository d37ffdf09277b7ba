"""``takamul equity``: the WHO HEAT summary measures of health inequality from the command line.

The lead registers ``equity_app`` in ``takamul.cli`` with ``app.add_typer(equity_app,
name="equity")``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from takamul.equity.heat import TemplateError, compute_rows, read_template, write_measures
from takamul.equity.measures import (
    DEFAULT_SEED,
    DEFAULT_SIMULATIONS,
    IMPACT_REFERENCES,
    SII_WEIGHTINGS,
    ComputeOptions,
    Measure,
)

__all__ = ["equity_app"]

equity_app = typer.Typer(
    help="Health equity: WHO HEAT summary measures of health inequality.",
    no_args_is_help=True,
)
# soft_wrap keeps messages and paths on one line whatever the terminal width (as takamul.cli).
console = Console(stderr=True, soft_wrap=True)

# Exit code for input that cannot be used (missing file, invalid template), as in takamul mpi.
BAD_INPUT = 2
# Issues printed before "… and N more": a template with a systematic error can have thousands.
MAX_ISSUES_SHOWN = 200


@equity_app.callback()
def _equity() -> None:
    """Health equity: WHO HEAT summary measures of health inequality."""
    # A callback keeps ``measures`` a sub-command even while it is the only one.


@equity_app.command("measures")
def measures(
    input_path: Annotated[
        Path, typer.Argument(metavar="INPUT.csv", help="HEAT Plus data template (CSV)")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output CSV: one row per measure")],
    simulations: Annotated[
        int, typer.Option(help="Draws for the simulated confidence intervals", min=2)
    ] = DEFAULT_SIMULATIONS,
    seed: Annotated[int, typer.Option(help="Seed of the simulated intervals")] = DEFAULT_SEED,
    sii_weighting: Annotated[
        str,
        typer.Option(
            help="SII/RII regression weights: 'heat' (the default, as WHO HEAT and healthequal; "
            "populations must be numbers of people; 'healthequal' is the same) or 'population' "
            "(each person counts once; also for population shares)"
        ),
    ] = "heat",
    impact_reference: Annotated[
        str,
        typer.Option(
            help="PAF/PAR reference point: 'heat' (the default, as WHO HEAT: a non-ordered "
            "dimension's reference subgroup when it has one) or 'best' (always the most "
            "advantaged or best-performing subgroup, as healthequal's paf/parisk)"
        ),
    ] = "heat",
) -> None:
    """Compute HEAT's summary measures (D, R, ACI, SII, BGV, …) with 95% confidence intervals.

    The defaults reproduce the WHO's published values (docs/equity-measures.md, "Conventions").
    """
    if not input_path.is_file():
        console.print(f"[red]equity measures: {escape(str(input_path))}: no such file[/]")
        raise typer.Exit(BAD_INPUT)
    try:
        template = read_template(input_path)
    except TemplateError as err:
        console.print(
            f"[red]equity measures: {escape(str(input_path))}: "
            f"{len(err.issues)} problem(s); nothing was computed[/]"
        )
        for issue in err.issues[:MAX_ISSUES_SHOWN]:
            console.print(f"[red]  {escape(str(issue))}[/]")
        if len(err.issues) > MAX_ISSUES_SHOWN:
            console.print(f"[red]  … and {len(err.issues) - MAX_ISSUES_SHOWN} more[/]")
        raise typer.Exit(BAD_INPUT) from None
    weighting = "heat" if sii_weighting == "healthequal" else sii_weighting
    if weighting not in SII_WEIGHTINGS:
        console.print(
            f"[red]equity measures: --sii-weighting is {_choices(SII_WEIGHTINGS)}, "
            f"not {escape(sii_weighting)!r}[/]"
        )
        raise typer.Exit(BAD_INPUT)
    if impact_reference not in IMPACT_REFERENCES:
        console.print(
            f"[red]equity measures: --impact-reference is {_choices(IMPACT_REFERENCES)}, "
            f"not {escape(impact_reference)!r}[/]"
        )
        raise typer.Exit(BAD_INPUT)
    options = ComputeOptions(
        simulations=simulations,
        seed=seed,
        sii_weighting="heat" if weighting == "heat" else "population",
        impact_reference="heat" if impact_reference == "heat" else "best",
    )
    rows = compute_rows(template, options)
    written = write_measures(out, rows)
    per_measure = Counter(row.measure for row in rows)

    table = Table(title="takamul equity measures", show_header=False)
    table.add_row("rows read", f"{template.rows_read:,}")
    table.add_row(
        "groups (setting × date × source × indicator × dimension)", f"{len(template.groups):,}"
    )
    table.add_row("measures written", f"{written:,}")
    table.add_row(
        "by measure",
        ", ".join(f"{m.value} {per_measure[m]}" for m in Measure if per_measure[m]) or "none",
    )
    table.add_row("simulated intervals", f"{options.simulations:,} draws, seed {options.seed}")
    table.add_row(
        "conventions",
        f"SII/RII weights {options.sii_weighting}, PAF/PAR reference {options.impact_reference}",
    )
    table.add_row("output", escape(str(out)))
    console.print(table)


def _choices(values: tuple[str, ...]) -> str:
    return " or ".join(f"'{v}'" for v in values)
