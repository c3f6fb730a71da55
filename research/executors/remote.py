"""One run away from the database: the task a Dask worker or a Slurm job executes, and its ingestion.

``build_task`` (client) packs everything a run needs -- the notebook's bytes,
the resolved parameters, kernel, timeout and the client's git state -- into a
plain dict. ``run_remote`` (worker) writes the notebook into a private temp
folder, runs it with ``execute_notebook`` exactly as a local run does, and
returns a payload: the outcome (status, reason, error, timings), the worker's
environment, the metric records, and every file the run produced (output
notebook, ``metrics.jsonl``, artifacts) as bytes. Workers therefore need the
``research`` package but neither the database nor a shared filesystem.
``ingest_payload`` (client) writes those files under ``runs/<id>/`` and closes
the row through the same ``finish_run`` as local runs.

The notebook runs with the project root as working directory when that folder
exists on the worker (a shared filesystem, or the same machine), else in its
temp folder. Likewise, when the run's ``runs/<id>/`` folder (made by ``build_task``)
is there, each metric line is mirrored into its ``metrics.live.jsonl`` as it is
recorded, for `research runs watch`; a Dask worker that cannot reach it sends the lines to
the client through the scheduler instead (``dask_task``). Only the shipped ``metrics.jsonl`` is ingested.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

PAYLOAD_VERSION = 1
OUTPUT_NOTEBOOK = "output.ipynb"  # as research.runs.lifecycle names it (not imported: workers skip the ORM)
CANCEL_EVENT_PREFIX = "research-cancel-"
CANCEL_POLL_S = 1.0
FORWARD_EVERY_S = 0.5
# Set on a worker: send live metric lines through the scheduler even though the project's
# runs/<id>/ looks reachable (a read-only or laggy mount of it, say).
LIVE_THROUGH_SCHEDULER = "RESEARCH_LIVE_THROUGH_SCHEDULER"


def build_task(
    run, project_root: Path, timeout: float | None, git: dict[str, Any], key: str | None = None
) -> dict[str, Any]:
    """The self-contained description of one queued run (``run`` is a Run row); its notebook
    is relative to the project it was planned in (``run.cwd``), else to ``project_root``."""
    import hashlib

    from research.runs.params import injected_parameters

    live_dir = Path(project_root) / run.run_dir if getattr(run, "run_dir", None) else None
    if live_dir is not None:
        live_dir.mkdir(parents=True, exist_ok=True)  # a worker that sees it mirrors metrics there
    project_root = Path(run.cwd) if getattr(run, "cwd", None) else Path(project_root)
    notebook = project_root / run.notebook
    data = notebook.read_bytes()

    return {
        "version": PAYLOAD_VERSION,
        "run_id": run.id,
        "key": key,
        "notebook": run.notebook,
        "notebook_bytes": data,
        "notebook_sha256": hashlib.sha256(data).hexdigest(),
        "params": injected_parameters(run.params_given, run.params),  # what papermill injects
        "kernel": run.kernel,
        "timeout": timeout,
        "project_root": str(project_root),
        "git": git,
        "cancel_event": f"{CANCEL_EVENT_PREFIX}{key}" if key else None,
        "live_dir": str(live_dir) if live_dir is not None else None,
    }


# --------------------------------------------------------------------------- worker side


def run_remote(task: dict[str, Any], forward: Callable[[list[str]], None] | None = None) -> dict[str, Any]:
    """Run one notebook on this machine and return its record and files (see the module doc).

    ``forward(lines)``, when given, carries metric lines to the client while the run goes on
    (a Dask worker sends them through the scheduler); it is used when the project's
    ``runs/<id>/`` cannot be written from here (or ``RESEARCH_LIVE_THROUGH_SCHEDULER`` is set)."""
    import shutil
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    from research import clock
    from research.executors.spares import SPARES
    from research.record import LIVE_FILE, METRICS_FILE, MIRROR_NOTE
    from research.runs.child import InterruptSignals, execute_notebook, read_records
    from research.runs.environment import capture_environment
    from research.runs.forkserver import start_for_process

    # A worker (or job) that runs several notebooks imports papermill and ipykernel once, in
    # its fork server; the in-process cluster's workers use the client's.
    start_for_process()
    interrupts = InterruptSignals()
    stop_watching = _watch_cancel(task.get("cancel_event"), interrupts)
    restore_signals = _route_signals(interrupts)
    stop_forwarding: Callable[[], None] = lambda: None  # noqa: E731
    scratch = Path(tempfile.mkdtemp(prefix=f"research-run-{task['run_id']}-"))
    try:
        notebook = scratch / "input" / Path(task["notebook"]).name
        notebook.parent.mkdir(parents=True)
        notebook.write_bytes(task["notebook_bytes"])
        run_dir = scratch / "run"
        run_dir.mkdir()
        live_dir = Path(task["live_dir"]) if task.get("live_dir") else None
        if live_dir is not None and live_dir.is_dir() and not os.environ.get(LIVE_THROUGH_SCHEDULER):
            # The project's runs/<id>/ is reachable from here: each metric line is mirrored there.
            (run_dir / MIRROR_NOTE).write_text(str(live_dir / LIVE_FILE), encoding="utf-8")
        elif forward is not None:
            stop_forwarding = _forward_lines(run_dir / METRICS_FILE, forward)
        project_root = Path(task["project_root"])
        cwd = project_root if project_root.is_dir() else run_dir
        if os.environ.get(
            "SUBMITIT_FOLDER"
        ):  # a line in the job's log (a Dask worker's stdout may be the CLI's)
            print(f"research: run {task['run_id']}: {task['notebook']} in {cwd}", flush=True)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="environment") as pool:
            environment = pool.submit(capture_environment, cwd)
            started_at = clock.now_iso()
            outcome = execute_notebook(
                notebook=notebook,
                output=run_dir / OUTPUT_NOTEBOOK,
                parameters=task["params"],
                run_dir=run_dir,
                cwd=cwd,
                kernel_name=task.get("kernel"),
                timeout=task.get("timeout"),
                interrupts=interrupts,
                runner=SPARES.take(),
            )
            ended_at = clock.now_iso()
            stop_forwarding()
            env = environment.result()
        # The code is the client's: its git state describes what ran.
        env.update({k: v for k, v in (task.get("git") or {}).items()})
        env["worker_cwd"] = str(cwd)
        metrics, artifacts = read_records(run_dir)
        files = {
            path.relative_to(run_dir).as_posix(): path.read_bytes()
            for path in sorted(run_dir.rglob("*"))
            if path.is_file() and path.relative_to(run_dir).as_posix() != MIRROR_NOTE
        }
        return {
            "version": PAYLOAD_VERSION,
            "run_id": task["run_id"],
            "outcome": outcome.to_dict(),
            "started_at": started_at,
            "ended_at": ended_at,
            "environment": env,
            "metrics": metrics,
            "artifacts": artifacts,
            "worker_run_dir": str(run_dir),
            "files": files,
        }
    finally:
        stop_forwarding()  # (a second call sends nothing new)
        stop_watching()
        restore_signals()
        shutil.rmtree(scratch, ignore_errors=True)


def dask_task(task: dict[str, Any]) -> dict[str, Any]:
    """The function a worker runs: announce the start, then run the notebook, sending its
    metric lines to the client on the same topic when the client's folder is out of reach."""
    from research import clock

    forward = None
    try:
        from distributed import get_worker

        worker = get_worker()
        worker.log_event(task["event_topic"], {"key": task["key"], "started_at": clock.now_iso()})

        def forward(lines: list[str]) -> None:
            worker.log_event(task["event_topic"], {"key": task["key"], "metrics": lines})
    except Exception:
        pass
    return run_remote(task, forward)


def _forward_lines(path: Path, forward: Callable[[list[str]], None]) -> Callable[[], None]:
    """Send each complete line appended to ``path`` through ``forward``, every
    ``FORWARD_EVERY_S`` and once more when stopped (the last lines of the run)."""
    finished = threading.Event()
    offset = 0

    def send_new() -> None:
        nonlocal offset
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except OSError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        if complete:
            offset += len(complete)
            with contextlib.suppress(Exception):  # a closing worker: the payload has every line anyway
                forward(complete.decode("utf-8", "replace").splitlines())

    def loop() -> None:
        while not finished.wait(FORWARD_EVERY_S):
            send_new()

    thread = threading.Thread(target=loop, name="research-live-forward", daemon=True)
    thread.start()

    def stop() -> None:
        finished.set()
        thread.join(5)
        send_new()

    return stop


def _watch_cancel(name: str | None, interrupts) -> Callable[[], None]:
    """On a Dask worker: stop the run when the client (or `research runs cancel`) sets its Event."""
    if not name:
        return lambda: None
    try:
        from distributed import Event

        event = Event(name)  # bound to this worker's client; must be made on the task's thread
        if event.is_set():
            interrupts.trigger("cancel request")
            return lambda: None
    except Exception:  # not on a Dask worker, or no scheduler to ask: nothing to watch
        return lambda: None
    finished = threading.Event()

    def watch() -> None:
        # Short questions rather than a long wait, so a closing scheduler finds no waiter.
        while not finished.wait(CANCEL_POLL_S):
            try:
                if event.is_set():
                    interrupts.trigger("cancel request")
                    return
            except Exception:
                pass

    threading.Thread(target=watch, name="research-cancel-watch", daemon=True).start()
    return finished.set


def _route_signals(interrupts) -> Callable[[], None]:
    """In a submitit job (main thread): SIGTERM/SIGINT (scancel) stop the notebook and keep its output."""
    if threading.current_thread() is not threading.main_thread() or not os.environ.get(
        "SUBMITIT_FOLDER"
    ):
        return lambda: None

    def on_signal(signum, _frame):
        interrupts.trigger(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)

    return restore


# --------------------------------------------------------------------------- client side


def _safe_relative(name: str) -> Path:
    path = Path(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"unsafe file name in a run payload: {name!r}")
    return path


def write_payload_files(run_dir: Path, payload: dict[str, Any]) -> None:
    """Write the run's files under ``run_dir``, pointing artifact records at their new place."""
    from research.record import LIVE_FILE, METRICS_FILE

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LIVE_FILE).unlink(missing_ok=True)  # the run's own metrics.jsonl, shipped here, replaces it
    worker_dir = str(payload.get("worker_run_dir") or "")
    local_dir = str(run_dir.resolve())
    for name, data in (payload.get("files") or {}).items():
        relative = _safe_relative(name)
        if relative.as_posix() == METRICS_FILE and worker_dir:
            data = _relocate_records(data, worker_dir, local_dir)
        target = run_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)


def _relocate_records(data: bytes, worker_dir: str, local_dir: str) -> bytes:
    lines = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            lines.append(line)
            continue
        path = entry.get("path") if isinstance(entry, dict) else None
        if isinstance(path, str) and (path == worker_dir or path.startswith(worker_dir + "/")):
            entry["path"] = local_dir + path[len(worker_dir) :]
            line = json.dumps(entry, ensure_ascii=False)
        lines.append(line)
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


def outcome_from_payload(payload: dict[str, Any]):
    from dataclasses import fields

    from research.runs.child import ExecutionOutcome

    known = {f.name for f in fields(ExecutionOutcome)}
    data = {k: v for k, v in (payload.get("outcome") or {}).items() if k in known}
    data.setdefault("status", "failed")
    return ExecutionOutcome(**data)
