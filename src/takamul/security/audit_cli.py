"""``takamul audit``: check the audit log's hash chain and show its events.

``verify`` exits 0 when the chain is sound, 1 when it is broken (naming the first bad event),
2 when the log cannot be read; ``show`` lists events newest first.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from takamul.security.audit import NO_AUDIT_LOG, AuditLog

__all__ = ["audit_app"]

audit_app = typer.Typer(
    help="The tamper-evident audit log: verify its hash chain, show its events.",
    no_args_is_help=True,
)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database of the audit log: sqlite:///path or postgresql://... "
        "(default: TAKAMUL_AUDIT_DATABASE_URL, else the shared record's database)",
        envvar=["TAKAMUL_AUDIT_DATABASE_URL", "TAKAMUL_DATABASE_URL"],
        show_default=False,
    ),
]


class _Unreadable(Exception):
    pass


def _open(db: str | None) -> AuditLog:
    """The log for reading only: nothing is created, not even a missing SQLite file."""
    from takamul.settings import Settings

    url = db or Settings.from_env().database_url
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise _Unreadable(f"not a database URL: {url!r}") from err
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if not path or path == ":memory:" or not Path(path).is_file():
            raise _Unreadable(f"no such SQLite database: {path or url}")
    return AuditLog.from_url(url, create=False)


def _redact(url: str | None) -> str:
    if url is None:
        return "the default database"
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "the given database"


@audit_app.command("verify")
def verify_command(
    db: DbOption = None,
    expect: Annotated[
        str | None,
        typer.Option(
            "--expect",
            help="SEQ:HASH noted earlier (from a previous verify, kept outside the database): "
            "the chain must still hold that hash at that event, which a rewrite of the whole "
            "chain could not keep",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Recompute the audit log's hash chain; exit 1 at the first broken event."""
    console = Console(soft_wrap=True)
    anchor: tuple[int, str] | None = None
    if expect is not None:
        seq_text, _, wanted = expect.partition(":")
        if not seq_text.isdigit() or len(wanted.strip()) != 64:
            console.print("[red]audit verify: --expect takes SEQ:HASH (a 64-hex-digit hash)[/]")
            raise typer.Exit(2)
        anchor = (int(seq_text), wanted.strip().lower())
    try:
        log = _open(db)
    except _Unreadable as err:
        console.print(f"[red]audit verify: {err}[/]", highlight=False)
        raise typer.Exit(2) from err
    try:
        result = log.verify()
        anchored = log.hash_at(anchor[0]) if anchor else None
    except SQLAlchemyError as err:
        console.print(
            f"[red]audit verify: cannot read the audit log of {_redact(db)}: {err}[/]",
            highlight=False,
        )
        raise typer.Exit(2) from err
    finally:
        log.close()
    if result.reason == NO_AUDIT_LOG:
        console.print(f"[red]audit verify: {_redact(db)}: {NO_AUDIT_LOG}[/]", highlight=False)
        raise typer.Exit(2)
    if not result.ok:
        where = f"event {result.first_bad_seq}" if result.first_bad_seq else "the log"
        console.print(
            f"[bold red]BROKEN[/] at {where}: {result.reason} "
            f"({result.checked:,} events checked before it)",
            highlight=False,
        )
        raise typer.Exit(1)
    if anchor is not None and anchored != anchor[1]:
        console.print(
            f"[bold red]BROKEN[/] at event {anchor[0]}: its hash is not the one noted "
            "(the chain was rewritten from there or earlier, or cut before it)",
            highlight=False,
        )
        raise typer.Exit(1)
    console.print(
        f"[bold green]OK[/]: {result.checked:,} events checked; "
        f"head {result.head_seq}:{result.head_hash}",
        highlight=False,
    )


def _who(event: dict[str, Any]) -> str:
    names = []
    for agent in event.get("agent") or ():
        ident = (agent.get("who") or {}).get("identifier") or {}
        if ident.get("value"):
            names.append(str(ident["value"]))
    return " / ".join(names)


def _what(event: dict[str, Any]) -> str:
    for entity in event.get("entity") or ():
        what = (entity.get("what") or {}).get("reference")
        if what:
            return str(what)
        code = (entity.get("type") or {}).get("code")
        query = entity.get("query")
        if query:
            return f"{code}?{base64.b64decode(query).decode(errors='replace')}"
    return ""


def _patients(event: dict[str, Any]) -> str:
    refs = [
        str((e.get("what") or {}).get("reference", "")).removeprefix("Patient/")
        for e in event.get("entity") or ()
        if (e.get("role") or {}).get("code") == "1"
    ]
    return ", ".join(refs[:3]) + (f" +{len(refs) - 3}" if len(refs) > 3 else "")


def _why(event: dict[str, Any]) -> str:
    for purpose in event.get("purposeOfEvent") or ():
        codes = [c.get("code", "") for c in purpose.get("coding") or ()]
        if "ETREAT" in codes:
            return f"ETREAT: {purpose.get('text', '')}"
        return ",".join(codes)
    return ""


@audit_app.command("show")
def show_command(
    db: DbOption = None,
    patient: Annotated[
        str | None, typer.Option("--patient", help="Only events about this patient id")
    ] = None,
    agent: Annotated[
        str | None, typer.Option("--agent", help="Only events by this user or client id")
    ] = None,
    count: Annotated[
        int, typer.Option("--count", "-n", help="How many events (newest first)")
    ] = 20,
) -> None:
    """List audit events, newest first."""
    console = Console(soft_wrap=True)
    try:
        log = _open(db)
    except _Unreadable as err:
        console.print(f"[red]audit show: {err}[/]", highlight=False)
        raise typer.Exit(2) from err
    try:
        page = log.search(patient=patient, agent=agent, count=count)
    except SQLAlchemyError as err:
        console.print(f"[red]audit show: cannot read the audit log: {err}[/]", highlight=False)
        raise typer.Exit(2) from err
    finally:
        log.close()
    table = Table(title=f"Audit events ({len(page.events)} of {page.total:,})")
    for name in ("seq", "recorded", "action", "interaction", "what", "patient", "who", "why"):
        table.add_column(name, overflow="fold")
    table.add_column("outcome")
    for event in page.events:
        interaction = next(
            (
                c.get("code", "")
                for c in event.get("subtype") or ()
                if "takamul" in c.get("system", "")
            ),
            "",
        )
        outcome = event.get("outcome", "")
        shown = outcome if outcome == "0" else f"[red]{outcome} {event.get('outcomeDesc', '')}[/]"
        table.add_row(
            event.get("id", ""),
            event.get("recorded", ""),
            event.get("action", ""),
            interaction,
            _what(event),
            _patients(event),
            _who(event),
            _why(event),
            shown,
        )
    console.print(table)
