"""The local executor: the runner's thread pool, behind the executor interface.

``submit`` hands the runs to ``runs.run_in_parallel`` on a background thread
(up to ``-j`` at once, each in its own kernel process); every run records
itself through ``runs.execute_run`` as it goes, and ``poll`` passes the
finished ones on. Each run watches its own stop flag (``child.RunInterrupts``), which
Ctrl-C and SIGTERM set for every run: cancelling runs stops those alone, so a sweep that
cancels its trials (fail-fast) leaves the `queue work` process driving it at work.

Runners come from a fork server (``runs.forkserver``): one process per ``research run``
that imported papermill and ipykernel once and forks each run's runner and kernel, so a
run pays neither import. The executor starts one unless the CLI already has (it starts
its own early, with ``--preload``, so the imports overlap planning). A sweep also keeps
spare runners: when a run takes its runner, another is forked for a run still to come, so
starting its kernel overlaps the runs before.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from research.executors import Executor, Update


class LocalExecutor(Executor):
    name = "local"
    cancel_grace_s = None  # execute_notebook stops its own runs (and kills after its grace)

    def __init__(
        self,
        db_path: Path,
        jobs: int = 1,
        timeout: float | None = None,
        log_output: bool = False,
        on_progress=None,
        runner=None,
        preload: tuple[str, ...] = (),
    ) -> None:
        self.db_path = Path(db_path)
        self.jobs = jobs
        self.timeout = timeout
        self.log_output = log_output
        self.on_progress = on_progress
        self.runner = runner  # a started runs.child.start_runner() for the first run
        self.preload = tuple(preload)  # modules the fork server imports, if this starts it
        self._server = None  # the fork server this executor started (and ends)
        self._spares = None
        self._announced = 0  # runs announced by expect() and not submitted yet
        self._done: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._flags: dict = {}  # run id -> its child.RunInterrupts

    def submit(self, runs: list) -> dict[int, str | None]:
        from research.executors.spares import SparePool
        from research.runs import forkserver
        from research.runs.child import RunInterrupts
        from research.runs.lifecycle import execute_run
        from research.runs.pool import run_in_parallel

        run_ids = [run.id for run in runs]
        for rid in run_ids:
            self._flags[rid] = RunInterrupts()
        if forkserver.active() is None:
            self._server = forkserver.start(self.preload)
        if self._spares is None:
            self._spares = SparePool(first=self.runner)
        spares = self._spares
        announced = min(len(run_ids), self._announced)  # their spares are already on the way
        self._announced -= announced
        spares.expect(len(run_ids) - announced, self.jobs)
        tasks = [
            (
                lambda rid=rid: execute_run(
                    self.db_path,
                    rid,
                    timeout=self.timeout,
                    log_output=self.log_output,
                    on_progress=self.on_progress,
                    runner=spares.take(),
                    interrupts=self._flags[rid],
                )
            )
            for rid in run_ids
        ]

        def work() -> None:
            try:
                run_in_parallel(tasks, self.jobs, on_done=self._done.put)
            except BaseException as exc:  # surfaced by poll() on the caller's thread
                self._error = exc
                self._done.put(None)

        self._thread = threading.Thread(target=work, name="local-runs", daemon=True)
        self._thread.start()
        return {rid: None for rid in run_ids}

    def expect(self, runs: int) -> None:
        """``runs`` more runs will be submitted one by one (a search's trials): their spare
        runners start now, so each trial's kernel is ready when it is asked for."""
        from research.executors.spares import SparePool
        from research.runs import forkserver

        if forkserver.active() is None:
            self._server = forkserver.start(self.preload)
        if self._spares is None:
            self._spares = SparePool(first=self.runner)
        self._announced += runs
        self._spares.expect(runs, self.jobs)

    def poll(self, timeout: float) -> list[Update]:
        updates = []
        try:
            item = self._done.get(timeout=timeout)
            while True:
                if item is None and self._error is not None:
                    raise self._error
                updates.append(Update(item.run_id, "recorded", result=item, status=item.status))
                item = self._done.get_nowait()
        except queue.Empty:
            pass
        return updates

    def cancel(self, run_ids: list[int], reason: str) -> None:
        for rid in run_ids:
            flag = self._flags.get(rid)
            if flag is not None and not flag.is_set():
                flag.trigger("cancel request")

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=0.1)
        if self._spares is not None:
            self._spares.clear()
        if self._server is not None:
            self._server.close()  # the runs are over; a runner still ending goes on alone
            self._server = None
