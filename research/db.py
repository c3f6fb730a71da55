"""Where the database lives, how it is opened, and how its schema evolves.

Resolution order: ``--db PATH``, then ``$RESEARCH_DB``, then the nearest
``todo.db`` found walking up from the current directory (as git finds ``.git``).
The schema is versioned with ``PRAGMA user_version``; every change is a function
in ``MIGRATIONS``, applied in order, each in its own transaction, on open.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from research.errors import ResearchError

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
            raise ResearchError(f"no database at {path} (run `research init --db {path}` to create it)")
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


# ---------------------------------------------------------------------------
# Migrations: append only. Each takes a sqlite3 connection inside a transaction.


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT first; running statements one by one keeps
    # the whole migration inside its transaction.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _m001_backlog(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE item (
            id INTEGER PRIMARY KEY,
            slug TEXT NOT NULL UNIQUE,
            parent_id INTEGER REFERENCES item(id),
            kind TEXT NOT NULL DEFAULT 'item',
            title TEXT NOT NULL,
            body TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'planned',
            priority TEXT NOT NULL DEFAULT 'medium',
            estimate TEXT,
            estimate_min_days REAL,
            estimate_max_days REAL,
            tags JSON NOT NULL DEFAULT '[]',
            innovation INTEGER,
            practicality INTEGER,
            feasibility INTEGER,
            score REAL,
            position INTEGER NOT NULL DEFAULT 0,
            style JSON NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            started_at TEXT,
            done_at TEXT
        );
        CREATE INDEX ix_item_parent_id ON item(parent_id);
        CREATE INDEX ix_item_status ON item(status);

        CREATE TABLE note (
            id INTEGER PRIMARY KEY,
            item_id INTEGER REFERENCES item(id),
            date TEXT,
            title TEXT,
            text TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL
        );
        CREATE INDEX ix_note_item_id ON note(item_id);

        CREATE TABLE outcome (
            id INTEGER PRIMARY KEY,
            item_id INTEGER NOT NULL REFERENCES item(id),
            kind TEXT NOT NULL,
            ref TEXT NOT NULL DEFAULT '',
            text TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL
        );
        CREATE INDEX ix_outcome_item_id ON outcome(item_id);

        CREATE TABLE event (
            id INTEGER PRIMARY KEY,
            batch INTEGER NOT NULL,
            ts TEXT NOT NULL,
            action TEXT NOT NULL,
            item_id INTEGER,
            table_name TEXT NOT NULL,
            row_id INTEGER NOT NULL,
            before JSON,
            after JSON,
            undone BOOLEAN NOT NULL DEFAULT 0
        );
        CREATE INDEX ix_event_batch ON event(batch);
        CREATE INDEX ix_event_ts ON event(ts);
        CREATE INDEX ix_event_item_id ON event(item_id);

        CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL DEFAULT ''
        );
        """
    )


def _m002_runs(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE link (
            id INTEGER PRIMARY KEY,
            item_id INTEGER NOT NULL REFERENCES item(id),
            name TEXT NOT NULL,
            notebook TEXT NOT NULL,
            defaults JSON NOT NULL DEFAULT '{}',
            best TEXT,
            created_at TEXT NOT NULL,
            UNIQUE (item_id, name)
        );
        CREATE INDEX ix_link_item_id ON link(item_id);

        CREATE TABLE run (
            id INTEGER PRIMARY KEY,
            item_id INTEGER NOT NULL REFERENCES item(id),
            link_id INTEGER REFERENCES link(id),
            sweep_id TEXT,
            status TEXT NOT NULL DEFAULT 'queued',
            notebook TEXT NOT NULL,
            notebook_sha256 TEXT,
            params_given JSON NOT NULL DEFAULT '{}',
            params JSON NOT NULL DEFAULT '{}',
            kernel TEXT,
            cwd TEXT,
            run_dir TEXT,
            output_path TEXT,
            executor TEXT NOT NULL DEFAULT 'local',
            external_id TEXT,
            pid INTEGER,
            host TEXT,
            heartbeat_at TEXT,
            queued_at TEXT NOT NULL,
            started_at TEXT,
            ended_at TEXT,
            duration_s REAL,
            reason TEXT,
            error JSON,
            environment JSON NOT NULL DEFAULT '{}',
            artifacts JSON NOT NULL DEFAULT '[]'
        );
        CREATE INDEX ix_run_item_id ON run(item_id);
        CREATE INDEX ix_run_sweep_id ON run(sweep_id);
        CREATE INDEX ix_run_status ON run(status);

        CREATE TABLE metric (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES run(id),
            name TEXT NOT NULL,
            value REAL,
            value_json JSON,
            step INTEGER,
            ts REAL
        );
        CREATE INDEX ix_metric_run_id ON metric(run_id);
        CREATE INDEX ix_metric_name ON metric(name);
        """,
    )


def _m003_documents(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE document (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            path TEXT NOT NULL UNIQUE,
            title TEXT,
            text TEXT NOT NULL DEFAULT '',
            sha256 TEXT NOT NULL DEFAULT '',
            mtime REAL,
            conventions JSON NOT NULL DEFAULT '{}',
            layout JSON NOT NULL DEFAULT '{}',
            meta JSON NOT NULL DEFAULT '{}',
            is_main BOOLEAN NOT NULL DEFAULT 0,
            base_batch INTEGER NOT NULL DEFAULT 0,
            imported_at TEXT NOT NULL,
            synced_at TEXT NOT NULL
        );

        CREATE TABLE anchor (
            id INTEGER PRIMARY KEY,
            document_id INTEGER NOT NULL REFERENCES document(id),
            table_name TEXT NOT NULL,
            row_id INTEGER NOT NULL,
            data JSON NOT NULL DEFAULT '{}',
            UNIQUE (table_name, row_id)
        );
        CREATE INDEX ix_anchor_document_id ON anchor(document_id);

        ALTER TABLE item ADD COLUMN document_id INTEGER REFERENCES document(id);
        ALTER TABLE item ADD COLUMN due_date TEXT;
        ALTER TABLE item ADD COLUMN scheduled_date TEXT;
        ALTER TABLE item ADD COLUMN start_date TEXT;
        CREATE INDEX ix_item_document_id ON item(document_id);
        """,
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m001_backlog, _m002_runs, _m003_documents]


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection, target: int | None = None) -> int:
    """Apply pending migrations (up to ``target``); returns the resulting version."""
    target = len(MIGRATIONS) if target is None else target
    version = schema_version(conn)
    if version > len(MIGRATIONS):
        raise ResearchError(
            f"database schema version {version} is newer than this version of research "
            f"understands ({len(MIGRATIONS)}); upgrade research"
        )
    while version < target:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read inside the lock: another process may have migrated meanwhile.
            version = schema_version(conn)
            if version >= target:
                conn.execute("COMMIT")
                break
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        version += 1
    return version


def connect_raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection in autocommit mode with our pragmas applied."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    _apply_pragmas(conn)
    return conn


def _apply_pragmas(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        # WAL is unavailable on some filesystems; fall back quietly to the default.
        pass
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")


def ensure_schema(path: Path) -> None:
    conn = None
    try:
        conn = connect_raw(path)
        migrate(conn)
    except sqlite3.DatabaseError as exc:
        raise ResearchError(f"{path} is not a research database ({exc})") from None
    finally:
        if conn is not None:
            conn.close()


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
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

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


def create_database(path: Path) -> bool:
    """Create (or migrate) the database at ``path``; True when it was new."""
    existed = path.exists() and path.stat().st_size > 0
    if path.exists() and path.is_dir():
        raise ResearchError(f"{path} is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    ensure_schema(path)
    return not existed
