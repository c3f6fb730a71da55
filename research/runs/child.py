"""Execute one notebook run with papermill in a child process.

``execute_notebook`` starts ``python -m research.runs.papermill_child`` (its own session, so
a Ctrl-C at the terminal reaches only this process) -- or, while this process has a fork
server (``runs.forkserver``), has one forked, which behaves the same -- hands it the job on stdin
and follows its JSON-lines reports: kernel pid, cells done, and the result. The
child is what runs papermill; keeping it out of this process is what lets a
whole-run timeout or an interrupt stop a run at any point, lets several runs go
at once from a thread pool, and keeps kernel and papermill noise off the
terminal (the child's stderr is kept, and only its tail is used, in messages).

Stopping a run (timeout or interrupt) asks the child with SIGTERM: it interrupts
the kernel, lets papermill save the output notebook and shuts the kernel down.
If that takes longer than ``KILL_GRACE_S`` the child and the kernel's process
group are killed. Either way no kernel process is left behind.

Interrupts: the CLI's main thread wraps its work in ``handle_interrupts()``,
which turns SIGINT/SIGTERM into the ``INTERRUPTS`` flag that every running
``execute_notebook`` watches (a second signal skips the grace period).

Nothing heavy is imported here: papermill, nbclient and jupyter_client live in
the child only.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from research.errors import ResearchError
from research.record import METRICS_FILE, RUN_DIR_ENV
from research.vocab import ENDED_RUN_STATUSES

KILL_GRACE_S = 10.0  # how long a stopped child may take to save and shut its kernel down
STDERR_TAIL_LINES = 200
_POLL_S = 0.05


@dataclass
class ExecutionOutcome:
    """How one notebook run ended."""

    status: str  # one of vocab.ENDED_RUN_STATUSES
    reason: str | None = None  # one line; None when it succeeded
    error: dict | None = None  # cell_index, execution_count, ename, evalue, traceback, source
    duration_s: float = 0.0
    cells_done: int = 0
    cells_total: int = 0
    kernel_name: str | None = None  # the kernel actually used (argument, notebook, or python3)
    pid: int | None = None  # the child process
    kernel_pid: int | None = None
    stderr_tail: str = ""  # last lines the child, papermill or the kernel wrote to stderr
    output_exists: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- interrupts


class InterruptSignals:
    """A process-wide "stop the runs" flag, set by signals or by hand.

    ``execute_notebook`` polls it; once set, every running execution stops its
    child and returns status ``interrupted``, and new ones return at once.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._force = threading.Event()
        self.signal_name: str | None = None

    def trigger(self, signal_name: str | None = "SIGINT") -> None:
        """Ask every run to stop; a second call also skips the grace period."""
        if self._event.is_set():
            self._force.set()
        if self.signal_name is None:
            self.signal_name = signal_name
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    @property
    def forced(self) -> bool:
        return self._force.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def clear(self) -> None:
        self._event.clear()
        self._force.clear()
        self.signal_name = None

    @contextlib.contextmanager
    def handle(
        self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
    ) -> Iterator[InterruptSignals]:
        """Main thread only: route ``signals`` to ``trigger`` inside the block."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("handle_interrupts() must be used from the main thread")
        self.clear()

        def on_signal(signum, frame):
            self.trigger(signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, on_signal) for sig in signals}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


INTERRUPTS = InterruptSignals()


class RunInterrupts(InterruptSignals):
    """One run's stop flag, set for it alone (a cancelled trial) or with every run (``parent``:
    Ctrl-C, SIGTERM), so cancelling some runs leaves the process and its other work going."""

    def __init__(self, parent: InterruptSignals = INTERRUPTS) -> None:
        super().__init__()
        self.parent = parent

    def is_set(self) -> bool:
        return self._event.is_set() or self.parent.is_set()

    @property
    def forced(self) -> bool:
        return self._force.is_set() or self.parent.forced

    @property
    def signal_name(self) -> str | None:
        return self._signal_name or self.parent.signal_name

    @signal_name.setter
    def signal_name(self, value: str | None) -> None:
        self._signal_name = value


def handle_interrupts(
    signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
) -> contextlib.AbstractContextManager[InterruptSignals]:
    """``with handle_interrupts() as interrupts:`` -- SIGINT/SIGTERM set ``INTERRUPTS``."""
    return INTERRUPTS.handle(signals)


# --------------------------------------------------------------------------- execution


def _package_root() -> str:
    """The folder that holds the ``research`` package (the child must import it from there)."""
    import research

    return str(Path(research.__file__).resolve().parent.parent)


def _runner_command() -> list[str]:
    # -P: the working directory does not go first on sys.path.
    return [sys.executable, "-P", "-m", "research.runs.papermill_child"]


def _runner_env(run_dir: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if run_dir is not None:
        env[RUN_DIR_ENV] = str(run_dir)
    env["JUPYTER_PLATFORM_DIRS"] = "1"  # silences jupyter_core's platformdirs warning
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # silences debugpy's frozen-modules note
    root = _package_root()
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    return env


def _popen_runner(run_dir: Path | None) -> subprocess.Popen:
    """A runner forked by this process's fork server when one is active (``runs.forkserver``:
    no interpreter start, papermill and ipykernel already imported), else a new process."""
    from research.runs import forkserver

    env = _runner_env(run_dir)
    server = forkserver.active()
    forked = server.spawn_runner(env, os.getcwd()) if server is not None else None
    if forked is not None:
        return forked  # a ForkedRunner: the same Popen interface
    return subprocess.Popen(
        _runner_command(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
        close_fds=True,
    )


def start_runner() -> subprocess.Popen:
    """Start a runner before its job is known, so its imports overlap the caller's setup.

    Hand it to ``execute_notebook(runner=...)``; if it is never used, ``discard_runner``
    (closing its stdin makes it exit at once).
    """
    return _popen_runner(None)


def discard_runner(runner: subprocess.Popen | None) -> None:
    if runner is None or runner.poll() is not None:
        return
    for stream in (runner.stdin, runner.stdout, runner.stderr):
        with contextlib.suppress(OSError):
            stream.close()
    try:
        runner.wait(timeout=5)
    except subprocess.TimeoutExpired:
        runner.kill()
        runner.wait()


def _read_events(stream, events: queue.Queue) -> None:
    try:
        for raw in stream:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                message = {"event": "log", "line": line}
            events.put(message)
    except (OSError, ValueError):
        pass
    finally:
        events.put({"event": "eof"})


# Lines kernels print on every start that say nothing about the run.
_NOISE = ("Kernel is running over TCP without encryption",)


def _read_stderr(stream, tail: collections.deque, events: queue.Queue | None) -> None:
    """Keep the tail of the child's stderr; with ``events``, also pass each line on."""
    try:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if any(marker in line for marker in _NOISE):
                continue
            tail.append(line)
            if events is not None:
                events.put({"event": "stderr", "line": line})
    except (OSError, ValueError):
        pass


def _default_echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _ProcessRef:
    """A pid plus its start time, so that a reused pid is never killed."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.create_time = None
        try:
            import psutil

            self.create_time = psutil.Process(pid).create_time()
        except Exception:
            pass

    def alive(self) -> bool:
        import psutil

        try:
            proc = psutil.Process(self.pid)
            if self.create_time is not None and proc.create_time() != self.create_time:
                return False
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def kill_group(self) -> None:
        """SIGKILL the process, its process group (a kernel leads its own) and its children."""
        import psutil

        if not self.alive():
            return
        try:
            proc = psutil.Process(self.pid)
            children = proc.children(recursive=True)
        except psutil.Error:
            children = []
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        for p in [*children, psutil.Process(self.pid) if self.alive() else None]:
            if p is not None:
                with contextlib.suppress(psutil.Error):
                    p.kill()


def execute_notebook(
    notebook: Path,
    output: Path,
    parameters: dict,
    run_dir: Path,
    cwd: Path,
    kernel_name: str | None = None,
    timeout: float | None = None,
    log_output: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_heartbeat: Callable[[], None] | None = None,
    heartbeat_interval: float = 2.0,
    *,
    on_log: Callable[[str], None] | None = None,
    interrupts: InterruptSignals | None = None,
    kill_grace: float = KILL_GRACE_S,
    runner: subprocess.Popen | None = None,
) -> ExecutionOutcome:
    """Run ``notebook`` with ``parameters`` (already typed) into ``output``; never raises
    for a failing notebook, only for bad arguments or a callback's own exception.

    ``run_dir`` becomes ``RESEARCH_RUN_DIR`` for the kernel, so ``research.record``
    writes its ``metrics.jsonl`` there. Callbacks run on the calling thread:
    ``on_start(child_pid)``, ``on_progress(cells_done, cells_total)``, and
    ``on_heartbeat()`` every ``heartbeat_interval`` seconds while the child runs.
    With ``log_output`` the notebook's output (papermill's log) goes, line by line,
    to ``on_log`` (also on the calling thread) or else to stderr; without it the
    child prints nothing. ``interrupts`` defaults to ``INTERRUPTS``; once it is
    set, the run stops and comes back ``interrupted``. ``kill_grace`` is how long
    a stopped child may take to save the notebook and shut its kernel down before
    it and the kernel are killed.
    """
    interrupts = INTERRUPTS if interrupts is None else interrupts
    notebook, output, run_dir, cwd = (Path(p).resolve() for p in (notebook, output, run_dir, cwd))
    started = time.monotonic()

    def elapsed() -> float:
        return round(time.monotonic() - started, 3)

    def outcome(status: str, reason: str | None, duration_s: float | None = None, **fields) -> ExecutionOutcome:
        return ExecutionOutcome(
            status=status,
            reason=reason,
            duration_s=elapsed() if duration_s is None else duration_s,
            output_exists=output.exists(),
            **fields,
        )

    if interrupts.is_set():
        return outcome("interrupted", _interrupt_reason(interrupts), kernel_name=kernel_name)
    if not notebook.is_file():
        raise ResearchError(f"notebook not found: {notebook}")
    output.parent.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)

    job = {
        "notebook": str(notebook),
        "output": str(output),
        "parameters": parameters or {},
        "cwd": str(cwd),
        "kernel_name": kernel_name,
        "log_output": bool(log_output),
    }
    if runner is not None and runner.poll() is None:
        proc = runner  # started early by start_runner(); the job names its run folder
        job["run_dir"] = str(run_dir)
    else:
        proc = _popen_runner(run_dir)
    events: queue.Queue = queue.Queue()
    tail: collections.deque = collections.deque(maxlen=STDERR_TAIL_LINES)
    echo = (on_log or _default_echo) if log_output else None
    readers = [
        threading.Thread(target=_read_events, args=(proc.stdout, events), daemon=True),
        threading.Thread(
            target=_read_stderr, args=(proc.stderr, tail, events if echo else None), daemon=True
        ),
    ]
    for reader in readers:
        reader.start()

    result: dict | None = None
    kernel: _ProcessRef | None = None
    kernel_used = False  # a prestarted kernel counts once the job takes it
    cells_done = cells_total = 0
    resolved_kernel = kernel_name
    stopped_for: str | None = None  # "timeout" | "interrupted"
    stop_reason: str | None = None
    kill_at: float | None = None
    killed = False
    eof = False
    try:
        try:
            proc.stdin.write((json.dumps(job) + "\n").encode())
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child died at once; its exit code tells
        if on_start is not None:
            on_start(proc.pid)
        deadline = started + timeout if timeout else None
        next_beat = time.monotonic() + heartbeat_interval
        while not eof:
            try:
                message = events.get(timeout=_POLL_S)
            except queue.Empty:
                message = None
            while message is not None:
                kind = message.get("event")
                if kind == "eof":
                    eof = True
                elif kind == "start":
                    cells_total = int(message.get("cells_total") or 0)
                    if on_progress is not None:
                        on_progress(cells_done, cells_total)
                elif kind == "progress":
                    cells_done = int(message.get("done") or 0)
                    cells_total = int(message.get("total") or cells_total)
                    if on_progress is not None:
                        on_progress(cells_done, cells_total)
                elif kind == "kernel" and message.get("pid"):
                    kernel = _ProcessRef(int(message["pid"]))  # to kill, even if never used
                    kernel_used = not message.get("prestarted")
                elif kind == "kernel_name":
                    resolved_kernel = message.get("name") or resolved_kernel
                elif kind == "result":
                    result = message
                elif kind == "stderr" and echo is not None:
                    echo(message.get("line", ""))
                elif kind == "log":
                    tail.append(message.get("line", ""))
                try:
                    message = events.get_nowait()
                except queue.Empty:
                    message = None
            now = time.monotonic()
            if stopped_for is None:
                if deadline is not None and now >= deadline:
                    stopped_for = "timeout"  # its reason, with how long it took, once it has ended
                elif interrupts.is_set():
                    stopped_for, stop_reason = "interrupted", _interrupt_reason(interrupts)
                if stopped_for is not None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)
                    kill_at = now + kill_grace
            if stopped_for is not None and not killed and (now >= kill_at or interrupts.forced):
                _kill(proc, kernel)
                killed = True
            if on_heartbeat is not None and now >= next_beat:
                on_heartbeat()
                next_beat = now + heartbeat_interval
    finally:
        if proc.poll() is None and not eof:  # we are leaving early (a callback raised)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=kill_grace)
            except subprocess.TimeoutExpired:
                _kill(proc, kernel)
        try:
            proc.wait(timeout=kill_grace)
        except subprocess.TimeoutExpired:
            _kill(proc, kernel)
            proc.wait()
        if kernel is not None and kernel.alive():
            kernel.kill_group()
        with contextlib.suppress(OSError):
            proc.stdin.close()
        for reader in readers:
            reader.join(timeout=1.0)
        for stream in (proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()
    while echo is not None:  # output the child wrote last
        try:
            message = events.get_nowait()
        except queue.Empty:
            break
        if message.get("event") == "stderr":
            echo(message.get("line", ""))

    common = {
        "cells_done": cells_done,
        "cells_total": cells_total,
        "kernel_name": (result or {}).get("kernel_name") or resolved_kernel,
        "pid": proc.pid,
        "kernel_pid": kernel.pid if kernel and kernel_used else None,
        "stderr_tail": "\n".join(list(tail)[-40:]),
    }
    if result is not None and result.get("status") == "succeeded":
        return outcome("succeeded", None, **common)  # it finished as it was being stopped
    if stopped_for == "timeout":
        # Stopping takes a while (the notebook is saved, the kernel shut down, or the grace
        # runs out): say how long the run really took, beside the limit it ran past.
        took = elapsed()
        return outcome("timeout", f"timed out after {took:.1f} s (limit {timeout:g} s)", took, **common)
    if stopped_for is not None:
        return outcome(stopped_for, stop_reason, **common)
    if result is not None and result.get("status") in ENDED_RUN_STATUSES:
        return outcome(result["status"], result.get("reason"), error=result.get("error"), **common)
    return outcome("failed", _describe_child_exit(proc.returncode, tail), **common)


def _interrupt_reason(interrupts: InterruptSignals) -> str:
    return f"interrupted by {interrupts.signal_name}" if interrupts.signal_name else "interrupted"


def _kill(proc: subprocess.Popen, kernel: _ProcessRef | None) -> None:
    """SIGKILL the child (it leads its own session) and the kernel's process group."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
    if kernel is not None:
        kernel.kill_group()


def _describe_child_exit(returncode: int | None, tail) -> str:
    if returncode is not None and returncode < 0:
        try:
            how = f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"killed by signal {-returncode}"
    else:
        how = f"exit code {returncode}"
    last = next((line.strip() for line in reversed(tail) if line.strip()), "")
    reason = f"runner process died ({how})"
    return f"{reason}: {last[:200]}" if last else reason


# --------------------------------------------------------------------------- results


def read_records(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(metrics, artifacts) appended by ``research.record`` during a run.

    A line that does not parse (a run killed mid-write) is skipped.
    """
    path = Path(run_dir) / METRICS_FILE
    metrics: list[dict] = []
    artifacts: list[dict] = []
    if not path.is_file():
        return metrics, artifacts
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(entry, dict):
                continue
            if entry.get("kind") == "artifact":
                artifacts.append(entry)
            elif entry.get("kind", "metric") == "metric" and "name" in entry:
                metrics.append(entry)
    return metrics, artifacts


__all__ = [
    "ExecutionOutcome",
    "INTERRUPTS",
    "InterruptSignals",
    "execute_notebook",
    "handle_interrupts",
    "read_records",
]
