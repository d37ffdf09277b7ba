"""The client registry over a bulk-loaded shared record: start-up linking (one by one and as a
batch), ``takamul mpi link --db`` and ``takamul mpi train``, scored against the synthetic truth
on a held-out seed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from takamul.bulk.load import load_paths
from takamul.cli import app
from takamul.fhir.validation import validate_resource
from takamul.mpi.schema import mpi_member, mpi_model
from takamul.mpi.service import ClientRegistry
from takamul.registry.evaluate import read_clusters, score_clusterings
from takamul.settings import Settings
from takamul.store.repository import Store
from takamul.store.schema import resource
from takamul.synth import generate, load_config

HELD_OUT_SEED = 1234  # never used to tune the registry (docs/registry.md)


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mpi-store-sa")
    generate(load_config(None, country="SA", patients=300, seed=HELD_OUT_SEED, years=1), out)
    return out


@pytest.fixture
def loaded(population: Path, tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'takamul.sqlite'}"
    store = Store(Settings(database_url=url, export_dir=tmp_path / "exports"))
    load_paths(store, [population / "Patient.ndjson"], tmp_path / "errors.ndjson", workers=0)
    yield store
    store.close()


@pytest.mark.parametrize("batch_from", [10**9, 1], ids=["one-by-one", "batch"])
def test_start_up_links_a_bulk_loaded_record(
    loaded: Store, population: Path, batch_from: int
) -> None:
    registry = ClientRegistry(loaded)
    linked = registry.attach(batch_from=batch_from)
    truth = read_clusters(population / "truth" / "links.csv")
    with loaded.reading() as s:
        members = dict(
            s.conn.execute(select(mpi_member.c.patient_id, mpi_member.c.person_id)).all()
        )
    # the memory mirror (SQLite's default) holds what the tables hold
    assert registry.membership.member_of == members
    assert linked == len(truth) == len(members)
    scores = score_clusterings(members, truth)
    assert scores.precision >= 0.98 and scores.f1 >= 0.95, scores
    with loaded.reading() as s:
        persons = s.conn.execute(
            select(func.count())
            .select_from(resource)
            .where(resource.c.res_type == "Person", resource.c.deleted.is_(False))
        ).scalar_one()
    assert persons == len(set(members.values()))
    # the golden records are written trusted (not validated again): their shape checked here
    with loaded.reading() as s:
        golden = [
            orjson.loads(content)
            for content in s.conn.execute(
                select(resource.c.content).where(resource.c.res_type == "Person").limit(200)
            ).scalars()
        ]
    assert golden and all(
        [i for i in validate_resource(body, "Person") if i.severity == "error"] == []
        for body in golden
    )
    # a second start finds every Patient linked already
    again = ClientRegistry(loaded)
    assert again.attach() == 0 and again.membership.member_of == members


def test_link_and_train_commands_on_the_shared_record(
    loaded: Store, population: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    url = loaded.settings.database_url
    out = tmp_path / "links.csv"
    result = runner.invoke(app, ["mpi", "link", "--db", url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    scores = score_clusterings(read_clusters(out), read_clusters(population / "truth/links.csv"))
    assert scores.precision >= 0.98 and scores.f1 >= 0.95, scores
    result = runner.invoke(app, ["mpi", "train", "--db", url])
    assert result.exit_code == 0, result.output
    with loaded.reading() as s:
        assert s.conn.execute(select(func.count()).select_from(mpi_model)).scalar_one() == 1
    assert ClientRegistry(loaded).model.training["records"] == len(read_clusters(out))


def test_link_needs_exactly_one_input(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["mpi", "link", "--out", str(tmp_path / "x.csv")])
    assert result.exit_code == 2
