"""The web application's languages and calendars without a browser: every message of every
template and screen has its Arabic and Persian translation; dates show in Umm al-Qura, Jalali
or Gregorian with the chosen digits, and typed dates of each calendar read back as Gregorian."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from takamul.web.calendars import parse_date, show_date
from takamul.web.i18n import translations

ROOT = Path(__file__).resolve().parents[1]


def _messages_tool() -> object:
    spec = importlib.util.spec_from_file_location("web_messages", ROOT / "scripts/web_messages.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_message_is_translated_into_arabic_and_persian() -> None:
    tool = _messages_tool()
    missing = tool.untranslated()  # type: ignore[attr-defined]
    assert missing == [], "\n".join(missing[:30])
    assert translations("ar").gettext("Sign in") == "تسجيل الدخول"
    assert translations("fa").gettext("Sign in") == "ورود"
    assert translations("en").gettext("Sign in") == "Sign in"


@pytest.mark.parametrize(
    ("iso", "calendar", "lang", "numerals", "text"),
    [
        ("1985-03-21", "hijri", "ar", "arab", "٣٠ جمادى الآخرة ١٤٠٥ هـ"),
        ("1985-03-21", "jalali", "fa", "persian", "۱ فروردین ۱۳۶۴"),
        ("1985-03-21", "gregorian", "en", "latin", "21 March 1985"),
        ("2024-03-11T08:30:00+03:00", "hijri", "en", "latin", "1 Ramadan 1445 AH"),
    ],
)
def test_dates_show_in_the_chosen_calendar(
    iso: str, calendar: str, lang: str, numerals: str, text: str
) -> None:
    shown = show_date(iso, calendar, lang, numerals)
    assert shown is not None and shown.text == text and not shown.fell_back
    assert shown.iso == iso[:10]


def test_dates_outside_umm_al_qura_fall_back_to_gregorian_and_say_so() -> None:
    shown = show_date("1900-01-01", "hijri", "ar", "latin")
    assert shown is not None and shown.fell_back and shown.calendar == "gregorian"
    assert shown.text == "1 يناير 1900"
    partial = show_date("1950", "jalali", "fa", "persian")
    assert partial is not None and partial.text == "۱۹۵۰"


@pytest.mark.parametrize(
    ("typed", "calendar"),
    [
        ("1405-06-30", "hijri"),
        ("30/6/1405", "hijri"),
        ("١٤٠٥-٠٦-٣٠", "hijri"),
        ("1364-01-01", "jalali"),
        ("۱۳۶۴/۱/۱", "jalali"),
        ("1985-03-21", "gregorian"),
        ("21/03/1985", "gregorian"),
    ],
)
def test_typed_dates_of_each_calendar_are_stored_gregorian(typed: str, calendar: str) -> None:
    assert parse_date(typed, calendar) == "1985-03-21"


def test_impossible_dates_are_refused() -> None:
    assert parse_date("1405-13-01", "hijri") is None
    assert parse_date("1364-12-31", "jalali") is None  # Esfand 1364 has 29 days
    assert parse_date("tomorrow", "gregorian") is None
