"""Backlog operations: the plain library behind the CLI's item commands.

Every change goes through a ``ChangeLog``, which writes row-level events (before
and after values) sharing one batch per command. ``undo`` reverts the latest
batch generically from those rows, so any command, including an import or a
recursive delete, is undone as a whole.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlmodel import Session, SQLModel, select

from research import clock
from research.backlog.rules import (
    INHERIT,
    ItemFields,
    check_slug,
    insert_item,
    next_batch,
    next_position,
    status_timestamps,
)
from research.backlog.views import (  # noqa: F401
    Backlog,
    ItemRow,
    ListFilter,
    filter_items,
    item_summary,
    sort_key,
)
from research.errors import ResearchError
from research.store.db import raw_connection
from research.store.models import (
    OUTCOME_KINDS,
    Anchor,
    Document,
    Event,
    Item,
    Link,
    Metric,
    Note,
    Outcome,
    Run,
)
from research.vocab import (
    OPEN_STATUSES,
    OUTCOME_LOOKUP,
    normalize_status,
    slugify,
)

# Tables whose rows events may refer to (undo looks models up here).
TABLES: dict[str, type[SQLModel]] = {
    m.__tablename__: m for m in (Item, Note, Outcome, Link, Run, Metric, Document, Anchor)
}
# Rows that belong to an item and go (and come back) with it, in deletion order:
# runs before the links they point to, so undo re-creates links first.
DEPENDENTS: list[tuple[type[SQLModel], str]] = [(Run, "item_id"), (Link, "item_id"), (Note, "item_id"), (Outcome, "item_id")]


def row_dict(obj: SQLModel) -> dict[str, Any]:
    return obj.model_dump()


class ChangeLog:
    """Records the events of one command under one batch number."""

    def __init__(self, session: Session):
        self.session = session
        self._batch: int | None = None
        self.count = 0

    @property
    def batch(self) -> int:
        if self._batch is None:
            self._batch = next_batch(raw_connection(self.session))
        return self._batch

    def _add(self, action: str, table: str, row_id: int, item_id: int | None, before, after) -> None:
        self.session.add(
            Event(
                batch=self.batch,
                ts=clock.now_iso(),
                action=action,
                item_id=item_id,
                table_name=table,
                row_id=row_id,
                before=before,
                after=after,
            )
        )
        self.count += 1

    def created(self, obj: SQLModel, action: str = "created") -> None:
        self.session.flush()
        self._add(action, obj.__tablename__, obj.id, _item_id_of(obj), None, row_dict(obj))

    def updated(self, obj: SQLModel, changes: dict[str, Any], action: str = "edited") -> bool:
        """Apply ``changes`` to ``obj`` and record what changed; False when nothing did."""
        before, after = {}, {}
        for name, value in changes.items():
            old = getattr(obj, name)
            if old != value:
                before[name], after[name] = old, value
                setattr(obj, name, value)
        if not after:
            return False
        if isinstance(obj, Item) and "updated_at" not in after:
            before["updated_at"], after["updated_at"] = obj.updated_at, clock.now_iso()
            obj.updated_at = after["updated_at"]
        self.session.add(obj)
        self.session.flush()
        self._add(action, obj.__tablename__, obj.id, _item_id_of(obj), before, after)
        return True

    def deleted(self, obj: SQLModel, action: str = "delete") -> None:
        self._add(action, obj.__tablename__, obj.id, _item_id_of(obj), row_dict(obj), None)
        self.session.delete(obj)
        self.session.flush()


def _item_id_of(obj: SQLModel) -> int | None:
    if isinstance(obj, Item):
        return obj.id
    return getattr(obj, "item_id", None)


# ---------------------------------------------------------------------------
# Looking items up


def resolve_item(session: Session, ref: str | int) -> Item:
    """An item by numeric id, slug or the beginning of one slug (``views.match_item_ref``)."""
    from research.backlog.views import find_item_id
    return session.get(Item, find_item_id(raw_connection(session), ref))


def subtree(session: Session, item: Item) -> list[Item]:
    """The item and all its descendants, parents before children."""
    out, frontier = [item], [item.id]
    while frontier:
        kids = list(session.exec(select(Item).where(Item.parent_id.in_(frontier)).order_by(Item.position, Item.id)))
        out.extend(kids)
        frontier = [k.id for k in kids]
    return out


# ---------------------------------------------------------------------------
# Creating and changing items




def add_item(
    session: Session,
    log: ChangeLog,
    fields: ItemFields,
    parent: Item | None = None,
    position: int | None = None,
    created_at: str | None = None,
    document_id: int | None | str = INHERIT,
) -> Item:
    """A new item (``rules.insert_item``, inside the session's transaction). It joins its
    parent's document; a top-level one joins the main document (``document_id`` overrides:
    None keeps it in no document)."""
    row = insert_item(raw_connection(session), log.batch, fields, parent.id if parent else None, position,
                      created_at, document_id)
    log.count += 1
    return session.get(Item, row["id"])


def edit_item(session: Session, log: ChangeLog, item: Item, fields: ItemFields) -> bool:
    changes = fields.changes(item)
    if fields.slug is not None:
        slug = slugify(fields.slug)
        check_slug(slug)
        clash = session.exec(select(Item.id).where(Item.slug == slug)).first()
        if clash is not None and clash != item.id:
            raise ResearchError(f"slug {slug!r} is already taken")
        changes["slug"] = slug
    status_changed = "status" in changes and changes["status"] != item.status
    if status_changed:
        changes.update(status_timestamps(item, changes["status"]))
    return log.updated(item, changes, action="status" if status_changed and len(changes) <= 4 else "edited")


def set_status(session: Session, log: ChangeLog, item: Item, status: str, action: str = "status") -> bool:
    status = normalize_status(status)
    changes = {"status": status, **status_timestamps(item, status)}
    if status == item.status:
        return False
    return log.updated(item, changes, action=action)


def not_a_task(session: Session, item: Item) -> str | None:
    """Why ``check``/``uncheck`` on ``item`` may not be meant: it is a heading-level item, not a
    checklist task (and how many open items sit under it). None for a task."""
    if item.kind == "task":
        return None
    under = sum(1 for i in subtree(session, item)[1:] if i.status in OPEN_STATUSES)
    extra = f" ({under} open item{'s' if under != 1 else ''} under it)" if under else ""
    return f"{item.id} “{item.title}” is not a checklist task{extra}"


def move_item(session: Session, log: ChangeLog, item: Item, new_parent: Item | None,
              document_id: int | None | str = INHERIT) -> bool:
    """Move ``item`` (with its subtree) under ``new_parent``, or to the top level.

    It joins the new parent's document; at the top level it stays in its document unless
    ``document_id`` names another (None: no document).
    """
    items = subtree(session, item)
    if new_parent is not None:
        if new_parent.id == item.id or new_parent.id in {i.id for i in items}:
            raise ResearchError("cannot move an item under itself or one of its descendants")
    new_parent_id = new_parent.id if new_parent else None
    if document_id == INHERIT:
        document_id = new_parent.document_id if new_parent is not None else item.document_id
    if new_parent_id == item.parent_id and document_id == item.document_id:
        return False
    changes: dict[str, Any] = {"document_id": document_id}
    if new_parent_id != item.parent_id or document_id != item.document_id:
        # It goes last among its new siblings, where a document writes it.
        changes.update(parent_id=new_parent_id, position=next_position(raw_connection(session), new_parent_id))
    changed = log.updated(item, changes, action="move")
    for child in items[1:]:
        log.updated(child, {"document_id": document_id}, action="move")
    return changed


def delete_item(session: Session, log: ChangeLog, item: Item) -> int:
    """Delete the item, its descendants and everything attached; returns items removed."""
    items = subtree(session, item)
    ids = [i.id for i in items]
    # Dependents first, then items deepest first, so undo (which replays in
    # reverse) re-creates parents before children and items before their notes.
    run_ids = list(session.exec(select(Run.id).where(Run.item_id.in_(ids))))
    if run_ids:
        for metric in session.exec(select(Metric).where(Metric.run_id.in_(run_ids))):
            log.deleted(metric)
    for model, column in DEPENDENTS:
        for row in session.exec(select(model).where(getattr(model, column).in_(ids))):
            log.deleted(row)
    for doomed in reversed(items):
        log.deleted(doomed)
    return len(items)


def add_note(session: Session, log: ChangeLog, item: Item | None, text: str, date: str | None = None, title: str | None = None) -> Note:
    if not text.strip() and not title:
        raise ResearchError("note text must not be empty")
    note = Note(
        item_id=item.id if item else None,
        date=date or clock.now().astimezone().date().isoformat(),
        title=title,
        text=text.strip("\n"),
        created_at=clock.now_iso(),
    )
    session.add(note)
    log.created(note, action="note")
    if item is not None:
        log.updated(item, {"updated_at": clock.now_iso()}, action="touched")
    return note


def add_outcome(session: Session, log: ChangeLog, item: Item, kind: str, ref: str = "", text: str = "") -> Outcome:
    kind = normalize_outcome_kind(kind)
    outcome = Outcome(item_id=item.id, kind=kind, ref=ref, text=text, created_at=clock.now_iso())
    session.add(outcome)
    log.created(outcome, action="outcome")
    return outcome


def normalize_outcome_kind(kind: str) -> str:
    found = OUTCOME_LOOKUP.get(kind.strip().lower())
    if found:
        return found
    raise ResearchError(f"unknown outcome kind {kind!r}; use one of: {', '.join(OUTCOME_KINDS)}")


def parse_outcome_spec(spec: str) -> tuple[str, str]:
    """'code:experiments/x.py' -> ('code', 'experiments/x.py')."""
    kind, sep, ref = spec.partition(":")
    if not sep:
        raise ResearchError(f"outcome {spec!r} must look like KIND:REF (kinds: {', '.join(OUTCOME_KINDS)})")
    return normalize_outcome_kind(kind), ref.strip()


# ---------------------------------------------------------------------------
# Undo


def describe_undo(session: Session, events: list[Event], limit: int = 5) -> list[str]:
    """What undoing ``events`` did, in words: one line per row, at most ``limit`` lines."""
    lines = []
    for event in events:
        if event.action == "touched":
            continue
        row = event.before or event.after or {}
        what = event.table_name
        if what == "item":
            current = session.get(Item, event.row_id)
            title = row.get("title") or (current.title if current is not None else "")
            kind = row.get("kind") or (current.kind if current is not None else "item")
            what = f"{kind} {event.row_id} {title!r}"
        else:
            what = f"{what} {event.row_id}"
        if event.before is None:
            lines.append(f"removed {what}, which that change had added")
        elif event.after is None:
            lines.append(f"restored {what} (it was deleted)")
        else:
            changed = [
                f"{name} {_quoted(event.after.get(name))} -> {_quoted(value)}"
                for name, value in event.before.items()
                if not name.endswith("_at") and event.after.get(name) != value  # timestamps follow
            ]
            lines.append(f"{what}: {', '.join(changed) or 'no field changed'}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines


def _quoted(value) -> str:
    text = "(none)" if value is None else str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def undo_last(session: Session, with_runs: bool = False) -> tuple[int, list[Event]]:
    """Revert the most recent batch that is not undone; returns (batch, its events).

    Runs are not in the history, so a run made since on an item the batch created would be
    left naming nothing: undo refuses, naming the runs, unless ``with_runs`` (then those
    runs and their metrics go too). A run that used a link the batch created keeps its row
    and loses the link, as `research unlink` does.
    """
    batch = session.exec(select(func.max(Event.batch)).where(Event.undone == False)).one()  # noqa: E712
    if batch is None:
        raise ResearchError("nothing to undo")
    events = list(session.exec(select(Event).where(Event.batch == batch).order_by(Event.id.desc())))
    _release_runs(session, batch, events, with_runs)
    if events and all(e.before is None for e in events):
        _undo_creations(session, batch, events)
        return batch, events
    for event in events:
        model = TABLES.get(event.table_name)
        if model is None:
            raise ResearchError(f"cannot undo a change to table {event.table_name!r}")
        if event.after is None:  # deleted: put it back
            session.add(model(**event.before))
        elif event.before is None:  # created: remove it
            row = session.get(model, event.row_id)
            if row is not None:
                if isinstance(row, Document):
                    _delete_anchors(session, [row.id])
                session.delete(row)
        else:  # updated: restore old values
            row = session.get(model, event.row_id)
            if row is None:
                raise ResearchError(f"cannot undo: {event.table_name} {event.row_id} no longer exists")
            for name, value in event.before.items():
                setattr(row, name, value)
            session.add(row)
        session.flush()
        event.undone = True
        session.add(event)
    session.flush()
    return batch, events


def _release_runs(session: Session, batch: int, events: list[Event], with_runs: bool) -> None:
    """Deal with runs (not in the history) that refer to rows undoing ``events`` removes."""
    from sqlalchemy import text

    from research.store.rows import ids_json

    created = {}
    for event in events:
        if event.before is None and event.after is not None:
            created.setdefault(event.table_name, set()).add(event.row_id)
    items, links = sorted(created.get("item", ())), sorted(created.get("link", ()))
    if not items and not links:
        return
    conn = session.connection()
    own_runs = ids_json(created.get("run", ()))
    in_ids = "IN (SELECT value FROM json_each(:ids))"
    blocking = conn.execute(
        text(f"SELECT run.id, item.slug FROM run JOIN item ON item.id = run.item_id WHERE run.item_id {in_ids} "
             "AND run.id NOT IN (SELECT value FROM json_each(:own)) ORDER BY run.id"),
        {"ids": ids_json(items), "own": own_runs},
    ).all()
    if blocking and not with_runs:
        actions = ", ".join(sorted({e.action for e in events if e.action != "touched"}))
        run_ids = [str(r[0]) for r in blocking]
        shown = ", ".join(run_ids[:8]) + (f" and {len(run_ids) - 8} more" if len(run_ids) > 8 else "")
        slugs = sorted({r[1] for r in blocking})
        where = ", ".join(slugs[:3]) + (f" and {len(slugs) - 3} more" if len(slugs) > 3 else "")
        raise ResearchError(
            f"cannot undo change {batch} ({actions}): run(s) {shown} were made since on its items ({where}); "
            "`research undo --with-runs` removes those runs too (their files stay under runs/), or keep the change"
        )
    if blocking:
        ids = ids_json(r[0] for r in blocking)
        conn.execute(text(f"DELETE FROM metric WHERE run_id {in_ids}"), {"ids": ids})
        conn.execute(text(f"DELETE FROM run WHERE id {in_ids}"), {"ids": ids})
    if links:
        conn.execute(text(f"UPDATE run SET link_id = NULL WHERE link_id {in_ids} "
                          "AND id NOT IN (SELECT value FROM json_each(:own))"),
                     {"ids": ids_json(links), "own": own_runs})
    session.expire_all()


# Tables in the order their rows can go: rows that refer to others first.
_DELETE_ORDER = ("metric", "run", "link", "anchor", "note", "outcome", "item", "document")


def _delete_anchors(session: Session, document_ids: list[int]) -> None:
    """A document's anchors are derived from its text: they go with it, with or without events."""
    from sqlalchemy import delete

    session.flush()
    session.execute(delete(Anchor).where(Anchor.document_id.in_(document_ids)))


def _undo_creations(session: Session, batch: int, events: list[Event]) -> None:
    """Undo a batch that only created rows (an import of thousands of items) in a few statements."""
    import json

    from sqlalchemy import bindparam, text

    by_table: dict[str, list[int]] = {}
    for event in events:
        if event.table_name not in TABLES:
            raise ResearchError(f"cannot undo a change to table {event.table_name!r}")
        by_table.setdefault(event.table_name, []).append(event.row_id)
    if "document" in by_table:
        _delete_anchors(session, by_table["document"])
    session.flush()
    conn = session.connection()
    for table in _DELETE_ORDER:
        ids = by_table.pop(table, None)
        if ids:
            # Children before parents: items refer to their parent item.
            conn.execute(text(f"DELETE FROM {table} WHERE id IN (SELECT value FROM json_each(:ids))")
                         .bindparams(bindparam("ids", json.dumps(sorted(ids, reverse=True)))))
    for table, ids in by_table.items():  # any table not in the list above
        model = TABLES[table]
        for row_id in ids:
            row = session.get(model, row_id)
            if row is not None:
                session.delete(row)
    session.flush()
    conn.execute(text("UPDATE event SET undone = 1 WHERE batch = :batch").bindparams(batch=batch))
    for event in events:
        event.undone = True
    session.expire_all()


# ---------------------------------------------------------------------------
# Reading


def export_json(session: Session) -> str:
    """The whole backlog as JSON: every item (documents or not), note, outcome and document."""
    import json

    backlog = Backlog.load_rows(session)
    items = []
    for item, _depth in backlog.walk():
        data = item_summary(item)
        data["body"] = item.body
        items.append(data)
    documents = [
        {k: v for k, v in d.model_dump().items() if k not in ("text", "layout")}
        for d in session.exec(select(Document).order_by(Document.id))
    ]
    payload = {
        "format": "research-backlog",
        "version": 2,
        "documents": documents,
        "items": items,
        "notes": [n.model_dump() for n in session.exec(select(Note).order_by(Note.id))],
        "outcomes": [o.model_dump() for o in session.exec(select(Outcome).order_by(Outcome.id))],
    }
    return json.dumps(payload, ensure_ascii=False, indent=2) + "\n"
