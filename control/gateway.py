"""The control gateway: the one door between clients and the tree.

A child of the root supervisor (always its first child). It binds

- the client endpoint (ROUTER): requests from ``openfang`` and any client written from PROTOCOL.md;
- the event stream (PUB): lifecycle events the root hands down the uplink, and events from workers;
- the internal worker endpoint (ROUTER): workers connect a DEALER whose routing id is their child id.

Requests about the tree (status, tree, stop, reload, child.*) go up the uplink to the root; requests about
agents go to the worker that hosts the agent. Every request gets exactly one reply: the answer, or a typed
error (bad frame, unknown type, busy when the in-flight table is full, not_found for an absent worker,
timeout when nobody answered in ``request_timeout_ms``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import zmq
from openfang.control import routing
from openfang.control.guard import Guard, config_from_args, receive_client
from openfang.protocol import messages
from openfang.protocol.envelope import Envelope, decode, encode, error_reply, peek_id
from openfang.protocol.errors import (
    Busy,
    OpenFangError,
    ProtocolError,
    RemoteError,
    SandboxError,
    SecurityError,
    Timeout,
)
from openfang.protocol.sockets import bind_pub, bind_router, send_nowait
from openfang.supervisor.child import ChildContext

log = structlog.get_logger("openfang.gateway")

# Requests the root supervisor answers; the gateway forwards them up the uplink unchanged.
TREE_OPS = frozenset(
    {
        "status",
        "tree",
        "stop",
        "reload",
        "child.start",
        "child.terminate",
        "child.restart",
        "child.delete",
        "child.which",
        "child.count",
    }
)
POLL_MS = 200


@dataclass(slots=True)
class _Waiting:
    """A client request waiting for an answer from the root or a worker."""

    identity: bytes
    delimited: bool  # REQ-style framing: answer with an empty delimiter frame
    request: Envelope
    deadline: float
    on_reply: Callable[[Envelope], Envelope | None] | None = None
    worker: str | None = None  # the worker asked, so its death can fail the request at once
    via_workers: bool = False  # the asker is a worker (an agent's message to another worker's agent)


@dataclass(slots=True)
class _Worker:
    id: str
    pid: int = 0
    cpu: int | None = None
    agents: int = 0
    in_flight: int = 0
    last_seen: float = field(default_factory=time.monotonic)


class Gateway:
    """The gateway's state and its poll loop (one thread, no locks)."""

    def __init__(self, ctx: ChildContext, args: dict[str, Any]) -> None:
        self.child = ctx
        self.args = args
        self.max_frame = int(args.get("max_frame_bytes", 1 << 20))
        self.queue_limit = int(args.get("queue_limit", 1000))
        self.timeout_s = int(args.get("request_timeout_ms", 10_000)) / 1000
        mode = int(args.get("socket_mode", 0o600))
        hwm = int(args.get("hwm", 1000))
        keys_dir = args.get("keys_dir")
        self.guard = Guard(config_from_args(args.get("security")), max_frame=self.max_frame)
        self.zctx = zmq.Context()
        self.clients = bind_router(self.zctx, args["endpoint"], hwm=hwm, mode=mode, keys_dir=keys_dir)
        self.events = bind_pub(self.zctx, args["events"], hwm=hwm * 10, mode=mode, keys_dir=keys_dir)
        self.worker_sock = bind_router(self.zctx, args["workers"], hwm=hwm, mode=0o600, keys_dir=keys_dir)
        self.waiting: dict[str, _Waiting] = {}
        self.workers: dict[str, _Worker] = {}
        self.agents = routing.AgentDirectory()
        self.started = time.time()
        self.running = True

    # -- the loop ----------

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.clients, zmq.POLLIN)
        poller.register(self.worker_sock, zmq.POLLIN)
        poller.register(self.child.fileno(), zmq.POLLIN)
        self.child.ready(endpoint=self.args["endpoint"], events=self.args["events"])
        while self.running:
            ready = dict(poller.poll(POLL_MS))
            if self.clients in ready:
                # receive_client also reads the identity the transport proved (guard.peer_identity).
                self._drain(self.clients, self._on_client_frames, receive=receive_client)
            if self.worker_sock in ready:
                self._drain(self.worker_sock, self._on_worker_frames)
            if self.child.fileno() in ready:
                self._on_uplink()
            self._expire()
            self.guard.tick()
            self.child.heartbeat()

    def close(self) -> None:
        # A short linger lets the last replies (the answer to ``stop``) leave before the process ends.
        for sock in (self.clients, self.events, self.worker_sock):
            sock.close(linger=200)
        self.zctx.term()
        self.guard.close()

    @staticmethod
    def _drain(
        sock: zmq.Socket[bytes],
        handle: Callable[[Any], None],
        budget: int = 256,
        receive: Callable[[zmq.Socket[bytes]], Any] = lambda s: s.recv_multipart(zmq.NOBLOCK),
    ) -> None:
        # Bounded so one busy socket cannot starve the others or the heartbeat.
        for _ in range(budget):
            try:
                frames = receive(sock)
            except zmq.Again:
                return
            try:
                handle(frames)
            except Exception:
                # A bug in handling one message must not take the door down for every client.
                log.exception("gateway_message_failed", frames=len(frames))

    # -- clients ----------

    def _on_client_frames(self, received: tuple[list[bytes], str | None]) -> None:
        frames, peer = received
        identity, rest = frames[0], frames[1:]
        delimited = len(rest) == 2 and rest[0] == b""
        if not (delimited or len(rest) == 1):
            self._reply(
                identity,
                False,
                error_reply(
                    "",
                    ProtocolError(
                        f"expected one payload frame (DEALER) or an empty delimiter and a payload (REQ), "
                        f"got {len(rest)} frames"
                    ),
                ),
            )
            return
        payload = rest[-1]
        try:
            env = self.guard.admit(payload, client=identity.hex(), peer=peer)
        except OpenFangError as exc:
            request_id = peek_id(payload) if len(payload) <= self.max_frame else ""
            self._reply(identity, delimited, error_reply(request_id, exc))
            return
        try:
            self._route(identity, delimited, env)
        except OpenFangError as exc:
            self._reply(identity, delimited, env.error(exc))

    def _route(self, identity: bytes, delimited: bool, env: Envelope) -> None:
        if env.type == "ping":
            self._reply(identity, delimited, env.reply({"pid": os.getpid(), "time": time.time()}))
            return
        if env.type == "security.report":
            self._reply(identity, delimited, env.reply({"layers": self.guard.report()}))
            return
        if len(self.waiting) >= self.queue_limit:
            raise Busy(
                f"{len(self.waiting)} requests in flight, the limit is {self.queue_limit}; retry later"
            )
        if env.type in TREE_OPS:
            key = os.urandom(8).hex()
            self.waiting[key] = _Waiting(identity, delimited, env, time.monotonic() + self.timeout_s)
            self.child.send({"t": "req", "id": key, "op": env.type, "args": env.body})
            return
        target = routing.route(env, self.agents, self.workers)
        if target.gather:
            self._scatter(identity, delimited, env, target.workers)
            return
        self._to_worker(identity, delimited, env, target.workers[0], target.on_reply)

    def _to_worker(
        self,
        identity: bytes,
        delimited: bool,
        env: Envelope,
        worker_id: str,
        on_reply: Callable[[Envelope], Envelope | None] | None = None,
        via_workers: bool = False,
    ) -> None:
        key = os.urandom(8).hex()
        forwarded = Envelope(type=env.type, body=env.body, id=key)
        send_nowait(self.worker_sock, [worker_id.encode(), encode(forwarded)], peer=f"worker {worker_id}")
        deadline = time.monotonic() + self.timeout_s
        self.waiting[key] = _Waiting(
            identity, delimited, env, deadline, on_reply, worker=worker_id, via_workers=via_workers
        )
        if worker_id in self.workers:
            self.workers[worker_id].in_flight += 1

    def _scatter(self, identity: bytes, delimited: bool, env: Envelope, worker_ids: list[str]) -> None:
        gather = routing.Gather(env, expected=len(worker_ids))
        for wid in worker_ids:
            try:
                self._to_worker(identity, delimited, env, wid, on_reply=gather.collect)
            except OpenFangError:
                gather.expected -= 1
        if gather.expected == 0:
            self._reply(identity, delimited, gather.result())

    def _reply(self, identity: bytes, delimited: bool, env: Envelope, via_workers: bool = False) -> None:
        frames = [identity, b"", encode(env)] if delimited else [identity, encode(env)]
        try:
            send_nowait(self.worker_sock if via_workers else self.clients, frames, peer="client")
        except OpenFangError as exc:
            # The client left or stopped reading; there is nobody to tell.
            log.info("reply_dropped", reason=str(exc), request_type=env.type)

    # -- workers ----------

    def _on_worker_frames(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            log.warning("worker_frame_malformed", frames=len(frames))
            return
        worker_id = frames[0].decode(errors="replace")
        try:
            env = decode(frames[1], max_size=self.max_frame * 4)
        except OpenFangError as exc:
            log.warning("worker_message_invalid", worker=worker_id, error=str(exc))
            return
        worker = self.workers.setdefault(worker_id, _Worker(worker_id))
        worker.last_seen = time.monotonic()
        if env.type == "worker.hello":
            pid = int(env.body.get("pid", 0))
            if worker.pid and pid != worker.pid:
                self._worker_lost(worker_id, f"restarted (pid {worker.pid} -> {pid})")
                worker = self.workers.setdefault(worker_id, _Worker(worker_id))
            known = worker.pid == pid
            worker.pid = pid
            worker.cpu = env.body.get("cpu")
            if "agent_ids" in env.body:  # the full list comes every few hellos
                self.agents.forget_worker(worker_id, keep=list(env.body["agent_ids"]))
                worker.agents = self.agents.count(worker_id)
            if not known:
                worker.in_flight = 0
                log.info("worker_connected", worker=worker_id, pid=worker.pid, cpu=worker.cpu)
            return
        if env.type == "event":
            self._publish(env.body)
            return
        if env.type == "worker.forward":
            self._on_forward(worker_id, env)
            return
        if env.type == messages.CHUNK_TYPE:  # a part of a streamed reply: pass it on, keep waiting
            streaming = self.waiting.get(env.id)
            if streaming is not None:
                streaming.deadline = time.monotonic() + self.timeout_s  # a streaming answer is alive
                chunk = Envelope(type=env.type, body=env.body, id=streaming.request.id)
                self._reply(streaming.identity, streaming.delimited, chunk, streaming.via_workers)
            return
        waiting = self.waiting.pop(env.id, None)
        if waiting is None:
            return  # a late answer to a request that already timed out
        worker.in_flight = max(0, worker.in_flight - 1)
        self.agents.learn(worker_id, waiting.request, env)
        worker.agents = self.agents.count(worker_id)
        self._complete(waiting, Envelope(type=env.type, body=env.body, id=waiting.request.id))

    def _complete(self, waiting: _Waiting, answer: Envelope) -> None:
        """Answer the client, unless ``answer`` is one part of a gather that still waits for others."""
        if waiting.on_reply is not None:
            merged = waiting.on_reply(answer)
            if merged is None:
                return
            answer = merged
        self._reply(waiting.identity, waiting.delimited, answer, waiting.via_workers)

    def _on_forward(self, worker_id: str, env: Envelope) -> None:
        """An agent on ``worker_id`` messages an agent elsewhere: route it like a client request.

        The sender must be an agent this very worker hosts, so a worker cannot speak for another's agents.
        """
        identity = worker_id.encode()
        try:
            sender = env.body.get("sender")
            inner = env.body.get("request") or {}
            if not isinstance(sender, str) or self.agents.worker_of.get(sender) != worker_id:
                raise SecurityError(f"worker {worker_id} does not host agent {sender!r}; forward refused")
            if inner.get("type") != "agent.send" or not isinstance(inner.get("body"), dict):
                raise ProtocolError("worker.forward: only agent.send requests are forwarded")
            request = decode(encode(Envelope(type="agent.send", body=inner["body"], id=env.id)))
            target = routing.route(request, self.agents, self.workers)
            self._to_worker(identity, False, request, target.workers[0], via_workers=True)
        except OpenFangError as exc:
            self._reply(identity, False, env.error(exc), via_workers=True)

    # -- the root ----------

    def _on_uplink(self) -> None:
        try:
            for msg in self.child.pending():
                self._on_parent_message(msg)
        except EOFError:
            self.running = False

    def _on_parent_message(self, msg: dict[str, Any]) -> None:
        """One message from the root: an event to publish, or the answer to a tree request."""
        kind = msg.get("t")
        if kind == "event":
            event = msg.get("event") or {}
            if event.get("kind") == "child.exited" and event.get("child") in self.workers:
                worker = self.workers[event["child"]]
                if not event.get("pid") or event.get("pid") == worker.pid:
                    self._worker_lost(worker.id, f"exited ({event.get('reason', 'unknown reason')})")
            self._publish(event)
        elif kind == "rep":
            waiting = self.waiting.pop(str(msg.get("id")), None)
            if waiting is None:
                return
            if msg.get("ok"):
                result = msg.get("result")
                if waiting.request.type == "status" and isinstance(result, dict):
                    result = self._readiness(result)
                answer = waiting.request.reply(result if isinstance(result, dict) else {"result": result})
            else:
                err = msg.get("error") or {}
                answer = waiting.request.error(
                    RemoteError(str(err.get("message", "failed")), code=str(err.get("code", "internal")))
                )
            self._reply(waiting.identity, waiting.delimited, answer)
        elif kind == "req" and msg.get("op") == "gateway.info":
            self.child.send({"t": "rep", "id": msg.get("id"), "ok": True, "result": self.info()})

    def _readiness(self, status: dict[str, Any]) -> dict[str, Any]:
        """The root's status with what only the gateway knows: ready once every worker of the tree has
        connected here (before that, a spawn finds no worker), ``workers`` = connected ones."""
        expected = int(status.get("workers") or 0)
        connected = sum(1 for w in self.workers.values() if w.pid)
        ready = status.get("state") == "running" and connected >= expected
        return {**status, "workers": connected, "workers_expected": expected, "ready": ready}

    def _worker_lost(self, worker_id: str, why: str) -> None:
        """A worker died: its agents are gone, and requests it held fail now instead of timing out."""
        self.workers.pop(worker_id, None)
        self.agents.forget_worker(worker_id, keep=[])
        lost = [key for key, w in self.waiting.items() if w.worker == worker_id]
        for key in lost:
            waiting = self.waiting.pop(key)
            err = SandboxError(
                f"worker {worker_id} {why} while handling this {waiting.request.type!r}; retry"
            )
            self._complete(waiting, waiting.request.error(err))
        log.warning("worker_lost", worker=worker_id, why=why, failed_requests=len(lost))

    def info(self) -> dict[str, Any]:
        """What the gateway knows: connected workers, in-flight requests, agents per worker."""
        return {
            "in_flight": len(self.waiting),
            "workers": {
                w.id: {"pid": w.pid, "cpu": w.cpu, "agents": w.agents, "in_flight": w.in_flight}
                for w in self.workers.values()
            },
        }

    def _publish(self, event: dict[str, Any]) -> None:
        event.setdefault("time", time.time())
        kind = str(event.get("kind", "event"))
        frames = [kind.encode(), encode(Envelope(type="event", body=event))]
        # PUB drops for slow subscribers by design; the publisher never blocks.
        with contextlib.suppress(zmq.Again):
            self.events.send_multipart(frames, zmq.NOBLOCK)

    def _expire(self) -> None:
        now = time.monotonic()
        late = [key for key, w in self.waiting.items() if w.deadline <= now]
        for key in late:
            waiting = self.waiting.pop(key)
            err = Timeout(f"no answer to {waiting.request.type!r} within {self.timeout_s:g}s")
            self._complete(waiting, waiting.request.error(err))


def main(ctx: ChildContext) -> None:
    """Child entry point: bind, tell the supervisor we are ready, serve until SIGTERM."""
    structlog.contextvars.bind_contextvars(role="gateway", pid=os.getpid())
    gateway = Gateway(ctx, dict(ctx.args))

    def stop(_signum: int, _frame: object) -> None:
        gateway.running = False

    signal.signal(signal.SIGTERM, stop)
    try:
        gateway.serve()
    finally:
        gateway.close()
