"""Structural validation of R4 JSON: unit cases, and the official R4 examples as a corpus."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from takamul.fhir.validation import Issue, validate_resource
from tests.fhir_examples import examples_dir, iter_examples

# Official R4 examples that are genuinely invalid against the R4 definitions they ship with.
KNOWN_INVALID_EXAMPLES: dict[str, str] = {
    "DeviceMetric-example.json": "parent refers to a DeviceDefinition; R4 allows only Device",
    "DeviceUseStatement-example.json": "reasonReference refers to a Procedure (not allowed)",
    "ImplementationGuide-fhir.json": (
        "no name or status (both required); refers to a SearchParameter id over 64 characters"
    ),
    "ig-r4.json": "copy of ImplementationGuide-fhir.json: no name/status, over-long reference id",
    "MedicationRequest-medrx0301.json": (
        "dispenseRequest.performer refers to a Practitioner; R4 allows only Organization"
    ),
    "Observation-clinical-gender.json": "performer refers to an Encounter, not an allowed target",
    "Questionnaire-qs1.json": "nested items have no linkId (required)",
    "SearchParameter-codesystem-extensions-CodeSystem-author.json": "no base (required)",
    "SearchParameter-codesystem-extensions-CodeSystem-effective.json": "no base (required)",
    "SearchParameter-codesystem-extensions-CodeSystem-end.json": "no base (required)",
    "SearchParameter-codesystem-extensions-CodeSystem-keyword.json": "no base (required)",
    "SearchParameter-codesystem-extensions-CodeSystem-workflow.json": "no base (required)",
    "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json": (
        "id has 67 characters; the id format allows at most 64"
    ),
    "SearchParameter-valueset-extensions-ValueSet-author.json": "no base (required)",
    "SearchParameter-valueset-extensions-ValueSet-effective.json": "no base (required)",
    "SearchParameter-valueset-extensions-ValueSet-end.json": "no base (required)",
    "SearchParameter-valueset-extensions-ValueSet-keyword.json": "no base (required)",
    "SearchParameter-valueset-extensions-ValueSet-workflow.json": "no base (required)",
}

# Terminology resources are optional for the server; their examples are checked on their own.
TERMINOLOGY_TYPES = frozenset({"CodeSystem", "ValueSet", "ConceptMap", "NamingSystem"})


def errors(resource: object, expected_type: str | None = None) -> list[Issue]:
    return [i for i in validate_resource(resource, expected_type) if i.severity == "error"]


def patient(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", **elements}


# --- whole resources -------------------------------------------------------------------------


def test_minimal_patient_is_valid() -> None:
    assert validate_resource({"resourceType": "Patient"}) == []
    assert validate_resource(patient(name=[{"family": "Smith"}], gender="female"), "Patient") == []


def test_not_an_object_or_unknown_type() -> None:
    assert errors([]) and errors("Patient")
    assert errors({"id": "x"})[0].code == "structure"
    unknown = errors({"resourceType": "Patientt"})
    assert [i.code for i in unknown] == ["not-supported"]
    assert errors({"resourceType": "DomainResource"}), "abstract types are not resources"


def test_expected_type_must_match() -> None:
    issues = errors(
        {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}, "Patient"
    )
    assert len(issues) == 1 and "Patient" in issues[0].diagnostics
    assert issues[0].code == "invalid"


def test_deeply_nested_input_is_reported_not_raised() -> None:
    extension: dict[str, Any] = {"url": "http://example.org/x", "valueString": "leaf"}
    for _ in range(2000):
        extension = {"url": "http://example.org/x", "extension": [extension]}
    issues = errors(patient(extension=[extension]))
    assert [i.code for i in issues] == ["too-costly"]


def test_arabic_and_persian_text_accepted_unchanged() -> None:
    resource = patient(
        name=[{"given": ["محمد"], "family": "کریمی", "text": "محمد\u00a0کریمی\u200c"}],
        address=[{"city": "تهران", "line": ["خیابان ولیعصر"]}],
    )
    before = copy.deepcopy(resource)
    assert validate_resource(resource) == []
    assert resource == before


# --- element names ---------------------------------------------------------------------------


def test_unknown_element_reported_with_location() -> None:
    issues = errors(patient(nmae=[{"family": "x"}], contact=[{"nmae": {"family": "y"}}]))
    assert [i.expression for i in issues] == ["Patient.nmae", "Patient.contact[0].nmae"]
    assert all(i.code == "structure" for i in issues)
    assert "Unknown element 'nmae' in Patient" in issues[0].diagnostics
    assert "Patient.contact" in issues[1].diagnostics


def test_unknown_element_inside_data_type() -> None:
    issues = errors(patient(name=[{"family": "x", "giveName": "y"}]))
    assert [i.expression for i in issues] == ["Patient.name[0].giveName"]
    assert "HumanName" in issues[0].diagnostics


def test_bad_choice_suffix() -> None:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    issues = errors({**obs, "valueFoo": 1})
    assert [i.expression for i in issues] == ["Observation.valueFoo"]
    assert "'Foo' is not an allowed type for value[x]" in issues[0].diagnostics
    assert "valueQuantity" in issues[0].diagnostics
    assert errors({**obs, "value": 1}), "a choice needs its type suffix"
    assert errors({**obs, "valuestring": "x"}), "the suffix starts with an upper-case letter"
    assert errors({**obs, "valueString": "ok"}) == []


def test_two_types_of_one_choice() -> None:
    issues = errors(patient(deceasedBoolean=True, deceasedDateTime="2020-01-01"))
    assert [i.expression for i in issues] == ["Patient.deceased.ofType(dateTime)"]


def test_resource_type_only_at_the_root() -> None:
    issues = errors(patient(maritalStatus={"resourceType": "CodeableConcept", "text": "x"}))
    assert [i.expression for i in issues] == ["Patient.maritalStatus.resourceType"]


# --- JSON shapes -----------------------------------------------------------------------------


def test_array_where_single_value_expected_and_vice_versa() -> None:
    issues = errors(patient(gender=["male"], name={"family": "x"}))
    assert {i.expression for i in issues} == {"Patient.gender", "Patient.name"}
    by_path = {i.expression: i.diagnostics for i in issues}
    assert "single value" in by_path["Patient.gender"]
    assert "must be a JSON array" in by_path["Patient.name"]


def test_nulls_and_empty_values_are_errors() -> None:
    issues = errors(
        patient(gender=None, identifier=[], maritalStatus={}, birthDate="", name=[None])
    )
    assert {i.expression for i in issues} == {
        "Patient.gender",
        "Patient.identifier",
        "Patient.maritalStatus",
        "Patient.birthDate",
        "Patient.name[0]",
    }


def test_primitive_extensions_aligned_with_array() -> None:
    ext = {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}
    good = patient(name=[{"given": ["A", None, "C"], "_given": [None, ext, None]}])
    assert errors(good) == []
    misaligned = patient(name=[{"given": ["A", "B"], "_given": [ext]}])
    assert [i.expression for i in errors(misaligned)] == ["Patient.name[0].given"]
    both_null = patient(name=[{"given": ["A", None], "_given": [ext, None]}])
    assert [i.expression for i in errors(both_null)] == ["Patient.name[0].given[1]"]


def test_primitive_extension_contents_are_validated() -> None:
    bad = patient(_birthDate={"extension": [{"url": "http://example.org/x"}], "foo": 1})
    assert {i.expression for i in errors(bad)} == {
        "Patient.birthDate.extension[0]",
        "Patient.birthDate.foo",
    }
    assert errors(patient(_name={"id": "x"})), "name is not a primitive, so no _name"


def test_extension_only_primitive_counts_as_present() -> None:
    absent = {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                "valueCode": "unknown",
            }
        ]
    }
    obs = {"resourceType": "Observation", "_status": absent, "code": {"text": "x"}}
    assert errors(obs) == []


# --- cardinality -----------------------------------------------------------------------------


def test_missing_required_elements_reported_with_location() -> None:
    issues = errors({"resourceType": "Observation", "valueString": "x"})
    assert {i.expression for i in issues} == {"Observation.status", "Observation.code"}
    assert all(i.code == "required" for i in issues)
    nested = errors(patient(link=[{"type": "seealso"}]))
    assert [i.expression for i in nested] == ["Patient.link[0].other"]


def test_content_reference_recursion() -> None:
    questionnaire = {
        "resourceType": "Questionnaire",
        "status": "draft",
        "item": [
            {"linkId": "1", "type": "group", "item": [{"type": "string", "item": [{"bad": 1}]}]}
        ],
    }
    issues = errors(questionnaire)
    assert {i.expression for i in issues} == {
        "Questionnaire.item[0].item[0].linkId",
        "Questionnaire.item[0].item[0].item[0].bad",
        "Questionnaire.item[0].item[0].item[0].linkId",
        "Questionnaire.item[0].item[0].item[0].type",
    }


# --- primitive values ------------------------------------------------------------------------


def test_wrong_date_format_with_location() -> None:
    issues = errors(patient(birthDate="2020-13-01"))
    assert [(i.code, i.expression) for i in issues] == [("value", "Patient.birthDate")]
    assert "2020-13-01" in issues[0].diagnostics
    assert errors(patient(birthDate="2020-12")) == []


@pytest.mark.parametrize(
    ("elements", "expression"),
    [
        ({"active": "true"}, "Patient.active"),
        ({"multipleBirthInteger": 1.5}, "Patient.multipleBirth.ofType(integer)"),
        ({"multipleBirthInteger": True}, "Patient.multipleBirth.ofType(integer)"),
        ({"multipleBirthInteger": 2**31}, "Patient.multipleBirth.ofType(integer)"),
        ({"gender": "female "}, "Patient.gender"),
        ({"implicitRules": "http://a b"}, "Patient.implicitRules"),
        ({"photo": [{"size": -1}]}, "Patient.photo[0].size"),
        ({"photo": [{"data": "not base64!"}]}, "Patient.photo[0].data"),
        ({"meta": {"lastUpdated": "2020-01-01T10:00:00"}}, "Patient.meta.lastUpdated"),
        ({"text": {"status": "generated", "div": "<p>x</p>"}}, "Patient.text.div"),
        ({"id": "a_b"}, "Patient.id"),
    ],
)
def test_bad_primitive_values(elements: dict[str, Any], expression: str) -> None:
    assert [i.expression for i in errors(patient(**elements))] == [expression]


def test_good_primitive_values() -> None:
    assert (
        errors(
            patient(
                multipleBirthInteger=-1,
                photo=[{"size": 0, "data": "QUJD\nREVG"}],
                meta={"lastUpdated": "2020-01-01T10:00:00.5+03:30", "versionId": "1"},
                text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml"/>'},
            )
        )
        == []
    )
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert errors({**obs, "valueQuantity": {"value": 1}}) == []
    assert errors({**obs, "valueQuantity": {"value": True}})


def test_invalid_base64_is_rejected_quickly() -> None:
    # The XML-schema base64 pattern backtracks exponentially in a naive regex engine.
    started = time.perf_counter()
    assert errors(patient(photo=[{"data": "QUJD\n" * 200 + "!"}]))
    assert time.perf_counter() - started < 1


# --- extensions, references, contained resources ---------------------------------------------


def test_extension_needs_value_or_nested_extensions_not_both() -> None:
    issues = errors(
        patient(
            extension=[
                {"url": "http://example.org/a"},
                {
                    "url": "http://example.org/b",
                    "valueString": "x",
                    "extension": [{"url": "c", "valueInteger": 1}],
                },
                {"valueString": "no url"},
            ]
        )
    )
    assert [(i.code, i.expression) for i in issues] == [
        ("invariant", "Patient.extension[0]"),
        ("invariant", "Patient.extension[1]"),
        ("required", "Patient.extension[2].url"),
    ]


@pytest.mark.parametrize(
    "reference",
    [
        "Practitioner/1",
        "Practitioner/1/_history/2",
        "http://example.org/fhir/Practitioner/1",
        "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
        "urn:oid:1.2.3.4",
        "#pr1",
        "Practitioner?identifier=http://example.org|123",
    ],
)
def test_good_reference_syntax(reference: str) -> None:
    assert errors(patient(generalPractitioner=[{"reference": reference}])) == []


@pytest.mark.parametrize(
    "reference",
    [
        "Practitioner",
        "Practitioner/a b",
        "Practitioner/a_b",
        "urn:uuid:123",
        "#a b",
        "practitioner/1",
    ],
)
def test_bad_reference_syntax(reference: str) -> None:
    issues = errors(patient(managingOrganization={"reference": reference}))
    assert [i.expression for i in issues] == ["Patient.managingOrganization.reference"]


def test_reference_to_disallowed_target_type() -> None:
    issues = errors(patient(generalPractitioner=[{"reference": "Observation/1"}]))
    assert [(i.code, i.expression) for i in issues] == [
        ("invalid", "Patient.generalPractitioner[0].reference")
    ]
    assert "Observation" in issues[0].diagnostics and "Practitioner" in issues[0].diagnostics
    unknown_type = errors(patient(generalPractitioner=[{"reference": "Doctor/1"}]))
    assert "Doctor" in unknown_type[0].diagnostics
    any_target = {
        "resourceType": "Basic",
        "code": {"text": "x"},
        "subject": {"reference": "Observation/1"},
    }
    assert errors(any_target) == [], "Basic.subject may refer to any resource"


def test_contained_resource_validated_with_its_path() -> None:
    resource = patient(
        contained=[
            {"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "x"}]},
            {"resourceType": "Medication", "id": "m1", "cod": {"text": "x"}},
            {"resourceType": "Organization", "name": "no id"},
        ],
        generalPractitioner=[{"reference": "#pr1"}],
    )
    issues = errors(resource)
    assert [i.expression for i in issues] == ["Patient.contained[1].cod", "Patient.contained[2]"]
    assert "in Medication" in issues[0].diagnostics
    assert "Contained Organization" in issues[1].diagnostics


def test_contained_resources_do_not_nest() -> None:
    inner = {"resourceType": "Organization", "id": "o2", "name": "x"}
    outer = {"resourceType": "Organization", "id": "o1", "name": "y", "contained": [inner]}
    issues = errors(patient(contained=[outer]))
    assert [i.expression for i in issues] == ["Patient.contained[0].contained"]


def test_bundle_entry_resources_validated() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:c757873d-ec9a-4326-a141-556f43239520", "resource": patient()},
            {"resource": {"resourceType": "Observation", "status": "final"}},
            {"resource": {"resourceType": "Patient", "gender": 1}},
        ],
    }
    issues = errors(bundle)
    assert [i.expression for i in issues] == [
        "Bundle.entry[1].resource.code",
        "Bundle.entry[2].resource.gender",
    ]


def test_parameters_resource_and_nested_parts() -> None:
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "p", "resource": patient(bad=1)},
            {"name": "q", "part": [{"name": "r", "valueBoolean": "yes"}]},
        ],
    }
    assert [i.expression for i in errors(params)] == [
        "Parameters.parameter[0].resource.bad",
        "Parameters.parameter[1].part[0].value.ofType(boolean)",
    ]


def test_multiple_errors_all_reported() -> None:
    resource = {
        "resourceType": "Observation",
        "id": "bad id",
        "staus": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": " 123"}]},
        "effectiveDateTime": "yesterday",
        "subject": {"reference": "Device/1/extra"},
        "component": [{"code": {"text": "a"}}, {"valueString": "b"}],
    }
    assert {i.expression for i in errors(resource)} == {
        "Observation.id",
        "Observation.staus",
        "Observation.status",
        "Observation.code.coding[0].code",
        "Observation.effective.ofType(dateTime)",
        "Observation.subject.reference",
        "Observation.component[1].code",
    }


# --- the official examples -------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_results() -> dict[str, tuple[str, list[Issue]]]:
    """File name -> (resource type, errors) for every official example."""
    # No skip when the package cannot be fetched: the corpus is part of what must pass.
    examples = list(iter_examples(examples_dir()))
    return {name: (res["resourceType"], errors(res)) for name, res in examples}


def _rejected(results: dict[str, tuple[str, list[Issue]]], terminology: bool) -> dict[str, str]:
    return {
        name: f"{errs[0].expression}: {errs[0].diagnostics}"
        for name, (rtype, errs) in results.items()
        if errs and (rtype in TERMINOLOGY_TYPES) == terminology
    }


@pytest.mark.slow
def test_official_examples_validate(corpus_results: dict[str, tuple[str, list[Issue]]]) -> None:
    assert len(corpus_results) > 5000
    rejected = _rejected(corpus_results, terminology=False)
    assert set(rejected) == set(KNOWN_INVALID_EXAMPLES), rejected


@pytest.mark.slow
def test_official_terminology_examples_validate(
    corpus_results: dict[str, tuple[str, list[Issue]]],
) -> None:
    terminology = [n for n, (rtype, _) in corpus_results.items() if rtype in TERMINOLOGY_TYPES]
    assert len(terminology) > 100
    assert _rejected(corpus_results, terminology=True) == {}
