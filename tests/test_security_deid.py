"""De-identified extracts: keyed pseudonyms, per-person date shifts, generalisation, the policy's
checks, k-anonymity (refusal and suppression), the ``deid`` command on a synthetic population,
and that no direct identifier of the input survives anywhere in the output."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import stat
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from typer.testing import CliRunner

from takamul.security.deid import (
    DEID_KEY_ENV,
    DEID_KEY_FILE_ENV,
    Deidentifier,
    DeidError,
    DeidFormat,
    DeidKey,
    DeidPolicy,
    KAnonymityError,
    deid_app,
    deidentify,
    load_key,
    run_deid,
)
from takamul.settings import Settings
from takamul.store import Store
from takamul.views import compile_view
from takamul.views.evaluate import CompiledView
from takamul.views.source import iter_ndjson

KEY = DeidKey(b"test key: thirty-two bytes or more, never in output")
OTHER_KEY = DeidKey(b"another key, also at least thirty-two bytes long")
TODAY = date(2025, 1, 1)
NATIONAL_ID = "https://takamul.health/fhir/sid/sa-national-id"
REGION_EXT = "https://takamul.health/fhir/StructureDefinition/region"
NATIONALITY_EXT = "http://hl7.org/fhir/StructureDefinition/patient-nationality"
GEO_EXT = "http://hl7.org/fhir/StructureDefinition/geolocation"

PATIENT_VIEW: dict[str, Any] = {
    "resourceType": "ViewDefinition",
    "name": "patients",
    "resource": "Patient",
    "status": "active",
    "select": [
        {
            "column": [
                {"name": "id", "path": "getResourceKey()"},
                {
                    "name": "national_id",
                    "path": f"identifier.where(system='{NATIONAL_ID}').value.first()",
                },
                {"name": "mrn", "path": "identifier.where(type.coding.code='MR').value.first()"},
                {"name": "name", "path": "name.where(use='official').text.first()"},
                {"name": "latin_name", "path": "name.where(use='usual').text.first()"},
                {"name": "phone", "path": "telecom.where(system='phone').value.first()"},
                {"name": "gender", "path": "gender"},
                {"name": "birth_date", "path": "birthDate"},
                {
                    "name": "region",
                    "path": f"extension('{REGION_EXT}').value.ofType(Coding).display.first()",
                },
                {
                    "name": "nationality",
                    "path": f"extension('{NATIONALITY_EXT}').extension('code')"
                    ".value.ofType(CodeableConcept).coding.code.first()",
                },
                {"name": "city", "path": "address.city.first()"},
                {"name": "postal_code", "path": "address.postalCode.first()"},
                {"name": "address_line", "path": "address.line.first()"},
                {
                    "name": "latitude",
                    "path": f"address.extension('{GEO_EXT}').extension('latitude')"
                    ".value.ofType(decimal).first()",
                },
            ]
        }
    ],
}

PATIENT_POLICY: dict[str, Any] = {
    "identifiers": {"id": "Patient", "national_id": "national-id", "mrn": "mrn"},
    "person": "id",
    "birth_dates": {"birth_date": "age_band_10"},
    "age_reference": "2025-01-01",
    "places": {
        "region": "keep",
        "postal_code": {"truncate": 2},
        "latitude": {"round": 1},
        "city": "drop",
    },
    "drop": ["name", "latin_name", "phone", "address_line"],
    "keep": ["gender", "nationality"],
    "quasi_identifiers": ["birth_date", "gender", "region"],
    "k": 2,
}

ENCOUNTER_VIEW: dict[str, Any] = {
    "resourceType": "ViewDefinition",
    "name": "encounters",
    "resource": "Encounter",
    "status": "active",
    "select": [
        {
            "column": [
                {"name": "id", "path": "getResourceKey()"},
                {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
                {"name": "start", "path": "period.start"},
                {"name": "end", "path": "period.end"},
                {"name": "class", "path": "class.code"},
            ]
        }
    ],
}

ENCOUNTER_POLICY: dict[str, Any] = {
    "identifiers": {"id": "Encounter", "patient": "Patient"},
    "person": "patient",
    "dates": ["start", "end"],
    "date_shift_days": 30,
    "keep": ["class"],
    "quasi_identifiers": ["class"],
    "k": 2,
}


def _patient(
    pid: str,
    national_id: str,
    name: str,
    gender: str,
    birth: str,
    region: str,
    postal: str = "11564",
    phone: str = "+966500000000",
) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "extension": [
            {"url": REGION_EXT, "valueCoding": {"code": "01", "display": region}},
            {
                "url": NATIONALITY_EXT,
                "extension": [
                    {
                        "url": "code",
                        "valueCodeableConcept": {
                            "coding": [{"system": "urn:iso:std:iso:3166", "code": "SA"}]
                        },
                    }
                ],
            },
        ],
        "identifier": [
            {"system": NATIONAL_ID, "value": national_id},
            {
                "type": {"coding": [{"code": "MR"}]},
                "system": "https://x/mrn",
                "value": f"MRN-{pid}",
            },
        ],
        "name": [
            {"use": "official", "text": name, "family": name.split()[-1]},
            {"use": "usual", "text": f"{name} Latin"},
        ],
        "telecom": [{"system": "phone", "value": phone}],
        "gender": gender,
        "birthDate": birth,
        "address": [
            {
                "extension": [
                    {
                        "url": GEO_EXT,
                        "extension": [
                            {"url": "latitude", "valueDecimal": 24.71361},
                            {"url": "longitude", "valueDecimal": 46.67531},
                        ],
                    }
                ],
                "line": ["12 King Fahd Road"],
                "city": "Riyadh",
                "postalCode": postal,
                "country": "SA",
            }
        ],
    }


PATIENTS = [
    _patient("p1", "1000000001", "Layla Noor Haddad", "female", "1980-05-17", "Riyadh"),
    _patient("p2", "1000000002", "Fahd Ali Alsahli", "male", "1983-01-02", "Riyadh"),
    _patient("p3", "1000000003", "Sara Omar Alqahtani", "female", "1982-11-30", "Riyadh"),
    _patient("p4", "1000000004", "Omar Badr Alharbi", "male", "1981-07-07", "Riyadh"),
    _patient("p5", "1000000005", "Huda Saad Alotaibi", "female", "1930-02-02", "Makkah"),
]


def _encounter(eid: str, patient: str, start: str, end: str, cls: str = "AMB") -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"code": cls},
        "subject": {"reference": f"Patient/{patient}"},
        "period": {"start": start, "end": end},
    }


ENCOUNTERS = [
    _encounter("e1", "p1", "2020-06-27T13:34:00+03:00", "2020-06-27T14:34:00+03:00"),
    _encounter("e2", "p1", "2020-08-28", "2020-08-30"),
    _encounter("e3", "p2", "2021-01-15T08:00:00Z", "2021-01-16T09:30:00Z"),
    _encounter("e4", "p2", "2021-03", "2021-03"),
    _encounter("e5", "p3", "2019-12-31T23:00:00+03:00", "2020-01-01T01:00:00+03:00"),
]


def _view(raw: dict[str, Any]) -> CompiledView:
    return compile_view(raw)


def _policy(raw: dict[str, Any], **changes: Any) -> DeidPolicy:
    return DeidPolicy.from_dict({**raw, **changes})


def _patients(
    key: DeidKey = KEY, resources: list[dict[str, Any]] | None = None, **changes: Any
) -> list[dict[str, Any]]:
    rows, _ = deidentify(
        _view(PATIENT_VIEW),
        resources or PATIENTS,
        _policy(PATIENT_POLICY, **changes),
        key,
        suppress=True,
    )
    return rows


# -- the key ----------------------------------------------------------------------------------


def test_a_key_of_at_least_32_bytes_is_required(tmp_path: Path) -> None:
    with pytest.raises(DeidError, match="no de-identification key"):
        load_key(environ={})
    short = "only-twenty-bytes-ok"
    with pytest.raises(DeidError, match="20 bytes; at least 32") as info:
        load_key(environ={DEID_KEY_ENV: short})
    assert short not in str(info.value)
    secret = "s" * 40
    assert load_key(environ={DEID_KEY_ENV: secret}).key_id == DeidKey(secret.encode()).key_id
    key_file = tmp_path / "deid.key"
    key_file.write_text(secret + "\n")
    from_file = load_key(key_file, environ={})
    assert from_file.key_id == DeidKey(secret.encode()).key_id  # the newline is not key
    assert load_key(environ={DEID_KEY_FILE_ENV: str(key_file)}).key_id == from_file.key_id
    assert secret not in repr(from_file) and from_file.key_id in repr(from_file)
    with pytest.raises(TypeError):
        pickle.dumps(from_file)
    with pytest.raises(DeidError, match="cannot read the key file"):
        load_key(tmp_path / "missing.key", environ={})


# -- pseudonyms ---------------------------------------------------------------------------------


def test_pseudonyms_are_stable_keyed_and_not_reversible() -> None:
    first, again = _patients(), _patients()
    assert first == again
    other = _patients(OTHER_KEY)
    by_column = {c: [r[c] for r in first] for c in ("id", "national_id", "mrn")}
    for column, values in by_column.items():
        assert all(len(v) == 32 and int(v, 16) >= 0 for v in values), column
        assert len(set(values)) == len(values), column
        assert not set(values) & {r[column] for r in other}, column  # another key, others
    # Without the key, hashing every candidate value finds none of the pseudonyms.
    candidates = [p["id"] for p in PATIENTS] + [f"Patient/{p['id']}" for p in PATIENTS]
    candidates += [p["identifier"][0]["value"] for p in PATIENTS]
    guesses = set()
    for value in candidates:
        for algo in (hashlib.sha256, hashlib.sha1, hashlib.md5):
            guesses.add(algo(value.encode()).hexdigest()[:32])
        for wrong in (b"", b"secret", b"takamul"):
            guesses.add(hmac.new(wrong, value.encode(), hashlib.sha256).hexdigest()[:32])
    produced = {v for values in by_column.values() for v in values}
    assert not produced & guesses


def test_one_patient_has_one_pseudonym_across_extracts() -> None:
    patients = _patients(quasi_identifiers=["gender"])
    encounters, _ = deidentify(
        _view(ENCOUNTER_VIEW), ENCOUNTERS, _policy(ENCOUNTER_POLICY), KEY, suppress=True
    )
    deid = Deidentifier(_view(PATIENT_VIEW), _policy(PATIENT_POLICY), KEY, TODAY)
    pseudonym = {p["id"]: deid.pseudonym(p["id"], "Patient") for p in PATIENTS}
    assert {r["id"] for r in patients} == set(pseudonym.values())
    assert {r["patient"] for r in encounters} == {pseudonym["p1"], pseudonym["p2"], pseudonym["p3"]}
    # A reference, a versioned absolute URL and a bare id are the same patient ...
    assert deid.pseudonym("Patient/p1", "Patient") == pseudonym["p1"]
    assert deid.pseudonym("https://h/fhir/Patient/p1/_history/3", "Patient") == pseudonym["p1"]
    # ... but the same text in another namespace is another pseudonym.
    assert deid.pseudonym("p1", "mrn") != pseudonym["p1"]


# -- dates ------------------------------------------------------------------------------------


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text) if "T" in text else datetime.fromisoformat(text + "T00")


def test_dates_shift_per_person_and_keep_intervals() -> None:
    policy = _policy(ENCOUNTER_POLICY)
    rows, _ = deidentify(_view(ENCOUNTER_VIEW), ENCOUNTERS, policy, KEY, suppress=True)
    deid = Deidentifier(_view(ENCOUNTER_VIEW), policy, KEY, TODAY)
    by_id = {deid.pseudonym(e["id"], "Encounter"): e for e in ENCOUNTERS}
    shifts: dict[str, set[int]] = defaultdict(set)
    for row in rows:
        source = by_id[row["id"]]
        start, end = source["period"]["start"], source["period"]["end"]
        if len(start) < 10:  # "2021-03": shifted at month precision
            assert len(row["start"]) == 7 and len(row["end"]) == 7
            continue
        shift = (_instant(row["start"]) - _instant(start)).days
        shifts[row["patient"]].add(shift)
        assert 1 <= abs(shift) <= 30
        # The same interval, the same clock time and offset.
        assert _instant(row["end"]) - _instant(row["start"]) == _instant(end) - _instant(start)
        assert row["start"][10:] == start[10:]
    assert all(len(s) == 1 for s in shifts.values())  # one shift per person
    assert deid.shift_days("p1") == next(iter(shifts[deid.pseudonym("p1", "Patient")]))
    # The person's shift is the same in another extract (a condition onset here).
    condition_view = {
        "resourceType": "ViewDefinition",
        "resource": "Condition",
        "status": "active",
        "select": [
            {
                "column": [
                    {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
                    {"name": "onset", "path": "onset.ofType(dateTime)"},
                ]
            }
        ],
    }
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "onsetDateTime": "2020-06-01",
    }
    onset, _ = deidentify(
        _view(condition_view),
        [condition],
        DeidPolicy.from_dict(
            {
                "identifiers": {"patient": "Patient"},
                "person": "patient",
                "dates": ["onset"],
                "date_shift_days": 30,
                "k": 2,
            }
        ),
        KEY,
        suppress=True,
        k=2,
    )
    assert onset == []  # one person alone is below k=2 ...
    rows_c, report = deidentify(
        _view(condition_view),
        [condition, {**condition, "id": "c2", "subject": {"reference": "Patient/p2"}}],
        DeidPolicy.from_dict(
            {
                "identifiers": {"patient": "Patient"},
                "person": "patient",
                "dates": ["onset"],
                "date_shift_days": 30,
            }
        ),
        KEY,
        k=2,
    )
    assert report.rows_out == 2  # ... two persons pass
    mine = next(r for r in rows_c if r["patient"] == deid.pseudonym("p1", "Patient"))
    assert (date.fromisoformat(mine["onset"]) - date(2020, 6, 1)).days == deid.shift_days("p1")


def test_shifts_spread_over_the_range_and_differ_between_people() -> None:
    deid = Deidentifier(_view(ENCOUNTER_VIEW), _policy(ENCOUNTER_POLICY), KEY, TODAY)
    shifts = [deid.shift_days(f"person-{i}") for i in range(2000)]
    assert 0 not in shifts and min(shifts) == -30 and max(shifts) == 30
    assert len(set(shifts)) == 60
    assert max(Counter(shifts).values()) < 2000 / 60 * 2
    other = Deidentifier(_view(ENCOUNTER_VIEW), _policy(ENCOUNTER_POLICY), OTHER_KEY, TODAY)
    assert [other.shift_days(f"person-{i}") for i in range(2000)] != shifts


def test_unreadable_dates_and_dates_without_a_person_are_dropped() -> None:
    bad = [
        _encounter("e9", "p1", "not a date", "2020-13-01"),
        {**_encounter("e8", "p2", "2020-01-01", "2020-01-02"), "subject": None},
        _encounter("e7", "p3", "2020", "2020-02"),
    ]
    rows, _ = deidentify(_view(ENCOUNTER_VIEW), bad, _policy(ENCOUNTER_POLICY), KEY, k=2)
    periods = [(r["start"], r["end"]) for r in rows]
    assert periods.count((None, None)) == 2  # unreadable, and no person to shift by
    years = [s for s in periods if s[0] is not None]
    assert len(years) == 1 and len(years[0][0]) == 4 and len(years[0][1]) == 7


# -- generalisation ---------------------------------------------------------------------------


def test_generalisation_of_age_and_place() -> None:
    rows = {r["national_id"]: r for r in _patients(k=2)}
    deid = Deidentifier(_view(PATIENT_VIEW), _policy(PATIENT_POLICY), KEY, TODAY)
    layla = rows[deid.pseudonym("1000000001", "national-id")]
    assert set(layla) == {
        "id",
        "national_id",
        "mrn",
        "gender",
        "birth_date",
        "region",
        "nationality",
        "postal_code",
        "latitude",
    }
    assert layla["birth_date"] == "40-49"  # born 1980-05-17, 44 on 2025-01-01
    assert layla["postal_code"] == "11"
    assert layla["latitude"] == 24.7
    assert layla["region"] == "Riyadh" and layla["gender"] == "female"

    def birth(rule: str, born: str) -> Any:
        policy = _policy(PATIENT_POLICY, birth_dates={"birth_date": rule})
        d = Deidentifier(_view(PATIENT_VIEW), policy, KEY, TODAY)
        return d._birth_rule(rule)(born)

    assert birth("year", "1980-05-17") == "1980"
    assert birth("year", "1930-02-02") == "<=1935"  # 94: top-coded
    assert birth("age", "1980-05-17") == 44
    assert birth("age", "1980-01-01") == 45
    assert birth("age", "1930-02-02") == 90
    assert birth("age_band_5", "1980-05-17") == "40-44"
    assert birth("age_band_5", "1930-02-02") == "90+"
    assert birth("age_band_5", "2024-12") == "0-4"
    assert birth("age_band_10", "1936-01-01") == "80-89"
    assert birth("age_band_5", "not a date") is None

    mapped = _patients(
        quasi_identifiers=["gender"],
        places={
            "region": {"map": {"Riyadh": "Central"}, "default": "Other"},
            "postal_code": "drop",
            "latitude": {"round": 0},
            "city": "drop",
        },
    )
    assert Counter(r["region"] for r in mapped) == {"Central": 4, "Other": 1}
    assert all("postal_code" not in r and r["latitude"] == 25.0 for r in mapped)


# -- the policy ---------------------------------------------------------------------------------


def test_the_policy_must_classify_every_column_exactly_once(tmp_path: Path) -> None:
    view = _view(PATIENT_VIEW)

    def problem(**changes: Any) -> str:
        with pytest.raises(DeidError) as info:
            Deidentifier(view, _policy(PATIENT_POLICY, **changes), KEY, TODAY)
        return str(info.value)

    assert "does not classify: ['phone']" in problem(drop=["name", "latin_name", "address_line"])
    assert "does not have: ['nmae']" in problem(
        drop=["nmae", "name", "latin_name", "phone", "address_line"]
    )
    assert "more than once" in problem(keep=["gender", "nationality", "phone"])
    assert "must be one of the identifier columns" in problem(person="gender")
    assert "is dropped" in problem(quasi_identifiers=["city"])
    assert "is an identifier" in problem(quasi_identifiers=["national_id"])
    assert "not a column" in problem(quasi_identifiers=["age"])
    enc = _view(ENCOUNTER_VIEW)
    with pytest.raises(DeidError, match="name the identifier column of the person"):
        Deidentifier(enc, _policy(ENCOUNTER_POLICY, person=None), KEY, TODAY)

    for bad in (
        {"identifers": ["id"]},
        {"k": 1},
        {"date_shift_days": 0},
        {"birth_dates": {"birth_date": "decade"}},
        {"places": {"postal_code": {"truncate": 0}}},
        {"places": {"postal_code": {"truncate": 2, "round": 1}}},
        {"places": {"region": "hide"}},
        {"age_reference": "January"},
    ):
        with pytest.raises(DeidError):
            DeidPolicy.from_dict({**PATIENT_POLICY, **bad})

    toml = tmp_path / "policy.toml"
    toml.write_text(
        """
person = "id"
birth_dates = { birth_date = "age_band_10" }
age_reference = 2025-01-01
drop = ["name", "latin_name", "phone", "address_line"]
keep = ["gender", "nationality"]
quasi_identifiers = ["birth_date", "gender", "region"]
k = 2

[identifiers]
id = "Patient"
national_id = "national-id"
mrn = "mrn"

[places]
region = "keep"
postal_code = { truncate = 2 }
latitude = { round = 1 }
city = "drop"
"""
    )
    as_json = tmp_path / "policy.json"
    as_json.write_text(json.dumps(PATIENT_POLICY))
    assert DeidPolicy.load(toml) == DeidPolicy.load(as_json)
    assert DeidPolicy.from_dict(DeidPolicy.load(toml).to_dict()) == DeidPolicy.load(toml)


def test_kept_columns_that_look_identifying_are_warned_about() -> None:
    view = _view(ENCOUNTER_VIEW)
    policy = _policy(ENCOUNTER_POLICY, dates=["end"], keep=["class", "start"])
    deid = Deidentifier(view, policy, KEY, TODAY)
    assert any("'start' is kept as is but holds dateTime" in w for w in deid.warnings)
    deid = Deidentifier(_view(PATIENT_VIEW), _policy(PATIENT_POLICY), KEY, TODAY)
    assert deid.warnings == []  # nationality is not a national id


# -- k-anonymity --------------------------------------------------------------------------------


def test_k_anonymity_refuses_then_suppresses() -> None:
    view, policy = _view(PATIENT_VIEW), _policy(PATIENT_POLICY)
    with pytest.raises(KAnonymityError) as info:
        deidentify(view, PATIENTS, policy, KEY)
    report = info.value.report
    assert not report.ok and report.unit == "persons"
    # 40-49/female/Riyadh has 2 (p1, p3), 40-49/male/Riyadh 2 (p2, p4), 90+/female/Makkah 1.
    assert report.classes == 3 and report.min_size == 1
    assert report.small_classes == (
        ({"birth_date": "90+", "gender": "female", "region": "Makkah"}, 1, 1),
    )
    message = str(info.value)
    assert "1 of 3 classes" in message and "1 person (1 rows)" in message
    assert "--suppress would remove 1 rows (20.0%)" in message
    assert "birth_dates.birth_date = 'age_band_20'" in message
    assert "without region: 1 rows would remain below k" in message

    rows, done = deidentify(view, PATIENTS, policy, KEY, suppress=True)
    assert (done.rows_in, done.rows_out, done.suppressed_rows) == (5, 4, 1)
    assert done.min_class_size == 2 and done.key_id == KEY.key_id
    assert "90+" not in {r["birth_date"] for r in rows}

    with pytest.raises(KAnonymityError):
        deidentify(view, PATIENTS, policy, KEY, k=3)
    passing = _policy(PATIENT_POLICY, quasi_identifiers=["gender"])
    _, ok = deidentify(view, PATIENTS, passing, KEY, k=2)
    assert ok.k_anonymity.ok and ok.suppressed_rows == 0 and ok.min_class_size == 2
    with pytest.raises(DeidError, match="at least 2"):
        deidentify(view, PATIENTS, policy, KEY, k=1)


def test_k_counts_persons_not_rows() -> None:
    """Six visits of one person in a class of their own are one person, not six."""
    visits = [
        _encounter(f"v{i}", "p9", f"2021-0{i + 1}-01", f"2021-0{i + 1}-01", cls="HH")
        for i in range(6)
    ]
    common = [_encounter(f"a{i}", f"p{i}", "2021-01-01", "2021-01-01", cls="AMB") for i in range(6)]
    policy = _policy(ENCOUNTER_POLICY, k=5)
    with pytest.raises(KAnonymityError) as info:
        deidentify(_view(ENCOUNTER_VIEW), visits + common, policy, KEY)
    assert info.value.report.small_classes == (({"class": "HH"}, 1, 6),)
    rows, report = deidentify(_view(ENCOUNTER_VIEW), visits + common, policy, KEY, suppress=True)
    assert report.suppressed_rows == 6 and {r["class"] for r in rows} == {"AMB"}


# -- on a synthetic population, through the command --------------------------------------------


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "pop"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "takamul.cli",
            "synth",
            "--country",
            "SA",
            "--patients",
            "500",
            "--seed",
            "21",
            "--workers",
            "1",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name, content in {
        "patients.json": PATIENT_VIEW,
        "encounters.json": ENCOUNTER_VIEW,
        "patient-policy.json": {
            **PATIENT_POLICY,
            "birth_dates": {"birth_date": "age_band_5"},
            "quasi_identifiers": ["birth_date", "gender", "region", "nationality"],
            "k": 5,
        },
        "encounter-policy.json": {**ENCOUNTER_POLICY, "k": 5},
    }.items():
        path = tmp_path / name
        path.write_bytes(orjson.dumps(content))
        paths[name.removesuffix(".json")] = path
    return paths


SECRET = "a research key that is long enough for HMAC-SHA-256 use"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={DEID_KEY_ENV: SECRET, DEID_KEY_FILE_ENV: None, "COLUMNS": "200"})


def _identifiers(population: Path) -> set[str]:
    """Every direct identifier of the input: ids, national ids, MRNs, phones, names, lines,
    full-precision coordinates."""
    found: set[str] = set()
    for patient in iter_ndjson([population / "Patient.ndjson"]):
        found.add(patient["id"])
        found.update(i["value"] for i in patient.get("identifier", ()))
        found.update(t["value"] for t in patient.get("telecom", ()))
        for name in patient.get("name", ()):
            found.add(name["text"])
            found.add(name["family"])
            found.update(g for g in name.get("given", ()) if len(g) >= 4)
        for address in patient.get("address", ()):
            found.update(address.get("line", ()))
            for ext in address.get("extension", ()):
                found.update(repr(e["valueDecimal"]) for e in ext.get("extension", ()))
    for encounter in iter_ndjson([population / "Encounter.ndjson"]):
        found.add(encounter["id"])
    return found


def _rows(path: Path) -> list[dict[str, Any]]:
    with duckdb.connect() as con:
        if path.suffix == ".ndjson":
            return [orjson.loads(line) for line in path.read_bytes().splitlines()]
        relation = con.sql(
            f"SELECT * FROM read_csv('{path}', all_varchar = true)"
            if path.suffix == ".csv"
            else f"SELECT * FROM '{path}'"
        )
        names = relation.columns
        return [dict(zip(names, row, strict=True)) for row in relation.fetchall()]


def test_cli_refuses_an_extract_below_k_and_writes_nothing(
    population: Path, files: dict[str, Path], runner: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "patients.csv"
    args = ["run", str(files["patients"]), "--policy", str(files["patient-policy"])]
    result = runner.invoke(deid_app, [*args, "--input", str(population), "--out", str(out)])
    assert result.exit_code == 3, result.output
    assert "extract refused, nothing written" in result.output
    assert (
        "hold fewer than k=5 persons" in result.output
        and "--suppress would remove" in result.output
    )
    assert not out.exists() and list(tmp_path.glob(".patients.csv*")) == []
    assert SECRET not in result.output


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "parquet"])
def test_cli_suppress_on_a_synthetic_population(
    population: Path, files: dict[str, Path], runner: CliRunner, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / f"patients.{fmt}"
    args = ["run", str(files["patients"]), "--policy", str(files["patient-policy"])]
    result = runner.invoke(
        deid_app, [*args, "-i", str(population), "--out", str(out), "--suppress"]
    )
    assert result.exit_code == 0, result.output
    assert "rows suppressed" in result.output and SECRET not in result.output
    rows = _rows(out)
    assert 0 < len(rows) < _patient_count(population)
    # Every class over the quasi-identifiers holds at least k distinct persons.
    classes: dict[tuple[Any, ...], set[str]] = defaultdict(set)
    for row in rows:
        qi = (row["birth_date"], row["gender"], row["region"], row["nationality"])
        classes[qi].add(row["id"])
    assert min(len(p) for p in classes.values()) >= 5
    # No direct identifier of the input anywhere in the output.
    text = out.read_bytes().decode("utf-8", "replace")
    if fmt == "parquet":  # compressed: scan the values instead
        text = "\n".join(json.dumps(r, ensure_ascii=False, default=str) for r in rows)
    leaked = [i for i in _identifiers(population) if i in text]
    assert leaked == []
    assert {"name", "phone", "city", "address_line", "latin_name"}.isdisjoint(rows[0])


def _patient_count(population: Path) -> int:
    with (population / "Patient.ndjson").open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def test_cli_extracts_join_and_keep_intervals(
    population: Path, files: dict[str, Path], runner: CliRunner, tmp_path: Path
) -> None:
    patient_policy = tmp_path / "patient-gender.json"
    patient_policy.write_bytes(orjson.dumps({**PATIENT_POLICY, "quasi_identifiers": ["gender"]}))
    patients_out, encounters_out = tmp_path / "p.ndjson", tmp_path / "e.ndjson"
    for view, policy, out in (
        (files["patients"], patient_policy, patients_out),
        (files["encounters"], files["encounter-policy"], encounters_out),
    ):
        result = runner.invoke(
            deid_app, ["run", str(view), "-p", str(policy), "-i", str(population), "-o", str(out)]
        )
        assert result.exit_code == 0, result.output
    patients, encounters = _rows(patients_out), _rows(encounters_out)
    assert len(patients) == _patient_count(population)  # every record, under its pseudonym
    # Every encounter's patient is a patient of the other extract (made with the same key).
    assert {e["patient"] for e in encounters} <= {p["id"] for p in patients}

    deid = Deidentifier(
        compile_view(ENCOUNTER_VIEW), _policy(ENCOUNTER_POLICY), DeidKey(SECRET.encode()), TODAY
    )
    source = {
        deid.pseudonym(e["id"], "Encounter"): e
        for e in iter_ndjson([population / "Encounter.ndjson"])
    }
    shifts: dict[str, set[int]] = defaultdict(set)
    for row in encounters:
        original = source[row["id"]]["period"]
        shifted = _instant(row["start"]) - _instant(original["start"])
        shifts[row["patient"]].add(shifted.days)
        assert _instant(row["end"]) - _instant(row["start"]) == _instant(
            original["end"]
        ) - _instant(original["start"])
    assert all(len(s) == 1 for s in shifts.values())
    assert len({next(iter(s)) for s in shifts.values()}) > 20


def test_cli_reads_the_shared_record(
    files: dict[str, Path], runner: CliRunner, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'record.sqlite'}"
    store = Store(Settings(database_url=url, mpi=False))
    try:
        for patient in PATIENTS:
            store.write(lambda s, p=patient: s.update("Patient", p["id"], p))
    finally:
        store.close()
    policy = tmp_path / "policy.json"
    policy.write_bytes(orjson.dumps(PATIENT_POLICY))
    out = tmp_path / "from-db.csv"
    args = ["run", str(files["patients"]), "-p", str(policy), "--db", url, "-o", str(out)]
    refused = runner.invoke(deid_app, args)
    assert refused.exit_code == 3 and not out.exists()
    result = runner.invoke(deid_app, [*args, "--suppress"])
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert len(rows) == 4
    text = out.read_text()
    for patient in PATIENTS:
        for secret in (
            patient["id"],
            patient["name"][0]["text"],
            patient["identifier"][0]["value"],
        ):
            assert secret not in text


def test_cli_errors(files: dict[str, Path], tmp_path: Path) -> None:
    plain = CliRunner(env={DEID_KEY_ENV: None, DEID_KEY_FILE_ENV: None})
    args = ["run", str(files["patients"]), "-p", str(files["patient-policy"])]
    out = ["-i", str(tmp_path), "-o", str(tmp_path / "x.csv")]
    no_key = plain.invoke(deid_app, [*args, *out])
    assert no_key.exit_code == 2 and "no de-identification key" in no_key.output
    short = CliRunner(env={DEID_KEY_ENV: "short-key"}).invoke(deid_app, [*args, *out])
    assert short.exit_code == 2 and "at least 32" in short.output
    assert "short-key" not in short.output
    keyed = CliRunner(env={DEID_KEY_ENV: SECRET})
    neither = keyed.invoke(deid_app, [*args, "-o", str(tmp_path / "x.csv")])
    assert neither.exit_code == 2 and "--input" in neither.output
    empty = keyed.invoke(deid_app, [*args, *out])
    assert empty.exit_code == 2 and "no *.ndjson files" in empty.output
    bad_policy = tmp_path / "bad.json"
    bad_policy.write_text('{"drop": ["name"], "k": 5, "identifiers": ["id"], "note": 1}')
    unknown = keyed.invoke(deid_app, [args[0], args[1], "-p", str(bad_policy), *out])
    assert unknown.exit_code == 2 and "unknown policy keys ['note']" in unknown.output


def test_keygen(tmp_path: Path) -> None:
    runner = CliRunner()
    path = tmp_path / "research.key"
    made = runner.invoke(deid_app, ["keygen", "--out", str(path)])
    assert made.exit_code == 0, made.output
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = load_key(path, environ={})
    assert key.key_id in made.output and path.read_text().strip() not in made.output
    again = runner.invoke(deid_app, ["keygen", "--out", str(path)])
    assert again.exit_code == 2 and "never overwritten" in again.output
    assert load_key(path, environ={}).key_id == key.key_id


def test_run_deid_writes_atomically(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "extract.ndjson"
    report = run_deid(
        _view(PATIENT_VIEW),
        PATIENTS,
        _policy(PATIENT_POLICY),
        KEY,
        out,
        DeidFormat.ndjson,
        suppress=True,
    )
    assert report.rows_out == 4 and len(out.read_bytes().splitlines()) == 4
    with pytest.raises(KAnonymityError):
        run_deid(
            _view(PATIENT_VIEW), PATIENTS, _policy(PATIENT_POLICY), KEY, out, DeidFormat.csv, k=3
        )
    assert len(out.read_bytes().splitlines()) == 4  # the earlier extract is left alone
