"""Formatting shared by the Markdown and HTML renderers: numbers, changes, statuses, titles."""

from __future__ import annotations

import json

from research import clock

# ---------------------------------------------------------------------------
# Rendering helpers


def number_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value  # a parameter's value as the user gave it, not as JSON
    if isinstance(value, list | tuple):
        return "[" + ", ".join(number_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {number_text(v)}" for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=False, default=str)


def change_text(entry: dict) -> str:
    if entry["change"] is None:
        return "new" if entry["best"] is not None and entry["previous_best"] is None else ""
    better = entry["change"] > 0 if entry["goal"] == "max" else entry["change"] < 0
    arrow = "▲" if entry["change"] > 0 else "▼" if entry["change"] < 0 else "="
    pct = f" ({entry['change_pct']:+.1f}%)" if entry["change_pct"] is not None else ""
    mark = "" if entry["change"] == 0 else (" better" if better else " worse")
    return f"{arrow} {entry['change']:+.4g}{pct}{mark}"


def when_text(ts: str | None) -> str:
    return clock.local_date(ts)


def has_activity(review: dict) -> bool:
    return any(review["counts"].values()) or bool(review["moved"] or review["experiments"]["items"])


def headline(review: dict) -> list[tuple[str, list[tuple[str, int]]]]:
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
        ("Tasks", [("added", c["tasks_added"]), ("ticked", c["tasks_ticked"])]),
        ("Notes", [("written", c["notes_written"])]),
    ]


def review_title(review: dict) -> tuple[str, str]:
    p = review["period"]
    span = p["start"] if p["start"] == p["end"] else f"{p['start']} – {p['end']}"
    heading = f"Review {p['label']}" + ("" if p["kind"] == "range" else f" ({span})")
    return heading, span


def item_text(entry: dict) -> str:
    return f"#{entry['id']} {entry['title']}" if entry.get("id") is not None else entry["title"]
