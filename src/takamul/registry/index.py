"""Real-time candidate index: the registry's records in memory, keyed by the trained model's
blocking rules, so a registration is scored against its candidates without any SQL.

Splink scores a pair with a SQL query (20-60 ms a pair); at every registration that is too
slow. Here the same model (m, u, λ, term frequencies, blocking rules) scores a new record
against the records sharing one of its block keys, all in memory: a dictionary lookup per key
and the field comparators per candidate, tens of microseconds a candidate.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from takamul.registry.blocking import record_keys
from takamul.registry.identifiers import ids_shared_across_generations
from takamul.registry.levels import Level
from takamul.registry.linking import (
    COMPARATORS,
    LinkageModel,
    another_owner_of_the_id,
    names_in_either_order,
)
from takamul.registry.record import RegistryRecord

__all__ = ["CandidateIndex", "FieldEvidence", "ScoredCandidate", "score_pair"]

# The index's maps hold a bare patient id where one record has the key (most keys), a tuple
# where a few have (a person's registrations), a set beyond: a set of two costs 216 bytes, a
# tuple 56. A set past SMALL, so that a crowded block does not copy a tuple at every add.
SMALL = 8
Held = str | tuple[str, ...] | set[str]

# The skeletons a name part contributes to term frequencies: the definition the batch trainer
# counts with (linking.term_frequencies), repeated here so scoring one pair needs no arrays.
_NAME_VALUES: dict[str, Callable[[RegistryRecord], frozenset[str]]] = {
    "given": lambda r: frozenset(c.given.skel for c in r.names if c.given and c.given.skel),
    "family": lambda r: frozenset(c.family.skel for c in r.names if c.family and c.family.skel),
    "father": lambda r: frozenset(c.father.skel for c in r.names if c.father and c.father.skel),
}


@dataclass(frozen=True, slots=True)
class FieldEvidence:
    """One field of a compared pair: its level and the bits it added to the match weight."""

    field: str
    level: Level
    bits: float


@dataclass(frozen=True, slots=True)
class ScoredCandidate:
    patient_id: str
    probability: float
    weight: float
    evidence: tuple[FieldEvidence, ...]


def score_pair(model: LinkageModel, a: RegistryRecord, b: RegistryRecord) -> ScoredCandidate:
    """The model's match weight and probability for one pair, with the evidence per field.

    Equal to ``model.probabilities`` on the pair's comparison vector with the term-frequency
    adjustment (tested against it), so batch and real time decide alike.
    """
    weights = model.weights
    total = model.prior_weight
    evidence = []
    levels = np.array(
        [[COMPARATORS[spec.comparator](a, b) for spec in model.fields]], dtype=np.int8
    )
    comparators = [spec.comparator for spec in model.fields]
    levels = names_in_either_order([a, b], np.array([[0, 1]], dtype=np.int32), levels, comparators)
    levels = another_owner_of_the_id(levels, comparators)
    for f, spec in enumerate(model.fields):
        level = int(levels[0, f])
        bits = float(weights[f][int(level) + 1])
        values = _NAME_VALUES.get(spec.comparator)
        if spec.tf and values is not None and level >= Level.EQUIVALENT and spec.name in model.tf:
            shared = values(a) & values(b)
            bits += model.tf_adjustment(spec.name, shared, shared)
        total += bits
        evidence.append(FieldEvidence(spec.name, Level(level), bits))
    probability = 1.0 / (1.0 + math.pow(2.0, -max(-1000.0, min(1000.0, total))))
    return ScoredCandidate(b.patient_id, probability, total, tuple(evidence))


class CandidateIndex:
    """Records by patient id and by block key (one dictionary for every rule's keys).

    Thread-safe: the server adds records from request threads while others match. A block
    over its rule's ``max_block_size`` yields no candidates, as in batch blocking, so a very
    common key (a national ID typed as 0000000000) does not make every registration slow.
    """

    def __init__(self, model: LinkageModel) -> None:
        self.model = model
        self._records: dict[str, RegistryRecord] = {}
        # a block key's slot (its hash) -> the patient ids holding it (``Held``). Slots, not
        # the keys themselves: a key's tuple and strings cost more than the rest of its entry.
        # At 66,001 synthetic records the index structures took 804 bytes a record with keys
        # and sets, 626 with slots, 305 with slots and tuples (the records themselves 902).
        # Two keys sharing a 64-bit hash pool their blocks' records as candidates, which
        # scoring tells apart; the one cost would be a pooled block over its rule's
        # ``max_block_size`` (odds about 1e-4 over a hundred million keys).
        self._blocks: dict[int, Held] = {}
        # national ID -> the patient ids carrying it (their birth years are their records'):
        # batch clustering ignores an ID the population shows used across generations (an
        # infant under a parent's ID), and real time must know the same of the records it
        # holds.
        self._id_holders: dict[str, Held] = {}
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, patient_id: object) -> bool:
        return patient_id in self._records

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._records)

    def get(self, patient_id: str) -> RegistryRecord | None:
        return self._records.get(patient_id)

    def records(self) -> Iterable[RegistryRecord]:
        """Every indexed record (the screens' patient finder reads them at its start)."""
        with self._lock:
            return list(self._records.values())

    def _slots(self, record: RegistryRecord) -> Iterable[tuple[int, int]]:
        """(rule number, slot) of each of the record's block keys."""
        for key in self.block_keys(record):
            yield int(key[0]), hash(key)

    def block_keys(self, record: RegistryRecord) -> list[tuple[str, ...]]:
        """The record's block keys of every rule (what ``candidates`` looks up): the keys a
        registry transaction locks so that two registrations of one person link one after
        the other."""
        return [
            (str(n), *key)
            for n, rule in enumerate(self.model.blocking)
            for key in record_keys(record, rule)
        ]

    def add(self, record: RegistryRecord) -> None:
        """Index a record (replacing an earlier version of the same patient)."""
        with self._lock:
            self.remove(record.patient_id)
            self._records[record.patient_id] = record
            if record.national_id:
                _put(self._id_holders, record.national_id, record.patient_id)
            for _, slot in self._slots(record):
                _put(self._blocks, slot, record.patient_id)

    def add_many(self, records: Iterable[RegistryRecord]) -> int:
        n = 0
        for record in records:
            self.add(record)
            n += 1
        return n

    def remove(self, patient_id: str) -> None:
        with self._lock:
            record = self._records.pop(patient_id, None)
            if record is None:
                return
            if record.national_id:
                _take(self._id_holders, record.national_id, patient_id)
            for _, slot in self._slots(record):
                _take(self._blocks, slot, patient_id)

    def follow(self, record: RegistryRecord) -> None:
        """Another server process indexed ``record`` (the registry's change journal)."""
        self.add(record)

    def follow_removal(self, patient_id: str) -> None:
        """Another server process removed ``patient_id`` from the index."""
        self.remove(patient_id)

    def holders_of(self, national_id: str) -> set[str]:
        """Patient ids of the indexed records carrying ``national_id``."""
        with self._lock:
            return _held(self._id_holders, national_id)

    def shared_across_generations(self, national_id: str) -> bool:
        """Whether indexed records carrying ``national_id`` are born a generation apart
        (``identifiers.ids_shared_across_generations``, the test batch clustering applies to
        the whole population): the ID is then nobody's proof of identity, and two records
        whose IDs differ are not two people because of it."""
        return _across_generations(national_id, self._holder_years(national_id))

    def _holder_years(self, national_id: str) -> dict[str, frozenset[int]]:
        """The birth years of each indexed record carrying ``national_id``, by patient id."""
        with self._lock:
            held = _held(self._id_holders, national_id)
            return {pid: self._records[pid].birth_years for pid in held}

    def would_share_across_generations(self, record: RegistryRecord) -> bool:
        """Whether indexing ``record`` would leave its national ID shared across generations
        while it is not now (the registry then re-examines the ID's other holders)."""
        nid = record.national_id
        if not nid:
            return False
        holders = self._holder_years(nid)
        if _across_generations(nid, holders):
            return False
        holders[record.patient_id] = record.birth_years
        return _across_generations(nid, holders)

    def candidates(self, record: RegistryRecord) -> set[str]:
        """Patient ids sharing a block key of any rule with ``record`` (never itself)."""
        found: set[str] = set()
        with self._lock:
            for rule, slot in self._slots(record):
                held = self._blocks.get(slot)
                if held is None:
                    continue
                if isinstance(held, str):
                    found.add(held)
                elif len(held) <= self.model.blocking[rule].max_block_size:
                    found.update(held)
        found.discard(record.patient_id)
        return found

    def score(self, record: RegistryRecord, floor: float = 0.0) -> list[ScoredCandidate]:
        """Every candidate with probability >= ``floor``, most probable first."""
        others = (self._records.get(pid) for pid in self.candidates(record))
        # None: removed by another thread since the lookup
        return self._scored(record, (o for o in others if o is not None), floor)

    def _scored(
        self, record: RegistryRecord, others: Iterable[RegistryRecord], floor: float
    ) -> list[ScoredCandidate]:
        scored = []
        for other in others:
            result = score_pair(self.model, record, other)
            if result.probability >= floor:
                scored.append(result)
        scored.sort(key=lambda s: (-s.probability, s.patient_id))
        return scored

    def refresh_term_frequencies(self) -> None:
        """Recount the name frequencies on the indexed population, so Mohammed weighs what it
        weighs among these records rather than in the data the model was trained on."""
        with self._lock:
            counts: dict[str, Counter[str]] = {}
            for spec in self.model.fields:
                values = _NAME_VALUES.get(spec.comparator)
                if not spec.tf or values is None:
                    continue
                counted = counts[spec.name] = Counter()
                for record in self._records.values():
                    counted.update(values(record))
            self.set_term_frequencies(counts, len(self._records))

    def set_term_frequencies(self, counts: dict[str, Counter[str]], n: int) -> None:
        """The model's name frequencies from ``counts`` (per term-frequency field, the records
        carrying each value) among ``n`` records, and its prior scaled to ``n``."""
        n = max(n, 1)
        for name, counted in counts.items():
            table = {s: c / n for s, c in counted.items()}
            self.model.tf[name] = table
            self.model.tf_chance[name] = sum(x * x for x in table.values()) or 1.0 / n
        self._scale_prior(n)

    def term_values(self, record: RegistryRecord) -> list[tuple[str, str]]:
        """(field, value) of each name value ``record`` adds to the term frequencies."""
        out: list[tuple[str, str]] = []
        for spec in self.model.fields:
            values = _NAME_VALUES.get(spec.comparator)
            if spec.tf and values is not None:
                out.extend((spec.name, v) for v in sorted(values(record)))
        return out

    def _scale_prior(self, n: int) -> None:
        """λ is the share of all pairs of records that match (u is that of random pairs): a
        record has as many duplicates whatever the population, so λ shrinks as 1/(n - 1) when
        the indexed population outgrows the one the model was trained on. (Never raised for a
        smaller one: a new registry grows.)"""
        trained = int(self.model.training.get("records") or 0)
        base = float(self.model.training.setdefault("prior_trained", self.model.prior))
        if trained > 1 and n > trained:
            self.model.prior = base * (trained - 1) / (n - 1)
        else:
            self.model.prior = base


def _across_generations(national_id: str, holders: dict[str, frozenset[int]]) -> bool:
    if len(holders) < 2:
        return False
    years = [(national_id, ys) for ys in holders.values()]
    return national_id in ids_shared_across_generations(years)


def _put(mapping: dict[Any, Held], key: Any, patient_id: str) -> None:
    held = mapping.get(key)
    if held is None:
        mapping[key] = patient_id
    elif isinstance(held, str):
        if held != patient_id:
            mapping[key] = (held, patient_id)
    elif isinstance(held, tuple):
        if patient_id not in held:
            mapping[key] = (*held, patient_id) if len(held) < SMALL else {*held, patient_id}
    else:
        held.add(patient_id)


def _take(mapping: dict[Any, Held], key: Any, patient_id: str) -> None:
    held = mapping.get(key)
    if held is None:
        return
    if isinstance(held, str):
        if held == patient_id:
            del mapping[key]
        return
    rest = [pid for pid in held if pid != patient_id]
    if len(rest) == len(held):
        return
    if len(rest) == 1:
        mapping[key] = rest[0]
    elif isinstance(held, tuple):
        mapping[key] = tuple(rest)
    else:
        held.discard(patient_id)


def _held(mapping: dict[Any, Held], key: Any) -> set[str]:
    held = mapping.get(key)
    if held is None:
        return set()
    return {held} if isinstance(held, str) else set(held)
