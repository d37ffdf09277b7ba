"""The client registry's candidate index in the database (``takamul.mpi.schema``: ``mpi_indexed``,
``mpi_block``, ``mpi_name``), for ``TAKAMUL_REGISTRY_INDEX=store``: every server process looks
candidates up in these tables instead of holding every registration in its memory (issue 17,
several server processes at national scale; docs/mpi.md).

Additive: new tables only. A store that has none of their rows yet is indexed by the first
server start or ``takamul catch-up`` with the store index chosen.

Revision ID: 0009_registry_index
Revises: 0008_current_json_once
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from takamul.store.migrations import create_tables

revision = "0009_registry_index"
down_revision: str | None = "0008_current_json_once"
branch_labels = None
depends_on = None
additive = True


def registry_index_tables() -> MetaData:
    md = MetaData()
    Table(
        "mpi_indexed",
        md,
        Column("patient_id", String(64), primary_key=True),
        Column("version", Integer, nullable=False),
        Column("national_id", String(64), nullable=True),
        Index("ix_mpi_indexed_national_id", "national_id"),
    )
    Table(
        "mpi_block",
        md,
        Column("slot", BigInteger, nullable=False),
        Column("patient_id", String(64), nullable=False),
        PrimaryKeyConstraint("slot", "patient_id", name="pk_mpi_block"),
        Index("ix_mpi_block_patient", "patient_id"),
    )
    Table(
        "mpi_name",
        md,
        Column("patient_id", String(64), nullable=False),
        Column("field", String(16), nullable=False),
        Column("value", Text, nullable=False),
        PrimaryKeyConstraint("patient_id", "field", "value", name="pk_mpi_name"),
    )
    return md


def upgrade() -> None:
    create_tables(op.get_bind(), registry_index_tables(), revision)


def downgrade() -> None:
    for table in ("mpi_name", "mpi_block", "mpi_indexed"):
        op.drop_table(table)
