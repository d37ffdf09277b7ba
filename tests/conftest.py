"""Fixtures: a running server per store (SQLite and PostgreSQL) and HTTP clients for it, and
a store opened in-process on each (``either_store``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fhirpy import SyncFHIRClient

from takamul.settings import Settings
from takamul.store import Store
from tests.server import postgres_database, running_server

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def either_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty store opened in this process: an SQLite file, then a throwaway PostgreSQL
    database."""
    if request.param == "sqlite":
        opened = Store(Settings(database_url=f"sqlite:///{tmp_path / 'store.sqlite'}"))
        yield opened
        opened.close()
        return
    with postgres_database() as url:
        opened = Store(Settings(database_url=url))
        yield opened
        opened.close()


@pytest.fixture(scope="session", params=BACKENDS)
def fhir_base(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The FHIR base URL of a real server, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("sqlite") / "takamul.sqlite"
        with running_server(f"sqlite:///{path}") as base:
            yield base
    else:
        with postgres_database() as url, running_server(url) as base:
            yield base


@pytest.fixture(scope="session")
def http(fhir_base: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=fhir_base, timeout=60, headers={"Accept": "application/fhir+json"}
    ) as client:
        yield client


@pytest.fixture(scope="session")
def fhir(fhir_base: str) -> SyncFHIRClient:
    """An independent FHIR client library (fhirpy) pointed at the server."""
    return SyncFHIRClient(fhir_base, extra_headers={"Accept": "application/fhir+json"})


# the web application's server, world and browser, shared by the tests/test_web_*.py modules
from tests.web_world import chromium, web_site  # noqa: E402, F401
