"""`research doctor`: what it finds, what --repair fixes (after a backup), and what it leaves."""

from __future__ import annotations

import json
import socket
import sqlite3

import pytest

DEAD_PID = 2**22 + 12345  # above the default pid_max: no such process


def sql(path, *statements):
    """Write behind research's back, foreign keys off, as a hand edit or an old bug would."""
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


def insert_run(path, item_id, status="succeeded", link_id="NULL", run_dir="NULL", pid="NULL"):
    sql(path, "INSERT INTO run (item_id, link_id, status, notebook, queued_at, run_dir, pid, host) VALUES "
              f"({item_id}, {link_id}, '{status}', 'nb.ipynb', '2026-01-01T00:00:00+00:00', {run_dir}, {pid}, "
              f"'{socket.gethostname()}')")


@pytest.fixture
def db(cli, isolated):
    cli("add", "Exp")
    cli("note", "exp", "a note")
    return isolated / "todo.db"


def test_a_healthy_database(cli, db):
    result = cli("doctor")
    assert result.stdout == f"ok: {db}\n"
    report = cli.json("doctor")
    assert report == {"database": str(db), "ok": True, "problems": [], "repaired": [], "backup": None}
    assert not list(db.parent.glob("*.bak"))


def test_orphans_are_found_and_repaired_after_a_backup(cli, db):
    sql(db,
        "INSERT INTO item (id, slug, title, parent_id, created_at, updated_at) VALUES (7, 'lost', 'Lost', 99, 'x', 'x')",
        "INSERT INTO note (item_id, text, created_at) VALUES (99, 'orphan note', 'x')",
        "INSERT INTO outcome (item_id, kind, created_at) VALUES (99, 'code', 'x')",
        "INSERT INTO link (id, item_id, name, notebook, created_at) VALUES (5, 99, 'nb', 'nb.ipynb', 'x')")
    insert_run(db, 1, link_id=5)  # its link is about to go with its missing item
    insert_run(db, 98)  # a run whose item is gone: kept
    before = db.read_bytes()
    result = cli("doctor", ok=False)
    assert result.exit_code == 1
    assert "1 item row(s) name a missing item in parent_id" in result.stdout
    assert "1 outcome row(s) name a missing item" in result.stdout
    assert "runs are kept" in result.stdout
    assert db.read_bytes() == before  # doctor alone changes nothing

    repaired = cli("doctor", "--repair", ok=False)
    assert repaired.exit_code == 1  # the run without its item remains
    (backup,) = db.parent.glob("todo.db.*.bak")
    assert f"backed up {db} to {backup}" in repaired.stderr
    assert sqlite3.connect(backup).execute("SELECT count(*) FROM outcome").fetchone() == (1,)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT parent_id FROM item WHERE id = 7").fetchone() == (None,)  # top level now
    assert conn.execute("SELECT item_id FROM note WHERE text = 'orphan note'").fetchone() == (None,)  # a backlog note
    assert conn.execute("SELECT count(*) FROM outcome").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM link").fetchone() == (0,)
    assert conn.execute("SELECT item_id, link_id FROM run ORDER BY id").fetchall() == [(1, None), (98, None)]
    conn.close()
    problems = json.loads(cli("doctor", "--json", ok=False).stdout)["problems"]
    assert [p["check"] for p in problems] == ["orphans"] and problems[0]["repair"] is None


def test_stale_runs_and_missing_folders(cli, db, isolated):
    insert_run(db, 1, status="running", pid=DEAD_PID)
    insert_run(db, 1, run_dir="'runs/gone'")
    (isolated / "runs" / "here").mkdir(parents=True)
    insert_run(db, 1, run_dir="'runs/here'")
    result = cli("doctor", ok=False)
    assert "1 run(s) left queued or running by a runner that is gone (run 1)" in result.stdout
    assert "warning: folders: 1 run folder(s) are missing" in result.stdout and "(run 2)" in result.stdout
    assert result.stderr.strip().startswith("Error: 1 problem(s) remain")  # the warning does not count
    repaired = cli("doctor", "--repair")  # only the warning remains: exit 0
    assert "ended 1 stale run(s) as interrupted" in repaired.stdout
    status, reason = sqlite3.connect(db).execute("SELECT status, reason FROM run WHERE id = 1").fetchone()
    assert status == "interrupted" and reason.startswith("runner died")


def test_missing_columns_and_indexes_are_recreated(cli, db):
    sql(db, "DROP INDEX ix_run_status", "ALTER TABLE item DROP COLUMN start_date")
    result = cli("list", ok=False)
    assert result.stderr.strip().endswith("is missing column item.start_date (dropped by hand?); "
                                          "`research doctor --repair` (or `research init`) recreates what is missing")
    repaired = cli("doctor", "--repair")
    assert "recreated column item.start_date, index ix_run_status" in repaired.stdout
    assert [i["title"] for i in cli.json("list")] == ["Exp"]


def test_an_integrity_failure_is_reported_not_repaired(cli, db):
    # Overwrite a page in the middle with zeros: SQLite's own check finds it.
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[2 * page: 3 * page] = bytes(page)
    db.write_bytes(bytes(data))
    result = cli("doctor", "--quick", ok=False)
    assert result.exit_code == 1
    assert "integrity" in result.stdout or "cannot read" in result.stdout
    assert "sqlite3 FILE .recover" in result.stdout
    assert not list(db.parent.glob("*.bak"))  # nothing safe to do, so nothing copied


def test_an_empty_file_is_a_database_not_yet_made(make_cli, isolated):
    cli = make_cli()
    (isolated / "todo.db").write_bytes(b"")
    result = cli("list", ok=False)
    assert result.stderr.strip().endswith("is empty (0 bytes): not a research database yet (`research init` makes it one)")
    assert cli("init", "--empty").stderr.startswith("Created")
    assert cli.json("list") == []


def test_undo_past_runs_refuses_in_one_line_then_works_with_runs(cli, db, isolated):
    (isolated / "doc.md").write_text("# Doc\n\n## Imported\n\nbody\n", encoding="utf-8")
    cli("import", "doc.md")
    imported = cli.json("show", "imported")["id"]
    insert_run(db, imported)
    sql(db, "INSERT INTO metric (run_id, name, value) VALUES (1, 'loss', 0.5)")
    for _ in range(2):  # the same answer every time, never a traceback
        result = cli("undo", ok=False)
        assert result.exit_code == 1
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("Error: cannot undo change 3 (created, import): run(s) 1 were made since on its items (imported)")
        assert "`research undo --with-runs`" in line
    cli("undo", "--with-runs")
    assert sqlite3.connect(db).execute("SELECT count(*) FROM run").fetchone() == (0,)
    cli("undo")  # the note
    cli("undo")  # the item
    assert cli.json("list") == []
    assert cli("doctor").stdout.startswith("ok:")


def test_undoing_a_link_that_runs_used_keeps_the_runs(cli, db, isolated, write_notebook):
    (isolated / "notebooks").mkdir()
    write_notebook(isolated / "notebooks" / "nb.ipynb", "x = n", parameters="n = 1")
    cli("link", "exp", "notebooks/nb.ipynb")
    insert_run(db, 1, link_id=1)
    cli("undo")
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM link").fetchone() == (0,)
    assert conn.execute("SELECT item_id, link_id FROM run").fetchall() == [(1, None)]
    conn.close()
    assert cli("doctor").stdout.startswith("ok:")
