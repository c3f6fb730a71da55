"""What a run has recorded so far, read while it runs: `research runs show` and `runs watch`.

A local run's kernel appends to ``runs/<id>/metrics.jsonl`` itself; a run executing
elsewhere (a Dask worker, a Slurm job) writes into a private folder, and mirrors each
metric line to ``runs/<id>/metrics.live.jsonl`` when that folder is reachable from there
(``research.record``'s mirror). Both are read here, never ingested: the run's metrics
enter the database once, when it ends (``lifecycle.finish_run``). Cells done come from
``runs/<id>/progress.json``, which a local run rewrites after each cell.

``MetricsTail`` follows those files cheaply: a ``stat`` per poll, and only the bytes
appended since are read; a file that shrank or was replaced (the run went back to its
queue and its folder was set aside) is read again from the start.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from research.record import LIVE_FILE, METRICS_FILE

PROGRESS_JSON = "progress.json"  # cells done so far, while a local run executes


def write_progress(run_dir: Path, done: int, total: int) -> None:
    """Note a running run's cells done in its folder; never fails the run."""
    tmp = Path(run_dir) / f".{PROGRESS_JSON}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps({"cells_done": done, "cells_total": total}), encoding="utf-8")
        tmp.replace(Path(run_dir) / PROGRESS_JSON)


def read_progress(run_dir: Path) -> tuple[int | None, int | None]:
    try:
        data = json.loads((Path(run_dir) / PROGRESS_JSON).read_text(encoding="utf-8"))
        return int(data["cells_done"]), int(data["cells_total"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


class MetricsTail:
    """The latest value of each metric a run folder's files hold, kept up to date by ``poll``."""

    FILES = (METRICS_FILE, LIVE_FILE)

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.latest: dict[str, dict[str, Any]] = {}  # name -> {"value", "step", "time"}
        self._keys: dict[str, tuple] = {}  # name -> (step, time) of the value kept
        self._seen: dict[str, tuple[int, int, int]] = {}  # file -> (inode, size, mtime_ns) last read
        self._offsets: dict[str, int] = {}
        self._progress_stat: tuple[int, int] | None = None
        self.cells_done: int | None = None
        self.cells_total: int | None = None

    def poll(self) -> list[str]:
        """Read what was appended since the last call; returns the metrics that changed."""
        stats = {name: _stat(self.run_dir / name) for name in self.FILES}
        for name, st in stats.items():
            seen = self._seen.get(name)
            if seen is not None and (st is None or st[0] != seen[0] or st[1] < self._offsets.get(name, 0)):
                self._reset()  # set aside, replaced or truncated: start over from what is there now
                break
        changed: list[str] = []
        for name, st in stats.items():
            if st is None or st == self._seen.get(name):
                continue
            self._seen[name] = st
            changed += self._read(name)
        self._poll_progress()
        return list(dict.fromkeys(changed))

    def _reset(self) -> None:
        self.latest.clear()
        self._keys.clear()
        self._seen.clear()
        self._offsets.clear()

    def _read(self, name: str) -> list[str]:
        offset = self._offsets.get(name, 0)
        try:
            with open(self.run_dir / name, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next poll
        self._offsets[name] = offset + end
        changed = []
        for raw in data[:end].splitlines():
            try:
                entry = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(entry, dict) and entry.get("kind", "metric") == "metric" and "name" in entry:
                if self._add(entry):
                    changed.append(str(entry["name"]))
        return changed

    def _add(self, entry: dict) -> bool:
        """Keep ``entry`` if it is the metric's latest (by step, then time: ``metrics.final_metrics``'s rule)."""
        name, step = str(entry["name"]), entry.get("step")
        key = (step if isinstance(step, int) else -1, entry.get("time") or 0)
        if name in self._keys and key < self._keys[name]:
            return False
        self._keys[name] = key
        self.latest[name] = {"value": entry.get("value"), "step": step if isinstance(step, int) else None,
                             "time": entry.get("time")}
        return True

    def _poll_progress(self) -> None:
        st = _stat(self.run_dir / PROGRESS_JSON)
        marker = (st[0], st[2]) if st else None
        if marker != self._progress_stat:
            self._progress_stat = marker
            self.cells_done, self.cells_total = read_progress(self.run_dir) if st else (None, None)

    def state(self) -> dict[str, Any]:
        """``runs show``'s ``live`` section."""
        return {"metrics": {name: dict(v) for name, v in self.latest.items()},
                "cells_done": self.cells_done, "cells_total": self.cells_total}


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def live_state(run_dir: Path) -> dict[str, Any]:
    """What a run folder holds so far: latest value per metric (with its step) and cells done."""
    tail = MetricsTail(run_dir)
    tail.poll()
    return tail.state()


# --------------------------------------------------------------------------- watching


@dataclass
class Snapshot:
    run_id: int
    status: str
    reason: str | None
    metrics: dict[str, dict[str, Any]]  # name -> {"value", "step", "time"}
    changed: list[str] = field(default_factory=list)
    cells_done: int | None = None
    cells_total: int | None = None
    final: dict[str, Any] | None = None  # once ended: the metrics as the database holds them
    duration_s: float | None = None


def watch_run(
    db_path: Path,
    run_id: int,
    on_update: Callable[[Snapshot], None],
    interval: float = 0.2,
    status_every: float = 0.5,
    sync_every: float = 2.0,
) -> Snapshot:
    """Follow a run until it ends, calling ``on_update`` when a metric or its status changes;
    returns the last snapshot (with the final metrics). Reads the metric files every
    ``interval`` seconds (a stat when nothing changed), the run's status every
    ``status_every``; every ``sync_every`` a run whose runner died is recovered, and remote
    runs that finished unattended are collected."""
    from research.runs.recovery import recover_runs
    from research.store.db import project_root_of

    run = _load(db_path, run_id)
    tail = MetricsTail(project_root_of(db_path) / (run.run_dir or f"runs/{run_id}"))
    status, reason = run.status, run.reason
    next_status = next_sync = 0.0
    first = True
    while True:
        now = time.monotonic()
        if now >= next_sync:
            next_sync = now + sync_every
            recover_runs(db_path)
            if run.executor not in (None, "local"):
                from research.executors.control import sync_runs

                sync_runs(db_path)
            next_status = now  # read what the recovery or the sync wrote
        if now >= next_status:
            next_status = now + status_every
            run = _load(db_path, run_id)
        changed = tail.poll()
        snapshot = Snapshot(run_id, run.status, run.reason, tail.latest, changed, tail.cells_done, tail.cells_total)
        if run.status not in ("queued", "running"):
            from research.runs.lifecycle import closed_result

            result = closed_result(db_path, run_id)
            snapshot.final = result.metrics if result else {}
            snapshot.duration_s = result.duration_s if result else None
            on_update(snapshot)
            return snapshot
        if first or changed or (run.status, run.reason) != (status, reason):
            first = False
            status, reason = run.status, run.reason
            on_update(snapshot)
        time.sleep(interval)


def _load(db_path: Path, run_id: int):
    from research.errors import ResearchError
    from research.store.db import session_scope
    from research.store.models import Run

    with session_scope(db_path) as session:
        run = session.get(Run, run_id)
        if run is None:
            raise ResearchError(f"no run {run_id!r}")
        return run.model_copy()
