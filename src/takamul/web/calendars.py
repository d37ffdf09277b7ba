"""Dates as people read and write them: Gregorian, Hijri (Umm al-Qura, by hijridate) or
Solar Hijri (Jalali, by jdatetime), with Western, Arabic-Indic or Persian digits.

FHIR keeps Gregorian ISO 8601; only what a page shows or a form accepts is in the person's
calendar. Umm al-Qura tables end at the edges hijridate covers (1343-1500 AH, 1924-2077): a date
outside them is shown in Gregorian and says so, never silently wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

import jdatetime
from hijridate import Gregorian, Hijri

__all__ = [
    "CALENDARS",
    "NUMERALS",
    "ShownDate",
    "digits",
    "latin_digits",
    "parse_date",
    "show_date",
]

CALENDARS = ("gregorian", "hijri", "jalali")
NUMERALS = ("latin", "arab", "persian")
_DIGITS = {"latin": "0123456789", "arab": "٠١٢٣٤٥٦٧٨٩", "persian": "۰۱۲۳۴۵۶۷۸۹"}
_TO_LATIN = str.maketrans("٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹", "01234567890123456789")

# Month names are calendar data, not interface text: each calendar's months in each language.
_MONTHS: dict[tuple[str, str], tuple[str, ...]] = {
    ("gregorian", "en"): (
        "January", "February", "March", "April", "May", "June", "July", "August",
        "September", "October", "November", "December",
    ),
    ("gregorian", "ar"): (
        "يناير", "فبراير", "مارس", "أبريل", "مايو", "يونيو", "يوليو", "أغسطس",
        "سبتمبر", "أكتوبر", "نوفمبر", "ديسمبر",
    ),
    ("gregorian", "fa"): (
        "ژانویه", "فوریه", "مارس", "آوریل", "مه", "ژوئن", "ژوئیه", "اوت",
        "سپتامبر", "اکتبر", "نوامبر", "دسامبر",
    ),
    ("hijri", "en"): (
        "Muharram", "Safar", "Rabi al-Awwal", "Rabi al-Thani", "Jumada al-Ula",
        "Jumada al-Akhirah", "Rajab", "Shaban", "Ramadan", "Shawwal", "Dhu al-Qadah",
        "Dhu al-Hijjah",
    ),
    ("hijri", "ar"): (
        "محرم", "صفر", "ربيع الأول", "ربيع الآخر", "جمادى الأولى", "جمادى الآخرة", "رجب",
        "شعبان", "رمضان", "شوال", "ذو القعدة", "ذو الحجة",
    ),
    ("hijri", "fa"): (
        "محرم", "صفر", "ربیع‌الاول", "ربیع‌الثانی", "جمادی‌الاول", "جمادی‌الثانی", "رجب",
        "شعبان", "رمضان", "شوال", "ذی‌القعده", "ذی‌الحجه",
    ),
    ("jalali", "en"): (
        "Farvardin", "Ordibehesht", "Khordad", "Tir", "Mordad", "Shahrivar", "Mehr", "Aban",
        "Azar", "Dey", "Bahman", "Esfand",
    ),
    ("jalali", "fa"): (
        "فروردین", "اردیبهشت", "خرداد", "تیر", "مرداد", "شهریور", "مهر", "آبان", "آذر",
        "دی", "بهمن", "اسفند",
    ),
    ("jalali", "ar"): (
        "فروردين", "أرديبهشت", "خرداد", "تير", "مرداد", "شهريور", "مهر", "آبان", "آذر",
        "دي", "بهمن", "إسفند",
    ),
}  # fmt: skip
_ERA = {
    "hijri": {"ar": "هـ", "fa": "ق", "en": "AH"},
    "jalali": {"ar": "هـ.ش", "fa": "", "en": "SH"},
}
_ISO = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_TYPED = re.compile(r"^\s*(\d{1,4})\s*[-/.\s]\s*(\d{1,2})\s*[-/.\s]\s*(\d{1,4})\s*$")


@dataclass(frozen=True, slots=True)
class ShownDate:
    """A date for a page: ``iso`` for ``<time datetime>``, ``text`` in the person's calendar."""

    iso: str
    text: str
    calendar: str  # the calendar ``text`` is in (Gregorian when the wanted one does not cover it)
    fell_back: bool = False  # the wanted calendar does not cover the date


def latin_digits(text: str) -> str:
    """``text`` with Arabic-Indic and Persian digits read as Western ones (typed input)."""
    return text.translate(_TO_LATIN)


def digits(text: str, numerals: str) -> str:
    """``text`` with its Western digits written in ``numerals``."""
    if numerals not in _DIGITS or numerals == "latin":
        return text
    return text.translate(str.maketrans("0123456789", _DIGITS[numerals]))


def _native(day: date, calendar: str) -> tuple[int, int, int] | None:
    if calendar == "hijri":
        try:
            h = Gregorian(day.year, day.month, day.day).to_hijri()
        except (OverflowError, ValueError):
            return None
        return h.year, h.month, h.day
    if calendar == "jalali":
        j = jdatetime.date.fromgregorian(date=day)
        return j.year, j.month, j.day
    return day.year, day.month, day.day


def show_date(value: str | None, calendar: str, lang: str, numerals: str) -> ShownDate | None:
    """A FHIR date or dateTime shown in ``calendar``; year or year-month precision is kept
    (a partial date is shown as partial, not as the 1st of the month)."""
    if not value:
        return None
    m = _ISO.match(value)
    if not m:
        return ShownDate(value, value, "gregorian")
    y, mo, d = int(m.group(1)), m.group(2), m.group(3)
    if mo is None or d is None:
        # partial dates cannot be converted day-exactly: show them as recorded (Gregorian)
        return ShownDate(value[:7], digits(value[:7], numerals), "gregorian")
    day = date(y, int(mo), int(d))
    native = _native(day, calendar)
    fell_back = native is None
    used = "gregorian" if native is None else calendar
    ny, nm, nd = native or (day.year, day.month, day.day)
    names = _MONTHS.get((used, lang)) or _MONTHS[(used, "en")]
    era = _ERA.get(used, {}).get(lang, "")
    text = f"{nd} {names[nm - 1]} {ny}" + (f" {era}" if era else "")
    return ShownDate(day.isoformat(), digits(text, numerals), used, fell_back)


def parse_date(text: str, calendar: str) -> str | None:
    """The Gregorian ISO date of a date typed in ``calendar`` (year-month-day or day/month/year,
    any digits); None when it is not a valid date of that calendar."""
    m = _TYPED.match(latin_digits(text or ""))
    if not m:
        return None
    a, b, c = m.group(1), m.group(2), m.group(3)
    y, mo, d = (int(a), int(b), int(c)) if len(a) == 4 else (int(c), int(b), int(a))
    try:
        if calendar == "hijri":
            return Hijri(y, mo, d).to_gregorian().isoformat()
        if calendar == "jalali":
            return jdatetime.date(y, mo, d).togregorian().isoformat()
        return date(y, mo, d).isoformat()
    except (ValueError, OverflowError):
        return None
