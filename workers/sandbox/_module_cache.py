"""The on-disk cache of compiled modules: ``{data_dir}/modules/<digest>-<engine>.cwasm``, one file per module.

A compiled artifact is machine code that the worker will run, so a file is used only when it is ours and
intact, and any doubt means compiling again (never failing a spawn):

- The folder is created 0700 and refused (the cache is then off, :attr:`ModuleCache.refused` says why) when
  anyone else may write it. A file must be a regular file (no symlink) owned by this user and writable by
  nobody else, checked on the open descriptor that is then mapped (``/proc/self/fd/N``): the file checked
  is the file loaded.
- Every file ends with a trailer: the sha256 of the artifact and a magic tag. wasmtime checks an artifact's
  header and layout (a truncated file is refused) but not its machine code: a flipped byte in the code would
  load and run. A file whose trailer is missing or does not match is removed (with a log line) and the
  module compiled again. wasmtime 50 ignores bytes after the artifact's ELF image, so the file with its
  trailer is mapped as it is (tests/workers/test_sandbox_module_cache.py checks both).
- A file is written whole under a name of its own (pid and thread) and renamed over the final name, so two
  workers compiling the same module at once each write a complete file and the last rename wins; a reader
  never sees a partial file, and a mapped file is never changed in place (a rename leaves the old inode to
  whoever maps it).
- A write that fails (a read-only or full data dir, a file size limit) removes its partial file and logs a
  line; the module compiled in memory is used as if there were no cache. The partial file of a writer that
  died mid-write is removed by the next cache opened on the folder once it is old (``STALE_WRITE_S``).

:class:`ShippedModules` is a second, read-only folder: the built-in guests compiled when the package was
installed (``make install`` runs ``python -m openfang.workers.sandbox.shipped``), so a fresh data dir's first
spawn maps them instead of compiling (~5 ms). The same checks apply, except that the folder and its files
may be root's as well as this user's (an installed package is root's or the installer's; root may write
anything anyway): anything another user may write is never loaded. A file this process cannot use is only
logged (it is not ours to remove); wasmtime refuses an artifact of another wasmtime version, engine setting
or CPU, and the module is then compiled as before.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import structlog

from openfang.security._hashing import sha256

log = structlog.get_logger("openfang.workers.sandbox.module_cache")

MAGIC = b"OFCWASM1"  # the trailer's tag (and its version)
TRAILER_BYTES = 32 + len(MAGIC)  # sha256 of the artifact, then the tag
_CHUNK = 1 << 16
STALE_WRITE_S = 600.0  # a partial file this old has no live writer
_SHIPPED_OWNERS = (os.getuid(), 0)  # whose install-time modules may be loaded (see ShippedModules)


class ModuleCache:
    """One cache folder (see the module docstring). ``refused`` is why it is off, None when it is on."""

    def __init__(self, folder: Path | None) -> None:
        self.refused: str | None = None
        self.folder = self._trusted(folder)

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def path(self, digest: str, engine: str) -> Path:
        """Where the module ``digest`` compiled for an engine with fingerprint ``engine`` is kept."""
        assert self.folder is not None
        return self.folder / f"{digest}-{engine}.cwasm"

    @contextmanager
    def verified(self, path: Path) -> Iterator[str | None]:
        """A path to map ``path``'s artifact from, once it is checked (see the module docstring), valid
        inside the ``with``; None when there is no usable file (a bad one is removed, with a log line)."""
        # A symlink (ELOOP) or an unreadable file: compile, and the write replaces it.
        with _checked(path, None, "module_cache_unreadable", self.discard) as mapped:
            yield mapped

    def discard(self, path: Path, reason: str) -> None:
        """Remove a cached file that cannot be used, saying why (the module is compiled again)."""
        log.warning("module_cache_discarded", path=str(path), reason=reason)
        with suppress(OSError):
            path.unlink()

    def write(self, path: Path, artifact: bytes) -> bool:
        """Store ``artifact`` (with its trailer) at ``path``; False, logged, when the folder refuses it."""
        return write_artifact(path, artifact, mode=0o600)

    def _trusted(self, folder: Path | None) -> Path | None:
        """The folder, made 0700 if missing; None (with the reason kept) if it cannot be used."""
        if folder is None:
            return None
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            self.refused = f"{folder}: cannot create: {exc.strerror}"
            return None
        if not private(folder):
            self.refused = f"{folder}: others may write it (it must be private to uid {os.getuid()})"
            return None
        _remove_stale_writes(folder)
        return folder


class ShippedModules:
    """The read-only folder of modules compiled at install time (see the module docstring); ``refused`` is
    why it is not used (None when it is, or when there is no such folder)."""

    def __init__(self, folder: Path | None) -> None:
        self.refused: str | None = None
        self.folder: Path | None = None
        if folder is None or not folder.is_dir():
            return
        if not private(folder, _SHIPPED_OWNERS):
            self.refused = (
                f"{folder}: another user may write it (it must be root's or uid {os.getuid()}'s, writable by "
                "no one else)"
            )
            return
        self.folder = folder

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def path(self, digest: str, engine: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{digest}-{engine}.cwasm"

    @contextmanager
    def verified(self, path: Path) -> Iterator[str | None]:
        """As :meth:`ModuleCache.verified`, for a file that may be root's; a file that cannot be used is
        logged, never removed."""
        with _checked(path, _SHIPPED_OWNERS, "module_cache_shipped_unreadable", self.ignore) as mapped:
            yield mapped

    def ignore(self, path: Path, reason: str) -> None:
        """A shipped file that cannot be used: said once per use, left in place (the module is compiled)."""
        log.warning("module_cache_shipped_ignored", path=str(path), reason=reason)


@contextmanager
def _checked(
    path: Path, owners: tuple[int, ...] | None, unreadable: str, refuse: Callable[[Path, str], None]
) -> Iterator[str | None]:
    """A path to map ``path``'s artifact from once :func:`_check` passes it (for ``owners``), valid inside the
    ``with`` (the file stays open); None when there is no usable file: a missing one silently, one that
    cannot be opened with the log line ``unreadable``, one that fails the check through ``refuse``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        yield None
        return
    except OSError as exc:
        log.warning(unreadable, path=str(path), error=exc.strerror or str(exc))
        yield None
        return
    try:
        try:
            problem = _check(fd, owners)
        except OSError as exc:  # a read error: this copy is no use either way
            problem = f"unreadable: {exc.strerror or exc}"
        if problem is not None:
            refuse(path, problem)
            yield None
            return
        proc = f"/proc/self/fd/{fd}"
        yield proc if os.path.exists(proc) else str(path)
    finally:
        os.close(fd)


def write_artifact(path: Path, artifact: bytes, *, mode: int) -> bool:
    """Write ``artifact`` and its trailer to a file of its own, then rename it to ``path`` (see the module
    docstring); False, logged, when that fails."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(artifact)
            out.write(sha256(artifact).digest() + MAGIC)
        os.replace(tmp, path)
    except OSError as exc:
        with suppress(OSError):
            tmp.unlink()
        log.warning("module_cache_write_failed", path=str(path), error=exc.strerror or str(exc))
        return False
    return True


def _remove_stale_writes(folder: Path) -> None:
    """Remove the partial files of writers that died mid-write (a write takes milliseconds: a partial file
    older than STALE_WRITE_S has no live writer). Best effort, once per cache (per worker and engine)."""
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            with suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime > STALE_WRITE_S:
                    os.unlink(entry.path)
                    log.info("module_cache_stale_write_removed", path=entry.path)


def _check(fd: int, owners: tuple[int, ...] | None = None) -> str | None:
    """Why the open file ``fd`` may not be loaded, or None when it is ours (or, with ``owners``, one of
    theirs), writable by nobody else, and its trailer matches."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid not in (owners or (os.getuid(),)) or st.st_mode & 0o022:
        mode = stat.S_IMODE(st.st_mode)
        must = "root's or ours, writable by no one else" if owners else "ours, 0600"
        return f"owned by uid {st.st_uid} with mode {mode:o} (must be {must})"
    size = st.st_size - TRAILER_BYTES
    if size <= 0:
        return f"truncated ({st.st_size} bytes)"
    digest = sha256(size=size)
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    done = 0
    while done < size:
        got = os.preadv(fd, [view[: min(_CHUNK, size - done)]], done)
        if got <= 0:
            return f"truncated while read ({done} of {size} bytes)"
        digest.update(view[:got])
        done += got
    trailer = os.pread(fd, TRAILER_BYTES, size)
    if trailer[32:] != MAGIC:
        return "no trailer (truncated, or not written by this version)"
    if trailer[:32] != digest.digest():
        return "checksum mismatch (the file changed after it was written)"
    return None


def private(path: Path, owners: tuple[int, ...] | None = None) -> bool:
    """Owned by this user (or one of ``owners``) and writable by nobody else (what a file of machine code we
    will run needs)."""
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_uid in (owners or (os.getuid(),)) and not st.st_mode & 0o022
