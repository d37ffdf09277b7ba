"""The published tables the generator draws from (countries, names, clinical codes and rates).

Loaded once per process from ``data/*.json``; each file cites its sources.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import orjson

__all__ = ["clinical", "country", "names"]


@cache
def _load(name: str) -> Any:
    return orjson.loads(resources.files("takamul.synth").joinpath(f"data/{name}").read_bytes())


def country(code: str) -> dict[str, Any]:
    table: dict[str, Any] = _load(f"{code}.json")
    return table


def names() -> dict[str, Any]:
    table: dict[str, Any] = _load("names.json")
    return table


def clinical() -> dict[str, Any]:
    table: dict[str, Any] = _load("clinical.json")
    return table
