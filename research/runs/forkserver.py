"""A fork server: runners forked from one process that imported papermill and ipykernel once.

Starting a runner the plain way (``python -m research.runs.papermill_child``) costs about
0.5 s of CPU to import papermill and its kernel as much again to import ipykernel: most of
a short run's cost, paid again by every run. The fork server pays it once per
``research run`` (or Dask worker, or Slurm job): started as

    python -P -m research.runs.forkserver --fd N [--preload MODULE ...]

it imports papermill, nbclient, jupyter_client and ipykernel (and the ``--preload`` modules,
e.g. torch), starts no thread, event loop or zmq context, and then forks one runner per
request. A forked runner is the same process ``papermill_child`` would be -- its own session,
the request's environment, folder and pipes, one job, then ``os._exit`` -- and it forks its
kernel the same way (``runs.kernel_fork``), so every run still gets its own runner and a
fresh kernel process.

Protocol, over a Unix SOCK_SEQPACKET socketpair (one JSON document per packet):

* server -> client, once its imports are done: ``{"ready": true}``;
* client -> server: ``{"id": N, "env": {...}, "cwd": DIR}`` with the runner's stdin, stdout and
  stderr pipe ends attached (SCM_RIGHTS); reply ``{"id": N, "pid": PID}`` or
  ``{"id": N, "error": WHY}`` (then the client starts the runner with Popen);
* server -> client, whenever a runner ends: ``{"exit": PID, "returncode": RC}`` (the server
  is their parent; it reaps them on SIGCHLD).

The client side, ``ForkServer``, is what ``runs.child`` uses while one is active (``start``
makes it so; ``close`` ends it): ``spawn_runner`` returns a ``ForkedRunner``, which behaves
like the ``subprocess.Popen`` of a runner, or None when the server is gone, never became
ready, or cannot start this runner exactly as Popen would -- and the caller then uses Popen.
The optimisation never fails a run.

``--preload``: a module imported in the server is imported in every kernel before its first
cell (``import torch`` then costs nothing). Caveat: a module that starts threads at import
has them only in the server -- a fork copies the calling thread alone. numpy's OpenBLAS and
torch's thread pools handle that (they start their threads again on first use); a module
that depends on a thread it started at import does not belong in ``--preload``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

RUNNER_COMMAND = [sys.executable, "-P", "-m", "research.runs.papermill_child"]  # what ps shows
# What every runner and kernel would import: imported once, here.
WARM_IMPORTS = (
    "papermill",
    "papermill.engines",
    "nbclient",
    "jupyter_client.manager",
    "jupyter_client.provisioning",
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    # What a kernel imports as it starts (debugpy alone is a third of its start-up).
    "ipykernel.debugger",
    "ipykernel.kernelspec",
    "IPython.core.completerlib",
    "IPython.core.debugger",
    "IPython.extensions.storemagic",
    "tornado.platform.asyncio",
    "sqlite3",
    "encodings.unicode_escape",
    "psutil",
    "research.runs.papermill_child",
    "research.runs.kernel_fork",
)
DISABLE_ENV = "RESEARCH_FORKSERVER"  # "0": no fork server, every runner starts with Popen
READY_TIMEOUT_S = 60.0  # a server still importing after this long is not waited for again
MAX_MESSAGE = 1 << 20
UNKNOWN_EXIT = 255  # a runner's exit status when the server that reaped it is gone


# --------------------------------------------------------------------------- client


class _Exit:
    """Where the reader thread puts a runner's exit status when the server reports it."""

    def __init__(self) -> None:
        self.returncode: int | None = None
        self.event = threading.Event()

    def set(self, returncode: int) -> None:
        if self.returncode is None:
            self.returncode = returncode
        self.event.set()


class ForkedRunner:
    """A runner forked by the server: the parts of ``subprocess.Popen`` that ``runs.child`` and
    the spare pool use. The server is its parent, so its exit status comes from the server;
    signals go through a pidfd where there is one (a pid the server reaped may be reused)."""

    args = RUNNER_COMMAND

    def __init__(self, pid: int, exit_: _Exit, server: ForkServer, stdin, stdout, stderr) -> None:
        self.pid = pid
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self._exit = exit_
        self._server = server
        self._pidfd = None
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(pid)  # fails only once it has been reaped

    @property
    def returncode(self) -> int | None:
        return self._exit.returncode

    def poll(self) -> int | None:
        if self._exit.returncode is None and not self._server.alive and self._gone():
            self._exit.set(UNKNOWN_EXIT)  # its parent was the server, which is gone
        return self._exit.returncode

    def _gone(self) -> bool:
        if self._pidfd is not None:
            return bool(select.select([self._pidfd], [], [], 0)[0])  # readable: it has exited
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        return False

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            # The report comes from the server's reader thread; without a server, look again.
            self._exit.event.wait(0.1 if remaining is None else min(remaining, 0.1))
        return self._exit.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __del__(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)


class ForkServer:
    """The client's end of one fork server process (see the module doc)."""

    def __init__(self, preload: tuple[str, ...] = ()) -> None:
        from research.runs import proctitle
        from research.runs.child import _runner_env

        self.preload = tuple(preload)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-P", "-m", "research.runs.forkserver", "--fd", str(theirs.fileno())]
        for module in self.preload:
            command += ["--preload", module]
        try:
            self.process = subprocess.Popen(
                command + proctitle.room_argument(),
                env={**_runner_env(None), **proctitle.room_environment()},
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # its stderr is ours: a --preload that fails says so
                start_new_session=True,  # a Ctrl-C at the terminal is ours to handle
            )
        finally:
            theirs.close()
        self._sock = ours
        self._send_lock = threading.Lock()
        self._ids = iter(range(1, sys.maxsize))
        self._replies: dict[int, dict] = {}
        self._waiting: dict[int, threading.Event] = {}
        self._exits: dict[int, _Exit] = {}
        self._ready = threading.Event()
        self._given_up = False
        self.alive = True
        self._reader = threading.Thread(target=self._read, name="forkserver-reader", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ runners

    def spawn_runner(self, env: dict[str, str], cwd: str) -> ForkedRunner | None:
        """A runner forked with this environment and folder, or None (use Popen)."""
        if not self._wait_ready():
            return None
        ends = [os.pipe() for _ in range(3)]  # stdin, stdout, stderr: (read, write) each
        theirs = [ends[0][0], ends[1][1], ends[2][1]]
        ours = [ends[0][1], ends[1][0], ends[2][0]]
        try:
            reply = self._request({"env": env, "cwd": cwd}, theirs)
        finally:
            for fd in theirs:  # the runner has its copies now (or never will)
                os.close(fd)
        if reply is None or "pid" not in reply:
            for fd in ours:
                os.close(fd)
            return None
        streams = os.fdopen(ours[0], "wb"), os.fdopen(ours[1], "rb"), os.fdopen(ours[2], "rb")
        return ForkedRunner(int(reply["pid"]), reply["exit_report"], self, *streams)

    def _wait_ready(self) -> bool:
        if self._given_up or not self.alive:
            return False
        if not self._ready.wait(READY_TIMEOUT_S):
            self._given_up = True  # one wait is enough: later runs go the plain way at once
        return self._ready.is_set() and self.alive

    def _request(self, message: dict, fds: list[int]) -> dict | None:
        with self._send_lock:
            request_id = next(self._ids)
            done = self._waiting[request_id] = threading.Event()
            try:
                socket.send_fds(self._sock, [json.dumps({"id": request_id, **message}).encode()], fds)
            except OSError:
                self._waiting.pop(request_id, None)
                return None
        done.wait()  # the reader sets it on the reply, or when the server is gone
        self._waiting.pop(request_id, None)
        return self._replies.pop(request_id, None)

    # ------------------------------------------------------------------ reports

    def _read(self) -> None:
        try:
            while True:
                data = self._sock.recv(MAX_MESSAGE)
                if not data:
                    break
                self._dispatch(json.loads(data))
        except (OSError, ValueError):
            pass
        finally:
            self.alive = False
            self._ready.set()  # nobody waits for a server that is gone
            for event in list(self._waiting.values()):
                event.set()
            for exit_ in list(self._exits.values()):
                exit_.event.set()  # their runners look for themselves from now on

    def _dispatch(self, message: dict) -> None:
        if message.get("ready"):
            self._ready.set()
        elif "exit" in message:
            exit_ = self._exits.pop(int(message["exit"]), None)
            if exit_ is not None:
                exit_.set(int(message["returncode"]))
        elif "id" in message:
            if "pid" in message:  # before any report of its exit, which comes after this
                message["exit_report"] = self._exits[int(message["pid"])] = _Exit()
            self._replies[message["id"]] = message
            event = self._waiting.get(message["id"])
            if event is not None:
                event.set()

    # ------------------------------------------------------------------ end

    def close(self) -> None:
        """End the server (its runners keep running to their end); no longer the active one."""
        global _ACTIVE
        if _ACTIVE is self:
            _ACTIVE = None
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # end of file for the server: it exits
        self._sock.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=1)

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_ACTIVE: ForkServer | None = None
_STARTING = threading.Lock()  # one server per process, however many threads ask at once


def enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "1") != "0" and sys.platform.startswith("linux")


def start(preload: tuple[str, ...] | list[str] = ()) -> ForkServer | None:
    """Start a fork server and make it the one this process's runners come from (replacing
    any before it); None where fork servers are off (``RESEARCH_FORKSERVER=0``, not Linux)."""
    global _ACTIVE
    if not enabled():
        return None
    try:
        server = ForkServer(tuple(preload))
    except OSError:  # no process to be had: the runs start the plain way (and say why if they fail)
        return None
    _ACTIVE = server
    return server


def serving(preload: tuple[str, ...] | list[str] = (), wanted: bool = True):
    """``with serving(...)``: a fork server (``start``) for the block, closed after it; nothing
    when not ``wanted`` (runs elsewhere, a dry run) or where fork servers are off."""
    server = start(preload) if wanted else None
    return server if server is not None else contextlib.nullcontext()


def active() -> ForkServer | None:
    server = _ACTIVE
    return server if server is not None and server.alive else None


def start_for_process() -> None:
    """Start a server that lasts as long as this process, unless one is active: for a Dask
    worker or a Slurm job, which may run many notebooks (it ends when this process does)."""
    with _STARTING:
        if active() is None:
            start()


# --------------------------------------------------------------------------- server


class _Server:
    """The server process: a single-threaded select loop over requests and SIGCHLD."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.startup = None  # its interpreter start-up variables, set once it is ready
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def send(self, message: dict) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(json.dumps(message).encode())

    def serve(self) -> None:
        from research.runs.kernel_fork import startup_variables

        self.startup = startup_variables(dict(os.environ))
        # Installed before the first fork, so no runner's end goes unreported.
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.send({"ready": True})
        while True:
            readable, _, _ = select.select([self.sock, self.wake_r], [], [])
            if self.wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self.wake_r, 4096):
                        pass
                self.reap()
            if self.sock in readable:
                try:
                    data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, 3)
                except OSError:
                    return
                if not data:
                    self.reap()  # those that have ended; the others go on without us
                    return  # the client is gone, or closed us
                try:
                    self.handle(json.loads(data), fds)
                finally:
                    for fd in fds:
                        os.close(fd)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.send({"exit": pid, "returncode": os.waitstatus_to_exitcode(status)})

    def handle(self, request: dict, fds: list[int]) -> None:
        from research.runs.kernel_fork import startup_variables

        env, cwd = request.get("env") or {}, request.get("cwd") or ""
        if len(fds) != 3:
            why = "three pipe ends expected"
        elif startup_variables(env) != self.startup:
            why = "interpreter start-up variables differ from the server's"
        elif not os.path.isdir(cwd):
            why = f"no such folder: {cwd}"
        else:
            why = None
        if why is not None:
            self.send({"id": request.get("id"), "error": why})
            return
        sys.stderr.flush()  # nothing of ours is written twice, by a child too
        started_r, started_w = os.pipe()
        try:
            pid = os.fork()
        except OSError as exc:  # out of processes or memory: Popen may fare no better, but tries
            os.close(started_r)
            os.close(started_w)
            self.send({"id": request.get("id"), "error": f"fork: {exc}"})
            return
        if pid == 0:
            os.close(started_r)
            self._become_runner(env, cwd, fds, started_w)  # never returns
        os.close(started_w)
        # As Popen returns once its child has started, the client hears of this one once it
        # leads its own session and shows its own command: end of file on this pipe.
        with contextlib.suppress(OSError):
            os.read(started_r, 1)
        os.close(started_r)
        self.send({"id": request.get("id"), "pid": pid})

    def _become_runner(self, env: dict[str, str], cwd: str, fds: list[int], started: int) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setsid()  # as Popen(start_new_session=True): killpg(pid) ends the runner's group
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            for fd in (*fds, self.wake_r, self.wake_w, self.sock.detach()):
                os.close(fd)
            code = _run_forked_runner(env, cwd, started)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)


def _run_forked_runner(env: dict[str, str], cwd: str, started: int) -> int:
    from research.runs import kernel_fork, papermill_child, proctitle

    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    proctitle.show(RUNNER_COMMAND, env)
    os.close(started)  # the server may report this runner now
    kernel_fork.fresh_process_state()
    sys.argv = [papermill_child.__file__]
    kernel_fork.start_zygote()  # while this process is single-threaded, with no event loop
    try:
        code = papermill_child.main()
    finally:
        kernel_fork.discard_zygote()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return code


def _preload(modules: list[str]) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # the runs go on; their kernels import it themselves
            print(f"research: --preload {name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def _warm_caches() -> None:
    """Work every runner would repeat that depends on nothing of the run's: done once, here."""
    import nbformat
    from jupyter_client.provisioning import KernelProvisionerFactory
    from nbformat.validator import get_validator

    KernelProvisionerFactory.instance()  # reads every installed package's entry points
    # The notebook schema's validator is generated code, compiled on first use (a notebook
    # names its minor version; 4.4 and the current one are the common ones).
    for minor in sorted({4, nbformat.v4.nbformat_minor}):
        get_validator(version=4, version_minor=minor)


def main(argv: list[str] | None = None) -> None:
    import argparse
    import gc
    import importlib

    from research.runs import proctitle

    parser = argparse.ArgumentParser(prog="python -m research.runs.forkserver")
    parser.add_argument("--fd", type=int, required=True, help="this end of the socketpair")
    parser.add_argument("--preload", action="append", default=[], metavar="MODULE")
    parser.add_argument(proctitle.ROOM_ARG, default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    proctitle.detach_environment()  # before any import can keep a pointer into it
    for name in WARM_IMPORTS:
        importlib.import_module(name)
    _preload(args.preload)
    _warm_caches()
    # Everything imported so far lives as long as any fork: the collector leaves it alone, so
    # a fork's collections neither scan it nor copy its pages.
    gc.collect()
    gc.freeze()
    _Server(sock).serve()


if __name__ == "__main__":
    main()
    sys.stderr.flush()
    os._exit(0)  # the runners it forked go on; their exits are nobody's concern now
