"""The review as one self-contained HTML page, its charts embedded."""

from __future__ import annotations

import base64
import html
from typing import Any

from research.review.charts import Chart
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
    return html.escape(value if isinstance(value, str) else number_text(value))


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


def _cell(value) -> str:
    if isinstance(value, Styled):
        return f"<code>{_e(value.text)}</code>" if value.style == "code" else f'<span class="{value.style}">{_e(value.text)}</span>'
    return _e(value)


def _table_of(table: Table) -> str:
    return _html_table(table.header, [[_cell(c) for c in row] for row in table.rows], set(table.numeric))


def render_html(review: dict[str, Any], charts: list[Chart] | None = None) -> str:
    """The review as one self-contained HTML page (charts embedded as base64 PNG)."""
    heading, _span = review_title(review)
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
    for label, values in headline(review):
        parts.append(f'<div><div class="group">{_e(label)}</div><div class="cards">')
        parts.extend(
            f'<div class="card"><b>{n}</b><span>{_e(word)}</span></div>' for word, n in values
        )
        parts.append("</div></div>")
    parts.append("</div>")
    if not has_activity(review):
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
                    f"<tr><td>{_e(c['date'])}</td><td>{item}</td><td>{_e(status_with_emoji(c['from']))}</td><td>{_e(status_with_emoji(c['to']))}</td></tr>"
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
                f"<li><b>{_e(item_text(entry))}</b>{where}, {_e(when_text(entry['done_at']))}<ul>{outcomes}</ul></li>"
            )
        parts.append("</ul>")
    exp = review["experiments"]
    if exp["items"] or charts:
        parts.append("<h2>🧪 Experiments</h2>")
        if exp["items"]:
            parts.append(_table_of(experiments_table(exp["items"])))
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
                f"<h3>Sweep <code>{_e(sweep['sweep_id'])}</code> — {_e(item_text({'id': sweep['item_id'], 'title': sweep['title']}))}</h3>"
            )
            table = sweep_table(sweep)
            parts.append(_table_of(table))
            if table.more:
                parts.append(f'<p class="muted">… {table.more} more runs</p>')
    if review["notes"]:
        parts.append("<h2>📝 Notes</h2>")
        for group in review["notes"]:
            parts.append(f"<h3>{_e(item_text(group['item']))}</h3>")
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
            parts.append(_table_of(idle_table(stuck["idle"])))
        if stuck["not_started"]:
            parts.append("<p>Planned high and critical items not started:</p>")
            parts.append(_table_of(not_started_table(stuck["not_started"])))
    due = review.get("due") or {}
    if any(due.values()):
        parts.append("<h2>📅 Due</h2>")
        for group, label in DUE_GROUPS:
            if due.get(group):
                parts.append(f"<p>{_e(label)}:</p>")
                parts.append(_table_of(due_table(due[group])))
    if review["next_focus"]:
        parts.append("<h2>🎯 Next focus</h2>")
        parts.append(_table_of(next_focus_table(review["next_focus"])))
    parts += ["</main>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"
