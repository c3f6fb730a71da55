"""What a run ran on: git state, host, Python/torch/papermill versions and device.

Nothing heavy is imported: versions come from package metadata and the device
from ``nvidia-smi``, so the CLI process never imports torch or papermill.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _git(root: Path, *args: str) -> str | None:
    if shutil.which("git") is None:
        return None
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(project_root: str | Path) -> tuple[str | None, bool | None]:
    """(commit of HEAD, whether tracked files differ from it); (None, None) outside git."""
    root = Path(project_root)
    commit = _git(root, "rev-parse", "--verify", "--quiet", "HEAD")
    if commit is None:
        return None, None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    dirty = None if status is None else bool(status.strip())
    return commit.strip() or None, dirty


def package_version(name: str) -> str | None:
    """Installed version of a distribution, read from its metadata (no import)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _gpu_names() -> tuple[str, ...]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        proc = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return ()
    if proc.returncode != 0:
        return ()
    return tuple(line.strip() for line in proc.stdout.splitlines() if line.strip())


def detect_device(torch_version: str | None = None) -> str:
    """``"cpu"`` or the name of the CUDA device a notebook would use first.

    ``cpu`` also when torch is a CPU-only build (version ``...+cpu``) or
    ``CUDA_VISIBLE_DEVICES`` hides every GPU.
    """
    if torch_version is None:
        torch_version = package_version("torch")
    if torch_version and torch_version.endswith("+cpu"):
        return "cpu"
    names = _gpu_names()
    if not names:
        return "cpu"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        first = visible.split(",")[0].strip()
        if first in ("", "-1"):
            return "cpu"
        if first.isdigit():
            index = int(first)
            return names[index] if index < len(names) else "cpu"
        # a GPU UUID: we cannot map it without more queries; report the first name
    return names[0]


def capture_environment(project_root: str | Path) -> dict:
    """Everything about the machine and code a run's result depends on, as plain JSON data."""
    commit, dirty = git_state(project_root)
    torch_version = package_version("torch")
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "torch": torch_version,
        "papermill": package_version("papermill"),
        "device": detect_device(torch_version),
    }
