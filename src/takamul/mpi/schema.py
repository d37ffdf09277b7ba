"""The client registry's own tables beside the shared record: who belongs to which person,
the reviewers' decisions, the review queue and the log of every change of membership.

Membership is a table with the patient as primary key, so one source record can never belong
to two persons; the FHIR ``Person`` resources (the golden records) are written from it in the
same transaction.
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

from takamul.store.schema import RowId

__all__ = [
    "mpi_block",
    "mpi_change",
    "mpi_decision",
    "mpi_event",
    "mpi_indexed",
    "mpi_member",
    "mpi_metadata",
    "mpi_model",
    "mpi_name",
    "mpi_review",
    "mpi_word",
]

mpi_metadata = MetaData()

mpi_member = Table(
    "mpi_member",
    mpi_metadata,
    Column("patient_id", String(64), primary_key=True),
    Column("person_id", String(64), nullable=False),
    Column("probability", Float, nullable=False),
    # set by a reviewer: automatic re-linking never moves this record
    Column("manual", Boolean, nullable=False, default=False),
    Column("updated", Float, nullable=False),
    Index("ix_mpi_member_person", "person_id"),
)

# A reviewer's decision on a pair (patient_a < patient_b): 'link' or 'not-duplicate'.
mpi_decision = Table(
    "mpi_decision",
    mpi_metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
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

mpi_review = Table(
    "mpi_review",
    mpi_metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("patient_a", String(64), nullable=False),
    Column("patient_b", String(64), nullable=False),
    Column("probability", Float, nullable=False),
    Column("evidence", Text, nullable=False),  # JSON: level and bits per field
    Column("status", String(16), nullable=False),  # open | linked | not-duplicate | resolved
    Column("created", Float, nullable=False),
    Column("decided_by", Text, nullable=True),
    Column("decided_at", Float, nullable=True),
    UniqueConstraint("patient_a", "patient_b", name="uq_mpi_review_pair"),
    Index("ix_mpi_review_status", "status", "probability"),
)

mpi_event = Table(
    "mpi_event",
    mpi_metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("actor", Text, nullable=False),
    Column("reason", Text, nullable=True),
    Column("detail", Text, nullable=False),  # JSON: moves, decisions added and retired
    Column("reverted_by", Integer, nullable=True),
)

mpi_model = Table(
    "mpi_model",
    mpi_metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("created", Float, nullable=False),
    Column("model", LargeBinary, nullable=False),
)

# The registry's change journal: a row for each patient whose record, person or reviewer
# decisions a transaction changed. Rows are only written under the registry's lock (a
# PostgreSQL advisory lock held to the end of the transaction; SQLite's one writer), so their
# numbers follow commit order: a server process that has applied every change up to ``seq`` n
# finds each change another process commits later above n, and reloads just those patients.
mpi_change = Table(
    "mpi_change",
    mpi_metadata,
    Column("seq", RowId, primary_key=True, autoincrement=True),
    Column("patient_id", String(64), nullable=False),
)

# The candidate index in the database (``Settings.registry_index = "store"``,
# ``takamul.mpi.stored_index``), shared by every server process instead of a copy in each: the
# Patients indexed (at which version, with their national ID), each one's block keys as 64-bit
# slots, and the name values its term frequencies count. Written in the transaction that links
# the Patient, so the index never shows a registration the database does not have.
mpi_indexed = Table(
    "mpi_indexed",
    mpi_metadata,
    Column("patient_id", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("national_id", String(64), nullable=True),
    Index("ix_mpi_indexed_national_id", "national_id"),
)

mpi_block = Table(
    "mpi_block",
    mpi_metadata,
    Column("slot", BigInteger, nullable=False),
    Column("patient_id", String(64), nullable=False),
    PrimaryKeyConstraint("slot", "patient_id", name="pk_mpi_block"),
    Index("ix_mpi_block_patient", "patient_id"),
)

mpi_name = Table(
    "mpi_name",
    mpi_metadata,
    Column("patient_id", String(64), nullable=False),
    Column("field", String(16), nullable=False),
    Column("value", Text, nullable=False),
    PrimaryKeyConstraint("patient_id", "field", "value", name="pk_mpi_name"),
)

# Skeletons compare byte by byte on PostgreSQL, so a prefix is one range of the primary key
# whatever the database's locale (SQLite's default collation already is binary).
Skeleton = String(64).with_variant(String(64, collation="C"), "postgresql")

# The patient finder's words (``takamul.mpi.stored_finder``): each indexed registration's name
# words under their cross-script skeletons (``names.NameToken``), written with its other index
# rows, so the web application's search box looks names up here instead of every server
# process holding every registration's words (about 1 KB each).
mpi_word = Table(
    "mpi_word",
    mpi_metadata,
    Column("skel", Skeleton, nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("norm", Text, nullable=False),
    Column("arabic", Boolean, nullable=False),
    PrimaryKeyConstraint("skel", "patient_id", "norm", name="pk_mpi_word"),
    # covering: a search reads its candidates' words from the index alone (after a VACUUM:
    # 5,000 registrations' words in 21 ms against 184 ms from the table, at 220,000)
    Index("ix_mpi_word_patient", "patient_id", "skel", "norm", "arabic"),
)
