"""Arabic-script folding: one spelling for the letter forms, marks and spacing that vary between
keyboards, facilities and Arabic/Persian conventions without changing the name.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = ["ARABIC_LETTERS", "fold_arabic", "has_arabic"]

# Letters that differ only in orthography fold to one: hamza seats and alef variants to bare
# alef (أحمد/احمد are keyed both ways), taa marbuta to heh (فاطمة/فاطمه), alef maqsura and
# Persian/Urdu yeh to Arabic yeh, Persian/Swash kaf to Arabic kaf (کریمی/كريمي). Hamza on the
# line is dropped (اسماء/اسما). Eastern digits become ASCII so IDs and phones compare.
_MAP: dict[int, str] = {
    **{ord(c): "ا" for c in "أإآٱٲٳ"},
    ord("ؤ"): "و",
    ord("ئ"): "ي",
    ord("ء"): "",
    ord("ة"): "ه",
    ord("ۃ"): "ه",
    ord("ۀ"): "ه",
    ord("ہ"): "ه",
    ord("ە"): "ه",
    ord("ھ"): "ه",
    **{ord(c): "ي" for c in "ىیۍېےۑ"},
    **{ord(c): "ك" for c in "کڪګ"},
    **{0x0660 + i: str(i) for i in range(10)},
    **{0x06F0 + i: str(i) for i in range(10)},
}
# Marks that never distinguish names in registries: harakat, shadda, sukun, superscript alef,
# Quranic annotation signs, tatweel; and invisible format characters (ZWNJ joins Persian
# compounds such as گل‌محمد, which are also keyed without it; ZWJ, direction marks, BOM).
_REMOVE = [
    *range(0x0610, 0x061B),
    0x061C,
    *range(0x064B, 0x0660),
    0x0670,
    *range(0x06D6, 0x06EE),
    0x0640,
    0x200B,
    0x200C,
    0x200D,
    0x200E,
    0x200F,
    *range(0x202A, 0x202F),
    0x2066,
    0x2067,
    0x2068,
    0x2069,
    0xFEFF,
]
_MAP.update(dict.fromkeys(_REMOVE, ""))

# Letters only: the Arabic blocks without their combining marks (U+0610-061A, 064B-065F, 0670,
# 06D6-06ED, 08CA-08FF), tatweel and digits, so that a Latin name with a stray mark is not read
# as Arabic; with the presentation forms and the Arabic Mathematical Alphabetic Symbols
# (U+1EE00-1EEFF), which NFKC folds into letters (both found by Hypothesis).
ARABIC_LETTERS = re.compile(
    "[\u0620-\u063f\u0641-\u064a\u066e\u066f\u0671-\u06d3\u06d5\u06ee\u06ef"
    "\u06fa-\u06fc\u06ff\u0750-\u077f\u08a0-\u08c9\ufb50-\ufdff\ufe70-\ufeff"
    "\U0001ee00-\U0001eeff]"
)

# Compounds written with or without a space: عبد الله / عبدالله, ابو بكر / ابوبكر, and the
# article or theophoric second half standing alone (نور الدين, حبيب الله, ال قحطاني).
_JOIN_NEXT = re.compile(r"(?<!\S)(عبد|ابو|ال)\s+(?=\S)")
_JOIN_PREV = re.compile(r"(?<=\S)\s+(الله|الدين|الرحمن)(?!\S)")
_SPACE = re.compile(r"\s+")


def has_arabic(text: str) -> bool:
    """True if ``text`` holds any Arabic-script letter (Arabic, Persian, Urdu blocks)."""
    return ARABIC_LETTERS.search(text) is not None


def _fold_once(text: str) -> str:
    text = unicodedata.normalize("NFKC", text.translate(_MAP)).translate(_MAP)
    text = _SPACE.sub(" ", text).strip()
    text = _JOIN_NEXT.sub(r"\1", text)
    return _JOIN_PREV.sub(r"\1", text)


@lru_cache(maxsize=200_000)
def fold_arabic(text: str) -> str:
    """Fold Arabic/Persian script to one spelling; other characters pass through (NFKC).

    A pure function: a new string is returned. Idempotent: folding twice changes nothing.
    """
    out = _fold_once(text)
    # NFKC can compose characters that a removed mark kept apart; repeat to the fixed point.
    for _ in range(4):
        again = _fold_once(out)
        if again == out:
            break
        out = again
    return out
