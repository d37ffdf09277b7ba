"""Search over HTTP: every parameter type, modifiers, prefixes, chains, _has, paging, _sort,
_include/_revinclude, _summary, _total, _elements and errors, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fhirpy import SyncFHIRClient

JSON = {"Content-Type": "application/fhir+json"}


class World:
    """A small isolated data set: every resource carries this world's tag."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.tag = uuid.uuid4().hex[:12]
        self.family = f"Fam{self.tag}"
        self.ids: dict[str, str] = {}

    def put(self, key: str, body: dict[str, Any]) -> str:
        body = {**body, "meta": {"tag": [{"system": "urn:test:world", "code": self.tag}]}}
        r = self.http.post(f"/{body['resourceType']}", json=body, headers=JSON)
        assert r.status_code == 201, r.text
        self.ids[key] = r.json()["id"]
        return self.ids[key]

    def search(
        self, rtype: str, params: dict[str, Any] | list[tuple[str, str]], **headers: str
    ) -> dict[str, Any]:
        items = list(params.items()) if isinstance(params, dict) else list(params)
        items.append(("_tag", f"urn:test:world|{self.tag}"))
        r = self.http.get(f"/{rtype}", params=items, headers=headers)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def ids_of(self, rtype: str, params: dict[str, Any] | list[tuple[str, str]]) -> set[str]:
        bundle = self.search(rtype, params)
        return {
            e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"
        }


@pytest.fixture(scope="module")
def world(http: httpx.Client) -> World:
    w = World(http)
    org = w.put("org", {"resourceType": "Organization", "name": "مركز صحي العليا"})
    w.put(
        "ahmad",
        {
            "resourceType": "Patient",
            "gender": "male",
            "birthDate": "1970-05-01",
            "name": [{"family": w.family, "given": ["Aḥmad", "أحمد"]}],
            "identifier": [{"system": "urn:test:nid", "value": f"{w.tag}-1"}],
            "managingOrganization": {"reference": f"Organization/{org}"},
            "address": [{"city": "Riyadh", "country": "SA"}],
        },
    )
    w.put(
        "maryam",
        {
            "resourceType": "Patient",
            "gender": "female",
            "birthDate": "1985-09-02",
            "name": [{"family": w.family, "given": ["Maryam", "مریم"]}],
            "identifier": [{"system": "urn:test:nid", "value": f"{w.tag}-2"}],
            "address": [{"city": "Shiraz", "country": "IR"}],
            "deceasedBoolean": False,
        },
    )
    w.put(
        "omar",
        {
            "resourceType": "Patient",
            "gender": "male",
            "birthDate": "2001",
            "name": [{"family": f"Other{w.tag}", "given": ["Omar"]}],
        },
    )
    for key, subject, code, value, when in [
        ("hba1c-a", "ahmad", "4548-4", 8.4, "2026-01-10T09:00:00+03:00"),
        ("hba1c-a2", "ahmad", "4548-4", 6.9, "2026-06-10T09:00:00+03:00"),
        ("hba1c-m", "maryam", "4548-4", 5.4, "2026-02-01"),
        ("bmi-m", "maryam", "39156-5", 31.0, "2026-02-01"),
    ]:
        w.put(
            key,
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}], "text": "Lab"},
                "subject": {"reference": f"Patient/{w.ids[subject]}"},
                "effectiveDateTime": when,
                "valueQuantity": {
                    "value": value,
                    "system": "http://unitsofmeasure.org",
                    "code": "%",
                    "unit": "%",
                },
            },
        )
    w.put(
        "enc",
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": f"Patient/{w.ids['ahmad']}"},
            "period": {"start": "2026-01-10T08:00:00Z", "end": "2026-01-10T10:00:00Z"},
        },
    )
    w.put(
        "cond",
        {
            "resourceType": "Condition",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
            "subject": {"reference": f"Patient/{w.ids['ahmad']}"},
            "onsetPeriod": {"start": "2015-06-01"},
        },
    )
    return w


def test_string_default_exact_contains(world: World) -> None:
    assert world.ids_of("Patient", {"family": world.family.lower()[:8]}) == {
        world.ids["ahmad"],
        world.ids["maryam"],
    }
    # Accent- and case-insensitive by default; :exact is neither.
    assert world.ids_of("Patient", {"given": "ahmad"}) == {world.ids["ahmad"]}
    assert world.ids_of("Patient", {"given:exact": "ahmad"}) == set()
    assert world.ids_of("Patient", {"given:exact": "Aḥmad"}) == {world.ids["ahmad"]}
    assert world.ids_of("Patient", {"given:contains": "rya"}) == {world.ids["maryam"]}
    assert world.ids_of("Patient", {"given": "مریم"}) == {world.ids["maryam"]}
    assert world.ids_of("Patient", {"address-city": "shi"}) == {world.ids["maryam"]}


def test_token_forms(world: World) -> None:
    nid = f"urn:test:nid|{world.tag}-1"
    assert world.ids_of("Patient", {"identifier": nid}) == {world.ids["ahmad"]}
    assert world.ids_of("Patient", {"identifier": f"{world.tag}-2"}) == {world.ids["maryam"]}
    assert world.ids_of("Patient", {"identifier": f"|{world.tag}-2"}) == set()
    assert world.ids_of("Patient", {"gender": "female"}) == {world.ids["maryam"]}
    assert world.ids_of("Patient", {"gender:not": "male"}) == {world.ids["maryam"]}
    assert world.ids_of("Observation", {"code": "http://loinc.org|"}) == {
        world.ids[k] for k in ("hba1c-a", "hba1c-a2", "hba1c-m", "bmi-m")
    }
    assert world.ids_of("Observation", {"code:text": "la"}) == {
        world.ids[k] for k in ("hba1c-a", "hba1c-a2", "hba1c-m", "bmi-m")
    }
    # R4 defines deceased as `deceased.exists() and deceased != false`: false for the living.
    assert len(world.ids_of("Patient", {"deceased": "false"})) == 3
    assert world.ids_of("Patient", {"deceased": "true"}) == set()


def test_or_values(world: World) -> None:
    assert world.ids_of("Patient", {"identifier": f"{world.tag}-1,{world.tag}-2"}) == {
        world.ids["ahmad"],
        world.ids["maryam"],
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1970", {"ahmad"}),
        ("eq1970-05", {"ahmad"}),
        ("1970-05-01", {"ahmad"}),
        ("ne1970-05-01", {"maryam", "omar"}),
        ("gt1980", {"maryam", "omar"}),
        ("lt1980", {"ahmad"}),
        ("ge1985-09-02", {"maryam", "omar"}),
        ("le1985-09-02", {"ahmad", "maryam"}),
        ("sa1985", {"omar"}),
        ("eb1985", {"ahmad"}),
        ("2001-03-04", set()),  # the stored 2001 is wider than one day: not eq
        ("ap1970-05-03", {"ahmad"}),
    ],
)
def test_date_prefixes(world: World, value: str, expected: set[str]) -> None:
    assert world.ids_of("Patient", {"birthdate": value}) == {world.ids[k] for k in expected}


def test_date_over_period_and_timezones(world: World) -> None:
    assert world.ids_of("Encounter", {"date": "2026-01-10"}) == {world.ids["enc"]}
    assert world.ids_of("Encounter", {"date": "lt2026-01-10T09:00:00Z"}) == {world.ids["enc"]}
    # The open-ended onset period reaches past any date.
    assert world.ids_of("Condition", {"onset-date": "gt2030"}) == {world.ids["cond"]}
    # 09:00+03:00 is 06:00Z.
    assert world.ids_of("Observation", {"date": "2026-01-10T06:00:00Z"}) == {world.ids["hba1c-a"]}


def test_quantity_and_number(world: World) -> None:
    obs = "Observation"
    assert world.ids_of(obs, {"value-quantity": "8.4"}) == {world.ids["hba1c-a"]}
    assert world.ids_of(obs, {"value-quantity": "gt7|http://unitsofmeasure.org|%"}) == {
        world.ids["hba1c-a"],
        world.ids["bmi-m"],
    }
    assert world.ids_of(obs, {"value-quantity": "le6.9||%"}) == {
        world.ids["hba1c-a2"],
        world.ids["hba1c-m"],
    }
    assert world.ids_of(obs, {"value-quantity": "5.4|http://other|%"}) == set()
    assert world.ids_of(obs, {"value-quantity": "ap31"}) == {world.ids["bmi-m"]}


def test_reference_forms_and_chain(world: World) -> None:
    ahmad = world.ids["ahmad"]
    by_type = world.ids_of("Observation", {"subject": f"Patient/{ahmad}"})
    assert by_type == {world.ids["hba1c-a"], world.ids["hba1c-a2"]}
    assert world.ids_of("Observation", {"subject": ahmad}) == by_type
    assert world.ids_of("Observation", {"subject:Patient": ahmad}) == by_type
    assert world.ids_of("Observation", {"patient": ahmad}) == by_type
    chained = world.ids_of("Observation", {"subject:Patient.gender": "female"})
    assert chained == {world.ids["hba1c-m"], world.ids["bmi-m"]}
    assert (
        world.ids_of("Observation", {"patient.identifier": f"urn:test:nid|{world.tag}-1"})
        == by_type
    )
    assert world.ids_of("Patient", {"organization.name": "مركز"}) == {ahmad}


def test_a_reference_clause_with_thousands_of_values(world: World) -> None:
    """A facility's patients become one clause of thousands of references (its search
    restriction); SQLite refuses an OR deeper than 1000 terms, so they must be grouped."""
    ahmad = world.ids["ahmad"]
    many = [f"Patient/nobody-{i}" for i in range(3000)] + [f"Patient/{ahmad}"]
    r = world.http.post(
        "/Observation/_search",
        data={"subject": ",".join(many), "_tag": f"urn:test:world|{world.tag}"},
    )
    assert r.status_code == 200, r.text
    found = {e["resource"]["id"] for e in r.json().get("entry", [])}
    assert found == {world.ids["hba1c-a"], world.ids["hba1c-a2"]}


def test_has(world: World) -> None:
    assert world.ids_of("Patient", {"_has:Observation:subject:code": "39156-5"}) == {
        world.ids["maryam"]
    }
    assert world.ids_of("Patient", {"_has:Condition:subject:code": "44054006"}) == {
        world.ids["ahmad"]
    }


def test_missing(world: World) -> None:
    assert world.ids_of("Patient", {"organization:missing": "false"}) == {world.ids["ahmad"]}
    assert world.ids_of("Patient", {"address-city:missing": "true"}) == {world.ids["omar"]}


def test_id_and_last_updated(world: World) -> None:
    assert world.ids_of("Patient", {"_id": world.ids["omar"]}) == {world.ids["omar"]}
    assert len(world.ids_of("Patient", {"_lastUpdated": "gt2020-01-01"})) == 3
    assert world.ids_of("Patient", {"_lastUpdated": "lt2020-01-01"}) == set()


def test_sort_several_keys(world: World) -> None:
    bundle = world.search("Patient", [("_sort", "-gender,birthdate")])
    order = [e["resource"]["id"] for e in bundle["entry"]]
    assert order == [world.ids["ahmad"], world.ids["omar"], world.ids["maryam"]]
    bundle = world.search("Observation", [("_sort", "-date")])
    assert bundle["entry"][0]["resource"]["id"] == world.ids["hba1c-a2"]


def test_paging_is_stable_and_complete(world: World, http: httpx.Client) -> None:
    bundle = world.search("Observation", [("_count", "1"), ("_sort", "_id")])
    assert bundle["total"] == 4
    seen = []
    while True:
        seen.extend(e["resource"]["id"] for e in bundle["entry"])
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            break
        bundle = http.get(nxt[0]).json()
    assert sorted(seen) == sorted(world.ids[k] for k in ("hba1c-a", "hba1c-a2", "hba1c-m", "bmi-m"))
    assert len(seen) == 4
    previous = [link for link in bundle["link"] if link["relation"] == "previous"]
    assert previous


def test_include_and_revinclude(world: World, http: httpx.Client) -> None:
    bundle = world.search(
        "Observation",
        [
            ("code", "4548-4"),
            ("_include", "Observation:subject"),
            ("_count", "2"),
            ("_sort", "_id"),
        ],
    )
    modes = [e["search"]["mode"] for e in bundle["entry"]]
    assert modes.count("match") == 2  # included resources do not count against _count
    assert modes.count("include") >= 1
    nxt = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    assert "_include=Observation%3Asubject" in nxt
    page2 = http.get(nxt).json()
    assert any(e["search"]["mode"] == "include" for e in page2["entry"])
    rev = world.search(
        "Patient", [("_id", world.ids["maryam"]), ("_revinclude", "Observation:subject")]
    )
    included = {e["resource"]["id"] for e in rev["entry"] if e["search"]["mode"] == "include"}
    assert included == {world.ids["hba1c-m"], world.ids["bmi-m"]}


def test_summary_total_elements(world: World) -> None:
    count = world.search("Observation", {"_summary": "count"})
    assert count["total"] == 4 and "entry" not in count
    assert "next" not in {link["relation"] for link in count["link"]}
    none = world.search("Observation", {"_total": "none"})
    assert "total" not in none and len(none["entry"]) == 4
    elements = world.search("Patient", {"_elements": "gender", "_id": world.ids["ahmad"]})
    res = elements["entry"][0]["resource"]
    assert res["gender"] == "male" and "name" not in res and "birthDate" not in res
    assert any(t["code"] == "SUBSETTED" for t in res["meta"]["tag"])
    summary = world.search("Patient", {"_summary": "true", "_id": world.ids["ahmad"]})
    assert "name" in summary["entry"][0]["resource"]


def test_post_search_with_fhirpy(world: World, http: httpx.Client, fhir: SyncFHIRClient) -> None:
    r = http.post("/Patient/_search", data={"family": world.family, "gender": "female"})
    assert r.status_code == 200
    assert {e["resource"]["id"] for e in r.json()["entry"]} == {world.ids["maryam"]}
    found = fhir.resources("Patient").search(family=world.family).sort("birthdate").fetch()
    assert [p["id"] for p in found] == [world.ids["ahmad"], world.ids["maryam"]]


@pytest.mark.parametrize(
    "params",
    [
        {"nonsense": "1"},
        {"birthdate": "yesterday"},
        {"birthdate": "xx1970"},
        {"_count": "-1"},
        {"value-quantity": "abc"},
        {"gender:contains": "ma"},
        {"_sort": "nonsense"},
        {"_include": "Patient:nonsense"},
    ],
)
def test_bad_search_gives_400(http: httpx.Client, params: dict[str, str]) -> None:
    rtype = "Observation" if "value-quantity" in params else "Patient"
    r = http.get(f"/{rtype}", params=params)
    assert r.status_code == 400, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["diagnostics"]


def test_lenient_handling_ignores_unknown(world: World) -> None:
    bundle = world.search(
        "Patient", {"nonsense": "1", "family": world.family}, Prefer="handling=lenient"
    )
    matches = [e for e in bundle["entry"] if e["search"]["mode"] == "match"]
    assert len(matches) == 2
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert "nonsense" in str(outcome)
    assert "nonsense" not in next(
        link["url"] for link in bundle["link"] if link["relation"] == "self"
    )


def test_everything(world: World, http: httpx.Client) -> None:
    pid = world.ids["ahmad"]
    bundle = http.get(f"/Patient/{pid}/$everything").json()
    ids = {e["resource"]["id"] for e in bundle["entry"]}
    assert {pid, world.ids["hba1c-a"], world.ids["enc"], world.ids["cond"]} <= ids
    assert world.ids["hba1c-m"] not in ids
    only = http.get(f"/Patient/{pid}/$everything", params={"_type": "Condition"}).json()
    assert {e["resource"]["id"] for e in only["entry"]} == {world.ids["cond"]}
    paged = http.get(f"/Patient/{pid}/$everything", params={"_count": 2}).json()
    assert len(paged["entry"]) == 2 and any(x["relation"] == "next" for x in paged["link"])
    later = http.get(f"/Patient/{pid}/$everything", params={"_since": "2999-01-01"}).json()
    assert later["total"] == 0


def test_include_iterate(http: httpx.Client) -> None:
    tag = uuid.uuid4().hex
    org = http.post(
        "/Organization", json={"resourceType": "Organization", "name": tag}, headers=JSON
    ).json()["id"]
    med = http.post(
        "/Medication",
        json={"resourceType": "Medication", "manufacturer": {"reference": f"Organization/{org}"}},
        headers=JSON,
    ).json()["id"]
    rx = http.post(
        "/MedicationRequest",
        headers=JSON,
        json={
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "identifier": [{"value": tag}],
            "medicationReference": {"reference": f"Medication/{med}"},
            "subject": {"reference": "Patient/someone"},
        },
    ).json()["id"]
    bundle = http.get(
        "/MedicationRequest",
        params=[
            ("identifier", tag),
            ("_include", "MedicationRequest:medication"),
            ("_include:iterate", "Medication:manufacturer"),
        ],
    ).json()
    got = {
        (e["resource"]["resourceType"], e["resource"]["id"], e["search"]["mode"])
        for e in bundle["entry"]
    }
    assert got == {
        ("MedicationRequest", rx, "match"),
        ("Medication", med, "include"),
        ("Organization", org, "include"),
    }


def test_escaped_separators_in_values(http: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:8]
    value = f"{tag},b|c$d"
    pid = http.post(
        "/Patient",
        headers=JSON,
        json={
            "resourceType": "Patient",
            "identifier": [{"system": "urn:test:esc", "value": value}],
            "name": [{"family": f"O,{tag}"}],
        },
    ).json()["id"]
    escaped = value.replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")
    found = http.get("/Patient", params={"identifier": f"urn:test:esc|{escaped}"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [pid]
    by_name = http.get("/Patient", params={"family": f"O\\,{tag},nobody-{tag}"}).json()
    assert [e["resource"]["id"] for e in by_name["entry"]] == [pid]
