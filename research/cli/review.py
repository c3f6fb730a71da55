"""`research review`: the weekly (monthly, any range) review, as Markdown, HTML or JSON.

Only Typer and the standard library are imported here; the report is built by
``research.review``, imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from research.cli.app import app


@app.command()
def review(
    week: Annotated[
        str | None,
        typer.Option(
            "--week", help="ISO week YYYY-Www, e.g. 2025-W46 (default: the current week)."
        ),
    ] = None,
    month: Annotated[str | None, typer.Option("--month", help="Calendar month YYYY-MM.")] = None,
    quarter: Annotated[
        str | None,
        typer.Option("--quarter", help="Calendar quarter YYYY-Qn, e.g. 2026-Q4 (Qn: this year's)."),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="First day YYYY-MM-DD of a custom range.")
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until", help="Last day YYYY-MM-DD of the range, inclusive (default: today)."
        ),
    ] = None,
    format_: Annotated[
        str | None,
        typer.Option(
            "--format", "-f", help="md, html or json (default: from -o's suffix, else md)."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write to this file (Markdown charts go beside it as PNG)."
        ),
    ] = None,
    stale_days: Annotated[
        int,
        typer.Option(
            "--stale-days",
            help="Stuck: planned or paused this many days, or active with nothing done for as long.",
        ),
    ] = 14,
) -> None:
    """Review a week, a month, a quarter or a range of days.

    Review a period: counts, charts of the backlog and the runs, status moves, finished items and
    outcomes, experiments, notes, stuck items, next focus; each compared with the period before.

    Default: the current ISO week (local time), Markdown on stdout. HTML is one
    self-contained file with its charts embedded; Markdown charts are PNG files
    written beside -o FILE (none on stdout).
    """
    from research.cli.context import db_path, recover_runs
    from research.files import check_writable_target
    from research.review.charts import start_chart_workers
    from research.review.output import has_charts, resolve_format, write_review
    from research.review.period import parse_period
    from research.review.report import build_review

    period = parse_period(week=week, month=month, quarter=quarter, since=since, until=until)
    fmt = resolve_format(format_, output)
    if output is not None:
        check_writable_target(output)  # a bad target fails before any work
    # Chart workers import matplotlib while this process reads the backlog.
    workers = start_chart_workers() if has_charts(fmt, output) else None
    try:
        recover_runs()
        data = build_review(db_path(), period, stale_days=stale_days)
        text, written = write_review(data, fmt, output, chart_workers=workers)
    finally:
        if workers is not None:
            workers.close()
    if text is not None:
        typer.echo(text, nl=False)
    for file in written:
        typer.echo(f"wrote {file}", err=True)
