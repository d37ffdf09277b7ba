"""The client registry in the shared record, driven over HTTP on SQLite and PostgreSQL:
link-on-create into Person golden records, Patient/$match, the review queue, reversible merges.

Every test invents its own family name and ID, so tests sharing the session's server never meet
in a block.
"""

from __future__ import annotations

import random
import string
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from takamul.fhir.validation import validate_resource
from takamul.mpi.service import REVIEW_FLOOR, default_model
from takamul.registry.index import CandidateIndex
from takamul.registry.record import from_patient

GOLDEN = "https://takamul.health/fhir/CodeSystem/client-registry|golden-record"
MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
SA_ID = "https://takamul.health/fhir/sid/sa-national-id"


def _luhn_id(prefix: str = "1") -> str:
    """A valid Saudi ID (10 digits, Luhn check digit)."""
    body = prefix + "".join(random.choices(string.digits, k=8))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


FAMILIES = [
    ("Al-Qahtani", "القحطاني"),
    ("Al-Dosari", "الدوسري"),
    ("Al-Harbi", "الحربي"),
    ("Al-Shammari", "الشمري"),
    ("Al-Ghamdi", "الغامدي"),
    ("Al-Mutairi", "المطيري"),
]
_USED: set[str] = set()


def _family(*, unlike: str | None = None) -> tuple[str, str]:
    """A family name in Latin and Arabic script (another than ``unlike``)."""
    return random.choice([f for f in FAMILIES if f[0] != unlike])


def _date() -> str:
    """A birth date no other test uses, so tests sharing the server never meet in a block."""
    while True:
        d = f"{random.randint(1930, 2005)}-{random.randint(1, 12):02d}-{random.randint(1, 28):02d}"
        if d not in _USED:
            _USED.add(d)
            return d


# Each birth date written in a test stands for a date no other test uses.
D: defaultdict[str, str] = defaultdict(_date)


def patient(
    given: str,
    family: str,
    birth: str,
    nid: str | None = None,
    gender: str = "male",
    pid: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Patient",
        "name": [{"given": [given], "family": family}],
        "birthDate": birth,
        "gender": gender,
    }
    if nid:
        body["identifier"] = [{"system": SA_ID, "value": nid}]
    if pid:
        body["id"] = pid
    return body


@pytest.fixture(scope="module")
def api(fhir_base: str) -> Iterator[httpx.Client]:
    """A client on the server root (the review API lives beside /fhir)."""
    with httpx.Client(base_url=fhir_base.rsplit("/fhir", 1)[0], timeout=60) as client:
        yield client


def create(http: httpx.Client, body: dict[str, Any]) -> str:
    r = http.post("/Patient", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def person_of(api: httpx.Client, pid: str) -> dict[str, Any]:
    r = api.get(f"/mpi/patients/{pid}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def person_resource(http: httpx.Client, pid: str) -> dict[str, Any]:
    bundle = http.get("/Person", params={"link": f"Patient/{pid}", "_tag": GOLDEN}).json()
    assert bundle["total"] == 1, bundle  # one source record, one person
    return dict(bundle["entry"][0]["resource"])


def match(http: httpx.Client, body: dict[str, Any], **params: Any) -> httpx.Response:
    parameters: list[dict[str, Any]] = [{"name": "resource", "resource": body}]
    if "only_certain" in params:
        parameters.append({"name": "onlyCertainMatches", "valueBoolean": params["only_certain"]})
    if "count" in params:
        parameters.append({"name": "count", "valueInteger": params["count"]})
    return http.post(
        "/Patient/$match", json={"resourceType": "Parameters", "parameter": parameters}
    )


def test_registrations_in_two_scripts_become_one_person(
    http: httpx.Client, api: httpx.Client
) -> None:
    latin, arabic = _family()
    nid = _luhn_id()
    a = create(http, patient("Mohammed", latin, D["1980-01-02"], nid))
    b = create(http, patient("محمد", arabic, D["1980-01-02"], nid))
    c = create(http, patient("Fatimah", latin, D["1984-07-09"], gender="female"))
    pa, pb, pc = person_of(api, a), person_of(api, b), person_of(api, c)
    assert pa["person"] == pb["person"] != pc["person"]
    golden = person_resource(http, a)
    # written without re-validation (trusted), so its shape is checked here
    assert [i for i in validate_resource(golden, "Person") if i.severity == "error"] == []
    targets = {link["target"]["reference"]: link["assurance"] for link in golden["link"]}
    assert targets == {f"Patient/{a}": "level3", f"Patient/{b}": "level3"}
    assert golden["birthDate"] == D["1980-01-02"] and golden["gender"] == "male"
    assert {n.get("family") for n in golden["name"]} == {latin, arabic}


def test_an_update_that_changes_the_person_moves_the_record(
    http: httpx.Client, api: httpx.Client
) -> None:
    latin, _ = _family()
    a = create(http, patient("Saad", latin, D["1970-02-03"]))
    b = create(http, patient("Saad", latin, D["1970-02-03"]))
    assert person_of(api, a)["person"] == person_of(api, b)["person"]
    other, _ = _family(unlike=latin)
    r = http.put(f"/Patient/{b}", json=patient("Yousef", other, D["1991-12-11"], pid=b))
    assert r.status_code == 200, r.text
    assert person_of(api, a)["person"] != person_of(api, b)["person"]
    assert [link["target"]["reference"] for link in person_resource(http, a)["link"]] == [
        f"Patient/{a}"
    ]


def test_a_deleted_patient_leaves_its_person(http: httpx.Client, api: httpx.Client) -> None:
    latin, _ = _family()
    a = create(http, patient("Hamad", latin, D["1965-05-05"]))
    person = person_of(api, a)["person"]
    assert http.delete(f"/Patient/{a}").status_code in (200, 204)
    assert api.get(f"/mpi/patients/{a}").status_code == 404
    assert http.get(f"/{person}").status_code == 410
    assert match(http, patient("Hamad", latin, D["1965-05-05"])).json()["total"] == 0


def test_match_grades_scores_and_options(http: httpx.Client) -> None:
    latin, arabic = _family()
    nid = _luhn_id()
    a = create(http, patient("Abdulrahman", latin, D["1988-10-20"], nid))
    b = create(http, patient("Abdulrahman", latin.replace("Al-", "Al "), D["1988-10-20"]))
    before = http.get("/Patient", params={"_summary": "count"}).json()["total"]
    r = match(http, patient("عبد الرحمن", arabic, D["1988-10-20"], nid))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    bundle = r.json()
    assert bundle["type"] == "searchset"
    found = {e["resource"]["id"]: e["search"] for e in bundle["entry"]}
    assert set(found) == {a, b}
    for search in found.values():
        assert search["mode"] == "match" and 0.0 <= search["score"] <= 1.0
        assert search["extension"] == [{"url": MATCH_GRADE, "valueCode": "certain"}]
    scores = [e["search"]["score"] for e in bundle["entry"]]
    assert scores == sorted(scores, reverse=True)
    assert found[a]["score"] >= found[b]["score"]  # the ID agrees too
    assert match(http, patient("Abdulrahman", latin, D["1988-10-20"]), count=1).json()["total"] == 1
    # $match stores nothing
    assert http.get("/Patient", params={"_summary": "count"}).json()["total"] == before


def test_only_certain_matches_leaves_out_the_uncertain(http: httpx.Client) -> None:
    family_a, _ = _family()
    family_b, _ = _family(unlike=family_a)
    create(http, patient("Khalid", family_a, D["1975-03-04"]))
    query = patient("Khalid", family_b, D["1975-03-04"])  # same given name and birth date only
    grades = [e["search"]["extension"][0]["valueCode"] for e in match(http, query).json()["entry"]]
    assert grades and "certain" not in grades
    assert match(http, query, only_certain=True).json()["total"] == 0


@pytest.mark.parametrize(
    ("parameters", "fragment"),
    [
        ([], "needs a 'resource'"),
        ([{"name": "resource", "resource": {"resourceType": "Observation"}}], "Patient"),
        ([{"name": "count", "valueInteger": 0}], "positive"),
        ([{"name": "onlyCertainMatches", "valueString": "yes"}], "valueBoolean"),
        ([{"name": "limit", "valueInteger": 3}], "unknown $match parameter"),
        (
            [{"name": "resource", "resource": {"resourceType": "Patient", "birthDate": 1980}}],
            "resource.birthDate",
        ),
    ],
)
def test_match_refuses_bad_parameters_with_an_outcome(
    http: httpx.Client, parameters: list[dict[str, Any]], fragment: str
) -> None:
    r = http.post("/Patient/$match", json={"resourceType": "Parameters", "parameter": parameters})
    assert r.status_code == 400
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert fragment in str(outcome)


def _queued(api: httpx.Client, a: str, b: str) -> dict[str, Any]:
    reviews = api.get("/mpi/reviews", params={"_count": 1000}).json()["reviews"]
    mine = [
        r
        for r in reviews
        if {r["a"]["patient"], r["b"]["patient"]} == {f"Patient/{a}", f"Patient/{b}"}
    ]
    assert len(mine) == 1, reviews
    return mine[0]


def test_uncertain_pairs_are_queued_with_evidence_and_a_reviewer_links_them(
    http: httpx.Client, api: httpx.Client
) -> None:
    family_a, _ = _family()
    family_b, _ = _family(unlike=family_a)
    a = create(http, patient("Khalid", family_a, D["1962-08-09"]))
    b = create(http, patient("Khalid", family_b, D["1962-08-09"]))
    assert person_of(api, a)["person"] != person_of(api, b)["person"]
    item = _queued(api, a, b)
    assert item["status"] == "open" and REVIEW_FLOOR <= item["probability"] < 0.95
    assert item["evidence"]["family"]["level"] == "different"
    assert item["evidence"]["given"]["level"] == "exact"
    assert item["a"]["resource"]["resourceType"] == "Patient"
    r = api.post(f"/mpi/reviews/{item['id']}", json={"decision": "link", "reviewer": "rev-1"})
    assert r.status_code == 200, r.text
    assert r.json()["review"]["status"] == "linked"
    assert person_of(api, a)["person"] == person_of(api, b)["person"]
    links = {x["target"]["reference"]: x["assurance"] for x in person_resource(http, a)["link"]}
    assert links == {f"Patient/{a}": "level4", f"Patient/{b}": "level4"}
    # an automatic re-link (the record is updated) does not undo the reviewer
    body = http.get(f"/Patient/{b}").json()
    body["telecom"] = [{"system": "phone", "value": "+966500000001"}]
    assert http.put(f"/Patient/{b}", json=body).status_code == 200
    assert person_of(api, a)["person"] == person_of(api, b)["person"]


def test_an_uncertain_pair_scored_again_stays_one_open_review(
    http: httpx.Client, api: httpx.Client
) -> None:
    """Each link of a record queues its uncertain pairs in one upsert: an update that scores
    the pair again takes the new score into the open review, never a second row."""
    family_a, _ = _family()
    family_b, _ = _family(unlike=family_a)
    a = create(http, patient("Saad", family_a, D["rescored"]))
    b = create(http, patient("Saad", family_b, D["rescored"]))
    first = _queued(api, a, b)
    assert first["status"] == "open"
    for phone in ("+966500000002", "+966500000003"):
        body = http.get(f"/Patient/{b}").json()
        body["telecom"] = [{"system": "phone", "value": phone}]
        assert http.put(f"/Patient/{b}", json=body).status_code == 200
        again = _queued(api, a, b)  # asserts one row for the pair
        assert (again["id"], again["status"]) == (first["id"], "open")
        assert again["evidence"].keys() == first["evidence"].keys()
        assert REVIEW_FLOOR <= again["probability"] < 0.95


def test_an_open_review_is_settled_when_its_records_come_to_share_a_person(
    http: httpx.Client, api: httpx.Client
) -> None:
    """An uncertain pair waits for a reviewer until an update makes it certain: the record joins
    the other's person automatically and the pair's review is resolved, not left open."""
    family_a, _ = _family()
    family_b, _ = _family(unlike=family_a)
    nid = _luhn_id()
    a = create(http, patient("Nasser", family_a, D["settled"], nid))
    b = create(http, patient("Nasser", family_b, D["settled"]))
    assert _queued(api, a, b)["status"] == "open"
    body = http.get(f"/Patient/{b}").json()
    body["identifier"] = [{"system": SA_ID, "value": nid}]
    assert http.put(f"/Patient/{b}", json=body).status_code == 200
    assert person_of(api, a)["person"] == person_of(api, b)["person"]
    reviews = api.get("/mpi/reviews", params={"status": "all", "_count": 1000}).json()["reviews"]
    pair = {f"Patient/{a}", f"Patient/{b}"}
    mine = [r for r in reviews if {r["a"]["patient"], r["b"]["patient"]} == pair]
    assert [(r["status"], r["decidedBy"]) for r in mine] == [("resolved", "takamul-mpi")]


def test_not_duplicate_splits_and_survives_relinking(http: httpx.Client, api: httpx.Client) -> None:
    latin, _ = _family()
    a = create(http, patient("Nasser", latin, D["1959-01-30"]))
    b = create(http, patient("Nasser", latin, D["1959-01-30"]))  # twins? the reviewer knows
    assert person_of(api, a)["person"] == person_of(api, b)["person"]
    r = api.post(
        "/mpi/not-duplicate", json={"patients": [a, b], "reviewer": "rev-2", "reason": "twins"}
    )
    assert r.status_code == 200, r.text
    assert person_of(api, a)["person"] != person_of(api, b)["person"]
    body = http.get(f"/Patient/{b}").json()
    body["gender"] = "male"
    assert http.put(f"/Patient/{b}", json=body).status_code == 200  # re-linked: stays apart
    assert person_of(api, a)["person"] != person_of(api, b)["person"]
    grades = {
        e["resource"]["id"]: e["search"]["extension"][0]["valueCode"]
        for e in match(http, http.get(f"/Patient/{b}").json()).json()["entry"]
    }
    assert grades.get(a) == "certainly-not"
    # a third registration of the same name goes to one of them, never both
    c = create(http, patient("Nasser", latin, D["1959-01-30"]))
    assert person_of(api, c)["person"] in (person_of(api, a)["person"], person_of(api, b)["person"])


def test_merges_and_unmerges_are_recorded_and_reversible(
    http: httpx.Client, api: httpx.Client
) -> None:
    latin, arabic = _family()
    a = create(http, patient("Ibrahim", latin, D["1979-06-16"]))
    b = create(http, patient("Ibrahim", latin, D["1979-06-16"]))
    c = create(http, patient("Sami", arabic, D["2001-01-01"]))
    together = person_of(api, a)["person"]
    r = api.post("/mpi/unlink", json={"patient": b, "reviewer": "rev-3", "reason": "wrong"})
    assert r.status_code == 200, r.text
    unlink_event = r.json()["event"]
    assert person_of(api, b)["person"] != together
    assert person_of(api, b)["decisions"][0]["decision"] == "not-duplicate"
    r = api.post(f"/mpi/events/{unlink_event}/revert", json={"reviewer": "rev-3"})
    assert r.status_code == 200, r.text
    assert person_of(api, b)["person"] == together
    assert person_of(api, b)["decisions"] == []
    # merge a person that is someone else, then take it back
    apart = person_of(api, c)["person"]
    merge = api.post("/mpi/link", json={"patients": [a, c], "reviewer": "rev-3"}).json()["event"]
    assert person_of(api, c)["person"] == together
    assert http.get(f"/{apart}").status_code == 410  # the absorbed golden record
    assert api.post(f"/mpi/events/{merge}/revert", json={"reviewer": "rev-3"}).status_code == 200
    assert person_of(api, c)["person"] == apart
    assert http.get(f"/{apart}").status_code == 200
    again = api.post(f"/mpi/events/{merge}/revert", json={"reviewer": "rev-3"})
    assert again.status_code == 409 and again.json()["resourceType"] == "OperationOutcome"
    kinds = [e["kind"] for e in api.get("/mpi/events", params={"patient": c}).json()["events"]]
    assert "merge" in kinds and "revert" in kinds


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/mpi/link", {"patients": ["x"], "reviewer": "r"}, 400),
        ("/mpi/link", {"patients": ["no-such-1", "no-such-2"], "reviewer": "r"}, 404),
        ("/mpi/link", {"patients": ["a", "b"]}, 400),
        ("/mpi/unlink", {"patient": "no-such", "reviewer": "r"}, 404),
        ("/mpi/reviews/999999999", {"decision": "link", "reviewer": "r"}, 404),
        ("/mpi/events/999999999/revert", {"reviewer": "r"}, 404),
    ],
)
def test_review_api_errors_are_outcomes(
    api: httpx.Client, path: str, body: dict[str, Any], status: int
) -> None:
    r = api.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


def test_a_failed_transaction_links_nothing(http: httpx.Client, api: httpx.Client) -> None:
    latin, _ = _family()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:2b6c2c3e-0d1f-4f7e-9a51-1f1f1f1f1f1f",
                "resource": patient("Turki", latin, D["1990-09-09"]),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {"resourceType": "Observation", "status": "not-a-status"},
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    r = http.post("", json=bundle)
    assert r.status_code == 400
    assert match(http, patient("Turki", latin, D["1990-09-09"])).json()["total"] == 0
    a = create(http, patient("Turki", latin, D["1990-09-09"]))
    assert person_of(api, a)["members"] == [f"Patient/{a}"]


def test_a_bundles_patients_are_linked_at_its_end_as_last_written(
    http: httpx.Client, api: httpx.Client
) -> None:
    """A transaction links its Patients when its entries are done, each in its last version:
    two registrations of one person in one Bundle become one person with one golden record,
    and a Patient written twice is linked as the second write left it (here, with another
    person's birth date and name, so it stays apart)."""
    family, arabic = _family()
    nid = _luhn_id()
    twice = f"mpi-twice-{uuid.uuid4().hex[:8]}"
    other = patient("Hind", family, D["bundle-other"], gender="female", pid=twice)
    entries = [
        (patient("Majed", family, D["bundle"], nid), "POST", "Patient"),
        (patient("ماجد", arabic, D["bundle"], nid), "POST", "Patient"),
        (patient("Majed", family, D["bundle"], pid=twice), "PUT", f"Patient/{twice}"),
        (other, "PUT", f"Patient/{twice}"),
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": body,
                "request": {"method": method, "url": url},
            }
            for body, method, url in entries
        ],
    }
    r = http.post("", json=bundle)
    assert r.status_code == 200, r.text
    ids = [e["response"]["location"].split("/")[1] for e in r.json()["entry"]]
    first, second = person_of(api, ids[0]), person_of(api, ids[1])
    assert first["person"] == second["person"]
    assert sorted(first["members"]) == sorted(f"Patient/{i}" for i in ids[:2])
    links = {x["target"]["reference"] for x in person_resource(http, ids[0])["link"]}
    assert links == {f"Patient/{i}" for i in ids[:2]}
    assert person_of(api, twice)["members"] == [f"Patient/{twice}"]


def test_no_patient_is_in_two_persons(http: httpx.Client) -> None:
    seen: dict[str, str] = {}
    url: str | None = f"/Person?_count=500&_tag={GOLDEN}"
    while url:
        bundle = http.get(url).json()
        for entry in bundle.get("entry", []):
            person = entry["resource"]
            for link in person.get("link", []):
                ref = link["target"]["reference"]
                assert ref not in seen, f"{ref} in {seen.get(ref)} and {person['id']}"
                seen[ref] = person["id"]
        url = next((x["url"] for x in bundle.get("link", []) if x["relation"] == "next"), None)
    assert seen


def test_a_registration_that_bridges_two_persons_makes_them_one(
    http: httpx.Client, api: httpx.Client
) -> None:
    """As batch clustering follows a chain of certain links, so does real time: a record with
    the ID and the name in Latin, another with the name in Arabic and the birth date, and a
    third with all of them are one person once the third arrives."""
    latin, arabic = _family()
    nid, born = _luhn_id(), D["bridge"]
    first = patient("Khalid", latin, born, nid=nid)
    del first["birthDate"]
    a = create(http, first)
    b = create(http, patient("خالد", arabic, born))
    assert person_of(api, a)["person"] != person_of(api, b)["person"]
    c = create(http, patient("Khalid", latin, born, nid=nid))
    assert person_of(api, a)["person"] == person_of(api, b)["person"] == person_of(api, c)["person"]
    merges = [e for e in api.get("/mpi/events", params={"patient": b}).json()["events"]]
    assert any(e["kind"] == "merge" for e in merges), merges


def _recent_date(first_year: int, last_year: int) -> str:
    """A birth date between the years given that no other test uses (children's dates: the
    others lie between 1930 and 2005)."""
    while True:
        d = f"{random.randint(first_year, last_year)}-{random.randint(1, 12):02d}-"
        d += f"{random.randint(1, 28):02d}"
        if d not in _USED:
            _USED.add(d)
            return d


def _phone() -> str:
    return "+9665" + "".join(random.choices(string.digits, k=8))


def _with_phone(body: dict[str, Any], phone: str) -> dict[str, Any]:
    body["telecom"] = [{"system": "phone", "value": phone, "use": "mobile"}]
    return body


@pytest.mark.parametrize("parent_first", [True, False], ids=["parent-first", "parent-last"])
def test_an_infant_under_a_parents_id_is_one_person_with_its_own_id(
    http: httpx.Client, api: httpx.Client, parent_first: bool
) -> None:
    """An infant registered under a parent's national ID and again under its own is one
    person, as batch clustering makes it: an ID carried by records born a generation apart is
    nobody's proof of identity, so the differing IDs are no conflict. When the parent is
    registered after the infant, its arrival is what shows the ID shared, and the infant's
    registrations kept apart until then are merged."""
    latin, _ = _family()
    parent_id, own_id, phone = _luhn_id("2"), _luhn_id("2"), _phone()
    born = _recent_date(2021, 2025)
    parent = _with_phone(patient("Saad", latin, D[f"parent-{parent_first}"], nid=parent_id), phone)
    under_parent = _with_phone(patient("Lama", latin, born, nid=parent_id, gender="female"), phone)
    own = _with_phone(patient("Lama", latin, born, nid=own_id, gender="female"), phone)
    p = create(http, parent) if parent_first else None
    a = create(http, under_parent)
    b = create(http, own)
    if p is None:
        # the guard cannot know yet that the parent's ID is not the infant's own
        assert person_of(api, a)["person"] != person_of(api, b)["person"]
        p = create(http, parent)
        events = api.get("/mpi/events", params={"patient": b}).json()["events"]
        assert any(e["kind"] == "merge" for e in events), events
    assert person_of(api, a)["person"] == person_of(api, b)["person"]
    assert person_of(api, p)["person"] != person_of(api, a)["person"]


def test_father_and_son_with_their_own_ids_stay_two_people(
    http: httpx.Client, api: httpx.Client
) -> None:
    """A registration without an ID that certainly matches a father (his birth date) and
    nearly as certainly his namesake son (same names and phone) does not merge them: their
    valid IDs differ, and being born a generation apart is no excuse (batch refuses the same
    merge)."""
    latin, _ = _family()
    phone = _phone()

    def talal(born: str, nid: str | None) -> dict[str, Any]:
        body = _with_phone(patient("Talal", latin, born, nid=nid), phone)
        body["name"][0]["given"] = ["Talal", "Nasser"]
        return body

    father_born = D["father-of-namesake"]
    father = create(http, talal(father_born, _luhn_id()))
    son = create(http, talal(_recent_date(2008, 2016), _luhn_id()))
    assert person_of(api, father)["person"] != person_of(api, son)["person"]
    bridge = create(http, talal(father_born, None))
    assert person_of(api, bridge)["person"] == person_of(api, father)["person"]
    assert person_of(api, son)["person"] != person_of(api, father)["person"]


def test_the_index_knows_an_id_shared_across_generations_while_both_holders_are_in_it() -> None:
    """The guard's knowledge follows the index: a holder removed (a deleted Patient, or a
    write rolled back) takes its evidence with it."""
    nid = _luhn_id()
    index = CandidateIndex(default_model())
    index.add(from_patient(patient("Lama", "Al-Harbi", "2024-03-11", nid=nid, pid="infant")))
    assert not index.shared_across_generations(nid)
    index.add(from_patient(patient("Saad", "Al-Harbi", "1990-04-02", nid=nid, pid="parent")))
    assert index.shared_across_generations(nid) and index.holders_of(nid) == {"infant", "parent"}
    index.remove("parent")
    assert not index.shared_across_generations(nid) and index.holders_of(nid) == {"infant"}
