"""Names across scripts: an Arabic/Persian or Latin name to a consonant-class skeleton on which
spellings of one name meet (محمد, Mohammed, Muhammad → MHMD), and a finer normalised form.

The classes, digraphs and word lists are data (``data/skeleton.json``, with the rationale of
each class); this module only applies them. See ``docs/registry.md``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache
from importlib import resources
from typing import Any

from takamul.registry.arabic import fold_arabic, has_arabic

__all__ = ["is_particle", "latin_normalize", "name_key", "normalize_name", "skeleton"]


def _load() -> dict[str, Any]:
    path = resources.files("takamul.registry").joinpath("data/skeleton.json")
    return json.loads(path.read_text(encoding="utf-8"))


_DATA = _load()
_AR_CLASS: dict[str, str] = {
    letter: cls
    for cls, spec in _DATA["classes"].items()
    if len(cls) == 1 and cls not in "AI"
    for letter in spec["arabic"]
}
_LAT_CLASS: dict[str, str] = {
    letter: cls
    for cls, spec in _DATA["classes"].items()
    if cls not in "AI"
    for letter in spec["latin"]
    if len(letter) == 1
}
_LAT_VOWELS = frozenset(_DATA["latin_vowels"])
_AR_VOWELS = frozenset(fold_arabic(_DATA["arabic_vowels"])) | frozenset(_DATA["arabic_vowels"])
_DIGRAPHS: list[tuple[str, str]] = sorted(
    _DATA["latin_digraphs"].items(), key=lambda kv: -len(kv[0])
)
_MAQSURA = frozenset(fold_arabic(w) for w in _DATA["maqsura_names"])
_ABBREV: dict[str, str] = _DATA["latin_abbreviations"]

# Particles of a name chain: "son/daughter of" (dropped), the article (attached to the next
# word), and the first halves of compounds (joined with the next word).
_AR_LINEAGE = frozenset({"بن", "ابن", "بنت", "ولد"})
_LAT_LINEAGE = frozenset({"bin", "ibn", "bint", "binti", "ben", "bent", "b", "bt", "binte"})
_LAT_ARTICLE = frozenset({"al", "el", "ul", "il", "ol"})
_LAT_COMPOUND_FIRST = frozenset(
    {"abd", "abdul", "abdel", "abdal", "abdol", "abdil", "abu", "abou", "abo", "bou"}
)
# Sun letters assimilate the article: Ar-Rashid, Ash-Shehri, Abdur Rahman, Abdus Salam.
_SUN = r"(?:sh|th|dh|zh|[tdrzsnl])"
_ASSIMILATED = re.compile(rf"^[ae]({_SUN})$")
_ABD_ASSIMILATED = re.compile(rf"^(abd|ab[uo])[aeiou]({_SUN})(?=\2)")
_ABD_ARTICLE = re.compile(r"^(abd|ab[uo])(?:[aeiou]l|l)(?=[a-z]{2})")
_LAT_SPLIT = re.compile(r"[\s\-_.,/]+")
_NOT_LETTER = re.compile(r"[^a-z]")


def is_particle(token: str) -> bool:
    """True for a lineage particle (bin, ibn, bint, بن, ابن, بنت) that links a name chain."""
    t = token.strip().lower()
    return t in _LAT_LINEAGE or fold_arabic(t) in _AR_LINEAGE


# -- Latin -----------------------------------------------------------------------------------


def _ascii_letters(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text).lower()  # NFKD first: 𝗔 is A only after it
    # any whitespace (tab, line break) separates words as a space does, as fold_arabic has it
    return "".join(
        " " if ch.isspace() else ch
        for ch in decomposed
        if "a" <= ch <= "z" or ch in "-'_.,/" or ch.isspace()
    )


@lru_cache(maxsize=100_000)
def latin_normalize(text: str) -> str:
    """Latin name → lower-case ASCII, particles resolved, compounds joined, no spaces.

    ``Abd al-Rahman`` and ``Abdel Rahman`` → ``abdalrahman``/``abdelrahman``; ``Al-Qahtani`` →
    ``alqahtani`` (the article is decided in the skeleton, where vowels no longer matter).
    """
    words = [w for w in _LAT_SPLIT.split(_ascii_letters(text).replace("'", "")) if w]
    words = [_ABBREV.get(w, w) for w in words if w not in _LAT_LINEAGE or len(words) == 1]
    out: list[str] = []
    pending = ""
    for i, word in enumerate(words):
        word = _NOT_LETTER.sub("", word)
        if not word:
            continue
        nxt = words[i + 1] if i + 1 < len(words) else ""
        m = _ASSIMILATED.match(word)
        if m and nxt.startswith(m.group(1)):
            word = "al"  # Ar-Rashid → al + rashid
        if nxt and (word in _LAT_ARTICLE or word in _LAT_COMPOUND_FIRST):
            pending += word
            continue
        out.append(pending + word)
        pending = ""
    if pending:
        out.append(pending)
    joined = _ABD_ASSIMILATED.sub(r"\1al", "".join(out))
    return _ABD_ARTICLE.sub(r"\1al", joined)  # Abdul/Abdel/Abd al → abdal


def _latin_phonemes(word: str) -> list[str]:
    """Class codes of a normalised Latin word, with '' for each vowel (kept for positions)."""
    out: list[str] = []
    i, n = 0, len(word)
    while i < n:
        for dg, cls in _DIGRAPHS:
            if word.startswith(dg, i):
                out.extend(cls) if len(cls) > 1 else out.append(cls)
                i += len(dg)
                break
        else:
            ch = word[i]
            if ch in _LAT_VOWELS:
                out.append("")
            elif ch == "c" and i + 1 < n and word[i + 1] in "eiy":
                out.append("S")  # soft c: Garcia, Grace
            else:
                out.append(_LAT_CLASS.get(ch, ""))
            i += 1
    return out


def _latin_final_i(word: str) -> bool:
    """Does the word end in the sound i (Karimi, Turky, Rezaee, Rezaie; not Hanieh, Maria)?"""
    j = len(word)
    while j > 0 and word[j - 1] in _LAT_VOWELS:
        j -= 1
    run = word[j:]
    if not run or j == 0:
        return False
    return run[-1] in "iy" or run.endswith("ee") or (len(run) >= 3 and run.endswith("ie"))


def _latin_skeleton(word: str) -> tuple[str, str]:
    """(leading marker, consonant code with final marker) of one normalised Latin word."""
    if not word:
        return "", ""
    lead = "A" if word[0] in _LAT_VOWELS else ""
    codes = [c for c in _latin_phonemes(word) if c]
    return lead, _finish(codes, _latin_final_i(word))


# -- Arabic script ---------------------------------------------------------------------------


def _arabic_skeleton(word: str, whole: str = "") -> tuple[str, str]:
    """As ``_latin_skeleton``; ``whole`` is the word before its article was dropped, so that the
    nisba السلمي (Al-Sulami) keeps its I while the name سلمى (Salma) does not."""
    if not word:
        return "", ""
    lead = "A" if word[0] in _AR_VOWELS else ""
    codes = [_AR_CLASS.get(ch, "") for ch in word]
    codes = [c for c in codes if c]
    final_i = word[-1] == "ي" and len(word) > 1 and (whole or word) not in _MAQSURA
    return lead, _finish(codes, final_i)


# -- shared ----------------------------------------------------------------------------------


def _finish(codes: list[str], final_i: bool) -> str:
    collapsed: list[str] = []
    for c in codes:
        if not collapsed or collapsed[-1] != c:
            collapsed.append(c)
    if len(collapsed) > 1 and collapsed[-1] == "H":
        collapsed.pop()  # silent -eh, Abdulla/Abdullah, Saleh/Salih
    return "".join(collapsed) + ("I" if final_i else "")


def _strip_article(word: str, arabic: bool) -> str:
    """Drop a word-initial article (ال, al, el) when enough of a name is left after it.

    'Enough' is two consonant classes (the final I counts): Alqahtani → qahtani, but Ali, Alaa,
    Elias and الياس keep their l. Latin al + i/y is kept (Alireza, Aliakbar are Ali + name).
    """
    if arabic:
        if not word.startswith("ال") or len(word) < 4:
            return word
        rest = word[2:]
        return rest if len(_arabic_skeleton(rest, word)[1]) >= 2 else word
    if len(word) < 4 or word[:2] not in ("al", "el") or word[2] == "i":
        return word
    rest = word[2:]
    return rest if len(_latin_skeleton(rest)[1]) >= 2 else word


def _arabic_words(text: str) -> str:
    folded = fold_arabic(text)
    words = [w for w in folded.split(" ") if w and (w not in _AR_LINEAGE or " " not in folded)]
    return "".join(words)


@lru_cache(maxsize=200_000)
def normalize_name(text: str) -> str:
    """Finer form for exact-ish comparison within a script: folded Arabic or ASCII Latin,
    particles resolved, compounds joined, article dropped; spaces removed."""
    if has_arabic(text):
        return _strip_article(_arabic_words(text), arabic=True)
    return _strip_article(latin_normalize(text), arabic=False)


@lru_cache(maxsize=200_000)
def skeleton(text: str) -> str:
    """Consonant-class code of a name in either script (see ``data/skeleton.json``).

    ``skeleton("محمد") == skeleton("Mohammed") == skeleton("Muhammad") == "MHMD"``.
    """
    norm = normalize_name(text)
    if has_arabic(text):
        lead, code = _arabic_skeleton(norm, _arabic_words(text))
    else:
        lead, code = _latin_skeleton(norm)
    return lead + code


def name_key(text: str) -> tuple[str, str]:
    """(normalised form, skeleton) of one name component."""
    return normalize_name(text), skeleton(text)
