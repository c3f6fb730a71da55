"""Stale runs: a runner that died (SIGKILL, power loss) leaves rows queued or running.

``recover_stale_runs`` ends them as interrupted. It uses plain sqlite3 and is cheap when no
run is open, so read commands call it before reading runs.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from research import clock
from research.vocab import OPEN_RUNS_SQL

STALE_HEARTBEAT = timedelta(minutes=2)  # a runner on another host is presumed dead after this

def recover_stale_runs(db_path: Path) -> int:
    """Mark runs whose runner is gone as interrupted; returns how many. Cheap when none are open."""
    from research.store.db import connect_raw

    conn = connect_raw(db_path)
    try:
        dead = stale_runs(conn)
        if dead:
            try:
                mark_interrupted(conn, dead)
            except sqlite3.OperationalError as exc:
                if "readonly" not in str(exc):
                    raise
                return 0  # a read-only database: readers see the runs as they were left
        return len(dead)
    finally:
        conn.close()


def stale_runs(conn) -> list[tuple[int, str | None]]:
    """(id, last heartbeat) of the local runs left queued or running by a runner that is gone."""
    rows = conn.execute(
        f"SELECT id, pid, host, heartbeat_at, executor FROM run WHERE status IN {OPEN_RUNS_SQL}"
    ).fetchall()
    if not rows:
        return []
    host = socket.gethostname()
    now = datetime.now(UTC)
    dead = []
    for run_id, pid, run_host, heartbeat, executor in rows:
        if executor not in (None, "local"):
            continue  # remote executors are reconciled by their own engines
        if run_host == host and pid:
            alive = pid_alive(pid)
        else:
            alive = bool(heartbeat) and now - clock.parse_iso(heartbeat) < STALE_HEARTBEAT
        if not alive:
            dead.append((run_id, heartbeat))
    return dead


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
