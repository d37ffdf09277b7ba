"""Batch linkage: blocking keeps every pair sharing a national ID, EM recovers known m/u,
the model round-trips through JSON, the ID-conflict guard, and end to end on held-out data."""

from __future__ import annotations

import csv
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from takamul.registry import from_patient
from takamul.registry.blocking import DEFAULT_RULES, candidate_pairs
from takamul.registry.evaluate import compare_files
from takamul.registry.linking import (
    LinkageModel,
    cluster_pairs,
    em_train,
    link_records,
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
