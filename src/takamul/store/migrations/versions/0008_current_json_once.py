"""The current version's JSON stored once: ``resource_version.content`` is NULL while the version
is current, its JSON being the resource's (``resource.content``), and is filled when the next
version or a deletion replaces it. Readers take a version's JSON through
``takamul.store.schema.version_content``.

Every resource's JSON was held twice, in ``resource`` and in its current version's row: about
1.1 KB of the 5.8 KB a resource took at 10,000 persons on PostgreSQL (docs/scale.md).

Not additive: it rewrites every current version row, so a PostgreSQL store with a record is
upgraded by ``takamul db upgrade`` (after a backup). PostgreSQL reuses the freed space for new
rows; ``VACUUM FULL resource_version`` returns it to the operating system (it locks the table
while it runs), as ``VACUUM`` does for SQLite.

Revision ID: 0008_current_json_once
Revises: 0007_search_statistics
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_current_json_once"
down_revision: str | None = "0007_search_statistics"
branch_labels = None
depends_on = None
additive = False

_IS_CURRENT = (
    "SELECT 1 FROM resource r WHERE r.rid = resource_version.rid "
    "AND r.version = resource_version.version AND r.content IS NOT NULL"
)


def upgrade() -> None:
    op.execute(
        sa.text(
            "UPDATE resource_version SET content = NULL "
            f"WHERE content IS NOT NULL AND EXISTS ({_IS_CURRENT})"
        )
    )


def downgrade() -> None:
    op.get_bind().execute(
        sa.text(
            "UPDATE resource_version SET content = (SELECT r.content FROM resource r "
            "WHERE r.rid = resource_version.rid AND r.version = resource_version.version) "
            "WHERE content IS NULL AND deleted = :f"
        ),
        {"f": False},
    )
