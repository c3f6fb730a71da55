"""research.files: reading and writing the user's text files safely, every refusal one line."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from research.errors import ResearchError
from research.files import (
    MAX_INPUT_BYTES,
    TextFile,
    Written,
    check_writable_target,
    read_text_file,
    write_text_file,
)

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
as_root = os.name == "posix" and os.geteuid() == 0


class _Deadline(Exception):
    pass


@contextmanager
def deadline(seconds: float = 2.0) -> Iterator[None]:
    """Fail instead of hanging: a FIFO opened by mistake would block the test run forever."""

    def expire(signum, frame):
        raise _Deadline(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def refused(call, *args, **kwargs) -> str:
    """The message of the ResearchError `call` raises, checked to be one line."""
    with pytest.raises(ResearchError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.strip() == message and message
    return message


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def no_temporaries(directory: Path) -> bool:
    return not [name for name in listing(directory) if name.endswith(".tmp")]


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def char_device(path: str) -> Path:
    device = Path(path)
    if not device.exists() or not stat.S_ISCHR(os.stat(device).st_mode):
        pytest.skip(f"{path} is not a character device here")
    return device


# ---------------------------------------------------------------------------
# Reading


def test_read_strips_the_bom_and_keeps_line_endings(tmp_path):
    raw = b"\xef\xbb\xbf# Backlog\r\n\xe4\xbc\x98\xe5\x85\x88\xe7\xba\xa7\r\nlast\n"
    path = tmp_path / "backlog.md"
    path.write_bytes(raw)

    got = read_text_file(path)

    assert isinstance(got, TextFile)
    assert got.text == "# Backlog\r\n优先级\r\nlast\n"
    assert got.bom is True
    assert got.path == path
    assert got.sha256 == hashlib.sha256(raw).hexdigest()
    assert got.mtime == os.stat(path).st_mtime


def test_read_without_bom_and_the_path_as_given(tmp_path):
    (tmp_path / "plain.md").write_bytes(b"a\rb\n")
    got = read_text_file("plain.md")  # relative: the conftest runs each test in tmp_path
    assert (got.text, got.bom, got.path) == ("a\rb\n", False, Path("plain.md"))


def test_read_an_empty_file(tmp_path):
    (tmp_path / "empty.md").write_bytes(b"")
    assert read_text_file(tmp_path / "empty.md").text == ""


def test_read_follows_a_symlink_and_reports_the_link(tmp_path):
    (tmp_path / "real.md").write_bytes(b"hello\n")
    (tmp_path / "link.md").symlink_to("real.md")
    got = read_text_file(tmp_path / "link.md")
    assert got.text == "hello\n"
    assert got.path == tmp_path / "link.md"


def test_read_missing(tmp_path):
    path = tmp_path / "nope.md"
    assert refused(read_text_file, path) == f"no such file: {path}"


def test_read_a_dangling_symlink_is_missing(tmp_path):
    (tmp_path / "link.md").symlink_to("gone.md")
    assert refused(read_text_file, tmp_path / "link.md").startswith("no such file: ")


def test_read_a_directory(tmp_path):
    (tmp_path / "notes").mkdir()
    message = refused(read_text_file, tmp_path / "notes")
    assert message == f"{tmp_path / 'notes'} is a directory, not a text file"


@needs_fifo
def test_read_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with deadline():
        message = refused(read_text_file, fifo)
    assert message == f"{fifo} is a FIFO, not a regular file"


@needs_fifo
def test_read_a_symlink_to_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link.md").symlink_to("pipe")
    with deadline():
        message = refused(read_text_file, tmp_path / "link.md")
    assert message == f"{tmp_path / 'link.md'} is a FIFO, not a regular file"


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_read_a_character_device_is_refused(device):
    path = char_device(device)
    with deadline():
        assert (
            refused(read_text_file, path) == f"{device} is a character device, not a regular file"
        )


def test_read_a_socket_is_refused(tmp_path):
    socket = pytest.importorskip("socket")
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no Unix sockets")
    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        assert refused(read_text_file, path) == f"{path} is a socket, not a regular file"


def test_read_larger_than_the_limit(tmp_path):
    path = tmp_path / "big.md"
    path.write_bytes(b"x" * 11)
    assert refused(read_text_file, path, limit=10) == (
        f"{path} is larger than the 10 bytes limit for a text file"
    )
    assert read_text_file(path, limit=11).text == "x" * 11  # exactly at the limit is fine


def test_the_default_limit_is_named_in_mib(tmp_path, monkeypatch):
    path = tmp_path / "huge.md"
    path.write_bytes(b"x")
    # A file that never ends, so the 64 MiB limit is tested without writing or reading 64 MiB.
    chunk = b"x" * (1 << 20)
    monkeypatch.setattr(os, "read", lambda fd, n: chunk[:n])
    assert MAX_INPUT_BYTES == 64 * 1024 * 1024
    assert (
        refused(read_text_file, path) == f"{path} is larger than the 64 MiB limit for a text file"
    )
    assert "the 1.5 MiB limit" in refused(read_text_file, path, limit=3 * 2**19)


def test_read_never_reads_more_than_limit_plus_one(tmp_path, monkeypatch):
    path = tmp_path / "big.md"
    path.write_bytes(b"y" * (1 << 20))
    read = os.read
    counted: list[int] = []

    def counting_read(fd, n):
        chunk = read(fd, n)
        counted.append(len(chunk))
        return chunk

    monkeypatch.setattr(os, "read", counting_read)
    refused(read_text_file, path, limit=10)
    assert sum(counted) == 11


def test_read_does_not_trust_st_size():
    # /proc files are regular files that report st_size 0 but have content.
    proc = Path("/proc/self/status")
    if not proc.exists() or os.stat(proc).st_size != 0:
        pytest.skip("no /proc file with a lying st_size")
    assert "Name:" in read_text_file(proc).text
    assert "larger than the 10 bytes limit" in refused(read_text_file, proc, limit=10)


def test_read_nul_bytes(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert refused(read_text_file, path) == f"{path} is not a text file (it contains NUL bytes)"


def test_read_bad_utf8_names_the_offset(tmp_path):
    path = tmp_path / "latin1.md"
    path.write_bytes("café\n".encode("latin-1"))
    assert (
        refused(read_text_file, path) == f"{path} is not UTF-8 text (undecodable byte at offset 3)"
    )


def test_read_bad_utf8_offset_counts_the_bom(tmp_path):
    path = tmp_path / "bom.md"
    path.write_bytes(b"\xef\xbb\xbfab\xff")
    assert "undecodable byte at offset 5" in refused(read_text_file, path)


def test_read_other_os_errors_are_one_line(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    message = refused(read_text_file, tmp_path / "a")
    assert message.startswith(f"cannot read {tmp_path / 'a'}: ")

    (tmp_path / "file").write_text("x")
    message = refused(read_text_file, tmp_path / "file" / "child.md")
    assert message.startswith(f"cannot read {tmp_path / 'file' / 'child.md'}: ")


@pytest.mark.skipif(as_root, reason="root reads any file")
def test_read_permission_denied(tmp_path):
    path = tmp_path / "secret.md"
    path.write_text("x")
    path.chmod(0)
    assert refused(read_text_file, path) == f"cannot read {path}: Permission denied"


def test_a_newline_in_a_name_stays_on_one_line(tmp_path):
    message = refused(read_text_file, tmp_path / "two\nlines.md")
    assert "two\\nlines.md" in message


# ---------------------------------------------------------------------------
# Writing


def test_write_a_new_file_respects_the_umask(tmp_path):
    path = tmp_path / "out.md"
    with umask(0o027):
        written = write_text_file(path, "hello\r\nworld\n")
    assert written == Written(path=path, backup=None)
    assert path.read_bytes() == b"hello\r\nworld\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert listing(tmp_path) == ["out.md"]


def test_write_keeps_the_existing_mode(tmp_path):
    path = tmp_path / "out.md"
    path.write_text("old")
    path.chmod(0o604)
    with umask(0o077):
        write_text_file(path, "new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o604


def test_write_relative_path_is_returned_as_given(tmp_path):
    assert write_text_file("out.md", "x").path == Path("out.md")
    assert (tmp_path / "out.md").read_text() == "x"


def test_write_encodes_exactly(tmp_path):
    path = tmp_path / "out.md"
    write_text_file(path, "café\r\n", encoding="latin-1")
    assert path.read_bytes() == b"caf\xe9\r\n"
    write_text_file(path, "\ufeffbom\n")  # a BOM the caller kept is written back as it is
    assert path.read_bytes() == b"\xef\xbb\xbfbom\n"


def test_write_unencodable_text(tmp_path):
    path = tmp_path / "out.md"
    message = refused(write_text_file, path, "ok ☃", encoding="ascii")
    assert (
        message == f"cannot write {path}: character U+2603 at position 3 cannot be encoded as ascii"
    )
    assert not path.exists()


def test_write_requires_str(tmp_path):
    with pytest.raises(TypeError):
        write_text_file(tmp_path / "out.md", b"bytes")  # type: ignore[arg-type]


def test_write_through_a_symlink_keeps_the_link(tmp_path):
    (tmp_path / "notes").mkdir()
    real = tmp_path / "notes" / "backlog.md"
    real.write_text("old")
    link = tmp_path / "backlog.md"
    link.symlink_to(Path("notes") / "backlog.md")

    written = write_text_file(link, "new")

    assert written.path == real
    assert link.is_symlink() and os.readlink(link) == os.path.join("notes", "backlog.md")
    assert real.read_text() == "new"
    assert no_temporaries(tmp_path) and no_temporaries(tmp_path / "notes")


def test_write_through_a_chain_of_symlinks(tmp_path):
    real = tmp_path / "real.md"
    real.write_text("old")
    (tmp_path / "b").symlink_to("real.md")
    (tmp_path / "a").symlink_to("b")
    assert write_text_file(tmp_path / "a", "new").path == real
    assert (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink()
    assert real.read_text() == "new"


def test_write_through_a_dangling_symlink_into_an_existing_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.md"
    link.symlink_to(tmp_path / "sub" / "new.md")

    assert check_writable_target(link) == tmp_path / "sub" / "new.md"
    assert write_text_file(link, "made").path == tmp_path / "sub" / "new.md"
    assert link.is_symlink()
    assert (tmp_path / "sub" / "new.md").read_text() == "made"


def test_write_through_a_dangling_symlink_into_a_missing_directory(tmp_path):
    link = tmp_path / "link.md"
    link.symlink_to(tmp_path / "gone" / "new.md")
    message = refused(write_text_file, link, "x")
    assert message == f"no such directory: {tmp_path / 'gone'} (for {link})"


def test_write_through_a_symlink_loop(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    assert refused(write_text_file, tmp_path / "a", "x") == (
        f"cannot write {tmp_path / 'a'}: its symlinks form a loop"
    )
    assert (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink()


@needs_fifo
def test_write_onto_a_fifo_is_refused(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "link").symlink_to("pipe")
    with deadline():
        assert refused(write_text_file, fifo, "x") == (
            f"{fifo} is a FIFO, not a regular file: refusing to write it"
        )
        assert "is a FIFO" in refused(write_text_file, tmp_path / "link", "x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert no_temporaries(tmp_path)


def test_write_onto_dev_null_is_refused():
    device = char_device("/dev/null")
    expected = "/dev/null is a character device, not a regular file: refusing to write it"
    # The check first: should it ever pass by mistake, the test stops before a write that (as
    # root) would replace /dev/null.
    assert refused(check_writable_target, device) == expected
    assert refused(write_text_file, device, "x") == expected
    assert stat.S_ISCHR(os.stat(device).st_mode)


def test_write_onto_a_directory_is_refused(tmp_path):
    (tmp_path / "notes").mkdir()
    assert (
        refused(write_text_file, tmp_path / "notes", "x") == f"{tmp_path / 'notes'} is a directory"
    )
    assert listing(tmp_path / "notes") == []


def test_write_with_a_missing_parent(tmp_path):
    path = tmp_path / "gone" / "out.md"
    assert (
        refused(write_text_file, path, "x")
        == f"no such directory: {tmp_path / 'gone'} (for {path})"
    )
    assert listing(tmp_path) == []


def test_write_with_a_parent_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "out.md"
    assert (
        refused(write_text_file, path, "x")
        == f"{tmp_path / 'file'} is not a directory (for {path})"
    )
    deeper = tmp_path / "file" / "sub" / "out.md"
    assert f"is not a directory (for {deeper})" in refused(write_text_file, deeper, "x")


def test_check_writable_target_creates_nothing(tmp_path):
    assert check_writable_target(tmp_path / "new.md") == tmp_path / "new.md"
    (tmp_path / "old.md").write_text("keep")
    assert check_writable_target(tmp_path / "old.md") == tmp_path / "old.md"
    assert listing(tmp_path) == ["old.md"]
    assert (tmp_path / "old.md").read_text() == "keep"


@pytest.mark.parametrize("failing", ["replace", "fsync", "write"])
def test_disk_full_leaves_nothing_behind(tmp_path, monkeypatch, failing):
    path = tmp_path / "out.md"
    path.write_text("old content")
    before = listing(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, failing, full)
    message = refused(write_text_file, path, "new content")
    monkeypatch.undo()

    assert message == f"disk full while writing {path}"
    assert listing(tmp_path) == before
    assert path.read_text() == "old content"


def test_a_failed_new_file_leaves_nothing(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(os, "replace", denied)
    path = tmp_path / "new.md"
    assert refused(write_text_file, path, "x") == f"cannot write {path}: Permission denied"
    monkeypatch.undo()
    assert listing(tmp_path) == []


def test_keyboard_interrupt_leaves_nothing_behind(tmp_path, monkeypatch):
    path = tmp_path / "out.md"
    path.write_text("old")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_text_file(path, "new")
    monkeypatch.undo()
    assert listing(tmp_path) == ["out.md"]
    assert path.read_text() == "old"


@pytest.mark.skipif(as_root, reason="root writes into any directory")
def test_write_into_a_read_only_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "out.md").write_text("old")
    locked.chmod(0o555)
    try:
        message = refused(write_text_file, locked / "out.md", "new")
    finally:
        locked.chmod(0o755)
    assert message == f"cannot write {locked / 'out.md'}: Permission denied"
    assert listing(locked) == ["out.md"]


def test_the_temporary_file_is_hidden_and_beside_the_target(tmp_path, monkeypatch):
    seen: list[str] = []
    replace = os.replace

    def spying(src, dst):
        seen.append(os.fspath(src))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", spying)
    write_text_file(tmp_path / "out.md", "x")
    (tmp_name,) = seen
    assert Path(tmp_name).parent == tmp_path
    assert Path(tmp_name).name.startswith(".out.md.") and tmp_name.endswith(".tmp")


# ---------------------------------------------------------------------------
# Backups


def test_backup_when_the_content_differs(tmp_path):
    path = tmp_path / "out.md"
    path.write_bytes(b"old\r\n")
    path.chmod(0o640)

    written = write_text_file(path, "new\n", backup=True)

    bak = tmp_path / "out.md.bak"
    assert written == Written(path=path, backup=bak)
    assert bak.read_bytes() == b"old\r\n"
    assert path.read_bytes() == b"new\n"
    assert stat.S_IMODE(os.stat(bak).st_mode) == 0o640


def test_no_backup_when_the_content_is_the_same(tmp_path):
    path = tmp_path / "out.md"
    path.write_text("same")
    assert write_text_file(path, "same", backup=True).backup is None
    assert listing(tmp_path) == ["out.md"]


def test_no_backup_for_a_new_file(tmp_path):
    assert write_text_file(tmp_path / "out.md", "x", backup=True).backup is None
    assert listing(tmp_path) == ["out.md"]


def test_backup_replaces_an_older_backup(tmp_path):
    path = tmp_path / "out.md"
    path.write_text("one")
    write_text_file(path, "two", backup=True)
    write_text_file(path, "three", backup=True)
    assert (tmp_path / "out.md.bak").read_text() == "two"
    assert listing(tmp_path) == ["out.md", "out.md.bak"]


def test_backup_goes_beside_the_symlinks_target(tmp_path):
    (tmp_path / "notes").mkdir()
    real = tmp_path / "notes" / "backlog.md"
    real.write_text("old")
    (tmp_path / "link.md").symlink_to(real)
    written = write_text_file(tmp_path / "link.md", "new", backup=True)
    assert written.backup == tmp_path / "notes" / "backlog.md.bak"
    assert written.backup.read_text() == "old"
    assert listing(tmp_path) == ["link.md", "notes"]


def test_backup_refused_when_the_bak_is_a_directory(tmp_path):
    path = tmp_path / "out.md"
    path.write_text("old")
    (tmp_path / "out.md.bak").mkdir()
    message = refused(write_text_file, path, "new", backup=True)
    assert message.startswith(f"{tmp_path / 'out.md.bak'} is a directory, not a regular file")
    assert str(path) in message
    assert path.read_text() == "old"
    assert listing(tmp_path) == ["out.md", "out.md.bak"]
    assert listing(tmp_path / "out.md.bak") == []


def test_backup_refused_when_the_bak_is_a_symlink(tmp_path):
    path = tmp_path / "out.md"
    path.write_text("old")
    (tmp_path / "elsewhere.md").write_text("untouched")
    (tmp_path / "out.md.bak").symlink_to("elsewhere.md")
    message = refused(write_text_file, path, "new", backup=True)
    assert f"{tmp_path / 'out.md.bak'} is a symlink" in message
    assert path.read_text() == "old"
    assert (tmp_path / "elsewhere.md").read_text() == "untouched"
    assert (tmp_path / "out.md.bak").is_symlink()


@needs_fifo
def test_backup_refused_when_the_bak_is_a_fifo(tmp_path):
    path = tmp_path / "out.md"
    path.write_text("old")
    os.mkfifo(tmp_path / "out.md.bak")
    with deadline():
        assert "is a FIFO, not a regular file" in refused(write_text_file, path, "new", backup=True)
    assert path.read_text() == "old"
    assert stat.S_ISFIFO(os.lstat(tmp_path / "out.md.bak").st_mode)


# ---------------------------------------------------------------------------
# Permission errors, simulated so they are also checked when the tests run as root


def _denied(*args, **kwargs):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


def test_read_permission_denied_simulated(tmp_path, monkeypatch):
    path = tmp_path / "secret.md"
    path.write_text("x")
    monkeypatch.setattr(os, "open", _denied)
    assert refused(read_text_file, path) == f"cannot read {path}: Permission denied"


def test_write_permission_denied_simulated(tmp_path, monkeypatch):
    import tempfile

    path = tmp_path / "out.md"
    path.write_text("old")
    monkeypatch.setattr(tempfile, "mkstemp", _denied)
    assert refused(write_text_file, path, "new") == f"cannot write {path}: Permission denied"
    monkeypatch.undo()
    assert listing(tmp_path) == ["out.md"]
    assert path.read_text() == "old"


@pytest.mark.skipif(not as_root, reason="only root can give a file to another user")
def test_root_rewriting_a_users_file_keeps_its_owner(tmp_path):
    path = tmp_path / "out.md"
    path.write_text("old")
    os.chown(path, 65534, 65534)
    write_text_file(path, "new", backup=True)
    for written in (path, tmp_path / "out.md.bak"):
        assert (os.stat(written).st_uid, os.stat(written).st_gid) == (65534, 65534)
