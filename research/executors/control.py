"""Following and stopping runs on their executors, from any process.

``apply_update`` writes what an engine reports (through ``runs.lifecycle``); ``sync_runs``
asks each remote engine about its open runs; ``cancel_runs`` stops runs wherever they
execute. All writes are short transactions, like the local runner's, so a waiting
`research run`, a `research runs sync` and a `research runs cancel` can work on the same
rows at once; a result collected twice is ingested once (``finish_run(only_open=True)``).
"""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from research.errors import ResearchError
from research.executors import Update
from research.runs.lifecycle import RunResult, load_runs, mark_ended, mark_running
from research.store.db import project_root_of
from research.store.models import Run
from research.vocab import OPEN_RUN_STATUSES, OPEN_RUNS_SQL


def ingest_payload(db_path: Path, run_id: int, payload: dict[str, Any]) -> RunResult | None:
    """Write a remote run's files under runs/<id>/ and close its row like a local run."""
    from research.executors.remote import outcome_from_payload, write_payload_files
    from research.runs.lifecycle import finish_run

    root = project_root_of(db_path)
    run = load_runs(db_path, [run_id])
    if not run or run[0].status not in OPEN_RUN_STATUSES:
        return None
    write_payload_files(root / run[0].run_dir, payload)
    return finish_run(
        db_path,
        run_id,
        outcome_from_payload(payload),
        payload.get("environment") or {},
        started_at=payload.get("started_at"),
        ended_at=payload.get("ended_at"),
        only_open=True,
    )


def apply_update(db_path: Path, update: Update) -> RunResult | None:
    """Write one executor update; returns the run's result once it is final."""
    if update.kind == "recorded":
        return update.result
    if update.kind == "running":
        mark_running(db_path, update.run_id, update.started_at)
        return None
    if update.kind == "payload":
        return ingest_payload(db_path, update.run_id, update.payload or {})
    if update.kind == "ended":
        return mark_ended(db_path, update.run_id, update.status or "failed", update.reason)
    raise ValueError(f"unknown update kind {update.kind!r}")


# --------------------------------------------------------------------------- sync


@dataclass
class SyncReport:
    collected: list[RunResult] = field(default_factory=list)  # finished runs written now
    running: int = 0  # still open on an engine

    def summary(self) -> str:
        done = len(self.collected)
        return (
            f"collected {done} finished run(s); {self.running} still queued or running on an engine"
        )


def _open_remote(db_path: Path) -> list[tuple]:
    from research.store.db import connect_raw

    conn = connect_raw(db_path)
    try:
        return conn.execute(
            "SELECT id, executor, external_id, pid, host, status FROM run "
            f"WHERE status IN {OPEN_RUNS_SQL} AND executor NOT IN ('local') ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def _client_alive(pid: int | None, host: str | None) -> bool:
    from research.runs.recovery import pid_alive

    if host and host != socket.gethostname():
        return True  # cannot tell from here
    return bool(pid) and pid_alive(pid)


def sync_runs(db_path: Path) -> SyncReport:
    """Collect remote runs that ended while nobody waited; cheap when none are open.

    Slurm (and submitit-local) runs: ingest result files, and close runs whose job
    ended without one with the engine's state as the reason. Dask runs live only
    as long as the client that submitted them: when its process is gone, they are
    marked interrupted.
    """
    report = SyncReport()
    rows = _open_remote(db_path)
    if not rows:
        return report
    slurm = [(rid, ext) for rid, executor, ext, _pid, _host, _status in rows if executor == "slurm"]
    for rid, executor, _ext, pid, host, _status in rows:
        if executor == "dask":
            if _client_alive(pid, host):
                report.running += 1
            else:
                result = mark_ended(
                    db_path,
                    rid,
                    "interrupted",
                    f"the Dask client (pid {pid}) exited before the run ended",
                )
                if result:
                    report.collected.append(result)
    if slurm:
        from research.executors.slurm_executor import job_updates

        root = project_root_of(db_path)
        finished_ids = set()
        for update in job_updates(root, slurm):
            result = apply_update(db_path, update)
            if result is not None:
                report.collected.append(result)
                finished_ids.add(update.run_id)
            elif update.kind in ("payload", "ended"):
                finished_ids.add(update.run_id)
        report.running += len([rid for rid, _ext in slurm if rid not in finished_ids])
    return report


# --------------------------------------------------------------------------- cancel


def cancel_runs(db_path: Path, run_ids: list[int], wait_s: float = 20.0) -> list[RunResult]:
    """Stop open runs on their engines; returns those closed. Closed runs are skipped.

    Local runs belong to the `research run` process that runs them: it is sent
    SIGTERM (it stops its runs and keeps their notebooks), which is only allowed
    when every open run of that process is being cancelled.
    """
    import time

    sync_runs(db_path)  # what already finished keeps its result
    runs = [r for r in load_runs(db_path, run_ids) if r.status in OPEN_RUN_STATUSES]
    if not runs:
        return []
    reason = "cancelled (research runs cancel)"
    results: list[RunResult] = []
    queued = [r for r in runs if r.queue]  # their `research queue work` process is asked, not signalled
    if queued:
        results += _cancel_queued(db_path, queued, wait_s)
        runs = [r for r in runs if not r.queue]
    by_executor: dict[str, list[Run]] = {}
    for run in runs:
        by_executor.setdefault(run.executor or "local", []).append(run)
    waiting: list[int] = []
    local = by_executor.get("local", [])
    if local:
        waiting += _cancel_local(db_path, local)
    if "dask" in by_executor:
        from research.executors.dask_executor import cancel_keys

        for run in by_executor["dask"]:
            reached = cancel_keys([run.external_id]) if run.external_id else False
            if reached and _client_alive(run.pid, run.host):
                waiting.append(run.id)  # its client collects the interrupted notebook
            else:
                result = mark_ended(db_path, run.id, "interrupted", reason)
                if result:
                    results.append(result)
    slurm = by_executor.get("slurm", [])
    if slurm:
        from research.executors.slurm_executor import cancel_jobs

        root = project_root_of(db_path)
        cancel_jobs(root, [r.external_id for r in slurm if r.external_id])
        waiting += [r.id for r in slurm]  # a stopped job may still send its notebook so far
    deadline = time.monotonic() + wait_s
    while waiting and time.monotonic() < deadline:
        time.sleep(0.3)
        if slurm:
            sync_runs(db_path)
        for run in load_runs(db_path, waiting):
            if run.status not in OPEN_RUN_STATUSES:
                waiting.remove(run.id)
                results.append(RunResult(run.id, run.status, run.reason, run.duration_s or 0.0))
    for run in load_runs(db_path, waiting):  # the engine did not answer in time
        detail = f": {run.executor} job {run.external_id}" if run.external_id else ""
        result = mark_ended(db_path, run.id, "interrupted", reason + detail)
        if result:
            results.append(result)
    stuck = [r.external_id for r in slurm if r.id in waiting and r.external_id]
    if stuck:
        cancel_jobs(project_root_of(db_path), stuck, force=True)
    return sorted(results, key=lambda r: r.run_id)


def _cancel_queued(db_path: Path, runs: list[Run], wait_s: float) -> list[RunResult]:
    from research.runs.lifecycle import closed_result
    from research.runs.queue import cancel_entries

    results = []
    for entry in cancel_entries(db_path, [str(r.id) for r in runs], wait_s=wait_s):
        result = closed_result(db_path, entry.run_id)
        if result is not None:
            results.append(result)
    return results


def _cancel_local(db_path: Path, runs: list[Run]) -> list[int]:
    from research.runs.recovery import pid_alive
    from research.store.db import connect_raw

    wanted = {r.id for r in runs}
    by_pid: dict[int, list[Run]] = {}
    for run in runs:
        if run.host and run.host != socket.gethostname():
            raise ResearchError(f"run {run.id} runs on {run.host}; cancel it there")
        by_pid.setdefault(run.pid or 0, []).append(run)
    conn = connect_raw(db_path)
    try:
        for pid in by_pid:
            others = [
                rid
                for (rid,) in conn.execute(
                    f"SELECT id FROM run WHERE pid = ? AND executor = 'local' AND status IN {OPEN_RUNS_SQL}",
                    (pid,),
                )
                if rid not in wanted
            ]
            if others:
                raise ResearchError(
                    f"runs {', '.join(map(str, sorted(r.id for r in by_pid[pid])))} are run by process {pid} "
                    f"together with {', '.join(map(str, others))}; cancel them all (--sweep) or press Ctrl-C there"
                )
    finally:
        conn.close()
    waiting = []
    for pid, group in by_pid.items():
        if pid and pid != os.getpid() and pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            waiting += [r.id for r in group]
        else:
            for run in group:
                mark_ended(db_path, run.id, "interrupted", "cancelled (its runner was gone)")
    return waiting
