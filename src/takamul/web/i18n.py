"""Languages of the web application and their gettext catalogs (Babel).

English is the source language: the msgids are English, so ``en`` needs no catalog. Each screen
keeps its own ``.po`` file per language (``locale/<lang>/LC_MESSAGES/<screen>.po``) so that
screens grow without editing one shared file; a language's files are merged into one catalog
when the server starts. The ``.po`` files are read directly (no compiled ``.mo`` is committed
or built): compiling the few hundred messages takes milliseconds.
"""

from __future__ import annotations

import gettext
import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

__all__ = [
    "LANGUAGES",
    "LOCALE_DIR",
    "N_",
    "Language",
    "catalog",
    "language",
    "translations",
]

LOCALE_DIR = Path(__file__).parent / "locale"


def N_(message: str) -> str:
    """Mark a message for extraction where it is defined; it is translated where shown."""
    return message


@dataclass(frozen=True, slots=True)
class Language:
    code: str  # BCP 47 tag, as in <html lang>
    name: str  # the language's name in itself, for the switcher
    direction: str  # "rtl" or "ltr", as in <html dir>
    default_calendar: str
    default_numerals: str


LANGUAGES: dict[str, Language] = {
    lang.code: lang
    for lang in (
        Language("ar", "العربية", "rtl", "hijri", "arab"),
        Language("fa", "فارسی", "rtl", "jalali", "persian"),
        Language("en", "English", "ltr", "gregorian", "latin"),
    )
}


def language(code: str | None) -> Language:
    """The language of ``code``; English for anything unknown."""
    return LANGUAGES.get(code or "", LANGUAGES["en"])


@cache
def catalog(code: str) -> Catalog:
    """Every screen's messages of one language, merged; empty for English."""
    merged = Catalog(locale=code if code != "en" else None, domain="messages")
    folder = LOCALE_DIR / code / "LC_MESSAGES"
    for path in sorted(folder.glob("*.po")) if folder.is_dir() else ():
        with path.open("rb") as fh:
            part = read_po(fh, locale=code)
        for message in part:
            if message.id and message.string:
                merged.add(message.id, message.string, context=message.context)
    return merged


@cache
def translations(code: str) -> gettext.NullTranslations:
    """``gettext``/``ngettext`` of one language, for Jinja2's i18n extension."""
    if code == "en" or code not in LANGUAGES:
        return gettext.NullTranslations()
    buffer = io.BytesIO()
    write_mo(buffer, catalog(code))
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)
