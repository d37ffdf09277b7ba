"""The audit log: valid R4 AuditEvents, a hash chain that reveals every kind of tampering, a
linear chain under concurrent writers (SQLite and PostgreSQL), buffering, search, the CLI."""

from __future__ import annotations

import base64
import functools
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from takamul.fhir.outcome import FhirError
from takamul.fhir.validation import validate_resource
from takamul.security.audit import (
    _COLUMN_ORDER,
    GENESIS_HASH,
    AuditLog,
    AuditRecord,
    _decode_record,
    _event_of,
    _index_columns,
    _patients_of,
    _Prepared,
    audit_chain_head,
    audit_log,
    audit_patient,
    canonical_json,
    chain_hash,
    outcome_code,
    parse_search_params,
    to_audit_event,
)
from takamul.security.audit_cli import audit_app
from takamul.settings import Settings
from takamul.store import Store
from takamul.store.engine import make_engines
from tests.server import postgres_database

# PostgreSQL is part of the test environment (.ci/run starts it): no skip when it is down
PG = pytest.param("postgresql")


@pytest.fixture(params=["sqlite", PG])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.sqlite'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'audit.sqlite'}"


def _read(patient: str, user: str = "dr-amal", **kw: Any) -> AuditRecord:
    return AuditRecord(
        "read",
        client_id="ehr-riyadh",
        user=user,
        roles=("clinician",),
        facility="Organization/org-phc-00008",
        address="10.1.2.3",
        resource_type="Patient",
        resource_id=patient,
        patient_ids=(patient,),
        **kw,
    )


def _fill(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.record(_read(f"p{i}"))


# -- the AuditEvent ---------------------------------------------------------------------------


RECORDS = [
    _read("p1"),
    AuditRecord(
        "search",
        client_id="lab-system",
        resource_type="Observation",
        query="patient=p1&code=http://loinc.org|4548-4",
        patient_ids=("p1", "p2"),
        address="lab.example.org",
    ),
    AuditRecord(
        "create",
        status=422,
        outcome_text="Observation.status: missing required element",
        client_id="lab-system",
        resource_type="Observation",
        patient_ids=("p2",),
    ),
    AuditRecord(
        "everything",
        client_id="ed-app",
        user="dr-omid",
        roles=("clinician", "emergency"),
        resource_type="Patient",
        resource_id="p3",
        patient_ids=("p3",),
        break_glass_reason="unconscious patient in the emergency department",
    ),
    AuditRecord("update", client_id="ehr", resource_type="Condition", resource_id="c1"),
    AuditRecord("patch", client_id="ehr", resource_type="Condition", resource_id="c1"),
    AuditRecord("delete", status=500, client_id="ehr", resource_type="Condition", resource_id="c1"),
    AuditRecord("history", user="analyst", resource_type="Patient", resource_id="p1"),
    AuditRecord("export", client_id="ministry-bulk", query="_type=Patient,Observation"),
    AuditRecord("match", client_id="registry", resource_type="Patient"),
    AuditRecord("transaction", client_id="ehr", patient_ids=("p4", "p5")),
    AuditRecord("login", user="nurse-sara", address="192.168.1.20"),
    AuditRecord("token", status=401, client_id="unknown-app", outcome_text="bad assertion"),
    AuditRecord("something-new", client_id="ehr", outcome="12"),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.interaction)
def test_every_interaction_gives_a_valid_r4_audit_event(record: AuditRecord) -> None:
    event = to_audit_event(record, seq=7)
    errors = [i for i in validate_resource(event, "AuditEvent") if i.severity == "error"]
    assert errors == []
    assert event["id"] == "7"
    assert event["action"] in set("CRUDE")
    assert event["outcome"] == (record.outcome or outcome_code(record.status))
    assert event["recorded"].endswith("Z")
    assert event["source"]["observer"]["display"] == "takamul"
    assert sum(1 for a in event["agent"] if a["requestor"]) == 1


def test_audit_event_content() -> None:
    read = to_audit_event(RECORDS[0])
    assert read["type"]["code"] == "rest"
    assert read["subtype"][0] == {
        "system": "http://hl7.org/fhir/restful-interaction",
        "code": "read",
        "display": "read",
    }
    user, client, facility = read["agent"]
    assert user["who"]["identifier"]["value"] == "dr-amal" and user["requestor"] is True
    assert user["network"] == {"address": "10.1.2.3", "type": "2"}
    assert user["purposeOfUse"][0]["coding"][0]["code"] == "TREAT"
    assert user["role"][0]["text"] == "clinician"
    assert client["who"]["identifier"]["value"] == "ehr-riyadh" and client["requestor"] is False
    assert facility["who"] == {"reference": "Organization/org-phc-00008"}
    assert facility["requestor"] is False
    # The Patient read is one entity, in the role of the patient.
    assert read["entity"] == [
        {
            "what": {"reference": "Patient/p1"},
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "1",
                "display": "Person",
            },
            "role": {
                "system": "http://terminology.hl7.org/CodeSystem/object-role",
                "code": "1",
                "display": "Patient",
            },
        }
    ]

    search = to_audit_event(RECORDS[1])
    query_entity, *patients = search["entity"]
    assert base64.b64decode(query_entity["query"]).decode() == RECORDS[1].query
    assert query_entity["role"]["code"] == "24"
    assert [p["what"]["reference"] for p in patients] == ["Patient/p1", "Patient/p2"]
    assert search["agent"][0]["network"]["type"] == "1"  # a host name

    failed = to_audit_event(RECORDS[2])
    assert (failed["action"], failed["outcome"]) == ("C", "4")
    assert failed["outcomeDesc"] == "Observation.status: missing required element"

    glass = to_audit_event(RECORDS[3])
    assert glass["type"]["code"] == "110110"  # DICOM Patient Record
    assert glass["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"
    assert glass["agent"][0]["purposeOfUse"][0]["text"].startswith("unconscious")

    assert to_audit_event(RECORDS[6])["outcome"] == "8"
    assert to_audit_event(RECORDS[11])["type"]["code"] == "110114"  # User Authentication


@dataclass(frozen=True)
class _Access:
    """The attributes of takamul.security.context.AccessContext that the audit reads."""

    client_id: str | None
    user: str | None
    roles: frozenset[str]
    facility: str | None
    break_glass: str | None = None
    token_id: str | None = None
    display_name: str | None = None


def test_a_record_from_an_access_context() -> None:
    access = _Access(
        None,
        "dr-omid",
        frozenset({"clinician"}),
        "org-1",
        break_glass="unconscious, no relative reachable",
        token_id="jti-123",
        display_name="Dr Omid Rahimi",
    )
    record = AuditRecord.for_access(
        access, "read", resource_type="Patient", resource_id="p9", patient_ids=("p9",)
    )
    assert record.break_glass and record.user_display == "Dr Omid Rahimi"
    event = to_audit_event(record)
    assert [i for i in validate_resource(event) if i.severity == "error"] == []
    user, facility = event["agent"]
    assert user["policy"] == ["jti-123"] and user["who"]["display"] == "Dr Omid Rahimi"
    assert facility["who"] == {"reference": "Organization/org-1"}
    assert event["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"
    backend = to_audit_event(
        AuditRecord.for_access(_Access("lab", None, frozenset(), None), "search")
    )
    assert [a["who"]["identifier"]["value"] for a in backend["agent"]] == ["lab"]
    assert backend["agent"][0]["requestor"] is True
    at_location = to_audit_event(AuditRecord("read", user="u", facility="Location/ward-3"))
    assert at_location["agent"][0]["location"] == {"reference": "Location/ward-3"}


def test_action_and_outcome_overrides_are_checked() -> None:
    with pytest.raises(ValueError):
        to_audit_event(AuditRecord("read", action="X"))
    with pytest.raises(ValueError):
        to_audit_event(AuditRecord("read", outcome="3"))


# -- the stored record ----------------------------------------------------------------------

EDGE_RECORDS = [
    *RECORDS,
    # the patient read is not first among the patients given: it still comes first
    AuditRecord(
        "read", client_id="ehr", resource_type="Patient", resource_id="p9", patient_ids=("p8", "p9")
    ),
    # a Patient read whose id is not among the patients (not the patient role, then)
    AuditRecord("read", client_id="ehr", resource_type="Patient", resource_id="p9"),
    AuditRecord("search-system", user="", client_id="", query="_lastUpdated=gt2026"),
    AuditRecord("read", client_id="ehr", facility="Location/ward-3", patient_ids=("", "p1", "p1")),
    AuditRecord("read", client_id="ehr", facility="مستشفى الملك فهد", user_display="د. أمل"),
    AuditRecord("read", client_id="ehr", when=1_796_000_000.9996),  # rounds up a second
]


@pytest.mark.parametrize("record", EDGE_RECORDS, ids=lambda r: r.interaction)
def test_the_stored_record_gives_the_same_event_and_columns(record: AuditRecord) -> None:
    """A row keeps the record; the AuditEvent is built when it is read. Its query columns,
    taken from the record, are those that the AuditEvent shows."""
    prepared = _Prepared.of(record, "takamul-test")
    stored = prepared.stored(41)
    seq, observer, back = _decode_record(orjson.loads(stored))
    assert (seq, observer) == (41, "takamul-test")
    assert back == replace(record, when=round(record.when * 1000) / 1000)
    event = _event_of(stored, 41)
    assert event == to_audit_event(record, 41, "takamul-test")
    columns = _index_columns(event)
    assert prepared.columns == tuple(columns[name] for name in _COLUMN_ORDER)
    assert list(prepared.patients) == _patients_of(event)


def _legacy_rows(conn: Any, records: list[AuditRecord]) -> None:
    """Rows as written before 2026-12-06: the AuditEvent's canonical JSON in the row."""
    head = conn.execute(select(audit_chain_head)).one()
    seq, prev = int(head.seq), str(head.hash)
    for record in records:
        seq += 1
        event = to_audit_event(record, seq)
        content = canonical_json(event)
        digest = chain_hash(prev, content)
        conn.execute(
            insert(audit_log).values(
                seq=seq, event=content, prev_hash=prev, hash=digest, **_index_columns(event)
            )
        )
        for patient in _patients_of(event):
            conn.execute(insert(audit_patient).values(seq=seq, patient_id=patient))
        prev = digest
    conn.execute(update(audit_chain_head).values(seq=seq, hash=prev))


def test_a_log_begun_before_the_stored_record_still_verifies_and_reads(db_url: str) -> None:
    log = AuditLog.from_url(db_url)
    try:
        with log.writer.connect() as conn, conn.begin():
            _legacy_rows(conn, [_read("old-1"), _read("old-2")])
        _fill(log, 3)
        result = log.verify()
        assert result.ok and result.checked == 5, result.reason
        page = log.search(patient="old-2")
        assert [e["id"] for e in page.events] == ["2"]
        assert page.events[0]["entity"][0]["what"]["reference"] == "Patient/old-2"
        assert [e["id"] for e in log.search(agent="dr-amal", count=10).events] == [
            "5",
            "4",
            "3",
            "2",
            "1",
        ]
        _unprotect(log.writer)
        with log.writer.connect() as conn, conn.begin():
            row = conn.execute(select(audit_log).where(audit_log.c.seq == 2)).one()
            event = orjson.loads(row.event)
            event["outcome"] = "4"
            content = canonical_json(event)
            conn.execute(
                update(audit_log)
                .where(audit_log.c.seq == 2)
                .values(event=content, hash=chain_hash(row.prev_hash, content), outcome="4")
            )
        broken = log.verify()
        assert (broken.ok, broken.first_bad_seq) == (False, 3)
        assert "does not link to event 2" in broken.reason
    finally:
        log.close()


# -- the chain ----------------------------------------------------------------------------


def test_chain_grows_and_verifies(db_url: str) -> None:
    log = AuditLog.from_url(db_url)
    try:
        assert log.verify().ok and log.verify().checked == 0
        _fill(log, 12)
        log.record_many([_read("q1"), _read("q2")])
        result = log.verify()
        assert result.ok, result.reason
        assert (result.checked, result.first_bad_seq, result.head_seq) == (14, None, 14)
        with log.reader.connect() as conn:
            rows = conn.execute(select(audit_log).order_by(audit_log.c.seq)).all()
        assert [r.seq for r in rows] == list(range(1, 15))
        prev = GENESIS_HASH
        for row in rows:
            stored = orjson.loads(row.event)  # the record, its position first
            assert stored[0] == row.seq
            assert row.prev_hash == prev
            expected = hashlib.sha256(prev.encode() + row.event).hexdigest()
            assert row.hash == expected == chain_hash(prev, row.event)
            event = log.read(str(row.seq))
            assert event is not None and event["id"] == str(row.seq)
            prev = row.hash
        assert result.head_hash == prev == log.head().hash
    finally:
        log.close()


def _unprotect(engine: Engine) -> None:
    """What an attacker with DDL rights does first: remove the append-only triggers."""
    with engine.connect() as conn, conn.begin():
        if engine.dialect.name == "sqlite":
            names = conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'"
            ).scalars()
            for name in list(names):
                conn.exec_driver_sql(f"DROP TRIGGER {name}")
        else:
            for table in ("audit_log", "audit_patient", "audit_chain_head"):
                conn.exec_driver_sql(f"ALTER TABLE {table} DISABLE TRIGGER USER")


# positions in a stored record (``[seq, format, observer, interaction, status, client_id,
# user, ...]``)
_STATUS, _USER = 4, 6


def _stored(conn: Any, seq: int) -> list[Any]:
    row = conn.execute(select(audit_log.c.event).where(audit_log.c.seq == seq)).one()
    return list(orjson.loads(row.event))


def _alter_event(conn: Any) -> None:
    record = _stored(conn, 4)
    # A refused access made to look granted, or the other way round.
    record[_STATUS] = 403 if record[_STATUS] == 200 else 200
    conn.execute(update(audit_log).where(audit_log.c.seq == 4).values(event=orjson.dumps(record)))


def _alter_and_rehash(conn: Any) -> None:
    record = _stored(conn, 4)
    record[_USER] = "someone-else"
    row = conn.execute(select(audit_log).where(audit_log.c.seq == 4)).one()
    conn.execute(
        update(audit_log)
        .where(audit_log.c.seq == 4)
        .values(
            event=orjson.dumps(record),
            hash=chain_hash(row.prev_hash, orjson.dumps(record)),
            agent_user="someone-else",
        )
    )


def _malformed_and_rehashed(conn: Any) -> None:
    """A record rewritten into something that is not one, its hash and the chain after it
    recomputed: the hashes hold, the content does not."""
    rows = conn.execute(select(audit_log).where(audit_log.c.seq >= 8).order_by("seq")).all()
    prev = rows[0].prev_hash
    for row in rows:
        content = row.event
        if row.seq == 8:
            record = orjson.loads(row.event)
            record[_STATUS] = "200"  # a string where a number belongs
            content = orjson.dumps(record)
        digest = chain_hash(prev, content)
        conn.execute(
            update(audit_log)
            .where(audit_log.c.seq == row.seq)
            .values(event=content, prev_hash=prev, hash=digest)
        )
        prev = digest
    conn.execute(update(audit_chain_head).values(hash=prev))


def _swap(conn: Any) -> None:
    conn.execute(update(audit_log).where(audit_log.c.seq == 3).values(seq=-1))
    conn.execute(update(audit_log).where(audit_log.c.seq == 4).values(seq=3))
    conn.execute(update(audit_log).where(audit_log.c.seq == -1).values(seq=4))
    # The rows now sit at each other's place: also move their patient index rows along.
    conn.execute(update(audit_patient).where(audit_patient.c.seq == 3).values(seq=-1))
    conn.execute(update(audit_patient).where(audit_patient.c.seq == 4).values(seq=3))
    conn.execute(update(audit_patient).where(audit_patient.c.seq == -1).values(seq=4))


def _delete_one(conn: Any) -> None:
    conn.execute(delete(audit_log).where(audit_log.c.seq == 7))
    conn.execute(delete(audit_patient).where(audit_patient.c.seq == 7))


def _truncate_tail(conn: Any) -> None:
    conn.execute(delete(audit_log).where(audit_log.c.seq >= 10))
    conn.execute(delete(audit_patient).where(audit_patient.c.seq >= 10))


def _hide_from_search(conn: Any) -> None:
    conn.execute(update(audit_log).where(audit_log.c.seq == 6).values(patient_id="p-other"))


def _drop_patient_index(conn: Any) -> None:
    conn.execute(delete(audit_patient).where(audit_patient.c.seq == 5))


def _delete_head(conn: Any) -> None:
    conn.execute(delete(audit_chain_head))


def _rewind_head_and_truncate(conn: Any) -> None:
    """Cut the tail and move the head back to the new last event: undetectable inside the
    database, which is what ``verify --expect`` (a hash kept elsewhere) is for."""
    last = conn.execute(select(audit_log).where(audit_log.c.seq == 9)).one()
    _truncate_tail(conn)
    conn.execute(update(audit_chain_head).values(seq=9, hash=last.hash))


TAMPERING: list[tuple[Callable[[Any], None], int | None, str]] = [
    (_alter_event, 4, "content does not match its hash"),
    (_alter_and_rehash, 5, "does not link to event 4"),
    (_malformed_and_rehashed, 8, "malformed"),
    (_swap, 3, "does not link"),
    (_delete_one, 7, "missing"),
    (_truncate_tail, 10, "truncated"),
    (_hide_from_search, 6, "query column patient_id"),
    (_drop_patient_index, 5, "patient index"),
    (_delete_head, None, "head is missing"),
]


@pytest.mark.parametrize(
    ("tamper", "bad_seq", "reason"), TAMPERING, ids=[t[0].__name__ for t in TAMPERING]
)
def test_tampering_is_detected(
    db_url: str, tamper: Callable[[Any], None], bad_seq: int | None, reason: str
) -> None:
    log = AuditLog.from_url(db_url)
    try:
        _fill(log, 12)
        assert log.verify().ok
        _unprotect(log.writer)
        with log.writer.connect() as conn, conn.begin():
            tamper(conn)
        result = log.verify()
        assert not result.ok
        assert result.first_bad_seq == bad_seq
        assert reason in result.reason
    finally:
        log.close()


def test_rewritten_tail_is_caught_by_an_anchor(sqlite_url: str) -> None:
    log = AuditLog.from_url(sqlite_url)
    try:
        _fill(log, 12)
        anchor = log.head()
        _unprotect(log.writer)
        with log.writer.connect() as conn, conn.begin():
            _rewind_head_and_truncate(conn)
        assert log.verify().ok  # consistent inside the database ...
        assert log.hash_at(anchor.seq) != anchor.hash  # ... but not with the noted head
    finally:
        log.close()
    runner = CliRunner()
    result = runner.invoke(
        audit_app, ["verify", "--db", sqlite_url, "--expect", f"{anchor.seq}:{anchor.hash}"]
    )
    assert result.exit_code == 1, result.output
    assert "BROKEN at event 12" in result.output


def test_the_database_refuses_changes_to_the_log(db_url: str) -> None:
    log = AuditLog.from_url(db_url)
    try:
        _fill(log, 3)
        attempts: list[Callable[[Any], None]] = [
            lambda c: c.execute(update(audit_log).values(outcome="4")),
            lambda c: c.execute(delete(audit_log).where(audit_log.c.seq == 3)),
            lambda c: c.execute(delete(audit_patient)),
            lambda c: c.execute(delete(audit_chain_head)),
            lambda c: c.execute(update(audit_chain_head).values(seq=1)),
        ]
        for attempt in attempts:
            with (
                pytest.raises(DBAPIError, match="append-only"),
                log.writer.connect() as conn,
                conn.begin(),
            ):
                attempt(conn)
        # Appending still works and the chain is intact.
        _fill(log, 2)
        result = log.verify()
        assert result.ok and result.checked == 5
    finally:
        log.close()


# -- concurrency ------------------------------------------------------------------------------


def _hammer(record: Callable[[int, int], None], threads: int = 8, each: int = 25) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(each):
                record(t, i)
        except BaseException as err:
            errors.append(err)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []


def _check_complete(log: AuditLog, threads: int = 8, each: int = 25) -> None:
    result = log.verify()
    assert result.ok, result.reason
    assert result.checked == result.head_seq == threads * each
    page = log.search(count=threads * each)
    assert {e["entity"][0]["what"]["reference"] for e in page.events} == {
        f"Patient/t{t}-{i}" for t in range(threads) for i in range(each)
    }


def test_concurrent_writers_share_one_linear_chain(db_url: str) -> None:
    """8 threads, each with its own engines (as 8 server processes would have)."""
    logs = [AuditLog.from_url(db_url) for _ in range(8)]
    try:
        _hammer(lambda t, i: logs[t].record(_read(f"t{t}-{i}")))
        _check_complete(logs[0])
    finally:
        for log in logs:
            log.close()


@pytest.mark.parametrize("buffered", [False, True], ids=["direct", "buffered"])
def test_concurrent_threads_on_one_log(db_url: str, buffered: bool) -> None:
    log = AuditLog.from_url(db_url, buffered=buffered)
    try:
        _hammer(lambda t, i: log.record(_read(f"t{t}-{i}")))
        log.flush()
        assert log.pending == 0
        _check_complete(log)
    finally:
        log.close()


# -- buffering ------------------------------------------------------------------------------


def test_buffered_events_reach_the_database_without_a_flush(sqlite_url: str) -> None:
    log = AuditLog.from_url(sqlite_url, buffered=True, flush_interval=0.05)
    # another process's view: the writing log would write its queue before searching it
    other = AuditLog.from_url(sqlite_url)
    try:
        started = time.perf_counter()
        log.record(_read("p1"))
        while other.search(patient="p1").total == 0:
            assert time.perf_counter() - started < 2, "the background writer did not write"
            time.sleep(0.005)
        # 50 ms of buffering plus the write; generous for a shared test machine.
        assert time.perf_counter() - started < 1.0
    finally:
        log.close()
        other.close()


def test_a_buffered_log_finds_what_it_recorded_before_its_writer_runs(db_url: str) -> None:
    # the background writer stays asleep (a long interval, no full batch)
    log = AuditLog.from_url(db_url, buffered=True, flush_interval=3600, max_batch=10_000)
    other = AuditLog.from_url(db_url)
    try:
        _fill(log, 3)
        assert other.search().total == 0  # still queued: another process cannot see them
        assert log.search(patient="p1").total == 1  # this process finds its own at once
        assert log.pending == 0
        _fill(log, 2)
        assert log.read("5") is not None and log.pending == 0
        _fill(log, 1)
        result = log.verify()
        assert result.ok and result.checked == 6 and log.head().seq == 6
        assert other.search().total == 6
    finally:
        log.close()
        other.close()


def test_a_full_batch_is_written_at_once(sqlite_url: str) -> None:
    log = AuditLog.from_url(sqlite_url, buffered=True, flush_interval=30, max_batch=20)
    try:
        _fill(log, 20)
        deadline = time.perf_counter() + 5
        while log.head().seq < 20:
            assert time.perf_counter() < deadline
            time.sleep(0.01)
    finally:
        log.close()


def test_close_writes_what_is_queued(sqlite_url: str) -> None:
    log = AuditLog.from_url(sqlite_url, buffered=True, flush_interval=30)
    _fill(log, 7)
    log.close()
    with pytest.raises(RuntimeError):
        log.record(_read("late"))
    reopened = AuditLog.from_url(sqlite_url)
    try:
        assert reopened.verify().checked == 7
    finally:
        reopened.close()


def test_a_failed_write_keeps_the_events_queued(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog.from_url(sqlite_url, buffered=True, flush_interval=0.02)
    real = log._append
    failures = {"left": 2}

    def flaky(records: Any) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("database unavailable")
        real(records)

    monkeypatch.setattr(log, "_append", flaky)
    try:
        _fill(log, 5)
        deadline = time.perf_counter() + 5
        while log.head().seq < 5:
            assert time.perf_counter() < deadline
            time.sleep(0.01)
        assert failures["left"] == 0
        result = log.verify()
        assert result.ok and result.checked == 5
        assert [e["id"] for e in log.search().events] == ["5", "4", "3", "2", "1"]
    finally:
        log.close()


# -- search ---------------------------------------------------------------------------------

T0 = 1_717_200_000.0  # 2024-06-01T00:00:00Z


def _searchable(log: AuditLog) -> None:
    log.record_many(
        [
            _read("p1", when=T0),
            _read("p2", user="dr-badr", when=T0 + 3600),
            AuditRecord(
                "search",
                client_id="lab",
                resource_type="Observation",
                query="patient=p1",
                patient_ids=("p1", "p3"),
                when=T0 + 86400,
            ),
            AuditRecord(
                "update",
                status=403,
                client_id="lab",
                resource_type="Observation",
                resource_id="o1",
                patient_ids=("p3",),
                when=T0 + 2 * 86400,
            ),
            AuditRecord(
                "everything",
                user="dr-omid",
                client_id="ed",
                resource_type="Patient",
                resource_id="p1",
                patient_ids=("p1",),
                break_glass_reason="emergency",
                when=T0 + 3 * 86400,
            ),
        ]
    )


def test_search_filters(db_url: str) -> None:
    log = AuditLog.from_url(db_url)
    try:
        _searchable(log)

        def ids(**kw: Any) -> list[str]:
            page = log.search(**kw)
            assert page.total >= len(page.events)
            return [e["id"] for e in page.events]

        assert ids() == ["5", "4", "3", "2", "1"]  # newest first
        assert ids(patient="p1") == ["5", "3", "1"]
        assert ids(patient="Patient/p3") == ["4", "3"]
        assert ids(agent="dr-badr") == ["2"]
        assert ids(agent="lab") == ["4", "3"]
        assert ids(agent="ehr-riyadh") == ["2", "1"]
        assert ids(action="R") == ["5", "3", "2", "1"]
        assert ids(action="U,D") == ["4"]
        assert ids(outcome="4") == ["4"]
        assert ids(since=T0 + 3600) == ["5", "4", "3", "2"]
        assert ids(since=T0 + 3600, until=T0 + 2 * 86400) == ["3", "2"]
        assert ids(interaction="everything") == ["5"]
        assert ids(entity="Observation/o1") == ["4"]
        assert ids(entity="Observation") == ["4", "3"]
        page = log.search(patient="p1", count=2, offset=1)
        assert page.total == 3 and [e["id"] for e in page.events] == ["3", "1"]
        assert log.search(count=0).total == 5
        assert (log.read("5") or {}).get("id") == "5"
        assert log.read("99") is None and log.read("x") is None
        with log.reader.connect() as conn:
            glass = conn.execute(select(audit_log.c.seq).where(audit_log.c.break_glass)).all()
        assert [g.seq for g in glass] == [5]
    finally:
        log.close()


def test_fhir_search_parameters(sqlite_url: str) -> None:
    log = AuditLog.from_url(sqlite_url)
    try:
        _searchable(log)

        def ids(*params: tuple[str, str]) -> list[str]:
            return [e["id"] for e in log.find(parse_search_params(list(params))).events]

        assert ids(("patient", "Patient/p1"), ("_count", "2")) == ["5", "3"]
        assert ids(("date", "ge2024-06-02"), ("date", "lt2024-06-04")) == ["4", "3"]
        assert ids(("date", "2024-06-01")) == ["2", "1"]
        assert ids(("date", "gt2024-06-03")) == ["5"]
        assert ids(("date", "le2024-06-01")) == ["2", "1"]
        assert ids(("agent", "https://takamul.health/fhir/sid/user|dr-omid")) == ["5"]
        assert ids(("action", "C,U"), ("outcome", "4")) == ["4"]
        assert ids(("subtype", "search"), ("_offset", "0")) == ["3"]
        query = parse_search_params([("_count", "5000")], max_count=100)
        assert query.count == 100
    finally:
        log.close()
    for bad in [("date", "ge2024-13-01"), ("action", "X"), ("_count", "-1"), ("name", "x")]:
        with pytest.raises(FhirError) as info:
            parse_search_params([bad])
        assert info.value.status == 400


# -- the command line -----------------------------------------------------------------------


def test_cli_verify_and_show(sqlite_url: str) -> None:
    runner = CliRunner(env={"COLUMNS": "200"})
    log = AuditLog.from_url(sqlite_url)
    try:
        _searchable(log)
        head = log.head()
    finally:
        log.close()

    ok = runner.invoke(audit_app, ["verify", "--db", sqlite_url])
    assert ok.exit_code == 0, ok.output
    assert "OK" in ok.output and "5 events checked" in ok.output

    anchored = runner.invoke(
        audit_app, ["verify", "--db", sqlite_url, "--expect", f"{head.seq}:{head.hash}"]
    )
    assert anchored.exit_code == 0, anchored.output

    shown = runner.invoke(audit_app, ["show", "--db", sqlite_url, "--patient", "p3", "-n", "10"])
    assert shown.exit_code == 0, shown.output
    assert "2 of 2" in shown.output and "Observation/o1" in shown.output

    writer, _ = make_engines(sqlite_url)
    _unprotect(writer)
    with writer.connect() as conn, conn.begin():
        _alter_event(conn)
    writer.dispose()
    broken = runner.invoke(audit_app, ["verify", "--db", sqlite_url])
    assert broken.exit_code == 1
    assert "BROKEN at event 4" in broken.output
    assert "3 events checked" in broken.output

    missing = runner.invoke(audit_app, ["verify", "--db", f"{sqlite_url}.nothing"])
    assert missing.exit_code == 2 and "no such SQLite database" in missing.output
    assert not Path(f"{sqlite_url}.nothing".removeprefix("sqlite:///")).exists()
    bad_anchor = runner.invoke(audit_app, ["verify", "--db", sqlite_url, "--expect", "x"])
    assert bad_anchor.exit_code == 2

    # A database without an audit log (the shared record alone) is not reported as "broken".
    other = f"{sqlite_url}.record"
    Store(Settings(database_url=other)).close()
    no_log = runner.invoke(audit_app, ["verify", "--db", other])
    assert no_log.exit_code == 2 and "has no audit log" in no_log.output


def test_an_event_handed_over_unmade_is_made_by_the_writer_with_its_own_time(
    db_url: str,
) -> None:
    """``record_later``: a request hands over what it knows; the writer makes the record.
    The event keeps the time it was handed over, not the time it was written."""
    made: list[str] = []

    def make(patient: str, when: float) -> AuditRecord:
        made.append(threading.current_thread().name)
        return _read(patient, when=when)

    log = AuditLog.from_url(db_url, buffered=True, flush_interval=3600, max_batch=10_000)
    try:
        log.record_later(functools.partial(make, "p7", T0))
        assert made == [] and log.pending == 1  # not made by the caller
        log.flush()
        (event,) = log.search(patient="p7").events
        assert event["recorded"].startswith("2024-06-01T00:00:00")
        assert made == [threading.current_thread().name]  # made by whoever wrote it
    finally:
        log.close()
    unbuffered = AuditLog.from_url(db_url)
    try:
        unbuffered.record_later(functools.partial(make, "p8", T0))
        assert unbuffered.search(patient="p8").total == 1
        assert unbuffered.verify().ok
    finally:
        unbuffered.close()


def test_an_event_that_cannot_be_made_is_recorded_as_an_audit_error(db_url: str) -> None:
    """A maker that fails neither drops its event nor blocks the queue behind it (a write that
    raises is retried every round): it is written as an ``audit-error`` that says why."""

    def broken() -> AuditRecord:
        raise ValueError("no such field")

    log = AuditLog.from_url(db_url, buffered=True, flush_interval=3600, max_batch=10_000)
    try:
        log.record(_read("p1"))
        log.record_later(broken)
        log.record(_read("p2"))
        log.flush()
        assert log.pending == 0
        events = log.search().events
        assert len(events) == 3 and log.verify().ok
        failed = events[1]
        assert failed["outcome"] == "8"
        assert "no such field" in failed["outcomeDesc"]
        assert "audit-error" in str(failed["subtype"])
    finally:
        log.close()
