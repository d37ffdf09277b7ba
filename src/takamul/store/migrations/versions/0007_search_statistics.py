"""Statistics on the columns of a search clause taken together (PostgreSQL only).

A clause reads the index tables by resource type, parameter and value, and those columns are
far from independent (a LOINC code is an Observation's ``code`` and nothing else). The planner
multiplied their selectivities: ``Observation?code=http://loinc.org|2093-3`` was estimated at
391 rows (9,681 at 10k persons) and ``status=final`` at 14,501 (154,321), which is what
``_total=estimate`` reports for a large result. With these statistics: 9,496 and 132,171
(bench/results/2026-12-05-vm-search-plans.md). SQLite has nothing like them.

Additive: creating statistics and ANALYZE take no lock that stops reads or writes and change
nothing of the record, so the server may run it at start.

Revision ID: 0007_search_statistics
Revises: 0006_compartment
"""

from __future__ import annotations

from alembic import op

revision = "0007_search_statistics"
down_revision: str | None = "0006_compartment"
branch_labels = None
depends_on = None
additive = True

# statistics object -> (table, columns): the columns a clause on that table fixes together
STATISTICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "st_sp_token_clause": ("sp_token", ("res_type", "param", "system", "code")),
    "st_sp_reference_clause": ("sp_reference", ("res_type", "param", "target_type")),
    "st_sp_string_clause": ("sp_string", ("res_type", "param")),
    "st_sp_date_clause": ("sp_date", ("res_type", "param")),
    "st_sp_quantity_clause": ("sp_quantity", ("res_type", "param", "system", "code")),
    "st_sp_uri_clause": ("sp_uri", ("res_type", "param")),
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, (table, columns) in STATISTICS.items():
        op.execute(
            f"CREATE STATISTICS IF NOT EXISTS {name} (mcv, dependencies) "
            f"ON {', '.join(columns)} FROM {table}"
        )
    # the new statistics are empty until the tables are analysed
    for table in sorted({table for table, _ in STATISTICS.values()}):
        op.execute(f"ANALYZE {table}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in STATISTICS:
        op.execute(f"DROP STATISTICS IF EXISTS {name}")
