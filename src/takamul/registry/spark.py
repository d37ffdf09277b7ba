"""The batch linkage of ``linking.link_records`` on Apache Spark, for a national population.

Same steps, same functions, distributed: Patient NDJSON is read as text lines and every line
becomes a ``RegistryRecord`` with ``from_patient`` in the executors; blocking keys come from
``blocking.record_keys`` and candidate pairs from a Spark join on (rule, key) with the same
block-size caps; both records of a pair are joined onto it and ``comparison_vectors`` runs in
the partitions with the same comparators; the model is trained as ``train_model`` trains it
(sessions, then u and λ with m fixed) with ``em_train`` on the driver; pairs are scored with
the broadcast model's weights and term-frequency adjustment; and the clusters are connected
components found in Spark, each merged with ``cluster_pairs`` (the ID-conflict guard).

On the same input it trains the same model as ``link_records``, and with the same model it
finds the same clusters (tested on the synthetic populations and measured on FEBRL4). Only the
person-id labels differ: here a cluster is numbered by the position of its first record in the
input.

What reaches the driver, and why: EM (``em_train``) is a few hundred sequential iterations over
the distinct comparison vectors, cheap on one machine and pointless to distribute, so the
vectors of the candidate pairs and of the training sessions are collected — as distinct
vectors with counts, expanded on the driver into n_pairs × n_fields int8 (about 100 MB for
13 million pairs) because ``em_train`` takes the vectors themselves. Also collected: the
records of the 20,000 random pairs that start u, and the term-frequency tables (both go into
the model anyway). Records, pairs, edges and clusters stay in Spark: the clustering is
distributed too (connected components, then the guard per component).

``pyspark`` is imported here only: the core install of Takamul works without the ``spark``
extra, and ``takamul.registry`` never imports this module. The Python workers must be able to
import ``takamul`` (set ``PYSPARK_PYTHON`` to the interpreter of the environment where it is
installed, or ship it with ``--py-files``).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from takamul.registry.blocking import DEFAULT_RULES, BlockingRule, BlockingStats, record_keys
from takamul.registry.identifiers import ids_shared_across_generations
from takamul.registry.levels import Level

# _TF_VALUES: the values term-frequency scoring reads from a record; imported (not copied)
# so that the Spark scoring cannot drift from the local one.
from takamul.registry.linking import (
    _TF_VALUES,
    DEFAULT_FIELDS,
    DEFAULT_SESSIONS,
    DEFAULT_THRESHOLD,
    N_LEVELS,
    ComparisonField,
    LinkageModel,
    StepClock,
    cluster_pairs,
    comparison_vectors,
    estimate_parameters,
    u_sample_size,
)
from takamul.registry.record import RegistryRecord, from_patient

try:
    from pyspark import RDD, Broadcast, StorageLevel
    from pyspark.sql import DataFrame, Row, SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql.types import (
        ArrayType,
        BinaryType,
        BooleanType,
        DoubleType,
        IntegerType,
        LongType,
        StringType,
        StructField,
        StructType,
    )
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "takamul.registry.spark needs Apache Spark (pyspark); install it with "
        "pip install 'takamul[spark]'"
    ) from err

__all__ = ["SparkLinkResult", "link_records_spark", "read_records_spark"]

log = logging.getLogger(__name__)

# Partitions are compared and scored in batches: large enough that the numpy work per batch
# dominates its overhead, small enough that a batch of unpickled record pairs stays small.
_BATCH = 5_000
_KEY_SEP = "\x1f"  # joins a rule's key values; never part of a skeleton, date, phone or ID
_MEMORY = StorageLevel.MEMORY_AND_DISK

_RECORDS_SCHEMA = StructType(
    [
        StructField("idx", LongType(), False),
        StructField("patient_id", StringType(), False),
        StructField("record", BinaryType(), False),  # the pickled RegistryRecord
        StructField("nid", StringType(), True),
        StructField("nid_valid", BooleanType(), True),
        StructField("years", ArrayType(IntegerType(), False), False),
    ]
)
_KEYS_SCHEMA = StructType(
    [
        StructField("rule", IntegerType(), False),  # which key set (a rule or a tf field)
        StructField("key", StringType(), False),
        StructField("idx", LongType(), False),
    ]
)
_VECTORS_SCHEMA = StructType(
    [
        StructField("i", LongType(), False),
        StructField("j", LongType(), False),
        # levels + 1 (0..4) per field, one byte each, as linking stores them
        StructField("v", BinaryType(), False),
        # per field: the skeletons both records share, where the field is a term-frequency
        # field agreeing at EQUIVALENT or better; else null
        StructField("tf", ArrayType(ArrayType(StringType(), False), True), False),
    ]
)
_EDGES_SCHEMA = StructType(
    [
        StructField("i", LongType(), False),
        StructField("j", LongType(), False),
        StructField("p", DoubleType(), False),
    ]
)
_MERGED_SCHEMA = StructType(
    [
        StructField("v", LongType(), False),
        StructField("cluster", LongType(), False),
        StructField("refused", IntegerType(), False),
    ]
)


def _frame(spark: SparkSession, rows: RDD[Any], schema: StructType | str) -> DataFrame:
    """A DataFrame of rows this module built itself: their types are known, and checking
    each row against the schema in Python costs more than the step that made it."""
    return spark.createDataFrame(rows, schema, verifySchema=False)


# -- reading ---------------------------------------------------------------------------------


def _parse_partition(lines: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
    """Patients of a partition of NDJSON lines as (id, pickled record, ID, ID valid, years);
    other resource types and blank lines are skipped, as ``read_records`` skips them."""
    for line in lines:
        text = line[0] if isinstance(line, Row) else line
        if not text or not text.strip():
            continue
        resource = orjson.loads(text)
        if resource.get("resourceType") != "Patient":
            continue
        record = from_patient(resource)
        yield (
            record.patient_id,
            pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL),
            record.national_id,
            record.national_id_valid,
            sorted(record.birth_years),
        )


def read_records_spark(
    spark: SparkSession, source: str | Path | Sequence[str] | DataFrame
) -> DataFrame:
    """Patient records of NDJSON files (a path, a glob or several) or of a DataFrame whose first
    column is one Patient JSON per row: ``idx, patient_id, record`` (a pickled
    ``RegistryRecord``) and the national-ID columns clustering needs, persisted.

    ``idx`` numbers the Patients 0..n-1 in input order, as ``read_records`` lists them, so
    the pairs sort as the local pipeline's and random samples draw the same records.
    """
    if isinstance(source, DataFrame):
        lines = source.select(source.columns[0]).rdd
    else:
        paths = [str(source)] if isinstance(source, str | Path) else [str(p) for p in source]
        lines = spark.read.text(paths).rdd
    parsed = lines.mapPartitions(_parse_partition).persist(_MEMORY)
    # zipWithIndex runs a job to count each partition; the persisted parse is reused after it
    indexed = parsed.zipWithIndex().map(lambda row: (row[1], *row[0]))
    records = _frame(spark, indexed, _RECORDS_SCHEMA).persist(_MEMORY)
    records.count()
    parsed.unpersist()
    return records


# -- blocking --------------------------------------------------------------------------------

# The values a record brings to one key set: the block keys of a rule, or the skeletons of a
# term-frequency field (computed in the same pass: the size of a skeleton's "block" is the
# number of records carrying it, which is what the term-frequency table needs).
_KeySet = Callable[[RegistryRecord], Iterable[str]]


def _rule_keys(rule: BlockingRule) -> _KeySet:
    def keys(record: RegistryRecord) -> set[str]:
        # a set: a record with two values mapping to one key is one member of the block
        return {_KEY_SEP.join(key) for key in record_keys(record, rule)}

    return keys


def _keys_partition(
    key_sets: Sequence[_KeySet],
) -> Callable[[Iterable[Row]], Iterator[tuple[int, str, int]]]:
    def keys(rows: Iterable[Row]) -> Iterator[tuple[int, str, int]]:
        for row in rows:
            record: RegistryRecord = pickle.loads(row.record)
            for r, of in enumerate(key_sets):
                for key in of(record):
                    yield r, key, row.idx

    return keys


def _key_blocks(
    spark: SparkSession, records: DataFrame, key_sets: Sequence[_KeySet]
) -> tuple[DataFrame, DataFrame]:
    """``rule, key, idx`` for every key of every record (one pass over the records for all
    key sets) and ``rule, key, size`` per block; both persisted."""
    keys = _frame(
        spark,
        records.select("idx", "record").rdd.mapPartitions(_keys_partition(tuple(key_sets))),
        _KEYS_SCHEMA,
    ).persist(_MEMORY)
    blocks = keys.groupBy("rule", "key").agg(F.count("*").alias("size")).persist(_MEMORY)
    return keys, blocks


def _caps(spark: SparkSession, caps: dict[int, int]) -> DataFrame:
    return spark.createDataFrame(list(caps.items()), "rule int, cap int")


def _rule_pairs(
    spark: SparkSession, keys: DataFrame, blocks: DataFrame, caps: dict[int, int]
) -> DataFrame:
    """``rule, i, j`` (i < j): the pairs of each key set in ``caps`` as
    ``blocking.candidate_pairs`` makes them — records sharing a key meet in its block, by a
    join on (rule, key); a block over its rule's cap (a very common key) yields no pairs. A
    pair met in several blocks of a rule appears once per block."""
    kept = (
        blocks.join(F.broadcast(_caps(spark, caps)), "rule")
        .where((F.col("size") >= 2) & (F.col("size") <= F.col("cap")))
        .select("rule", "key")
    )
    members = keys.join(kept, ["rule", "key"])
    a, b = members.alias("a"), members.alias("b")
    return (
        a.join(b, ["rule", "key"])
        .where(F.col("a.idx") < F.col("b.idx"))
        .select("rule", F.col("a.idx").alias("i"), F.col("b.idx").alias("j"))
    )


def _block_pairs(
    spark: SparkSession, keys: DataFrame, blocks: DataFrame, caps: dict[int, int]
) -> DataFrame:
    """The candidate pairs of the rules in ``caps``: their union, distinct, persisted."""
    pairs = _rule_pairs(spark, keys, blocks, caps).select("i", "j").distinct().persist(_MEMORY)
    pairs.count()
    return pairs


def _blocking_stats(
    spark: SparkSession, blocks: DataFrame, rules: Sequence[BlockingRule]
) -> BlockingStats:
    """Pairs per rule before the union (Σ C(size, 2) over kept blocks, as the local count)
    and the capped blocks, in one job over the block sizes; capped blocks are logged."""
    caps = {r: rule.max_block_size for r, rule in enumerate(rules)}
    over = F.col("size") > F.col("cap")
    rows = (
        blocks.join(F.broadcast(_caps(spark, caps)), "rule")
        .where(F.col("size") >= 2)
        .groupBy("rule", over.alias("capped"))
        .agg(
            F.count("*").alias("blocks"),
            F.sum("size").alias("records"),
            F.sum(F.expr("size * (size - 1) div 2")).alias("pairs"),
            F.max_by("key", "size").alias("largest_key"),
            F.max("size").alias("largest"),
        )
        .collect()
    )
    stats = BlockingStats()
    stats.pairs_by_rule = {rule.name: 0 for rule in rules}
    for row in sorted(rows, key=lambda r: r.rule):
        rule = rules[row.rule]
        if not row.capped:
            stats.pairs_by_rule[rule.name] = int(row.pairs)
            continue
        largest = (row.largest_key.replace(_KEY_SEP, "|"), int(row.largest))
        stats.capped_blocks[rule.name] = int(row.blocks)
        stats.capped_records[rule.name] = int(row.records)
        stats.largest_capped[rule.name] = largest
        log.info(
            "blocking rule %s: %d blocks over %d records skipped (%d records; largest %s, %d)",
            rule.name,
            row.blocks,
            rule.max_block_size,
            row.records,
            largest[0],
            largest[1],
        )
    return stats


# -- comparing -------------------------------------------------------------------------------


def _tf_columns(
    fields: Sequence[ComparisonField],
) -> list[Callable[[RegistryRecord], frozenset[str]] | None]:
    """Per field, the values term-frequency adjustment looks at (the same functions the local
    scoring uses), or None for a field without it."""
    return [_TF_VALUES.get(f.comparator) if f.tf else None for f in fields]


def _compare_batch(
    rows: list[Row], fields: Sequence[ComparisonField]
) -> Iterator[tuple[int, int, bytes, list[list[str] | None]]]:
    records: list[RegistryRecord] = []
    for row in rows:
        records.append(pickle.loads(row.a))
        records.append(pickle.loads(row.b))
    local = np.arange(len(records), dtype=np.int32).reshape(-1, 2)
    vectors = comparison_vectors(records, local, fields)
    values = _tf_columns(fields)
    stored = (vectors + 1).astype(np.uint8)
    for k, row in enumerate(rows):
        shared: list[list[str] | None] = []
        for f, of in enumerate(values):
            if of is None or vectors[k, f] < Level.EQUIVALENT:
                shared.append(None)
            else:
                shared.append(sorted(of(records[2 * k]) & of(records[2 * k + 1])))
        yield row.i, row.j, stored[k].tobytes(), shared


def _compare_partition(
    fields: Sequence[ComparisonField],
) -> Callable[[Iterable[Row]], Iterator[tuple[int, int, bytes, list[list[str] | None]]]]:
    def compare(rows: Iterable[Row]) -> Iterator[tuple[int, int, bytes, list[list[str] | None]]]:
        batch: list[Row] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= _BATCH:
                yield from _compare_batch(batch, fields)
                batch = []
        if batch:
            yield from _compare_batch(batch, fields)

    return compare


def _compare_pairs(
    spark: SparkSession, pairs: DataFrame, records: DataFrame, fields: Sequence[ComparisonField]
) -> DataFrame:
    """``i, j, v, tf`` per pair: both records are joined onto the pair, then compared in the
    partitions with ``comparison_vectors`` (the same comparators as the local pipeline)."""
    left = records.select(F.col("idx").alias("i"), F.col("record").alias("a"))
    right = records.select(F.col("idx").alias("j"), F.col("record").alias("b"))
    joined = pairs.join(left, "i").join(right, "j").select("i", "j", "a", "b")
    return _frame(
        spark, joined.rdd.mapPartitions(_compare_partition(tuple(fields))), _VECTORS_SCHEMA
    )


def _decode(stored: Iterable[bytes], n_fields: int) -> npt.NDArray[np.int8]:
    flat = np.frombuffer(b"".join(stored), dtype=np.uint8)
    return (flat.reshape(-1, n_fields).astype(np.int16) - 1).astype(np.int8)


def _vector_counts(vectors: DataFrame, n_fields: int) -> dict[int, npt.NDArray[np.int8]]:
    """Per value of ``set``, the comparison vectors (``v``) of a DataFrame, on the driver, for
    ``em_train``.

    Only the distinct vectors travel (with their counts; a few thousand whatever the number
    of pairs) and are expanded here, because ``em_train`` takes the vectors themselves. The
    expanded array costs n_pairs × n_fields bytes of driver memory (about 100 MB for 13
    million pairs); EM is cheap but sequential, so it runs on the driver.
    """
    rows = vectors.groupBy("set", "v").count().collect()
    out: dict[int, npt.NDArray[np.int8]] = {}
    for key in sorted({row.set for row in rows}):
        mine = [row for row in rows if row.set == key]
        patterns = _decode((row.v for row in mine), n_fields)
        counts = np.fromiter((row["count"] for row in mine), dtype=np.int64, count=len(mine))
        out[key] = np.repeat(patterns, counts, axis=0)
    return out


# -- training --------------------------------------------------------------------------------


def _initial_parameters(
    spark: SparkSession,
    records: DataFrame,
    n: int,
    fields: Sequence[ComparisonField],
    sample: int,
    seed: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """m and u's starting points as ``linking`` sets them: u from ``sample`` random pairs.

    The same random draws over the same record numbering pick the same pairs as the local
    pipeline; only the (at most 2 × ``sample``) records drawn are brought to the driver.
    """
    m = np.tile(np.array([0.05, 0.05, 0.15, 0.75]), (len(fields), 1))
    if n < 2:
        return m, np.tile(np.array([0.85, 0.1, 0.03, 0.02]), (len(fields), 1))
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, sample)
    j = rng.integers(0, n, sample)
    keep = i != j
    pairs = np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1)[keep]
    wanted = np.unique(pairs)
    chosen = spark.createDataFrame([(int(x),) for x in wanted.tolist()], "idx long")
    fetched = {
        int(row.idx): pickle.loads(row.record)
        for row in records.join(F.broadcast(chosen), "idx").select("idx", "record").collect()
    }
    sampled = [fetched[int(x)] for x in wanted.tolist()]
    local = np.searchsorted(wanted, pairs).astype(np.int32)
    vec = comparison_vectors(sampled, local, fields)
    u = np.full((len(fields), N_LEVELS), 1.0)  # pseudo-counts
    for f in range(len(fields)):
        col = vec[:, f]
        u[f] += np.bincount(col[col >= 0], minlength=N_LEVELS)[:N_LEVELS]
    return m, u / u.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class _KeyPlan:
    """Which key sets one pass over the records computes: the blocking rules first, then
    (when a model is to be trained) the training sessions' blocking and the skeletons of the
    term-frequency fields, so that training needs no further pass of its own."""

    key_sets: tuple[_KeySet, ...]
    rules: int  # key sets 0..rules-1 are the blocking rules
    sessions: tuple[tuple[tuple[str, ...], int], ...] = ()  # (session keys, key set)
    tf: tuple[tuple[str, int], ...] = ()  # (field name, key set)

    @classmethod
    def plan(
        cls,
        rules: Sequence[BlockingRule],
        fields: Sequence[ComparisonField],
        training: bool,
        sessions: Sequence[tuple[str, ...]] = DEFAULT_SESSIONS,
    ) -> _KeyPlan:
        key_sets: list[_KeySet] = [_rule_keys(rule) for rule in rules]
        if not training:
            return cls(tuple(key_sets), len(rules))
        planned_sessions = []
        for keys in sessions:
            # the session blocks as train_model's re-blocking does: the keys, capped at 1000
            planned_sessions.append((tuple(keys), len(key_sets)))
            key_sets.append(_rule_keys(BlockingRule(tuple(keys), 1000)))
        planned_tf = []
        for spec, of in zip(fields, _tf_columns(fields), strict=True):
            if of is not None:
                planned_tf.append((spec.name, len(key_sets)))
                key_sets.append(of)
        return cls(tuple(key_sets), len(rules), tuple(planned_sessions), tuple(planned_tf))


def _term_frequencies(
    blocks: DataFrame, plan: _KeyPlan, n: int
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """``linking.term_frequencies`` from the block sizes of the tf key sets: the share of
    records carrying each skeleton per field, and the chance agreement Σ share²."""
    if not plan.tf:
        return {}, {}
    names = {index: name for name, index in plan.tf}
    rows = blocks.where(F.col("rule").isin(list(names))).collect()
    total = max(n, 1)
    tf: dict[str, dict[str, float]] = {name: {} for name, _ in plan.tf}
    for row in sorted(rows, key=lambda r: (r.rule, r.key)):
        tf[names[row.rule]][row.key] = row.size / total
    chance = {name: sum(x * x for x in table.values()) or 1.0 / total for name, table in tf.items()}
    return tf, chance


def _train(
    spark: SparkSession,
    records: DataFrame,
    n: int,
    pairs: int,
    vectors: DataFrame,
    keys: DataFrame,
    blocks: DataFrame,
    plan: _KeyPlan,
    fields: Sequence[ComparisonField],
    rules: Sequence[BlockingRule],
    threshold: float,
    seed: int = 0,
) -> LinkageModel:
    """``linking.train_model`` with its record-wide steps in Spark.

    ``train_model`` needs every record in driver memory (to re-block for the sessions, to draw
    random pairs and to count term frequencies), which a national population does not fit.
    Here those steps run in Spark — session pairs by the same blocking join, their vectors
    looked up among the candidates' or compared anew, term frequencies counted — and only
    comparison vectors (int8, a few bytes a pair) and the sampled records reach the driver,
    where ``em_train`` runs exactly as in ``train_model``: m of each field from the first
    session that does not block on it, then u and λ with m fixed. (EM is a few hundred
    iterations over a few thousand distinct vectors: cheap, but sequential.)
    """
    n_fields = len(fields)
    m0, u0 = _initial_parameters(spark, records, n, fields, u_sample_size(n), seed)
    # One job for every EM input: the vectors of all candidate pairs (set -1) and those of
    # each session's pairs (set = its key set), looked up among the candidates' or, for a
    # session pair that is no candidate, compared now.
    sessions = _rule_pairs(spark, keys, blocks, {index: 1000 for _, index in plan.sessions})
    sessions = sessions.distinct().withColumnRenamed("rule", "set")
    known = sessions.join(vectors.select("i", "j", "v"), ["i", "j"], "left")
    missing = known.where(F.col("v").isNull()).select("i", "j").distinct()
    fresh = _compare_pairs(spark, missing, records, fields).select(
        "i", "j", F.col("v").alias("fresh")
    )
    counted = _vector_counts(
        known.join(fresh, ["i", "j"], "left")
        .select("set", F.coalesce("v", "fresh").alias("v"))
        .unionByName(vectors.select(F.lit(-1).alias("set"), "v")),
        n_fields,
    )
    empty = np.empty((0, n_fields), dtype=np.int8)
    by_session = ((session, counted.get(index, empty)) for session, index in plan.sessions)
    m, u, lam, its, session_log = estimate_parameters(
        fields, m0, u0, by_session, counted.get(-1, empty), n_records=n
    )
    tf, chance = _term_frequencies(blocks, plan, n)
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
            "records": n,
            "pairs": pairs,
            "em_iterations": its,
            "sessions": session_log,
            "u_random_init": u0.tolist(),
            "engine": "spark",
        },
    )


# -- scoring ---------------------------------------------------------------------------------


def _score_batch(rows: list[Row], model: LinkageModel) -> npt.NDArray[np.float64]:
    """``LinkageModel.probabilities`` of a batch: the field weights from the model, then the
    term-frequency bits of each agreeing name from the shared skeletons stored on the pair,
    added field by field as the local scoring adds them (so the sums round alike)."""
    vectors = _decode((row.v for row in rows), len(model.fields))
    total = model.match_weights(vectors)
    for f, spec in enumerate(model.fields):
        if not spec.tf or spec.comparator not in _TF_VALUES or spec.name not in model.tf:
            continue
        agree = np.nonzero(vectors[:, f] >= Level.EQUIVALENT)[0]
        bits: dict[frozenset[str], float] = {}
        adj = np.empty(len(agree))
        for k, p in enumerate(agree.tolist()):
            shared = frozenset(rows[p].tf[f] or ())
            got = bits.get(shared)
            if got is None:
                got = bits[shared] = model.tf_adjustment(spec.name, shared, shared)
            adj[k] = got
        total[agree] += adj
    return 1.0 / (1.0 + np.exp2(-np.clip(total, -1000, 1000)))


def _edges_partition(
    model: Broadcast[LinkageModel], threshold: float
) -> Callable[[Iterable[Row]], Iterator[tuple[int, int, float]]]:
    """The pairs at or above ``threshold`` with their probability; ``model`` is a broadcast
    LinkageModel (one copy per executor, not one per task)."""

    def score(rows: Iterable[Row]) -> Iterator[tuple[int, int, float]]:
        linkage: LinkageModel = model.value
        batch: list[Row] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= _BATCH:
                yield from _keep(batch, linkage, threshold)
                batch = []
        if batch:
            yield from _keep(batch, linkage, threshold)

    return score


def _keep(
    rows: list[Row], model: LinkageModel, threshold: float
) -> Iterator[tuple[int, int, float]]:
    probabilities = _score_batch(rows, model)
    for k in np.nonzero(probabilities >= threshold)[0].tolist():
        yield rows[k].i, rows[k].j, float(probabilities[k])


# -- clustering ------------------------------------------------------------------------------


def _components(edges: DataFrame) -> DataFrame:
    """``v, comp``: every record with an edge and the smallest record of its connected
    component, by min-label propagation with pointer jumping: each round a record takes the
    smallest label among its own and its neighbours', then its label's label, so a chain of
    length d settles in about log d rounds rather than d. Each round is checkpointed (the
    lineage and the query plan would otherwise grow with every round)."""
    neighbours = (
        edges.select(F.col("i").alias("src"), F.col("j").alias("dst"))
        .unionAll(edges.select(F.col("j").alias("src"), F.col("i").alias("dst")))
        .persist(_MEMORY)
    )
    labels = (
        neighbours.select(F.col("src").alias("v"))
        .distinct()
        .withColumn("comp", F.col("v"))
        .localCheckpoint(eager=False)
    )
    rounds = 0
    while True:
        rounds += 1
        seen = (
            neighbours.join(labels.withColumnRenamed("v", "dst"), "dst")
            .groupBy(F.col("src").alias("v"))
            .agg(F.min("comp").alias("seen"))
        )
        settled = labels.join(seen, "v", "left").select(
            "v",
            F.col("comp").alias("before"),
            F.least("comp", F.coalesce("seen", "comp")).alias("comp"),
        )
        hop = settled.select(F.col("v").alias("target"), F.col("comp").alias("hop"))
        jumped = (
            settled.join(hop, settled.comp == hop.target)
            .select("v", "before", F.least("comp", "hop").alias("comp"))
            .localCheckpoint(eager=False)
        )
        labels = jumped.select("v", "comp")
        # Labels only decrease: no record moved means every component has settled. The count
        # reads every partition, so this one job also fills the round's checkpoint.
        if jumped.where(F.col("comp") != F.col("before")).count() == 0:
            break
    neighbours.unpersist()
    log.debug("connected components settled in %d rounds", rounds)
    return labels


# A record that only carries a national ID: what ``cluster_pairs`` reads of a record. Built by
# ``from_patient`` itself so that fields added to RegistryRecord keep their defaults.
_BLANK = from_patient({"resourceType": "Patient"})


def _merge_partition(threshold: float) -> Callable[[Iterable[Row]], Iterator[tuple[int, int, int]]]:
    def merge(rows: Iterable[Row]) -> Iterator[tuple[int, int, int]]:
        for row in rows:
            members = sorted((m.v, m.eff) for m in row.members)
            at = {v: k for k, (v, _) in enumerate(members)}
            # The ID a record brings to the guard was settled over all records carrying it
            # (invalid check digits and IDs shared across generations are None), so each
            # stand-in carries it as valid, with no birth years for cluster_pairs to re-flag.
            stand_ins = [
                replace(_BLANK, national_id=eff, national_id_valid=True if eff else None)
                for _, eff in members
            ]
            # in (i, j) order, so ties in probability break as in the local pipeline
            edges = sorted((e.i, e.j, e.p) for e in row.edges)
            pairs = np.array([[at[i], at[j]] for i, j, _ in edges], dtype=np.int32)
            probabilities = np.array([p for _, _, p in edges], dtype=np.float64)
            labels, refused = cluster_pairs(stand_ins, pairs, probabilities, threshold)
            first: dict[int, int] = {}
            for (v, _), label in zip(members, labels.tolist(), strict=True):
                cluster = first.setdefault(label, v)  # members are sorted: the smallest
                yield v, cluster, refused if v == members[0][0] else 0

    return merge


def _cluster(
    spark: SparkSession, records: DataFrame, edges: DataFrame, threshold: float
) -> tuple[DataFrame, int, int]:
    """``v, cluster, refused``: the cluster (its smallest record) of every record with an
    edge (persisted), the number of records joined to a smaller one, and the number of edges the
    ID-conflict guard refused.

    Components are found in Spark; the guard then runs per component with ``cluster_pairs``
    itself. That is the global greedy merge of ``cluster_pairs``: edges of different
    components never touch the same union-find trees, so merging each component's edges
    most-probable-first gives the same partition as merging all edges in that order. Which
    IDs the guard may count is settled first over every record carrying the ID, as
    ``cluster_pairs`` settles it over all records.
    """
    ids = records.where(F.col("nid").isNotNull()).select("idx", "nid", "nid_valid", "years")
    carried = (
        ids.groupBy("nid")
        .agg(F.collect_list("years").alias("years"), F.count("*").alias("n"))
        .where(F.col("n") >= 2)
    )
    shared = _frame(
        spark,
        carried.rdd.flatMap(
            lambda row: [
                (s,) for s in ids_shared_across_generations((row.nid, y) for y in row.years)
            ]
        ),
        "nid string",
    )
    guard_ids = (
        ids.where(F.col("nid_valid"))
        .join(shared, "nid", "left_anti")
        .select(F.col("idx").alias("v"), F.col("nid").alias("eff"))
    )
    components = _components(edges)
    by_component = (
        edges.join(components.withColumnRenamed("v", "i"), "i")
        .groupBy("comp")
        .agg(F.collect_list(F.struct("i", "j", "p")).alias("edges"))
    )
    members = (
        components.join(guard_ids, "v", "left")
        .groupBy("comp")
        .agg(F.collect_list(F.struct("v", "eff")).alias("members"))
    )
    merged = _frame(
        spark,
        by_component.join(members, "comp").rdd.mapPartitions(_merge_partition(threshold)),
        _MERGED_SCHEMA,
    ).persist(_MEMORY)
    total = merged.agg(
        F.sum("refused").alias("refused"),
        F.sum((F.col("v") != F.col("cluster")).cast("long")).alias("joined"),
    ).first()
    refused = int(total.refused or 0) if total is not None else 0
    joined = int(total.joined or 0) if total is not None else 0
    return merged, joined, refused


# -- the pipeline ----------------------------------------------------------------------------


@dataclass
class SparkLinkResult:
    """What ``link_records_spark`` found: ``links`` (``idx, patient_id, person_id`` per input
    Patient, persisted), the model, and what each step did and cost."""

    links: DataFrame
    model: LinkageModel
    records: int
    pairs: int
    edges: int
    refused_edges: int
    clusters: int
    blocking: BlockingStats
    seconds: dict[str, float]

    def person_ids(self) -> dict[str, str]:
        """patient_id -> person_id, on the driver (for tests and small runs)."""
        return {row.patient_id: row.person_id for row in self.links.collect()}

    def write_csv(self, out: Path) -> None:
        """``patient_id,person_id`` for every record in input order, as ``write_links``
        writes it: one file, streamed from the executors a partition at a time."""
        out.parent.mkdir(parents=True, exist_ok=True)
        rows = self.links.orderBy("idx").select("patient_id", "person_id").toLocalIterator()
        with out.open("w", encoding="utf-8", newline="") as fh:
            fh.write("patient_id,person_id\n")
            for row in rows:
                fh.write(f"{row.patient_id},{row.person_id}\n")

    def unpersist(self) -> None:
        self.links.unpersist()


def link_records_spark(
    spark: SparkSession,
    patients: str | Path | Sequence[str] | DataFrame,
    model: LinkageModel | None = None,
    threshold: float | None = None,
    rules: Sequence[BlockingRule] = DEFAULT_RULES,
    fields: Sequence[ComparisonField] = DEFAULT_FIELDS,
    on_step: Callable[[str], None] | None = None,
) -> SparkLinkResult:
    """Block, compare, train (unless a trained ``model`` is given), score and cluster the
    Patients of NDJSON files (or of a DataFrame of Patient JSON strings) in Spark.

    As ``link_records``: a given ``model`` brings its own blocking rules and fields, and
    ``threshold`` overrides the model's (the given model is not modified). Each step is
    materialised before the next, so ``seconds`` tells what it cost.
    """
    step = StepClock(on_step)
    seconds = step.seconds
    if model is not None:
        rules, fields = model.blocking, model.fields
    records = read_records_spark(spark, patients)
    n = records.count()
    step("reading")
    plan = _KeyPlan.plan(rules, fields, training=model is None)
    keys, blocks = _key_blocks(spark, records, plan.key_sets)
    stats = _blocking_stats(spark, blocks, rules)
    pairs = _block_pairs(
        spark, keys, blocks, {r: rule.max_block_size for r, rule in enumerate(rules)}
    )
    stats.pairs = pairs.count()
    step("blocking")
    vectors = _compare_pairs(spark, pairs, records, fields).persist(_MEMORY)
    vectors.count()
    pairs.unpersist()
    step("comparing")
    if model is None:
        model = _train(
            spark,
            records,
            n,
            stats.pairs,
            vectors,
            keys,
            blocks,
            plan,
            fields,
            rules,
            threshold or DEFAULT_THRESHOLD,
        )
        step("training")
    elif threshold is not None:
        model = replace(model, threshold=threshold)
    keys.unpersist()
    blocks.unpersist()
    shared_model = spark.sparkContext.broadcast(model)
    edges = _frame(
        spark,
        vectors.rdd.mapPartitions(_edges_partition(shared_model, model.threshold)),
        _EDGES_SCHEMA,
    ).persist(_MEMORY)
    n_edges = edges.count()
    vectors.unpersist()
    step("scoring")
    merged, joined, refused = _cluster(spark, records, edges, model.threshold)
    # A person is numbered by the position of its first record in the input: unique, and
    # stable for a given input order (numbering them densely would need a global sort).
    links = (
        records.select("idx", "patient_id")
        .join(merged.select(F.col("v").alias("idx"), "cluster"), "idx", "left")
        .select(
            "idx",
            "patient_id",
            F.format_string("person-%07d", F.coalesce("cluster", "idx")).alias("person_id"),
        )
        .persist(_MEMORY)
    )
    links.count()
    for frame in (merged, edges, records):
        frame.unpersist()
    shared_model.unpersist()
    step("clustering")
    return SparkLinkResult(
        links=links,
        model=model,
        records=n,
        pairs=stats.pairs,
        edges=n_edges,
        refused_edges=refused,
        clusters=n - joined,
        blocking=stats,
        seconds=seconds,
    )
