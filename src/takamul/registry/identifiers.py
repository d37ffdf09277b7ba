"""National identifiers: recognised in FHIR Identifier lists by type (v2-0203 NI) or by the
configured systems, checked (Saudi Luhn, Iranian mod 11), compared with typo tolerance.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from takamul.registry.arabic import fold_arabic
from takamul.registry.levels import Level

__all__ = [
    "NationalId",
    "compare_ids",
    "ids_shared_across_generations",
    "luhn_valid",
    "national_id",
    "valid_iran_national_code",
    "valid_saudi_id",
]


def _load() -> dict[str, Any]:
    path = resources.files("takamul.registry").joinpath("data/identifiers.json")
    return json.loads(path.read_text(encoding="utf-8"))


CONFIG = _load()
_SYSTEMS: dict[str, dict[str, str]] = CONFIG["systems"]
_TYPE_SYSTEM: str = CONFIG["type_system"]
_TYPE_CODES = frozenset(CONFIG["type_codes"])


@dataclass(frozen=True, slots=True)
class NationalId:
    """A national ID as found on a record: digits only, where it came from, and its check."""

    value: str
    system: str | None
    check: str | None  # "sa", "ir", or None when the algorithm is not known
    valid: bool | None  # None when there is no check to run


# A doubled Luhn digit with its digits summed: 2d, or 2d - 9 above 4.
_LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10): double every second digit from the right, sum the digits, ≡ 0 mod 10."""
    if not digits.isdigit():
        return False
    doubled = _LUHN_DOUBLED
    total = sum(map(int, digits[::-1][::2])) + sum(doubled[int(ch)] for ch in digits[-2::-2])
    return total % 10 == 0


def valid_saudi_id(value: str) -> bool:
    """Ten digits, first 1 (citizen national ID) or 2 (resident iqama), Luhn check digit."""
    return len(value) == 10 and value[0] in "12" and luhn_valid(value)


def valid_iran_national_code(value: str) -> bool:
    """Iranian national code: ten digits (leading zeros are often dropped when keyed, so 8-9
    digits are left-padded); s = Σ d_i·(10−i) over the first nine, r = s mod 11; the check
    digit is r if r < 2 else 11 − r. Ten equal digits pass the sum but are not issued."""
    if not value.isdigit() or not 8 <= len(value) <= 10:
        return False
    v = value.zfill(10)
    if len(set(v)) == 1:
        return False
    r = sum(int(d) * (10 - i) for i, d in enumerate(v[:9])) % 11
    return int(v[9]) == (r if r < 2 else 11 - r)


_CHECKS = {"sa": valid_saudi_id, "ir": valid_iran_national_code}


def _digits(value: str) -> str:
    if value.isascii() and value.isdigit():
        return value
    return "".join(ch for ch in fold_arabic(value) if ch.isdigit())


def _is_ni_type(ident: Mapping[str, Any]) -> bool:
    codings = (ident.get("type") or {}).get("coding") or []
    return any(c.get("system") == _TYPE_SYSTEM and c.get("code") in _TYPE_CODES for c in codings)


@lru_cache(maxsize=100_000)
def _national_id(raw: str, system: str | None, check: str | None) -> NationalId | None:
    """One identifier value as a NationalId (cached: a person's records repeat the ID)."""
    value = _digits(raw)
    if not value:
        return None
    if check == "ir":
        value = value.zfill(10)
    return NationalId(value, system, check, _CHECKS[check](value) if check else None)


def national_id(identifiers: Sequence[Mapping[str, Any]] | None) -> NationalId | None:
    """The national ID among a Patient's identifiers: a configured system first, else any
    identifier typed NI. Iranian codes are left-padded to ten digits."""
    idents = identifiers or ()
    # The configured systems first, in order: the type codings (the costly part) are only
    # read when no identifier of a configured system carries digits.
    for ident in idents:
        system = ident.get("system")
        spec = _SYSTEMS.get(system) if isinstance(system, str) else None
        raw = ident.get("value")
        if spec is None or not isinstance(raw, str):
            continue
        nid = _national_id(raw, system, spec["check"])
        if nid is not None:
            return nid
    for ident in idents:
        raw = ident.get("value")
        if not isinstance(raw, str) or not _is_ni_type(ident):
            continue
        system = ident.get("system")
        if isinstance(system, str) and system in _SYSTEMS:
            continue  # configured, and without digits (seen above)
        nid = _national_id(raw, system if isinstance(system, str) else None, _format_of(raw))
        if nid is not None:
            return nid
    return None


@lru_cache(maxsize=100_000)
def _format_of(raw: str) -> str | None:
    """The national format an NI-typed value of a system we were not told about follows, by
    its check digit (every facility names its systems its own way: a national ID must not lose
    its validity, and so its weight as a conflict between two people, for that). A value that
    passes no known check is read as the format its shape says (a keying error), if any."""
    value = _digits(raw)
    if valid_saudi_id(value):
        return "sa"
    if valid_iran_national_code(value):
        return "ir"
    if len(value) == 10 and value[0] in "12":
        return "sa"
    return "ir" if 8 <= len(value) <= 10 else None


def compare_ids(a: str | None, b: str | None) -> Level:
    """EXACT equal; SIMILAR one substituted digit or two adjacent digits swapped (the keying
    errors of a clerk); DIFFERENT otherwise; MISSING when either is absent."""
    if not a or not b:
        return Level.MISSING
    if a == b:
        return Level.EXACT
    if len(a) != len(b):
        return Level.DIFFERENT
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    if len(diff) == 1:
        return Level.SIMILAR
    if len(diff) == 2 and diff[1] == diff[0] + 1:
        i, j = diff
        if a[i] == b[j] and a[j] == b[i]:
            return Level.SIMILAR
    return Level.DIFFERENT


def ids_shared_across_generations(
    records: Iterable[tuple[str, Iterable[int]]],
    min_gap_years: int = CONFIG["newborn_min_gap_years"],
) -> set[str]:
    """IDs carried by records whose birth years are ``min_gap_years`` or more apart: one of
    them is not the ID's owner (typically an infant registered under a parent's ID).

    ``records`` gives (national ID, candidate birth years) per record; with several calendar
    readings, the years closest to each other are compared so a calendar slip is no flag.
    """
    years: dict[str, list[frozenset[int]]] = defaultdict(list)
    for nid, ys in records:
        ys = frozenset(ys)
        if nid and ys:
            years[nid].append(ys)
    flagged: set[str] = set()
    for nid, sets in years.items():
        if len(sets) < 2:
            continue
        # Nearly every ID's years lie within a few years of each other: then no two readings
        # can be min_gap_years apart, and the pairwise check below is skipped.
        if max(map(max, sets)) - min(map(min, sets)) < min_gap_years:
            continue
        for i, a in enumerate(sets):
            if any(min(abs(x - y) for x in a for y in b) >= min_gap_years for b in sets[i + 1 :]):
                flagged.add(nid)
                break
    return flagged
