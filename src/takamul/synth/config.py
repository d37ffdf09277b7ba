"""Configuration of the synthetic population: shipped defaults, a user file, command-line values.

Every rate and effect size has a documented default in ``data/default-config.json``.
"""

from __future__ import annotations

import copy
import tomllib
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from takamul.synth import tables

__all__ = ["COUNTRIES", "Config", "ConfigError", "default_config", "load_config"]

Config = dict[str, Any]
COUNTRIES = ("SA", "IR")


class ConfigError(ValueError):
    """A configuration value that cannot be used, with the key that holds it."""


@cache
def _default_bytes() -> bytes:
    return resources.files("takamul.synth").joinpath("data/default-config.json").read_bytes()


def default_config() -> Config:
    """A fresh copy of the shipped defaults (callers may mutate it)."""
    loaded: Config = orjson.loads(_default_bytes())
    return loaded


def _merge(base: dict[str, Any], override: dict[str, Any], path: str) -> None:
    for key, value in override.items():
        where = f"{path}.{key}" if path else key
        if key not in base:
            raise ConfigError(f"Unknown configuration key {where!r}; see docs/synth.md")
        if isinstance(base[key], dict) and isinstance(value, dict):
            _merge(base[key], value, where)
        else:
            base[key] = copy.deepcopy(value)


def _read_file(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    loaded: Any = tomllib.loads(data.decode()) if path.suffix == ".toml" else orjson.loads(data)
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the configuration must be an object of keys")
    return loaded


def load_config(path: Path | None = None, **overrides: Any) -> Config:
    """Defaults, then the keys of ``path`` (JSON or TOML), then non-None ``overrides``."""
    config = default_config()
    if path is not None:
        _merge(config, _read_file(path), "")
    _merge(config, {k: v for k, v in overrides.items() if v is not None}, "")
    _check(config)
    _country_defaults(config)
    return config


def _country_defaults(config: Config) -> None:
    """Fill a null ``base`` of a control inequity from the country's published control rate.

    The published rate (``programme_control`` in data/SA.json, data/IR.json) is a population
    mean; the base is the top quintile's rate, so it is the mean over the income ratios.
    """
    published = tables.country(config["country"])["programme_control"]
    for programme in ("diabetes", "hypertension"):
        spec = config["inequities"][f"{programme}_control"]
        if spec["base"] is None:
            mean_rr = sum(spec["income_rr"]) / len(spec["income_rr"])
            spec["base"] = round(published[programme] / mean_rr, 3)


def _check(config: Config) -> None:
    if config["country"] not in COUNTRIES:
        raise ConfigError(f"country must be one of {', '.join(COUNTRIES)}")
    for key in ("patients", "years", "block_persons", "workers"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ConfigError(f"{key} must be a positive integer")
    if len(config["registrations"]["count_weights"]) != 5:
        raise ConfigError("registrations.count_weights must give 5 weights (1 to 5 records)")
    for name, rr in config["conditions"]["income_rr"].items():
        if len(rr) != 5:
            raise ConfigError(f"conditions.income_rr.{name} must give 5 values (quintiles 1-5)")
