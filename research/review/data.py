"""Loading what a review needs: a handful of whole-table or range queries with plain sqlite3
(no per-item queries, no ORM), the backlog rewound to the end of the period."""

from __future__ import annotations

import functools
import json

from research.review.period import Period, utc_bound
from research.runs.metrics import final_metrics

# ---------------------------------------------------------------------------
# Loading


_ITEM_FIELDS = (
    "id",
    "slug",
    "parent_id",
    "kind",
    "title",
    "status",
    "priority",
    "tags",
    "innovation",
    "practicality",
    "feasibility",
    "score",
    "position",
    "created_at",
    "updated_at",
    "started_at",
    "done_at",
    "due_date",
)


def _json(text):
    if text is None or not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _chunks(values: list, size: int = 900):
    for i in range(0, len(values), size):
        yield values[i : i + size]


class ReviewData:
    """Everything the review needs, read with a few queries."""

    def __init__(self, conn, period: Period, now_iso: str):
        self.start, self.end = utc_bound(period.start), utc_bound(period.end)
        self.prev_start = utc_bound(period.prev_start)
        self.ref = min(self.end, now_iso)  # "as of" for staleness
        cols = ", ".join(_ITEM_FIELDS)
        self.items: dict[int, dict] = {}
        for row in conn.execute(f"SELECT {cols} FROM item"):
            item = dict(zip(_ITEM_FIELDS, row, strict=True))
            item["tags"] = _json(item["tags"]) or []
            self.items[item["id"]] = item
        # Events from the start of the period on: the period's changes, and later ones to rewind.
        self.events = []
        for row in conn.execute(
            "SELECT id, ts, action, item_id, table_name, row_id, before, after FROM event "
            "WHERE undone = 0 AND ts >= ? ORDER BY id",
            (self.start,),
        ):
            self.events.append(
                {
                    "id": row[0],
                    "ts": row[1],
                    "action": row[2],
                    "item_id": row[3],
                    "table": row[4],
                    "row_id": row[5],
                    "before": _json(row[6]),
                    "after": _json(row[7]),
                }
            )
        self.last_event = dict(
            conn.execute(
                "SELECT item_id, MAX(ts) FROM event WHERE undone = 0 AND item_id IS NOT NULL AND ts < ? GROUP BY item_id",
                (self.ref,),
            ).fetchall()
        )
        self.last_note = dict(
            conn.execute(
                "SELECT item_id, MAX(created_at) FROM note WHERE item_id IS NOT NULL AND created_at < ? GROUP BY item_id",
                (self.ref,),
            ).fetchall()
        )
        self.last_run = {}
        for item_id, *stamps in conn.execute(
            "SELECT item_id, MAX(CASE WHEN queued_at < ? THEN queued_at END), MAX(CASE WHEN started_at < ? THEN started_at END), "
            "MAX(CASE WHEN ended_at < ? THEN ended_at END) FROM run GROUP BY item_id",
            (self.ref, self.ref, self.ref),
        ):
            stamps = [s for s in stamps if s]
            if stamps:
                self.last_run[item_id] = max(stamps)
        # Notes filed in the period (by journal date, else creation time).
        self.notes = [
            dict(zip(("id", "item_id", "date", "title", "text", "created_at"), row, strict=True))
            for row in conn.execute(
                "SELECT id, item_id, date, title, text, created_at FROM note "
                "WHERE (date IS NOT NULL AND date >= ? AND date < ?) "
                "OR (date IS NULL AND created_at >= ? AND created_at < ?) ORDER BY COALESCE(date, created_at), id",
                (period.start.isoformat(), period.end.isoformat(), self.start, self.end),
            )
        ]
        self.links = {
            row[0]: {"id": row[0], "item_id": row[1], "name": row[2], "best": row[3]}
            for row in conn.execute("SELECT id, item_id, name, best FROM link ORDER BY id")
        }
        # Runs touching this or the previous period.
        run_cols = (
            "id",
            "item_id",
            "link_id",
            "sweep_id",
            "status",
            "notebook",
            "params",
            "queued_at",
            "started_at",
            "ended_at",
            "duration_s",
            "reason",
            "error",
        )
        window = (
            "(started_at >= ? AND started_at < ?) OR (ended_at >= ? AND ended_at < ?) "
            "OR (started_at IS NULL AND queued_at >= ? AND queued_at < ?)"
        )
        args = (self.prev_start, self.end) * 3
        self.runs = []
        for row in conn.execute(
            f"SELECT {', '.join(run_cols)} FROM run WHERE {window} ORDER BY id", args
        ):
            run = dict(zip(run_cols, row, strict=True))
            run["params"] = _json(run["params"]) or {}
            run["error"] = _json(run["error"])
            self.runs.append(run)
        entries: dict[int, list[dict]] = {run["id"]: [] for run in self.runs}
        if entries:
            for run_id, name, value, value_json, step, ts in conn.execute(
                f"SELECT run_id, name, value, value_json, step, ts FROM metric WHERE run_id IN (SELECT id FROM run WHERE {window}) ORDER BY id",
                args,
            ):
                entries[run_id].append(
                    {
                        "name": name,
                        "value": value if value is not None else _json(value_json),
                        "step": step,
                        "time": ts,
                    }
                )
        self.metrics = {run_id: final_metrics(rows) for run_id, rows in entries.items()}
        self._period_events: list[dict] | None = None
        self.outcomes: dict[int, list[dict]] = {}
        done_ids = sorted(
            {e["item_id"] for e in self.period_events() if status_moved_to(e) == "done" and e["item_id"]}
        )
        for chunk in _chunks(done_ids):
            marks = ",".join("?" * len(chunk))
            for item_id, kind, ref, text, created_at in conn.execute(
                f"SELECT item_id, kind, ref, text, created_at FROM outcome WHERE item_id IN ({marks}) ORDER BY id",
                chunk,
            ):
                self.outcomes.setdefault(item_id, []).append(
                    {"kind": kind, "ref": ref, "text": text, "created_at": created_at}
                )
        # When each item last changed status (else was created), as of the end of the period.
        self.status_since = dict(
            conn.execute(
                "SELECT item_id, MAX(ts) FROM event WHERE undone = 0 AND table_name = 'item' "
                "AND before IS NOT NULL AND json_extract(after, '$.status') IS NOT NULL "
                "AND json_extract(after, '$.status') IS NOT json_extract(before, '$.status') "
                "AND ts < ? GROUP BY item_id",
                (self.ref,),
            ).fetchall()
        )
        self._deleted: dict[int, dict] | None = None
        self.snapshot = self._rewind(self.end)
        self.start_snapshot = self._rewind(self.start)

    def in_period(self, ts: str | None) -> bool:
        return bool(ts) and self.start <= ts < self.end

    def in_previous(self, ts: str | None) -> bool:
        return bool(ts) and self.prev_start <= ts < self.start

    def period_events(self) -> list[dict]:
        """The events of the period (from its start to its end), in order."""
        if self._period_events is None:
            self._period_events = [e for e in self.events if e["ts"] < self.end]
        return self._period_events

    def _rewind(self, bound: str) -> dict[int, dict]:
        """Items as they stood at ``bound`` (the end or the start of the period): later events
        undone, later items left out."""
        # Rows are shared with self.items until an event changes them (then copied).
        items = {i: item for i, item in self.items.items() if item["created_at"] < bound}
        for event in reversed(self.events):
            if event["ts"] < bound or event["table"] != "item":
                continue
            row_id = event["row_id"]
            if event["before"] is None:  # created later
                items.pop(row_id, None)
            elif event["after"] is None:  # deleted later: it was there
                restored = {k: event["before"].get(k) for k in _ITEM_FIELDS}
                restored["tags"] = restored["tags"] or []
                items[row_id] = restored
            elif row_id in items:
                changed = {k: v for k, v in event["before"].items() if k in _ITEM_FIELDS}
                if changed:
                    items[row_id] = {**items[row_id], **changed}
        return items

    @functools.cached_property
    def headings(self) -> set[int]:
        """Items with other items (not only tasks) under them at the end of the period:
        headings that group directions, not directions themselves."""
        return {i["parent_id"] for i in self.snapshot.values() if i["kind"] == "item"}

    def kind_of(self, item_id: int | None) -> str:
        """``item`` or ``task`` (``item`` for a row the review cannot find)."""
        return (self.row_of(item_id) or {}).get("kind") or "item"

    def row_of(self, item_id: int | None) -> dict | None:
        """An item's row at the end of the period, now, or (deleted since) from its events."""
        item = self.snapshot.get(item_id)
        if item is None and item_id is not None:
            # Not there at the end of the period: deleted during it. SQLite may have
            # given its id to a later item, so the period's events come first.
            if self._deleted is None:
                self._deleted = {}
                for event in self.period_events():
                    row = event["before"] or event["after"] or {}
                    if event["table"] == "item" and "title" in row:
                        self._deleted[event["row_id"]] = {"id": event["row_id"], **row}
            item = self._deleted.get(item_id) or self.items.get(item_id)
        return item

    def title_of(self, item_id: int | None) -> dict:
        """id, slug and title of an item, even one deleted since."""
        item = self.row_of(item_id)
        if item is None:
            return {"id": item_id, "slug": None, "title": f"item {item_id}"}
        return {"id": item_id, "slug": item.get("slug"), "title": item.get("title")}

    def root_of(self, item_id: int | None) -> int | None:
        """The top-level item (direction) above an item."""
        current, seen = self.row_of(item_id), set()
        if current is None:
            return None
        while current.get("parent_id") is not None and current["id"] not in seen:
            seen.add(current["id"])
            parent = self.row_of(current["parent_id"])
            if parent is None:
                break
            current = parent
        return current["id"]


def status_moved_to(event: dict) -> str | None:
    """The status an item event moved to, or None (creations are not moves)."""
    if event["table"] != "item" or not event["before"] or not event["after"]:
        return None
    after = event["after"]
    if "status" in after and after["status"] != event["before"].get("status"):
        return after["status"]
    return None
