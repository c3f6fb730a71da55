"""A queue of runs to do later: `research run --queue` stores them, `research queue work` drains it.

An entry is a run row with ``run.queue`` set. It waits ``queued``, owned by no process
(pid NULL), with the limit it is to run under (``run.timeout_s``). A `research queue work`
process takes one at a time with ``claim_next``: one write transaction (BEGIN IMMEDIATE)
that picks the oldest waiting entry and moves it to ``running`` under its pid and host, so
two processes never take the same run. It then runs it through ``lifecycle.execute_run``,
as `research run` does, up to ``jobs`` at once.

Nothing is lost when that process goes away. Ctrl-C or SIGTERM stops its notebooks and puts
their runs back in the queue (``execute_run(requeue=...)``); after a SIGKILL, its runs look
stale to the next `research` command or `queue work` process, which puts them back
(``recovery.recover_runs``). Either way the attempt's files are set aside under
``runs/<id>/attempts/<n>/`` and the run starts afresh.

Cancelling ends a waiting entry ``interrupted`` with ``CANCEL_REASON``. A running one is
asked to stop: its ``reason``, empty while a run runs, is set to ``CANCEL_REASON``; its
process sees that within a second, stops the notebook and ends the run with that reason.
`queue cancel` also takes a sweep: a `run --grid --queue`'s id stands for its open entries,
and a waiting `sweep --queue` ends stopped, in the same transaction as the runs.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from research import clock
from research.errors import ResearchError
from research.runs.lifecycle import RunResult, closed_result, execute_run, mark_ended
from research.store.db import write_transaction
from research.store.models import Item, Run
from research.vocab import OPEN_RUN_STATUSES

DEFAULT_QUEUE = "default"
CANCEL_REASON = "cancelled from the queue"
POLL_S = 1.0  # how often `queue work` looks for new entries, cancel requests and lost runs
CANCEL_WAIT_S = 20.0  # how long `queue cancel` waits for a running entry's process to stop it


# --------------------------------------------------------------------------- reading


def queue_entries(session: Session, queue: str | None = None) -> list[dict[str, Any]]:
    """The entries waiting or being worked, oldest first, as plain dicts (stable keys)."""
    query = select(Run).where(Run.queue.is_not(None), Run.status.in_(OPEN_RUN_STATUSES)).order_by(Run.id)
    if queue:
        query = query.where(Run.queue == queue)
    runs = list(session.exec(query))
    slugs = dict(session.exec(select(Item.id, Item.slug)).all()) if runs else {}
    return [entry_of(run, slugs.get(run.item_id)) for run in runs]


def entry_of(run: Run, item_slug: str | None) -> dict[str, Any]:
    return {
        "id": run.id,
        "item": item_slug,
        "notebook": run.notebook,
        "params": run.params,  # the effective values, the notebook's defaults included
        "params_given": run.params_given,  # what the run injects
        "queue": run.queue,
        "queued_at": run.queued_at,
        "state": entry_state(run),
        "started_at": run.started_at if run.status == "running" else None,
        "host": run.host if run.status == "running" else None,
        "pid": run.pid if run.status == "running" else None,
        "timeout_s": run.timeout_s,
        "note": run.reason,  # why it went back to the queue, or the cancel asked
    }


def entry_state(run: Run) -> str:
    """queued, running, or cancelling (a running entry whose cancel was asked)."""
    if run.status == "running" and run.reason:
        return "cancelling"
    return run.status


# --------------------------------------------------------------------------- claiming


def claim_next(db_path: Path, queue: str = DEFAULT_QUEUE) -> Run | None:
    """Take the oldest waiting entry of ``queue`` for this process (one write transaction:
    no other process can take it too); returns a copy of its row, or None if none waits."""

    def claim(session: Session) -> Run | None:
        run = session.exec(
            select(Run).where(Run.queue == queue, Run.status == "queued").order_by(Run.id).limit(1)
        ).first()
        if run is None:
            return None
        now = clock.now_iso()
        run.status, run.pid, run.host = "running", os.getpid(), socket.gethostname()
        run.started_at = run.heartbeat_at = now
        run.reason = None
        session.add(run)
        return run.model_copy()

    return write_transaction(db_path, claim)


def cancel_requested(db_path: Path, run_ids: list[int]) -> list[int]:
    """Which of these running entries have had their cancel asked."""
    from research.store.db import session_scope

    if not run_ids:
        return []
    with session_scope(db_path) as session:
        rows = session.exec(
            select(Run.id).where(Run.id.in_(run_ids), Run.status == "running", Run.reason.is_not(None))
        )
        return list(rows)


# --------------------------------------------------------------------------- cancelling


@dataclass
class Cancelled:
    run_id: int | None  # None for a sweep
    status: str  # interrupted, or what it ended as meanwhile; "cancelling" if still stopping; a sweep's "stopped"
    line: str  # one line for the user
    sweep_id: str | None = None


def cancel_entries(
    db_path: Path, refs: list[str] | None = None, everything: bool = False, queue: str | None = None,
    wait_s: float = CANCEL_WAIT_S, sweeps: bool = False,
) -> list[Cancelled]:
    """Remove entries from the queue: waiting ones end ``interrupted`` with ``CANCEL_REASON``
    at once; running ones are asked to stop and waited for (up to ``wait_s``).

    A ref may also be the sweep id of a `run --grid --queue` (its entries still open), and,
    with ``sweeps``, of a sweep stored with `sweep --queue` (``sweeps.drive.cancel_sweeps``;
    with ``everything``, every waiting one). Sweeps come first in what is returned.

    Every ref is checked before anything is written, in one transaction: an unknown run or
    sweep, one not in a queue, or one that has already ended raises ResearchError.
    """
    from research.runs.recovery import recover_runs

    recover_runs(db_path)  # a run whose process died is back in the queue, and cancelled from there

    def cancel(session: Session) -> tuple[list[Cancelled], list[int]]:
        from research.sweeps.drive import cancel_sweeps

        stopped, run_refs = cancel_sweeps(session, refs or [], everything, queue) if sweeps else ([], refs or [])
        done = [Cancelled(None, "stopped", line, sweep_id=sweep_id) for sweep_id, line in stopped]
        if everything:
            query = select(Run).where(Run.queue.is_not(None), Run.status.in_(OPEN_RUN_STATUSES))
            if queue:
                query = query.where(Run.queue == queue)
            targets = list(session.exec(query.order_by(Run.id)))
        else:
            chosen = {run.id: run for ref in run_refs for run in _cancellable(session, ref)}  # a run named twice once
            targets = list(chosen.values())
        now = clock.now_iso()
        asked = []
        for run in targets:
            if run.status == "queued":
                run.status, run.reason, run.ended_at = "interrupted", CANCEL_REASON, now
                done.append(Cancelled(run.id, "interrupted", f"run {run.id} interrupted ({CANCEL_REASON})"))
            elif not run.reason:
                run.reason = CANCEL_REASON
                asked.append(run.id)
            else:
                asked.append(run.id)  # asked before: wait for it too
            session.add(run)
        return done, asked

    done, asked = write_transaction(db_path, cancel)
    return done + _wait_for_stops(db_path, asked, wait_s)


def _cancellable(session: Session, ref: str) -> list[Run]:
    """The run ``ref`` names, or the open entries of the `run --grid --queue` whose sweep id it is
    (as if each run were named: waiting ones end, running ones are asked to stop)."""
    from research.runs.query import resolve_run

    text = ref.strip()
    if text and not text.lstrip("#").isdigit():
        grid = list(session.exec(select(Run).where(Run.sweep_id == text).order_by(Run.id)))
        if not grid:
            raise ResearchError(f"no run or sweep {ref!r}; `research queue` lists what waits")
        if all(run.queue is None for run in grid):
            raise ResearchError(f"sweep {text}'s runs are not in a queue; `research runs cancel --sweep {text}` stops them")
        entries = [run for run in grid if run.queue is not None and run.status in OPEN_RUN_STATUSES]
        if not entries:
            raise ResearchError(f"sweep {text} has no run left in the queue; its runs have ended")
        return entries
    run = resolve_run(session, ref)
    if run.queue is None:
        raise ResearchError(f"run {run.id} is not in a queue; `research runs cancel {run.id}` stops it")
    if run.status not in OPEN_RUN_STATUSES:
        raise ResearchError(f"run {run.id} has already ended ({run.status}); nothing to cancel")
    return [run]


def _wait_for_stops(db_path: Path, run_ids: list[int], wait_s: float) -> list[Cancelled]:
    from research.runs.lifecycle import load_runs
    from research.runs.recovery import recover_runs

    results: list[Cancelled] = []
    waiting = list(run_ids)
    deadline = time.monotonic() + wait_s
    while waiting:
        recover_runs(db_path)  # its process died meanwhile: the run ends with the cancel's reason
        for run in load_runs(db_path, waiting):
            if run.status not in OPEN_RUN_STATUSES:
                waiting.remove(run.id)
                reason = f" ({run.reason})" if run.reason else ""
                results.append(Cancelled(run.id, run.status, f"run {run.id} {run.status}{reason}"))
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    for run in load_runs(db_path, waiting):
        results.append(Cancelled(run.id, "cancelling", f"run {run.id} cancelling: asked its `research queue work` "
                                                      f"process (pid {run.pid} on {run.host}) to stop it"))
    return sorted(results, key=lambda c: c.run_id)


# --------------------------------------------------------------------------- working


@dataclass
class Drained:
    results: list[RunResult]  # the runs that ended here, in the order they ended
    requeued: list[int]  # runs put back in the queue when this process was stopped


def drain(
    db_path: Path,
    queue: str = DEFAULT_QUEUE,
    jobs: int = 1,
    until_empty: bool = False,
    timeout: float | None = None,
    stop=None,
    on_start: Callable[[Run], None] | None = None,
    on_done: Callable[[RunResult], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    poll_s: float = POLL_S,
) -> Drained:
    """Work ``queue`` on this machine, up to ``jobs`` runs at once, until ``stop`` (a
    ``child.InterruptSignals``: Ctrl-C, SIGTERM) is set, or, with ``until_empty``, until no
    entry waits and none of ours runs. A run's own limit wins over ``timeout``.

    Once ``stop`` is set, the notebooks in progress are stopped (a second signal kills
    them at once) and their runs go back to the queue; this returns when they have.
    """
    from research.runs.child import INTERRUPTS, InterruptSignals
    from research.runs.recovery import recover_runs

    stop = INTERRUPTS if stop is None else stop
    active: dict[int, tuple[Future, InterruptSignals]] = {}
    asked: set[int] = set()  # runs whose cancel was asked (they end, they do not go back)
    drained = Drained([], [])
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="queue-run")
    stopping = forced = False
    next_look = 0.0

    def back_reason(outcome, run_id: int) -> str | None:
        if outcome.status == "interrupted" and stop.is_set() and run_id not in asked:
            return f"back in the queue: its `research queue work` process was stopped ({stop.signal_name or 'interrupted'})"
        return None

    def work(run: Run, flag: InterruptSignals) -> RunResult:
        return _work_one(db_path, run, flag, timeout, lambda outcome: back_reason(outcome, run.id))

    try:
        while True:
            if stop.is_set() and not stopping:
                stopping = True
                for _future, flag in active.values():
                    flag.trigger(stop.signal_name)
            if stopping and stop.forced and not forced:
                forced = True
                for _future, flag in active.values():
                    flag.trigger(stop.signal_name)  # a second trigger: no grace
            for run_id, (future, _flag) in list(active.items()):
                if future.done():
                    del active[run_id]
                    result = future.result()
                    if result.status == "queued":
                        drained.requeued.append(run_id)
                    else:
                        if run_id in asked and result.status == "interrupted":
                            result = _end_cancelled(db_path, result)
                        drained.results.append(result)
                    if on_done:
                        on_done(result)
                    next_look = 0.0  # a free slot: look for the next entry now
            if stopping:
                if not active:
                    break
            elif time.monotonic() >= next_look:
                next_look = time.monotonic() + poll_s
                recovered = recover_runs(db_path)
                if recovered.requeued and on_note:
                    on_note(f"put {recovered.requeued} run(s) of a `research queue work` process that died "
                            "back in the queue")
                claimed_none = False
                while len(active) < jobs and not stop.is_set():
                    run = claim_next(db_path, queue)
                    if run is None:
                        claimed_none = True
                        break
                    flag = InterruptSignals()
                    active[run.id] = (pool.submit(work, run, flag), flag)
                    if on_start:
                        on_start(run)
                for run_id in cancel_requested(db_path, [rid for rid in active if rid not in asked]):
                    asked.add(run_id)
                    active[run_id][1].trigger("cancel request")
                if until_empty and claimed_none and not active:
                    break
            futures = [future for future, _flag in active.values()]
            if futures:
                wait(futures, timeout=min(0.25, poll_s), return_when=FIRST_COMPLETED)
            else:
                stop.wait(min(0.25, poll_s))
    except BaseException as exc:  # the loop itself failed: the runs in progress go back, then it is raised
        if not stop.is_set():
            stop.trigger(type(exc).__name__)
        for _future, flag in active.values():
            flag.trigger(stop.signal_name)
        raise
    finally:
        pool.shutdown(wait=True)
    return drained


def _work_one(db_path: Path, run: Run, flag, timeout: float | None, requeue) -> RunResult:
    """Run one claimed entry; whatever goes wrong ends it (a claimed run is never left running)."""
    from research.runs.lifecycle import _notebook_root

    notebook = _notebook_root(run, db_path) / run.notebook
    try:
        if not notebook.is_file():
            raise ResearchError(f"notebook {run.notebook} no longer exists")
        return execute_run(db_path, run.id, timeout=run.timeout_s or timeout, interrupts=flag, claimed=True,
                           requeue=requeue)
    except Exception as exc:
        reason = str(exc) if isinstance(exc, ResearchError) else f"{type(exc).__name__}: {exc}"
        return (mark_ended(db_path, run.id, "failed", reason) or closed_result(db_path, run.id)
                or RunResult(run.id, "failed", reason, 0.0))


def _end_cancelled(db_path: Path, result: RunResult) -> RunResult:
    """A run stopped because its cancel was asked: its reason says so."""

    def write(session: Session) -> None:
        run = session.get(Run, result.run_id)
        if run is not None and run.status == "interrupted":
            run.reason = CANCEL_REASON
            session.add(run)

    write_transaction(db_path, write)
    return RunResult(result.run_id, result.status, CANCEL_REASON, result.duration_s, result.metrics)
