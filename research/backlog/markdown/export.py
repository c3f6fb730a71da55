"""Exporting a document: its text, with the backlog's changes since it was set edited in.

A document whose rows did not change since its text was last set (imported or synced)
exports as that text, read and returned without planning anything. Otherwise only the
changed rows are loaded, with their parents (where new children go) and, for what is
written anew (moved or added), everything under them; ``plan`` does the rest.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from research.backlog.markdown import reader
from research.backlog.markdown.plan import Base, plan_text
from research.backlog.markdown.source import SourceLines
from research.backlog.rules import main_document_id
from research.errors import ResearchError

CJK = re.compile(r"[\u4e00-\u9fff]")


def pick_document(docs: list, ref: str):
    """A document by the path given at import, its file name, its full path or its id."""
    text = str(ref).strip()
    full = str(Path(text).expanduser().resolve())
    for doc in docs:
        if text in (doc.name, doc.path, str(doc.id)) or full == doc.path:
            return doc
    by_name = [doc for doc in docs if Path(doc.path).name == text or Path(doc.name).name == text]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise ResearchError(f"{text!r} names {len(by_name)} documents; give its path: {', '.join(d.name for d in by_name)}")
    known = ", ".join(d.name for d in docs) or "none yet"
    raise ResearchError(f"no document {text!r} (documents: {known})")


def export_text(conn: sqlite3.Connection, doc_ref: str | None, today: str) -> tuple[str, Any]:
    """The Markdown to export: the named document, the only one, or the loose backlog (doc None)."""
    docs = reader.documents(conn)
    if doc_ref:
        doc = pick_document(docs, doc_ref)
    elif not docs:
        return export_loose(conn, today), None
    elif len(docs) == 1:
        doc = docs[0]
    else:
        names = ", ".join(d.name for d in docs)
        raise ResearchError(f"the backlog has {len(docs)} documents ({names}): give --doc NAME")
    return export_document(conn, doc, doc.id == main_document_id(conn), today), doc


def export_document(conn: sqlite3.Connection, doc, main: bool, today: str) -> str:
    bom = "\ufeff" if doc.conventions.get("bom") else ""
    touched, backlog_notes = reader.changed_since_base(conn, doc)
    if not touched and not backlog_notes:
        return bom + doc.text
    parents = {p for p in reader.item_parent(conn, touched).values() if p is not None}
    relevant = touched | parents | reader.anchored_parents(conn, doc.id, touched)
    base = reader.load_base(conn, doc, relevant)
    now = reader.item_parent(conn, touched)
    fresh = {i for i in touched if i not in base.nodes or now.get(i, -1) != base.nodes[i].form.get("base_parent")}
    only = relevant | reader.descendants(conn, fresh)
    state = reader.load_state(conn, doc.id, main, today, extra_ids=set(base.nodes), only=only)
    return bom + plan_text(base, state)


def export_loose(conn: sqlite3.Connection, today: str) -> str:
    """The backlog as one new document, for a backlog that has none (the seed's conventions)."""
    from research.backlog.markdown.dialects import MATRIX_HEADER
    from research.backlog.markdown.parse import parse_document

    state = reader.load_state(conn, None, True, today)
    items = list(state.items.values())
    legacy = reader.legacy_layout(conn)
    lang = legacy.get("lang") or ("zh" if any(CJK.search(i.title) for i in items[:200]) else "en")
    title = legacy.get("title") or ("研究待办" if lang == "zh" else "Research backlog")
    lines = [f"# {title}", ""]
    if legacy.get("preamble"):
        lines += [legacy["preamble"], ""]
    if any(i.innovation or i.practicality or i.feasibility for i in items if i.kind == "item"):
        header = MATRIX_HEADER[lang]
        heading = (legacy.get("matrix") or {}).get("heading") or ("📊 研究优先级矩阵" if lang == "zh" else "Priority matrix")
        lines += ["---", "", f"## {heading}", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join("-" * (len(h) * 2 + 2 if CJK.search(h) else len(h) + 2) for h in header) + "|"]
    skeleton = "\n".join(lines) + "\n"
    parsed = parse_document(skeleton)
    conventions = dict(parsed.conventions, lang=lang, section_rules=True, item_level=2)
    layout = dict(parsed.layout)
    # New items go right under the title, before the matrix.
    layout["item"] = {"line": 2 + (2 if legacy.get("preamble") else 0), "level": 2, "after_items": False}
    if state.notes.get(None):
        notes_heading = (legacy.get("notes") or {}).get("heading") or ("📝 研究笔记" if lang == "zh" else "Research notes")
        skeleton += f"\n---\n\n## {notes_heading}\n"
        layout["notes"] = {"line": len(SourceLines.from_text(skeleton)), "level": 3, "descending": False}
    return plan_text(Base(SourceLines.from_text(skeleton), conventions, layout), state)
