"""Scoped file access: an agent reads and writes only below its own root directory.

:class:`ScopedFS` takes paths relative to ``root`` and refuses absolute paths, ``..`` components, NUL bytes
and symbolic links anywhere on the path. It never builds a path string and hands it to ``open``: it walks
from a descriptor of the root one component at a time with ``O_NOFOLLOW`` (``openat`` semantics), so a
symlink planted in the tree, or swapped in between a check and a use, cannot lead outside the root.
Only regular files are read or written (no FIFOs or devices); reads, writes and listings have size limits.
Writes go to a temporary file in the same directory and are renamed into place, so a reader never sees a
half-written file.

Errors: :class:`SecurityError` (code ``denied``) for anything the policy refuses, :class:`NotFound` for a
missing path, :class:`OpenFangError` with code ``io_error`` for other operating-system failures.
"""

from __future__ import annotations

import builtins
import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from openfang.protocol.errors import NotFound, OpenFangError, SecurityError

DEFAULT_MAX_READ = 1 << 20  # 1 MiB
DEFAULT_MAX_WRITE = 1 << 20
DEFAULT_MAX_ENTRIES = 1000
MAX_PATH_CHARS = 1024
MAX_DEPTH = 32

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One directory entry as :meth:`ScopedFS.list` reports it."""

    name: str
    kind: str  # "file", "dir", "symlink" or "other"
    size: int


def _io_error(op: str, rel: str, exc: OSError) -> OpenFangError:
    if exc.errno == errno.ENOENT:
        return NotFound(f"{op} {rel!r}: no such file or directory")
    if exc.errno == errno.ELOOP or exc.errno == errno.ENOTDIR:
        return SecurityError(f"{op} {rel!r}: refused, a path component is a symbolic link or not a directory")
    return OpenFangError(f"{op} {rel!r}: {exc.strerror or exc}", code="io_error")


class ScopedFS:
    """File access confined to ``root`` (which must exist and be a real directory, not a symlink)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_read_bytes: int = DEFAULT_MAX_READ,
        max_write_bytes: int = DEFAULT_MAX_WRITE,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_absolute():
            self.root = self.root.absolute()
        if self.root.is_symlink() or not self.root.is_dir():
            raise SecurityError(f"scoped fs root {str(self.root)!r} is not a directory (or is a symlink)")
        self.max_read_bytes = max_read_bytes
        self.max_write_bytes = max_write_bytes
        self.max_entries = max_entries

    def __repr__(self) -> str:
        return f"ScopedFS({str(self.root)!r})"

    # ---- path checks ---------------------------------------------------------------------------------

    @staticmethod
    def parts(rel: str) -> tuple[str, ...]:
        """The components of relative path ``rel`` after the policy checks ("." and "" give ())."""
        if not isinstance(rel, str):
            raise SecurityError(f"path must be a string, got {type(rel).__name__}")
        if "\x00" in rel:
            raise SecurityError("path refused: contains a NUL byte")
        if len(rel) > MAX_PATH_CHARS:
            raise SecurityError(f"path refused: longer than {MAX_PATH_CHARS} characters")
        if rel.startswith(("/", "\\")) or PurePosixPath(rel).is_absolute():
            raise SecurityError(f"path refused: {rel!r} is absolute; paths are relative to the agent's root")
        parts = tuple(p for p in rel.split("/") if p not in ("", "."))
        if ".." in parts:
            raise SecurityError(f"path refused: {rel!r} contains '..'")
        if len(parts) > MAX_DEPTH:
            raise SecurityError(f"path refused: deeper than {MAX_DEPTH} directories")
        return parts

    @contextmanager
    def _dir(self, parts: tuple[str, ...], *, create: bool = False) -> Iterator[int]:
        """A descriptor of directory root/parts, reached without following any symlink."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for name in parts:
                if create:
                    with suppress(FileExistsError):
                        os.mkdir(name, 0o755, dir_fd=fd)
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            os.close(fd)

    # ---- operations ----------------------------------------------------------------------------------

    def read(self, rel: str, *, max_bytes: int | None = None) -> bytes:
        """The content of file ``rel``; refused when it is larger than the read limit."""
        parts = self.parts(rel)
        if not parts:
            raise SecurityError("read refused: the root is a directory, name a file")
        limit = self.max_read_bytes if max_bytes is None else min(max_bytes, self.max_read_bytes)
        try:
            with self._dir(parts[:-1]) as dfd:
                # O_NONBLOCK: opening a FIFO must not hang; it is refused below as not a regular file.
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                fd = os.open(parts[-1], flags, dir_fd=dfd)
                try:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode):
                        raise SecurityError(f"read refused: {rel!r} is not a regular file")
                    if st.st_size > limit:
                        raise SecurityError(
                            f"read refused: {rel!r} is {st.st_size} bytes, the limit is {limit}"
                        )
                    chunks: list[bytes] = []
                    total = 0
                    while total <= limit:
                        chunk = os.read(fd, min(1 << 16, limit + 1 - total))
                        if not chunk:
                            break
                        chunks.append(chunk)
                        total += len(chunk)
                    if total > limit:  # the file grew while we read it
                        raise SecurityError(f"read refused: {rel!r} is over the limit of {limit} bytes")
                    return b"".join(chunks)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise _io_error("read", rel, exc) from None

    def read_text(self, rel: str, *, max_bytes: int | None = None) -> str:
        """The content of file ``rel`` decoded as UTF-8 (invalid bytes replaced)."""
        return self.read(rel, max_bytes=max_bytes).decode("utf-8", errors="replace")

    def write(self, rel: str, data: bytes | str, *, append: bool = False, make_dirs: bool = True) -> int:
        """Write ``data`` to file ``rel`` (replacing it atomically, or appending); returns bytes written."""
        parts = self.parts(rel)
        if not parts:
            raise SecurityError("write refused: the root is a directory, name a file")
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if len(raw) > self.max_write_bytes:  # before creating any directory for it
            raise SecurityError(f"write refused: {len(raw)} bytes, the limit is {self.max_write_bytes}")
        name = parts[-1]
        try:
            with self._dir(parts[:-1], create=make_dirs) as dfd:
                try:
                    existing = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    existing = None
                if existing is not None and not stat.S_ISREG(existing.st_mode):
                    raise SecurityError(f"write refused: {rel!r} exists and is not a regular file")
                final = len(raw) + (existing.st_size if append and existing is not None else 0)
                if final > self.max_write_bytes:
                    raise SecurityError(
                        f"write refused: {rel!r} would be {final} bytes, the limit is {self.max_write_bytes}"
                    )
                if append:
                    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                    fd = os.open(name, flags, 0o644, dir_fd=dfd)
                    try:
                        _write_all(fd, raw)
                    finally:
                        os.close(fd)
                    return len(raw)
                tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(tmp, flags, 0o644, dir_fd=dfd)
                try:
                    _write_all(fd, raw)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                try:
                    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                except OSError:
                    os.unlink(tmp, dir_fd=dfd)
                    raise
                return len(raw)
        except OSError as exc:
            raise _io_error("write", rel, exc) from None

    def list(self, rel: str = ".") -> builtins.list[Entry]:
        """Entries of directory ``rel`` sorted by name (at most ``max_entries``; symlinks not followed)."""
        parts = self.parts(rel)
        out: builtins.list[Entry] = []
        try:
            with self._dir(parts) as dfd:
                for name in sorted(os.listdir(dfd)):
                    if len(out) >= self.max_entries:
                        break
                    try:
                        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # removed while we listed
                    out.append(Entry(name=name, kind=_kind(st.st_mode), size=st.st_size))
        except OSError as exc:
            raise _io_error("list", rel, exc) from None
        return out

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` names an existing entry (a symlink counts, but is never followed)."""
        parts = self.parts(rel)
        if not parts:
            return True
        try:
            with self._dir(parts[:-1]) as dfd:
                os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
            return True
        except OSError:
            return False

    # ---- walking, deleting, moving (the file tools beyond read/write/list) -----------------------------

    def walk(self, rel: str = ".", *, max_entries: int | None = None) -> builtins.list[tuple[str, Entry]]:
        """Every entry below ``rel`` as (path relative to the root, entry), depth first, sorted by name.

        Symlinks are reported, never followed; at most ``max_entries`` (default ``max_entries`` of this fs)
        are returned, and deeper than ``MAX_DEPTH`` is not descended."""
        limit = self.max_entries if max_entries is None else max_entries
        out: builtins.list[tuple[str, Entry]] = []

        def visit(parts: tuple[str, ...]) -> None:
            for entry in self.list("/".join(parts) or "."):
                if len(out) >= limit:
                    return
                path = "/".join((*parts, entry.name))
                out.append((path, entry))
                if entry.kind == "dir" and len(parts) + 1 < MAX_DEPTH:
                    visit((*parts, entry.name))

        visit(self.parts(rel))
        return out

    def delete(self, rel: str, *, recursive: bool = False) -> int:
        """Remove file (or symlink) ``rel``, or directory ``rel`` (empty, or with ``recursive``); returns the
        number of entries removed. The root itself cannot be deleted."""
        parts = self.parts(rel)
        if not parts:
            raise SecurityError("delete refused: the root cannot be deleted")
        try:
            with self._dir(parts[:-1]) as dfd:
                return _remove(dfd, parts[-1], recursive, rel)
        except OSError as exc:
            raise _io_error("delete", rel, exc) from None

    def move(self, src: str, dst: str, *, overwrite: bool = False) -> None:
        """Rename ``src`` to ``dst`` inside the root (creating ``dst``'s directories); an existing ``dst`` is
        refused unless ``overwrite`` (and a directory is never overwritten)."""
        sparts, dparts = self.parts(src), self.parts(dst)
        if not sparts or not dparts:
            raise SecurityError("move refused: the root cannot be moved or replaced")
        if dparts[: len(sparts)] == sparts:
            raise SecurityError(f"move refused: {dst!r} is inside {src!r}")
        try:
            with self._dir(sparts[:-1]) as sfd, self._dir(dparts[:-1], create=True) as dfd:
                os.stat(sparts[-1], dir_fd=sfd, follow_symlinks=False)  # NotFound before anything else
                try:
                    existing = os.stat(dparts[-1], dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    existing = None
                if existing is not None and (not overwrite or stat.S_ISDIR(existing.st_mode)):
                    raise SecurityError(
                        f"move refused: {dst!r} exists" + ("" if overwrite else " (overwrite=false)")
                    )
                os.rename(sparts[-1], dparts[-1], src_dir_fd=sfd, dst_dir_fd=dfd)
        except OSError as exc:
            raise _io_error("move", src, exc) from None


def _remove(dfd: int, name: str, recursive: bool, rel: str) -> int:
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dfd)
        return 1
    sub = os.open(name, _DIR_FLAGS, dir_fd=dfd)
    try:
        children = os.listdir(sub)
        if children and not recursive:
            raise SecurityError(f"delete refused: {rel!r} is a directory that is not empty (recursive=false)")
        removed = sum(_remove(sub, child, True, rel) for child in children)
    finally:
        os.close(sub)
    os.rmdir(name, dir_fd=dfd)
    return removed + 1


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _write_all(fd: int, raw: bytes) -> None:
    view = memoryview(raw)
    while view:
        n = os.write(fd, view)
        view = view[n:]
