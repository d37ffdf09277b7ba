"""``takamul referrals``: closed-loop referrals (loop metrics, overdue referrals)."""

from __future__ import annotations

import csv
import json
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from takamul.fhir.outcome import OutcomeIssue, operation_outcome
from takamul.settings import Settings

__all__ = ["referrals_app"]

referrals_app = typer.Typer(help="Closed-loop referrals: loop metrics.", no_args_is_help=True)
errors = Console(stderr=True)


def _refuse(message: str, where: str) -> typer.Exit:
    outcome = operation_outcome([OutcomeIssue("error", "invalid", message, where)])
    errors.print_json(json.dumps(outcome, ensure_ascii=False))
    return typer.Exit(2)


def _as_of(text: str | None) -> date:
    try:
        return date.fromisoformat(text) if text else date.today()
    except ValueError:
        raise _refuse(f"not a date YYYY-MM-DD: {text!r}", "--as-of") from None


def _cell(value: object) -> object:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else value


@referrals_app.command("metrics")
def metrics_command(
    db: Annotated[
        str | None, typer.Option("--db", help="Database URL (default: TAKAMUL_DATABASE_URL)")
    ] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="YYYY-MM-DD (default today)")] = None,
    out: Annotated[Path, typer.Option("--out", help="CSV, one row per metric and group")] = Path(
        "metrics.csv"
    ),
    by: Annotated[
        list[str] | None,
        typer.Option(
            "--by",
            help="Also by an equity dimension (income_quintile, region, urban_rural, sex, "
            "nationality, education; 'all' for every one); repeatable",
        ),
    ] = None,
    referral_rules: Annotated[
        Path | None,
        typer.Option(
            "--referral-rules",
            help='JSON: {"default": {"accept_days": 7, "complete_days": 30}, '
            '"types": {"<ServiceRequest code>": {...}}} (default: the file '
            "TAKAMUL_REFERRAL_RULES names, else 7 and 30 days)",
        ),
    ] = None,
    overdue_out: Annotated[
        Path | None, typer.Option("--overdue", help="Also write the overdue referrals (CSV) here")
    ] = None,
) -> None:
    """Loop metrics of the referrals made in the 12 months up to a date, per route (requester
    facility type → owner facility type), per referral type and overall: made, accepted,
    completed within 30 days, feedback returned, median days, overdue (docs/coordination.md)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from takamul.coordination.metrics import (
        COLUMNS,
        ReferralRules,
        by_dimension,
        metric_rows,
        overdue,
        read_referrals,
    )
    from takamul.programmes.indicators import chosen_dimensions
    from takamul.store.repository import Store

    day = _as_of(as_of)
    try:
        dimensions = chosen_dimensions(by)
    except ValueError as err:
        raise _refuse(str(err), "--by") from None
    try:
        rules = ReferralRules.load(referral_rules) if referral_rules else ReferralRules.configured()
    except ValueError as err:
        raise _refuse(str(err), "--referral-rules") from None
    store = Store(Settings.from_env(database_url=db))
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=errors
        ) as bar:
            task = bar.add_task("referral metrics", total=4 + bool(dimensions))

            def step(what: str) -> None:
                bar.update(task, description=what, advance=1)

            referrals = read_referrals(store, day, step)
            step("counting")
            rows = metric_rows(referrals, day, rules)
            strata = by_dimension(store, referrals, day, rules, dimensions) if dimensions else []
            bar.update(task, completed=bar.tasks[0].total)
    finally:
        store.close()
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in [*rows, *strata]:
            writer.writerow(_cell(getattr(row, c)) for c in COLUMNS)
    if overdue_out is not None:
        with overdue_out.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(("task", "patient", "requester", "owner", "type", "authored", "why"))
            for r, why in overdue(referrals, day, rules):
                writer.writerow(
                    (r.task, r.patient or "", r.requester, r.owner, r.kind, r.authored, why)
                )
    typer.echo(f"{len(referrals)} referrals made in the 12 months up to {day}; metrics in {out}")
