"""The review as Markdown (charts as PNG files beside it)."""

from __future__ import annotations

from typing import Any

from research.review.report import DUE_GROUPS
from research.review.sections import (
    Styled,
    Table,
    due_table,
    experiments_table,
    idle_table,
    next_focus_table,
    not_started_table,
    sweep_table,
)
from research.review.text import (
    has_activity,
    headline,
    item_text,
    number_text,
    review_title,
    when_text,
)
from research.vocab import status_with_emoji

# ---------------------------------------------------------------------------
# Markdown


def _cell(value) -> str:
    text = value if isinstance(value, str) else number_text(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out.extend("| " + " | ".join(_cell(v) for v in row) + " |" for row in rows)
    return out


def _table_of(table: Table) -> list[str]:
    return _table(table.header, [[c.text if isinstance(c, Styled) else c for c in row] for row in table.rows])


def render_markdown(review: dict[str, Any], charts: list[tuple[str, str]] | None = None) -> str:
    """The review as Markdown; ``charts`` are (title, relative path) pairs to link."""
    heading, _span = review_title(review)
    out = [f"# {heading}", ""]
    for label, parts in headline(review):
        out.append(f"**{label}**: " + " · ".join(f"{n} {word}" for word, n in parts) + "  ")
    out.append("")
    if not has_activity(review):
        out += ["No activity recorded in this period.", ""]
    if review["moved"]:
        out += ["## 🔄 Moved this period", ""]
        for group in review["moved"]:
            out.append(f"### {group['direction']['title']}")
            out.append("")
            for c in group["changes"]:
                out.append(
                    f"- {c['date']} #{c['item_id']} {c['title']}: {status_with_emoji(c['from'])} → {status_with_emoji(c['to'])}"
                )
            out.append("")
    if review["finished"]:
        out += ["## ✅ Finished", ""]
        for entry in review["finished"]:
            where = f" ({entry['direction']})" if entry["direction"] else ""
            out.append(f"- **{item_text(entry)}**{where}, {when_text(entry['done_at'])}")
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
            out += _table_of(experiments_table(exp["items"]))
            out.append("")
        for title, path in charts or []:
            out += [f"![{title}]({path})", ""]
        if exp["failures"]:
            out += ["### Failures", ""]
            for f in exp["failures"]:
                cell = f"cell {f['cell_index']}: " if f["cell_index"] is not None else ""
                out.append(
                    f"- run #{f['run_id']} ({item_text({'id': f['item_id'], 'title': f['title']})}, `{f['notebook']}`) {f['status']}: {cell}{f['error']}"
                )
            out.append("")
        for sweep in exp["sweeps"]:
            out += [
                f"### Sweep {sweep['sweep_id']} — {item_text({'id': sweep['item_id'], 'title': sweep['title']})}",
                "",
            ]
            table = sweep_table(sweep)
            out += _table_of(table)
            if table.more:
                out.append(f"\n… {table.more} more runs (see --format json)")
            out.append("")
    if review["notes"]:
        out += ["## 📝 Notes", ""]
        for group in review["notes"]:
            out += [f"### {item_text(group['item'])}", ""]
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
            out += _table_of(idle_table(stuck["idle"]))
            out.append("")
        if stuck["not_started"]:
            out.append("Planned high and critical items not started:")
            out.append("")
            out += _table_of(not_started_table(stuck["not_started"]))
            out.append("")
    due = review.get("due") or {}
    if any(due.values()):
        out += ["## 📅 Due", ""]
        for group, label in DUE_GROUPS:
            if due.get(group):
                out += [f"{label}:", ""]
                out += _table_of(due_table(due[group]))
                out.append("")
    if review["next_focus"]:
        out += ["## 🎯 Next focus", ""]
        out += _table_of(next_focus_table(review["next_focus"]))
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"
