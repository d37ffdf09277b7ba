"""Phone numbers to E.164 (+966…, +98…) whether keyed in local form (05…, 09…), with 00 or
with + , using Google's libphonenumber metadata (the ``phonenumbers`` package).
"""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers

from takamul.registry.arabic import fold_arabic
from takamul.registry.levels import Level

__all__ = ["DEFAULT_REGIONS", "compare_phones", "normalize_phone"]

# Regions tried, in order, for a number without a country code: the two countries Takamul
# is built for. A local number is accepted for the first region where it is a valid number.
DEFAULT_REGIONS: tuple[str, ...] = ("SA", "IR")
_E164 = re.compile(r"^\+[1-9]\d{7,14}$")
# Mobile numbers of the two national plans (Saudi 5x xxx xxxx, Iranian 9xx xxx xxxx) are
# recognised without the parser: they are most numbers met, and parsing costs ~20 µs each.
_FAST = (
    (re.compile(r"^(?:\+9665|009665|9665|05)(\d{8})$"), "+9665"),
    (re.compile(r"^(?:\+989|00989|989|09)(\d{9})$"), "+989"),
)
_KEEP = re.compile(r"[^\d+]")


@lru_cache(maxsize=200_000)
def normalize_phone(text: str, regions: tuple[str, ...] = DEFAULT_REGIONS) -> str | None:
    """E.164 form of a phone number, or None if it is not a possible number in ``regions``."""
    # Folding only matters for Arabic-Indic digits; ASCII (most numbers) skips it, which is
    # the same result since everything but digits and + is dropped here anyway.
    raw = _KEEP.sub("", text if text.isascii() else fold_arabic(text)) if text else ""
    if not raw:
        return None
    for pattern, prefix in _FAST:
        m = pattern.match(raw)
        if m:
            return prefix + m.group(1)
    if raw.startswith("00"):
        raw = "+" + raw[2:]
    if _E164.match(raw):
        try:
            number = phonenumbers.parse(raw, None)
        except phonenumbers.NumberParseException:
            return None
        return raw if phonenumbers.is_possible_number(number) else None
    fallback: str | None = None
    for region in regions:
        try:
            number = phonenumbers.parse(raw, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        if fallback is None and phonenumbers.is_possible_number(number):
            fallback = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return fallback


def compare_phones(a: tuple[str, ...], b: tuple[str, ...]) -> Level:
    """EXACT a shared E.164 number; MISSING when either side has none; else DIFFERENT.

    A shared number is weaker evidence than it looks (families share one phone); the linker
    learns that from the data as the level's m/u probabilities.
    """
    if not a or not b:
        return Level.MISSING
    return Level.EXACT if any(x in b for x in a) else Level.DIFFERENT
