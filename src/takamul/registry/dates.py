"""Birth dates as keyed: the Gregorian dates a birth date may stand for (as given, day and month
swapped, Hijri Umm al-Qura or Solar Hijri keyed as if Gregorian, year only), and their levels.
"""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache

import jdatetime
from hijridate import Hijri

from takamul.registry.levels import Level

__all__ = [
    "birth_date_candidates",
    "candidate_years",
    "compare_birth_dates",
    "compare_birth_readings",
    "native_calendar_date",
]

# Year ranges that read as a native calendar rather than a Gregorian birth year. Umm al-Qura
# (hijridate) covers 1343-1500 AH; 1450 AH is 2028. Solar Hijri 1300-1410 is 1921-2032.
# The ranges overlap (1343-1410): both readings are returned, the caller's other fields decide.
HIJRI_YEARS = range(1343, 1451)
JALALI_YEARS = range(1300, 1411)
_DATE = re.compile(r"^\s*(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?")


def _valid(y: int, m: int, d: int) -> str | None:
    try:
        return date(y, m, d).isoformat()
    except ValueError:
        return None


def _from_hijri(y: int, m: int, d: int) -> str | None:
    try:
        return Hijri(y, m, d).to_gregorian().isoformat()
    except (ValueError, OverflowError):
        return None


def _from_jalali(y: int, m: int, d: int) -> str | None:
    try:
        return jdatetime.date(y, m, d).togregorian().isoformat()
    except (ValueError, OverflowError):
        return None


def native_calendar_date(text: str, calendar: str) -> str | None:
    """The Gregorian ISO date of a full date keyed in ``calendar``: ``"hijri"`` (Umm al-Qura)
    or ``"jalali"`` (Solar Hijri); None when ``text`` is not a valid full date of it."""
    converters = {"hijri": _from_hijri, "jalali": _from_jalali}
    if calendar not in converters:
        raise ValueError(f"unknown calendar {calendar!r}: use 'hijri' or 'jalali'")
    m = _DATE.match(text or "")
    if not m or m.group(2) is None or m.group(3) is None:
        return None
    return converters[calendar](int(m.group(1)), int(m.group(2)), int(m.group(3)))


def _year_candidates(y: int) -> set[str]:
    out = {f"{y:04d}"}
    if y in HIJRI_YEARS:
        first = _from_hijri(y, 1, 1)
        last = _from_hijri(y, 12, 29)
        if first and last:
            out |= {first[:4], last[:4]}
    if y in JALALI_YEARS:
        first, last = _from_jalali(y, 1, 1), _from_jalali(y, 12, 29)
        if first and last:
            out |= {first[:4], last[:4]}
    return out


@lru_cache(maxsize=100_000)
def birth_date_candidates(text: str) -> frozenset[str]:
    """Plausible Gregorian readings of a keyed birth date (ISO strings; a year alone as YYYY).

    A valid Gregorian input is always among them. Day/month swap only when both readings are
    valid; a Hijri or Jalali year range adds the converted date (or years, for a year alone).
    """
    m = _DATE.match(text or "")
    if not m:
        return frozenset()
    y = int(m.group(1))
    if m.group(2) is None or m.group(3) is None:
        return frozenset(_year_candidates(y))
    mo, d = int(m.group(2)), int(m.group(3))
    out: set[str] = set()
    for a, b in ((mo, d), (d, mo)):
        iso = _valid(y, a, b)
        if iso:
            out.add(iso)
    if y in HIJRI_YEARS and (iso := _from_hijri(y, mo, d)):
        out.add(iso)
    if y in JALALI_YEARS and (iso := _from_jalali(y, mo, d)):
        out.add(iso)
    return frozenset(out)


def candidate_years(candidates: frozenset[str]) -> frozenset[int]:
    """The years of a candidate set."""
    return frozenset(int(c[:4]) for c in candidates)


def compare_birth_dates(a: str | None, b: str | None) -> Level:
    """EXACT same full date as keyed; EQUIVALENT same date after a calendar or day/month
    correction; SIMILAR a common year (a year-only date, or a candidate year); else DIFFERENT;
    MISSING when either is absent or unreadable."""
    if not a or not b:
        return Level.MISSING
    if a == b:  # most candidate pairs: the rules below reduce to this
        if not birth_date_candidates(a):
            return Level.MISSING
        return Level.EXACT if len(a.strip()) >= 10 else Level.SIMILAR
    ca, cb = birth_date_candidates(a), birth_date_candidates(b)
    return compare_birth_readings(a, ca, candidate_years(ca), b, cb, candidate_years(cb))


def compare_birth_readings(
    a: str,
    readings_a: frozenset[str],
    years_a: frozenset[int],
    b: str,
    readings_b: frozenset[str],
    years_b: frozenset[int],
) -> Level:
    """``compare_birth_dates`` of two keyed dates whose readings are known already (a
    record's ``birth_candidates`` and ``birth_years``), so that batch linking need not
    convert calendars again."""
    if not readings_a or not readings_b:
        return Level.MISSING
    full = len(a.strip()) >= 10 and len(b.strip()) >= 10
    if full and a.strip()[:10] == b.strip()[:10]:
        return Level.EXACT
    if full and readings_a & readings_b:
        return Level.EQUIVALENT
    if years_a & years_b or (full and _one_keyed_digit(a.strip()[:10], b.strip()[:10])):
        return Level.SIMILAR
    return Level.DIFFERENT


def _one_keyed_digit(a: str, b: str) -> bool:
    """Two dates that differ in one digit as keyed (1948 / 1908, 12 / 17): a clerk's slip,
    not another person's date."""
    return sum(x != y for x, y in zip(a, b, strict=False)) == 1
