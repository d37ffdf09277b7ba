"""The body of ``takamul synth``: configuration, a Rich progress bar and the summary table.

Kept here so the command in ``takamul.cli`` stays a thin wrapper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from takamul.synth.config import ConfigError, load_config
from takamul.synth.generate import generate

__all__ = ["run"]


def run(out: Path, console: Console, config_file: Path | None, **overrides: Any) -> None:
    try:
        config = load_config(config_file, **overrides)
    except (ConfigError, OSError, ValueError) as err:
        console.print(f"[red]synth: {err}[/]")
        raise typer.Exit(2) from err
    columns = (
        TextColumn("[bold]synth[/] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} persons"),
        TextColumn("{task.fields[resources]:,} resources, {task.fields[rate]:,.0f}/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(config["country"], total=config["patients"], resources=0, rate=0.0)

        def progress(persons: int, resources: int) -> None:
            elapsed = bar.tasks[task].elapsed or 1e-9
            bar.update(task, completed=persons, resources=resources, rate=resources / elapsed)

        summary = generate(config, out, progress)
    console.print(
        f"Wrote {summary.total:,} resources ({summary.patients:,} Patient records of "
        f"{summary.persons:,} persons) to {out} in {summary.seconds:.1f} s "
        f"({summary.rate:,.0f} resources/s)"
    )
