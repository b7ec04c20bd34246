"""The durable agent registry: every agent the cluster ever acknowledged, in ``<data_dir>/agents.db``.

Owned by the gateway process (one writer, one thread). A spawn is written here before it is acknowledged
to its client, and every later change of an agent's state or placement after it, so the gateway can
rebuild the whole agent directory from disk after ``kill -9`` of any process, the daemon's included.

Why its own SQLite file and not the memory writer: this is control-plane metadata, needed on the spawn path
and at gateway start before (or without) a memory child; going through the writer would make every spawn
wait on another process and make agents depend on memory being configured. One table of small rows, WAL,
``synchronous = FULL``: a committed row survives a crash of the process and of the machine.

Writes are grouped: :meth:`AgentRegistry.commit` runs once per turn of the gateway's loop, and a spawn's
acknowledgement leaves only once :meth:`AgentRegistry.durable` says its row is on disk, so every
acknowledged spawn is. That row is written (and fsync'd) at the end of the turn that forwards the spawn,
while the worker builds the agent; the agent's later ``starting`` -> ``running`` is a change that may be
lost with the machine (``save(row, fsync=False)``: a restored ``starting`` row is restarted exactly like a
``running`` one), so a turn holding only such changes commits with ``synchronous = NORMAL``: in the file
(safe from any process crash), without an fsync. A warm spawn pays one fsync, not two, and its
acknowledgement never waits for one it does not need.

Manifest texts are stored once per distinct digest (a pool of 10,000 agents of one manifest holds one
text). Ids are assigned here: the manifest's ``agent_id`` when given, else ``<name>-<n>`` with ``n``
from a per-name counter that is persisted and never goes back, so an id is never handed to a second agent.
"""

from __future__ import annotations

import bisect
import itertools
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from openfang.protocol.bodies import AGENT_STATES
from openfang.protocol.errors import AlreadyExists, OpenFangError
from openfang.security import dbfile
from openfang.security._hashing import sha256

STATES = AGENT_STATES
LIVE_STATES = frozenset(STATES) - {"dead"}
SCHEMA_VERSION = 1  # bump with any change to _SCHEMA: a file already at this version is not touched

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    module_digest TEXT NOT NULL DEFAULT '',
    restart TEXT NOT NULL,
    intensity INTEGER NOT NULL,
    period_ms INTEGER NOT NULL,
    service TEXT,
    placement TEXT,
    state TEXT NOT NULL,
    parent TEXT,
    spawned_at REAL NOT NULL,
    restarts INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    manifest_path TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS manifests (digest TEXT PRIMARY KEY, text TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
"""
_CREATE = f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};COMMIT;"
_COLUMNS = (
    "agent_id, name, manifest_digest, module_digest, restart, intensity, period_ms, service, placement, "
    "state, parent, spawned_at, restarts, reason, manifest_path"
)


_PUT_MANIFEST = "INSERT OR REPLACE INTO manifests (digest, text) VALUES (?, ?)"
_PUT_COUNTER = "INSERT OR REPLACE INTO counters (name, n) VALUES (?, ?)"
_PUT_AGENT = f"INSERT OR REPLACE INTO agents ({_COLUMNS}) VALUES ({', '.join('?' * 15)})"
_DELETE_AGENT = "DELETE FROM agents WHERE agent_id = ?"


class RegistryError(OpenFangError):
    """The registry file cannot be opened or written (named in the message)."""


@dataclass(slots=True)
class AgentRow:
    """One registered agent. Mutable: the gateway changes ``state``/``placement`` and calls ``save``.

    Fields are in the table's column order, so a row is built from a fetched tuple positionally (loading
    100,000 rows at gateway start is mostly this).
    """

    agent_id: str
    name: str
    manifest_digest: str
    module_digest: str = ""
    restart: str = "permanent"  # permanent | transient | temporary
    intensity: int = 3
    period_ms: int = 5000
    service: str | None = None
    placement: str | None = None  # the worker it runs on (None: not placed)
    state: str = "starting"
    parent: str | None = None
    spawned_at: float = 0.0
    restarts: int = 0
    reason: str = ""
    manifest_path: str | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    def record(self) -> dict[str, object]:
        """The row as an ``AgentRecord`` body (what ``agent.list`` / ``agent.info`` show)."""
        return {
            "agent_id": self.agent_id,
            "name": self.name,
            "worker": self.placement,
            "state": self.state,
            "service": self.service,
            "restarts": self.restarts,
            "created_at": self.spawned_at,
            "restart": self.restart,
            "reason": self.reason or None,
            "parent": self.parent,
        }

    def _values(self) -> tuple[object, ...]:
        return (
            self.agent_id,
            self.name,
            self.manifest_digest,
            self.module_digest,
            self.restart,
            self.intensity,
            self.period_ms,
            self.service,
            self.placement,
            self.state,
            self.parent,
            self.spawned_at,
            self.restarts,
            self.reason,
            self.manifest_path,
        )


def manifest_digest(text: str) -> str:
    """The manifest's sha256 (hex), one string object per distinct text: rows share it (~0.1 KiB a row)."""
    return sys.intern(sha256(text.encode()).hexdigest())


@dataclass(frozen=True, slots=True)
class Page:
    """One page of :meth:`AgentRegistry.page`: its rows, the cursor of the next page, the matching total."""

    rows: list[AgentRow]
    next: str | None  # the last row's id when more rows match after it; None on the last page
    total: int


class AgentRegistry:
    """The rows of ``agents.db`` in memory (by id), written through to disk on :meth:`commit`.

    ``_order`` keeps every id sorted (bisect on add and remove: a memmove of at most 100,000 pointers), so
    a page starts at its cursor in O(log n) and reads only the rows it returns (plus those a filter skips).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Complete or absent after a crash, in two fsyncs instead of seven (security.dbfile): no row is
            # written before the registry is open, and every row is then committed here as before.
            dbfile.create(self.path, _CREATE)
            self._db = sqlite3.connect(str(self.path), isolation_level=None)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._synced = True  # the connection's synchronous level is FULL (True) or NORMAL
            self._db.execute("PRAGMA cache_size = -65536")  # 64 MiB: a 100,000-row table stays in cache
            # The schema in one transaction, and only when missing (a fresh file has it: dbfile.create), so
            # a start writes nothing here (the gateway opens this file on the cold start's path, before it
            # says it is ready).
            if self._db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                self._db.executescript(_CREATE)
        except (sqlite3.Error, OSError) as exc:
            raise RegistryError(f"agent registry {self.path}: cannot open: {exc}") from None
        self.rows: dict[str, AgentRow] = {}
        self._order: list[str] = []  # every id in self.rows, sorted: the order of agent.list pages
        self._manifests: dict[str, str] = {}
        self._counters: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._deleted: set[str] = set()
        self._new_manifests: set[str] = set()
        self._dirty_counters: set[str] = set()
        self._added: set[str] = set()  # ids whose row add() wrote since the last commit
        self._fsync = False  # the next commit holds a change that must survive a power cut (see save)
        self._committed = False  # this connection has committed (see warm_up)
        self._load()

    # -- reading ----------------------------------------------------------------------------------------
    def _load(self) -> None:
        cursor = self._db.execute(f"SELECT {_COLUMNS} FROM agents")
        # Each repeated string (name, digests, policy, service, worker, state) is kept once: SQLite hands
        # back a new string per column per row (~0.35 KiB a row; inlined: this loop is most of a load).
        i = sys.intern
        self.rows = {
            a: AgentRow(a, i(n), i(d), i(m), i(r), k, p, sv and i(sv), w and i(w), i(st), pa, t, rs, why, mp)
            for a, n, d, m, r, k, p, sv, w, st, pa, t, rs, why, mp in cursor
        }
        self._order = sorted(self.rows)
        self._manifests = dict(self._db.execute("SELECT digest, text FROM manifests"))
        self._counters = dict(self._db.execute("SELECT name, n FROM counters"))

    def get(self, agent_id: str) -> AgentRow | None:
        return self.rows.get(agent_id)

    def manifest(self, row: AgentRow) -> str:
        return self._manifests[row.manifest_digest]

    def live(self) -> Iterator[AgentRow]:
        return (r for r in self.rows.values() if r.live)

    def __len__(self) -> int:
        return len(self.rows)

    def page(
        self, limit: int, *, after: str | None = None, state: str | None = None, worker: str | None = None
    ) -> Page:
        """At most ``limit`` rows in id order after ``after`` (exclusive), matching ``state``/``worker``.

        ``after`` need not be a registered id (the agent may have been removed since): the page starts at
        the first id greater than it. Without a filter the total is ``len(self)``; with one it is counted
        over every row (one pass, no copy).
        """
        if limit < 1:
            raise ValueError(f"limit: must be at least 1, got {limit}")

        def wanted(row: AgentRow) -> bool:
            return (state is None or row.state == state) and (worker is None or row.placement == worker)

        filtered = state is not None or worker is not None
        start = 0 if after is None else bisect.bisect_right(self._order, after)
        rows: list[AgentRow] = []
        more = False
        for agent_id in itertools.islice(self._order, start, None):
            row = self.rows[agent_id]
            if filtered and not wanted(row):
                continue
            if len(rows) == limit:
                more = True
                break
            rows.append(row)
        total = sum(1 for r in self.rows.values() if wanted(r)) if filtered else len(self.rows)
        return Page(rows, rows[-1].agent_id if more else None, total)

    # -- changing ---------------------------------------------------------------------------------------
    def next_id(self, name: str) -> str:
        """``<name>-<n>``, ``n`` one past the last one handed out for ``name`` (persisted, never reused).

        An id some agent took explicitly (``agent_id = "greeter-3"``) is skipped.
        """
        n = self._counters.get(name, 0)
        while True:
            n += 1
            agent_id = f"{name}-{n}"
            if agent_id not in self.rows:
                break
        self._counters[name] = n
        self._dirty_counters.add(name)
        self._fsync = True
        return agent_id

    def add(self, row: AgentRow, manifest_text: str) -> AgentRow:
        """Register a new agent (state ``starting``). A live agent of the same id is ``already_exists``;
        a dead one's row is replaced (an explicit ``agent_id`` spawned again)."""
        old = self.rows.get(row.agent_id)
        if old is not None and old.live:
            where = f" on {old.placement}" if old.placement else ""
            raise AlreadyExists(
                f"agent_id {row.agent_id!r} is already registered ({old.state}{where}); "
                "agent ids are unique in the cluster"
            )
        if row.manifest_digest not in self._manifests:
            self._manifests[row.manifest_digest] = manifest_text
            self._new_manifests.add(row.manifest_digest)
        row.spawned_at = row.spawned_at or time.time()
        if old is None:
            bisect.insort(self._order, row.agent_id)
        self.rows[row.agent_id] = row
        self._deleted.discard(row.agent_id)
        self._dirty.add(row.agent_id)
        self._added.add(row.agent_id)
        self._fsync = True
        return row

    def save(self, row: AgentRow, *, fsync: bool = True) -> None:
        """Mark a changed row for the next commit.

        ``fsync=False`` for a change whose loss with the machine leaves a row as good as the changed one
        (see the module docstring); a commit of such changes only does not wait for the disk.
        """
        if row.agent_id in self.rows:
            self._dirty.add(row.agent_id)
            self._fsync = self._fsync or fsync

    def remove(self, agent_id: str) -> None:
        """Forget an agent (killed, or its spawn was refused). Its id stays used: the counter never goes
        back."""
        if self.rows.pop(agent_id, None) is not None:
            del self._order[bisect.bisect_left(self._order, agent_id)]
            self._dirty.discard(agent_id)
            self._deleted.add(agent_id)
            self._fsync = True

    @property
    def pending(self) -> bool:
        return bool(self._dirty or self._deleted or self._new_manifests or self._dirty_counters)

    def durable(self, agent_id: str) -> bool:
        """False while the row :meth:`add` made for ``agent_id`` waits for the next commit (its spawn may not
        be acknowledged yet)."""
        return agent_id not in self._added

    def commit(self) -> int:
        """Write every change since the last commit in one transaction; the number of rows written."""
        if not self.pending:
            return 0
        n = len(self._dirty) + len(self._deleted)
        try:
            if self._fsync != self._synced:  # a pragma, no I/O: FULL waits for the disk, NORMAL does not
                self._db.execute(f"PRAGMA synchronous = {'FULL' if self._fsync else 'NORMAL'}")
                self._synced = self._fsync
            # Only the statements that have rows: a warm spawn's two commits hold one row each (and the
            # first its counter), so the empty ones were most of the statements run.
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            if self._new_manifests:
                db.executemany(_PUT_MANIFEST, [(d, self._manifests[d]) for d in self._new_manifests])
            if self._dirty_counters:
                db.executemany(_PUT_COUNTER, [(name, self._counters[name]) for name in self._dirty_counters])
            if self._dirty:
                # In key order: B-tree pages are filled one after the other instead of at random.
                rows = self.rows
                if len(self._dirty) == 1:
                    db.execute(_PUT_AGENT, rows[next(iter(self._dirty))]._values())
                else:
                    db.executemany(_PUT_AGENT, [rows[a]._values() for a in sorted(self._dirty)])
            if self._deleted:
                db.executemany(_DELETE_AGENT, [(a,) for a in self._deleted])
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise RegistryError(f"agent registry {self.path}: write failed: {exc}") from None
        self._dirty.clear()
        self._deleted.clear()
        self._new_manifests.clear()
        self._dirty_counters.clear()
        self._added.clear()
        self._fsync = False
        self._committed = True
        return n

    def warm_up(self) -> None:
        """Pay the first commit's extra fsyncs now, with nothing waiting on them.

        SQLite makes the ``-wal`` file when a connection opens the database (the last one to close removes
        it), and that connection's first commit syncs the new file's header, its directory entry and the
        commit itself: three fsyncs where later commits have one. The gateway calls this once it has said
        it is ready, while the workers start, so the first spawn's acknowledgement waits for one fsync. A
        commit with ``synchronous = FULL`` that rewrites the schema version (the same value): nothing
        changes; a no-op once this connection has committed."""
        if self._committed:
            return
        try:
            if not self._synced:
                self._db.execute("PRAGMA synchronous = FULL")
                self._synced = True
            self._db.executescript(f"BEGIN IMMEDIATE;PRAGMA user_version = {SCHEMA_VERSION};COMMIT;")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise RegistryError(f"agent registry {self.path}: write failed: {exc}") from None
        self._committed = True

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._db.close()
