"""``takamul mh``: mental health in primary care (scoring, instruments, safety escalation)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from takamul.fhir.outcome import FhirError, OutcomeIssue, operation_outcome
from takamul.settings import Settings

__all__ = ["mh_app"]

mh_app = typer.Typer(
    help="Mental health: instruments, scoring, safety escalation.", no_args_is_help=True
)
instruments_app = typer.Typer(
    help="The instruments stored as Questionnaires.", no_args_is_help=True
)
mh_app.add_typer(instruments_app, name="instruments")
errors = Console(stderr=True)

DbOption = Annotated[
    str | None, typer.Option("--db", help="Database URL (default: TAKAMUL_DATABASE_URL)")
]


def _print_outcome(outcome: dict[str, Any]) -> None:
    errors.print_json(json.dumps(outcome, ensure_ascii=False))


def _documents(path: Path) -> list[Any]:
    """A resource, a Bundle, a JSON array, or NDJSON (one resource a line)."""
    text = path.read_bytes()
    try:
        return [orjson.loads(text)]
    except orjson.JSONDecodeError:
        return [orjson.loads(line) for line in text.splitlines() if line.strip()]


@mh_app.command("score")
def score(
    input_file: Annotated[Path, typer.Argument(help="A QuestionnaireResponse, a Bundle or NDJSON")],
) -> None:
    """Score QuestionnaireResponses from a file without storing them: totals and bands, and an
    OperationOutcome for each response that could not be scored."""
    from takamul.mentalhealth.scoring import iter_responses, score_response

    try:
        documents = _documents(input_file)
    except (OSError, orjson.JSONDecodeError) as err:
        _print_outcome(
            operation_outcome([OutcomeIssue("error", "invalid", f"{input_file}: {err}")])
        )
        raise typer.Exit(2) from err
    unscored = 0
    seen = 0
    for n, response in enumerate(r for d in documents for r in iter_responses(d)):
        seen += 1
        label = response.get("id") or f"#{n + 1}"
        result = score_response(response)
        if result is None:
            unscored += 1
            typer.echo(f"QuestionnaireResponse/{label}\t-\tnot one of our instruments")
            continue
        safety = "\tSAFETY: self-harm item positive" if result.safety else ""
        if result.total is None:
            unscored += 1
            typer.echo(
                f"QuestionnaireResponse/{label}\t{result.instrument.title}\tno score{safety}"
            )
            _print_outcome(result.outcome())
            continue
        prorated = " (prorated)" if result.prorated else ""
        band = result.band.display if result.band else ""
        typer.echo(
            f"QuestionnaireResponse/{label}\t{result.instrument.title}\t{result.total}{prorated}"
            f"\t{band}{safety}"
        )
    if seen == 0:
        _print_outcome(
            operation_outcome(
                [OutcomeIssue("error", "not-found", f"{input_file} holds no QuestionnaireResponse")]
            )
        )
        raise typer.Exit(1)
    if unscored:
        raise typer.Exit(1)


@mh_app.command("escalate")
def escalate(
    db: DbOption = None,
    now: Annotated[
        str | None, typer.Option(help="The time to judge by (ISO 8601; default: now)")
    ] = None,
    hours: Annotated[
        float | None,
        typer.Option(help="Hours before escalation (default TAKAMUL_MH_ESCALATE_HOURS or 24)"),
    ] = None,
) -> None:
    """Escalate safety Tasks not acknowledged in time to the facility's supervisor."""
    from takamul.mentalhealth.service import MentalHealth
    from takamul.store.repository import Store

    moment = datetime.now(UTC)
    if now:
        try:
            moment = datetime.fromisoformat(now.replace("Z", "+00:00"))
        except ValueError as err:
            errors.print(f"[red]--now {now!r} is not an ISO 8601 date-time[/]")
            raise typer.Exit(2) from err
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    store = Store(Settings.from_env(database_url=db))
    try:
        service = MentalHealth(store)
        service.catch_up()
        done = service.escalate(moment, hours)
    finally:
        store.close()
    for e in done:
        target = f"Organization/{e.owner}" if e.owner else "no supervisor (marked escalated)"
        typer.echo(f"Task/{e.task_id}\tPatient/{e.patient}\t{target}\tProvenance/{e.provenance_id}")
    typer.echo(f"escalated {len(done)} safety Tasks")


@mh_app.command("catch-up")
def catch_up(db: DbOption = None) -> None:
    """Score and safety-check responses stored without hooks (bulk loads)."""
    from takamul.mentalhealth.service import MentalHealth
    from takamul.store.repository import Store

    store = Store(Settings.from_env(database_url=db))
    try:
        n = MentalHealth(store).catch_up()
    finally:
        store.close()
    typer.echo(f"processed {n} QuestionnaireResponses")


@instruments_app.command("list")
def list_instruments() -> None:
    """The instruments, their codes and scoring rules."""
    from takamul.mentalhealth.instruments import instruments

    for inst in instruments():
        bands = ", ".join(f"{b.min}+ {b.display}" for b in inst.bands)
        typer.echo(
            f"{inst.id}\tpanel {inst.panel or '-'}\ttotal {inst.total_code}"
            f"\t{len(inst.items)} items\tmissing allowed {inst.max_missing}\t{bands}"
        )


@instruments_app.command("install")
def install(
    wording_file: Annotated[
        Path, typer.Argument(help="A Questionnaire or {instrument, language, items}")
    ],
    db: DbOption = None,
    instrument: Annotated[
        str | None, typer.Option(help="The instrument id (phq-9, gad-7, ...)")
    ] = None,
    allow_missing: Annotated[
        bool, typer.Option(help="Accept wording that lacks some items (they keep no text)")
    ] = False,
) -> None:
    """Validate a wording file against the instrument's structure and store the Questionnaire
    with its wording."""
    from takamul.mentalhealth.instruments import install_wording, questions
    from takamul.mentalhealth.service import MentalHealth
    from takamul.store.repository import Store

    try:
        wording = orjson.loads(wording_file.read_bytes())
        if not isinstance(wording, dict):
            raise FhirError(400, "The wording file must hold one JSON object", "structure")
    except (OSError, orjson.JSONDecodeError) as err:
        _print_outcome(
            operation_outcome([OutcomeIssue("error", "invalid", f"{wording_file}: {err}")])
        )
        raise typer.Exit(2) from err
    except FhirError as err:
        _print_outcome(err.outcome())
        raise typer.Exit(2) from err
    store = Store(Settings.from_env(database_url=db))
    try:
        service = MentalHealth(store)
        service.install_instruments()
        try:
            probe = install_wording(wording, None, instrument, allow_missing)
            body = install_wording(
                wording, service.stored_questionnaire(probe["id"]), instrument, allow_missing
            )
        except FhirError as err:
            _print_outcome(err.outcome())
            raise typer.Exit(1) from err
        service.store_questionnaire(body)
    finally:
        store.close()
    items = questions(body)
    worded = sum(1 for i in items if i.get("text"))
    typer.echo(
        f"installed the wording of Questionnaire/{body['id']} ({worded} of {len(items)} "
        f"items with text, language {body.get('language')})"
    )


@mh_app.command("registry")
def registry_command(
    db: DbOption = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="YYYY-MM-DD (default today)")] = None,
    out: Annotated[Path, typer.Option("--out", help="CSV, one row per person")] = Path(
        "registry.csv"
    ),
) -> None:
    """The collaborative-care registry on a date: per person, baseline and latest PHQ-9/GAD-7,
    status and flags (the rules: docs/mental-health.md)."""
    from takamul.mentalhealth.registry import registry, write_registry_csv
    from takamul.store.repository import Store

    try:
        day = date.fromisoformat(as_of) if as_of else date.today()
    except ValueError as err:
        _print_outcome(
            operation_outcome(
                [OutcomeIssue("error", "invalid", f"not a date YYYY-MM-DD: {as_of!r}", "--as-of")]
            )
        )
        raise typer.Exit(2) from err
    store = Store(Settings.from_env(database_url=db))
    try:
        n = write_registry_csv(registry(store, day), out)
    finally:
        store.close()
    typer.echo(f"wrote {n} persons to {out}")


steps_app = typer.Typer(
    help="Stepped care: propose the next step for a clinician to confirm.", no_args_is_help=True
)
mh_app.add_typer(steps_app, name="steps")
SteppedCareFile = Annotated[
    Path | None,
    typer.Option(
        "--stepped-care",
        help="A stepped-care file of your own (default: TAKAMUL_STEPPED_CARE, else the packaged)",
    ),
]


def _day_option(text: str | None) -> date:
    try:
        return date.fromisoformat(text) if text else date.today()
    except ValueError as err:
        _print_outcome(
            operation_outcome(
                [OutcomeIssue("error", "invalid", f"not a date YYYY-MM-DD: {text!r}", "--as-of")]
            )
        )
        raise typer.Exit(2) from err


@steps_app.command("propose")
def propose_command(
    db: DbOption = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="YYYY-MM-DD (default today)")] = None,
    stepped_care: SteppedCareFile = None,
) -> None:
    """Apply the step-up rules to the collaborative-care registry on a date and write a draft
    ServiceRequest (intent proposal) for each person who should step up (the rules:
    docs/mental-health.md, "Stepped care")."""
    from collections import Counter

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from takamul.mentalhealth.registry import registry
    from takamul.mentalhealth.steps import SteppedCareError, load_stepped_care, propose_steps
    from takamul.store.repository import Store

    day = _day_option(as_of)
    try:
        care = load_stepped_care(stepped_care)
    except SteppedCareError as err:
        _print_outcome(operation_outcome([OutcomeIssue("error", "invalid", str(err))]))
        raise typer.Exit(2) from err
    store = Store(Settings.from_env(database_url=db))
    try:
        with errors.status(f"reading the registry on {day.isoformat()}"):
            rows = registry(store, day)
        with Progress(
            TextColumn("writing proposals"), BarColumn(), MofNCompleteColumn(), console=errors
        ) as bar:
            task = bar.add_task("proposals", total=None)
            outcomes = propose_steps(
                store,
                day,
                care,
                rows=rows,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    finally:
        store.close()
    for o in outcomes:
        if o.result == "proposed":
            typer.echo(
                f"ServiceRequest/{o.request_id}\tPatient/{o.patient_id}\tstep {o.current} -> "
                f"{o.target}\t{','.join(o.rules)}"
            )
    counts = Counter(o.result for o in outcomes)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no step-up due"
    typer.echo(f"{len(rows)} persons in the registry: {summary}")


MEASURE_COLUMNS = (
    "measure",
    "facility",
    "dimension",
    "subgroup",
    "numerator",
    "denominator",
    "value",
    "unit",
    "difference",
    "ratio",
)


@mh_app.command("measures")
def measures_command(
    db: DbOption = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="YYYY-MM-DD (default today)")] = None,
    out: Annotated[Path, typer.Option("--out", help="CSV, one row per measure and unit")] = Path(
        "measures.csv"
    ),
    by: Annotated[
        list[str] | None,
        typer.Option(
            "--by",
            help="Also by an equity dimension (income_quintile, region, urban_rural, sex, "
            "nationality, education; 'all' for every one); repeatable",
        ),
    ] = None,
    reports: Annotated[
        Path | None, typer.Option(help="Also write the MeasureReports (NDJSON) here")
    ] = None,
) -> None:
    """The programme's measures on a date, per facility and overall: screening coverage, PHQ-9
    follow-up 4-8 weeks after a positive screen, response and remission at 6 months, hours to
    acknowledge a safety Task (the definitions: docs/mental-health.md, "Measures")."""
    import csv

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from takamul.mentalhealth.measures import (
        by_dimension,
        measure_reports,
        measure_rows,
        person_measures,
    )
    from takamul.programmes.indicators import chosen_dimensions
    from takamul.store.repository import Store

    day = _day_option(as_of)
    try:
        dimensions = chosen_dimensions(by)
    except ValueError as err:
        _print_outcome(operation_outcome([OutcomeIssue("error", "invalid", str(err), "--by")]))
        raise typer.Exit(2) from None
    store = Store(Settings.from_env(database_url=db))
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=errors
        ) as bar:
            task = bar.add_task("measures", total=4 + bool(dimensions))

            def step(what: str) -> None:
                bar.update(task, description=what, advance=1)

            people = person_measures(store, day, step)
            rows = measure_rows(people)
            strata = by_dimension(store, people, dimensions) if dimensions else []
            if dimensions:
                step("by equity dimension")
            bar.update(task, completed=bar.tasks[0].total)
    finally:
        store.close()
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(MEASURE_COLUMNS)
        for r in [*rows, *strata]:
            writer.writerow(
                "" if getattr(r, c) is None else f"{getattr(r, c):g}"
                if isinstance(getattr(r, c), float) else getattr(r, c)
                for c in MEASURE_COLUMNS
            )  # fmt: skip
    if reports is not None:
        with reports.open("wb") as ndjson:
            for report in measure_reports(rows, day, strata):
                ndjson.write(orjson.dumps(report) + b"\n")
    for r in rows:
        if r.facility == "all":
            value = "-" if r.value is None else f"{r.value:g} {r.unit}"
            typer.echo(f"{r.measure}\t{r.numerator}/{r.denominator}\t{value}")
    typer.echo(f"{len(people)} adults; wrote {len(rows) + len(strata)} rows to {out}")
