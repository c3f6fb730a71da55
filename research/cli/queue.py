"""`research queue`: the runs stored with `research run --queue`, worked by `research queue work`.

Parsing and printing only; the queue itself is ``research.runs.queue``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from research.cli.app import app, new_typer
from research.cli.context import JsonOpt, db_path, open_session, recover_runs
from research.errors import ResearchError

queue_app = new_typer("Runs stored for later (run --queue): list, work, cancel.", no_args_is_help=False)
app.add_typer(queue_app, name="queue")

QueueOpt = Annotated[str | None, typer.Option("--queue", "-q", metavar="NAME", help="Only this queue (default: every queue).")]


@queue_app.callback(invoke_without_command=True)
def queue(ctx: typer.Context, name: QueueOpt = None, json_: JsonOpt = False) -> None:
    """List the queued runs and those being worked (`work` and `cancel` below)."""
    if ctx.invoked_subcommand is not None:
        return
    from research import render
    from research.runs.queue import queue_entries
    from research.sweeps.drive import queued_sweeps

    recover_runs()
    with open_session() as session:
        entries = queue_entries(session, name)
        sweeps = queued_sweeps(session, name)
    if json_:
        render.print_json(entries + sweeps)
        return
    if not entries and not sweeps:
        render.info("The queue is empty.")
        return
    for sweep in sweeps:
        where = f", pid {sweep['pid']} on {sweep['host']}" if sweep["pid"] else ""
        typer.echo(f"sweep {sweep['sweep']}: {sweep['notebook']}, {sweep['trials_ended']}/{sweep['trials']} trials, "
                   f"{sweep['state']}{where}")
    if not entries:
        return
    rows = []
    for e in entries:
        params = " ".join(f"{k}={render.short_value(v, 24)}" for k, v in e["params_given"].items())
        where = f"pid {e['pid']} on {e['host']}" if e["pid"] else (e["note"] or "")
        rows.append([str(e["id"]), e["item"] or "", e["notebook"], e["state"], e["queued_at"] or "", params, where])
    render.plain_table(["Run", "Item", "Notebook", "State", "Queued", "Params", "Process / note"], rows)


@queue_app.command("work")
def queue_work(
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Runs at once, each in its own kernel.")] = 1,
    until_empty: Annotated[bool, typer.Option("--until-empty", help="Stop once no run waits (default: wait for new ones until Ctrl-C or SIGTERM).")] = False,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.1, help="End a run as 'timeout' after this many seconds, unless it was queued with its own --timeout.")] = None,
    name: Annotated[str, typer.Option("--queue", "-q", metavar="NAME", help="The queue to work.")] = "default",
    preload: Annotated[list[str] | None, typer.Option("--preload", metavar="MODULE", help="Import MODULE once, in the process every run's runner and kernel are forked from (e.g. torch; repeatable).")] = None,
) -> None:
    """Run queued runs on this machine, in the foreground.

    Run the queued runs on this machine, oldest first, up to -j at once (run it under tmux
    or systemd). Ctrl-C or SIGTERM stops it: the runs in progress go back to the queue.
    With --until-empty the exit status is 1 if a run it ran did not succeed.
    """
    from research import render
    from research.cli.runs import notebook_root
    from research.runs import forkserver
    from research.runs.child import handle_interrupts
    from research.runs.queue import drain
    from research.sweeps.drive import work_queued_sweeps

    path = db_path()
    recover_runs()
    mode = "until it is empty" if until_empty else "Ctrl-C stops"
    render.info(f"working queue {name!r}, {jobs} at a time, {mode} (runs in progress go back to the queue)")

    def started(run) -> None:
        params = " ".join(f"{k}={render.short_value(v, 24)}" for k, v in run.params.items())
        render.info(f"run {run.id} started: {run.notebook} {params}".rstrip())

    def done(result) -> None:
        if result.status == "queued":
            render.info(f"run {result.run_id} {result.reason}")
        else:
            typer.echo(render.run_summary_line(result))

    failed = False
    # Runners and kernels forked from one server that imported papermill and ipykernel (and
    # --preload's modules) once, as for `research run`: each run still gets a fresh kernel.
    with handle_interrupts() as interrupts, forkserver.serving(preload or []):
        while True:  # queued sweeps first, then the runs; then wait for more of either
            outcomes = work_queued_sweeps(path, name, jobs, interrupts, render.info, notebook_root())
            for outcome in outcomes:
                typer.echo(f"sweep {outcome.sweep_id}: {outcome.status}, {outcome.completed}/{outcome.trials} trials")
            drained = drain(path, name, jobs, True, timeout, interrupts, on_start=started, on_done=done,
                            on_note=render.info)
            failed = failed or any(r.status != "succeeded" for r in drained.results) \
                or any(o.status == "failed" for o in outcomes)
            if until_empty or interrupts.is_set():
                break
            if not outcomes and not drained.results:
                interrupts.wait(1.0)
    if interrupts.is_set():
        raise typer.Exit(143 if interrupts.signal_name == "SIGTERM" else 130)
    if failed:
        raise typer.Exit(1)


@queue_app.command("cancel")
def queue_cancel(
    refs: Annotated[list[str] | None, typer.Argument(metavar="RUN|SWEEP", help="Run ids, or ids of sweeps stored with `sweep --queue`.", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every queued run and waiting sweep (and stop the runs being worked).")] = False,
    name: QueueOpt = None,
) -> None:
    """Remove runs or sweeps from the queue (a running run is stopped).

    Remove runs from the queue: they end interrupted, 'cancelled from the queue'; one being worked is stopped by its process.
    A `run --grid --queue`'s sweep id stands for its runs. A waiting `sweep --queue` ends stopped (`research sweep resume`
    can still run it); one a live `queue work` drives is refused. Nothing is written if any id is wrong.
    """
    from research import render
    from research.runs.queue import cancel_entries

    refs = list(refs or [])
    if bool(refs) == all_:
        raise ResearchError("usage: research queue cancel RUN|SWEEP... | research queue cancel --all")
    if name and not all_:
        raise ResearchError("--queue goes with --all")
    cancelled = cancel_entries(db_path(), refs, everything=all_, queue=name, sweeps=True)
    if not cancelled:
        render.info("The queue is empty: nothing to cancel.")
    for entry in cancelled:
        typer.echo(entry.line)
    if any(c.status == "cancelling" for c in cancelled):
        raise typer.Exit(1)
