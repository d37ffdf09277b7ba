"""Command line: ``python -m bench.registry_eval --country SA --persons N --seed S --out DIR``."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from dataclasses import fields, replace
from pathlib import Path

from .generate import Config, generate
from .perturb import ErrorRates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.registry_eval",
        description="Write an independent evaluation set for the client registry: FHIR R4 "
        "Patients (NDJSON) from a synthetic Saudi/Iranian population, with the truth and the "
        "variation classes of every record.",
    )
    ap.add_argument("--country", choices=("SA", "IR", "mixed"), required=True)
    ap.add_argument("--persons", type=int, required=True, help="number of persons")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes (the output does not depend on it)",
    )
    ap.add_argument(
        "--ref-date",
        type=dt.date.fromisoformat,
        default=dt.date(2025, 12, 31),
        help="the date ages are computed at (ISO, default 2025-12-31)",
    )
    ap.add_argument(
        "--rate",
        action="append",
        default=[],
        metavar="NAME=P",
        help="override one rate of ErrorRates (repeatable), e.g. --rate id_missing=0.2",
    )
    return ap.parse_args(argv)


def rates_from(overrides: list[str]) -> ErrorRates:
    rates = ErrorRates()
    known = {f.name for f in fields(ErrorRates)}
    changes: dict[str, float] = {}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in known:
            raise SystemExit(f"unknown rate {name!r}; known: {', '.join(sorted(known))}")
        p = float(value)
        if not 0.0 <= p <= 1.0:
            raise SystemExit(f"rate {name} must be within [0, 1]")
        changes[name] = p
    return replace(rates, **changes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = Config(
        country=args.country,
        persons=args.persons,
        seed=args.seed,
        ref_date=args.ref_date,
        rates=rates_from(args.rate),
    )
    manifest = generate(cfg, args.out, workers=max(1, args.workers))
    c = manifest["counts"]
    print(
        f"{c['persons']} persons, {c['records']} records ({c['clean_records']} clean) "
        f"in {manifest['_elapsed_seconds']} s -> {args.out}",
        file=sys.stderr,
    )
    for name, n in c["classes"].items():
        print(f"  {name:15s} {n:9d}  {c['class_rates'][name]:.4f}", file=sys.stderr)
    return 0
