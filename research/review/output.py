"""One call for the command: pick the format, render, write the file and its charts."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from research.errors import ResearchError
from research.review.charts import Chart, start_charts
from research.review.html import data_uri, render_html
from research.review.markdown import render_markdown
from research.review.report import FORMATS

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


def has_charts(fmt: str, output: Path | None) -> bool:
    """Whether this format and destination get charts: HTML, and Markdown written to a file."""
    return fmt == "html" or (fmt == "md" and output is not None)


def write_review(
    review: dict[str, Any], fmt: str, output: Path | None, chart_workers=None
) -> tuple[str | None, list[Path]]:
    """Render ``review``; returns (text for stdout or None, files written).

    HTML embeds its charts. Markdown written to a file gets its charts as PNG
    files beside it (``<stem>-progress.png``, ``<stem>-runs-per-day.png``, …),
    linked relatively; Markdown on stdout has no charts (nothing is written
    behind the reader's back), so ask for a file to get them. ``chart_workers``
    (:func:`research.review.charts.start_chart_workers`) draw them, if given.
    Check ``output`` first (``research.files.check_writable_target``) to refuse a
    folder, a FIFO or a missing folder before any work.
    """
    from research.files import write_bytes_file, write_text_file

    written: list[Path] = []
    if fmt == "json":
        text = json.dumps(review, ensure_ascii=False, indent=2, default=str) + "\n"
    elif fmt == "html":
        # The page is written while its charts are drawn, then they take their places.
        tasks, charts = start_charts(review, chart_workers)
        token = secrets.token_hex(8)
        pending = [Chart(t.name, t.title, b"", t.group) for t in tasks]
        text = render_html(review, pending, image_src=lambda c: f"chart-{token}-{c.name}")
        for chart in charts():
            text = text.replace(f'src="chart-{token}-{chart.name}"', f'src="{data_uri(chart)}"', 1)
    elif output is not None:
        tasks, charts = start_charts(review, chart_workers)
        paths = {t.name: output.with_name(f"{output.stem}-{t.name}.png") for t in tasks}
        text = render_markdown(review, [(t.group, t.title, paths[t.name].name) for t in tasks])
        for chart in charts():
            written.append(write_bytes_file(paths[chart.name], chart.png).path)
    else:
        text = render_markdown(review, [])
    if output is None:
        return text, written
    return None, [write_text_file(output, text).path, *written]
