"""Birth dates written in the Hijri (Umm al-Qura) or Solar Hijri (Jalali) calendar, as a clerk
might key them into a field that expects a Gregorian date.
"""

from __future__ import annotations

from datetime import date

import jdatetime
from hijridate import Gregorian

__all__ = ["as_native_calendar"]


def as_native_calendar(day: date, calendar: str) -> str | None:
    """``YYYY-MM-DD`` of ``day`` in the country's calendar, or None outside its supported range."""
    if calendar == "hijri":
        try:
            h = Gregorian(day.year, day.month, day.day).to_hijri()
        except (OverflowError, ValueError):
            return None  # the Umm al-Qura tables cover 1343-1500 AH (1924-2077)
        return f"{h.year:04d}-{h.month:02d}-{h.day:02d}"
    j = jdatetime.date.fromgregorian(date=day)
    return f"{j.year:04d}-{j.month:02d}-{j.day:02d}"
