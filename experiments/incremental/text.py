"""A real text stream that ships with every Python: the standard library's own source.

The streaming-LLM experiment needs natural text far longer than a training context,
with nothing downloaded. Python's standard library is that: megabytes of code,
comments and docstrings in English, on every machine that runs this project.

Files are the ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` (tests,
``site-packages`` and generated files left out), read in sorted path order and
split by file, so no file is on both sides: a file goes to the held-out split when
a stable hash of its relative path falls in the held-out fraction. Tokens are
bytes (vocabulary 256), so no tokenizer has to be trained or shipped.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import torch

VOCAB = 256  # byte-level tokens
_SKIP_PARTS = {"test", "tests", "site-packages", "idlelib", "__pycache__", "lib2to3"}


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The standard library's ``.py`` files, sorted, without tests and third-party code."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = set(path.relative_to(root).parts[:-1])
        if parts & _SKIP_PARTS or path.name.startswith("test_"):
            continue
        files.append(path)
    return files


def _held_out(relative: str, fraction: float) -> bool:
    digest = hashlib.sha256(relative.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def stdlib_stream(
    split: str = "train",
    *,
    held_out_fraction: float = 0.1,
    max_bytes: int | None = None,
    root: Path | None = None,
) -> torch.Tensor:
    """Byte tokens (int64, (N,)) of the ``train`` or ``held_out`` split, files joined in order."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', not {split!r}")
    root = Path(root or sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in stdlib_files(root):
        if _held_out(path.relative_to(root).as_posix(), held_out_fraction) != (split == "held_out"):
            continue
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if max_bytes is not None and total >= max_bytes:
            break
    joined = b"".join(chunks)[:max_bytes]
    if not joined:
        raise ValueError(f"no standard-library source found under {root}")
    return torch.frombuffer(bytearray(joined), dtype=torch.uint8).long()
