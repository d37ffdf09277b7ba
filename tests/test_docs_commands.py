"""Every ``takamul ...`` command the documentation names exists.

The documents (``README.md``, ``docs/*.md``) are parsed for commands: in fenced code blocks, a
line (with its continuation lines) that starts with ``takamul``; elsewhere, an inline code span
that starts with ``takamul``. Each command's words are followed down the Typer application's
groups (``takamul equity indicators compute``) until an option, an argument or a command that
takes no subcommand; a word that is not a subcommand of a group is a command that does not
exist (issue 11: ``takamul indicators compute`` was documented, the command is ``takamul equity
indicators compute``). Each command path found is then run with ``--help``, and every
``--option`` written after a command must be one of that command's options.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from takamul.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
_FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
_SPAN = re.compile(r"`([^`\n]+(?:\n[^`\n]+)?)`")
_COMMAND = re.compile(r"^(?:\$\s+)?takamul\s+(.*)$", re.DOTALL)
_WORD = re.compile(r"^[a-z][a-z0-9-]*$")


@dataclass(frozen=True)
class Mention:
    document: str
    line: int
    text: str  # the command as written, from "takamul"

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line}: {self.text}"


def _logical_lines(block: str) -> list[tuple[int, str]]:
    """(offset in block, line) with continuation lines joined: a line ending in a backslash, or
    an indented line after a command (a synopsis wrapped under its command)."""
    out: list[tuple[int, str]] = []
    offset = 0
    for raw in block.splitlines(keepends=True):
        line = raw.rstrip("\n")
        continues = out and (out[-1][1].endswith("\\") or (line[:1].isspace() and line.strip()))
        if continues:
            start, previous = out[-1]
            out[-1] = (start, previous.rstrip("\\").rstrip() + " " + line.strip())
        else:
            out.append((offset, line.strip()))
        offset += len(raw)
    return out


def mentions(path: Path) -> list[Mention]:
    """The ``takamul`` commands written in one Markdown document."""
    text = path.read_text(encoding="utf-8")
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    found: list[Mention] = []

    def add(offset: int, command: str) -> None:
        match = _COMMAND.match(command.strip())
        if match:
            line = text.count("\n", 0, offset) + 1
            found.append(Mention(name, line, "takamul " + " ".join(match.group(1).split())))

    prose: list[str] = []
    last = 0
    for fence in _FENCE.finditer(text):
        prose.append(text[last : fence.start()] + " " * (fence.end() - fence.start()))
        last = fence.end()
        for offset, line in _logical_lines(fence.group(1)):
            for part in line.split("&&"):
                add(fence.start(1) + offset, part)
    prose.append(text[last:])
    outside = "".join(prose)  # the fences blanked out, offsets kept
    for span in _SPAN.finditer(outside):
        add(span.start(1), span.group(1))
    return found


def command_path(root: Any, words: list[str]) -> tuple[list[str], str | None]:
    """The subcommand path a command's words name, and the word that is not a subcommand of the
    group before it (None when the path exists). ``root`` is the Click command of the Typer
    application (Typer bundles its own Click: a group is a command with ``commands``)."""
    path: list[str] = []
    command = root
    for word in words:
        subcommands = getattr(command, "commands", None)
        if not isinstance(subcommands, dict) or not _WORD.match(word):
            break  # an option, a value or an argument: the path ends here
        sub = subcommands.get(word)
        if sub is None:
            return path, word
        path.append(word)
        command = sub
    return path, None


ALL = [m for document in DOCUMENTS for m in mentions(document)]


def test_the_documents_name_commands() -> None:
    """The parser finds the commands (a parser that finds none would pass every check)."""
    texts = {m.text.split(" --")[0] for m in ALL}
    assert len(ALL) > 50
    assert any(t.startswith("takamul equity indicators compute") for t in texts)
    assert any(m.document == "README.md" for m in ALL)
    # A Python comment that mentions takamul is not a command.
    assert not any("importable" in m.text for m in ALL)


def test_the_parser_finds_a_command_that_does_not_exist(tmp_path: Path) -> None:
    doc = tmp_path / "example.md"
    doc.write_text(
        "Run `takamul indicators compute -i DIR`, or:\n\n```sh\n"
        "takamul equity indicators compute \\\n    --input data\n"
        "takamul equity measures\n    heat.csv --out m.csv\n```\n",
        encoding="utf-8",
    )
    found = mentions(doc)
    assert [(m.line, m.text) for m in found] == [
        (4, "takamul equity indicators compute --input data"),
        (6, "takamul equity measures heat.csv --out m.csv"),
        (1, "takamul indicators compute -i DIR"),
    ]
    root = typer.main.get_command(app)
    assert command_path(root, found[2].text.split()[1:]) == ([], "indicators")
    assert command_path(root, found[0].text.split()[1:]) == (
        ["equity", "indicators", "compute"],
        None,
    )


def test_every_documented_command_exists() -> None:
    root = typer.main.get_command(app)
    missing = []
    for m in ALL:
        path, wrong = command_path(root, m.text.split()[1:])
        if wrong is not None:
            missing.append(f"{m.where}  ('{wrong}' is not a command of 'takamul {' '.join(path)}')")
    assert not missing, "documented commands that do not exist:\n" + "\n".join(missing)


_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def test_every_documented_option_exists() -> None:
    """The same kind of slip one level down: an option written after a command that the command
    does not take (``--no-pairs`` is the off side of ``--pairs``)."""
    root: Any = typer.main.get_command(app)
    unknown = []
    for m in ALL:
        path, wrong = command_path(root, m.text.split()[1:])
        if wrong is not None:
            continue  # reported by test_every_documented_command_exists
        command = root
        for word in path:
            command = command.commands[word]
        names = {"--help"}
        for param in command.params:
            names |= {*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())}
        unknown += [f"{m.where}  ({o})" for o in _OPTION.findall(m.text) if o not in names]
    assert not unknown, "documented options that the command does not take:\n" + "\n".join(unknown)


def _existing_paths() -> list[tuple[str, ...]]:
    root = typer.main.get_command(app)
    resolved = [command_path(root, m.text.split()[1:]) for m in ALL]
    return sorted({tuple(path) for path, wrong in resolved if wrong is None})


PATHS = _existing_paths()


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "takamul")
def test_every_documented_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
