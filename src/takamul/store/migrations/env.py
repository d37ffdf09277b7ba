"""Alembic's entry point: runs the revisions on the connection the runner hands over.

``takamul.store.migrations.upgrade`` opens the transaction (and on PostgreSQL takes the
migration lock) and passes its connection in ``config.attributes["connection"]``. Authoring a
new revision with the ``alembic`` command instead passes a database with ``-x db=URL`` and
compares it with every table the packages define (``catalog.application_metadata``).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

config = context.config


def _run(connection: Connection) -> None:
    target = None
    if context.get_x_argument(as_dictionary=True).get("db"):
        from takamul.store.migrations.catalog import application_metadata

        target = application_metadata()
    context.configure(
        connection=connection,
        target_metadata=target,
        # SQLite alters a table by copying it; batch mode writes that copy for us
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


given = config.attributes.get("connection")
if given is not None:
    _run(given)
else:
    url = context.get_x_argument(as_dictionary=True).get("db")
    if not url:
        raise SystemExit("pass the database: alembic -x db=sqlite:///path ...")
    with create_engine(url).connect() as conn:
        _run(conn)
        conn.commit()
