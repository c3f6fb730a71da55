"""Memory of this process as the kernel counts it: resident set and its peak (Linux /proc).

Shared by the experiments' measuring workers. The peak counter (``VmHWM``) can be
reset on Linux by writing 5 to ``/proc/self/clear_refs``, so one process can
measure several cases in turn; where it cannot, callers use one process per case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]


def status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_bytes() -> int:
    try:
        return status_kib("VmRSS") * 1024
    except (OSError, KeyError):
        import psutil

        return psutil.Process().memory_info().rss


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter for this process; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_bytes(resettable: bool) -> int:
    if resettable:
        return status_kib("VmHWM") * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def pin_malloc_thresholds(bytes_: int = 131072) -> bool:
    """Pin glibc's mmap and trim thresholds in this process (and children it forks).

    The same as the environment ``run_worker`` sets, for a process already running:
    large blocks are mmap'ed and unmapped on free, so a freed batch leaves RSS at
    once and peaks measured one after another are each their own. False where
    glibc's ``mallopt`` is not available.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, bytes_)) and bool(
            libc.mallopt(m_trim_threshold, bytes_)
        )
    except (OSError, AttributeError):
        return False


def vm_size_bytes() -> int:
    try:
        return status_kib("VmSize") * 1024
    except (OSError, KeyError):
        import psutil

        return psutil.Process().memory_info().vms


def run_worker(module: str, payload, *, timeout: float = 600):
    """Run ``python -m module`` in a fresh process with ``payload`` as JSON on stdin and
    return the JSON on the last line it prints.

    glibc's malloc thresholds are pinned (turning off its adaptive ones): big blocks are
    mmap'ed and unmapped on free and the heap is trimmed, so one case cannot reuse
    pages an earlier case left resident, and the peak RSS of each is its own.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", module],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker {module} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
