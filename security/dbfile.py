"""Creating a SQLite file in WAL mode with two fsyncs, complete or not at all (cold start: issue 15).

Made in place, a new file costs seven fsyncs before its first row: SQLite switches it to WAL through a
rollback journal (the journal, its directory entry, the journal again, the file), then the first commit to
the new log syncs its header, its directory entry and the commit. The daemon makes ``audit.db`` (the root),
the gateway ``agents.db`` and the first worker ``versions.db`` on the cold start's path, in a fresh data
dir: 21 fsyncs, each a wait on the disk (tens of ms when other processes write).

:func:`create` writes the file aside with synchronous OFF (no fsync), syncs it once and hard-links it into
place, then syncs the directory: a crash before the link leaves no file (the next start makes it again;
at most the dead process's private file remains), after it a complete one. Rows are written only later,
through the file's own connections with their own synchronous level, so nothing acknowledged is any less
durable. A file another process made meanwhile is never replaced.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

__all__ = ["create"]


def create(path: str | os.PathLike[str], script: str) -> bool:
    """Make the absent ``path`` a SQLite file in WAL mode holding what ``script`` makes; True when this call
    made it, False when it existed or another process made it meanwhile. On a file system without hard links
    it makes nothing (False): the caller's open makes the file in place, as SQLite always does.

    Raises sqlite3.Error when ``script`` fails, OSError when the private file cannot be written.
    """
    path = Path(path)
    if path.exists():
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    _remove(tmp)  # this pid's own, from a creation that crashed
    try:
        db = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            db.execute("PRAGMA synchronous = OFF")  # synced once, below, before anyone can see the file
            # Recorded in the file's header: opening it later writes nothing.
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(script)
        finally:
            db.close()  # the last connection: the log is checkpointed into the file and removed
    except BaseException:
        _remove(tmp)
        raise
    try:
        _fsync(tmp)
        os.link(tmp, path)
    except FileExistsError:
        return False  # made by another process meanwhile: that one is used
    except OSError:
        return False  # no hard links here (or no room): made in place when opened, as before
    finally:
        tmp.unlink(missing_ok=True)
    # The link made durable. Best effort, as SQLite's own directory sync: a file system that cannot sync a
    # directory (EINVAL) still gets the file, as it would from SQLite.
    with contextlib.suppress(OSError):
        _fsync(path.parent)
    return True


def _remove(db: Path) -> None:
    """Remove a SQLite file and its journal, log and shared-memory files, those that exist."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
