"""Creating, running and resuming a search sweep: trials asked of the study, run as ordinary runs.

A sweep is a row (``store.models.Sweep``) and its trials are runs (``run.sweep_id``, ``run.trial``).
``create_sweep`` checks everything against the notebook and writes the row; ``drive`` keeps up to
``jobs`` trials in flight on any executor (each is planned, written and submitted when asked
for), tells the study how each ended, prunes from intermediate values, and stops at ``trials``.

Nothing is kept only in memory: a trial's values are on its run the moment it is asked, so after
Ctrl-C, a SIGKILL or a reboot ``resume`` rebuilds the study from the rows (``load_trials``) and
runs again only the trials that never ended (same number, same values), never one that did.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from research import clock
from research.errors import ResearchError
from research.record import LIVE_FILE, METRICS_FILE, PRUNE_FILE
from research.store.db import write_transaction
from research.store.models import Item, Link, Run, Sweep
from research.sweeps.space import Dimension, check_space, grid_size, space_from_json, space_to_json
from research.sweeps.study import SAMPLERS, Study, TrialRecord, finite_number, objective_value

PRUNE_CHECK_S = 0.2  # how often running trials' intermediate values are read
SYNC_S = 5.0  # how often remote trials started before a resume are collected


@dataclass
class SweepSpec:
    """What `research sweep ITEM` was asked."""

    item_ref: str
    space: dict[str, Dimension]
    objective: str
    direction: str  # maximize | minimize
    sampler: str = "tpe"
    trials: int | None = None
    seed: int | None = None
    jobs: int = 1
    notebook: str | None = None  # the link's name, when the item has several
    given: dict[str, str] = field(default_factory=dict)  # -p text
    typed: dict[str, Any] = field(default_factory=dict)  # -f / -y values
    raw: dict[str, str] = field(default_factory=dict)  # -r text
    prune: str = "none"
    fail_fast: bool = False
    timeout: float | None = None
    kernel: str | None = None
    executor: str = "local"
    check: bool = True
    queue: str | None = None  # stored for `research queue work` instead of run now


def _link_for(session: Session, item: Item, name: str | None) -> Link:
    from research.runs.links import item_links

    links = item_links(session, item)
    chosen = [lk for lk in links if name is None or lk.name == name]
    if not links:
        raise ResearchError(f"{item.slug} has no linked notebook; link one with `research link {item.slug} NOTEBOOK`")
    if not chosen:
        raise ResearchError(f"{item.slug} has no notebook named {name!r}; linked: {', '.join(lk.name for lk in links)}")
    if len(chosen) > 1:
        raise ResearchError(f"{item.slug} has {len(chosen)} linked notebooks; pick one with -n ({', '.join(lk.name for lk in chosen)})")
    return chosen[0]


def create_sweep(session: Session, log, spec: SweepSpec, project_root: Path) -> Sweep:
    """Check the space, the values and the sampler against the notebook, then write the sweep row.

    The item's link gets the sweep's objective as its `best` rule when it has none, so the
    item's best run follows the sweep's best (an event in the log, undone with the rest).
    """
    from research.backlog.items import resolve_item
    from research.runs.metrics import parse_best
    from research.runs.params import inspect_notebook

    if spec.sampler not in SAMPLERS:
        raise ResearchError(f"unknown sampler {spec.sampler!r}; use one of: {', '.join(SAMPLERS)}")
    if not spec.space:
        raise ResearchError("a sweep needs at least one --space NAME=KIND(ARGS)")
    item = resolve_item(session, spec.item_ref)
    link = _link_for(session, item, spec.notebook)
    path = project_root / link.notebook
    if not path.is_file():
        raise ResearchError(f"linked notebook {link.notebook} no longer exists")
    specs = inspect_notebook(path)
    fixed = set(spec.given) | set(spec.typed) | set(spec.raw)
    space = check_space(spec.space, specs, link.notebook, fixed) if spec.check else spec.space
    trials = spec.trials
    if spec.sampler == "grid":
        size = grid_size(space)
        trials = size if trials is None else min(trials, size)
    elif trials is None:
        raise ResearchError(f"--sampler {spec.sampler} needs --trials N")
    sweep = Sweep(
        id=uuid.uuid4().hex[:8], item_id=item.id, link_id=link.id, notebook=link.notebook,
        space=space_to_json(space), fixed={"given": spec.given, "typed": spec.typed, "raw": spec.raw},
        objective=spec.objective, direction=spec.direction, sampler=spec.sampler, seed=spec.seed,
        trials=trials, jobs=spec.jobs, executor=spec.executor,
        options={"prune": spec.prune, "fail_fast": spec.fail_fast, "timeout": spec.timeout,
                 "kernel": spec.kernel, "check": spec.check, "queue": spec.queue},
        status="queued" if spec.queue else "running", created_at=clock.now_iso(), updated_at=clock.now_iso(),
    )
    # Every value the first trial could take is checked now, before any row is written.
    for point in _corner_points(space):
        _plan_trial(session, sweep, item, link, point, project_root)
    rule = f"{'max' if spec.direction == 'maximize' else 'min'}:{spec.objective}"
    parse_best(rule)
    if link.best is None:
        log.updated(link, {"best": rule}, action="link")
    session.add(sweep)
    return sweep


def _corner_points(space: dict[str, Dimension]) -> list[dict[str, Any]]:
    """Points that together use each dimension's ends and every choice, for checking."""
    values = {name: (list(dim.choices) if dim.kind == "choice" else
                     [int(dim.low), int(dim.high)] if dim.is_int else [dim.low, dim.high])
              for name, dim in space.items()}
    longest = max(len(v) for v in values.values())
    return [{name: v[min(i, len(v) - 1)] for name, v in values.items()} for i in range(longest)]


def _plan_trial(session: Session, sweep: Sweep, item: Item, link: Link, point: dict[str, Any], project_root: Path):
    from research.runs.plan import plan_runs

    fixed = sweep.fixed
    plans = plan_runs(session, item, project_root, link.name, fixed.get("given"), {**fixed.get("typed", {}), **point},
                      None, fixed.get("raw"), sweep.options.get("check", True))
    return plans[0]


# --------------------------------------------------------------------------- trials from rows


def load_trials(session: Session, sweep: Sweep) -> list[TrialRecord]:
    """Each trial's state from its runs: complete (with its objective), failed, pruned, still
    open, or retry (every run of it was interrupted, so it never ended: it runs again)."""
    from research.runs.query import run_metrics

    runs = list(session.exec(select(Run).where(Run.sweep_id == sweep.id, Run.trial.is_not(None)).order_by(Run.id)))
    metrics = run_metrics(session, [r.id for r in runs]) if runs else {}
    steps = _stepped_values(session, [r.id for r in runs], sweep.objective)
    by_trial: dict[int, list[Run]] = {}
    for run in runs:
        by_trial.setdefault(run.trial, []).append(run)
    records = []
    for number, group in sorted(by_trial.items()):
        values = {name: group[-1].params.get(name) for name in sweep.space}
        final = next((r for r in reversed(group) if r.status not in ("interrupted", "queued", "running")), None)
        open_run = next((r for r in group if r.status in ("queued", "running")), None)
        if final is not None:
            value = objective_value(metrics.get(final.id, {}), sweep.objective) if final.status == "succeeded" else None
            state = {"succeeded": "complete" if value is not None else "failed", "pruned": "pruned"}.get(final.status, "failed")
            records.append(TrialRecord(number, values, state, value, steps.get(final.id, {}), final.id))
        elif open_run is not None:
            records.append(TrialRecord(number, values, "open", run_id=open_run.id))
        else:
            records.append(TrialRecord(number, values, "retry", run_id=group[-1].id))
    return records


def _stepped_values(session: Session, run_ids: list[int], name: str) -> dict[int, dict[int, float]]:
    from research.store.models import Metric

    out: dict[int, dict[int, float]] = {}
    if not run_ids:
        return out
    rows = session.exec(select(Metric).where(Metric.run_id.in_(run_ids), Metric.name == name, Metric.step.is_not(None),
                                             Metric.value.is_not(None)))
    for row in rows:
        out.setdefault(row.run_id, {})[row.step] = row.value
    return out


# --------------------------------------------------------------------------- driving


@dataclass
class SweepOutcome:
    sweep_id: str
    status: str  # finished | stopped | failed
    reason: str | None
    completed: int
    trials: int
    best: TrialRecord | None


class _Trials:
    """The sweep's trials while it runs: what ended, what is in flight, what to run again."""

    def __init__(self, records: list[TrialRecord]) -> None:
        self.ended = [r for r in records if r.state in ("complete", "failed", "pruned")]
        self.retry = [r for r in records if r.state == "retry"]
        self.next_number = max((r.number for r in records), default=-1) + 1
        self.in_flight: dict[int, TrialRecord] = {}  # run id -> trial
        self.offsets: dict[int, int] = {}  # run id -> bytes of metrics.jsonl already read
        self.pruned: dict[int, int] = {}  # run id -> step it was pruned at

    def best(self, direction: str) -> TrialRecord | None:
        done = [r for r in self.ended if r.state == "complete"]
        if not done:
            return None
        return (max if direction == "maximize" else min)(done, key=lambda r: (r.value, -r.number))


def claim_sweep(db_path: Path, sweep_id: str, resuming: bool) -> Sweep:
    """Mark the sweep as driven by this process; refuses one finished or driven by another live process."""
    from research.runs.recovery import pid_alive

    def claim(session: Session) -> Sweep:
        sweep = session.get(Sweep, sweep_id)
        if sweep is None:
            known = [s.id for s in session.exec(select(Sweep).order_by(Sweep.created_at.desc()).limit(5))]
            raise ResearchError(f"no sweep {sweep_id!r}" + (f"; recent: {', '.join(known)}" if known else ""))
        if resuming and sweep.status == "finished":
            raise ResearchError(f"sweep {sweep_id} is finished ({sweep.trials} trials); nothing to resume")
        if sweep.pid and sweep.pid != os.getpid() and sweep.host == socket.gethostname() and pid_alive(sweep.pid) \
                and sweep.status == "running":
            raise ResearchError(f"sweep {sweep_id} is being run by process {sweep.pid}")
        sweep.status, sweep.reason, sweep.ended_at = "running", None, None
        sweep.pid, sweep.host, sweep.updated_at = os.getpid(), socket.gethostname(), clock.now_iso()
        session.add(sweep)
        return sweep.model_copy()

    return write_transaction(db_path, claim)


# --------------------------------------------------------------------------- queued sweeps


def claim_queued_sweep(db_path: Path, queue: str) -> str | None:
    """Take the oldest sweep waiting in ``queue`` (`research sweep --queue`), or one whose
    `queue work` process died while driving it; None when there is none. One write
    transaction, so two `queue work` processes never take the same sweep."""
    from research.runs.recovery import pid_alive

    def claim(session: Session) -> str | None:
        for sweep in session.exec(select(Sweep).where(Sweep.status.in_(("queued", "running"))).order_by(Sweep.created_at)):
            if sweep.options.get("queue") != queue:
                continue
            if sweep.status == "running" and (sweep.host != socket.gethostname() or not sweep.pid or pid_alive(sweep.pid)):
                continue  # driven by a live process (or one elsewhere, which we cannot tell)
            sweep.status, sweep.pid, sweep.host = "running", os.getpid(), socket.gethostname()
            sweep.updated_at = clock.now_iso()
            session.add(sweep)
            return sweep.id
        return None

    return write_transaction(db_path, claim)


def cancel_sweeps(session: Session, refs: list[str], everything: bool = False,
                  queue: str | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """In the caller's write transaction (``runs.queue.cancel_entries``, so a bad ref among
    them writes nothing): cancel the sweeps stored with `sweep --queue` that ``refs`` name
    (every waiting one, ``everything``). They end stopped, 'cancelled from the queue'
    (`sweep resume` can still run them). Returns (id, a line) per sweep and the refs that name
    no sweep row (run ids, or the sweep id of a `run --grid`).

    A sweep's trials are not queue entries: each is written when its driving process asks
    for it, so a waiting sweep has none that `queue work` could take, and those a driver
    that died left open were ended by ``recover_runs`` before this.

    A sweep a live `queue work` is driving is refused rather than stopped: its trials run
    in that process, which stops them only all together (its process-wide interrupt, which
    ends the worker too), so the user is told how to stop it instead of the worker going
    away unasked. SIGTERM or Ctrl-C there puts the sweep back in the queue, waiting, and
    then this cancels it."""
    from research.runs.recovery import pid_alive

    lines, rest, chosen = [], [], []
    for ref in refs:
        sweep = session.get(Sweep, ref.strip())
        if sweep is None:
            rest.append(ref)
        elif sweep.options.get("queue") is None:
            raise ResearchError(f"sweep {sweep.id} was not stored with `sweep --queue`; "
                                f"`research runs cancel --sweep {sweep.id}` stops its runs")
        else:
            chosen.append(sweep)
    if everything:
        chosen += [s for s in session.exec(select(Sweep).where(Sweep.status == "queued").order_by(Sweep.created_at))
                   if s.options.get("queue") is not None and (queue is None or s.options["queue"] == queue)]
    for sweep in chosen:
        if sweep.status == "running" and sweep.pid and (sweep.host != socket.gethostname() or pid_alive(sweep.pid)):
            raise ResearchError(f"sweep {sweep.id} is being driven by `queue work` (pid {sweep.pid} on "
                                f"{sweep.host}); stop that process (Ctrl-C or SIGTERM puts the sweep back in the "
                                "queue), then cancel it")
        if sweep.status not in ("queued", "running"):
            raise ResearchError(f"sweep {sweep.id} is {sweep.status}: not in the queue")
        sweep.status, sweep.reason, sweep.pid = "stopped", "cancelled from the queue", None
        sweep.updated_at = sweep.ended_at = clock.now_iso()
        session.add(sweep)
        lines.append((sweep.id, f"sweep {sweep.id}: cancelled from queue {sweep.options['queue']!r}"))
    return lines, rest


def queued_sweeps(session: Session, queue: str | None = None) -> list[dict[str, Any]]:
    """The sweeps waiting in a queue or being worked from one, for `research queue`."""
    rows = []
    for sweep in session.exec(select(Sweep).where(Sweep.status.in_(("queued", "running"))).order_by(Sweep.created_at)):
        name = sweep.options.get("queue")
        if name is None or (queue is not None and name != queue):
            continue
        ended = sum(r.state in ("complete", "failed", "pruned") for r in load_trials(session, sweep))
        rows.append({"sweep": sweep.id, "item_id": sweep.item_id, "notebook": sweep.notebook, "queue": name,
                     "state": "waiting" if sweep.status == "queued" else "running", "trials": sweep.trials,
                     "trials_ended": ended, "pid": sweep.pid if sweep.status == "running" else None,
                     "host": sweep.host if sweep.status == "running" else None, "queued_at": sweep.created_at})
    return rows


def work_queued_sweeps(db_path: Path, queue: str, jobs: int, interrupts, echo: Callable[[str], None],
                       project_root: Path) -> list[SweepOutcome]:
    """Drive every sweep waiting in ``queue`` here, one after another, ``jobs`` trials at once.
    A sweep stopped by Ctrl-C or SIGTERM goes back to the queue, where it resumes later."""
    from research.executors.local import LocalExecutor

    outcomes = []
    while not interrupts.is_set():
        sweep_id = claim_queued_sweep(db_path, queue)
        if sweep_id is None:
            break
        echo(f"sweep {sweep_id} started from queue {queue!r}")
        with LocalExecutor(db_path, jobs) as executor:
            outcome = drive(db_path, sweep_id, executor, interrupts, echo, project_root, jobs=jobs)
        if outcome.status == "stopped":
            _close_sweep(db_path, sweep_id, "queued", None)  # back in the queue, to resume from there
        outcomes.append(outcome)
    return outcomes


def drive(db_path: Path, sweep_id: str, executor, interrupts, echo: Callable[[str], None],
          project_root: Path, jobs: int | None = None) -> SweepOutcome:
    """Run the sweep's remaining trials on ``executor``, up to ``jobs`` at once (default: the
    sweep's own), until it has ``trials`` ended trials."""
    from research.executors.driver import Follower, submit
    from research.store.db import session_scope

    with session_scope(db_path) as session:
        sweep = session.get(Sweep, sweep_id).model_copy()
        records = load_trials(session, sweep)
    jobs = jobs or sweep.jobs
    space = space_from_json(sweep.space)
    study = Study(space, sweep.direction, sweep.sampler, sweep.seed, sweep.options.get("prune", "none"), records)
    trials = _Trials(records)
    open_before = [r for r in records if r.state == "open"]
    if open_before:  # runs on a remote engine from before: they end as they will, collected by sync
        echo(f"sweep {sweep_id}: {len(open_before)} trial(s) still open from before; they are waited for")
    executor.expect(max(0, sweep.trials - len(trials.ended) - len(open_before)))
    follower = Follower(db_path, executor, interrupts)
    follower.add([r.run_id for r in open_before])
    for record in open_before:
        trials.in_flight[record.run_id] = record
    stop: tuple[str, str] | None = None  # (status, reason) once no more trials start
    next_prune_check = next_sync = 0.0
    seen_objective = any(r.state == "complete" for r in trials.ended)
    while True:
        while stop is None and not interrupts.is_set() and len(trials.in_flight) < jobs \
                and len(trials.ended) + len(trials.in_flight) < sweep.trials:
            record = _start_trial(db_path, sweep, study, trials, project_root)
            submit(db_path, executor, [record.run_id])
            follower.add([record.run_id])
        if not trials.in_flight:
            break
        if open_before and time.monotonic() >= next_sync:  # this executor never saw them: collect them
            from research.executors.control import sync_runs

            next_sync = time.monotonic() + SYNC_S
            sync_runs(db_path)
        for result in follower.step():
            record = trials.in_flight.pop(result.run_id, None)
            if record is None:
                continue
            state, note = _end_trial(db_path, sweep, study, trials, record, result)
            if state == "interrupted":
                continue
            echo(_trial_line(sweep, record, note, trials.best(sweep.direction)))
            seen_objective = seen_objective or state == "complete"
            if state == "failed" and result.status == "succeeded" and not seen_objective and stop is None:
                recorded = ", ".join(sorted(result.metrics)) or "nothing"
                stop = ("failed", f"trial {record.number} recorded no metric {sweep.objective!r} "
                                  f"(it recorded {recorded}); check --{'maximize' if sweep.direction == 'maximize' else 'minimize'}")
            elif state == "failed" and sweep.options.get("fail_fast") and stop is None:
                stop = ("failed", f"--fail-fast: trial {record.number} {note}")
            if stop is not None and trials.in_flight:
                executor.cancel(list(trials.in_flight), stop[1])
        if sweep.options.get("prune", "none") != "none" and time.monotonic() >= next_prune_check:
            next_prune_check = time.monotonic() + PRUNE_CHECK_S
            _check_pruning(db_path, sweep, study, trials)
    completed = len(trials.ended)
    if stop is None:
        stop = ("finished", None) if completed >= sweep.trials else ("stopped", _interrupt_reason(interrupts))
    _close_sweep(db_path, sweep_id, *stop)
    return SweepOutcome(sweep_id, stop[0], stop[1], completed, sweep.trials, trials.best(sweep.direction))


def _interrupt_reason(interrupts) -> str:
    name = getattr(interrupts, "signal_name", None)
    return f"interrupted by {name}" if name else "interrupted"


def _start_trial(db_path: Path, sweep: Sweep, study: Study, trials: _Trials, project_root: Path) -> TrialRecord:
    """Ask the study for the next trial (a retried one first) and write its run, queued."""
    from research.runs.plan import create_runs

    if trials.retry:
        number = trials.retry.pop(0).number
    else:
        number, trials.next_number = trials.next_number, trials.next_number + 1
    values = study.ask(number)

    def write(session: Session) -> int:
        item, link = session.get(Item, sweep.item_id), session.get(Link, sweep.link_id)
        if item is None or link is None:
            raise ResearchError(f"sweep {sweep.id}: its item or linked notebook was removed")
        plan = _plan_trial(session, sweep, item, link, values, project_root)
        (run_id,), _ = create_runs(session, [plan], project_root, sweep.options.get("kernel"), executor=sweep.executor)
        run = session.get(Run, run_id)
        run.sweep_id, run.trial, run.timeout_s = sweep.id, number, sweep.options.get("timeout")
        session.add(run)
        return run_id

    record = TrialRecord(number, values, "open", run_id=write_transaction(db_path, write))
    trials.in_flight[record.run_id] = record
    return record


def _end_trial(db_path: Path, sweep: Sweep, study: Study, trials: _Trials, record: TrialRecord, result) -> tuple[str, str]:
    """Tell the study how the trial's run ended; returns (state, a few words on it)."""
    pruned_at = trials.pruned.pop(result.run_id, None)
    if pruned_at is not None and result.status != "succeeded":
        _mark_pruned(db_path, result.run_id, pruned_at)
        state, note = "pruned", f"pruned at step {pruned_at}"
    elif result.status == "interrupted":
        trials.retry.append(record)  # it never ended: a resume runs it again, same values
        study.tell(record.number, "failed")
        return "interrupted", "interrupted"
    elif result.status == "succeeded":
        value = objective_value(result.metrics, sweep.objective)
        state = "complete" if value is not None else "failed"
        note = f"{sweep.objective} = {value:.6g}" if value is not None else f"recorded no {sweep.objective}"
        record.value = value
    else:
        state, note = "failed", f"{result.status}: {result.reason or ''}".rstrip(": ")
    study.tell(record.number, state, record.value)
    record.state = state
    trials.ended.append(record)
    return state, note


def _mark_pruned(db_path: Path, run_id: int, step: int) -> None:
    def write(session: Session) -> None:
        run = session.get(Run, run_id)
        if run is not None:
            run.status, run.reason, run.error = "pruned", f"pruned at step {step}: its values were behind earlier trials'", None
            session.add(run)

    write_transaction(db_path, write)


def _check_pruning(db_path: Path, sweep: Sweep, study: Study, trials: _Trials) -> None:
    """Report each running trial's new intermediate values; write the prune request where one should stop."""
    from research.runs.lifecycle import RUNS_DIR
    from research.store.db import project_root_of

    data_root = project_root_of(db_path)  # runs/ is beside the database
    for run_id, record in trials.in_flight.items():
        if run_id in trials.pruned:
            continue
        run_dir = data_root / RUNS_DIR / str(run_id)
        # A local run writes its own folder; one elsewhere mirrors its lines into LIVE_FILE here.
        metrics = run_dir / (METRICS_FILE if sweep.executor == "local" else LIVE_FILE)
        for step, value in _new_values(metrics, sweep.objective, trials.offsets, run_id):
            if study.report(record.number, value, step):
                (run_dir / PRUNE_FILE).write_text(f"step {step}\n", encoding="utf-8")
                trials.pruned[run_id] = step
                break


def _new_values(path: Path, name: str, offsets: dict[int, int], run_id: int) -> list[tuple[int, float]]:
    """(step, value) of ``name`` appended to a metrics file since the last read."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offsets.get(run_id, 0))
            data = fh.read()
    except OSError:
        return []
    complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next read
    offsets[run_id] = offsets.get(run_id, 0) + len(complete)
    found = []
    for line in complete.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        value, step = finite_number(entry.get("value")), entry.get("step")
        if entry.get("name") == name and isinstance(step, int) and value is not None:
            found.append((step, value))
    return found


def _close_sweep(db_path: Path, sweep_id: str, status: str, reason: str | None) -> None:
    def write(session: Session) -> None:
        sweep = session.get(Sweep, sweep_id)
        sweep.status, sweep.reason, sweep.pid = status, reason, None
        sweep.updated_at = clock.now_iso()
        sweep.ended_at = clock.now_iso() if status in ("finished", "failed") else None
        session.add(sweep)

    write_transaction(db_path, write)


def _trial_line(sweep: Sweep, record: TrialRecord, note: str, best: TrialRecord | None) -> str:
    from research.render import short_value

    values = " ".join(f"{k}={short_value(v)}" for k, v in record.params.items())
    tail = f"  (best {best.value:.6g}, trial {best.number})" if best is not None else ""
    return f"trial {record.number} [run {record.run_id}] {values}: {note}{tail}"
