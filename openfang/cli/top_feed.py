"""The daemon side of ``openfang top``: sampling, agent actions and the event tail, off the UI thread.

- :class:`Feed` asks the daemon (``status``, ``tree``, ``agent.list``) and turns the answers into a
  :class:`~openfang.cli.top_data.Snapshot`; it also sends the agent actions. A daemon that is not there
  raises :class:`NoDaemon` ("no daemon at <endpoint>"); the next call tries again with a fresh connection.
- :class:`Monitor` runs a Feed on its own thread: a sample about every ``interval`` seconds, actions as soon
  as they are asked for (each followed by a fresh sample, so the screen shows the result at once).
- :class:`EventTail` follows the PUB stream on its own thread.

Both threads report through callbacks, which must be thread-safe (the view posts messages to its app).
Each thread owns its ZeroMQ context and sockets; nothing is shared between threads.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import zmq

from openfang.cli.top_data import (
    CpuMeter,
    RateMeter,
    Snapshot,
    agent_rows,
    flatten_tree,
    is_local,
    worker_rows,
)
from openfang.protocol import messages
from openfang.protocol.client import Client
from openfang.protocol.curve import CurveClient
from openfang.protocol.envelope import Envelope, decode
from openfang.protocol.errors import OpenFangError, ProtocolError, Timeout
from openfang.protocol.sockets import connect_sub

# What the keys ask for: op -> (request type, what the status line says when it worked).
ACTIONS: dict[str, tuple[str, str]] = {
    "suspend": ("agent.suspend", "suspended"),
    "resume": ("agent.resume", "resumed"),
    "kill": ("agent.kill", "killed"),
    "hibernate": ("agent.hibernate", "hibernated"),
    "wake": ("agent.wake", "woken"),
}


class NoDaemon(OpenFangError):
    """Nothing answers at the control endpoint (no socket file, or no reply in time)."""

    code = "unreachable"


AGENTS_PAGE = 5_000  # agents per agent.list request
AGENTS_MAX = 10_000  # agents one sample fetches (the first by id); each sample is ~0.5 s at this size


class Feed:
    """One connection's worth of asking: samples and actions (not thread-safe: one thread uses it)."""

    def __init__(
        self,
        endpoint: str,
        *,
        curve: CurveClient | None = None,
        timeout: float = 5.0,
        events: str | None = None,
        signer: Callable[[Envelope], Envelope] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.endpoint = endpoint
        self.curve = curve
        self.signer = signer  # signs each request when the cluster requires signatures (PROTOCOL.md 1.5)
        self.timeout = timeout
        self.events_endpoint = events  # learned from status when not given
        self.clock = clock
        self.rates = RateMeter()
        self.cpu = CpuMeter() if is_local(endpoint) else None
        self._client: Client | None = None

    def sample(self) -> Snapshot:
        """Ask the daemon for everything the view shows (raises NoDaemon, or a RemoteError of ``tree``)."""
        status = self._ask("status")
        if not self.events_endpoint and isinstance(status.get("events"), str):
            self.events_endpoint = reachable_events(str(status["events"]), self.endpoint)
        nodes = flatten_tree(self._ask("tree"))
        problems: list[str] = []
        try:
            listed = self._list_agents(problems)
        except NoDaemon:
            raise
        except OpenFangError as exc:
            listed = {"agents": []}
            problems.append(f"agent.list: {exc.code}: {exc.message}")
        problems.extend(f"a worker did not answer agent.list: {e}" for e in listed.get("errors") or [])
        now = self.clock()
        counts = {str(a.get("agent_id")): a.get("messages") for a in listed.get("agents") or []}
        agents = agent_rows(listed, self.rates.update(now, counts))
        cpu = self.cpu.measure(nodes, now) if self.cpu is not None else None
        return Snapshot(
            taken_at=now,
            name=str(status.get("name") or ""),
            state=str(status.get("state") or ""),
            version=str(status.get("version") or ""),
            uptime_s=status.get("uptime_s"),
            workers_connected=status.get("workers") if isinstance(status.get("workers"), int) else None,
            nodes=tuple(nodes),
            workers=tuple(worker_rows(nodes, agents, cpu)),
            agents=tuple(agents),
            problems=tuple(problems),
        )

    def _list_agents(self, problems: list[str]) -> dict[str, Any]:
        """The first ``AGENTS_MAX`` agents by id, in pages of ``AGENTS_PAGE`` (agent.list is paged: issue 9);
        the problems line says when more agents exist than were fetched."""
        listed: dict[str, Any] = {"agents": [], "errors": []}
        body: dict[str, Any] = {"limit": AGENTS_PAGE}
        while True:
            page = self._ask("agent.list", body)
            listed["agents"].extend(page.get("agents") or [])
            listed["errors"].extend(e for e in page.get("errors") or [] if e not in listed["errors"])
            cursor = page.get("next")
            if not cursor:
                return listed
            if len(listed["agents"]) >= AGENTS_MAX:
                problems.append(f"showing the first {len(listed['agents'])} of {page.get('total')} agents")
                return listed
            body = {**body, "after": cursor}

    def act(self, op: str, agent_id: str) -> str:
        """Send one agent action; the line for the status bar, saying what happened or what the error was."""
        msg_type, done = ACTIONS[op]
        try:
            reply = self._ask(msg_type, {"agent_id": agent_id})
        except NoDaemon as exc:
            return f"{msg_type} {agent_id}: {exc.message}"
        except OpenFangError as exc:
            return f"{msg_type} {agent_id}: error {exc.code}: {exc.message}"
        return f"{done} {agent_id} (state: {reply.get('state', '?')})"

    def _ask(self, msg_type: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.endpoint.startswith("ipc://") and not Path(self.endpoint[len("ipc://") :]).exists():
            self.close()
            raise NoDaemon(f"no daemon at {self.endpoint}")
        if self._client is None:
            self._client = Client(self.endpoint, curve=self.curve, timeout=self.timeout, signer=self.signer)
        try:
            return self._client.request(msg_type, body or {})
        except Timeout:
            # A fresh connection next time: a daemon that comes back (or a restarted one) is found again.
            self.close()
            raise NoDaemon(
                f"no daemon at {self.endpoint} (no answer to {msg_type!r} within {self.timeout:g}s)"
            ) from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def reachable_events(events: str, control: str) -> str:
    """The events endpoint as a client reaches it: a tcp wildcard host becomes the control endpoint's host."""
    if events.startswith("tcp://") and control.startswith("tcp://"):
        host = urlsplit(events.replace("tcp://*:", "tcp://0.0.0.0:")).hostname
        if host in ("0.0.0.0", "::"):
            port = events.rsplit(":", 1)[-1]
            control_host = urlsplit(control).hostname or "127.0.0.1"
            control_host = f"[{control_host}]" if ":" in control_host else control_host
            return f"tcp://{control_host}:{port}"
    return events


class Monitor:
    """Runs a :class:`Feed` on one thread until :meth:`stop`.

    ``on_snapshot(snapshot)`` gets every sample; ``on_status(text)`` gets the results of actions and the
    connection's changes ("no daemon at ...", "connected to ..."), each once, not every second;
    ``on_down(text)`` is told when the daemon stops answering (its "no daemon at" text) and comes back (None);
    ``on_events_endpoint(endpoint)`` once, when the events endpoint is known.
    """

    def __init__(
        self,
        feed: Feed,
        *,
        on_snapshot: Callable[[Snapshot], object],
        on_status: Callable[[str], object],
        on_down: Callable[[str | None], object] | None = None,
        on_events_endpoint: Callable[[str], object] | None = None,
        interval: float = 1.0,
    ) -> None:
        self.feed = feed
        self.on_snapshot = on_snapshot
        self.on_status = on_status
        self.on_down = on_down
        self.on_events_endpoint = on_events_endpoint
        self.interval = interval
        self._actions: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="openfang-top-feed", daemon=True)
        self._down: str | None = None  # the last "no daemon" text, so it is reported once per outage
        self._told_events = False

    def start(self) -> None:
        self._thread.start()

    def request(self, op: str, agent_id: str) -> None:
        """Queue an agent action (thread-safe); its result arrives through ``on_status``."""
        if op not in ACTIONS:
            raise ValueError(f"unknown action {op!r}")
        self._actions.put((op, agent_id))

    def stop(self, wait: float = 2.0) -> None:
        self._stopping.set()
        self._actions.put(None)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(wait)

    def _run(self) -> None:
        try:
            next_sample = 0.0
            while not self._stopping.is_set():
                left = next_sample - time.monotonic()
                if left <= 0:
                    self._sample()
                    next_sample = time.monotonic() + self.interval
                    continue
                try:
                    item = self._actions.get(timeout=left)
                except queue.Empty:
                    continue
                if item is None:
                    break
                self.on_status(self.feed.act(*item))
                next_sample = 0.0  # show the action's effect now
        finally:
            self.feed.close()

    def _sample(self) -> None:
        try:
            snapshot = self.feed.sample()
        except NoDaemon as exc:
            if exc.message != self._down:
                self._down = exc.message
                self.on_status(f"{exc.message}; retrying every {self.interval:g}s")
                if self.on_down is not None:
                    self.on_down(exc.message)
            return
        except OpenFangError as exc:
            self.on_status(f"error {exc.code}: {exc.message}")
            return
        if self._down is not None:
            self._down = None
            self.on_status(f"connected to {self.feed.endpoint}")
            if self.on_down is not None:
                self.on_down(None)
        if self.feed.events_endpoint and not self._told_events and self.on_events_endpoint is not None:
            self._told_events = True
            self.on_events_endpoint(self.feed.events_endpoint)
        self.on_snapshot(snapshot)


class EventTail:
    """Follows the event stream on its own thread, passing each event body to ``on_event``.

    ZeroMQ reconnects the SUB socket by itself when the daemon goes and comes back; events published while
    nobody was connected are not seen (PUB/SUB keeps no history).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        curve: CurveClient | None = None,
        on_event: Callable[[dict[str, Any]], object],
        poll_ms: int = 200,
    ) -> None:
        self.endpoint = endpoint
        self.curve = curve
        self.on_event = on_event
        self.poll_ms = poll_ms
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="openfang-top-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait: float = 2.0) -> None:
        self._stopping.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(wait)

    def _run(self) -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        try:
            sub = connect_sub(ctx, self.endpoint, curve=self.curve)
        except OpenFangError as exc:
            self.on_event({"kind": "top.error", "time": time.time(), "reason": exc.message})
            ctx.term()
            return
        try:
            while not self._stopping.is_set():
                if not sub.poll(self.poll_ms):
                    continue
                frames = sub.recv_multipart()
                if len(frames) != 2:
                    continue
                try:
                    env = decode(frames[1])
                except ProtocolError:
                    continue  # one bad event must not end the tail
                if env.type == messages.EVENT_TYPE:
                    self.on_event(dict(env.body))
        finally:
            sub.close()
            ctx.term()
