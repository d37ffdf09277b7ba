"""The ``takamul`` command: thin wrappers that call the packages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from takamul.settings import Settings

app = typer.Typer(help="Takamul: the shared FHIR R4 health record.", no_args_is_help=True)
console = Console(stderr=True)

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
) -> None:
    """Serve the FHIR R4 API under /fhir."""
    import uvicorn

    settings = Settings.from_env(database_url=db)
    os.environ["TAKAMUL_DATABASE_URL"] = settings.database_url
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
            log_level="warning",
        )
    else:
        from takamul.api import create_app

        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")


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


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    app()
