"""A real Takamul server in a subprocess, on SQLite or PostgreSQL, for tests over HTTP."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = os.environ.get(
    "TAKAMUL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


# Test servers listen on ports below the kernel's ephemeral range (32768-60999 here), each
# pytest-xdist worker in a block of its own. Asking the kernel for a free port (bind to 0) let
# two workers be handed the same one in the seconds before either server bound it: a test then
# talked to another test's server (CI saw a 401 from a server with auth on).
_PORTS_FROM, _PORTS_TO = 20000, 32000
_BLOCK = 1500
_ports: Iterator[int] | None = None  # this worker's block, round and round


def _worker_block() -> range | None:
    """This xdist worker's block of ports, or None outside xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not worker[2:].isdigit():
        return None
    index = int(worker[2:]) % ((_PORTS_TO - _PORTS_FROM) // _BLOCK)
    first = _PORTS_FROM + index * _BLOCK
    return range(first, first + _BLOCK)


def free_port() -> int:
    """A port no other test process will be given, and free now."""
    global _ports
    block = _worker_block()
    if block is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    if _ports is None:
        _ports = itertools.cycle(block)
    for port in itertools.islice(_ports, len(block)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # a server of an earlier test, or a connection closing: the next one
            return port
    raise RuntimeError(
        f"no free port in {block.start}-{block.stop - 1}: are servers of earlier tests left "
        "running?"
    )


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    import psycopg

    name = f"takamul_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def running_server(
    db_url: str, env: dict[str, str] | None = None, workers: int = 1
) -> Iterator[str]:
    """Start ``takamul serve`` (with ``workers`` processes) on a free port; yield its FHIR base
    URL."""
    port = free_port()
    export_dir = tempfile.mkdtemp(prefix="takamul-export-")
    cmd = [sys.executable, "-m", "takamul.cli", "serve", "--db", db_url, "--port", str(port)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        # protocol tests run an open server; the security tests pass TAKAMUL_AUTH=true
        env={
            **os.environ,
            "TAKAMUL_EXPORT_DIR": export_dir,
            "TAKAMUL_AUTH": "false",
            **(env or {}),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        _wait(base, proc)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{out}")
        try:
            if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not start within 60 s")
