"""Schema migrations on both stores: the migrated schema is exactly the packages' tables, and a
store written by the previous release (6c83c72, before migrations) is adopted, upgraded and read
back whole: resources, searches, history, the audit chain and the search index."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, MetaData, create_engine, select, text
from typer.testing import CliRunner

from takamul.cli import app
from takamul.security.audit import AuditLog
from takamul.settings import Settings
from takamul.store import Store
from takamul.store.dbcheck import check_index
from takamul.store.engine import make_engines
from takamul.store.migrations import (
    BASELINE,
    SchemaError,
    adoption_problems,
    head_revision,
    read_state,
    upgrade,
)
from takamul.store.migrations.catalog import application_metadata
from takamul.store.migrations.compare import describe, differences
from takamul.store.schema import resource_version
from tests.server import postgres_database

RELEASE = "6c83c72"
FIXTURE = Path(__file__).parent / "data" / "migrations"
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from _empty(request.param, tmp_path, "a")


@pytest.fixture
def other_empty_url(empty_url: str, tmp_path: Path) -> Iterator[str]:
    """A second empty database of the same kind as ``empty_url``."""
    yield from _empty("sqlite" if empty_url.startswith("sqlite") else "postgresql", tmp_path, "b")


def _empty(kind: str, tmp_path: Path, name: str) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / name}.sqlite"
    else:
        with postgres_database() as url:
            yield url


def _engine(url: str) -> Engine:
    return make_engines(url)[0]


def _shape(url: str) -> dict[str, Any]:
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return describe(conn)
    finally:
        engine.dispose()


def test_migrations_make_exactly_the_tables_the_packages_define(
    empty_url: str, other_empty_url: str
) -> None:
    """Every table of every package, with its columns, types (COLLATE "C" on PostgreSQL), keys,
    indexes and sequences, as create_all would make it: a table or column added to a package
    without a migration fails here."""
    migrated = _engine(empty_url)
    done = upgrade(migrated)
    migrated.dispose()
    assert done.applied[0] == BASELINE and done.after == head_revision()
    created = _engine(other_empty_url)
    for md in application_metadata():
        md.create_all(created)
    created.dispose()
    have, want = _shape(empty_url), _shape(other_empty_url)
    assert differences(have, want) == []
    assert len(have) >= 33
    if empty_url.startswith("postgresql"):
        assert have["sp_string"]["columns"]["normalized"][0] == 'TEXT COLLATE "C"'
        assert "resource_rid_seq" in have["(sequences)"]["names"]


# -- the previous release's store ----------------------------------------------------------------


def _fixture_rows() -> dict[str, Any]:
    rows: dict[str, Any] = json.loads((FIXTURE / f"{RELEASE}-rows.json").read_text())
    return rows


def _value(value: Any) -> Any:
    return base64.b64decode(value["b64"]) if isinstance(value, dict) else value


def make_previous_release_store(url: str) -> None:
    """The store as release 6c83c72 left it: its DDL on this dialect, then its rows."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    dialect = engine.dialect.name
    ddl = (FIXTURE / f"{RELEASE}-{dialect}.sql").read_text(encoding="utf-8").split("\n;;\n")
    with engine.begin() as conn:
        for statement in ddl:
            if statement.strip():
                conn.exec_driver_sql(statement)
        tables = MetaData()
        tables.reflect(conn)
        for name, data in _fixture_rows().items():
            if data["rows"]:
                conn.execute(
                    tables.tables[name].insert(),
                    [
                        dict(zip(data["columns"], map(_value, row), strict=True))
                        for row in data["rows"]
                    ],
                )
        if dialect == "postgresql":
            # as pg_restore leaves them: each serial sequence after the rows loaded
            for table in tables.tables.values():
                for column in table.columns:
                    if "nextval" in str(column.server_default.arg if column.server_default else ""):
                        conn.execute(
                            text(
                                f"SELECT setval(pg_get_serial_sequence('{table.name}', "
                                f"'{column.name}'), (SELECT COALESCE(MAX({column.name}), 0) + 1 "
                                f"FROM {table.name}), false)"
                            )
                        )
    engine.dispose()


def test_the_previous_release_store_is_adopted_upgraded_and_read_back(
    empty_url: str, other_empty_url: str
) -> None:
    make_previous_release_store(empty_url)
    engine = _engine(empty_url)
    with engine.connect() as conn:
        state = read_state(conn)
        assert state.before_migrations and state.holds_record
        assert adoption_problems(conn) == []
    engine.dispose()

    result = CliRunner().invoke(app, ["db", "upgrade", "--db", empty_url])
    assert result.exit_code == 0, result.output
    assert "adopted" in result.output and head_revision() in result.output
    assert "ran 0001_baseline, 0002_notifications" in result.output
    again = CliRunner().invoke(app, ["db", "upgrade", "--db", empty_url])
    assert again.exit_code == 0 and "already at" in again.output

    # the upgraded store has the schema of a new one, missing tables created
    upgrade(fresh := _engine(other_empty_url))
    fresh.dispose()
    assert differences(_shape(empty_url), _shape(other_empty_url)) == []

    rows = _fixture_rows()
    store = Store(Settings.from_env(database_url=empty_url, auth=False))
    try:
        _read_back(store, rows)
        assert check_index(store).clean
    finally:
        store.close()
    log = AuditLog.from_url(empty_url)
    try:
        verified = log.verify()
    finally:
        log.close()
    assert verified.ok, verified.reason
    assert verified.checked == len(rows["audit_log"]["rows"]) == 5


def _read_back(store: Store, rows: dict[str, Any]) -> None:
    columns = rows["resource"]["columns"]
    resources = [dict(zip(columns, map(_value, r), strict=True)) for r in rows["resource"]["rows"]]
    with store.reading() as session:
        for stored in resources:
            if stored["deleted"]:
                with pytest.raises(Exception, match="deleted"):
                    session.read(stored["res_type"], stored["res_id"])
            else:
                read = session.read(stored["res_type"], stored["res_id"])
                assert read.content == stored["content"], stored["res_id"]
                assert read.version == stored["version"]
        noura = session.search(session.parse_search("Patient", [("name", "noura")]))
        assert sorted(r.id for r in noura.matches) == ["p1", "p3"]
        high = session.search(
            session.parse_search(
                "Observation", [("subject", "Patient/p1"), ("value-quantity", "gt140")]
            )
        )
        assert [r.id for r in high.matches] == ["o1"]
        dated = session.search(session.parse_search("Observation", [("date", "ge2024-02-01")]))
        assert sorted(r.id for r in dated.matches) == ["o2", "o3"]
        versions, total = session.history("Observation", "o2", None, 10, 0)
        assert (
            total == 2
            and orjson.loads(versions[0].content or b"{}")["valueQuantity"]["value"] == 135
        )
        # 0008: the current version's JSON is the resource's alone, the past one's its own
        own = dict(
            session.conn.execute(
                select(resource_version.c.version, resource_version.c.content).where(
                    resource_version.c.res_type == "Observation",
                    resource_version.c.res_id == "o2",
                )
            ).all()
        )
        assert own[2] is None and own[1] == versions[1].content is not None
        assert session.vread("Observation", "o2", "2").content == versions[0].content
        persons = session.search(session.parse_search("Person", []))
        assert len(persons.matches) == 2  # p1 and p3 are one person
    # the upgraded store takes new writes beside the old ones
    store.write(lambda s: s.update("Patient", "p4", {"resourceType": "Patient", "id": "p4"}, None))


def test_a_store_whose_tables_differ_is_not_adopted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'odd.sqlite'}"
    make_previous_release_store(url)
    engine = _engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE resource ADD COLUMN colour TEXT")
        conn.exec_driver_sql("DROP INDEX ix_sp_token_code_system")
    with pytest.raises(SchemaError) as refused:
        upgrade(engine)
    engine.dispose()
    message = str(refused.value)
    assert "resource.colour" in message and "ix_sp_token_code_system" in message
    result = CliRunner().invoke(app, ["db", "upgrade", "--db", url])
    assert result.exit_code == 1 and "cannot be adopted" in result.output


def test_start_up_adopts_the_previous_release_and_runs_additive_revisions(
    empty_url: str,
) -> None:
    """SQLite is brought to the head at start; a PostgreSQL record is adopted and upgraded by
    ``takamul db upgrade`` because 0005 rebuilds the search indexes of the record's tables,
    0006 adds the compartment column to them and 0008 keeps the current JSON once."""
    make_previous_release_store(empty_url)
    settings = Settings.from_env(database_url=empty_url, auth=False)
    if empty_url.startswith("postgresql"):
        with pytest.raises(
            SchemaError,
            match="0005_search_indexes, 0006_compartment, 0008_current_json_once change tables",
        ):
            Store(settings)
        assert CliRunner().invoke(app, ["db", "upgrade", "--db", empty_url]).exit_code == 0
    Store(settings).close()
    engine = _engine(empty_url)
    with engine.connect() as conn:
        assert read_state(conn).up_to_date
    engine.dispose()


def test_start_up_refuses_a_postgresql_record_with_a_changing_revision_pending(
    empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were 0002 a revision that changes the record's tables, the server would upgrade SQLite
    itself (keeping a copy first) and refuse PostgreSQL with the command to run, which then
    works."""
    # 0002 alone changes tables: the revisions after it stay additive
    monkeypatch.setattr(
        "takamul.store.migrations.additive", lambda revision: revision != "0002_notifications"
    )
    make_previous_release_store(empty_url)
    settings = Settings.from_env(database_url=empty_url, auth=False)
    if empty_url.startswith("postgresql"):
        with pytest.raises(SchemaError) as refused:
            Store(settings)
        message = str(refused.value)
        assert "from before schema migrations" in message
        assert "0002_notifications changes tables" in message
        assert "takamul db upgrade --db URL" in message
        served = CliRunner().invoke(app, ["serve", "--db", empty_url, "--port", "1"])
        assert served.exit_code == 1 and "0002_notifications changes tables" in served.output
        status = CliRunner().invoke(app, ["db", "status", "--db", empty_url])
        assert status.exit_code == 1 and "pending: 0001_baseline, 0002_notifications" in (
            status.output
        )
        assert CliRunner().invoke(app, ["db", "upgrade", "--db", empty_url]).exit_code == 0
    Store(settings).close()
    engine = _engine(empty_url)
    with engine.connect() as conn:
        assert read_state(conn).up_to_date
    engine.dispose()
    if empty_url.startswith("sqlite"):
        # the server kept a copy of the embedded store as it was before it changed its tables
        path = Path(empty_url.removeprefix("sqlite:///"))
        copy = _engine(f"sqlite:///{path.with_name(path.name + '.before-0002_notifications')}")
        with copy.connect() as conn:
            kept = read_state(conn)
        copy.dispose()
        assert kept.before_migrations and kept.holds_record


def test_a_new_postgresql_database_is_created_at_start_whatever_it_holds(tmp_path: Path) -> None:
    """A PostgreSQL database without resources is upgraded at start, even when a component
    (here the audit log) made its tables first."""
    with postgres_database() as url:
        AuditLog.from_url(url).close()
        Store(Settings.from_env(database_url=url, auth=False)).close()
        engine = _engine(url)
        with engine.connect() as conn:
            assert read_state(conn).up_to_date
        engine.dispose()


def _frozen(revision: str) -> MetaData:
    from alembic.script import ScriptDirectory

    from takamul.store.migrations import config

    module = ScriptDirectory.from_config(config()).get_revision(revision).module
    tables: MetaData = module.notification_tables()
    return tables


def test_tables_a_release_made_before_their_migration_are_kept_when_equal(
    empty_url: str,
) -> None:
    """Release 0529060 created the notification tables with create_all before migrations
    existed: the store is adopted and 0002 keeps those tables (and their rows) as they are."""
    make_previous_release_store(empty_url)
    engine = _engine(empty_url)
    _frozen("0002_notifications").create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO notification_lease (name, owner, until) VALUES ('d', 'w1', 1.5)")
        )
    done = upgrade(engine)
    assert done.adopted and done.applied[:2] == [BASELINE, "0002_notifications"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT owner FROM notification_lease")).scalar() == "w1"
    engine.dispose()


def test_a_table_made_in_another_shape_stops_the_revision(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'odd.sqlite'}"
    make_previous_release_store(url)
    engine = _engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE notification_lease (name VARCHAR(32) PRIMARY KEY)")
    with pytest.raises(SchemaError, match=r"0002_notifications .*notification_lease.owner"):
        upgrade(engine)
    with engine.connect() as conn:
        assert read_state(conn).before_migrations  # one transaction: nothing was done
    engine.dispose()


def test_processes_starting_together_on_a_new_database_migrate_it_once(empty_url: str) -> None:
    """Four processes open a new store at the same moment (as `serve --workers 4` on hosts that
    start together): one migrates, the others wait for it (PostgreSQL's advisory lock, SQLite's
    write lock) and find the schema current."""
    code = (
        "import sys; from takamul.settings import Settings; from takamul.store import Store; "
        "Store(Settings.from_env(database_url=sys.argv[1], auth=False)).close()"
    )
    starts = [
        subprocess.Popen([sys.executable, "-c", code, empty_url], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in starts]
    assert [p.returncode for p in starts] == [0, 0, 0, 0], errors
    engine = _engine(empty_url)
    with engine.connect() as conn:
        assert read_state(conn).up_to_date
        versions = conn.execute(text("SELECT COUNT(*) FROM alembic_version")).scalar()
    engine.dispose()
    assert versions == 1
