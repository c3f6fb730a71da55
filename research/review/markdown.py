"""The review as Markdown (charts as PNG files beside it)."""

from __future__ import annotations

from typing import Any

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

_MARKS = {"bold": "**{}**", "code": "`{}`", "empty": "_{}_"}


def _inline(parts: list) -> str:
    return "".join(_MARKS.get(p.style, "{}").format(p.text) if isinstance(p, Styled) else p for p in parts)


def _cell(value) -> str:
    text = value if isinstance(value, str) else number_text(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(table: Table) -> list[str]:
    out = ["| " + " | ".join(table.header) + " |", "|" + "|".join("---" for _ in table.header) + "|"]
    out.extend("| " + " | ".join(_cell(c.text if isinstance(c, Styled) else c) for c in row) + " |" for row in table.rows)
    return out


def _notes(notes: list[dict]) -> list[str]:
    out = []
    for note in notes:
        title = f" **{note['title']}**" if note["title"] else ""
        lines = (note["text"] or "").splitlines() or [""]
        out.append(f"- {note['date']}:{title} {lines[0]}".rstrip())
        out.extend(f"  {line}" if line.strip() else "" for line in lines[1:])
    return out


def _block(block, charts: list[tuple[str, str, str]]) -> list[str]:
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, SubHeading):
        return [f"### {_inline(block.parts)}"]
    if isinstance(block, Paragraph):
        return [_inline(block.parts)]
    if isinstance(block, Bullets):
        out = []
        for entry in block.entries:
            out.append(f"- {_inline(entry.parts)}")
            out.extend(f"  - {_inline(child)}" for child in entry.children)
        return out
    if isinstance(block, Notes):
        return _notes(block.notes)
    if isinstance(block, Charts):
        shown = [f"![{title}]({path})" for group, title, path in charts if group == block.group]
        return "\n\n".join(shown).splitlines()
    raise TypeError(f"no Markdown form for {type(block).__name__}")


def render_markdown(review: dict[str, Any], charts: list[tuple[str, str, str]] | None = None) -> str:
    """The review as Markdown; ``charts`` are (group, title, relative path) triples to link."""
    heading, _span = review_title(review)
    out = [f"# {heading}", ""]
    for label, parts in headline(review):
        out.append(f"**{label}**: " + " · ".join(f"{n} {word}" for word, n in parts) + "  ")
    out.append("")
    if not has_activity(review):
        out += ["No activity recorded in this period.", ""]
    groups = frozenset(group for group, _title, _path in charts or [])
    for section in review_sections(review, chart_groups=groups):
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            out += [*_block(block, charts or []), ""]
    return "\n".join(out).rstrip("\n") + "\n"
