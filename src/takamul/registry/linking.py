"""Batch record linkage: a Fellegi-Sunter model over the registry's comparison levels, trained
by EM on the candidate pairs, term-frequency adjusted, then clustered with an ID-conflict guard.

Why not Splink: Splink compares in DuckDB SQL, and our comparisons (cross-script skeletons,
Hijri/Jalali date readings, ID keying errors) are Python functions returning levels; feeding
them to Splink would mean re-implementing them in SQL or shipping precomputed vectors, which
leaves Splink only the EM and clustering — a few dozen lines of numpy, below. The model is the
classic one: Fellegi & Sunter (1969), "A theory for record linkage", JASA 64:1183-1210, with
m, u and the match prior λ estimated by EM under conditional independence as in Winkler
(1988), "Using the EM algorithm for weight computation in the Fellegi-Sunter model of record
linkage", Proc. Section on Survey Research Methods, ASA, and a term-frequency adjustment
in Splink's form (the agreement weight of a value uses its own frequency instead of the
average chance agreement).
"""

from __future__ import annotations

import gc
import logging
import math
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain, compress, pairwise
from multiprocessing.pool import Pool
from operator import attrgetter
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from takamul.registry.blocking import (
    DEFAULT_RULES,
    BlockingKeys,
    BlockingRule,
    BlockingStats,
    KeyColumn,
    NameChains,
    candidate_pairs,
    factorize,
    sorted_unique,
)
from takamul.registry.dates import compare_birth_readings
from takamul.registry.identifiers import compare_ids, ids_shared_across_generations
from takamul.registry.levels import Level
from takamul.registry.names import token_level
from takamul.registry.phones import compare_phones
from takamul.registry.record import RegistryRecord, from_patient

__all__ = [
    "DEFAULT_FIELDS",
    "DEFAULT_THRESHOLD",
    "ComparisonField",
    "LinkResult",
    "LinkageModel",
    "StepClock",
    "cluster_pairs",
    "comparison_vectors",
    "em_train",
    "gc_paused",
    "link_records",
    "read_records",
    "write_links",
]

log = logging.getLogger(__name__)

# A false merge (two persons' records in one) is worse than a missed link: only pairs the
# model is at least this sure of become edges. Chosen on tuning seeds 1-10 (docs/registry.md).
DEFAULT_THRESHOLD = 0.95
N_LEVELS = 4  # DIFFERENT 0 .. EXACT 3; MISSING (-1) carries no evidence (weight 0)

RecordComparator = Callable[[RegistryRecord, RegistryRecord], Level]


def _part(part: str) -> RecordComparator:
    """A name part's comparison over two records' chains (native and Latin): the best level
    of ``compare_given`` (``compare_family``, ``compare_father``) over every pair of chains,
    with the part read once per chain and absent parts skipped (they are MISSING)."""
    read = attrgetter(part)

    def best(a: RegistryRecord, b: RegistryRecord) -> Level:
        level = Level.MISSING
        for x in a.names:
            mine = read(x)
            if mine is None:
                continue
            for y in b.names:
                other = read(y)
                if other is None:
                    continue
                got = token_level(mine, other)
                if got > level:
                    level = got
                    if level == Level.EXACT:
                        return level
        return level

    return best


def _same(value: Callable[[RegistryRecord], str | None]) -> RecordComparator:
    def cmp(a: RegistryRecord, b: RegistryRecord) -> Level:
        x, y = value(a), value(b)
        if not x or not y:
            return Level.MISSING
        return Level.EXACT if x == y else Level.DIFFERENT

    return cmp


def _birth_dates(a: RegistryRecord, b: RegistryRecord) -> Level:
    """``compare_birth_dates`` on the readings the records carry (``from_patient`` computed
    them with ``birth_date_candidates``): no calendar conversion again per pair."""
    x, y = a.birth_date, b.birth_date
    if not x or not y:
        return Level.MISSING
    return compare_birth_readings(
        x, a.birth_candidates, a.birth_years, y, b.birth_candidates, b.birth_years
    )


# Every comparison a field may name, on two records.
COMPARATORS: dict[str, RecordComparator] = {
    "given": _part("given"),
    "family": _part("family"),
    "father": _part("father"),
    "birth_date": _birth_dates,
    "national_id": lambda a, b: compare_ids(a.national_id, b.national_id),
    "phone": lambda a, b: compare_phones(a.phones, b.phones),
    "sex": _same(attrgetter("sex")),
    "region": _same(attrgetter("region")),
}


@dataclass(frozen=True, slots=True)
class _ValueComparison:
    """A comparator of ``COMPARATORS`` restated on values, so that a batch is compared once
    per distinct pair of values instead of once per pair of records. A record carries zero
    or more values of the field; two records get the best ``level`` over every pair of their
    values, MISSING when either has none — what the record comparator returns.

    ``kind``: where the values are — ``part``: that name part of each chain (told apart by
    identity: tokens are shared objects, and hashing one is a Python call); ``one``: the
    attribute, when not empty; ``many``: the items of the attribute. ``level`` None: EXACT
    for equal values, else DIFFERENT; ``equal_exact``: equal values are EXACT without asking
    ``level``; ``payload``: what ``level`` receives for a value, from a record carrying it.
    """

    attr: str
    kind: str
    level: Callable[[Any, Any], Level] | None = None
    equal_exact: bool = True
    payload: Callable[[RegistryRecord], Any] | None = None


def _birth_readings(r: RegistryRecord) -> tuple[str, frozenset[str], frozenset[int]]:
    return (r.birth_date or "", r.birth_candidates, r.birth_years)


def _compare_readings(
    a: tuple[str, frozenset[str], frozenset[int]], b: tuple[str, frozenset[str], frozenset[int]]
) -> Level:
    return compare_birth_readings(*a, *b)


# Keyed by the record comparator they restate: a comparator replaced in COMPARATORS falls
# back to being called per pair. tests/test_registry_linking.py checks both give one level.
_COLUMNAR: dict[RecordComparator, _ValueComparison] = {
    COMPARATORS["given"]: _ValueComparison("given", "part", token_level),
    COMPARATORS["family"]: _ValueComparison("family", "part", token_level),
    COMPARATORS["father"]: _ValueComparison("father", "part", token_level),
    # Dates compare on the readings the records carry (no calendar conversion again); a date
    # equal to itself is not always EXACT (a year alone is SIMILAR, an unreadable one MISSING).
    COMPARATORS["birth_date"]: _ValueComparison(
        "birth_date", "one", _compare_readings, equal_exact=False, payload=_birth_readings
    ),
    COMPARATORS["national_id"]: _ValueComparison("national_id", "one", compare_ids),
    COMPARATORS["phone"]: _ValueComparison("phones", "many"),
    COMPARATORS["sex"]: _ValueComparison("sex", "one"),
    COMPARATORS["region"]: _ValueComparison("region", "one"),
}


# Skeleton sets per name part, for the term-frequency adjustment.
_TF_VALUES: dict[str, Callable[[RegistryRecord], frozenset[str]]] = {
    "given": lambda r: frozenset(c.given.skel for c in r.names if c.given and c.given.skel),
    "family": lambda r: frozenset(c.family.skel for c in r.names if c.family and c.family.skel),
    "father": lambda r: frozenset(c.father.skel for c in r.names if c.father and c.father.skel),
}
# The blocking key holding the same values as each of _TF_VALUES (the skeletons of that name
# part): batch counting and scoring read them as integer ids from ``BlockingKeys``, computed
# once for blocking (tests/test_registry_linking.py checks the two definitions agree).
_TF_KEYS: dict[str, str] = {"given": "given", "family": "family", "father": "father"}


@dataclass(frozen=True, slots=True)
class ComparisonField:
    """One column of the comparison vector: a named comparator and, for name parts, whether
    agreement is weighed by the value's frequency (``tf``; ``tf_weight`` scales it, Splink's
    ``tf_adjustment_weight``, and ``tf_max_bits`` bounds it either way)."""

    name: str
    comparator: str
    tf: bool = False
    tf_weight: float = 1.0
    tf_max_bits: float = 6.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "comparator": self.comparator,
            "tf": self.tf,
            "tf_weight": self.tf_weight,
            "tf_max_bits": self.tf_max_bits,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ComparisonField:
        if data["comparator"] not in COMPARATORS:
            raise ValueError(
                f"unknown comparator {data['comparator']!r}; known {sorted(COMPARATORS)}"
            )
        return cls(
            data["name"],
            data["comparator"],
            bool(data.get("tf", False)),
            float(data.get("tf_weight", 1.0)),
            float(data.get("tf_max_bits", 6.0)),
        )


DEFAULT_FIELDS: tuple[ComparisonField, ...] = (
    ComparisonField("given", "given", tf=True),
    ComparisonField("family", "family", tf=True),
    ComparisonField("father", "father", tf=True),
    ComparisonField("birth_date", "birth_date"),
    ComparisonField("national_id", "national_id"),
    ComparisonField("phone", "phone"),
    ComparisonField("sex", "sex"),
    ComparisonField("region", "region"),
)


# -- comparison vectors ----------------------------------------------------------------------


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a batch step, then restored as it was.

    The linker allocates millions of small acyclic objects (records, tuples, sets) and every
    generation-2 collection walks all live ones: on 110,000 records, parsing NDJSON took 6.7 s
    with the collector and 1.2 s without, and unpickling the records 2.6 s instead of 0.7 s.
    Reference counting still frees everything these steps drop (none of it is cyclic).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True, slots=True)
class _ValueColumn:
    """Every record's values of one field: record r has ``ids[starts[r]:starts[r] +
    counts[r]]``, indices into ``values`` (each value's payload, when the field has one)."""

    starts: npt.NDArray[np.int64]
    counts: npt.NDArray[np.int64]
    ids: npt.NDArray[np.int64]
    values: list[Any]


def _value_column(
    records: Sequence[RegistryRecord], spec: _ValueComparison, chains: NameChains
) -> _ValueColumn:
    """The column of one field, with the per-value work done by C-level maps (half a million
    records, three name parts: a Python loop per record would be seconds)."""
    n = len(records)
    read = attrgetter(spec.attr)
    flat: list[Any]
    if spec.kind == "part":
        owner, flat = chains.part(spec.attr)
        counts = np.bincount(owner, minlength=n).astype(np.int64)
        ids, first = factorize(list(map(id, flat)))
    elif spec.kind == "one":
        got = list(map(read, records))
        present = [bool(v) for v in got]
        flat = list(compress(got, present))
        owner = np.flatnonzero(np.asarray(present, dtype=bool)).astype(np.int64)
        counts = np.asarray(present, dtype=np.int64)
        ids, first = factorize(flat)
    else:
        lists = list(map(read, records))
        counts = np.fromiter(map(len, lists), dtype=np.int64, count=n)
        flat = list(chain.from_iterable(lists))
        owner = np.repeat(np.arange(n, dtype=np.int64), counts)
        ids, first = factorize(flat)
    if spec.payload is not None:
        payload = spec.payload
        values = [payload(records[r]) for r in owner[first].tolist()]
    else:
        values = [flat[k] for k in first.tolist()]
    return _ValueColumn(np.cumsum(counts) - counts, counts, ids, values)


def _combinations(
    starts: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
    pairs: npt.NDArray[np.int32],
) -> tuple[
    npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]
]:
    """Every (value of the first record, value of the second) of each pair, laid out pair by
    pair: the entries of both, then where each pair's run starts and how long it is."""
    a, b = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    width = counts[b]
    reps = counts[a] * width
    first = np.cumsum(reps) - reps
    pair = np.repeat(np.arange(len(pairs), dtype=np.int64), reps)
    k = np.arange(len(pair), dtype=np.int64) - first[pair]
    left = starts[a][pair] + k // width[pair]
    right = starts[b][pair] + k % width[pair]
    return left, right, first, reps


def _columnar_levels(
    column: _ValueColumn, spec: _ValueComparison, pairs: npt.NDArray[np.int32]
) -> npt.NDArray[np.int8]:
    """The field's level for each pair, from the levels of the distinct value pairs (a few
    tens of thousands of name pairs among a million candidate pairs)."""
    out = np.full(len(pairs), int(Level.MISSING), dtype=np.int8)
    if len(pairs) == 0 or len(column.ids) == 0:
        return out
    if int(column.counts.max()) <= 1:  # one value a record at most: no combinations
        a, b = pairs[:, 0], pairs[:, 1]
        rows = np.flatnonzero((column.counts[a] > 0) & (column.counts[b] > 0))
        left, right = column.starts[a[rows]], column.starts[b[rows]]
        first = reps = None
    else:
        left, right, first, reps = _combinations(column.starts, column.counts, pairs)
    mine, theirs = column.ids[left], column.ids[right]
    equal = mine == theirs
    levels = np.where(equal, int(Level.EXACT), int(Level.DIFFERENT)).astype(np.int8)
    if spec.level is not None:
        ask = np.flatnonzero(~equal) if spec.equal_exact else np.arange(len(mine))
        size = max(len(column.values), 1)
        codes = mine[ask] * size + theirs[ask]
        distinct = sorted_unique(codes)
        inverse = np.searchsorted(distinct, codes)
        values, level = column.values, spec.level
        got = np.fromiter(
            (
                int(level(values[x], values[y]))
                for x, y in zip(
                    (distinct // size).tolist(), (distinct % size).tolist(), strict=True
                )
            ),
            dtype=np.int8,
            count=len(distinct),
        )
        levels[ask] = got[inverse]
    if first is None or reps is None:
        out[rows] = levels
    else:
        some = reps > 0
        if some.any():
            out[some] = np.maximum.reduceat(levels, first[some])
    return out


# What forked workers compare, set by the parent before the fork (inherited, never pickled).
_WORK: tuple[Sequence[RegistryRecord], tuple[RecordComparator, ...]] | None = None
_COLUMN_WORK: (
    tuple[Sequence[RegistryRecord], tuple[_ValueComparison | None, ...], npt.NDArray[np.int32]]
    | None
) = None
_WORKER_CHAINS: NameChains | None = None
# Pairs per task sent to a worker: small enough that two workers finish together.
_CHUNK = 25_000
# Fewer pairs than this are compared record by record in-process: building the value
# columns (about 4 s of CPU for 500,000 records) or forking costs more than it saves.
_PARALLEL_MIN = 60_000


def _compare_pairs(
    records: Sequence[RegistryRecord],
    comparators: Sequence[RecordComparator],
    left: npt.NDArray[np.int32],
    right: npt.NDArray[np.int32],
) -> bytes:
    out = bytearray()
    extend = out.extend
    with gc_paused():
        for i, j in zip(left.tolist(), right.tolist(), strict=True):
            a, b = records[i], records[j]
            extend([c(a, b) + 1 for c in comparators])  # levels -1..3 stored as 0..4
    return bytes(out)


def _compare_chunk(bounds: tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]) -> bytes:
    assert _WORK is not None
    records, comparators = _WORK
    return _compare_pairs(records, comparators, *bounds)


def _columnar_task(f: int) -> tuple[int, bytes]:
    """In a forked worker: the levels of field ``f`` for the pairs of ``_COLUMN_WORK``."""
    global _WORKER_CHAINS
    assert _COLUMN_WORK is not None
    records, specs, pairs = _COLUMN_WORK
    spec = specs[f]
    assert spec is not None
    with gc_paused():
        if _WORKER_CHAINS is None:
            _WORKER_CHAINS = NameChains(records)
        column = _value_column(records, spec, _WORKER_CHAINS)
        return f, _columnar_levels(column, spec, pairs).tobytes()


class _Comparer:
    """Compares pairs of one batch of records.

    A comparator with a ``_COLUMNAR`` form (all the default ones) is evaluated in numpy on the
    records' value ids, calling the comparison once per distinct pair of values; the level of
    a pair is the same as the record comparator's. For a large set of pairs each such field
    is a task for forked workers (they inherit the records and pairs at the fork); a small
    set (the random pairs u starts from) is compared record by record, cheaper than building
    the columns. A comparator without a columnar form is always called per pair, in forked
    workers once there are enough pairs.
    """

    def __init__(
        self,
        records: Sequence[RegistryRecord],
        fields: Sequence[ComparisonField],
        workers: int = 1,
    ) -> None:
        self.records = records
        self.comparators = tuple(COMPARATORS[f.comparator] for f in fields)
        self.n_fields = len(fields)
        self.columnar = tuple(_COLUMNAR.get(c) for c in self.comparators)
        self.fast = [f for f, spec in enumerate(self.columnar) if spec is not None]
        self.slow = [f for f, spec in enumerate(self.columnar) if spec is None]
        self.names = tuple(f.comparator for f in fields)
        self.workers = workers if "fork" in multiprocessing.get_all_start_methods() else 1
        self.pool: Pool | None = None
        self._columns: dict[int, _ValueColumn] = {}
        self._chains: NameChains | None = None

    def __enter__(self) -> _Comparer:
        global _WORK
        _WORK = (self.records, tuple(self.comparators[f] for f in self.slow))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        global _WORK
        if self.pool is not None:
            if error is not None:
                self.pool.terminate()
            else:
                self.pool.close()
            self.pool.join()
            self.pool = None
        _WORK = None

    def column(self, spec: _ValueComparison) -> _ValueColumn:
        got = self._columns.get(id(spec))
        if got is None:
            if self._chains is None:
                self._chains = NameChains(self.records)
            got = self._columns[id(spec)] = _value_column(self.records, spec, self._chains)
        return got

    def __call__(self, pairs: npt.NDArray[np.int32]) -> npt.NDArray[np.int8]:
        out = np.empty((len(pairs), self.n_fields), dtype=np.int8)
        if self.fast:
            if len(pairs) < _PARALLEL_MIN:
                comparators = [self.comparators[f] for f in self.fast]
                flat = np.frombuffer(
                    _compare_pairs(self.records, comparators, pairs[:, 0], pairs[:, 1]),
                    dtype=np.int8,
                )
                out[:, self.fast] = flat.reshape(len(pairs), len(self.fast)) - 1
            elif self.workers > 1:
                for f, levels in self._columnar_forked(pairs):
                    out[:, f] = levels
            else:
                with gc_paused():
                    for f in self.fast:
                        spec = self.columnar[f]
                        assert spec is not None
                        out[:, f] = _columnar_levels(self.column(spec), spec, pairs)
        if self.slow:
            out[:, self.slow] = self._per_pair(pairs)
        out = names_in_either_order(self.records, pairs, out, self.names)
        return another_owner_of_the_id(out, self.names)

    def _columnar_forked(
        self, pairs: npt.NDArray[np.int32]
    ) -> Iterator[tuple[int, npt.NDArray[np.int8]]]:
        """The columnar fields as tasks of a pool forked for this call (the pairs reach the
        workers through the fork), the name parts first: the longest tasks start first."""
        global _COLUMN_WORK
        _COLUMN_WORK = (self.records, self.columnar, pairs)
        order = sorted(self.fast, key=lambda f: getattr(self.columnar[f], "kind", "") != "part")
        try:
            with gc_paused(), multiprocessing.get_context("fork").Pool(self.workers) as pool:
                for f, data in pool.imap_unordered(_columnar_task, order):
                    yield f, np.frombuffer(data, dtype=np.int8)
        finally:
            _COLUMN_WORK = None

    def _per_pair(self, pairs: npt.NDArray[np.int32]) -> npt.NDArray[np.int8]:
        chunks = [
            (pairs[s : s + _CHUNK, 0], pairs[s : s + _CHUNK, 1])
            for s in range(0, len(pairs), _CHUNK)
        ]
        if self.workers > 1 and len(pairs) >= _PARALLEL_MIN:
            if self.pool is None:
                self.pool = multiprocessing.get_context("fork").Pool(self.workers)
            parts = list(self.pool.imap(_compare_chunk, chunks))
        else:
            parts = [_compare_chunk(c) for c in chunks]
        flat = np.frombuffer(b"".join(parts), dtype=np.int8)
        return (flat.reshape(len(pairs), len(self.slow)) - 1).astype(np.int8)


def comparison_vectors(
    records: Sequence[RegistryRecord],
    pairs: npt.NDArray[np.int32],
    fields: Sequence[ComparisonField] = DEFAULT_FIELDS,
    workers: int = 1,
) -> npt.NDArray[np.int8]:
    """The level of each field for each pair: an (n_pairs, n_fields) int8 array in -1..3.

    The default comparators run once per distinct pair of values (numpy does the rest);
    with ``workers`` > 1 any other comparator runs in forked processes (they inherit the
    records rather than receive them pickled).
    """
    with _Comparer(records, fields, workers) as compare:
        return compare(pairs)


def names_in_either_order(
    records: Sequence[RegistryRecord],
    pairs: npt.NDArray[np.int32],
    vectors: npt.NDArray[np.int8],
    comparators: Sequence[str],
) -> npt.NDArray[np.int8]:
    """Name order is not evidence of a person: clerks key the family name first or into the
    given field (``family: "Rahaf", given: ["ALDOSARI"]``). Where given and family names both
    disagree, the chains are compared crosswise — given against family and family against
    given *of the same two chains*, so that a given name agreeing here and a family name
    there cannot add up — and the crosswise levels replace both when each is at least
    EQUIVALENT. Only pairs whose names both disagree are looked at (a few in a hundred)."""
    if "given" not in comparators or "family" not in comparators or not len(vectors):
        return vectors
    gi, fi = comparators.index("given"), comparators.index("family")
    g, f = vectors[:, gi], vectors[:, fi]
    look = np.nonzero((g >= 0) & (g <= Level.SIMILAR) & (f >= 0) & (f <= Level.SIMILAR))[0]
    for k in look.tolist():
        level = _crosswise(records[int(pairs[k, 0])], records[int(pairs[k, 1])])
        if level >= Level.EQUIVALENT:
            vectors[k, gi] = vectors[k, fi] = level
    return vectors


def _crosswise(a: RegistryRecord, b: RegistryRecord) -> Level:
    best = Level.MISSING
    for x in a.names:
        if x.given is None or x.family is None:
            continue
        for y in b.names:
            if y.given is None or y.family is None:
                continue
            level = min(token_level(x.given, y.family), token_level(x.family, y.given))
            best = max(best, level)
    return Level(best)


def another_owner_of_the_id(
    vectors: npt.NDArray[np.int8], comparators: Sequence[str]
) -> npt.NDArray[np.int8]:
    """A shared national ID is no evidence of one person when the birth dates do not agree
    and the given name or the sex disagrees too: it is an ID used for someone else (an infant
    registered under a parent's ID, siblings born the same year under it). Its level becomes
    MISSING for the pair. The same person with a mistyped date keeps the ID weight (the name
    and sex agree), and so does one whose name was keyed badly (the date agrees).
    Batch, Spark and real-time scoring all
    apply this (``index.score_pair`` too)."""
    if "national_id" not in comparators or "birth_date" not in comparators:
        return vectors
    nid, dob = comparators.index("national_id"), comparators.index("birth_date")
    # the dates disagree or are merely close (same year, one digit) and the given name or the
    # sex disagrees: a parent and the infant under their ID, or siblings born the same year
    other = np.zeros(len(vectors), dtype=bool)
    for name in ("given", "sex"):
        if name in comparators:
            other |= vectors[:, comparators.index(name)] == Level.DIFFERENT
    other &= (vectors[:, nid] == Level.EXACT) & (vectors[:, dob] <= Level.SIMILAR)
    vectors[other, nid] = Level.MISSING
    return vectors


# -- the Fellegi-Sunter model ----------------------------------------------------------------


def _normalise(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return p / p.sum(axis=1, keepdims=True)


def distinct_vectors(
    vectors: npt.NDArray[np.int8],
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.int64]]:
    """The distinct comparison vectors and how many pairs have each.

    A vector (levels -1..3) is one base-5 number, so this is a sort of integers rather than
    ``np.unique(axis=0)``'s sort of rows (0.1 s instead of 0.6 s for a million pairs).
    """
    n_fields = vectors.shape[1] if vectors.ndim == 2 else 0
    if n_fields == 0 or n_fields > 27:  # 5**27 < 2**63
        patterns, counts = np.unique(vectors, axis=0, return_counts=True)
        return patterns.astype(np.int8), counts.astype(np.int64)
    place = 5 ** np.arange(n_fields - 1, -1, -1, dtype=np.int64)
    codes = (vectors.astype(np.int64) + 1) @ place
    distinct, counts = np.unique(codes, return_counts=True)
    patterns = (distinct[:, None] // place) % 5 - 1
    return patterns.astype(np.int8), counts.astype(np.int64)


def em_train(
    vectors: npt.NDArray[np.int8],
    m_init: npt.NDArray[np.float64],
    u_init: npt.NDArray[np.float64],
    lambda_init: float = 0.1,
    max_iterations: int = 200,
    tolerance: float = 1e-6,
    pseudo_count: float = 0.5,
    fix_m: bool = False,
    fix_u: bool = False,
    u_prior: npt.NDArray[np.float64] | None = None,
    u_prior_weight: float = 0.0,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float, int]:
    """EM for m, u (fields × levels 0..3) and the match share λ of the pairs (Winkler 1988).

    E step: g = λ Πm / (λ Πm + (1-λ) Πu) per pair, MISSING fields left out of the products.
    M step: λ = mean g; m[f, l] = Σ g·[γ_f = l] / Σ g·[γ_f ≠ missing]; u likewise with 1-g.
    Runs on the distinct vectors with their counts (a few thousand, whatever the pairs).
    ``pseudo_count`` keeps every probability above zero; ``fix_m`` keeps m as given (only u
    and λ are estimated), ``fix_u`` likewise u. ``u_prior`` (level shares) with
    ``u_prior_weight`` pseudo-pairs is a Dirichlet prior on u (maximum a posteriori EM).
    Returns m, u, λ, iterations.
    """
    patterns, pattern_counts = distinct_vectors(vectors)
    counts = pattern_counts.astype(np.float64)
    n_fields = patterns.shape[1]
    present = patterns >= 0
    onehot = np.zeros((len(patterns), n_fields, N_LEVELS))
    rows, cols = np.nonzero(present)
    onehot[rows, cols, patterns[rows, cols]] = 1.0
    m, u, lam = m_init.copy(), u_init.copy(), lambda_init
    iterations = 0
    while iterations < max_iterations:
        iterations += 1
        log_m = np.where(present, np.log(m[np.arange(n_fields), patterns.clip(0)]), 0.0).sum(1)
        log_u = np.where(present, np.log(u[np.arange(n_fields), patterns.clip(0)]), 0.0).sum(1)
        logit = math.log(lam) - math.log1p(-lam) + log_m - log_u
        g = 1.0 / (1.0 + np.exp(-np.clip(logit, -700, 700)))
        gm, gu = counts * g, counts * (1.0 - g)
        new_lam = float(gm.sum() / counts.sum())
        new_m = m if fix_m else _normalise(np.einsum("p,pfl->fl", gm, onehot) + pseudo_count)
        prior = 0.0 if u_prior is None else u_prior_weight * u_prior
        new_u = (
            u if fix_u else _normalise(np.einsum("p,pfl->fl", gu, onehot) + pseudo_count + prior)
        )
        change = max(
            float(np.abs(new_m - m).max()), float(np.abs(new_u - u).max()), abs(new_lam - lam)
        )
        m, u, lam = new_m, new_u, min(max(new_lam, 1e-9), 1 - 1e-9)
        if change < tolerance:
            break
    return m, u, lam, iterations


@dataclass
class LinkageModel:
    """The trained parameters: what real-time scoring needs to give the same probabilities."""

    fields: tuple[ComparisonField, ...]
    m: npt.NDArray[np.float64]  # fields × levels (DIFFERENT, SIMILAR, EQUIVALENT, EXACT)
    u: npt.NDArray[np.float64]
    prior: float  # λ: share of candidate pairs that match
    threshold: float = DEFAULT_THRESHOLD
    blocking: tuple[BlockingRule, ...] = DEFAULT_RULES
    # term frequencies: field -> skeleton -> share of records carrying it
    tf: dict[str, dict[str, float]] = field(default_factory=dict)
    tf_chance: dict[str, float] = field(default_factory=dict)  # Σ share²: chance agreement
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def weights(self) -> npt.NDArray[np.float64]:
        """log2(m/u) per field × level, with a leading zero column for MISSING (index 0)."""
        w = np.log2(self.m / self.u)
        return np.hstack([np.zeros((len(self.fields), 1)), w])

    @property
    def prior_weight(self) -> float:
        return math.log2(self.prior / (1 - self.prior))

    def tf_adjustment(self, field_name: str, a: frozenset[str], b: frozenset[str]) -> float:
        """Bits added to an EXACT/EQUIVALENT name agreement: log2(chance / share of the
        shared value), so a rare name counts more and Mohammed less (scaled and bounded)."""
        spec = next(f for f in self.fields if f.name == field_name)
        shared = a & b
        table = self.tf.get(field_name)
        if not shared or not table:
            return 0.0
        share = max(table.get(s, 0.0) for s in shared)
        if share <= 0.0:
            return 0.0
        bits = math.log2(self.tf_chance[field_name] / share) * spec.tf_weight
        return max(-spec.tf_max_bits, min(spec.tf_max_bits, bits))

    def match_weights(
        self,
        vectors: npt.NDArray[np.int8],
        records: Sequence[RegistryRecord] | None = None,
        pairs: npt.NDArray[np.int32] | None = None,
        keys: BlockingKeys | None = None,
    ) -> npt.NDArray[np.float64]:
        """Total match weight (bits, prior included) per pair; with the records and pairs, the
        term-frequency adjustment is added. ``keys``: the records' ``BlockingKeys`` when the
        caller has them (their name columns are the values the adjustment looks at)."""
        w = self.weights
        total = np.full(len(vectors), self.prior_weight)
        for f in range(len(self.fields)):
            total += w[f][vectors[:, f].astype(np.int64) + 1]
        if records is not None and pairs is not None:
            if keys is None or keys.records is not records:
                keys = BlockingKeys(records)
            for f, spec in enumerate(self.fields):
                if not spec.tf or spec.comparator not in _TF_VALUES or spec.name not in self.tf:
                    continue
                agree = np.nonzero(vectors[:, f] >= Level.EQUIVALENT)[0]
                column = keys.column(_TF_KEYS[spec.comparator])
                total[agree] += self._tf_bits(spec, column, pairs[agree], len(records))
        return total

    def _tf_bits(
        self,
        spec: ComparisonField,
        column: KeyColumn,
        pairs: npt.NDArray[np.int32],
        n_records: int,
    ) -> npt.NDArray[np.float64]:
        """``tf_adjustment`` of each pair's shared values, in numpy: every (value of one
        record, value of the other) combination of a pair — mostly 1 to 4 — is laid out, the
        equal ones keep their share, the most frequent shared value decides (as in
        ``tf_adjustment``), and the bits are computed once per distinct share."""
        out = np.zeros(len(pairs))
        if len(pairs) == 0:
            return out
        table = self.tf[spec.name]
        share_of = np.fromiter(
            (table.get(v, 0.0) for v in column.vocabulary), np.float64, len(column.vocabulary)
        )
        starts, counts = column.starts(n_records)
        left, right, first, reps = _combinations(starts, counts, pairs)
        value = column.ids[left]
        shares = np.where(value == column.ids[right], share_of[value], 0.0)
        some = reps > 0
        best = np.zeros(len(pairs))
        if some.any():
            best[some] = np.maximum.reduceat(shares, first[some])
        distinct, inverse = np.unique(best, return_inverse=True)
        bits = np.array(
            [self._share_bits(spec, float(x)) for x in distinct.tolist()], dtype=np.float64
        )
        return bits[inverse.ravel()]

    def _share_bits(self, spec: ComparisonField, share: float) -> float:
        if share <= 0.0:
            return 0.0
        bits = math.log2(self.tf_chance[spec.name] / share) * spec.tf_weight
        return max(-spec.tf_max_bits, min(spec.tf_max_bits, bits))

    def probabilities(
        self,
        vectors: npt.NDArray[np.int8],
        records: Sequence[RegistryRecord] | None = None,
        pairs: npt.NDArray[np.int32] | None = None,
        keys: BlockingKeys | None = None,
    ) -> npt.NDArray[np.float64]:
        """P(match | comparison vector) per pair: 1 / (1 + 2^-weight)."""
        weight = self.match_weights(vectors, records, pairs, keys)
        return 1.0 / (1.0 + np.exp2(-np.clip(weight, -1000, 1000)))

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "model": "fellegi-sunter",
                "version": 1,
                "levels": ["DIFFERENT", "SIMILAR", "EQUIVALENT", "EXACT"],
                "fields": [f.to_json() for f in self.fields],
                "m": self.m.tolist(),
                "u": self.u.tolist(),
                "prior": self.prior,
                "threshold": self.threshold,
                "blocking": [r.to_json() for r in self.blocking],
                "tf_chance": self.tf_chance,
                "tf": self.tf,
                "training": self.training,
            },
            option=orjson.OPT_INDENT_2,
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> LinkageModel:
        raw = orjson.loads(data)
        if raw.get("model") != "fellegi-sunter":
            raise ValueError("not a Fellegi-Sunter linkage model")
        return cls(
            fields=tuple(ComparisonField.from_json(f) for f in raw["fields"]),
            m=np.asarray(raw["m"], dtype=np.float64),
            u=np.asarray(raw["u"], dtype=np.float64),
            prior=float(raw["prior"]),
            threshold=float(raw["threshold"]),
            blocking=tuple(BlockingRule.from_json(r) for r in raw["blocking"]),
            tf={k: {s: float(x) for s, x in v.items()} for k, v in raw.get("tf", {}).items()},
            tf_chance={k: float(v) for k, v in raw.get("tf_chance", {}).items()},
            training=dict(raw.get("training", {})),
        )


def term_frequencies(
    records: Sequence[RegistryRecord],
    fields: Sequence[ComparisonField],
    keys: BlockingKeys | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Share of records carrying each skeleton, per tf field, and the chance agreement Σ share²
    (the u of an agreement on that field between two random records)."""
    if keys is None or keys.records is not records:
        keys = BlockingKeys(records)
    tf: dict[str, dict[str, float]] = {}
    chance: dict[str, float] = {}
    n = max(len(records), 1)
    for spec in fields:
        if not spec.tf or spec.comparator not in _TF_VALUES:
            continue
        column = keys.column(_TF_KEYS[spec.comparator])
        counts = np.bincount(column.ids, minlength=len(column.vocabulary)).tolist()
        # Values in the order first met, as counting record by record would list them.
        table = {s: c / n for s, c in zip(column.vocabulary, counts, strict=True) if c}
        tf[spec.name] = table
        chance[spec.name] = sum(x * x for x in table.values()) or 1.0 / n
    return tf, chance


# Random pairs that give u its starting point (nearly all non-matches).
_U_SAMPLE = 20_000


def u_sample_size(n_records: int) -> int:
    """Random pairs u is counted on: more for more records, so that agreements as rare as a
    shared birth date keep an estimate (a few hundred in the sample) rather than the
    pseudo-count's floor; capped (the Spark trainer brings the sampled records to the
    driver)."""
    return max(_U_SAMPLE, min(500_000, 2 * n_records))


def _random_pairs(n: int, sample: int, seed: int) -> npt.NDArray[np.int32]:
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, sample)
    j = rng.integers(0, n, sample)
    keep = i != j
    return np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1)[keep].astype(np.int32)


def _initial_parameters(
    records: Sequence[RegistryRecord],
    fields: Sequence[ComparisonField],
    sample: int,
    seed: int,
    compare: Callable[[npt.NDArray[np.int32]], npt.NDArray[np.int8]] | None = None,
    vectors: npt.NDArray[np.int8] | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """m: agreement likely; u: level shares among random pairs (nearly all non-matches).
    ``vectors``: those of ``_random_pairs(len(records), sample, seed)``, if compared already."""
    m = np.tile(np.array([0.05, 0.05, 0.15, 0.75]), (len(fields), 1))
    n = len(records)
    if n < 2:
        return m, np.tile(np.array([0.85, 0.1, 0.03, 0.02]), (len(fields), 1))
    if vectors is None:
        pairs = _random_pairs(n, sample, seed)
        vectors = (
            compare(pairs) if compare is not None else comparison_vectors(records, pairs, fields)
        )
    u = np.full((len(fields), N_LEVELS), 1.0)  # pseudo-counts
    for f in range(len(fields)):
        col = vectors[:, f]
        u[f] += np.bincount(col[col >= 0], minlength=N_LEVELS)[:N_LEVELS]
    return m, _normalise(u)


# Splink-style training sessions: EM on the pairs sharing the session's keys, where nearly
# every pair agreeing on everything else is a match; m of the fields *not* in the keys is
# taken from the first session that can see them. EM over all candidate pairs at once finds a
# "same household" class instead of "same person" (siblings share father, family name, phone
# and region), so m is learnt where that class cannot form, then held fixed while u and λ are
# estimated on every candidate pair.
DEFAULT_SESSIONS: tuple[tuple[str, ...], ...] = (("national_id",), ("given", "birth_date"))


def _session_vectors(
    records: Sequence[RegistryRecord],
    pairs: npt.NDArray[np.int32],
    vectors: npt.NDArray[np.int8],
    keys: tuple[str, ...],
    fields: Sequence[ComparisonField],
    blocking_keys: BlockingKeys | None = None,
    compare: Callable[[npt.NDArray[np.int32]], npt.NDArray[np.int8]] | None = None,
) -> npt.NDArray[np.int8]:
    """The vectors of the pairs sharing ``keys`` (blocks up to 1,000): looked up among the
    candidate pairs' vectors, the few others (blocks over the candidate rules' caps)
    compared."""
    sub, _ = candidate_pairs(records, [BlockingRule(keys, 1000)], keys=blocking_keys)
    encoded = (pairs[:, 0].astype(np.int64) << 32) | pairs[:, 1]
    wanted = (sub[:, 0].astype(np.int64) << 32) | sub[:, 1]
    at = np.searchsorted(encoded, wanted).clip(0, max(len(encoded) - 1, 0))
    found = (encoded[at] == wanted) if len(encoded) else np.zeros(len(wanted), dtype=bool)
    out = vectors[at[found]]
    if (~found).any():
        missing = sub[~found]
        fresh = (
            compare(missing)
            if compare is not None
            else comparison_vectors(records, missing, fields)
        )
        out = np.vstack([out, fresh])
    return out


def estimate_parameters(
    fields: Sequence[ComparisonField],
    m0: npt.NDArray[np.float64],
    u0: npt.NDArray[np.float64],
    sessions: Iterable[tuple[tuple[str, ...], npt.NDArray[np.int8]]],
    vectors: npt.NDArray[np.int8],
    n_records: int = 0,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float, int, list[dict[str, Any]]]:
    """m from the training sessions (each field's from the first session not blocking on it),
    then u and λ by EM on every candidate pair with m fixed and u anchored to the random pairs'
    ``u0``. Shared by the local and the Spark trainers, which differ only in how they get the
    vectors. Returns m, u, λ, EM iterations and the sessions' log."""
    m = m0.copy()
    learnt = [False] * len(fields)
    session_log: list[dict[str, Any]] = []
    for session, sub in sessions:
        if len(sub) == 0:
            continue
        sm, _, slam, its = em_train(sub, m0, u0, lambda_init=0.5, fix_u=True)
        took = []
        for f, spec in enumerate(fields):
            if not learnt[f] and spec.comparator not in session:
                m[f] = sm[f]
                learnt[f] = True
                took.append(spec.name)
        session_log.append(
            {
                "keys": list(session),
                "pairs": len(sub),
                "prior": slam,
                "iterations": its,
                "m_for": took,
            }
        )
    if len(vectors) == 0:
        return m, u0, 1e-6, 0, session_log
    # λ among the candidate pairs (m and u fixed), then as the share of all pairs that match:
    # u is that of random pairs, so the prior must be too
    _, _, lam, its = em_train(vectors, m, u0, fix_m=True, fix_u=True)
    total = max(n_records * (n_records - 1) / 2, float(len(vectors)))
    return m, u0, min(lam * len(vectors) / total, 0.5), its, session_log


def train_model(
    records: Sequence[RegistryRecord],
    pairs: npt.NDArray[np.int32],
    vectors: npt.NDArray[np.int8],
    fields: Sequence[ComparisonField] = DEFAULT_FIELDS,
    rules: Sequence[BlockingRule] = DEFAULT_RULES,
    threshold: float = DEFAULT_THRESHOLD,
    sessions: Sequence[tuple[str, ...]] = DEFAULT_SESSIONS,
    seed: int = 0,
    *,
    keys: BlockingKeys | None = None,
    workers: int = 1,
) -> LinkageModel:
    """m from the training sessions, then u and λ by EM on all candidate pairs (m fixed).

    u is estimated on the candidate pairs rather than kept from random pairs: non-matches
    among candidates agree on the blocked fields far more often than random pairs do, and the
    posterior wanted is that of a candidate pair — the population real-time scoring sees too,
    since it uses the same blocking rules. Random pairs give u's starting point.

    ``keys``: the records' ``BlockingKeys`` if already built (sessions re-block on them);
    ``workers``: processes for the pairs training compares (random and session pairs).
    """
    if keys is None or keys.records is not records:
        keys = BlockingKeys(records)
    with _Comparer(records, fields, workers) as compare:
        return _train(
            records, pairs, vectors, fields, rules, threshold, sessions, seed, keys, compare
        )


def _train(
    records: Sequence[RegistryRecord],
    pairs: npt.NDArray[np.int32],
    vectors: npt.NDArray[np.int8],
    fields: Sequence[ComparisonField],
    rules: Sequence[BlockingRule],
    threshold: float,
    sessions: Sequence[tuple[str, ...]],
    seed: int,
    keys: BlockingKeys,
    compare: Callable[[npt.NDArray[np.int32]], npt.NDArray[np.int8]],
    random_vectors: npt.NDArray[np.int8] | None = None,
) -> LinkageModel:
    # EM runs on the distinct comparison vectors with their counts (a few thousand, whatever
    # the number of pairs), so it is trained on every candidate pair: a sample would save
    # nothing here and would move m and u.
    m0, u0 = _initial_parameters(
        records, fields, u_sample_size(len(records)), seed, compare, random_vectors
    )
    by_session = (
        (session, _session_vectors(records, pairs, vectors, session, fields, keys, compare))
        for session in sessions
    )
    m, u, lam, its, session_log = estimate_parameters(
        fields, m0, u0, by_session, vectors, n_records=len(records)
    )
    tf, chance = term_frequencies(records, fields, keys)
    return LinkageModel(
        fields=tuple(fields),
        m=m,
        u=u,
        prior=lam,
        threshold=threshold,
        blocking=tuple(rules),
        tf=tf,
        tf_chance=chance,
        training={
            "records": len(records),
            "pairs": len(pairs),
            "em_iterations": its,
            "sessions": session_log,
            "u_random_init": u0.tolist(),
        },
    )


# -- clustering ------------------------------------------------------------------------------


def cluster_pairs(
    records: Sequence[RegistryRecord],
    pairs: npt.NDArray[np.int32],
    probabilities: npt.NDArray[np.float64],
    threshold: float,
) -> tuple[npt.NDArray[np.int64], int]:
    """Connected components of the pairs at or above ``threshold``, merged from the most to
    the least probable edge; an edge is refused when it would put two different valid national
    IDs in one cluster (two people: the conflict stops a chain A-B-C of false merges).

    An ID shared across generations (an infant under a parent's ID) does not count, and an ID
    whose check digit fails is a keying error, not a conflict. Returns the cluster index of
    every record and the number of refused edges.
    """
    n = len(records)
    parent = list(range(n))
    shared = ids_shared_across_generations(
        (r.national_id, r.birth_years) for r in records if r.national_id
    )
    ids: list[str | None] = [
        r.national_id
        if r.national_id and r.national_id_valid and r.national_id not in shared
        else None
        for r in records
    ]

    edges = np.nonzero(probabilities >= threshold)[0]
    order = edges[np.argsort(-probabilities[edges], kind="stable")]
    refused = 0
    with gc_paused():
        for x, y in zip(pairs[order, 0].tolist(), pairs[order, 1].tolist(), strict=True):
            a = x  # find with path halving, inlined: this loop runs once per edge
            while parent[a] != a:
                parent[a] = a = parent[parent[a]]
            b = y
            while parent[b] != b:
                parent[b] = b = parent[parent[b]]
            if a == b:
                continue
            if ids[a] is not None and ids[b] is not None and ids[a] != ids[b]:
                refused += 1
                continue
            parent[b] = a
            if ids[a] is None:
                ids[a] = ids[b]
    roots = np.asarray(parent, dtype=np.int64)
    while True:  # pointer jumping to every record's root
        up = roots[roots]
        if np.array_equal(up, roots):
            break
        roots = up
    _, labels = np.unique(roots, return_inverse=True)
    return labels.astype(np.int64).ravel(), refused


# -- the batch pipeline ----------------------------------------------------------------------

# Bytes of NDJSON a worker reads and parses per task: a few thousand Patients.
_SEGMENT = 8 << 20


def _segments(path: Path, size: int = _SEGMENT) -> list[tuple[str, int, int]]:
    """The file cut into byte ranges of about ``size`` that end at line ends."""
    total = path.stat().st_size
    bounds = [0]
    with path.open("rb") as fh:
        while bounds[-1] + size < total:
            fh.seek(bounds[-1] + size)
            fh.readline()
            end = fh.tell()
            if end >= total:
                break
            bounds.append(end)
    bounds.append(total)
    name = os.fspath(path)
    return [(name, start, end) for start, end in pairwise(bounds)]


def _parse_lines(lines: Iterable[bytes]) -> list[RegistryRecord]:
    out = []
    loads = orjson.loads
    with gc_paused():
        for line in lines:
            if not line or line.isspace():
                continue
            resource = loads(line)
            if resource.get("resourceType") == "Patient":
                out.append(from_patient(resource))
    return out


def _parse_segment(segment: tuple[str, int, int]) -> list[RegistryRecord]:
    """The records of one byte range, read by the worker itself: the parent never touches
    the NDJSON (2 kB a Patient), it only receives the records."""
    name, start, end = segment
    with open(name, "rb") as fh:
        fh.seek(start)
        data = fh.read(end - start)
    return _parse_lines(data.splitlines())


def read_records(path: Path, workers: int = 1) -> list[RegistryRecord]:
    """RegistryRecords of the Patients of an NDJSON file (other resource types skipped).

    With ``workers`` > 1, forked processes each read and parse byte ranges of the file and
    send back their records, pickled, in file order.
    """
    segments = _segments(path, _SEGMENT)
    with gc_paused():
        if workers > 1 and len(segments) > 1 and "fork" in multiprocessing.get_all_start_methods():
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                parts = pool.imap(_parse_segment, segments)
                return [r for part in parts for r in part]
        return [r for segment in segments for r in _parse_segment(segment)]


@dataclass
class LinkResult:
    """Cluster per record, the model, and what each step did and cost."""

    records: list[RegistryRecord]
    labels: npt.NDArray[np.int64]
    model: LinkageModel
    pairs: int
    edges: int
    refused_edges: int
    clusters: int
    blocking: BlockingStats
    seconds: dict[str, float]

    def person_ids(self) -> list[str]:
        return [f"person-{label:07d}" for label in self.labels.tolist()]


class StepClock:
    """Seconds per named step of a pipeline, each reported to ``on_step`` as it ends (the
    local and the Spark linkers time their steps alike)."""

    def __init__(self, on_step: Callable[[str], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self._on_step = on_step
        self._last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._last
        self._last = now
        if self._on_step is not None:
            self._on_step(name)


def link_records(
    records: Sequence[RegistryRecord],
    model: LinkageModel | None = None,
    threshold: float | None = None,
    fields: Sequence[ComparisonField] = DEFAULT_FIELDS,
    rules: Sequence[BlockingRule] = DEFAULT_RULES,
    workers: int = 1,
    on_step: Callable[[str], None] | None = None,
) -> LinkResult:
    """Block, compare, train (unless a trained ``model`` is given), score and cluster."""
    step = StepClock(on_step)
    seconds = step.seconds
    if model is not None:
        rules, fields = model.blocking, model.fields
    with gc_paused(), _Comparer(records, fields, workers) as compare:
        keys = BlockingKeys(records)
        pairs, stats = candidate_pairs(records, rules, keys)
        step("blocking")
        # The random pairs u starts from are compared with the candidate pairs, in one go.
        extra = (
            _random_pairs(len(records), u_sample_size(len(records)), 0)
            if model is None and len(records) >= 2
            else np.empty((0, 2), dtype=np.int32)
        )
        compared = compare(np.concatenate([pairs, extra]) if len(extra) else pairs)
        vectors, random_vectors = compared[: len(pairs)], compared[len(pairs) :]
        step("comparing")
        if model is None:
            model = _train(
                records,
                pairs,
                vectors,
                fields,
                rules,
                DEFAULT_THRESHOLD,
                DEFAULT_SESSIONS,
                0,
                keys,
                compare,
                random_vectors,
            )
            step("training")
    if threshold is not None:
        model.threshold = threshold
    with gc_paused():
        probabilities = model.probabilities(vectors, records, pairs, keys)
        step("scoring")
        labels, refused = cluster_pairs(records, pairs, probabilities, model.threshold)
        step("clustering")
    return LinkResult(
        records=list(records),
        labels=labels,
        model=model,
        pairs=len(pairs),
        edges=int((probabilities >= model.threshold).sum()),
        refused_edges=refused,
        clusters=int(labels.max()) + 1 if len(labels) else 0,
        blocking=stats,
        seconds=seconds,
    )


def write_links(result: LinkResult, out: Path) -> None:
    """``patient_id,person_id`` for every record, in input order."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="") as fh:
        fh.write("patient_id,person_id\n")
        for record, person in zip(result.records, result.person_ids(), strict=True):
            fh.write(f"{record.patient_id},{person}\n")


def records_per_person(labels: Iterable[int]) -> Counter[int]:
    """Histogram: cluster size -> number of clusters."""
    return Counter(Counter(labels).values())
