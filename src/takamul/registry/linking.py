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

import logging
import math
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from takamul.registry.blocking import DEFAULT_RULES, BlockingRule, BlockingStats, candidate_pairs
from takamul.registry.dates import compare_birth_dates
from takamul.registry.identifiers import compare_ids, ids_shared_across_generations
from takamul.registry.levels import Level
from takamul.registry.names import NameChain, compare_family, compare_father, compare_given
from takamul.registry.phones import compare_phones
from takamul.registry.record import RegistryRecord, from_patient

__all__ = [
    "DEFAULT_FIELDS",
    "DEFAULT_THRESHOLD",
    "ComparisonField",
    "LinkResult",
    "LinkageModel",
    "cluster_pairs",
    "comparison_vectors",
    "em_train",
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


def _chains(compare: Callable[[NameChain, NameChain], Level]) -> RecordComparator:
    """A name-part comparison over two records' chains (native and Latin): the best level."""

    def best(a: RegistryRecord, b: RegistryRecord) -> Level:
        level = Level.MISSING
        for x in a.names:
            for y in b.names:
                got = compare(x, y)
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


# Every comparison a field may name, on two records.
COMPARATORS: dict[str, RecordComparator] = {
    "given": _chains(compare_given),
    "family": _chains(compare_family),
    "father": _chains(compare_father),
    "birth_date": lambda a, b: compare_birth_dates(a.birth_date, b.birth_date),
    "national_id": lambda a, b: compare_ids(a.national_id, b.national_id),
    "phone": lambda a, b: compare_phones(a.phones, b.phones),
    "sex": _same(lambda r: r.sex),
    "region": _same(lambda r: r.region),
}

# Skeleton sets per name part, for the term-frequency adjustment.
_TF_VALUES: dict[str, Callable[[RegistryRecord], frozenset[str]]] = {
    "given": lambda r: frozenset(c.given.skel for c in r.names if c.given and c.given.skel),
    "family": lambda r: frozenset(c.family.skel for c in r.names if c.family and c.family.skel),
    "father": lambda r: frozenset(c.father.skel for c in r.names if c.father and c.father.skel),
}


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

_WORK: tuple[Sequence[RegistryRecord], tuple[RecordComparator, ...]] | None = None


def _compare_chunk(bounds: tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]) -> bytes:
    assert _WORK is not None
    records, comparators = _WORK
    left, right = bounds
    out = bytearray()
    for i, j in zip(left.tolist(), right.tolist(), strict=True):
        a, b = records[i], records[j]
        out.extend((c(a, b) + 1) for c in comparators)  # levels -1..3 stored as 0..4
    return bytes(out)


def comparison_vectors(
    records: Sequence[RegistryRecord],
    pairs: npt.NDArray[np.int32],
    fields: Sequence[ComparisonField] = DEFAULT_FIELDS,
    workers: int = 1,
) -> npt.NDArray[np.int8]:
    """The level of each field for each pair: an (n_pairs, n_fields) int8 array in -1..3.

    With ``workers`` > 1 the pairs are compared in forked processes (they inherit the records
    rather than receive them pickled); the comparisons are cached Python, not vectorisable.
    """
    global _WORK
    comparators = tuple(COMPARATORS[f.comparator] for f in fields)
    _WORK = (records, comparators)
    try:
        chunks = [
            (pairs[s : s + 50_000, 0], pairs[s : s + 50_000, 1])
            for s in range(0, len(pairs), 50_000)
        ]
        if (
            workers > 1
            and len(pairs) > 100_000
            and "fork" in multiprocessing.get_all_start_methods()
        ):
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                parts = pool.map(_compare_chunk, chunks)
        else:
            parts = [_compare_chunk(c) for c in chunks]
    finally:
        _WORK = None
    flat = np.frombuffer(b"".join(parts), dtype=np.int8)
    return (flat.reshape(len(pairs), len(fields)) - 1).astype(np.int8)


# -- the Fellegi-Sunter model ----------------------------------------------------------------


def _normalise(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return p / p.sum(axis=1, keepdims=True)


def em_train(
    vectors: npt.NDArray[np.int8],
    m_init: npt.NDArray[np.float64],
    u_init: npt.NDArray[np.float64],
    lambda_init: float = 0.1,
    max_iterations: int = 200,
    tolerance: float = 1e-6,
    pseudo_count: float = 0.5,
    fix_m: bool = False,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float, int]:
    """EM for m, u (fields × levels 0..3) and the match share λ of the pairs (Winkler 1988).

    E step: g = λ Πm / (λ Πm + (1-λ) Πu) per pair, MISSING fields left out of the products.
    M step: λ = mean g; m[f, l] = Σ g·[γ_f = l] / Σ g·[γ_f ≠ missing]; u likewise with 1-g.
    Runs on the distinct vectors with their counts (a few thousand, whatever the pairs).
    ``pseudo_count`` keeps every probability above zero; ``fix_m`` keeps m as given (only u
    and λ are estimated). Returns m, u, λ, iterations.
    """
    patterns, counts = np.unique(vectors, axis=0, return_counts=True)
    counts = counts.astype(np.float64)
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
        new_u = _normalise(np.einsum("p,pfl->fl", gu, onehot) + pseudo_count)
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
    ) -> npt.NDArray[np.float64]:
        """Total match weight (bits, prior included) per pair; with the records and pairs, the
        term-frequency adjustment is added."""
        w = self.weights
        total = np.full(len(vectors), self.prior_weight)
        for f in range(len(self.fields)):
            total += w[f][vectors[:, f].astype(np.int64) + 1]
        if records is not None and pairs is not None:
            for f, spec in enumerate(self.fields):
                values = _TF_VALUES.get(spec.comparator)
                if not spec.tf or values is None or spec.name not in self.tf:
                    continue
                agree = np.nonzero(vectors[:, f] >= Level.EQUIVALENT)[0]
                sets: dict[int, frozenset[str]] = {}
                bits: dict[frozenset[str], float] = {}  # names repeat: one log per value
                adj = np.empty(len(agree))
                for k, (i, j) in enumerate(pairs[agree].tolist()):
                    a = sets.get(i)
                    if a is None:
                        a = sets[i] = values(records[i])
                    b = sets.get(j)
                    if b is None:
                        b = sets[j] = values(records[j])
                    shared = a & b
                    got = bits.get(shared)
                    if got is None:
                        got = bits[shared] = self.tf_adjustment(spec.name, shared, shared)
                    adj[k] = got
                total[agree] += adj
        return total

    def probabilities(
        self,
        vectors: npt.NDArray[np.int8],
        records: Sequence[RegistryRecord] | None = None,
        pairs: npt.NDArray[np.int32] | None = None,
    ) -> npt.NDArray[np.float64]:
        """P(match | comparison vector) per pair: 1 / (1 + 2^-weight)."""
        weight = self.match_weights(vectors, records, pairs)
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
    records: Sequence[RegistryRecord], fields: Sequence[ComparisonField]
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Share of records carrying each skeleton, per tf field, and the chance agreement Σ share²
    (the u of an agreement on that field between two random records)."""
    tf: dict[str, dict[str, float]] = {}
    chance: dict[str, float] = {}
    n = max(len(records), 1)
    for spec in fields:
        values = _TF_VALUES.get(spec.comparator)
        if not spec.tf or values is None:
            continue
        counts: Counter[str] = Counter()
        for r in records:
            counts.update(values(r))
        table = {s: c / n for s, c in counts.items()}
        tf[spec.name] = table
        chance[spec.name] = sum(x * x for x in table.values()) or 1.0 / n
    return tf, chance


def _initial_parameters(
    records: Sequence[RegistryRecord],
    fields: Sequence[ComparisonField],
    sample: int,
    seed: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """m: agreement likely; u: level shares among random pairs (nearly all non-matches)."""
    m = np.tile(np.array([0.05, 0.05, 0.15, 0.75]), (len(fields), 1))
    rng = np.random.default_rng(seed)
    n = len(records)
    if n < 2:
        return m, np.tile(np.array([0.85, 0.1, 0.03, 0.02]), (len(fields), 1))
    i = rng.integers(0, n, sample)
    j = rng.integers(0, n, sample)
    keep = i != j
    pairs = np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1)[keep].astype(np.int32)
    vec = comparison_vectors(records, pairs, fields)
    u = np.full((len(fields), N_LEVELS), 1.0)  # pseudo-counts
    for f in range(len(fields)):
        col = vec[:, f]
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
) -> npt.NDArray[np.int8]:
    sub, _ = candidate_pairs(records, [BlockingRule(keys, 1000)])
    encoded = (pairs[:, 0].astype(np.int64) << 32) | pairs[:, 1]
    wanted = (sub[:, 0].astype(np.int64) << 32) | sub[:, 1]
    at = np.searchsorted(encoded, wanted).clip(0, max(len(encoded) - 1, 0))
    found = (encoded[at] == wanted) if len(encoded) else np.zeros(len(wanted), dtype=bool)
    out = vectors[at[found]]
    if (~found).any():
        out = np.vstack([out, comparison_vectors(records, sub[~found], fields)])
    return out


def train_model(
    records: Sequence[RegistryRecord],
    pairs: npt.NDArray[np.int32],
    vectors: npt.NDArray[np.int8],
    fields: Sequence[ComparisonField] = DEFAULT_FIELDS,
    rules: Sequence[BlockingRule] = DEFAULT_RULES,
    threshold: float = DEFAULT_THRESHOLD,
    sessions: Sequence[tuple[str, ...]] = DEFAULT_SESSIONS,
    seed: int = 0,
) -> LinkageModel:
    """m from the training sessions, then u and λ by EM on all candidate pairs (m fixed).

    u is estimated on the candidate pairs rather than kept from random pairs: non-matches
    among candidates agree on the blocked fields far more often than random pairs do, and the
    posterior wanted is that of a candidate pair — the population real-time scoring sees too,
    since it uses the same blocking rules. Random pairs give u's starting point.
    """
    m0, u0 = _initial_parameters(records, fields, 20_000, seed)
    m = m0.copy()
    learnt = [False] * len(fields)
    session_log: list[dict[str, Any]] = []
    for keys in sessions:
        sub = _session_vectors(records, pairs, vectors, keys, fields)
        if len(sub) == 0:
            continue
        sm, _, slam, its = em_train(sub, m0, u0, lambda_init=0.5)
        took = []
        for f, spec in enumerate(fields):
            if not learnt[f] and spec.comparator not in keys:
                m[f] = sm[f]
                learnt[f] = True
                took.append(spec.name)
        session_log.append(
            {
                "keys": list(keys),
                "pairs": len(sub),
                "prior": slam,
                "iterations": its,
                "m_for": took,
            }
        )
    if len(vectors) == 0:
        u, lam, its = u0, 1e-6, 0
    else:
        m, u, lam, its = em_train(vectors, m, u0, fix_m=True)
    tf, chance = term_frequencies(records, fields)
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

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    edges = np.nonzero(probabilities >= threshold)[0]
    order = edges[np.argsort(-probabilities[edges], kind="stable")]
    refused = 0
    for p in order.tolist():
        a, b = find(int(pairs[p, 0])), find(int(pairs[p, 1]))
        if a == b:
            continue
        if ids[a] is not None and ids[b] is not None and ids[a] != ids[b]:
            refused += 1
            continue
        parent[b] = a
        if ids[a] is None:
            ids[a] = ids[b]
    roots = np.fromiter((find(x) for x in range(n)), dtype=np.int64, count=n)
    _, labels = np.unique(roots, return_inverse=True)
    return labels.astype(np.int64), refused


# -- the batch pipeline ----------------------------------------------------------------------


def _parse_chunk(lines: list[bytes]) -> list[RegistryRecord]:
    out = []
    for line in lines:
        resource = orjson.loads(line)
        if resource.get("resourceType") == "Patient":
            out.append(from_patient(resource))
    return out


def _line_chunks(path: Path, size: int = 20_000) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                chunk.append(line)
                if len(chunk) >= size:
                    yield chunk
                    chunk = []
    if chunk:
        yield chunk


def read_records(path: Path, workers: int = 1) -> list[RegistryRecord]:
    """RegistryRecords of the Patients of an NDJSON file (other resource types skipped)."""
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.imap(_parse_chunk, _line_chunks(path))
            return [r for part in parts for r in part]
    return [r for chunk in _line_chunks(path) for r in _parse_chunk(chunk)]


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
    seconds: dict[str, float] = {}
    t = time.perf_counter()

    def step(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        seconds[name] = now - t
        t = now
        if on_step is not None:
            on_step(name)

    if model is not None:
        rules, fields = model.blocking, model.fields
    pairs, stats = candidate_pairs(records, rules)
    step("blocking")
    vectors = comparison_vectors(records, pairs, fields, workers)
    step("comparing")
    if model is None:
        model = train_model(records, pairs, vectors, fields, rules)
        step("training")
    if threshold is not None:
        model.threshold = threshold
    probabilities = model.probabilities(vectors, records, pairs)
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
