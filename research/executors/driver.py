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


def follow(
    db_path: Path,
    executor: Executor,
    run_ids: list[int],
    interrupts=None,
    on_running: Callable[[int], None] | None = None,
    on_done: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Poll ``executor`` until every run has ended; returns their results in ``run_ids`` order."""
    open_ids = list(run_ids)
    results: dict[int, RunResult] = {}
    cancel_deadline: float | None = None
    cancelled = False

    def done(run_id: int, result: RunResult) -> None:
        results[run_id] = result
        if run_id in open_ids:
            open_ids.remove(run_id)
        if on_done:
            on_done(result)

    next_check = time.monotonic() + CHECK_S
    while open_ids:
        if time.monotonic() >= next_check:  # rows another process closed (`research runs cancel`)
            next_check = time.monotonic() + CHECK_S
            for run in load_runs(db_path, list(open_ids)):
                if run.status not in OPEN_RUN_STATUSES:
                    done(
                        run.id,
                        closed_result(db_path, run.id)
                        or RunResult(run.id, run.status, run.reason, 0.0),
                    )
        for update in executor.poll(POLL_S):
            if update.run_id not in open_ids:
                continue
            result = apply_update(db_path, update)
            if update.kind == "running":
                if on_running:
                    on_running(update.run_id)
            elif result is not None:
                done(update.run_id, result)
            else:  # closed meanwhile by another process (a sync, a cancel)
                other = closed_result(db_path, update.run_id)
                if other is not None:
                    done(update.run_id, other)
        if interrupts is not None and interrupts.is_set() and not cancelled:
            cancelled = True
            reason = (
                f"interrupted by {interrupts.signal_name}"
                if interrupts.signal_name
                else "interrupted"
            )
            executor.cancel(list(open_ids), reason)
            if executor.cancel_grace_s is not None:
                cancel_deadline = time.monotonic() + executor.cancel_grace_s
        if cancel_deadline is not None and (
            time.monotonic() >= cancel_deadline or interrupts.forced
        ):
            for run_id in list(open_ids):
                result = mark_ended(db_path, run_id, "interrupted", reason) or closed_result(
                    db_path, run_id
                )
                done(run_id, result or RunResult(run_id, "interrupted", reason, 0.0))
    return [results[rid] for rid in run_ids]
