"""The independent registry evaluation generator (bench/registry_eval): determinism, FHIR shape,
truth, identifiers, variation rates, hard negatives and name collisions."""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from random import Random
from typing import Any

import pytest
from bench.registry_eval import CLASSES, Config, ErrorRates, generate
from bench.registry_eval import perturb as P
from bench.registry_eval.cli import main

SA_SYSTEM = "https://www.moh.gov.sa/fhir/sid/national-id"
IR_SYSTEM = "https://www.ncr.ir/fhir/sid/national-code"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
FHIR_DATE = re.compile(r"^\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?)?$")
PATIENT_KEYS = {
    "resourceType",
    "id",
    "identifier",
    "name",
    "telecom",
    "gender",
    "birthDate",
    "address",
    "contact",
    "managingOrganization",
}


class DataSet:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.patients = [
            json.loads(line) for line in (out / "patients.ndjson").read_text("utf-8").splitlines()
        ]
        self.truth = _csv(out / "truth.csv")
        self.variations = _csv(out / "variations.csv")
        self.persons = {r["person_id"]: r for r in _csv(out / "persons.csv")}
        self.hard = _csv(out / "hard_negatives.csv")
        self.manifest = json.loads((out / "manifest.json").read_text("utf-8"))
        self.classes = {
            r["patient_id"]: set(filter(None, r["classes"].split(";"))) for r in self.variations
        }
        self.person_of = {r["patient_id"]: r["person_id"] for r in self.truth}


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sa(tmp_path_factory: pytest.TempPathFactory) -> DataSet:
    out = tmp_path_factory.mktemp("sa20k")
    generate(Config(country="SA", persons=20_000, seed=7), out, workers=2)
    return DataSet(out)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> DataSet:
    out = tmp_path_factory.mktemp("mixed")
    generate(Config(country="mixed", persons=6_000, seed=11), out, workers=1)
    return DataSet(out)


def _ni(p: dict[str, Any]) -> str | None:
    for ident in p["identifier"]:
        if ident["type"]["coding"][0]["code"] == "NI":
            return str(ident["value"])
    return None


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    files = (
        "patients.ndjson",
        "truth.csv",
        "variations.csv",
        "persons.csv",
        "hard_negatives.csv",
        "manifest.json",
    )
    generate(Config(country="mixed", persons=4_100, seed=5), tmp_path / "a", workers=1)
    generate(Config(country="mixed", persons=4_100, seed=5), tmp_path / "b", workers=2)
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    generate(Config(country="mixed", persons=300, seed=6), tmp_path / "c", workers=1)
    a = (tmp_path / "a" / "patients.ndjson").read_bytes()
    assert (tmp_path / "c" / "patients.ndjson").read_bytes()[:2000] != a[:2000]


def test_every_patient_has_the_fhir_r4_shape(sa: DataSet, mixed: DataSet) -> None:
    for ds in (sa, mixed):
        ids = set()
        for p in ds.patients:
            assert p["resourceType"] == "Patient"
            assert set(p) <= PATIENT_KEYS
            assert FHIR_ID.match(p["id"]) and p["id"] not in ids
            ids.add(p["id"])
            country = ds.persons[ds.person_of[p["id"]]]["country"]
            for ident in p["identifier"]:
                assert set(ident) == {"use", "type", "system", "value"}
                coding = ident["type"]["coding"][0]
                assert coding["system"] == V2_0203 and coding["code"] in ("NI", "MR")
                if coding["code"] == "NI":
                    assert ident["system"] == (SA_SYSTEM if country == "SA" else IR_SYSTEM)
                    assert re.fullmatch(r"\d{10}", ident["value"])
            assert 1 <= len(p["name"]) <= 2
            for n in p["name"]:
                assert n["use"] == "official"
                assert n.get("given") or n.get("family")
                strings = [*n.get("given", []), n.get("family", ""), n.get("text", "")]
                for s in filter(None, strings):
                    assert isinstance(s, str) and s == s.strip()
            assert p.get("gender", "male") in ("male", "female", "unknown")
            bd = p["birthDate"]
            assert FHIR_DATE.match(bd), bd
            if len(bd) == 10:
                dt.date.fromisoformat(bd)
            for t in p.get("telecom", []):
                assert t["system"] == "phone" and t["use"] in ("mobile", "home") and t["value"]
            for a in p.get("address", []):
                assert a["city"] and a["country"] == country
            assert p["managingOrganization"]["reference"].startswith("Organization/")


def test_truth_and_variations_cover_every_record(sa: DataSet) -> None:
    ids = [p["id"] for p in sa.patients]
    assert [r["patient_id"] for r in sa.truth] == ids
    assert [r["patient_id"] for r in sa.variations] == ids
    assert all(r["person_id"] == sa.person_of[r["patient_id"]] for r in sa.variations)
    per_person = Counter(r["person_id"] for r in sa.truth)
    assert set(per_person) == set(sa.persons)
    assert len(sa.persons) == 20_000
    assert set(per_person.values()) <= {1, 2, 3, 4}
    assert 2.2 < len(ids) / len(per_person) < 2.6
    assert sa.manifest["counts"]["records"] == len(ids)
    labelled = Counter(c for cs in sa.classes.values() for c in cs)
    assert sa.manifest["counts"]["classes"] == {c: labelled.get(c, 0) for c in CLASSES}
    assert sa.manifest["counts"]["clean_records"] == sum(1 for cs in sa.classes.values() if not cs)


def test_clean_records_are_the_persons_own_data(sa: DataSet) -> None:
    clean = [p for p in sa.patients if not sa.classes[p["id"]]]
    assert len(clean) > 0.15 * len(sa.patients)
    for p in clean:
        person = sa.persons[sa.person_of[p["id"]]]
        assert _ni(p) == person["national_id"]
        assert p["birthDate"] == person["birth_date"]
        assert p["gender"] == person["sex"]


def test_national_ids_valid_except_typos(sa: DataSet, mixed: DataSet) -> None:
    for ds in (sa, mixed):
        for person in ds.persons.values():
            assert P.national_id_valid(person["national_id"], person["country"])
            if person["country"] == "SA":
                assert person["national_id"][0] == ("1" if person["group"] == "citizen" else "2")
        assert len({p["national_id"] for p in ds.persons.values()}) == len(ds.persons)
        typos = 0
        for p in ds.patients:
            ni = _ni(p)
            cls = ds.classes[p["id"]]
            if ni is None:
                assert "id_missing" in cls
                continue
            country = ds.persons[ds.person_of[p["id"]]]["country"]
            if "id_typo" in cls:
                typos += 1
                assert not P.national_id_valid(ni, country), ni
            else:
                assert P.national_id_valid(ni, country), ni
        assert typos > 0


def test_checksum_rules() -> None:
    assert P.iran_code_valid("0499370899")  # the commonly cited valid example
    assert not P.iran_code_valid("0499370898")
    assert not P.iran_code_valid("1111111111")
    assert P.saudi_id_valid("1000000008")
    assert not P.saudi_id_valid("1000000009")
    assert not P.saudi_id_valid("3000000004")  # valid Luhn, but neither citizen nor resident
    rng = Random(1)
    for _ in range(300):
        body = f"{rng.randrange(10**8):08d}"
        sid = "1" + body + P.luhn_check_digit("1" + body)
        assert P.saudi_id_valid(sid)
        t = P.id_typo(rng, sid, "SA")
        assert t is not None and not P.saudi_id_valid(t) and len(t) == 10
        body9 = f"{rng.randrange(10**9):09d}"
        code = body9 + P.iran_check_digit(body9)
        t = P.id_typo(rng, code, "IR")
        assert t is not None and not P.iran_code_valid(t)


def test_phone_formats_are_the_same_number() -> None:
    def digits(s: str, cc: str) -> str:
        native = str.maketrans("٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹", "01234567890123456789")
        d = re.sub(r"\D", "", s.translate(native))
        for prefix in ("00" + cc, cc, "0"):
            if d.startswith(prefix) and len(d) - len(prefix) >= 9:
                return d[len(prefix) :]
        return d

    fmts = ("national", "e164", "intl00", "bare_cc", "nsn", "national_spaced")
    fmts += ("national_dashed", "e164_spaced", "native_digits")
    for country, nsn, cc in (("SA", "551234567", "966"), ("IR", "9121234567", "98")):
        seen = set()
        for f in fmts:
            s = P.format_phone(nsn, country, f)
            seen.add(s)
            assert digits(s, cc) == nsn, (f, s)
        assert len(seen) == len(fmts)
    assert P.format_phone("551234567", "SA", "national") == "0551234567"
    assert P.format_phone("9121234567", "IR", "e164") == "+989121234567"


def test_class_rates_are_roughly_the_configured_ones(sa: DataSet) -> None:
    rates = ErrorRates()
    n = len(sa.patients)
    counts = Counter(c for cs in sa.classes.values() for c in cs)
    assert set(counts) == set(CLASSES), set(CLASSES) - set(counts)
    # classes that apply to every record: expected (1 - clean) * rate
    for name in (
        "romanisation",
        "name_order",
        "ocr",
        "keyboard",
        "date_typo",
        "date_year_only",
        "id_missing",
        "id_typo",
        "phone_missing",
        "phone_changed",
        "phone_format",
        "sex_missing",
    ):
        expected = (1 - rates.clean) * getattr(rates, name)
        if name == "phone_format":
            expected *= 1 - rates.phone_missing
        measured = counts[name] / n
        assert 0.75 * expected < measured < 1.2 * expected, (name, measured, expected)
    # several classes in one record, and clean copies
    assert sum(1 for cs in sa.classes.values() if len(cs) >= 3) > 0.05 * n
    assert sum(1 for cs in sa.classes.values() if not cs) > 0.15 * n


def test_variations_are_what_their_labels_say(sa: DataSet, mixed: DataSet) -> None:
    for ds in (sa, mixed):
        for p in ds.patients:
            cls = ds.classes[p["id"]]
            person = ds.persons[ds.person_of[p["id"]]]
            if "date_calendar" in cls:
                year = int(p["birthDate"][:4])
                assert 1300 <= year <= 1450, p["birthDate"]  # Hijri or Jalali years
            if "date_year_only" in cls:
                bd = p["birthDate"]
                assert len(bd) == 4 or bd.endswith(
                    ("-01-01", "-07-01", "-03-20", "-03-21", "-03-22")
                )
            if "phone_missing" in cls:
                assert all(t["use"] != "mobile" for t in p.get("telecom", []))
            if "sex_missing" in cls:
                assert p.get("gender", "unknown") == "unknown"
            if "sex_wrong" in cls:
                assert p["gender"] != person["sex"]
            if "nasab" in cls and not cls & {"ocr", "keyboard", "case_space"}:
                words = " ".join(" ".join(n.get("given", [])) for n in p["name"]).lower().split()
                assert set(words) & {"bin", "ibn", "bint", "ben", "b.", "bt.", "بن", "بنت", "ابن"}
    # Iranian records are mostly in Persian letters; Jalali dates in the birthDate field
    ir = [p for p in mixed.patients if mixed.persons[mixed.person_of[p["id"]]]["country"] == "IR"]
    persian = sum(1 for p in ir if any("ی" in n.get("family", "") for n in p["name"]))
    assert persian > 0.5 * len(ir)


def test_twins_and_newborns_are_hard_negatives(sa: DataSet) -> None:
    kinds = Counter(r["kind"] for r in sa.hard)
    assert kinds["twin"] >= 20 and kinds["id_parent"] >= 20
    for r in sa.hard:
        a, b = sa.persons[r["person_a"]], sa.persons[r["person_b"]]
        assert r["person_a"] != r["person_b"]
        if r["kind"] == "twin":
            assert a["birth_date"] == b["birth_date"] and a["household_id"] == b["household_id"]
            assert a["name_native"].split()[0] != b["name_native"].split()[0]
            assert a["name_native"].split()[-1] == b["name_native"].split()[-1]
    # a newborn's record under a parent's national ID
    by_person: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in sa.patients:
        by_person[sa.person_of[p["id"]]].append(p)
    pairs = [r for r in sa.hard if r["kind"] == "id_parent"]
    for r in pairs:
        parent, child = sa.persons[r["person_a"]], sa.persons[r["person_b"]]
        assert r["person_a"] in (child["mother_id"], child["father_id"])
        assert parent["birth_date"] != child["birth_date"]
        recs = [p for p in by_person[r["person_b"]] if "id_parent" in sa.classes[p["id"]]]
        assert any(_ni(p) == parent["national_id"] for p in recs)
    assert any(sa.classes[p["id"]] >= {"id_parent", "newborn_name"} for p in sa.patients)


def test_zipf_names_collide_at_20000_persons(sa: DataSet) -> None:
    persons = list(sa.persons.values())
    given = Counter(p["name_native"].split()[0] for p in persons if p["sex"] == "male")
    males = sum(given.values())
    assert given.most_common(1)[0][0] == "محمد"
    assert given.most_common(1)[0][1] > 0.06 * males
    citizens = [p for p in persons if p["group"] == "citizen"]
    family = Counter(p["name_native"].split()[-1] for p in citizens)
    assert family.most_common(1)[0][1] > 0.02 * len(citizens)
    by_year = Counter(
        (p["name_native"].split()[0], p["name_native"].split()[-1], p["birth_date"][:4])
        for p in persons
    )
    sharing = sum(c for c in by_year.values() if c > 1)
    assert sharing > 0.05 * len(persons)
    # (exact birth dates collide too, from a few hundred thousand persons on: not tested here)
    col = sa.manifest["name_collisions"]
    assert col["given+father+family (Arab chains)"]["largest_group"] >= 5
    assert col["given+father+family (Arab chains)"]["persons_sharing"] > 0.05 * len(persons)
    assert col["given+family+birth year"]["persons_sharing"] > 0.05 * len(persons)


def test_cli_writes_the_files(tmp_path: Path) -> None:
    rc = main(
        [
            "--country",
            "IR",
            "--persons",
            "150",
            "--seed",
            "3",
            "--out",
            str(tmp_path),
            "--workers",
            "1",
            "--rate",
            "id_missing=0.5",
        ]
    )
    assert rc == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text("utf-8"))
    assert manifest["parameters"]["rates"]["id_missing"] == 0.5
    assert manifest["parameters"]["country"] == "IR" and manifest["counts"]["persons"] == 150
    header = (tmp_path / "variations.csv").read_text("utf-8").splitlines()[0]
    assert header == "patient_id,person_id,classes"
    assert (tmp_path / "truth.csv").read_text("utf-8").startswith("patient_id,person_id\n")
