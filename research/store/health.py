"""Is this file a research database we can open? The checks every command makes first.

``check_file`` looks at the path before SQLite does (a directory, a FIFO, which would
block the open, a device, an empty file, bytes that are not SQLite's, a file shorter
than its header says); ``missing_schema`` compares the tables and columns against the
models (``store.rows.COLUMNS``, tied to them by ``tests/test_db.py``). Each problem is one
sentence pointing to `research doctor`, which runs the slower checks (``store.doctor``).
"""

from __future__ import annotations

import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path

from research.errors import ResearchError

SQLITE_HEADER = b"SQLite format 3\x00"
DOCTOR = "`research doctor` says more"
REPAIR = "`research doctor --repair` (or `research init`) recreates what is missing"


# SQLite refusing to write (the file itself is fine): what it says, and what we say.
REFUSALS = {
    "attempt to write a readonly database": "the database is read-only: this command writes to it",
    "database or disk is full": "disk full: the database could not be written (nothing was changed)",
    "database is locked": "the database is locked by another research process; try again",
}
# SQLite finding the file damaged.
DAMAGE = {
    "database disk image is malformed": f"the database is damaged (SQLite: disk image is malformed); {DOCTOR}",
    "file is not a database": f"the database is damaged (SQLite: file is not a database); {DOCTOR}",
}


def is_refusal(exc: BaseException) -> bool:
    """SQLite refused to write (read-only, full disk, a lock held): the file itself is fine."""
    return any(said in str(exc) for said in REFUSALS)


def sqlite_cause(exc: BaseException):
    """The sqlite3 error behind ``exc`` (raised by sqlite3 itself or wrapped by SQLAlchemy), or None."""
    import sqlite3

    for candidate in (exc, getattr(exc, "orig", None)):
        if isinstance(candidate, sqlite3.DatabaseError):
            return candidate
    return None


def error_sentence(exc: BaseException) -> str:
    """An sqlite3 error as the one line the CLI prints."""
    text = str(exc)
    known = {**REFUSALS, **DAMAGE}
    return next((said for sqlite_said, said in known.items() if sqlite_said in text), f"database error: {text}")


@dataclass(frozen=True)
class FileState:
    """What the path holds: ``kind`` is ok, missing, empty, directory, fifo, device, other,
    not-sqlite or truncated; ``message`` says it in a sentence (None when ok)."""

    kind: str
    message: str | None = None
    size: int = 0


def inspect_file(path: Path) -> FileState:
    """The state of ``path`` from ``stat`` and its first 100 bytes; never opens a FIFO or a device."""
    try:
        info = Path(path).stat()
    except FileNotFoundError:
        return FileState("missing", f"no database at {path} (run `research --db {path} init` to create it)")
    except OSError as exc:
        return FileState("other", f"cannot read {path}: {exc.strerror or exc}")
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        return FileState("directory", f"{path} is a directory, not a database file (give --db the file, e.g. {Path(path) / 'todo.db'})")
    if stat.S_ISFIFO(mode):
        return FileState("fifo", f"{path} is a FIFO (named pipe), not a database file")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return FileState("device", f"{path} is a device, not a database file")
    if not stat.S_ISREG(mode):
        return FileState("other", f"{path} is not a regular file, so not a database file")
    size = info.st_size
    if size == 0:
        return FileState("empty", f"{path} is empty (0 bytes): not a research database yet (`research init` makes it one)", 0)
    seen = (info.st_dev, info.st_ino, size, info.st_mtime_ns)
    if seen in _HEALTHY or _held_open(path):
        return FileState("ok", None, size)
    try:
        with open(path, "rb") as fh:
            header = fh.read(100)
    except OSError as exc:
        return FileState("other", f"cannot read {path}: {exc.strerror or exc}", size)
    if not header.startswith(SQLITE_HEADER[: len(header)]):
        return FileState("not-sqlite", f"{path} is not a research database (its bytes are not SQLite's: damaged, or another kind of file); {DOCTOR}", size)
    if len(header) < 100:
        return FileState("truncated", f"{path} is truncated ({size} bytes, less than a SQLite header); {DOCTOR}", size)
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The page count in the header is valid when its "valid for" counter equals the change counter.
    if page_size >= 512 and header[24:28] == header[92:96] and pages and size < pages * page_size:
        return FileState(
            "truncated",
            f"{path} is truncated ({size} bytes; its header says {pages * page_size}): the database is damaged; {DOCTOR}",
            size,
        )
    _HEALTHY.add(seen)
    return FileState("ok", None, size)


# Files (device, inode, size, mtime) whose header was read and was fine. Closing a file
# descriptor drops every POSIX lock the process holds on that file, SQLite's included (a
# connection in WAL mode holds a shared lock on the file while it is open; without it,
# another process closing its last connection deletes the WAL and -shm under this one,
# which then no longer sees that process's writes). So the header is read once per
# version of the file, and never while this process's engine holds the file open.
_HEALTHY: set[tuple[int, int, int, int]] = set()


def _held_open(path: Path) -> bool:
    from research.store.db import has_engine

    return has_engine(path)


def check_file(path: Path, allow_new: bool = False) -> FileState:
    """``inspect_file``, raising its sentence as a ResearchError unless the file can be opened
    (``allow_new``: or created, when it is missing or empty)."""
    state = inspect_file(path)
    if state.kind == "ok" or (state.kind in ("empty", "missing") and allow_new):
        return state
    raise ResearchError(state.message)


def missing_schema(conn: sqlite3.Connection) -> dict[str, list[str] | None]:
    """Tables (value None) and columns the models have and the file lacks; empty when all are there."""
    from research.store.rows import COLUMNS

    present: dict[str, set[str]] = {}
    for table, column in conn.execute(
        "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p WHERE m.type = 'table'"
    ):
        present.setdefault(table, set()).add(column)
    missing: dict[str, list[str] | None] = {}
    for table, columns in COLUMNS.items():
        if table not in present:
            missing[table] = None
        else:
            lacking = [c for c in columns if c not in present[table]]
            if lacking:
                missing[table] = lacking
    return missing


def describe_missing(missing: dict[str, list[str] | None]) -> str:
    """``{'note': None, 'run': ['pid']}`` -> 'table note and column run.pid'."""
    tables = [t for t, cols in missing.items() if cols is None]
    columns = [f"{t}.{c}" for t, cols in missing.items() if cols for c in cols]
    parts = []
    if tables:
        parts.append(("tables " if len(tables) > 1 else "table ") + ", ".join(tables))
    if columns:
        parts.append(("columns " if len(columns) > 1 else "column ") + ", ".join(columns))
    return " and ".join(parts)


def schema_error(path: Path, missing: dict[str, list[str] | None]) -> ResearchError:
    return ResearchError(f"{path} is missing {describe_missing(missing)} (dropped by hand?); {REPAIR}")
