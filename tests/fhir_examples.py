"""The official FHIR R4 example resources (npm package hl7.fhir.r4.examples 4.0.1) for tests.

Found via $TAKAMUL_R4_EXAMPLES, <repo>/.cache or /tmp/npmx; otherwise fetched once with `npm pack`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import orjson

PACKAGE = "hl7.fhir.r4.examples"
VERSION = "4.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache" / PACKAGE / "package"
# Where a developer may already have unpacked the package by hand.
FALLBACK_DIR = Path("/tmp/npmx/package")

# Files in the package that are not examples: the package manifest, its index and the
# definition bundles the server's own definitions are derived from.
NOT_EXAMPLES = frozenset(
    {
        "package.json",
        ".index.json",
        "Bundle-types.json",
        "Bundle-resources.json",
        "Bundle-searchParams.json",
    }
)


@cache
def examples_dir() -> Path:
    """The unpacked package directory, fetched into <repo>/.cache on first use if nowhere else."""
    configured = os.environ.get("TAKAMUL_R4_EXAMPLES")
    for candidate in (Path(configured) if configured else None, CACHE_DIR, FALLBACK_DIR):
        if candidate is not None and (candidate / "package.json").is_file():
            return candidate
    _fetch(CACHE_DIR)
    return CACHE_DIR


def _fetch(target: Path) -> None:
    """`npm pack` the package and unpack it at ``target``; safe when several workers race."""
    if shutil.which("npm") is None:
        raise RuntimeError(f"npm is needed to fetch {PACKAGE}@{VERSION}; install Node.js/npm")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        subprocess.run(
            ["npm", "pack", "--silent", f"{PACKAGE}@{VERSION}"],
            cwd=tmp,
            check=True,
            capture_output=True,
            timeout=900,
        )
        tarball = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="data")
        try:
            # Atomic: a concurrent worker either sees the whole directory or none of it.
            os.rename(Path(tmp) / "package", target)
        except OSError:
            if not target.is_dir():
                raise


def iter_examples(directory: Path | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(file name, resource) for every example resource file, in file-name order."""
    root = directory or examples_dir()
    for path in sorted(root.glob("*.json")):
        if path.name in NOT_EXAMPLES:
            continue
        data = orjson.loads(path.read_bytes())
        if isinstance(data, dict) and isinstance(data.get("resourceType"), str):
            yield path.name, data
