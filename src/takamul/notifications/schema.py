"""The notification tables beside the shared record.

- ``notification_outbox``: one row per stored change that a topic may announce, written by the
  write hook in the transaction that stores the change (so a change and its announcement commit
  or roll back together: nothing is lost in a crash, nothing is announced that was not stored).
- ``subscription_channel``: the delivery state of each Subscription (endpoint, filters, the
  subscriber's access, status, event counter, how far delivery has got, back-off).
- ``subscription_event``: every numbered event of a subscription, kept for ``$events`` and
  for redelivery until the subscriber has it.
- ``notification_lease``: which server process dispatches (one at a time across workers).
"""

from __future__ import annotations

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

from takamul.store.schema import RowId

__all__ = [
    "notification_lease",
    "notification_outbox",
    "notifications_metadata",
    "subscription_channel",
    "subscription_event",
]

notifications_metadata = MetaData()

notification_outbox = Table(
    "notification_outbox",
    notifications_metadata,
    Column("seq", RowId, primary_key=True, autoincrement=True),
    Column("topics", Text, nullable=False),  # space-separated topic codes the change may fire
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created", Boolean, nullable=False),  # a create (POST) rather than an update
    Column("at", Float, nullable=False),  # epoch seconds of the commit's write
    Column("processed", Boolean, nullable=False, default=False),
    Index("ix_outbox_pending", "processed", "seq"),
)

subscription_channel = Table(
    "subscription_channel",
    notifications_metadata,
    Column("sub_id", String(64), primary_key=True),
    Column("topic", String(64), nullable=False),  # the topic's code (topics.TOPICS)
    Column("filters", Text, nullable=False),  # JSON [[param, value], ...], ANDed
    Column("endpoint", Text, nullable=False),
    Column("headers", Text, nullable=False),  # JSON ["Name: value", ...]
    Column("content", String(16), nullable=False),  # empty | id-only | full-resource
    Column("heartbeat", Integer, nullable=True),  # seconds; None = no heartbeats
    Column("timeout", Integer, nullable=False),  # seconds a delivery may take
    Column("max_count", Integer, nullable=False),  # events per notification
    Column("status", String(16), nullable=False),  # requested | active | error | off
    # the endpoint has answered a handshake since the channel was (re)made
    Column("handshake_done", Boolean, nullable=False, default=False),
    Column("subscriber", Text, nullable=True),  # JSON of the subscriber's access; None = system
    Column("since", Float, nullable=False),  # changes stored from then on are announced
    Column("events", BigInteger, nullable=False, default=0),  # events since subscription start
    Column("delivered", BigInteger, nullable=False, default=0),  # highest event acknowledged
    Column("attempts", Integer, nullable=False, default=0),  # failed attempts in a row
    Column("next_attempt", Float, nullable=False, default=0.0),
    Column("last_sent", Float, nullable=False, default=0.0),
    Column("error", Text, nullable=True),
    Column("end_at", Float, nullable=True),  # Subscription.end: no events after it
)

subscription_event = Table(
    "subscription_event",
    notifications_metadata,
    Column("sub_id", String(64), primary_key=True),
    Column("number", BigInteger, primary_key=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created", Boolean, nullable=False),
    Column("at", Float, nullable=False),
    Column("context", Text, nullable=True),  # JSON list of additional-context references
)

notification_lease = Table(
    "notification_lease",
    notifications_metadata,
    Column("name", String(32), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("until", Float, nullable=False),
)
