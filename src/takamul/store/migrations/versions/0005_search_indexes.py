"""Search indexes that answer a clause alone: the value indexes of the string, token, date and
reference index tables end with the rid, so a search's candidates and a count come from an
index-only scan (PostgreSQL) or a covering index (SQLite) instead of a table read per row; the
date indexes hold both ends of the range, so a ``ge``/``le`` clause is checked inside the index.

Each new index replaces the one it extends (the old one is its prefix, so nothing used it any
more). Measured at 10k persons (bench/results/2026-12-05-vm-search-plans.md): the token index
grows from 25 to 131 MB (PostgreSQL deduplicates equal keys; keys with the rid are unique) and
an insert into sp_token costs about 40 % more; the date indexes stay the same size.

Not additive: it rebuilds indexes of the tables that hold the record, so a PostgreSQL store with
a record is upgraded by ``takamul db upgrade`` (after a backup), which holds each table's write
lock while its index is built (about 15 s in all at 10k persons, 340k resources).

Revision ID: 0005_search_indexes
Revises: 0004_registry_changes
"""

from __future__ import annotations

from alembic import op

revision = "0005_search_indexes"
down_revision: str | None = "0004_registry_changes"
branch_labels = None
depends_on = None
additive = False

# (table, the index replaced and its columns after res_type and param, the new columns)
CHANGES: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("sp_string", "ix_sp_string_normalized", ("normalized",), ("normalized", "rid")),
    ("sp_token", "ix_sp_token_code_system", ("code", "system"), ("code", "system", "rid")),
    ("sp_date", "ix_sp_date_low", ("low",), ("low", "high", "rid")),
    ("sp_date", "ix_sp_date_high", ("high",), ("high", "low", "rid")),
    (
        "sp_reference",
        "ix_sp_reference_target_id_target_type",
        ("target_id", "target_type"),
        ("target_id", "target_type", "rid"),
    ),
)


def _name(table: str, columns: tuple[str, ...]) -> str:
    return f"ix_{table}_{'_'.join(columns)}"


def upgrade() -> None:
    for table, old, _, new in CHANGES:
        op.drop_index(old, table_name=table)
        op.create_index(_name(table, new), table, ["res_type", "param", *new])
    _analyze()


def downgrade() -> None:
    for table, old, columns, new in CHANGES:
        op.drop_index(_name(table, new), table_name=table)
        op.create_index(old, table, ["res_type", "param", *columns])
    _analyze()


def _analyze() -> None:
    # the planner's figures for the new indexes, before the first search needs them
    for table in ("sp_string", "sp_token", "sp_date", "sp_reference"):
        op.execute(f"ANALYZE {table}")
