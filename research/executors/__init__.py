"""Where runs execute: one interface (start, submit, poll, cancel) and three engines.

* ``local`` -- the runner's thread pool on this machine (``runs.run_in_parallel``);
  each run records itself as it goes, exactly as before executors existed.
* ``dask`` -- a ``distributed.Client`` to ``tcp://HOST:8786`` or, with no address, a
  ``LocalCluster`` of ``-j`` single-threaded workers. Each task runs the notebook on
  its worker and sends back the run's record and files (``executors.remote``).
* ``slurm`` -- submitit: a sweep is one job array; results come back as submitit's
  result files under ``runs/.submitit/``. ``cluster = "local"`` swaps in submitit's
  local executor through the same code path (tests, a laptop).

The database stays with the client. ``driver.submit`` and ``driver.follow`` submit
runs and follow the executor's updates into the database, and on Ctrl-C cancels on the engine;
``control.sync_runs`` collects what finished while nobody waited, and
``control.cancel_runs`` stops runs from another process. Engines are imported
only inside the executor that needs them, so the CLI starts fast.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from research.errors import ResearchError
from research.executors.settings import EXECUTORS, ExecutorSettings, load_settings


@dataclass
class Update:
    """Something an executor learned about one run.

    kind: ``running`` (it started; ``started_at`` if known), ``payload`` (a remote run
    finished and sent its record and files), ``ended`` (the engine ended it without a
    result: ``status`` and ``reason`` say why), or ``recorded`` (a local run, already
    written to the database; ``result`` is its RunResult).
    """

    run_id: int
    kind: str
    payload: dict[str, Any] | None = None
    status: str | None = None
    reason: str | None = None
    result: Any = None
    started_at: str | None = None


class Executor(ABC):
    """Runs queued run rows somewhere and reports on them."""

    name: ClassVar[str]
    # After cancel(): how long to wait for runs to report (their notebook so far) before
    # marking them interrupted; None waits for every run to report.
    cancel_grace_s: ClassVar[float | None] = 20.0

    def start(self) -> None:  # noqa: B027 - optional hook
        """Connect or check the engine; raises ResearchError before any row is written."""

    @abstractmethod
    def submit(self, runs: list) -> dict[int, str | None]:
        """Start these queued runs (Run rows); returns each run's external id (or None)."""

    def expect(self, runs: int) -> None:  # noqa: B027 - optional hook
        """``runs`` more runs will be submitted one at a time; an engine may prepare for them."""

    @abstractmethod
    def poll(self, timeout: float) -> list[Update]:
        """What happened since the last poll; waits up to ``timeout`` seconds for news."""

    @abstractmethod
    def cancel(self, run_ids: list[int], reason: str) -> None:
        """Stop these runs on the engine."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine (a local cluster, a client connection)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def start_in_background(executor: Executor):
    """Start ``executor`` on a thread (importing the engine overlaps planning); returns ``wait``.

    ``wait()`` joins it and re-raises what ``start`` raised; ``wait(raise_errors=False)`` only joins.
    """
    import threading

    failure: list[BaseException] = []

    def target() -> None:
        try:
            executor.start()
        except BaseException as exc:  # handed to the caller's thread by wait()
            failure.append(exc)

    thread = threading.Thread(target=target, name="executor-start", daemon=True)
    thread.start()

    def wait(raise_errors: bool = True) -> None:
        thread.join()
        if raise_errors and failure:
            raise failure[0]

    return wait


# The engine's importable module, per executor that needs one (the `executors` extra).
ENGINE_MODULES = {"dask": "distributed", "slurm": "submitit"}


def _require_engine(executor: str) -> None:
    """A clear error, before any row is written, when the engine is not installed."""
    import importlib.util

    module = ENGINE_MODULES.get(executor)
    if module and importlib.util.find_spec(module) is None:
        raise ResearchError(
            f"the {executor} executor needs {module}: pip install 'research[executors]'"
        )


def make_executor(
    settings: ExecutorSettings,
    db_path: Path,
    jobs: int = 1,
    timeout: float | None = None,
    log_output: bool = False,
    on_progress=None,
    runner=None,
) -> Executor:
    """The executor ``settings`` names, configured for one `research run`."""
    _require_engine(settings.executor)
    if settings.executor == "local":
        from research.executors.local import LocalExecutor

        return LocalExecutor(db_path, jobs, timeout, log_output, on_progress, runner)
    if settings.executor == "dask":
        from research.executors.dask_executor import DaskExecutor

        return DaskExecutor(db_path, settings, jobs, timeout)
    from research.executors.slurm_executor import SlurmExecutor

    return SlurmExecutor(db_path, settings, jobs, timeout)


__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorSettings",
    "Update",
    "load_settings",
    "make_executor",
    "start_in_background",
]
