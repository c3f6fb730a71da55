"""The Dask executor: each run is one task on a ``distributed`` cluster.

With a scheduler address (``--scheduler tcp://HOST:8786`` or ``[dask] scheduler``)
the client connects to that cluster; without one it starts a ``LocalCluster`` of
``-j`` single-threaded workers in this process, listening on 127.0.0.1 only
(the notebooks run in their own kernel processes, so worker threads suffice).

A task is ``remote.run_remote``: the worker runs the notebook in a temp folder
and returns the run's record and files; the client writes them under
``runs/<id>/``. Workers need the ``research`` package, not the database or a
shared filesystem.

* Started: the task logs an event on the topic ``research-<token>`` that the
  client subscribes to, so the row turns ``running`` when the notebook starts.
* A worker lost mid-run: the scheduler retries the task elsewhere (up to its
  ``allowed-failures``), then reports ``KilledWorker``: the run ends ``failed``
  with that reason.
* Cancel (Ctrl-C, `research runs cancel`): a ``distributed.Event`` per task,
  watched by the task, interrupts the kernel, and the notebook so far comes
  back; tasks not yet started are cancelled.
* The external id is ``<scheduler address>/<task key>``, enough for another
  process to reach the task.
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from pathlib import Path

from research.errors import ResearchError
from research.executors import Executor, ExecutorSettings, Update
from research.executors.remote import CANCEL_EVENT_PREFIX, build_task, dask_task
from research.executors.spares import SPARES
from research.record import LIVE_FILE
from research.runs.child import KILL_GRACE_S
from research.store.db import project_root_of

LOST_SCHEDULER_S = 60.0  # a client without its scheduler for this long gives its runs up
REASON_LIMIT = 300


class DaskExecutor(Executor):
    name = "dask"
    cancel_grace_s = KILL_GRACE_S + 10.0

    def __init__(
        self, db_path: Path, settings: ExecutorSettings, jobs: int = 1, timeout: float | None = None
    ) -> None:
        self.db_path = Path(db_path)
        self.root = project_root_of(self.db_path)
        self.settings = settings
        self.jobs = jobs
        self.timeout = timeout
        self.client = None
        self.cluster = None
        self.address: str | None = None
        self.topic = f"research-{uuid.uuid4().hex[:12]}"
        self.futures: dict[int, object] = {}  # run id -> Future, until it is reported
        self.keys: dict[int, str] = {}
        self.live_files: dict[int, Path] = {}  # run id -> its metrics.live.jsonl, for lines sent through the scheduler
        self.started: set[int] = set()
        self.shipped_sha256: dict[int, str] = {}
        self._events: queue.Queue = queue.Queue()
        self._cancelled: dict[int, str] = {}
        self._lost_since: float | None = None
        self._server = None  # the fork server this executor started for its in-process workers

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        import dask
        from distributed import Client, LocalCluster

        address = self.settings.get("scheduler")
        timeout = float(self.settings.get("connect_timeout", 10.0))
        # A lost worker or scheduler ends its runs with the reason; distributed's own log
        # lines and tracebacks (some logged after the client closes) would be terminal noise.
        _quiet_distributed()
        if address:
            try:
                self.client = Client(address, timeout=timeout, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise ResearchError(
                    f"cannot reach the Dask scheduler at {address}: {exc}"
                ) from None
        else:
            # One task per single-threaded worker at a time, so "running" means running. No
            # statistical profiler: it samples every worker thread each 10 ms, and ours only
            # wait for their runner processes (its CPU is taken from the notebooks').
            with dask.config.set({"distributed.scheduler.worker-saturation": 1.0,
                                  "distributed.worker.profile.enabled": False}):
                self.cluster = LocalCluster(
                    n_workers=self.jobs,
                    threads_per_worker=1,
                    processes=False,
                    host="127.0.0.1",
                    scheduler_port=0,
                    protocol="tcp://",
                    dashboard_address=None,
                )
            self.client = Client(self.cluster, set_as_default=False)
            # Our workers are threads of this process: their runners are forked by this
            # process's fork server (the CLI's, else one of ours), and the first starts now.
            from research.runs import forkserver

            if forkserver.active() is None:
                self._server = forkserver.start()
            SPARES.expect(1, self.jobs)
        self.address = self.client.scheduler.address
        self.client.subscribe_topic(self.topic, self._events.put)

    def close(self) -> None:
        if self.client is not None:
            try:
                for name in [
                    CANCEL_EVENT_PREFIX + self.keys[rid]
                    for rid in self._cancelled
                    if rid in self.keys
                ]:
                    self._event(name).clear()
            except Exception:
                pass
            self.client.close(timeout=10)
            self.client = None
        if self.cluster is not None:
            SPARES.clear()
            self.cluster.close(timeout=10)
            self.cluster = None
        if self._server is not None:
            self._server.close()
            self._server = None

    def _event(self, name: str):
        from distributed import Event

        return Event(name, client=self.client)

    # ------------------------------------------------------------------ interface

    def submit(self, runs: list) -> dict[int, str | None]:
        from research.runs.environment import git_state

        if self.client is None:
            self.start()
        commit, dirty = git_state(self.root)
        git = {"git_commit": commit, "git_dirty": dirty}
        resources = (
            {"GPU": self.settings.get("gpus_per_task")}
            if self.settings.get("gpus_per_task")
            else None
        )
        if self.cluster is not None and len(runs) > 1:  # one spare runner is already starting
            SPARES.expect(len(runs) - 1, self.jobs)
        external = {}
        for run in runs:
            key = f"research-run-{run.id}-{uuid.uuid4().hex[:8]}"
            task = build_task(run, self.root, self.timeout, git, key)
            task["event_topic"] = self.topic
            self.shipped_sha256[run.id] = task["notebook_sha256"]
            self.futures[run.id] = self.client.submit(
                dask_task, task, key=key, pure=False, resources=resources
            )
            self.keys[run.id] = key
            if task.get("live_dir"):
                self.live_files[run.id] = Path(task["live_dir"]) / LIVE_FILE
            external[run.id] = f"{self.address}/{key}"
        return external

    def poll(self, timeout: float) -> list[Update]:
        from distributed import wait

        updates: list[Update] = []
        pending = [f for f in self.futures.values() if not f.done()]
        if pending and self._events.empty():
            try:
                wait(pending, timeout=timeout, return_when="FIRST_COMPLETED")
            except TimeoutError:
                pass
            except Exception:
                time.sleep(timeout)
        by_key = {key: rid for rid, key in self.keys.items()}
        while True:
            try:
                _timestamp, message = self._events.get_nowait()
            except queue.Empty:
                break
            rid = by_key.get(message.get("key")) if isinstance(message, dict) else None
            if rid is not None and rid in self.futures and message.get("metrics"):
                self._write_live(rid, message["metrics"])
                continue
            if rid is not None and rid in self.futures and rid not in self.started:
                self.started.add(rid)
                updates.append(Update(rid, "running", started_at=message.get("started_at")))
        for rid, future in list(self.futures.items()):
            if future.done():
                updates.append(self._finished(rid, future))
                del self.futures[rid]
        updates += self._check_scheduler()
        return updates

    def _write_live(self, run_id: int, lines: list) -> None:
        """Metric lines a worker sent through the scheduler (it cannot reach the project's
        runs/<id>/): appended where `research runs show` and `runs watch` look for them."""
        path = self.live_files.get(run_id)
        if path is None:
            return
        text = "".join(f"{line}\n" for line in lines if isinstance(line, str) and line.strip())
        try:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(text)
        except OSError:  # a live view is a convenience: the run's own file comes with its result
            pass

    def _finished(self, run_id: int, future) -> Update:
        status = future.status
        if status == "finished":
            try:
                payload = future.result()
            except Exception as exc:  # the payload did not make it back
                return Update(
                    run_id,
                    "ended",
                    status="failed",
                    reason=_one_line(f"fetching the result failed: {type(exc).__name__}: {exc}"),
                )
            finally:
                future.release()
            return Update(run_id, "payload", payload=payload)
        if status == "error":
            exc = future.exception()
            future.release()
            if type(exc).__name__ == "KilledWorker":
                return Update(
                    run_id,
                    "ended",
                    status="failed",
                    reason=_one_line(f"dask worker died while running it (KilledWorker: {exc})"),
                )
            return Update(
                run_id,
                "ended",
                status="failed",
                reason=_one_line(f"dask task failed: {type(exc).__name__}: {exc}"),
            )
        if run_id in self._cancelled:
            return Update(run_id, "ended", status="interrupted", reason=self._cancelled[run_id])
        if self.client is None or self.client.status != "running":
            reason = f"lost the connection to the Dask scheduler at {self.address} (task {status})"
        else:
            reason = f"the Dask scheduler at {self.address} dropped the task ({status})"
        return Update(run_id, "ended", status="failed", reason=reason)

    def _check_scheduler(self) -> list[Update]:
        if self.client is None or self.client.status in ("running", "connecting", "newly-created"):
            self._lost_since = None
            return []
        self._lost_since = self._lost_since or time.monotonic()
        if time.monotonic() - self._lost_since < LOST_SCHEDULER_S:
            return []
        reason = f"lost the connection to the Dask scheduler at {self.address}"
        updates = [Update(rid, "ended", status="failed", reason=reason) for rid in self.futures]
        self.futures.clear()
        return updates

    def cancel(self, run_ids: list[int], reason: str) -> None:
        not_started = []
        for rid in run_ids:
            if rid not in self.keys:
                continue
            self._cancelled[rid] = reason
            try:
                self._event(CANCEL_EVENT_PREFIX + self.keys[rid]).set()
            except Exception:
                pass
            if rid not in self.started and rid in self.futures:
                not_started.append(self.futures[rid])
        if not_started:
            try:
                self.client.cancel(not_started)
            except Exception:
                pass


def _quiet_distributed() -> None:
    """Only critical records from distributed's loggers (its config gives some their own level)."""
    names = [
        n
        for n in logging.root.manager.loggerDict
        if n == "distributed" or n.startswith("distributed.")
    ]
    for name in {"distributed", *names}:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _one_line(text: str) -> str:
    """A failure reason on one line, cut to REASON_LIMIT."""
    text = " ".join(str(text).split())
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 1] + "…"


def cancel_keys(external_ids: list[str], timeout: float = 5.0) -> bool:
    """From another process: ask the tasks behind these external ids to stop. False if unreachable."""
    from distributed import Client, Event

    by_address: dict[str, list[str]] = {}
    for external in external_ids:
        address, _, key = external.rpartition("/")
        if address and key:
            by_address.setdefault(address, []).append(key)
    reached = bool(by_address)
    for address, keys in by_address.items():
        try:
            with Client(address, timeout=timeout, set_as_default=False) as client:
                for key in keys:
                    Event(CANCEL_EVENT_PREFIX + key, client=client).set()
        except (OSError, TimeoutError):
            reached = False
    return reached
