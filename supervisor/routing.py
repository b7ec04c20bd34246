"""Where the gateway sends a request: which worker hosts an agent, which is least loaded, who serves a name.

Pure bookkeeping (no sockets), so placement and routing rules are tested without processes.
"""

from __future__ import annotations

import tomllib
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
    """agent id -> worker, and service name -> agents, learned from the workers' replies."""

    worker_of: dict[str, str] = field(default_factory=dict)
    service_of: dict[str, str] = field(default_factory=dict)

    def learn(self, worker_id: str, request: Envelope, reply: Envelope) -> None:
        """Update the directory from a worker's reply to ``request``."""
        if reply.is_error:
            return
        if request.type == "agent.spawn":
            agent_id = reply.body.get("agent_id")
            if isinstance(agent_id, str):
                self.worker_of[agent_id] = worker_id
                service = reply.body.get("service")
                if isinstance(service, str) and service:
                    self.service_of[agent_id] = service
        elif request.type == "agent.kill":
            agent_id = request.body.get("agent_id")
            if isinstance(agent_id, str):
                self.worker_of.pop(agent_id, None)
                self.service_of.pop(agent_id, None)

    def forget_worker(self, worker_id: str, keep: list[str] | None = None) -> None:
        """A worker (re)connected: it hosts exactly ``keep`` now (a restarted worker starts empty)."""
        kept = set(keep or [])
        for agent_id in [a for a, w in self.worker_of.items() if w == worker_id and a not in kept]:
            del self.worker_of[agent_id]
            self.service_of.pop(agent_id, None)
        for agent_id in kept:
            self.worker_of[agent_id] = worker_id

    def count(self, worker_id: str) -> int:
        return sum(1 for w in self.worker_of.values() if w == worker_id)

    def workers_serving(self, service: str) -> set[str]:
        return {self.worker_of[a] for a, s in self.service_of.items() if s == service and a in self.worker_of}


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
            raise NotFound("no worker is connected")
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
    if not isinstance(manifest, str):
        return None
    try:
        sandbox = tomllib.loads(manifest).get("sandbox")
    except tomllib.TOMLDecodeError:
        return None
    agent_id = sandbox.get("agent_id") if isinstance(sandbox, dict) else None
    return agent_id if isinstance(agent_id, str) else None


def least_loaded(workers: Mapping[str, WorkerLoad]) -> str:
    if not workers:
        raise NotFound("no worker is connected")
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
