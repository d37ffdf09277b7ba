"""Notifications: the outbox, each Subscription's delivery state, its numbered events and the
dispatcher's lease (``takamul.notifications.schema``, commit 0529060).

Written out here as they were that day. A store made before migrations by a release that
already created them with ``create_all`` keeps them when they equal these definitions.

Revision ID: 0002_notifications
Revises: 0001_baseline
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from takamul.store.migrations import create_tables

revision = "0002_notifications"
down_revision: str | None = "0001_baseline"
branch_labels = None
depends_on = None
# new tables only: the server runs it at start (takamul.store.migrations.additive)
additive = True

TABLES = ("notification_outbox", "subscription_channel", "subscription_event", "notification_lease")

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid; BigInteger on PostgreSQL.
_RowId = BigInteger().with_variant(Integer(), "sqlite")


def notification_tables() -> MetaData:
    md = MetaData()
    Table(
        "notification_outbox",
        md,
        Column("seq", _RowId, primary_key=True, autoincrement=True),
        Column("topics", Text, nullable=False),
        Column("res_type", String(64), nullable=False),
        Column("res_id", String(64), nullable=False),
        Column("version", Integer, nullable=False),
        Column("created", Boolean, nullable=False),
        Column("at", Float, nullable=False),
        Column("processed", Boolean, nullable=False, default=False),
        Index("ix_outbox_pending", "processed", "seq"),
    )
    Table(
        "subscription_channel",
        md,
        Column("sub_id", String(64), primary_key=True),
        Column("topic", String(64), nullable=False),
        Column("filters", Text, nullable=False),
        Column("endpoint", Text, nullable=False),
        Column("headers", Text, nullable=False),
        Column("content", String(16), nullable=False),
        Column("heartbeat", Integer, nullable=True),
        Column("timeout", Integer, nullable=False),
        Column("max_count", Integer, nullable=False),
        Column("status", String(16), nullable=False),
        Column("handshake_done", Boolean, nullable=False, default=False),
        Column("subscriber", Text, nullable=True),
        Column("since", Float, nullable=False),
        Column("events", BigInteger, nullable=False, default=0),
        Column("delivered", BigInteger, nullable=False, default=0),
        Column("attempts", Integer, nullable=False, default=0),
        Column("next_attempt", Float, nullable=False, default=0.0),
        Column("last_sent", Float, nullable=False, default=0.0),
        Column("error", Text, nullable=True),
        Column("end_at", Float, nullable=True),
    )
    Table(
        "subscription_event",
        md,
        Column("sub_id", String(64), primary_key=True),
        Column("number", BigInteger, primary_key=True),
        Column("res_type", String(64), nullable=False),
        Column("res_id", String(64), nullable=False),
        Column("version", Integer, nullable=False),
        Column("created", Boolean, nullable=False),
        Column("at", Float, nullable=False),
        Column("context", Text, nullable=True),
    )
    Table(
        "notification_lease",
        md,
        Column("name", String(32), primary_key=True),
        Column("owner", String(64), nullable=False),
        Column("until", Float, nullable=False),
    )
    return md


def upgrade() -> None:
    create_tables(op.get_bind(), notification_tables(), revision)


def downgrade() -> None:
    for name in TABLES:
        op.drop_table(name)
