"""Stale runs: a runner that died (SIGKILL, power loss) leaves rows queued or running.

``recover_stale_runs`` ends them as interrupted, except a queue's runs (``run.queue`` set):
one whose ``research queue work`` process died goes back to its queue (``requeue_runs``,
its files so far set aside under ``runs/<id>/attempts/``), and one waiting in a queue is
not stale at all. It uses plain sqlite3 and is cheap when no run is open, so read commands
call it before reading runs.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from research import clock
from research.vocab import OPEN_RUNS_SQL

STALE_HEARTBEAT = timedelta(minutes=2)  # a runner on another host is presumed dead after this
ATTEMPTS_DIR = "attempts"  # runs/<id>/attempts/<n>/: the files of an attempt that went back to the queue


@dataclass
class Recovered:
    interrupted: int = 0  # runs ended as interrupted
    requeued: int = 0  # queue entries put back in their queue
    cancelled: int = 0  # queue entries whose cancel was asked while their process died


def recover_stale_runs(db_path: Path) -> int:
    """Mark runs whose runner is gone as interrupted; returns how many. Cheap when none are open."""
    return recover_runs(db_path).interrupted


def recover_runs(db_path: Path) -> Recovered:
    """``recover_stale_runs``, and a queue's runs whose process died back to their queue."""
    from research.store.db import connect_raw, project_root_of

    done = Recovered()
    conn = connect_raw(db_path)
    try:
        dead, lost = _gone_runs(conn)
        if not dead and not lost:
            return done
        try:
            if dead:
                mark_interrupted(conn, dead)
                done.interrupted = len(dead)
            cancelled = [(run_id, reason) for run_id, reason, _beat in lost if reason]
            back = [(run_id, f"back in the queue: its `research queue work` process died "
                             f"(last heartbeat {beat or 'never'})") for run_id, reason, beat in lost if not reason]
            if cancelled:
                done.cancelled = end_cancelled(conn, cancelled)
            if back:
                done.requeued = requeue_runs(conn, back, project_root_of(db_path))
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc):
                raise
            return Recovered()  # a read-only database: readers see the runs as they were left
        return done
    finally:
        conn.close()


def stale_runs(conn) -> list[tuple[int, str | None]]:
    """(id, last heartbeat) of the local runs left queued or running by a runner that is gone
    (a queue's runs are not among them: ``recover_runs`` puts those back in their queue)."""
    return _gone_runs(conn)[0]


def _gone_runs(conn) -> tuple[list[tuple[int, str | None]], list[tuple[int, str | None, str | None]]]:
    """The open local runs whose process is gone: (id, heartbeat) of plain runs, and
    (id, reason, heartbeat) of queue entries being worked (a reason there is a cancel request)."""
    rows = conn.execute(
        "SELECT id, pid, host, heartbeat_at, executor, status, queue, reason "
        f"FROM run WHERE status IN {OPEN_RUNS_SQL}"
    ).fetchall()
    if not rows:
        return [], []
    host = socket.gethostname()
    now = datetime.now(UTC)
    dead, lost = [], []
    for run_id, pid, run_host, heartbeat, executor, status, queue, reason in rows:
        if executor not in (None, "local"):
            continue  # remote executors are reconciled by their own engines
        if queue is not None and status == "queued":
            continue  # waiting in its queue: nobody has to be alive for it
        if run_host == host and pid:
            alive = pid_alive(pid)
        else:
            alive = bool(heartbeat) and now - clock.parse_iso(heartbeat) < STALE_HEARTBEAT
        if alive:
            continue
        if queue is not None:
            lost.append((run_id, reason, heartbeat))
        else:
            dead.append((run_id, heartbeat))
    return dead, lost


def mark_interrupted(conn, dead: list[tuple[int, str | None]]) -> None:
    """End ``dead`` (from ``stale_runs``) as interrupted, the reason naming the last heartbeat."""
    from research.store.db import immediate

    with immediate(conn):
        for run_id, heartbeat in dead:
            conn.execute(
                "UPDATE run SET status = 'interrupted', ended_at = ?, reason = ? "
                f"WHERE id = ? AND status IN {OPEN_RUNS_SQL}",
                (clock.now_iso(), f"runner died (last heartbeat {heartbeat or 'never'})", run_id),
            )


def end_cancelled(conn, entries: list[tuple[int, str]]) -> int:
    """End running queue entries whose cancel was asked (``reason`` set) as interrupted."""
    from research.store.db import immediate

    count = 0
    with immediate(conn):
        for run_id, reason in entries:
            count += conn.execute(
                "UPDATE run SET status = 'interrupted', ended_at = ?, reason = ? WHERE id = ? AND status = 'running'",
                (clock.now_iso(), reason, run_id),
            ).rowcount
    return count


def requeue_runs(conn, entries: list[tuple[int, str]], data_root: Path) -> int:
    """Put running queue entries back in their queue, each with a reason (one transaction);
    returns how many went back. The files of the attempt are set aside first (so the next
    attempt's metrics.jsonl starts empty); an entry whose cancel was asked meanwhile (its
    reason set) is left for its process to end."""
    from research.store.db import immediate

    count = 0
    with immediate(conn):
        for run_id, reason in entries:
            row = conn.execute(
                "SELECT run_dir FROM run WHERE id = ? AND status = 'running' AND queue IS NOT NULL AND reason IS NULL",
                (run_id,),
            ).fetchone()
            if row is None:
                continue
            if row[0]:
                set_aside(data_root / row[0])
            count += conn.execute(
                "UPDATE run SET status = 'queued', reason = ?, pid = NULL, host = NULL, started_at = NULL, "
                "heartbeat_at = NULL, ended_at = NULL, duration_s = NULL, error = NULL, environment = '{}', "
                "artifacts = '[]' WHERE id = ?",
                (reason, run_id),
            ).rowcount
    return count


def set_aside(run_dir: Path) -> Path | None:
    """Move what an attempt left in ``run_dir`` to ``run_dir/attempts/<n>/``; returns that
    folder, or None when there was nothing. A file that cannot be moved is removed (a
    metrics.jsonl left in place would count its metrics again)."""
    if not run_dir.is_dir():
        return None
    entries = [p for p in run_dir.iterdir() if p.name != ATTEMPTS_DIR]
    if not entries:
        return None
    number = 1
    while (run_dir / ATTEMPTS_DIR / str(number)).exists():
        number += 1
    target = run_dir / ATTEMPTS_DIR / str(number)
    try:
        target.mkdir(parents=True)
    except OSError:
        target = None
    for path in entries:
        try:
            if target is None:
                raise OSError
            path.rename(target / path.name)
        except OSError:
            with contextlib.suppress(OSError):
                path.unlink()
    return target


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True
