"""The review itself: what moved, finished, ran, was noted, is due and stalled, as a plain dict
(also the ``--format json`` output). The rules are stated in ``research.review``."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from research import clock
from research.errors import ResearchError
from research.review.data import ReviewData, status_moved_to
from research.review.period import Period, utc_bound
from research.vocab import (
    ENDED_RUN_STATUSES,
    FAILED_RUN_STATUSES,
    OPEN_RUN_STATUSES,
    OPEN_STATUSES,
    PRIORITY_RANK,
    STATUSES,
)

FORMATS = ("md", "html", "json")
CHART_STATUSES = (*ENDED_RUN_STATUSES, *reversed(OPEN_RUN_STATUSES))
NEXT_FOCUS_LIMIT = 10
STUCK_ROWS_SHOWN = 15  # rows of the stuck and progress tables in Markdown and HTML
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
        data = ReviewData(conn, period, now_iso)
    finally:
        conn.close()

    moved, transitions = _moved(data)
    kinds = {
        kind: {
            e["item_id"]
            for e in data.period_events()
            if e["table"] == "item" and data.kind_of(e["item_id"]) == kind
        }
        for kind in ("item", "task")
    }

    def moved_to(status: str, kind: str = "item") -> int:
        return len(transitions.get(status, set()) & kinds[kind])

    def added(kind: str) -> int:
        return sum(
            1 for e in data.period_events()
            if e["table"] == "item" and e["action"] == "created" and e["item_id"] in kinds[kind]
        )

    counts = {
        "items_added": added("item"),
        "items_started": moved_to("active"),
        "items_paused": moved_to("paused"),
        "items_finished": moved_to("done"),
        "items_dropped": moved_to("dropped"),
        "tasks_added": added("task"),
        "tasks_ticked": moved_to("done", "task"),
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
        "charts": {
            "progress": _progress(data),
            "burndown": _burndown(data, period),
            "flow": _flow(data),
            "runs_per_day": _runs_per_day(data, period),
            "key_metrics": series,
        },
    }


def _brief(data: ReviewData, item_id: int | None) -> dict:
    out = data.title_of(item_id)
    root = data.root_of(item_id)
    out["direction"] = (
        data.title_of(root)["title"] if root is not None and root != item_id else None
    )
    return out


def _moved(data: ReviewData) -> tuple[list[dict], dict[str, set]]:
    groups: dict[int | None, list[dict]] = {}
    transitions: dict[str, set] = {}
    for event in data.period_events():
        status = status_moved_to(event)
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


def _finished(data: ReviewData) -> list[dict]:
    out, seen = [], set()
    for event in data.period_events():
        if status_moved_to(event) != "done" or event["item_id"] in seen:
            continue
        seen.add(event["item_id"])
        entry = _brief(data, event["item_id"])
        entry["done_at"] = event["ts"]
        entry["outcomes"] = data.outcomes.get(event["item_id"], [])
        out.append(entry)
    return out


def _notes(data: ReviewData) -> list[dict]:
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


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _key_metric(data: ReviewData, item_id: int, runs: list[dict]) -> tuple[str | None, str]:
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
            if is_number(value):
                lowered = name.lower()
                return name, "min" if any(h in lowered for h in _MINIMIZE_HINTS) else "max"
    return None, "max"


def _best(values: list[tuple[float, int]], direction: str) -> tuple[float, int] | None:
    if not values:
        return None
    return (max if direction == "max" else min)(
        values, key=lambda v: (v[0], -v[1]) if direction == "max" else (v[0], v[1])
    )


def _experiments(data: ReviewData) -> tuple[dict, list[dict]]:
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
                if r["status"] == "succeeded" and pick(r["ended_at"]) and is_number(value):
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
            and is_number(data.metrics.get(r["id"], {}).get(metric))
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


def _sweep_table(data: ReviewData, sweep_id: str, sweep: dict) -> dict:
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


def _stuck(data: ReviewData, stale_days: int) -> dict[str, list[dict]]:
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
        if (
            item["status"] not in ("planned", "paused")
            or item["kind"] != "item"
            or item["id"] in data.headings  # a heading over directions, not one itself
        ):
            continue
        since = max(filter(None, (item["created_at"], data.status_since.get(item["id"]))))
        days = (ref - clock.parse_iso(since)).days
        if days < stale_days:
            continue
        entry = _brief(data, item["id"])
        entry.update(status=item["status"], priority=item["priority"], since=since, days_waiting=days)
        waiting.append(entry)
    waiting.sort(key=lambda e: (PRIORITY_RANK.get(e["priority"], 9), -e["days_waiting"], e["id"]))
    return {"idle": idle, "waiting": waiting}


def _due(data: ReviewData, period: Period) -> dict[str, list[dict]]:
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


DUE_GROUPS = (("overdue", "Overdue (still open)"), ("in_period", "Due in this period"), ("upcoming", "Due next"))


def _next_focus(data: ReviewData) -> list[dict]:
    candidates = [
        i
        for i in data.snapshot.values()
        if i["status"] in OPEN_STATUSES and i["kind"] == "item" and i["id"] not in data.headings
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


def _runs_per_day(data: ReviewData, period: Period) -> dict:
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
# The backlog's charts: progress per direction, open items day by day, status moves


def _task_owners(items: dict[int, dict]) -> dict[int, int]:
    """Each checklist task's direction: the nearest item above it that is not a task."""
    owners: dict[int, int] = {}
    for task in items.values():
        if task["kind"] != "task":
            continue
        current, seen = task, set()
        while current is not None and current["kind"] == "task" and current["id"] not in seen:
            seen.add(current["id"])
            current = items.get(current["parent_id"])
        if current is not None and current["kind"] != "task":
            owners[task["id"]] = current["id"]
    return owners


def _progress(data: ReviewData) -> list[dict]:
    """Checklist progress of each direction with tasks: done, dropped and open at the end of the
    period, done at its start, and tasks ticked and added during it."""
    end, start = data.snapshot, data.start_snapshot
    owners = _task_owners(end)
    ticked: dict[int, set] = {}
    added: dict[int, int] = {}
    for event in data.period_events():
        task = event["item_id"]
        if task not in owners:
            continue
        if status_moved_to(event) == "done":
            ticked.setdefault(owners[task], set()).add(task)
        elif event["table"] == "item" and event["action"] == "created" and event["before"] is None:
            added[owners[task]] = added.get(owners[task], 0) + 1
    rows: dict[int, dict] = {}
    for task, owner in owners.items():
        row = rows.setdefault(
            owner, {"done": 0, "dropped": 0, "open": 0, "done_at_start": 0, "total_at_start": 0}
        )
        status = end[task]["status"]
        row["done" if status == "done" else "dropped" if status == "dropped" else "open"] += 1
        if task in start:
            row["total_at_start"] += 1
            row["done_at_start"] += start[task]["status"] == "done"
    out = []
    for owner, row in rows.items():
        out.append(
            {
                **data.title_of(owner),
                **row,
                "total": row["done"] + row["dropped"] + row["open"],
                "ticked": len(ticked.get(owner, ())),
                "added": added.get(owner, 0),
            }
        )
    out.sort(key=lambda r: (-(r["ticked"] + r["added"]), end[r["id"]].get("position") or 0, r["id"]))
    return out


def _burndown(data: ReviewData, period: Period) -> dict:
    """Open items and open checklist tasks at the start of the period and at the end of each of
    its days (None for days still to come), replayed from the event log."""
    # Each row's (task or item, status), and how many of each are open, as events replay.
    state = {
        i: ("task" if row["kind"] == "task" else "item", row["status"])
        for i, row in data.start_snapshot.items()
    }
    open_now = {"item": 0, "task": 0}
    for kind, status in state.values():
        open_now[kind] += status in OPEN_STATUSES
    start_counts = dict(open_now)

    def apply(row_id: int, new: tuple[str, str] | None) -> None:
        old = state.pop(row_id, None)
        if old is not None:
            open_now[old[0]] -= old[1] in OPEN_STATUSES
        if new is not None:
            state[row_id] = new
            open_now[new[0]] += new[1] in OPEN_STATUSES

    events = sorted(
        (e for e in data.period_events() if e["table"] == "item"), key=lambda e: (e["ts"], e["id"])
    )
    series: dict[str, list] = {"item": [], "task": []}
    n = 0
    for day in period.days:
        bound = utc_bound(day + timedelta(days=1))
        while n < len(events) and events[n]["ts"] < bound:
            event = events[n]
            n += 1
            row_id, before, after = event["row_id"], event["before"], event["after"]
            if after is None:
                apply(row_id, None)
            elif before is None:
                kind = after.get("kind") or data.kind_of(row_id)
                apply(row_id, ("task" if kind == "task" else "item", after.get("status") or "planned"))
            elif "status" in after and row_id in state:
                apply(row_id, (state[row_id][0], after["status"]))
        future = utc_bound(day) > data.ref
        for kind in series:
            series[kind].append(None if future else open_now[kind])
    return {
        "days": [d.isoformat() for d in period.days],
        "start": {"items": start_counts["item"], "tasks": start_counts["task"]},
        "items": series["item"],
        "tasks": series["task"],
    }


def _flow(data: ReviewData) -> list[dict]:
    """Status moves in the period, from one status to another, counted for items and tasks."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for event in data.period_events():
        status = status_moved_to(event)
        if status is None:
            continue
        key = (event["before"].get("status") or "planned", status)
        entry = counts.setdefault(key, {"items": 0, "tasks": 0})
        entry["tasks" if data.kind_of(event["item_id"]) == "task" else "items"] += 1
    order = {status: n for n, status in enumerate(STATUSES)}
    return [
        {"from": a, "to": b, **n}
        for (a, b), n in sorted(counts.items(), key=lambda kv: (order.get(kv[0][0], 9), order.get(kv[0][1], 9)))
    ]
