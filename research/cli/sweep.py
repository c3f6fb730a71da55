"""`research sweep`: search a notebook's parameters with Optuna, resume, show and list sweeps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from research.cli.app import ResearchGroup, app, new_typer
from research.cli.context import IdArg, JsonOpt, changes, db_path, open_session, recover_runs
from research.cli.runs import NoCheckOpt, ParamOpt, notebook_root, runs_here
from research.errors import ResearchError


class SweepGroup(ResearchGroup):
    """`research sweep ITEM ...` starts a sweep: anything that is not a subcommand is read as
    `research sweep start ITEM ...`."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            return "start", self.commands["start"], args
        return super().resolve_command(ctx, args)


sweep_app = new_typer("Search parameters with Optuna: start, resume, show, list.", cls=SweepGroup)
app.add_typer(sweep_app, name="sweep")

SweepArg = Annotated[str, typer.Argument(metavar="SWEEP", help="Sweep id.", show_default=False)]
PreloadOpt = Annotated[list[str] | None, typer.Option("--preload", metavar="MODULE", help="Import MODULE once, in the process every trial's runner and kernel are forked from (e.g. torch; repeatable).")]


@sweep_app.command("start")
def sweep_start(
    item_id: IdArg,
    space: Annotated[list[str] | None, typer.Option("--space", "-s", help="NAME=uniform(LOW,HIGH) | loguniform(LOW,HIGH) | int(LOW,HIGH[,STEP]) | logint(LOW,HIGH) | choice(A,B,...) (repeatable).")] = None,
    trials: Annotated[int | None, typer.Option("--trials", "-t", min=1, help="Trials to run (grid: default every point).")] = None,
    maximize: Annotated[str | None, typer.Option("--maximize", metavar="METRIC", help="The recorded metric to maximize.")] = None,
    minimize: Annotated[str | None, typer.Option("--minimize", metavar="METRIC", help="The recorded metric to minimize.")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="tpe, random or grid.")] = "tpe",
    seed: Annotated[int | None, typer.Option("--seed", help="The sampler's seed (the same seed asks the same first trials).")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Trials at once.")] = 1,
    prune: Annotated[str, typer.Option("--prune", help="none, or median: stop a trial whose stepped objective is below the median of earlier trials at that step.")] = "none",
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop the sweep at the first failed trial.")] = False,
    notebook: Annotated[str | None, typer.Option("--notebook", "-n", help="Which linked notebook (needed when there are several).")] = None,
    param: ParamOpt = None,
    params_file: Annotated[list[Path] | None, typer.Option("--params-file", "-f", help="YAML or JSON file of fixed parameters (repeatable).")] = None,
    params_yaml: Annotated[list[str] | None, typer.Option("--params-yaml", "-y", help="Fixed parameters as YAML (repeatable).")] = None,
    param_raw: Annotated[list[str] | None, typer.Option("--param-raw", "-r", help="key=value passed as text (repeatable).")] = None,
    no_check: NoCheckOpt = False,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.1, help="End a trial as 'timeout' after this many seconds.")] = None,
    kernel: Annotated[str | None, typer.Option("--kernel", help="Jupyter kernel name.")] = None,
    executor: Annotated[str | None, typer.Option("--executor", "-x", help="local, dask or slurm.")] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="Dask scheduler address.")] = None,
    executor_option: Annotated[list[str] | None, typer.Option("--executor-option", "-E", help="KEY=VALUE for the executor (repeatable).")] = None,
    preload: PreloadOpt = None,
    queue: Annotated[bool, typer.Option("--queue", help="Store the sweep for `research queue work` instead of running it now.")] = False,
) -> None:
    """Search an item's notebook parameters with Optuna.

    Each trial is a run of the linked notebook with values drawn from --space (checked against
    the notebook's typed parameters first) and the fixed ones from -p/-f/-y/-r; the objective is
    the run's final value of --maximize or --minimize METRIC. Ctrl-C stops it; `research sweep
    resume SWEEP` continues it.
    """
    from research.executors import load_settings
    from research.runs import forkserver
    from research.runs.params import load_params_file, parse_assignments, parse_yaml_params
    from research.sweeps.drive import SweepSpec, create_sweep
    from research.sweeps.space import parse_space

    if bool(maximize) == bool(minimize):
        raise ResearchError("say what to optimise: --maximize METRIC or --minimize METRIC (one of them)")
    root = notebook_root()
    settings = load_settings(root, executor, scheduler, executor_option)
    if queue and (settings.executor != "local" or preload):
        raise ResearchError("--queue stores the sweep for `research queue work`, which runs it on its own machine; "
                            "drop -x/--preload")
    if preload and not runs_here(settings):
        raise ResearchError("--preload is for trials on this machine: the local executor, or dask without a scheduler")
    typed = {}
    for path in params_file or []:
        typed.update(load_params_file(path))
    typed.update(parse_yaml_params(params_yaml))
    spec = SweepSpec(
        item_ref=item_id, space=parse_space(space), objective=(maximize or minimize).strip(),
        direction="maximize" if maximize else "minimize", sampler=sampler.lower(), trials=trials, seed=seed,
        jobs=jobs, notebook=notebook, given=parse_assignments(param), typed=typed,
        raw=parse_assignments(param_raw, "-r"), prune=prune.lower(), fail_fast=fail_fast, timeout=timeout,
        kernel=kernel, executor=settings.executor, check=not no_check, queue="default" if queue else None,
    )
    if spec.prune not in ("none", "median"):
        raise ResearchError(f"unknown pruner {prune!r}; use none or median")
    recover_runs()
    if queue:
        with changes() as (session, log):
            sweep = create_sweep(session, log, spec, root)
            sweep_id, target = sweep.id, sweep.trials
        typer.echo(f"sweep {sweep_id} queued: {target} trials; `research queue work` runs it")
        return
    with forkserver.serving(preload or [], wanted=runs_here(settings)):  # its imports overlap checking and planning
        with changes() as (session, log):
            sweep = create_sweep(session, log, spec, root)
            sweep_id, target = sweep.id, sweep.trials
        where = f"on {settings.executor}" if settings.executor != "local" else f"{jobs} at a time"
        typer.echo(f"sweep {sweep_id}: {target} trials of {spec.sampler}, {spec.direction} {spec.objective}, {where}",
                   err=True)
        _drive(sweep_id, settings, jobs, resuming=False)


@sweep_app.command("resume")
def sweep_resume(
    sweep_id: SweepArg,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", min=1, help="Trials at once (default: as started).")] = None,
    executor_option: Annotated[list[str] | None, typer.Option("--executor-option", "-E", help="KEY=VALUE for the executor (repeatable).")] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="Dask scheduler address.")] = None,
    preload: PreloadOpt = None,
) -> None:
    """Continue a sweep stopped by Ctrl-C, a kill or a reboot, to its number of trials.

    Trials that ended are kept; trials that never ended run again with the same values.
    """
    from research.executors import load_settings
    from research.runs import forkserver
    from research.store.models import Sweep

    recover_runs()
    with open_session() as session:
        sweep = session.get(Sweep, sweep_id)
        if sweep is None:
            raise ResearchError(f"no sweep {sweep_id!r}; `research sweep list` shows them")
        executor, stored_jobs = sweep.executor, sweep.jobs
    settings = load_settings(notebook_root(), executor, scheduler, executor_option)
    with forkserver.serving(preload or [], wanted=runs_here(settings)):
        _drive(sweep_id, settings, jobs or stored_jobs, resuming=True)


def _drive(sweep_id: str, settings, jobs: int, resuming: bool) -> None:
    from research.executors import make_executor
    from research.runs.child import handle_interrupts
    from research.sweeps.drive import claim_sweep, drive

    path = db_path()
    sweep = claim_sweep(path, sweep_id, resuming)
    executor = make_executor(settings, path, jobs, sweep.options.get("timeout"))
    executor.start()

    def echo(line: str) -> None:
        typer.echo(line, err=True)

    with executor, handle_interrupts() as interrupts:
        outcome = drive(path, sweep_id, executor, interrupts, echo, notebook_root(), jobs=jobs)
        stopped_by = interrupts.signal_name if interrupts.is_set() else None
    best = outcome.best
    if best is not None:
        from research.render import short_value

        values = ", ".join(f"{k}={short_value(v)}" for k, v in best.params.items())
        typer.echo(f"sweep {sweep_id}: {outcome.status}, {outcome.completed}/{outcome.trials} trials; "
                   f"best trial {best.number} (run {best.run_id}): {best.value:.6g} with {values}")
    else:
        typer.echo(f"sweep {sweep_id}: {outcome.status}, {outcome.completed}/{outcome.trials} trials; no trial succeeded")
    if outcome.status == "stopped":
        typer.echo(f"`research sweep resume {sweep_id}` continues it", err=True)
        raise typer.Exit(143 if stopped_by == "SIGTERM" else 130)
    if outcome.status == "failed":
        typer.echo(f"Error: {outcome.reason}", err=True)
        raise typer.Exit(1)
    if best is None:
        raise typer.Exit(1)


@sweep_app.command("show")
def sweep_show(
    sweep_id: SweepArg,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the charts: a folder of PNGs, or an .html page.")] = None,
    json_: JsonOpt = False,
) -> None:
    """A sweep's trials sorted by the objective, its best trial, and charts of the objective."""
    from research import render
    from research.sweeps.show import sweep_detail, write_sweep_charts

    recover_runs()
    with open_session() as session:
        detail = sweep_detail(session, sweep_id)
    if output is not None:
        written = write_sweep_charts(detail, output)
        for path in written:
            typer.echo(f"wrote {path}", err=True)
    if json_:
        render.print_json(detail)
    else:
        from research.sweeps.show import print_sweep

        print_sweep(detail)


@sweep_app.command("list")
def sweep_list(json_: JsonOpt = False) -> None:
    """Every search sweep: its item, objective, trials done and best value."""
    from research import render
    from research.sweeps.show import list_sweeps

    recover_runs()
    with open_session() as session:
        rows = list_sweeps(session)
    if json_:
        render.print_json(rows)
    elif not rows:
        render.info("No sweeps.")
    else:
        render.plain_table(
            ["sweep", "item", "status", "trials", "objective", "best"],
            [[r["id"], r["item"], r["status"], f"{r['ended']}/{r['trials']}", f"{r['direction'][:3]} {r['objective']}",
              "" if r["best"] is None else f"{r['best']:.6g}"] for r in rows],
        )
