"""Name similarity against the synthetic population's truth: records of one person score high,
records of different people low, in Saudi Arabia (Arabic/Latin chains) and Iran (Persian)."""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from pathlib import Path

import pytest

from takamul.registry import best_name_similarity, from_patient
from takamul.synth import generate, load_config

THRESHOLD = 0.85
# Measured on 300 persons (seed 21) and, for calibration, on 5,000 (seed 5): SA same-person
# 0.986 / different 0.0006; IR 0.995 / 0.003 at 0.85. Bounds leave room for the sample.
SAME_MIN = {"SA": 0.95, "IR": 0.97}
DIFFERENT_MAX = 0.01


@pytest.mark.parametrize("country", ["SA", "IR"])
def test_same_person_pairs_separate_from_different_persons(country: str, tmp_path: Path) -> None:
    out = tmp_path / country
    generate(load_config(country=country, patients=300, seed=21, years=1), out)
    with (out / "Patient.ndjson").open(encoding="utf-8") as f:
        records = {r.patient_id: r for r in (from_patient(json.loads(line)) for line in f)}
    person: dict[str, str] = {}
    by_person: dict[str, list[str]] = defaultdict(list)
    with (out / "truth" / "links.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            person[row["patient_id"]] = row["person"]
            by_person[row["person"]].append(row["patient_id"])

    same = [(a, b) for ids in by_person.values() for i, a in enumerate(ids) for b in ids[i + 1 :]]
    rng = random.Random(5)
    ids = sorted(records)
    different: list[tuple[str, str]] = []
    while len(different) < 20_000:
        a, b = rng.sample(ids, 2)
        if person[a] != person[b]:
            different.append((a, b))

    def share(pairs: list[tuple[str, str]]) -> float:
        hits = sum(
            best_name_similarity(records[a].names, records[b].names) >= THRESHOLD for a, b in pairs
        )
        return hits / len(pairs)

    same_share, diff_share = share(same), share(different)
    print(f"{country}: same-person {same_share:.4f} of {len(same)}, different {diff_share:.4f}")
    assert len(same) > 200
    assert same_share >= SAME_MIN[country]
    assert diff_share <= DIFFERENT_MAX
