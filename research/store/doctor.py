"""`research doctor`: what is wrong with a database file, and the repairs that are safe.

Checks, in order: the file itself (``health.inspect_file``), SQLite's own integrity check,
the schema against the models (tables, columns and indexes, compared with a database the
migrations build in memory), rows whose foreign key names nothing (``foreign_key_check``),
runs left queued or running by a runner that is gone, and run folders that are missing.

Repairs, made only after the file (and its WAL) is copied beside it: missing tables,
columns and indexes recreated; an orphan detached where its column may be empty (an item's
parent, a note's item, a run's link) and deleted where the row means nothing without its
parent (an outcome, a link, a metric, an anchor); stale runs ended as interrupted (one of
the failed statuses) with the reason. A damaged file, and runs whose item is gone, are
reported and left alone.
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from research import clock
from research.errors import ResearchError
from research.store import health

# Orphans a repair deletes (the row means nothing without its parent); nullable columns are
# detached instead. Runs are history: a run whose item is gone is reported, never deleted.
DELETE_ORPHANS = {("outcome", "item_id"), ("link", "item_id"), ("metric", "run_id"), ("anchor", "document_id")}
KEEP_ORPHANS = {("run", "item_id")}
RECOVER = "try `sqlite3 FILE .recover` on a copy"
RESTORE = f"restore a backup, or {RECOVER}"


@dataclass
class Problem:
    check: str  # file, integrity, schema, orphans, runs, folders
    message: str
    severity: str = "error"  # error (doctor exits non-zero) or warning
    repair: str | None = None  # what --repair does about it; None: nothing safe


@dataclass
class Diagnosis:
    database: str
    problems: list[Problem] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    backup: str | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def repairable(self) -> list[Problem]:
        return [p for p in self.problems if p.repair]

    def as_json(self) -> dict:
        return {
            "database": self.database,
            "ok": not self.errors,
            "problems": [asdict(p) for p in self.problems],
            "repaired": self.repaired,
            "backup": self.backup,
        }


# ---------------------------------------------------------------------------
# The schema the models expect, as the migrations build it


@dataclass(frozen=True)
class Reference:
    tables: dict[str, str]  # name -> CREATE TABLE
    columns: dict[str, tuple[tuple, ...]]  # table -> pragma table_info rows
    foreign_keys: dict[str, dict[str, tuple[str, str]]]  # table -> column -> (parent table, parent column)
    indexes: dict[str, tuple[str, str]]  # name -> (table, CREATE INDEX)


@lru_cache(maxsize=1)
def reference() -> Reference:
    from research.store.migrations import migrate

    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        migrate(conn)
        tables = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
        return Reference(
            tables=tables,
            columns={t: tuple(conn.execute(f"PRAGMA table_info({t})")) for t in tables},
            foreign_keys={t: {r[3]: (r[2], r[4]) for r in conn.execute(f"PRAGMA foreign_key_list({t})")} for t in tables},
            indexes={n: (t, sql) for n, t, sql in conn.execute(
                "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")},
        )
    finally:
        conn.close()


def schema_gaps(conn: sqlite3.Connection) -> tuple[list[str], list[tuple[str, tuple]], list[str]]:
    """(missing tables, missing columns as (table, table_info row), missing indexes)."""
    ref = reference()
    present = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    tables = [t for t in ref.tables if t not in present]
    columns = []
    for table in ref.tables:
        if table in present:
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            columns += [(table, row) for row in ref.columns[table] if row[1] not in have]
    missing_indexes = [n for n, (t, _sql) in ref.indexes.items() if n not in indexes and t not in tables]
    return tables, columns, missing_indexes


def _add_column_sql(table: str, row: tuple) -> str | None:
    """ALTER TABLE for a missing column, or None when SQLite cannot add it (NOT NULL, no default)."""
    _cid, name, type_, notnull, default, _pk = row
    if notnull and default is None:
        return None
    sql = f"ALTER TABLE {table} ADD COLUMN {name} {type_}"
    if notnull:
        sql += " NOT NULL"
    if default is not None:
        sql += f" DEFAULT {default}"
    parent = reference().foreign_keys[table].get(name)
    if parent:
        sql += f" REFERENCES {parent[0]}({parent[1]})"
    return sql


def recreate_schema(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """Recreate missing tables, columns and indexes in one transaction; returns what was made.
    Writes nothing (and so works on a read-only file) when nothing is missing."""
    tables, columns, indexes = schema_gaps(conn)
    made: dict[str, list[str]] = {}
    if not (tables or columns or indexes):
        return made
    from research.store.db import immediate

    ref = reference()
    with immediate(conn):
        for table in tables:
            conn.execute(ref.tables[table])
            made.setdefault("tables", []).append(table)
        for table, row in columns:
            sql = _add_column_sql(table, row)
            if sql:
                conn.execute(sql)
                made.setdefault("columns", []).append(f"{table}.{row[1]}")
        for name, (table, sql) in ref.indexes.items():
            if name in indexes or table in tables:
                conn.execute(sql)
                made.setdefault("indexes", []).append(name)
    return made


def describe_made(made: dict[str, list[str]]) -> str:
    """{'tables': ['note'], 'indexes': ['ix_note_item_id']} -> 'table note, index ix_note_item_id'."""
    singular = {"tables": "table", "columns": "column", "indexes": "index"}
    return ", ".join(f"{singular[kind] if len(names) == 1 else kind} {', '.join(names)}"
                     for kind, names in made.items() if names)


# ---------------------------------------------------------------------------
# Diagnosis


def diagnose(path: Path, quick: bool = False, project_root: Path | None = None) -> Diagnosis:
    """Every problem doctor finds in ``path``, each with the repair it would make (if any)."""
    from research.store.db import connect_raw
    from research.store.migrations import MIGRATIONS, schema_version

    diagnosis = Diagnosis(str(path))
    state = health.inspect_file(path)
    if state.kind == "empty":
        diagnosis.problems.append(Problem("file", f"{path} is empty (0 bytes): no tables yet",
                                          repair="create the tables (as `research init` does)"))
        return diagnosis
    if state.kind != "ok":
        hint = f"; {RESTORE}" if state.kind in ("not-sqlite", "truncated") else ""
        diagnosis.problems.append(Problem("file", state.message.split(f"; {health.DOCTOR}")[0] + hint))
        return diagnosis
    try:
        conn = connect_raw(path)
    except sqlite3.DatabaseError as exc:
        if health.is_refusal(exc):
            raise
        diagnosis.problems.append(_unreadable(exc))
        return diagnosis
    try:
        try:
            version = schema_version(conn)
            rows = [r[0] for r in conn.execute("PRAGMA quick_check" if quick else "PRAGMA integrity_check")]
        except sqlite3.DatabaseError as exc:
            diagnosis.problems.append(_unreadable(exc))
            return diagnosis
        if rows != ["ok"]:
            more = f" (and {len(rows) - 1} more)" if len(rows) > 1 else ""
            diagnosis.problems.append(Problem("integrity", f"integrity check failed: {rows[0]}{more}; {RESTORE}"))
            return diagnosis  # the other checks read the damaged pages: nothing they say is sure
        if version > len(MIGRATIONS):
            diagnosis.problems.append(Problem("schema", f"schema version {version} is newer than this research "
                                              f"understands ({len(MIGRATIONS)}); upgrade research"))
            return diagnosis
        if version < len(MIGRATIONS):
            diagnosis.problems.append(Problem("schema", f"schema version {version} is older than {len(MIGRATIONS)}",
                                              repair="apply the migrations (any command does)"))
            return diagnosis
        try:
            _check_schema(conn, diagnosis)
            _check_orphans(conn, diagnosis)
            _check_runs(conn, diagnosis, project_root or Path(path).resolve().parent)
        except sqlite3.DatabaseError as exc:
            if health.is_refusal(exc):
                raise
            diagnosis.problems.append(_unreadable(exc))
    finally:
        conn.close()
    return diagnosis


def _unreadable(exc: BaseException) -> Problem:
    return Problem("integrity", f"SQLite cannot read the file: {exc}; {RESTORE}")


def _check_schema(conn: sqlite3.Connection, diagnosis: Diagnosis) -> None:
    tables, columns, indexes = schema_gaps(conn)
    for table in tables:
        diagnosis.problems.append(Problem("schema", f"table {table} is missing", repair=f"recreate table {table} (empty)"))
    for table, row in columns:
        fixable = _add_column_sql(table, row) is not None
        diagnosis.problems.append(Problem("schema", f"column {table}.{row[1]} is missing",
                                          repair=f"add column {table}.{row[1]}" if fixable else None))
    for name in indexes:
        diagnosis.problems.append(Problem("schema", f"index {name} is missing (commands work, slower)",
                                          repair=f"recreate index {name}"))


def orphans(conn: sqlite3.Connection) -> dict[tuple[str, str, str], list[int]]:
    """(table, column, parent table) -> rowids whose foreign key names no row."""
    ref = reference()
    present = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    found: dict[tuple[str, str, str], list[int]] = {}
    for table in ref.tables:
        if table not in present or not ref.foreign_keys[table]:
            continue
        by_id = {r[0]: r[3] for r in conn.execute(f"PRAGMA foreign_key_list({table})")}
        try:
            violations = list(conn.execute(f"PRAGMA foreign_key_check({table})"))
        except sqlite3.OperationalError:
            continue  # its parent table is missing: the schema check says so
        for _table, rowid, parent, fkid in violations:
            found.setdefault((table, by_id.get(fkid, "?"), parent), []).append(rowid)
    return found


def _check_orphans(conn: sqlite3.Connection, diagnosis: Diagnosis) -> None:
    ref = reference()
    for (table, column, parent), ids in orphans(conn).items():
        shown = ", ".join(map(str, ids[:5])) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        message = f"{len(ids)} {table} row(s) name a missing {parent} in {column} ({table} {shown})"
        nullable = any(r[1] == column and not r[3] for r in ref.columns.get(table, ()))
        if (table, column) in KEEP_ORPHANS:
            repair = None
            message += ": runs are kept; recreate the item or `research runs rm` them"
        elif (table, column) in DELETE_ORPHANS:
            repair = f"delete those {table} rows"
        elif nullable:
            repair = f"clear their {column}" + (" (top level)" if (table, column) == ("item", "parent_id") else "")
        else:
            repair = None
        diagnosis.problems.append(Problem("orphans", message, repair=repair))


def _check_runs(conn: sqlite3.Connection, diagnosis: Diagnosis, root: Path) -> None:
    from research.runs.recovery import stale_runs

    present = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "run" not in present:
        return
    dead = stale_runs(conn)
    if dead:
        ids = ", ".join(str(run_id) for run_id, _ in dead)
        diagnosis.problems.append(Problem("runs", f"{len(dead)} run(s) left queued or running by a runner that is gone "
                                          f"(run {ids})", repair="end them as interrupted, with the reason"))
    missing = [
        run_id for run_id, run_dir in conn.execute(
            "SELECT id, run_dir FROM run WHERE run_dir IS NOT NULL AND status != 'queued' ORDER BY id")
        if not (root / run_dir).is_dir()
    ]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        diagnosis.problems.append(Problem("folders", f"{len(missing)} run folder(s) are missing under {root} (run {shown}); "
                                          "their rows are kept", severity="warning"))


# ---------------------------------------------------------------------------
# Repair


def backup_file(path: Path) -> Path:
    """Copy ``path`` (and its WAL, which holds the latest writes) beside it; returns the copy."""
    path = Path(path)
    stamp = clock.now().strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.{stamp}.bak")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{stamp}-{n}.bak")
    try:
        shutil.copy2(path, target)
        wal = Path(f"{path}-wal")
        if wal.exists() and wal.stat().st_size:
            shutil.copy2(wal, Path(f"{target}-wal"))  # SQLite opens the copy with it
    except OSError as exc:
        target.unlink(missing_ok=True)
        raise ResearchError(f"cannot write a backup beside {path} ({exc.strerror or exc}); nothing was repaired") from None
    return target


def repair(path: Path, quick: bool = False, project_root: Path | None = None) -> Diagnosis:
    """Back the file up, make the safe repairs, and diagnose again (what remains)."""
    from research.store.db import writable

    before = diagnose(path, quick, project_root)
    if not before.repairable:
        return before
    if not writable(path):
        raise ResearchError(f"the database is read-only ({path} or its folder): nothing was repaired")
    backup = backup_file(path)
    repaired = _repair(path, before)
    after = diagnose(path, quick, project_root)
    after.repaired, after.backup = repaired, str(backup)
    return after


def _repair(path: Path, before: Diagnosis) -> list[str]:
    from research.store.db import connect_raw
    from research.store.migrations import migrate, schema_version

    done: list[str] = []
    conn = connect_raw(path)
    try:
        version = schema_version(conn)
        if migrate(conn) != version:
            done.append("created the tables" if version == 0 else f"upgraded the schema from version {version}")
        made = recreate_schema(conn)
        if made:
            done.append(f"recreated {describe_made(made)}")
        done += _repair_orphans(conn)
        from research.runs.recovery import mark_interrupted, stale_runs

        dead = stale_runs(conn)
        if dead:
            mark_interrupted(conn, dead)
            done.append(f"ended {len(dead)} stale run(s) as interrupted")
    finally:
        conn.close()
    return done


def _repair_orphans(conn: sqlite3.Connection) -> list[str]:
    from research.store.db import immediate
    from research.store.rows import ids_json

    ref = reference()
    done = []
    # Foreign keys off: deleting an orphan link must not fail on the runs that used it; the
    # next round clears their link (and the diagnosis after the repair says what remains).
    conn.execute("PRAGMA foreign_keys = OFF")
    for _round in range(4):
        found = {key: ids for key, ids in orphans(conn).items() if (key[0], key[1]) not in KEEP_ORPHANS}
        if not found:
            break
        with immediate(conn):
            for (table, column, parent), ids in found.items():
                nullable = any(r[1] == column and not r[3] for r in ref.columns.get(table, ()))
                where = "rowid IN (SELECT value FROM json_each(?))"
                if (table, column) in DELETE_ORPHANS:
                    conn.execute(f"DELETE FROM {table} WHERE {where}", (ids_json(ids),))
                    done.append(f"deleted {len(ids)} {table} row(s) whose {parent} is gone")
                elif nullable:
                    conn.execute(f"UPDATE {table} SET {column} = NULL WHERE {where}", (ids_json(ids),))
                    done.append(f"cleared {column} of {len(ids)} {table} row(s) whose {parent} is gone")
    conn.execute("PRAGMA foreign_keys = ON")
    return done
