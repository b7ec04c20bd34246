"""Where the gateway sends a request: which worker hosts an agent, which is least loaded, who serves a name.

The :class:`AgentDirectory` holds the *announced* agents (confirmed by their worker); it is kept by
:class:`~openfang.control.placement.Placement`, which also decides where agents addressed by id go.

Pure bookkeeping (no sockets), so placement and routing rules are tested without processes.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from openfang.protocol.bodies import AgentSend, WorkerPing
from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import NotFound, ProtocolError, UnknownType

# Requests addressed to one agent by id.
BY_AGENT = frozenset(
    {
        "agent.send",
        "agent.info",
        "agent.suspend",
        "agent.resume",
        "agent.kill",
        "agent.hibernate",
        "agent.wake",
        "agent.move",
    }
)


class WorkerLoad(Protocol):
    agents: int
    in_flight: int


@dataclass(slots=True)
class AgentDirectory:
    """agent id -> worker, and service name -> agents, for the agents their worker has confirmed.

    Counts per worker and per service are kept alongside, so routing a request costs O(1) whatever the
    number of agents (spawning 10,000 agents must not be quadratic in the gateway).
    """

    worker_of: dict[str, str] = field(default_factory=dict)
    service_of: dict[str, str] = field(default_factory=dict)
    _per_worker: Counter[str] = field(default_factory=Counter)
    _per_service: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, agent_id: str, worker_id: str, service: str | None = None) -> None:
        self.remove(agent_id)
        worker_id = sys.intern(worker_id)  # decoded from each message: keep one string per worker
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

    def count(self, worker_id: str) -> int:
        return self._per_worker.get(worker_id, 0)

    def workers_serving(self, service: str) -> set[str]:
        return set(self._per_service.get(service, ()))


@dataclass(frozen=True, slots=True)
class Target:
    """Where :func:`route` sends a request: the workers, whether their replies are gathered into one, and
    what is done to a reply before the client gets it."""

    workers: list[str]
    gather: bool = False
    on_reply: Callable[[Envelope], Envelope] | None = None


def route(
    message_type: str, body: object, agents: AgentDirectory, workers: Mapping[str, WorkerLoad]
) -> Target:
    """Pick the worker for a request that is not about one agent by id (those go through
    :class:`~openfang.control.placement.Placement`), from its type and its body as the catalogue typed it
    (:func:`~openfang.protocol.messages.parse`). Raises NotFound / UnknownType naming what is missing."""
    if isinstance(body, WorkerPing):
        if body.worker not in workers:
            raise NotFound(
                f"worker {body.worker!r} is not connected (connected: {', '.join(sorted(workers)) or 'none'})"
            )
        return Target([body.worker])
    if message_type.startswith("memory."):
        # Reads of the shared database: any worker holds a WAL reader; the least loaded answers.
        return Target([least_loaded(workers)])
    if isinstance(body, AgentSend) and body.service:
        return Target([service_host(body.service, agents, workers)])
    if message_type in BY_AGENT:
        raise ProtocolError("body.agent_id: required (or body.service for agent.send)")
    raise UnknownType(f"type: {message_type!r} is not a request this gateway serves")


def service_host(service: str, agents: AgentDirectory, workers: Mapping[str, WorkerLoad]) -> str:
    """The connected worker to send a message for ``service`` to: of the workers hosting an agent that
    serves it, the one with the fewest requests in flight (a worker that falls behind stops getting work),
    the first by id among equals. Raises NotFound when no connected worker hosts one."""
    best: str | None = None
    best_load = 0
    for worker_id in agents._per_service.get(service, ()):
        worker = workers.get(worker_id)
        if worker is None:
            continue
        load = worker.in_flight
        if best is None or load < best_load or (load == best_load and worker_id < best):
            best, best_load = worker_id, load
    if best is None:
        raise NotFound(f"no agent serves {service!r}")
    return best


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
    workers: list[Any] = field(default_factory=list)  # each worker's figures (WorkerStats)

    def collect(self, reply: Envelope) -> Envelope:
        self.expected -= 1
        if reply.is_error:
            self.errors.append(str(reply.body.get("message")))
        else:
            self.items.extend(reply.body.get("agents", []))
            self.workers.extend(w for w in reply.body.get("workers") or [] if isinstance(w, dict))
        return self.result() if self.expected <= 0 else None  # type: ignore[return-value]

    def result(self) -> Envelope:
        return self.request.reply({"agents": self.items, "errors": self.errors, "workers": self.workers})
