"""takamul.views beyond the conformance suite: FHIRPath, validation errors, types, outputs,
sources (NDJSON and the shared record's database), the ``views run`` command and Spark."""

from __future__ import annotations

import gzip
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from typer.testing import CliRunner

from takamul.settings import Settings
from takamul.store import Store
from takamul.views import (
    ViewDefinitionError,
    ViewError,
    ViewEvaluationError,
    compile_view,
    evaluate,
    parse_view,
)
from takamul.views.cli import views_app
from takamul.views.fhirpath import FhirPathError, compile_path
from takamul.views.fhirpath import evaluate as fp
from takamul.views.output import OutputFormat, column_sql_type, materialize, write_rows
from takamul.views.source import NdjsonError, SourceError, discover, iter_database, iter_ndjson
from tests.test_views_conformance import suite_path

SUITE = suite_path()

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "active": True,
    "gender": "female",
    "birthDate": "1980-05-17",
    "deceasedDateTime": "2020-02-01T10:00:00+03:00",
    "multipleBirthInteger": 2,
    "name": [
        {"use": "official", "family": "Haddad", "given": ["Layla", "Noor"]},
        {"use": "nickname", "given": ["Lulu"]},
    ],
    "telecom": [{"system": "phone", "value": "+966 50"}, {"system": "email", "value": "a@b.c"}],
    "extension": [
        {"url": "http://x/region", "valueCoding": {"code": "10"}},
        {"url": "http://x/quintile", "valueInteger": 5},
    ],
    "managingOrganization": {"reference": "Organization/o1/_history/2"},
    "generalPractitioner": [
        {"reference": "https://other.org/fhir/Practitioner/x"},
        {"reference": "#c1"},
        {"reference": "urn:uuid:53fefa32-fcbb-4ff8-8a92-55ee120877b7"},
        {"reference": "Practitioner/pr1"},
    ],
}

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2024-01-14T09:20:00+03:00",
    "issued": "2024-01-14T10:00:00.123+03:00",
    "component": [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 112, "unit": "mm[Hg]"},
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
            "valueQuantity": {"value": 75.5, "unit": "mm[Hg]"},
        },
    ],
}


def _view(*columns: dict[str, Any], resource: str = "Patient", **extra: Any) -> dict[str, Any]:
    return {"resource": resource, "select": [{"column": list(columns)}], **extra}


# FHIRPath ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("name.given", ["Layla", "Noor", "Lulu"]),
        ("name[1].given", ["Lulu"]),
        ("name.where(use = 'official').given.first()", ["Layla"]),
        ("name.given.where($this.startsWith('L'))", ["Layla", "Lulu"]),
        ("name.given.where($index = 1)", ["Noor"]),
        ("name.given.select($this.upper()).join('|')", ["LAYLA|NOOR|LULU"]),
        ("name.given.exists($this = 'Noor')", [True]),
        ("name.given.all($this.length() > 3)", [True]),
        ("name.given.take(2).skip(1)", ["Noor"]),
        ("(1 | 2 | 2).count()", [2]),
        ("(1 | 2).combine(2 | 3)", [1, 2, 2, 3]),
        ("(1 | 2 | 3).intersect(2 | 3 | 4)", [2, 3]),
        ("(1 | 2 | 3).exclude(2)", [1, 3]),
        ("1 in (1 | 2)", [True]),
        # choice elements: plain navigation, typed keys, is/as
        ("deceased", ["2020-02-01T10:00:00+03:00"]),
        ("deceased.ofType(boolean)", []),
        ("deceased is dateTime", [True]),
        ("multipleBirth.ofType(integer) + 1", [3]),
        ("multipleBirth as integer", [2]),
        ("gender.ofType(code)", ["female"]),
        ("gender.ofType(Coding)", []),
        ("Patient.name.family", ["Haddad"]),
        ("Observation.id", []),
        ("%resource.id", ["p1"]),
        # arithmetic and comparisons
        ("1 + 2 * 3", [7]),
        ("7 / 2", [3.5]),
        ("7 div 2", [3]),
        ("-7 div 2", [-3]),
        ("7 mod 2", [1]),
        ("1 / 0", []),
        ("'a' + 'b'", ["ab"]),
        ("'a' & {}", ["a"]),
        ("1 = 1.0", [True]),
        ("true = 1", [False]),
        ("{} = 1", []),
        ("'A' ~ 'a'", [True]),
        ("1 < 'a'", []),
        # three-valued logic
        ("true and {}", []),
        ("false and {}", [False]),
        ("true or {}", [True]),
        ("{} or false", []),
        ("false implies {}", [True]),
        ("true xor false", [True]),
        ("{}.not()", []),
        ("active.not()", [False]),
        ("iif(active, 'yes', 'no')", ["yes"]),
        ("iif(gender = 'male', 'm')", []),
        # dates: precision-aware comparison, time zones, calendar arithmetic
        ("birthDate > @1980-01-01", [True]),
        ("birthDate = @1980-05-17", [True]),
        ("birthDate < @1980", []),
        ("deceased.ofType(dateTime) = @2020-02-01T07:00:00Z", [True]),
        ("deceased.ofType(dateTime) > @2020-02-01T06:00:00Z", [True]),
        ("birthDate + 18 years", ["1998-05-17"]),
        ("@2020-02-29 + 1 year", ["2021-02-28"]),
        # boundaries
        ("@2020-02.highBoundary()", ["2020-02-29"]),
        ("@2020-02-01T10:30.lowBoundary()", ["2020-02-01T10:30:00.000+14:00"]),
        ("@T10:30.highBoundary()", ["10:30:59.999"]),
        ("1.587.lowBoundary()", [1.5865]),
        ("(2.5).round()", [3.0]),
        # strings and conversions
        ("telecom.where(system = 'phone').value.replace(' ', '')", ["+96650"]),
        ("'abc'.substring(1, 1)", ["b"]),
        ("'a,b'.split(',')", ["a", "b"]),
        ("'12'.toInteger() + 1", [13]),
        ("'x'.toInteger()", []),
        ("'yes'.convertsToBoolean()", [True]),
        # FHIR and SQL on FHIR functions
        ("extension('http://x/region').value.ofType(Coding).code", ["10"]),
        ("extension('http://x/quintile').value", [5]),
        ("getResourceKey()", ["Patient/p1"]),
        ("managingOrganization.getReferenceKey()", ["Organization/o1"]),
        ("managingOrganization.getReferenceKey(Organization)", ["Organization/o1"]),
        ("managingOrganization.getReferenceKey(Patient)", []),
        # absolute, contained and urn references have no key; relative ones do
        ("generalPractitioner.getReferenceKey()", ["Practitioner/pr1"]),
        ("descendants().where($this = 'Noor').count()", [1]),
        ("`gender`", ["female"]),
    ],
)
def test_fhirpath(expression: str, expected: list[Any]) -> None:
    assert fp(expression, PATIENT) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("name.", "expected a name after '.' (at character 5)"),
        ("name.where(", "unexpected end of expression"),
        ("1 +", "unexpected end of expression (at character 3)"),
        ("foo(1)", "unknown or unsupported function foo()"),
        ("resolve()", "unknown or unsupported function resolve()"),
        ("%nope", "undefined variable %nope"),
        ("'open", "unterminated string"),
        ("name.first(1)", "first() takes 0 argument(s), got 1"),
        ("name.ofType()", "ofType() takes 1 argument"),
        ("@@", "unexpected character '@' (at character 0)"),
    ],
)
def test_fhirpath_syntax_errors(expression: str, message: str) -> None:
    with pytest.raises(FhirPathError) as err:
        compile_path(expression)
    assert message in str(err.value)


def test_fhirpath_singleton_errors() -> None:
    with pytest.raises(FhirPathError, match="expects a single item, got a collection of 2"):
        fp("telecom.value.matches('@')", PATIENT)
    with pytest.raises(FhirPathError, match="single"):
        fp("name.given.single()", PATIENT)


def test_fhirpath_choice_values_are_typed() -> None:
    # A dateTime reached through its typed key keeps dateTime semantics for boundaries.
    obs = {"resourceType": "Observation", "valueDateTime": "2010-10-10"}
    assert fp("value.lowBoundary()", obs) == ["2010-10-10T00:00:00.000+14:00"]
    assert fp("value.ofType(dateTime).highBoundary()", obs) == ["2010-10-10T23:59:59.999-12:00"]
    patient = {"resourceType": "Patient", "birthDate": "2010-10"}
    assert fp("birthDate.lowBoundary()", patient) == ["2010-10-01"]


def test_fhirpath_period_boundaries() -> None:
    enc = {"resourceType": "Encounter", "period": {"start": "2024-03", "end": "2024-03-05"}}
    assert fp("period.lowBoundary()", enc) == ["2024-03-01T00:00:00.000+14:00"]
    assert fp("period.highBoundary()", enc) == ["2024-03-05T23:59:59.999-12:00"]


def test_fhirpath_primitive_arrays_skip_null_placeholders() -> None:
    # "given": [null, "x"] appears when _given carries an extension for the first item.
    assert fp("name.given", {"name": [{"given": [None, "x"]}]}) == ["x"]


# ViewDefinition validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("view", "path", "message"),
    [
        ([], "", "must be a JSON object"),
        ({"select": []}, "resource", "is required"),
        ({"resource": "Patinet", "select": [{}]}, "resource", "not a FHIR R4 resource type"),
        ({"resource": "Patient"}, "select", "at least one select"),
        ({"resource": "Patient", "select": {}}, "select", "must be an array"),
        (
            {"resource": "Patient", "select": [{"colum": []}]},
            "select[0].colum",
            "unknown element",
        ),
        (
            _view({"name": "id", "path": "id"}, {"name": "id", "path": "gender"}),
            "select[0].column[1].name",
            "column 'id' is already defined",
        ),
        (_view({"name": "1st", "path": "id"}), "select[0].column[0].name", "not a valid column"),
        (_view({"name": "id"}), "select[0].column[0].path", "is required"),
        (_view({"name": "id", "path": 3}), "select[0].column[0].path", "must be a FHIRPath"),
        (_view({"name": "id", "path": "id", "type": "strin"}), "select[0].column[0].type", "R4"),
        (
            _view({"name": "id", "path": "id", "collection": "yes"}),
            "select[0].column[0].collection",
            "must be true or false",
        ),
        (
            _view({"name": "id", "path": "name.where(use = %u)"}),
            "select[0].column[0].path",
            "undefined variable %u",
        ),
        (
            {
                "resource": "Patient",
                "select": [{"forEach": "name", "forEachOrNull": "name", "column": []}],
            },
            "select[0]",
            "only one of forEach, forEachOrNull and repeat",
        ),
        (
            {"resource": "Patient", "select": [{"repeat": [], "column": []}]},
            "select[0].repeat",
            "non-empty array",
        ),
        (
            {
                "resource": "Patient",
                "select": [
                    {
                        "unionAll": [
                            {"column": [{"name": "a", "path": "id"}]},
                            {"column": [{"name": "b", "path": "id"}]},
                        ]
                    }
                ],
            },
            "select[0].unionAll[1]",
            "same columns in the same order",
        ),
        (
            _view({"name": "id", "path": "id"}, constant=[{"name": "c", "valueInteger": "1"}]),
            "constant[0].valueInteger",
            "wrong value type",
        ),
        (
            _view({"name": "id", "path": "id"}, constant=[{"name": "c", "valueQuantity": {}}]),
            "constant[0].valueQuantity",
            "unsupported constant type",
        ),
        (
            _view({"name": "id", "path": "id"}, where=[{"path": "name.("}]),
            "where[0].path",
            "invalid FHIRPath",
        ),
    ],
)
def test_view_errors_name_the_path(view: Any, path: str, message: str) -> None:
    with pytest.raises(ViewDefinitionError) as err:
        parse_view(view)
    assert err.value.path == path
    assert message in str(err.value)


def test_view_from_bad_json_text() -> None:
    with pytest.raises(ViewDefinitionError, match="not valid JSON"):
        parse_view('{"resource": "Patient",')


def test_multiple_values_error_names_column_and_resource() -> None:
    view = compile_view(_view({"name": "given", "path": "name.given"}))
    with pytest.raises(ViewEvaluationError) as err:
        view.rows(PATIENT)
    text = str(err.value)
    assert "Patient/p1" in text
    assert "select[0].column[0] (given)" in text
    assert '"collection": true' in text


def test_where_must_be_boolean() -> None:
    view = compile_view(_view({"name": "id", "path": "id"}, where=[{"path": "gender"}]))
    with pytest.raises(ViewEvaluationError, match=r"where\[0\].path: 'gender' must evaluate"):
        view.rows(PATIENT)


def test_view_errors_are_view_errors() -> None:
    assert issubclass(ViewDefinitionError, ViewError)
    assert issubclass(ViewEvaluationError, ViewError)


def test_constants_of_every_kind() -> None:
    view = _view(
        {"name": "born_then", "path": "birthDate = %bd"},
        {"name": "after", "path": "deceased.ofType(dateTime) > %when"},
        {"name": "n", "path": "%n + 1"},
        constant=[
            {"name": "bd", "valueDate": "1980-05-17"},
            {"name": "when", "valueDateTime": "2020-01-01T00:00:00Z"},
            {"name": "n", "valueInteger": 41},
        ],
    )
    assert evaluate(view, [PATIENT]) == [{"born_then": True, "after": True, "n": 42}]


def test_row_index_and_nested_iteration() -> None:
    view = {
        "resource": "Patient",
        "select": [
            {"column": [{"name": "id", "path": "getResourceKey()"}]},
            {
                "forEach": "name",
                "column": [{"name": "i", "path": "%rowIndex"}],
                "select": [{"forEachOrNull": "given", "column": [{"name": "g", "path": "$this"}]}],
            },
        ],
    }
    rows = evaluate(view, [PATIENT, {"resourceType": "Patient", "id": "p2"}])
    assert rows == [
        {"id": "Patient/p1", "i": 0, "g": "Layla"},
        {"id": "Patient/p1", "i": 0, "g": "Noor"},
        {"id": "Patient/p1", "i": 1, "g": "Lulu"},
    ]


def test_other_resource_types_give_no_rows() -> None:
    view = compile_view(_view({"name": "id", "path": "id"}))
    assert view.rows(OBSERVATION) == []
    assert list(view.run([OBSERVATION, PATIENT])) == [("p1",)]


# Column types ----------------------------------------------------------------------------------


def test_untyped_columns_get_types_from_the_definitions() -> None:
    view = parse_view(
        {
            "resource": "Patient",
            "select": [
                {
                    "column": [
                        {"name": "id", "path": "id"},
                        {"name": "active", "path": "active"},
                        {"name": "birth", "path": "birthDate"},
                        {"name": "deceased", "path": "deceased.ofType(dateTime)"},
                        {"name": "names", "path": "name", "collection": True},
                        {"name": "n_names", "path": "name.count()"},
                        {"name": "has_phone", "path": "telecom.where(system='phone').exists()"},
                        {"name": "key", "path": "getResourceKey()"},
                        {"name": "unknown", "path": "deceased"},
                    ]
                },
                {"forEach": "contact", "column": [{"name": "rel", "path": "relationship"}]},
            ],
        }
    )
    types = {c.name: c.fhir_type for c in view.columns}
    assert types == {
        "id": "string",  # Resource.id is a System.String in the R4 snapshot
        "active": "boolean",
        "birth": "date",
        "deceased": "dateTime",
        "names": "HumanName",
        "n_names": "integer",
        "has_phone": "boolean",
        "key": "string",
        "unknown": None,  # a choice without ofType: treated as text
        "rel": "CodeableConcept",
    }


# Outputs --------------------------------------------------------------------------------------

OBS_VIEW: dict[str, Any] = {
    "resource": "Observation",
    "name": "bp",
    "select": [
        {
            "column": [
                {"name": "id", "path": "getResourceKey()", "type": "string"},
                {"name": "patient", "path": "subject.getReferenceKey(Patient)", "type": "string"},
                {"name": "issued", "path": "issued", "type": "instant"},
                {
                    "name": "day",
                    "path": "effective.ofType(dateTime)",
                    "type": "dateTime",
                    "tags": [{"name": "ansi/type", "value": "DATE"}],
                },
                {"name": "codes", "path": "code.coding.code", "collection": True},
                {"name": "code", "path": "code", "type": "CodeableConcept"},
            ]
        },
        {
            "forEach": "component",
            "column": [
                {"name": "part", "path": "code.coding.code.first()", "type": "code"},
                {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
                {"name": "i", "path": "%rowIndex", "type": "integer"},
                {"name": "high", "path": "value.ofType(Quantity).value > 100", "type": "boolean"},
            ],
        },
    ],
}


def test_duckdb_table_has_typed_columns() -> None:
    view = compile_view(OBS_VIEW)
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        assert materialize(view, view.run([OBSERVATION]), con) == 2
        schema = {r[0]: r[1] for r in con.execute("DESCRIBE bp").fetchall()}
        assert schema == {
            "id": "VARCHAR",
            "patient": "VARCHAR",
            "issued": "TIMESTAMP WITH TIME ZONE",
            "day": "DATE",
            "codes": "VARCHAR[]",
            "code": "JSON",
            "part": "VARCHAR",
            "value": "DOUBLE",
            "i": "INTEGER",
            "high": "BOOLEAN",
        }
        rows = con.execute(
            "SELECT part, value, i, high, codes, day::VARCHAR, issued::VARCHAR, "
            "code->>'$.coding[0].code' FROM bp ORDER BY i"
        ).fetchall()
    issued = "2024-01-14 07:00:00.123+00"  # +03:00 shown in UTC
    assert rows == [
        ("8480-6", 112.0, 0, True, ["85354-9"], "2024-01-14", issued, "85354-9"),
        ("8462-4", 75.5, 1, False, ["85354-9"], "2024-01-14", issued, "85354-9"),
    ]


def test_column_sql_types() -> None:
    view = compile_view(OBS_VIEW)
    assert [column_sql_type(c) for c in view.columns][:4] == [
        "VARCHAR",
        "VARCHAR",
        "TIMESTAMPTZ",
        "DATE",
    ]


def test_unknown_ansi_type_is_rejected_before_reading(tmp_path: Path) -> None:
    view = compile_view(
        _view({"name": "b", "path": "birthDate", "tags": [{"name": "ansi/type", "value": "FOO"}]})
    )

    def rows() -> Iterator[Any]:
        raise AssertionError("no row should be read")
        yield

    with pytest.raises(ViewDefinitionError) as err:
        write_rows(view, rows(), OutputFormat.csv, tmp_path / "x.csv")
    assert err.value.path == "select[0].column[0].tags"


def test_empty_view_still_creates_the_table() -> None:
    view = compile_view(OBS_VIEW)
    with duckdb.connect() as con:
        assert materialize(view, iter(()), con, "empty_bp") == 0
        assert con.execute("SELECT count(*) FROM empty_bp").fetchone() == (0,)


def test_value_that_does_not_fit_the_column_type_is_an_error() -> None:
    view = compile_view(_view({"name": "g", "path": "gender", "type": "boolean"}))
    with pytest.raises(ViewEvaluationError, match="'female' is not of the column type boolean"):
        write_rows(view, view.run([PATIENT]), OutputFormat.ndjson, Path(os.devnull))


def test_file_writers(tmp_path: Path) -> None:
    view = compile_view(OBS_VIEW)
    for fmt in (OutputFormat.csv, OutputFormat.ndjson, OutputFormat.parquet):
        assert write_rows(view, view.run([OBSERVATION]), fmt, tmp_path / f"bp.{fmt}") == 2
    csv_lines = (tmp_path / "bp.csv").read_text(encoding="utf-8").splitlines()
    assert csv_lines[0] == "id,patient,issued,day,codes,code,part,value,i,high"
    assert csv_lines[1].startswith("Observation/o1,Patient/p1,2024-01-14 07:00:00.123+00,2024")
    records = [orjson.loads(x) for x in (tmp_path / "bp.ndjson").read_bytes().splitlines()]
    assert records[0]["code"] == OBSERVATION["code"]  # complex values stay nested JSON
    assert records[1]["value"] == 75.5 and records[0]["codes"] == ["85354-9"]
    parquet = duckdb.sql(f"SELECT part, value, high FROM '{tmp_path / 'bp.parquet'}' ORDER BY 1")
    assert parquet.fetchall() == [("8462-4", 75.5, False), ("8480-6", 112.0, True)]


# Sources --------------------------------------------------------------------------------------


def _ndjson(path: Path, resources: list[Any]) -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in resources) + b"\n")
    return path


def test_discover_skips_files_named_for_other_types(tmp_path: Path) -> None:
    for name in ("Patient.ndjson", "Patient.001.ndjson", "Observation.ndjson", "mixed.ndjson"):
        (tmp_path / name).write_text("")
    (tmp_path / "manifest.json").write_text("{}")
    names = [p.name for p in discover([tmp_path], "Patient")]
    assert names == ["Patient.001.ndjson", "Patient.ndjson", "mixed.ndjson"]
    with pytest.raises(SourceError, match="no such file"):
        discover([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"no \*.ndjson files"):
        discover([tmp_path / "empty"])


def test_bad_ndjson_line_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "Patient.ndjson"
    path.write_bytes(orjson.dumps(PATIENT) + b"\n\n" + b'{"resourceType": "Pat\n')
    with pytest.raises(NdjsonError) as err:
        list(iter_ndjson([path]))
    assert err.value.line == 3
    assert str(err.value).startswith(f"{path}:3: invalid JSON")
    path.write_bytes(b"[1, 2]\n")
    with pytest.raises(NdjsonError, match=":1: not a FHIR resource"):
        list(iter_ndjson([path]))


def test_gzip_ndjson(tmp_path: Path) -> None:
    path = tmp_path / "Patient.ndjson.gz"
    path.write_bytes(gzip.compress(orjson.dumps(PATIENT) + b"\n"))
    seen: list[int] = []
    assert [r["id"] for r in iter_ndjson([tmp_path], "Patient", seen.append)] == ["p1"]
    assert seen and seen[-1] == path.stat().st_size


@pytest.fixture
def record_db(tmp_path: Path) -> Iterator[str]:
    """A shared-record SQLite database: two current Patients, one deleted, one Observation."""
    url = f"sqlite:///{tmp_path / 'record.sqlite'}"
    store = Store(Settings(database_url=url, mpi=False))
    try:
        # (the contained and urn references of PATIENT are not what this test is about)
        first = {k: v for k, v in PATIENT.items() if k != "generalPractitioner"}
        second = dict(first, id="p2", gender="male")
        third = dict(first, id="p3")
        for body in (first, second, third, OBSERVATION):
            store.write(lambda s, b=body: s.update(b["resourceType"], b["id"], dict(b)))
        store.write(lambda s: s.update("Patient", "p2", dict(second, active=False)))
        store.write(lambda s: s.delete("Patient", "p3"))
    finally:
        store.close()
    yield url


def test_iter_database_reads_current_resources(record_db: str) -> None:
    patients = list(iter_database(record_db, "Patient"))
    assert [(p["id"], p["active"]) for p in patients] == [("p1", True), ("p2", False)]
    assert patients[0]["meta"]["versionId"] == "1"


def test_database_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such SQLite database"):
        list(iter_database(f"sqlite:///{tmp_path / 'none.sqlite'}", "Patient"))
    assert not (tmp_path / "none.sqlite").exists()
    empty = tmp_path / "empty.sqlite"  # an empty file is an SQLite database without tables
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match="cannot read the resource table"):
        list(iter_database(f"sqlite:///{empty}", "Patient"))
    with pytest.raises(SourceError, match="not a database URL"):
        list(iter_database("nonsense", "Patient"))


# The command --------------------------------------------------------------------------------

runner = CliRunner()

PATIENT_VIEW: dict[str, Any] = {
    "resourceType": "ViewDefinition",
    "name": "patient_demographics",
    "resource": "Patient",
    "select": [
        {
            "column": [
                {"name": "id", "path": "getResourceKey()", "type": "string"},
                {"name": "gender", "path": "gender", "type": "code"},
                {"name": "active", "path": "active", "type": "boolean"},
                {"name": "family", "path": "name.family.first()", "type": "string"},
            ]
        }
    ],
}


@pytest.fixture
def view_file(tmp_path: Path) -> Path:
    path = tmp_path / "patients.json"
    path.write_text(json.dumps(PATIENT_VIEW))
    return path


def test_cli_csv_to_stdout(tmp_path: Path, view_file: Path) -> None:
    data = _ndjson(tmp_path / "Patient.ndjson", [PATIENT, OBSERVATION])
    result = runner.invoke(views_app, ["run", str(view_file), "--input", str(data)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "id,gender,active,family",
        "Patient/p1,female,true,Haddad",
    ]
    assert "1 rows from 2 resources" in result.stderr


def test_cli_files_and_folders(tmp_path: Path, view_file: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    _ndjson(folder / "Patient.ndjson", [PATIENT])
    _ndjson(folder / "Observation.ndjson", [OBSERVATION])
    extra = _ndjson(tmp_path / "more.ndjson", [dict(PATIENT, id="p9")])
    out = tmp_path / "out" / "patients.ndjson"
    args = ["run", str(view_file), "-i", str(folder), "-i", str(extra), "--out", str(out)]
    result = runner.invoke(views_app, args)
    assert result.exit_code == 0, result.output
    rows = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert [r["id"] for r in rows] == ["Patient/p1", "Patient/p9"]
    assert "2 resources" in result.stderr  # Observation.ndjson was not even read


def test_cli_parquet_and_duckdb(tmp_path: Path, view_file: Path) -> None:
    data = _ndjson(tmp_path / "Patient.ndjson", [PATIENT])
    parquet = tmp_path / "p.parquet"
    result = runner.invoke(views_app, ["run", str(view_file), "-i", str(data), "-o", str(parquet)])
    assert result.exit_code == 0, result.output
    assert duckdb.sql(f"SELECT gender FROM '{parquet}'").fetchall() == [("female",)]
    db = tmp_path / "analytics.duckdb"
    args = ["run", str(view_file), "-i", str(data), "-f", "duckdb", "-o", str(db), "--table", "pt"]
    result = runner.invoke(views_app, args)
    assert result.exit_code == 0, result.output
    with duckdb.connect(str(db)) as con:
        assert con.execute("SELECT id, active FROM pt").fetchall() == [("Patient/p1", True)]


def test_cli_reads_the_shared_record(record_db: str, view_file: Path) -> None:
    result = runner.invoke(views_app, ["run", str(view_file), "--db", record_db])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1:] == [
        "Patient/p1,female,true,Haddad",
        "Patient/p2,male,false,Haddad",
    ]


@pytest.mark.parametrize(
    ("view_text", "message"),
    [
        ("{not json", "is not valid JSON"),
        (json.dumps({"resource": "Patient", "select": [{"forEach": 1}]}), "select[0].forEach"),
        (
            json.dumps(_view({"name": "n", "path": "name.where("})),
            "select[0].column[0].path: invalid FHIRPath",
        ),
    ],
)
def test_cli_bad_view_exits_2(tmp_path: Path, view_text: str, message: str) -> None:
    view = tmp_path / "bad.json"
    view.write_text(view_text)
    data = _ndjson(tmp_path / "Patient.ndjson", [PATIENT])
    result = runner.invoke(views_app, ["run", str(view), "-i", str(data)])
    assert result.exit_code == 2
    assert message in result.stderr


def test_cli_bad_ndjson_line_exits_2(tmp_path: Path, view_file: Path) -> None:
    data = tmp_path / "Patient.ndjson"
    data.write_bytes(orjson.dumps(PATIENT) + b"\n" + b"{oops}\n")
    out = tmp_path / "out.csv"
    result = runner.invoke(views_app, ["run", str(view_file), "-i", str(data), "-o", str(out)])
    assert result.exit_code == 2
    assert f"{data}:2: invalid JSON" in result.stderr
    assert not out.exists()  # no half-written output
    assert list(tmp_path.glob(".out.csv.partial*")) == []


def test_cli_evaluation_error_exits_2(tmp_path: Path) -> None:
    view = tmp_path / "v.json"
    view.write_text(json.dumps(_view({"name": "given", "path": "name.given"})))
    data = _ndjson(tmp_path / "Patient.ndjson", [PATIENT])
    result = runner.invoke(views_app, ["run", str(view), "-i", str(data)])
    assert result.exit_code == 2
    assert "Patient/p1: select[0].column[0] (given)" in result.stderr
    db = tmp_path / "analytics.duckdb"
    result = runner.invoke(views_app, ["run", str(view), "-i", str(data), "-o", str(db)])
    assert result.exit_code == 2
    assert not db.exists()  # the rows fail before the database is opened


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give the resources with --input FILE_OR_DIR or --db DATABASE_URL"),
        (["--input", "x.ndjson", "--db", "sqlite:///x"], "give the resources"),
        (["--input", "missing.ndjson"], "missing.ndjson: no such file or folder"),
        (["--input", "x.ndjson", "--format", "parquet"], "--format parquet needs --out FILE"),
        (["--db", "sqlite:///nowhere/x.sqlite"], "no such SQLite database"),
    ],
)
def test_cli_usage_errors(view_file: Path, args: list[str], message: str) -> None:
    result = runner.invoke(views_app, ["run", str(view_file), *args])
    assert result.exit_code == 2
    assert message in result.stderr


# Spark ----------------------------------------------------------------------------------------

SPARK_CASES = [
    ("foreach.json", "nested forEach"),
    ("union.json", "basic"),
    ("collection.json", "collection = true"),
    ("row_index.json", "%rowIndex in unionAll inside forEach"),
    ("constant_types.json", "decimal"),
]


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    from pyspark.sql import SparkSession  # a dev dependency: the Spark path always runs

    # The executors' Python must be this one, where takamul is importable.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2]")
        .appName("takamul-views-test")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.driver.extraJavaOptions", "-XX:+UseSerialGC -XX:TieredStopAtLevel=1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_spark_rows_equal_the_local_evaluator(spark: Any, tmp_path: Path) -> None:
    from takamul.views.evaluate import evaluate_spark
    from takamul.views.output import row_coercer

    for file, title in SPARK_CASES:
        suite = json.loads((SUITE / file).read_text(encoding="utf-8"))
        case = next(c for c in suite["tests"] if c["title"] == title)
        folder = tmp_path / file
        folder.mkdir()
        # Two files, so that the rows come from more than one partition.
        half = max(len(suite["resources"]) // 2, 1)
        _ndjson(folder / "a.ndjson", suite["resources"][:half])
        _ndjson(folder / "b.ndjson", suite["resources"][half:])
        view = compile_view(case["view"])
        df = evaluate_spark(spark, case["view"], [folder])
        assert df.columns == view.column_names
        coerce = row_coercer(view.columns, complex_as_text=True)
        local = sorted(repr(coerce(r)) for r in view.run(suite["resources"]))
        remote = sorted(repr(tuple(r)) for r in df.collect())
        assert remote == local, (file, title)


def test_spark_missing_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from takamul.views.evaluate import evaluate_spark

    monkeypatch.setitem(sys.modules, "pyspark", None)
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)
    with pytest.raises(ImportError, match=r"pip install 'takamul\[spark\]'"):
        evaluate_spark(object(), PATIENT_VIEW, ["x.ndjson"])
