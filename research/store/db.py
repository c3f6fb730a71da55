"""Where the database lives, how it is opened, and how its schema evolves.

Resolution order: ``--db PATH``, then ``$RESEARCH_DB``, then the nearest
``todo.db`` found walking up from the current directory (as git finds ``.git``).
The schema's history (``PRAGMA user_version``) lives in ``store.migrations``,
applied on open.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from research.errors import ResearchError
from research.store.migrations import migrate

DB_FILENAME = "todo.db"
DB_ENV = "RESEARCH_DB"
BUSY_TIMEOUT_MS = 30_000


def project_root_of(db_path: Path) -> Path:
    """The folder holding the database is the project root: notebooks and runs/ are relative to it."""
    return Path(db_path).resolve().parent


def find_database(explicit: str | os.PathLike | None = None, start: Path | None = None) -> Path:
    """The database to use, or a ResearchError saying none was found."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise ResearchError(f"no database at {path} (run `research --db {path} init` to create it)")
        return path
    from_env = os.environ.get(DB_ENV)
    if from_env:
        path = Path(from_env).expanduser()
        if not path.exists():
            raise ResearchError(f"no database at {path} (from ${DB_ENV}; run `research init` to create it)")
        return path
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / DB_FILENAME
        if candidate.is_file():
            return candidate
    raise ResearchError(f"no {DB_FILENAME} found here or in any parent folder (run `research init`)")


def init_target(explicit: str | os.PathLike | None = None) -> Path:
    """Where `research init` creates the database."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(DB_ENV):
        return Path(os.environ[DB_ENV]).expanduser()
    return Path.cwd() / DB_FILENAME


def connect_raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection in autocommit mode with our pragmas applied."""
    conn = _sqlite_connect(path)
    _apply_pragmas(conn)
    return conn


def _sqlite_connect(path: Path, **kwargs) -> sqlite3.Connection:
    """Open ``path``; read-only when the file or its folder cannot be written.

    SQLite in WAL mode creates ``-shm`` and ``-wal`` beside the file even to read it. Where
    it cannot (a read-only folder, a read-only file), reading commands still work: the file
    is opened with ``mode=ro``, or ``immutable=1`` when there is no WAL to read (nothing is
    created beside it then). Writes on such a connection fail as "attempt to write a
    readonly database", which the CLI turns into one line.
    """
    path = Path(path)
    options = dict(timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, **kwargs)
    if writable(path):
        return sqlite3.connect(path, **options)
    from urllib.parse import quote

    uri = "file:" + quote(str(path.resolve()))
    wal = Path(f"{path}-wal")
    if not (wal.exists() and wal.stat().st_size > 0):
        return sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, **options)
    conn = sqlite3.connect(uri + "?mode=ro", uri=True, **options)
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.OperationalError:
        # The WAL cannot be read without its -shm: read the file as it was last checkpointed.
        conn.close()
        return sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, **options)
    return conn


def writable(path: Path) -> bool:
    """Whether SQLite can write ``path`` and create its -shm and -wal beside it."""
    folder_ok = os.access(Path(path).resolve().parent, os.W_OK)
    return folder_ok and (not os.path.exists(path) or os.access(path, os.W_OK))


def rollback(conn: sqlite3.Connection) -> None:
    """ROLLBACK if a transaction is open: SQLite has already rolled back after some errors
    (a full disk), and a second ROLLBACK would hide the first error behind its own."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on a plain connection (``connect_raw``): BEGIN IMMEDIATE (the
    write lock first), COMMIT at the end, ``rollback`` on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        rollback(conn)
        raise
    conn.execute("COMMIT")


def _apply_pragmas(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        # WAL is unavailable on some filesystems; fall back quietly to the default.
        pass
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")


def ensure_schema(path: Path, *, create: bool = False) -> dict[str, list[str]]:
    """Check that ``path`` is a research database and bring its schema up to date.

    A path that is not a database file, a damaged file or tables dropped by hand raise a
    one-sentence ResearchError naming the problem and pointing to `research doctor`.
    ``create`` (for `research init`) also accepts an empty file and recreates missing tables
    and indexes; it returns what it recreated.
    """
    from research.store import health

    health.check_file(path, allow_new=create)
    conn = None
    try:
        conn = connect_raw(path)
        _migrate(conn, path)
        missing = health.missing_schema(conn)
        repaired: dict[str, list[str]] = {}
        if create:
            from research.store.doctor import recreate_schema

            repaired = recreate_schema(conn)
            missing = health.missing_schema(conn)
        if missing:
            raise health.schema_error(path, missing)
        return repaired
    except sqlite3.OperationalError as exc:
        if health.is_refusal(exc):
            raise  # read-only, full or locked: the CLI names it
        raise ResearchError(f"{path} is not a research database ({exc}); {health.DOCTOR}") from None
    except sqlite3.DatabaseError as exc:
        raise ResearchError(f"{path} is not a research database ({exc}); {health.DOCTOR}") from None
    finally:
        if conn is not None:
            conn.close()


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    from research.store.migrations import MIGRATIONS, schema_version

    try:
        migrate(conn)
    except sqlite3.OperationalError as exc:
        if "readonly" not in str(exc):
            raise
        raise ResearchError(
            f"{path} needs upgrading (schema version {schema_version(conn)} to {len(MIGRATIONS)}) "
            "but is read-only; run any command where it can be written"
        ) from None


# ---------------------------------------------------------------------------
# The engine (one per process) and sessions (one per command).

_engines: dict[Path, object] = {}


def get_engine(path: Path):
    """The process's engine for ``path``, created on first use (schema migrated)."""
    path = Path(path).resolve()
    engine = _engines.get(path)
    if engine is not None:
        return engine
    from sqlalchemy import event
    from sqlmodel import create_engine

    ensure_schema(path)
    engine = create_engine(f"sqlite:///{path}", creator=lambda: _sqlite_connect(path, check_same_thread=False))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let SQLAlchemy, not the driver, decide when transactions begin (see _on_begin).
        dbapi_conn.isolation_level = None
        _apply_pragmas(dbapi_conn)

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Writers take the write lock up front: a deferred transaction that later
        # upgrades to a write fails with "database is locked" without waiting.
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    _engines[path] = engine
    return engine


def has_engine(path: Path) -> bool:
    """Whether this process has an engine (and so maybe open connections) on ``path``."""
    return bool(_engines) and Path(path).resolve() in _engines


def dispose_engines() -> None:
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


@contextmanager
def session_scope(path: Path, write: bool = False) -> Iterator:
    """A session for one command; writes commit at the end or roll back on error."""
    from sqlmodel import Session

    engine = get_engine(path)
    bind = engine.execution_options(sqlite_begin="IMMEDIATE") if write else engine
    with Session(bind, expire_on_commit=False) as session:
        try:
            yield session
            if write:
                session.commit()
        except BaseException:
            session.rollback()
            raise


def write_transaction(path: Path, fn):
    """``fn(session)`` in one short write transaction (BEGIN IMMEDIATE); returns what it returns.

    Runs, queue claims and sweeps change their rows this way, so parallel runs and other
    `research` processes take turns on the database instead of holding it."""
    with session_scope(path, write=True) as session:
        return fn(session)


def create_database(path: Path) -> tuple[bool, dict[str, list[str]]]:
    """Create (or migrate) the database at ``path``, recreating tables and indexes dropped
    by hand; returns (whether it was new, what was recreated)."""
    from research.store import health

    state = health.inspect_file(path)
    if state.kind not in ("ok", "empty", "missing"):
        raise ResearchError(state.message)
    path.parent.mkdir(parents=True, exist_ok=True)
    if state.kind != "ok" and not writable(path):
        raise ResearchError(f"cannot create the database at {path}: it or its folder is read-only")
    repaired = ensure_schema(path, create=True)
    if state.kind == "ok":
        _quick_check(path)  # not "Already initialised" over a damaged file
    return state.kind in ("empty", "missing"), ({} if state.kind != "ok" else repaired)


def _quick_check(path: Path) -> None:
    from research.store import health

    conn = connect_raw(path)
    try:
        found = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        found = str(exc)
    finally:
        conn.close()
    if found != "ok":
        raise ResearchError(f"{path} is damaged (SQLite: {found}); {health.DOCTOR}")


def raw_connection(session):
    """The sqlite3 connection inside an ORM session's transaction (pending changes flushed),
    for code that reads through ``store.rows``."""
    session.flush()
    return session.connection().connection.driver_connection
