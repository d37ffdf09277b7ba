"""Pages: Jinja2 templates rendered in the viewer's language, with their dates in the viewer's
calendar and digits. One environment per language (Jinja2's i18n extension binds gettext to an
environment), built once."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from takamul.web.calendars import digits, show_date
from takamul.web.i18n import LANGUAGES, N_, language, translations
from takamul.web.prefs import Preferences

__all__ = ["TEMPLATES", "Formatter", "environment", "render"]

TEMPLATES = Path(__file__).parent / "templates"
_CALENDAR_NAMES = {
    "gregorian": N_("Gregorian"),
    "hijri": N_("Hijri (Umm al-Qura)"),
    "jalali": N_("Jalali"),
}


@cache
def environment(lang: str) -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_translations(translations(lang), newstyle=True)  # type: ignore[attr-defined]
    return env


@dataclass(frozen=True, slots=True)
class Formatter:
    """What templates call to show values in the viewer's way."""

    prefs: Preferences

    def date(self, value: str | None) -> Markup:
        """``<time datetime="ISO">`` with the text in the viewer's calendar; a date outside the
        calendar's tables is shown in Gregorian, marked so."""
        shown = show_date(value, self.prefs.calendar, self.prefs.lang, self.prefs.numerals)
        if shown is None:
            return Markup("")
        mark = ""
        if shown.fell_back:
            note = translations(self.prefs.lang).gettext(
                "Gregorian: outside the range of the chosen calendar"
            )
            mark = Markup(' <abbr class="fallback" title="{}">*</abbr>').format(note)
        return Markup('<time datetime="{}">{}</time>{}').format(shown.iso, shown.text, mark)

    def num(self, value: object) -> str:
        return digits(str(value), self.prefs.numerals)

    def bdi(self, text: object) -> Markup:
        """A name or code of either direction, isolated from the text around it."""
        return Markup("<bdi>{}</bdi>").format(escape(str(text)))


def render(template: str, prefs: Preferences, **context: Any) -> str:
    lang = language(prefs.lang)
    env = environment(lang.code)
    return env.get_template(template).render(
        lang=lang,
        languages=LANGUAGES.values(),
        calendars=_CALENDAR_NAMES,
        prefs=prefs,
        fmt=Formatter(prefs),
        **context,
    )
