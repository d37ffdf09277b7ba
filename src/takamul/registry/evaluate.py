"""Evaluation of a clustering of Patient records against the truth: pairwise precision, recall
and F1 (from the contingency table, never enumerating pairs) and B-cubed precision/recall/F1.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "EvaluationError",
    "Scores",
    "compare_files",
    "read_clusters",
    "score_clusterings",
]


class EvaluationError(ValueError):
    """A links or truth file that cannot be read (missing, empty, or without the columns)."""


@dataclass(frozen=True, slots=True)
class Scores:
    """Pairwise and B-cubed scores of a predicted clustering against the true one."""

    records: int
    true_pairs: int
    predicted_pairs: int
    true_positive_pairs: int
    precision: float
    recall: float
    f1: float
    bcubed_precision: float
    bcubed_recall: float
    bcubed_f1: float
    missing_in_links: int = 0  # truth records absent from the links (scored as singletons)

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _pairs(n: int) -> int:
    return n * (n - 1) // 2


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def score_clusterings(predicted: Mapping[str, Hashable], truth: Mapping[str, Hashable]) -> Scores:
    """Scores of ``predicted`` (record -> cluster) against ``truth`` (record -> person).

    The records are those of ``truth``; a record the prediction lacks is its own cluster (so
    a missing link costs recall), and predicted records unknown to the truth are ignored.
    Pairwise counts come from the contingency table n_ij (records in predicted cluster i and
    true person j): TP = Σ C(n_ij, 2), predicted = Σ_i C(a_i, 2), true = Σ_j C(b_j, 2).
    B-cubed (Bagga & Baldwin 1998) averages over records |C(r) ∩ T(r)| / |C(r)| (precision)
    and / |T(r)| (recall), which is Σ_ij n_ij² / a_i / N and Σ_ij n_ij² / b_j / N.
    """
    missing = 0
    cells: Counter[tuple[Hashable, Hashable]] = Counter()
    for record, person in truth.items():
        cluster = predicted.get(record)
        if cluster is None:
            missing += 1
            cluster = ("__singleton__", record)
        cells[(cluster, person)] += 1
    a: Counter[Hashable] = Counter()
    b: Counter[Hashable] = Counter()
    for (i, j), n in cells.items():
        a[i] += n
        b[j] += n
    n_records = sum(cells.values())
    tp = sum(_pairs(n) for n in cells.values())
    pred = sum(_pairs(n) for n in a.values())
    true = sum(_pairs(n) for n in b.values())
    precision = tp / pred if pred else 1.0  # no predicted pair: no false merge
    recall = tp / true if true else 1.0
    if n_records:
        bp = sum(n * n / a[i] for (i, _), n in cells.items()) / n_records
        br = sum(n * n / b[j] for (_, j), n in cells.items()) / n_records
    else:
        bp = br = 1.0
    return Scores(
        records=n_records,
        true_pairs=true,
        predicted_pairs=pred,
        true_positive_pairs=tp,
        precision=precision,
        recall=recall,
        f1=_f1(precision, recall),
        bcubed_precision=bp,
        bcubed_recall=br,
        bcubed_f1=_f1(bp, br),
        missing_in_links=missing,
    )


def read_clusters(path: Path, id_column: str = "patient_id") -> dict[str, str]:
    """Record -> cluster from a CSV whose first columns are ``patient_id`` and the cluster
    (``person_id``, ``person`` or any second column)."""
    if not path.is_file():
        raise EvaluationError(f"{path}: no such file")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise EvaluationError(f"{path}: empty file (expected a header {id_column},person_id)")
        header = [h.strip().lstrip("\ufeff") for h in header]
        if id_column not in header or len(header) < 2:
            raise EvaluationError(
                f"{path}: header {','.join(header)!r} lacks {id_column!r} and a cluster column"
            )
        id_at = header.index(id_column)
        cluster_at = next(
            (header.index(c) for c in ("person_id", "person", "cluster_id") if c in header),
            1 if id_at == 0 else 0,
        )
        out: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) <= max(id_at, cluster_at):
                raise EvaluationError(f"{path}:{line}: expected {len(header)} columns")
            out[row[id_at]] = row[cluster_at]
    return out


def compare_files(links_path: Path, truth_path: Path) -> Scores:
    """Scores of a links CSV (``patient_id,person_id``) against a truth CSV
    (``patient_id,person``, as the synthetic generator's ``truth/links.csv``)."""
    return score_clusterings(read_clusters(links_path), read_clusters(truth_path))
