"""Derive the client registry's packaged default linkage model from synthetic tuning data.

The server's real-time linking needs trained m, u and λ before a deployment has trained on its
own Patients (``takamul mpi train``). This trains on the synthetic generator's tuning seeds
(Saudi Arabia seed 1, Iran seed 2, never a held-out seed) and writes
``src/takamul/registry/data/default-model.json``. Term-frequency tables are left out: the
server recounts them on the population it indexes.

    python scripts/derive_default_model.py [--persons 3000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import orjson

from takamul.registry.linking import link_records, read_records
from takamul.synth import generate, load_config

OUT = Path(__file__).resolve().parents[1] / "src/takamul/registry/data/default-model.json"
TUNING = (("SA", 1), ("IR", 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--persons", type=int, default=3000)
    args = parser.parse_args()
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for country, seed in TUNING:
            out = Path(tmp) / country
            generate(
                load_config(None, country=country, patients=args.persons, seed=seed, years=1), out
            )
            records.extend(read_records(out / "Patient.ndjson"))
    result = link_records(records)
    model = orjson.loads(result.model.to_json())
    model["tf"] = {}
    model["training"]["data"] = (
        f"takamul synth, {args.persons} persons each of "
        + ", ".join(f"{c} seed {s}" for c, s in TUNING)
        + " (scripts/derive_default_model.py)"
    )
    OUT.write_bytes(orjson.dumps(model, option=orjson.OPT_INDENT_2) + b"\n")
    print(
        f"wrote {OUT}: {len(records):,} records, {result.pairs:,} pairs, λ {result.model.prior:.4f}"
    )


if __name__ == "__main__":
    main()
