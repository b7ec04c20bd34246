"""Layer 16, rollback protection: versions only go forward, per manifest/module name.

A small SQLite state file remembers, for each name, the highest version ever accepted and the digest it
had. :meth:`VersionStore.check` refuses an older version — even one with a valid signature, which is the
point: an attacker replaying last year's signed release with a known hole gets nowhere — and refuses the
same version with *different* bytes (a version number must name one artifact). :meth:`VersionStore.accept`
records a version after a successful spawn. Versions are integers or dotted numbers (``"1.10.2"``), compared
numerically.

Every worker reads and writes the same file. What this process read is kept until another connection
commits to the file (``PRAGMA data_version`` tells, without reading a row), so a pool of agents of one
manifest asks SQLite for the version once, not twice per spawn, and still sees another worker's newer
version at the very next check.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from openfang.protocol.errors import ConfigError, Problem
from openfang.security import dbfile
from openfang.security._errors import Denied
from openfang.security.audit import AuditSink

_VERSION = re.compile(r"^\d{1,9}(?:\.\d{1,9}){0,5}$")
OPEN_TIMEOUT_S = 30.0
T = TypeVar("T")


def _while_locked(work: Callable[[], T], timeout: float = OPEN_TIMEOUT_S) -> T:
    """``work()``, retried while SQLite says "database is locked" (up to ``timeout``).

    Two connections creating the same new database at once (the workers of a pool forked together) can
    deadlock on its first write; SQLite then answers one of them "locked" at once, without waiting for the
    busy timeout. Retrying that connection is the documented way out.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return work()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def parse_version(version: int | str) -> tuple[int, ...]:
    """``3`` -> (3,), ``"1.10.2"`` -> (1, 10, 2). ValueError for anything else (pre-release tags included)."""
    if isinstance(version, bool):
        raise ValueError("a version is an integer or dotted numbers, not a boolean")
    if isinstance(version, int):
        if version < 0:
            raise ValueError(f"version {version} is negative")
        return (version,)
    if isinstance(version, str) and _VERSION.match(version):
        parts = tuple(int(p) for p in version.split("."))
        return parts
    raise ValueError(f"version {str(version)[:40]!r} must be an integer or dotted numbers like 1.4.2")


def _cmp_key(v: tuple[int, ...]) -> tuple[int, ...]:
    # 1.2 == 1.2.0: pad so trailing zeros do not make a version "newer".
    return v + (0,) * (6 - len(v))


_CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS versions (name TEXT PRIMARY KEY, version TEXT NOT NULL, shown TEXT NOT NULL, "
    "digest TEXT NOT NULL)"
)


def create_state(path: str | os.PathLike[str]) -> bool:
    """Make the absent version state file at ``path``, complete or not at all (``dbfile.create``: two
    fsyncs); True when this call made it. The daemon makes it while its first worker starts (control
    daemon's ``_before_ready``), so that worker only opens it; the first :class:`VersionStore` makes it
    otherwise. Raises sqlite3.Error or OSError when it cannot be made."""
    return dbfile.create(path, f"BEGIN IMMEDIATE;{_CREATE_TABLE};COMMIT;")


class VersionStore:
    """Highest accepted version per name, persisted in SQLite (safe across processes)."""

    def __init__(self, path: str | os.PathLike[str], *, audit: AuditSink | None = None) -> None:
        self.path = Path(path)
        self._audit = audit
        try:
            # A fresh file (the first worker of a fresh data dir, before it is ready): made complete or not at
            # all, in two fsyncs instead of seven (dbfile); another worker's meanwhile is used as it is.
            create_state(self.path)
            self._conn = sqlite3.connect(str(self.path), timeout=OPEN_TIMEOUT_S, isolation_level=None)
            _while_locked(lambda: self._conn.execute("PRAGMA journal_mode=WAL"))
            _while_locked(lambda: self._conn.execute(_CREATE_TABLE))
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError([Problem(str(self.path), f"cannot open the version state: {exc}")]) from None
        self._seen: dict[str, tuple[tuple[int, ...], str, str] | None] = {}  # name -> row, as read last
        self._probe = self._conn.cursor()  # for PRAGMA data_version, once a check (no cursor made for it)
        self._data_version = -1  # the file's data_version when _seen was filled
        self._committed = False  # this connection has committed (its log's first-commit fsyncs are paid)

    def current(self, name: str) -> tuple[tuple[int, ...], str, str] | None:
        """``(version, shown, digest)`` recorded for ``name``, or None."""
        changed = self._probe.execute("PRAGMA data_version").fetchone()[0]
        if changed != self._data_version:  # another process wrote: forget everything read before
            self._seen.clear()
            self._data_version = changed
        elif name in self._seen:
            return self._seen[name]
        row = self._conn.execute(
            "SELECT version, shown, digest FROM versions WHERE name = ?", (name,)
        ).fetchone()
        cur = (tuple(json.loads(row[0])), row[1], row[2]) if row else None
        if len(self._seen) >= 1024:
            self._seen.clear()
        self._seen[name] = cur
        return cur

    def check(self, name: str, version: int | str, digest: str) -> tuple[tuple[int, ...], str, str] | None:
        """Raise Denied if ``version`` of ``name`` is older than accepted, or reuses a version number; else
        the accepted ``(version, shown, digest)`` it was checked against (None: none yet)."""
        cur = self.current(name)
        if cur is not None and cur[2] == digest and cur[1] == str(version):
            return cur  # the accepted version and bytes themselves (a pool's spawns): nothing older, no reuse
        self._check(name, version, digest, cur)
        return cur

    def _check(
        self, name: str, version: int | str, digest: str, cur: tuple[tuple[int, ...], str, str] | None
    ) -> tuple[int, ...]:
        try:
            v = parse_version(version)
        except ValueError as exc:
            raise Denied(f"{name}: {exc}", layer="rollback", reason="bad_version") from None
        if cur is None:
            return v
        cur_v, shown, cur_digest = cur
        if _cmp_key(v) < _cmp_key(cur_v):
            if self._audit is not None:
                self._audit.append("rollback.refused", name=name, offered=str(version), current=shown)
            raise Denied(
                f"{name}: version {version} is older than the accepted {shown} (rollback refused)",
                layer="rollback",
                reason="rollback",
            )
        if _cmp_key(v) == _cmp_key(cur_v) and digest != cur_digest:
            if self._audit is not None:
                self._audit.append("rollback.version_reuse", name=name, version=str(version))
            raise Denied(
                f"{name}: version {version} was accepted before with different bytes",
                layer="rollback",
                reason="version_reuse",
            )
        return v

    def accept(self, name: str, version: int | str, digest: str) -> None:
        """Check, then record ``version`` as the newest accepted (atomically against other processes)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            v = self._check(name, version, digest, self.current(name))
            conn.execute(
                "INSERT INTO versions (name, version, shown, digest) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET "
                "version = excluded.version, shown = excluded.shown, digest = excluded.digest",
                (name, json.dumps(list(v)), str(version), digest),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            self._seen.pop(name, None)
            raise
        self._seen[name] = (v, str(version), digest)  # our own commit leaves data_version as it was
        self._committed = True

    def warm_up(self, *, wait: bool = True) -> bool:
        """Pay this connection's first commit's extra fsyncs now, with no spawn waiting on them; True once
        this connection has committed.

        The first commit to a new ``-wal`` file syncs its header, its directory entry and the commit: three
        fsyncs where later commits have one (``dbfile``). A worker calls this in its warm-up (a cold start's
        first spawn then waits for one fsync in :meth:`accept`). It rewrites the file's ``user_version``
        with its own value: no row changes. A no-op once this connection has committed. ``wait=False``: when
        another connection holds the write lock, give up at once (False) instead of waiting for it (a loop
        that must not wait: the first accept pays the fsyncs then)."""
        if self._committed:
            return True
        conn = self._conn
        if wait:
            _while_locked(lambda: conn.execute("BEGIN IMMEDIATE"))
        else:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                return False
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(OPEN_TIMEOUT_S * 1000)}")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._committed = True
        return True

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> VersionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
