"""What an item's fields may be, and how a new item is written: plain sqlite3, no ORM.

`research add` runs often and should cost what `research show` costs; it writes through
``insert_item`` on a plain connection. The ORM side (``items.add_item``, for imports,
syncs and the shipped experiments) writes through the same function inside its session's
transaction, so there is one set of rules for a new item: a clean title, a unique slug,
the next position among its siblings, its parent's document (or the main document at the
top level), status timestamps, and the ``created`` event that undo and the review read.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from research import clock
from research.errors import ResearchError
from research.store.rows import COLUMNS, JSON_COLUMNS
from research.vocab import (
    check_date,
    clean_title,
    composite_score,
    normalize_priority,
    normalize_status,
    parse_estimate,
    slugify,
)

INHERIT = "inherit"  # document_id: the parent's document, or the main one at the top level
# A new item's values where ``ItemFields`` gives none (the model's defaults).
ITEM_DEFAULTS: dict[str, Any] = {"kind": "item", "body": "", "status": "planned", "priority": "medium", "tags": [],
                                 "style": {}, "position": 0}


@dataclass
class ItemFields:
    """Optional field values from `add` and `edit`; None means 'leave as is'."""

    title: str | None = None
    body: str | None = None
    status: str | None = None
    priority: str | None = None
    estimate: str | None = None
    tags: list[str] | None = None
    innovation: int | None = None
    practicality: int | None = None
    feasibility: int | None = None
    slug: str | None = None
    kind: str | None = None
    due_date: str | None = None  # "" clears
    scheduled_date: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def changes(self, item: Any = None) -> dict[str, Any]:  # item: the row being edited (ORM or record)
        out: dict[str, Any] = {}
        if self.title is not None:
            out["title"] = clean_title(self.title)
        if self.body is not None:
            out["body"] = self.body.rstrip("\n")  # (trailing blank lines cannot be told apart in Markdown)
            if item is not None and item.style.get("tasks_at") is not None:
                out["style"] = {k: v for k, v in item.style.items() if k != "tasks_at"}
        if self.status is not None:
            out["status"] = normalize_status(self.status)
        if self.priority is not None:
            out["priority"] = normalize_priority(self.priority)
        if self.estimate is not None:
            out["estimate"] = self.estimate.strip() or None
            out["estimate_min_days"], out["estimate_max_days"] = parse_estimate(self.estimate)
        if self.tags is not None:
            out["tags"] = _clean_tags(self.tags)
        for name in ("innovation", "practicality", "feasibility"):
            value = getattr(self, name)
            if value is not None:
                if not 1 <= value <= 5:
                    raise ResearchError(f"{name} must be between 1 and 5, got {value}")
                out[name] = value
        if any(name in out for name in ("innovation", "practicality", "feasibility")):
            merged = {n: out.get(n, getattr(item, n) if item else None) for n in ("innovation", "practicality", "feasibility")}
            out["score"] = composite_score(**merged)
        if self.due_date is not None:
            out["due_date"] = check_date(self.due_date, "due date")
        if self.scheduled_date is not None:
            out["scheduled_date"] = check_date(self.scheduled_date, "scheduled date")
        if self.kind is not None:
            if self.kind not in ("item", "task"):
                raise ResearchError(f"unknown kind {self.kind!r}; use item or task")
            out["kind"] = self.kind
        out.update(self.extra)
        return out


def _clean_tags(tags: list[str]) -> list[str]:
    seen: list[str] = []
    for tag in tags:
        for part in str(tag).split(","):
            part = part.strip().lstrip("#")
            if part and part not in seen:
                seen.append(part)
    return seen


def status_timestamps(item, new_status: str) -> dict[str, Any]:
    """started_at is set on first start; done_at follows the done state."""
    now = clock.now_iso()
    out: dict[str, Any] = {}
    if new_status in ("active", "done", "writing-up") and (item is None or not item.started_at):
        out["started_at"] = now
    if new_status == "done":
        if item is None or item.status != "done" or not item.done_at:
            out["done_at"] = now
    elif item is not None and item.done_at:
        out["done_at"] = None
    return out


def unique_slug_in(conn: sqlite3.Connection, title: str, exclude_id: int | None = None,
                   taken: set[str] | None = None) -> str:
    base = slugify(title)
    candidate, n = base, 1
    while True:
        clash = conn.execute("SELECT id FROM item WHERE slug = ?", (candidate,)).fetchone()
        if (clash is None or clash[0] == exclude_id) and not (taken and candidate in taken):
            return candidate
        n += 1
        candidate = f"{base}-{n}"


def check_slug(slug: str | None) -> None:
    if slug and slug.isdigit():
        raise ResearchError(f"slug {slug!r} is all digits: it would be read as item {slug}; add a letter")


def next_position(conn: sqlite3.Connection, parent_id: int | None) -> int:
    """After the last of the parent's children (or of the top level)."""
    last = conn.execute("SELECT max(position) FROM item WHERE parent_id IS ?", (parent_id,)).fetchone()[0]
    return 0 if last is None else last + 1


def main_document_id(conn: sqlite3.Connection) -> int | None:
    """The main document: the one marked (`research docs --main`), else the first imported."""
    row = conn.execute("SELECT id FROM document ORDER BY is_main DESC, id LIMIT 1").fetchone()
    return row[0] if row else None


def insert_item(
    conn: sqlite3.Connection,
    batch: int,
    fields: ItemFields,
    parent_id: int | None = None,
    position: int | None = None,
    created_at: str | None = None,
    document_id: int | None | str = INHERIT,
) -> dict[str, Any]:
    """Write a new item and its ``created`` event (in the caller's transaction); returns its row."""
    if not fields.title or not fields.title.strip():
        raise ResearchError("title must not be empty")
    values = fields.changes()
    if document_id == INHERIT:
        if parent_id is not None:
            document_id = conn.execute("SELECT document_id FROM item WHERE id = ?", (parent_id,)).fetchone()[0]
        else:
            document_id = main_document_id(conn)
    now = clock.now_iso()
    slug = fields.slug and slugify(fields.slug)
    check_slug(slug)
    if slug and conn.execute("SELECT 1 FROM item WHERE slug = ?", (slug,)).fetchone() is not None:
        raise ResearchError(f"slug {slug!r} is already taken")
    values.setdefault("status", "planned")
    values.update(status_timestamps(None, values["status"]))
    if position is None:
        position = next_position(conn, parent_id)
    row = {name: None for name in COLUMNS["item"]}
    row.update({k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
                for k, v in ITEM_DEFAULTS.items()})
    row.update(values)
    row.update(slug=slug or unique_slug_in(conn, values["title"]), parent_id=parent_id, position=position,
               created_at=created_at or now, updated_at=now, document_id=document_id)
    columns = [c for c in COLUMNS["item"] if c != "id"]
    cursor = conn.execute(
        f"INSERT INTO item ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        [_encode("item", c, row[c]) for c in columns],
    )
    row["id"] = cursor.lastrowid
    conn.execute(
        "INSERT INTO event (batch, ts, action, item_id, table_name, row_id, before, after, undone)"
        " VALUES (?, ?, 'created', ?, 'item', ?, NULL, ?, 0)",
        (batch, now, row["id"], row["id"], json.dumps(row, ensure_ascii=False)),
    )
    return row


def _encode(table: str, column: str, value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if column in JSON_COLUMNS[table] and value is not None else value


def next_batch(conn: sqlite3.Connection) -> int:
    """The batch number the next command's events get (``research undo`` reverts one batch)."""
    return (conn.execute("SELECT max(batch) FROM event").fetchone()[0] or 0) + 1
