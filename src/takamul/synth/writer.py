"""Output: FHIR NDJSON one file per resource type (the Bulk Data layout) and the truth files.

Blocks of people arrive serialised; the writer appends them in block order, so bytes are stable.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from takamul.synth.caregiving import CAREGIVER_COLUMNS
from takamul.synth.followup import STATUS_COLUMNS
from takamul.synth.mentalhealth import MH_COLUMNS
from takamul.synth.referrals import REFERRAL_COLUMNS

__all__ = ["PERSON_COLUMNS", "REGISTRATION_COLUMNS", "BlockOutput", "OutputWriter"]

PERSON_COLUMNS = [
    "person", "household", "role", "group", "nationality", "sex", "birth_date", "age",
    "region_code", "region", "urban", "remote", "latitude", "longitude", "income_quintile",
    "education", "insurance", "disability", "national_id", "mother", "father", "home_facility",
    "travel_km", "conditions", "screened", "diabetes_controlled", "mh_treated", "caregiver",
    "records", "died",
]  # fmt: skip
REGISTRATION_COLUMNS = ["patient_id", "person", "facility", "facility_kind", "script", "variants"]
LINK_COLUMNS = ["patient_id", "person"]


@dataclass(slots=True)
class BlockOutput:
    """One block of people, already serialised; produced in a worker, written by the parent."""

    resources: dict[str, list[bytes]] = field(default_factory=dict)
    persons: list[list[str]] = field(default_factory=list)
    registrations: list[list[str]] = field(default_factory=list)
    programmes: list[list[str]] = field(default_factory=list)  # truth/programme_status.csv
    mental_health: list[list[str]] = field(default_factory=list)  # truth/mh_registry.csv
    referrals: list[list[str]] = field(default_factory=list)  # truth/referrals.csv
    caregivers: list[list[str]] = field(default_factory=list)  # truth/caregivers.csv

    def emit(self, rtype: str, body: dict[str, Any]) -> None:
        self.resources.setdefault(rtype, []).append(orjson.dumps(body))

    def count(self) -> int:
        return sum(len(v) for v in self.resources.values())


class OutputWriter:
    def __init__(self, out_dir: Path) -> None:
        self.out = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "truth").mkdir(exist_ok=True)
        for old in out_dir.glob("*.ndjson"):
            old.unlink()  # a re-run into the same folder must not append to an old population
        self.files: dict[str, IO[bytes]] = {}
        self.counts: dict[str, int] = {}
        self.truth: dict[str, tuple[IO[str], Any]] = {}
        for name, cols in (
            ("persons", PERSON_COLUMNS),
            ("registrations", REGISTRATION_COLUMNS),
            ("links", LINK_COLUMNS),
            ("programme_status", STATUS_COLUMNS),
            ("mh_registry", MH_COLUMNS),
            ("referrals", REFERRAL_COLUMNS),
            ("caregivers", CAREGIVER_COLUMNS),
        ):
            handle = (out_dir / "truth" / f"{name}.csv").open("w", newline="", encoding="utf-8")
            w = csv.writer(handle, lineterminator="\n")
            w.writerow(cols)
            self.truth[name] = (handle, w)

    def emit(self, rtype: str, body: dict[str, Any]) -> None:
        self._write(rtype, [orjson.dumps(body)])

    def _write(self, rtype: str, lines: list[bytes]) -> None:
        handle = self.files.get(rtype)
        if handle is None:
            handle = self.files[rtype] = (self.out / f"{rtype}.ndjson").open("wb")
            self.counts[rtype] = 0
        handle.write(b"\n".join(lines) + b"\n")
        self.counts[rtype] += len(lines)

    def block(self, block: BlockOutput) -> None:
        for rtype in sorted(block.resources):
            self._write(rtype, block.resources[rtype])
        self.truth["persons"][1].writerows(block.persons)
        self.truth["registrations"][1].writerows(block.registrations)
        self.truth["links"][1].writerows([r[0], r[1]] for r in block.registrations)
        self.truth["programme_status"][1].writerows(block.programmes)
        self.truth["mh_registry"][1].writerows(block.mental_health)
        self.truth["referrals"][1].writerows(block.referrals)
        self.truth["caregivers"][1].writerows(block.caregivers)

    def write_json(self, relative: str, value: Any) -> None:
        opts = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
        (self.out / relative).write_bytes(orjson.dumps(value, option=opts) + b"\n")

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()
        for text_handle, _ in self.truth.values():
            text_handle.close()
