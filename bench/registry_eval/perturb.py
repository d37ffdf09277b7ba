"""The error model: variation classes, their rates, and the functions that apply them.

Every function returns the changed value, or ``None`` when the variation does not apply (a
record is labelled with a class only when its content actually changed).

Sources of the rules (facts, cited; the code is this generator's own):

- Saudi national ID / residence permit (iqama) number: 10 digits, first digit 1 for citizens and
  2 for residents, the last digit a Luhn check digit (ISO/IEC 7812-1 Annex B); as documented by
  the many public validators of the Absher/Elm number format.
- Iranian national code (کد ملی): 10 digits, the last a check digit over the first nine with
  weights 10..2: r = sum mod 11, check = r if r < 2 else 11 - r; codes of ten equal digits are
  invalid (National Organization for Civil Registration, as published with the code's format).
- Umm al-Qura calendar (Saudi official Hijri calendar) via ``hijridate``; the Solar Hijri
  (Jalali) calendar of Iran via ``jdatetime`` (both are dependencies of the project).
- Keyboards: US QWERTY; Arabic 101 (the standard Windows Arabic layout); Persian standard
  layout ISIRI 9147.
- Numbering plans: Saudi Arabia +966, mobile numbers 05X XXX XXXX (CST numbering plan, ITU-T
  E.164 country code 966); Iran +98, mobile numbers 09XX XXX XXXX (CRA numbering plan). Eastern
  Arabic (٠-٩) and Persian (۰-۹) digits are typed in native-script forms.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass, fields
from random import Random

from .names import ZWNJ

# the classes, in the order they are listed in variations.csv
CLASSES: tuple[str, ...] = (
    "romanisation",
    "name_order",
    "chain_partial",
    "nasab",
    "kunya",
    "newborn_name",
    "ocr",
    "keyboard",
    "case_space",
    "date_year_only",
    "date_typo",
    "date_calendar",
    "id_missing",
    "id_typo",
    "id_parent",
    "phone_missing",
    "phone_format",
    "phone_changed",
    "sex_missing",
    "sex_wrong",
)


@dataclass(frozen=True)
class ErrorRates:
    """Per-record probabilities of each variation (when it can apply to the record).

    ``clean`` records get no variation at all. The other rates are independent draws, so
    several classes combine in one record. Applicability: ``chain_partial`` needs a name with
    optional parts (a Saudi/Arab chain, a Seyyed title, a compound Persian given name, a
    South-Asian second name, a Filipino middle name); ``nasab`` and ``kunya`` apply to Arab
    names (``kunya`` only to a parent of a son); ``id_parent`` applies to infants (under one year)
    and ``newborn_name`` to those of their records that carry a parent's ID.
    """

    clean: float = 0.12
    romanisation: float = 0.30
    name_order: float = 0.05
    chain_partial: float = 0.35
    nasab: float = 0.06
    kunya: float = 0.03
    ocr: float = 0.02
    keyboard: float = 0.03
    case_space: float = 0.04  # besides the facilities that write all Latin names in capitals
    facility_caps: float = 0.25  # share of facilities that write Latin names in capitals
    date_year_only: float = 0.03
    date_typo: float = 0.03
    date_calendar: float = 0.03
    id_missing: float = 0.10
    id_typo: float = 0.02
    id_parent: float = 0.6  # of an infant's registrations
    newborn_name: float = 0.5  # of the records under a parent's ID
    phone_missing: float = 0.15
    phone_format: float = 0.35
    phone_changed: float = 0.06
    sex_missing: float = 0.02
    sex_wrong: float = 0.005

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


# --------------------------------------------------------------------------------------------
# national identifiers
# --------------------------------------------------------------------------------------------
def luhn_check_digit(body: str) -> str:
    """The digit that makes ``body + digit`` pass the Luhn check."""
    total = 0
    # the check digit will be the rightmost; the digit left of it is doubled
    for i, ch in enumerate(reversed(body)):
        d = ord(ch) - 48
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    if not number.isdigit() or not number:
        return False
    return luhn_check_digit(number[:-1]) == number[-1]


def saudi_id_valid(number: str) -> bool:
    """A Saudi national ID (1...) or residence permit number (2...): 10 digits, Luhn."""
    return len(number) == 10 and number[0] in "12" and luhn_valid(number)


def iran_check_digit(body: str) -> str:
    s = sum((ord(body[i]) - 48) * (10 - i) for i in range(9))
    r = s % 11
    return str(r if r < 2 else 11 - r)


def iran_code_valid(number: str) -> bool:
    """An Iranian national code: 10 digits, not all equal, weighted mod-11 check digit."""
    if len(number) != 10 or not number.isdigit() or len(set(number)) == 1:
        return False
    return iran_check_digit(number[:9]) == number[9]


def national_id_valid(number: str, country: str) -> bool:
    return saudi_id_valid(number) if country == "SA" else iran_code_valid(number)


def id_typo(rng: Random, number: str, country: str) -> str | None:
    """One digit changed or two adjacent digits swapped, such that the check digit fails."""
    for _ in range(40):
        digits = list(number)
        if rng.random() < 0.6:
            i = rng.randrange(len(digits))
            new = str(rng.randrange(10))
            if new == digits[i]:
                continue
            digits[i] = new
        else:
            i = rng.randrange(len(digits) - 1)
            if digits[i] == digits[i + 1]:
                continue
            digits[i], digits[i + 1] = digits[i + 1], digits[i]
        out = "".join(digits)
        if not national_id_valid(out, country):
            return out
    return None


# --------------------------------------------------------------------------------------------
# phones
# --------------------------------------------------------------------------------------------
ARABIC_DIGITS = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
PERSIAN_DIGITS = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")

# (format code, weight) of the non-canonical formats
_SA_FORMATS = (
    ("e164", 0.30),
    ("intl00", 0.12),
    ("bare_cc", 0.08),
    ("nsn", 0.12),
    ("national_spaced", 0.12),
    ("national_dashed", 0.06),
    ("e164_spaced", 0.12),
    ("native_digits", 0.08),
)
_IR_FORMATS = _SA_FORMATS


def format_phone(nsn: str, country: str, fmt: str) -> str:
    """A mobile number (national significant number) in one of the written formats.

    SA: nsn 5XXXXXXXX (9 digits); IR: nsn 9XXXXXXXXX (10 digits). ``national`` is the
    canonical form (05X..., 09XX...).
    """
    cc = "966" if country == "SA" else "98"
    nat = "0" + nsn
    if fmt == "national":
        return nat
    if fmt == "e164":
        return f"+{cc}{nsn}"
    if fmt == "intl00":
        return f"00{cc}{nsn}"
    if fmt == "bare_cc":
        return f"{cc}{nsn}"
    if fmt == "nsn":
        return nsn
    if country == "SA":
        a, b, c = nat[:3], nat[3:6], nat[6:]
        ea, eb, ec = nsn[:2], nsn[2:5], nsn[5:]
    else:
        a, b, c = nat[:4], nat[4:7], nat[7:]
        ea, eb, ec = nsn[:3], nsn[3:6], nsn[6:]
    if fmt == "national_spaced":
        return f"{a} {b} {c}"
    if fmt == "national_dashed":
        return f"{a}-{b}-{c}"
    if fmt == "e164_spaced":
        return f"+{cc} {ea} {eb} {ec}"
    if fmt == "native_digits":
        return nat.translate(ARABIC_DIGITS if country == "SA" else PERSIAN_DIGITS)
    raise ValueError(fmt)


def other_phone_format(rng: Random, country: str, native_script: bool) -> str:
    table = _SA_FORMATS if country == "SA" else _IR_FORMATS
    items = [(f, w) for f, w in table if native_script or f != "native_digits"]
    x = rng.random() * sum(w for _, w in items)
    for f, w in items:
        x -= w
        if x <= 0:
            return f
    return items[-1][0]


# --------------------------------------------------------------------------------------------
# dates
# --------------------------------------------------------------------------------------------
def _clamped(y: int, m: int, d: int) -> str:
    """A calendar date typed into a Gregorian field: a date picker or validator forces the day
    into the Gregorian month (Jalali 1370-04-31 becomes 1370-04-30, Hijri 1410-02-30 stays)."""
    last = calendar.monthrange(y, m)[1]
    return f"{y:04d}-{m:02d}-{min(d, last):02d}"


def hijri_as_gregorian(d: dt.date) -> str | None:
    """The Umm al-Qura date of a birth date, written as if it were Gregorian (1410-08-18)."""
    try:
        from hijridate import Gregorian
    except ImportError:  # pragma: no cover - a dependency of the project
        return None
    try:
        h = Gregorian(d.year, d.month, d.day).to_hijri()
    except (ValueError, OverflowError):  # outside the Umm al-Qura table (1343-1500 AH)
        return None
    return _clamped(h.year, h.month, h.day)


def jalali(d: dt.date) -> tuple[int, int, int]:
    import jdatetime

    j = jdatetime.date.fromgregorian(date=d)
    return j.year, j.month, j.day


def jalali_as_gregorian(d: dt.date) -> str:
    """The Solar Hijri (Jalali) date of a birth date, written as if Gregorian (1369-04-10)."""
    y, m, day = jalali(d)
    return _clamped(y, m, day)


def jalali_new_year(year: int) -> dt.date:
    """1 Farvardin of a Jalali year, in Gregorian (the placeholder of an unknown day)."""
    import jdatetime

    g = jdatetime.date(year, 1, 1).togregorian()
    return dt.date(g.year, g.month, g.day)


def date_year_only(rng: Random, d: dt.date, country: str) -> str | None:
    """An unknown day: the year alone, 1 January, or the country's placeholder (1 Farvardin of
    the Jalali year in Iran; 1 July, mid-year, in Saudi records)."""
    x = rng.random()
    if x < 0.35:
        return f"{d.year:04d}"
    if x < 0.85:
        out = f"{d.year:04d}-01-01"
    elif country == "IR":
        out = jalali_new_year(jalali(d)[0]).isoformat()
    else:
        out = f"{d.year:04d}-07-01"
    if out == d.isoformat():
        return f"{d.year:04d}"
    return out


def date_typo(rng: Random, d: dt.date, ref: dt.date) -> str | None:
    """One digit of the year or day mistyped, a month digit, or day and month swapped."""
    for _ in range(30):
        y, m, day = d.year, d.month, d.day
        op = rng.random()
        if op < 0.35:  # year: last or third digit
            pos = 3 if rng.random() < 0.7 else 2
            ys = list(f"{y:04d}")
            ys[pos] = str((int(ys[pos]) + rng.choice((-1, 1, 2, -2, 5))) % 10)
            y = int("".join(ys))
        elif op < 0.65:  # day: one digit
            ds = list(f"{day:02d}")
            pos = rng.randrange(2)
            ds[pos] = str((int(ds[pos]) + rng.choice((-1, 1, 2))) % 10)
            day = int("".join(ds))
        elif op < 0.85:  # day/month swap
            if day > 12 or day == m:
                continue
            m, day = day, m
        else:  # month digit
            m = m + rng.choice((-1, 1))
        try:
            out = dt.date(y, m, day)
        except ValueError:
            continue
        if out != d and out <= ref and out.year >= 1900:
            return out.isoformat()
    return None


# --------------------------------------------------------------------------------------------
# native-script orthographic variation (counted as ``romanisation``)
# --------------------------------------------------------------------------------------------
_HAMZA_ALEF = str.maketrans({"أ": "ا", "إ": "ا", "آ": "ا"})
_TO_ARABIC = str.maketrans({"ی": "ي", "ک": "ك"})
_TO_PERSIAN = str.maketrans({"ي": "ی", "ك": "ک", "ى": "ی"})
_DIACRITICS = ("\u064e", "\u064f", "\u0650", "\u0651")  # fatha damma kasra shadda
_NON_JOINING = set("اأإآدذرزژوؤةءى ")
TATWEEL = "\u0640"


def native_variant(rng: Random, s: str, persian: bool, alts: tuple[str, ...] = ()) -> str | None:
    """An orthographic variant of a native-script name: spacing/ZWNJ and article forms, hamza
    written or not, ة/ه, ى/ي, Arabic vs Persian ی/ي and ک/ك, diacritics, tatweel."""
    options: list[str] = []
    for a in alts:
        if a != s:
            options.append(a)
    h = s.translate(_HAMZA_ALEF).replace("ؤ", "و")
    if h != s:
        options.append(h)
    if s.endswith("ة"):
        options.append(s[:-1] + "ه")
    elif s.endswith("ه") and not persian and len(s) > 2:
        options.append(s[:-1] + "ة")
    elif s.endswith("ه") and persian and rng.random() < 0.5:
        options.append(s[:-1] + "ة")  # Persian name typed with Arabic habits
    if s.endswith("ى"):
        options.append(s[:-1] + "ي")
    elif s.endswith("ي") and not persian:
        options.append(s[:-1] + "ى")
    if persian:
        a = s.translate(_TO_ARABIC)
        if a != s:
            options.append(a)
            options.append(a)  # the commonest Persian-script variation: an Arabic keyboard
        if "ایی" in s:
            options.append(s.replace("ایی", "ائی"))
        if "ائی" in s:
            options.append(s.replace("ائی", "ایی"))
    else:
        p = s.translate(_TO_PERSIAN)
        if p != s and rng.random() < 0.3:
            options.append(p)
    letters = [i for i, c in enumerate(s) if "\u0621" <= c <= "\u064a" or c in "یکگچپژ"]
    inner = [i for i in letters if i + 1 < len(s) and s[i + 1] not in " " + ZWNJ]
    if inner:
        i = rng.choice(inner)
        options.append(s[: i + 1] + rng.choice(_DIACRITICS) + s[i + 1 :])
        joinable = [j for j in letters if s[j] not in _NON_JOINING and j + 1 < len(s)]
        joinable = [j for j in joinable if s[j + 1] not in " " + ZWNJ]
        if joinable:
            j = rng.choice(joinable)
            options.append(s[: j + 1] + TATWEEL + s[j + 1 :])
    options = [o for o in options if o != s]
    if not options:
        return None
    return rng.choice(options)


# --------------------------------------------------------------------------------------------
# OCR confusions
# --------------------------------------------------------------------------------------------
_LATIN_OCR = (
    ("m", "rn"),
    ("rn", "m"),
    ("l", "1"),
    ("I", "l"),
    ("i", "l"),
    ("O", "0"),
    ("o", "0"),
    ("S", "5"),
    ("B", "8"),
    ("cl", "d"),
    ("d", "cl"),
    ("e", "c"),
    ("h", "b"),
    ("u", "v"),
    ("n", "ri"),
    ("w", "vv"),
    ("a", "o"),
    ("g", "q"),
    ("E", "F"),
)
# letters that differ only in their dots (and ة/ه, ى/ي), the usual Arabic OCR confusions
_DOT_GROUPS = ("بتثنيی", "جحخچ", "دذ", "رزژ", "سش", "صض", "طظ", "عغ", "فق", "هة", "ىي", "کگ", "بپ")
_ARABIC_OCR: dict[str, str] = {}
for _g in _DOT_GROUPS:
    for _c in _g:
        _ARABIC_OCR[_c] = _ARABIC_OCR.get(_c, "") + "".join(x for x in _g if x != _c)


def is_arabic_script(s: str) -> bool:
    return any("\u0600" <= c <= "\u06ff" for c in s)


def ocr(rng: Random, s: str) -> str | None:
    if is_arabic_script(s):
        idx = [i for i, c in enumerate(s) if c in _ARABIC_OCR]
        if not idx:
            return None
        i = rng.choice(idx)
        return s[:i] + rng.choice(_ARABIC_OCR[s[i]]) + s[i + 1 :]
    cands: list[tuple[int, str, str]] = []
    for a, b in _LATIN_OCR:
        start = 0
        while True:
            j = s.find(a, start)
            if j < 0:
                break
            cands.append((j, a, b))
            start = j + 1
    if not cands:
        return None
    j, a, b = rng.choice(cands)
    return s[:j] + b + s[j + len(a) :]


# --------------------------------------------------------------------------------------------
# keyboard typos
# --------------------------------------------------------------------------------------------
_QWERTY = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_ARABIC_101 = ("ضصثقفغعهخحجد", "شسيبلاتنمكط", "ئءؤر_ىةوزظ")  # _ : the لا key
_PERSIAN_9147 = ("ضصثقفغعهخحجچ", "شسیبلاتنمکگ", "ظطزرذدپو")


def _neighbours(rows: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for r, row in enumerate(rows):
        for i, c in enumerate(row):
            if c == "_":
                continue
            near: list[str] = []
            for j in (i - 1, i + 1):
                if 0 <= j < len(row):
                    near.append(row[j])
            if r > 0:
                up = rows[r - 1]
                near.extend(up[j] for j in (i, i + 1) if 0 <= j < len(up))
            if r + 1 < len(rows):
                dn = rows[r + 1]
                near.extend(dn[j] for j in (i - 1, i) if 0 <= j < len(dn))
            out[c] = "".join(x for x in near if x not in ("_", c))
    return out


_NEAR_LATIN = _neighbours(_QWERTY)
_NEAR_ARABIC = _neighbours(_ARABIC_101)
_NEAR_PERSIAN = _neighbours(_PERSIAN_9147)


def keyboard(rng: Random, s: str, persian: bool) -> str | None:
    """A slip on the keyboard the text was typed on: a neighbouring key instead of the right one
    (or as well), a missing key, or two keys swapped."""
    near = (_NEAR_PERSIAN if persian else _NEAR_ARABIC) if is_arabic_script(s) else _NEAR_LATIN
    idx = [i for i, c in enumerate(s) if c.lower() in near and near[c.lower()]]
    if len(idx) < 2:
        return None
    op = rng.random()
    i = rng.choice(idx)
    c = s[i]
    nb = rng.choice(near[c.lower()])
    if c.isupper():
        nb = nb.upper()
    if op < 0.5:
        out = s[:i] + nb + s[i + 1 :]
    elif op < 0.65:
        out = s[:i] + c + nb + s[i + 1 :]
    elif op < 0.8:
        out = s[:i] + s[i + 1 :]
    else:
        if i + 1 >= len(s) or s[i + 1] == " ":
            return None
        out = s[:i] + s[i + 1] + s[i] + s[i + 2 :]
    return out if out != s and out.strip() else None


# --------------------------------------------------------------------------------------------
# case and spacing
# --------------------------------------------------------------------------------------------
def case_space(rng: Random, s: str) -> str | None:
    """Extra spaces inside the name (never leading/trailing, which FHIR strings must not
    have), spaces around a hyphen, or the case of a Latin name changed."""
    latin = not is_arabic_script(s)
    x = rng.random()
    if latin and x < 0.35:
        out = s.upper() if rng.random() < 0.7 else s.lower()
        return out if out != s else None
    if latin and "-" in s and x < 0.5:
        return s.replace("-", " - ", 1)
    if " " in s and x < 0.8:
        i = rng.choice([k for k, c in enumerate(s) if c == " "])
        return s[:i] + "  " + s[i + 1 :]
    if len(s) >= 4:
        i = rng.randrange(1, len(s) - 1)
        if s[i] == " " or s[i - 1] == " ":
            return None
        return s[:i] + " " + s[i:]
    return None
