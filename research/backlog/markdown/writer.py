"""Writing a parsed document's rows in bulk, with plain sqlite3.

An import may bring tens of thousands of items. Rows and their events go in with one
``executemany`` per table (SQLAlchemy's per-value type processing would cost more than
SQLite itself), and a new document is imported without loading the ORM at all, so a
large import costs what parsing and SQLite cost. The event rows are the ones
``ChangeLog`` writes (a ``created`` event per row, an item's with its identifying fields),
so ``research undo`` and the review read them like any other change.

Ids are allocated here (the write transaction holds the database lock), so parents and
anchors can refer to rows not yet inserted.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import datetime
from operator import itemgetter
from typing import Any

from research import clock
from research.backlog.markdown.model import (
    DEFAULTS,
    FIELDS,
    ParsedNode,
    ParsedNote,
    note_anchor,
    outcome_anchor,
)
from research.store.rows import COLUMNS, JSON_COLUMNS
from research.vocab import composite_score, parse_estimate, slugify

Progress = Callable[[str, int, int], None]
CREATED_FIELDS = ("id", "slug", "title", "kind", "parent_id", "status", "priority", "document_id", "created_at")
_DUMPS = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_EMPTY_JSON = {list: "[]", dict: "{}", str: '""'}
_FIELD_DEFAULTS = tuple((name, DEFAULTS.get(name)) for name in FIELDS if name not in ("title", "kind"))


def insert_many(conn: sqlite3.Connection, table: str, rows: list[dict]) -> None:
    """One ``executemany`` of plain tuples, JSON columns encoded here."""
    if not rows:
        return
    columns = [c for c in COLUMNS[table] if c in rows[0]]
    encoded = [i for i, name in enumerate(columns) if name in JSON_COLUMNS[table]]
    get = itemgetter(*columns)
    data = []
    for row in rows:
        values = list(get(row))
        for i in encoded:
            value = values[i]
            if value is not None:
                values[i] = _EMPTY_JSON[type(value)] if not value and type(value) in _EMPTY_JSON else _DUMPS(value)
        data.append(tuple(values))
    conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", data)


class BulkWriter:
    """A document's items, notes, outcomes, anchors and their events, inserted in bulk."""

    def __init__(self, conn: sqlite3.Connection, batch: int, document_id: int, now: str, event_anchors: bool = True):
        self.conn, self.batch, self.document_id, self.now = conn, batch, document_id, now
        # A new document's anchors need no events: undoing its import removes them with it.
        self.event_anchors = event_anchors
        self.rows: dict[str, list[dict]] = {"item": [], "note": [], "outcome": [], "anchor": [], "event": []}
        self.ids = {t: conn.execute(f"SELECT max(id) FROM {t}").fetchone()[0] or 0 for t in ("item", "note", "outcome", "anchor")}
        self.slugs = {row[0] for row in conn.execute("SELECT slug FROM item")}
        self.top_position = (conn.execute("SELECT max(position) FROM item WHERE parent_id IS NULL").fetchone()[0] or -1) + 1
        self.notes_added = self.outcomes_added = 0
        self.events_written = 0

    def _next(self, table: str) -> int:
        self.ids[table] += 1
        return self.ids[table]

    def _slug(self, title: str) -> str:
        base = slugify(title)
        candidate, n = base, 1
        while candidate in self.slugs:
            n += 1
            candidate = f"{base}-{n}"
        self.slugs.add(candidate)
        return candidate

    def event(self, action: str, table: str, row_id: int, item_id: int | None, after: dict) -> None:
        self.rows["event"].append({"batch": self.batch, "ts": self.now, "action": action, "item_id": item_id,
                                   "table_name": table, "row_id": row_id, "before": None, "after": after, "undone": False})

    def add_tree(self, nodes: list[ParsedNode], parent: int | None, added: list[str], progress: Progress | None) -> None:
        """Every node, in document order (parents before children), under ``parent``."""
        total = sum(1 for _ in walk(nodes))
        first = self.top_position if parent is None else 0
        stack = [(node, parent, first + i) for i, node in reversed(list(enumerate(nodes)))]
        done = 0
        while stack:
            node, parent_id, position = stack.pop()
            item_id = self.add_node(node, parent_id, position)
            added.append(" › ".join(k[1] for k in node.key))
            stack.extend((child, item_id, i) for i, child in reversed(list(enumerate(node.children))))
            done += 1
            if progress and done % 500 == 0:
                progress("items", done, total)
        if progress:
            progress("items", total, total)

    def add_node(self, node: ParsedNode, parent_id: int | None, position: int) -> int:
        item_id = self._next("item")
        row = item_row(node, item_id, parent_id, position, self._slug(node.title), self.document_id, self.now)
        self.rows["item"].append(row)
        # What history and the review read of a created item; undo needs only its id, and
        # the document keeps the rest (encoding every row twice would double the write).
        self.event("created", "item", item_id, item_id, {k: row[k] for k in CREATED_FIELDS})
        self.anchor("item", item_id, {"node": node.anchor(), "parent": parent_id})
        self.add_notes(item_id, node.notes)
        for outcome in node.outcomes:
            outcome_id = self._next("outcome")
            orow = {"id": outcome_id, "item_id": item_id, "kind": outcome.kind, "ref": outcome.ref,
                    "text": outcome.text, "created_at": self.now}
            self.rows["outcome"].append(orow)
            self.event("outcome", "outcome", outcome_id, item_id, orow)
            self.anchor("outcome", outcome_id, {"outcome": outcome_anchor(outcome), "owner": item_id})
            self.outcomes_added += 1
        return item_id

    def add_notes(self, item_id: int | None, notes: list[ParsedNote]) -> None:
        for note in notes:
            note_id = self._next("note")
            row = {"id": note_id, "item_id": item_id, "date": note.date, "title": note.title, "text": note.text,
                   "created_at": self.now}
            self.rows["note"].append(row)
            self.event("note", "note", note_id, item_id, row)
            self.anchor("note", note_id, {"note": note_anchor(note), "owner": item_id})
            self.notes_added += 1

    def anchor(self, table: str, row_id: int, data: dict) -> None:
        anchor_id = self._next("anchor")
        self.rows["anchor"].append({"id": anchor_id, "document_id": self.document_id, "table_name": table,
                                    "row_id": row_id, "data": data})
        if self.event_anchors:
            # Undoing a created row needs only its table and id; the anchor's data is not repeated.
            self.event("anchor", "anchor", anchor_id, None, {"id": anchor_id, "table_name": table, "row_id": row_id})

    def flush(self) -> None:
        for table in ("item", "note", "outcome", "anchor", "event"):
            insert_many(self.conn, table, self.rows[table])
        self.events_written += len(self.rows["event"])
        self.rows = {table: [] for table in self.rows}


def walk(nodes: list[ParsedNode]):
    for node in nodes:
        yield node
        yield from walk(node.children)


def item_row(node: ParsedNode, item_id: int, parent_id: int | None, position: int, slug: str,
             document_id: int | None, now: str) -> dict[str, Any]:
    # (node.value(name) for each field, read straight from the dicts: this runs per item)
    given = node.values
    values = {name: given.get(name, default) for name, default in _FIELD_DEFAULTS}
    status = values["status"]
    started = now if status in ("active", "done", "writing-up") else None
    done = (local_day(node.values["done_on"]) if node.values.get("done_on") else now) if status == "done" else None
    created = local_day(node.values["created"]) if node.values.get("created") else now
    low, high = parse_estimate(values["estimate"])
    score = values["score"]
    if score is None:
        score = composite_score(values["innovation"], values["practicality"], values["feasibility"])
    return {
        "id": item_id, "slug": slug, "parent_id": parent_id, "kind": node.kind, "title": node.title,
        "body": values["body"], "status": status, "priority": values["priority"], "estimate": values["estimate"],
        "estimate_min_days": low, "estimate_max_days": high, "tags": list(values["tags"] or []),
        "innovation": values["innovation"], "practicality": values["practicality"], "feasibility": values["feasibility"],
        "score": score, "position": position, "style": {}, "created_at": created, "updated_at": now,
        "started_at": started, "done_at": done, "document_id": document_id, "due_date": values["due_date"],
        "scheduled_date": values["scheduled_date"], "start_date": values["start_date"],
    }


def local_day(text: str) -> str:
    """A date (or local date-time) written in a file, as a UTC timestamp."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.astimezone()
    return value.astimezone(clock.UTC).isoformat(timespec="microseconds")


def document_row(document_id: int, name: str, path: str, file, parsed, is_main: bool, batch: int, now: str) -> dict:
    return {
        "id": document_id, "name": name, "path": path, "title": parsed.title, "text": parsed.text,
        "sha256": file.sha256, "mtime": file.mtime, "conventions": parsed.conventions, "layout": parsed.layout,
        "meta": parsed.meta, "is_main": is_main, "base_batch": batch, "imported_at": now, "synced_at": now,
    }


def create_document(conn: sqlite3.Connection, batch: int, name: str, path: str, file, parsed, added: list[str],
                    progress: Progress | None = None) -> tuple[int, BulkWriter]:
    """A new document and everything read from it, inside the caller's transaction."""
    now = clock.now_iso()
    document_id = (conn.execute("SELECT max(id) FROM document").fetchone()[0] or 0) + 1
    has_main = conn.execute("SELECT 1 FROM document WHERE is_main").fetchone() is not None
    row = document_row(document_id, name, path, file, parsed, not has_main, batch, now)
    insert_many(conn, "document", [row])
    writer = BulkWriter(conn, batch, document_id, now, event_anchors=False)
    writer.event("import", "document", document_id, None, row)
    writer.add_tree(parsed.nodes, parent=None, added=added, progress=progress)
    writer.add_notes(None, parsed.notes)
    writer.flush()
    return document_id, writer
