"""The one ORM-free reader: every table's columns, and rows as named tuples with JSON decoded.

Read commands (`list`, `show`, `export`, `review`) and bulk writers run often on large
backlogs; importing SQLAlchemy alone costs more than what they do. They read and write
through plain sqlite3 with the column lists below, the only copy of the schema outside
``models`` and ``migrations``; ``tests/test_db.py`` checks all three agree.

A record has the model's field names, so code written against an ORM row (``item.title``,
``run.params``) reads a record the same way.
"""

from __future__ import annotations

import json
import sqlite3
from collections import namedtuple
from collections.abc import Iterable, Sequence
from typing import Any

COLUMNS: dict[str, tuple[str, ...]] = {
    "item": (
        "id", "slug", "parent_id", "kind", "title", "body", "status", "priority", "estimate",
        "estimate_min_days", "estimate_max_days", "tags", "innovation", "practicality", "feasibility",
        "score", "position", "style", "created_at", "updated_at", "started_at", "done_at",
        "document_id", "due_date", "scheduled_date", "start_date",
    ),
    "document": ("id", "name", "path", "title", "text", "sha256", "mtime", "conventions", "layout", "meta",
                 "is_main", "base_batch", "imported_at", "synced_at"),
    "anchor": ("id", "document_id", "table_name", "row_id", "data"),
    "note": ("id", "item_id", "date", "title", "text", "created_at"),
    "outcome": ("id", "item_id", "kind", "ref", "text", "created_at"),
    "event": ("id", "batch", "ts", "action", "item_id", "table_name", "row_id", "before", "after", "undone"),
    "meta": ("key", "value"),
    "link": ("id", "item_id", "name", "notebook", "defaults", "best", "created_at"),
    "run": (
        "id", "item_id", "link_id", "sweep_id", "status", "notebook", "notebook_sha256", "params_given", "params",
        "kernel", "cwd", "run_dir", "output_path", "executor", "external_id", "pid", "host", "heartbeat_at",
        "queued_at", "started_at", "ended_at", "duration_s", "reason", "error", "environment", "artifacts",
        "trial", "queue", "timeout_s",
    ),
    "sweep": (
        "id", "item_id", "link_id", "notebook", "space", "fixed", "objective", "direction", "sampler", "seed",
        "trials", "jobs", "executor", "options", "status", "reason", "pid", "host", "created_at", "updated_at", "ended_at",
    ),
    "metric": ("id", "run_id", "name", "value", "value_json", "step", "ts"),
}
JSON_COLUMNS: dict[str, frozenset[str]] = {
    "item": frozenset({"tags", "style"}),
    "document": frozenset({"conventions", "layout", "meta"}),
    "anchor": frozenset({"data"}),
    "note": frozenset(),
    "outcome": frozenset(),
    "event": frozenset({"before", "after"}),
    "meta": frozenset(),
    "link": frozenset({"defaults"}),
    "run": frozenset({"params_given", "params", "error", "environment", "artifacts"}),
    "sweep": frozenset({"space", "fixed", "options"}),
    "metric": frozenset({"value_json"}),
}
BOOL_COLUMNS: dict[str, frozenset[str]] = {"document": frozenset({"is_main"}), "event": frozenset({"undone"})}
# What an empty JSON column reads as (the models' defaults).
_EMPTY = {("item", "tags"): list, ("item", "style"): dict, ("run", "artifacts"): list,
          ("document", "conventions"): dict, ("document", "layout"): dict, ("document", "meta"): dict}


def _record_class(table: str):
    name = "".join(part.capitalize() for part in table.split("_")) + "Record"
    return namedtuple(name, COLUMNS[table])


RECORDS = {table: _record_class(table) for table in COLUMNS}
ItemRecord = RECORDS["item"]
DocumentRecord = RECORDS["document"]
NoteRecord = RECORDS["note"]
OutcomeRecord = RECORDS["outcome"]
RunRecord = RECORDS["run"]


def decoder(table: str):
    """A function from a raw row (all columns, in order) to the table's record."""
    record = RECORDS[table]
    columns = COLUMNS[table]
    json_at = [(i, _EMPTY.get((table, name))) for i, name in enumerate(columns) if name in JSON_COLUMNS[table]]
    bool_at = [i for i, name in enumerate(columns) if name in BOOL_COLUMNS.get(table, ())]
    if not json_at and not bool_at:
        return lambda row: record._make(row)

    def decode(row: Sequence[Any]):
        values = list(row)
        for i, empty in json_at:
            text = values[i]
            values[i] = json.loads(text) if text else (empty() if empty else None)
        for i in bool_at:
            values[i] = bool(values[i])
        return record._make(values)

    return decode


def select(conn: sqlite3.Connection, table: str, where: str = "", params: Iterable[Any] = (),
           order: str = "id") -> list:
    """Records of ``table`` matching ``where`` (SQL with ``?`` placeholders), in ``order``."""
    sql = f"SELECT {', '.join(COLUMNS[table])} FROM {table}"
    if where:
        sql += f" WHERE {where}"
    if order:
        sql += f" ORDER BY {order}"
    decode = decoder(table)
    return [decode(row) for row in conn.execute(sql, tuple(params))]


def ids_json(ids: Iterable[int]) -> str:
    """A set of ids as one parameter: ``id IN (SELECT value FROM json_each(?))``."""
    return json.dumps(sorted(ids))
