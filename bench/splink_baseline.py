"""Splink with a generic person configuration, as a baseline for the registry benchmark.

    python bench/splink_baseline.py DATA_FOLDER LINKS.csv

Reads ``patients.ndjson``, flattens each Patient to the columns a generic Splink person model
uses (first name, surname, date of birth, national ID, phone, sex; the first HumanName,
lower-cased, no transliteration: a generic configuration knows no Arabic), trains it the way
Splink's documentation does (u by random sampling, m by EM on two blocking rules, the prior
from deterministic rules) and writes ``patient_id,person_id`` for every record, clustered at
match probability 0.95 (Takamul's threshold).
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import splink.comparison_library as cl
from splink import DuckDBAPI, Linker, SettingsCreator, block_on

THRESHOLD = 0.95


def _digits(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    digits = re.sub(r"\D", "", value)
    return digits[-9:] or None  # the subscriber number, whatever prefix was keyed


def flatten(patient: dict[str, Any]) -> dict[str, Any]:
    name = (patient.get("name") or [{}])[0]
    given = name.get("given") or []
    family = name.get("family")
    if not given and not family and name.get("text"):
        words = str(name["text"]).split()
        given, family = words[:1], words[-1] if len(words) > 1 else None
    ni = next(
        (
            i.get("value")
            for i in patient.get("identifier") or []
            if any(c.get("code") == "NI" for c in (i.get("type") or {}).get("coding") or [])
        ),
        None,
    )
    phone = next(
        (t.get("value") for t in patient.get("telecom") or [] if t.get("system") == "phone"),
        None,
    )
    return {
        "unique_id": patient["id"],
        "first_name": str(given[0]).lower() if given else None,
        "surname": str(family).lower() if family else None,
        "dob": patient.get("birthDate") if len(patient.get("birthDate") or "") == 10 else None,
        "national_id": ni,
        "phone": _digits(phone),
        "sex": patient.get("gender"),
    }


def main() -> None:
    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    rows = [flatten(orjson.loads(line)) for line in (folder / "patients.ndjson").open("rb")]
    frame = pd.DataFrame(rows)
    settings = SettingsCreator(
        link_type="dedupe_only",
        comparisons=[
            cl.NameComparison("first_name"),
            cl.NameComparison("surname"),
            cl.DateOfBirthComparison("dob", input_is_string=True),
            cl.ExactMatch("national_id"),
            cl.ExactMatch("phone"),
            cl.ExactMatch("sex"),
        ],
        blocking_rules_to_generate_predictions=[
            block_on("national_id"),
            block_on("dob"),
            block_on("first_name", "surname"),
            block_on("phone"),
        ],
        retain_intermediate_calculation_columns=False,
    )
    db_api = DuckDBAPI()
    linker = Linker(db_api.register(frame), settings)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("national_id", "dob")], recall=0.8
    )
    linker.training.estimate_u_using_random_sampling(max_pairs=2e6)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("dob"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("national_id"))
    predictions = linker.inference.predict(threshold_match_probability=0.5)
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
        predictions, threshold_match_probability=THRESHOLD
    ).as_pandas_dataframe()
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient_id", "person_id"])
        for uid, cluster in zip(clusters["unique_id"], clusters["cluster_id"], strict=True):
            writer.writerow([uid, cluster])


if __name__ == "__main__":
    main()
