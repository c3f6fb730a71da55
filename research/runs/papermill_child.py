"""Child process that runs one notebook with papermill; started by ``research.runs.child``.

Run as ``python -m research.runs.papermill_child``. Protocol with the parent:

* stdin: one JSON line, the job; the parent then keeps stdin open. End of file on
  stdin means the parent is gone, and ends the run as SIGTERM does.
* the original stdout: JSON lines ``{"event": ...}`` -- ``start`` (cells_total),
  ``kernel`` (pid), ``progress`` (done, total) and last ``result`` (status, reason,
  error, cells_done, cells_total, kernel_name). Everything else that this process,
  papermill or the kernel prints goes to stderr, which the parent keeps the tail of.

While it waits for the job, the runner imports papermill and starts the default
kernel (``python3``), so neither is paid after the job arrives. A job for another
kernel shuts that one down and starts its own; a reused kernel is moved to the
job's working directory and given the run's ``RESEARCH_RUN_DIR`` before any cell.

SIGTERM or SIGINT: the kernel gets SIGINT (a KeyboardInterrupt in the running
cell), no further cell starts, and the kernel is killed if it has not stopped
within ``INTERRUPT_GRACE_S``. Either way papermill saves the output notebook, this
process shuts the kernel down, and the result says ``interrupted``.

Under a fork server (``runs.forkserver``) this module's ``main`` runs in a process forked
from the server instead, with papermill already imported, and the python3 kernel is forked
too (``runs.kernel_fork``); the protocol and everything below are the same.

papermill runs the notebook through its own engine machinery: ``_engine`` registers a
subclass of papermill's nbclient engine that overrides only ``execute_managed_notebook``
(papermill's documented extension point) and hands nbclient the kernel started here.
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import sys
import threading
import time

from research.record import RUN_DIR_ENV

INTERRUPT_GRACE_S = 3.0
NO_PRESTART_ENV = "RESEARCH_NO_PRESTART"  # set: start the kernel only once the job is known
DEFAULT_KERNEL = "python3"
KERNEL_ARGUMENTS = ["--HistoryManager.hist_file=:memory:"]  # what nbclient gives the kernels it starts
ENGINE_NAME = "research"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")


class _Terminated(BaseException):
    """Raised inside the run to stop before the next cell once termination is asked."""


class _State:
    def __init__(self) -> None:
        self.terminating = False
        self.signal_name: str | None = None
        self.finished = False
        self.kernel_process = None  # subprocess.Popen of the kernel, once started
        self.kernel_pgid: int | None = None
        self.kill_timer: threading.Timer | None = None
        self.cell_index: int | None = None  # index (in the executed notebook) of the running cell
        self.cells_done = 0
        self.cells_total = 0
        self.nb = None  # the executed notebook object
        self.prestarted = None  # kernel manager of the kernel started before the job came
        self.kernel_manager = None  # the job's kernel manager, once it has one


STATE = _State()
_proto = None


def _emit(event: str, **fields) -> None:
    if _proto is None:
        return
    try:
        _proto.write(json.dumps({"event": event, **fields}, default=str) + "\n")
        _proto.flush()
    except (OSError, ValueError):
        pass  # the parent is gone; the stdin watchdog ends the run


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


# --------------------------------------------------------------------------- termination


def _signal_kernel(sig: int) -> None:
    proc = STATE.kernel_process
    if proc is None or proc.returncode is not None:  # not started, or already reaped
        return
    try:
        os.killpg(STATE.kernel_pgid or proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _interrupt_kernel() -> None:
    if STATE.kernel_process is None or STATE.kill_timer is not None:
        return
    _signal_kernel(signal.SIGINT)
    timer = threading.Timer(INTERRUPT_GRACE_S, _signal_kernel, args=(signal.SIGKILL,))
    timer.daemon = True
    STATE.kill_timer = timer
    timer.start()


def _on_signal(signum, frame) -> None:
    STATE.terminating = True
    if STATE.signal_name is None:
        STATE.signal_name = signal.Signals(signum).name
    _interrupt_kernel()


def _watch_parent() -> None:
    """Block on stdin; end of file means the parent died: stop like on SIGTERM."""
    try:
        while os.read(0, 65536):
            pass
    except OSError:
        pass
    if not STATE.finished:
        STATE.signal_name = STATE.signal_name or "parent exit"
        os.kill(os.getpid(), signal.SIGTERM)


def _read_job() -> dict | None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(0, 65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data) if data.strip() else None


# --------------------------------------------------------------------------- papermill engine


_ENGINE = None


def _engine():
    """Our papermill engine, registered under ``ENGINE_NAME``: papermill's nbclient engine with
    the one method papermill's docs name for extension, ``execute_managed_notebook``,
    wrapped to report progress and stop on request, and to run on the kernel we started."""
    global _ENGINE
    if _ENGINE is not None:
        return _ENGINE
    from papermill.engines import NBClientEngine

    class Engine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, research_kernel_meta=None, **kwargs):
            _observe(nb_man, research_kernel_meta or {})
            # nbclient runs the notebook on the kernel manager it is given and leaves the
            # kernel to its owner (this process shuts it down).
            return super().execute_managed_notebook(nb_man, kernel_name, km=STATE.kernel_manager, **kwargs)

    _ENGINE = Engine
    return Engine


def _observe(nb_man, kernel_meta: dict) -> None:
    """Follow the run through the execution manager's cell callbacks."""
    if not nb_man.nb.metadata.get("kernelspec"):
        nb_man.nb.metadata["kernelspec"] = dict(kernel_meta)
    STATE.nb = nb_man.nb
    STATE.cells_total = len(nb_man.nb.cells)
    _emit("start", cells_total=STATE.cells_total)
    cell_start, cell_complete = nb_man.cell_start, nb_man.cell_complete
    started: list[int | None] = [None]

    def on_cell_start(cell, cell_index=None, **kwargs):
        if STATE.terminating:
            raise _Terminated()
        started[0] = STATE.cell_index = cell_index
        cell_start(cell, cell_index, **kwargs)

    def on_cell_complete(cell, cell_index=None, **kwargs):
        cell_complete(cell, cell_index, **kwargs)
        if started[0] == cell_index:
            STATE.cells_done += 1
            _emit("progress", done=STATE.cells_done, total=STATE.cells_total)

    nb_man.cell_start, nb_man.cell_complete = on_cell_start, on_cell_complete


def _start_kernel(kernel_name: str, cwd: str) -> None:
    """The job's kernel: the one started while the job was on its way if it is the right
    kind (moved to the job's folder and given its run dir), else a new one started here."""
    from jupyter_core.utils import run_sync

    km, STATE.prestarted = STATE.prestarted, None
    if km is not None and km.kernel_name == kernel_name:
        STATE.kernel_manager = km
        code = (
            f"__import__('os').chdir({cwd!r})\n"
            f"__import__('os').environ[{RUN_DIR_ENV!r}] = {os.environ.get(RUN_DIR_ENV, '')!r}"
        )
        reply = run_sync(_execute_quietly)(km, code)
        if (reply or {}).get("content", {}).get("status") != "ok":
            raise RuntimeError("kernel didn't respond to its set-up")
        _track_kernel(km)  # the job's kernel now (the parent counts it from here)
        return
    _shutdown_kernel(km)
    km = _kernel_manager(kernel_name)
    STATE.kernel_manager = km
    run_sync(km.start_kernel)(cwd=cwd, extra_arguments=KERNEL_ARGUMENTS)
    _track_kernel(km)


def _start_kernel_retrying(kernel_name: str, cwd: str) -> None:
    """``_start_kernel``, once more with a fresh kernel if the first died before it
    answered: no cell has run then, so a second start repeats nothing. (Seen with
    several kernels starting at once on a loaded 2-core machine.)"""
    try:
        _start_kernel(kernel_name, cwd)
    except RuntimeError as exc:
        if "Kernel died before replying" not in str(exc) or STATE.terminating:
            raise
        _shutdown_kernel(STATE.kernel_manager)
        STATE.prestarted = None
        _start_kernel(kernel_name, cwd)


def _kernel_manager(kernel_name: str):
    """A kernel manager for ``kernel_name``; in a forked runner, its python3 kernel is forked
    too (``runs.kernel_fork``)."""
    from jupyter_client.manager import AsyncKernelManager

    from research.runs.kernel_fork import use_forking_provisioner

    km = AsyncKernelManager(kernel_name=kernel_name)
    km.client_factory = _ready_client_class()
    use_forking_provisioner(km)
    return km


_READY_CLIENT = None


def _ready_client_class():
    """The kernel client nbclient gets from our kernel managers: jupyter_client's, whose
    ``wait_for_ready`` ends once the kernel has answered kernel_info and said ``idle`` for it
    on IOPub -- jupyter_client's waits for 0.2 s of IOPub silence instead, on every run."""
    global _READY_CLIENT
    if _READY_CLIENT is None:
        from jupyter_client.asynchronous import AsyncKernelClient

        class ReadyClient(AsyncKernelClient):
            async def wait_for_ready(self, timeout: float | None = None) -> None:
                await _wait_for_ready(self, timeout)

        _READY_CLIENT = ReadyClient
    return _READY_CLIENT


async def _wait_for_ready(client, timeout: float | None) -> None:
    """jupyter_client's wait_for_ready, with the same errors, less the 0.2 s of silence."""
    deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
    while True:
        msg_id = client.kernel_info()
        reply = await _shell_reply(client, msg_id, 1.0)
        # IOPub not yet connected: nothing comes, and kernel_info is asked again (as upstream).
        if reply is not None and await _iopub_idle(client, msg_id, 0.2):
            client._handle_kernel_info_reply(reply)  # the protocol version it speaks
            return
        if not await client.is_alive():
            raise RuntimeError("Kernel died before replying to kernel_info")
        if time.monotonic() > deadline:
            raise RuntimeError(f"Kernel didn't respond in {timeout:g} seconds")


async def _shell_reply(client, msg_id: str, timeout: float):
    from queue import Empty

    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await client.get_shell_msg(timeout=left)
        except Empty:
            return None
        if msg.get("parent_header", {}).get("msg_id") == msg_id:
            return msg
    return None


async def _iopub_idle(client, msg_id: str, quiet: float) -> bool:
    """Read IOPub until the kernel is idle after ``msg_id``; False if it falls silent first."""
    from queue import Empty

    while True:
        try:
            msg = await client.get_iopub_msg(timeout=quiet)
        except Empty:
            return False
        if (msg.get("parent_header", {}).get("msg_id") == msg_id and msg.get("msg_type") == "status"
                and msg.get("content", {}).get("execution_state") == "idle"):
            return True


async def _execute_quietly(km, code: str, timeout: float = 60.0):
    """Run ``code`` in the kernel and return its execute reply. Only the shell channel is
    opened: nothing is shown, so there is no waiting for IOPub to connect (``wait_for_ready``
    waits a good part of a second for that, on every run)."""
    from queue import Empty

    client = km.client()
    client.start_channels(iopub=False, stdin=False, hb=False, control=False)
    try:
        msg_id = client.execute(code, silent=True, store_history=False)  # queued until it binds
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reply = await client.get_shell_msg(timeout=0.5)
            except Empty:
                if not await km.is_alive():
                    raise RuntimeError("Kernel died before replying to its set-up") from None
                continue
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                return reply
        return None
    finally:
        client.stop_channels()


# --------------------------------------------------------------------------- running


def _configure_output(log_output: bool) -> None:
    import logging
    import warnings

    warnings.simplefilter("ignore")
    root = logging.getLogger()
    root.handlers[:] = []
    root.setLevel(logging.CRITICAL)
    pm_logger = logging.getLogger("papermill")
    pm_logger.propagate = False
    pm_logger.handlers[:] = []
    if log_output:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        pm_logger.addHandler(handler)
        pm_logger.setLevel(logging.INFO)
    else:
        pm_logger.addHandler(logging.NullHandler())
        pm_logger.setLevel(logging.CRITICAL + 1)


def _first_line(text: str, limit: int = 200) -> str:
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _input_cell_index(executed_index: int | None, injected: bool) -> int | None:
    """Map an index in the executed notebook back to the input notebook's cells."""
    if executed_index is None or STATE.nb is None or not injected:
        return executed_index
    cells = [
        c
        for c in STATE.nb.cells
        if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])
    ]
    for index, cell in enumerate(cells):
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            return executed_index - 1 if index < executed_index else executed_index
    return executed_index


def _describe_kernel_exit() -> str:
    proc = STATE.kernel_process
    code = None
    if proc is not None:
        try:
            code = proc.wait(timeout=2)
        except Exception:
            code = proc.returncode
    if code is None:
        return "kernel died"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = "; out of memory?" if -code == signal.SIGKILL else ""
        return f"kernel died (killed by {name}{hint})"
    return f"kernel died (exit code {code})"


def _result(status: str, reason: str | None = None, error: dict | None = None, **extra) -> dict:
    return {"status": status, "reason": reason, "error": error, **extra}


def _run(job: dict) -> dict:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    with open(job["notebook"], encoding="utf-8") as fh:
        input_nb = json.load(fh)
    meta = input_nb.get("metadata") or {}
    kernel_name = job.get("kernel_name") or (meta.get("kernelspec") or {}).get("name")
    kernel_name = kernel_name or DEFAULT_KERNEL
    ksm = KernelSpecManager()
    try:
        spec = ksm.get_kernel_spec(kernel_name)
    except NoSuchKernel:
        available = ", ".join(sorted(ksm.find_kernel_specs())) or "none"
        return _result(
            "failed",
            f"no such kernel: {kernel_name!r} (available: {available})",
            kernel_name=kernel_name,
        )
    kernel_meta = {
        "name": kernel_name,
        "display_name": spec.display_name,
        "language": spec.language,
    }
    _emit("kernel_name", name=kernel_name)
    if STATE.terminating:
        raise _Terminated()

    import papermill
    from nbclient.exceptions import DeadKernelError
    from papermill.engines import papermill_engines
    from papermill.exceptions import PapermillExecutionError

    papermill_engines.register(ENGINE_NAME, _engine())
    parameters = job.get("parameters") or {}
    had_injected = any(
        "injected-parameters" in ((c.get("metadata") or {}).get("tags") or [])
        for c in input_nb.get("cells", [])
    )
    injected = bool(parameters) and not had_injected
    try:
        _start_kernel_retrying(kernel_name, job.get("cwd") or os.getcwd())
        if STATE.terminating:
            raise _Terminated()
        papermill.execute_notebook(
            job["notebook"],
            job["output"],
            parameters=parameters,
            engine_name=ENGINE_NAME,
            request_save_on_cell_execute=True,
            kernel_name=kernel_name,
            language=spec.language,
            progress_bar=False,
            log_output=bool(job.get("log_output")),
            cwd=job.get("cwd"),
            research_kernel_meta=kernel_meta,
        )
    except PapermillExecutionError as exc:
        index = _input_cell_index(exc.cell_index, injected)
        error = {
            "cell_index": index,
            "execution_count": exc.exec_count,
            "ename": exc.ename,
            "evalue": strip_ansi(str(exc.evalue)),
            "traceback": [strip_ansi(line) for line in (exc.traceback or [])],
            "source": exc.source,
        }
        reason = f"{exc.ename}: {_first_line(strip_ansi(str(exc.evalue)))}".rstrip(": ")
        return _result("failed", f"{reason} (cell {index})", error, kernel_name=kernel_name)
    except DeadKernelError:
        reason = _describe_kernel_exit()
        index = _input_cell_index(STATE.cell_index, injected)
        error = {
            "cell_index": index,
            "execution_count": None,
            "ename": "DeadKernelError",
            "evalue": reason,
            "traceback": [],
            "source": None,
        }
        if index is not None:
            reason = f"{reason} in cell {index}"
        return _result("failed", reason, error, kernel_name=kernel_name)
    except RuntimeError as exc:
        text = _first_line(str(exc))
        if "Kernel died before replying" in text:
            return _result("failed", "kernel died while starting", kernel_name=kernel_name)
        if "didn't respond" in text:
            return _result("failed", f"kernel did not start: {text}", kernel_name=kernel_name)
        raise
    return _result("succeeded", None, kernel_name=kernel_name)


def _stop_kernel_if_alive() -> None:
    if STATE.kill_timer is not None:
        STATE.kill_timer.cancel()
    proc = STATE.kernel_process
    if proc is not None and proc.poll() is None:
        _signal_kernel(signal.SIGKILL)
        try:
            proc.wait(timeout=5)
        except Exception:
            pass


def _track_kernel(km, prestarted: bool = False) -> None:
    """Remember the kernel's process (to interrupt or kill it) and tell the parent its pid."""
    provisioner = getattr(km, "provisioner", None)
    process = getattr(provisioner, "process", None)
    STATE.kernel_process = process
    STATE.kernel_pgid = getattr(provisioner, "pgid", None)
    _emit("kernel", pid=getattr(process, "pid", None), prestarted=prestarted)


def _shutdown_kernel(km) -> None:
    if km is None:
        return
    from jupyter_core.utils import run_sync

    try:
        run_sync(km.shutdown_kernel)(now=True)
    except Exception:
        _stop_kernel_if_alive()


def _prepare() -> None:
    """Import papermill and start the default kernel while the job is on its way."""
    try:
        import nbclient  # noqa: F401
        import papermill  # noqa: F401
        from jupyter_client.manager import AsyncKernelManager  # noqa: F401 (what nbclient uses)
        from jupyter_core.utils import run_sync
    except Exception:
        return  # the real import in _run reports any problem
    if os.environ.get(NO_PRESTART_ENV):
        return
    km = _kernel_manager(DEFAULT_KERNEL)
    try:
        run_sync(km.start_kernel)(extra_arguments=KERNEL_ARGUMENTS)
    except Exception:
        return  # the job starts its kernel itself, and reports what goes wrong
    STATE.prestarted = km
    _track_kernel(km, prestarted=True)


def main() -> int:
    global _proto
    gc.set_threshold(50_000, 20, 20)  # short-lived: fewer collections while papermill loads
    _proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # stray prints (ours, papermill's, the kernel's) go to stderr
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    # While the parent is still preparing the job (the job waits in the pipe): a
    # runner started early (see runs.child.start_runner) then costs no start-up time.
    _prepare()
    job = _read_job()
    if not job:
        _shutdown_kernel(STATE.prestarted)
        return 2
    if job.get("run_dir"):
        os.environ[RUN_DIR_ENV] = job["run_dir"]  # the kernel inherits it
    threading.Thread(target=_watch_parent, name="watch-parent", daemon=True).start()
    _configure_output(bool(job.get("log_output")))
    try:
        if STATE.terminating:
            raise _Terminated()
        result = _run(job)
    except _Terminated:
        result = _result("interrupted")
    except BaseException as exc:  # report, never leave without a result line
        result = _result("failed", f"{type(exc).__name__}: {_first_line(str(exc))}".rstrip(": "))
    finally:
        _shutdown_kernel(STATE.prestarted)  # the job ended before it took the kernel
        _shutdown_kernel(STATE.kernel_manager)
        _stop_kernel_if_alive()
    if STATE.terminating and result["status"] != "succeeded":
        result["status"] = "interrupted"
        result["reason"] = (
            f"interrupted by {STATE.signal_name}" if STATE.signal_name else "interrupted"
        )
        result["error"] = None
    result.update(cells_done=STATE.cells_done, cells_total=STATE.cells_total)
    STATE.finished = True
    _emit("result", **result)
    return 0


if __name__ == "__main__":
    code = main()
    # The result is out and the kernel is down: skip the interpreter's slow teardown of
    # papermill, zmq and their threads, which the parent would otherwise wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
