"""The review as one self-contained HTML page, its charts embedded."""

from __future__ import annotations

import base64
import html
from typing import Any

from research.review.charts import Chart
from research.review.safe_markdown import markdown_html
from research.review.sections import (
    Bullets,
    Charts,
    Notes,
    Paragraph,
    Styled,
    SubHeading,
    Table,
    review_sections,
)
from research.review.text import has_activity, headline, number_text, review_title

# ---------------------------------------------------------------------------
# HTML

_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --head: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--fg);
  font: 15px/1.55 -apple-system, BlinkMacSystemFont, "Segoe UI", "Noto Sans", "Helvetica Neue", Arial,
        "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", "Noto Sans CJK SC", "Noto Sans SC",
        "Source Han Sans SC", "Source Han Sans CN", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei",
        "Droid Sans Fallback", sans-serif, "Apple Color Emoji", "Segoe UI Emoji", "Noto Color Emoji"; }
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
.note { margin: 2px 0 10px; } .note p { margin: 0 0 6px; } .note ul, .note ol { margin: 0 0 6px; }
.note pre { background: var(--head); padding: 8px 10px; border-radius: 6px; overflow-x: auto; }
.note table { width: auto; }
.empty { color: var(--muted); font-style: italic; }
"""


def _e(value) -> str:
    return html.escape(value if isinstance(value, str) else number_text(value))


_TAGS = {"bold": "b", "code": "code"}


def _styled(part: Styled) -> str:
    tag = _TAGS.get(part.style)
    if tag:
        return f"<{tag}>{_e(part.text)}</{tag}>"
    return f'<span class="{part.style}">{_e(part.text)}</span>'


def _inline(parts: list) -> str:
    return "".join(_styled(p) if isinstance(p, Styled) else _e(p) for p in parts)


def _table(table: Table) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{_inline([c])}</td>' if n in table.numeric else f"<td>{_inline([c])}</td>"
            for n, c in enumerate(row)
        ) + "</tr>"
        for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# Nothing runs and nothing loads from elsewhere: the charts are data: URIs.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def data_uri(chart: Chart) -> str:
    """A chart's PNG as a ``data:`` URI: the page carries its images."""
    return "data:image/png;base64," + base64.b64encode(chart.png).decode("ascii")


def figure_html(chart: Chart, image_src=data_uri) -> str:
    """One chart as a ``<figure>`` with its title as the image's alt text and caption."""
    return (f'<figure><img alt="{_e(chart.title)}" src="{image_src(chart)}">'
            f"<figcaption>{_e(chart.title)}</figcaption></figure>")


def _block(block, charts: list[Chart], image_src=data_uri) -> str:
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, SubHeading):
        return f"<h3>{_inline(block.parts)}</h3>"
    if isinstance(block, Paragraph):
        return f"<p>{_inline(block.parts)}</p>"
    if isinstance(block, Bullets):
        items = []
        for entry in block.entries:
            children = "".join(f"<li>{_inline(child)}</li>" for child in entry.children)
            items.append(f"<li>{_inline(entry.parts)}" + (f"<ul>{children}</ul>" if children else "") + "</li>")
        return f"<ul>{''.join(items)}</ul>"
    if isinstance(block, Notes):
        return "".join(
            f'<div class="muted">{_e(n["date"])}' + (f" <b>{_e(n['title'])}</b>" if n["title"] else "")
            + f'</div><div class="note">{markdown_html(n["text"])}</div>'
            for n in block.notes
        )
    if isinstance(block, Charts):
        return "\n".join(figure_html(chart, image_src) for chart in charts if chart.group == block.group)
    raise TypeError(f"no HTML form for {type(block).__name__}")


def render_html(review: dict[str, Any], charts: list[Chart] | None = None, image_src=data_uri) -> str:
    """The review as one self-contained HTML page (charts embedded as base64 PNG).

    ``image_src(chart)`` gives each image's ``src``: a placeholder lets the page be
    written while its charts are still being drawn."""
    heading, _span = review_title(review)
    p = review["period"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>{_e(heading)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>{_e(heading)}</h1>",
        f'<p class="sub">Generated {_e(p["generated_at"][:16].replace("T", " "))} UTC · stale after {p["stale_days"]} days · compared with {_e(p["previous"]["start"])} – {_e(p["previous"]["end"])}</p>',
    ]
    parts.append(review_body_html(review, charts, image_src))
    parts += ["</main>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def review_body_html(review: dict[str, Any], charts: list[Chart] | None = None, image_src=data_uri) -> str:
    """The review's headline cards and sections as HTML (no page around them): the page
    `research review -f html` writes, and the web view's review page, are built on it."""
    parts = []
    parts.append('<div class="headline">')
    for label, values in headline(review):
        parts.append(f'<div><div class="group">{_e(label)}</div><div class="cards">')
        parts.extend(f'<div class="card"><b>{n}</b><span>{_e(word)}</span></div>' for word, n in values)
        parts.append("</div></div>")
    parts.append("</div>")
    if not has_activity(review):
        parts.append('<p class="empty">No activity recorded in this period.</p>')
    groups = frozenset(chart.group for chart in charts or [])
    for section in review_sections(review, chart_groups=groups):
        parts.append(f"<h2>{_e(section.title)}</h2>")
        parts.extend(_block(block, charts or [], image_src) for block in section.blocks)
    return "\n".join(parts)
