"""The schema's history: one function per version, applied in order on open.

The schema is versioned with ``PRAGMA user_version``; every change is a function in
``MIGRATIONS``, append only, each run in its own transaction. ``tests/test_db.py`` checks
that the migrated schema equals the models (``store.models``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from research.errors import ResearchError


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


def _m004_sweeps_and_queue(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE sweep (
            id TEXT PRIMARY KEY,
            item_id INTEGER NOT NULL REFERENCES item(id),
            link_id INTEGER REFERENCES link(id),
            notebook TEXT NOT NULL,
            space JSON NOT NULL DEFAULT '{}',
            fixed JSON NOT NULL DEFAULT '{}',
            objective TEXT NOT NULL,
            direction TEXT NOT NULL,
            sampler TEXT NOT NULL,
            seed INTEGER,
            trials INTEGER NOT NULL,
            jobs INTEGER NOT NULL DEFAULT 1,
            executor TEXT NOT NULL DEFAULT 'local',
            options JSON NOT NULL DEFAULT '{}',
            status TEXT NOT NULL DEFAULT 'running',
            reason TEXT,
            pid INTEGER,
            host TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            ended_at TEXT
        );
        CREATE INDEX ix_sweep_item_id ON sweep(item_id);

        ALTER TABLE run ADD COLUMN trial INTEGER;
        ALTER TABLE run ADD COLUMN queue TEXT;
        ALTER TABLE run ADD COLUMN timeout_s REAL;
        CREATE INDEX ix_run_queue ON run(queue);
        """,
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _m001_backlog, _m002_runs, _m003_documents, _m004_sweeps_and_queue,
]


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
            if conn.in_transaction:  # SQLite rolls back by itself after some errors (a full disk)
                conn.execute("ROLLBACK")
            raise
        version += 1
    return version
