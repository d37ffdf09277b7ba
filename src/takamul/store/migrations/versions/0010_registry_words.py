"""The patient finder's words in the database (``takamul.mpi.schema.mpi_word``), beside the
registry's candidate index (0009): the web application's name search looks registrations up
here with the store index instead of holding every registration's name words in each server
process (docs/mpi.md).

Additive: a new table only. A store indexed before it has no word rows: the next server start
finds that (``StoredCandidateIndex.agrees_with_model``) and indexes every Patient again.

Revision ID: 0010_registry_words
Revises: 0009_registry_index
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import Boolean, Column, Index, MetaData, PrimaryKeyConstraint, String, Table, Text

from takamul.store.migrations import create_tables

revision = "0010_registry_words"
down_revision: str | None = "0009_registry_index"
branch_labels = None
depends_on = None
additive = True


def registry_word_tables() -> MetaData:
    md = MetaData()
    Table(
        "mpi_word",
        md,
        Column(
            "skel",
            String(64).with_variant(String(64, collation="C"), "postgresql"),
            nullable=False,
        ),
        Column("patient_id", String(64), nullable=False),
        Column("norm", Text, nullable=False),
        Column("arabic", Boolean, nullable=False),
        PrimaryKeyConstraint("skel", "patient_id", "norm", name="pk_mpi_word"),
        # covering: a search reads its candidates' words from the index alone
        Index("ix_mpi_word_patient", "patient_id", "skel", "norm", "arabic"),
    )
    return md


def upgrade() -> None:
    create_tables(op.get_bind(), registry_word_tables(), revision)


def downgrade() -> None:
    op.drop_table("mpi_word")
