"""Every command against every kind of damaged or unusual database file.

Each must say what is wrong in one line on stderr and exit non-zero (or succeed where that
is right: reading a read-only database, `init` over an empty file or a dropped table),
never print a traceback, and leave the file's bytes as they were (`doctor --repair`
changes them only after leaving a backup with the original bytes).
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.support import Cli

# The commands, by what they do to the database.
READS = {
    "list": ["list"],
    "show": ["show", "1"],
    "runs": ["runs"],
    "export": ["export"],
    "review": ["review"],
    "docs": ["docs"],
}
WRITES = {
    "add": ["add", "x"],
    "note": ["note", "1", "a note"],
    "undo": ["undo"],
    "edit": ["edit", "1", "--title", "y"],
    "import": ["import", "doc.md"],
}
OTHERS = {
    "run": ["run", "1", "--dry-run"],
    "init": ["init", "--empty"],
    "doctor": ["doctor"],
    "doctor-repair": ["doctor", "--repair"],
}
COMMANDS = {**READS, **WRITES, **OTHERS}

# Kinds of damage, and what the one line must mention.
DAMAGE = {
    "truncated": "truncated",
    "random-bytes": "not a research database",
    "zeroed-pages": "damaged",
    "empty": "empty (0 bytes)",
    "dropped-table": "missing table note",
    "directory": "is a directory",
    "fifo": "FIFO",
    "device": "is a device",
}
# (damage, command) pairs where success is right, and what the command then says.
SUCCEEDS = {
    ("empty", "init"): "Created",
    ("empty", "doctor-repair"): "ok:",
    ("dropped-table", "init"): "Repaired",
    ("dropped-table", "doctor-repair"): "ok:",
}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> bytes:
    """A small healthy database's bytes: one item with a note, made once for the module."""
    folder = tmp_path_factory.mktemp("template")
    path = folder / "todo.db"
    cli = Cli()
    cli("--db", path, "init", "--empty")
    cli("--db", path, "add", "Exp")
    cli("--db", path, "note", "exp", "first note")
    from research.store.db import dispose_engines

    dispose_engines()
    assert not Path(f"{path}-wal").exists()  # checkpointed: the bytes are the whole database
    return path.read_bytes()


def damage(kind: str, folder: Path, template: bytes) -> Path:
    if kind == "device":
        return Path(os.devnull)
    path = folder / "todo.db"
    if kind == "truncated":
        path.write_bytes(template[: len(template) // 2])
    elif kind == "random-bytes":
        path.write_bytes(os.urandom(len(template)))
    elif kind == "zeroed-pages":  # the schema (page 1) is intact, every table's pages are zeros
        page = int.from_bytes(template[16:18], "big")
        path.write_bytes(template[:page] + bytes(len(template) - page))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "dropped-table":
        path.write_bytes(template)
        conn = sqlite3.connect(path)
        conn.execute("DROP TABLE note")
        conn.commit()
        conn.close()
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    return path


def snapshot(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def one_line(result) -> str:
    assert isinstance(result.exception, SystemExit) or result.exception is None, repr(result.exception)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def workdir(isolated):
    (isolated / "doc.md").write_text("# Doc\n\n## Imported\n\nbody\n", encoding="utf-8")
    return isolated


@pytest.fixture
def alarm():
    """A FIFO opened by mistake blocks forever: fail instead."""
    def on_alarm(*_):
        raise TimeoutError("the command blocked (it opened the FIFO?)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_database(kind, command, workdir, template, alarm):
    path = damage(kind, workdir, template)
    before = snapshot(path)
    result = Cli()("--db", path, *COMMANDS[command], ok=False)
    said = SUCCEEDS.get((kind, command))
    if said is not None:
        assert result.exit_code == 0, result.stderr
        assert said in result.stdout + result.stderr
        assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        if command == "doctor-repair":
            (backup,) = workdir.glob("todo.db.*.bak")
            assert backup.read_bytes() == before
        return
    line = one_line(result)
    assert result.exit_code == 1
    assert line.startswith("Error: ")
    if command.startswith("doctor"):
        assert "problem(s) remain" in line
        said = {"dropped-table": "table note is missing", "zeroed-pages": "malformed"}.get(kind, DAMAGE[kind])
        assert said in result.stdout
    else:
        assert DAMAGE[kind] in line
        if kind in ("truncated", "random-bytes", "zeroed-pages", "dropped-table"):
            assert "research doctor" in line
        if kind == "empty":
            assert "research init" in line
    assert snapshot(path) == before
    assert not list(workdir.glob("todo.db.*.bak"))


# ---------------------------------------------------------------------------
# Read-only: the file, or the folder that holds it


def _immutable(path: Path) -> bool:
    """Make ``path`` read-only even for root (chattr +i); False where that is impossible."""
    if os.geteuid() != 0:
        path.chmod(0o555 if path.is_dir() else 0o444)
        return True
    if not shutil.which("chattr"):
        return False
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


def _mutable(path: Path) -> None:
    if os.geteuid() != 0:
        path.chmod(0o755 if path.is_dir() else 0o644)
    else:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


@pytest.fixture(params=["file", "folder"])
def read_only(request, tmp_path, template):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "todo.db"
    path.write_bytes(template)
    (tmp_path / "doc.md").write_text("# Doc\n\n## Imported\n", encoding="utf-8")
    target = path if request.param == "file" else folder
    if not _immutable(target):
        pytest.skip("cannot make a file read-only for root here (no chattr, or the filesystem lacks +i)")
    yield path
    _mutable(target)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_read_only_database(command, read_only, template):
    result = Cli()("--db", read_only, *COMMANDS[command], ok=False)
    if command in READS or command in ("doctor", "init"):
        assert result.exit_code == 0, result.stderr
        assert "Traceback" not in result.stderr
    elif command in WRITES:
        assert one_line(result) == (
            "Error: the database is read-only: this command writes to it (set RESEARCH_DEBUG=1 for the traceback)"
        )
        assert result.exit_code == 1
    else:  # run (the item has no notebook) and doctor --repair (nothing to repair)
        assert "Traceback" not in result.stderr
    assert read_only.read_bytes() == template
    assert not Path(f"{read_only}-wal").exists() and not Path(f"{read_only}-shm").exists()


def test_reads_of_a_read_only_folder_see_the_data(read_only):
    cli = Cli()
    assert [i["title"] for i in cli.json("--db", read_only, "list")] == ["Exp"]
    assert [n["text"] for n in cli.json("--db", read_only, "show", "exp")["notes"]] == ["first note"]


# ---------------------------------------------------------------------------
# A full disk


def full_disk():
    """Connections may not grow the file: SQLite answers SQLITE_FULL, as on a full disk."""
    from unittest import mock

    from research.store import db

    apply = db._apply_pragmas

    def no_room(conn):
        apply(conn)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")

    return mock.patch.object(db, "_apply_pragmas", no_room)


@pytest.mark.parametrize("command", [
    ["add", "x" * 50, "--body", "y" * 20_000],
    ["note", "1", "z" * 20_000],
    ["import", "big.md"],
])
def test_a_full_disk_is_one_line_and_the_data_survives(command, workdir, template):
    path = workdir / "todo.db"
    path.write_bytes(template)
    (workdir / "big.md").write_text("# Big\n\n" + "".join(f"## Item {i}\n\n{'w' * 400}\n\n" for i in range(200)))
    with full_disk():
        result = Cli()("--db", path, *command, ok=False)
    assert one_line(result) == (
        "Error: disk full: the database could not be written (nothing was changed) (set RESEARCH_DEBUG=1 for the traceback)"
    )
    assert result.exit_code == 1
    assert path.read_bytes() == template
    assert [i["title"] for i in Cli().json("--db", path, "list")] == ["Exp"]


# ---------------------------------------------------------------------------
# Every command, not only the ones above: none may reach the damage before the check


ARGS = {
    ("add",): ["x"], ("show",): ["1"], ("edit",): ["1", "--title", "y"], ("mv",): ["1", "--top"],
    ("rm",): ["1", "--yes"], ("start",): ["1"], ("pause",): ["1"], ("done",): ["1"], ("drop",): ["1"],
    ("status",): ["1", "active"], ("check",): ["1"], ("uncheck",): ["1"], ("note",): ["1", "n"],
    ("import",): ["doc.md"], ("sync",): ["doc.md"], ("link",): ["1", "nb.ipynb"], ("unlink",): ["1"],
    ("run",): ["1"], ("rerun",): ["1"], ("compare",): ["1", "2"], ("runs", "show"): ["1"],
    ("runs", "rm"): ["1", "--yes"], ("runs", "cancel"): ["1"], ("runs", "watch"): ["1"],
    ("queue", "cancel"): ["1"], ("sweep", "start"): ["1", "--space", "x=uniform(0,1)", "--trials", "1", "--minimize", "m"],
    ("sweep", "resume"): ["abc"], ("sweep", "show"): ["abc"], ("serve",): ["--port", "0"],
}
WITHOUT_DATABASE = {("notebooks",), ("init",)}  # notebooks needs none; init is tested above


def every_command():
    from typer.main import get_command

    from research.cli import app

    def walk(group, prefix=()):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from walk(command, (*prefix, name))
            else:
                yield (*prefix, name)

    return [path for path in walk(get_command(app)) if path not in WITHOUT_DATABASE]


@pytest.mark.parametrize("kind", ["random-bytes", "dropped-table"])
def test_every_command_checks_the_database_first(kind, workdir, template, monkeypatch):
    def too_late(*args, **kwargs):
        raise AssertionError("a run's runner started before the database was checked")

    monkeypatch.setattr("research.runs.child.start_runner", too_late)
    path = damage(kind, workdir, template)
    before = path.read_bytes()
    commands = every_command()
    assert len(commands) > 25
    for command in commands:
        result = Cli()("--db", path, *command, *ARGS.get(command, []), ok=False)
        assert result.exit_code == 1, (command, result.stdout, result.stderr)
        line = one_line(result)
        assert DAMAGE[kind] in line or command == ("doctor",), (command, line)
        assert path.read_bytes() == before, command


def test_init_in_a_read_only_folder_says_so(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    if not _immutable(folder):
        pytest.skip("cannot make a folder read-only for root here")
    try:
        result = Cli()("--db", folder / "todo.db", "init", "--empty", ok=False)
    finally:
        _mutable(folder)
    assert one_line(result) == f"Error: cannot create the database at {folder / 'todo.db'}: it or its folder is read-only"
    assert not (folder / "todo.db").exists()


def test_an_old_schema_that_cannot_be_upgraded_is_one_line(tmp_path):
    from research.store import db, migrations

    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "todo.db"
    conn = db.connect_raw(path)
    migrations.migrate(conn, target=2)
    conn.close()
    if not _immutable(folder):
        pytest.skip("cannot make a folder read-only for root here")
    try:
        result = Cli()("--db", path, "list", ok=False)
    finally:
        _mutable(folder)
    assert one_line(result) == (
        f"Error: {path} needs upgrading (schema version 2 to {len(migrations.MIGRATIONS)}) but is read-only; "
        "run any command where it can be written"
    )
    assert Cli().json("--db", path, "list") == []  # writable again: upgraded on open
