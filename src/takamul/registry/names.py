"""Name chains (given / father / grandfather / family) parsed from FHIR HumanNames, and their
similarity across partial chains, given/family swaps and scripts, with comparison levels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from rapidfuzz.distance import Indel, JaroWinkler

from takamul.registry.arabic import fold_arabic, has_arabic
from takamul.registry.levels import Level
from takamul.registry.transliterate import is_particle, normalize_name, skeleton

__all__ = [
    "NameChain",
    "NameToken",
    "best_name_similarity",
    "compare_family",
    "compare_father",
    "compare_given",
    "name_similarity",
    "name_token",
    "parse_human_name",
    "shared_token",
    "token_level",
    "token_similarity",
]

# Weights of the chain's parts in name_similarity: the given and family names identify most;
# the father's name (the second name in Arab chains) separates brothers and cousins.
_WEIGHTS = {"given": 0.35, "family": 0.35, "father": 0.2, "grandfather": 0.1}
_SKELETON_EQUAL = 0.95  # same skeleton, different spelling: below an exact match
_FUZZY_CAP = 0.9  # a fuzzy match never reaches a skeleton match
_SWAP_PENALTY = 0.05  # given and family swapped is common, but less likely than not
_SINGLE_PART_CAP = 0.8  # one shared part (a given name alone) is weak evidence
_FUZZY_LEVEL = 0.8  # raw similarity for Level.SIMILAR
_LATIN_SPLIT_FIRST = frozenset(
    {"abd", "abdul", "abdel", "abdal", "abdol", "abu", "abou", "abo", "al", "el"}
)


@dataclass(frozen=True, slots=True)
class NameToken:
    """One name: its normalised form (within its script) and its cross-script skeleton."""

    norm: str
    skel: str
    arabic: bool

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its fields and unpickled through one shared token per name: batch
        # linking sends every record from the parsing workers to the parent, and the
        # dataclass default (a state dict set field by field) made that twice as slow.
        return (shared_token, (self.norm, self.skel, self.arabic))


@lru_cache(maxsize=200_000)
def shared_token(norm: str, skel: str, arabic: bool) -> NameToken:
    """The one token of these fields (a country's names repeat: one object for each)."""
    return NameToken(norm, skel, arabic)


@dataclass(frozen=True, slots=True)
class NameChain:
    """A person's name as an ordered chain; absent links are None (partial chains)."""

    given: NameToken | None
    father: NameToken | None
    grandfather: NameToken | None
    family: NameToken | None

    def __reduce__(self) -> tuple[Any, ...]:
        return (NameChain, (self.given, self.father, self.grandfather, self.family))

    @property
    def tokens(self) -> tuple[NameToken, ...]:
        return tuple(
            t for t in (self.given, self.father, self.grandfather, self.family) if t is not None
        )

    @property
    def skeletons(self) -> tuple[str, ...]:
        return tuple(t.skel for t in self.tokens)


@lru_cache(maxsize=200_000)
def name_token(text: str) -> NameToken | None:
    """The token of one name component, or None if nothing of a name is left."""
    norm = normalize_name(text)
    if not norm:
        return None
    return NameToken(norm, skeleton(text), has_arabic(text))


def _words(text: str) -> list[str]:
    """Name components of a free-text name: lineage particles dropped, compounds kept whole."""
    words = fold_arabic(text).split() if has_arabic(text) else text.replace("-", " - ").split()
    out: list[str] = []
    glue = False
    for w in words:
        if w == "-":
            glue = bool(out)
            continue
        if is_particle(w):
            glue = False
            continue
        if glue or (out and out[-1].lower() in _LATIN_SPLIT_FIRST):
            out[-1] = f"{out[-1]} {w}"
        else:
            out.append(w)
        glue = False
    return out


def parse_human_name(name: Mapping[str, Any], father_name: str | None = None) -> NameChain | None:
    """A FHIR HumanName as a chain. ``given[0]`` is the given name and further ``given`` (or
    the words of ``text`` between the first and the last) the father and grandfather; Iranian
    records carry the father's name in an extension, passed as ``father_name``."""
    given = name.get("given")
    family = name.get("family")
    text = name.get("text")
    try:
        # The HumanName as keyed, as the cache key: one lookup when a chain was seen before
        # (a person's records repeat it), no filtering first.
        return _parse_keyed(tuple(given) if given else (), family, text, father_name)
    except TypeError:  # an unhashable part (a malformed HumanName): no caching
        return _parse_keyed.__wrapped__(tuple(given or ()), family, text, father_name)


@lru_cache(maxsize=200_000)
def _parse_keyed(
    given: tuple[Any, ...], family: Any, text: Any, father_name: str | None
) -> NameChain | None:
    return _parse(
        tuple(g for g in given if isinstance(g, str) and g.strip()),
        family if isinstance(family, str) else None,
        text if isinstance(text, str) else None,
        father_name,
    )


def _parse(
    given_raw: tuple[str, ...], family_raw: str | None, text: str | None, father_name: str | None
) -> NameChain | None:
    parts: list[str] = []
    for g in given_raw:
        parts.extend(_given_parts(g))
    if not parts and not family_raw:
        if not text or not text.strip():
            return None
        words = _words(text)
        if len(words) >= 2:
            parts, family_raw = words[:-1], words[-1]
        else:
            parts = words
    toks = [name_token(p) for p in parts]
    chain = [t for t in toks if t is not None]
    family = name_token(family_raw) if family_raw else None
    father = chain[1] if len(chain) > 1 else None
    if father is None and father_name:
        father = name_token(father_name)
    return NameChain(
        given=chain[0] if chain else None,
        father=father,
        grandfather=chain[2] if len(chain) > 2 else None,
        family=family,
    )


def _has_particle(text: str) -> bool:
    return any(is_particle(w) for w in text.split())


@lru_cache(maxsize=100_000)
def _given_parts(text: str) -> tuple[str, ...]:
    """The names of one ``given`` element (several when it holds a particle: "Ali bin
    Hassan"). Cached apart from the chain: chains are mostly unique, their names are not."""
    return tuple(_words(text)) if _has_particle(text) else (text,)


# -- similarity ------------------------------------------------------------------------------


def _raw_similarity(a: NameToken, b: NameToken) -> float:
    if a.arabic == b.arabic and a.norm == b.norm:
        return 1.0
    if _skeleton_equal(a, b):
        return _SKELETON_EQUAL
    return _fuzzy(a.norm, a.skel, a.arabic, b.norm, b.skel, b.arabic)


@lru_cache(maxsize=500_000)
def _fuzzy(
    a_norm: str, a_skel: str, a_arabic: bool, b_norm: str, b_skel: str, b_arabic: bool
) -> float:
    """Fuzzy similarity of two names that are neither the same nor skeleton-equal. Cached on
    the strings rather than the tokens: a NameToken's hash is a Python call, a str's is kept."""
    if a_arabic and b_arabic:
        # Arabic script spells one name one way: compare letters, long vowels included.
        return Indel.normalized_similarity(a_norm, b_norm)
    s = Indel.normalized_similarity(a_skel, b_skel) if a_skel and b_skel else 0.0
    if not a_arabic and not b_arabic:
        s = max(s, JaroWinkler.normalized_similarity(a_norm, b_norm))
    return s


def _skeleton_equal(a: NameToken, b: NameToken) -> bool:
    """Same skeleton, and not two Arabic-script spellings: after folding, Arabic script writes
    one name one way, so محمود/محمد or حسين/حسن (same consonants) are different names."""
    return bool(a.skel) and a.skel == b.skel and not (a.arabic and b.arabic)


def token_similarity(a: NameToken, b: NameToken) -> float:
    """1 for the same normalised name, 0.95 for the same skeleton, else ≤ 0.9 (fuzzy)."""
    s = _raw_similarity(a, b)
    return s if s >= _SKELETON_EQUAL else s * _FUZZY_CAP


def _combine(pairs: Sequence[tuple[str, NameToken | None, NameToken | None]]) -> float | None:
    total = weight = 0.0
    n = 0
    for part, x, y in pairs:
        if x is None or y is None:
            continue
        w = _WEIGHTS[part]
        total += w * token_similarity(x, y)
        weight += w
        n += 1
    if n == 0:
        return None
    score = total / weight
    return min(score, _SINGLE_PART_CAP) if n == 1 else score


def name_similarity(a: NameChain, b: NameChain) -> float:
    """Similarity in [0, 1] of two chains, over the parts both have, in either script, taking
    a given/family swap into account (at a small penalty)."""
    straight = _combine(
        [
            ("given", a.given, b.given),
            ("family", a.family, b.family),
            ("father", a.father, b.father),
            ("grandfather", a.grandfather, b.grandfather),
        ]
    )
    swapped = _combine([("given", a.given, b.family), ("family", a.family, b.given)])
    best = max(
        straight if straight is not None else 0.0,
        swapped - _SWAP_PENALTY if swapped is not None else 0.0,
    )
    return max(0.0, min(1.0, best))


def best_name_similarity(a: Iterable[NameChain], b: Iterable[NameChain]) -> float:
    """The best similarity over the names of two records (native and Latin names)."""
    b = tuple(b)
    return max((name_similarity(x, y) for x in a for y in b), default=0.0)


def _level(a: NameToken | None, b: NameToken | None) -> Level:
    if a is None or b is None:
        return Level.MISSING
    return token_level(a, b)


def token_level(a: NameToken, b: NameToken) -> Level:
    """The level of two names (both present): see ``compare_given``. Written out rather than
    through ``_raw_similarity``: the record comparators call it for every pair of names of
    every pair they compare."""
    if a is b:
        return Level.EXACT
    arabic = a.arabic
    if arabic == b.arabic and a.norm == b.norm:
        return Level.EXACT
    skel = a.skel
    if skel and skel == b.skel and not (arabic and b.arabic):
        return Level.EQUIVALENT
    if _fuzzy(a.norm, skel, arabic, b.norm, b.skel, b.arabic) >= _FUZZY_LEVEL:
        return Level.SIMILAR
    return Level.DIFFERENT


def compare_given(a: NameChain, b: NameChain) -> Level:
    """EXACT same normalised name (same script); EQUIVALENT same skeleton (Latin/Latin or
    across scripts; two Arabic-script names with one skeleton are not the same name);
    SIMILAR fuzzy (≥ 0.8 on skeletons or, same script, Jaro-Winkler); DIFFERENT; MISSING."""
    return _level(a.given, b.given)


def compare_family(a: NameChain, b: NameChain) -> Level:
    """As ``compare_given``, for the family name."""
    return _level(a.family, b.family)


def compare_father(a: NameChain, b: NameChain) -> Level:
    """As ``compare_given``, for the father's name (second name of a chain or extension)."""
    return _level(a.father, b.father)
