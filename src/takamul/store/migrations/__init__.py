"""Schema migrations of the shared record's database, with Alembic.

Every change of the schema is a revision under ``versions/`` (shipped in the package). One
runner serves the server's start-up and ``takamul db upgrade``:

- a new, empty database is brought to the newest revision (the head);
- a store made before migrations existed (its tables present, no ``alembic_version``) is
  adopted at the baseline only when every table it holds equals the baseline's definition,
  compared by reading both back from the database (a different table is reported, not guessed
  at); the tables it lacked are created, as ``create_all`` did before;
- a store behind the head is upgraded in one transaction. At start-up that happens on SQLite
  (one process owns the file; a copy of a store with a record is kept beside it first when a
  revision changes its tables), on a PostgreSQL store that holds no resources yet, and for
  revisions marked ``additive`` (they only create tables: nothing of the record changes); a
  PostgreSQL store holding a record with any other revision to run is refused with the command
  to run (docs/operations.md: such a migration is run deliberately, after a backup).

On PostgreSQL the migration holds a transaction-scoped advisory lock, so several server
processes or hosts starting together migrate once and the others wait, then find it done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, inspect, text

from takamul.fhir.outcome import FhirError
from takamul.store.migrations.compare import VERSION_TABLE, describe, differences

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "BASELINE",
    "SchemaError",
    "SchemaState",
    "additive",
    "adoption_problems",
    "create_tables",
    "head_revision",
    "prepare_at_start",
    "read_state",
    "table_problems",
    "upgrade",
]

log = logging.getLogger("takamul.migrations")

SCRIPTS = Path(__file__).resolve().parent
BASELINE = "0001_baseline"
# pg_advisory_xact_lock key of schema migrations ("takamul" in ASCII, fits a bigint)
MIGRATION_LOCK = 0x74616B616D756C


class SchemaError(FhirError):
    """The database's schema cannot be used by this release as it stands."""

    def __init__(self, message: str) -> None:
        super().__init__(503, message, "exception")


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a database's schema stands against this release's revisions."""

    dialect: str
    current: str | None  # the revision in alembic_version; None before migrations
    head: str
    tables: frozenset[str]  # the tables present, Alembic's own excluded
    holds_record: bool  # a resource has been stored

    @property
    def new(self) -> bool:
        return self.current is None and not self.tables

    @property
    def before_migrations(self) -> bool:
        return self.current is None and bool(self.tables)

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    def pending(self) -> list[str]:
        """Revisions still to run, oldest first (adoption counts as the baseline)."""
        return pending_revisions(self.current)

    def describe(self) -> str:
        if self.new:
            return "empty (no tables)"
        if self.before_migrations:
            return "from before schema migrations (no alembic_version table)"
        return f"at revision {self.current}"


def config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def _scripts() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config())


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None, "no revisions in takamul/store/migrations/versions"
    return str(head)


def pending_revisions(current: str | None) -> list[str]:
    """Revision ids from after ``current`` up to the head, oldest first."""
    walked = _scripts().walk_revisions(base="base", head="heads")
    chain = [str(s.revision) for s in walked][::-1]
    if current is None:
        return chain
    if current not in chain:
        raise SchemaError(
            f"The database is at revision {current}, which this release does not know: it was "
            "upgraded by a newer release. Run that release, or restore a backup made before"
        )
    return chain[chain.index(current) + 1 :]


def additive(revision: str) -> bool:
    """A revision that only creates tables (and their indexes) that did not exist: it cannot
    lose data nor hold locks on the record's tables, so the server may run it at start. Every
    other revision (a changed column, a data migration) is the operator's to run."""
    return bool(getattr(_scripts().get_revision(revision).module, "additive", False))


def read_state(conn: Connection) -> SchemaState:
    tables = frozenset(set(inspect(conn).get_table_names()) - {VERSION_TABLE})
    current = None
    if VERSION_TABLE in inspect(conn).get_table_names():
        current = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    holds = "resource" in tables and (
        conn.execute(text("SELECT 1 FROM resource LIMIT 1")).first() is not None
    )
    return SchemaState(conn.dialect.name, current, head_revision(), tables, holds)


def adoption_problems(conn: Connection) -> list[str]:
    """How the tables of a store made before migrations differ from the baseline's (empty:
    they are the baseline's tables as created then, so it may be adopted)."""
    from takamul.store.migrations.baseline import baseline_metadata

    return table_problems(conn, baseline_metadata())


def table_problems(conn: Connection, frozen: MetaData) -> list[str]:
    """How the tables of ``frozen`` that the database already holds differ from their frozen
    definitions, both read back from a database (empty: they are equal, or none is there)."""
    present = set(inspect(conn).get_table_names()) & set(frozen.tables)
    if not present:
        return []
    have = describe(conn, present)
    want = _frozen_shapes(conn, frozen, present)
    extra: list[str] = []
    if conn.dialect.name == "postgresql":
        # a store holds other sequences too; those of the tables present must be there
        want_sequences = set(want.pop("(sequences)")["names"])
        have_sequences = set(have.pop("(sequences)")["names"])
        extra = [f"sequence {name}: missing" for name in sorted(want_sequences - have_sequences)]
    return differences(have, want) + extra


def create_tables(conn: Connection, frozen: MetaData, revision: str) -> None:
    """What a revision that adds tables runs: each table of ``frozen`` is created, or, when the
    store already has it (a store made before migrations by a release that created it with
    ``create_all``), kept only if it equals the frozen definition."""
    problems = table_problems(conn, frozen)
    if problems:
        raise SchemaError(
            f"Revision {revision} makes tables the database already holds in another shape: "
            + "; ".join(problems[:20])
        )
    frozen.create_all(conn)


def _frozen_shapes(conn: Connection, frozen: MetaData, present: set[str]) -> dict[str, Any]:
    """Frozen tables as this dialect creates them, read back like the store's."""
    tables = [frozen.tables[name] for name in sorted(present)]
    if conn.dialect.name == "sqlite":
        scratch_engine = create_engine("sqlite://")
        with scratch_engine.connect() as scratch:
            frozen.create_all(scratch, tables=tables)
            return describe(scratch, present)
    # PostgreSQL: made in a schema of its own on a second connection, in a transaction that is
    # rolled back (PostgreSQL's DDL is transactional), so nothing of it is ever committed
    schema = "takamul_baseline_probe"
    with conn.engine.connect() as probe:
        probe.exec_driver_sql(f"CREATE SCHEMA {schema}")
        try:
            frozen.create_all(
                probe.execution_options(schema_translate_map={None: schema}), tables=tables
            )
            return describe(probe, present, schema=schema)
        finally:
            probe.rollback()


@dataclass(frozen=True, slots=True)
class Upgrade:
    before: SchemaState
    after: str
    applied: list[str]

    @property
    def adopted(self) -> bool:
        return self.before.before_migrations


def upgrade(engine: Engine, target: str = "head") -> Upgrade:
    """Bring the database to ``target`` in one transaction (adopting a store made before
    migrations at the baseline first); what it was, what it is, what ran."""
    from alembic import command

    with engine.connect() as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        before = read_state(conn)
        if before.before_migrations:
            problems = adoption_problems(conn)
            if problems:
                raise SchemaError(
                    "The database holds tables of Takamul that differ from those of the release "
                    "before migrations, so it cannot be adopted at the baseline: "
                    + "; ".join(problems[:20])
                )
        applied = before.pending() if target == "head" else [target]
        if before.up_to_date and target == "head":
            return Upgrade(before, before.head, [])
        command.upgrade(config(conn), target)
        after = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one()
    if applied:
        log.info("schema upgraded from %s to %s (%s)", before.describe(), after, applied)
    return Upgrade(before, str(after), applied)


def _keep_a_copy(engine: Engine, revision: str) -> None:
    """Before the server changes an embedded store's tables, a copy of it beside the file
    (``<store>.before-<revision>``), kept until the operator removes it."""
    from takamul.store.backup import backup_sqlite

    database = engine.url.database
    if not database or database == ":memory:":
        return
    source = Path(database)
    target = source.with_name(f"{source.name}.before-{revision}")
    if not target.exists():
        backup_sqlite(source, target)
        log.warning("copied %s to %s before migrating it to %s", source, target, revision)


def prepare_at_start(engine: Engine, where: str) -> None:
    """The server's and the CLI's start: the schema at the head, or a clear refusal.

    ``where`` names the database in the message (with its password hidden).
    """
    with engine.connect() as conn:
        state = read_state(conn)
        conn.rollback()
    if state.up_to_date:
        return
    pending = state.pending()
    # adopting a store made before migrations records what it already is (and adds missing
    # tables, as create_all did); additive revisions only add tables: neither changes the record
    changing = [r for r in pending if not additive(r)]
    if state.dialect == "sqlite" and state.holds_record and changing:
        _keep_a_copy(engine, changing[0])
    if state.dialect == "sqlite" or not state.holds_record or not changing:
        upgrade(engine)
        return
    raise SchemaError(
        f"The PostgreSQL store {where} is {state.describe()}; this release needs revision "
        f"{state.head}, and {', '.join(changing)} "
        f"{'changes' if len(changing) == 1 else 'change'} tables that hold the record. Back it "
        "up (pg_dump -Fc), then run: takamul db upgrade --db URL (see docs/operations.md). The "
        "server does not run such a migration on a national store on its own"
    )
