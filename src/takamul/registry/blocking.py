"""Blocking: the candidate pairs of record linkage, from keys computed on RegistryRecords
(declared as data: rules of named keys, each with a block-size cap), unioned and de-duplicated.

Every key value becomes an integer id once per batch (``BlockingKeys``); a rule's blocks are
then found by sorting (key id, record) in numpy rather than by a dictionary of string tuples,
which at 500,000 records was 9 s of the link and is now well under one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress, product
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from takamul.registry.names import NameChain, NameToken
from takamul.registry.record import RegistryRecord

__all__ = [
    "DEFAULT_RULES",
    "KEYS",
    "BlockingKeys",
    "BlockingRule",
    "BlockingStats",
    "KeyColumn",
    "NameChains",
    "candidate_pairs",
    "record_keys",
]

log = logging.getLogger(__name__)

KeyFunction = Callable[[RegistryRecord], Iterable[str]]


def _given(r: RegistryRecord) -> Iterable[str]:
    return {c.given.skel for c in r.names if c.given is not None and c.given.skel}


def _family(r: RegistryRecord) -> Iterable[str]:
    return {c.family.skel for c in r.names if c.family is not None and c.family.skel}


def _father(r: RegistryRecord) -> Iterable[str]:
    return {c.father.skel for c in r.names if c.father is not None and c.father.skel}


def _full_dates(r: RegistryRecord) -> Iterable[str]:
    return {d for d in r.birth_candidates if len(d) == 10}


# Every key a rule may name. Name keys are skeletons, so that the native and Latin spellings
# of one name meet in a block; dates are all calendar/swap readings of the keyed date.
KEYS: dict[str, KeyFunction] = {
    "national_id": lambda r: (r.national_id,) if r.national_id else (),
    "given": _given,
    "family": _family,
    "father": _father,
    "birth_year": lambda r: {str(y) for y in r.birth_years},
    "birth_date": _full_dates,
    "phone": lambda r: r.phones,
    "sex": lambda r: (r.sex,) if r.sex else (),
}


@dataclass(frozen=True, slots=True)
class BlockingRule:
    """Records sharing a value of every key (any combination of their values) are candidates.

    ``max_block_size``: a block larger than this (a very common key) yields no pairs and is
    logged; its true pairs must come from another rule.
    """

    keys: tuple[str, ...]
    max_block_size: int = 200

    @property
    def name(self) -> str:
        return "+".join(self.keys)

    def to_json(self) -> dict[str, Any]:
        return {"keys": list(self.keys), "max_block_size": self.max_block_size}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BlockingRule:
        keys = tuple(data["keys"])
        unknown = [k for k in keys if k not in KEYS]
        if unknown:
            raise ValueError(f"unknown blocking keys {unknown}; known: {sorted(KEYS)}")
        return cls(keys, int(data.get("max_block_size", 200)))


# Each rule survives a different kind of error, so a true pair is lost only when several
# strike at once: a missing or mistyped ID (names + date), a typo in the family name (given +
# date), in the given name (family + date), a date keyed otherwise (ID; phone + given). Dates
# are every calendar/swap reading, so a Hijri- or Jalali-keyed date still meets its Gregorian
# twin. Name + full date keeps blocks small (1.2-1.4 candidate pairs a record on 110,000
# synthetic records, 99.95 % of true pairs); name + year alone gave 60 times the pairs for no
# gain in recall. The ID cap is high: an ID on many records is a data error worth seeing in
# the log, but a pair sharing a real ID must never be missed.
_DEFAULT_KEYS = dict(KEYS)

DEFAULT_RULES: tuple[BlockingRule, ...] = (
    BlockingRule(("national_id",), 1000),
    BlockingRule(("family", "birth_date"), 100),
    BlockingRule(("given", "birth_date"), 100),
    BlockingRule(("phone", "given"), 50),
)


@dataclass(slots=True)
class BlockingStats:
    """What blocking did: pairs per rule (before the union), and the blocks that were capped."""

    pairs: int = 0
    pairs_by_rule: dict[str, int] = field(default_factory=dict)
    capped_blocks: dict[str, int] = field(default_factory=dict)
    capped_records: dict[str, int] = field(default_factory=dict)
    largest_capped: dict[str, tuple[str, int]] = field(default_factory=dict)


def record_keys(record: RegistryRecord, rule: BlockingRule) -> list[tuple[str, ...]]:
    """The block keys of one record under one rule (every combination of its key values)."""
    values = [tuple(KEYS[k](record)) for k in rule.keys]
    if any(not v for v in values):
        return []
    return list(product(*values))


# -- keys as integer ids ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyColumn:
    """One key's values over a batch: entry e says record ``rows[e]`` carries value
    ``vocabulary[ids[e]]``. Rows ascend (records in order), each (row, value) once."""

    rows: npt.NDArray[np.int64]
    ids: npt.NDArray[np.int64]
    vocabulary: list[str]

    def starts(self, n_records: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Per record, the index of its first entry and its number of entries."""
        counts = np.bincount(self.rows, minlength=n_records).astype(np.int64)
        return np.cumsum(counts) - counts, counts


def key_column(records: Sequence[RegistryRecord], values: KeyFunction) -> KeyColumn:
    """The ``KeyColumn`` of ``values`` (a key function) over ``records``."""
    rows: list[int] = []
    flat: list[str] = []
    for index, record in enumerate(records):
        got = list(values(record))
        rows.extend([index] * len(got))
        flat.extend(got)
    return _column(np.asarray(rows, dtype=np.int64), flat)


def factorize(keys: list[Any]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """An id per key (ids in order of first appearance) and where each id first appears;
    C-level dict and map calls, no Python loop per key."""
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    ids = np.fromiter(map(index.__getitem__, keys), dtype=np.int64, count=len(keys))
    if not len(ids):
        return ids, ids
    # Ids appear in increasing order: an id is new where it exceeds every id before it.
    top = np.maximum.accumulate(ids)
    return ids, np.flatnonzero(np.r_[True, top[1:] > top[:-1]]).astype(np.int64)


def _column(rows: npt.NDArray[np.int64], values: list[str]) -> KeyColumn:
    """The column of (row, value) entries given in row order: values as ids, vocabulary in
    order of first appearance, each (row, value) kept once."""
    ids, first = factorize(values)
    vocabulary = [values[k] for k in first.tolist()]
    size = max(len(vocabulary), 1)
    packed = sorted_unique(rows * size + ids)
    return KeyColumn(packed // size, packed % size, vocabulary)


class NameChains:
    """Every name chain of a batch, flattened once in record order, with the record each
    belongs to: the name parts are then read by C-level maps instead of a loop per record."""

    def __init__(self, records: Sequence[RegistryRecord]) -> None:
        lists = list(map(attrgetter("names"), records))
        self.chains: list[NameChain] = list(chain.from_iterable(lists))
        per_record = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        self.owner = np.repeat(np.arange(len(records), dtype=np.int64), per_record)

    def part(self, name: str) -> tuple[npt.NDArray[np.int64], list[NameToken]]:
        """The tokens of one part (given, father, grandfather, family) and their records."""
        tokens = list(map(attrgetter(name), self.chains))
        present = [t is not None for t in tokens]
        return self.owner[np.asarray(present, dtype=bool)], list(compress(tokens, present))


def _name_column(chains: NameChains, part: str) -> KeyColumn:
    owner, tokens = chains.part(part)
    skeletons = list(map(attrgetter("skel"), tokens))
    keep = [bool(x) for x in skeletons]
    return _column(owner[np.asarray(keep, dtype=bool)], list(compress(skeletons, keep)))


def _one_column(records: Sequence[RegistryRecord], attr: str) -> KeyColumn:
    got = list(map(attrgetter(attr), records))
    keep = [bool(x) for x in got]
    rows = np.flatnonzero(np.asarray(keep, dtype=bool)).astype(np.int64)
    return _column(rows, list(compress(got, keep)))


def _phone_column(records: Sequence[RegistryRecord]) -> KeyColumn:
    lists = list(map(attrgetter("phones"), records))
    counts = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    rows = np.repeat(np.arange(len(lists), dtype=np.int64), counts)
    return _column(rows, list(chain.from_iterable(lists)))


def _date_column(records: Sequence[RegistryRecord]) -> KeyColumn:
    """Full-date readings: computed once per distinct set of readings, then spread."""
    readings = list(map(attrgetter("birth_candidates"), records))
    which, first = factorize(readings)
    per_set = [sorted(_full_dates(records[k])) for k in first.tolist()]
    counts_of = np.fromiter(map(len, per_set), dtype=np.int64, count=len(per_set))
    counts = counts_of[which] if len(which) else np.zeros(0, dtype=np.int64)
    rows = np.repeat(np.arange(len(records), dtype=np.int64), counts)
    starts_of = np.cumsum(counts_of) - counts_of
    offset = np.arange(len(rows), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    flat_of = list(chain.from_iterable(per_set))
    positions = (starts_of[which[rows]] + offset).tolist()
    return _column(rows, [flat_of[k] for k in positions])


class BlockingKeys:
    """The records' values of every blocking key as integer ids, computed once per key and
    shared by all rules, by the training sessions' re-blocking and by the term-frequency
    tables (name keys are the skeletons those count). Build one per batch of records."""

    def __init__(self, records: Sequence[RegistryRecord]) -> None:
        self.records = records
        self._columns: dict[str, KeyColumn] = {}
        self._chains: NameChains | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def chains(self) -> NameChains:
        if self._chains is None:
            self._chains = NameChains(self.records)
        return self._chains

    def column(self, key: str) -> KeyColumn:
        """The column of a key of ``KEYS``."""
        got = self._columns.get(key)
        if got is None:
            got = self._columns[key] = self._build(key)
        return got

    def _build(self, key: str) -> KeyColumn:
        function = KEYS[key]
        # The default keys, built column-wise (the same values as their key functions, which
        # tests/test_registry_linking.py checks); a replaced key function runs per record.
        if function is _DEFAULT_KEYS.get(key):
            if key in ("given", "family", "father"):
                return _name_column(self.chains, key)
            if key in ("national_id", "sex"):
                return _one_column(self.records, key)
            if key == "phone":
                return _phone_column(self.records)
            if key == "birth_date":
                return _date_column(self.records)
        return key_column(self.records, function)


def sorted_unique(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``np.unique`` of integers by sorting: numpy 2.x's default hash-based path was 15-20
    times slower on our packed pair codes (2.8 s instead of 0.2 s for two million)."""
    out = np.sort(values)
    if len(out) > 1:
        out = out[np.r_[True, out[1:] != out[:-1]]]
    return out


def _combine(
    keys: BlockingKeys, names: Sequence[str]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], list[npt.NDArray[np.int64]]]:
    """Every (record, combination of its values of ``names``): rows, one combined id per
    combination, and the value id of each key per combination (to name a block in the log)."""
    first = keys.column(names[0])
    rows, combined = first.rows, first.ids
    parts = [first.ids]
    bound = max(len(first.vocabulary), 1)
    for name in names[1:]:
        other = keys.column(name)
        starts, counts = other.starts(len(keys))
        # Each entry so far pairs with each of its record's values of the next key.
        reps = counts[rows]
        left = np.repeat(np.arange(len(rows), dtype=np.int64), reps)
        offsets = np.arange(len(left), dtype=np.int64) - np.repeat(np.cumsum(reps) - reps, reps)
        right = starts[rows[left]] + offsets
        rows = rows[left]
        parts = [p[left] for p in parts] + [other.ids[right]]
        size = max(len(other.vocabulary), 1)
        combined = combined[left] * size + other.ids[right]
        bound *= size
        if bound > 2**31:  # keep ids small enough to pack with the row into one int64
            _, inverse = np.unique(combined, return_inverse=True)
            combined = inverse.astype(np.int64).ravel()
            bound = max(int(combined.max()) + 1 if len(combined) else 1, 1)
    return rows, combined, parts


def _rule_pairs(
    keys: BlockingKeys, rule: BlockingRule, stats: BlockingStats
) -> npt.NDArray[np.int64]:
    """The pairs (i < j, encoded i * 2**32 + j) of one rule, and its entry in ``stats``."""
    rows, combined, parts = _combine(keys, rule.keys)
    n = max(len(keys), 1)
    # One sort of (block, record) packed in an int64 groups the blocks, orders each block's
    # records and drops a record met twice in one block (two values giving one key).
    packed = sorted_unique(combined * n + rows)
    block, members = packed // n, packed % n
    starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]]) if len(block) else block
    sizes = np.diff(np.r_[starts, len(block)]) if len(block) else block
    capped = sizes > rule.max_block_size
    if capped.any():
        at = np.flatnonzero(capped)
        # The largest capped block (the first met in record order among equals) names the log.
        biggest = at[np.lexsort((members[starts[at]], -sizes[at]))[0]]
        entry = int(np.flatnonzero(combined == block[starts[biggest]])[0])
        label = "|".join(
            keys.column(k).vocabulary[int(p[entry])] for k, p in zip(rule.keys, parts, strict=True)
        )
        stats.capped_blocks[rule.name] = int(capped.sum())
        stats.capped_records[rule.name] = int(sizes[capped].sum())
        stats.largest_capped[rule.name] = (label, int(sizes[biggest]))
        log.info(
            "blocking rule %s: %d blocks over %d records skipped (%d records; largest %s, %d)",
            rule.name,
            stats.capped_blocks[rule.name],
            rule.max_block_size,
            stats.capped_records[rule.name],
            label,
            int(sizes[biggest]),
        )
    out: list[npt.NDArray[np.int64]] = []
    usable = (sizes >= 2) & ~capped
    for size in sorted_unique(sizes[usable]).tolist():
        first = starts[usable & (sizes == size)]
        group = members[first[:, None] + np.arange(size)]  # rows ascend within a block
        i, j = np.triu_indices(size, k=1)
        out.append(((group[:, i] << 32) | group[:, j]).ravel())
    pairs = np.concatenate(out) if out else np.empty(0, dtype=np.int64)
    stats.pairs_by_rule[rule.name] = int(pairs.size)
    return pairs


def candidate_pairs(
    records: Sequence[RegistryRecord],
    rules: Sequence[BlockingRule] = DEFAULT_RULES,
    keys: BlockingKeys | None = None,
) -> tuple[npt.NDArray[np.int32], BlockingStats]:
    """Candidate pairs of ``records`` as an (n, 2) array of indices, i < j, unique, sorted.

    ``keys``: the records' ``BlockingKeys`` when the caller has them already (the linker
    blocks several times over one batch).
    """
    if keys is None or keys.records is not records:
        keys = BlockingKeys(records)
    stats = BlockingStats()
    encoded = [_rule_pairs(keys, rule, stats) for rule in rules]
    union = sorted_unique(np.concatenate(encoded)) if encoded else np.empty(0, dtype=np.int64)
    stats.pairs = int(union.size)
    out = np.empty((union.size, 2), dtype=np.int32)
    out[:, 0] = union >> 32
    out[:, 1] = union & 0xFFFFFFFF
    return out, stats
