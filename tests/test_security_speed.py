"""Security at full speed (issue 17), still security: what the fast paths keep in memory never
outlives what it stands for.

* Consent: each process keeps the record's restrictions and looks for other processes' Consents
  at most every ``TAKAMUL_CONSENT_RECHECK_MS`` (zero: every request). A Consent written through
  one store (a process of its own: its own engines and register) applies to the next read of
  another within that window, on SQLite and PostgreSQL (and over HTTP between two ``takamul
  serve`` processes, the reader with no window); one written by the same process applies at
  once; a search's SQL names only the restricted patients its matches can be about.
* Tokens: a verified token is kept until it expires, never past it; disabling its client
  refuses it within ``CLIENT_RECHECK_SECONDS``, in this process and in another.
* Audit: a batch of events is one transaction, and the chain still verifies.
* Rate limits: a client given its own rate (``TAKAMUL_RATE_LIMITS``) is not held to the default.
* The audit writer's round (``TAKAMUL_AUDIT_FLUSH_SECONDS``) is the server's setting.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select

from takamul.fhir.outcome import FhirError
from takamul.security.audit import AuditLog, AuditRecord, audit_log
from takamul.security.config import ClientRate, SecurityConfig, parse_rate_limits
from takamul.security.consent import Withholding, consent_register, recheck_seconds
from takamul.security.context import AccessContext
from takamul.security.errors import AuthError
from takamul.security.guard import AccessGuard
from takamul.security.middleware import TokenBucket
from takamul.security.scopes import ScopeSet, use_indexer
from takamul.security.tokens import CLIENT_RECHECK_SECONDS
from takamul.settings import Settings
from takamul.store.guard import guarded
from takamul.store.repository import Store
from tests.server import postgres_database
from tests.test_security_auth import BASE, FHIR, Clock, bearer, make_app, make_security, register

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
FACILITY = "phc-olaya"
CLINIC = "mh-clinic"


# -- the world: one patient of the centre with a depression diagnosis (labelled PSY) ----------


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'speed.sqlite'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def stores(database: str) -> Iterator[tuple[Store, Store]]:
    """Two stores on one database: two server processes, each with its own register."""
    first, second = Store(Settings(database_url=database)), Store(Settings(database_url=database))
    use_indexer(first.indexer)
    for store in (first, second):
        consent_register(store)  # as every server does at start-up (api.app)
    first.write(lambda s: s.update("Patient", "p1", patient("p1")))
    first.write(lambda s: s.update("Condition", "c1", depression("c1", "p1")))
    yield first, second
    first.close()
    second.close()


def patient(pid: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "managingOrganization": {"reference": f"Organization/{FACILITY}"},
    }


def depression(cid: str, pid: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "F32.1"}]},
        "subject": {"reference": f"Patient/{pid}"},
    }


def restriction(pid: str, permitted: str = CLINIC) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": f"consent-{pid}",
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
                            "reference": {"reference": f"Organization/{permitted}"},
                        }
                    ],
                }
            ],
        },
    }


CENTRE = AccessContext(
    client_id="olaya-ehr",
    user=None,
    roles=frozenset({"clinician"}),
    facility=FACILITY,
    scopes=ScopeSet.parse("system/*.rs"),
)


def sees(store: Store, access: AccessContext = CENTRE) -> tuple[bool, list[str]]:
    """(the Condition is read, the Conditions a search of the patient finds) under ``access``,
    as one request of the process that holds ``store``."""
    with guarded(AccessGuard(access, store)), store.reading() as session:
        try:
            session.read("Condition", "c1")
            read = True
        except FhirError as err:
            assert err.status == 404
            read = False
        query = session.parse_search("Condition", [("patient", "p1")])
        page = session.search(query)
        found = [r.id for r in page.matches]
        assert page.total in (None, len(found))  # the total counts only what is seen
    return read, found


# -- consent across processes ------------------------------------------------------------------


def test_consent_of_another_process_applies_within_the_window(
    stores: tuple[Store, Store],
) -> None:
    writer, reader = stores
    clock = [100.0]
    register = consent_register(reader)
    register.clock = lambda: clock[0]
    register.recheck = 0.25
    assert sees(reader) == (True, ["c1"])  # nothing restricted yet: the key is kept
    writer.write(lambda s: s.update("Consent", "consent-p1", restriction("p1")))
    clock[0] += 0.1  # within the window the kept state may still answer...
    sees(reader)
    clock[0] += 0.2  # ...but not once the window has passed: the next read applies it
    assert sees(reader) == (False, [])
    # and lifting the restriction (a delete) is seen the same way
    writer.write(lambda s: s.delete("Consent", "consent-p1"))
    clock[0] += 0.3
    assert sees(reader) == (True, ["c1"])


def test_consent_with_no_window_applies_to_the_next_read(stores: tuple[Store, Store]) -> None:
    writer, reader = stores
    register = consent_register(reader)
    register.recheck = 0.0  # TAKAMUL_CONSENT_RECHECK_MS=0: the key is read by every request
    assert sees(reader) == (True, ["c1"])
    writer.write(lambda s: s.update("Consent", "consent-p1", restriction("p1")))
    assert sees(reader) == (False, [])
    # the permitted clinic still sees it (the restriction is not a blanket one)
    clinic = AccessContext(
        client_id="clinic-ehr",
        user=None,
        roles=frozenset({"clinician"}),
        facility=CLINIC,
        scopes=ScopeSet.parse("system/*.rs"),
    )
    writer.write(lambda s: s.update("Encounter", "e1", encounter("e1", "p1", CLINIC)))
    assert sees(reader, clinic) == (True, ["c1"])


def test_consent_written_by_the_same_process_applies_at_once(stores: tuple[Store, Store]) -> None:
    store, _ = stores
    register = consent_register(store)
    register.recheck = 3600.0  # however long the window, this process's own writes count
    assert sees(store) == (True, ["c1"])
    store.write(lambda s: s.update("Consent", "consent-p1", restriction("p1")))
    assert sees(store) == (False, [])


def test_a_bulk_written_consent_moves_the_key_too(stores: tuple[Store, Store]) -> None:
    """A writer that calls no write hooks (``takamul load``) raises no version; the newest
    lastUpdated of the Consents, also in the key, still shows the change."""
    writer, reader = stores
    consent_register(reader).recheck = 0.0
    assert sees(reader) == (True, ["c1"])
    writer.write_hooks.clear()  # as the bulk loader writes: no hooks
    writer.write(lambda s: s.update("Consent", "consent-p1", restriction("p1")))
    assert sees(reader) == (False, [])


def test_a_search_names_only_the_restricted_patients_it_can_reach(
    stores: tuple[Store, Store],
) -> None:
    """Restrictions of patients the search is not about are not bound into its SQL; one the
    matches are also about (another patient they refer to) still is."""
    store, _ = stores
    consent_register(store).recheck = 0.0
    for pid in ("p2", "p3"):
        store.write(lambda s, pid=pid: s.update("Patient", pid, patient(pid)))
        store.write(lambda s, pid=pid: s.update("Consent", f"consent-{pid}", restriction(pid)))
    guard = AccessGuard(CENTRE, store)
    with guarded(guard), store.reading() as session:
        session.parse_search("Condition", [("patient", "p1")])
        assert guard._named == {}  # consumed by the parse
        guard.restrictions(session, "Condition", [("patient", "p1")])
        alone = guard.filters(session, "Condition")
    # p1 restricts nothing and its Conditions are about no one else: no list at all
    assert [f for f in alone if not f.everyone] == []
    # a Condition of p1 that also names p3 (as its asserter) is about p3 as well
    shared = depression("c3", "p1") | {"asserter": {"reference": "Patient/p3"}}
    store.write(lambda s: s.update("Condition", "c3", shared))
    guard = AccessGuard(CENTRE, store)
    with guarded(guard), store.reading() as session:
        guard.restrictions(session, "Condition", [("patient", "p1")])
        narrowed = guard.filters(session, "Condition")
        everyone = guard.filters(session, "Condition")  # no search named patients this time
        page = session.search(session.parse_search("Condition", [("patient", "p1")]))
    assert [f.patients for f in narrowed if "PSY" in f.labels] == [("p3",)]
    assert [f.patients for f in everyone if "PSY" in f.labels] == [("p2", "p3")]
    assert [r.id for r in page.matches] == ["c1"]


def test_a_search_asks_the_facilitys_reach_of_what_is_committed(
    stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reading search asks on its own connection; a search inside a write transaction (a
    conditional write, a Bundle's entry) on a reading one, never on the transaction's, which
    sees what it wrote before commit."""
    store, _ = stores
    asked: list[Any] = []
    real = AccessGuard._query_reach

    def spy(self: AccessGuard, ids: set[str], conn: Any) -> set[str]:
        asked.append(conn)
        return real(self, ids, conn)

    monkeypatch.setattr(AccessGuard, "_query_reach", spy)
    with store.reading() as session:
        AccessGuard(CENTRE, store).restrictions(session, "Condition", [("patient", "p1")])
        assert asked == [session.conn]

    def in_a_write(session: Any) -> None:
        AccessGuard(CENTRE, store).restrictions(session, "Condition", [("patient", "p1")])
        assert len(asked) == 2 and asked[1] is not session.conn

    store.write(in_a_write)


def test_labels_withheld_by_the_same_patients_are_one_clause() -> None:
    """A search's consent filter has one clause per set of withholding patients, not one per
    label, and keeps to the patients its matches can be about."""
    held = Withholding.of({"PSY": {"p3", "p2"}, "HIV": {"p2", "p3"}, "SEX": {"p3"}, "ETH": set()})
    assert held.groups == ((("HIV", "PSY"), ("p2", "p3")), (("SEX",), ("p3",)))
    assert held.about(frozenset({"p3", "p9"})) == ((("HIV", "PSY", "SEX"), ("p3",)),)
    assert held.about(frozenset({"p2"})) == ((("HIV", "PSY"), ("p2",)),)
    assert held.about(frozenset({"p9"})) == ()


def encounter(eid: str, pid: str, org: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"system": ACT, "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
        "serviceProvider": {"reference": f"Organization/{org}"},
    }


def test_recheck_setting() -> None:
    assert recheck_seconds(None) == 0.25
    assert recheck_seconds("0") == 0.0
    assert recheck_seconds("1500") == 1.5
    with pytest.raises(ValueError, match="TAKAMUL_CONSENT_RECHECK_MS"):
        recheck_seconds("soon")
    with pytest.raises(ValueError, match="TAKAMUL_CONSENT_RECHECK_MS"):
        recheck_seconds("-5")


# -- tokens --------------------------------------------------------------------------------------


def test_an_expired_token_is_refused_even_when_kept(tmp_path: Path) -> None:
    clock = Clock()
    security = make_security(f"sqlite:///{tmp_path / 'sec.sqlite'}", clock)
    security.check_startup(False)
    register(security)
    token = security.tokens.mint("olaya-ehr", "system/*.rs", FHIR, lifetime=60)
    assert security.tokens.verify(token, FHIR).client_id == "olaya-ehr"
    assert token in security.tokens._cache  # kept
    clock.advance(59)
    assert security.tokens.verify(token, FHIR).client_id == "olaya-ehr"
    clock.advance(1)
    with pytest.raises(AuthError, match="expired"):
        security.tokens.verify(token, FHIR)
    security.engine.dispose()


def test_a_disabled_clients_kept_token_is_refused(tmp_path: Path) -> None:
    clock = Clock()
    url = f"sqlite:///{tmp_path / 'sec.sqlite'}"
    security = make_security(url, clock)
    security.check_startup(False)
    register(security)
    token = security.tokens.mint("olaya-ehr", "system/*.rs", FHIR)
    with TestClient(make_app(security), base_url=BASE) as http:
        assert http.get("/fhir/Observation/lab", headers=bearer(token)).status_code == 200
        # the operator disables the client from another process (the CLI)
        operator = make_security(url, clock)
        assert operator.clients.set_active("olaya-ehr", False)
        operator.engine.dispose()
        clock.advance(CLIENT_RECHECK_SECONDS)
        refused = http.get("/fhir/Observation/lab", headers=bearer(token))
        assert refused.status_code == 401
        assert "disabled" in refused.json()["issue"][0]["diagnostics"]
        # enabling it again lets the same token through (it has not expired)
        assert security.clients.set_active("olaya-ehr", True)
        clock.advance(CLIENT_RECHECK_SECONDS)
        assert http.get("/fhir/Observation/lab", headers=bearer(token)).status_code == 200
    security.engine.dispose()


def test_kept_tokens_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from takamul.security import tokens as tokens_module

    monkeypatch.setattr(tokens_module, "_CACHE_SIZE", 3)
    clock = Clock()
    security = make_security(f"sqlite:///{tmp_path / 'sec.sqlite'}", clock)
    security.check_startup(False)
    register(security)
    minted = [security.tokens.mint("olaya-ehr", "system/*.rs", FHIR) for _ in range(5)]
    for token in minted:
        security.tokens.verify(token, FHIR)
    assert len(security.tokens._cache) <= 3
    assert all(security.tokens.verify(t, FHIR) for t in minted)  # evicted ones verify again
    security.engine.dispose()


# -- the audit log -------------------------------------------------------------------------------


def test_batched_audit_is_one_transaction_per_batch_and_verifies(database: str) -> None:
    # the background writer stays asleep (no interval, no full batch): the test drains
    log = AuditLog.from_url(database, buffered=True, flush_interval=3600, max_batch=10_000)
    commits = []
    event.listen(log.writer, "commit", lambda conn: commits.append(1))

    def requests(worker: int) -> None:
        for n in range(250):
            log.record(
                AuditRecord(
                    "read",
                    client_id=f"ehr-{worker % 2}",
                    roles=("clinician",),
                    facility="Organization/phc-1",
                    address="10.0.0.1",
                    resource_type="Patient",
                    resource_id=f"p{n}",
                    patient_ids=(f"p{n}",),
                )
            )

    threads = [threading.Thread(target=requests, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert log.pending == 1000
    log.max_batch = 250
    log.flush()
    assert len(commits) == 4  # 1,000 events, batches of 250: a transaction each
    result = log.verify()
    assert result.ok, result.reason
    assert result.checked == 1000
    with log.reader.connect() as conn:
        stored = [row.event for row in conn.execute(select(audit_log.c.event).limit(20))]
    # what is stored is the record, its place in the chain first; the AuditEvent is built
    # from it when it is read
    assert [orjson.loads(b)[0] for b in stored[:3]] == [1, 2, 3]
    assert all(len(b) < 400 for b in stored)
    events = [log.read(str(n)) for n in (1, 2, 3)]
    assert [e["id"] for e in events if e] == ["1", "2", "3"]
    assert events[0] and events[0]["agent"][0]["network"]["address"] == "10.0.0.1"
    log.close()


def test_a_flush_writes_what_was_queued_and_leaves_new_arrivals_for_the_next(
    database: str,
) -> None:
    """Requests keep coming while the writer appends: a flush that also took them drained in
    batches of the few that arrived meanwhile, one transaction each (on PostgreSQL ~0.36 ms of
    CPU per event); it writes what was queued when it began, and the rest waits a round."""
    # the background writer stays asleep (no interval, no full batch): the test drains
    log = AuditLog.from_url(database, buffered=True, flush_interval=3600, max_batch=10_000)
    batches: list[int] = []
    append = log._append

    def appending(records: Any) -> None:
        batches.append(len(records))
        for n in range(3):  # arrivals during the append
            log.record(
                AuditRecord("read", client_id="ehr", resource_type="Patient", resource_id=f"n{n}")
            )
        append(records)

    log._append = appending  # type: ignore[method-assign]
    for n in range(250):
        log.record(
            AuditRecord("read", client_id="ehr", resource_type="Patient", resource_id=f"p{n}")
        )
    log.flush()
    assert batches == [250]  # what was queued
    assert log.pending == 3  # the arrivals, for the next flush
    log.flush()
    assert batches == [250, 3] and log.pending == 3
    log._append = append  # type: ignore[method-assign]
    log.close()
    assert log.verify().checked == 256


# -- rate limits ---------------------------------------------------------------------------------


def test_rate_limits_setting() -> None:
    limits = parse_rate_limits(" bulk-ehr=1000 , lab=50/80,,free=0")
    assert limits == {
        "bulk-ehr": ClientRate(1000.0, 2000),
        "lab": ClientRate(50.0, 80),
        "free": ClientRate(0.0, 1),
    }
    for wrong in ("bulk-ehr", "=5", "x=fast", "x=-1", "x=5/0"):
        with pytest.raises(ValueError, match="TAKAMUL_RATE_LIMITS"):
            parse_rate_limits(wrong)


def test_the_audit_writers_round_is_a_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert SecurityConfig.from_env().audit_flush_seconds == 0.2
    for wrong in ("soon", "0", "-1", "61"):
        monkeypatch.setenv("TAKAMUL_AUDIT_FLUSH_SECONDS", wrong)
        with pytest.raises(ValueError, match="TAKAMUL_AUDIT_FLUSH_SECONDS"):
            SecurityConfig.from_env()
    monkeypatch.setenv("TAKAMUL_AUDIT_FLUSH_SECONDS", "0.5")
    from takamul.api.app import create_app

    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'a.sqlite'}", auth=True))
    audit = app.state.audit
    try:
        assert audit.buffered and audit.flush_interval == 0.5
    finally:
        audit.close()


def test_a_client_with_its_own_rate_is_not_held_to_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAKAMUL_RATE_LIMITS", "bulk-ehr=0,lab-feed=5/3")
    config = SecurityConfig.from_env()
    assert config.rate_limits["lab-feed"] == ClientRate(5.0, 3)
    clock = Clock()
    security = make_security(
        f"sqlite:///{tmp_path / 'rl.sqlite'}",
        clock,
        rate_limit=1.0,
        rate_burst=2,
        rate_limits=config.rate_limits,
    )
    security.check_startup(False)
    for client in ("olaya-ehr", "bulk-ehr", "lab-feed"):
        register(security, client_id=client)
    token = {c: security.tokens.mint(c, "system/*.rs", FHIR) for c in ("olaya-ehr", "bulk-ehr")}
    token["lab-feed"] = security.tokens.mint("lab-feed", "system/*.rs", FHIR)

    def status(client: str) -> int:
        return http.get("/fhir/Observation/lab", headers=bearer(token[client])).status_code

    with TestClient(make_app(security), base_url=BASE) as http:
        assert [status("olaya-ehr") for _ in range(3)] == [200, 200, 429]  # the default
        assert {status("bulk-ehr") for _ in range(50)} == {200}  # no limit of its own
        assert [status("lab-feed") for _ in range(4)] == [200, 200, 200, 429]  # burst 3
        clock.advance(0.2)  # 5 a second: one more
        assert status("lab-feed") == 200
    security.engine.dispose()


def test_token_bucket_own_rates() -> None:
    clock = Clock()
    bucket = TokenBucket(0, 1, clock, {"bulk": ClientRate(2.0, 2)})
    assert bucket.enabled  # the default is off, one client still has a limit
    assert bucket.take("client:other") == 0.0
    assert [bucket.take("client:bulk") for _ in range(2)] == [0.0, 0.0]
    assert bucket.take("client:bulk") == pytest.approx(0.5)
    assert not TokenBucket(0, 1, clock).enabled


# -- over HTTP, two server processes -------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def two_servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(database, writer's FHIR base, reader's FHIR base): two ``takamul serve`` processes with
    access control on, the reader looking for other processes' Consents on every request."""
    from contextlib import ExitStack

    from tests.server import running_server

    with ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'two.sqlite'}"
        else:
            url = stack.enter_context(postgres_database())
        env = {"TAKAMUL_AUTH": "true", "TAKAMUL_RATE_LIMIT": "0"}
        writer = stack.enter_context(running_server(url, env))
        reader = stack.enter_context(
            running_server(url, {**env, "TAKAMUL_CONSENT_RECHECK_MS": "0"})
        )
        yield url, writer, reader


def test_consent_written_in_one_server_applies_to_the_next_read_in_another(
    two_servers: tuple[str, str, str],
) -> None:
    import httpx
    from joserfc.jwk import ECKey

    from takamul.security.service import Security

    url, writer, reader = two_servers
    security = Security.open(url)
    jwks = {"keys": [ECKey.generate_key("P-384").as_dict(private=False)]}
    security.clients.add("olaya-ehr", "Olaya EHR", jwks, "system/*.cruds", FACILITY, ["clinician"])
    write = {
        "Authorization": "Bearer " + security.tokens.mint("olaya-ehr", "system/*.cruds", writer)
    }
    read = {"Authorization": "Bearer " + security.tokens.mint("olaya-ehr", "system/*.rs", reader)}
    security.engine.dispose()
    with httpx.Client(timeout=30) as http:
        for body in (patient("p1"), depression("c1", "p1")):
            answer = http.put(
                f"{writer}/{body['resourceType']}/{body['id']}", json=body, headers=write
            )
            assert answer.status_code in (200, 201), answer.text
        assert http.get(f"{reader}/Condition/c1", headers=read).status_code == 200
        answer = http.put(f"{writer}/Consent/consent-p1", json=restriction("p1"), headers=write)
        assert answer.status_code in (200, 201), answer.text
        # the very next read of the other server applies it: on the read and in a search
        assert http.get(f"{reader}/Condition/c1", headers=read).status_code == 404
        found = http.get(f"{reader}/Condition", params={"patient": "p1"}, headers=read).json()
        assert found.get("total", 0) == 0 and not found.get("entry")


# -- a read decided without parsing the resource ------------------------------------------

REQUESTERS = {
    "national system": AccessContext(
        client_id="moh",
        user=None,
        roles=frozenset(),
        facility=None,
        scopes=ScopeSet.parse("system/*.rs"),
    ),
    "facility": CENTRE,
    "granular": AccessContext(
        client_id="lab",
        user=None,
        roles=frozenset(),
        facility=None,
        scopes=ScopeSet.parse("system/Observation.rs?category=laboratory system/Patient.rs"),
    ),
    "patient context": AccessContext(
        client_id="app",
        user=None,
        roles=frozenset(),
        facility=None,
        scopes=ScopeSet.parse("patient/*.rs"),
        patient="p1",
    ),
    "community health worker": AccessContext(
        client_id=None,
        user="chw-1",
        roles=frozenset({"community-health-worker"}),
        facility=None,
        scopes=ScopeSet.parse("user/*.rs"),
    ),
}


def _observation(oid: str, pid: str, category: str, code: str) -> dict[str, Any]:
    cat = "http://terminology.hl7.org/CodeSystem/observation-category"
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [{"coding": [{"system": cat, "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
    }


@pytest.mark.parametrize("who", sorted(REQUESTERS))
def test_a_read_decided_without_the_content_agrees_with_the_full_check(
    stores: tuple[Store, Store], who: str
) -> None:
    """``visible_stored`` skips parsing the resource only where no rule needs it; whatever it
    decides is what ``visible`` decides on the parsed resource, for requesters whose rules need
    the content (granular scopes, patient context, facility, a role that withholds a label)
    and resources with and without labels, of one patient restricted by Consent and others."""
    store, _ = stores
    consent_register(store).recheck = 0.0
    store.write(
        lambda s: s.update(
            "Patient",
            "p2",
            patient("p2") | {"managingOrganization": {"reference": "Organization/elsewhere"}},
        )
    )
    store.write(lambda s: s.update("Consent", "consent-p1", restriction("p1")))
    store.write(
        lambda s: s.update("Observation", "o1", _observation("o1", "p1", "laboratory", "4548-4"))
    )
    store.write(
        lambda s: s.update("Observation", "o2", _observation("o2", "p2", "vital-signs", "8867-4"))
    )
    # a PHQ-9 total: labelled PSY on write
    store.write(
        lambda s: s.update("Observation", "o3", _observation("o3", "p1", "survey", "44261-6"))
    )
    targets = [("Patient", "p1"), ("Patient", "p2"), ("Condition", "c1")]
    targets += [("Observation", o) for o in ("o1", "o2", "o3")]
    access = REQUESTERS[who]
    decided = []
    for rtype, rid in targets:
        with store.reading() as session:
            content = session.read(rtype, rid).content
        assert content is not None
        full = AccessGuard(access, store).visible(rtype, orjson.loads(content), "r")
        assert AccessGuard(access, store).visible_stored(rtype, content, "r") == full, (rtype, rid)
        # and the read itself, which takes the shortcut when it can
        with guarded(AccessGuard(access, store)), store.reading() as session:
            try:
                session.read(rtype, rid)
                seen = True
            except FhirError as err:
                assert err.status in (403, 404)
                seen = False
        assert seen == (full and access.allows(rtype, "r")), (rtype, rid)
        decided.append(full)
    # the world is one where some reads are refused and some allowed
    if who in ("facility", "granular", "patient context"):
        assert False in decided and True in decided
