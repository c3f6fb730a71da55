"""A runner's kernel, forked instead of started: no interpreter start, no ipykernel import.

A runner forked by the fork server (``runs.forkserver``) has ipykernel and the server's
``--preload`` modules imported already. Its first act (``start_zygote``) is to fork a
*zygote*: a copy of itself made while it is still single-threaded, with no event loop and
no zmq context, that waits on a pipe. When jupyter_client launches the ``python3`` kernel,
``ForkingProvisioner`` (our kernel provisioner, jupyter_client's documented way to change how
a kernel is launched) hands the launch to the zygote, which becomes the kernel: its own
session, the launch's folder and environment, stdin on /dev/null, then ipykernel's
``IPKernelApp`` on the connection file, as ``python -m ipykernel_launcher -f FILE`` would.

The kernel is still a fresh process with its own state, a child of the runner (which waits
for it and reads its exit status as for any child). What it shares with the server is what
a fork shares: the modules imported before it, Python's string-hash seed (so the order
of a set of strings is the same in every run of a sweep, as with a fixed PYTHONHASHSEED) and
the server's interpreter flags (``-P``: IPython puts the working folder on ``sys.path``, as
in every kernel). Random generators are reseeded (``fresh_process_state``).

A launch the zygote cannot make exactly as ``Popen`` would -- another kernel's command, a
second kernel in one runner (the zygote is used once), redirected streams, or interpreter
start-up variables that differ from the server's -- goes to ``LocalProvisioner`` unchanged.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

from jupyter_client.provisioning import LocalProvisioner

from research.runs import proctitle

PROVISIONER_NAME = "research-fork"  # the entry point in pyproject.toml
KILL_WAIT_STEPS = 25  # of 2 ms: how long a kill waits for the kernel to be gone
FORKED_KERNEL = "python3"
LAUNCHER = ["-m", "ipykernel_launcher"]
# Variables that take effect only as an interpreter (or a library imported in the server)
# starts: a process forked after that start would not see a change in them.
STARTUP_PREFIXES = ("PYTHON", "LD_", "LC_", "LANG", "OMP_", "MKL_", "OPENBLAS_", "CUDA_")


def startup_variables(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(STARTUP_PREFIXES)}


def fresh_process_state() -> None:
    """What a forked process must not share with its siblings: generators seeded at import.

    ``random`` reseeds itself after a fork; numpy's global generator does not.
    """
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


# --------------------------------------------------------------------------- child process


class ForkedChild:
    """A child this process forked, with the parts of ``subprocess.Popen`` that jupyter_client
    and the runner use (``pid``, ``poll``, ``wait``, ``send_signal``, ``returncode``)."""

    stdin = stdout = stderr = None  # the kernel inherits the runner's streams, as with Popen

    def __init__(self, pid: int, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        if self.returncode is None and self._lock.acquire(blocking=False):
            try:
                self._reap(os.WNOHANG)
            finally:
                self._lock.release()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            with self._lock:
                while self.returncode is None:
                    self._reap(0)
            return self.returncode
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:  # as Popen.wait(timeout) does: short naps, growing
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(min(delay, remaining, 0.05))
            delay *= 2
        return self.returncode

    def _reap(self, flags: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:
            self.returncode = 0  # reaped elsewhere: its status is lost (Popen says 0 too)
            return
        if pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


# --------------------------------------------------------------------------- the zygote


class _Zygote:
    def __init__(self, pid: int, requests: int, replies: int, env: dict[str, str]) -> None:
        self.pid = pid
        self.requests = requests  # write end: the launch, as one JSON document
        self.replies = replies  # read end: "ok" once it leads its session, or why not
        self.startup = startup_variables(env)


_ZYGOTE: _Zygote | None = None
_ZYGOTE_LOCK = threading.Lock()


def start_zygote() -> None:
    """Fork the process that will become this runner's kernel. Call it first thing in a
    forked runner, before any thread, event loop or zmq context exists."""
    global _ZYGOTE
    request_r, request_w = os.pipe()
    reply_r, reply_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(request_w)
            os.close(reply_r)
            code = _await_launch(request_r, reply_w)
        finally:
            os._exit(code)
    os.close(request_r)
    os.close(reply_w)
    _ZYGOTE = _Zygote(pid, request_w, reply_r, dict(os.environ))


def discard_zygote() -> None:
    """End the zygote if no kernel was launched from it (the runner is done)."""
    global _ZYGOTE
    with _ZYGOTE_LOCK:
        zygote, _ZYGOTE = _ZYGOTE, None
    if zygote is None:
        return
    os.close(zygote.requests)  # end of file: it exits at once
    os.close(zygote.replies)
    child = ForkedChild(zygote.pid, [])
    try:
        child.wait(timeout=2)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def has_zygote() -> bool:
    return _ZYGOTE is not None


def _claim(cmd: list[str], env: dict[str, str]) -> _Zygote | None:
    """The zygote, taken for this launch, if the launch is one it can make exactly."""
    global _ZYGOTE
    if cmd[:3] != [sys.executable, *LAUNCHER]:
        return None
    with _ZYGOTE_LOCK:
        zygote = _ZYGOTE
        if zygote is None or startup_variables(env) != zygote.startup:
            return None
        _ZYGOTE = None
    return zygote


def launch(cmd: list[str], env: dict[str, str], cwd: str) -> ForkedChild | None:
    """Have the zygote become the kernel ``cmd`` names; None: launch it the usual way."""
    zygote = _claim(cmd, env)
    if zygote is None:
        return None
    child = ForkedChild(zygote.pid, cmd)
    reply = b""
    try:
        os.write(zygote.requests, json.dumps({"argv": cmd, "env": env, "cwd": cwd}).encode())
        os.close(zygote.requests)
        while chunk := os.read(zygote.replies, 4096):  # the zygote's setsid and chdir: instant
            reply += chunk
    except OSError:
        pass
    finally:
        os.close(zygote.replies)
    if reply == b"ok":
        return child
    child.kill()  # it could not (a folder that is gone): Popen says why
    child.wait()
    return None


def _read_all(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return data


def _await_launch(requests: int, replies: int) -> int:
    # Until it is a kernel, the zygote holds none of the runner's pipes but stderr: the
    # runner's stdout and stdin reach end of file when the runner is done with them.
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # a kernel's output goes where the runner's stray output goes: stderr
    os.close(devnull)
    data = _read_all(requests)
    os.close(requests)
    if not data:
        return 0  # the runner ended without launching a kernel
    launch = json.loads(data)
    argv, env = launch["argv"], launch["env"]
    try:
        os.setsid()  # as launch_kernel's start_new_session: the kernel leads its own group
        os.chdir(launch["cwd"])
    except OSError as exc:
        os.write(replies, f"{type(exc).__name__}: {exc}".encode())
        return 1
    os.environ.clear()
    os.environ.update(env)
    proctitle.show(argv, env)
    os.write(replies, b"ok")  # as Popen returns: it has started, as what it is
    os.close(replies)
    return _run_kernel(argv, env)


def _run_kernel(argv: list[str], env: dict[str, str]) -> int:
    import atexit
    import importlib.util

    fresh_process_state()
    arguments = argv[len(LAUNCHER) + 1 :]
    sys.argv = [importlib.util.find_spec("ipykernel_launcher").origin, *arguments]
    code = 0
    try:
        from ipykernel.kernelapp import IPKernelApp

        IPKernelApp.launch_instance(argv=[*arguments, *_import_time_settings(env)])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # what the interpreter's exit would run (os._exit skips it)
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass
    return code


def _import_time_settings(env: dict[str, str]) -> list[str]:
    """Settings ipykernel takes from the environment as its module is imported -- which was
    in the server, before this launch's variables were set -- given as the options they are."""
    parent = env.get("JPY_PARENT_PID")
    return [f"--IPKernelApp.parent_handle={int(parent)}"] if parent else []


# --------------------------------------------------------------------------- provisioner


def use_forking_provisioner(km) -> None:
    """Have ``km`` (a kernel manager not yet started) launch through ``ForkingProvisioner``:
    only for the ``python3`` kernel of a runner with a zygote, and only once the entry point
    is installed (``pip install -e .`` registers it)."""
    if not has_zygote() or km.kernel_name != FORKED_KERNEL:
        return
    from jupyter_client.provisioning import KernelProvisionerFactory

    if PROVISIONER_NAME not in KernelProvisionerFactory.instance().get_provisioner_entries():
        return
    # The spec is this manager's own copy, read from kernel.json: the file is not touched.
    km.kernel_spec.metadata["kernel_provisioner"] = {"provisioner_name": PROVISIONER_NAME}


class ForkingProvisioner(LocalProvisioner):
    """``LocalProvisioner`` whose ``python3`` kernel is the runner's zygote (see the module doc)."""

    async def launch_kernel(self, cmd: list[str], **kwargs):
        options = self._scrub_kwargs(kwargs)
        env = dict(options.pop("env", None) or os.environ)
        cwd = options.pop("cwd", None) or os.getcwd()
        independent = options.pop("independent", False)
        streams = [options.pop(name, None) for name in ("stdin", "stdout", "stderr")]
        process = None
        if not options and not any(s is not None for s in streams):
            if not independent:
                env["JPY_PARENT_PID"] = str(os.getpid())  # as launch_kernel sets it
            process = launch([os.path.expanduser(s) for s in cmd], env, str(cwd))
        if process is None:
            return await super().launch_kernel(cmd, **kwargs)
        self.process = process
        self.pid = self.pgid = process.pid  # it leads its own session (setsid before "ok")
        self.cwd = kwargs.get("cwd", pathlib.Path.cwd())
        return self.connection_info

    async def kill(self, restart: bool = False) -> None:
        await super().kill(restart)
        # A killed kernel is gone within a few milliseconds; the kernel manager looks every
        # 0.1 s, so a short wait here saves each run's shutdown most of that.
        process = self.process
        if isinstance(process, ForkedChild):
            for _ in range(KILL_WAIT_STEPS):
                if process.poll() is not None:
                    break
                await asyncio.sleep(0.002)


__all__ = ["ForkingProvisioner", "ForkedChild", "discard_zygote", "launch", "start_zygote",
           "use_forking_provisioner"]
