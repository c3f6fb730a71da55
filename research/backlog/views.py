"""Read-side views of the backlog: the tree, checklist progress, filters and sorting.

Kept free of the ORM so `research list` can load 10,000 items from SQLite and
print them without importing SQLAlchemy (see ``Backlog.load_file``, ``research.store.rows``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from research.errors import ResearchError
from research.store.rows import select as select_rows
from research.vocab import OPEN_STATUSES, PRIORITY_RANK, normalize_priority, normalize_status


def match_item_ref(ref: str | int, ids, slugs: dict[str, int]) -> int:
    """The item ``ref`` names: an id, a slug, or the beginning of exactly one slug
    (`research show 探索`). ``ids`` holds the ids there are; ``slugs`` maps slug to id
    (all of them, or those beginning with ``ref``)."""
    text = str(ref).strip()
    if text.isdigit() and int(text) in ids:
        return int(text)
    if text in slugs:
        return slugs[text]
    found = sorted((slug for slug in slugs if text and slug.startswith(text)), key=slugs.__getitem__)
    if len(found) == 1:
        return slugs[found[0]]
    if found:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise ResearchError(f"{text!r} begins several slugs ({shown}); give more of one, or an id")
    raise ResearchError(f"no item with id or slug {text!r}")


def find_item_id(conn, ref: str | int) -> int:
    """``match_item_ref`` over the database (a DB-API connection), reading only what it needs."""
    text = str(ref).strip()
    ids = set()
    if text.isdigit() and int(text) < 2**63:  # (a larger number is no SQLite id)
        ids = {row[0] for row in conn.execute("SELECT id FROM item WHERE id = ?", (int(text),))}
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    slugs = dict(conn.execute("SELECT slug, id FROM item WHERE slug = ? OR slug LIKE ? ESCAPE '\\' LIMIT 50",
                              (text, escaped + "%")))
    return match_item_ref(text, ids, slugs)


def item_detail(conn, item_id: int) -> dict[str, Any]:
    """Everything about one item, for `show`, read with plain sqlite3."""
    # The item's ancestors (its path) and its subtree (checklist progress): not the whole backlog.
    family = (
        "id IN (WITH RECURSIVE up(id) AS (SELECT ? UNION SELECT item.parent_id FROM item JOIN up ON item.id = up.id"
        " WHERE item.parent_id IS NOT NULL), down(id) AS (SELECT ? UNION SELECT item.id FROM item"
        " JOIN down ON item.parent_id = down.id) SELECT id FROM up UNION SELECT id FROM down)"
    )
    backlog = Backlog(select_rows(conn, "item", family, (item_id, item_id), order=""))
    item = backlog.by_id[item_id]
    data = item_summary(item, backlog)
    data["body"] = item.body
    data["tasks_at"] = item.style.get("tasks_at")
    data["path"] = backlog.path(item)
    document = select_rows(conn, "document", "id = ?", (item.document_id,)) if item.document_id else []
    data["document"] = document[0].name if document else None
    data["children"] = [
        {**item_summary(child), "progress": dict(zip(("done", "total"), backlog.progress(child.id), strict=True))}
        for child in backlog.children.get(item.id, [])
    ]
    data["notes"] = [
        {"id": n.id, "date": n.date, "title": n.title, "text": n.text, "created_at": n.created_at}
        for n in select_rows(conn, "note", "item_id = ?", (item.id,), order="date, id")
    ]
    data["outcomes"] = [
        {"id": o.id, "kind": o.kind, "ref": o.ref, "text": o.text, "created_at": o.created_at}
        for o in select_rows(conn, "outcome", "item_id = ?", (item.id,))
    ]
    data["history"] = [
        {"ts": e.ts, "action": e.action, "table": e.table_name, "before": e.before, "after": e.after, "undone": e.undone}
        for e in select_rows(conn, "event", "item_id = ? AND action != 'touched'", (item.id,))
    ]
    return data


@dataclass
class ItemRow:
    """An item plus what list/tree views derive from the whole backlog."""

    item: Any  # an ORM Item or an ItemRecord
    depth: int = 0
    done_tasks: int = 0
    total_tasks: int = 0
    path: str = ""

    @property
    def progress(self) -> str:
        return f"{self.done_tasks}/{self.total_tasks}" if self.total_tasks else ""


class Backlog:
    """All items loaded once; tree, progress and filters computed in memory."""

    def __init__(self, items: list[Any]):
        self.items = items
        self.by_id = {i.id: i for i in items}
        self.children: dict[int | None, list[Any]] = defaultdict(list)
        for item in items:
            parent = item.parent_id if item.parent_id in self.by_id else None
            self.children[parent].append(item)
        for kids in self.children.values():
            kids.sort(key=lambda i: (i.position, i.id))
        self._progress: dict[int, tuple[int, int]] = {}

    @classmethod
    def load(cls, session) -> Backlog:
        """Loads ORM objects, for code that changes items."""
        from sqlmodel import select

        from research.store.models import Item

        return cls(list(session.exec(select(Item))))

    @classmethod
    def load_rows(cls, session) -> Backlog:
        """Loads read-only rows inside a session: much faster than ORM objects."""
        from sqlmodel import select

        from research.store.models import Item

        return cls(list(session.connection().execute(select(Item.__table__))))

    @classmethod
    def load_file(cls, path: Path) -> Backlog:
        """Loads read-only rows straight from the file, without importing the ORM at all."""
        from research.store.db import connect_raw, ensure_schema

        ensure_schema(path)
        conn = connect_raw(path)
        try:
            return cls(select_rows(conn, "item", order=""))
        finally:
            conn.close()

    def find(self, ref: str | int):
        """An item by numeric id, slug, or the beginning of one slug."""
        return self.by_id[match_item_ref(ref, self.by_id, {i.slug: i.id for i in self.items})]

    def progress(self, item_id: int) -> tuple[int, int]:
        """(done, total) over descendant checklist tasks (dropped tasks don't count)."""
        if item_id in self._progress:
            return self._progress[item_id]
        done = total = 0
        for child in self.children.get(item_id, []):
            if child.kind == "task" and child.status != "dropped":
                total += 1
                done += child.status == "done"
            d, t = self.progress(child.id)
            done, total = done + d, total + t
        self._progress[item_id] = (done, total)
        return done, total

    def depth(self, item: Any) -> int:
        depth, parent = 0, item.parent_id
        while parent in self.by_id:
            depth, parent = depth + 1, self.by_id[parent].parent_id
        return depth

    def path(self, item: Any) -> list[str]:
        titles, current = [], item
        while current is not None:
            titles.append(current.title)
            current = self.by_id.get(current.parent_id)
        return titles[::-1]

    def descendants(self, item_id: int) -> set[int]:
        out, frontier = set(), [item_id]
        while frontier:
            kids = [k.id for f in frontier for k in self.children.get(f, [])]
            out.update(kids)
            frontier = kids
        return out

    def walk(self, parent_id: int | None = None, depth: int = 0):
        for item in self.children.get(parent_id, []):
            yield item, depth
            yield from self.walk(item.id, depth + 1)

    def row(self, item: Any, depth: int | None = None) -> ItemRow:
        done, total = self.progress(item.id)
        return ItemRow(item, self.depth(item) if depth is None else depth, done, total)


SORTS = ("score", "priority", "updated", "created")


def sort_key(name: str):
    if name == "score":
        return lambda i: (-(i.score or 0), PRIORITY_RANK[i.priority], i.id)
    if name == "priority":
        return lambda i: (PRIORITY_RANK[i.priority], -(i.score or 0), i.id)
    if name == "updated":
        return lambda i: (_neg_text(i.updated_at), i.id)
    if name == "created":
        return lambda i: (_neg_text(i.created_at), i.id)
    raise ResearchError(f"unknown sort {name!r}; use one of: {', '.join(SORTS)}")


def _neg_text(text: str) -> tuple:
    # Newest first on ISO strings, without parsing them.
    return tuple(-ord(c) for c in text)


@dataclass
class ListFilter:
    statuses: list[str] = field(default_factory=list)
    priority: str | None = None
    tag: str | None = None
    under: Any | None = None
    search: str | None = None
    include_closed: bool = False
    due_before: str | None = None  # YYYY-MM-DD, inclusive
    tasks: bool = True  # checklist tasks as rows of their own (the CLI's list asks for them with --tasks)


def filter_items(backlog: Backlog, spec: ListFilter) -> list:
    statuses = {normalize_status(s) for s in spec.statuses}
    priority = normalize_priority(spec.priority) if spec.priority else None
    under = backlog.descendants(spec.under.id) if spec.under else None
    needle = spec.search.lower() if spec.search else None
    out = []
    for item in backlog.items:
        if not spec.tasks and item.kind == "task":
            continue
        if statuses:
            if item.status not in statuses:
                continue
        elif not spec.include_closed and item.status not in OPEN_STATUSES:
            continue
        if priority and item.priority != priority:
            continue
        if spec.tag and spec.tag.lstrip("#") not in item.tags:
            continue
        if under is not None and item.id not in under:
            continue
        if needle and needle not in item.title.lower() and needle not in item.body.lower() and needle != item.slug:
            continue
        if spec.due_before and not (item.due_date and item.due_date <= spec.due_before):
            continue
        out.append(item)
    return out


def list_filter(
    backlog: Backlog, *, statuses: list[str] | None = None, priority: str | None = None, tag: str | None = None,
    under: str | None = None, search: str | None = None, due_before: str | None = None,
    include_closed: bool = False, tasks: bool = False,
) -> ListFilter:
    """The filter `research list` and the web view's backlog page build from what the user
    typed, checked: an unknown status or priority, a bad date or an item that is not there
    is a ``ResearchError``. Tasks are rows too when asked, and whenever searching by text or
    due date (due dates and words often sit on tasks)."""
    from research.vocab import check_date

    for status in statuses or []:
        normalize_status(status)
    if priority:
        normalize_priority(priority)
    due = check_date(due_before, "date for --due-before") if due_before else None
    return ListFilter(
        statuses=list(statuses or []), priority=priority or None, tag=tag or None,
        under=backlog.find(under) if under else None, search=search or None, include_closed=include_closed,
        due_before=due, tasks=tasks or bool(search) or bool(due),
    )


def list_rows(backlog: Backlog, spec: ListFilter, sort: str = "priority", tree: bool = False) -> list[ItemRow]:
    """The rows of a listing: sorted by ``sort``, or (``tree``) in backlog order with their
    depth under the filter's ``under`` item (or the top)."""
    key = sort_key(sort)  # an unknown sort is an error in either form
    keep = filter_items(backlog, spec)
    if tree:
        wanted = {i.id for i in keep}
        root = spec.under.id if spec.under else None
        return [backlog.row(item, depth) for item, depth in backlog.walk(root) if item.id in wanted]
    return [backlog.row(item, 0) for item in sorted(keep, key=key)]


def item_summary(item, backlog: Backlog | None = None) -> dict[str, Any]:
    """The stable JSON shape of an item in list output."""
    data = {
        "id": item.id,
        "slug": item.slug,
        "parent_id": item.parent_id,
        "kind": item.kind,
        "title": item.title,
        "status": item.status,
        "priority": item.priority,
        "estimate": item.estimate,
        "estimate_min_days": item.estimate_min_days,
        "estimate_max_days": item.estimate_max_days,
        "tags": list(item.tags),
        "innovation": item.innovation,
        "practicality": item.practicality,
        "feasibility": item.feasibility,
        "score": item.score,
        "position": item.position,
        "created_at": item.created_at,
        "updated_at": item.updated_at,
        "started_at": item.started_at,
        "done_at": item.done_at,
        "due_date": item.due_date,
        "scheduled_date": item.scheduled_date,
        "start_date": item.start_date,
        "document_id": item.document_id,
    }
    if backlog is not None:
        done, total = backlog.progress(item.id)
        data["progress"] = {"done": done, "total": total}
    return data


