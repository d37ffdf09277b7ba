"""The web application's messages: extract them from the templates and Python of each part of
``takamul.web`` (Babel's extractors), and add the missing ones, untranslated, to that part's
``.po`` file per language, for translators. ``--check`` fails when any message has no
translation in Arabic or Persian (the tests run the same check).

    python scripts/web_messages.py            # add missing msgids to the .po files
    python scripts/web_messages.py --check    # exit 1 listing untranslated messages
    python scripts/web_messages.py --fill ar frame ar.json   # a translator's {msgid: text}

A part is ``frame`` (templates/frame, app.py, context.py, render.py ...) or a screen
(templates/<screen>/ and screens/<screen>.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po, write_po

WEB = Path(__file__).resolve().parents[1] / "src" / "takamul" / "web"
LANGS = ("ar", "fa")
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}
FRAME_PY = ("app.py", "context.py", "render.py", "pages.py", "calendars.py", "prefs.py")
# modules of takamul.web that belong to one screen (their messages go to its .po)
SCREEN_PY = {"patients": ("record.py", "charts.py")}


def parts() -> dict[str, list[tuple[str, Path]]]:
    """Part name -> (extraction method, file) of its sources."""
    found: dict[str, list[tuple[str, Path]]] = {"frame": []}
    for folder in sorted((WEB / "templates").iterdir()):
        if folder.is_dir():
            found.setdefault(folder.name, []).extend(
                ("jinja2", f) for f in sorted(folder.rglob("*.html"))
            )
    for name in FRAME_PY:
        found["frame"].append(("python", WEB / name))
    for part, names in SCREEN_PY.items():
        found.setdefault(part, []).extend(("python", WEB / n) for n in names)
    for module in sorted((WEB / "screens").glob("*.py")):
        if module.stem != "__init__":
            found.setdefault(module.stem, []).append(("python", module))
    return found


def messages(sources: list[tuple[str, Path]]) -> dict[str, str]:
    """msgid -> where it was first seen."""
    return {k: where for k, (_, where) in full_messages(sources).items()}


def full_messages(sources: list[tuple[str, Path]]) -> dict[str, tuple[str | tuple[str, str], str]]:
    """msgid -> (the id as gettext keeps it: (singular, plural) for plurals, where seen)."""
    found: dict[str, tuple[str | tuple[str, str], str]] = {}
    for method, path in sources:
        options = {"extensions": "jinja2.ext.i18n"} if method == "jinja2" else {}
        extractor = "jinja2.ext:babel_extract" if method == "jinja2" else "python"
        for lineno, message, _comments, _context in extract_from_file(
            extractor, str(path), keywords=KEYWORDS, options=options
        ):
            msgid = message[0] if isinstance(message, tuple) else message
            full = (message[0], message[1]) if isinstance(message, tuple) else message
            if msgid:
                found.setdefault(msgid, (full, f"{path.relative_to(WEB)}:{lineno}"))
    return found


def translated(lang: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for po in sorted((WEB / "locale" / lang / "LC_MESSAGES").glob("*.po")):
        with po.open("rb") as fh:
            for m in read_po(fh, locale=lang):
                if m.id and m.string:
                    out[m.id if isinstance(m.id, str) else m.id[0]] = str(m.string)
    return out


def untranslated() -> list[str]:
    problems = []
    for lang in LANGS:
        done = translated(lang)
        for part, sources in parts().items():
            for msgid, where in messages(sources).items():
                if msgid not in done:
                    problems.append(f"{lang}: {part}: {where}: {msgid!r}")
    return problems


def update() -> None:
    for lang in LANGS:
        folder = WEB / "locale" / lang / "LC_MESSAGES"
        folder.mkdir(parents=True, exist_ok=True)
        for part, sources in parts().items():
            path = folder / f"{part}.po"
            catalog = Catalog(locale=lang, project="Takamul")
            if path.exists():
                with path.open("rb") as fh:
                    catalog = read_po(fh, locale=lang)
            for msgid, (full, where) in full_messages(sources).items():
                if msgid not in catalog:
                    file, _, line = where.rpartition(":")
                    empty = ("",) * catalog.num_plurals if isinstance(full, tuple) else ""
                    catalog.add(full, empty, locations=[(file, int(line))])
            with path.open("wb") as fh:
                write_po(fh, catalog, width=100, omit_header=False, include_lineno=False)


def fill(lang: str, part: str, table_file: str) -> None:
    """Set translations of one part's .po from a JSON object {msgid: translation}."""
    table = json.loads(Path(table_file).read_text(encoding="utf-8"))
    path = WEB / "locale" / lang / "LC_MESSAGES" / f"{part}.po"
    with path.open("rb") as fh:
        catalog = read_po(fh, locale=lang)
    for msgid, text in table.items():
        # a list gives the plural forms (Arabic has six, Persian two)
        value = tuple(text) if isinstance(text, list) else text
        if msgid in catalog:
            catalog[msgid].string = value
        else:
            catalog.add(msgid, value)
    with path.open("wb") as fh:
        write_po(fh, catalog, width=100, include_lineno=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail on untranslated messages")
    parser.add_argument("--fill", nargs=3, metavar=("LANG", "PART", "JSON"))
    args = parser.parse_args()
    if args.fill:
        update()
        fill(*args.fill)
        return 0
    if args.check:
        problems = untranslated()
        for p in problems:
            print(p)
        return 1 if problems else 0
    update()
    return 0


if __name__ == "__main__":
    sys.exit(main())
