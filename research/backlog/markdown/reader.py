"""What a Markdown export reads, straight from SQLite (no ORM).

`research export` runs often and should cost about what `research list` costs, so it
reads the document, its anchors and the rows it shows with the standard library's
sqlite3, through ``research.store.rows`` like every read command.

Every function takes a DB-API connection: the CLI's own (``research.store.db.connect_raw``), or
the one inside an ORM session's transaction (``driver_connection``), so import and sync
read through the same code.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from research.backlog.markdown.model import node_from_anchor, note_from_anchor, outcome_from_anchor
from research.backlog.markdown.plan import Base, State
from research.backlog.markdown.source import SourceLines
from research.store.rows import DocumentRecord, ItemRecord, ids_json
from research.store.rows import select as select_rows


def documents(conn: sqlite3.Connection) -> list[DocumentRecord]:
    return select_rows(conn, "document")


def loose_items(conn: sqlite3.Connection) -> int:
    """Items in no document (the shipped experiments, until moved into one)."""
    return conn.execute("SELECT count(*) FROM item WHERE document_id IS NULL").fetchone()[0]


def changed_since_base(conn: sqlite3.Connection, doc: DocumentRecord) -> tuple[set[int], bool]:
    """Items whose rows (or notes, outcomes) changed since the document's text was set, and
    whether the backlog's own notes or the main document did.

    Every change goes through the event log, so a document with no event after its base
    batch is exactly its text; an undone change still counts (it is compared, not trusted).
    """
    touched: set[int] = set()
    backlog = False
    for item_id, table_name in conn.execute("SELECT item_id, table_name FROM event WHERE batch > ?", (doc.base_batch,)):
        if item_id is not None:
            touched.add(item_id)
        elif table_name in ("note", "document"):
            backlog = True
    return touched, backlog


def load_base(conn: sqlite3.Connection, doc: DocumentRecord, items: set[int] | None = None) -> Base:
    """The document's text and its anchors: all of them, or those of ``items`` (with their
    notes and outcomes, and the document's own notes) when only those may have changed."""
    if items is None:
        rows = conn.execute("SELECT table_name, row_id, data FROM anchor WHERE document_id = ?", (doc.id,))
    else:
        ids = ids_json(items)
        rows = conn.execute(
            "SELECT table_name, row_id, data FROM anchor WHERE document_id = ? AND ("
            " (table_name = 'item' AND row_id IN (SELECT value FROM json_each(?)))"
            " OR (table_name = 'note' AND row_id IN (SELECT id FROM note WHERE item_id IS NULL"
            "     OR item_id IN (SELECT value FROM json_each(?))))"
            " OR (table_name = 'outcome' AND row_id IN (SELECT id FROM outcome"
            "     WHERE item_id IN (SELECT value FROM json_each(?)))))",
            (doc.id, ids, ids, ids),
        )
    base = Base(SourceLines.from_text(doc.text), dict(doc.conventions), dict(doc.layout))
    stale = created_since_base(conn, doc)

    def key(table_name: str, row_id: int | None) -> int | None:
        # SQLite gives a new row the id of a deleted one: the row anchored under that id is
        # gone (its lines go), and the new row is not it (it is written as new).
        return -row_id if row_id is not None and (table_name, row_id) in stale else row_id

    for table_name, row_id, raw in rows:
        data = json.loads(raw)
        if table_name == "item":
            node = node_from_anchor(data["node"])
            node.form["base_parent"] = key("item", data["parent"])
            base.nodes[key("item", row_id)] = node
        elif table_name == "note":
            base.notes[key("note", row_id)] = (note_from_anchor(data["note"]), key("item", data["owner"]))
        elif table_name == "outcome":
            base.outcomes[key("outcome", row_id)] = (outcome_from_anchor(data["outcome"]), key("item", data["owner"]))
    return base


def created_since_base(conn: sqlite3.Connection, doc: DocumentRecord) -> set[tuple[str, int]]:
    """Rows created after the document's text was set (undone or not): no anchor can be theirs."""
    return set(conn.execute(
        "SELECT table_name, row_id FROM event WHERE batch > ? AND (before IS NULL OR before = 'null')"
        " AND table_name IN ('item', 'note', 'outcome')", (doc.base_batch,)))


def anchored_parents(conn: sqlite3.Connection, doc_id: int, items: set[int]) -> set[int]:
    rows = conn.execute(
        "SELECT json_extract(data, '$.parent') FROM anchor WHERE document_id = ? AND table_name = 'item'"
        " AND row_id IN (SELECT value FROM json_each(?))", (doc_id, ids_json(items)))
    return {parent for (parent,) in rows if parent is not None}


def item_records(conn: sqlite3.Connection, ids: set[int] | None = None) -> list[ItemRecord]:
    if ids is None:
        return select_rows(conn, "item", order="")
    return select_rows(conn, "item", "id IN (SELECT value FROM json_each(?))", (ids_json(ids),), order="")


def descendants(conn: sqlite3.Connection, roots: set[int]) -> set[int]:
    if not roots:
        return set()
    rows = conn.execute(
        "WITH RECURSIVE sub(id) AS (SELECT value FROM json_each(?) "
        "UNION SELECT item.id FROM item JOIN sub ON item.parent_id = sub.id) SELECT id FROM sub", (ids_json(roots),))
    return {row[0] for row in rows}


def load_state(conn: sqlite3.Connection, doc_id: int | None, main: bool, today: str, extra_ids: set[int] = frozenset(),
               only: set[int] | None = None) -> State:
    """The rows a document may show: all its items, or only ``only`` (and always ``extra_ids``)."""
    from collections import defaultdict

    rows = item_records(conn, None if only is None else only | set(extra_ids))
    known = {i.id for i in rows} if only is None else None
    items = {i.id: i for i in rows if i.document_id == doc_id or i.id in extra_ids}
    children: dict[int | None, list[Any]] = defaultdict(list)
    for item in rows:
        if item.document_id == doc_id:
            parent = item.parent_id if known is None or item.parent_id in known else None
            children[parent].append(item)
    for kids in children.values():
        kids.sort(key=lambda i: (i.position, i.id))
    wanted = ids_json(items)
    notes: dict[int | None, list[Any]] = defaultdict(list)
    for note in select_rows(conn, "note", "item_id IS NULL OR item_id IN (SELECT value FROM json_each(?))", (wanted,)):
        notes[note.item_id].append(note)
    outcomes: dict[int, list[Any]] = defaultdict(list)
    for outcome in select_rows(conn, "outcome", "item_id IN (SELECT value FROM json_each(?))", (wanted,)):
        outcomes[outcome.item_id].append(outcome)
    return State(document_id=doc_id, main=main, items=items, children=children, notes=notes, outcomes=outcomes,
                 today=today)


def item_parent(conn: sqlite3.Connection, ids: set[int]) -> dict[int, int | None]:
    rows = conn.execute("SELECT id, parent_id FROM item WHERE id IN (SELECT value FROM json_each(?))", (ids_json(ids),))
    return dict(rows)


def legacy_layout(conn: sqlite3.Connection) -> dict[str, Any]:
    """The layout an earlier version kept in ``meta`` (title, language) for backlogs with no document."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'layout'").fetchone()
    try:
        data = json.loads(row[0]) if row and row[0] else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
