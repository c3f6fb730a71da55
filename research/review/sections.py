"""The review's tables, defined once: their columns and cells as plain values, which the
Markdown and HTML renderers each write in their own form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from research.review.report import SWEEP_ROWS_SHOWN
from research.review.text import (
    change_text,
    item_text,
    number_text,
    when_text,
)
from research.vocab import priority_with_fire, stars, status_with_emoji


@dataclass(frozen=True)
class Styled:
    """A cell with a role the HTML page colours (``better``, ``worse``, ``muted``, ``fail``)
    or sets in code (``code``); Markdown writes its text."""

    text: str
    style: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[Any]]  # str, numbers (written with number_text) or Styled
    numeric: frozenset[int] = field(default_factory=frozenset)  # right-aligned columns
    more: int = 0  # rows left out (they are in --format json)


def experiments_table(items: list[dict]) -> Table:
    rows = []
    for e in items:
        change = change_text(e)
        role = "better" if change.endswith("better") else "worse" if change.endswith("worse") else "muted"
        rows.append([
            item_text(e),
            e["runs"],
            ", ".join(f"{n} {s}" for s, n in e["by_status"].items()),
            f"{e['metric']} ({e['goal']})" if e["metric"] else "",
            number_text(e["best"]),
            f"#{e['best_run']}" if e["best_run"] else "",
            number_text(e["previous_best"]),
            Styled(change, role),
        ])
    return Table(["Experiment", "Runs", "Status", "Key metric", "Best", "Run", "Previous", "Change"], rows,
                 frozenset({1, 4, 6}))


def sweep_table(sweep: dict) -> Table:
    header = ["Run", *sweep["params"], sweep["metric"] or "metric", "Status"]
    rows = [
        [f"#{r['run_id']}", *(number_text(r["params"].get(n)) for n in sweep["params"]), number_text(r["value"]),
         r["status"]]
        for r in sweep["rows"][:SWEEP_ROWS_SHOWN]
    ]
    return Table(header, rows, frozenset(range(1, len(sweep["params"]) + 2)),
                 more=max(0, len(sweep["rows"]) - SWEEP_ROWS_SHOWN))


def idle_table(entries: list[dict]) -> Table:
    return Table(
        ["Item", "Status", "Priority", "Last activity", "Idle (days)"],
        [[item_text(e), status_with_emoji(e["status"]), priority_with_fire(e["priority"], " "), when_text(e["last_activity"]),
          e["days_idle"]] for e in entries],
        frozenset({4}),
    )


def not_started_table(entries: list[dict]) -> Table:
    return Table(["Item", "Priority", "Waiting (days)"],
                 [[item_text(e), priority_with_fire(e["priority"], " "), e["days_waiting"]] for e in entries], frozenset({2}))


def due_table(entries: list[dict]) -> Table:
    return Table(["Due", "Item", "Status", "Priority"],
                 [[e["due_date"], item_text(e), status_with_emoji(e["status"]), priority_with_fire(e["priority"], " ")] for e in entries])


def next_focus_table(entries: list[dict]) -> Table:
    return Table(
        ["#", "Topic", "Innovation", "Practicality", "Feasibility", "Score", "Priority", "Status"],
        [[e["rank"], item_text(e), stars(e["innovation"]), stars(e["practicality"]), stars(e["feasibility"]),
          number_text(e["score"]), priority_with_fire(e["priority"], " "), status_with_emoji(e["status"])] for e in entries],
        frozenset({0, 5}),
    )
