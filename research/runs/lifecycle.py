"""Every state change of a run: queued, running, ended (succeeded, failed, interrupted, cancelled),
and for a queue's run back to queued (``requeue_run``).

Each run moves to ``running`` and to its final status in short transactions of its own, so
parallel runs and other `research` processes share the database safely. Everything a run
produces lives under ``runs/<run id>/`` next to the database. A runner that died (SIGKILL,
power loss) leaves rows behind: ``recover_stale_runs`` ends them."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from research import clock
from research.backlog.items import ChangeLog, set_status
from research.errors import ResearchError
from research.runs.metrics import final_metrics
from research.store.db import project_root_of, write_transaction
from research.store.models import Item, Metric, Run
from research.vocab import OPEN_RUN_STATUSES

RUNS_DIR = "runs"
OUTPUT_NOTEBOOK = "output.ipynb"
RUN_JSON = "run.json"

# ---------------------------------------------------------------------------
# Executing


@dataclass
class RunResult:
    run_id: int
    status: str
    reason: str | None
    duration_s: float
    metrics: dict[str, Any] = field(default_factory=dict)


def _start_items(session: Session, item_ids: set[int]) -> None:
    """The first run of a planned item starts it; finishing stays the researcher's call."""
    for item_id in item_ids:
        item = session.get(Item, item_id)
        if item is not None and item.status == "planned":
            set_status(session, ChangeLog(session), item, "active")


def _notebook_root(run: Run, db_path: Path) -> Path:
    """The project the run was planned in (its notebook is relative to it), else the database's folder."""
    return Path(run.cwd) if run.cwd else project_root_of(db_path)


def execute_run(
    db_path: Path,
    run_id: int,
    timeout: float | None = None,
    log_output: bool = False,
    on_progress: Callable[[int, int, int], None] | None = None,
    runner=None,
    *,
    interrupts=None,
    claimed: bool = False,
    requeue: Callable[[Any], str | None] | None = None,
) -> RunResult:
    """Run one queued run to its end and record everything about it.

    ``runner`` is an already started ``child.start_runner()`` process to use. A queue's
    ``research queue work`` process passes ``claimed`` (it has already moved the row to
    ``running`` under its pid: ``runs.queue.claim_next``), its own ``interrupts`` flag for
    the run, and ``requeue``: given the outcome, the reason to put the run back in its
    queue instead of closing it (its process was stopped by Ctrl-C), or None.
    """
    from concurrent.futures import ThreadPoolExecutor

    from research.runs.child import execute_notebook
    from research.runs.environment import capture_environment, sha256_file
    from research.runs.live import write_progress
    from research.runs.params import injected_parameters

    data_root = project_root_of(db_path)  # runs/ is beside the database

    def start(session: Session):
        run = session.get(Run, run_id)
        mine = claimed and run is not None and run.status == "running" and run.pid == os.getpid()
        if run is None or (run.status != "queued" and not mine):
            raise ResearchError(f"run {run_id} is not queued")
        now = clock.now_iso()
        changes = {"status": "running", "started_at": now, "heartbeat_at": now, "pid": os.getpid(),
                   "host": socket.gethostname()}
        for name, value in changes.items():
            setattr(run, name, value)
        notebook = _notebook_root(run, db_path) / run.notebook
        run.notebook_sha256 = sha256_file(notebook) if notebook.is_file() else None
        session.add(run)
        _start_items(session, {run.item_id})
        return run.model_copy()

    run = write_transaction(db_path, start)
    project_root = _notebook_root(run, db_path)
    run_dir = data_root / run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    # git and nvidia-smi take a moment: ask them while the notebook runs.
    env_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="environment")
    environment_future = env_pool.submit(capture_environment, project_root)
    env_pool.shutdown(wait=False)
    last_beat = [0.0]

    def heartbeat():
        now = time.monotonic()
        if now - last_beat[0] < 1.0:
            return
        last_beat[0] = now

        def beat(session: Session):
            row = session.get(Run, run_id)
            if row is not None and row.status == "running":
                row.heartbeat_at = clock.now_iso()
                session.add(row)

        write_transaction(db_path, beat)

    def progress(done: int, total: int):
        write_progress(run_dir, done, total)
        if on_progress:
            on_progress(run_id, done, total)

    outcome = execute_notebook(
        notebook=project_root / run.notebook,
        output=data_root / run.output_path,
        parameters=injected_parameters(run.params_given, run.params),
        run_dir=run_dir,
        cwd=project_root,
        kernel_name=run.kernel,
        timeout=timeout,
        log_output=log_output,
        on_progress=progress,
        on_heartbeat=heartbeat,
        runner=runner,
        interrupts=interrupts,
    )
    reason = requeue(outcome) if requeue is not None else None
    if reason and requeue_run(db_path, run_id, reason):  # not when its cancel was asked meanwhile
        return RunResult(run_id, "queued", reason, outcome.duration_s)
    return finish_run(db_path, run_id, outcome, environment_future.result())


def requeue_run(db_path: Path, run_id: int, reason: str) -> bool:
    """Put a running queue entry back in its queue (its files so far set aside): the same
    change as for a run whose ``research queue work`` process died (``runs.recovery``)."""
    from research.runs.recovery import requeue_runs
    from research.store.db import connect_raw

    conn = connect_raw(db_path)
    try:
        return bool(requeue_runs(conn, [(run_id, reason)], project_root_of(db_path)))
    finally:
        conn.close()


def finish_run(
    db_path: Path,
    run_id: int,
    outcome,
    environment: dict,
    *,
    started_at: str | None = None,
    ended_at: str | None = None,
    only_open: bool = False,
) -> RunResult | None:
    """Ingest the run's metrics and artifacts and close its row; writes run.json.

    Runs done elsewhere (Dask, Slurm) pass the times the worker saw, and ``only_open``
    so that a result collected twice (two `research` processes) is ingested once:
    then a row already closed is left alone and None comes back.
    """
    from research.runs.child import read_records

    project_root = project_root_of(db_path)

    def finish(session: Session):
        run = session.get(Run, run_id)
        if only_open and (run is None or run.status not in OPEN_RUN_STATUSES):
            return None
        run_dir = project_root / run.run_dir
        metrics, artifacts = read_records(run_dir)
        for entry in metrics:
            session.add(_metric_row(run_id, entry))
        run.status = outcome.status
        run.reason = outcome.reason
        run.error = outcome.error
        run.kernel = outcome.kernel_name or run.kernel
        run.started_at = started_at or run.started_at
        run.ended_at = ended_at or clock.now_iso()
        run.duration_s = outcome.duration_s
        run.environment = environment
        run.artifacts = [a.get("path") for a in artifacts if a.get("path")]
        session.add(run)
        session.flush()
        record = run_record(run, metrics)
        record["cells_done"], record["cells_total"] = outcome.cells_done, outcome.cells_total
        (run_dir / RUN_JSON).write_text(json.dumps(record, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
        return RunResult(run_id, run.status, run.reason, outcome.duration_s, final_metrics(metrics))

    return write_transaction(db_path, finish)


def _metric_row(run_id: int, entry: dict) -> Metric:
    value = entry.get("value")
    number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    return Metric(
        run_id=run_id,
        name=str(entry.get("name")),
        value=number,
        value_json=None if number is not None else value,
        step=entry.get("step") if isinstance(entry.get("step"), int) else None,
        ts=entry.get("time"),
    )


def run_record(run: Run, metrics=None) -> dict[str, Any]:
    data = run.model_dump()
    if metrics is not None:
        data["metrics"] = final_metrics(metrics)
    return data


# ---------------------------------------------------------------------------
# Runs that another engine executes (Dask, Slurm): the same states, written from outside.


def load_runs(db_path: Path, run_ids: list[int]) -> list[Run]:
    from research.store.db import session_scope

    with session_scope(db_path) as session:
        rows = {r.id: r.model_copy() for r in session.exec(select(Run).where(Run.id.in_(run_ids)))}
    return [rows[rid] for rid in run_ids if rid in rows]


def mark_submitted(
    db_path: Path, external: dict[int, str | None], sha256: dict[int, str] | None = None
) -> None:
    """Record external ids (and the notebook hash that was shipped); a planned item becomes active."""
    def write(session: Session):
        items = set()
        for run_id, external_id in external.items():
            run = session.get(Run, run_id)
            if run is None:
                continue
            run.external_id = external_id
            if sha256 and run_id in sha256:
                run.notebook_sha256 = sha256[run_id]
            run.heartbeat_at = clock.now_iso()
            session.add(run)
            items.add(run.item_id)
        _start_items(session, items)

    write_transaction(db_path, write)


def mark_running(db_path: Path, run_id: int, started_at: str | None = None) -> bool:
    def write(session: Session):
        run = session.get(Run, run_id)
        if run is None or run.status != "queued":
            return False
        run.status = "running"
        run.started_at = started_at or clock.now_iso()
        run.heartbeat_at = clock.now_iso()
        session.add(run)
        return True

    return write_transaction(db_path, write)


def mark_ended(db_path: Path, run_id: int, status: str, reason: str | None) -> RunResult | None:
    """Close an open run the engine ended without a result (lost runner, cancelled job)."""

    def write(session: Session):
        run = session.get(Run, run_id)
        if run is None or run.status not in OPEN_RUN_STATUSES:
            return None
        run.status = status
        run.reason = reason
        run.ended_at = clock.now_iso()
        session.add(run)
        return RunResult(run_id, status, reason, run.duration_s or 0.0)

    return write_transaction(db_path, write)



def closed_result(db_path: Path, run_id: int) -> RunResult | None:
    """The result of a run that is already closed (someone else collected it)."""
    from research.runs.query import run_metrics
    from research.store.db import session_scope

    with session_scope(db_path) as session:
        run = session.get(Run, run_id)
        if run is None or run.status in OPEN_RUN_STATUSES:
            return None
        return RunResult(
            run_id,
            run.status,
            run.reason,
            run.duration_s or 0.0,
            run_metrics(session, [run_id])[run_id],
        )
