"""``takamul caregivers``: the registry of caregivers at high burden."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from takamul.fhir.outcome import OutcomeIssue, operation_outcome
from takamul.settings import Settings

__all__ = ["caregivers_app"]

caregivers_app = typer.Typer(
    help="Caregivers: burden screening (ZBI-12) and support.", no_args_is_help=True
)
errors = Console(stderr=True)


@caregivers_app.command("registry")
def registry_command(
    facility: Annotated[str, typer.Option("--facility", help="Organization id of the facility")],
    db: Annotated[
        str | None, typer.Option("--db", help="Database URL (default: TAKAMUL_DATABASE_URL)")
    ] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="YYYY-MM-DD (default today)")] = None,
    out: Annotated[Path, typer.Option("--out", help="CSV, one row per caregiver")] = Path(
        "caregivers.csv"
    ),
) -> None:
    """Caregivers of the facility's patients whose latest ZBI-12 total is at or above the
    cut-off on the date, with the previous total and their support referral's status."""
    from takamul.caregivers.registry import registry, write_registry_csv
    from takamul.store.repository import Store

    try:
        day = date.fromisoformat(as_of) if as_of else date.today()
    except ValueError as err:
        outcome = operation_outcome(
            [OutcomeIssue("error", "invalid", f"not a date YYYY-MM-DD: {as_of!r}", "--as-of")]
        )
        errors.print_json(json.dumps(outcome, ensure_ascii=False))
        raise typer.Exit(2) from err
    store = Store(Settings.from_env(database_url=db))
    try:
        n = write_registry_csv(registry(store, facility, day), out)
    finally:
        store.close()
    typer.echo(f"wrote {n} caregivers to {out}")
