"""Evaluation of a clustering against the truth: pairwise and B-cubed scores checked against
hand-computed examples, and the CSV reader's errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from takamul.registry.evaluate import EvaluationError, compare_files, score_clusterings

TRUTH = {"a": "P1", "b": "P1", "c": "P1", "d": "P2", "e": "P2", "f": "P3"}
PREDICTED = {"a": "X", "b": "X", "c": "Y", "d": "Y", "e": "Z", "f": "Z"}


def test_hand_computed_example() -> None:
    s = score_clusterings(PREDICTED, TRUTH)
    # true pairs: C(3,2) + C(2,2) = 4; predicted: 3 clusters of 2 = 3; correct: only a-b
    assert (s.true_pairs, s.predicted_pairs, s.true_positive_pairs) == (4, 3, 1)
    assert s.precision == pytest.approx(1 / 3)
    assert s.recall == pytest.approx(1 / 4)
    assert s.f1 == pytest.approx(2 / 7)
    # per record |C∩T|/|C|: a 1, b 1, c ½, d ½, e ½, f ½ ; /|T|: ⅔ ⅔ ⅓ ½ ½ 1
    assert s.bcubed_precision == pytest.approx(4 / 6)
    assert s.bcubed_recall == pytest.approx(11 / 18)
    assert s.bcubed_f1 == pytest.approx(2 * (4 / 6) * (11 / 18) / (4 / 6 + 11 / 18))


def test_perfect_clustering_scores_one() -> None:
    s = score_clusterings({k: f"c-{v}" for k, v in TRUTH.items()}, TRUTH)
    assert (s.precision, s.recall, s.f1) == (1.0, 1.0, 1.0)
    assert (s.bcubed_precision, s.bcubed_recall, s.bcubed_f1) == (1.0, 1.0, 1.0)


def test_all_singletons_have_no_recall() -> None:
    s = score_clusterings({k: k for k in TRUTH}, TRUTH)
    assert s.recall == 0.0 and s.f1 == 0.0
    assert s.precision == 1.0  # no predicted pair, so no false merge
    assert s.bcubed_precision == 1.0 and s.bcubed_recall == pytest.approx(
        (1 / 3 * 3 + 1 / 2 * 2 + 1) / 6
    )


def test_one_big_cluster_has_full_recall() -> None:
    s = score_clusterings({k: "all" for k in TRUTH}, TRUTH)
    assert s.recall == 1.0 and s.precision == pytest.approx(4 / 15)


def test_records_missing_from_links_are_singletons() -> None:
    s = score_clusterings({"a": "X", "b": "X"}, TRUTH)
    assert s.missing_in_links == 4 and s.true_positive_pairs == 1 and s.records == 6


def test_large_cluster_is_not_enumerated() -> None:
    truth = {str(i): "P" for i in range(200_000)}
    s = score_clusterings(truth, truth)
    assert s.true_pairs == 200_000 * 199_999 // 2 and s.f1 == 1.0


def _csv(path: Path, header: str, rows: dict[str, str]) -> Path:
    path.write_text(header + "\n" + "".join(f"{k},{v}\n" for k, v in rows.items()))
    return path


def test_compare_files(tmp_path: Path) -> None:
    links = _csv(tmp_path / "links.csv", "patient_id,person_id", PREDICTED)
    truth = _csv(tmp_path / "truth.csv", "patient_id,person", TRUTH)
    assert compare_files(links, truth) == score_clusterings(PREDICTED, TRUTH)


def test_file_errors(tmp_path: Path) -> None:
    truth = _csv(tmp_path / "truth.csv", "patient_id,person", TRUTH)
    with pytest.raises(EvaluationError, match="no such file"):
        compare_files(tmp_path / "absent.csv", truth)
    bad = _csv(tmp_path / "bad.csv", "id,cluster", PREDICTED)
    with pytest.raises(EvaluationError, match="lacks 'patient_id'"):
        compare_files(bad, truth)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(EvaluationError, match="empty"):
        compare_files(empty, truth)
