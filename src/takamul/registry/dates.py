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

__all__ = ["birth_date_candidates", "candidate_years", "compare_birth_dates"]

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
    ca, cb = birth_date_candidates(a), birth_date_candidates(b)
    if not ca or not cb:
        return Level.MISSING
    full = len(a.strip()) >= 10 and len(b.strip()) >= 10
    if full and a.strip()[:10] == b.strip()[:10]:
        return Level.EXACT
    if full and ca & cb:
        return Level.EQUIVALENT
    if candidate_years(ca) & candidate_years(cb):
        return Level.SIMILAR
    return Level.DIFFERENT
