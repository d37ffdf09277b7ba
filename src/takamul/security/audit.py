"""The audit log: a FHIR R4 AuditEvent for every access and change, append-only and chained by
hash so that any edit, deletion, reordering or truncation of the log is detected by ``verify``.

Each event's ``hash`` is SHA-256 over the previous event's hash and the canonical JSON of the
event (orjson, sorted keys); a one-row chain head holds the last sequence number and hash, and
every append takes the head's lock in the transaction that inserts, so the chain stays linear
across threads, processes and servers on SQLite and PostgreSQL.

```python
log = AuditLog.for_store(store, buffered=True)      # the server batches its writes (0.2 s)
log.record(AuditRecord("read", client_id="ehr-1", resource_type="Patient", resource_id="p1",
                       patient_ids=("p1",)))
log.verify()                                        # VerifyResult(ok=True, checked=1, ...)
```
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import orjson
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    and_,
    func,
    insert,
    inspect,
    or_,
    select,
)
from sqlalchemy.exc import OperationalError

from takamul.fhir.outcome import FhirError, bad_request
from takamul.fhir.search_values import date_range
from takamul.security.memo import ByIdentity
from takamul.store.rowcopy import DriverSql, copy_tables, driver_execute

__all__ = [
    "ACTIONS",
    "AUDIT_EVENT_TYPE",
    "CLIENT_SYSTEM",
    "GENESIS_HASH",
    "NO_AUDIT_LOG",
    "USER_SYSTEM",
    "AccessLike",
    "AuditChainError",
    "AuditLog",
    "AuditPage",
    "AuditQuery",
    "AuditRecord",
    "ChainHead",
    "VerifyResult",
    "audit_chain_head",
    "audit_log",
    "audit_metadata",
    "audit_patient",
    "canonical_json",
    "chain_hash",
    "create_audit_tables",
    "outcome_code",
    "parse_search_params",
    "to_audit_event",
]

if TYPE_CHECKING:
    from takamul.store import Store

logger = logging.getLogger("takamul.audit")
NO_AUDIT_LOG = "this database has no audit log"

# -- tables -------------------------------------------------------------------------------------

audit_metadata = MetaData()

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid; BigInteger on PostgreSQL.
_Seq = BigInteger().with_variant(Integer(), "sqlite")

audit_log = Table(
    "audit_log",
    audit_metadata,
    # The chain order. Assigned from the chain head under its lock (head + 1), not by a database
    # sequence: a sequence leaves gaps on rollback, and a gap-free order lets verify name the
    # exact event that was deleted.
    Column("seq", _Seq, primary_key=True, autoincrement=False),
    Column("recorded", Float, nullable=False),  # epoch seconds of AuditEvent.recorded
    Column("event", LargeBinary, nullable=False),  # canonical JSON of the AuditEvent
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # Query columns: all derived from the event (verify checks that they still agree with it,
    # so that a row cannot be hidden from a search by editing them).
    Column("patient_id", String(64), nullable=True),  # the first patient concerned
    Column("agent_user", Text, nullable=True),
    Column("agent_client", Text, nullable=True),
    Column("action", String(1), nullable=False),  # C R U D E
    Column("outcome", String(2), nullable=False),  # 0 4 8 12
    Column("interaction", String(32), nullable=False),
    Column("entity_type", String(64), nullable=True),
    Column("entity_id", String(64), nullable=True),
    Column("break_glass", Boolean, nullable=False, default=False),
    Index("ix_audit_log_recorded", "recorded"),
    Index("ix_audit_log_agent_user", "agent_user", "seq"),
    Index("ix_audit_log_agent_client", "agent_client", "seq"),
    Index("ix_audit_log_entity", "entity_type", "entity_id"),
)

# Every patient an event concerns (a search or a transaction may touch many), for ?patient=.
audit_patient = Table(
    "audit_patient",
    audit_metadata,
    Column("seq", BigInteger, nullable=False),
    Column("patient_id", String(64), nullable=False),
    PrimaryKeyConstraint("seq", "patient_id", name="pk_audit_patient"),
    Index("ix_audit_patient_patient", "patient_id", "seq"),
)

# One row (id = 1): the last appended event. Truncating the log's tail leaves the head ahead
# of the last row, which verify reports; appenders serialise on this row's lock.
audit_chain_head = Table(
    "audit_chain_head",
    audit_metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("updated", Float, nullable=False),
)

GENESIS_HASH = "0" * 64

# -- database-level append-only protection -----------------------------------------------------

_APPEND_ONLY = "the audit log is append-only"

_SQLITE_TRIGGERS = (
    f"""CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_patient_no_update BEFORE UPDATE ON audit_patient
        BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_patient_no_delete BEFORE DELETE ON audit_patient
        BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_head_no_delete BEFORE DELETE ON audit_chain_head
        BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_head_no_rewind BEFORE UPDATE ON audit_chain_head
        WHEN NEW.seq < OLD.seq BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END""",
)

_PG_FUNCTIONS = (
    f"""CREATE OR REPLACE FUNCTION takamul_audit_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '{_APPEND_ONLY} (%% on %%)', TG_OP, TG_TABLE_NAME; END $$""",
    f"""CREATE OR REPLACE FUNCTION takamul_audit_head_forward() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.seq < OLD.seq THEN
            RAISE EXCEPTION '{_APPEND_ONLY} (the chain head cannot move back)';
          END IF;
          RETURN NEW;
        END $$""",
)

# (trigger name, table, definition after "CREATE TRIGGER name")
_PG_TRIGGERS = (
    (
        "audit_log_append_only",
        "audit_log",
        "BEFORE UPDATE OR DELETE ON audit_log FOR EACH ROW "
        "EXECUTE FUNCTION takamul_audit_append_only()",
    ),
    (
        "audit_log_no_truncate",
        "audit_log",
        "BEFORE TRUNCATE ON audit_log FOR EACH STATEMENT "
        "EXECUTE FUNCTION takamul_audit_append_only()",
    ),
    (
        "audit_patient_append_only",
        "audit_patient",
        "BEFORE UPDATE OR DELETE ON audit_patient FOR EACH ROW "
        "EXECUTE FUNCTION takamul_audit_append_only()",
    ),
    (
        "audit_patient_no_truncate",
        "audit_patient",
        "BEFORE TRUNCATE ON audit_patient FOR EACH STATEMENT "
        "EXECUTE FUNCTION takamul_audit_append_only()",
    ),
    (
        "audit_head_no_delete",
        "audit_chain_head",
        "BEFORE DELETE ON audit_chain_head FOR EACH ROW "
        "EXECUTE FUNCTION takamul_audit_append_only()",
    ),
    (
        "audit_head_no_truncate",
        "audit_chain_head",
        "BEFORE TRUNCATE ON audit_chain_head FOR EACH STATEMENT "
        "EXECUTE FUNCTION takamul_audit_append_only()",
    ),
    (
        "audit_head_forward",
        "audit_chain_head",
        "BEFORE UPDATE ON audit_chain_head FOR EACH ROW "
        "EXECUTE FUNCTION takamul_audit_head_forward()",
    ),
)


def _insert_ignore(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(audit_chain_head).on_conflict_do_nothing()
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(audit_chain_head).on_conflict_do_nothing()
    return insert(audit_chain_head)


def create_audit_tables(engine: Engine, protect: bool = True) -> None:
    """Create the audit tables and the chain head row if missing (idempotent).

    ``protect`` installs triggers that refuse UPDATE, DELETE and TRUNCATE of the log and any move
    back of the chain head: ordinary SQL (an application bug, an operator's mistake) cannot
    change the log. Someone able to drop triggers still can, which the hash chain then reveals.
    """
    audit_metadata.create_all(engine)
    with engine.connect() as conn, conn.begin():
        if conn.execute(select(audit_chain_head.c.id)).first() is None:
            # ON CONFLICT DO NOTHING: two processes starting at once both find no head.
            conn.execute(
                _insert_ignore(engine.dialect.name).values(
                    id=1, seq=0, hash=GENESIS_HASH, updated=time.time()
                )
            )
        if not protect:
            return
        if engine.dialect.name == "sqlite":
            for ddl in _SQLITE_TRIGGERS:
                conn.exec_driver_sql(ddl)
        elif engine.dialect.name == "postgresql":
            for ddl in _PG_FUNCTIONS:
                conn.exec_driver_sql(ddl)
            for name, table, definition in _PG_TRIGGERS:
                # Checked rather than CREATE OR REPLACE TRIGGER, which needs PostgreSQL 14.
                exists = conn.exec_driver_sql(
                    "SELECT 1 FROM pg_trigger WHERE tgname = %(name)s "
                    "AND tgrelid = %(table)s::regclass",
                    {"name": name, "table": table},
                ).first()
                if exists is None:
                    conn.exec_driver_sql(f"CREATE TRIGGER {name} {definition}")


# -- the AuditEvent ---------------------------------------------------------------------------

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
# Takamul's own names for what the standard code systems do not name (operations, login).
INTERACTION_SYSTEM = "https://takamul.health/fhir/CodeSystem/audit-interaction"
ROLE_SYSTEM = "https://takamul.health/fhir/CodeSystem/role"
USER_SYSTEM = "https://takamul.health/fhir/sid/user"
CLIENT_SYSTEM = "https://takamul.health/fhir/sid/client"

ACTIONS = frozenset("CRUDE")


@dataclass(frozen=True, slots=True)
class _Kind:
    """How an interaction is coded: the event type, its standard subtype, the action."""

    type_system: str
    type_code: str
    type_display: str
    subtype: tuple[str, str, str] | None  # (system, code, display)
    action: str


def _rest(code: str, action: str) -> _Kind:
    return _Kind(
        AUDIT_EVENT_TYPE, "rest", "RESTful Operation", (RESTFUL_INTERACTION, code, code), action
    )


_OPERATION = (RESTFUL_INTERACTION, "operation", "operation")

_KINDS: dict[str, _Kind] = {
    "read": _rest("read", "R"),
    "vread": _rest("vread", "R"),
    "search": _rest("search-type", "R"),
    "search-type": _rest("search-type", "R"),
    "search-system": _rest("search-system", "R"),
    "history": _rest("history-instance", "R"),
    "history-instance": _rest("history-instance", "R"),
    "history-type": _rest("history-type", "R"),
    "history-system": _rest("history-system", "R"),
    "capabilities": _rest("capabilities", "R"),
    "create": _rest("create", "C"),
    "update": _rest("update", "U"),
    "patch": _rest("patch", "U"),
    "delete": _rest("delete", "D"),
    "transaction": _rest("transaction", "E"),
    "batch": _rest("batch", "E"),
    # The whole record of a patient disclosed at once: DICOM's "Patient Record" event.
    "everything": _Kind(DICOM, "110110", "Patient Record", _OPERATION, "R"),
    # Data leaving the system in bulk: DICOM's "Export" event.
    "export": _Kind(DICOM, "110106", "Export", _OPERATION, "R"),
    "match": _Kind(AUDIT_EVENT_TYPE, "rest", "RESTful Operation", _OPERATION, "E"),
    "login": _Kind(DICOM, "110114", "User Authentication", (DICOM, "110122", "Login"), "E"),
    "logout": _Kind(DICOM, "110114", "User Authentication", (DICOM, "110123", "Logout"), "E"),
    "token": _Kind(DICOM, "110114", "User Authentication", None, "E"),
}


def _kind(interaction: str) -> _Kind:
    # An interaction this table does not know is still audited (never refuse to record), as an
    # operation: the interaction name itself is kept in the Takamul subtype coding.
    return _KINDS.get(interaction) or _Kind(
        AUDIT_EVENT_TYPE, "rest", "RESTful Operation", _OPERATION, "E"
    )


def outcome_code(status: int) -> str:
    """The AuditEvent outcome of an HTTP status: 0 success, 4 the request was refused (a client
    error, including 401/403), 8 the server failed (5xx); 12 is left for an explicit
    ``AuditRecord.outcome`` (a failure with wider effect, such as a security violation)."""
    if status < 400:
        return "0"
    if status < 500:
        return "4"
    return "8"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One access or change to audit: who, which client, which patient, what, when, why, outcome.

    ``when`` is taken when the record is made, not when a buffered log writes it.
    """

    interaction: str  # read vread search create update patch delete history everything ...
    status: int = 200  # the HTTP status of the response
    # who
    client_id: str | None = None  # the OAuth client (application)
    user: str | None = None  # the person using it, when there is one
    user_display: str | None = None
    roles: tuple[str, ...] = ()
    facility: str | None = None  # "Organization/x" or "Location/x", or a name
    address: str | None = None  # the network address of the caller
    token_id: str | None = None  # the access token's jti (never the token)
    # what
    resource_type: str | None = None
    resource_id: str | None = None
    query: str | None = None  # the query string of a search or operation
    patient_ids: tuple[str, ...] = ()
    # when
    when: float = field(default_factory=time.time)
    # why
    purpose: str = "TREAT"  # v3-ActReason purpose of use
    break_glass_reason: str | None = None  # set: emergency access, coded ETREAT
    # outcome
    outcome_text: str | None = None  # the OperationOutcome's diagnostics for a failure
    outcome: str | None = None  # override of the outcome code derived from ``status``
    action: str | None = None  # override of the action derived from ``interaction``

    @property
    def break_glass(self) -> bool:
        return self.break_glass_reason is not None

    @classmethod
    def for_access(cls, access: AccessLike, interaction: str, **fields: Any) -> AuditRecord:
        """A record of who from a request's access context (``client_id``, ``user``,
        ``roles``, ``facility``, ``break_glass``, ``token_id``, ``display_name``, as
        ``takamul.security.context.AccessContext`` has them); ``fields`` give the rest.
        ``access`` must not change once made (who is derived once per context object)."""
        return cls(interaction, **{**_who(access), **fields})


def _who_of(access: AccessLike) -> dict[str, Any]:
    return {
        "client_id": access.client_id,
        "user": access.user,
        "user_display": access.display_name,
        "roles": tuple(sorted(access.roles)),
        "facility": access.facility,
        "token_id": access.token_id,
        "break_glass_reason": access.break_glass,
    }


# who of each access context, made once per context object (the context of a token is one
# object while the token is kept, ``security.context.context_for_token``)
_who: ByIdentity[AccessLike, dict[str, Any]] = ByIdentity(_who_of)


class AccessLike(Protocol):
    """What :meth:`AuditRecord.for_access` reads of an access context."""

    @property
    def client_id(self) -> str | None: ...
    @property
    def user(self) -> str | None: ...
    @property
    def roles(self) -> Iterable[str]: ...
    @property
    def facility(self) -> str | None: ...
    @property
    def break_glass(self) -> str | None: ...
    @property
    def token_id(self) -> str | None: ...
    @property
    def display_name(self) -> str | None: ...


def _instant(epoch: float) -> str:
    """A FHIR instant in UTC with milliseconds (parsed back to the same epoch by verify)."""
    # Whole milliseconds first: rounding the float itself can land on .x999 and lose one.
    millis = round(epoch * 1000)
    moment = datetime.fromtimestamp(millis // 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


def _epoch(instant: str) -> float:
    return datetime.fromisoformat(instant).timestamp()


def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


@lru_cache(maxsize=4096)
def _network_type(address: str) -> str:
    try:
        ipaddress.ip_address(address)
        return "2"  # IP address
    except ValueError:
        return "1"  # machine name


def _network(address: str) -> dict[str, str]:
    return {"address": address, "type": _network_type(address)}


def _purpose(record: AuditRecord) -> list[dict[str, Any]]:
    if record.break_glass_reason is not None:
        return [
            {
                "coding": [_coding(ACT_REASON, "ETREAT", "Emergency Treatment")],
                "text": record.break_glass_reason or "break the glass",
            }
        ]
    return [{"coding": [_coding(ACT_REASON, record.purpose)]}]


_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def _facility_agent(facility: str) -> dict[str, Any]:
    """The organisation the requestor acts for, as a participating (not requesting) agent."""
    org = facility.removeprefix("Organization/")
    who = {"reference": f"Organization/{org}"} if _ID.match(org) else {"display": facility}
    return {
        "type": {"coding": [_coding(PARTICIPATION_TYPE, "PROV", "healthcare provider")]},
        "who": who,
        "requestor": False,
    }


def _agents(record: AuditRecord) -> list[dict[str, Any]]:
    purpose = _purpose(record)
    agents: list[dict[str, Any]] = []
    if record.user:
        user: dict[str, Any] = {
            "type": {"coding": [_coding(PARTICIPATION_TYPE, "IRCP", "information recipient")]},
            "who": {
                "identifier": {"system": USER_SYSTEM, "value": record.user},
                "display": record.user_display or record.user,
            },
            "requestor": True,
        }
        if record.roles:
            user["role"] = [{"coding": [_coding(ROLE_SYSTEM, r)], "text": r} for r in record.roles]
        agents.append(user)
    if record.client_id or not agents:
        client_id = record.client_id or "unknown"
        client: dict[str, Any] = {
            "type": {"coding": [_coding(DICOM, "110150", "Application")]},
            "who": {
                "identifier": {"system": CLIENT_SYSTEM, "value": client_id},
                "display": client_id,
            },
            # The application is the requestor only when no person is behind the request.
            "requestor": not agents,
        }
        if not agents and record.roles:
            client["role"] = [
                {"coding": [_coding(ROLE_SYSTEM, r)], "text": r} for r in record.roles
            ]
        agents.append(client)
    first = agents[0]
    if record.token_id:
        # The access token that authorised the request, by its jti (as IHE BALP records it).
        first["policy"] = [record.token_id]
    if record.facility and record.facility.startswith("Location/"):
        first["location"] = {"reference": record.facility}
    if record.address:
        first["network"] = _network(record.address)
    first["purposeOfUse"] = purpose
    if record.facility and not record.facility.startswith("Location/"):
        agents.append(_facility_agent(record.facility))
    return agents


def _entities(record: AuditRecord) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    patients = list(dict.fromkeys(p for p in record.patient_ids if p))
    if record.resource_type:
        entity: dict[str, Any] = {}
        if record.resource_id:
            entity["what"] = {"reference": f"{record.resource_type}/{record.resource_id}"}
        is_patient = record.resource_type == "Patient" and record.resource_id in patients
        if is_patient:
            entity["type"] = _coding(ENTITY_TYPE, "1", "Person")
            entity["role"] = _coding(OBJECT_ROLE, "1", "Patient")
            patients.remove(record.resource_id or "")
        else:
            entity["type"] = _coding(RESOURCE_TYPES, record.resource_type, record.resource_type)
            if record.query is not None and not record.resource_id:
                entity["role"] = _coding(OBJECT_ROLE, "24", "Query")
            else:
                entity["role"] = _coding(OBJECT_ROLE, "4", "Domain Resource")
        if record.query:
            entity["query"] = base64.b64encode(record.query.encode()).decode()
        entities.append(entity)
    elif record.query:
        entities.append(
            {
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "24", "Query"),
                "query": base64.b64encode(record.query.encode()).decode(),
            }
        )
    for patient in patients:
        entities.append(
            {
                "what": {"reference": f"Patient/{patient}"},
                "type": _coding(ENTITY_TYPE, "1", "Person"),
                "role": _coding(OBJECT_ROLE, "1", "Patient"),
            }
        )
    return entities


def _action_and_outcome(record: AuditRecord) -> tuple[str, str]:
    """The AuditEvent's action and outcome codes of a record (ValueError if an override is not
    one of them)."""
    action = record.action or _kind(record.interaction).action
    if action not in ACTIONS:
        raise ValueError(f"AuditEvent action must be one of C R U D E, not {action!r}")
    outcome = record.outcome or outcome_code(record.status)
    if outcome not in ("0", "4", "8", "12"):
        raise ValueError(f"AuditEvent outcome must be 0, 4, 8 or 12, not {outcome!r}")
    return action, outcome


def to_audit_event(
    record: AuditRecord,
    seq: int | None = None,
    observer: str = "takamul",
) -> dict[str, Any]:
    """The FHIR R4 AuditEvent of ``record``; its id is the chain sequence number when given."""
    kind = _kind(record.interaction)
    subtype = [_coding(*kind.subtype)] if kind.subtype else []
    subtype.append(_coding(INTERACTION_SYSTEM, record.interaction))
    action, outcome = _action_and_outcome(record)
    event: dict[str, Any] = {"resourceType": "AuditEvent"}
    if seq is not None:
        event["id"] = str(seq)
    event["type"] = _coding(kind.type_system, kind.type_code, kind.type_display)
    event["subtype"] = subtype
    event["action"] = action
    event["recorded"] = _instant(record.when)
    event["outcome"] = outcome
    if outcome != "0":
        event["outcomeDesc"] = record.outcome_text or f"HTTP {record.status}"
    event["purposeOfEvent"] = _purpose(record)
    event["agent"] = _agents(record)
    event["source"] = {
        "observer": {"display": observer},
        "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
    }
    entities = _entities(record)
    if entities:
        event["entity"] = entities
    return event


def canonical_json(event: Mapping[str, Any]) -> bytes:
    """The bytes that are hashed: orjson with sorted keys (the same for the same content)."""
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: str, canonical: bytes) -> str:
    """SHA-256 over the previous event's hash (hex, as stored) followed by the event's bytes."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical).hexdigest()


# -- columns derived from an event ----------------------------------------------------------


def _identifier(event: Mapping[str, Any], system: str) -> str | None:
    for agent in event.get("agent") or ():
        ident = (agent.get("who") or {}).get("identifier") or {}
        if ident.get("system") == system:
            value = ident.get("value")
            return str(value) if value is not None else None
    return None


def _split_reference(reference: str) -> tuple[str | None, str | None]:
    parts = reference.split("/")
    if len(parts) >= 2:
        return parts[0], parts[1]
    return None, None


def _patients_of(event: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for entity in event.get("entity") or ():
        if (entity.get("role") or {}).get("code") != "1":
            continue
        rtype, rid = _split_reference((entity.get("what") or {}).get("reference") or "")
        if rtype == "Patient" and rid and rid not in out:
            out.append(rid)
    return out


def _interaction_of(event: Mapping[str, Any]) -> str:
    for coding in event.get("subtype") or ():
        if coding.get("system") == INTERACTION_SYSTEM:
            return str(coding.get("code"))
    return ""


def _entity_of(event: Mapping[str, Any]) -> tuple[str | None, str | None]:
    for entity in event.get("entity") or ():
        what = (entity.get("what") or {}).get("reference")
        if what:
            return _split_reference(what)
        etype = entity.get("type") or {}
        if etype.get("system") == RESOURCE_TYPES:
            return etype.get("code"), None
    return None, None


def _index_columns(event: Mapping[str, Any]) -> dict[str, Any]:
    """The query columns of an event, computed from the event alone (at append and at verify)."""
    patients = _patients_of(event)
    entity_type, entity_id = _entity_of(event)
    purposes = [
        c.get("code") for p in event.get("purposeOfEvent") or () for c in p.get("coding") or ()
    ]
    return {
        "recorded": _epoch(event["recorded"]),
        "patient_id": patients[0] if patients else None,
        "agent_user": _identifier(event, USER_SYSTEM),
        "agent_client": _identifier(event, CLIENT_SYSTEM),
        "action": event.get("action"),
        "outcome": event.get("outcome"),
        "interaction": _interaction_of(event),
        "entity_type": entity_type,
        "entity_id": entity_id,
        "break_glass": "ETREAT" in purposes,
    }


# -- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    checked: int  # events whose hash and link were checked before any failure
    first_bad_seq: int | None  # the first event that fails (None: the log is sound or empty)
    reason: str  # why it fails, or a summary when sound
    head_seq: int = 0
    head_hash: str = GENESIS_HASH


class ChainHead(NamedTuple):
    seq: int
    hash: str


class AuditPage(NamedTuple):
    events: list[dict[str, Any]]
    total: int


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """A search of the log; ``since`` is inclusive and ``until`` exclusive (epoch seconds)."""

    patient: str | None = None
    agent: str | None = None  # a user or a client id
    since: float | None = None
    until: float | None = None
    action: tuple[str, ...] = ()
    outcome: tuple[str, ...] = ()
    interaction: tuple[str, ...] = ()
    entity: str | None = None  # "Type/id" or "Type"
    count: int = 50
    offset: int = 0
    break_glass: bool = False  # only emergency accesses (purpose ETREAT), for their review


# -- the stored record ------------------------------------------------------------------------
#
# Since 2026-12-06 a row stores the audit *record* (who, what, when, why, outcome: some 250
# bytes of JSON array), and the AuditEvent is built from it when it is read (``to_audit_event``
# is deterministic). Building and serialising the 1.5 KB AuditEvent, twice, for every event was
# most of the audit writer's CPU, and its bytes most of the log's size and write-ahead log on
# PostgreSQL (docs/scale.md). Rows written before hold the AuditEvent's canonical JSON (a JSON
# object); both kinds chain and verify alike: the hash is over the stored bytes.

RECORD_FORMAT = 1
_RECORD_LENGTH = 22  # seq, format, observer and the 19 fields below


def _record_tail(record: AuditRecord, observer: str) -> bytes:
    """The stored record without its leading ``[seq,`` (its position, known under the lock).
    ``when`` is kept in whole milliseconds, as the AuditEvent's ``recorded`` shows it."""
    return orjson.dumps(
        [
            RECORD_FORMAT,
            observer,
            record.interaction,
            record.status,
            record.client_id,
            record.user,
            record.user_display,
            record.roles,
            record.facility,
            record.address,
            record.token_id,
            record.resource_type,
            record.resource_id,
            record.query,
            record.patient_ids,
            round(record.when * 1000),
            record.purpose,
            record.break_glass_reason,
            record.outcome_text,
            record.outcome,
            record.action,
        ]
    )[1:]


def _optional_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("not a list of strings")
    return tuple(value)


def _decode_record(values: Any) -> tuple[int, str, AuditRecord]:
    """(seq, observer, record) of a stored record; TypeError or ValueError if it is not one."""
    if not isinstance(values, list) or len(values) != _RECORD_LENGTH:
        raise ValueError("not a stored audit record")
    seq, version, observer, interaction, status, *rest = values
    if version != RECORD_FORMAT or not isinstance(seq, int) or not isinstance(status, int):
        raise ValueError("not a stored audit record of a known format")
    client, user, display, roles, facility, address, token = rest[:7]
    rtype, rid, query, patients, millis, purpose, glass, text, outcome, action = rest[7:]
    if not isinstance(millis, int) or not isinstance(purpose, str):
        raise TypeError("when or purpose malformed")
    record = AuditRecord(
        str(_optional_str(interaction)),
        status=status,
        client_id=_optional_str(client),
        user=_optional_str(user),
        user_display=_optional_str(display),
        roles=_strings(roles),
        facility=_optional_str(facility),
        address=_optional_str(address),
        token_id=_optional_str(token),
        resource_type=_optional_str(rtype),
        resource_id=_optional_str(rid),
        query=_optional_str(query),
        patient_ids=_strings(patients),
        when=millis / 1000,
        purpose=purpose,
        break_glass_reason=_optional_str(glass),
        outcome_text=_optional_str(text),
        outcome=_optional_str(outcome),
        action=_optional_str(action),
    )
    return seq, str(_optional_str(observer)), record


def _record_patients(record: AuditRecord) -> tuple[str, ...]:
    """The patients an event concerns, in the order of its AuditEvent's entities: the patient
    read first, then the others."""
    patients = list(dict.fromkeys(p for p in record.patient_ids if p))
    if record.resource_type == "Patient" and record.resource_id in patients:
        patients.remove(record.resource_id)
        patients.insert(0, record.resource_id)
    return tuple(patients)


def _record_columns(record: AuditRecord, patients: tuple[str, ...]) -> dict[str, Any]:
    """The query columns of a stored record (at append and at verify), straight from the
    record: what ``_index_columns`` reads out of its AuditEvent, without building it."""
    action, outcome = _action_and_outcome(record)
    entity_type: str | None = None
    entity_id: str | None = None
    if record.resource_type:
        entity_type, entity_id = record.resource_type, record.resource_id
    elif patients:
        entity_type, entity_id = "Patient", patients[0]
    return {
        "recorded": round(record.when * 1000) / 1000,
        "patient_id": patients[0] if patients else None,
        "agent_user": record.user or None,
        "agent_client": record.client_id or (None if record.user else "unknown"),
        "action": action,
        "outcome": outcome,
        "interaction": record.interaction,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "break_glass": record.break_glass_reason is not None,
    }


def _event_of(stored: bytes, seq: int) -> dict[str, Any]:
    """The AuditEvent of a stored row: built from its record, or (rows written before the
    record was stored) its canonical JSON as written."""
    value = orjson.loads(stored)
    if isinstance(value, dict):
        return value
    _, observer, record = _decode_record(value)
    return to_audit_event(record, seq, observer)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """An event ready to append: its stored record but for the position its place in the
    chain gives it, its query columns in insert order, its patients."""

    tail: bytes
    columns: tuple[Any, ...]
    patients: tuple[str, ...]

    @classmethod
    def of(cls, record: AuditRecord, observer: str) -> _Prepared:
        patients = _record_patients(record)
        columns = _record_columns(record, patients)
        return cls(
            _record_tail(record, observer),
            tuple(columns[name] for name in _COLUMN_ORDER),
            patients,
        )

    def stored(self, seq: int) -> bytes:
        """The bytes stored and hashed: the record with ``seq`` first."""
        return b"[" + str(seq).encode("ascii") + b"," + self.tail


class AuditChainError(RuntimeError):
    """The log cannot be appended to (its chain head is missing: it was tampered with)."""


# -- the log ----------------------------------------------------------------------------------


def _strip_patient(value: str) -> str:
    return value.split("/", 1)[1] if value.startswith("Patient/") else value


def _epoch_of(value: float | datetime | None) -> float | None:
    if value is None or isinstance(value, float | int):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _as_tuple(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v for v in value.split(",") if v)
    return tuple(value)


_RETRIES = 20


def _made(item: AuditRecord | Callable[[], AuditRecord]) -> AuditRecord:
    """The record of a queued event (``AuditLog.record_later``): made now if it was handed
    over unmade. A failure to make it is itself recorded, never dropped nor left to block the
    queue (a write that raises is retried every round)."""
    if isinstance(item, AuditRecord):
        return item
    try:
        return item()
    except Exception as err:
        logger.exception("an audit event could not be made; it is recorded as an audit-error")
        return AuditRecord(
            "audit-error",
            status=500,
            outcome="8",
            outcome_text=f"the audit record of this event could not be made: {err!r}"[:2000],
        )


class AuditLog:
    """Appends AuditEvents to the chain, verifies it and searches it.

    ``writer`` must take the write lock when a transaction begins on SQLite (the writer engine
    of :func:`takamul.store.engine.make_engines`, as ``for_store`` and ``from_url`` use); the
    append also starts with a write to the head row so that another engine is safe too.
    ``buffered``: :meth:`record` only enqueues and a background thread writes the queue every
    ``flush_interval`` seconds (or at ``max_batch`` events) in one transaction, so a request
    never waits for the audit write; an event reaches the database at most about
    ``flush_interval`` after it was recorded, and :meth:`flush` or :meth:`close` write what is
    queued at once. What this log reads (:meth:`find`, :meth:`read`, :meth:`verify`,
    :meth:`head`) first writes its own queue, so a process always finds the events it recorded;
    another process's events show within its ``flush_interval``.
    """

    def __init__(
        self,
        writer: Engine,
        reader: Engine | None = None,
        *,
        buffered: bool = False,
        flush_interval: float = 0.05,
        max_batch: int = 500,
        max_pending: int = 100_000,
        observer: str = "takamul",
        create: bool = True,
        protect: bool = True,
        owns_engines: bool = False,
    ) -> None:
        self.writer = writer
        self.reader = reader or writer
        self.observer = observer
        self.buffered = buffered
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._owns_engines = owns_engines
        if create:
            create_audit_tables(writer, protect=protect)
        self._write_lock = threading.Lock()  # one append at a time in this process
        self._drain_lock = threading.Lock()  # one drain at a time: keeps the queue's order
        self._cond = threading.Condition()
        self._pending: list[AuditRecord | Callable[[], AuditRecord]] = []
        self._closed = False
        self._thread: threading.Thread | None = None
        self.last_error: BaseException | None = None
        if buffered:
            self._thread = threading.Thread(
                target=self._run, name="takamul-audit-flush", daemon=True
            )
            self._thread.start()
            # A process that exits without close() still writes what it queued.
            atexit.register(self.close)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AuditLog:
        """A log on its own engines for ``sqlite:///path`` or ``postgresql://...``."""
        from takamul.store.engine import make_engines

        writer, reader = make_engines(url)
        return cls(writer, reader, owns_engines=True, **options)

    @classmethod
    def for_store(cls, store: Store, **options: Any) -> AuditLog:
        """A log in the shared record's database, on the store's engines."""
        return cls(store.writer, store.reader, **options)

    # -- appending ------------------------------------------------------------------------

    def record(self, record: AuditRecord) -> None:
        """Append one event (buffered: enqueue it; it is written within ``flush_interval``)."""
        if not self.buffered:
            self._append([record])
            return
        self._enqueue(record)

    def record_later(self, make: Callable[[], AuditRecord]) -> None:
        """Append the event that ``make`` describes, made by the background writer (buffered)
        rather than by the caller: a request hands over what it knows (``functools.partial``
        of a function and its values, ``when`` among them) and goes on. Parsing its path and
        query and building the record took about 17 µs of a request's thread on PostgreSQL;
        the writer makes hundreds at a time, for less (docs/scale.md). ``make`` must only read
        values that no longer change. If it fails, the event is still written, as an
        ``audit-error`` with the failure (``_made``): an event is never dropped."""
        if not self.buffered:
            self._append([_made(make)])
            return
        self._enqueue(make)

    def _enqueue(self, item: AuditRecord | Callable[[], AuditRecord]) -> None:
        with self._cond:
            if self._closed:
                raise AuditChainError("the audit log is closed")
            self._pending.append(item)
            backlog = len(self._pending)
            if backlog >= self.max_batch:
                self._cond.notify()
        if backlog > self.max_pending:
            # The database has not taken events for a while: write now, in the caller, so that
            # a failure reaches the request (fail closed) instead of growing the queue forever.
            self.flush()

    def record_many(self, records: Iterable[AuditRecord]) -> None:
        """Append several events in one transaction (in this order)."""
        batch = list(records)
        if self.buffered:
            for r in batch:
                self.record(r)
        elif batch:
            self._append(batch)

    @property
    def pending(self) -> int:
        """Events recorded but not yet written."""
        with self._cond:
            return len(self._pending)

    def flush(self) -> None:
        """Write every event queued when it is called (raises if the database refuses them).

        Events recorded meanwhile wait for the next flush: a drain that also took them went on
        for as long as requests came, in batches of the few that arrived during the last
        append, and on PostgreSQL (six round trips an append) that made every event cost
        about 0.36 ms of CPU instead of a tenth of it."""
        with self._drain_lock:
            with self._cond:
                left = len(self._pending)
            while left > 0:
                with self._cond:
                    batch = self._pending[: min(self.max_batch, left)]
                if not batch:
                    return
                self._append(batch)
                with self._cond:
                    # Only this drain removes from the front, so these are the ones written.
                    del self._pending[: len(batch)]
                left -= len(batch)

    def close(self) -> None:
        """Stop the background writer after writing what is queued; dispose owned engines."""
        with self._cond:
            already = self._closed
            self._closed = True
            self._cond.notify_all()
        if already:
            return
        atexit.unregister(self.close)
        if self._thread is not None:
            self._thread.join()
        try:
            self.flush()
        finally:
            if self._owns_engines:
                self.writer.dispose()
                if self.reader is not self.writer:
                    self.reader.dispose()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._closed or len(self._pending) >= self.max_batch,
                    timeout=self.flush_interval,
                )
                closing = self._closed
            try:
                self.flush()
                self.last_error = None
            except Exception as err:  # keep the events queued and try again next round
                self.last_error = err
                logger.exception("writing %d audit events failed; retrying", self.pending)
                if closing:
                    return
                time.sleep(self.flush_interval)
            if closing:
                return

    def _append(self, records: Sequence[AuditRecord | Callable[[], AuditRecord]]) -> None:
        # Everything that does not depend on the position in the chain is done before the lock.
        prepared = [_Prepared.of(_made(r), self.observer) for r in records]
        with self._write_lock:
            for attempt in range(_RETRIES):
                try:
                    with self.writer.connect() as conn, conn.begin():
                        self._append_in(conn, prepared)
                    return
                except OperationalError as err:
                    # SQLite's busy timeout ran out under heavy contention: try again.
                    if "locked" not in str(err) or attempt == _RETRIES - 1:
                        raise
                time.sleep(0.005 * (attempt + 1))

    def _append_in(self, conn: Connection, prepared: list[_Prepared]) -> None:
        # The chain head's statements go straight to the driver and the rows of both tables in
        # one statement (``copy_tables``): SQLAlchemy's execution and a COPY per table (two round
        # trips each) cost about a millisecond of CPU a batch, and a server's batches are of
        # some hundreds of events (0.2 s of reads).
        if conn.dialect.name == "sqlite":
            # A write first takes SQLite's writer lock before the head is read, whichever way
            # the engine begins transactions (BEGIN IMMEDIATE already holds it).
            driver_execute(conn, _TAKE_HEAD, {})
        head = driver_execute(conn, _LOCK_HEAD[conn.dialect.name], {})
        if not head:
            raise AuditChainError(
                "the audit chain head is missing; run `takamul audit verify` and investigate"
            )
        seq, prev = int(head[0][0]), str(head[0][1])
        rows: list[tuple[Any, ...]] = []
        patients: list[tuple[int, str]] = []
        for item in prepared:
            seq += 1
            stored = item.stored(seq)  # the position is part of what is hashed
            digest = chain_hash(prev, stored)
            rows.append((seq, stored, prev, digest, *item.columns))
            patients.extend((seq, p) for p in item.patients)
            prev = digest
        copy_tables(
            conn,
            [(audit_log, _LOG_COLUMNS, rows), (audit_patient, ("seq", "patient_id"), patients)],
        )
        driver_execute(conn, _MOVE_HEAD, {"seq": seq, "hash": prev, "updated": time.time()})

    # -- reading ----------------------------------------------------------------------------

    def _read(self) -> Connection:
        conn = self.reader.connect()
        if conn.dialect.name == "postgresql":
            # One snapshot for the head and every row, whatever is appended meanwhile.
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        return conn

    def _written_first(self) -> None:
        """Write this process's queue before reading the log (a reader finds what it did).
        If the database refuses the write, the read goes on without those events: they stay
        queued and the background writer tries again, as it does after any failed round."""
        if not (self.buffered and self.pending):
            return
        try:
            self.flush()
        except Exception:
            logger.warning(
                "audit events queued in this process are not written yet; reading "
                "the log without them",
                exc_info=True,
            )

    def head(self) -> ChainHead:
        self._written_first()
        with self.reader.connect() as conn:
            row = conn.execute(
                select(audit_chain_head.c.seq, audit_chain_head.c.hash).where(
                    audit_chain_head.c.id == 1
                )
            ).first()
        return ChainHead(int(row.seq), str(row.hash)) if row else ChainHead(0, GENESIS_HASH)

    def hash_at(self, seq: int) -> str | None:
        """The stored hash of event ``seq`` (to compare with a hash noted down elsewhere)."""
        with self.reader.connect() as conn:
            return conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == seq)).scalar()

    def read(self, event_id: str) -> dict[str, Any] | None:
        """The AuditEvent with this id (its sequence number), or None."""
        if not (event_id.isascii() and event_id.isdigit()) or len(event_id) > 18:
            return None
        self._written_first()
        with self.reader.connect() as conn:
            row = conn.execute(
                select(audit_log.c.event).where(audit_log.c.seq == int(event_id))
            ).first()
        return _event_of(row.event, int(event_id)) if row else None

    def search(
        self,
        patient: str | None = None,
        agent: str | None = None,
        since: float | datetime | None = None,
        until: float | datetime | None = None,
        action: str | Sequence[str] | None = None,
        outcome: str | Sequence[str] | None = None,
        count: int = 50,
        offset: int = 0,
        interaction: str | Sequence[str] | None = None,
        entity: str | None = None,
    ) -> AuditPage:
        """Events newest first, and how many match. ``since`` inclusive, ``until`` exclusive;
        ``action``, ``outcome`` and ``interaction`` take one value, a list or "a,b"."""
        return self.find(
            AuditQuery(
                patient=patient,
                agent=agent,
                since=_epoch_of(since),
                until=_epoch_of(until),
                action=_as_tuple(action),
                outcome=_as_tuple(outcome),
                interaction=_as_tuple(interaction),
                entity=entity,
                count=count,
                offset=offset,
            )
        )

    def find(self, query: AuditQuery) -> AuditPage:
        conds: list[ColumnElement[bool]] = []
        if query.patient:
            conds.append(
                audit_log.c.seq.in_(
                    select(audit_patient.c.seq).where(
                        audit_patient.c.patient_id == _strip_patient(query.patient)
                    )
                )
            )
        if query.agent:
            conds.append(
                or_(audit_log.c.agent_user == query.agent, audit_log.c.agent_client == query.agent)
            )
        if query.since is not None:
            conds.append(audit_log.c.recorded >= query.since)
        if query.until is not None:
            conds.append(audit_log.c.recorded < query.until)
        if query.action:
            conds.append(audit_log.c.action.in_(query.action))
        if query.outcome:
            conds.append(audit_log.c.outcome.in_(query.outcome))
        if query.interaction:
            conds.append(audit_log.c.interaction.in_(query.interaction))
        if query.break_glass:
            conds.append(audit_log.c.break_glass.is_(True))
        if query.entity:
            etype, _, eid = query.entity.partition("/")
            conds.append(audit_log.c.entity_type == etype)
            if eid:
                conds.append(audit_log.c.entity_id == eid)
        where = and_(*conds) if conds else None
        total_stmt = select(func.count()).select_from(audit_log)
        stmt = select(audit_log.c.seq, audit_log.c.event).order_by(audit_log.c.seq.desc())
        if where is not None:
            total_stmt = total_stmt.where(where)
            stmt = stmt.where(where)
        self._written_first()
        with self.reader.connect() as conn:
            total = int(conn.execute(total_stmt).scalar_one())
            rows = conn.execute(stmt.limit(max(query.count, 0)).offset(query.offset)).all()
        return AuditPage([_event_of(r.event, int(r.seq)) for r in rows], total)

    # -- verification -------------------------------------------------------------------------

    def verify(self, batch_size: int = 2000) -> VerifyResult:
        """Recompute the whole chain: every hash, every link, the query columns, the head."""
        self._written_first()
        with self._read() as conn, conn.begin():
            return _verify(conn, batch_size)


# the query columns in the order of the driver-level insert (after seq, event and the hashes)
_COLUMN_ORDER = (
    "recorded",
    "patient_id",
    "agent_user",
    "agent_client",
    "action",
    "outcome",
    "interaction",
    "entity_type",
    "entity_id",
    "break_glass",
)


_LOG_COLUMNS = ("seq", "event", "prev_hash", "hash", *_COLUMN_ORDER)

_TAKE_HEAD = DriverSql("UPDATE audit_chain_head SET seq = seq WHERE id = 1")
# PostgreSQL: concurrent appenders queue on the head row's lock
_LOCK_HEAD = {
    "sqlite": DriverSql("SELECT seq, hash FROM audit_chain_head WHERE id = 1"),
    "postgresql": DriverSql("SELECT seq, hash FROM audit_chain_head WHERE id = 1 FOR UPDATE"),
}
_MOVE_HEAD = DriverSql(
    "UPDATE audit_chain_head SET seq = :seq, hash = :hash, updated = :updated WHERE id = 1"
)


def _bad(checked: int, seq: int | None, reason: str, head: Any) -> VerifyResult:
    head_seq, head_hash = (int(head.seq), str(head.hash)) if head else (0, GENESIS_HASH)
    return VerifyResult(False, checked, seq, reason, head_seq, head_hash)


_COMPARED = (
    "recorded",
    "patient_id",
    "agent_user",
    "agent_client",
    "action",
    "outcome",
    "interaction",
    "entity_type",
    "entity_id",
    "break_glass",
)


def _verify(conn: Connection, batch_size: int) -> VerifyResult:
    if not inspect(conn).has_table("audit_log"):
        return VerifyResult(False, 0, None, NO_AUDIT_LOG)
    head = conn.execute(
        select(audit_chain_head.c.seq, audit_chain_head.c.hash).where(audit_chain_head.c.id == 1)
    ).first()
    expected, prev, checked = 1, GENESIS_HASH, 0
    while True:
        rows = conn.execute(
            select(audit_log)
            .where(audit_log.c.seq >= expected)
            .order_by(audit_log.c.seq)
            .limit(batch_size)
        ).all()
        if not rows:
            break
        patients: dict[int, set[str]] = {}
        for seq, patient in conn.execute(
            select(audit_patient.c.seq, audit_patient.c.patient_id).where(
                and_(audit_patient.c.seq >= rows[0].seq, audit_patient.c.seq <= rows[-1].seq)
            )
        ):
            patients.setdefault(int(seq), set()).add(patient)
        for row in rows:
            seq = int(row.seq)
            if seq != expected:
                missing = f"{expected}" if seq == expected + 1 else f"{expected} to {seq - 1}"
                return _bad(checked, expected, f"event {missing} is missing (deleted)", head)
            problem = _check_row(row, prev, patients.get(seq, set()))
            if problem:
                return _bad(checked, seq, problem, head)
            prev = str(row.hash)
            expected += 1
            checked += 1
    last = expected - 1
    orphans = conn.execute(
        select(func.min(audit_patient.c.seq)).where(
            or_(audit_patient.c.seq > last, audit_patient.c.seq < 1)
        )
    ).scalar()
    if orphans is not None:
        return _bad(checked, int(orphans), f"patient index rows for absent event {orphans}", head)
    if head is None:
        if last == 0:
            # the tables exist (the schema migrations make them) but no log was ever opened:
            # opening one writes the chain head
            return VerifyResult(False, 0, None, NO_AUDIT_LOG)
        return _bad(checked, None, "the chain head is missing (deleted)", head)
    if int(head.seq) > last:
        removed = f"{last + 1}" if int(head.seq) == last + 1 else f"{last + 1} to {head.seq}"
        return _bad(
            checked,
            last + 1,
            f"the chain head is at event {head.seq} but the log ends at {last}: "
            f"event {removed} removed (truncated)",
            head,
        )
    if int(head.seq) < last or str(head.hash) != prev:
        return _bad(
            checked,
            int(head.seq) + 1 if int(head.seq) < last else last,
            f"the chain head (event {head.seq}, {str(head.hash)[:12]}…) does not match the last "
            f"event ({last}, {prev[:12]}…)",
            head,
        )
    return VerifyResult(
        True, checked, None, f"{checked} events chained correctly", int(head.seq), str(head.hash)
    )


def _check_row(row: Any, prev: str, patients: set[str]) -> str | None:
    """Why one row breaks the chain, or None."""
    seq = int(row.seq)
    if chain_hash(str(row.prev_hash), bytes(row.event)) != row.hash:
        return "the event's content does not match its hash (altered)"
    if row.prev_hash != prev:
        return (
            f"the event does not link to event {seq - 1} (this event's hash or the previous "
            "one was rewritten, or events were reordered)"
        )
    try:
        value = orjson.loads(row.event)
    except orjson.JSONDecodeError:
        return "the stored event is not JSON (altered)"
    if isinstance(value, dict):
        return _check_event(value, seq, row, patients)
    try:
        at, _, record = _decode_record(value)
        expected = _record_patients(record)
        columns = _record_columns(record, expected)
    except (TypeError, ValueError):
        return "the stored record is malformed (altered)"
    if at != seq:
        return f"the event carries id {str(at)!r} at position {seq} (reordered)"
    return _check_columns(row, columns) or _check_patients(patients, expected)


def _check_event(event: dict[str, Any], seq: int, row: Any, patients: set[str]) -> str | None:
    """A row written before 2026-12-06, which holds the AuditEvent itself."""
    if canonical_json(event) != bytes(row.event):
        return "the stored event is not in canonical form (altered)"
    if event.get("id") != str(seq):
        return f"the event carries id {event.get('id')!r} at position {seq} (reordered)"
    try:
        columns = _index_columns(event)
    except (KeyError, TypeError, ValueError):
        return "the event lacks what its query columns are derived from (altered)"
    return _check_columns(row, columns) or _check_patients(patients, _patients_of(event))


def _check_columns(row: Any, columns: Mapping[str, Any]) -> str | None:
    for name in _COMPARED:
        stored = getattr(row, name)
        if name == "break_glass":
            stored = bool(stored)
        if stored != columns[name]:
            return f"the query column {name} does not match the event (altered to hide it)"
    return None


def _check_patients(indexed: set[str], patients: Sequence[str]) -> str | None:
    if indexed != set(patients):
        return "the patient index does not match the event's patients (altered)"
    return None


# -- FHIR search parameters ---------------------------------------------------------------

_IGNORED = frozenset({"_format", "_pretty", "_summary", "_total"})


def _int_param(name: str, value: str, low: int, high: int | None = None) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) > 2**31 - 1:
        raise bad_request(
            f"{name} must be a whole number up to 2147483647, not '{value[:40]}'", name
        )
    n = int(value)
    if n < low:
        raise bad_request(f"{name} must be at least {low}", name)
    return min(n, high) if high is not None else n


def parse_search_params(
    params: Sequence[tuple[str, str]], default_count: int = 50, max_count: int = 1000
) -> AuditQuery:
    """``GET /fhir/AuditEvent`` parameters as a query: patient, agent (user or client id),
    date (with ge/gt/le/lt/eq; repeat to bound both ends), action, outcome, subtype
    (interaction), entity, _count, _offset. Raises FhirError 400 for anything else."""
    patient = agent = entity = None
    since: float | None = None
    until: float | None = None
    action: list[str] = []
    outcome: list[str] = []
    interaction: list[str] = []
    count, offset = default_count, 0
    for name, value in params:
        if name in _IGNORED:
            continue
        if name in ("patient", "patient:Patient"):
            patient = _strip_patient(value)
        elif name in ("agent", "agent:identifier", "agent-name", "altid"):
            agent = value.rsplit("|", 1)[-1]
        elif name == "entity":
            entity = value
        elif name == "date":
            low, high = _date_bounds(value)
            since = low if since is None or (low is not None and low > since) else since
            until = high if until is None or (high is not None and high < until) else until
        elif name == "action":
            action.extend(v for v in value.split(",") if v)
            if not set(action) <= ACTIONS:
                raise bad_request(f"action must be C, R, U, D or E, not '{value}'", "action")
        elif name == "outcome":
            outcome.extend(v for v in value.split(",") if v)
            if not set(outcome) <= {"0", "4", "8", "12"}:
                raise bad_request(f"outcome must be 0, 4, 8 or 12, not '{value}'", "outcome")
        elif name == "subtype":
            interaction.extend(v.rsplit("|", 1)[-1] for v in value.split(",") if v)
        elif name == "_count":
            count = _int_param("_count", value, 0, max_count)
        elif name == "_offset":
            offset = _int_param("_offset", value, 0)
        else:
            raise FhirError(
                400,
                f"Unknown AuditEvent search parameter '{name}'; use patient, agent, date, "
                "action, outcome, subtype, entity, _count or _offset",
                "not-supported",
            )
    return AuditQuery(
        patient=patient,
        agent=agent,
        since=since,
        until=until,
        action=tuple(action),
        outcome=tuple(outcome),
        interaction=tuple(interaction),
        entity=entity,
        count=count,
        offset=offset,
    )


def _date_bounds(value: str) -> tuple[float | None, float | None]:
    """(since inclusive, until exclusive) of one ``date`` parameter value."""
    prefix, text = (value[:2], value[2:]) if value[:2].isalpha() else ("eq", value)
    try:
        low, high = date_range(text)
    except ValueError as err:
        raise bad_request(f"date: {err}", "date") from err
    if prefix == "eq":
        return low, high
    if prefix in ("ge", "sa"):
        return (low, None) if prefix == "ge" else (high, None)
    if prefix == "gt":
        return high, None
    if prefix == "le":
        return None, high
    if prefix in ("lt", "eb"):
        return None, low
    raise bad_request(f"date prefix '{prefix}' is not supported; use ge, gt, le, lt or eq", "date")
