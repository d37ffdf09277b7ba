"""The distribution column of a sharded record: ``resource.compartment`` and
``resource_version.compartment``, the patient whose compartment holds the resource ('' for
none), so that the record can be distributed by patient on Citus with each patient's data on
one node (docs/scale.md). Writers keep it from now on (``takamul.store.indexing.compartment_of``).

Stored rows are filled in SQL by the same rule: a Patient's own id; else the least patient id
that the type's Patient-compartment parameters (R4 CompartmentDefinition patient) refer to in
the reference index; a version takes its resource's current value.

Not additive: it changes the tables that hold the record, so a PostgreSQL store with a record
is upgraded by ``takamul db upgrade`` (after a backup).

Revision ID: 0006_compartment
Revises: 0005_search_indexes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from takamul.fhir.definitions import definitions

revision = "0006_compartment"
down_revision: str | None = "0005_search_indexes"
branch_labels = None
depends_on = None
additive = False


def upgrade() -> None:
    for table in ("resource", "resource_version"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("compartment", sa.String(64), nullable=False, server_default="")
            )
    _fill()


def _fill() -> None:
    bind = op.get_bind()
    bind.execute(sa.text("UPDATE resource SET compartment = res_id WHERE res_type = 'Patient'"))
    for resource_type, params in sorted(definitions().patient_compartment().items()):
        if resource_type == "Patient":
            continue
        names = ", ".join(f"'{p}'" for p in params if p.replace("-", "").isalnum())
        if not names:
            continue
        bind.execute(
            sa.text(
                "UPDATE resource SET compartment = COALESCE((SELECT min(x.target_id)"
                " FROM sp_reference x WHERE x.rid = resource.rid AND x.target_type = 'Patient'"
                f" AND x.param IN ({names})), '') WHERE res_type = :t"
            ),
            {"t": resource_type},
        )
    bind.execute(
        sa.text(
            "UPDATE resource_version SET compartment = COALESCE((SELECT r.compartment"
            " FROM resource r WHERE r.rid = resource_version.rid), '')"
        )
    )


def downgrade() -> None:
    for table in ("resource", "resource_version"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("compartment")
