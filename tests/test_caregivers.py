"""Caregivers on both stores: a ZBI-12 answered by a caregiver (a RelatedPerson) is scored on
write by the mental-health hook, a total at or above the cut-off makes one support referral
(labelled PSY like the score), and the facility's registry lists the caregivers at high burden.

No ZBI wording is written here (the instrument is licensed): the responses carry linkIds and
scores only, and the one piece of item text is a fixture that says so."""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey
from typer.testing import CliRunner

from takamul.caregivers.burden import CAREGIVER_SYSTEM, SUPPORT_CODE, Caregivers, cutoff
from takamul.caregivers.registry import COLUMNS, registry
from takamul.cli import app
from takamul.mentalhealth import instruments as instruments_module
from takamul.mentalhealth.service import MentalHealth
from takamul.settings import Settings
from takamul.store.repository import Store
from tests.server import postgres_database, running_server

ZBI_URL = "https://takamul.health/fhir/Questionnaire/zbi-12"
SUPPORT = f"{CAREGIVER_SYSTEM}|{SUPPORT_CODE}"
ENV = {"TAKAMUL_MH_INTERVAL_SECONDS": "0"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def record(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(database URL, FHIR base) of a running server with two facilities."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('cg') / 'cg.sqlite'}"
        with running_server(url, ENV) as base:
            _setup(base)
            yield url, base
    else:
        with postgres_database() as url, running_server(url, ENV) as base:
            _setup(base)
            yield url, base


def _setup(base: str) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        for org in ("fac", "other"):
            body = {"resourceType": "Organization", "id": org, "name": org}
            assert client.put(f"/Organization/{org}", json=body).status_code in (200, 201)


def _put(client: httpx.Client, body: dict[str, Any]) -> None:
    r = client.put(f"/{body['resourceType']}/{body['id']}", json=body)
    assert r.status_code in (200, 201), r.text


def family(client: httpx.Client, org: str = "fac", name: str = "سارة") -> tuple[str, str]:
    """A new patient of ``org`` and their caregiver: (patient id, RelatedPerson id)."""
    pid, cid = f"p-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    _put(
        client,
        {
            "resourceType": "Patient",
            "id": pid,
            "name": [{"family": "Test", "given": [pid]}],
            "managingOrganization": {"reference": f"Organization/{org}"},
        },
    )
    _put(
        client,
        {
            "resourceType": "RelatedPerson",
            "id": cid,
            "patient": {"reference": f"Patient/{pid}"},
            "relationship": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                            "code": "DAU",
                        }
                    ]
                }
            ],
            "name": [{"text": name}],
        },
    )
    return pid, cid


def spread(total: int) -> list[int]:
    """Twelve item scores 0-4 summing to ``total``."""
    values = [min(4, max(0, total - 4 * n)) for n in range(12)]
    assert sum(values) == total
    return values


def zbi(
    patient: str,
    caregiver: str,
    total: int,
    authored: str = "2026-03-01T10:00:00Z",
    skip: int | None = None,
) -> dict[str, Any]:
    values = spread(total)
    return {
        "resourceType": "QuestionnaireResponse",
        "id": f"zbi-{uuid.uuid4().hex[:10]}",
        "questionnaire": ZBI_URL,
        "status": "completed",
        "subject": {"reference": f"Patient/{patient}"},
        "source": {"reference": f"RelatedPerson/{caregiver}"},
        "author": {"reference": f"RelatedPerson/{caregiver}"},
        "authored": authored,
        "item": [
            {
                "linkId": f"zbi12-{n + 1}",
                "text": f"[fixture text, not the ZBI] {n + 1}",
                **({} if n == skip else {"answer": [{"valueInteger": v}]}),
            }
            for n, v in enumerate(values)
        ],
    }


def referrals(client: httpx.Client, patient: str) -> list[dict[str, Any]]:
    r = client.get("/ServiceRequest", params={"subject": f"Patient/{patient}", "code": SUPPORT})
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry") or ()]


def psy(body: dict[str, Any]) -> bool:
    return any(s.get("code") == "PSY" for s in (body.get("meta") or {}).get("security") or ())


def test_default_cut_off_is_13() -> None:
    assert cutoff() == 13


@pytest.mark.parametrize(("total", "high"), [(0, False), (12, False), (13, True), (48, True)])
def test_boundaries_make_a_referral_at_13(record: tuple[str, str], total: int, high: bool) -> None:
    with httpx.Client(base_url=record[1], timeout=60) as client:
        pid, cid = family(client)
        response = zbi(pid, cid, total)
        _put(client, response)
        score = client.get(f"/Observation/mhs-{response['id']}")
        assert score.status_code == 200 and score.json()["valueInteger"] == total
        made = referrals(client, pid)
        assert len(made) == (1 if high else 0)
        if high:
            sr = made[0]
            assert (sr["status"], sr["intent"]) == ("active", "proposal")
            assert sr["requester"] == {"reference": "Organization/fac"}
            assert sr["category"][0]["coding"][0]["code"] == "410606002"
            assert {"reference": f"RelatedPerson/{cid}"} in sr["supportingInfo"]
            assert f"ZBI-12 total {total}" in sr["reasonCode"][0]["text"]


def test_missing_item_gives_no_score_and_no_referral(record: tuple[str, str]) -> None:
    """The ZBI-12 needs every item (no proration): 11 items at 4 are no score, so no referral."""
    with httpx.Client(base_url=record[1], timeout=60) as client:
        pid, cid = family(client)
        response = zbi(pid, cid, 48, skip=11)
        _put(client, response)
        assert client.get(f"/Observation/mhs-{response['id']}").status_code == 404
        assert referrals(client, pid) == []


def test_referral_made_once_while_open(record: tuple[str, str]) -> None:
    with httpx.Client(base_url=record[1], timeout=60) as client:
        pid, cid = family(client)
        first = zbi(pid, cid, 20)
        _put(client, first)
        _put(client, first)  # the same response again
        _put(client, zbi(pid, cid, 30, "2026-04-01T10:00:00Z"))  # a second response
        made = referrals(client, pid)
        assert len(made) == 1
        # once the team closes it, a new high burden proposes support again
        closed = {**made[0], "status": "completed"}
        _put(client, closed)
        _put(client, zbi(pid, cid, 25, "2026-05-01T10:00:00Z"))
        statuses = sorted(r["status"] for r in referrals(client, pid))
        assert statuses == ["active", "completed"]
        # another caregiver of the same patient gets a referral of their own
        other = f"c2-{uuid.uuid4().hex[:8]}"
        _put(
            client,
            {
                "resourceType": "RelatedPerson",
                "id": other,
                "patient": {"reference": f"Patient/{pid}"},
            },
        )
        _put(client, zbi(pid, other, 13))
        assert len(referrals(client, pid)) == 3


def test_burden_data_is_labelled_psy(record: tuple[str, str]) -> None:
    with httpx.Client(base_url=record[1], timeout=60) as client:
        pid, cid = family(client)
        response = zbi(pid, cid, 40)
        _put(client, response)
        stored = client.get(f"/QuestionnaireResponse/{response['id']}").json()
        score = client.get(f"/Observation/mhs-{response['id']}").json()
        (referral,) = referrals(client, pid)
        assert psy(stored) and psy(score) and psy(referral)
        # the label is searchable, as consent's SQL filter reads it
        labelled = client.get(
            "/ServiceRequest",
            params={
                "_security": "http://terminology.hl7.org/CodeSystem/v3-ActCode|PSY",
                "subject": f"Patient/{pid}",
            },
        ).json()
        assert [e["resource"]["id"] for e in labelled.get("entry") or ()] == [referral["id"]]


def test_registry_rows_and_cli_csv(record: tuple[str, str], tmp_path: Path) -> None:
    url, base = record
    with httpx.Client(base_url=base, timeout=60) as client:
        rising = family(client, name="فاطمة")
        _put(client, zbi(*rising, 20, "2026-06-01T09:00:00Z"))
        _put(client, zbi(*rising, 31, "2026-07-01T09:00:00Z"))
        improved = family(client)  # high, then below the cut-off: not in the registry
        _put(client, zbi(*improved, 22, "2026-06-02T09:00:00Z"))
        _put(client, zbi(*improved, 8, "2026-07-02T09:00:00Z"))
        elsewhere = family(client, org="other")
        _put(client, zbi(*elsewhere, 40, "2026-06-03T09:00:00Z"))
    store = Store(Settings(database_url=url, export_dir=tmp_path / "exports"))
    try:
        rows = {r.caregiver_id: r for r in registry(store, "fac", date(2026, 7, 15))}
        earlier = {r.caregiver_id: r for r in registry(store, "fac", date(2026, 6, 15))}
    finally:
        store.close()
    row = rows[rising[1]]
    assert (row.patient_id, row.caregiver_name) == (rising[0], "فاطمة")
    assert (row.latest_total, row.latest_date, row.previous_total, row.change) == (
        31,
        "2026-07-01",
        20,
        11,
    )
    assert row.referral_status == "active" and row.referral_id
    assert improved[1] not in rows and elsewhere[1] not in rows
    # on an earlier date: the first screen only, and the improved caregiver was then high
    assert (earlier[rising[1]].latest_total, earlier[rising[1]].previous_total) == (20, None)
    assert earlier[improved[1]].latest_total == 22

    out = tmp_path / "caregivers.csv"
    result = CliRunner().invoke(
        app,
        [
            "caregivers",
            "registry",
            "--db",
            url,
            "--facility",
            "fac",
            "--as-of",
            "2026-07-15",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    with out.open(encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert (
        tuple(table[0])
        == COLUMNS
        == (
            "caregiver_id",
            "caregiver_name",
            "patient_id",
            "latest_total",
            "latest_date",
            "previous_total",
            "change",
            "referral_id",
            "referral_status",
        )
    )
    line = next(t for t in table if t["caregiver_id"] == rising[1])
    assert (line["caregiver_name"], line["latest_total"], line["change"]) == ("فاطمة", "31", "11")
    assert {t["caregiver_id"] for t in table} == set(rows)

    bad = CliRunner().invoke(
        app, ["caregivers", "registry", "--db", url, "--facility", "fac", "--as-of", "July"]
    )
    assert bad.exit_code == 2


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cut.sqlite'}"
    else:
        with postgres_database() as url:
            yield url


def test_custom_cut_off(database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``TAKAMUL_MH_ZBI12_CUTOFF`` moves the referral with the score's band (here to 17); a
    response whose subject is the RelatedPerson itself finds the patient through it."""
    monkeypatch.setenv("TAKAMUL_MH_ZBI12_CUTOFF", "17")
    instruments_module._load.cache_clear()
    store = Store(Settings(database_url=database, export_dir=tmp_path / "exports"))
    try:
        assert cutoff() == 17
        MentalHealth(store).attach()
        Caregivers(store).attach()

        def put(body: dict[str, Any]) -> None:
            store.write(lambda s: s.update(body["resourceType"], body["id"], body))

        put({"resourceType": "Organization", "id": "fac", "name": "fac"})
        put(
            {
                "resourceType": "Patient",
                "id": "p1",
                "managingOrganization": {"reference": "Organization/fac"},
            }
        )
        put({"resourceType": "RelatedPerson", "id": "c1", "patient": {"reference": "Patient/p1"}})
        put(zbi("p1", "c1", 16))
        assert registry(store, "fac", date(2026, 3, 2)) == []
        below = referrals_in(store)
        assert below == []
        by_caregiver = zbi("p1", "c1", 17, "2026-03-02T10:00:00Z")
        by_caregiver["subject"] = {"reference": "RelatedPerson/c1"}
        put(by_caregiver)
        made = referrals_in(store)
        assert len(made) == 1 and made[0]["subject"] == {"reference": "Patient/p1"}
        (row,) = registry(store, "fac", date(2026, 3, 2))
        assert (row.latest_total, row.previous_total, row.change) == (17, 16, 1)
    finally:
        store.close()
        monkeypatch.delenv("TAKAMUL_MH_ZBI12_CUTOFF")
        instruments_module._load.cache_clear()
    assert cutoff() == 13


def referrals_in(store: Store) -> list[dict[str, Any]]:
    from takamul.caregivers.burden import referrals_of

    with store.reading() as session:
        return referrals_of(session, "p1", "c1")


# -- with access control on: the caregiver's own login, and consent over the burden data --------


CAREGIVER_SCOPES = "patient/*.rs patient/QuestionnaireResponse.cru"


def _client(security: Any, scopes: str, facility: str | None, roles: tuple[str, ...]) -> str:
    key = ECKey.generate_key("P-384")
    key.ensure_kid()
    client_id = f"c-{uuid.uuid4().hex[:10]}"
    jwks = {"keys": [{**key.as_dict(private=False), "alg": "ES384"}]}
    security.clients.add(client_id, "caregivers test", jwks, scopes, facility, roles)
    return client_id


DENY_PSY_BUT_CLINIC: dict[str, Any] = {
    "type": "deny",
    "securityLabel": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "PSY",
        }
    ],
    "provision": [
        {
            "type": "permit",
            "actor": [
                {
                    "role": {"text": "treating team"},
                    "reference": {"reference": "Organization/clinic"},
                }
            ],
        }
    ],
}


def _consent(patient: str, provision: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": f"consent-{uuid.uuid4().hex[:8]}",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "provision": provision,
    }


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def secured(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    # the Consent below is written through another store (another process): the server is to
    # apply it on the very next request (no re-check window; docs/security.md)
    env = {**ENV, "TAKAMUL_AUTH": "true", "TAKAMUL_RATE_LIMIT": "10000",
           "TAKAMUL_CONSENT_RECHECK_MS": "0"}  # fmt: skip
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('cgs') / 'cgs.sqlite'}"
        with running_server(url, env) as base:
            yield url, base
    else:
        with postgres_database() as url, running_server(url, env) as base:
            yield url, base


def test_caregiver_login_screens_itself_and_consent_hides_the_burden(
    secured: tuple[str, str], tmp_path: Path
) -> None:
    """The caregiver answers through the login that acts for the patient (with the patient's
    consent), and the referral is made under that login's request. The centre's clinician sees
    the score and the referral until the patient's Consent keeps PSY data to a clinic; then
    only the clinic's clinician does."""
    from takamul.security.service import Security

    url, base = secured
    security = Security.open(url)
    cid = _client(security, CAREGIVER_SCOPES, None, ("caregiver",))
    tokens = {
        org: security.tokens.mint(
            _client(security, "system/*.cruds", org, ("clinician",)), "system/*.cruds", base
        )
        for org in ("fac", "clinic")
    }
    pid, rid = f"p-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    store = Store(Settings(database_url=url, export_dir=tmp_path / "exports"))
    login = {"system": "https://takamul.health/fhir/sid/login", "value": cid}
    try:
        for body in (
            {"resourceType": "Organization", "id": "fac", "name": "fac"},
            {"resourceType": "Organization", "id": "clinic", "name": "clinic"},
            {
                "resourceType": "Patient",
                "id": pid,
                "managingOrganization": {"reference": "Organization/fac"},
            },
            {
                "resourceType": "RelatedPerson",
                "id": rid,
                "patient": {"reference": f"Patient/{pid}"},
            },
            {
                "resourceType": "CareTeam",
                "id": f"team-{pid}",
                "subject": {"reference": f"Patient/{pid}"},
                "participant": [{"member": {"reference": "Organization/clinic"}}],
            },
            _consent(
                pid,
                {
                    "type": "permit",
                    "actor": [{"role": {"text": "caregiver"}, "reference": {"identifier": login}}],
                },
            ),
        ):
            store.write(lambda s, b=body: s.update(b["resourceType"], b["id"], b))
    finally:
        store.close()

    caregiver_token = security.tokens.mint(cid, CAREGIVER_SCOPES, base, patient=pid)
    auth = {"Authorization": f"Bearer {caregiver_token}"}
    with httpx.Client(base_url=base, headers=auth, timeout=60) as caregiver:
        response = zbi(pid, rid, 24)
        del response["id"]
        written = caregiver.post("/QuestionnaireResponse", json=response)
        assert written.status_code == 201, written.text
        response_id = written.json()["id"]

    def sees(org: str) -> tuple[int, int, list[str]]:
        headers = {"Authorization": f"Bearer {tokens[org]}"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
            patient = http.get(f"/Patient/{pid}").status_code
            score = http.get(f"/Observation/mhs-{response_id}").status_code
            found = http.get(
                "/ServiceRequest", params={"subject": f"Patient/{pid}", "code": SUPPORT}
            )
            assert found.status_code == 200, found.text
            return patient, score, [e["resource"]["id"] for e in found.json().get("entry") or ()]

    before = sees("fac")  # without a restriction the centre sees it: consent is what hides it
    assert before[0] == 200 and before[1] == 200 and len(before[2]) == 1

    # the patient then keeps their mental-health data to the clinic: the burden data is PSY
    restriction = _consent(pid, DENY_PSY_BUT_CLINIC)
    store = Store(Settings(database_url=url, export_dir=tmp_path / "exports"))
    try:
        store.write(lambda s: s.update("Consent", restriction["id"], restriction))
    finally:
        store.close()

    centre, clinic = sees("fac"), sees("clinic")
    assert centre[0] == 200 and centre[1] == 404 and centre[2] == []
    assert clinic[1] == 200 and clinic[2] == before[2]
    # the guard judges the label, not who answered: the caregiver's login is no permitted actor
    with httpx.Client(base_url=base, headers=auth, timeout=60) as caregiver:
        assert caregiver.get(f"/QuestionnaireResponse/{response_id}").status_code == 404
        again = zbi(pid, rid, 30)
        del again["id"]
        assert caregiver.post("/QuestionnaireResponse", json=again).status_code == 403


def test_a_bulk_loaded_high_burden_gets_its_proposal_at_start(
    database: str, tmp_path: Path
) -> None:
    """Responses stored without hooks (a bulk load) are judged when the service starts: the
    support proposal is made once, and a second start makes no other."""
    store = Store(Settings(database_url=database, export_dir=tmp_path / "exports"))
    try:

        def put(body: dict[str, Any]) -> None:
            store.write(lambda s: s.update(body["resourceType"], body["id"], body))

        put({"resourceType": "Organization", "id": "fac", "name": "fac"})
        put({"resourceType": "Patient", "id": "p1",
             "managingOrganization": {"reference": "Organization/fac"}})  # fmt: skip
        put({"resourceType": "RelatedPerson", "id": "c1", "patient": {"reference": "Patient/p1"}})
        put(zbi("p1", "c1", 12))
        put(zbi("p1", "c1", 20, "2026-03-02T10:00:00Z"))
        assert referrals_in(store) == []  # no hook saw them
        assert Caregivers(store).attach() == 2
        made = referrals_in(store)
        assert len(made) == 1 and made[0]["subject"] == {"reference": "Patient/p1"}
        assert Caregivers(store).attach() == 0  # the next start reads on from where it was
        assert len(referrals_in(store)) == 1
    finally:
        store.close()
