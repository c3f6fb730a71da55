"""The review as Markdown (charts as PNG files beside it)."""

from __future__ import annotations

from typing import Any

from research.review.report import DUE_GROUPS, SWEEP_ROWS_SHOWN
from research.review.text import (
    change_text,
    has_activity,
    headline,
    item_text,
    number_text,
    priority_text,
    review_title,
    stars,
    status_text,
    when_text,
)

# ---------------------------------------------------------------------------
# Markdown


def _cell(value) -> str:
    text = value if isinstance(value, str) else number_text(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out.extend("| " + " | ".join(_cell(v) for v in row) + " |" for row in rows)
    return out


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
                    f"- {c['date']} #{c['item_id']} {c['title']}: {status_text(c['from'])} → {status_text(c['to'])}"
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
            rows = [
                [
                    item_text(e),
                    e["runs"],
                    ", ".join(f"{n} {s}" for s, n in e["by_status"].items()),
                    f"{e['metric']} ({e['goal']})" if e["metric"] else "",
                    number_text(e["best"]),
                    f"#{e['best_run']}" if e["best_run"] else "",
                    number_text(e["previous_best"]),
                    change_text(e),
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
                    f"- run #{f['run_id']} ({item_text({'id': f['item_id'], 'title': f['title']})}, `{f['notebook']}`) {f['status']}: {cell}{f['error']}"
                )
            out.append("")
        for sweep in exp["sweeps"]:
            out += [
                f"### Sweep {sweep['sweep_id']} — {item_text({'id': sweep['item_id'], 'title': sweep['title']})}",
                "",
            ]
            header = ["Run", *sweep["params"], sweep["metric"] or "metric", "Status"]
            rows = [
                [
                    f"#{r['run_id']}",
                    *(number_text(r["params"].get(n)) for n in sweep["params"]),
                    number_text(r["value"]),
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
            out += _table(
                ["Item", "Status", "Priority", "Last activity", "Idle (days)"],
                [
                    [
                        item_text(e),
                        status_text(e["status"]),
                        priority_text(e["priority"]),
                        when_text(e["last_activity"]),
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
                    [item_text(e), priority_text(e["priority"]), e["days_waiting"]]
                    for e in stuck["not_started"]
                ],
            )
            out.append("")
    due = review.get("due") or {}
    if any(due.values()):
        out += ["## 📅 Due", ""]
        for group, label in DUE_GROUPS:
            if due.get(group):
                out += [f"{label}:", ""]
                out += _table(
                    ["Due", "Item", "Status", "Priority"],
                    [[e["due_date"], item_text(e), status_text(e["status"]), priority_text(e["priority"])] for e in due[group]],
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
                    item_text(e),
                    stars(e["innovation"]),
                    stars(e["practicality"]),
                    stars(e["feasibility"]),
                    number_text(e["score"]),
                    priority_text(e["priority"]),
                    status_text(e["status"]),
                ]
                for e in review["next_focus"]
            ],
        )
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"
