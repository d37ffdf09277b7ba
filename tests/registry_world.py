"""What the tests of the registry's tables share: registrations from the independent
evaluation generator (``bench.registry_eval``, written apart from the synthetic population the
model was tuned on), two new stores of one kind, and a store opened with a chosen index."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from bench.registry_eval import Config, generate

from takamul.mpi.service import ClientRegistry
from takamul.settings import Settings
from takamul.store import Store
from tests.server import postgres_database


def evaluation_registrations(
    factory: pytest.TempPathFactory, persons: int, seed: int
) -> list[dict[str, Any]]:
    """The generator's registrations of ``persons`` people (several each, with its typing
    errors, other scripts, missing fields and hard negatives)."""
    out = factory.mktemp(f"regeval-{persons}-{seed}")
    generate(Config(country="mixed", persons=persons, seed=seed), out, workers=1)
    return [orjson.loads(line) for line in (out / "patients.ndjson").read_bytes().splitlines()]


@pytest.fixture(params=["sqlite", "postgresql"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two new, empty stores of one kind."""
    if request.param == "sqlite":
        yield (f"sqlite:///{tmp_path / 'a.sqlite'}", f"sqlite:///{tmp_path / 'b.sqlite'}")
        return
    with postgres_database() as a, postgres_database() as b:
        yield a, b


def open_store(url: str, index: str) -> Store:
    """A store whose registry keeps its candidate index in ``index`` ("memory" or "store")."""
    return Store(dataclasses.replace(Settings(database_url=url), registry_index=index))


def registered(url: str, registrations: list[dict[str, Any]]) -> None:
    """A store index's registry on ``url`` links ``registrations`` one by one, and its process
    ends (what a later process finds in the tables)."""
    store = open_store(url, "store")
    try:
        ClientRegistry(store).attach()
        for body in registrations:
            store.write(lambda s, b=body: s.update("Patient", b["id"], b))  # type: ignore[misc]
    finally:
        store.close()
