"""Sensitive data by code, from cited value sets, labelled on write on every write path
(issue 11, finding 4): a PHQ-9 panel sent without a label is mental health data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from takamul.bulk import load_paths
from takamul.fhir.sensitivity import code_label, label_sensitive, sensitivity, value_sets
from takamul.settings import Settings
from takamul.store import Store
from tests.server import postgres_database

LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
SNOMED = "http://snomed.info/sct"
ATC = "http://www.whocc.no/atc"

# Every panel and item of the instruments the issue names, and hierarchy members by prefix.
EXPECTED = [
    (LOINC, "44249-1", "PSY"),  # PHQ-9 panel
    (LOINC, "44260-8", "PSY"),  # PHQ-9 item 9
    (LOINC, "44261-6", "PSY"),  # PHQ-9 total
    (LOINC, "55757-9", "PSY"),  # PHQ-2 panel
    (LOINC, "69737-5", "PSY"),  # GAD-7 panel
    (LOINC, "69725-0", "PSY"),  # GAD-7 item 1
    (LOINC, "70274-6", "PSY"),  # GAD-7 total
    (LOINC, "71354-5", "PSY"),  # EPDS panel
    (LOINC, "93373-9", "PSY"),  # C-SSRS screen
    (LOINC, "75622-1", "HIV"),
    (LOINC, "20447-9", "HIV"),  # HIV-1 viral load
    (ICD10, "F32.9", "PSY"),
    (ICD10, "f20", "PSY"),
    (ICD10, "X70", "PSY"),  # intentional self-harm
    (ICD10, "B20.1", "HIV"),
    (ICD10, "Z21", "HIV"),
    (ICD10, "O80", "SEX"),
    (ICD10, "A54.9", "SEX"),  # gonococcal infection
    (SNOMED, "35489007", "PSY"),
    (SNOMED, "86406008", "HIV"),
    (ATC, "N06AB06", "PSY"),  # sertraline
    (ATC, "J05AR03", "HIV"),  # tenofovir/emtricitabine
    (ATC, "G03AA07", "SEX"),  # levonorgestrel and ethinylestradiol
]
NOT_SENSITIVE = [
    (LOINC, "8867-4"),  # heart rate
    (LOINC, "4548-4"),  # HbA1c
    (ICD10, "I10"),
    (ICD10, "E11.9"),
    (SNOMED, "38341003"),  # hypertension
    (ATC, "C09AA02"),  # enalapril
    (ATC, "N02BE01"),  # paracetamol: N02, not N05/N06
]


@pytest.mark.parametrize(("system", "code", "label"), EXPECTED)
def test_sensitive_codes_are_recognised(system: str, code: str, label: str) -> None:
    assert code_label(system, code) == label


@pytest.mark.parametrize(("system", "code"), NOT_SENSITIVE)
def test_ordinary_codes_are_not(system: str, code: str) -> None:
    assert code_label(system, code) is None


def test_every_value_set_cites_its_source() -> None:
    sets = value_sets()
    assert {vs.label for vs in sets} == {"PSY", "HIV", "SEX"}
    for vs in sets:
        assert len(vs.source) > 40 and (vs.codes or vs.prefixes), vs.id


def phq9_panel(pid: str) -> dict[str, Any]:
    """An unlabelled PHQ-9 panel with its items as components (no code known to the old list)."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "44249-1"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "component": [
            {"code": {"coding": [{"system": LOINC, "code": "44260-8"}]}, "valueInteger": 1},
        ],
    }


def test_components_questionnaire_responses_and_non_patient_data() -> None:
    item9 = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "screening"},
        "component": [{"code": {"coding": [{"system": LOINC, "code": "44260-8"}]}}],
    }
    assert sensitivity(item9) == {"PSY"}
    response = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": "http://loinc.org/q/69737-5",
    }
    assert sensitivity(response) == {"PSY"}
    by_items = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "item": [{"linkId": "/44250-9"}, {"linkId": "group", "item": [{"linkId": "44260-8"}]}],
    }
    assert sensitivity(by_items) == {"PSY"}
    labelled = label_sensitive(item9)
    assert labelled["meta"]["security"][0]["code"] == "PSY" and "meta" not in item9
    # a Questionnaire defines the instrument: it is nobody's mental health data
    questionnaire = {
        "resourceType": "Questionnaire",
        "status": "active",
        "code": [{"system": LOINC, "code": "44249-1"}],
    }
    assert label_sensitive(questionnaire) is questionnaire
    # labels already sent are kept, not duplicated
    sent = {**item9, "meta": {"security": [{"system": "x", "code": "PSY"}]}}
    assert label_sensitive(sent)["meta"]["security"] == [{"system": "x", "code": "PSY"}]


def labels(resource: dict[str, Any]) -> set[str]:
    return {s["code"] for s in resource.get("meta", {}).get("security", [])}


def test_labelled_on_write_through_the_api_and_transactions(http: httpx.Client) -> None:
    pid = http.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    created = http.post("/Observation", json=phq9_panel(pid))
    assert created.status_code == 201, created.text
    assert labels(created.json()) == {"PSY"}
    assert labels(http.get(f"/Observation/{created.json()['id']}").json()) == {"PSY"}
    found = http.get("/Observation", params={"subject": f"Patient/{pid}", "_security": "PSY"})
    assert [e["resource"]["id"] for e in found.json()["entry"]] == [created.json()["id"]]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Condition",
                    "code": {"coding": [{"system": ICD10, "code": "B20"}]},
                    "subject": {"reference": f"Patient/{pid}"},
                },
                "request": {"method": "POST", "url": "Condition"},
            }
        ],
    }
    r = http.post("", json=bundle)
    assert r.status_code == 200, r.text
    location = r.json()["entry"][0]["response"]["location"]
    condition = http.get("/" + location.split("/_history")[0].split("/fhir/")[-1]).json()
    assert labels(condition) == {"HIV"}
    # an update that drops the codes drops nothing the sender labelled, adds nothing new
    condition["code"] = {"coding": [{"system": ICD10, "code": "I10"}]}
    condition["meta"] = {}
    updated = http.put(f"/Condition/{condition['id']}", json=condition).json()
    assert labels(updated) == set()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store(Settings(database_url=f"sqlite:///{tmp_path / 'labels.sqlite'}"))
        yield s
        s.close()
    else:
        with postgres_database() as url:
            s = Store(Settings(database_url=url))
            yield s
            s.close()


def test_labelled_on_write_through_bulk_load(store: Store, tmp_path: Path) -> None:
    rows = [
        {"resourceType": "Patient", "id": "p1"},
        {**phq9_panel("p1"), "id": "phq9"},
        {
            "resourceType": "MedicationRequest",
            "id": "ssri",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": ATC, "code": "N06AB06"}]},
            "subject": {"reference": "Patient/p1"},
        },
    ]
    path = tmp_path / "data.ndjson"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    summary = load_paths(store, [path], tmp_path / "errors.ndjson", workers=1)
    assert summary.loaded == 3
    with store.reading() as session:
        assert labels(session.read("Observation", "phq9").json()) == {"PSY"}
        assert labels(session.read("MedicationRequest", "ssri").json()) == {"PSY"}
        assert labels(session.read("Patient", "p1").json()) == set()


def test_data_stored_unlabelled_by_an_earlier_version_is_labelled_at_start_up(
    store: Store,
) -> None:
    """A database written before labels were added on write: at the next start-up every
    sensitive resource is labelled in place, once, so consent can be enforced in SQL."""
    from sqlalchemy import delete, update

    from takamul.store.labels import LABELS_SETTING
    from takamul.store.schema import INDEX_TABLES, resource, resource_version, store_setting

    def seed(session: Any) -> None:
        session.update("Patient", "p1", {"resourceType": "Patient", "id": "p1"})
        session.update("Observation", "phq9", {**phq9_panel("p1"), "id": "phq9"})

    store.write(seed)
    unlabelled = orjson.dumps({**phq9_panel("p1"), "id": "phq9"})

    def forget(session: Any) -> None:  # what an earlier version would have left
        conn = session.conn
        conn.execute(update(resource).where(resource.c.res_id == "phq9").values(content=unlabelled))
        conn.execute(
            update(resource_version)
            .where(resource_version.c.res_id == "phq9")
            .values(content=unlabelled)
        )
        token = INDEX_TABLES["token"]
        conn.execute(delete(token).where(token.c.param == "_security"))
        conn.execute(delete(store_setting).where(store_setting.c.key == LABELS_SETTING))

    store.write(forget)
    url = store.settings.database_url
    store.close()
    reopened = Store(Settings(database_url=url))
    try:
        with reopened.reading() as session:
            assert labels(session.read("Observation", "phq9").json()) == {"PSY"}
            query = session.parse_search("Observation", [("_security", "PSY")])
            assert [r.id for r in session.search(query).matches] == ["phq9"]
            assert labels(session.vread("Observation", "phq9", "1").json()) == {"PSY"}
    finally:
        reopened.close()
