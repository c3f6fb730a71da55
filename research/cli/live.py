"""`research runs watch`: a run's metrics as it records them. Printing only; the reading is
``research.runs.live``."""

from __future__ import annotations

import sys

import typer

from research.cli.context import db_path, open_session, recover_runs
from research.cli.runs import RunArg, runs_app


@runs_app.command("watch")
def runs_watch(run_ref: RunArg) -> None:
    """Follow a run's metrics live until it ends.

    Follow a run's metrics as it records them, until it ends (exit status 0 if it succeeded, 1 otherwise).
    On a terminal, a table of each metric's latest value; piped, one line per new value. Ctrl-C stops watching, not the run.
    """
    from research import render
    from research.runs.live import watch_run
    from research.runs.query import resolve_run

    recover_runs()
    with open_session() as session:
        run_id = resolve_run(session, run_ref).id
    if sys.stdout.isatty():
        last = _watch_live(run_id)
    else:
        def printed(snapshot) -> None:
            for name in snapshot.changed:
                typer.echo(_metric_line(name, snapshot.metrics[name]))
            if snapshot.final is None and not snapshot.changed:
                render.info(f"run {run_id} {snapshot.status}")

        last = watch_run(db_path(), run_id, printed)
    from research.runs.lifecycle import RunResult

    summary = RunResult(run_id, last.status, last.reason, last.duration_s or 0.0, last.final or {})
    if not sys.stdout.isatty():
        typer.echo(render.run_summary_line(summary))
    if last.status != "succeeded":
        raise typer.Exit(1)


def _metric_line(name: str, latest: dict) -> str:
    from research import render

    step = f" (step {latest['step']})" if latest.get("step") is not None else ""
    return f"{name} = {render.short_value(latest.get('value'), 60)}{step}"


def _watch_live(run_id: int):
    from rich.live import Live

    from research import render
    from research.runs.live import watch_run

    with Live(_table(run_id, None), console=render.console(), auto_refresh=False) as live:
        return watch_run(db_path(), run_id, lambda snapshot: live.update(_table(run_id, snapshot), refresh=True))


def _table(run_id: int, snapshot):
    from rich.table import Table

    from research import render

    if snapshot is None:
        return Table(title=f"run {run_id}")
    title = f"run {run_id} {snapshot.status}"
    if snapshot.cells_total and snapshot.final is None:
        title += f"  {snapshot.cells_done}/{snapshot.cells_total} cells"
    if snapshot.final is not None and snapshot.reason and snapshot.status != "succeeded":
        title += f" ({snapshot.reason})"
    table = Table(title=title, title_justify="left")
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    table.add_column("Step", justify="right")
    if snapshot.final is not None:  # ended: the values as recorded in the database
        steps = {name: v.get("step") for name, v in snapshot.metrics.items()}
        rows = [(name, value, steps.get(name)) for name, value in snapshot.final.items()]
    else:
        rows = [(name, v.get("value"), v.get("step")) for name, v in snapshot.metrics.items()]
    for name, value, step in rows:
        table.add_row(name, render.short_value(value, 40), "" if step is None else str(step))
    return table
