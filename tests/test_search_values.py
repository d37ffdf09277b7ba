"""Search-index extraction: value normalisation, per-type mapping, and the fast FHIRPath subset
checked against fhirpathpy over every official R4 example."""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from datetime import datetime
from functools import cache
from typing import Any

import pytest

from takamul.fhir.definitions import definitions
from takamul.fhir.search_values import (
    DATE_MAX,
    DATE_MIN,
    INDEXED_TYPES,
    DateEntry,
    NumberEntry,
    QuantityEntry,
    ReferenceEntry,
    SearchIndexer,
    StringEntry,
    TokenEntry,
    UriEntry,
    date_range,
    decimal_range,
    normalize_string,
)
from tests.fhir_examples import iter_examples


@pytest.fixture(scope="module")
def indexer() -> SearchIndexer:
    return SearchIndexer()


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# --- normalize_string ------------------------------------------------------------------------


def test_normalize_drops_latin_accents_and_casefolds() -> None:
    assert normalize_string("Élodie MÜLLER-Çelik") == "elodie muller-celik"
    assert normalize_string("Straße") == "strasse"


def test_normalize_drops_arabic_harakat_and_tatweel() -> None:
    assert normalize_string("مُحَمَّد") == "محمد"
    assert normalize_string("محـــمد") == "محمد"
    assert normalize_string("عَبْدُ ٱللَّٰه") == normalize_string("عبد ٱلله")


def test_normalize_keeps_persian_yeh_and_kaf() -> None:
    persian = "یاسمین کریمی"  # U+06CC yeh, U+06A9 kaf
    assert normalize_string(persian) == persian
    assert normalize_string(persian) != normalize_string("ياسمين كريمي")  # Arabic yeh / kaf


def test_normalize_collapses_whitespace() -> None:
    assert normalize_string("  Jean \t\n  Paul\u00a0 ") == "jean paul"
    assert normalize_string("   ") == ""


# --- date_range ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2020", "2020-01-01T00:00:00+00:00", "2021-01-01T00:00:00+00:00"),
        ("2020-02", "2020-02-01T00:00:00+00:00", "2020-03-01T00:00:00+00:00"),
        ("2020-12", "2020-12-01T00:00:00+00:00", "2021-01-01T00:00:00+00:00"),
        ("2020-02-29", "2020-02-29T00:00:00+00:00", "2020-03-01T00:00:00+00:00"),
        ("2020-03-04T10:00:00+03:00", "2020-03-04T07:00:00+00:00", "2020-03-04T07:00:01+00:00"),
        ("2020-03-04T10:00:00-04:30", "2020-03-04T14:30:00+00:00", "2020-03-04T14:30:01+00:00"),
        ("2020-03-04T10:00:00Z", "2020-03-04T10:00:00+00:00", "2020-03-04T10:00:01+00:00"),
        ("2020-03-04T10:00:00", "2020-03-04T10:00:00+00:00", "2020-03-04T10:00:01+00:00"),
        ("2020-03-04T10:15+01:00", "2020-03-04T09:15:00+00:00", "2020-03-04T09:16:00+00:00"),
        ("1950-06-15", "1950-06-15T00:00:00+00:00", "1950-06-16T00:00:00+00:00"),
    ],
)
def test_date_range_at_each_precision(text: str, low: str, high: str) -> None:
    assert date_range(text) == (ts(low), ts(high))


def test_date_range_fractional_seconds_have_their_precision() -> None:
    base = ts("2020-03-04T10:00:00+00:00")
    assert date_range("2020-03-04T10:00:00.5Z") == (base + 0.5, base + 0.6)
    low, high = date_range("2020-03-04T10:00:00.123Z")
    assert (low, high) == pytest.approx((base + 0.123, base + 0.124), abs=1e-6)


def test_date_range_last_year() -> None:
    low, high = date_range("9999")
    assert low == ts("9999-01-01T00:00:00+00:00")
    assert high - low == 365 * 86400


@pytest.mark.parametrize(
    "text",
    [
        "",
        "20",
        "20201",
        "2020/01/01",
        "2020-13",
        "2020-00",
        "2021-02-29",
        "2020-01-32",
        "2020-01-01T25:00:00Z",
        "2020-01-01T10:61:00Z",
        "2020-01-01T10",
        "2020-01-01T10:00:00+15:00",
        "2020-01-01 10:00:00",
        "yesterday",
    ],
)
def test_date_range_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="malformed FHIR date"):
        date_range(text)


# --- decimal_range ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5.4", (5.4, 5.35, 5.45)),
        ("100", (100.0, 99.5, 100.5)),
        ("1.50", (1.5, 1.495, 1.505)),
        ("-0.5", (-0.5, -0.55, -0.45)),
        ("1e2", (100.0, 50.0, 150.0)),
        ("2.5E-3", (0.0025, 0.00245, 0.00255)),
        ("0", (0.0, -0.5, 0.5)),
    ],
)
def test_decimal_range(text: str, expected: tuple[float, float, float]) -> None:
    assert decimal_range(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "abc", "1.", ".5", "1e", "NaN", "Infinity", "1,5", "--1"])
def test_decimal_range_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="malformed decimal"):
        decimal_range(text)


# --- Patient ---------------------------------------------------------------------------------

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"lastUpdated": "2024-05-01T12:00:00.000+02:00"},
    "active": True,
    "identifier": [
        {
            "system": "urn:oid:2.16.840.1.113883.2.9",
            "value": "784-1980-1234567-1",
            "type": {"text": "National ID"},
        },
        {"value": "MRN-7"},
    ],
    "name": [
        {"use": "official", "family": "Al-Hāshimī", "given": ["مُحَمَّد", "Ahmad"], "prefix": ["Dr."]},
        {"text": "یاسمین کریمی"},
    ],
    "telecom": [
        {"system": "phone", "value": "+971 50 123 4567"},
        {"system": "email", "value": "m@example.org"},
    ],
    "gender": "male",
    "birthDate": "1980-07-15",
    "address": [{"line": ["12 Sheikh Zayed Rd", "Apt 4"], "city": "Dubai", "country": "AE"}],
    "generalPractitioner": [
        {"reference": "Practitioner/gp1"},
        {"reference": "https://other.example/fhir/Organization/o9/_history/3"},
        {"reference": "#contained-gp"},
        {"identifier": {"system": "urn:x", "value": "no-ref"}},
    ],
}


def test_patient_names(indexer: SearchIndexer) -> None:
    index = indexer.extract(PATIENT)
    assert index["family"] == [StringEntry("al-hashimi", "Al-Hāshimī")]
    assert StringEntry("محمد", "مُحَمَّد") in index["given"]  # exact keeps the harakat
    assert set(index["name"]) == {
        StringEntry("al-hashimi", "Al-Hāshimī"),
        StringEntry("محمد", "مُحَمَّد"),
        StringEntry("ahmad", "Ahmad"),
        StringEntry("dr.", "Dr."),
        StringEntry("یاسمین کریمی", "یاسمین کریمی"),
    }


def test_patient_tokens(indexer: SearchIndexer) -> None:
    index = indexer.extract(PATIENT)
    assert index["identifier"] == [
        TokenEntry("urn:oid:2.16.840.1.113883.2.9", "784-1980-1234567-1", "national id"),
        TokenEntry(None, "MRN-7", None),
    ]
    assert index["gender"] == [TokenEntry(None, "male", None)]
    assert index["active"] == [TokenEntry(None, "true", None)]
    assert index["deceased"] == [TokenEntry(None, "false", None)]
    assert index["phone"] == [TokenEntry(None, "+971 50 123 4567", None)]
    assert index["email"] == [TokenEntry(None, "m@example.org", None)]
    assert len(index["telecom"]) == 2
    assert index["_id"] == [TokenEntry(None, "p1", None)]


def test_patient_dates_and_address(indexer: SearchIndexer) -> None:
    index = indexer.extract(PATIENT)
    assert index["birthdate"] == [DateEntry(*date_range("1980-07-15"))]
    assert index["_lastUpdated"] == [
        DateEntry(ts("2024-05-01T10:00:00+00:00"), ts("2024-05-01T10:00:00.001+00:00"))
    ]
    assert index["address-city"] == [StringEntry("dubai", "Dubai")]
    assert {e.exact for e in index["address"]} == {"12 Sheikh Zayed Rd", "Apt 4", "Dubai", "AE"}
    assert "death-date" not in index


def test_patient_general_practitioner_references(indexer: SearchIndexer) -> None:
    # Contained (#id) and identifier-only references give no entry.
    assert indexer.extract(PATIENT)["general-practitioner"] == [
        ReferenceEntry("Practitioner", "gp1", None),
        ReferenceEntry("Organization", "o9", "https://other.example/fhir/Organization/o9"),
    ]


def test_deceased_datetime_is_a_true_token_and_a_death_date(indexer: SearchIndexer) -> None:
    index = indexer.extract({**PATIENT, "deceasedDateTime": "2023-01-02"})
    assert index["deceased"] == [TokenEntry(None, "true", None)]
    assert index["death-date"] == [DateEntry(*date_range("2023-01-02"))]
    assert indexer.extract({**PATIENT, "deceasedBoolean": False})["deceased"] == [
        TokenEntry(None, "false", None)
    ]


# --- Observation / Condition -----------------------------------------------------------------


def observation(subject: str, **elements: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body Weight"}],
        },
        "subject": {"reference": subject},
        **elements,
    }


def test_observation_code_and_value_quantity(indexer: SearchIndexer) -> None:
    obs = observation(
        "Patient/p1",
        valueQuantity={
            "value": 72.5,
            "unit": "kg",
            "system": "http://unitsofmeasure.org",
            "code": "kg",
        },
    )
    index = indexer.extract(obs)
    assert index["code"] == [TokenEntry("http://loinc.org", "29463-7", "body weight")]
    [quantity] = index["value-quantity"]
    assert quantity == QuantityEntry(72.5, 72.45, 72.55, "http://unitsofmeasure.org", "kg", "kg")
    assert index["status"] == [TokenEntry(None, "final", None)]


def test_codeable_concept_text_and_displays_both_index(indexer: SearchIndexer) -> None:
    obs = observation("Patient/p1")
    obs["code"] = {"coding": [{"system": "s", "code": "c", "display": "D"}], "text": "Weight"}
    obs["category"] = [{"text": "Vital Signs"}]
    index = indexer.extract(obs)
    assert index["code"] == [TokenEntry("s", "c", "d"), TokenEntry(None, None, "weight")]
    assert index["category"] == [TokenEntry(None, None, "vital signs")]


def test_subject_where_resolve_is_patient(indexer: SearchIndexer) -> None:
    index = indexer.extract(observation("Patient/p1"))
    assert index["patient"] == [ReferenceEntry("Patient", "p1", None)]
    assert index["subject"] == [ReferenceEntry("Patient", "p1", None)]
    group = indexer.extract(observation("Group/g1"))
    assert "patient" not in group
    assert group["subject"] == [ReferenceEntry("Group", "g1", None)]
    absolute = indexer.extract(observation("http://x.org/fhir/Patient/p2/_history/1"))
    assert absolute["patient"] == [ReferenceEntry("Patient", "p2", "http://x.org/fhir/Patient/p2")]
    urn = indexer.extract(observation("urn:uuid:7d3b1c2e-0000-4000-8000-000000000001"))
    assert urn["subject"] == [
        ReferenceEntry(None, None, "urn:uuid:7d3b1c2e-0000-4000-8000-000000000001")
    ]
    assert "patient" not in urn


def test_condition_onset_date_over_datetime_and_period(indexer: SearchIndexer) -> None:
    base = {"resourceType": "Condition", "subject": {"reference": "Patient/p1"}}
    on_date = indexer.extract({**base, "onsetDateTime": "2021-03"})
    assert on_date["onset-date"] == [DateEntry(*date_range("2021-03"))]
    period = indexer.extract({**base, "onsetPeriod": {"start": "2021-03-01"}})
    assert period["onset-date"] == [DateEntry(date_range("2021-03-01")[0], DATE_MAX)]
    closed = indexer.extract({**base, "onsetPeriod": {"end": "2021-04-01"}})
    assert closed["onset-date"] == [DateEntry(DATE_MIN, date_range("2021-04-01")[1])]
    text = indexer.extract({**base, "onsetString": "childhood"})
    assert "onset-date" not in text
    assert text["onset-info"] == [StringEntry("childhood", "childhood")]
    age = indexer.extract(
        {
            **base,
            "onsetAge": {
                "value": 4,
                "unit": "a",
                "system": "http://unitsofmeasure.org",
                "code": "a",
            },
        }
    )
    assert age["onset-age"] == [QuantityEntry(4.0, 3.5, 4.5, "http://unitsofmeasure.org", "a", "a")]


def test_canonical_reference_and_uri(indexer: SearchIndexer) -> None:
    response = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": "http://example.org/fhir/Questionnaire/intake|2.0",
        "meta": {"profile": ["http://example.org/StructureDefinition/qr"]},
    }
    index = indexer.extract(response)
    assert index["questionnaire"] == [
        ReferenceEntry("Questionnaire", "intake", "http://example.org/fhir/Questionnaire/intake")
    ]
    assert index["_profile"] == [UriEntry("http://example.org/StructureDefinition/qr")]
    plain = indexer.extract({**response, "questionnaire": "urn:oid:1.2.3|1"})
    assert plain["questionnaire"] == [ReferenceEntry(None, None, "urn:oid:1.2.3")]


def test_money_timing_number_and_bundle_entries(indexer: SearchIndexer) -> None:
    charge = {
        "resourceType": "ChargeItem",
        "status": "billed",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/p1"},
        "priceOverride": {"value": 40, "currency": "AED"},
        "factorOverride": 0.8,
    }
    index = indexer.extract(charge)
    assert index["price-override"] == [
        QuantityEntry(40.0, 39.5, 40.5, "urn:iso:std:iso:4217", "AED", None)
    ]
    assert index["factor-override"] == [NumberEntry(0.8, 0.75, 0.85)]
    plan = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Patient/p1"},
        "activity": [
            {
                "detail": {
                    "status": "scheduled",
                    "scheduledTiming": {"event": ["2021-01-05", "2021-01-02"]},
                }
            }
        ],
    }
    assert indexer.extract(plan)["activity-date"] == [
        DateEntry(date_range("2021-01-02")[0], date_range("2021-01-05")[1])
    ]
    document = {
        "resourceType": "Bundle",
        "type": "document",
        "entry": [{"resource": {"resourceType": "Composition", "id": "c1"}}],
    }
    bundle_index = indexer.extract(document)
    assert bundle_index["composition"] == [ReferenceEntry("Composition", "c1", None)]
    assert "message" not in bundle_index  # entry[0] is not a MessageHeader


def test_values_returns_raw_nodes_and_rejects_unknown_codes(indexer: SearchIndexer) -> None:
    assert indexer.values(PATIENT, "given") == ["مُحَمَّد", "Ahmad"]
    assert indexer.values(PATIENT, "name") == PATIENT["name"]
    with pytest.raises(KeyError):
        indexer.values(PATIENT, "no-such-param")
    with pytest.raises(ValueError, match="not a FHIR R4 resource type"):
        indexer.extract({"resourceType": "Patientx"})


def test_bad_values_are_skipped_not_raised(indexer: SearchIndexer) -> None:
    index = indexer.extract(
        {"resourceType": "Patient", "birthDate": "not-a-date", "gender": "female"}
    )
    assert "birthdate" not in index
    assert index["gender"] == [TokenEntry(None, "female", None)]


def test_core_expressions_need_no_fallback(indexer: SearchIndexer) -> None:
    assert indexer.fallbacks == set()


def test_unsupported_expressions_fall_back_to_fhirpathpy(indexer: SearchIndexer) -> None:
    evaluate = indexer._compile("Patient.name.where(given.count() > 1).family", "Patient", "string")
    assert "Patient.name.where(given.count() > 1).family" in indexer.fallbacks
    nodes = evaluate([(PATIENT, indexer._model.ctx("Patient"))])
    assert [(value, ctx.type) for value, ctx in nodes] == [("Al-Hāshimī", "string")]


# --- the official examples: fast path == fhirpathpy ----------------------------------------


@cache
def examples_by_type() -> dict[str, list[tuple[str, dict[str, Any]]]]:
    grouped: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for name, resource in iter_examples():
        grouped[resource["resourceType"]].append((name, resource))
    return dict(grouped)


def _canonical(nodes: list[Any]) -> set[str]:
    # FHIRPath `|` removes duplicates and order is not significant for indexing: compare sets.
    return {json.dumps(value, sort_keys=True, default=str) for value, _ in nodes}


@pytest.mark.slow
@pytest.mark.parametrize("resource_type", sorted(definitions().resource_types))
def test_fast_path_matches_fhirpathpy_on_examples(
    indexer: SearchIndexer, resource_type: str
) -> None:
    examples = examples_by_type().get(resource_type, [])
    params = [
        code
        for code, p in definitions().search_params_for(resource_type).items()
        if p.type in INDEXED_TYPES and p.expression
    ]
    mismatches = []
    for name, resource in examples:
        for code in params:
            fast, reference, plan = indexer._compare(resource, code)
            if _canonical(fast) != _canonical(reference):
                mismatches.append((name, code, "nodes"))
            elif set(plan.entries(fast)) != set(plan.entries(reference)):
                mismatches.append((name, code, "entries"))
    assert mismatches == []


def test_extract_timing_on_examples(indexer: SearchIndexer) -> None:
    examples = [r for group in examples_by_type().values() for _, r in group]
    for resource in examples:  # warm the lazily built navigation tables
        indexer.extract(resource)
    per_type: dict[str, list[float]] = defaultdict(list)
    start = time.perf_counter()
    for resource in examples:
        t0 = time.perf_counter()
        indexer.extract(resource)
        per_type[resource["resourceType"]].append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    print(f"\nextract: {len(examples)} examples in {total * 1000:.0f} ms")
    for rtype in ("Patient", "Observation", "Condition", "Encounter", "MedicationRequest"):
        median = statistics.median(per_type[rtype])
        print(f"  {rtype}: median {median * 1e6:.0f} us over {len(per_type[rtype])}")
        assert median < 1e-3
