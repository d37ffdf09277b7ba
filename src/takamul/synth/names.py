"""Names as people carry them: native-script name chains, Latin transliterations and the ways
registrations deviate from them (spelling variants, dropped chain links, typos, letter forms).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from random import Random

from takamul.synth import tables
from takamul.synth.sampling import Weighted

__all__ = ["NameEntry", "NamePool", "arabic_letter_forms", "pool", "typo"]


@dataclass(frozen=True, slots=True)
class NameEntry:
    native: str  # Arabic or Persian script
    latin: tuple[str, ...]  # canonical transliteration first, then variants met in registries

    def latin_form(self, rng: Random, variant_rate: float) -> tuple[str, bool]:
        """The canonical Latin spelling, or with ``variant_rate`` another known spelling."""
        if len(self.latin) > 1 and rng.random() < variant_rate:
            return self.latin[1 + int(rng.random() * (len(self.latin) - 1))], True
        return self.latin[0], False


@dataclass(frozen=True, slots=True)
class NamePool:
    male: Weighted[NameEntry]
    female: Weighted[NameEntry]
    family: Weighted[NameEntry]

    def given(self, rng: Random, sex: str) -> NameEntry:
        return (self.male if sex == "male" else self.female).pick(rng)


def _weighted(rows: list[list[object]]) -> Weighted[NameEntry]:
    entries = [NameEntry(str(r[0]), tuple(str(x) for x in r[1])) for r in rows]  # type: ignore[attr-defined]
    return Weighted(entries, [float(r[2]) for r in rows])  # type: ignore[arg-type]


@cache
def pool(name: str) -> NamePool:
    table = tables.names()[name]
    return NamePool(
        _weighted(table["male"]), _weighted(table["female"]), _weighted(table["family"])
    )


# Letters a clerk's keyboard swaps in, used to make one-character typos in each script.
_LATIN = "abcdefghijklmnopqrstuvwxyz"
_ARABIC = "ابتثجحخدذرزسشصضطظعغفقكلمنهوي"
_PERSIAN = "ابپتثجچحخدذرزژسشصضطظعغفقکگلمنوهی"


def typo(rng: Random, text: str) -> str:
    """One keying error: a substituted, dropped, doubled or transposed character."""
    if len(text) < 3:
        return text + text[-1:]
    i = 1 + int(rng.random() * (len(text) - 2))
    kind = int(rng.random() * 4)
    if kind == 0:
        alphabet = _LATIN if text.isascii() else (_PERSIAN if "ی" in text else _ARABIC)
        repl = alphabet[int(rng.random() * len(alphabet))]
        if text[i].isupper():
            repl = repl.upper()
        if repl == text[i]:
            return text[:i] + text[i + 1 :]
        return text[:i] + repl + text[i + 1 :]
    if kind == 1:
        return text[:i] + text[i + 1 :]
    if kind == 2:
        return text[:i] + text[i] + text[i:]
    if text[i] == text[i + 1 : i + 2] or i + 1 >= len(text):
        return text[:i] + text[i + 1 :]
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


_ARABIC_FORMS = str.maketrans({"ی": "ي", "ک": "ك"})


def arabic_letter_forms(text: str) -> str:
    """Persian keyed on an Arabic keyboard layout: Arabic yeh and kaf replace the Persian ones."""
    return text.translate(_ARABIC_FORMS)
