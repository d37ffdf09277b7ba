"""Batch linkage: blocking keeps every pair sharing a national ID, EM recovers known m/u,
the model round-trips through JSON, the ID-conflict guard, and end to end on held-out data."""

from __future__ import annotations

import csv
import pickle
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from takamul.registry import from_patient, linking
from takamul.registry.blocking import (
    DEFAULT_RULES,
    KEYS,
    BlockingKeys,
    BlockingRule,
    candidate_pairs,
    record_keys,
)
from takamul.registry.dates import compare_birth_dates
from takamul.registry.evaluate import compare_files
from takamul.registry.levels import Level
from takamul.registry.linking import (
    _TF_KEYS,
    _TF_VALUES,
    COMPARATORS,
    DEFAULT_FIELDS,
    ComparisonField,
    LinkageModel,
    _columnar_levels,
    _Comparer,
    another_owner_of_the_id,
    cluster_pairs,
    comparison_vectors,
    distinct_vectors,
    em_train,
    link_records,
    names_in_either_order,
    read_records,
    write_links,
)
from takamul.synth import generate, load_config

# Held-out discipline: blocking rules, training sessions and the 0.95 threshold were tuned on
# synthetic seeds 1-10 only; these tests evaluate on seed 1234, never looked at while tuning.
HELD_OUT_SEED = 1234


def _patient(pid: str, given: str, family: str, birth: str, nid: str | None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"given": [given], "family": family}],
        "birthDate": birth,
        "gender": "male",
    }
    if nid:
        resource["identifier"] = [
            {"system": "https://takamul.health/fhir/sid/sa-national-id", "value": nid}
        ]
    return resource


@pytest.fixture(scope="module", params=["SA", "IR"])
def population(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(f"mpi-{request.param}")
    config = load_config(None, country=request.param, patients=400, seed=HELD_OUT_SEED, years=1)
    generate(config, out)
    return out


def test_blocking_never_misses_a_shared_national_id(population: Path) -> None:
    records = read_records(population / "Patient.ndjson")
    pairs, _ = candidate_pairs(records, DEFAULT_RULES)
    found = set(map(tuple, pairs.tolist()))
    by_id: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        if record.national_id:
            by_id.setdefault(record.national_id, []).append(index)
    sharing = [p for group in by_id.values() for p in combinations(sorted(group), 2)]
    assert sharing and all(p in found for p in sharing)


def test_blocking_pairs_are_unique_and_ordered() -> None:
    records = [
        from_patient(_patient("a", "Mohammed", "Al-Qahtani", "1980-01-02", "1000000008")),
        from_patient(_patient("b", "محمد", "القحطاني", "1980-01-02", "1000000008")),
        from_patient(_patient("c", "Ali", "Rezaei", "1990-05-06", None)),
    ]
    pairs, stats = candidate_pairs(records)
    assert pairs.tolist() == [[0, 1]]  # met by ID, family + date, given + date: once
    assert stats.pairs == 1 and stats.pairs_by_rule["national_id"] == 1


def test_em_recovers_known_parameters() -> None:
    rng = np.random.default_rng(7)
    m_true = np.array([[0.05, 0.05, 0.1, 0.8], [0.1, 0.0, 0.0, 0.9], [0.02, 0.08, 0.2, 0.7]])
    u_true = np.array([[0.7, 0.2, 0.06, 0.04], [0.95, 0.0, 0.0, 0.05], [0.5, 0.3, 0.15, 0.05]])
    n, lam = 200_000, 0.15
    match = rng.random(n) < lam
    vectors = np.empty((n, 3), dtype=np.int8)
    for f in range(3):
        vectors[match, f] = rng.choice(4, size=int(match.sum()), p=m_true[f])
        vectors[~match, f] = rng.choice(4, size=int((~match).sum()), p=u_true[f])
    vectors[rng.random((n, 3)) < 0.05] = -1  # missing values carry no evidence
    m0 = np.tile([0.1, 0.1, 0.2, 0.6], (3, 1))
    u0 = np.tile([0.6, 0.2, 0.1, 0.1], (3, 1))
    m, u, got_lam, _ = em_train(vectors, m0, u0, pseudo_count=1e-3)
    assert got_lam == pytest.approx(lam, abs=0.01)
    assert np.abs(m - m_true).max() < 0.02
    assert np.abs(u - u_true).max() < 0.02


def test_id_conflict_refuses_a_chain() -> None:
    records = [
        from_patient(_patient("a", "Ali", "Karimi", "1980-01-02", "1000000008")),
        from_patient(_patient("b", "Ali", "Karimi", "1980-01-02", None)),
        from_patient(_patient("c", "Ali", "Karimi", "1980-01-02", "1000000016")),
    ]
    assert all(r.national_id_valid for r in records if r.national_id)
    pairs = np.array([[0, 1], [1, 2], [0, 2]], dtype=np.int32)
    labels, refused = cluster_pairs(records, pairs, np.array([0.99, 0.98, 0.2]), 0.95)
    assert labels[0] == labels[1] != labels[2] and refused == 1


def test_model_round_trips_through_json(population: Path) -> None:
    records = read_records(population / "Patient.ndjson")
    result = link_records(records)
    again = LinkageModel.from_json(result.model.to_json())
    assert np.allclose(again.m, result.model.m) and again.prior == result.model.prior
    assert again.blocking == result.model.blocking and again.fields == result.model.fields
    reused = link_records(records, model=again)
    assert (reused.labels == result.labels).all()


def test_end_to_end_on_held_out_seed(population: Path, tmp_path: Path) -> None:
    records = read_records(population / "Patient.ndjson")
    result = link_records(records)
    out = tmp_path / "links.csv"
    write_links(result, out)
    with out.open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["patient_id", "person_id"] and len(rows) == len(records) + 1
    scores = compare_files(out, population / "truth" / "links.csv")
    # measured at seed 1234, 400 persons: SA P 1.0000 R 0.9912; IR P 1.0000 R 0.9917
    assert scores.missing_in_links == 0
    assert scores.precision >= 0.98, scores
    assert scores.f1 >= 0.95, scores


# -- the fast paths of batch linking give what the per-record definitions give ---------------


def _dict_blocking(records: list[Any], rules: Any) -> set[tuple[int, int]]:
    """Candidate pairs the plain way: a dictionary of key tuples per rule, caps applied."""
    out: set[tuple[int, int]] = set()
    for rule in rules:
        blocks: dict[tuple[str, ...], set[int]] = {}
        for index, record in enumerate(records):
            for key in record_keys(record, rule):
                blocks.setdefault(key, set()).add(index)
        for members in blocks.values():
            if 2 <= len(members) <= rule.max_block_size:
                out.update(combinations(sorted(members), 2))
    return out


def test_numpy_blocking_equals_dictionary_blocking(population: Path) -> None:
    records = read_records(population / "Patient.ndjson")
    rules = (*DEFAULT_RULES, BlockingRule(("family", "birth_year"), 3))  # some blocks capped
    pairs, stats = candidate_pairs(records, rules)
    assert set(map(tuple, pairs.tolist())) == _dict_blocking(records, rules)
    assert stats.capped_blocks.get("family+birth_year", 0) > 0


def test_key_columns_equal_key_functions(population: Path) -> None:
    records = read_records(population / "Patient.ndjson")
    keys = BlockingKeys(records)
    for key, function in KEYS.items():
        column = keys.column(key)
        got = [set() for _ in records]
        for row, value in zip(column.rows.tolist(), column.ids.tolist(), strict=True):
            got[row].add(column.vocabulary[value])
        assert got == [set(function(r)) for r in records], key
    for part, values in _TF_VALUES.items():  # term frequencies count the name key columns
        assert [set(KEYS[_TF_KEYS[part]](r)) for r in records] == [set(values(r)) for r in records]


def test_columnar_comparisons_equal_record_comparators(
    population: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = read_records(population / "Patient.ndjson")
    pairs, _ = candidate_pairs(records)
    rng = np.random.default_rng(3)
    random = np.sort(rng.integers(0, len(records), (3000, 2)), axis=1).astype(np.int32)
    pairs = np.concatenate([pairs, random[random[:, 0] != random[:, 1]]])
    expected = np.array(
        [[COMPARATORS[f.comparator](records[i], records[j]) for f in DEFAULT_FIELDS]
         for i, j in pairs.tolist()],
        dtype=np.int8,
    )  # fmt: skip
    with _Comparer(records, DEFAULT_FIELDS) as compare:
        per_pair = compare(pairs[:100])  # a small set is compared record by record
        compare.workers = 1
        columnar = np.empty_like(expected)
        for f, spec in enumerate(compare.columnar):
            assert spec is not None
            columnar[:, f] = _columnar_levels(compare.column(spec), spec, pairs)
    assert (columnar == expected).all()
    # whole vectors also compare names crosswise and void an ID another person carries
    names = [f.comparator for f in DEFAULT_FIELDS]
    expected = names_in_either_order(records, pairs, expected, names)
    expected = another_owner_of_the_id(expected, names)
    assert (per_pair == expected[:100]).all()
    monkeypatch.setattr(linking, "_PARALLEL_MIN", 1000)  # these pairs count as many
    assert (comparison_vectors(records, pairs, workers=2) == expected).all()  # forked
    assert (comparison_vectors(records, pairs, workers=1) == expected).all()  # in-process
    # the date comparator reads the records' readings: the same as from the keyed dates
    birth = DEFAULT_FIELDS.index(next(f for f in DEFAULT_FIELDS if f.name == "birth_date"))
    keyed = [compare_birth_dates(records[i].birth_date, records[j].birth_date) for i, j in pairs]
    assert (expected[:, birth] == np.array(keyed, dtype=np.int8)).all()


def test_term_frequency_bits_equal_tf_adjustment(population: Path) -> None:
    records = read_records(population / "Patient.ndjson")
    result = link_records(records)
    model = result.model
    pairs, _ = candidate_pairs(records)
    vectors = comparison_vectors(records, pairs)
    got = model.match_weights(vectors, records, pairs) - model.match_weights(vectors)
    expected = np.zeros(len(pairs))
    for f, spec in enumerate(model.fields):
        values = _TF_VALUES.get(spec.comparator)
        if not spec.tf or values is None:
            continue
        for k, (i, j) in enumerate(pairs.tolist()):
            if vectors[k, f] >= 2:
                shared = values(records[i]) & values(records[j])
                expected[k] += model.tf_adjustment(spec.name, shared, shared)
    assert np.allclose(got, expected, atol=1e-12) and (expected != 0).any()


def test_em_distinct_vectors_equal_numpy_unique() -> None:
    rng = np.random.default_rng(5)
    vectors = rng.integers(-1, 4, (5000, 8)).astype(np.int8)
    patterns, counts = distinct_vectors(vectors)
    want, want_counts = np.unique(vectors, axis=0, return_counts=True)
    got = {tuple(p): c for p, c in zip(patterns.tolist(), counts.tolist(), strict=True)}
    assert got == {tuple(p): c for p, c in zip(want.tolist(), want_counts.tolist(), strict=True)}


def test_parallel_reading_keeps_order_and_skips(tmp_path: Path, population: Path) -> None:
    lines = (population / "Patient.ndjson").read_bytes().splitlines()
    other = b'{"resourceType": "Observation", "id": "o1", "status": "final"}'
    path = tmp_path / "mixed.ndjson"
    path.write_bytes(b"\n".join([lines[0], b"", other, *lines[1:], b"   "]) + b"\n")
    linking._SEGMENT, saved = 4096, linking._SEGMENT  # many byte ranges
    try:
        parallel = read_records(path, workers=2)
    finally:
        linking._SEGMENT = saved
    serial = read_records(population / "Patient.ndjson")
    assert parallel == serial
    assert [r.patient_id for r in parallel] == [orjson.loads(x)["id"] for x in lines]
    assert pickle.loads(pickle.dumps(serial)) == serial  # records cross processes pickled


def test_a_comparator_without_columnar_form_runs_per_pair(
    population: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = read_records(population / "Patient.ndjson")
    pairs, _ = candidate_pairs(records)

    def city(a: Any, b: Any) -> Level:
        if not a.city or not b.city:
            return Level.MISSING
        return Level.EXACT if a.city == b.city else Level.DIFFERENT

    monkeypatch.setitem(COMPARATORS, "city", city)
    monkeypatch.setattr(linking, "_PARALLEL_MIN", 1000)
    fields = (*DEFAULT_FIELDS, ComparisonField("city", "city"))
    expected = np.array(
        [[COMPARATORS[f.comparator](records[i], records[j]) for f in fields]
         for i, j in pairs.tolist()],
        dtype=np.int8,
    )  # fmt: skip
    names = [f.comparator for f in fields]
    expected = another_owner_of_the_id(
        names_in_either_order(records, pairs, expected, names), names
    )
    assert (comparison_vectors(records, pairs, fields, workers=2) == expected).all()
    assert (expected[:, -1] == Level.EXACT).any()


def test_names_keyed_family_first_compare_crosswise() -> None:
    """``family: "Rahaf", given: ["ALDOSARI"]`` against رهف الدوسري: both names agree
    crosswise, so both count; one name agreeing crosswise alone changes nothing."""
    records = [
        from_patient(_patient("a", "رهف", "الدوسري", "1990-02-03", None)),
        from_patient(_patient("b", "ALDOSARI", "Rahaf", "1990-02-03", None)),
        from_patient(_patient("c", "Aldosari", "Hamad", "1990-02-03", None)),
    ]
    pairs = np.array([[0, 1], [0, 2]], dtype=np.int32)
    vectors = comparison_vectors(records, pairs)
    given, family = (
        [f.name for f in DEFAULT_FIELDS].index("given"),
        [f.name for f in DEFAULT_FIELDS].index("family"),
    )
    assert vectors[0, given] >= Level.EQUIVALENT and vectors[0, family] >= Level.EQUIVALENT
    assert vectors[1, given] == Level.DIFFERENT and vectors[1, family] == Level.DIFFERENT
