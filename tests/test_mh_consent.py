"""Who sees mental-health data (issue 15): a reader without the patient's consent sees no
mental-health answer through any path, on SQLite and PostgreSQL, over HTTP with access control on.

The world: a patient of the Riyadh centre screened with the PHQ-9 (item 9 positive, so the
server raises a suicide-risk Flag and a safety Task) and the GAD-7, scored on write, enrolled in
collaborative care by a mental health clinic, with an active Consent that denies ``PSY`` data
to everyone but that clinic (the project's consent model: ``security/consent.py``). Then every
path is asked by

* a clinician of the patient's own centre, without the consent (must see nothing of it),
* a community health worker of the same centre (must see nothing of it either: the consent
  names the clinic, not the centre; see docs/mental-health.md, "Who sees mental-health data"),
* a system client bound to no facility (the ministry's, the only one bulk export serves),
* a clinician of the clinic the consent permits: the positive control, who must see what the
  path returns, or the test would prove nothing.

A path leaks when the answer of a reader without the consent returns a hidden resource, or, for
a chain or ``_has``, matches by what only the hidden data holds. Another patient screened the
same way, whose record restricts nothing, shows that exports do reach mental-health data.
The last tests find mental-health data stored without the ``PSY`` label, which no consent
could then protect.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from joserfc.jwk import ECKey

from takamul.mentalhealth.instruments import QUESTIONNAIRE_BASE, instrument, instruments
from takamul.mentalhealth.registry import record_recommendation
from takamul.mentalhealth.safety import CARE_PROGRAMME_SYSTEM, COLLABORATIVE_CARE
from takamul.settings import Settings
from takamul.store.repository import Store
from tests.web_world import PASSWORD, WebSite

LOINC = "http://loinc.org"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PHQ9_ITEMS = (
    "44250-9",
    "44255-8",
    "44259-0",
    "44254-1",
    "44251-7",
    "44258-2",
    "44252-5",
    "44253-3",
    "44260-8",  # item 9: thoughts of self-harm
)
GAD7_ITEMS = ("69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7")
# LOINC answer list LL358-3, scored 0..3
ANSWERS = ("LA6568-5", "LA6569-3", "LA6570-1", "LA6571-9")
CLINIC = "mh-clinic"
QR = "QuestionnaireResponse"
# Readers without the consent: logins of the Riyadh centre (tests/web_world.py) and the
# ministry's system client; with it, a clinician of the clinic (added by ``world``).
WITHOUT_CONSENT = ("clinician", "chw", "ministry")
LOGINS_WITHOUT_CONSENT = ("clinician", "chw")
WITH_CONSENT = "mh-clinician"
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


def response(pid: str, form: str, items: tuple[str, ...], answers: list[int]) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": QUESTIONNAIRE_BASE + form,
        "subject": {"reference": f"Patient/{pid}"},
        "authored": "2026-11-02T10:00:00+03:00",
        "item": [
            {
                "linkId": link,
                "answer": [{"valueCoding": {"system": LOINC, "code": ANSWERS[score]}}],
            }
            for link, score in zip(items, answers, strict=True)
        ],
    }


def consent(pid: str) -> dict[str, Any]:
    """The patient denies mental health data to everyone but the clinic treating them."""
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{pid}"},
        "provision": {
            "type": "deny",
            "securityLabel": [{"system": ACT, "code": "PSY"}],
            "provision": [
                {
                    "type": "permit",
                    "actor": [
                        {
                            "role": {"text": "treating team"},
                            "reference": {"reference": f"Organization/{CLINIC}"},
                        }
                    ],
                }
            ],
        },
    }


@dataclass
class World:
    patient: str
    phq9: str
    gad7: str
    scores: list[str]  # the score Observations the server derived
    flag: str
    task: str
    episode: str
    vital: str  # an ordinary Observation of the patient: every reader sees it
    pointer: str  # an ordinary Observation that refers to the response and a score
    hidden: dict[str, str]  # id -> what it is, of everything mental health
    open: str  # another patient screened, whose record restricts nothing
    open_ids: list[str]  # their response, score, Flag and Task

    def markers(self) -> list[str]:
        """Strings whose presence in an answer reveals mental-health data: the hidden
        resources' ids (an answer code would not do: the instruments' Questionnaires, which
        everyone may read, list them)."""
        return list(self.hidden)


def created(r: httpx.Response) -> str:
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def entries(admin: httpx.Client, rtype: str, **params: str) -> list[dict[str, Any]]:
    r = admin.get(f"/{rtype}", params={**params, "_count": "100"})
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


@pytest.fixture(scope="module")
def world(web_site: WebSite) -> World:
    admin = web_site.fhir
    created(
        admin.put(f"/Organization/{CLINIC}", json={"resourceType": "Organization", "id": CLINIC})
    )
    web_site.security.users.add(WITH_CONSENT, PASSWORD, ["clinician"], CLINIC, "Dr Sara Al-Mutairi")
    pid = created(admin.post("/Patient", json=riyadh_patient("ريما")))
    vital = created(
        admin.post(
            "/Observation",
            json={
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
                "subject": {"reference": f"Patient/{pid}"},
                "valueQuantity": {"value": 72, "unit": "/min"},
            },
        )
    )
    # collaborative care run by the clinic: what ties the clinic to the patient
    episode = created(
        admin.post(
            "/EpisodeOfCare",
            json={
                "resourceType": "EpisodeOfCare",
                "status": "active",
                "type": [
                    {"coding": [{"system": CARE_PROGRAMME_SYSTEM, "code": COLLABORATIVE_CARE}]}
                ],
                "patient": {"reference": f"Patient/{pid}"},
                "managingOrganization": {"reference": f"Organization/{CLINIC}"},
                "period": {"start": "2026-11-01"},
            },
        )
    )
    phq9, gad7, scores, flags, tasks = screen(admin, pid)
    # ordinary data that points at the hidden: includes and chains must not follow it there
    pointer = created(
        admin.post(
            "/Observation",
            json={
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
                "subject": {"reference": f"Patient/{pid}"},
                "derivedFrom": [{"reference": f"{QR}/{phq9}"}],
                "hasMember": [{"reference": f"Observation/{scores[0]}"}],
                "valueQuantity": {"value": 88, "unit": "/min"},
            },
        )
    )
    other = created(admin.post("/Patient", json=riyadh_patient("سناء")))
    opened = screen(admin, other)
    created(admin.post("/Consent", json=consent(pid)))
    hidden = {
        phq9: "PHQ-9 QuestionnaireResponse",
        gad7: "GAD-7 QuestionnaireResponse",
        scores[0]: "score Observation",
        scores[1]: "score Observation",
        flags[0]["id"]: "suicide-risk Flag",
        tasks[0]["id"]: "safety Task",
    }
    open_ids = [opened[0], opened[1], *opened[2], *(r["id"] for r in opened[3] + opened[4])]
    return World(
        pid,
        phq9,
        gad7,
        scores,
        flags[0]["id"],
        tasks[0]["id"],
        episode,
        vital,
        pointer,
        hidden,
        other,
        open_ids,
    )


def riyadh_patient(given: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "name": [{"given": [given], "family": "الكثيري"}],
        "birthDate": "1992-04-11",
        "gender": "female",
        "managingOrganization": {"reference": "Organization/org-riyadh"},
    }


Screening = tuple[str, str, list[str], list[dict[str, Any]], list[dict[str, Any]]]


def screen(admin: httpx.Client, pid: str) -> Screening:
    """A PHQ-9 with item 9 positive and a GAD-7, stored; the scores, Flag and Task the server
    derived from them."""
    phq9 = created(admin.post(f"/{QR}", json=response(pid, "phq-9", PHQ9_ITEMS, [2] * 9)))
    gad7 = created(admin.post(f"/{QR}", json=response(pid, "gad-7", GAD7_ITEMS, [1] * 7)))
    scores = [
        o["id"]
        for qr in (phq9, gad7)
        for o in entries(admin, "Observation", **{"derived-from": f"{QR}/{qr}"})
    ]
    flags = entries(admin, "Flag", subject=f"Patient/{pid}")
    tasks = entries(admin, "Task", patient=f"Patient/{pid}")
    assert len(scores) == 2 and len(flags) == 1 and len(tasks) == 1, (scores, flags, tasks)
    return phq9, gad7, scores, flags, tasks


@pytest.fixture(scope="module")
def readers(
    web_site: WebSite, world: World, ministry: httpx.Client
) -> Iterator[dict[str, httpx.Client]]:
    """Each reader's client: the people signed in (the session cookie works on /fhir as on
    /app), and the ministry's system client."""
    people = (*LOGINS_WITHOUT_CONSENT, WITH_CONSENT)
    clients = {login: web_site.login_http(login) for login in people}
    yield {**clients, "ministry": ministry}
    for client in clients.values():
        client.close()


# -- what an answer reveals -----------------------------------------------------------------------


def revealed(r: httpx.Response, world: World) -> set[str]:
    """The hidden resources an answer returns, at any depth (a Bundle, a batch answer's
    searchset, a resource contained). Ids in references do not count: ordinary data may name
    what it was derived from, and a reader may see that reference without the resource."""
    if r.status_code >= 400:
        return set()
    return {i for i in _resource_ids(r.json()) if i in world.hidden}


def _resource_ids(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("resourceType"), str) and isinstance(node.get("id"), str):
            yield node["id"]
        for value in node.values():
            yield from _resource_ids(value)
    elif isinstance(node, list):
        for value in node:
            yield from _resource_ids(value)


# -- the paths ------------------------------------------------------------------------------------


Ask = Callable[[httpx.Client, World], httpx.Response]


def get(url: str, **params: str) -> Ask:
    return lambda c, w: c.get("/fhir/" + url.format(w=w), params=_fill(params, w))


def _fill(params: dict[str, str], w: World) -> dict[str, str]:
    return {k.replace("__", ":"): v.format(w=w) for k, v in params.items()}


PHQ9_URL = QUESTIONNAIRE_BASE + "phq-9"
PATIENT = "Patient/{w.patient}"
# Every path a FHIR client has to these resources; each must reach them for the clinic.
PATHS: dict[str, Ask] = {
    "read QR": get(QR + "/{w.phq9}"),
    "read GAD-7 QR": get(QR + "/{w.gad7}"),
    "read score": get("Observation/{w.scores[0]}"),
    "read Flag": get("Flag/{w.flag}"),
    "read Task": get("Task/{w.task}"),
    "read QR _summary": get(QR + "/{w.phq9}", _summary="true"),
    "read QR _elements": get(QR + "/{w.phq9}", _elements="item"),
    "vread QR": get(QR + "/{w.phq9}/_history/1"),
    "vread score": get("Observation/{w.scores[0]}/_history/1"),
    "vread Flag": get("Flag/{w.flag}/_history/1"),
    "instance history QR": get(QR + "/{w.phq9}/_history"),
    "instance history Task": get("Task/{w.task}/_history"),
    "type history QR": get(QR + "/_history", _count="500"),
    "type history Observation": get("Observation/_history", _count="500"),
    "type history Flag": get("Flag/_history", _count="500"),
    "system history": get("_history", _count="1000"),
    "QR?patient": get(QR, patient=PATIENT),
    "QR?subject": get(QR, subject=PATIENT),
    "QR?questionnaire": get(QR, questionnaire=PHQ9_URL),
    "QR?_id": get(QR, _id="{w.phq9}"),
    "QR?_security": get(QR, _security=f"{ACT}|PSY"),
    "QR?status": get(QR, status="completed", _count="500"),
    "QR?authored": get(QR, authored="2026-11-02"),
    "Observation?subject": get("Observation", subject=PATIENT),
    "Observation?patient": get("Observation", patient=PATIENT),
    "Observation?code PHQ-9 total": get("Observation", code=f"{LOINC}|44261-6"),
    "Observation?code GAD-7 total": get("Observation", code=f"{LOINC}|70274-6"),
    "Observation?code bare": get("Observation", code="44261-6"),
    "Observation?derived-from": get("Observation", **{"derived-from": QR + "/{w.phq9}"}),
    "Observation?_security": get("Observation", _security="PSY"),
    "Flag?patient": get("Flag", patient=PATIENT),
    "Flag?subject": get("Flag", subject=PATIENT),
    "Task?patient": get("Task", patient=PATIENT),
    "Task?focus": get("Task", focus=QR + "/{w.phq9}"),
    "Task?priority": get("Task", priority="stat", _count="500"),
    "compartment QR": get(PATIENT + "/" + QR),
    "compartment Observation": get(PATIENT + "/Observation"),
    "compartment Flag": get(PATIENT + "/Flag"),
    "Observation _include derived-from": get(
        "Observation", subject=PATIENT, _include="Observation:derived-from"
    ),
    "Task _include focus": get("Task", patient=PATIENT, _include="Task:focus"),
    "Flag _include:iterate": get(
        "Observation",
        _id="{w.vital}",
        _include="Observation:patient",
        **{"_revinclude__iterate": "Flag:patient"},
    ),
    "visible Observation _include": get(
        "Observation",
        _id="{w.pointer}",
        _include="Observation:derived-from",
        **{"_include__iterate": "Observation:has-member"},
    ),
    "Patient _revinclude _include:iterate": get(
        "Patient",
        _id="{w.patient}",
        _revinclude="Observation:subject",
        **{"_include__iterate": "Observation:derived-from"},
    ),
    "Patient _revinclude QR": get("Patient", _id="{w.patient}", _revinclude=QR + ":subject"),
    "Patient _revinclude Observation": get(
        "Patient", _id="{w.patient}", _revinclude="Observation:subject"
    ),
    "Patient _revinclude Flag": get("Patient", _id="{w.patient}", _revinclude="Flag:patient"),
    "Patient _revinclude Task": get("Patient", _id="{w.patient}", _revinclude="Task:patient"),
    "QR _revinclude Observation": get(QR, subject=PATIENT, _revinclude="Observation:derived-from"),
    "chain Observation?derived-from:QR.questionnaire": get(
        "Observation", **{"derived-from:QuestionnaireResponse.questionnaire": PHQ9_URL}
    ),
    "chain Task?focus:QR.subject": get("Task", **{"focus:QuestionnaireResponse.subject": PATIENT}),
    "$everything": get(PATIENT + "/$everything", _count="500"),
    "$everything POST": lambda c, w: c.post(
        f"/fhir/Patient/{w.patient}/$everything",
        json={"resourceType": "Parameters", "parameter": [{"name": "_count", "valueInteger": 500}]},
    ),
    "_search POST": lambda c, w: c.post(
        "/fhir/Observation/_search", data={"subject": f"Patient/{w.patient}"}
    ),
    "batch GETs": lambda c, w: c.post("/fhir", json=_batch("batch", w)),
    "transaction GETs": lambda c, w: c.post("/fhir", json=_batch("transaction", w)),
}
# Searches whose answer reveals the patient the hidden data would match: the patient is the
# reader's own, so a leak is the patient appearing in the answer.
HAS_PATHS: dict[str, Ask] = {
    "_has Observation code": get(
        "Patient", _id="{w.patient}", **{"_has__Observation__subject__code": f"{LOINC}|44261-6"}
    ),
    "_has QR questionnaire": get(
        "Patient",
        _id="{w.patient}",
        **{"_has__QuestionnaireResponse__subject__questionnaire": PHQ9_URL},
    ),
    "_has QR status": get(
        "Patient",
        _id="{w.patient}",
        **{"_has__QuestionnaireResponse__subject__status": "completed"},
    ),
    "_has Flag": get("Patient", _id="{w.patient}", **{"_has__Flag__patient___id": "{w.flag}"}),
    "chain through the hidden response": get(
        "Observation",
        _id="{w.pointer}",
        **{"derived-from:QuestionnaireResponse.questionnaire": PHQ9_URL},
    ),
    "chain through the hidden score": get(
        "Observation", _id="{w.pointer}", **{"has-member:Observation.code": f"{LOINC}|44261-6"}
    ),
    "_has Task priority": get(
        "Patient", _id="{w.patient}", **{"_has__Task__patient__priority": "stat"}
    ),
    "_has Observation _security": get(
        "Patient", _id="{w.patient}", **{"_has__Observation__subject___security": "PSY"}
    ),
}


def _batch(kind: str, w: World) -> dict[str, Any]:
    urls = [
        f"{QR}/{w.phq9}",
        f"Observation/{w.scores[0]}",
        f"Flag/{w.flag}",
        f"Task/{w.task}",
        f"{QR}?subject=Patient/{w.patient}",
        f"Observation?subject=Patient/{w.patient}&_include=Observation:derived-from",
        f"Patient/{w.patient}/$everything",
    ]
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [{"request": {"method": "GET", "url": u}} for u in urls],
    }


@pytest.mark.parametrize("path", sorted(PATHS))
def test_no_path_reveals_mental_health_without_consent(
    readers: dict[str, httpx.Client], world: World, path: str
) -> None:
    ask = PATHS[path]
    control = ask(readers[WITH_CONSENT], world)
    assert control.status_code == 200, control.text
    assert revealed(control, world), f"{path}: the clinic itself sees nothing: the path is moot"
    for login in WITHOUT_CONSENT:
        r = ask(readers[login], world)
        assert r.status_code in (200, 403, 404), (login, r.status_code, r.text)
        leaked = revealed(r, world)
        assert not leaked, f"{path} reveals to {login}: {[world.hidden.get(m, m) for m in leaked]}"


@pytest.mark.parametrize("path", sorted(HAS_PATHS))
def test_has_and_chains_do_not_match_by_hidden_data(
    readers: dict[str, httpx.Client], world: World, path: str
) -> None:
    ask = HAS_PATHS[path]
    control = ask(readers[WITH_CONSENT], world)
    assert control.status_code == 200, control.text
    assert control.json().get("entry"), f"{path}: matches nothing for the clinic: moot"
    for login in WITHOUT_CONSENT:
        r = ask(readers[login], world)
        assert r.status_code in (200, 403), (login, r.text)
        if r.status_code == 200:
            assert not r.json().get("entry"), f"{path} matches for {login}: {r.text[:400]}"
            assert r.json().get("total", 0) == 0


COUNTED = (
    ("Observation", {"subject": "Patient/{w.patient}"}),
    ("Observation", {"subject": "Patient/{w.patient}", "code": f"{LOINC}|44261-6"}),
    (QR, {"subject": "Patient/{w.patient}"}),
    (QR, {"subject": "Patient/{w.patient}", "questionnaire": PHQ9_URL}),
    ("Flag", {"patient": "Patient/{w.patient}"}),
    ("Task", {"patient": "Patient/{w.patient}"}),
    (QR, {"subject": "Patient/{w.patient}", "_security": "PSY"}),
    ("EpisodeOfCare", {"patient": "Patient/{w.patient}"}),
    ("Patient", {"_id": "{w.patient}", "_has:Observation:subject:code": f"{LOINC}|44261-6"}),
)


@pytest.mark.parametrize(("rtype", "params"), COUNTED)
def test_totals_count_only_what_the_reader_sees(
    readers: dict[str, httpx.Client], world: World, rtype: str, params: dict[str, str]
) -> None:
    """``_summary=count`` and ``total`` count what the reader may see: the clinic counts more
    than the centre, and the centre's count is its own answer's length."""
    query = {k: v.format(w=world) for k, v in params.items()}
    totals = {}
    for login in (*WITHOUT_CONSENT, WITH_CONSENT):
        c = readers[login]
        page = c.get(f"/fhir/{rtype}", params={**query, "_count": "500"})
        count = c.get(f"/fhir/{rtype}", params={**query, "_summary": "count"})
        if page.status_code == 403:
            assert count.status_code == 403, count.text
            continue
        assert page.status_code == count.status_code == 200, (page.text, count.text)
        shown = len(page.json().get("entry", []))
        assert page.json()["total"] == count.json()["total"] == shown, (login, count.text)
        totals[login] = shown
    for login in WITHOUT_CONSENT:
        if login in totals:
            assert totals[login] < totals[WITH_CONSENT], (rtype, query, totals)


def test_a_hidden_resource_is_answered_as_one_that_does_not_exist(
    readers: dict[str, httpx.Client], world: World
) -> None:
    """The project answers what a reader may not see as if it did not exist (404, the same
    diagnostics as for an id never used): a hidden response cannot be told from a missing one."""
    clinician = readers["clinician"]
    for rtype, rid in ((QR, world.phq9), ("Flag", world.flag), ("Observation", world.scores[0])):
        hidden = clinician.get(f"/fhir/{rtype}/{rid}")
        missing = clinician.get(f"/fhir/{rtype}/never-used")
        assert hidden.status_code == missing.status_code == 404, hidden.text
        said, unknown = hidden.json()["issue"][0], missing.json()["issue"][0]
        assert said["code"] == unknown["code"]
        assert said["diagnostics"].replace(rid, "X") == unknown["diagnostics"].replace(
            "never-used", "X"
        )
        # writing over it (the clinic's own content, unchanged) is refused as for a
        # resource the reader may not see
        body = readers[WITH_CONSENT].get(f"/fhir/{rtype}/{rid}").json()
        refused = clinician.put(f"/fhir/{rtype}/{rid}", json=body)
        assert refused.status_code == 404, refused.text
        assert refused.json()["resourceType"] == "OperationOutcome"


def test_a_hidden_resource_cannot_be_changed_or_deleted(
    web_site: WebSite, readers: dict[str, httpx.Client], world: World
) -> None:
    """Acknowledging the safety Task (PATCH, PUT) or deleting the scores, by id or by criteria,
    is answered as for what does not exist, and changes nothing."""
    key = ECKey.generate_key("P-384")
    client_id = f"riyadh-{uuid.uuid4().hex[:8]}"
    jwks = {"keys": [{**key.as_dict(private=False), "kid": key.thumbprint(), "alg": "ES384"}]}
    scopes = "system/*.cruds"
    web_site.security.clients.add(
        client_id, "Riyadh centre system", jwks, scopes, "org-riyadh", ("clinician",)
    )
    token = web_site.security.tokens.mint(client_id, scopes, web_site.root + "/fhir")
    writer = httpx.Client(
        base_url=web_site.root, timeout=60, headers={"Authorization": f"Bearer {token}"}
    )
    clinic = readers[WITH_CONSENT]
    task = clinic.get(f"/fhir/Task/{world.task}").json()
    with writer:
        patch = [{"op": "replace", "path": "/status", "value": "accepted"}]
        for client in (writer, readers["chw"]):
            r = client.patch(
                f"/fhir/Task/{world.task}",
                content=orjson.dumps(patch),
                headers={"Content-Type": "application/json-patch+json"},
            )
            assert r.status_code == 404, r.text
            r = client.put(f"/fhir/Task/{world.task}", json={**task, "status": "accepted"})
            assert r.status_code == 404, r.text
        assert writer.delete(f"/fhir/Observation/{world.scores[0]}").status_code == 404
        r = writer.delete(
            "/fhir/Observation",
            params={"subject": f"Patient/{world.patient}", "code": f"{LOINC}|44261-6"},
        )
        assert r.status_code in (200, 204), r.text
    after = clinic.get(f"/fhir/Task/{world.task}").json()
    assert after["status"] == task["status"] and after["meta"] == task["meta"]
    assert clinic.get(f"/fhir/Observation/{world.scores[0]}").status_code == 200


def test_a_conditional_create_does_not_reveal_a_hidden_match(
    readers: dict[str, httpx.Client], world: World
) -> None:
    """``If-None-Exist`` would answer 200 with the hidden response if it saw it."""
    clinician = readers["clinician"]
    body = response(world.patient, "phq-9", PHQ9_ITEMS, [0] * 9)
    r = clinician.post(
        f"/fhir/{QR}",
        json=body,
        headers={"If-None-Exist": f"_id={world.phq9}"},
    )
    assert r.status_code in (201, 403), r.text
    assert world.phq9 not in r.text


def _export(client: httpx.Client, url: str) -> set[str]:
    """The ids of the resources in the NDJSON files of an export (empty when refused)."""
    r = client.get(url, params={"_type": f"{QR},Observation,Flag,Task"}, headers=ASYNC)
    if r.status_code == 403:
        return set()
    assert r.status_code == 202, r.text
    location = r.headers["Content-Location"]
    deadline = time.time() + 60
    while (status := client.get(location)).status_code == 202:
        assert time.time() < deadline, f"{url}: the export did not complete within 60 s"
        time.sleep(0.2)
    assert status.status_code == 200, status.text
    out = set()
    for item in status.json()["output"]:
        file = client.get(item["url"])
        assert file.status_code == 200, file.text
        out |= {orjson.loads(line)["id"] for line in file.text.splitlines() if line.strip()}
    return out


@pytest.fixture(scope="module")
def ministry(web_site: WebSite) -> Iterator[httpx.Client]:
    """A system client bound to no facility (bulk export is only theirs): the consent names
    no such client, so it is a reader without the consent."""
    key = ECKey.generate_key("P-384")
    client_id = f"ministry-{uuid.uuid4().hex[:8]}"
    jwks = {"keys": [{**key.as_dict(private=False), "kid": key.thumbprint(), "alg": "ES384"}]}
    scopes = "system/*.rs"
    web_site.security.clients.add(client_id, "ministry analytics", jwks, scopes, None, ())
    base = web_site.root + "/fhir"
    token = web_site.security.tokens.mint(client_id, scopes, base)
    with httpx.Client(
        base_url=web_site.root, timeout=60, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        yield client


@pytest.mark.parametrize("level", ["/fhir/$export", "/fhir/Patient/$export", "group"])
def test_bulk_export_files_hold_no_hidden_resource(
    web_site: WebSite,
    ministry: httpx.Client,
    readers: dict[str, httpx.Client],
    world: World,
    level: str,
) -> None:
    """The control is the other patient screened, whose record restricts nothing: the export
    reaches mental-health data, and leaves out only what the consent withholds."""
    if level == "group":
        members = [{"entity": {"reference": f"Patient/{p}"}} for p in (world.patient, world.open)]
        group = created(
            web_site.fhir.post(
                "/Group",
                json={"resourceType": "Group", "type": "person", "actual": True, "member": members},
            )
        )
        level = f"/fhir/Group/{group}/$export"
    exported = _export(ministry, level)
    assert set(world.open_ids) <= exported, (world.open_ids, exported)
    assert not exported & set(world.hidden), [world.hidden[i] for i in exported & set(world.hidden)]
    for login in WITHOUT_CONSENT:
        # a facility's people search their own patients: export is refused them outright
        assert not _export(readers[login], level) & set(world.hidden), login


# -- the web app ----------------------------------------------------------------------------------


def _page(client: httpx.Client, url: str) -> str:
    r = client.get(url)
    assert r.status_code == 200, r.text[:400]
    return r.text


def _signed_in_page(web_site: WebSite, login: str, url: str) -> str:
    client = web_site.login_http(login)
    try:
        return _page(client, url)
    finally:
        client.close()


def test_the_record_page_shows_no_answer_or_score_without_consent(
    readers: dict[str, httpx.Client], world: World
) -> None:
    url = f"/app/patients/{world.patient}"
    control = _page(readers[WITH_CONSENT], url)
    # the clinic's page shows the screening (the PHQ-9 trend holds its score, 18)
    assert "PHQ-9" in control and "18" in control, control[:2000]
    for login in LOGINS_WITHOUT_CONSENT:
        page = _page(readers[login], url)
        leaked = [m for m in world.markers() if m in page]
        assert not leaked, (login, leaked)
        assert "PHQ-9" not in page and "GAD-7" not in page, login


# -- what the label covers ------------------------------------------------------------------------
# The consent withholds what carries the PSY label; these tests find mental-health data stored
# without it. A failure here names a resource the consent cannot protect, on every path above.


def security_codes(resource: dict[str, Any]) -> set[str]:
    return {s.get("code") for s in (resource.get("meta") or {}).get("security") or ()}


def test_every_derived_resource_carries_the_psy_label(web_site: WebSite, world: World) -> None:
    """The responses, scores, Flag and Task of the patient whose record restricts nothing
    (the administrator reads them): each is labelled PSY as stored."""
    admin = web_site.fhir
    kinds = {QR: world.open_ids[:2], "Observation": world.open_ids[2:4]}
    kinds["Flag"], kinds["Task"] = [world.open_ids[4]], [world.open_ids[5]]
    for rtype, ids in kinds.items():
        for rid in ids:
            stored = admin.get(f"/{rtype}/{rid}")
            assert stored.status_code == 200, stored.text
            assert "PSY" in security_codes(stored.json()), (rtype, rid, stored.json().get("meta"))


@pytest.mark.parametrize("form", [i.id for i in instruments()])
def test_a_response_to_any_instrument_is_labelled_psy(
    web_site: WebSite, world: World, form: str
) -> None:
    """A response to one of the record's own instruments, by its canonical url and linkIds
    (as the web app's screening form writes it), is mental health data whatever its codes."""
    inst = instrument(form)
    body = {
        "resourceType": QR,
        "status": "completed",
        "questionnaire": inst.url,
        "subject": {"reference": f"Patient/{world.open}"},
        "item": [{"linkId": link, "answer": [{"valueInteger": 0}]} for link in inst.items],
    }
    stored = web_site.fhir.post(f"/{QR}", json=body)
    assert stored.status_code == 201, stored.text
    assert "PSY" in security_codes(stored.json()), f"{inst.title} response stored unlabelled"


def test_the_collaborative_care_episode_is_hidden_without_consent(
    readers: dict[str, httpx.Client], world: World
) -> None:
    """Enrolment in collaborative care says the person is treated for depression or anxiety."""
    query = {"patient": f"Patient/{world.patient}"}
    control = readers[WITH_CONSENT].get("/fhir/EpisodeOfCare", params=query)
    assert world.episode in control.text
    for login in WITHOUT_CONSENT:
        r = readers[login].get("/fhir/EpisodeOfCare", params=query)
        assert r.status_code in (200, 403), r.text
        assert world.episode not in r.text, f"the collaborative-care episode shows to {login}"


def test_the_consultants_recommendation_is_hidden_without_consent(
    web_site: WebSite, readers: dict[str, httpx.Client], world: World
) -> None:
    """The psychiatric case review (``registry.record_recommendation``) is the consultant's
    judgement of the person's mental health."""
    store = Store(Settings(database_url=web_site.db))
    try:
        review = record_recommendation(
            store,
            world.patient,
            "Practitioner/consultant",
            "Consultant's advice (test fixture): raise the dose, review in four weeks",
            scores=world.scores,
        )
    finally:
        store.close()
    query = {"subject": f"Patient/{world.patient}"}
    control = readers[WITH_CONSENT].get("/fhir/ClinicalImpression", params=query)
    assert review in control.text, control.text
    for login in WITHOUT_CONSENT:
        r = readers[login].get("/fhir/ClinicalImpression", params=query)
        assert r.status_code in (200, 403), r.text
        assert review not in r.text, f"the psychiatric case review shows to {login}"


def test_the_worklist_holds_no_hidden_task(web_site: WebSite, world: World) -> None:
    """The outreach worklist lists the facility's open Tasks: the safety Task shows on the
    clinic's, and on no one else's."""
    web_site.security.users.add(
        "mh-chw", PASSWORD, ["community-health-worker"], CLINIC, "Maha Al-Anazi"
    )
    control = _signed_in_page(web_site, "mh-chw", "/app/worklist")
    assert world.task in control, control[:2000]
    for login in ("chw", "coordinator"):
        page = _signed_in_page(web_site, login, "/app/worklist")
        leaked = [world.hidden[m] for m in world.markers() if m in page]
        assert not leaked, (login, leaked)


def test_the_audit_log_records_who_read_not_what_was_answered(
    web_site: WebSite, readers: dict[str, httpx.Client], world: World
) -> None:
    """The auditor reads the log without the consent: the events of the clinic's reads name
    the resources read, never their content (no answer, no score)."""
    assert readers[WITH_CONSENT].get(f"/fhir/{QR}/{world.phq9}").status_code == 200
    deadline = time.time() + 30
    while True:
        r = web_site.fhir.get(
            "/AuditEvent", params={"entity": f"{QR}/{world.phq9}", "_count": "100"}
        )
        assert r.status_code == 200, r.text
        if r.json().get("entry") or time.time() > deadline:
            break
        time.sleep(0.5)
    events = r.json().get("entry", [])
    assert events, "the clinic's read of the response was not audited"
    text = orjson.dumps(events).decode()
    for answer in ANSWERS:
        assert answer not in text
    assert '"item"' not in text and "valueInteger" not in text


def _row_of(page: str, patient: str) -> str | None:
    """The text of the table row that links to ``patient``, if the page has one."""
    found = re.search(rf"<tr\b(?:(?!</tr>).)*{re.escape(patient)}(?:(?!</tr>).)*</tr>", page, re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", found.group(0))) if found else None


def test_the_caseload_shows_no_score_without_consent(
    readers: dict[str, httpx.Client], world: World
) -> None:
    """The collaborative-care caseload (``/app/mentalhealth``): the clinic's row of the patient
    shows the PHQ-9 (18) and GAD-7 (7); the centre's page shows no score of them, if it lists
    them at all."""
    control = _row_of(_page(readers[WITH_CONSENT], "/app/mentalhealth"), world.patient)
    assert control is not None and " 18 " in control and " 7 " in control, control
    for login in LOGINS_WITHOUT_CONSENT:
        page = _page(readers[login], "/app/mentalhealth")
        assert not [m for m in world.markers() if m in page], login
        row = _row_of(page, world.patient)
        assert row is None or (" 18 " not in row and " 7 " not in row), (login, row)


# -- a community health worker follows up, but does not read the answers -----------------------

# Every path to the answers and scores of the patient whose record restricts nothing: the
# centre's clinician reads them (the control); its community health worker, whose role never
# reads mental-health answers and scores (``roles.WITHHELD``), must not, by any path.
CHW_PATHS: dict[str, Callable[[httpx.Client, World], httpx.Response]] = {
    "read response": lambda c, w: c.get(f"/fhir/{QR}/{w.open_ids[0]}"),
    "read score": lambda c, w: c.get(f"/fhir/Observation/{w.open_ids[2]}"),
    "vread response": lambda c, w: c.get(f"/fhir/{QR}/{w.open_ids[0]}/_history/1"),
    "history of the response": lambda c, w: c.get(f"/fhir/{QR}/{w.open_ids[0]}/_history"),
    "search responses": lambda c, w: c.get(f"/fhir/{QR}", params={"subject": f"Patient/{w.open}"}),
    "search scores": lambda c, w: c.get(
        "/fhir/Observation", params={"subject": f"Patient/{w.open}"}
    ),
    "scores by code": lambda c, w: c.get(
        "/fhir/Observation", params={"code": f"{LOINC}|44261-6", "subject": f"Patient/{w.open}"}
    ),
    "revinclude": lambda c, w: c.get(
        "/fhir/Patient",
        params={"_id": w.open, "_revinclude": [f"{QR}:subject", "Observation:subject"]},
    ),
    "include from the Task": lambda c, w: c.get(
        "/fhir/Task", params={"patient": f"Patient/{w.open}", "_include": "Task:focus"}
    ),
    "everything": lambda c, w: c.get(f"/fhir/Patient/{w.open}/$everything"),
    "compartment": lambda c, w: c.get(f"/fhir/Patient/{w.open}/{QR}"),
    "batch": lambda c, w: c.post(
        "/fhir",
        json={
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"request": {"method": "GET", "url": f"{QR}?subject=Patient/{w.open}"}},
                {"request": {"method": "GET", "url": f"Observation/{w.open_ids[2]}"}},
            ],
        },
    ),
}


def _answers_of_open(r: httpx.Response, w: World) -> set[str]:
    answers = set(w.open_ids[:4])  # the two responses and their scores
    if r.status_code >= 400:
        return set()
    return {i for i in _resource_ids(r.json()) if i in answers}


@pytest.mark.parametrize("path", sorted(CHW_PATHS))
def test_a_community_health_worker_reads_no_answer_or_score(
    readers: dict[str, httpx.Client], world: World, path: str
) -> None:
    ask = CHW_PATHS[path]
    control = ask(readers["clinician"], world)
    assert control.status_code == 200, control.text
    assert _answers_of_open(control, world), f"{path}: the clinician sees nothing: moot"
    r = ask(readers["chw"], world)
    assert r.status_code in (200, 403, 404), (r.status_code, r.text)
    assert not _answers_of_open(r, world), f"{path} shows a community health worker answers"


def test_a_community_health_worker_sees_the_follow_up_and_can_screen(
    readers: dict[str, httpx.Client], world: World
) -> None:
    chw = readers["chw"]
    # the follow-up that is due: the safety Task (saying the item was positive, not its answer)
    tasks = chw.get("/fhir/Task", params={"patient": f"Patient/{world.open}"})
    assert tasks.status_code == 200, tasks.text
    found = [e["resource"] for e in tasks.json().get("entry", [])]
    assert [t["priority"] for t in found] == ["stat"]
    assert "answered" not in found[0]["description"]
    # nor does a count or a _has match give the scores away
    counted = chw.get(
        "/fhir/Observation",
        params={
            "subject": f"Patient/{world.open}",
            "code": f"{LOINC}|44261-6",
            "_summary": "count",
        },
    )
    assert counted.status_code == 200 and counted.json()["total"] == 0
    matched = chw.get(
        "/fhir/Patient",
        params={"_id": world.open, "_has:Observation:subject:code": f"{LOINC}|44261-6"},
    )
    assert matched.status_code == 200 and matched.json().get("total", 0) == 0
    # screening is still theirs: a new response is stored (and scored by the server)
    made = chw.post(f"/fhir/{QR}", json=response(world.open, "phq-9", PHQ9_ITEMS, [0] * 9))
    assert made.status_code == 201, made.text
