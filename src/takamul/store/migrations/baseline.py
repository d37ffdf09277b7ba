"""The baseline's tables, frozen: the schema as release 6c83c72 created it with ``create_all``.

Written out here rather than imported from the packages: the baseline revision must keep
creating what it created on the day it was written, whatever the live schema becomes, and a
store made before migrations is compared with exactly these tables before it is adopted.
Never edit this module; a change of schema is a new revision.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = ["baseline_metadata"]

# Binary order on PostgreSQL (prefix searches are range scans); SQLite compares bytewise anyway.
_OrderedText = Text().with_variant(Text(collation="C"), "postgresql")
# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid; BigInteger on PostgreSQL.
_RowId = BigInteger().with_variant(Integer(), "sqlite")


def baseline_metadata() -> MetaData:
    """The 33 tables of the baseline, on a MetaData of their own."""
    md = MetaData()
    _record(md)
    _search_index(md)
    _registry(md)
    _security(md)
    _audit(md)
    _packages(md)
    return md


def _record(md: MetaData) -> None:
    Table(
        "resource",
        md,
        Column("rid", _RowId, primary_key=True, autoincrement=True),
        Column("res_type", String(64), nullable=False),
        Column("res_id", String(64), nullable=False),
        Column("version", Integer, nullable=False),
        Column("last_updated", Float, nullable=False),
        Column("deleted", Boolean, nullable=False, default=False),
        Column("content", LargeBinary, nullable=True),
        UniqueConstraint("res_type", "res_id", name="uq_resource_type_id"),
        Index("ix_resource_type_updated", "res_type", "last_updated"),
    )
    Table(
        "resource_version",
        md,
        Column("seq", _RowId, primary_key=True, autoincrement=True),
        Column("rid", BigInteger, nullable=False),
        Column("res_type", String(64), nullable=False),
        Column("res_id", String(64), nullable=False),
        Column("version", Integer, nullable=False),
        Column("last_updated", Float, nullable=False),
        Column("method", String(8), nullable=False),
        Column("deleted", Boolean, nullable=False, default=False),
        Column("content", LargeBinary, nullable=True),
        UniqueConstraint("rid", "version", name="uq_version_rid_version"),
        Index("ix_version_updated", "last_updated"),
        Index("ix_version_type_updated", "res_type", "last_updated"),
    )
    Table(
        "store_setting",
        md,
        Column("key", String(64), primary_key=True),
        Column("value", String(256), nullable=False),
    )
    Table(
        "conditional_claim",
        md,
        Column("res_type", String(64), primary_key=True),
        Column("criteria_hash", String(64), primary_key=True),
        Column("rid", BigInteger, nullable=False),
    )
    Table(
        "load_checkpoint",
        md,
        Column("source_key", String(64), primary_key=True),
        Column("source", Text, nullable=False),
        Column("lines_done", BigInteger, nullable=False),
        Column("completed", Boolean, nullable=False, default=False),
    )
    Table(
        "export_job",
        md,
        Column("job_id", String(64), primary_key=True),
        Column("status", String(16), nullable=False),
        Column("request", Text, nullable=False),
        Column("kind", String(16), nullable=False),
        Column("group_id", String(64), nullable=True),
        Column("types", Text, nullable=True),
        Column("since", Float, nullable=True),
        Column("transaction_time", Float, nullable=False),
        Column("progress", Text, nullable=True),
        Column("manifest", LargeBinary, nullable=True),
        Column("error", Text, nullable=True),
    )
    Table(
        "export_requester",
        md,
        Column("job_id", String(64), primary_key=True),
        Column("requester", Text, nullable=False),
        Column("scopes", Text, nullable=False),
        Column("patient", String(64), nullable=True),
        Column("facility", String(64), nullable=True),
    )


def _index_table(
    md: MetaData, name: str, *columns: Column, indexes: tuple[tuple[str, ...], ...]
) -> Table:
    table = Table(
        name,
        md,
        Column("rid", BigInteger, nullable=False),
        Column("res_type", String(64), nullable=False),
        Column("param", String(64), nullable=False),
        *columns,
    )
    Index(f"ix_{name}_rid", table.c.rid)
    for cols in indexes:
        Index(f"ix_{name}_{'_'.join(cols)}", *(table.c[c] for c in ("res_type", "param", *cols)))
    return table


def _search_index(md: MetaData) -> None:
    _index_table(
        md,
        "sp_string",
        Column("normalized", _OrderedText, nullable=False),
        Column("exact", Text, nullable=False),
        indexes=(("normalized",),),
    )
    _index_table(
        md,
        "sp_token",
        Column("system", Text, nullable=True),
        Column("code", Text, nullable=True),
        Column("text", _OrderedText, nullable=True),
        indexes=(("code", "system"),),
    )
    _index_table(
        md,
        "sp_date",
        Column("low", Float, nullable=False),
        Column("high", Float, nullable=False),
        indexes=(("low",), ("high",)),
    )
    reference = _index_table(
        md,
        "sp_reference",
        Column("target_type", String(64), nullable=True),
        Column("target_id", String(64), nullable=True),
        Column("url", Text, nullable=True),
        indexes=(("target_id", "target_type"), ("url",)),
    )
    Index("ix_sp_reference_target", reference.c.target_type, reference.c.target_id)
    _index_table(
        md,
        "sp_quantity",
        Column("value", Float, nullable=False),
        Column("low", Float, nullable=False),
        Column("high", Float, nullable=False),
        Column("system", Text, nullable=True),
        Column("code", Text, nullable=True),
        Column("unit", Text, nullable=True),
        indexes=(("value",),),
    )
    _index_table(
        md,
        "sp_number",
        Column("value", Float, nullable=False),
        Column("low", Float, nullable=False),
        Column("high", Float, nullable=False),
        indexes=(("value",),),
    )
    _index_table(md, "sp_uri", Column("value", _OrderedText, nullable=False), indexes=(("value",),))


def _registry(md: MetaData) -> None:
    Table(
        "mpi_member",
        md,
        Column("patient_id", String(64), primary_key=True),
        Column("person_id", String(64), nullable=False),
        Column("probability", Float, nullable=False),
        Column("manual", Boolean, nullable=False, default=False),
        Column("updated", Float, nullable=False),
        Index("ix_mpi_member_person", "person_id"),
    )
    Table(
        "mpi_decision",
        md,
        Column("id", _RowId, primary_key=True, autoincrement=True),
        Column("patient_a", String(64), nullable=False),
        Column("patient_b", String(64), nullable=False),
        Column("decision", String(16), nullable=False),
        Column("reviewer", Text, nullable=False),
        Column("reason", Text, nullable=True),
        Column("at", Float, nullable=False),
        Column("active", Boolean, nullable=False, default=True),
        Index("ix_mpi_decision_a", "patient_a"),
        Index("ix_mpi_decision_b", "patient_b"),
    )
    Table(
        "mpi_review",
        md,
        Column("id", _RowId, primary_key=True, autoincrement=True),
        Column("patient_a", String(64), nullable=False),
        Column("patient_b", String(64), nullable=False),
        Column("probability", Float, nullable=False),
        Column("evidence", Text, nullable=False),
        Column("status", String(16), nullable=False),
        Column("created", Float, nullable=False),
        Column("decided_by", Text, nullable=True),
        Column("decided_at", Float, nullable=True),
        UniqueConstraint("patient_a", "patient_b", name="uq_mpi_review_pair"),
        Index("ix_mpi_review_status", "status", "probability"),
    )
    Table(
        "mpi_event",
        md,
        Column("id", _RowId, primary_key=True, autoincrement=True),
        Column("at", Float, nullable=False),
        Column("kind", String(16), nullable=False),
        Column("actor", Text, nullable=False),
        Column("reason", Text, nullable=True),
        Column("detail", Text, nullable=False),
        Column("reverted_by", Integer, nullable=True),
    )
    Table(
        "mpi_model",
        md,
        Column("id", _RowId, primary_key=True, autoincrement=True),
        Column("created", Float, nullable=False),
        Column("model", LargeBinary, nullable=False),
    )


def _security(md: MetaData) -> None:
    Table(
        "security_signing_key",
        md,
        Column("kid", String(128), primary_key=True),
        Column("algorithm", String(16), nullable=False),
        Column("private_jwk", Text, nullable=False),
        Column("public_jwk", Text, nullable=False),
        Column("created", Float, nullable=False),
        Column("retired_at", Float, nullable=True),
    )
    Table(
        "security_client",
        md,
        Column("client_id", String(128), primary_key=True),
        Column("name", Text, nullable=False),
        Column("jwks", Text, nullable=False),
        Column("scopes", Text, nullable=False),
        Column("facility", String(64), nullable=True),
        Column("roles", Text, nullable=False, default=""),
        Column("active", Boolean, nullable=False, default=True),
        Column("demo", Boolean, nullable=False, default=False),
        Column("created", Float, nullable=False),
    )
    Table(
        "security_assertion_jti",
        md,
        Column("client_id", String(128), primary_key=True),
        Column("jti", String(256), primary_key=True),
        Column("expires", Float, nullable=False),
        Index("ix_security_assertion_jti_expires", "expires"),
    )
    Table(
        "security_user",
        md,
        Column("id", _RowId, primary_key=True, autoincrement=True),
        Column("username", String(64), nullable=False, unique=True),
        Column("password_hash", Text, nullable=False),
        Column("display_name", Text, nullable=True),
        Column("roles", Text, nullable=False),
        Column("facility", String(64), nullable=True),
        Column("patient", String(64), nullable=True),
        Column("failed_attempts", Integer, nullable=False, default=0),
        Column("locked_until", Float, nullable=True),
        Column("active", Boolean, nullable=False, default=True),
        Column("demo", Boolean, nullable=False, default=False),
        Column("created", Float, nullable=False),
    )
    Table(
        "security_session",
        md,
        Column("id_hash", String(64), primary_key=True),
        Column("user_id", BigInteger, nullable=False),
        Column("created", Float, nullable=False),
        Column("expires", Float, nullable=False),
        Column("last_seen", Float, nullable=False),
        Index("ix_security_session_user", "user_id"),
        Index("ix_security_session_expires", "expires"),
    )


def _audit(md: MetaData) -> None:
    Table(
        "audit_log",
        md,
        Column("seq", _RowId, primary_key=True, autoincrement=False),
        Column("recorded", Float, nullable=False),
        Column("event", LargeBinary, nullable=False),
        Column("prev_hash", String(64), nullable=False),
        Column("hash", String(64), nullable=False),
        Column("patient_id", String(64), nullable=True),
        Column("agent_user", Text, nullable=True),
        Column("agent_client", Text, nullable=True),
        Column("action", String(1), nullable=False),
        Column("outcome", String(2), nullable=False),
        Column("interaction", String(32), nullable=False),
        Column("entity_type", String(64), nullable=True),
        Column("entity_id", String(64), nullable=True),
        Column("break_glass", Boolean, nullable=False, default=False),
        Index("ix_audit_log_recorded", "recorded"),
        Index("ix_audit_log_agent_user", "agent_user", "seq"),
        Index("ix_audit_log_agent_client", "agent_client", "seq"),
        Index("ix_audit_log_entity", "entity_type", "entity_id"),
    )
    Table(
        "audit_patient",
        md,
        Column("seq", BigInteger, nullable=False),
        Column("patient_id", String(64), nullable=False),
        PrimaryKeyConstraint("seq", "patient_id", name="pk_audit_patient"),
        Index("ix_audit_patient_patient", "patient_id", "seq"),
    )
    Table(
        "audit_chain_head",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("seq", BigInteger, nullable=False),
        Column("hash", String(64), nullable=False),
        Column("updated", Float, nullable=False),
    )


def _packages(md: MetaData) -> None:
    """The tables of the care programmes, mental health, equity reports and the web app."""
    Table(
        "care_fact",
        md,
        Column("patient_id", String(64), nullable=False),
        Column("source", String(140), nullable=False),
        Column("kind", String(16), nullable=False),
        Column("code", String(64), nullable=True),
        Column("day", Integer, nullable=True),
        Column("v1", Float, nullable=True),
        Column("v2", Float, nullable=True),
        Column("org", String(64), nullable=True),
        Index("ix_care_fact_patient", "patient_id", "kind"),
        Index("ix_care_fact_source", "source"),
        Index("ix_care_fact_kind", "kind", "code", "day"),
        Index("ix_care_fact_org", "org", "kind"),
    )
    Table(
        "care_fact_state",
        md,
        Column("key", String(32), primary_key=True),
        Column("value", String(64), nullable=False),
    )
    Table(
        "mh_state",
        md,
        Column("key", String(32), primary_key=True),
        Column("value", String(64), nullable=False),
    )
    Table(
        "equity_report",
        md,
        Column("id", _RowId, primary_key=True, autoincrement=True),
        Column("created", Float, nullable=False),
        Column("people", Integer, nullable=False),
        Column("report_json", LargeBinary, nullable=False),
        Column("report_html", LargeBinary, nullable=False),
    )
    Table(
        "web_preference",
        md,
        Column("username", String(200), primary_key=True),
        Column("lang", String(8), nullable=False),
        Column("calendar", String(16), nullable=False),
        Column("numerals", String(16), nullable=False),
    )
    Table(
        "web_break_glass",
        md,
        Column("session_hash", String(64), primary_key=True),
        Column("patient_id", String(64), primary_key=True),
        Column("reason", String(500), nullable=False),
        Column("expires", Float, nullable=False),
    )
