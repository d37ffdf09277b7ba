"""Baseline: the schema as release 6c83c72 created it with ``create_all`` at start-up.

The tables are frozen in ``takamul.store.migrations.baseline``. A store made before migrations
is adopted only when every table it holds equals those tables (the runner checks before it
starts, ``create_tables`` again here); then just the tables that store lacked are created.

The audit log's append-only triggers and its chain head row are not schema of this revision:
the security package installs them, idempotently, whenever it opens the log
(``takamul.security.audit.create_audit_tables``), as it did before migrations.

Revision ID: 0001_baseline
Revises: (none)
"""

from __future__ import annotations

from alembic import op

from takamul.store.migrations import create_tables
from takamul.store.migrations.baseline import baseline_metadata

revision = "0001_baseline"
down_revision: str | None = None
branch_labels = None
depends_on = None
# it creates only the tables a store lacks; a table it has is kept only when equal
additive = True


def upgrade() -> None:
    create_tables(op.get_bind(), baseline_metadata(), revision)


def downgrade() -> None:
    # Dropping the whole record is not a migration; restore a backup instead.
    raise NotImplementedError("the baseline is not reversible: restore a backup instead")
