"""Notebooks and runs: link, unlink, notebooks, run, rerun, compare, and the `research runs` commands."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from research.cli.app import ResearchGroup, app, new_typer
from research.cli.context import (
    IdArg,
    JsonOpt,
    changes,
    db_path,
    open_session,
    project_root,
    recover_runs,
)
from research.errors import ResearchError

# Notebooks and runs

def notebook_root() -> Path:
    """Where notebooks are linked from and run: the project found from the current directory
    (``runs.links.find_project``), else the database's folder."""
    from research.runs.links import find_project

    return find_project(db_path()) or project_root()


ParamOpt = Annotated[list[str] | None, typer.Option("--param", "-p", help="key=value, checked against the notebook's parameters (repeatable).")]
NoCheckOpt = Annotated[bool, typer.Option("--no-check", help="Skip the name and type checks and pass values as papermill does: -p types guessed (True, None, 5, 0.5, else text), unknown names injected.")]




@app.command()
def link(
    item_id: IdArg,
    notebook: Annotated[str, typer.Argument(help="Notebook path, relative to the project root.")],
    name: Annotated[str | None, typer.Option("--name", help="Name of the link (default: the notebook's stem).")] = None,
    param: ParamOpt = None,
    best: Annotated[str | None, typer.Option("--best", help="How to pick the best run, e.g. max:throughput.")] = None,
) -> None:
    """Link a notebook to an item.

    Link a notebook (with a cell tagged `parameters`) to an item, with default parameters.
    """
    from research.backlog.items import resolve_item
    from research.runs.links import link_notebook
    from research.runs.params import parse_assignments

    root = notebook_root()
    with changes() as (session, log):
        item = resolve_item(session, item_id)
        created = link_notebook(session, log, item, notebook, name, parse_assignments(param), best, root)
        typer.echo(f"{item.slug}\t{created.name}\t{created.notebook}")


@app.command()
def unlink(
    item_id: IdArg,
    name: Annotated[str | None, typer.Option("--name", help="Which linked notebook (needed when there are several).")] = None,
) -> None:
    """Remove a notebook link from an item (its runs are kept)."""
    from research.backlog.items import resolve_item
    from research.runs.links import unlink_notebook

    with changes() as (session, log):
        item = resolve_item(session, item_id)
        removed = unlink_notebook(session, log, item, name)
        typer.echo(f"{item.slug}\tunlinked {removed.name}", err=True)


@app.command()
def notebooks(json_: JsonOpt = False) -> None:
    """List the project's notebooks and their parameters.

    List the notebooks under notebooks/ with their parameters, types and defaults.
    """
    from research import render
    from research.runs.links import find_project, list_notebooks

    try:
        root = notebook_root()
    except ResearchError:  # no database: the project found from here will do
        root = find_project() or Path.cwd()
    entries = list_notebooks(root)
    if json_:
        render.print_json(entries)
        return
    if not entries:
        render.info(f"no notebooks under {root / 'notebooks'}")
        return
    for entry in entries:
        typer.echo(entry["notebook"])
        if entry["error"]:
            typer.echo(f"  ({entry['error']})")
        for p in entry["parameters"]:
            comment = f"  # {p['help']}" if p["help"] else ""
            typer.echo(f"  {p['name']}: {p['type'] or '?'} = {p['default']}{comment}")


@app.command()
def run(
    item_id: IdArg,
    notebook: Annotated[str | None, typer.Option("--notebook", "-n", help="Run only this linked notebook (by name).")] = None,
    param: ParamOpt = None,
    params_file: Annotated[list[Path] | None, typer.Option("--params-file", "-f", help="YAML or JSON file of parameters, as papermill's -f (repeatable).")] = None,
    params_yaml: Annotated[list[str] | None, typer.Option("--params-yaml", "-y", help="Parameters as YAML, e.g. -y 'lr: 0.1' (papermill's -y; repeatable).")] = None,
    param_raw: Annotated[list[str] | None, typer.Option("--param-raw", "-r", help="key=value, the value passed as text, never converted (papermill's -r NAME VALUE; repeatable).")] = None,
    no_check: NoCheckOpt = False,
    grid: Annotated[list[str] | None, typer.Option("--grid", "-g", help="key=v1,v2,... or key=0..9 (integers, both ends included): sweep the cartesian product (repeatable); more than 1,000 runs asks first.")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Runs at once, each in its own kernel.")] = 1,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.1, help="End a run as 'timeout' after this many seconds.")] = None,
    kernel: Annotated[str | None, typer.Option("--kernel", help="Jupyter kernel name (default: the notebook's, else python3).")] = None,
    preload: Annotated[list[str] | None, typer.Option("--preload", metavar="MODULE", help="Import MODULE once, in the process every run's runner and kernel are forked from, so kernels start with it imported (e.g. torch; repeatable). Not for a module that needs a thread it starts at import.")] = None,
    log_output: Annotated[bool, typer.Option("--log-output", help="Stream the notebook's output to the terminal.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and show the runs without running them (a table; --json for every resolved parameter).")] = False,
    executor: Annotated[str | None, typer.Option("--executor", "-x", help="local, dask or slurm (default: `executor` in [tool.research], else local).")] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="Dask scheduler, e.g. tcp://HOST:8786 (default: a local cluster of -j workers).")] = None,
    executor_option: Annotated[list[str] | None, typer.Option("--executor-option", "-E", help="KEY=VALUE for the executor, e.g. partition=gpu, gpus_per_task=1, time_limit=120, array_parallelism=8, cluster=local (repeatable).")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="slurm: submit and return; `research runs` collects the results.")] = False,
    queue: Annotated[bool, typer.Option("--queue", help="Store the runs and return; `research queue work` runs them.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help=f"Do not ask before more than {MANY_RUNS:,} runs.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Run an item's linked notebooks.

    Run an item's linked notebook(s) with checked parameters; --grid sweeps; --executor dask|slurm runs them elsewhere.
    Parameters as papermill takes them: -f FILE, -y YAML, -p key=value, -r key=value (text), later ones winning;
    only those given are injected (the notebook keeps its own defaults). --no-check passes them as papermill would.
    """
    from research.executors import load_settings
    from research.runs import forkserver

    settings = load_settings(notebook_root(), executor, scheduler, executor_option)
    if settings.executor != "local" and log_output:
        raise ResearchError("--log-output needs the local executor; remote runs keep their output in the notebook")
    if json_ and not dry_run:
        raise ResearchError("--json goes with --dry-run (a run's results: `research runs --json`)")
    if no_wait and settings.executor != "slurm":
        raise ResearchError("--no-wait is for the slurm executor (dask runs end with their client)")
    if preload and not runs_here(settings):
        raise ResearchError("--preload is for runs on this machine: the local executor, or dask without a scheduler")
    if queue:
        _check_queue_options(executor, jobs, log_output, no_wait)
    # The fork server starts now, importing papermill and ipykernel while we check and plan.
    serving = forkserver.serving(preload or [], wanted=not (dry_run or queue) and runs_here(settings))
    request = RunRequest(item_id, notebook, param or [], params_file or [], grid or [], jobs, timeout, kernel, log_output,
                         wait=not no_wait, settings=settings, params_yaml=params_yaml or [],
                         param_raw=param_raw or [], check=not no_check, queue="default" if queue else None)
    with serving:
        _run(request, dry_run, yes=yes, json_=json_)


def runs_here(settings) -> bool:
    """Whether the runs execute on this machine, from this process's fork server."""
    return settings.executor == "local" or (settings.executor == "dask" and not settings.get("scheduler"))


@dataclass
class RunRequest:
    """What `research run` was asked: the runs to plan and how to execute them."""

    item_id: str
    notebook: str | None = None
    param: list[str] = field(default_factory=list)
    params_file: list[Path] = field(default_factory=list)
    grid: list[str] = field(default_factory=list)
    jobs: int = 1
    timeout: float | None = None
    kernel: str | None = None
    log_output: bool = False
    wait: bool = True
    runner: Any = None  # a runner started ahead (runs.child.start_runner) for the first run
    settings: Any = None  # executors.settings.ExecutorSettings
    params_yaml: list[str] = field(default_factory=list)
    param_raw: list[str] = field(default_factory=list)
    check: bool = True
    queue: str | None = None  # store the runs in this queue instead of running them


MANY_RUNS = 1000  # more runs than this at once: ask first (--yes does not)


def _check_queue_options(executor: str | None, jobs: int, log_output: bool, no_wait: bool) -> None:
    """`run --queue` stores runs for `research queue work`, which runs them here, -j at a time."""
    if executor not in (None, "local"):
        raise ResearchError("--queue stores runs for `research queue work`, which runs them on its machine; drop --executor")
    if jobs > 1 or log_output or no_wait:
        flag = "-j" if jobs > 1 else "--log-output" if log_output else "--no-wait"
        raise ResearchError(f"{flag} does not go with --queue (`research queue work -j N` sets how many at once)")


def _confirm_many(dry_run: bool, yes: bool):
    """What plan_runs calls with the number of runs: asks (or refuses) past MANY_RUNS."""
    from research.cli.ask import confirm

    def check(count: int) -> None:
        if yes or count <= MANY_RUNS:
            return
        what = f"show {count:,} planned runs" if dry_run else f"queue {count:,} runs"
        confirm(f"{what[0].upper()}{what[1:]}?", f"refusing to {what} (over {MANY_RUNS:,}) without confirmation; pass --yes")

    return check


def _run(request: RunRequest, dry_run: bool, yes: bool = False, json_: bool = False) -> None:
    from research import render
    from research.backlog.items import resolve_item
    from research.runs.params import (
        injected_parameters,
        load_params_file,
        parse_assignments,
        parse_grid,
        parse_yaml_params,
    )
    from research.runs.plan import create_runs, plan_runs

    recover_runs()
    root = notebook_root()
    item_id, notebook, jobs, timeout, settings = (request.item_id, request.notebook, request.jobs, request.timeout,
                                                  request.settings)
    given = parse_assignments(request.param)
    raw = parse_assignments(request.param_raw, "-r")
    # papermill's order: files, then YAML strings, then -p, then -r; each later one wins.
    file_params = {}
    for path in request.params_file:
        file_params.update(load_params_file(path))
    file_params.update(parse_yaml_params(request.params_yaml))
    points = parse_grid(request.grid)
    confirm = _confirm_many(dry_run, yes)
    if dry_run:
        with open_session() as session:
            item = resolve_item(session, item_id)
            plans = plan_runs(session, item, root, notebook, given, file_params, points, raw, request.check, confirm)
        # "inject": what the parameters cell injected by papermill will assign; "params": what the run records.
        planned = [{"item": p.item.slug, "notebook": p.notebook, "params": p.params,
                    "inject": injected_parameters(p.given, p.params)} for p in plans]
        if json_:
            render.print_json(planned)
        else:
            render.write_plan_table(planned)
        return
    remote = started = None
    if settings is not None and settings.executor != "local" and not request.queue:
        from research.executors import make_executor, start_in_background

        remote = make_executor(settings, db_path(), jobs, timeout)
        started = start_in_background(remote)  # importing and reaching the engine overlaps planning
    try:
        with open_session(write=True) as session:
            item = resolve_item(session, item_id)
            plans = plan_runs(session, item, root, notebook, given, file_params, points, raw, request.check, confirm)
            if started:
                started()  # the engine is reachable before anything is written
            run_ids, sweep_id = create_runs(session, plans, root, request.kernel,
                                            executor=remote.name if remote else "local",
                                            queue=request.queue, timeout_s=timeout if request.queue else None)
    except BaseException:
        if remote is not None:
            started(raise_errors=False)
            remote.close()
        raise
    if request.queue:
        first = f"runs {run_ids[0]}-{run_ids[-1]}" if len(run_ids) > 1 else f"run {run_ids[0]}"
        typer.echo(f"queued {len(run_ids)} run(s) ({first}{f', sweep {sweep_id}' if sweep_id else ''}); "
                   "`research queue work` runs them, `research queue` lists them", err=True)
        return
    if sweep_id:
        where = f"on {remote.name}" if remote else f"{min(jobs, len(run_ids))} at a time"
        typer.echo(f"sweep {sweep_id}: {len(run_ids)} runs, {where}", err=True)
    _execute(request, run_ids, remote)


def _execute(request: RunRequest, run_ids: list[int], executor=None) -> None:
    """Submit the runs to ``executor`` (default: the local pool) and follow them to their end."""
    from research import render
    from research.executors.driver import follow, submit
    from research.executors.local import LocalExecutor
    from research.runs.child import handle_interrupts

    path = db_path()
    if executor is None:
        progress = render.RunProgress(run_ids, enabled=not request.log_output)
        executor = LocalExecutor(path, request.jobs, request.timeout, request.log_output, progress.update, request.runner)
    else:
        progress = render.SweepProgress(run_ids, f"{executor.name}")
    with executor, handle_interrupts() as interrupts, progress:
        external = submit(path, executor, run_ids)
        if not request.wait:
            ids = ", ".join(e for e in external.values() if e)
            typer.echo(f"submitted {len(run_ids)} run(s) to {executor.name} ({ids}); "
                       "`research runs sync` collects their results", err=True)
            return
        results = follow(path, executor, run_ids, interrupts,
                         on_running=getattr(progress, "start", None), on_done=progress.finish)
        interrupted = interrupts.is_set()
        stopped_by = interrupts.signal_name
    for result in results:
        typer.echo(render.run_summary_line(result))
    if interrupted:
        # The shell's convention: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).
        raise typer.Exit(143 if stopped_by == "SIGTERM" else 130)
    if any(r.status != "succeeded" for r in results):
        raise typer.Exit(1)


@app.command()
def rerun(
    run_id: Annotated[str, typer.Argument(help="The run to repeat.")],
    param: ParamOpt = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.1, help="End the run as 'timeout' after this many seconds.")] = None,
    no_check: NoCheckOpt = False,
) -> None:
    """Run a past run again with the same parameters.

    Run a past run's notebook again with the same parameters (some overridden with -p).
    """
    from research.runs.params import parse_assignments
    from research.runs.plan import create_runs, plan_rerun

    recover_runs()
    root = notebook_root()
    with open_session(write=True) as session:
        plan, kernel = plan_rerun(session, run_id, parse_assignments(param), root, check=not no_check)
        run_ids, _ = create_runs(session, [plan], root, kernel)
    _execute(RunRequest(item_id="", timeout=timeout), run_ids)


class RunsGroup(ResearchGroup):
    """`research runs ITEM` still lists an item's runs: a name that is not a subcommand is
    read as `research runs list ITEM`."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return "list", self.commands["list"], args
        return super().resolve_command(ctx, args)


runs_app = new_typer("List, show, delete, cancel and collect runs.", cls=RunsGroup, no_args_is_help=False)
app.add_typer(runs_app, name="runs")

StatusFilter = Annotated[str | None, typer.Option("--status", "-s", metavar="STATUS", help="Only runs with this status.")]
SweepFilter = Annotated[str | None, typer.Option("--sweep", metavar="SWEEP", help="Only runs of this sweep.")]
WhereFilter = Annotated[str | None, typer.Option("--where", "-w", metavar="EXPR", help="Filter on params and metrics, e.g. 'metrics.loss < 0.1 and params.lr = 0.01'. Numbers compare as numbers, text as text (quote it: params.name = '007'); a value of another type, a missing field or null matches no comparison, not even != (use = null for those).")]
RunArg = Annotated[str, typer.Argument(metavar="RUN", help="Run id.", show_default=False)]
RunsArg = Annotated[list[str] | None, typer.Argument(metavar="RUN", help="Run ids.", show_default=False)]


@runs_app.callback(invoke_without_command=True)
def runs(
    ctx: typer.Context,
    status: StatusFilter = None,
    sweep: SweepFilter = None,
    where: WhereFilter = None,
    sync: Annotated[bool, typer.Option("--sync", help="Collect finished Dask/Slurm runs and say what was collected (every listing collects them).")] = False,
    json_: JsonOpt = False,
) -> None:
    """List runs (`research runs list ITEM` for an item's); `show`, `watch`, `rm`, `cancel` and `sync` below."""
    ctx.obj = {"status": status, "sweep": sweep, "where": where, "json": json_}
    if ctx.invoked_subcommand is None:
        _list_runs(None, status, sweep, where, json_, verbose_sync=sync)


@runs_app.command("list")
def runs_list(
    ctx: typer.Context,
    item: Annotated[str | None, typer.Argument(metavar="ITEM", help="Only this item's runs (id or slug).", show_default=False)] = None,
    status: StatusFilter = None,
    sweep: SweepFilter = None,
    where: WhereFilter = None,
    json_: JsonOpt = False,
) -> None:
    """List runs, all or one item's.

    List runs, all or one item's, filtered by status, sweep or params and metrics.
    """
    given = ctx.obj or {}
    _list_runs(item, status or given.get("status"), sweep or given.get("sweep"), where or given.get("where"),
               json_ or bool(given.get("json")))


def _list_runs(item_ref: str | None, status, sweep, where, json_: bool, verbose_sync: bool = False) -> None:
    from research import render
    from research.backlog.items import resolve_item
    from research.runs.query import query_runs

    recover_runs()
    _sync_remote(verbose=verbose_sync)
    notes: list[str] = []
    with open_session() as session:
        item = resolve_item(session, item_ref) if item_ref else None
        rows = query_runs(session, item, status, sweep, where, notes)
    for note in notes:
        render.info(note)
    if json_:
        render.print_json(rows)
    elif not rows:
        render.info("No runs.")
    else:
        render.write_runs_table(rows)


@runs_app.command("show")
def runs_show(run_ref: RunArg, json_: JsonOpt = False) -> None:
    """One run in full: params, metrics, error, environment, files."""
    from research import render
    from research.runs.query import resolve_run, run_detail

    recover_runs()
    _sync_remote()
    with open_session() as session:
        detail = run_detail(session, resolve_run(session, run_ref), project_root())
    if json_:
        render.print_json(detail)
    else:
        render.show_run(detail)


@runs_app.command("rm")
def runs_rm(
    refs: RunsArg = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete runs (`research undo` restores them).

    Delete runs (their files stay under runs/; `research undo` restores the rows).
    """
    from research.runs.query import delete_run, resolve_run

    if not refs:
        raise ResearchError("usage: research runs rm RUN...")
    with changes() as (session, log):
        targets = [resolve_run(session, ref) for ref in refs]
        if not yes:
            from research.cli.ask import confirm

            confirm(f"Delete run(s) {', '.join(str(r.id) for r in targets)}?",
                    "refusing to delete runs without confirmation; pass --yes")
        for target in targets:
            delete_run(session, log, target)
    typer.echo(f"deleted {len(targets)} run(s); their files stay under runs/ (`research undo` restores the rows)", err=True)


@runs_app.command("cancel")
def runs_cancel(refs: RunsArg = None, sweep: SweepFilter = None) -> None:
    """Stop runs wherever they execute.

    Stop runs wherever they execute (local, Dask or Slurm), by id or a whole sweep.
    """
    from research import render
    from research.executors.control import cancel_runs
    from research.runs.query import query_runs, resolve_run

    recover_runs()
    refs = list(refs or [])
    if bool(refs) == bool(sweep):
        raise ResearchError("usage: research runs cancel RUN... | research runs cancel --sweep ID")
    with open_session() as session:
        if sweep:
            ids = [r["id"] for r in query_runs(session, sweep=sweep)]
            if not ids:
                raise ResearchError(f"no runs in sweep {sweep!r}")
        else:
            ids = [resolve_run(session, ref).id for ref in refs]
    results = cancel_runs(db_path(), ids)
    if not results:
        render.info("nothing to cancel: those runs have already ended")
    for result in results:
        typer.echo(render.run_summary_line(result))


@runs_app.command("sync")
def runs_sync() -> None:
    """Collect finished Dask and Slurm runs.

    Collect what Dask and Slurm runs finished while nobody waited, and say what was collected.
    """
    recover_runs()
    _sync_remote(verbose=True)


def _sync_remote(verbose: bool = False) -> None:
    from research.executors.control import sync_runs

    report = sync_runs(db_path())
    if verbose or report.collected:
        typer.echo(report.summary(), err=True)


@app.command()
def compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more runs.")],
    only_changed: Annotated[bool, typer.Option("--only-changed", help="Hide rows where every run agrees.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Params and metrics of several runs side by side."""
    from research import render
    from research.runs.query import compare_runs, resolve_run

    if len(run_ids) < 2:
        raise ResearchError("compare needs at least two runs")
    with open_session() as session:
        table = compare_runs(session, [resolve_run(session, r) for r in run_ids], only_changed)
    if json_:
        render.print_json(table)
    else:
        render.write_compare_table(table)


