"""A worker process: pinned to one core, connected to the gateway, hosting many agent sandboxes.

Started by its supervisor as ``openfang.workers.worker:main`` (the supervisor has already pinned it and set
PDEATHSIG). It connects a DEALER to the gateway's internal endpoint with its child id as routing id, says
``worker.hello`` (again every second; the first one, and the one after a gateway's ``worker.resync``, lists
every agent it hosts, so a restarted gateway knows them at once), answers ``worker.ping`` and
hands ``agent.*`` requests to its :class:`~openfang.workers.host.agent_host.AgentHost`. The main loop sends
the supervisor a heartbeat every turn: a worker stuck in a loop falls silent and is restarted.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import zmq

from openfang.memory.paths import locations  # nothing but the paths (before the fork: shared, not read again)
from openfang.protocol import messages
from openfang.protocol.bodies import Empty, ForwardedRequest, WorkerForward, WorkerHello, WorkerPing
from openfang.protocol.envelope import Envelope, decode, encode
from openfang.protocol.errors import Busy, NotFound, OpenFangError, ProtocolError
from openfang.protocol.linkframe import pack, unpack
from openfang.protocol.messages import remote_error
from openfang.protocol.sockets import send_nowait
from openfang.security import injection
from openfang.supervisor.child import ChildContext
from openfang.workers.host import wiring as host_wiring
from openfang.workers.sandbox._wasmtime import release_compiler_pages as release_code_pages
from openfang.workers.sandbox._wasmtime import release_compiler_pages_at_next_fork

if TYPE_CHECKING:  # imported by _open_memory: a cluster without a memory writer never loads them
    from openfang.memory.api import MemoryAPI
    from openfang.memory.service import MemoryService

log = structlog.get_logger("openfang.worker")
injection.warm()  # at import, so in the supervisor before the fork (see its docstring)
# Importing wasmtime ran its library's start-up code; the supervisor that imports this module before its
# forks never runs wasmtime, and a worker maps what it runs again on use: those pages are dropped (-1.1 MB
# USS in the root, which alone kept them once the workers release theirs when quiet) right after the
# supervisor's next fork, while the worker starts (off the cold start's path).
release_compiler_pages_at_next_fork()
HELLO_EVERY_S = 1.0
POLL_MS = 100
MAX_TIMED = 100_000  # agent.send requests timed at once (an unanswered one is forgotten past this)
# memory.stats waits this long for the memory writer's figures (on the loop: the ping is answered at once by a
# live writer), and after a ping that failed does not ask again for WRITER_RETRY_S, so a dead writer costs the
# loop at most one short wait per WRITER_RETRY_S however often metrics are scraped.
WRITER_PING_S = 0.25
WRITER_RETRY_S = 10.0
# A loop turn's messages to the gateway leave together, packed as one batch frame (protocol/linkframe.py) of
# at most this many envelopes, one ZeroMQ message: each send that finds ZeroMQ's I/O thread asleep wakes it
# (7-12 us measured on this machine against 1.2 us back to back), and one message is one wake-up for all of
# them. The cap keeps the high-water mark's meaning (ZeroMQ counts messages): at most 32 envelopes each.
BATCH_MAX = 32
# One drain handles at most about this many envelopes (whole messages) before the loop turn goes on.
DRAIN_MAX = 512
# A spawn's spare instance (Spawner.prepare_spare) is made once the loop has had nothing to do for this
# long, never in or just after the turn that answered the spawn: made there (or after 1 ms idle), its CPU
# landed on the way back of the reply and of the next spawn (warm start 1.03-1.05x slower, back to back on
# 2 cores). Spawns further apart find it ready (perf/PROFILE.md "Warm start", branch spare).
SPARE_IDLE_MS = 3
# After any request the next warm-up step (Worker._warm_up) waits for this long without one: a restarted
# worker's first requests (a kill -9's restart is timed to its first answered ping) do not queue behind a
# step each. Measured (perf.bench_backbone restart p50, 50 kills a run): with steps from the ready on,
# 13.1-14.2 ms against 11.4-14.7 with no warm-up; with this wait, 9 runs median 15.2 against main's 15.4.
# The first step starts at the ready (nothing has come yet; cold10: restart p50 median 17.3 against 16.7,
# 5 runs a side at load 6-7, within the noise).
WARM_IDLE_MS = 1
_NOBLOCK = int(zmq.NOBLOCK)  # plain ints: pyzmq's flag enums cost an enum operation per use
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


class Worker:
    """One worker's sockets, agent host and loop."""

    def __init__(self, ctx: ChildContext) -> None:
        self.child = ctx
        self.id = ctx.id
        # Facts for the log found before the ready, logged after it (as the last warm-up step): a process's
        # first log call costs ~0.3 ms (structlog's first touches after the fork), off the start's path there.
        self._notes: list[tuple[str, dict[str, Any]]] = []
        self.cpu = ctx.cpu
        endpoint = str(ctx.args.get("gateway") or os.environ.get("OPENFANG_WORKERS_ENDPOINT", ""))
        if not endpoint:
            raise ProtocolError("worker: no gateway endpoint (args.gateway or OPENFANG_WORKERS_ENDPOINT)")
        self.zctx = zmq.Context()
        self.sock = self.zctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, self.id.encode())
        self.sock.setsockopt(zmq.LINGER, 200)
        self.sock.setsockopt(zmq.SNDHWM, int(ctx.args.get("hwm", 10_000)))
        self.sock.connect(endpoint)
        self.memory = _open_memory(self._notes)
        self.memory_service: MemoryService | None = None
        if self.memory is not None:
            from openfang.memory.service import MemoryService

            self.memory_service = MemoryService(self.memory.reader)
        self._events: list[Envelope] = []  # agent events of this loop turn, sent after its replies
        self._outbox: list[bytes] = []  # encoded messages of this loop turn, sent by _flush in order
        self.host = host_wiring.build_host(
            self.id, ctx.args, events=self._agent_event, audit=self._audit, memory=self.memory
        )
        self.host.set_remote_send(self._forward)
        self._forwards: dict[str, Future[Any]] = {}
        self._arrived: dict[str, float] = {}  # agent.send id -> when it reached this worker (perf_counter)
        self._writer_quiet_until = 0.0  # monotonic: no writer ping before then (the last one failed)
        self.running = True
        self._last_hello = 0.0
        self._full_hello = True  # the next hello lists every agent (the first one, or after a resync)
        self._warm_steps: deque[Callable[[], None]] = deque()  # the first spawn's work, done ahead (serve)
        # Whether the next warm-up step waits for WARM_IDLE_MS of quiet first: not the first one (nothing has
        # come yet; a cold start's first spawn comes ~3-5 ms after the ready, and a first step begun then
        # is ~1.3 ms of its own work done ahead), every one after a request.
        self._warm_wait = False
        # The worker's own messages from the gateway, typed by the catalogue; agent.* and memory.* go to the
        # agent host and the memory service, which type their bodies themselves.
        self._dispatch: dict[str, tuple[type[Any], Callable[[Envelope, Any], None]]] = {
            "worker.resync": (Empty, self._on_resync),
            "worker.ping": (WorkerPing, self._on_ping),
        }

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.child.fileno(), zmq.POLLIN)
        poller.register(self.host.wakeup_fd(), zmq.POLLIN)
        self._hello()
        self._flush()  # before ready: the gateway knows this worker by the time the tree reports READY
        self.child.ready(cpu=self.cpu, agents=0)
        # Between its ready and its first request (~5-7 ms of a cold start: the tree's READY, the client's
        # request through the gateway) the worker is idle: it does the first spawn's one-time work then,
        # one step per loop turn, once nothing has come for WARM_IDLE_MS and then back to back while nothing
        # comes (see _warm_up).
        # The cue matcher's context regexes (~2 ms, which only a first message with a cue hit needs) and its
        # full automaton (~3.6 ms, only a text that is not ASCII), not built in the root before the fork
        # (security.injection.warm), are built once the worker is first quiet after a burst (or by the
        # text that needs them): as a last warm-up step the regexes still ran when a cold start's first
        # spawn came in (in 2 of 10 stamped starts, holding it 2.2-5.3 ms).
        matcher_context, matcher_automaton = injection.complete_steps()
        self._warm_steps.extend([self._warm_schemas, *self.host.warm_up(), self._log_notes])
        # Quiet after a burst, the worker also drops libwasmtime's code pages (clean pages of the file,
        # mapped again on the next use: measured ~4 MB USS of an idle worker that ran an agent, no
        # measurable cost on the next message), besides trimming its heap.
        # First the spare instance (an idle worker holds none), then the code pages its freeing ran.
        self.child.when_quiet(self.host.release_spare)
        self.child.when_quiet(release_code_pages)
        self.child.when_quiet(matcher_context)  # (see above) before the heap's trim; no-ops once built
        self.child.when_quiet(matcher_automaton)
        while self.running:
            timeout = POLL_MS
            deadline = self.host.next_deadline()
            if deadline is not None:
                timeout = max(0, min(timeout, int((deadline - time.monotonic()) * 1000)))
            if self.host.spare_wanted():
                timeout = min(timeout, SPARE_IDLE_MS)
            if self._warm_steps:
                timeout = min(timeout, WARM_IDLE_MS if self._warm_wait else 0)
            ready = dict(poller.poll(timeout))
            if ready:
                self._warm_wait = True  # a request: the next warm-up step waits for quiet again
            elif self._warm_steps:
                self._warm_wait = False
                self._warm_up()
            elif timeout > 0:  # idle (not a poll for agents that are runnable now)
                self._idle()
            if self.sock in ready:
                self._drain()
                self._flush()  # answers given while draining (pings, memory reads, refusals)
                self.child.worked()  # a burst (spawns, messages): its free heap pages are trimmed after it
            if self.child.fileno() in ready:
                self._on_uplink()
            replies = self.host.step(0.02)
            if replies:
                for reply in replies:
                    self._send(reply)
                self.child.worked()  # once a turn: it stamps the time of the burst's latest work
            self._send_events()
            if time.monotonic() - self._last_hello >= HELLO_EVERY_S:
                self._hello()
            self._flush()
            self.child.heartbeat()

    def _warm_up(self) -> None:
        """Run the next warm-up step (see serve). One that fails is only logged: it was an optimisation, and
        the request that needs its work meets (and reports) the problem itself."""
        step = self._warm_steps.popleft()
        try:
            step()
        except Exception as exc:
            log.info("warm_up_step_failed", step=step.__qualname__, error=f"{type(exc).__name__}: {exc}")

    def _log_notes(self) -> None:
        """Log the facts the start kept for after its ready (see __init__)."""
        notes, self._notes = self._notes, []
        for event, fields in notes:
            log.info(event, **fields)

    @staticmethod
    def _warm_schemas() -> None:
        """Compile the body schemas of a first spawn and its first message (each is compiled on first use)."""
        messages.body_schema("agent.spawn")
        messages.body_schema("agent.send")

    def _idle(self) -> None:
        """The loop was idle for SPARE_IDLE_MS: when no message from the gateway waits, instantiate the next
        spawn's sandbox now rather than on that spawn's path (Spawner.prepare_spare; once a spawn)."""
        if self.host.spare_wanted() and not int(self.sock.get(zmq.EVENTS)) & zmq.POLLIN:
            self.host.prepare_spare()

    def _drain(self) -> None:
        # The gateway sends a worker its queued requests as one batch frame a message (protocol/linkframe.py):
        # each recv is one message, its envelopes handled in order. After each message, EVENTS says whether
        # another waits: the usual drain is one message (a warm start's spawn and first message), and the
        # zmq.Again that would end the loop cost ~11 us median in situ, on the way to the spawn (stamped;
        # EVENTS ~3.9). Bounded by envelopes, so a flood cannot starve the heartbeat.
        sock = self.sock
        handled = 0
        while handled < DRAIN_MAX:
            try:
                frame = sock.recv(_NOBLOCK)
            except zmq.Again:
                return
            try:
                payloads = unpack(frame)
            except ProtocolError as exc:
                log.error("gateway_batch_malformed", error=str(exc), bytes=len(frame))
                payloads = []
            for payload in payloads:
                self._handle(payload)
            handled += len(payloads) or 1
            if not int(sock.getsockopt(_EVENTS)) & _POLLIN:
                return

    def _handle(self, payload: bytes) -> None:
        try:
            env = decode(payload)
        except OpenFangError as exc:
            log.warning("gateway_message_invalid", error=str(exc))
            return
        forwarded = self._forwards.pop(env.id, None)
        if forwarded is not None:  # the answer to one of our agents' messages to another worker
            if env.is_error:
                forwarded.set_exception(remote_error(env.body))
            else:
                forwarded.set_result(dict(env.body))
            return
        try:
            entry = self._dispatch.get(env.type)
            if entry is not None:
                body_class, handler = entry
                handler(env, messages.parse(env, body_class))
            elif env.type.startswith("agent."):
                if env.type == "agent.send":
                    self._time(env.id)
                self.host.submit(env, decoded=True)  # decode validated its body (not again in parse)
            elif env.type.startswith("memory."):
                if self.memory_service is None:
                    raise NotFound("memory is not configured in this cluster (no memory writer child)")
                answer = self.memory_service.answer(env.type, env.body)
                if env.type == "memory.stats":
                    answer = {**answer, **self._writer_stats()}
                self._send(env.reply(answer))
            else:
                raise ProtocolError(f"type: worker {self.id} does not serve {env.type!r}")
        except OpenFangError as exc:
            self._send(env.error(exc))

    def _on_resync(self, _env: Envelope, _body: Empty) -> None:
        """A (new) gateway wants our full agent list now."""
        self._full_hello = True
        self._hello()

    def _on_ping(self, env: Envelope, _ping: WorkerPing) -> None:
        self._send(env.reply({"worker": self.id, "pid": os.getpid(), "cpu": self.cpu}))

    def _forward(self, sender: str, request: Envelope) -> Future[Any]:
        """Send one of our agents' requests to the gateway: ``agent_send`` to an agent on another worker,
        or ``agent_spawn`` (the gateway registers the child and assigns its id)."""
        fut: Future[Any] = Future()
        self._forwards[request.id] = fut
        forward = WorkerForward(sender=sender, request=ForwardedRequest(type=request.type, body=request.body))
        self._send(Envelope(type="worker.forward", body=messages.to_body(forward), id=request.id))
        self._flush()  # an agent waits on it: not held until the end of a (possibly long) turn
        return fut

    def _time(self, request_id: str) -> None:
        if len(self._arrived) >= MAX_TIMED:
            self._arrived.pop(next(iter(self._arrived)))
        self._arrived[request_id] = time.perf_counter()

    def _writer_stats(self) -> dict[str, Any]:
        """``{"writer": MemoryWriterStats}`` from the writer's ping, or nothing if it does not answer soon."""
        if self.memory is None or time.monotonic() < self._writer_quiet_until:
            return {}
        try:
            pong = self.memory.client.call("memory.ping", {}, timeout_s=WRITER_PING_S)
        except OpenFangError as exc:
            self._writer_quiet_until = time.monotonic() + WRITER_RETRY_S
            log.info("memory_writer_ping_failed", error=str(exc), retry_s=WRITER_RETRY_S)
            return {}
        stats = pong.get("stats")
        return (
            {"writer": {"queued": int(pong.get("queued") or 0), **stats}} if isinstance(stats, dict) else {}
        )

    def _send(self, env: Envelope) -> None:
        """Queue one message for the gateway; it leaves with the next :meth:`_flush` (this loop turn)."""
        started = self._arrived.pop(env.id, None) if env.type != messages.CHUNK_TYPE else None
        if started is not None:  # the reply (or error) that ends an agent.send
            self.host.stats.message_done(time.perf_counter() - started)
        self._outbox.append(encode(env))

    def _flush(self) -> None:
        """Send the queued messages in order, at most BATCH_MAX envelopes per ZeroMQ message (a batch)."""
        out = self._outbox
        if not out:
            return
        self._outbox = []
        for start in range(0, len(out), BATCH_MAX):
            batch = out if len(out) <= BATCH_MAX else out[start : start + BATCH_MAX]
            try:
                send_nowait(self.sock, (pack(batch),), peer="gateway")
            except Busy:
                # The gateway is gone or not reading; it times the requests out for their clients.
                log.warning("reply_dropped_gateway_busy", messages=len(batch))

    def _hello(self) -> None:
        # Every hello says how many agents we host; the first one and the one answering a gateway's
        # worker.resync also list them, so a restarted gateway relearns the directory at once, without
        # 10,000 records a second in the steady state.
        self._last_hello = time.monotonic()
        agent_ids = self.host.agent_ids() if self._full_hello else None
        self._full_hello = False
        hello = WorkerHello(
            worker=self.id, pid=os.getpid(), cpu=self.cpu, agents=self.host.agent_count(), agent_ids=agent_ids
        )
        self._send(Envelope(type="worker.hello", body=messages.to_body(hello)))

    def _on_uplink(self) -> None:
        # The supervisor sends workers nothing they act on yet; drain it, and stop if it is gone.
        try:
            for _msg in self.child.pending():
                pass
        except EOFError:
            self.running = False

    def _agent_event(self, event: dict[str, Any]) -> None:
        """Agent state changes go to the gateway, which publishes them on the event stream: after the
        replies of the same loop turn (a spawn's answer is not held up behind its ``running`` event; the
        gateway decides a spawn by its reply, and ignores an event that only repeats it)."""
        event = {"kind": "agent.state", "worker": self.id, "time": time.time(), **event}
        self._events.append(Envelope(type="event", body=event))

    def _send_events(self) -> None:
        events, self._events = self._events, []
        for env in events:
            self._send(env)

    def _audit(self, record: dict[str, Any]) -> None:
        log.info("audit", **record)

    def close(self) -> None:
        self.host.close()
        self._send_events()
        self._flush()
        if self.memory is not None:
            self.memory.close()
        self.sock.close()
        self.zctx.term()


def _open_memory(notes: list[tuple[str, dict[str, Any]]]) -> MemoryAPI | None:
    """This cluster's memory (writer endpoint + a WAL reader), if it has a memory writer.

    The writer is started before the workers (it comes first in the tree), so its database exists and is
    migrated by the time a worker starts; no database means no memory child is configured (a fact added to
    ``notes``, which the worker logs after its ready).
    """
    try:
        endpoint, db_path = locations()
    except OpenFangError:
        return None
    if not Path(db_path).exists():
        notes.append(("memory_not_configured", {"db": db_path}))
        return None
    from openfang.memory.api import MemoryAPI

    return MemoryAPI.open(endpoint, db_path)


def main(ctx: ChildContext) -> None:
    """Child entry point."""
    structlog.contextvars.bind_contextvars(role="worker", worker=ctx.id, pid=os.getpid(), cpu=ctx.cpu)
    worker = Worker(ctx)

    def stop(_signum: int, _frame: object) -> None:
        worker.running = False

    signal.signal(signal.SIGTERM, stop)
    try:
        worker.serve()
    finally:
        worker.close()
