"""Memory of this process as the kernel counts it: resident set and its peak (Linux /proc).

Shared by the experiments' measuring workers. The peak counter (``VmHWM``) can be
reset on Linux by writing 5 to ``/proc/self/clear_refs``, so one process can
measure several cases in turn; where it cannot, callers use one process per case.
"""

from __future__ import annotations

import sys


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


def vm_size_bytes() -> int:
    try:
        return status_kib("VmSize") * 1024
    except (OSError, KeyError):
        import psutil

        return psutil.Process().memory_info().vms
