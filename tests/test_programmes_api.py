"""Care gaps and decision support over HTTP, on both stores: the care-gap Measures in the record
(read with fhirpy as an independent client), ``Measure/$care-gaps`` as Da Vinci DEQM defines it
(exactly the gaps of hand-built persons, documents valid as R4, errors naming the parameter),
the facility guard on it with access control on, and CDS Hooks 2.0 discovery and patient-view.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from dateutil.relativedelta import relativedelta
from fhirpy import SyncFHIRClient

from takamul.fhir.validation import validate_resource
from takamul.programmes.caregaps import GAP_STATUS_EXTENSION
from takamul.programmes.definitions import load_catalog
from takamul.programmes.gaps import GAPS_SYSTEM, measure_ids
from takamul.programmes.measures import measure_resources, store_measures
from takamul.security.service import Security
from takamul.settings import Settings
from takamul.store.repository import Store
from tests.server import postgres_database, running_server
from tests.test_programmes_status import (
    DIABETES,
    SNOMED,
    WORLD,
    bp,
    condition,
    encounter,
    patient,
)

TODAY = date.today()
ALL = "open-gap,closed-gap,prospective-gap"
CVX = "http://hl7.org/fhir/sid/cvx"
PREV_ORG = "cg-org-prev"
WORLD_ORG = "cg-org-world"
MAMMO_DONE = TODAY - timedelta(days=365)  # valid until TODAY + 365 (every 730 days)
CLOSED_END = TODAY + timedelta(days=364)
PROSPECTIVE_END = TODAY + timedelta(days=365)


def _born(years: int) -> str:
    return (TODAY - relativedelta(years=years, days=10)).isoformat()


def _person(pid: str, gender: str, years: int, org: str = PREV_ORG) -> dict[str, Any]:
    return patient(
        pid,
        org,
        gender=gender,
        birthDate=_born(years),
        name=[{"family": f"Family-{pid}", "given": [f"Given-{pid}"]}],
    )


def mammography(pid: str, day: date) -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": f"{pid}-mammo",
        "status": "completed",
        "code": {"coding": [{"system": SNOMED, "code": "71651007"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "performedDateTime": day.isoformat(),
    }


def mmr(pid: str, n: int, day: date) -> dict[str, Any]:
    return {
        "resourceType": "Immunization",
        "id": f"{pid}-mmr{n}",
        "status": "completed",
        "vaccineCode": {"coding": [{"system": CVX, "code": "03"}]},
        "patient": {"reference": f"Patient/{pid}"},
        "occurrenceDateTime": day.isoformat(),
    }


# person -> (resources, gap status per measure for a period ending CLOSED_END)
PREVENTIVE: dict[str, tuple[list[dict[str, Any]], dict[str, str]]] = {
    "cg-mammo": (
        [_person("cg-mammo", "female", 55), mammography("cg-mammo", MAMMO_DONE)],
        {
            "breast-cancer-screening": "closed-gap",
            "cervical-cancer-screening": "open-gap",
            "colorectal-cancer-screening": "open-gap",
            "diabetes-screening": "open-gap",
        },
    ),
    "cg-none": (
        [_person("cg-none", "female", 55)],
        {
            "breast-cancer-screening": "open-gap",
            "cervical-cancer-screening": "open-gap",
            "colorectal-cancer-screening": "open-gap",
            "diabetes-screening": "open-gap",
        },
    ),
    "cg-man": (
        [_person("cg-man", "male", 55)],
        {"colorectal-cancer-screening": "open-gap", "diabetes-screening": "open-gap"},
    ),
    "cg-child": (
        [_person("cg-child", "male", 3), mmr("cg-child", 1, TODAY - relativedelta(years=2))],
        {"measles-immunization": "open-gap", "dtp3-immunization": "open-gap"},
    ),
    "cg-diabetic": (
        [
            _person("cg-diabetic", "male", 50),
            condition("cg-diabetic", 1, "2020-01-10", code=DIABETES),
        ],
        # excluded from diabetes screening; in the registry with no visit in 12 months
        {"colorectal-cancer-screening": "open-gap", "diabetes-control": "open-gap"},
    ),
    "cg-uncontrolled": (
        [
            _person("cg-uncontrolled", "male", 30),
            condition("cg-uncontrolled", 1, (TODAY - timedelta(days=700)).isoformat()),
            bp("cg-uncontrolled", 1, (TODAY - timedelta(days=10)).isoformat(), 165, 102),
        ],
        {"hypertension-control": "open-gap"},
    ),
    "cg-controlled": (
        [
            _person("cg-controlled", "male", 30),
            condition("cg-controlled", 1, (TODAY - timedelta(days=700)).isoformat()),
            bp("cg-controlled", 1, (TODAY - timedelta(days=10)).isoformat(), 120, 75),
            encounter("cg-controlled", 1, (TODAY - timedelta(days=10)).isoformat()),
        ],
        {"hypertension-control": "closed-gap"},
    ),
}
WORLD_END = "2025-06-30"  # the AS_OF of tests/test_programmes_status.py
# the control gap of some of its persons on that day (their preventive gaps aside)
WORLD_CONTROL = {
    "ctrl": "closed-gap",
    "edge": "open-gap",
    "nomeas": "open-gap",
    "missed": "open-gap",
    "ltfu": "open-gap",
    "recent": None,  # registered less than 3 months before: not in the denominator
}


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    rtype, rid = resource["resourceType"], resource["id"]
    return {"resource": resource, "request": {"method": "PUT", "url": f"{rtype}/{rid}"}}


def _load(http: httpx.Client) -> None:
    entries: list[dict[str, Any]] = []
    for resources, _ in PREVENTIVE.values():
        entries.extend(_entry(r) for r in resources)
    for pid in WORLD_CONTROL:
        entries.append(
            _entry(
                patient(
                    pid, WORLD_ORG, name=[{"family": f"World-{pid}", "given": [f"Given-{pid}"]}]
                )
            )
        )
        entries.extend(_entry(r) for r in WORLD[pid][0])
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    r = http.post("", json=bundle)
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def loaded(http: httpx.Client) -> httpx.Client:
    _load(http)
    return http


def _gaps(http: httpx.Client, **params: Any) -> dict[str, Any]:
    r = http.get("/Measure/$care-gaps", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resourceType"] == "Parameters"
    return dict(body)


def _documents(params: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in params.get("parameter", []):
        assert p["name"] == "return"
        out.append(p["resource"])
    return out


def _statuses(document: dict[str, Any]) -> dict[str, str]:
    """measure id -> gap status, read from the DetectedIssues and their MeasureReports."""
    by_url = {e["fullUrl"]: e["resource"] for e in document["entry"]}
    found = {}
    for issue in (r for r in by_url.values() if r["resourceType"] == "DetectedIssue"):
        (ext,) = issue["modifierExtension"]
        assert ext["url"] == GAP_STATUS_EXTENSION
        (coding,) = ext["valueCodeableConcept"]["coding"]
        assert coding["system"] == GAPS_SYSTEM
        report = by_url[issue["evidence"][0]["detail"][0]["reference"]]
        measure = report["measure"].rsplit("/", 1)[-1]
        assert measure not in found
        found[measure] = coding["code"]
    return found


# -- Measures -----------------------------------------------------------------------------------


def test_every_care_gap_measure_is_in_the_record(
    loaded: httpx.Client, fhir: SyncFHIRClient
) -> None:
    catalog = load_catalog()
    ids = measure_ids(catalog)
    for mid in ids:
        url = f"https://takamul.health/fhir/Measure/{mid}"
        found = fhir.resources("Measure").search(url=url).fetch()
        assert len(found) == 1, mid
        measure = found[0].serialize()
        assert measure["id"] == f"takamul-{mid}" and measure["status"] == "active"
        assert measure["scoring"]["coding"][0]["code"] == "proportion"
        assert measure["improvementNotation"]["coding"][0]["code"] == "increase"
        codes = {p["code"]["coding"][0]["code"] for p in measure["group"][0]["population"]}
        assert {"initial-population", "denominator", "numerator"} <= codes
        assert not [i for i in validate_resource(measure) if i.severity == "error"]
    control = fhir.reference("Measure", "takamul-hypertension-control").to_resource().serialize()
    assert control["title"] == "Hypertension control"
    assert "< 140" in control["description"] and "HEARTS" in control["description"]
    breast = fhir.reference("Measure", "takamul-breast-cancer-screening").to_resource()
    text = breast.serialize()["description"]
    assert "71651007" in text and "730 days" in text and "Saudi Ministry of Health" in text


def test_measures_are_written_only_when_they_change(tmp_path: Path) -> None:
    store = Store(Settings(database_url=f"sqlite:///{tmp_path / 'm.sqlite'}", export_dir=tmp_path))
    try:
        catalog = load_catalog()
        first = store_measures(store, catalog)
        assert first == [m["id"] for m in measure_resources(catalog)]
        assert store_measures(store, catalog) == []  # unchanged: no new version
        with store.reading() as s:
            assert s.read("Measure", "takamul-diabetes-control").version == 1
        store.write(
            lambda s: s.update(
                "Measure",
                "takamul-diabetes-control",
                {**measure_resources(catalog)[-2], "title": "edited by hand"},
            )
        )
        assert store_measures(store, catalog) == ["takamul-diabetes-control"]
        with store.reading() as s:
            assert s.read("Measure", "takamul-diabetes-control").json()["title"] == (
                "Diabetes control"
            )
    finally:
        store.close()


# -- $care-gaps ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pid", sorted(PREVENTIVE))
def test_exactly_the_gaps_of_each_person(loaded: httpx.Client, pid: str) -> None:
    expected = PREVENTIVE[pid][1]
    start = (TODAY - timedelta(days=30)).isoformat()
    everything = _gaps(
        loaded,
        subject=f"Patient/{pid}",
        periodStart=start,
        periodEnd=CLOSED_END.isoformat(),
        status=["open-gap", "closed-gap", "prospective-gap"],
    )
    (document,) = _documents(everything)
    assert _statuses(document) == expected
    only_open = _gaps(
        loaded,
        subject=f"Patient/{pid}",
        periodStart=start,
        periodEnd=CLOSED_END.isoformat(),
        status="open-gap",
    )
    (document,) = _documents(only_open)
    assert _statuses(document) == {m: s for m, s in expected.items() if s == "open-gap"}


def test_a_screening_that_expires_in_the_period_is_a_prospective_gap(
    loaded: httpx.Client,
) -> None:
    def breast(end: date, status: str) -> dict[str, str]:
        params = _gaps(
            loaded,
            subject="Patient/cg-mammo",
            periodStart=TODAY.isoformat(),
            periodEnd=end.isoformat(),
            status=status,
            measureId="takamul-breast-cancer-screening",
        )
        return _statuses(_documents(params)[0])

    assert breast(CLOSED_END, ALL) == {"breast-cancer-screening": "closed-gap"}
    assert breast(PROSPECTIVE_END, ALL) == {"breast-cancer-screening": "prospective-gap"}
    assert breast(PROSPECTIVE_END, "prospective-gap") == {
        "breast-cancer-screening": "prospective-gap"
    }
    assert breast(PROSPECTIVE_END, "closed-gap") == {}
    assert breast(CLOSED_END, "open-gap") == {}


@pytest.mark.parametrize("pid", sorted(WORLD_CONTROL))
def test_control_gaps_follow_the_registry_status(loaded: httpx.Client, pid: str) -> None:
    params = _gaps(
        loaded,
        subject=f"Patient/{pid}",
        periodStart="2025-01-01",
        periodEnd=WORLD_END,
        status=ALL,
        measureUrl="https://takamul.health/fhir/Measure/hypertension-control",
    )
    expected = WORLD_CONTROL[pid]
    found = _statuses(_documents(params)[0])
    assert found == ({"hypertension-control": expected} if expected else {})


def test_the_document_is_a_deqm_gaps_report_valid_as_r4(loaded: httpx.Client) -> None:
    params = _gaps(
        loaded,
        subject="Patient/cg-mammo",
        periodStart=TODAY.isoformat(),
        periodEnd=CLOSED_END.isoformat(),
        status=ALL,
    )
    assert not [i for i in validate_resource(params, "Parameters") if i.severity == "error"]
    (bundle,) = _documents(params)
    assert bundle["type"] == "document" and bundle["timestamp"] and bundle["identifier"]["value"]
    resources = [e["resource"] for e in bundle["entry"]]
    for r in [bundle, *resources]:
        problems = [i for i in validate_resource(r) if i.severity == "error"]
        assert not problems, (r["resourceType"], problems)
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(urls)) == len(urls)
    by_url = dict(zip(urls, resources, strict=True))
    composition = resources[0]
    assert composition["resourceType"] == "Composition"
    assert composition["type"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "96315-7",
        "display": "Gaps in care report",
    }
    patient_url = composition["subject"]["reference"]
    assert by_url[patient_url]["resourceType"] == "Patient"
    assert by_url[patient_url]["id"] == "cg-mammo"
    assert composition["date"] and composition["author"]
    sections = composition["section"]
    assert len(sections) == 4
    titles = {m["url"]: m["title"] for m in measure_resources(load_catalog())}
    kinds = [r["resourceType"] for r in resources]
    assert kinds.count("MeasureReport") == 4 and kinds.count("DetectedIssue") == 4
    assert kinds[-1] == "Patient"
    for section in sections:
        report = by_url[section["focus"]["reference"]]
        (issue_ref,) = section["entry"]
        issue = by_url[issue_ref["reference"]]
        assert report["resourceType"] == "MeasureReport" and report["type"] == "individual"
        assert report["status"] == "complete" and report["subject"]["reference"] == patient_url
        assert report["period"] == {"start": TODAY.isoformat(), "end": CLOSED_END.isoformat()}
        assert report["improvementNotation"]["coding"][0]["code"] == "increase"
        counts = {
            p["code"]["coding"][0]["code"]: p["count"] for p in report["group"][0]["population"]
        }
        status = issue["modifierExtension"][0]["valueCodeableConcept"]["coding"][0]["code"]
        assert counts == {
            "initial-population": 1,
            "denominator": 1,
            "numerator": 1 if status == "closed-gap" else 0,
        }
        assert issue["status"] == "final" and issue["patient"]["reference"] == patient_url
        assert issue["code"]["coding"][0] == {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "CAREGAP",
            "display": "Care Gaps",
        }
        assert issue["evidence"][0]["detail"][0]["reference"] == section["focus"]["reference"]
        assert titles[report["measure"]] == section["title"]
    # the Measures the reports name are in the record
    for r in resources:
        if r["resourceType"] == "MeasureReport":
            found = loaded.get("/Measure", params={"url": r["measure"]}).json()
            assert found["total"] == 1


def test_post_with_a_parameters_body_answers_like_get(loaded: httpx.Client) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "periodStart", "valueDate": TODAY.isoformat()},
            {"name": "periodEnd", "valueDate": CLOSED_END.isoformat()},
            {"name": "subject", "valueString": "Patient/cg-none"},
            {"name": "status", "valueString": "open-gap"},
            {"name": "status", "valueString": "closed-gap"},
            {"name": "measureId", "valueString": "takamul-breast-cancer-screening"},
            {"name": "measureUrl", "valueCanonical": "https://takamul.health/fhir/Measure/diabetes-screening"},
        ],
    }  # fmt: skip
    r = loaded.post("/Measure/$care-gaps", json=body)
    assert r.status_code == 200, r.text
    (document,) = _documents(r.json())
    assert _statuses(document) == {
        "breast-cancer-screening": "open-gap",
        "diabetes-screening": "open-gap",
    }


def test_an_organization_gets_one_document_per_person_with_gaps(loaded: httpx.Client) -> None:
    def persons(status: str, measure: str | None = None) -> dict[str, dict[str, str]]:
        extra = {"measureId": measure} if measure else {}
        params = _gaps(
            loaded,
            organization=f"Organization/{PREV_ORG}",
            periodStart=TODAY.isoformat(),
            periodEnd=CLOSED_END.isoformat(),
            status=status,
            **extra,
        )
        out = {}
        for document in _documents(params):
            pid = document["entry"][-1]["resource"]["id"]
            out[pid] = _statuses(document)
        return out

    everyone = persons(ALL)
    assert everyone == {pid: expected for pid, (_, expected) in PREVENTIVE.items()}
    # persons without a gap of the asked statuses are left out
    closed = persons("closed-gap")
    assert closed == {
        "cg-mammo": {"breast-cancer-screening": "closed-gap"},
        "cg-controlled": {"hypertension-control": "closed-gap"},
    }
    assert set(persons("open-gap", "takamul-measles-immunization")) == {"cg-child"}
    nobody = _gaps(
        loaded,
        organization="Organization/cg-no-such-org",
        periodStart=TODAY.isoformat(),
        periodEnd=CLOSED_END.isoformat(),
        status=ALL,
    )
    assert "parameter" not in nobody


GOOD = {
    "periodStart": "2025-01-01",
    "periodEnd": "2025-06-30",
    "subject": "Patient/cg-man",
    "status": ALL,
}


def _but(*without: str, **changed: str) -> dict[str, str]:
    """The good request without some parameters and with others changed or added."""
    return {**{k: v for k, v in GOOD.items() if k not in without}, **changed}


@pytest.mark.parametrize(
    ("params", "status", "parameter"),
    [
        (_but("periodStart"), 400, "periodStart"),
        (_but("periodEnd"), 400, "periodEnd"),
        (_but("status"), 400, "status"),
        (_but(status="half-open"), 400, "status"),
        (_but(periodStart="2025-13-01"), 400, "periodStart"),
        (_but(periodStart="2025-07-01"), 400, "periodEnd"),
        (_but("subject"), 400, "subject"),
        (_but(subject="Group/g1"), 400, "subject"),
        (_but(measureId="gout-control"), 400, "measureId"),
        (_but(practitioner="Practitioner/p1"), 400, "practitioner"),
        (_but(colour="red"), 400, "colour"),
        (_but(subject="Patient/cg-nobody"), 404, None),
    ],
)
def test_bad_requests_name_the_parameter(
    loaded: httpx.Client, params: dict[str, str], status: int, parameter: str | None
) -> None:
    r = loaded.get("/Measure/$care-gaps", params=params)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["severity"] == "error" and issue["diagnostics"]
    if parameter is not None:
        assert issue["expression"] == [parameter]
    else:
        assert issue["code"] == "not-found"


def test_the_capability_statement_lists_care_gaps(loaded: httpx.Client) -> None:
    cs = loaded.get("/metadata").json()
    (measure,) = [r for r in cs["rest"][0]["resource"] if r["type"] == "Measure"]
    assert measure["operation"] == [
        {
            "name": "care-gaps",
            "definition": "http://hl7.org/fhir/us/davinci-deqm/OperationDefinition/care-gaps",
        }
    ]


# -- CDS Hooks ------------------------------------------------------------------------------------


def _root(http: httpx.Client) -> str:
    return str(http.base_url).rstrip("/").rsplit("/fhir", 1)[0]


def _hook(pid: str, **extra: Any) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/cg-doctor", "patientId": pid},
        **extra,
    }


def test_cds_discovery_describes_the_service(loaded: httpx.Client) -> None:
    r = httpx.get(f"{_root(loaded)}/cds-services")
    assert r.status_code == 200
    (service,) = r.json()["services"]
    assert service["id"] == "takamul-care-gaps" and service["hook"] == "patient-view"
    assert service["title"] and service["description"]
    assert service["prefetch"] == {"patient": "Patient/{{context.patientId}}"}


def test_cds_patient_view_gives_a_card_per_open_gap(loaded: httpx.Client) -> None:
    url = f"{_root(loaded)}/cds-services/takamul-care-gaps"
    r = httpx.post(url, json=_hook("cg-uncontrolled", fhirServer=str(loaded.base_url)))
    assert r.status_code == 200, r.text
    (card,) = r.json()["cards"]
    assert card["indicator"] == "warning"
    assert card["summary"].startswith("Hypertension control: not controlled")
    assert "165/102" in card["summary"] and len(card["summary"]) < 140
    assert card["source"]["label"] == "Takamul care programmes"
    assert uuid.UUID(card["uuid"])
    assert "**Hypertension control**" in card["detail"]
    assert card["links"][0]["type"] == "absolute"
    assert card["links"][0]["url"].endswith("/Measure/takamul-hypertension-control")

    cards = httpx.post(url, json=_hook("Patient/cg-none")).json()["cards"]
    assert sorted(c["summary"].split(" due")[0] for c in cards) == sorted(
        m["title"]
        for m in measure_resources(load_catalog())
        if m["id"].removeprefix("takamul-") in PREVENTIVE["cg-none"][1]
    )
    assert {c["indicator"] for c in cards} == {"info"}
    assert all(len(c["summary"]) < 140 for c in cards)
    # a controlled person has nothing to show
    assert httpx.post(url, json=_hook("cg-controlled")).json() == {"cards": []}
    child = httpx.post(url, json=_hook("cg-child")).json()["cards"]
    assert [c["summary"] for c in child] == [
        f"Measles-containing vaccine, two doses by age 2 due since "
        f"{date.fromisoformat(_born(3)) + relativedelta(years=2)} (1 of 2 doses recorded)",
        f"DTP-containing vaccine, three doses by age 1 due since "
        f"{date.fromisoformat(_born(3)) + relativedelta(years=1)} (0 of 3 doses recorded)",
    ]


def _request(*without: str, **changed: Any) -> dict[str, Any]:
    """A patient-view request without some members and with others changed or added."""
    good = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/u", "patientId": "cg-man"},
    }
    return {**{k: v for k, v in good.items() if k not in without}, **changed}


@pytest.mark.parametrize(
    ("body", "status", "where"),
    [
        (_request(hook="order-select"), 400, "hook"),
        (_request("hookInstance"), 400, "hookInstance"),
        (_request("context"), 400, "context"),
        (_request(context={"userId": "u"}), 400, "context.patientId"),
        (_request(context={"patientId": "cg-man"}), 400, "context.userId"),
        (_request(fhirAuthorization={"access_token": "t"}), 400, "fhirAuthorization"),
        (_request(context={"userId": "u", "patientId": "cg-nobody"}), 404, None),
        (_request(), 200, None),
    ],
)
def test_cds_bad_requests_say_what_is_wrong(
    loaded: httpx.Client, body: dict[str, Any], status: int, where: str | None
) -> None:
    r = httpx.post(f"{_root(loaded)}/cds-services/takamul-care-gaps", json=body)
    assert r.status_code == status, r.text
    if status == 200:
        assert [c["indicator"] for c in r.json()["cards"]] == ["info", "info"]
        return
    issue = r.json()["issue"][0]
    assert issue["diagnostics"]
    if where:
        assert issue["expression"] == [where]
    bad_json = httpx.post(
        f"{_root(loaded)}/cds-services/takamul-care-gaps",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert bad_json.status_code == 400


# -- access control --------------------------------------------------------------------------------


class AuthServer:
    def __init__(self, base: str, db: str) -> None:
        self.base = base
        self.root = base.rsplit("/fhir", 1)[0]
        self.security = Security.open(db)

    def http(
        self, scopes: str, facility: str | None = None, roles: tuple[str, ...] = ()
    ) -> httpx.Client:
        from joserfc.jwk import ECKey

        key = ECKey.generate_key("P-384")
        key.ensure_kid()
        client_id = f"c-{uuid.uuid4().hex[:10]}"
        jwks = {"keys": [{**key.as_dict(private=False), "alg": "ES384"}]}
        self.security.clients.add(client_id, "test system", jwks, scopes, facility, roles)
        token = self.security.tokens.mint(client_id, scopes, self.base)
        return httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def secure(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthServer]:
    env = {"TAKAMUL_AUTH": "true", "TAKAMUL_RATE_LIMIT": "10000", "TAKAMUL_RATE_BURST": "10000"}
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('caregaps-secure') / 'takamul.sqlite'}"
        with running_server(url, env) as base:
            yield AuthServer(base, url)
    else:
        with postgres_database() as url, running_server(url, env) as base:
            yield AuthServer(base, url)


def test_a_facility_gets_the_gaps_of_its_patients_only(secure: AuthServer) -> None:
    admin = secure.http("system/*.cruds", roles=("administrator",))
    for org in ("cg-a", "cg-b"):
        assert admin.put(
            f"/Organization/{org}", json={"resourceType": "Organization", "id": org, "name": org}
        ).status_code in (200, 201)
        pid = f"{org}-p"
        r = admin.put(f"/Patient/{pid}", json=_person(pid, "female", 55, org))
        assert r.status_code in (200, 201), r.text
    mine, theirs = "cg-a-p", "cg-b-p"
    clinic = secure.http("system/*.cruds", facility="cg-a", roles=("clinician",))
    period = {"periodStart": TODAY.isoformat(), "periodEnd": CLOSED_END.isoformat(), "status": ALL}

    own = clinic.get("/Measure/$care-gaps", params={**period, "subject": f"Patient/{mine}"})
    assert own.status_code == 200, own.text
    assert "breast-cancer-screening" in _statuses(_documents(own.json())[0])
    other = clinic.get("/Measure/$care-gaps", params={**period, "subject": f"Patient/{theirs}"})
    missing = clinic.get(
        "/Measure/$care-gaps", params={**period, "subject": "Patient/cg-none-such"}
    )
    assert other.status_code == missing.status_code == 404  # as if it did not exist
    assert other.json()["issue"][0]["code"] == missing.json()["issue"][0]["code"]
    posted = clinic.post(
        "/Measure/$care-gaps",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "periodStart", "valueDate": period["periodStart"]},
                {"name": "periodEnd", "valueDate": period["periodEnd"]},
                {"name": "status", "valueString": "open-gap"},
                {"name": "subject", "valueReference": {"reference": f"Patient/{theirs}"}},
            ],
        },
    )
    assert posted.status_code == 404
    # an organization: only the patients the guard lets through
    foreign = clinic.get(
        "/Measure/$care-gaps", params={**period, "organization": "Organization/cg-b"}
    )
    assert foreign.status_code == 200 and "parameter" not in foreign.json()
    home = clinic.get("/Measure/$care-gaps", params={**period, "organization": "Organization/cg-a"})
    assert [d["entry"][-1]["resource"]["id"] for d in _documents(home.json())] == [mine]
    # the admin (not bound to a facility) sees both
    both = admin.get("/Measure/$care-gaps", params={**period, "subject": f"Patient/{theirs}"})
    assert both.status_code == 200
    # without a token: refused
    anonymous = httpx.get(
        f"{secure.base}/Measure/$care-gaps", params={**period, "subject": f"Patient/{mine}"}
    )
    assert anonymous.status_code == 401

    # decision support: the same guard, its own authentication and audit event
    url = f"{secure.root}/cds-services/takamul-care-gaps"
    assert httpx.get(f"{secure.root}/cds-services").status_code == 200  # discovery is public
    assert httpx.post(url, json=_hook(mine)).status_code == 401
    cards = clinic.post(url, json=_hook(mine))
    assert cards.status_code == 200 and cards.json()["cards"]
    refused = clinic.post(url, json=_hook(theirs))
    assert refused.status_code == 404
    assert refused.json()["issue"][0]["code"] == "not-found"

    audit = secure.http("system/*.rs", roles=("administrator",))
    deadline = time.time() + 5
    while True:
        events = audit.get("/AuditEvent", params={"patient": theirs, "_count": 100}).json()
        kinds = {
            c["code"] for e in events.get("entry", []) for c in e["resource"].get("subtype", [])
        }
        if {"care-gaps", "cds-patient-view"} <= kinds or time.time() > deadline:
            break
        time.sleep(0.2)
    assert {"care-gaps", "cds-patient-view"} <= kinds
