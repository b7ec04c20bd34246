"""The elastic worker pool: when the gateway starts one more worker of a pool, and when it stops one.

A pool with ``min_running`` < ``count`` (``[supervisor.children.pool]``, :class:`ElasticPool`) keeps its
members past ``min_running`` as child specs that do not run (``autostart = false``: OTP's state after
``terminate_child``). The gateway sees the load, so it decides; the root's supervisor acts, through the
requests it already answers (OTP's operations, nothing new in the supervisor):

- **Grow.** The pool is *loaded* when every running member has had at least ``grow_in_flight`` requests in
  flight (sent by the gateway, not answered yet) at every sample for ``grow_after_ms``. Then the first
  stopped member is started (``child.restart`` of its kept spec). When it has connected and listed its
  agents, agents move onto it (:meth:`Placement.spread_to`: from each worker above its share, every n-th
  agent in service order, so the replicas of one service spread; a move keeps the agent's state by
  snapshot and is not a restart), and new agents go to the least loaded worker as always.
- **Shrink.** The pool is *quiet* when more than ``min_running`` members run and the requests in flight
  over all of them would not load one worker fewer (``2 x total < grow_in_flight x (running - 1)``) at every
  sample for ``shrink_after_s`` (and nothing grew or shrank for as long). Then the running member last in
  order is drained: it gets no new agents and its agents move to the others, temporary ones included (a
  move loses nothing; one whose move fails stays and goes by its restart policy with the worker, as in a
  reload's drain). Once its agents are off, it is stopped (``child.terminate`` with the pid that was
  drained, refused if the worker crashed and was restarted meanwhile): an exit the supervisor asked for,
  so not restarted and not counted against the pool's intensity.
- A member that crashes is restarted by its supervisor under the pool's intensity, as before: the policy
  only sees it leave and come back. One change at a time per pool: no grow while a member starts or
  drains, no shrink while one starts.

:class:`PoolPolicy` is the rule, with an injected clock and no I/O (unit-tested without processes);
:class:`ElasticPools` runs the gateway's side of it: it samples the gateway's worker table, asks the root,
moves agents (:class:`~openfang.control.moves.Moves`), logs and publishes ``pool.grown`` /
``pool.shrunk`` (and ``pool.grow_failed`` / ``pool.shrink_failed``) events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from openfang.control.placement import Placement
from openfang.control.tree_config import ElasticPool
from openfang.protocol.envelope import Envelope

log = structlog.get_logger("openfang.elastic")
SAMPLE_S = 0.05  # the load is sampled at most this often (the gateway's loop turns far more often)
START_TIMEOUT_S = 60.0  # a member that has not connected this long after its start is given up on


GROW, SPREAD, SHRINK = "grow", "spread", "shrink"


@dataclass(frozen=True, slots=True)
class Action:
    """What a pool's policy says to do: ``grow`` (start ``member``, a stopped member of the pool at
    ``path``), ``spread`` (``member`` has started and connected: move agents onto it) or ``shrink`` (drain
    ``member``, then stop it)."""

    kind: str
    path: str
    member: str


class PoolPolicy:
    """The grow/shrink rule of one pool (see the module docstring). Fed samples of the requests in flight
    per connected member; answers what to do. One change at a time."""

    def __init__(self, pool: ElasticPool, clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self.clock = clock
        self.starting: str | None = None
        self.started_at = 0.0
        self.draining: str | None = None
        self.loaded_since: float | None = None
        self.quiet_since: float | None = None
        self.changed_at = clock()  # the last grow or shrink (a shrink waits shrink_after_s after it)

    def observe(self, in_flight: Mapping[str, int]) -> Action | None:
        """One sample: ``in_flight`` has every connected worker (members of other pools are ignored)."""
        pool, now = self.pool, self.clock()
        running = [m for m in pool.members if m in in_flight]
        if self.starting is not None:
            if self.starting in in_flight:
                member, self.starting = self.starting, None
                self.changed_at, self.loaded_since, self.quiet_since = now, None, None
                return Action(SPREAD, pool.path, member)
            if now - self.started_at >= START_TIMEOUT_S:
                log.warning("pool_grow_timed_out", pool=pool.path, member=self.starting)
                self.starting = None
            return None
        if self.draining is not None:
            if self.draining in in_flight:
                return None  # its agents are moving off; it is stopped after
            self.draining, self.changed_at = None, now
        if not running:
            self.loaded_since = self.quiet_since = None
            return None
        if len(running) < len(pool.members) and all(in_flight[m] >= pool.grow_in_flight for m in running):
            self.quiet_since = None
            if self.loaded_since is None:
                self.loaded_since = now
            if now - self.loaded_since >= pool.grow_after_ms / 1000:
                member = next(m for m in pool.members if m not in in_flight)
                self.starting, self.started_at, self.loaded_since = member, now, None
                return Action(GROW, pool.path, member)
            return None
        self.loaded_since = None
        total = sum(in_flight[m] for m in running)
        if len(running) > pool.min_running and 2 * total < pool.grow_in_flight * (len(running) - 1):
            if self.quiet_since is None:
                self.quiet_since = now
            waited = now - max(self.quiet_since, self.changed_at)
            if waited >= pool.shrink_after_s:
                self.draining, self.quiet_since = running[-1], None
                return Action(SHRINK, pool.path, running[-1])
            return None
        self.quiet_since = None
        return None

    def failed(self, member: str) -> None:
        """The grow or shrink of ``member`` failed: nothing is in progress; the load decides again."""
        if self.starting == member:
            self.starting = None
        if self.draining == member:
            self.draining = None
        self.changed_at = self.clock()
        self.loaded_since = self.quiet_since = None

    def status(self, connected: Iterable[str]) -> dict[str, Any]:
        live = set(connected)
        return {
            "running": sum(1 for m in self.pool.members if m in live),
            "max": len(self.pool.members),
            "min_running": self.pool.min_running,
            "starting": self.starting,
            "draining": self.draining,
        }


class WorkerLoad(Protocol):
    pid: int
    in_flight: int


AskRoot = Callable[[str, dict[str, Any], Callable[[Envelope], None]], None]


class Mover(Protocol):
    """What the pools ask of :class:`~openfang.control.moves.Moves`."""

    def spread(self, agent_ids: list[str], target: str) -> None: ...
    def drain(self, workers: list[str], done: Callable[[dict[str, Any]], None], why: str = ...) -> None: ...
    def undrain(self, workers: Iterable[str]) -> None: ...


class ElasticPools:
    """The gateway's side of its elastic pools (see the module docstring); the gateway's loop thread only."""

    def __init__(
        self,
        placement: Placement,
        moves: Mover,
        *,
        ask_root: AskRoot,
        publish: Callable[[dict[str, Any]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.placement = placement
        self.moves = moves
        self.ask_root = ask_root  # ask_root(op, args, done(reply)): a tree request (child.restart, ...)
        self.publish = publish
        self.clock = clock
        self.policies: dict[str, PoolPolicy] = {}
        self._next_sample = 0.0

    @property
    def active(self) -> bool:
        return bool(self.policies)

    def configure(self, pools: Iterable[Mapping[str, Any]]) -> None:
        """The root's ``gateway.pools`` (at the gateway's start and after each reload): the elastic pools. A
        pool whose settings did not change keeps its state (a grow or drain in progress goes on)."""
        wanted = {p.path: p for p in (ElasticPool.from_wire(raw) for raw in pools)}
        kept = {path: pol for path, pol in self.policies.items() if wanted.get(path) == pol.pool}
        self.policies = {
            path: kept.get(path) or PoolPolicy(pool, self.clock) for path, pool in wanted.items()
        }
        log.info("pools_configured", pools={p: pol.pool.to_wire() for p, pol in self.policies.items()})

    def tick(self, workers: Mapping[str, WorkerLoad]) -> None:
        """Sample the load (at most every SAMPLE_S) and act on what each pool's policy says."""
        now = self.clock()
        if now < self._next_sample:
            return
        self._next_sample = now + SAMPLE_S
        synced = self.placement.workers
        in_flight = {wid: w.in_flight for wid, w in workers.items() if wid in synced}
        for policy in self.policies.values():
            action = policy.observe(in_flight)
            if action is not None:
                self._act(
                    policy, action, in_flight, workers[action.member].pid if action.kind == SHRINK else 0
                )

    def status(self, workers: Iterable[str]) -> dict[str, Any]:
        """Per pool: members running (connected) and the maximum, a member starting or draining, and the
        agents moving now (anywhere in the cluster)."""
        connected = set(workers) & self.placement.workers
        moving = len(self.placement.moving)
        return {path: {**pol.status(connected), "moving": moving} for path, pol in self.policies.items()}

    # -- actions ----------

    def _act(self, policy: PoolPolicy, action: Action, in_flight: Mapping[str, int], pid: int) -> None:
        path, member = action.path, action.member
        if action.kind == GROW:
            load = {m: in_flight[m] for m in policy.pool.members if m in in_flight}
            log.info("pool_growing", pool=path, member=member, running=len(load), in_flight=load)

            def started(reply: Envelope) -> None:
                if reply.is_error:
                    policy.failed(member)
                    log.warning("pool_grow_failed", pool=path, member=member, error=reply.body.get("message"))
                    self.publish({"kind": "pool.grow_failed", "pool": path, "member": member, **reply.body})

            self.ask_root("child.restart", {"path": path, "id": member}, started)
        elif action.kind == SPREAD:
            agents = self.placement.spread_to(member)
            now_running = sum(1 for m in policy.pool.members if m in in_flight)
            log.info("pool_grown", pool=path, member=member, running=now_running, moving=len(agents))
            self.publish({"kind": "pool.grown", "pool": path, "member": member, "running": now_running,
                          "max": len(policy.pool.members), "moving": len(agents)})  # fmt: skip
            self.moves.spread(agents, member)
        else:
            log.info("pool_shrinking", pool=path, member=member)

            def drained(result: dict[str, Any]) -> None:
                if member not in self.placement.draining:
                    # It died during the drain (its supervisor restarts it: a crash is not a shrink) or
                    # the drain was undone: it stays; the policy decides again.
                    policy.failed(member)
                    log.warning("pool_shrink_aborted", pool=path, member=member, **result)
                    return
                log.info("pool_drained", pool=path, member=member, **result)
                # Only the incarnation drained (its pid): one restarted meanwhile may host agents again.
                self.ask_root("child.terminate", {"path": path, "id": member, "pid": pid}, stopped)

            def stopped(reply: Envelope) -> None:
                if reply.is_error:
                    policy.failed(member)
                    self.moves.undrain([member])
                    log.warning(
                        "pool_shrink_failed", pool=path, member=member, error=reply.body.get("message")
                    )
                    self.publish({"kind": "pool.shrink_failed", "pool": path, "member": member, **reply.body})
                    return
                left = sum(1 for m in policy.pool.members if m in self.placement.workers and m != member)
                log.info("pool_shrunk", pool=path, member=member, running=left)
                self.publish({"kind": "pool.shrunk", "pool": path, "member": member, "running": left,
                              "max": len(policy.pool.members)})  # fmt: skip

            self.moves.drain([member], drained, why="shrink")
