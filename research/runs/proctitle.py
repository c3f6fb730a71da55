"""Make a forked process show its own command line and environment (Linux).

A process forked from the fork server (``runs.forkserver``) still shows the server's
``/proc/PID/cmdline`` and ``/proc/PID/environ``: both are read from the memory its
``exec`` filled in, which a fork copies and ``os.environ`` never touches. ``ps``, ``pgrep -f``
and every tool (and test) that finds a run's processes by command or by ``RESEARCH_RUN_DIR``
would then see the server. So a forked runner or kernel writes its own command and
environment over that memory, as ``setproctitle`` does for the command.

That memory must be free first: ``detach_environment`` (in the server, at its start) copies
every variable to the heap, so nothing still points into the block that is rewritten later.
The server is started with room to spare (``ROOM_ARG``, ``ROOM_ENV``) because a rewrite can
only use the space the server's own command and environment took. Where the new text does
not fit, or this is not Linux, the view is left as it was: it is only a view, the process
works either way.
"""

from __future__ import annotations

import os
import sys

ROOM_ENV = "RESEARCH_PROCTITLE_ROOM"  # a variable of the server's that only makes space
ROOM_ARG = "--title-room"  # an argument of the server's that only makes space
ENV_ROOM_BYTES = 16384  # a run adds its folder and the kernel a few JPY_ variables
ARG_ROOM_BYTES = 320  # a kernel's command names its connection file


def room_argument() -> list[str]:
    return [ROOM_ARG, "." * ARG_ROOM_BYTES]


def room_environment() -> dict[str, str]:
    return {ROOM_ENV: "." * ENV_ROOM_BYTES}


def _memory_bounds() -> tuple[int, int, int, int] | None:
    """(arg_start, arg_end, env_start, env_end) of this process, from /proc/self/stat."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields 48-51 count on from after it.
    fields = stat[stat.rindex(b")") + 2 :].split()
    try:
        return tuple(int(v) for v in fields[48 - 3 : 52 - 3])  # type: ignore[return-value]
    except (ValueError, IndexError):
        return None


def detach_environment() -> bool:
    """Copy every environment variable to the heap (the server, before anything caches a
    ``getenv`` pointer), so the exec-time block is free to rewrite; drops ``ROOM_ENV``."""
    if not sys.platform.startswith("linux"):
        return False
    os.environ.pop(ROOM_ENV, None)
    for key, value in list(os.environb.items()):
        os.putenv(key, value)  # setenv: a new heap copy of "key=value" replaces the pointer
    return True


def _block(items: list[bytes]) -> bytes:
    return b"".join(item + b"\0" for item in items)


def _write(start: int, end: int, data: bytes) -> bool:
    import ctypes  # only in a forked process; the server and the CLI never need it

    size = end - start
    if start <= 0 or size <= 0 or len(data) >= size:
        return False
    ctypes.memmove(start, data + b"\0" * (size - len(data)), size)
    return True


def show(argv: list[str], env: dict[str, str]) -> None:
    """Show ``argv`` and ``env`` as this process's command line and environment.

    Only for a process forked from a server that called ``detach_environment``.
    """
    if not sys.platform.startswith("linux"):
        return
    bounds = _memory_bounds()
    if bounds is None:
        return
    arg_start, arg_end, env_start, env_end = bounds
    encode = os.fsencode
    try:
        with open("/proc/self/cmdline", "rb") as fh:
            first = fh.read().index(b"\0") + 1
    except (OSError, ValueError):
        return
    # argv[0] stays: it is the same interpreter, and the C library names the program after it.
    _write(arg_start + first, arg_end, _block([encode(a) for a in argv[1:]]))
    _write(env_start, env_end, _block([encode(k) + b"=" + encode(v) for k, v in env.items()]))
