"""Stale runs: a runner that died (SIGKILL, power loss) leaves rows queued or running.

``recover_stale_runs`` ends them as interrupted. It uses plain sqlite3 and is cheap when no
run is open, so read commands call it before reading runs.
"""

from __future__ import annotations

import os
import socket
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
        rows = conn.execute(
            f"SELECT id, pid, host, heartbeat_at, executor FROM run WHERE status IN {OPEN_RUNS_SQL}"
        ).fetchall()
        if not rows:
            return 0
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
        if dead:
            conn.execute("BEGIN IMMEDIATE")
            for run_id, heartbeat in dead:
                conn.execute(
                    "UPDATE run SET status = 'interrupted', ended_at = ?, reason = ? "
                    f"WHERE id = ? AND status IN {OPEN_RUNS_SQL}",
                    (clock.now_iso(), f"runner died (last heartbeat {heartbeat or 'never'})", run_id),
                )
            conn.execute("COMMIT")
        return len(dead)
    finally:
        conn.close()


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
