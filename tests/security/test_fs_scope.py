"""Scoped file access: reads and writes stay under the root, whatever paths and symlinks say."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from openfang.protocol.errors import NotFound, SecurityError
from openfang.security.fs_scope import ScopedFS


@pytest.fixture
def scoped(tmp_path: Path) -> ScopedFS:
    root = tmp_path / "agent"
    root.mkdir()
    return ScopedFS(root, max_read_bytes=1000, max_write_bytes=1000)


def test_scoped_fs_write_then_read_round_trips_and_creates_directories(scoped: ScopedFS) -> None:
    """A write creates missing directories under the root and a read returns the same bytes."""
    assert scoped.write("notes/day1/todo.txt", "buy milk\n") == 9
    assert scoped.read("notes/day1/todo.txt") == b"buy milk\n"
    assert (scoped.root / "notes" / "day1" / "todo.txt").read_text() == "buy milk\n"
    assert scoped.read_text("./notes//day1/todo.txt") == "buy milk\n"


def test_scoped_fs_append_adds_to_the_end(scoped: ScopedFS) -> None:
    """append=True appends instead of replacing."""
    scoped.write("log.txt", "a")
    scoped.write("log.txt", "b", append=True)
    assert scoped.read("log.txt") == b"ab"


def test_scoped_fs_replace_leaves_no_temporary_files(scoped: ScopedFS) -> None:
    """A replacing write renames a temporary file into place and leaves nothing else behind."""
    scoped.write("f.txt", "one")
    scoped.write("f.txt", "two")
    assert sorted(os.listdir(scoped.root)) == ["f.txt"]
    assert scoped.read("f.txt") == b"two"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../outside.txt", r"'\.\.'"),
        ("a/../../outside.txt", r"'\.\.'"),
        ("/etc/passwd", "absolute"),
        ("\\windows", "absolute"),
        ("a\x00b", "NUL"),
    ],
)
def test_scoped_fs_refuses_paths_that_leave_the_root(scoped: ScopedFS, path: str, reason: str) -> None:
    """Traversal, absolute paths and NUL bytes are refused for reads and writes alike."""
    with pytest.raises(SecurityError, match=reason):
        scoped.read(path)
    with pytest.raises(SecurityError, match=reason):
        scoped.write(path, "x")


def test_scoped_fs_refuses_a_symlinked_file_pointing_outside(scoped: ScopedFS, tmp_path: Path) -> None:
    """A symlink in the tree to a file outside is neither read nor written through."""
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    os.symlink(secret, scoped.root / "link.txt")
    with pytest.raises(SecurityError, match="symbolic link"):
        scoped.read("link.txt")
    with pytest.raises(SecurityError, match="not a regular file"):
        scoped.write("link.txt", "overwritten")
    assert secret.read_text() == "top secret"


def test_scoped_fs_refuses_a_symlinked_directory_on_the_path(scoped: ScopedFS, tmp_path: Path) -> None:
    """A directory symlink anywhere on the path is refused, so files outside cannot be reached or created."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.txt").write_text("outside data")
    os.symlink(outside, scoped.root / "shared")
    with pytest.raises(SecurityError, match="symbolic link"):
        scoped.read("shared/data.txt")
    with pytest.raises(SecurityError, match="symbolic link"):
        scoped.write("shared/new.txt", "planted")
    with pytest.raises(SecurityError, match="symbolic link"):
        scoped.list("shared")
    assert sorted(os.listdir(outside)) == ["data.txt"]


def test_scoped_fs_refuses_a_root_that_is_a_symlink(tmp_path: Path) -> None:
    """The root itself must be a real directory."""
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "alias")
    with pytest.raises(SecurityError, match="symlink"):
        ScopedFS(tmp_path / "alias")


def test_scoped_fs_enforces_read_and_write_size_limits(scoped: ScopedFS) -> None:
    """Files over the read limit are refused; writes or appends past the limit change nothing."""
    (scoped.root / "big.bin").write_bytes(b"x" * 1001)
    with pytest.raises(SecurityError, match="1001 bytes, the limit is 1000"):
        scoped.read("big.bin")
    with pytest.raises(SecurityError, match="limit is 1000"):
        scoped.write("new.bin", b"y" * 1001)
    assert not scoped.exists("new.bin")
    scoped.write("a.txt", "z" * 600)
    with pytest.raises(SecurityError, match="would be 1200 bytes"):
        scoped.write("a.txt", "z" * 600, append=True)
    assert len(scoped.read("a.txt")) == 600
    assert scoped.read("a.txt", max_bytes=600) == b"z" * 600
    with pytest.raises(SecurityError, match="limit is 10"):
        scoped.read("a.txt", max_bytes=10)


def test_scoped_fs_refuses_to_open_a_fifo(scoped: ScopedFS) -> None:
    """A FIFO is refused at once instead of blocking the reader."""
    os.mkfifo(scoped.root / "pipe")
    with pytest.raises(SecurityError, match="not a regular file"):
        scoped.read("pipe")


def test_scoped_fs_missing_file_is_not_found(scoped: ScopedFS) -> None:
    """A missing file raises NotFound naming the path."""
    with pytest.raises(NotFound, match=r"nope\.txt"):
        scoped.read("nope.txt")


def test_scoped_fs_list_reports_kinds_without_following_symlinks(scoped: ScopedFS, tmp_path: Path) -> None:
    """list() shows files, directories and symlinks as they are, sorted, up to max_entries."""
    scoped.write("b.txt", "12345")
    scoped.write("sub/c.txt", "")
    os.symlink(tmp_path, scoped.root / "a-link")
    entries = scoped.list()
    assert [(e.name, e.kind) for e in entries] == [("a-link", "symlink"), ("b.txt", "file"), ("sub", "dir")]
    assert entries[1].size == 5
    small = ScopedFS(scoped.root, max_entries=2)
    assert len(small.list(".")) == 2


def test_scoped_fs_reading_the_root_itself_is_refused(scoped: ScopedFS) -> None:
    """The root is a directory: read and write need a file name."""
    with pytest.raises(SecurityError, match="name a file"):
        scoped.read(".")
    with pytest.raises(SecurityError, match="name a file"):
        scoped.write("", "x")
