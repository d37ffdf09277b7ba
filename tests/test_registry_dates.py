"""Birth dates: Gregorian readings of dates keyed in Hijri or Jalali, swapped, or year only."""

from __future__ import annotations

from datetime import date, timedelta

import jdatetime
from hijridate import Gregorian
from hypothesis import given, settings
from hypothesis import strategies as st

from takamul.registry import Level, birth_date_candidates, compare_birth_dates


def test_as_given_and_swapped() -> None:
    assert birth_date_candidates("1985-03-07") == {"1985-03-07", "1985-07-03"}
    assert birth_date_candidates("1985-03-25") == {"1985-03-25"}  # 25 is no month


def test_hijri_keyed_as_gregorian() -> None:
    real = date(1985, 3, 7)
    h = Gregorian(1985, 3, 7).to_hijri()
    keyed = f"{h.year:04d}-{h.month:02d}-{h.day:02d}"
    assert real.isoformat() in birth_date_candidates(keyed)
    assert compare_birth_dates(keyed, "1985-03-07") == Level.EQUIVALENT


def test_jalali_keyed_as_gregorian() -> None:
    j = jdatetime.date.fromgregorian(date=date(1990, 8, 15))
    keyed = f"{j.year:04d}-{j.month:02d}-{j.day:02d}"
    assert "1990-08-15" in birth_date_candidates(keyed)
    assert compare_birth_dates("1990-08-15", keyed) == Level.EQUIVALENT


def test_ambiguous_year_gives_both_calendars() -> None:
    cands = birth_date_candidates("1400-01-01")
    assert "1979-11-20" in cands  # 1 Muharram 1400 AH (Umm al-Qura)
    assert "2021-03-21" in cands  # 1 Farvardin 1400 SH


def test_year_only_and_levels() -> None:
    assert birth_date_candidates("1985") == {"1985"}
    assert compare_birth_dates("1985-03-07", "1985") == Level.SIMILAR
    assert compare_birth_dates("1985-03-07", "1985-03-07") == Level.EXACT
    assert compare_birth_dates("1985-03-07", "1985-07-03") == Level.EQUIVALENT
    # one keyed digit (1948 / 1908) is a clerk's slip; two are another date
    assert compare_birth_dates("1948-03-07", "1908-03-07") == Level.SIMILAR
    assert compare_birth_dates("1985-03-07", "1986-03-07") == Level.SIMILAR
    assert compare_birth_dates("1985-03-07", "1986-04-07") == Level.DIFFERENT
    assert compare_birth_dates("1985-03-07", "1958-03-07") == Level.DIFFERENT
    assert compare_birth_dates(None, "1985") == Level.MISSING
    assert compare_birth_dates("unknown", "1985") == Level.MISSING


@settings(max_examples=300, deadline=None)
@given(st.dates(min_value=date(1900, 1, 1), max_value=date(2030, 12, 31)))
def test_candidates_include_a_valid_gregorian_input(day: date) -> None:
    text = day.isoformat()
    cands = birth_date_candidates(text)
    assert text in cands
    assert all(
        date.fromisoformat(c) - day < timedelta(days=366) for c in cands if c[:4] == text[:4]
    )
