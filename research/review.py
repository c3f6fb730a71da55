"""Periodic review reports: what moved, finished, ran and stalled in a week, a month or a range.

``build_review`` reads the database in a handful of whole-table or range queries
(no per-item queries) and returns a plain dict, which is also the ``--format
json`` output. ``render_markdown`` and ``render_html`` turn that dict into a
report; ``chart_pngs`` draws its charts with matplotlib (imported lazily, Agg
backend).

Semantics:

* Periods are local calendar days, ``[start, end)``: an ISO 8601 week (Monday
  to Sunday), a calendar month, or ``--since``/``--until`` (both inclusive).
  Their bounds are converted to UTC to compare with the stored timestamps. The
  previous period, used for metric changes, is the week or month before, or
  the same number of days right before a range.
* Status changes come from the event log (undone events are skipped); an item
  created with a status does not count as a change. Items are counted once per
  target status: "started" means moved to active.
* The backlog (statuses, priorities, tree) is shown as it stood at the end of
  the period: later changes are rewound from the event log.
* Runs are counted by when they started (started) and ended (succeeded; failed,
  which includes timed out and interrupted runs).
* A note belongs to the period its journal date falls in (its creation time
  when it has no date).
* An experiment's key metric is its linked notebook's ``best`` rule
  (``max:throughput``), else the first numeric metric its runs recorded; a
  metric without a rule is minimized when its name says loss, error, latency,
  time or memory, and maximized otherwise.
* Stuck: active (or writing-up) items without a run, note or change (their own
  or any descendant's) for ``stale_days`` before the end of the period (or now,
  if sooner); and planned high/critical items not started.
* Next focus: open items (checklist tasks left to their items) ranked by
  priority, then composite score.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from research import clock
from research.errors import ResearchError
from research.vocab import (
    ENDED_RUN_STATUSES,
    FAILED_RUN_STATUSES,
    OPEN_RUN_STATUSES,
    OPEN_RUNS_SQL,
    OPEN_STATUSES,
    PRIORITY_FIRE,
    PRIORITY_RANK,
    STATUS_EMOJI,
)

FORMATS = ("md", "html", "json")
CHART_STATUSES = (*ENDED_RUN_STATUSES, *reversed(OPEN_RUN_STATUSES))
NEXT_FOCUS_LIMIT = 10
SWEEP_ROWS_SHOWN = 20  # rows of a sweep table in Markdown and HTML (JSON has them all)
METRIC_CHARTS = 6  # experiments drawn in the key-metric chart
_MINIMIZE_HINTS = (
    "loss",
    "error",
    "err_",
    "latency",
    "perplexity",
    "ppl",
    "mse",
    "mae",
    "time",
    "duration",
    "memory",
    "mem_",
    "bytes",
    "_ms",
)


# ---------------------------------------------------------------------------
# Periods


@dataclass(frozen=True)
class Period:
    """Local calendar days ``[start, end)`` and the period before them, ``[prev_start, start)``."""

    kind: str  # week, month or range
    label: str
    start: date
    end: date
    prev_start: date

    @property
    def last_day(self) -> date:
        return self.end - timedelta(days=1)

    @property
    def days(self) -> list[date]:
        return [self.start + timedelta(days=n) for n in range((self.end - self.start).days)]


def utc_bound(day: date) -> str:
    """Local midnight starting ``day``, as a stored (UTC ISO) timestamp for text comparison."""
    local = datetime.combine(day, time()).astimezone()
    return local.astimezone(UTC).isoformat(timespec="microseconds")


_WEEK = re.compile(r"^(\d{4})-?[Ww](\d{1,2})$")
_MONTH = re.compile(r"^(\d{4})-(\d{1,2})$")


def parse_period(
    week: str | None = None,
    month: str | None = None,
    since: str | None = None,
    until: str | None = None,
    today: date | None = None,
) -> Period:
    """The period the options name; the current ISO week when none is given."""
    if sum(x is not None for x in (week, month, since)) > 1:
        raise ResearchError("give only one of --week, --month or --since")
    if until is not None and since is None:
        raise ResearchError("--until needs --since")
    today = today or clock.now().astimezone().date()
    if month is not None:
        match = _MONTH.match(month.strip())
        if not match or not 1 <= int(match.group(2)) <= 12:
            raise ResearchError(f"bad month {month!r}; use YYYY-MM, e.g. 2025-11")
        year, number = int(match.group(1)), int(match.group(2))
        start = date(year, number, 1)
        end = date(year + number // 12, number % 12 + 1, 1)
        prev_start = date(year - (number == 1), 12 if number == 1 else number - 1, 1)
        return Period("month", f"{year}-{number:02d}", start, end, prev_start)
    if since is not None:
        start = _parse_date(since, "--since")
        end = (
            _parse_date(until, "--until") + timedelta(days=1)
            if until is not None
            else today + timedelta(days=1)
        )
        if end <= start:
            raise ResearchError(f"--until {until or today.isoformat()} is before --since {since}")
        last = end - timedelta(days=1)
        return Period(
            "range", f"{start.isoformat()} – {last.isoformat()}", start, end, start - (end - start)
        )
    if week is not None:
        match = _WEEK.match(week.strip())
        try:
            if not match:
                raise ValueError
            year, number = int(match.group(1)), int(match.group(2))
            start = date.fromisocalendar(year, number, 1)
        except ValueError:
            raise ResearchError(
                f"bad week {week!r}; use YYYY-Www (ISO 8601), e.g. 2025-W46"
            ) from None
    else:
        year, number, weekday = today.isocalendar()
        start = today - timedelta(days=weekday - 1)
    return Period(
        "week", f"{year}-W{number:02d}", start, start + timedelta(days=7), start - timedelta(days=7)
    )


def _parse_date(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ResearchError(f"bad date {text!r} for {option}; use YYYY-MM-DD") from None


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


class _Data:
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
        self.metrics = {run_id: _final_metrics(rows) for run_id, rows in entries.items()}
        self.outcomes: dict[int, list[dict]] = {}
        done_ids = sorted(
            {e["item_id"] for e in self.period_events() if _to_status(e) == "done" and e["item_id"]}
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
        self._deleted: dict[int, dict] | None = None
        self.snapshot = self._rewind()

    def in_period(self, ts: str | None) -> bool:
        return bool(ts) and self.start <= ts < self.end

    def in_previous(self, ts: str | None) -> bool:
        return bool(ts) and self.prev_start <= ts < self.start

    def period_events(self):
        return (e for e in self.events if e["ts"] < self.end)

    def _rewind(self) -> dict[int, dict]:
        """Items as they stood at the end of the period: later events undone, later items left out."""
        items = {i: dict(item) for i, item in self.items.items() if item["created_at"] < self.end}
        for event in reversed(self.events):
            if event["ts"] < self.end or event["table"] != "item":
                continue
            row_id = event["row_id"]
            if event["before"] is None:  # created later
                items.pop(row_id, None)
            elif event["after"] is None:  # deleted later: it was there
                restored = {k: event["before"].get(k) for k in _ITEM_FIELDS}
                restored["tags"] = restored["tags"] or []
                items[row_id] = restored
            elif row_id in items:
                for name, value in event["before"].items():
                    if name in _ITEM_FIELDS:
                        items[row_id][name] = value
        return items

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


def _final_metrics(entries: list[dict]) -> dict[str, Any]:
    """The last value of each metric by step, then time: ``research.runs.lifecycle.final_metrics``
    without importing the ORM (that import alone costs more than building a review)."""
    latest: dict[str, tuple] = {}
    for entry in entries:
        key = (entry["step"] if entry["step"] is not None else -1, entry["time"] or 0)
        if entry["name"] not in latest or key >= latest[entry["name"]][0]:
            latest[entry["name"]] = (key, entry["value"])
    return {name: value for name, (_key, value) in latest.items()}


def recover_stale_runs(db_path: Path) -> int:
    """Marks runs whose runner died as interrupted, as `research runs` does; the ORM
    is imported only when some run is still queued or running."""
    from research.store.db import connect_raw, ensure_schema

    ensure_schema(db_path)
    conn = connect_raw(db_path)
    try:
        open_runs = conn.execute(
            f"SELECT 1 FROM run WHERE status IN {OPEN_RUNS_SQL} LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    if not open_runs:
        return 0
    from research.runs.lifecycle import recover_stale_runs as recover

    return recover(db_path)


def _to_status(event: dict) -> str | None:
    """The status an item event moved to, or None (creations are not moves)."""
    if event["table"] != "item" or not event["before"] or not event["after"]:
        return None
    after = event["after"]
    if "status" in after and after["status"] != event["before"].get("status"):
        return after["status"]
    return None


# ---------------------------------------------------------------------------
# The review


def build_review(db_path: Path, period: Period, stale_days: int = 14) -> dict[str, Any]:
    """The review of ``period`` as plain data (the JSON output)."""
    from research.store.db import connect_raw, ensure_schema

    if stale_days < 0:
        raise ResearchError("--stale-days must not be negative")
    now_iso = clock.now_iso()
    ensure_schema(db_path)
    conn = connect_raw(db_path)
    try:
        data = _Data(conn, period, now_iso)
    finally:
        conn.close()

    moved, transitions = _moved(data)
    counts = {
        "items_added": sum(
            1 for e in data.period_events() if e["table"] == "item" and e["action"] == "created"
        ),
        "items_started": len(transitions.get("active", set())),
        "items_paused": len(transitions.get("paused", set())),
        "items_finished": len(transitions.get("done", set())),
        "items_dropped": len(transitions.get("dropped", set())),
        "runs_started": sum(1 for r in data.runs if data.in_period(r["started_at"])),
        "runs_succeeded": sum(
            1 for r in data.runs if r["status"] == "succeeded" and data.in_period(r["ended_at"])
        ),
        "runs_failed": sum(
            1
            for r in data.runs
            if r["status"] in FAILED_RUN_STATUSES and data.in_period(r["ended_at"])
        ),
        "notes_written": len(data.notes),
    }
    experiments, series = _experiments(data)
    return {
        "period": {
            "kind": period.kind,
            "label": period.label,
            "start": period.start.isoformat(),
            "end": period.last_day.isoformat(),
            "start_utc": data.start,
            "end_utc": data.end,
            "previous": {
                "start": period.prev_start.isoformat(),
                "end": (period.start - timedelta(days=1)).isoformat(),
            },
            "stale_days": stale_days,
            "generated_at": now_iso,
        },
        "counts": counts,
        "moved": moved,
        "finished": _finished(data),
        "experiments": experiments,
        "notes": _notes(data),
        "stuck": _stuck(data, stale_days),
        "due": _due(data, period),
        "next_focus": _next_focus(data),
        "charts": {"runs_per_day": _runs_per_day(data, period), "key_metrics": series},
    }


def _brief(data: _Data, item_id: int | None) -> dict:
    out = data.title_of(item_id)
    root = data.root_of(item_id)
    out["direction"] = (
        data.title_of(root)["title"] if root is not None and root != item_id else None
    )
    return out


def _moved(data: _Data) -> tuple[list[dict], dict[str, set]]:
    groups: dict[int | None, list[dict]] = {}
    transitions: dict[str, set] = {}
    for event in data.period_events():
        status = _to_status(event)
        if status is None:
            continue
        transitions.setdefault(status, set()).add(event["item_id"])
        info = data.title_of(event["item_id"])
        groups.setdefault(data.root_of(event["item_id"]), []).append(
            {
                "ts": event["ts"],
                "date": clock.local_date(event["ts"]),
                "item_id": event["item_id"],
                "slug": info["slug"],
                "title": info["title"],
                "from": event["before"].get("status"),
                "to": status,
                "action": event["action"],
            }
        )

    def order(root):
        item = data.snapshot.get(root) or data.items.get(root)
        return (1, 0, 0) if item is None else (0, item.get("position") or 0, root)

    moved = []
    for root in sorted(groups, key=order):
        head = (
            data.title_of(root)
            if root is not None
            else {"id": None, "slug": None, "title": "(deleted items)"}
        )
        moved.append({"direction": head, "changes": groups[root]})
    return moved, transitions


def _finished(data: _Data) -> list[dict]:
    out, seen = [], set()
    for event in data.period_events():
        if _to_status(event) != "done" or event["item_id"] in seen:
            continue
        seen.add(event["item_id"])
        entry = _brief(data, event["item_id"])
        entry["done_at"] = event["ts"]
        entry["outcomes"] = data.outcomes.get(event["item_id"], [])
        out.append(entry)
    return out


def _notes(data: _Data) -> list[dict]:
    groups: dict[int | None, list[dict]] = {}
    for note in data.notes:
        groups.setdefault(note["item_id"], []).append(
            {
                "id": note["id"],
                "date": note["date"] or clock.local_date(note["created_at"]),
                "title": note["title"],
                "text": note["text"],
            }
        )
    out = []
    for item_id, notes in groups.items():
        head = (
            _brief(data, item_id)
            if item_id is not None
            else {"id": None, "slug": None, "title": "Backlog", "direction": None}
        )
        out.append({"item": head, "notes": notes})
    return out


def _numeric(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _key_metric(data: _Data, item_id: int, runs: list[dict]) -> tuple[str | None, str]:
    """(metric name, 'max' or 'min') for an item's runs."""
    links = [lk for lk in data.links.values() if lk["item_id"] == item_id and lk["best"]]
    used = {r["link_id"] for r in runs}
    links.sort(key=lambda lk: (lk["id"] not in used, lk["id"]))
    for link in links:
        direction, _, name = (link["best"] or "").partition(":")
        if direction in ("max", "min") and name.strip():
            return name.strip(), direction
    for run in sorted(runs, key=lambda r: (r["status"] != "succeeded", r["id"])):
        for name, value in data.metrics.get(run["id"], {}).items():
            if _numeric(value):
                lowered = name.lower()
                return name, "min" if any(h in lowered for h in _MINIMIZE_HINTS) else "max"
    return None, "max"


def _best(values: list[tuple[float, int]], direction: str) -> tuple[float, int] | None:
    if not values:
        return None
    return (max if direction == "max" else min)(
        values, key=lambda v: (v[0], -v[1]) if direction == "max" else (v[0], v[1])
    )


def _experiments(data: _Data) -> tuple[dict, list[dict]]:
    by_item: dict[int, list[dict]] = {}
    for run in data.runs:
        by_item.setdefault(run["item_id"], []).append(run)
    items, series, failures, sweeps = [], [], [], {}
    for item_id, runs in by_item.items():
        current = [
            r
            for r in runs
            if data.in_period(r["started_at"])
            or data.in_period(r["ended_at"])
            or (r["started_at"] is None and data.in_period(r["queued_at"]))
        ]
        metric, direction = _key_metric(data, item_id, runs)

        def values(pick, metric=metric, runs=runs):
            out = []
            for r in runs:
                value = data.metrics.get(r["id"], {}).get(metric) if metric else None
                if r["status"] == "succeeded" and pick(r["ended_at"]) and _numeric(value):
                    out.append((float(value), r["id"]))
            return out

        now_best = _best(values(data.in_period), direction)
        prev_best = _best(values(data.in_previous), direction)
        points = [
            {
                "run_id": r["id"],
                "ended_at": r["ended_at"],
                "value": float(data.metrics[r["id"]][metric]),
            }
            for r in sorted(runs, key=lambda r: r["ended_at"] or "")
            if metric
            and r["status"] == "succeeded"
            and r["ended_at"]
            and r["ended_at"] < data.end
            and _numeric(data.metrics.get(r["id"], {}).get(metric))
        ]
        info = _brief(data, item_id)
        if current:
            by_status: dict[str, int] = {}
            for r in current:
                by_status[r["status"]] = by_status.get(r["status"], 0) + 1
            change = change_pct = None
            if now_best and prev_best:
                change = now_best[0] - prev_best[0]
                change_pct = change / abs(prev_best[0]) * 100 if prev_best[0] else None
            items.append(
                {
                    **info,
                    "runs": len(current),
                    "by_status": by_status,
                    "metric": metric,
                    "goal": direction,
                    "best": now_best[0] if now_best else None,
                    "best_run": now_best[1] if now_best else None,
                    "previous_best": prev_best[0] if prev_best else None,
                    "change": change,
                    "change_pct": change_pct,
                }
            )
            if points:
                series.append(
                    {
                        "item_id": item_id,
                        "slug": info["slug"],
                        "title": info["title"],
                        "metric": metric,
                        "goal": direction,
                        "points": points,
                    }
                )
        for r in current:
            if r["status"] in FAILED_RUN_STATUSES and data.in_period(r["ended_at"]):
                error = r["error"] or {}
                evalue = str(error.get("evalue") or "").strip().splitlines()
                line = (
                    f"{error.get('ename')}: {evalue[0] if evalue else ''}".rstrip(": ")
                    if error.get("ename")
                    else (r["reason"] or r["status"])
                )
                failures.append(
                    {
                        "run_id": r["id"],
                        "item_id": item_id,
                        "slug": info["slug"],
                        "title": info["title"],
                        "notebook": r["notebook"],
                        "status": r["status"],
                        "ended_at": r["ended_at"],
                        "cell_index": error.get("cell_index"),
                        "ename": error.get("ename"),
                        "error": line,
                        "reason": r["reason"],
                    }
                )
            if r["sweep_id"]:
                sweeps.setdefault(
                    r["sweep_id"], {"item_id": item_id, "metric": metric, "runs": []}
                )["runs"].append(r)
    items.sort(key=lambda e: (-e["runs"], e["id"]))
    order = {e["id"]: n for n, e in enumerate(items)}
    series.sort(key=lambda s: order.get(s["item_id"], len(order)))
    failures.sort(key=lambda f: (f["ended_at"] or "", f["run_id"]))
    return {
        "items": items,
        "failures": failures,
        "sweeps": [_sweep_table(data, sid, s) for sid, s in sweeps.items()],
    }, series


def _sweep_table(data: _Data, sweep_id: str, sweep: dict) -> dict:
    runs = sorted(sweep["runs"], key=lambda r: r["id"])
    names: list[str] = []
    for run in runs:
        names.extend(n for n in run["params"] if n not in names)
    varying = [
        n
        for n in names
        if len({json.dumps(r["params"].get(n), sort_keys=True, default=str) for r in runs}) > 1
    ]
    shown = varying or names
    info = data.title_of(sweep["item_id"])
    metric = sweep["metric"]
    return {
        "sweep_id": sweep_id,
        "item_id": sweep["item_id"],
        "slug": info["slug"],
        "title": info["title"],
        "metric": metric,
        "params": shown,
        "rows": [
            {
                "run_id": r["id"],
                "status": r["status"],
                "params": {n: r["params"].get(n) for n in shown},
                "value": data.metrics.get(r["id"], {}).get(metric) if metric else None,
            }
            for r in runs
        ],
    }


def _stuck(data: _Data, stale_days: int) -> dict[str, list[dict]]:
    ref = clock.parse_iso(data.ref)
    cutoff = (ref - timedelta(days=stale_days)).isoformat(timespec="microseconds")
    items = data.snapshot
    children: dict[int, list[int]] = {}
    for item in items.values():
        if item["parent_id"] in items:
            children.setdefault(item["parent_id"], []).append(item["id"])
    own = {
        i: max(
            filter(
                None,
                (
                    item["created_at"],
                    item["started_at"],
                    data.last_event.get(i),
                    data.last_note.get(i),
                    data.last_run.get(i),
                ),
            )
        )
        for i, item in items.items()
    }
    latest: dict[int, str] = {}

    def activity(item_id: int) -> str:
        # Iterative post-order: deep trees must not hit the recursion limit.
        stack = [(item_id, False)]
        while stack:
            node, expanded = stack.pop()
            if node in latest:
                continue
            kids = children.get(node, [])
            if expanded or not kids:
                latest[node] = max([own[node], *(latest[k] for k in kids)])
            else:
                stack.append((node, True))
                stack.extend((k, False) for k in kids if k not in latest)
        return latest[item_id]

    idle = []
    for item in items.values():
        if item["status"] not in ("active", "writing-up"):
            continue
        last = activity(item["id"])
        if last < cutoff:
            entry = _brief(data, item["id"])
            entry.update(
                status=item["status"],
                priority=item["priority"],
                last_activity=last,
                days_idle=(ref - clock.parse_iso(last)).days,
            )
            idle.append(entry)
    idle.sort(key=lambda e: (-e["days_idle"], e["id"]))
    waiting = []
    for item in items.values():
        if item["status"] == "planned" and item["priority"] in ("high", "critical"):
            entry = _brief(data, item["id"])
            entry.update(
                priority=item["priority"],
                created_at=item["created_at"],
                days_waiting=max(0, (ref - clock.parse_iso(item["created_at"])).days),
            )
            waiting.append(entry)
    waiting.sort(key=lambda e: (PRIORITY_RANK[e["priority"]], -e["days_waiting"], e["id"]))
    return {"idle": idle, "not_started": waiting}


def _due(data: _Data, period: Period) -> dict[str, list[dict]]:
    """Items with a due date: overdue (still open, due before the period), due in the
    period (open or not), and due in a span as long as the period after it."""
    first, last = period.start.isoformat(), period.last_day.isoformat()
    horizon = (period.last_day + (period.end - period.start)).isoformat()
    out: dict[str, list[dict]] = {"overdue": [], "in_period": [], "upcoming": []}
    for item in data.snapshot.values():
        due = item.get("due_date")
        if not due:
            continue
        open_ = item["status"] in OPEN_STATUSES
        if due < first and open_:
            group = "overdue"
        elif first <= due <= last:
            group = "in_period"
        elif last < due <= horizon and open_:
            group = "upcoming"
        else:
            continue
        entry = _brief(data, item["id"])
        entry.update(status=item["status"], priority=item["priority"], due_date=due)
        out[group].append(entry)
    for entries in out.values():
        entries.sort(key=lambda e: (e["due_date"], PRIORITY_RANK.get(e["priority"], 9), e["id"]))
    return out


_DUE_GROUPS = (("overdue", "Overdue (still open)"), ("in_period", "Due in this period"), ("upcoming", "Due next"))


def _next_focus(data: _Data) -> list[dict]:
    candidates = [
        i for i in data.snapshot.values() if i["status"] in OPEN_STATUSES and i["kind"] == "item"
    ]
    candidates.sort(
        key=lambda i: (PRIORITY_RANK.get(i["priority"], 9), -(i["score"] or 0), i["id"])
    )
    out = []
    for rank, item in enumerate(candidates[:NEXT_FOCUS_LIMIT], 1):
        entry = {"rank": rank, **_brief(data, item["id"])}
        entry.update(
            {
                k: item[k]
                for k in (
                    "status",
                    "priority",
                    "innovation",
                    "practicality",
                    "feasibility",
                    "score",
                )
            }
        )
        out.append(entry)
    return out


def _runs_per_day(data: _Data, period: Period) -> dict:
    days = [d.isoformat() for d in period.days]
    index = {d: n for n, d in enumerate(days)}
    counts: dict[str, list[int]] = {}
    for run in data.runs:
        stamp = run["started_at"] or run["queued_at"]
        if not data.in_period(stamp):
            continue
        day = clock.local_date(stamp)
        if day in index:
            counts.setdefault(run["status"], [0] * len(days))[index[day]] += 1
    ordered = {s: counts[s] for s in CHART_STATUSES if s in counts}
    return {"days": days, "by_status": ordered}


# ---------------------------------------------------------------------------
# Charts


@dataclass
class Chart:
    name: str  # file-name part: runs-per-day, key-metrics
    title: str
    png: bytes


_STATUS_COLORS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "timeout": "#ef6c00",
    "interrupted": "#8e24aa",
    "running": "#1565c0",
    "queued": "#90a4ae",
}


def _chart_label(text: str, fonts_cover_cjk: bool) -> str:
    if fonts_cover_cjk or text.isascii():
        return text
    kept = re.sub(r"[^\x00-\u024f]+", " ", text)
    return re.sub(r"\s{2,}", " ", kept).strip(" :-")


def chart_pngs(review: dict[str, Any]) -> list[Chart]:
    """The review's charts as PNG images (none when nothing ran).

    Layouts and ticks are fixed rather than computed (no tight bounding boxes,
    no automatic date locators): that halves the drawing time.
    """
    per_day = review["charts"]["runs_per_day"]
    series = review["charts"]["key_metrics"][:METRIC_CHARTS]
    if not per_day["by_status"] and not series:
        return []
    import io
    import warnings

    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import font_manager
    from matplotlib.figure import Figure

    cjk = [
        f.name
        for f in font_manager.fontManager.ttflist
        if re.search(
            r"CJK|WenQuanYi|Droid Sans Fallback|Source Han|Noto Sans [SJTK]C|Heiti|SimHei|YaHei|PingFang",
            f.name,
        )
    ]
    family = ["DejaVu Sans", *dict.fromkeys(cjk)]
    charts = []

    def png(fig) -> bytes:
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing glyphs
            fig.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()

    style = {
        "font.family": family,
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
    with matplotlib.rc_context(style):
        if per_day["by_status"]:
            days = per_day["days"]
            rotate = len(days) > 10
            fig = Figure(figsize=(max(7.5, min(14.0, 0.3 * len(days) + 2)), 2.8))
            fig.subplots_adjust(left=0.08, right=0.98, top=0.88, bottom=0.26 if rotate else 0.14)
            ax = fig.subplots()
            bottom = [0] * len(days)
            positions = list(range(len(days)))
            for status, values in per_day["by_status"].items():
                ax.bar(
                    positions,
                    values,
                    bottom=bottom,
                    label=status,
                    color=_STATUS_COLORS.get(status, "#607d8b"),
                    width=0.7,
                )
                bottom = [b + v for b, v in zip(bottom, values, strict=True)]
            step = max(1, -(-len(days) // 16))
            ax.set_xticks(
                positions[::step], [d[5:] for d in days[::step]], rotation=45 if rotate else 0
            )
            ax.set_xlim(-0.6, len(days) - 0.4)
            ax.yaxis.get_major_locator().set_params(integer=True)
            ax.set_ylabel("runs")
            ax.set_title("Runs per day by status")
            ax.legend(frameon=False, loc="upper right", fontsize=8)
            charts.append(Chart("runs-per-day", "Runs per day by status", png(fig)))
        if series:
            p = review["period"]
            first = date.fromisoformat(p["previous"]["start"])
            period_start = date.fromisoformat(p["start"])
            total = (date.fromisoformat(p["end"]) - first).days + 1  # x: days since `first`
            origin = datetime.combine(first, time()).astimezone()

            def x_of(ts: str) -> float:
                return (datetime.fromisoformat(ts) - origin).total_seconds() / 86400

            # Whole weeks where they fit, so period starts fall on a labelled tick.
            tick_step = next((n for n in (1, 7, 14, 28, 56, 91, 182) if total / n <= 8), 364)
            ticks = list(range(0, total + 1, tick_step))
            labels = [(first + timedelta(days=t)).strftime("%m-%d") for t in ticks]
            cols = min(3, len(series))
            rows = -(-len(series) // cols)
            fig = Figure(figsize=(4.2 * cols, 0.5 + 2.5 * rows))
            fig.subplots_adjust(
                left=0.1 if cols > 1 else 0.16,
                right=0.98,
                top=1 - 0.55 / (0.5 + 2.5 * rows),
                bottom=0.45 / (0.5 + 2.5 * rows),
                wspace=0.38,
                hspace=0.55,
            )
            axes = fig.subplots(rows, cols, squeeze=False)
            handles = None
            for n, ax in enumerate(axes.flat):
                if n >= len(series):
                    ax.set_visible(False)
                    continue
                entry = series[n]
                xs = [x_of(point["ended_at"]) for point in entry["points"]]
                ys = [point["value"] for point in entry["points"]]
                pick = max if entry["goal"] == "max" else min
                best = []
                for y in ys:
                    best.append(y if not best else pick(best[-1], y))
                dots = ax.scatter(xs, ys, s=12, color="#1565c0", alpha=0.7, zorder=3)
                (line,) = ax.step(
                    [*xs, total], [*best, best[-1]], where="post", color="#2e7d32", linewidth=1.2
                )
                ax.axvline(
                    (period_start - first).days, color="#9e9e9e", linestyle="--", linewidth=0.8
                )
                ax.set_xlim(0, total)
                ax.set_xticks(ticks, labels, fontsize=7)
                if total <= 62:
                    ax.set_xticks(range(total + 1), minor=True)
                title = _chart_label(f"#{entry['item_id']} {entry['title']}", len(family) > 1)
                ax.set_title(title if len(title) <= 42 else title[:41] + "…", fontsize=9)
                ax.set_ylabel(entry["metric"])
                handles = handles or (dots, line)
            fig.suptitle(
                "Key metric over time (dashed line: start of the period)",
                fontsize=10,
                x=0.02,
                ha="left",
            )
            fig.legend(
                handles,
                ["run", "best so far"],
                loc="upper right",
                bbox_to_anchor=(0.97, 1.0),
                frameon=False,
                fontsize=8,
                ncols=2,
            )
            charts.append(Chart("key-metrics", "Key metric over time", png(fig)))
    return charts


# ---------------------------------------------------------------------------
# Rendering helpers


def _num(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value, ensure_ascii=False, default=str)


def _change(entry: dict) -> str:
    if entry["change"] is None:
        return "new" if entry["best"] is not None and entry["previous_best"] is None else ""
    better = entry["change"] > 0 if entry["goal"] == "max" else entry["change"] < 0
    arrow = "▲" if entry["change"] > 0 else "▼" if entry["change"] < 0 else "="
    pct = f" ({entry['change_pct']:+.1f}%)" if entry["change_pct"] is not None else ""
    mark = "" if entry["change"] == 0 else (" better" if better else " worse")
    return f"{arrow} {entry['change']:+.4g}{pct}{mark}"


def _status(status: str | None) -> str:
    return f"{STATUS_EMOJI.get(status, '')} {status}" if status else ""


def _priority(priority: str) -> str:
    fire = PRIORITY_FIRE.get(priority, "")
    return f"{fire} {priority}" if fire else priority


def _stars(value: int | None) -> str:
    return "⭐" * value if value else ""


def _when(ts: str | None) -> str:
    return clock.local_date(ts)


def _has_activity(review: dict) -> bool:
    return any(review["counts"].values()) or bool(review["moved"] or review["experiments"]["items"])


def _headline(review: dict) -> list[tuple[str, list[tuple[str, int]]]]:
    c = review["counts"]
    return [
        (
            "Items",
            [
                ("added", c["items_added"]),
                ("started", c["items_started"]),
                ("paused", c["items_paused"]),
                ("finished", c["items_finished"]),
                ("dropped", c["items_dropped"]),
            ],
        ),
        (
            "Runs",
            [
                ("started", c["runs_started"]),
                ("succeeded", c["runs_succeeded"]),
                ("failed", c["runs_failed"]),
            ],
        ),
        ("Notes", [("written", c["notes_written"])]),
    ]


def _title(review: dict) -> tuple[str, str]:
    p = review["period"]
    span = p["start"] if p["start"] == p["end"] else f"{p['start']} – {p['end']}"
    heading = f"Review {p['label']}" + ("" if p["kind"] == "range" else f" ({span})")
    return heading, span


def _item_text(entry: dict) -> str:
    return f"#{entry['id']} {entry['title']}" if entry.get("id") is not None else entry["title"]


# ---------------------------------------------------------------------------
# Markdown


def _cell(value) -> str:
    text = value if isinstance(value, str) else _num(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out.extend("| " + " | ".join(_cell(v) for v in row) + " |" for row in rows)
    return out


def render_markdown(review: dict[str, Any], charts: list[tuple[str, str]] | None = None) -> str:
    """The review as Markdown; ``charts`` are (title, relative path) pairs to link."""
    heading, _span = _title(review)
    out = [f"# {heading}", ""]
    for label, parts in _headline(review):
        out.append(f"**{label}**: " + " · ".join(f"{n} {word}" for word, n in parts) + "  ")
    out.append("")
    if not _has_activity(review):
        out += ["No activity recorded in this period.", ""]
    if review["moved"]:
        out += ["## 🔄 Moved this period", ""]
        for group in review["moved"]:
            out.append(f"### {group['direction']['title']}")
            out.append("")
            for c in group["changes"]:
                out.append(
                    f"- {c['date']} #{c['item_id']} {c['title']}: {_status(c['from'])} → {_status(c['to'])}"
                )
            out.append("")
    if review["finished"]:
        out += ["## ✅ Finished", ""]
        for entry in review["finished"]:
            where = f" ({entry['direction']})" if entry["direction"] else ""
            out.append(f"- **{_item_text(entry)}**{where}, {_when(entry['done_at'])}")
            for o in entry["outcomes"]:
                text = " — ".join(x for x in (f"`{o['ref']}`" if o["ref"] else "", o["text"]) if x)
                out.append(f"  - {o['kind']}: {text}")
            if not entry["outcomes"]:
                out.append("  - _no outcome recorded_")
        out.append("")
    exp = review["experiments"]
    if exp["items"] or charts:
        out += ["## 🧪 Experiments", ""]
        if exp["items"]:
            rows = [
                [
                    _item_text(e),
                    e["runs"],
                    ", ".join(f"{n} {s}" for s, n in e["by_status"].items()),
                    f"{e['metric']} ({e['goal']})" if e["metric"] else "",
                    _num(e["best"]),
                    f"#{e['best_run']}" if e["best_run"] else "",
                    _num(e["previous_best"]),
                    _change(e),
                ]
                for e in exp["items"]
            ]
            out += _table(
                ["Experiment", "Runs", "Status", "Key metric", "Best", "Run", "Previous", "Change"],
                rows,
            )
            out.append("")
        for title, path in charts or []:
            out += [f"![{title}]({path})", ""]
        if exp["failures"]:
            out += ["### Failures", ""]
            for f in exp["failures"]:
                cell = f"cell {f['cell_index']}: " if f["cell_index"] is not None else ""
                out.append(
                    f"- run #{f['run_id']} ({_item_text({'id': f['item_id'], 'title': f['title']})}, `{f['notebook']}`) {f['status']}: {cell}{f['error']}"
                )
            out.append("")
        for sweep in exp["sweeps"]:
            out += [
                f"### Sweep {sweep['sweep_id']} — {_item_text({'id': sweep['item_id'], 'title': sweep['title']})}",
                "",
            ]
            header = ["Run", *sweep["params"], sweep["metric"] or "metric", "Status"]
            rows = [
                [
                    f"#{r['run_id']}",
                    *(_num(r["params"].get(n)) for n in sweep["params"]),
                    _num(r["value"]),
                    r["status"],
                ]
                for r in sweep["rows"][:SWEEP_ROWS_SHOWN]
            ]
            out += _table(header, rows)
            if len(sweep["rows"]) > SWEEP_ROWS_SHOWN:
                out.append(
                    f"\n… {len(sweep['rows']) - SWEEP_ROWS_SHOWN} more runs (see --format json)"
                )
            out.append("")
    if review["notes"]:
        out += ["## 📝 Notes", ""]
        for group in review["notes"]:
            out += [f"### {_item_text(group['item'])}", ""]
            for note in group["notes"]:
                title = f" **{note['title']}**" if note["title"] else ""
                lines = (note["text"] or "").splitlines() or [""]
                out.append(f"- {note['date']}:{title} {lines[0]}".rstrip())
                out.extend(f"  {line}" if line.strip() else "" for line in lines[1:])
            out.append("")
    stuck = review["stuck"]
    if stuck["idle"] or stuck["not_started"]:
        out += ["## 🧊 Stuck", ""]
        if stuck["idle"]:
            out.append(f"No run, note or change for {review['period']['stale_days']} days or more:")
            out.append("")
            out += _table(
                ["Item", "Status", "Priority", "Last activity", "Idle (days)"],
                [
                    [
                        _item_text(e),
                        _status(e["status"]),
                        _priority(e["priority"]),
                        _when(e["last_activity"]),
                        e["days_idle"],
                    ]
                    for e in stuck["idle"]
                ],
            )
            out.append("")
        if stuck["not_started"]:
            out.append("Planned high and critical items not started:")
            out.append("")
            out += _table(
                ["Item", "Priority", "Waiting (days)"],
                [
                    [_item_text(e), _priority(e["priority"]), e["days_waiting"]]
                    for e in stuck["not_started"]
                ],
            )
            out.append("")
    due = review.get("due") or {}
    if any(due.values()):
        out += ["## 📅 Due", ""]
        for group, label in _DUE_GROUPS:
            if due.get(group):
                out += [f"{label}:", ""]
                out += _table(
                    ["Due", "Item", "Status", "Priority"],
                    [[e["due_date"], _item_text(e), _status(e["status"]), _priority(e["priority"])] for e in due[group]],
                )
                out.append("")
    if review["next_focus"]:
        out += ["## 🎯 Next focus", ""]
        out += _table(
            [
                "#",
                "Topic",
                "Innovation",
                "Practicality",
                "Feasibility",
                "Score",
                "Priority",
                "Status",
            ],
            [
                [
                    e["rank"],
                    _item_text(e),
                    _stars(e["innovation"]),
                    _stars(e["practicality"]),
                    _stars(e["feasibility"]),
                    _num(e["score"]),
                    _priority(e["priority"]),
                    _status(e["status"]),
                ]
                for e in review["next_focus"]
            ],
        )
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------
# HTML

_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --head: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--fg);
  font: 15px/1.55 -apple-system, "Segoe UI", "Noto Sans", "Helvetica Neue", Arial, "PingFang SC",
        "Hiragino Sans GB", "Microsoft YaHei", "Noto Sans CJK SC", sans-serif, "Apple Color Emoji",
        "Segoe UI Emoji", "Noto Color Emoji"; }
main { max-width: 1040px; margin: 0 auto; padding: 32px 24px 64px; }
h1 { font-size: 1.8em; margin: 0 0 4px; }
h2 { font-size: 1.3em; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05em; margin: 22px 0 8px; }
.sub { color: var(--muted); margin: 0 0 20px; }
.headline { display: flex; flex-wrap: wrap; gap: 8px 28px; margin: 8px 0 12px; }
.cards { display: flex; gap: 8px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; background: var(--head); min-width: 88px; }
.card b { display: block; font-size: 1.6em; line-height: 1.2; }
.card span { color: var(--muted); font-size: 0.85em; }
.group { color: var(--muted); font-size: 0.8em; text-transform: uppercase; letter-spacing: .05em; margin: 6px 0 4px; }
tr.grp td { background: #eef3f8 !important; font-weight: 600; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 16px; font-size: 0.92em; }
th, td { border: 1px solid var(--line); padding: 6px 10px; text-align: left; vertical-align: top; }
th { background: var(--head); font-weight: 600; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
ul { padding-left: 22px; } li { margin: 3px 0; }
code { font: 0.9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--head);
  padding: 1px 5px; border-radius: 4px; }
.muted { color: var(--muted); } .better { color: #1a7f37; } .worse { color: #cf222e; }
.fail { color: #cf222e; }
figure { margin: 12px 0 20px; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 0.85em; }
.note { white-space: pre-wrap; margin: 2px 0 10px; }
.empty { color: var(--muted); font-style: italic; }
"""


def _e(value) -> str:
    return html.escape(value if isinstance(value, str) else _num(value))


def _html_table(header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{c}</td>' if n in numeric else f"<td>{c}</td>"
            for n, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(review: dict[str, Any], charts: list[Chart] | None = None) -> str:
    """The review as one self-contained HTML page (charts embedded as base64 PNG)."""
    heading, _span = _title(review)
    p = review["period"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(heading)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>{_e(heading)}</h1>",
        f'<p class="sub">Generated {_e(p["generated_at"][:16].replace("T", " "))} UTC · stale after {p["stale_days"]} days · compared with {_e(p["previous"]["start"])} – {_e(p["previous"]["end"])}</p>',
    ]
    parts.append('<div class="headline">')
    for label, values in _headline(review):
        parts.append(f'<div><div class="group">{_e(label)}</div><div class="cards">')
        parts.extend(
            f'<div class="card"><b>{n}</b><span>{_e(word)}</span></div>' for word, n in values
        )
        parts.append("</div></div>")
    parts.append("</div>")
    if not _has_activity(review):
        parts.append('<p class="empty">No activity recorded in this period.</p>')
    if review["moved"]:
        parts.append("<h2>🔄 Moved this period</h2>")
        rows = []
        for group in review["moved"]:
            rows.append(
                f'<tr class="grp"><td colspan="4">{_e(group["direction"]["title"])}</td></tr>'
            )
            for c in group["changes"]:
                item = _e(f"#{c['item_id']} {c['title']}")
                rows.append(
                    f"<tr><td>{_e(c['date'])}</td><td>{item}</td><td>{_e(_status(c['from']))}</td><td>{_e(_status(c['to']))}</td></tr>"
                )
        parts.append(
            "<table><thead><tr><th>Date</th><th>Item</th><th>From</th><th>To</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
    if review["finished"]:
        parts.append("<h2>✅ Finished</h2><ul>")
        for entry in review["finished"]:
            where = (
                f' <span class="muted">({_e(entry["direction"])})</span>'
                if entry["direction"]
                else ""
            )
            outcomes = (
                "".join(
                    f"<li>{_e(o['kind'])}: "
                    + " — ".join(
                        x
                        for x in (
                            (f"<code>{_e(o['ref'])}</code>" if o["ref"] else ""),
                            _e(o["text"]),
                        )
                        if x
                    )
                    + "</li>"
                    for o in entry["outcomes"]
                )
                or '<li class="empty">no outcome recorded</li>'
            )
            parts.append(
                f"<li><b>{_e(_item_text(entry))}</b>{where}, {_e(_when(entry['done_at']))}<ul>{outcomes}</ul></li>"
            )
        parts.append("</ul>")
    exp = review["experiments"]
    if exp["items"] or charts:
        parts.append("<h2>🧪 Experiments</h2>")
        if exp["items"]:
            rows = []
            for e in exp["items"]:
                change = _change(e)
                css = (
                    "better"
                    if change.endswith("better")
                    else "worse"
                    if change.endswith("worse")
                    else "muted"
                )
                rows.append(
                    [
                        _e(_item_text(e)),
                        e["runs"],
                        _e(", ".join(f"{n} {s}" for s, n in e["by_status"].items())),
                        _e(f"{e['metric']} ({e['goal']})" if e["metric"] else ""),
                        _e(e["best"]),
                        _e(f"#{e['best_run']}" if e["best_run"] else ""),
                        _e(e["previous_best"]),
                        f'<span class="{css}">{_e(change)}</span>',
                    ]
                )
            parts.append(
                _html_table(
                    [
                        "Experiment",
                        "Runs",
                        "Status",
                        "Key metric",
                        "Best",
                        "Run",
                        "Previous",
                        "Change",
                    ],
                    rows,
                    {1, 4, 6},
                )
            )
        for chart in charts or []:
            data = base64.b64encode(chart.png).decode("ascii")
            parts.append(
                f'<figure><img alt="{_e(chart.title)}" src="data:image/png;base64,{data}"><figcaption>{_e(chart.title)}</figcaption></figure>'
            )
        if exp["failures"]:
            parts.append("<h3>Failures</h3>")
            parts.append(
                _html_table(
                    ["Run", "Experiment", "Notebook", "Status", "Cell", "Error"],
                    [
                        [
                            f"#{f['run_id']}",
                            _e(f"#{f['item_id']} {f['title']}"),
                            f"<code>{_e(f['notebook'])}</code>",
                            _e(f["status"]),
                            _e(f["cell_index"]),
                            f'<span class="fail">{_e(f["error"])}</span>',
                        ]
                        for f in exp["failures"]
                    ],
                    {4},
                )
            )
        for sweep in exp["sweeps"]:
            parts.append(
                f"<h3>Sweep <code>{_e(sweep['sweep_id'])}</code> — {_e(_item_text({'id': sweep['item_id'], 'title': sweep['title']}))}</h3>"
            )
            header = ["Run", *sweep["params"], sweep["metric"] or "metric", "Status"]
            rows = [
                [
                    f"#{r['run_id']}",
                    *(_e(r["params"].get(n)) for n in sweep["params"]),
                    _e(r["value"]),
                    _e(r["status"]),
                ]
                for r in sweep["rows"][:SWEEP_ROWS_SHOWN]
            ]
            parts.append(_html_table(header, rows, set(range(1, len(sweep["params"]) + 2))))
            if len(sweep["rows"]) > SWEEP_ROWS_SHOWN:
                parts.append(
                    f'<p class="muted">… {len(sweep["rows"]) - SWEEP_ROWS_SHOWN} more runs</p>'
                )
    if review["notes"]:
        parts.append("<h2>📝 Notes</h2>")
        for group in review["notes"]:
            parts.append(f"<h3>{_e(_item_text(group['item']))}</h3>")
            for note in group["notes"]:
                title = f" <b>{_e(note['title'])}</b>" if note["title"] else ""
                parts.append(
                    f'<div class="muted">{_e(note["date"])}{title}</div><div class="note">{_e(note["text"])}</div>'
                )
    stuck = review["stuck"]
    if stuck["idle"] or stuck["not_started"]:
        parts.append("<h2>🧊 Stuck</h2>")
        if stuck["idle"]:
            parts.append(f"<p>No run, note or change for {p['stale_days']} days or more:</p>")
            parts.append(
                _html_table(
                    ["Item", "Status", "Priority", "Last activity", "Idle (days)"],
                    [
                        [
                            _e(_item_text(e)),
                            _e(_status(e["status"])),
                            _e(_priority(e["priority"])),
                            _e(_when(e["last_activity"])),
                            e["days_idle"],
                        ]
                        for e in stuck["idle"]
                    ],
                    {4},
                )
            )
        if stuck["not_started"]:
            parts.append("<p>Planned high and critical items not started:</p>")
            parts.append(
                _html_table(
                    ["Item", "Priority", "Waiting (days)"],
                    [
                        [_e(_item_text(e)), _e(_priority(e["priority"])), e["days_waiting"]]
                        for e in stuck["not_started"]
                    ],
                    {2},
                )
            )
    due = review.get("due") or {}
    if any(due.values()):
        parts.append("<h2>📅 Due</h2>")
        for group, label in _DUE_GROUPS:
            if due.get(group):
                parts.append(f"<p>{_e(label)}:</p>")
                parts.append(
                    _html_table(
                        ["Due", "Item", "Status", "Priority"],
                        [[_e(e["due_date"]), _e(_item_text(e)), _e(_status(e["status"])), _e(_priority(e["priority"]))]
                         for e in due[group]],
                    )
                )
    if review["next_focus"]:
        parts.append("<h2>🎯 Next focus</h2>")
        parts.append(
            _html_table(
                [
                    "#",
                    "Topic",
                    "Innovation",
                    "Practicality",
                    "Feasibility",
                    "Score",
                    "Priority",
                    "Status",
                ],
                [
                    [
                        e["rank"],
                        _e(_item_text(e)),
                        _stars(e["innovation"]),
                        _stars(e["practicality"]),
                        _stars(e["feasibility"]),
                        _e(e["score"]),
                        _e(_priority(e["priority"])),
                        _e(_status(e["status"])),
                    ]
                    for e in review["next_focus"]
                ],
                {0, 5},
            )
        )
    parts += ["</main>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------
# One call for the command


def resolve_format(fmt: str | None, output: Path | None) -> str:
    """--format, else the output file's suffix (.html, .json), else Markdown."""
    if fmt is not None:
        key = fmt.strip().lower()
        key = {"markdown": "md", "htm": "html"}.get(key, key)
        if key not in FORMATS:
            raise ResearchError(f"unknown format {fmt!r}; use md, html or json")
        return key
    if output is not None:
        suffix = output.suffix.lower().lstrip(".")
        return {"html": "html", "htm": "html", "json": "json"}.get(suffix, "md")
    return "md"


def write_review(
    review: dict[str, Any], fmt: str, output: Path | None
) -> tuple[str | None, list[Path]]:
    """Render ``review``; returns (text for stdout or None, files written).

    HTML embeds its charts. Markdown written to a file gets its charts as PNG
    files beside it (``<stem>-runs-per-day.png``, ``<stem>-key-metrics.png``),
    linked relatively; Markdown on stdout has no charts (nothing is written
    behind the reader's back), so ask for a file to get them.
    """
    from research.files import check_writable_target, write_bytes_file, write_text_file

    written: list[Path] = []
    if output is not None:
        check_writable_target(output)  # refuse a folder, FIFO or missing folder before any work
    if fmt == "json":
        text = json.dumps(review, ensure_ascii=False, indent=2, default=str) + "\n"
    elif fmt == "html":
        text = render_html(review, chart_pngs(review))
    else:
        links = []
        if output is not None:
            for chart in chart_pngs(review):
                path = output.with_name(f"{output.stem}-{chart.name}.png")
                written.append(write_bytes_file(path, chart.png).path)
                links.append((chart.title, path.name))
        text = render_markdown(review, links)
    if output is None:
        return text, written
    return None, [write_text_file(output, text).path, *written]
