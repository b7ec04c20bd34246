"""Agents as durable children of the cluster: where each lives, what happens when its worker dies.

The gateway's agent supervisor, without sockets (the gateway does the I/O through a :class:`Port`), so
every rule here is tested with an injected clock and no processes:

- **Placement.** Every live row of the :class:`~openfang.control.registry.AgentRegistry` has a worker or is
  waiting for one. An agent is *announced* once its worker has confirmed it (its spawn reply, or its id in
  the worker's full agent list after a gateway restart); only then are messages forwarded to it.
- **Worker death** (:meth:`Placement.worker_lost`). Each agent of the worker is decided by the tree's own
  rules (:func:`openfang.supervisor.restart.should_restart` with an abnormal exit, and a per-agent
  :class:`~openfang.supervisor.restart.RestartWindow` of the manifest's ``restart_intensity`` within
  ``restart_period_ms``): ``temporary`` agents are lost (``agent.lost``, reason ``worker_crashed``);
  ``permanent`` and ``transient`` ones go to ``restarting`` and are re-spawned, with the same id and
  manifest, on the least loaded connected worker as soon as there is one; an agent whose window overflows
  is given up (``agent.lost``, reason ``restart_intensity``). Restarts an agent's own host made (a trap)
  are reported up as ``agent.state`` events and counted in the same window.
- **Messages while an agent is away** are queued here (bounded per agent and in total) and delivered in
  order when it is announced again; past the bound or the deadline they are answered ``restarting`` with
  ``retry_after_ms``. ``not_found`` is only for ids never registered (or killed and forgotten).
- **Moves** (:meth:`Placement.begin_move`, issue 9 item 7). An agent is moved by its worker letting it go
  (its guest state written to its snapshot file, or nothing for a module a snapshot cannot hold) and a
  re-spawn elsewhere (which restores that file): while it moves it is not announced, so messages queue
  here as during a restart. A move is not a restart (its window is untouched, ``agent.moved`` is
  published); a worker dying under a move falls back to the restart rules. A reload that removes or
  replaces workers first *drains* them (:meth:`Placement.drain`): they get no new agents, and their
  agents move to the others, or, when there is no other, wait unplaced (their state on disk) for the
  replacement (a temporary agent with nowhere to go is left to be lost with its worker, as before).
- **Gateway restart.** The registry is read from disk, so every id is known at once. A worker's first
  hello to this gateway carries its full agent list (:meth:`Placement.worker_synced`): listed agents are
  announced, registered agents placed on it but missing are re-spawned, agents it hosts that the registry
  does not know (a spawn that never reached the disk) are killed. Agents whose worker never reconnects are
  re-placed after ``grace_s``.
"""

from __future__ import annotations

import sys
import time
import tomllib
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from openfang.control.config import ControlConfig
from openfang.control.registry import AgentRegistry, AgentRow, manifest_digest
from openfang.control.routing import AgentDirectory
from openfang.protocol.errors import (
    ConfigError,
    Gone,
    NotFound,
    OpenFangError,
    Problem,
    RemoteError,
    Restarting,
)
from openfang.supervisor.restart import RestartWindow, abnormal, should_restart
from openfang.supervisor.spec import Restart

log = structlog.get_logger("openfang.placement")

_CONTROL = ControlConfig()  # the one definition of the hold-queue bounds ([control] held_*)
QUEUE_PER_AGENT = _CONTROL.held_per_agent
QUEUE_TOTAL = _CONTROL.held_total
QUEUE_MS = _CONTROL.held_ms
GRACE_S = 3.0
RETRY_AFTER_MS = 250
NOT_SENT = "nothing was sent"  # how the gateway's sockets say a request never left (protocol.sockets)
SPREAD_MAX = 64  # agents moved onto a worker an elastic pool has just started (spread_to)
MAX_SPAWNING = 256  # re-spawns in flight at once: 100,000 restored agents must not time out in a burst


@dataclass(slots=True)
class Move:
    """One agent on its way from ``source`` to ``target`` (None: wherever placement puts it)."""

    source: str
    target: str | None
    started: float
    why: str = "request"  # request (agent.move) | reload (its worker is removed or replaced) | grow | shrink
    path: str = ""  # what the source did: snapshot | fresh (empty while it is letting the agent go)
    refused: tuple[str, str] | None = None  # (code, message) of a target that refused it: it goes back
    tried: set[str] = field(default_factory=set)


class Port(Protocol):
    """What the placement logic asks of the gateway (sockets, the event stream)."""

    def spawn(self, worker_id: str, row: AgentRow, manifest: str, *, resume: bool) -> None:
        """Send an internal ``agent.spawn`` for ``row`` to ``worker_id``; answer with :meth:`spawned`."""

    def kill(self, worker_id: str, agent_id: str) -> None:
        """Send an internal ``agent.kill`` (an agent the registry does not want there)."""

    def suspend(self, worker_id: str, agent_id: str) -> None:
        """Send an internal ``agent.suspend`` (a re-spawned agent that was suspended)."""

    def deliver(self, item: Any, worker_id: str) -> None:
        """Forward a queued request to ``worker_id``."""

    def fail(self, item: Any, error: Exception) -> None:
        """Answer a queued request with ``error``."""

    def publish(self, event: dict[str, Any]) -> None:
        """Put an event on the PUB stream."""

    def moved(self, agent_id: str, result: dict[str, Any] | None, error: Exception | None) -> None:
        """A move ended: ``result`` (the agent.move reply body) or ``error``, for the gateway to answer."""


@dataclass(frozen=True, slots=True)
class ManifestFacts:
    """What the gateway reads from a manifest (the worker validates the rest)."""

    name: str
    agent_id: str | None
    restart: str
    intensity: int
    period_ms: int
    service: str | None


def manifest_facts(text: str, source: str = "agent.toml") -> ManifestFacts:
    """The manifest's name, id, restart policy and service; ConfigError for what the gateway cannot use."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem(source, f"not valid TOML: {exc}")]) from None
    agent_table, sandbox_table = raw.get("agent"), raw.get("sandbox")
    agent: dict[str, Any] = agent_table if isinstance(agent_table, dict) else {}
    sandbox: dict[str, Any] = sandbox_table if isinstance(sandbox_table, dict) else {}
    name = agent.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError([Problem(f"{source}: [agent] key 'name'", "required, a non-empty string")])
    agent_id = sandbox.get("agent_id")
    restart = agent.get("restart", "permanent")
    intensity = agent.get("restart_intensity", 1)
    period = agent.get("restart_period_ms", 5000)
    service = agent.get("service")
    return ManifestFacts(
        name=name,
        agent_id=agent_id if isinstance(agent_id, str) and agent_id else None,
        restart=restart if restart in ("permanent", "transient", "temporary") else "permanent",
        intensity=intensity if isinstance(intensity, int) and intensity >= 0 else 1,
        period_ms=period if isinstance(period, int) and period > 0 else 5000,
        service=service if isinstance(service, str) and service else None,
    )


@dataclass(slots=True)
class _Queued:
    """A request waiting for an agent that is away, and when it was queued."""

    item: Any
    at: float


@dataclass(slots=True)
class _Away:
    """An agent that is not answering now: why, since when, and the requests waiting for it."""

    since: float
    queue: deque[_Queued] = field(default_factory=deque)


class Placement:
    """The gateway's agent supervisor (see the module docstring). One thread; not thread-safe."""

    def __init__(
        self,
        registry: AgentRegistry,
        port: Port,
        *,
        clock: Callable[[], float] = time.monotonic,
        queue_per_agent: int = QUEUE_PER_AGENT,
        queue_total: int = QUEUE_TOTAL,
        queue_ms: int = QUEUE_MS,
        grace_s: float = GRACE_S,
    ) -> None:
        self.registry = registry
        self.port = port
        self.clock = clock
        self.queue_per_agent = queue_per_agent
        self.queue_total = queue_total
        self.queue_s = queue_ms / 1000
        self.grace_s = grace_s
        self.started = clock()
        self.workers: set[str] = set()  # workers whose full agent list this gateway has seen
        self.directory = AgentDirectory()  # the announced agents: confirmed by the worker they are on
        # Live agents waiting for a worker, oldest first (a dict: ordered, O(1) add and discard). A
        # request waiting for one of them puts it in ``urgent``, placed before the rest: after a restart
        # of 100,000 agents, the one a client asks for answers in milliseconds, not after its turn.
        self.unplaced: dict[str, None] = {}
        self.urgent: dict[str, None] = {}
        self.spawning: dict[str, str] = {}  # agent id -> worker an internal spawn was sent to
        self.away: dict[str, _Away] = {}
        self.queued = 0
        self.load: Counter[str] = Counter()  # placed agents per worker
        self._windows: dict[str, RestartWindow] = {}
        self._facts: dict[str, ManifestFacts] = {}
        self.moving: dict[str, Move] = {}
        self.draining: set[str] = set()  # workers a reload is about to stop: no new agents go there
        # Restored from disk and not confirmed yet: their worker may still host them (a gateway restart).
        self.restored: set[str] = set()
        for row in registry.live():
            if row.placement:
                self.restored.add(row.agent_id)  # only a worker it was placed on can announce it
                self.load[row.placement] += 1
            else:
                self.unplaced[row.agent_id] = None

    def announced(self, agent_id: str) -> bool:
        return agent_id in self.directory.worker_of

    def _announce(self, row: AgentRow, worker_id: str) -> None:
        self.restored.discard(row.agent_id)
        self.directory.add(row.agent_id, worker_id, row.service)

    def _unannounce(self, agent_id: str) -> None:
        self.directory.remove(agent_id)

    # -- facts and ids ----------------------------------------------------------------------------------
    def facts(self, text: str, source: str = "agent.toml") -> tuple[str, ManifestFacts]:
        """(digest, facts) of a manifest text, parsed once per distinct text."""
        digest = manifest_digest(text)
        facts = self._facts.get(digest)
        if facts is None:
            facts = manifest_facts(text, source)
            if len(self._facts) > 1024:
                self._facts.clear()
            self._facts[digest] = facts
        return digest, facts

    def register(
        self, text: str, *, source: str, parent: str | None = None, manifest_path: str | None = None
    ) -> AgentRow:
        """A new agent's row (state ``starting``, not placed yet); raises already_exists / bad_config."""
        digest, facts = self.facts(text, source)
        agent_id = facts.agent_id or self.registry.next_id(facts.name)
        row = AgentRow(
            agent_id=agent_id,
            name=facts.name,
            manifest_digest=digest,
            restart=facts.restart,
            intensity=facts.intensity,
            period_ms=facts.period_ms,
            service=facts.service,
            parent=parent,
            manifest_path=manifest_path,
        )
        self.registry.add(row, text)
        self._windows.pop(agent_id, None)
        return row

    def assign(self, row: AgentRow, worker_id: str) -> None:
        """A client's spawn of ``row`` goes to ``worker_id`` (announced when the worker confirms it)."""
        self._place(row, worker_id)
        self.restored.discard(row.agent_id)

    def resolve(self, agent_id: str) -> AgentRow:
        """The row of ``agent_id`` (``name@worker``, the old located form, resolves to the same agent)."""
        row = self.registry.get(agent_id)
        if row is None and "@" in agent_id:
            row = self.registry.get(agent_id.rpartition("@")[0])
        if row is None:
            raise NotFound(f"agent {agent_id!r} is not registered (never spawned, or killed)")
        return row

    # -- where requests go ------------------------------------------------------------------------------
    def target(self, agent_id: str) -> tuple[AgentRow, str | None]:
        """(row, worker to forward to) or (row, None) when the agent is away (queue the request).

        Raises not_found for an unknown id and gone for a dead agent.
        """
        row = self.resolve(agent_id)
        if not row.live:
            raise Gone(f"agent {row.agent_id!r} is dead ({row.reason or 'no reason recorded'})")
        if row.placement and self.announced(row.agent_id) and row.placement in self.workers:
            return row, row.placement
        return row, None

    def enqueue(self, row: AgentRow, item: Any) -> None:
        """Hold ``item`` until ``row`` is back; raises restarting when the bounds are reached."""
        away = self.away.setdefault(row.agent_id, _Away(self.clock()))
        if len(away.queue) >= self.queue_per_agent or self.queued >= self.queue_total:
            raise Restarting(
                f"agent {row.agent_id!r} is {row.state} and {len(away.queue)} messages already wait for it; "
                "retry later",
                retry_after_ms=self._retry_after(away),
            )
        away.queue.append(_Queued(item, self.clock()))
        self.queued += 1
        self.urgent[row.agent_id] = None  # placed first if it waits for a worker (see tick)

    def _retry_after(self, away: _Away | None) -> int:
        if away is None:
            return RETRY_AFTER_MS
        return max(RETRY_AFTER_MS, int((self.queue_s - (self.clock() - away.since)) * 1000))

    def least_loaded(self, exclude: Iterable[str] = ()) -> str | None:
        """The connected (synced) worker with the fewest placed agents."""
        skip = self.draining.union(exclude) if exclude else self.draining
        best: str | None = None
        fewest = 0
        for worker in self.workers:  # the fewest agents, then the first name: one pass, no sort
            if worker in skip:
                continue
            n = self.load[worker]
            if best is None or n < fewest or (n == fewest and worker < best):
                best, fewest = worker, n
        return best

    # -- confirmations from workers ---------------------------------------------------------------------
    def spawned(
        self, agent_id: str, worker_id: str, ok: bool, reason: str = "", *, restore: str = "", code: str = ""
    ) -> None:
        """The answer to a spawn (a client's or an internal re-spawn) for ``agent_id`` on ``worker_id``."""
        row = self.registry.get(agent_id)
        internal = self.spawning.pop(agent_id, None) is not None
        move = self.moving.get(agent_id) if internal else None
        if move is not None and row is not None and row.live:
            self._arrived(row, move, worker_id, ok, reason, restore=restore, code=code)
            return
        if row is not None and not ok and not internal:
            # A client's spawn the worker refused: never acknowledged, so it was never registered.
            self._unplace(row)
            self._unannounce(agent_id)
            self.registry.remove(agent_id)
            self._fail_queue(agent_id, NotFound(f"agent {agent_id!r} failed to spawn: {reason}"))
            return
        if row is None or not row.live:
            if ok:
                self.port.kill(worker_id, agent_id)  # killed while its spawn was on the way
            return
        if ok:
            was = row.state
            self._place(row, worker_id)
            if was == "suspended":
                self.port.suspend(worker_id, agent_id)
            else:
                row.state = "running"
            self._announce(row, worker_id)
            # A client's new agent: its row went to disk as ``starting`` on this worker before the spawn was
            # acknowledged, and restored so it restarts as a ``running`` one would: no fsync for this change.
            self.registry.save(row, fsync=internal or was != "starting")
            if internal:
                row.restarts += 1
                log.info("agent_restarted", agent_id=agent_id, worker=worker_id, restarts=row.restarts)
                self.port.publish(
                    {
                        "kind": "agent.restarted",
                        "agent_id": agent_id,
                        "worker": worker_id,
                        "restarts": row.restarts,
                    }
                )
            self._flush(agent_id, worker_id)
            return
        if reason.endswith(NOT_SENT):
            # The spawn never left the gateway (its worker is stopping, or gone and not reported yet):
            # not an attempt of the agent's, so no restart is counted; it waits to be placed again. Counted,
            # a daemon stop while 100,000 agents are being re-spawned gave up thousands of them for good.
            self._unplace(row)
            self.unplaced[agent_id] = None
            return
        # A failed re-spawn counts as a restart (OTP retries a failed restart, and every retry counts).
        self._unplace(row)
        self._restart(row, f"restart failed: {reason}", lost_reason="restart_failed", worker=worker_id)

    def worker_synced(self, worker_id: str, agent_ids: Iterable[str]) -> None:
        """A worker's full agent list, the first time this gateway hears it (or after a resync)."""
        self.workers.add(worker_id)
        listed = set(agent_ids)
        for agent_id in listed:
            row = self.registry.get(agent_id)
            if (
                row is None
                or not row.live
                or (row.placement not in (None, worker_id) and self.announced(agent_id))
            ):
                log.warning("agent_unregistered_killed", agent_id=agent_id, worker=worker_id)
                self.port.kill(worker_id, agent_id)
                continue
            if self.spawning.get(agent_id) not in (None, worker_id):
                self.port.kill(worker_id, agent_id)  # already being re-spawned elsewhere
                continue
            self._place(row, worker_id)
            if row.state in ("starting", "restarting"):
                row.state = "running"
                self.registry.save(row)
            self._announce(row, worker_id)
            self._flush(agent_id, worker_id)
        reason = f"not on {worker_id} when it reconnected"
        missing = [
            row
            for row in self.registry.live()
            if row.placement == worker_id and row.agent_id not in listed and row.agent_id not in self.spawning
        ]
        for row in missing:
            self._unannounce(row.agent_id)
            self._unplace(row)
            self._restart(row, reason, lost_reason="worker_crashed", worker=worker_id, quiet=True)
        _log_restarting(missing, worker_id, reason)

    def worker_lost(self, worker_id: str, why: str, *, stopped: bool = False) -> list[str]:
        """``worker_id`` is gone: restart or lose each of its agents (by policy); the affected ids."""
        self.workers.discard(worker_id)
        affected = [r for r in self.registry.live() if r.placement == worker_id]
        affected += [
            r
            for a, w in list(self.spawning.items())
            if w == worker_id and (r := self.registry.get(a)) is not None and r.placement != worker_id
        ]
        self.draining.discard(worker_id)
        reason = f"worker {worker_id} {why}"
        lost = "worker_stopped" if stopped else "worker_crashed"
        for row in affected:
            self.spawning.pop(row.agent_id, None)
            move = self.moving.pop(row.agent_id, None)
            if move is not None:  # it was leaving this worker, or arriving on it: the restart rules decide
                self.port.moved(
                    row.agent_id,
                    None,
                    Restarting(
                        f"worker {worker_id} {why} during the move of {row.agent_id!r}; it is restarted by "
                        "its restart policy (from its snapshot file when the move had written one)",
                        retry_after_ms=RETRY_AFTER_MS,
                    ),
                )
            self._unannounce(row.agent_id)
            self._unplace(row)
            self._restart(row, reason, lost_reason=lost, worker=worker_id, quiet=True)
        _log_restarting(affected, worker_id, reason)
        self.load.pop(worker_id, None)
        return [r.agent_id for r in affected]

    def worker_detached(self, worker_id: str) -> None:
        """The tree is stopping and ``worker_id`` with it: its agents keep their place and state on disk
        (a daemon stop is not an agent's death); the next start re-spawns them where they were."""
        self.workers.discard(worker_id)
        for agent_id in [a for a, w in self.directory.worker_of.items() if w == worker_id]:
            self._unannounce(agent_id)

    def agent_event(self, worker_id: str, event: dict[str, Any]) -> None:
        """An ``agent.state`` event from a worker's host: its own restarts, deaths, suspends."""
        row = self.registry.get(str(event.get("agent_id")))
        if row is None or not row.live or row.placement != worker_id or row.agent_id in self.spawning:
            return  # (a re-spawn in flight is settled by its reply, not by the host's events)
        if row.state == "starting":
            return  # a client's spawn not acknowledged yet: its reply decides (refused: never registered)
        state, reason = str(event.get("state")), str(event.get("reason") or "")
        if state == "restarting":
            self._window(row).add_restart(self.clock())  # counted here too: one window per agent
            row.state, row.reason = "restarting", reason
            self._publish_restarting(row, worker_id, reason)
        elif state == "running" and row.state == "restarting":
            row.state = "running"
            row.restarts += 1
            self.port.publish(
                {
                    "kind": "agent.restarted",
                    "agent_id": row.agent_id,
                    "worker": worker_id,
                    "restarts": row.restarts,
                }
            )
        elif state == "hibernated" or event.get("woken"):  # hibernate and wake (issue 9 item 7)
            row.state = state
            kind = "agent.hibernated" if state == "hibernated" else "agent.woken"
            keys = ("why", "memory_bytes", "stored_bytes") if state == "hibernated" else ("why", "wake_ms")
            extra = {k: event[k] for k in keys if k in event}
            self.port.publish({"kind": kind, "agent_id": row.agent_id, "worker": worker_id, **extra})
        elif (state == "running" and row.state == "starting") or state == "suspended":
            row.state = state
        elif state == "running":
            return  # a resume is learnt from its reply; a re-spawned suspended agent is suspended again
        elif state == "dead":
            why = str(event.get("why") or "crashed")
            if why == "killed":
                return  # agent.kill: its reply forgets the agent (Placement.killed)
            self._lose(row, reason or why, why)
        else:
            return
        self.registry.save(row)

    # -- client operations ------------------------------------------------------------------------------
    def killed(self, agent_id: str) -> None:
        """``agent.kill`` succeeded (or the agent was not running): forget it, fail what waited for it."""
        row = self.registry.get(agent_id)
        if row is None:
            return
        if self.moving.pop(agent_id, None) is not None:
            self.port.moved(agent_id, None, NotFound(f"agent {agent_id!r} was killed during its move"))
        self._unplace(row)
        self._unannounce(agent_id)
        self.restored.discard(agent_id)
        self.registry.remove(agent_id)
        self._windows.pop(agent_id, None)
        self._fail_queue(agent_id, NotFound(f"agent {agent_id!r} was killed"))

    def set_state(self, agent_id: str, state: str) -> None:
        row = self.registry.get(agent_id)
        if row is not None and row.live:
            row.state = state
            self.registry.save(row)

    # -- moves -----------------------------------------------------------------------------------------
    def begin_move(self, agent_id: str, target: str | None, why: str = "request") -> Move:
        """Start moving an announced agent off its worker: from now on its messages queue here."""
        row = self.resolve(agent_id)
        source = self.directory.worker_of[row.agent_id]
        move = self.moving[row.agent_id] = Move(source=source, target=target, started=self.clock(), why=why)
        self._unannounce(row.agent_id)
        self.away.setdefault(row.agent_id, _Away(self.clock()))
        log.info("agent_moving", agent_id=row.agent_id, worker=source, to=target, why=why)
        return move

    def moved_out(
        self,
        agent_id: str,
        ok: bool,
        *,
        path: str = "",
        error: Exception | None = None,
        source_alive: bool = True,
    ) -> None:
        """The source's answer: the agent has left it (re-spawn it on the target), or it stays there."""
        move = self.moving.get(agent_id)
        if move is None:
            return  # killed, lost or restarted meanwhile: that path answered the move already
        row = self.registry.get(agent_id)
        if row is None or not row.live or row.placement != move.source:
            del self.moving[agent_id]
            gone = Gone(f"agent {agent_id!r} is no longer on worker {move.source} ({error or 'it left'})")
            self.port.moved(agent_id, None, gone)
            return
        if not ok:
            del self.moving[agent_id]
            if source_alive:
                self._announce(row, move.source)
                self._flush(agent_id, move.source)
            self.port.moved(agent_id, None, error or OpenFangError("the move failed"))
            return
        move.path = path
        move.tried.add(move.source)
        self._unplace(row)
        self.unplaced[agent_id] = None  # tick() re-spawns it (resume: from its snapshot file) on the target

    def drain(self, workers: Iterable[str], why: str = "reload") -> list[str]:
        """A reload (or an elastic pool's shrink: ``why``) will stop ``workers``: no new agents go there, and
        their agents start moving (placed by tick(), spread by load). The ids of the agents that started to
        move."""
        leaving = set(workers)
        self.draining |= leaving
        started = []
        stays_nowhere = not (self.workers - self.draining)
        for agent_id, worker_id in sorted(self.directory.worker_of.items()):
            row = self.registry.get(agent_id)
            if worker_id not in leaving or row is None or not row.live or agent_id in self.moving:
                continue
            if stays_nowhere and row.restart == "temporary":
                continue  # nowhere to go now and never restarted: lost with its worker, as before
            self.begin_move(agent_id, None, why=why)
            started.append(agent_id)
        return started

    def spread_to(self, target: str, most: int = SPREAD_MAX) -> list[str]:
        """The agents to move onto ``target`` (a worker just started) so that each worker holds about its
        share: from every other worker above the share, every n-th of its announced agents in (service or
        name, id) order (n: the workers), so the replicas of one service spread over the workers; at most
        ``most`` (moving thousands of idle agents would buy nothing: new agents go to the least loaded
        worker anyway)."""
        workers = sorted(self.workers - self.draining)
        if target not in workers or len(workers) < 2:
            return []
        n = len(workers)
        share = sum(self.load[w] for w in workers) // n
        by_worker: dict[str, list[tuple[str, str]]] = {w: [] for w in workers if w != target}
        for agent_id, worker_id in self.directory.worker_of.items():
            hosted = by_worker.get(worker_id)
            row = self.registry.get(agent_id) if hosted is not None else None
            if hosted is not None and row is not None and row.live and agent_id not in self.moving:
                hosted.append((row.service or row.name, agent_id))
        picks: list[str] = []
        room = min(share - self.load[target], most)
        for worker_id, hosted in by_worker.items():
            excess = min(self.load[worker_id] - share, room - len(picks))
            if excess <= 0:
                continue
            hosted.sort()
            picks += [agent_id for _, agent_id in hosted[n - 1 :: n]][:excess]
        return picks

    def undrain(self, workers: Iterable[str]) -> None:
        """The reload that drained ``workers`` left them running (it failed, or replaced nothing)."""
        self.draining -= set(workers)

    def _move_target(self, agent_id: str) -> str | None:
        move = self.moving.get(agent_id)
        if move is None or move.target is None:
            return None
        target = move.target
        return target if target in self.workers and target not in self.draining else None

    def _arrived(
        self, row: AgentRow, move: Move, worker_id: str, ok: bool, reason: str, *, restore: str, code: str
    ) -> None:
        """The target's answer to a move's re-spawn."""
        agent_id = row.agent_id
        if not ok:
            move.tried.add(worker_id)
            self._unplace(row)
            if move.refused is not None or move.source in self.draining:
                # Refused twice (or nowhere to go back to): from here on the restart rules decide.
                del self.moving[agent_id]
                self.port.moved(agent_id, None, Restarting(f"the move failed: {reason}", retry_after_ms=500))
                self._restart(row, f"move failed: {reason}", lost_reason="restart_failed", worker=worker_id)
                return
            move.refused = (code or "sandbox_error", f"worker {worker_id} refused the agent: {reason}")
            move.target = move.source if move.source in self.workers else None
            self.unplaced[agent_id] = None  # back where it came from (its file is still there)
            return
        del self.moving[agent_id]
        was = row.state
        self._place(row, worker_id)
        if was == "suspended":
            self.port.suspend(worker_id, agent_id)
        else:
            row.state = "running"
        self._announce(row, worker_id)
        self.registry.save(row)
        path = restore or move.path or "fresh"
        ms = round((self.clock() - move.started) * 1000, 3)
        if move.refused is not None:
            code, message = move.refused
            log.warning("agent_move_refused", agent_id=agent_id, worker=worker_id, reason=message)
            self.port.moved(agent_id, None, _refusal(code, f"{message}; it runs on {worker_id} again"))
        else:
            log.info(
                "agent_moved",
                agent_id=agent_id,
                worker=worker_id,
                moved_from=move.source,
                path=path,
                move_ms=ms,
                why=move.why,
            )
            self.port.publish(
                {
                    "kind": "agent.moved",
                    "agent_id": agent_id,
                    "from": move.source,
                    "to": worker_id,
                    "path": path,
                    "move_ms": ms,
                    "why": move.why,
                }
            )
            result = {
                "agent_id": agent_id,
                "state": row.state,
                "worker": worker_id,
                "moved_from": move.source,
                "path": path,
                "move_ms": ms,
            }
            self.port.moved(agent_id, result, None)
        self._flush(agent_id, worker_id)

    # -- time ------------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Place waiting agents, expire old queued requests (call every loop turn)."""
        grace_over = self.clock() - self.started >= self.grace_s
        if grace_over and self.restored and self.workers:
            # Restored agents no worker has announced: their worker is gone for good (or never came back).
            silent = []
            for agent_id in sorted(self.restored):
                row = self.registry.get(agent_id)
                if row is not None and row.live and agent_id not in self.spawning:
                    old = row.placement
                    self._unplace(row)
                    reason = f"worker {old or '(none)'} did not announce it"
                    self._restart(row, reason, lost_reason="worker_crashed", worker=old, quiet=True)
                    silent.append(row)
            _log_restarting(silent, None, "their worker did not announce them")
            self.restored.clear()
        if self.unplaced and self.workers:
            if self.urgent:  # past the usual bound: a client is waiting for each of these
                self._place_waiting([a for a in self.urgent if a in self.unplaced], 2 * MAX_SPAWNING)
                for agent_id in list(self.urgent):  # kept while it may still need placing
                    if agent_id not in self.unplaced and agent_id not in self.restored:
                        del self.urgent[agent_id]
            # In arrival order, no sort: a turn costs O(agents placed), not O(n log n) of all waiting.
            self._place_waiting(self.unplaced)
        if self.away:
            now = self.clock()
            for agent_id, away in list(self.away.items()):
                while away.queue and now - away.queue[0].at >= self.queue_s:
                    queued = away.queue.popleft()
                    self.queued -= 1
                    row = self.registry.get(agent_id)
                    state = row.state if row is not None else "away"
                    self.port.fail(
                        queued.item,
                        Restarting(
                            f"agent {agent_id!r} is {state}; it did not answer within {self.queue_s:g}s",
                            retry_after_ms=RETRY_AFTER_MS * 4,
                        ),
                    )
                if not away.queue:
                    del self.away[agent_id]

    # -- internals -------------------------------------------------------------------------------------
    def _place_waiting(self, agent_ids: Iterable[str], bound: int = MAX_SPAWNING) -> None:
        """Re-spawn waiting agents of ``agent_ids`` in order, while fewer than ``bound`` are in flight."""
        if len(self.spawning) >= bound:
            return
        for agent_id in list(agent_ids):
            row = self.registry.get(agent_id)
            if row is None or not row.live:
                self.unplaced.pop(agent_id, None)
                continue
            if agent_id in self.spawning or agent_id in self.restored:
                continue  # restored from disk: its old worker may still announce it
            if len(self.spawning) >= bound:
                break  # the rest on a later turn, as answers come back
            worker = self._move_target(agent_id) or self.least_loaded()
            if worker is None:
                break
            self.unplaced.pop(agent_id, None)
            self.spawning[agent_id] = worker
            self.load[worker] += 1
            row.placement = worker
            self.registry.save(row)
            self.port.spawn(worker, row, self.registry.manifest(row), resume=True)

    def _window(self, row: AgentRow) -> RestartWindow:
        window = self._windows.get(row.agent_id)
        if window is None:
            window = self._windows[row.agent_id] = RestartWindow(row.intensity, row.period_ms / 1000)
        return window

    def _restart(
        self,
        row: AgentRow,
        reason: str,
        *,
        lost_reason: str,
        worker: str | None = None,
        quiet: bool = False,
    ) -> None:
        """The tree's rules for one agent whose instance is gone (its worker died, or its re-spawn failed).
        ``quiet``: no log line of its own (the caller logs one for a whole worker's agents)."""
        policy = Restart(row.restart)
        if not should_restart(policy, abnormal(detail=reason)):
            self._lose(row, reason, lost_reason, worker)
            return
        self.restored.discard(row.agent_id)
        if not self._window(row).add_restart(self.clock()):
            self._lose(row, reason, "restart_intensity", worker)
            return
        row.state, row.reason = "restarting" if row.state != "suspended" else "suspended", reason
        self.unplaced[row.agent_id] = None
        self.registry.save(row)
        self.away.setdefault(row.agent_id, _Away(self.clock()))
        self._publish_restarting(row, worker, reason, quiet=quiet)

    def _publish_restarting(
        self, row: AgentRow, worker: str | None, reason: str, *, quiet: bool = False
    ) -> None:
        if not quiet:
            log.warning("agent_restarting", agent_id=row.agent_id, worker=worker, reason=reason)
        self.port.publish(
            {"kind": "agent.restarting", "agent_id": row.agent_id, "worker": worker, "reason": reason}
        )

    def _lose(self, row: AgentRow, detail: str, reason: str, worker: str | None = None) -> None:
        worker = worker or row.placement
        self._unplace(row)
        self._unannounce(row.agent_id)
        self.restored.discard(row.agent_id)
        row.state, row.reason = "dead", f"{reason}: {detail}" if detail and detail != reason else reason
        self.registry.save(row)
        if self.moving.pop(row.agent_id, None) is not None:
            self.port.moved(
                row.agent_id, None, Gone(f"agent {row.agent_id!r} died during its move ({row.reason})")
            )
        log.error("agent_lost", agent_id=row.agent_id, worker=worker, reason=reason, detail=detail)
        self.port.publish(
            {
                "kind": "agent.lost",
                "agent_id": row.agent_id,
                "worker": worker,
                "reason": reason,
                "detail": detail,
            }
        )
        self._fail_queue(row.agent_id, Gone(f"agent {row.agent_id!r} is dead ({row.reason})"))

    def _place(self, row: AgentRow, worker_id: str) -> None:
        if row.placement != worker_id:
            if row.placement:
                self.load[row.placement] -= 1
            self.load[worker_id] += 1
            row.placement = sys.intern(worker_id)  # one string per worker, not one per row
            self.registry.save(row)
        self.unplaced.pop(row.agent_id, None)

    def _unplace(self, row: AgentRow) -> None:
        if row.placement:
            self.load[row.placement] -= 1
            if self.load[row.placement] <= 0:
                del self.load[row.placement]
            row.placement = None
            self.registry.save(row)
        self.unplaced.pop(row.agent_id, None)

    def _flush(self, agent_id: str, worker_id: str) -> None:
        """Deliver what was held for ``agent_id`` to ``worker_id``, in order."""
        self._release(agent_id, lambda item: self.port.deliver(item, worker_id))

    def _fail_queue(self, agent_id: str, error: Exception) -> None:
        """Answer what was held for ``agent_id`` with ``error``."""
        self._release(agent_id, lambda item: self.port.fail(item, error))

    def _release(self, agent_id: str, each: Callable[[Any], None]) -> None:
        away = self.away.pop(agent_id, None)
        if away is None:
            return
        for queued in away.queue:
            self.queued -= 1
            each(queued.item)


def _refusal(code: str, message: str) -> OpenFangError:
    """A worker's refusal passed on with its own code (busy for a full worker, denied, ...)."""
    return RemoteError(message, code=code)


def _log_restarting(rows: list[AgentRow], worker: str | None, reason: str) -> None:
    """One log line for the agents of a worker restarted together (each still gets its agent.restarting
    event): a line each cost ~0.2 ms in the gateway's loop (rendering, secret redaction), so a worker of
    50,000 agents reconnecting held the loop ~10 s, past its heartbeat: the gateway was killed and
    restarted, and did it all again."""
    restarting = [r.agent_id for r in rows if r.state in ("restarting", "suspended")]
    if restarting:
        log.warning(
            "agents_restarting", worker=worker, reason=reason, count=len(restarting), first=restarting[:10]
        )
