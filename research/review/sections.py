"""The review's sections, defined once: headings, paragraphs, lists, notes and tables as
plain values (``review_sections``), which the Markdown and HTML renderers each write in
their own form. A renderer knows how to write a kind of block, never what a section says."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from research.review.report import DUE_GROUPS, STUCK_ROWS_SHOWN, SWEEP_ROWS_SHOWN
from research.review.text import (
    change_text,
    item_text,
    number_text,
    when_text,
)
from research.vocab import priority_with_fire, stars, status_with_emoji


@dataclass(frozen=True)
class Styled:
    """Text with a role: ``bold``, ``code`` and ``empty`` (an absence, in italics) are set
    in both forms; the HTML page also colours ``better``, ``worse``, ``muted`` and ``fail``."""

    text: str
    style: str


Inline = list  # of str and Styled, written one after another


@dataclass
class Paragraph:
    parts: Inline


@dataclass
class SubHeading:
    parts: Inline


@dataclass
class Entry:
    parts: Inline
    children: list[Inline] = field(default_factory=list)  # a nested list under the entry


@dataclass
class Bullets:
    entries: list[Entry]


@dataclass
class Notes:
    notes: list[dict]  # date, title, text (several lines kept as written)


@dataclass
class Charts:
    """Where a group of charts goes (``backlog`` or ``runs``); the renderer has them: files
    beside a Markdown report, embedded in HTML."""

    group: str


@dataclass
class Section:
    title: str
    blocks: list


@dataclass
class Table:
    header: list[str]
    rows: list[list[Any]]  # str, numbers (written with number_text) or Styled
    numeric: frozenset[int] = field(default_factory=frozenset)  # right-aligned columns
    more: int = 0  # rows left out (they are in --format json)


def with_more(table: Table, what: str = "") -> list:
    """The table, and a line saying how many of its rows were left out, if any."""
    if not table.more:
        return [table]
    noun = f" {what}" if what else ""
    return [table, Paragraph([Styled(f"… {table.more} more{noun} (see --format json)", "muted")])]


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


def waiting_table(entries: list[dict]) -> Table:
    return Table(
        ["Item", "Status", "Priority", "Since", "Waiting (days)"],
        [[item_text(e), status_with_emoji(e["status"]), priority_with_fire(e["priority"], " "), when_text(e["since"]),
          e["days_waiting"]] for e in entries[:STUCK_ROWS_SHOWN]],
        frozenset({4}),
        more=max(0, len(entries) - STUCK_ROWS_SHOWN),
    )


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


# ---------------------------------------------------------------------------
# The sections of a review, in order


def review_sections(review: dict[str, Any], chart_groups: frozenset[str] = frozenset()) -> list[Section]:
    """The sections in order; ``chart_groups``: the groups of charts the renderer has."""
    builders = (
        lambda r: _backlog(r, "backlog" in chart_groups),
        _moved,
        _finished,
        lambda r: _experiments(r, "runs" in chart_groups),
        _notes,
        _stuck,
        _due,
        _next_focus,
    )
    return [section for build in builders if (section := build(review)) is not None]


def _backlog(review: dict, with_charts: bool) -> Section | None:
    progress = review["charts"].get("progress") or []
    if not (with_charts or progress):
        return None
    blocks: list = [Charts("backlog")] if with_charts else []
    moving = [p for p in progress if p["ticked"] or p["added"]]
    if moving:
        blocks += with_more(Table(
            ["Direction", "Done", "Open", "Ticked", "Added", "Progress"],
            [[item_text(p), p["done"], p["open"], p["ticked"], p["added"],
              f"{p['done_at_start']}/{p['total_at_start']} → {p['done']}/{p['total']}"]
             for p in moving[:STUCK_ROWS_SHOWN]],
            frozenset({1, 2, 3, 4}),
            more=max(0, len(moving) - STUCK_ROWS_SHOWN),
        ), "directions")
    return Section("📈 Backlog", blocks) if blocks else None


def _moved(review: dict) -> Section | None:
    if not review["moved"]:
        return None
    blocks: list = []
    for group in review["moved"]:
        blocks.append(SubHeading([group["direction"]["title"]]))
        blocks.append(Bullets([
            Entry([f"{c['date']} #{c['item_id']} {c['title']}: {status_with_emoji(c['from'])} → {status_with_emoji(c['to'])}"])
            for c in group["changes"]
        ]))
    return Section("🔄 Moved this period", blocks)


def _finished(review: dict) -> Section | None:
    if not review["finished"]:
        return None
    entries = []
    for entry in review["finished"]:
        where = [Styled(f" ({entry['direction']})", "muted")] if entry["direction"] else []
        outcomes = [_outcome(o) for o in entry["outcomes"]] or [[Styled("no outcome recorded", "empty")]]
        entries.append(Entry([Styled(item_text(entry), "bold"), *where, f", {when_text(entry['done_at'])}"], outcomes))
    return Section("✅ Finished", [Bullets(entries)])


def _outcome(outcome: dict) -> Inline:
    parts: Inline = [f"{outcome['kind']}: "]
    if outcome["ref"]:
        parts.append(Styled(outcome["ref"], "code"))
    if outcome["ref"] and outcome["text"]:
        parts.append(" — ")
    if outcome["text"]:
        parts.append(outcome["text"])
    return parts


def _experiments(review: dict, with_charts: bool) -> Section | None:
    exp = review["experiments"]
    if not (exp["items"] or with_charts):
        return None
    blocks: list = []
    if exp["items"]:
        blocks.append(experiments_table(exp["items"]))
    if with_charts:
        blocks.append(Charts("runs"))
    if exp["failures"]:
        blocks.append(SubHeading(["Failures"]))
        blocks.append(Bullets([Entry(_failure(f)) for f in exp["failures"]]))
    for sweep in exp["sweeps"]:
        blocks.append(SubHeading(["Sweep ", Styled(str(sweep["sweep_id"]), "code"),
                                  f" — {item_text({'id': sweep['item_id'], 'title': sweep['title']})}"]))
        blocks += with_more(sweep_table(sweep), "runs")
    return Section("🧪 Experiments", blocks)


def _failure(failure: dict) -> Inline:
    cell = f"cell {failure['cell_index']}: " if failure["cell_index"] is not None else ""
    item = item_text({"id": failure["item_id"], "title": failure["title"]})
    return [f"run #{failure['run_id']} ({item}, ", Styled(failure["notebook"], "code"), f") {failure['status']}: ",
            Styled(f"{cell}{failure['error']}", "fail")]


def _notes(review: dict) -> Section | None:
    if not review["notes"]:
        return None
    blocks: list = []
    for group in review["notes"]:
        blocks += [SubHeading([item_text(group["item"])]), Notes(group["notes"])]
    return Section("📝 Notes", blocks)


def _stuck(review: dict) -> Section | None:
    stuck = review["stuck"]
    if not (stuck["idle"] or stuck["waiting"]):
        return None
    blocks: list = []
    if stuck["idle"]:
        blocks += [Paragraph([f"No run, note or change for {review['period']['stale_days']} days or more:"]),
                   idle_table(stuck["idle"])]
    if stuck["waiting"]:
        blocks += [Paragraph([f"Planned or paused for {review['period']['stale_days']} days or more:"]),
                   *with_more(waiting_table(stuck["waiting"]))]
    return Section("🧊 Stuck", blocks)


def _due(review: dict) -> Section | None:
    due = review.get("due") or {}
    if not any(due.values()):
        return None
    blocks: list = []
    for group, label in DUE_GROUPS:
        if due.get(group):
            blocks += [Paragraph([f"{label}:"]), due_table(due[group])]
    return Section("📅 Due", blocks)


def _next_focus(review: dict) -> Section | None:
    if not review["next_focus"]:
        return None
    return Section("🎯 Next focus", [next_focus_table(review["next_focus"])])
