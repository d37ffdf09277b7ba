"""from_patient: a FHIR Patient to the registry record, never touching its input."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from takamul.registry import from_patient

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "pat-1",
    "extension": [
        {
            "url": "http://hl7.org/fhir/StructureDefinition/patient-nationality",
            "extension": [
                {
                    "url": "code",
                    "valueCodeableConcept": {
                        "coding": [{"system": "urn:iso:std:iso:3166", "code": "IR"}]
                    },
                }
            ],
        },
        {
            "url": "https://takamul.health/fhir/StructureDefinition/father-name",
            "valueString": "حسین",
        },
    ],
    "identifier": [
        {
            "type": {"coding": [{"system": V2_0203, "code": "NI"}]},
            "system": "https://takamul.health/fhir/sid/ir-national-code",
            "value": "499370899",
        }
    ],
    "name": [
        {"use": "official", "given": ["علی"], "family": "کریمی"},
        {"use": "usual", "given": ["Ali"], "family": "Karimi"},
    ],
    "telecom": [{"system": "phone", "value": "0912 123 4567"}, {"system": "email", "value": "x"}],
    "gender": "male",
    "birthDate": "1364-05-10",
    "address": [{"state": "تهران", "city": "Tehran"}],
}


def test_fields() -> None:
    rec = from_patient(PATIENT)
    assert rec.patient_id == "pat-1"
    assert len(rec.names) == 2
    assert rec.names[0].father is not None and rec.names[0].father.skel == "HSN"
    assert rec.names[0].family is not None and rec.names[0].family.norm == "كريمي"
    assert rec.skeletons == {"ALI", "HSN", "KRMI"}
    assert rec.national_id == "0499370899" and rec.national_id_valid is True
    assert rec.phones == ("+989121234567",)
    assert rec.nationality == "IR" and rec.sex == "male"
    assert "1985-08-01" in rec.birth_candidates  # 10 Mordad 1364
    assert 1985 in rec.birth_years and rec.birth_year == 1364
    assert rec.region == "تهران" and rec.city == "tehran"


def test_input_is_not_mutated_and_empty_patient_works() -> None:
    before = copy.deepcopy(PATIENT)
    from_patient(PATIENT)
    assert before == PATIENT
    empty = from_patient({"resourceType": "Patient"})
    assert empty.names == () and empty.national_id is None and empty.birth_candidates == set()


_text = st.text(max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "resourceType": st.just("Patient"),
            "id": _text,
            "name": st.lists(
                st.fixed_dictionaries(
                    {"given": st.lists(_text, max_size=3), "family": _text, "text": _text}
                ),
                max_size=2,
            ),
            "birthDate": _text,
            "telecom": st.lists(st.fixed_dictionaries({"value": _text}), max_size=2),
            "identifier": st.lists(st.fixed_dictionaries({"value": _text}), max_size=2),
            "address": st.lists(st.fixed_dictionaries({"state": _text}), max_size=1),
        }
    )
)
def test_never_mutates_any_input(resource: dict[str, Any]) -> None:
    before = copy.deepcopy(resource)
    from_patient(resource)
    assert resource == before
