"""The gateway's half of moving agents between workers: ``agent.move`` and a reload's drain.

A move is two requests to workers with the gateway between them (issue 9 item 7):

1. the *source half*: an internal ``agent.move`` to the worker hosting the agent, which answers the
   messages already inside it, writes the agent's guest state to its snapshot file (or, for a module a
   snapshot cannot hold, nothing) and drops it (:meth:`~openfang.workers.host.agent_host.AgentHost`);
2. the *target half*: the re-spawn :class:`~openfang.control.placement.Placement` sends when it places the
   agent again (``resume``: from the snapshot file), the same path as a restart but not counted as one.

:class:`Moves` checks a client's request, sends the source half, answers the client when the agent runs on
the target (``Port.moved``), and drains workers for the root before a reload stops them
(``gateway.evacuate``): the root's request is answered once every source has let its agents go, so the
stop loses no guest state. An elastic pool (:mod:`.elastic`) uses the same two halves: :meth:`Moves.spread`
onto a worker it has just started, :meth:`Moves.drain` off one it is about to stop. Sockets stay the
gateway's: it passes in how to ask a worker and how to reply.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from openfang.control.placement import Placement
from openfang.protocol import messages
from openfang.protocol.bodies import AgentMove
from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import Busy, NotFound, OpenFangError, ProtocolError, RemoteError, Restarting

log = structlog.get_logger("openfang.moves")
MAX_WAIT_MS = 5000  # the longest a source waits for a busy agent to be idle

AskWorker = Callable[[str, Envelope, Callable[[Envelope], None]], None]


class Moves:
    """Moves in progress and the drain of a reload (the gateway's loop thread only)."""

    def __init__(
        self,
        placement: Placement,
        *,
        ask_worker: AskWorker,
        answer: Callable[[Any, Envelope], None],
        connected: Callable[[str], bool],
        send_up: Callable[[dict[str, Any]], Any],
        timeout_s: float,
    ) -> None:
        self.placement = placement
        self._ask_worker = ask_worker  # ask_worker(worker, request, done(reply)): an internal request
        self._answer = answer  # answer(the client's pending request, reply envelope)
        self._connected = connected  # connected(worker): the worker is there now
        self._send_up = send_up  # a message to the root over the uplink
        self._timeout_s = timeout_s
        self._askers: dict[str, Any] = {}  # agent id -> the client's agent.move to answer
        self._evacuations: list[_Evacuation] = []  # drains in progress (a reload's, an elastic shrink's)

    def request(self, pending: Any, move: AgentMove) -> None:
        """A client's ``agent.move``: refused with a clear error, or started (answered by :meth:`moved`)."""
        row, source = self.placement.target(move.agent_id)  # not_found, gone
        agent_id = row.agent_id
        if agent_id in self.placement.moving:
            raise Busy(f"agent {agent_id!r} is already moving; retry when it has arrived")
        if source is None:
            raise Restarting(f"agent {agent_id!r} is {row.state}; move it when it runs", retry_after_ms=500)
        target = self._target(agent_id, source, move.to)
        self.placement.begin_move(agent_id, target)
        self._askers[agent_id] = pending
        self._move_out(agent_id, source, target)

    def _target(self, agent_id: str, source: str, wanted: str | None) -> str:
        placement = self.placement
        if wanted is None:
            target = placement.least_loaded(exclude=[source])
            if target is None:
                raise NotFound(f"no other worker is connected to move agent {agent_id!r} to")
            return target
        if wanted == source:
            raise ProtocolError(f"body.to: agent {agent_id!r} already runs on worker {source!r}")
        if wanted not in placement.workers or not self._connected(wanted):
            connected = ", ".join(sorted(placement.workers)) or "none"
            raise NotFound(f"body.to: worker {wanted!r} is not connected (connected: {connected})")
        if wanted in placement.draining:
            raise NotFound(f"body.to: worker {wanted!r} is being removed by a reload")
        return wanted

    def _move_out(self, agent_id: str, source: str, target: str | None) -> None:
        """The source half: ``source`` lets ``agent_id`` go; the placement re-spawns it on ``target``."""
        wait_ms = int(min(MAX_WAIT_MS, self._timeout_s * 500))  # the source gives up before we time out
        body = messages.to_body(AgentMove(agent_id=agent_id, to=target, wait_ms=wait_ms))

        def done(reply: Envelope) -> None:
            error = None
            if reply.is_error:
                code = str(reply.body.get("code", "sandbox_error"))
                error = RemoteError(str(reply.body.get("message", "the move failed")), code=code)
            self.placement.moved_out(
                agent_id,
                not reply.is_error,
                path=str(reply.body.get("path", "")),
                error=error,
                source_alive=self._connected(source),
            )
            if self._evacuations:
                self._evacuations = [e for e in self._evacuations if not e.answered(agent_id, reply)]

        self._ask_worker(source, Envelope(type="agent.move", body=body), done)

    def moved(self, agent_id: str, result: dict[str, Any] | None, error: Exception | None) -> None:
        """A move ended (``Port.moved``): answer the client's agent.move, if a client asked for it."""
        pending = self._askers.pop(agent_id, None)
        if pending is None:
            return
        if result is not None:
            self._answer(pending, pending.request.reply(result))
            return
        err = error if isinstance(error, OpenFangError) else OpenFangError(str(error))
        self._answer(pending, pending.request.error(err))

    def evacuate(self, req_id: Any, workers: list[str]) -> None:
        """The root's ``gateway.evacuate`` before a reload stops ``workers``: move their agents off them."""

        def answer(result: dict[str, Any]) -> None:
            self._send_up({"t": "rep", "id": req_id, "ok": True, "result": result})

        self.drain(workers, answer)

    def drain(self, workers: list[str], done: Callable[[dict[str, Any]], None], why: str = "reload") -> None:
        """Move every agent off ``workers`` (no new agents go there); ``done(result)`` once every source has
        let its agents go (or kept them: ``stayed``)."""
        moving = self.placement.drain(workers, why=why)
        log.info("workers_draining", workers=workers, agents=len(moving), why=why)
        evacuation = _Evacuation(set(moving), done, workers)
        self._evacuations.append(evacuation)
        for agent_id in moving:
            self._move_out(agent_id, self.placement.moving[agent_id].source, None)
        if evacuation.done():
            self._evacuations.remove(evacuation)

    def spread(self, agent_ids: list[str], target: str, why: str = "grow") -> None:
        """Move ``agent_ids`` onto ``target`` (a worker an elastic pool has just started): each a move,
        state kept by snapshot, not a restart; an agent that cannot move stays where it is."""
        for agent_id in agent_ids:
            if agent_id in self.placement.moving or not self.placement.announced(agent_id):
                continue
            move = self.placement.begin_move(agent_id, target, why=why)
            self._move_out(agent_id, move.source, target)

    def undrain(self, workers: Iterable[str]) -> None:
        """The reload failed: the drained workers stay and may host agents again."""
        self.placement.undrain(workers)

    def hosted_by(self, worker_id: str, agent_id: str) -> bool:
        """``agent_id`` is moving off ``worker_id`` and not let go yet: it is finishing the messages it had
        there, so what it sends meanwhile (agent_send, tools) comes from that worker legitimately."""
        move = self.placement.moving.get(agent_id)
        row = self.placement.registry.get(agent_id)
        return (
            move is not None and move.source == worker_id and row is not None and row.placement == worker_id
        )


class _Evacuation:
    """A drain: the agents whose source has not answered yet, and whom to tell when none is left."""

    def __init__(self, waiting: set[str], done: Callable[[dict[str, Any]], None], workers: list[str]) -> None:
        self.waiting = waiting
        self.on_done = done
        self.workers = workers
        self.moved: list[str] = []
        self.stayed: dict[str, str] = {}  # agent id -> why its worker kept it (it goes with the worker)
        self.finished = False
        self.t0 = time.monotonic()

    def answered(self, agent_id: str, reply: Envelope) -> bool:
        """One source's answer; True once the root has been answered."""
        if agent_id in self.waiting:
            self.waiting.discard(agent_id)
            if reply.is_error:
                self.stayed[agent_id] = str(reply.body.get("message", ""))
            else:
                self.moved.append(agent_id)
        return self.done()

    def done(self) -> bool:
        """Answer the root once no source is left to answer; True when answered."""
        if self.finished:
            return True
        if self.waiting:
            return False
        ms = round((time.monotonic() - self.t0) * 1000, 1)
        result = {"workers": self.workers, "moved": len(self.moved), "stayed": self.stayed, "ms": ms}
        log.info("workers_drained", **result)
        self.finished = True
        self.on_done(result)
        return True
