"""Submit queued runs to an executor and follow them into the database until they end.

The caller (the CLI) wraps ``drive`` in ``child.handle_interrupts()``: a first
Ctrl-C or SIGTERM cancels the open runs on the engine and waits up to the
executor's ``cancel_grace_s`` for them to report (with their notebook so far);
a second one stops waiting. Whatever has not reported by then is marked
interrupted, so no row is left running.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from research.errors import ResearchError
from research.executors import Executor
from research.executors.control import apply_update
from research.runs.lifecycle import RunResult, closed_result, load_runs, mark_ended, mark_submitted
from research.vocab import OPEN_RUN_STATUSES

POLL_S = 0.2
CHECK_S = 2.0


def submit(db_path: Path, executor: Executor, run_ids: list[int]) -> dict[int, str | None]:
    """Hand queued runs to the engine and record their external ids.

    If the engine refuses them, the rows are closed as failed with its reason.
    """
    runs = load_runs(db_path, run_ids)
    try:
        external = executor.submit(runs)
    except ResearchError as exc:
        for rid in run_ids:
            mark_ended(db_path, rid, "failed", f"submission to {executor.name} failed: {exc}")
        raise
    except Exception as exc:
        for rid in run_ids:
            mark_ended(
                db_path,
                rid,
                "failed",
                f"submission to {executor.name} failed: {type(exc).__name__}: {exc}",
            )
        raise ResearchError(
            f"submission to {executor.name} failed: {type(exc).__name__}: {exc}"
        ) from exc
    if executor.name != "local":  # local runs record themselves as they start
        mark_submitted(db_path, external, getattr(executor, "shipped_sha256", None))
    return external


class Follower:
    """Follows runs on ``executor`` into the database; ``add`` more at any time, ``step`` polls once.

    ``follow`` uses it for a fixed set of runs; a search sweep adds each trial as it asks for it.
    Once ``interrupts`` is set, the open runs are cancelled on the engine, and those that have
    not reported within the executor's ``cancel_grace_s`` are marked interrupted.
    """

    def __init__(self, db_path: Path, executor: Executor, interrupts=None,
                 on_running: Callable[[int], None] | None = None,
                 on_done: Callable[[RunResult], None] | None = None) -> None:
        self.db_path, self.executor, self.interrupts = db_path, executor, interrupts
        self.on_running, self.on_done = on_running, on_done
        self.open_ids: list[int] = []
        self.results: dict[int, RunResult] = {}
        self._cancel_deadline: float | None = None
        self._cancelled = False
        self._reason = "interrupted"
        self._next_check = time.monotonic() + CHECK_S

    def add(self, run_ids: list[int]) -> None:
        self.open_ids.extend(run_ids)

    def _done(self, run_id: int, result: RunResult, ended: list[RunResult]) -> None:
        self.results[run_id] = result
        if run_id in self.open_ids:
            self.open_ids.remove(run_id)
        ended.append(result)
        if self.on_done:
            self.on_done(result)

    def step(self) -> list[RunResult]:
        """One round: waits up to POLL_S for news; returns the runs that ended in it."""
        db_path, executor, interrupts, ended = self.db_path, self.executor, self.interrupts, []
        if time.monotonic() >= self._next_check:  # rows another process closed (`research runs cancel`)
            self._next_check = time.monotonic() + CHECK_S
            for run in load_runs(db_path, list(self.open_ids)):
                if run.status not in OPEN_RUN_STATUSES:
                    self._done(run.id, closed_result(db_path, run.id)
                               or RunResult(run.id, run.status, run.reason, 0.0), ended)
        for update in executor.poll(POLL_S):
            if update.run_id not in self.open_ids:
                continue
            result = apply_update(db_path, update)
            if update.kind == "running":
                if self.on_running:
                    self.on_running(update.run_id)
            elif result is not None:
                self._done(update.run_id, result, ended)
            else:  # closed meanwhile by another process (a sync, a cancel)
                other = closed_result(db_path, update.run_id)
                if other is not None:
                    self._done(update.run_id, other, ended)
        if interrupts is not None and interrupts.is_set() and not self._cancelled:
            self._cancelled = True
            if interrupts.signal_name:
                self._reason = f"interrupted by {interrupts.signal_name}"
            executor.cancel(list(self.open_ids), self._reason)
            if executor.cancel_grace_s is not None:
                self._cancel_deadline = time.monotonic() + executor.cancel_grace_s
        if self._cancel_deadline is not None and (time.monotonic() >= self._cancel_deadline or interrupts.forced):
            for run_id in list(self.open_ids):
                result = mark_ended(db_path, run_id, "interrupted", self._reason) or closed_result(db_path, run_id)
                self._done(run_id, result or RunResult(run_id, "interrupted", self._reason, 0.0), ended)
        return ended


def follow(
    db_path: Path,
    executor: Executor,
    run_ids: list[int],
    interrupts=None,
    on_running: Callable[[int], None] | None = None,
    on_done: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Poll ``executor`` until every run has ended; returns their results in ``run_ids`` order."""
    follower = Follower(db_path, executor, interrupts, on_running, on_done)
    follower.add(list(run_ids))
    while follower.open_ids:
        follower.step()
    return [follower.results[rid] for rid in run_ids]
