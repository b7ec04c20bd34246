"""Where the gateway sends a request: which worker hosts an agent, which is least loaded, who serves a name.

Pure bookkeeping (no sockets), so placement and routing rules are tested without processes.
"""

from __future__ import annotations

import tomllib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import AlreadyExists, NotFound, ProtocolError, UnknownType

# Requests addressed to one agent by id.
_BY_AGENT = frozenset({"agent.send", "agent.info", "agent.suspend", "agent.resume", "agent.kill"})


class WorkerLoad(Protocol):
    agents: int
    in_flight: int


@dataclass(slots=True)
class AgentDirectory:
    """agent id -> worker, and service name -> agents, learned from the workers' replies.

    Counts per worker and per service are kept alongside, so routing a request costs O(1) whatever the
    number of agents (spawning 10,000 agents must not be quadratic in the gateway).
    """

    worker_of: dict[str, str] = field(default_factory=dict)
    service_of: dict[str, str] = field(default_factory=dict)
    _per_worker: Counter[str] = field(default_factory=Counter)
    _per_service: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, agent_id: str, worker_id: str, service: str | None = None) -> None:
        self.remove(agent_id)
        self.worker_of[agent_id] = worker_id
        self._per_worker[worker_id] += 1
        if service:
            self.service_of[agent_id] = service
            self._per_service.setdefault(service, Counter())[worker_id] += 1

    def remove(self, agent_id: str) -> None:
        worker_id = self.worker_of.pop(agent_id, None)
        if worker_id is None:
            return
        self._per_worker[worker_id] -= 1
        if self._per_worker[worker_id] <= 0:
            del self._per_worker[worker_id]
        service = self.service_of.pop(agent_id, None)
        if service is not None:
            hosts = self._per_service[service]
            hosts[worker_id] -= 1
            if hosts[worker_id] <= 0:
                del hosts[worker_id]

    def learn(self, worker_id: str, request: Envelope, reply: Envelope) -> None:
        """Update the directory from a worker's reply to ``request``."""
        if reply.is_error:
            return
        if request.type == "agent.spawn":
            agent_id = reply.body.get("agent_id")
            if isinstance(agent_id, str):
                service = reply.body.get("service")
                self.add(agent_id, worker_id, service if isinstance(service, str) else None)
        elif request.type == "agent.kill":
            agent_id = request.body.get("agent_id")
            if isinstance(agent_id, str):
                self.remove(agent_id)

    def forget_worker(self, worker_id: str, keep: list[str] | None = None) -> None:
        """A worker (re)connected: it hosts exactly ``keep`` now (a restarted worker starts empty)."""
        kept = set(keep or [])
        if self._per_worker.get(worker_id, 0) == len(kept) and all(
            self.worker_of.get(a) == worker_id for a in kept
        ):
            return  # the periodic hello of a worker we already know exactly: nothing to do
        for agent_id in [a for a, w in self.worker_of.items() if w == worker_id and a not in kept]:
            self.remove(agent_id)
        for agent_id in kept:
            if self.worker_of.get(agent_id) != worker_id:
                self.add(agent_id, worker_id, self.service_of.get(agent_id))

    def count(self, worker_id: str) -> int:
        return self._per_worker.get(worker_id, 0)

    def workers_serving(self, service: str) -> set[str]:
        return set(self._per_service.get(service, ()))


@dataclass(frozen=True, slots=True)
class Target:
    workers: list[str]
    gather: bool = False
    on_reply: Callable[[Envelope], Envelope] | None = None


def route(env: Envelope, agents: AgentDirectory, workers: Mapping[str, WorkerLoad]) -> Target:
    """Pick the worker(s) for ``env``. Raises NotFound / UnknownType naming what is missing."""
    if env.type == "worker.ping":
        wid = env.body.get("worker")
        if not isinstance(wid, str) or wid not in workers:
            raise NotFound(
                f"worker {wid!r} is not connected (connected: {', '.join(sorted(workers)) or 'none'})"
            )
        return Target([wid])
    if env.type == "agent.spawn":
        explicit = _explicit_agent_id(env.body.get("manifest"))
        if explicit is not None and explicit in agents.worker_of:
            raise AlreadyExists(
                f"[sandbox] agent_id {explicit!r} is already running on {agents.worker_of[explicit]}; "
                "agent ids are unique in the cluster"
            )
        wanted = env.body.get("worker")
        if isinstance(wanted, str) and wanted:
            if wanted not in workers:
                raise NotFound(f"worker {wanted!r} is not connected")
            return Target([wanted])
        return Target([least_loaded(workers)])
    if env.type.startswith("memory."):
        # Reads of the shared database: any worker holds a WAL reader; the least loaded answers.
        return Target([least_loaded(workers)])
    if env.type == "agent.list":
        if not workers:
            raise NotFound("no worker is connected (yet? 'openfang status' says ready once every worker is)")
        return Target(sorted(workers), gather=True)
    if env.type in _BY_AGENT:
        agent_id = env.body.get("agent_id")
        if isinstance(agent_id, str) and agent_id:
            wid = agents.worker_of.get(agent_id)
            if wid is None or wid not in workers:
                raise NotFound(f"agent {agent_id!r} is not running on any connected worker")
            return Target([wid])
        service = env.body.get("service")
        if env.type == "agent.send" and isinstance(service, str) and service:
            hosts = agents.workers_serving(service) & set(workers)
            if not hosts:
                raise NotFound(f"no agent serves {service!r}")
            # The host with the fewest requests in flight: a worker that falls behind stops getting work.
            return Target([min(sorted(hosts), key=lambda w: workers[w].in_flight)])
        raise ProtocolError("body.agent_id: required (or body.service for agent.send)")
    raise UnknownType(f"type: {env.type!r} is not a request this gateway serves")


def _explicit_agent_id(manifest: Any) -> str | None:
    """The ``[sandbox] agent_id`` a manifest asks for, if it names one (the worker reports parse errors)."""
    if not isinstance(manifest, str) or "agent_id" not in manifest:
        return None  # parsing every manifest costs the gateway more than the spawn costs the worker
    try:
        sandbox = tomllib.loads(manifest).get("sandbox")
    except tomllib.TOMLDecodeError:
        return None
    agent_id = sandbox.get("agent_id") if isinstance(sandbox, dict) else None
    return agent_id if isinstance(agent_id, str) else None


def least_loaded(workers: Mapping[str, WorkerLoad]) -> str:
    if not workers:
        raise NotFound("no worker is connected (yet? 'openfang status' says ready once every worker is)")
    return min(sorted(workers), key=lambda w: (workers[w].agents + workers[w].in_flight, w))


@dataclass(slots=True)
class Gather:
    """Merges the replies of a request sent to every worker (``agent.list``)."""

    request: Envelope
    expected: int
    items: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def collect(self, reply: Envelope) -> Envelope:
        self.expected -= 1
        if reply.is_error:
            self.errors.append(str(reply.body.get("message")))
        else:
            self.items.extend(reply.body.get("agents", []))
        return self.result() if self.expected <= 0 else None  # type: ignore[return-value]

    def result(self) -> Envelope:
        return self.request.reply({"agents": self.items, "errors": self.errors})
