"""Hibernate and wake for the agent host: snapshot files, the writer thread and the idle timer.

The host's loop captures a quiescent sandbox and frees it (sub-millisecond for a small heap); the file is
written by one background thread (``write_snapshot``: zlib and the file calls release the GIL and touch no
wasmtime object), so the loop never waits for the disk. Until the write is done the agent's
:class:`~openfang.workers.sandbox.snapshot.Snapshot` stays in memory (``HostedAgent.snapshot``) and a wake
restores from it; afterwards a wake reads the file. One writer thread means the writes of one agent land
in order (a hibernate, wake, hibernate leaves the newest state on disk).

The idle timer is a heap of ``(deadline, token, agent_id)`` pushed when an agent becomes idle; an entry whose
token no longer matches the agent's (it ran since) is dropped when it comes up. No thread, no scan.

The resident cap (``max_resident``, a worker arg): at most that many agents of this worker hold a sandbox;
past it, the least recently used idle ones are hibernated (``why = "cap"``), whatever their idle timer says.
Recency is an ordered dict of resident idle agents, moved to its end each time an agent becomes idle, so
its head is the agent idle the longest; an entry whose token no longer matches (the agent ran since) is
dropped when it comes up, and the agent re-enters when it is idle again. Hibernated agents are counted in a
set, so "how many are resident" is ``len(agents) - len(asleep)``, O(1). An agent that is busy, suspended,
starting or cannot be snapshotted is never taken: the cap is a bound on idle agents, and resident agents
can exceed it while more than ``max_resident`` are busy at once.

Files: ``<snapshot_dir>/<agent_id>.snap`` (0600). The writer takes every write queued when it runs (up to
:data:`BATCH`) as one group, as a database commits a group: each snapshot to its own temp file, one
``syncfs`` for them all, then the renames, then one fsync of the directory. Every file is still replaced
atomically (the old one or the complete new one, never a torn one after a crash), but a burst of 10,000
hibernations costs a few syncs instead of 20,000 (an fdatasync and a directory fsync each: 0.5-8 ms apiece
on this disk, which let a burst fall minutes behind). A finished write's agent id is put on a done queue
by the writer, so the loop's :meth:`Hibernation.reap` costs O(finished writes), not O(writes in flight).
"""

from __future__ import annotations

import ctypes
import heapq
import os
import threading
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog

from openfang.protocol.errors import SandboxError
from openfang.workers.host.record import HostedAgent
from openfang.workers.sandbox.snapshot import Snapshot, SnapshotError, encode, read_snapshot

log = structlog.get_logger("openfang.workers.host.hibernation")
MAX_IDLE_S = 30 * 86400.0
BATCH = 1024  # snapshot writes made durable by one group sync
ASLEEP = "asleep"  # snapshot meta key: written by a hibernation (not by a move of a running agent)


@dataclass(slots=True)
class _Write:
    """A snapshot to write for an agent going to sleep; ``done`` gets its size once it is written."""

    agent_id: str
    path: Path
    snap: Snapshot
    done: Future[int]


def _syncfs(dir_fd: int) -> None:
    """Flush the filesystem holding ``dir_fd`` (Linux ``syncfs``), else every filesystem (``sync``)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(dir_fd) == 0:
            return
    except (OSError, AttributeError):
        pass
    os.sync()


def write_group(writes: list[_Write]) -> None:
    """Write each snapshot atomically, all made durable by one sync: temp files, syncfs, renames, fsync
    of the directory (all in one directory). Each write's future gets its file size, or its SnapshotError.
    Runs on the writer thread; touches only the snapshots (zlib and the OS calls release the GIL)."""
    if not writes:
        return
    directory = writes[0].path.parent
    staged: list[tuple[_Write, Path, int]] = []
    for i, w in enumerate(writes):
        tmp = w.path.with_name(f".{w.path.name}.{os.getpid()}.{threading.get_ident()}.{i}.tmp")
        try:
            data = encode(w.snap)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            staged.append((w, tmp, len(data)))
        except (OSError, SnapshotError) as exc:
            tmp.unlink(missing_ok=True)
            w.done.set_exception(SnapshotError(f"{w.path}: cannot write snapshot: {exc}"))
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:
        for w, tmp, _ in staged:
            tmp.unlink(missing_ok=True)
            w.done.set_exception(SnapshotError(f"{w.path}: cannot write snapshot: {exc.strerror or exc}"))
        return
    renamed: list[tuple[_Write, int]] = []
    try:
        _syncfs(dir_fd)  # every temp file's data on disk before any rename can expose it
        for w, tmp, size in staged:  # in queue order: a later write of one agent's file wins
            try:
                os.replace(tmp, w.path)
                renamed.append((w, size))
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                w.done.set_exception(SnapshotError(f"{w.path}: cannot write snapshot: {exc.strerror or exc}"))
        os.fsync(dir_fd)  # the renames
    except OSError as exc:
        for w, _size in renamed:
            if not w.done.done():
                w.done.set_exception(SnapshotError(f"{w.path}: cannot sync snapshot: {exc.strerror or exc}"))
        return
    finally:
        os.close(dir_fd)
    for w, size in renamed:
        w.done.set_result(size)


class Hibernation:
    """Snapshot files and the idle timer of one host (loop thread only, except the writer thread)."""

    def __init__(
        self,
        snapshot_dir: Path | None,
        idle_default_s: float | None,
        worker_id: str,
        max_resident: int | None = None,
    ) -> None:
        self.dir = snapshot_dir
        self.idle_default_s = idle_default_s  # the cluster default for manifests without idle_hibernate_s
        self.max_resident = max_resident  # agents holding a sandbox at once, past which LRU idle ones sleep
        # Resident idle agents -> their idle token when they became idle; least recently idle first.
        self._lru: OrderedDict[str, int] = OrderedDict()
        self._asleep: set[str] = set()  # hibernated agents of this host (invariant: each is in agents)
        self._arrived: set[str] = set()  # of those, re-spawned asleep and not woken since
        self._worker_id = worker_id
        self._writer: ThreadPoolExecutor | None = None
        # agent_id -> (write in progress, the snapshot it writes); the newest write of each agent
        self._writes: dict[str, tuple[Future[int], Snapshot]] = {}
        self._queue: deque[_Write] = deque()  # written by the next group (loop appends, writer pops)
        self._done: deque[str] = deque()  # agents whose write finished (writer appends, loop pops)
        self._idle: list[tuple[float, int, str]] = []

    # -- files ---------------------------------------------------------------------------------------------
    def path(self, agent_id: str) -> Path:
        if self.dir is None:
            raise SandboxError(
                f"agent {agent_id}: worker {self._worker_id} has no data directory for snapshots "
                "(OPENFANG_DATA_DIR or the [security] data_dir): it cannot hibernate agents"
            )
        return self.dir / f"{agent_id}.snap"

    def write_later(self, agent: HostedAgent, snap: Snapshot) -> None:
        """Write ``snap`` to the agent's file on the writer thread; ``agent.snapshot`` holds it meanwhile."""
        path = self.path(agent.agent_id)
        if self._writer is None:
            assert self.dir is not None
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="snapshot-writer")
        agent.snapshot = snap
        self._asleep.add(agent.agent_id)
        self._lru.pop(agent.agent_id, None)
        done: Future[int] = Future()
        agent_id = agent.agent_id
        done.add_done_callback(lambda _f: self._done.append(agent_id))
        self._writes[agent.agent_id] = (done, snap)
        self._queue.append(_Write(agent.agent_id, path, snap, done))
        self._writer.submit(self._write_queued)

    def _write_queued(self) -> None:
        """On the writer thread: the writes queued so far, as one group (later calls find fewer or none)."""
        group: list[_Write] = []
        while self._queue and len(group) < BATCH:
            group.append(self._queue.popleft())
        write_group(group)

    def reap(self, agents: dict[str, HostedAgent]) -> list[HostedAgent]:
        """Settle finished writes: drop the in-memory snapshot once its file is on disk. Returns the agents
        now asleep with their state only in their file (the host may park them)."""
        settled: list[HostedAgent] = []
        while self._done:
            agent_id = self._done.popleft()
            entry = self._writes.get(agent_id)
            if entry is None or not entry[0].done():
                continue  # settled already, or a newer write of this agent is still on its way
            fut, snap = entry
            del self._writes[agent_id]
            agent = agents.get(agent_id)
            exc = fut.exception()
            if exc is not None:  # the snapshot stays in memory: the agent still wakes while this worker lives
                log.error("agent_snapshot_write_failed", agent_id=agent_id, error=str(exc))
                continue
            log.info("agent_snapshot_written", agent_id=agent_id, file_bytes=fut.result())
            if agent is None or (not agent.hibernated and agent.manifest.restore != "snapshot"):
                self.delete(agent_id)  # killed, or woken meanwhile and the file is of no use (see _wake)
            elif agent.snapshot is snap:
                agent.snapshot = None
                if agent.hibernated:
                    settled.append(agent)
        return settled

    def load(self, agent: HostedAgent) -> Snapshot:
        """The agent's newest snapshot: the one in memory (file not written yet), else its file."""
        if agent.snapshot is not None:
            snap: Snapshot = agent.snapshot
            return snap
        path = self.path(agent.agent_id)
        snap = read_snapshot(path)
        owner = snap.meta.get("agent_id")
        if isinstance(owner, str) and owner != agent.agent_id:
            raise SnapshotError(f"{path}: the snapshot is of agent {owner}, not {agent.agent_id}")
        return snap

    def writing(self, agent_id: str) -> bool:
        """A write of this agent's snapshot is still in progress (it settles in :meth:`reap`)."""
        return agent_id in self._writes

    def has_file(self, agent_id: str) -> bool:
        return self.dir is not None and (self.dir / f"{agent_id}.snap").is_file()

    def can_stay_asleep(self, agent: HostedAgent) -> bool:
        """A re-spawned agent may come back hibernated: its snapshot file was written by a hibernation and
        is the state it had (``restore = "fresh"`` keeps a file only while the agent is hibernated or
        moving; a ``"snapshot"`` agent's file may be older than its state, so it is restored as before). A
        move's file is of a running agent: that one is restored and runs on. Reading the file (~0.1 ms for
        a small agent) costs far less than loading a sandbox the cap would put back to sleep."""
        if agent.no_hibernate is not None:
            return False
        return self.file_asleep(agent.agent_id, agent.manifest.restore)

    def file_asleep(self, agent_id: str, restore: str) -> bool:
        """:meth:`can_stay_asleep` before any record exists: ``restore = "fresh"`` and a file a hibernation
        wrote (meta ``asleep``)."""
        if restore != "fresh" or not self.has_file(agent_id):
            return False
        try:
            snap = read_snapshot(self.path(agent_id))
        except SnapshotError:
            return False  # the restore path decides (a fresh restart when the file is unusable)
        owner = snap.meta.get("agent_id")
        return snap.meta.get(ASLEEP) is True and (not isinstance(owner, str) or owner == agent_id)

    def asleep(self, agent_id: str) -> None:
        """``agent_id`` arrived hibernated (re-spawned from its file): it does not count as resident."""
        self._asleep.add(agent_id)
        self._arrived.add(agent_id)
        self._lru.pop(agent_id, None)

    def woke(self, agent_id: str) -> bool:
        """``agent_id`` holds a sandbox again (woken): it counts as resident. True if it had arrived asleep
        (its host state, e.g. kv keys, must come from the snapshot too)."""
        self._asleep.discard(agent_id)
        if agent_id in self._arrived:
            self._arrived.discard(agent_id)
            return True
        return False

    def park(self, agent_id: str) -> None:
        """``agent_id`` leaves the host's table, asleep (its state in its file): it is neither resident nor
        counted asleep here any more (the host keeps a :class:`~openfang.workers.host.record.ParkedAgent`)."""
        self._asleep.discard(agent_id)
        self._arrived.discard(agent_id)
        self._lru.pop(agent_id, None)

    def delete(self, agent_id: str) -> None:
        """Forget a dead agent's snapshot (a write still running deletes it when it ends)."""
        self._asleep.discard(agent_id)  # dead or awake: not asleep here any more
        self._arrived.discard(agent_id)
        if self.dir is None or agent_id in self._writes:
            return
        try:
            os.unlink(self.dir / f"{agent_id}.snap")
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("agent_snapshot_delete_failed", agent_id=agent_id, error=str(exc))

    # -- the idle timer ------------------------------------------------------------------------------------
    def idle_limit(self, agent: HostedAgent) -> float | None:
        """Seconds of idleness before ``agent`` is hibernated, or None (never)."""
        if self.dir is None or agent.no_hibernate is not None:
            return None
        limit = agent.manifest.idle_hibernate_s
        if limit is None:
            limit = self.idle_default_s
        return float(limit) if limit else None

    def arm(self, agent: HostedAgent, now: float) -> None:
        """``agent`` just became idle: hibernate it at ``now + idle limit`` unless it runs before that."""
        agent.idle_token += 1
        if self.max_resident is not None:
            self._lru[agent.agent_id] = agent.idle_token
            self._lru.move_to_end(agent.agent_id)
        limit = self.idle_limit(agent)
        if limit is not None:
            heapq.heappush(self._idle, (now + min(limit, MAX_IDLE_S), agent.idle_token, agent.agent_id))

    def due(self, agents: dict[str, HostedAgent], now: float, most: int = 32) -> list[HostedAgent]:
        """Up to ``most`` agents idle past their limit, still idle since they were armed (the rest wait
        for the next step: many agents falling idle together never stall the loop)."""
        out: list[HostedAgent] = []
        while self._idle and self._idle[0][0] <= now and len(out) < most:
            _, token, agent_id = heapq.heappop(self._idle)
            agent = agents.get(agent_id)
            if agent is not None and agent.idle_token == token and not agent.hibernated:
                out.append(agent)
        return out

    def resident(self, agents: dict[str, HostedAgent]) -> int:
        """How many of ``agents`` hold a sandbox (are not hibernated)."""
        return len(agents) - len(self._asleep)

    def over_cap(self, agents: dict[str, HostedAgent], most: int = 256, room: int = 0) -> list[HostedAgent]:
        """Up to ``most`` least recently used idle agents to hibernate so that at most ``max_resident``
        stay resident, with ``room`` more to come (a spawn about to load one); fewer when not enough
        resident agents are idle (the rest on a later step)."""
        if self.max_resident is None or self.dir is None:
            return []
        excess = self.resident(agents) + room - self.max_resident
        out: list[HostedAgent] = []
        while excess > 0 and self._lru and len(out) < most:
            agent_id, token = self._lru.popitem(last=False)
            agent = agents.get(agent_id)
            if agent is None or agent.hibernated or agent.idle_token != token or agent.no_hibernate:
                continue  # gone, asleep, ran since (re-enters when idle again) or cannot be snapshotted
            out.append(agent)
            excess -= 1
        return out

    def next_deadline(self) -> float | None:
        return self._idle[0][0] if self._idle else None

    def close(self) -> None:
        """Wait for the writes in progress (a clean stop leaves every snapshot on disk)."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        self._writes.clear()
        self._queue.clear()
        self._done.clear()
