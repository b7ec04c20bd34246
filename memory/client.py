"""The client side of the memory writer: keeps every unacknowledged write until its ack arrives.

- One DEALER socket (``IMMEDIATE``: nothing is queued for a writer that is not connected). Every request
  carries a client-generated id; until acked it stays in ``pending`` and is resent with the *same* id when
  ``resend_after_s`` (doubling per attempt, capped) passes without an ack or when the socket reconnects (a
  restarted writer). The writer's ledger makes resends idempotent: an acknowledged write is stored once.
- ``max_in_flight`` bounds the pending set: :meth:`submit` waits (pumping replies) for room.
- Two ways to use it: pipelined (:meth:`submit` then :meth:`poll` for :class:`Completion` s; what workers
  use) and synchronous (:meth:`call` and the helpers :meth:`episode`, :meth:`store`, ... which raise
  the writer's error, e.g. :class:`~openfang.protocol.errors.Busy`).

Not thread-safe: one client per thread (ZeroMQ sockets are not thread-safe either).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from openfang.memory import messages
from openfang.memory._db import pack_vector
from openfang.memory.paths import locations as locations
from openfang.protocol.bodies import Empty
from openfang.protocol.envelope import Envelope, decode, encode, new_id
from openfang.protocol.errors import (
    Busy,
    FrameTooLarge,
    MemoryStoreError,
    OpenFangError,
    ProtocolError,
    RemoteError,
    Timeout,
)
from openfang.protocol.memory_writes import (
    MemoryEpisode,
    MemoryReclaim,
    MemoryStore,
    MemoryToolCall,
    ReclaimPolicy,
    Role,
    ToolStatus,
)

MAX_RESEND_AFTER_S = 30.0
_ERRORS: dict[str, type[OpenFangError]] = {
    "busy": Busy,
    "bad_request": ProtocolError,
    "too_large": FrameTooLarge,
    "memory_error": MemoryStoreError,
    "timeout": Timeout,
}


def error_from_wire(body: Mapping[str, Any]) -> OpenFangError:
    """The local exception for an error reply's ``{"code", "message"}``."""
    code = str(body.get("code", "internal"))
    message = str(body.get("message", "memory writer error"))
    cls = _ERRORS.get(code)
    return cls(message) if cls is not None else RemoteError(message, code=code)


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion:
    """The outcome of one submitted request: the ack body, or the error the writer replied with."""

    id: str
    type: str
    body: dict[str, Any]
    error: OpenFangError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def result(self) -> dict[str, Any]:
        """The ack body; raises the error if the request failed."""
        if self.error is not None:
            raise self.error
        return self.body


@dataclass(slots=True)
class _Pending:
    type: str
    frame: bytes
    sent_at: float  # monotonic; -inf: not sent yet / must be resent now
    attempts: int = 0


class MemoryClient:
    """A connection to the memory writer at ``endpoint`` (``ipc://...`` or ``tcp://...``)."""

    def __init__(
        self,
        endpoint: str,
        *,
        resend_after_s: float = 2.0,
        max_in_flight: int = 1000,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.resend_after_s = resend_after_s
        self.max_in_flight = max_in_flight
        self._own_ctx = context is None
        self._ctx: zmq.Context[Any] = context or zmq.Context()
        self.sock = self._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.setsockopt(zmq.LINGER, 0)  # unacked requests live in `pending`, not in ZeroMQ
        self.sock.setsockopt(zmq.RECONNECT_IVL, 50)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        self._monitor = self.sock.get_monitor_socket(zmq.EVENT_CONNECTED)
        self.sock.connect(endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self.pending: dict[str, _Pending] = {}
        self._done: dict[str, Completion] = {}
        self._unclaimed: list[Completion] = []
        self.resends = 0
        self.reconnects = 0
        self._connected_once = False

    # -- pipelined API --------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def submit(
        self,
        msg_type: str,
        body: Mapping[str, Any] | Any,
        *,
        req_id: str | None = None,
        timeout_s: float = 30.0,
    ) -> str:
        """Queue one request and send it; returns its id. Waits for in-flight room.

        ``body`` is a body class of :mod:`openfang.protocol.memory_writes` (or its plain map), checked here
        against the catalogue's schema for ``msg_type`` first: a bad one raises ProtocolError naming every
        field, and nothing is sent.
        """
        body = messages.wire_body(body)
        problems = messages.validate(msg_type, body)
        if problems:
            raise ProtocolError("; ".join(problems))
        req_id = req_id or new_id()
        deadline = time.monotonic() + timeout_s
        while len(self.pending) >= self.max_in_flight:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(
                    f"memory writer at {self.endpoint}: {len(self.pending)} requests unacknowledged"
                )
            self._pump(min(left, 0.1))
        frame = encode(Envelope(type=msg_type, body=body, id=req_id))
        if req_id not in self.pending:
            self.pending[req_id] = _Pending(type=msg_type, frame=frame, sent_at=float("-inf"))
            self._send(req_id)
        return req_id

    def poll(self, timeout_s: float = 0.0) -> list[Completion]:
        """Completions that arrived (waiting up to ``timeout_s`` for the first); resends what is overdue."""
        if not self._unclaimed:
            self._pump(timeout_s)
        out, self._unclaimed = self._unclaimed, []
        for c in out:
            self._done.pop(c.id, None)
        return out

    def wait_all(self, timeout_s: float = 30.0) -> list[Completion]:
        """Pump until nothing is pending; returns every completion. Raises Timeout if acks do not come."""
        deadline = time.monotonic() + timeout_s
        out: list[Completion] = []
        while self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(
                    f"memory writer at {self.endpoint}: {len(self.pending)} writes still unacknowledged"
                )
            out += self.poll(min(left, 0.1))
        return out + self.poll()

    # -- synchronous API ------------------------------------------------------------------------------

    def call(
        self,
        msg_type: str,
        body: Mapping[str, Any] | Any,
        *,
        req_id: str | None = None,
        timeout_s: float = 30.0,
    ) -> dict[str, Any]:
        """Send one request and wait for its reply; returns the ack body or raises the writer's error."""
        req_id = self.submit(msg_type, body, req_id=req_id, timeout_s=timeout_s)
        deadline = time.monotonic() + timeout_s
        while req_id not in self._done:
            left = deadline - time.monotonic()
            if left <= 0:
                self.pending.pop(req_id, None)
                raise Timeout(
                    f"memory writer at {self.endpoint} did not acknowledge {msg_type} within {timeout_s}s"
                )
            self._pump(min(left, 0.1))
        done = self._done.pop(req_id)
        self._unclaimed = [c for c in self._unclaimed if c.id != req_id]
        return done.result()

    def episode(self, agent_id: str, session: str, role: Role, text: str, **extra: Any) -> dict[str, Any]:
        """Record one message (``ts``, ``tokens`` optional)."""
        body = MemoryEpisode(agent_id=agent_id, session=session, role=role, text=text, **extra)
        return self.call(messages.EPISODE, body)

    def store(
        self,
        agent_id: str,
        text: str,
        *,
        kind: str = "fact",
        importance: float = 0.5,
        ttl_s: float | None = None,
        embedder: str | None = None,
        vector: Sequence[float] | bytes | None = None,
        tags: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Store one memory with its (already computed) vector."""
        body = store_body(agent_id, text, kind, importance, ttl_s, embedder, vector, tags)
        return self.call(messages.STORE, body)

    def tool_call(self, agent_id: str, tool: str, status: ToolStatus, **extra: Any) -> dict[str, Any]:
        """Record one tool call (``session``, ``args``, ``duration_ms``, ``error``, ``ts`` optional)."""
        body = MemoryToolCall(agent_id=agent_id, tool=tool, status=status, **extra)
        return self.call(messages.TOOL_CALL, body)

    def reclaim(self, agent_id: str, policy: ReclaimPolicy) -> dict[str, Any]:
        """Apply a retention policy (keep / archive / purge) to an agent's memory."""
        return self.call(messages.RECLAIM, MemoryReclaim(agent_id=agent_id, policy=policy))

    def ping(self, timeout_s: float = 5.0) -> int:
        """The writer's current commit sequence number (answers without a commit)."""
        return int(self.call(messages.PING, Empty(), timeout_s=timeout_s)["seq"])

    # -- plumbing -------------------------------------------------------------------------------------

    def _send(self, req_id: str) -> None:
        p = self.pending[req_id]
        try:
            self.sock.send(p.frame, zmq.NOBLOCK)
        except zmq.Again:
            return  # not connected (IMMEDIATE): stays due, resent by the next pump
        if p.attempts:
            self.resends += 1
        p.attempts += 1
        p.sent_at = time.monotonic()

    def _pump(self, timeout_s: float) -> None:
        events = dict(self._poller.poll(max(0, int(timeout_s * 1000))))
        if self._monitor in events:
            self._on_monitor()
        if self.sock in events:
            while True:
                try:
                    payload = self.sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_reply(payload)
        now = time.monotonic()
        for req_id, p in list(self.pending.items()):
            # Back off (x2 per attempt, at most MAX_RESEND_AFTER_S) so an overloaded writer is not buried
            # under copies of what it already queued; a reconnect still resends at once (sent_at = -inf).
            wait = min(self.resend_after_s * (1 << min(max(p.attempts - 1, 0), 10)), MAX_RESEND_AFTER_S)
            if now - p.sent_at >= wait:
                self._send(req_id)

    def _on_monitor(self) -> None:
        # Imported here: zmq.utils.monitor imports zmq.asyncio (~5 ms), which nothing else here needs.
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_CONNECTED:
                if self._connected_once:
                    # A (re)started writer: whatever it had not acked may be lost with the old one.
                    self.reconnects += 1
                    for p in self.pending.values():
                        p.sent_at = float("-inf")
                self._connected_once = True

    def _on_reply(self, payload: bytes) -> None:
        try:
            env = decode(payload, max_size=len(payload))
        except OpenFangError:
            return  # not ours to answer; the request stays pending and is resent
        p = self.pending.pop(env.id, None)
        if p is None:
            return  # the ack of a resend we already have
        err = error_from_wire(env.body) if env.is_error else None
        done = Completion(id=env.id, type=p.type, body=dict(env.body), error=err)
        self._done[env.id] = done
        self._unclaimed.append(done)

    def close(self) -> None:
        """Close the socket (unacked requests are dropped with it: call :meth:`wait_all` first)."""
        self.sock.disable_monitor()
        self._monitor.close(0)
        self.sock.close(0)
        if self._own_ctx:
            self._ctx.term()

    def __enter__(self) -> MemoryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def store_body(
    agent_id: str,
    text: str,
    kind: str = "fact",
    importance: float = 0.5,
    ttl_s: float | None = None,
    embedder: str | None = None,
    vector: Sequence[float] | bytes | None = None,
    tags: Sequence[str] | None = None,
) -> MemoryStore:
    """The body of a ``memory.store`` request (vector packed as float32)."""
    return MemoryStore(
        agent_id=agent_id,
        text=text,
        kind=kind,
        importance=float(importance),
        ttl_s=None if ttl_s is None else float(ttl_s),
        embedder=embedder if vector is not None else None,
        vector=None if vector is None else vector if isinstance(vector, bytes) else pack_vector(vector),
        tags=list(tags) if tags else None,
    )
