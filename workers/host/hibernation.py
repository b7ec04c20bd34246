"""Hibernate and wake for the agent host: snapshot files, the writer thread and the idle timer.

The host's loop captures a quiescent sandbox and frees it (sub-millisecond for a small heap); the file is
written by one background thread (``write_snapshot``: zlib and the file calls release the GIL and touch no
wasmtime object), so the loop never waits for the disk. Until the write is done the agent's
:class:`~openfang.workers.sandbox.snapshot.Snapshot` stays in memory (``HostedAgent.snapshot``) and a wake
restores from it; afterwards a wake reads the file. One writer thread means the writes of one agent land
in order (a hibernate, wake, hibernate leaves the newest state on disk).

The idle timer is a heap of ``(deadline, token, agent_id)`` pushed when an agent becomes idle; an entry whose
token no longer matches the agent's (it ran since) is dropped when it comes up. No thread, no scan.

Files: ``<snapshot_dir>/<agent_id>.snap`` (0600, written atomically by ``write_snapshot``).
"""

from __future__ import annotations

import heapq
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import structlog

from openfang.protocol.errors import SandboxError
from openfang.workers.host.record import HostedAgent
from openfang.workers.sandbox.snapshot import Snapshot, SnapshotError, read_snapshot, write_snapshot

log = structlog.get_logger("openfang.workers.host.hibernation")
MAX_IDLE_S = 30 * 86400.0


class Hibernation:
    """Snapshot files and the idle timer of one host (loop thread only, except the writer thread)."""

    def __init__(self, snapshot_dir: Path | None, idle_default_s: float | None, worker_id: str) -> None:
        self.dir = snapshot_dir
        self.idle_default_s = idle_default_s  # the cluster default for manifests without idle_hibernate_s
        self._worker_id = worker_id
        self._writer: ThreadPoolExecutor | None = None
        # agent_id -> (write in progress, the snapshot it writes)
        self._writes: dict[str, tuple[Future[int], Snapshot]] = {}
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
        self._writes[agent.agent_id] = (self._writer.submit(write_snapshot, path, snap), snap)

    def reap(self, agents: dict[str, HostedAgent]) -> None:
        """Settle finished writes: drop the in-memory snapshot once its file is on disk."""
        if not self._writes:
            return
        for agent_id, (fut, snap) in list(self._writes.items()):
            if not fut.done():
                continue
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

    def delete(self, agent_id: str) -> None:
        """Forget a dead agent's snapshot (a write still running deletes it when it ends)."""
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

    def next_deadline(self) -> float | None:
        return self._idle[0][0] if self._idle else None

    def close(self) -> None:
        """Wait for the writes in progress (a clean stop leaves every snapshot on disk)."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        self._writes.clear()
