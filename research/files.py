"""Reading and writing the user's own text files, safely.

`research import`, `export -o`, `sync` and `review -o` all read or write files the user names
on the command line: backlogs they have edited by hand, often through a symlink into a notes
repository or a synced folder. This module is the one home for that, so the rules are made once:

* reading never blocks or runs away: the file type is checked with ``stat`` before opening (a
  FIFO would block ``open`` forever, ``/dev/zero`` never ends), and at most ``limit + 1`` bytes
  are read whatever ``st_size`` claims;
* binary or non-UTF-8 content is refused with the offset of the first bad byte, a UTF-8 BOM is
  stripped but remembered, and line endings come back exactly as they are on disk;
* writing is atomic (a temporary file in the target's directory, fsync, ``os.replace``), goes
  through symlinks to their final target so the link stays a link, keeps the target's permission
  bits, refuses anything that is not a regular file, and never leaves a temporary file behind;
* every refusal is a one-line `ResearchError` naming the path, which the CLI prints as it is.

Only the standard library is imported: this module is on the CLI's start-up path.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from research.errors import ResearchError

__all__ = [
    "MAX_INPUT_BYTES",
    "TextFile",
    "Written",
    "check_writable_target",
    "read_text_file",
    "write_text_file",
]

MAX_INPUT_BYTES = 64 * 1024 * 1024

_MIB = 1024 * 1024
_CHUNK = 1024 * 1024
_BOM = b"\xef\xbb\xbf"

StrPath = str | os.PathLike[str]


@dataclass(frozen=True)
class TextFile:
    """A text file as read: its text, whether it had a BOM, and what identifies that version."""

    path: Path  # the path as given (not resolved), so messages name what the user typed
    text: str  # decoded text without a leading UTF-8 BOM; line endings untouched
    bom: bool  # whether the file started with a UTF-8 BOM (so a rewrite can keep it)
    mtime: float  # st_mtime when read, to notice an edit made behind our back
    sha256: str  # hex digest of the raw bytes, BOM included


@dataclass(frozen=True)
class Written:
    """What `write_text_file` did."""

    path: Path  # the file actually written: the symlink's final target when path was a symlink
    backup: Path | None  # where the previous content was kept, or None


# ---------------------------------------------------------------------------
# Messages


def _show(path: StrPath) -> str:
    """The path for a message: as typed, but never spanning lines (a name may hold a newline)."""
    text = os.fspath(path)
    return text if text.isprintable() else ascii(text)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _format_limit(limit: int) -> str:
    # Whole MiB read best ("64 MiB"); a limit under 1 MiB (tests, tight callers) would print as
    # an unreadable fraction of a MiB, so it is given in bytes instead.
    if limit >= _MIB:
        mib = limit / _MIB
        return f"{mib:.0f} MiB" if mib == int(mib) else f"{mib:.1f} MiB"
    return f"{limit} byte" if limit == 1 else f"{limit} bytes"


# ---------------------------------------------------------------------------
# Reading


def read_text_file(path: StrPath, *, limit: int = MAX_INPUT_BYTES) -> TextFile:
    """Read a UTF-8 text file the user named; anything else is refused with a one-line error."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    shown = _show(path)
    if os.fspath(path) == "":
        raise ResearchError("no such file: '' (an empty path)")
    try:
        # stat (which follows symlinks) before open: opening a FIFO blocks until a writer comes.
        st = os.stat(path)
    except FileNotFoundError:
        raise ResearchError(f"no such file: {shown}") from None
    except OSError as exc:
        raise ResearchError(f"cannot read {shown}: {_reason(exc)}") from None
    _require_readable_type(st.st_mode, shown)

    try:
        # O_NONBLOCK: if the path was swapped for a FIFO since the stat, open returns at once
        # instead of hanging, and the fstat below refuses it. It changes nothing for a file.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ResearchError(f"no such file: {shown}") from None
    except OSError as exc:
        raise ResearchError(f"cannot read {shown}: {_reason(exc)}") from None
    try:
        st = os.fstat(fd)
        _require_readable_type(st.st_mode, shown)
        raw = _read_capped(fd, limit, shown)
    except OSError as exc:
        raise ResearchError(f"cannot read {shown}: {_reason(exc)}") from None
    finally:
        os.close(fd)

    # NUL before UTF-8: NUL is valid UTF-8, but it is the clearest sign of a binary file, and a
    # binary file reported as "not UTF-8 at offset 3" would send the user looking for an encoding.
    if b"\x00" in raw:
        raise ResearchError(f"{shown} is not a text file (it contains NUL bytes)")
    bom = raw.startswith(_BOM)
    body = raw[len(_BOM) :] if bom else raw
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + (len(_BOM) if bom else 0)  # an offset in the file, not the body
        raise ResearchError(
            f"{shown} is not UTF-8 text (undecodable byte at offset {offset})"
        ) from None
    return TextFile(
        path=Path(path),
        text=text,
        bom=bom,
        mtime=st.st_mtime,
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def _require_readable_type(mode: int, shown: str) -> None:
    if stat.S_ISDIR(mode):
        raise ResearchError(f"{shown} is a directory, not a text file")
    if not stat.S_ISREG(mode):
        raise ResearchError(f"{shown} is {_kind(mode)}, not a regular file")


def _read_capped(fd: int, limit: int, shown: str) -> bytes:
    # st_size is not trusted: /proc files say 0 and a file can grow while we read. Reading one
    # byte past the limit is how "exactly at the limit" is told apart from "over it".
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > limit:
        raise ResearchError(
            f"{shown} is larger than the {_format_limit(limit)} limit for a text file"
        )
    return b"".join(chunks)


# ---------------------------------------------------------------------------
# Writing


def check_writable_target(path: StrPath) -> Path:
    """Resolve where a write to `path` would land and refuse it as `write_text_file` would.

    Creates nothing. Returns the final target: `path` itself, or, when `path` is a symlink
    (a chain, possibly dangling), the file it finally points at.
    """
    shown = _show(path)
    if os.fspath(path) == "":
        raise ResearchError("cannot write '': an empty path")
    target = _final_target(path, shown)
    _require_writable_target(target, shown)
    return target


def write_text_file(
    path: StrPath, text: str, *, backup: bool = False, encoding: str = "utf-8"
) -> Written:
    """Atomically replace (or create) the text file at `path` with `text`, encoded exactly.

    With `backup`, an existing file whose content differs is first kept at TARGET.bak.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, not {type(text).__name__}")
    return write_bytes_file(path, _encode(text, encoding, _show(path)), backup=backup)


def write_bytes_file(path: StrPath, data: bytes, *, backup: bool = False) -> Written:
    """``write_text_file`` for bytes already encoded (a PNG chart, say)."""
    shown = _show(path)
    target = check_writable_target(path)

    existing = _lstat_or_none(target, shown)
    if existing is not None:
        mode = stat.S_IMODE(existing.st_mode)
        owner: tuple[int, int] | None = (existing.st_uid, existing.st_gid)
    else:
        mode = 0o666 & ~_current_umask()
        owner = None

    backup_path: Path | None = None
    if backup and existing is not None:
        old = _read_existing(target, shown)
        if old != data:
            backup_path = Path(os.fspath(target) + ".bak")
            # All refusals come before anything is written: a refused backup leaves both files
            # exactly as they were.
            _require_backup_slot(backup_path, shown)
            _atomic_write(backup_path, old, mode, owner, _show(backup_path))
    _atomic_write(target, data, mode, owner, shown)
    return Written(path=target, backup=backup_path)


def _final_target(path: StrPath, shown: str) -> Path:
    if not os.path.islink(path):
        # Not a symlink: keep the path as given, so callers can report what the user typed.
        # Symlinked directories above it are followed by the kernel and need no resolving.
        return Path(path)
    # realpath (non-strict) follows a chain of links, dangling ones included, to the name a
    # write would create. On a loop it stops at a link, which the lstat below refuses.
    target = Path(os.path.realpath(path))
    try:
        st = os.lstat(target)
    except OSError:
        return target  # a dangling link: the parent checks will judge it
    if stat.S_ISLNK(st.st_mode):
        raise ResearchError(f"cannot write {shown}: its symlinks form a loop")
    return target


def _require_writable_target(target: Path, shown: str) -> None:
    st = _lstat_or_none(target, shown)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise ResearchError(f"{shown} is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise ResearchError(
                f"{shown} is {_kind(st.st_mode)}, not a regular file: refusing to write it"
            )
        return
    parent = target.parent
    try:
        parent_st = os.stat(parent)
    except FileNotFoundError:
        raise ResearchError(f"no such directory: {_show(parent)} (for {shown})") from None
    except NotADirectoryError:
        # Something further up is a file: "a/b" where a is a file, asked to write a/b/c.
        raise ResearchError(f"{_show(parent)} is not a directory (for {shown})") from None
    except OSError as exc:
        raise ResearchError(f"cannot write {shown}: {_reason(exc)}") from None
    if not stat.S_ISDIR(parent_st.st_mode):
        raise ResearchError(f"{_show(parent)} is not a directory (for {shown})")


def _require_backup_slot(backup_path: Path, shown: str) -> None:
    # The backup is replaced, never written through: a symlink there would send the old content
    # somewhere the user did not ask for, so it is refused rather than followed.
    shown_bak = _show(backup_path)
    try:
        st = os.lstat(backup_path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ResearchError(f"cannot write the backup {shown_bak}: {_reason(exc)}") from None
    if stat.S_ISREG(st.st_mode):
        return
    if stat.S_ISLNK(st.st_mode):
        what = "a symlink"
    elif stat.S_ISDIR(st.st_mode):
        what = "a directory"
    else:
        what = _kind(st.st_mode)
    raise ResearchError(
        f"{shown_bak} is {what}, not a regular file: refusing to keep the backup of {shown} there"
    )


def _lstat_or_none(target: Path, shown: str) -> os.stat_result | None:
    try:
        return os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ResearchError(f"cannot write {shown}: {_reason(exc)}") from None


def _encode(text: str, encoding: str, shown: str) -> bytes:
    try:
        return text.encode(encoding)
    except LookupError:
        raise ResearchError(f"cannot write {shown}: unknown encoding {encoding!r}") from None
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        raise ResearchError(
            f"cannot write {shown}: character U+{ord(char):04X} at position {exc.start}"
            f" cannot be encoded as {encoding}"
        ) from None


def _current_umask() -> int:
    # There is no way to read the umask without setting it; set and restore at once.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _read_existing(target: Path, shown: str) -> bytes:
    try:
        # O_NONBLOCK for the same reason as in read_text_file: a FIFO swapped in must not hang.
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ResearchError(f"cannot read {shown} to back it up: {_reason(exc)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ResearchError(f"{shown} is not a regular file: refusing to write it")
        chunks: list[bytes] = []
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise ResearchError(f"cannot read {shown} to back it up: {_reason(exc)}") from None
    finally:
        os.close(fd)


def _atomic_write(
    target: Path, data: bytes, mode: int, owner: tuple[int, int] | None, shown: str
) -> None:
    # tempfile imports random and shutil; only commands that write pay for them.
    import tempfile

    # The temporary file lives next to the target so os.replace is a rename within one file
    # system (atomic), and is hidden so an editor or a sync tool watching the folder ignores it.
    # The name is cut short so a long target name still leaves room for the random part.
    prefix = f".{target.name[:100]}."
    tmp: str | None = None
    fd: int | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if owner is not None and owner != _owner_of(fd):
            # Only root (or a member of the group) can do this; it keeps a file that root
            # rewrites owned by its user. Best effort: a plain user keeps ownership anyway.
            try:
                os.fchown(fd, *owner)
            except OSError:
                pass
        # mkstemp creates 0600; chmod after chown, since chown clears set-id bits.
        os.fchmod(fd, mode)
        os.fsync(fd)
        os.close(fd)
        fd = None
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ResearchError(f"disk full while writing {shown}") from None
        raise ResearchError(f"cannot write {shown}: {_reason(exc)}") from None
    finally:
        # Any failure, KeyboardInterrupt included, ends here with the target untouched.
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    _fsync_directory(target.parent)


def _owner_of(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_uid, st.st_gid


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable across a crash. The new content is already in place, so a
    # failure here (some file systems refuse to fsync a directory) is not the user's problem.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
