"""Markdown documents in the backlog: import, export, sync, and the list of documents.

An import keeps the file's text as a ``Document`` and one ``Anchor`` per item, note and
outcome read from it (where it sits, and the values it had). From then on:

- ``export`` edits the backlog's changes since into that text (``plan``): a document
  nobody changed comes back byte for byte;
- ``import`` of the same file again brings the file's edits in, keeping changes made in
  the backlog since (a field changed on both sides is a conflict: ``--force`` takes the
  file's value);
- ``sync`` does both: the file's edits come in, the backlog's go out into the file, in
  place, atomically and with a backup; a field changed on both sides stops it unless
  ``prefer`` says which side wins.

Every change is recorded through the ``ChangeLog``, so ``research undo`` reverts an
import or a sync as a whole.

Why one module of this size: import, re-import and sync are one field-by-field merge of the
file against its anchors and the backlog (``_Merge``), read three ways.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, select

from research import clock
from research.backlog.items import (
    ChangeLog,
    add_note,
    add_outcome,
    delete_item,
    status_timestamps,
)
from research.backlog.markdown import reader
from research.backlog.markdown import writer as writer_module
from research.backlog.markdown.export import pick_document
from research.backlog.markdown.importer import Conflict, Report, read_document_file
from research.backlog.markdown.model import (
    FIELDS,
    ParsedDocument,
    ParsedNode,
    note_anchor,
    outcome_anchor,
)
from research.backlog.markdown.parse import parse_document
from research.backlog.markdown.plan import Base, item_value, plan_text
from research.backlog.markdown.source import SourceLines
from research.backlog.rules import main_document_id
from research.errors import ResearchError
from research.files import write_text_file
from research.store.db import raw_connection
from research.store.models import Anchor, Document, Event, Item, Note, Outcome
from research.vocab import composite_score, parse_estimate

Progress = Callable[[str, int, int], None]

# Fields a file edit brings into the backlog (score follows the three it is made of).
MERGED_FIELDS = tuple(f for f in FIELDS if f not in ("kind", "score"))


# ---------------------------------------------------------------------------
# Finding documents


def documents(session: Session) -> list[Document]:
    return list(session.exec(select(Document).order_by(Document.id)))


def main_document(session: Session) -> Document | None:
    main_id = main_document_id(raw_connection(session))
    return session.get(Document, main_id) if main_id is not None else None


def resolve_document(session: Session, ref: str) -> Document:
    """A document by the path given at import, its file name, its full path or its id."""
    return pick_document(documents(session), ref)


def _document_for_file(session: Session, path: Path, name: str | None) -> Document | None:
    if name:
        return resolve_document(session, name)
    full = str(path.resolve())
    return session.exec(select(Document).where(Document.path == full)).first()


def set_main(session: Session, log: ChangeLog, doc: Document) -> bool:
    changed = False
    for other in documents(session):
        changed |= log.updated(other, {"is_main": other.id == doc.id}, action="document")
    return changed


def document_summaries(session: Session) -> list[dict[str, Any]]:
    counts = dict(session.exec(select(Item.document_id, func.count()).group_by(Item.document_id)).all())
    main = main_document(session)
    out = []
    for doc in documents(session):
        since = session.exec(
            select(func.count()).select_from(Event).join(Item, Item.id == Event.item_id)
            .where(Item.document_id == doc.id, Event.ts > doc.synced_at, Event.undone == False)  # noqa: E712
        ).one()
        out.append({
            "id": doc.id, "name": doc.name, "path": doc.path, "title": doc.title,
            "items": counts.get(doc.id, 0), "main": main is not None and doc.id == main.id,
            "imported_at": doc.imported_at, "synced_at": doc.synced_at, "changes_since_sync": since,
        })
    return out


# ---------------------------------------------------------------------------
# Import


def import_file(
    session: Session,
    log: ChangeLog,
    path: Path,
    *,
    name: str | None = None,
    strict: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Import ``path`` as a new document, or bring a known document's file edits in."""
    file, parsed = read_document_file(path, strict=strict)
    doc = _document_for_file(session, path, name)
    if doc is None:
        report = Report(document=str(path), new_document=True)
        report.warnings = parsed.messages()
        _create_document(session, log, path, file, parsed, report, progress)
        return report
    report = Report(document=doc.name)
    report.warnings = parsed.messages()
    if file.sha256 == doc.sha256 and str(path.resolve()) == doc.path:
        report.unchanged = len(_anchors(session, doc, "item"))
        return report
    if not force:
        _refuse_older_file(session, doc, path, file.mtime)
    pending = reader.changed_since_base(raw_connection(session), doc) != (set(), False)
    merge = _Merge(session, log, doc, parsed, report)
    merge.match()
    if merge.report.conflicts and not force:
        raise ConflictError(merge.report)
    merge.apply(prefer="file")
    merge.rebase(parsed, file.text, file.sha256, file.mtime, str(path.resolve()), keep_base_batch=pending)
    return report


class ConflictError(ResearchError):
    def __init__(self, report: Report, hint: str = "--force takes the file's values"):
        self.report = report
        lines = [c.line() for c in report.conflicts]
        super().__init__(
            f"{len(lines)} conflict(s) between {report.document} and the backlog; nothing changed ({hint}):\n  "
            + "\n  ".join(lines)
        )


def _refuse_older_file(session: Session, doc: Document, path: Path, mtime: float) -> None:
    last = session.exec(
        select(func.max(Event.ts)).join(Item, Item.id == Event.item_id)
        .where(Item.document_id == doc.id, Event.ts > doc.synced_at, Event.undone == False)  # noqa: E712
    ).one()
    newest = max([t for t in (_epoch(last), doc.mtime) if t is not None], default=None)
    if newest is not None and mtime + 1e-6 < newest:
        when = datetime.fromtimestamp(mtime).strftime("%Y-%m-%d %H:%M")
        raise ResearchError(
            f"{path} (last modified {when}) is older than the backlog's copy of {doc.name}; "
            "importing it could revert changes made since; pass --force to import it anyway"
        )


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def _create_document(session, log: ChangeLog, path: Path, file, parsed: ParsedDocument, report: Report,
                     progress: Progress | None) -> Document:
    document_id, writer = writer_module.create_document(
        raw_connection(session), log.batch, str(path), str(path.resolve()), file, parsed, report.added, progress)
    log.count += writer.events_written + 1
    report.notes_added = writer.notes_added
    report.outcomes_added = writer.outcomes_added
    return session.get(Document, document_id)


def _writer(session: Session, log: ChangeLog, doc: Document, event_anchors: bool = True) -> writer_module.BulkWriter:
    return writer_module.BulkWriter(raw_connection(session), log.batch, doc.id, clock.now_iso(), event_anchors)


# ---------------------------------------------------------------------------
# The stored base of a document


def _anchors(session: Session, doc: Document, table: str) -> list[Anchor]:
    return list(session.exec(select(Anchor).where(Anchor.document_id == doc.id, Anchor.table_name == table)))


def _today() -> str:
    return clock.now().astimezone().date().isoformat()


# ---------------------------------------------------------------------------
# Merging a file's edits in (re-import and sync)


class _Merge:
    """Matches a file's parse against a document's base and the backlog, field by field."""

    def __init__(self, session: Session, log: ChangeLog, doc: Document, parsed: ParsedDocument, report: Report):
        self.session, self.log, self.doc, self.parsed, self.report = session, log, doc, parsed, report
        self.base = reader.load_base(raw_connection(session), doc)
        self.items: dict[int, Item] = {
            i.id: i for i in session.exec(select(Item).where((Item.document_id == doc.id) | Item.id.in_(list(self.base.nodes))))
        }
        self.match_of: dict[int, int] = {}  # id(file node) -> item id
        self.file_changes: list[tuple[Item, str, Any]] = []
        self.deleted_in_file: list[int] = []
        self.new_nodes: list[ParsedNode] = []
        self.moves: list[tuple[Item, int | None]] = []

    def match(self) -> None:
        by_key = {key: item_id for item_id, key in _base_keys(self.base.nodes).items()}
        unmatched_base = dict(self.base.nodes)
        file_nodes = list(self.parsed.walk())
        leftovers = []
        for node in file_nodes:
            item_id = by_key.get(_key(node.key))
            if item_id is not None and item_id in unmatched_base:
                self.match_of[id(node)] = item_id
                del unmatched_base[item_id]
            else:
                leftovers.append(node)
        by_title: dict[tuple, list[int]] = defaultdict(list)
        for item_id, node in unmatched_base.items():
            by_title[(node.kind, node.title)].append(item_id)
        for node in leftovers:
            ids = by_title.get((node.kind, node.title), [])
            if len(ids) == 1:
                self.match_of[id(node)] = ids.pop()
                unmatched_base.pop(self.match_of[id(node)])
            else:
                self.new_nodes.append(node)
        self.deleted_in_file = list(unmatched_base)
        for node in file_nodes:
            item_id = self.match_of.get(id(node))
            if item_id is None:
                continue
            self._compare(node, self.base.nodes[item_id], self.items.get(item_id))
        for item_id in self.deleted_in_file:
            item = self.items.get(item_id)
            if item is None or item.document_id != self.doc.id:
                continue
            base = self.base.nodes[item_id]
            changed = [f for f in MERGED_FIELDS if _differs(item_value(item, f), base.value(f), f)]
            if changed:
                self.report.conflicts.append(Conflict(item.title, "deleted in the file", "(deleted)", f"changed {', '.join(changed)}"))

    def _compare(self, node: ParsedNode, base: ParsedNode, item: Item | None) -> None:
        file_parent = self.match_of.get(id(node.parent)) if node.parent is not None else None
        if node.parent is not None and file_parent is None:
            file_parent = -1  # under an item new in the file
        file_changed = [f for f in MERGED_FIELDS if _differs(node.value(f), base.value(f), f)]
        if item is None or item.document_id != self.doc.id:
            if file_changed:
                self.report.conflicts.append(Conflict(base.title, "deleted in the backlog", f"changed {', '.join(file_changed)}", "(deleted)"))
            return
        for name in file_changed:
            backlog = item_value(item, name)
            if _differs(backlog, base.value(name), name) and _differs(backlog, node.value(name), name):
                self.report.conflicts.append(Conflict(item.title, name, node.value(name), backlog))
                self.file_changes.append((item, name, node.value(name)))  # taken when the file wins
                continue
            self.file_changes.append((item, name, node.value(name)))
        base_parent = base.form.get("base_parent")
        if file_parent != base_parent and item.parent_id == base_parent and file_parent != -1:
            self.moves.append((item, file_parent))

    def apply(self, prefer: str) -> None:
        conflicted = {(c.item, c.field) for c in self.report.conflicts}
        changed_items: dict[int, Item] = {}
        for item, name, value in self.file_changes:
            if (item.title, name) in conflicted and prefer != "file":
                continue
            changes: dict[str, Any] = {name: value}
            if name == "estimate":
                changes["estimate_min_days"], changes["estimate_max_days"] = parse_estimate(value)
            if name in ("innovation", "practicality", "feasibility"):
                merged = {k: (value if k == name else getattr(item, k)) for k in ("innovation", "practicality", "feasibility")}
                changes["score"] = composite_score(**merged)
            if name == "status":
                changes.update(status_timestamps(item, value))
            if self.log.updated(item, changes, action="status" if name == "status" else "edited"):
                changed_items[item.id] = item
        self.report.changed = [i.title for i in changed_items.values()]
        for item, parent in self.moves:
            self.log.updated(item, {"parent_id": parent}, action="move")
        self._new_items()
        for item_id in self.deleted_in_file:
            item = self.session.get(Item, item_id)
            if item is None or item.document_id != self.doc.id:
                continue
            if any(c.item == item.title and c.field == "deleted in the file" for c in self.report.conflicts) and prefer != "file":
                continue
            self.report.removed.append(item.title)
            delete_item(self.session, self.log, item)
        self._merge_notes()
        self._merge_outcomes()
        self.report.unchanged = max(0, len(self.match_of) - len(self.report.changed))

    def _new_items(self) -> None:
        writer = _writer(self.session, self.log, self.doc)
        new_ids = {id(n) for n in self.new_nodes}
        for node in self.new_nodes:
            if node.parent is not None and id(node.parent) in new_ids:
                continue  # written with its parent
            parent = self.match_of.get(id(node.parent)) if node.parent is not None else None
            siblings = node.parent.children if node.parent is not None else self.parsed.nodes
            position = self._position_after(siblings, node, parent)
            item_id = writer.add_node(node, parent, position)
            self.match_of[id(node)] = item_id
            self.report.added.append(" › ".join(k[1] for k in node.key))
            self._add_children(writer, node)
        writer.flush()
        self.report.notes_added += writer.notes_added
        self.report.outcomes_added += writer.outcomes_added

    def _add_children(self, writer: writer_module.BulkWriter, node: ParsedNode) -> None:
        parent_id = self.match_of[id(node)]
        for position, child in enumerate(node.children):
            item_id = writer.add_node(child, parent_id, position)
            self.match_of[id(child)] = item_id
            self.report.added.append(" › ".join(k[1] for k in child.key))
            self._add_children(writer, child)

    def _position_after(self, siblings: list[ParsedNode], node: ParsedNode, parent: int | None) -> int:
        """A position among the item's backlog siblings that keeps the file's order."""
        index = siblings.index(node)
        for before in reversed(siblings[:index]):
            item_id = self.match_of.get(id(before))
            if item_id is not None and item_id in self.items:
                return self.items[item_id].position
        cond = Item.parent_id == parent if parent is not None else Item.parent_id.is_(None)
        last = self.session.exec(select(func.max(Item.position)).where(cond)).one()
        return 0 if last is None else last + 1

    def _merge_notes(self) -> None:
        base_notes = defaultdict(list)
        for note_id, (note, owner) in self.base.notes.items():
            base_notes[owner].append((note_id, note))
        owners = [(None, self.parsed.notes)] + [(self.match_of.get(id(n)), n.notes) for n in self.parsed.walk()]
        seen_base: set[int] = set()
        self.note_match: dict[int, int] = {}
        for owner, notes in owners:
            if owner is None and notes is not self.parsed.notes:
                continue
            candidates = base_notes.get(owner, [])
            for note in notes:
                found = next((nid for nid, b in candidates if nid not in seen_base and (b.date, b.title) == (note.date, note.title)), None)
                if found is None:
                    created = add_note(self.session, self.log, self.session.get(Item, owner) if owner else None,
                                       note.text or " ", date=note.date, title=note.title)
                    if note.date is None:
                        self.log.updated(created, {"date": None}, action="note-edited")
                    if not note.text:
                        self.log.updated(created, {"text": ""}, action="note-edited")
                    self.note_match[id(note)] = created.id
                    self.report.notes_added += 1
                    continue
                seen_base.add(found)
                self.note_match[id(note)] = found
                row = self.session.get(Note, found)
                base_note = dict(candidates)[found]
                if row is None:
                    continue
                if note.text != base_note.text:
                    if row.text != base_note.text and row.text != note.text:
                        self.report.conflicts.append(Conflict(note.date or note.title or "note", "note text", note.text, row.text))
                        continue
                    self.log.updated(row, {"text": note.text}, action="note-edited")
                    self.report.notes_changed += 1
        for note_id in set(self.base.notes) - seen_base:
            owner = self.base.notes[note_id][1]
            if owner is not None and owner in self.deleted_in_file:
                continue
            row = self.session.get(Note, note_id)
            if row is not None and row.text == self.base.notes[note_id][0].text:
                self.log.deleted(row)
                self.report.notes_removed += 1

    def _merge_outcomes(self) -> None:
        base_by_owner = defaultdict(dict)
        for outcome_id, (outcome, owner) in self.base.outcomes.items():
            base_by_owner[owner][(outcome.kind, outcome.ref)] = outcome_id
        self.outcome_match: dict[int, int] = {}
        seen: set[int] = set()
        for node in self.parsed.walk():
            owner = self.match_of.get(id(node))
            if owner is None:
                continue
            for outcome in node.outcomes:
                found = base_by_owner.get(owner, {}).get((outcome.kind, outcome.ref))
                if found is None:
                    existing = self.session.exec(select(Outcome).where(Outcome.item_id == owner, Outcome.kind == outcome.kind, Outcome.ref == outcome.ref)).first()
                    if existing is None:
                        item = self.session.get(Item, owner)
                        existing = add_outcome(self.session, self.log, item, outcome.kind, outcome.ref, outcome.text)
                        self.report.outcomes_added += 1
                    self.outcome_match[id(outcome)] = existing.id
                    continue
                seen.add(found)
                self.outcome_match[id(outcome)] = found
                row = self.session.get(Outcome, found)
                if row is not None and row.text != outcome.text:
                    self.log.updated(row, {"text": outcome.text}, action="outcome")
        for outcome_id in set(self.base.outcomes) - seen:
            owner = self.base.outcomes[outcome_id][1]
            if owner in self.deleted_in_file:
                continue
            row = self.session.get(Outcome, outcome_id)
            if row is not None:
                self.log.deleted(row)

    def rebase(self, parsed: ParsedDocument, text: str, sha256: str, mtime: float | None, path: str,
               mapping: dict[int, int] | None = None, keep_base_batch: bool = False) -> None:
        """Make ``text`` the document's base, anchoring every item, note and outcome in it."""
        mapping = self.match_of if mapping is None else mapping
        for anchor in _all_anchors(self.session, self.doc):
            self.log.deleted(anchor, action="anchor")
        self.session.flush()
        writer = _writer(self.session, self.log, self.doc)
        for node in parsed.walk():
            item_id = mapping.get(id(node))
            if item_id is None:
                continue
            parent = mapping.get(id(node.parent)) if node.parent is not None else None
            writer.anchor("item", item_id, {"node": node.anchor(), "parent": parent})
        note_match = getattr(self, "note_match", {})
        outcome_match = getattr(self, "outcome_match", {})
        for owner_node, notes in [(None, parsed.notes)] + [(n, n.notes) for n in parsed.walk()]:
            owner = mapping.get(id(owner_node)) if owner_node is not None else None
            for note in notes:
                note_id = note_match.get(id(note))
                if note_id is not None:
                    writer.anchor("note", note_id, {"note": note_anchor(note), "owner": owner})
        for node in parsed.walk():
            owner = mapping.get(id(node))
            for outcome in node.outcomes:
                outcome_id = outcome_match.get(id(outcome))
                if outcome_id is not None:
                    writer.anchor("outcome", outcome_id, {"outcome": outcome_anchor(outcome), "owner": owner})
        writer.flush()
        now = clock.now_iso()
        self.log.updated(self.doc, {
            "text": text, "sha256": sha256, "mtime": mtime, "conventions": parsed.conventions,
            "layout": parsed.layout, "meta": parsed.meta, "title": parsed.title, "synced_at": now, "path": path,
            # Changes the text does not carry yet keep the old base batch, so export still sees them.
            "base_batch": self.doc.base_batch if keep_base_batch else self.log.batch,
        }, action="sync")


def _all_anchors(session: Session, doc: Document) -> list[Anchor]:
    return list(session.exec(select(Anchor).where(Anchor.document_id == doc.id)))


def _base_keys(nodes: dict[int, ParsedNode]) -> dict[int, tuple]:
    """Each anchored item's path of (kind, title, occurrence), as the parser keys a file's nodes."""
    children: dict[int | None, list[tuple[int, int, ParsedNode]]] = defaultdict(list)
    for item_id, node in nodes.items():
        children[node.form.get("base_parent")].append((node.line, item_id, node))
    keys: dict[int, tuple] = {}
    stack: list[tuple[int | None, tuple]] = [(None, ())]
    while stack:
        parent, prefix = stack.pop()
        seen: dict[tuple, int] = defaultdict(int)
        for _line, item_id, node in sorted(children.get(parent, [])):
            ident = (node.kind, node.title)
            keys[item_id] = (*prefix, (node.kind, node.title, seen[ident]))
            seen[ident] += 1
            stack.append((item_id, keys[item_id]))
    return keys


def _key(key: list) -> tuple:
    return tuple(tuple(k) for k in key)


def _differs(a: Any, b: Any, name: str) -> bool:
    if name == "tags":
        return list(a or []) != list(b or [])
    if name == "body":
        return (a or "") != (b or "")
    return a != b


# ---------------------------------------------------------------------------
# Sync


def sync_file(session: Session, log: ChangeLog, path: Path, *, prefer: str | None = None, name: str | None = None,
              dry_run: bool = False, strict: bool = False) -> Report:
    doc = _document_for_file(session, path, name)
    if doc is None:
        raise ResearchError(f"{path} is not a document of this backlog: `research import {path}` first "
                            "(or --doc NAME if it is a known document's new place)")
    file, parsed = read_document_file(path, strict=strict)
    report = Report(document=doc.name)
    report.warnings = parsed.messages()
    merge = _Merge(session, log, doc, parsed, report)
    merge.match()
    if report.conflicts and prefer is None:
        raise ConflictError(report, "--prefer file or --prefer backlog says which side wins")
    merge.apply(prefer=prefer or "file")
    session.flush()
    # Write the backlog's side into the file's text, anchored on the file's own parse.
    base = Base(SourceLines.from_text(parsed.text), dict(parsed.conventions), dict(parsed.layout))
    for node in parsed.walk():
        item_id = merge.match_of.get(id(node))
        if item_id is not None:
            node.form["base_parent"] = merge.match_of.get(id(node.parent)) if node.parent is not None else None
            base.nodes[item_id] = node
    for owner_node, notes in [(None, parsed.notes)] + [(n, n.notes) for n in parsed.walk()]:
        owner = merge.match_of.get(id(owner_node)) if owner_node is not None else None
        for note in notes:
            if id(note) in merge.note_match:
                base.notes[merge.note_match[id(note)]] = (note, owner)
    for node in parsed.walk():
        for outcome in node.outcomes:
            if id(outcome) in merge.outcome_match:
                base.outcomes[merge.outcome_match[id(outcome)]] = (outcome, merge.match_of.get(id(node)))
    main = main_document(session)
    state = reader.load_state(raw_connection(session), doc.id, main is not None and main.id == doc.id, _today(),
                              extra_ids=set(base.nodes))
    text = plan_text(base, state)
    report.written_changes = int(text != parsed.text)
    if dry_run:
        return report
    new_text = ("\ufeff" if file.bom else "") + text
    if text != parsed.text:
        written = write_text_file(path, new_text, backup=True)
        report.written, report.backup = written.path, written.backup
        mtime = Path(written.path).stat().st_mtime
    else:
        mtime = file.mtime
    sha = hashlib.sha256(new_text.encode("utf-8")).hexdigest()
    reparsed = parse_document(text, source=str(path), bom=file.bom) if text != parsed.text else parsed
    mapping = merge.match_of if reparsed is parsed else _map_by_keys(session, doc, reparsed)
    if reparsed is not parsed:
        merge.note_match = _map_notes(session, mapping, reparsed)
        merge.outcome_match = _map_outcomes(session, mapping, reparsed)
    merge.rebase(reparsed, text, sha, mtime, str(path.resolve()), mapping=mapping)
    return report


def _map_by_keys(session: Session, doc: Document, parsed: ParsedDocument) -> dict[int, int]:
    """Which item each node of a text we wrote is, by the items' paths of titles."""
    items = list(session.exec(select(Item).where(Item.document_id == doc.id)))
    children: dict[int | None, list[Item]] = defaultdict(list)
    ids = {i.id for i in items}
    for item in items:
        children[item.parent_id if item.parent_id in ids else None].append(item)
    keys: dict[tuple, int] = {}

    def rec(parent: int | None, prefix: tuple) -> None:
        seen: dict[tuple, int] = defaultdict(int)
        for item in sorted(children.get(parent, []), key=lambda i: (i.position, i.id)):
            ident = (item.kind, item.title)
            key = (*prefix, (item.kind, item.title, seen[ident]))
            seen[ident] += 1
            keys[key] = item.id
            rec(item.id, key)

    rec(None, ())
    return {id(node): keys[_key(node.key)] for node in parsed.walk() if _key(node.key) in keys}


def _map_notes(session: Session, mapping: dict[int, int], parsed: ParsedDocument) -> dict[int, int]:
    out: dict[int, int] = {}
    for owner_node, notes in [(None, parsed.notes)] + [(n, n.notes) for n in parsed.walk()]:
        owner = mapping.get(id(owner_node)) if owner_node is not None else None
        query = select(Note).where(Note.item_id == owner) if owner is not None else select(Note).where(Note.item_id.is_(None))
        rows = list(session.exec(query.order_by(Note.id)))
        used: set[int] = set()
        for note in notes:
            row = next((r for r in rows if r.id not in used and r.text == note.text and (r.date or None) == note.date), None) \
                or next((r for r in rows if r.id not in used and (r.date or None) == note.date), None)
            if row is not None:
                used.add(row.id)
                out[id(note)] = row.id
    return out


def _map_outcomes(session: Session, mapping: dict[int, int], parsed: ParsedDocument) -> dict[int, int]:
    out: dict[int, int] = {}
    for node in parsed.walk():
        owner = mapping.get(id(node))
        if owner is None:
            continue
        rows = list(session.exec(select(Outcome).where(Outcome.item_id == owner)))
        for outcome in node.outcomes:
            row = next((r for r in rows if (r.kind, r.ref) == (outcome.kind, outcome.ref)), None)
            if row is not None:
                out[id(outcome)] = row.id
    return out
