"""The Slurm executor, through submitit: a sweep is one job array.

``submitit.AutoExecutor(folder="runs/.submitit/%j")`` pickles each run's task
(``remote.run_remote`` and its ``build_task`` dict) into that folder, which the
cluster shares with this machine, and ``map_array`` submits all of a sweep's
runs as one array (``array_parallelism`` at once). Each job writes submitit's
result file next to its logs; the client -- the waiting `research run`, or any
later `research runs` -- reads it and ingests the run. The job id (``123_4``)
is the run's external id.

``cluster = "local"`` uses submitit's LocalExecutor instead (one process per
run on this machine; its external ids are ``local:<pid>``), through the same
code path: tests use it, and it lets a laptop try a Slurm setup.

A job that ends without a result file (cancelled, out of time, node failure)
closes its run with Slurm's state as the reason: CANCELLED is ``interrupted``,
TIMEOUT is ``timeout``, anything else ``failed``.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from pathlib import Path

from research.errors import ResearchError
from research.executors import Executor, ExecutorSettings, Update
from research.executors.remote import build_task, run_remote
from research.runs.child import KILL_GRACE_S
from research.store.db import project_root_of

SUBMITIT_DIR = "runs/.submitit"
LOCAL_PREFIX = "local:"
DEFAULT_TIME_LIMIT_MIN = 60
SACCT_EVERY_S = 10.0  # while waiting, ask Slurm about jobs without a result this often
WAITING = {"PENDING", "REQUEUED", "CONFIGURING", "RESIZING", "SUSPENDED", "UNKNOWN", "READY", ""}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


def submitit_folder(project_root: Path) -> Path:
    return Path(project_root) / SUBMITIT_DIR / "%j"


class SlurmExecutor(Executor):
    name = "slurm"
    cancel_grace_s = (
        KILL_GRACE_S + 25.0
    )  # Slurm's KillWait is 30 s: a job may still send its notebook

    def __init__(
        self, db_path: Path, settings: ExecutorSettings, jobs: int = 1, timeout: float | None = None
    ) -> None:
        self.db_path = Path(db_path)
        self.root = project_root_of(self.db_path)
        self.settings = settings
        self.jobs = jobs
        self.timeout = timeout
        self.cluster = settings.get("cluster", "slurm")
        self.executor = None
        self.submitted: dict[int, object] = {}  # run id -> submitit Job, until it is reported
        self.external: dict[int, str] = {}
        self.started: set[int] = set()
        self.shipped_sha256: dict[int, str] = {}
        self._next_sacct = 0.0
        if self.cluster == "local":
            self.cancel_grace_s = (
                KILL_GRACE_S  # the local controller kills its job within a second or two
            )

    def start(self) -> None:
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ResearchError(
                'sbatch not found: run this on a Slurm login node, or set cluster = "local" '
                "([tool.research.slurm] or -E cluster=local) to use submitit's local executor"
            )
        import submitit

        folder = submitit_folder(self.root)
        self.executor = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        try:
            self.executor.update_parameters(**self.parameters())
        except (ValueError, NameError, AssertionError) as exc:
            raise ResearchError(f"bad slurm settings: {exc}") from None

    def parameters(self) -> dict:
        """submitit parameters from the settings (generic ones, and slurm_* for Slurm only)."""
        get = self.settings.get
        time_limit = get("time_limit")
        if time_limit is None:
            time_limit = (
                max(DEFAULT_TIME_LIMIT_MIN, math.ceil(self.timeout / 60) + 5)
                if self.timeout
                else DEFAULT_TIME_LIMIT_MIN
            )
        params: dict = {
            "timeout_min": int(time_limit),
            "nodes": 1,
            "tasks_per_node": 1,
            "name": get("job_name", "research"),
        }
        if get("gpus_per_task"):
            params["gpus_per_node"] = int(get("gpus_per_task"))
        if get("cpus_per_task"):
            params["cpus_per_task"] = int(get("cpus_per_task"))
        if get("mem_gb"):
            params["mem_gb"] = float(get("mem_gb"))
        parallelism = get("array_parallelism") or (self.jobs if self.jobs > 1 else None)
        if parallelism:
            params["slurm_array_parallelism"] = int(parallelism)
        for key in ("partition", "account", "qos", "constraint", "setup"):
            if get(key):
                params[f"slurm_{key}"] = get(key)
        return params

    # ------------------------------------------------------------------ interface

    def submit(self, runs: list) -> dict[int, str | None]:
        from research.runs.environment import git_state

        if self.executor is None:
            self.start()
        commit, dirty = git_state(self.root)
        git = {"git_commit": commit, "git_dirty": dirty}
        tasks = [build_task(run, self.root, self.timeout, git) for run in runs]
        for task in tasks:
            self.shipped_sha256[task["run_id"]] = task["notebook_sha256"]
        jobs = self.executor.map_array(run_remote, tasks)  # one job array on Slurm
        for run, job in zip(runs, jobs, strict=True):
            self.submitted[run.id] = job
            self.external[run.id] = (LOCAL_PREFIX if self.cluster == "local" else "") + str(
                job.job_id
            )
        return dict(self.external)

    def poll(self, timeout: float) -> list[Update]:
        if not self.submitted:
            time.sleep(timeout)
            return []
        ask_slurm = time.monotonic() >= self._next_sacct
        if ask_slurm:
            self._next_sacct = time.monotonic() + SACCT_EVERY_S
        rows = [(rid, self.external[rid]) for rid in self.submitted]
        updates = []
        for update in job_updates(self.root, rows, self.submitted, ask_slurm=ask_slurm):
            if update.kind == "running":
                if update.run_id in self.started:
                    continue
                self.started.add(update.run_id)
            else:
                self.submitted.pop(update.run_id, None)
            updates.append(update)
        if not updates:
            time.sleep(timeout)
        return updates

    def cancel(self, run_ids: list[int], reason: str) -> None:
        self._cancelled = [rid for rid in run_ids if rid in self.external]
        cancel_jobs(self.root, [self.external[rid] for rid in self._cancelled])

    def close(self) -> None:
        # Local jobs that did not stop in the grace period: their controller kills them.
        stuck = [
            self.external[rid] for rid in getattr(self, "_cancelled", []) if rid in self.submitted
        ]
        if self.cluster == "local" and stuck:
            cancel_jobs(self.root, stuck, force=True)


# --------------------------------------------------------------------------- jobs from ids


def _job(project_root: Path, external_id: str):
    import submitit
    from submitit.local.local import LocalJob

    folder = submitit_folder(project_root)
    if external_id.startswith(LOCAL_PREFIX):
        return LocalJob(folder=folder, job_id=external_id[len(LOCAL_PREFIX) :])
    return submitit.SlurmJob(folder=folder, job_id=external_id)


def _result_path(job) -> Path:
    path = job.paths.result_pickle
    try:  # refresh a network filesystem's view of the folder, as submitit does
        folder = path.parent
        folder.chmod(folder.stat().st_mode)
    except OSError:
        pass
    return path


def _log_tail(job) -> str:
    try:
        text = job.paths.stderr.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _local_state(job) -> str:
    """RUNNING, or how a submitit-local job's controller ended: FINISHED, KILLED or GONE."""
    from research.runs.recovery import pid_alive

    process = getattr(job, "_process", None)
    if process is not None:
        code = process.poll()
        if code is None:
            return "RUNNING"
        return "KILLED" if code < 0 else "FINISHED"
    return "RUNNING" if pid_alive(int(job.job_id)) else "GONE"


def job_updates(
    project_root: Path,
    rows: list[tuple[int, str]],
    held: dict | None = None,
    ask_slurm: bool = True,
) -> list[Update]:
    """Updates for runs with these external ids: results to ingest, starts, and ends without a result."""
    from submitit.core.utils import pickle_load

    updates: list[Update] = []
    jobs = {}
    for run_id, external_id in rows:
        if not external_id:
            continue
        jobs[run_id] = (held or {}).get(run_id) or _job(project_root, external_id)
    slurm_ids = [ext for rid, ext in rows if rid in jobs and not ext.startswith(LOCAL_PREFIX)]
    states = slurm_states(slurm_ids) if slurm_ids and ask_slurm else {}
    for run_id, job in jobs.items():
        external_id = dict(rows)[run_id]
        local = external_id.startswith(LOCAL_PREFIX)
        state = _local_state(job) if local else states.get(external_id, "")
        path = _result_path(job)
        if path.exists():
            try:
                outcome, value = pickle_load(path)
            except Exception as exc:  # half-written (still being moved into place): next time
                if local and state == "RUNNING" or not local:
                    continue
                updates.append(
                    Update(
                        run_id,
                        "ended",
                        status="failed",
                        reason=f"unreadable result file {path.name}: {exc}",
                    )
                )
                continue
            if outcome == "success":
                updates.append(Update(run_id, "payload", payload=value))
            else:
                updates.append(_failed_job(run_id, external_id, str(value)))
            continue
        if state in RUNNING:
            updates.append(Update(run_id, "running"))
        elif state in WAITING or (not local and not ask_slurm):
            continue
        else:
            updates.append(_ended_without_result(run_id, external_id, state, _log_tail(job)))
    return updates


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm's state of each job (``123_4``): from sacct, or, where accounting is off, from squeue.

    With squeue, a job that has left the queue is ``GONE``; a job Slurm does not
    mention (yet) is left out, as is everything when Slurm cannot be asked.
    """
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    wanted = set(job_ids)
    states: dict[str, str] = {}
    if shutil.which("sacct"):
        cmd = ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(arrays)]
        proc = _ask(cmd)
        if proc is not None and proc.returncode == 0:
            for line in proc.stdout.splitlines():
                job_id, _, state = line.partition("|")
                if job_id in wanted:
                    states[job_id] = state.split(" ")[0].upper()
            return states
    if shutil.which("squeue"):
        import getpass

        proc = _ask(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"])
        if proc is not None and proc.returncode == 0:
            queued = dict(
                line.partition("|")[::2] for line in proc.stdout.splitlines() if "|" in line
            )
            return {job_id: queued.get(job_id, "GONE").upper() for job_id in job_ids}
    return states


def _ask(cmd: list[str]):
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return None


def _failed_job(run_id: int, external_id: str, trace: str) -> Update:
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    last = lines[-1][:200] if lines else "no traceback"
    status = "timeout" if "timed-out" in trace else "failed"
    return Update(run_id, "ended", status=status, reason=f"slurm job {external_id} raised {last}")


def _ended_without_result(run_id: int, external_id: str, state: str, tail: str) -> Update:
    if state.startswith("CANCELLED") or state == "KILLED":
        status = "interrupted"
    elif state == "TIMEOUT":
        status = "timeout"
    else:
        status = "failed"
    how = {"FINISHED": "exited", "GONE": "is gone", "KILLED": "was killed"}.get(
        state, f"ended {state}"
    )
    reason = f"slurm job {external_id} {how} without a result"
    return Update(run_id, "ended", status=status, reason=f"{reason}: {tail}" if tail else reason)


def cancel_jobs(project_root: Path, external_ids: list[str], force: bool = False) -> None:
    """scancel Slurm jobs (Slurm sends SIGTERM, then SIGKILL after its KillWait).

    A submitit-local job's controller gets SIGTERM, which it passes to the job: the
    notebook stops and its result (the notebook so far) is still written. With
    ``force`` it gets SIGINT, on which it kills the job.
    """
    import os
    import signal

    from research.runs.recovery import pid_alive

    slurm_ids = [e for e in external_ids if e and not e.startswith(LOCAL_PREFIX)]
    for external_id in external_ids:
        if external_id and external_id.startswith(LOCAL_PREFIX):
            pid = int(external_id[len(LOCAL_PREFIX) :])
            if pid_alive(pid):
                os.kill(pid, signal.SIGINT if force else signal.SIGTERM)
    if slurm_ids:
        if shutil.which("scancel") is None:
            raise ResearchError("scancel not found: cancel the jobs on a Slurm login node")
        proc = subprocess.run(["scancel", *slurm_ids], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise ResearchError(f"scancel failed: {proc.stderr.strip() or proc.returncode}")
