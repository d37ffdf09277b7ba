"""Linkage on Spark: on the same data it trains the same model as the local pipeline and,
with the same model, finds the same clusters (the ID-conflict guard included); its links
score as the local ones against the synthetic truth; and the core package never needs Spark.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import SparkSession

from takamul.registry.evaluate import compare_files, read_clusters, score_clusterings
from takamul.registry.linking import LinkResult, link_records, read_records
from takamul.registry.spark import SparkLinkResult, link_records_spark
from takamul.synth import generate, load_config

# The held-out seed of tests/test_registry_linking.py: never used to tune the linker.
HELD_OUT_SEED = 1234


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    """A small local Spark: two cores, four shuffle partitions, no UI. On data this small the
    time goes to query planning and JIT warm-up, not to data, hence adaptive execution and
    whole-stage code generation off and the JVM on its quick (C1) compiler: about half the
    wall time of the defaults, with the same results."""
    with pytest.MonkeyPatch.context() as patch:
        # the executors' Python must import takamul: the interpreter running the tests
        patch.setenv("PYSPARK_PYTHON", sys.executable)
        session = (
            SparkSession.builder.master("local[2]")
            .appName("takamul-registry-test")
            .config("spark.ui.enabled", "false")
            # not ./spark-warehouse in the working directory
            .config("spark.sql.warehouse.dir", str(tmp_path_factory.mktemp("warehouse")))
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "4")
            .config("spark.default.parallelism", "2")
            .config("spark.driver.memory", "1g")
            .config("spark.sql.adaptive.enabled", "false")
            .config("spark.sql.codegen.wholeStage", "false")
            .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
            .getOrCreate()
        )
        session.sparkContext.setLogLevel("ERROR")
        try:
            yield session
        finally:
            session.stop()


def _population(out: Path, country: str) -> Path:
    config = load_config(None, country=country, patients=400, seed=HELD_OUT_SEED, years=1)
    generate(config, out)
    return out


@pytest.fixture(scope="module", params=["SA", "IR"])
def population(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _population(tmp_path_factory.mktemp(f"spark-{request.param}"), request.param)


@pytest.fixture(scope="module")
def linked(spark: SparkSession, population: Path) -> SparkLinkResult:
    """Spark linkage with its own training; Iran's Patients come as a DataFrame of JSON
    lines, Saudi Arabia's as a path, so both inputs are exercised."""
    source = population / "Patient.ndjson"
    if population.name.startswith("spark-IR"):
        return link_records_spark(spark, spark.read.text(str(source)))
    return link_records_spark(spark, source)


def _clusters(person_of: Mapping[str, str]) -> set[frozenset[str]]:
    """A clustering as a partition of patient ids (labels differ between the pipelines)."""
    members: dict[str, set[str]] = defaultdict(set)
    for patient, person in person_of.items():
        members[person].add(patient)
    return {frozenset(m) for m in members.values()}


def _local_links(result: LinkResult) -> dict[str, str]:
    return {r.patient_id: p for r, p in zip(result.records, result.person_ids(), strict=True)}


def test_spark_trains_the_local_model(population: Path, linked: SparkLinkResult) -> None:
    local = link_records(read_records(population / "Patient.ndjson"))
    assert linked.records == len(local.records)
    assert linked.pairs == local.pairs
    assert linked.blocking.pairs_by_rule == local.blocking.pairs_by_rule
    # the same random pairs, session pairs and vectors go into the same EM
    assert np.allclose(linked.model.m, local.model.m, rtol=0, atol=1e-9)
    assert np.allclose(linked.model.u, local.model.u, rtol=0, atol=1e-9)
    assert linked.model.prior == pytest.approx(local.model.prior, abs=1e-9)
    for name, table in local.model.tf.items():
        assert linked.model.tf[name] == pytest.approx(table)
        assert linked.model.tf_chance[name] == pytest.approx(local.model.tf_chance[name])


def test_spark_clusters_equal_local_with_the_same_model(
    population: Path, linked: SparkLinkResult
) -> None:
    records = read_records(population / "Patient.ndjson")
    local = link_records(records, model=linked.model)
    spark_links = linked.person_ids()
    assert _clusters(spark_links) == _clusters(_local_links(local))
    agreement = score_clusterings(spark_links, _local_links(local))
    assert (agreement.precision, agreement.recall) == (1.0, 1.0)
    assert (linked.edges, linked.refused_edges, linked.clusters) == (
        local.edges,
        local.refused_edges,
        local.clusters,
    )


def test_spark_links_against_the_truth(
    population: Path, linked: SparkLinkResult, tmp_path: Path
) -> None:
    out = tmp_path / "links.csv"
    linked.write_csv(out)
    with out.open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["patient_id", "person_id"] and len(rows) == linked.records + 1
    ids = [row[0] for row in rows[1:]]
    assert ids == [r.patient_id for r in read_records(population / "Patient.ndjson")]
    scores = compare_files(out, population / "truth" / "links.csv")
    assert scores == score_clusterings(
        linked.person_ids(), read_clusters(population / "truth" / "links.csv")
    )
    # measured at seed 1234, 400 persons, as the local pipeline: SA P 1.0000 R 0.9912,
    # IR P 1.0000 R 0.9917
    assert scores.missing_in_links == 0
    assert scores.precision >= 0.98, scores
    assert scores.f1 >= 0.95, scores


def test_given_model_and_threshold_with_id_conflicts(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A model trained locally, a threshold so low that chains of false links form: the
    guard refuses the same edges in Spark as locally, and the model is not modified."""
    population = _population(tmp_path_factory.mktemp("spark-low-SA"), "SA")
    records = read_records(population / "Patient.ndjson")
    model = link_records(records).model
    local = link_records(records, model=model, threshold=0.001)
    model.threshold = 0.95  # link_records sets the threshold on the model it is given
    linked = link_records_spark(spark, population / "Patient.ndjson", model=model, threshold=0.001)
    assert model.threshold == 0.95 and linked.model.threshold == 0.001
    assert local.refused_edges > 0
    assert (linked.edges, linked.refused_edges) == (local.edges, local.refused_edges)
    assert _clusters(linked.person_ids()) == _clusters(_local_links(local))


def test_core_package_does_not_need_spark() -> None:
    """``takamul.registry`` never imports pyspark, and without pyspark the Spark module says
    how to install it."""
    probe = (
        "import sys\n"
        "import takamul.registry, takamul.registry.linking\n"
        "assert 'pyspark' not in sys.modules and 'takamul.registry.spark' not in sys.modules\n"
        "sys.modules['pyspark'] = None\n"
        "try:\n"
        "    import takamul.registry.spark\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'takamul[spark]'" in done.stdout


def test_the_link_command_runs_on_spark(
    spark: SparkSession, population: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from takamul.cli import app

    out = tmp_path / "links.csv"
    args = ["mpi", "link", str(population / "Patient.ndjson"), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--spark", "local[2]"])
    assert result.exit_code == 0, result.output
    scores = compare_files(out, population / "truth" / "links.csv")
    assert scores.precision >= 0.98 and scores.f1 >= 0.95, scores
    assert spark.sparkContext._jsc is not None  # the test's session was left running
