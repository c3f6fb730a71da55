"""Where the database lives, how it is opened, and how its schema migrates."""

from __future__ import annotations

import sqlite3

import pytest

from research.errors import ResearchError
from research.store import db, migrations
from tests.support import Cli


def test_resolution_order(isolated, monkeypatch):
    nested = isolated / "project" / "src" / "deep"
    nested.mkdir(parents=True)
    walked = isolated / "project" / "todo.db"
    walked.touch()
    from_env = isolated / "env.db"
    from_env.touch()
    explicit = isolated / "explicit.db"
    explicit.touch()
    monkeypatch.delenv("RESEARCH_DB")
    assert db.find_database(start=nested) == walked
    monkeypatch.setenv("RESEARCH_DB", str(from_env))
    assert db.find_database(start=nested) == from_env
    assert db.find_database(explicit, start=nested) == explicit


def test_no_database_found_suggests_init(isolated, monkeypatch):
    monkeypatch.delenv("RESEARCH_DB")
    with pytest.raises(ResearchError, match="research init"):
        db.find_database(start=isolated)


def test_cli_without_database_says_so(isolated, monkeypatch):
    monkeypatch.delenv("RESEARCH_DB")
    result = Cli()("list", ok=False)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: no todo.db found") and "research init" in result.stderr


def test_init_is_idempotent_and_keeps_data(isolated, monkeypatch):
    monkeypatch.delenv("RESEARCH_DB")
    cli = Cli()
    cli("init", "--empty")
    assert (isolated / "todo.db").exists()
    cli("add", "keep me")
    again = cli("init", "--empty")
    assert "Already initialised" in again.stderr
    assert [i["title"] for i in cli.json("list")] == ["keep me"]


def test_db_option_beats_environment(isolated):
    cli = Cli()
    other = isolated / "other.db"
    cli("--db", other, "init", "--empty")
    cli("--db", other, "add", "in other")
    cli("init", "--empty")
    assert cli.json("list") == []
    assert [i["title"] for i in cli.json("--db", other, "list")] == ["in other"]


def test_pragmas(isolated):
    path = isolated / "todo.db"
    db.create_database(path)
    engine = db.get_engine(path)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.BUSY_TIMEOUT_MS


def test_not_a_database(isolated):
    bogus = isolated / "todo.db"
    bogus.write_text("this is not sqlite " * 100)
    result = Cli()("list", ok=False)
    assert result.exit_code == 1 and "not a research database" in result.stderr


def test_migrations_upgrade_without_losing_data(isolated):
    path = isolated / "old.db"
    conn = db.connect_raw(path)
    assert migrations.migrate(conn, target=1) == 1
    conn.execute(
        "INSERT INTO item (id, slug, title, body, tags, style, created_at, updated_at, status, priority) "
        "VALUES (1, 'a', 'A', 'body', '[\"t\"]', '{}', '2025-01-01T00:00:00+00:00', '2025-01-01T00:00:00+00:00', 'active', 'high')"
    )
    conn.execute("INSERT INTO note (item_id, date, text, created_at) VALUES (1, '2025-01-02', 'n', '2025-01-02T00:00:00+00:00')")
    conn.execute(
        "INSERT INTO event (batch, ts, action, item_id, table_name, row_id, before, after) "
        "VALUES (1, '2025-01-01T00:00:00+00:00', 'created', 1, 'item', 1, NULL, '{}')"
    )
    columns = {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in ("item", "note", "event")}
    before = {t: list(conn.execute(f"SELECT {', '.join(c)} FROM {t}")) for t, c in columns.items()}
    assert migrations.migrate(conn) == len(migrations.MIGRATIONS)
    after = {t: list(conn.execute(f"SELECT {', '.join(c)} FROM {t}")) for t, c in columns.items()}
    assert after == before
    # Columns added later start empty on old rows.
    assert list(conn.execute("SELECT document_id, due_date, scheduled_date, start_date FROM item")) == [(None,) * 4]
    conn.close()
    # The upgraded database works through the library too.
    from research.backlog.items import Backlog

    with db.session_scope(path) as session:
        backlog = Backlog.load(session)
        assert [i.title for i in backlog.items] == ["A"]


def test_migrated_schema_matches_models(isolated):
    from sqlmodel import SQLModel

    import research.store.models  # noqa: F401  (registers the tables)

    path = isolated / "fresh.db"
    db.create_database(path)
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == set(SQLModel.metadata.tables)
    for name, table in SQLModel.metadata.tables.items():
        columns = {r[1]: (r[3], r[5]) for r in conn.execute(f"PRAGMA table_info({name})")}
        assert set(columns) == {c.name for c in table.columns}, name
        for column in table.columns:
            notnull, pk = columns[column.name]
            assert bool(pk) == column.primary_key, (name, column.name)
            if not column.primary_key:
                assert bool(notnull) == (not column.nullable), (name, column.name)
    conn.close()


def test_newer_schema_is_refused(isolated):
    path = isolated / "future.db"
    conn = db.connect_raw(path)
    conn.execute(f"PRAGMA user_version = {len(migrations.MIGRATIONS) + 5}")
    conn.close()
    with pytest.raises(ResearchError, match="newer"):
        db.ensure_schema(path)


def test_a_command_process_closes_the_database_cleanly(isolated):
    """The `research` process freezes its heap at exit; it must still close SQLite first."""
    import subprocess
    import sys

    for args in (["init", "--empty"], ["add", "A direction"], ["show", "1"]):
        subprocess.run([sys.executable, "-m", "research", *args], cwd=isolated, check=True, capture_output=True)
        # On the last clean close SQLite checkpoints the WAL and removes it.
        assert not (isolated / "todo.db-wal").exists(), args
    rows = sqlite3.connect(isolated / "todo.db").execute("SELECT title FROM item").fetchall()
    assert rows == [("A direction",)]


def test_the_row_reader_knows_every_table_as_the_models_do():
    """Read commands skip the ORM through store.rows; its columns must be the models'."""
    import sqlalchemy as sa
    from sqlmodel import SQLModel

    from research.store import models, rows  # noqa: F401  (models registers the tables)

    tables = SQLModel.metadata.tables
    assert set(rows.COLUMNS) == set(tables)
    for name, table in tables.items():
        assert rows.COLUMNS[name] == tuple(c.name for c in table.columns), name
        assert rows.JSON_COLUMNS[name] == {c.name for c in table.columns if isinstance(c.type, sa.JSON)}, name
        assert rows.BOOL_COLUMNS.get(name, set()) == {c.name for c in table.columns if isinstance(c.type, sa.Boolean)}, name
        assert rows.RECORDS[name]._fields == rows.COLUMNS[name]


def test_records_decode_json_and_booleans(cli):
    from research.store import rows
    from research.store.db import connect_raw

    cli("add", "Exp", "--tag", "systems")
    conn = connect_raw(db.find_database(None))
    try:
        (item,) = rows.select(conn, "item", "slug = ?", ("exp",))
        (event,) = rows.select(conn, "event", "item_id = ?", (item.id,))
    finally:
        conn.close()
    assert item.tags == ["systems"] and item.style == {} and item.title == "Exp"
    assert event.undone is False and event.action == "created" and event.after["slug"] == "exp"


@pytest.mark.parametrize("command", [["show", "1"], ["runs"], ["runs", "show", "1"], ["add", "x"], ["list"]])
def test_a_damaged_file_gets_one_line(isolated, command):
    damaged = isolated / "damaged.db"
    damaged.write_bytes(bytes(range(256)) * 40)
    result = Cli()("--db", damaged, *command, ok=False)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # a clean exit, no traceback
    assert result.stderr.startswith("Error:") and "not a research database" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_table_dropped_by_hand_gets_one_line(cli, isolated):
    cli("add", "Exp")
    conn = sqlite3.connect(isolated / "todo.db")
    conn.execute("DROP TABLE note")
    conn.commit()
    conn.close()
    for command in (["show", "exp"], ["note", "exp", "hello"], ["export"], ["list"]):
        result = cli(*command, ok=False)
        assert result.exit_code == 1, command
        assert result.stderr.strip() == (
            f"Error: {isolated / 'todo.db'} is missing table note (dropped by hand?); "
            "`research doctor --repair` (or `research init`) recreates what is missing"
        )
    # init does not say "Already initialised" over a missing table: it recreates it.
    again = cli("init", "--empty")
    assert again.stderr.strip() == (
        f"Repaired {isolated / 'todo.db'}: recreated table note, index ix_note_item_id (dropped by hand?)"
    )
    cli("note", "exp", "hello")
    assert [n["text"] for n in cli.json("show", "exp")["notes"]] == ["hello"]


@pytest.mark.parametrize(("raised", "said"), [
    ("attempt to write a readonly database", "Error: the database is read-only: this command writes to it"),
    ("database or disk is full", "Error: disk full: the database could not be written (nothing was changed)"),
    ("database is locked", "Error: the database is locked by another research process; try again"),
])
def test_a_write_the_database_refuses_is_one_line_naming_why(cli, monkeypatch, raised, said):
    def refuse(*args, **kwargs):
        raise sqlite3.OperationalError(raised)

    monkeypatch.setattr("research.backlog.rules.insert_item", refuse)
    result = cli("add", "x", ok=False)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"{said} (set RESEARCH_DEBUG=1 for the traceback)"
    assert cli.json("list") == []
