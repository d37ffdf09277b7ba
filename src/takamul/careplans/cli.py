"""``takamul careplans``: the programmes' care plans, made or brought up to date."""

from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from takamul.careplans.service import make_care_plans, programme_id
from takamul.fhir.outcome import OutcomeIssue, operation_outcome
from takamul.programmes.cli import _link_persons
from takamul.programmes.definitions import DefinitionError, load_catalog
from takamul.programmes.facts import CareFacts
from takamul.settings import Settings
from takamul.store.repository import Store

__all__ = ["careplans_app"]

careplans_app = typer.Typer(
    help="Care plans: a CarePlan and Goal per person in a care programme.", no_args_is_help=True
)
errors = Console(stderr=True)


def _refuse(message: str, where: str) -> typer.Exit:
    outcome = operation_outcome([OutcomeIssue("error", "invalid", message, where)])
    errors.print_json(json.dumps(outcome, ensure_ascii=False))
    return typer.Exit(2)


@careplans_app.command("make")
def make(
    programme: Annotated[
        str, typer.Option("--programme", help="hypertension (htn), diabetes (dm), ckd, ...")
    ],
    db: Annotated[
        str | None, typer.Option("--db", help="Database URL (default: TAKAMUL_DATABASE_URL)")
    ] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="YYYY-MM-DD (default today)")] = None,
    facility: Annotated[
        str | None,
        typer.Option("--facility", help="Only the persons this Organization is responsible for"),
    ] = None,
    programmes_file: Annotated[
        Path | None, typer.Option("--programmes", help="A programme file of your own")
    ] = None,
) -> None:
    """Write (or update) the care plan of every person in the programme's registry."""
    try:
        day = date.fromisoformat(as_of) if as_of else date.today()
    except ValueError:
        raise _refuse(f"not a date YYYY-MM-DD: {as_of!r}", "--as-of") from None
    try:
        catalog = load_catalog(programmes_file)
        chosen = programme_id(catalog, programme)
    except DefinitionError as err:
        raise _refuse(str(err), "--programme") from None
    store = Store(Settings.from_env(database_url=db))
    try:
        _link_persons(store)  # bulk-loaded records count as persons, as the server links them
        CareFacts(store, catalog).catch_up()
        started = time.perf_counter()
        run = make_care_plans(store, catalog, chosen, day, facility)
        errors.print(
            f"{chosen} care plans as of {day}: {run.created:,} created, {run.updated:,} updated, "
            f"{run.unchanged:,} unchanged, {run.revoked:,} revoked "
            f"in {time.perf_counter() - started:.1f} s"
        )
    finally:
        store.close()
