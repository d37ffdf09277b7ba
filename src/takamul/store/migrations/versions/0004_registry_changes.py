"""The client registry's change journal (``takamul.mpi.schema.mpi_change``): one row per patient
whose record, person or reviewer decisions a registry transaction changed, numbered in commit
order, so every server process catches up with the others' linking (issue 17, several workers).

Revision ID: 0004_registry_changes
Revises: 0002_notifications
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table

from takamul.store.migrations import create_tables

revision = "0004_registry_changes"
down_revision: str | None = "0002_notifications"
branch_labels = None
depends_on = None
# a new table only: the server runs it at start (takamul.store.migrations.additive)
additive = True

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid; BigInteger on PostgreSQL.
_RowId = BigInteger().with_variant(Integer(), "sqlite")


def registry_change_tables() -> MetaData:
    md = MetaData()
    Table(
        "mpi_change",
        md,
        Column("seq", _RowId, primary_key=True, autoincrement=True),
        Column("patient_id", String(64), nullable=False),
    )
    return md


def upgrade() -> None:
    create_tables(op.get_bind(), registry_change_tables(), revision)


def downgrade() -> None:
    op.drop_table("mpi_change")
