"""A server process freezes what its start made (``serving_app``): the cyclic collector's full
passes over the registry's index and the FHIR definitions were 70-390 ms pauses in every worker,
the tail of link on create. Run in a process of its own: a frozen heap stays frozen."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.server import ROOT

PROGRAM = """
import gc, sys
from fastapi.testclient import TestClient
from takamul.api.app import create_app, serving_app
from takamul.settings import Settings

settings = Settings.from_env(database_url=sys.argv[1])
create_app(settings)
built_only = gc.get_freeze_count()
app = serving_app(settings)
frozen = gc.get_freeze_count()
with TestClient(app) as client:
    status = client.get("/fhir/metadata").status_code
    created = client.post(
        "/fhir/Patient",
        json={"resourceType": "Patient", "name": [{"family": "القحطاني", "given": ["محمد"]}]},
    ).status_code
print(built_only, frozen, status, created)
"""


def test_a_serving_app_has_its_start_frozen_and_still_serves(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    subprocess.run(
        [sys.executable, "-m", "takamul.cli", "db", "upgrade", "--db", url],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, url],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        env={"TAKAMUL_AUTH": "false", "PATH": "/usr/bin:/bin"},
    ).stdout.split()
    built_only, frozen, status, created = (int(v) for v in out[-4:])
    assert built_only == 0  # building an app (as the tests do) freezes nothing
    assert frozen > 100_000  # the definitions, validators and routes, at the least
    assert (status, created) == (200, 201)
