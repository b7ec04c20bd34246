"""Agents talking to agents: the ``agent_send``, ``agent_spawn`` and ``agent_list`` tools' work.

Tool calls run on the host's tool threads, but agents live on the loop thread: a tool thread hands the work
to the loop (:class:`LoopHandoff`, which wakes the loop through the job runner's pipe) and waits for the
answer. Messages and spawns made this way are *internal requests*: ordinary ``agent.send`` /
``agent.spawn`` envelopes whose replies go back to the waiting tool instead of the gateway
(:meth:`AgentTraffic.route_replies`).

:class:`AgentTraffic` gets what it needs passed in (the host's agents, read only; a ``submit`` callback;
the security layers; the hand-off): it never reaches into the host.

Security (when the host has it): ``send`` and ``spawn`` permissions and the spawn budget (layer 9, default
deny), the sender's Ed25519 signature on every message, verified before delivery, and refusal of a message
claiming another sender (layer 15), the receiver's request rate and injection check (layers 2-3, via the
normal ``agent.send`` path). In a cluster, a message to an agent on another worker and every child spawn go
through the gateway (``remote_send``): it checks that the sender lives on this worker, routes the message,
and registers the child (durable, its id from the registry).
"""

from __future__ import annotations

import json
import threading
import tomllib
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from openfang.protocol import messages
from openfang.protocol.bodies import Empty
from openfang.protocol.coordination import ScheduleAdd, ScheduleRemove, TopicRef
from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import NotFound, OpenFangError, ProtocolError, Timeout
from openfang.security._errors import Denied
from openfang.security.identity import FROM_KEY, sign_agent_message
from openfang.workers.host.jobs import JobRunner
from openfang.workers.host.record import HostedAgent
from openfang.workers.host.security import HostSecurity

TOOL_WAIT_S = 20.0  # how long a tool thread waits for the loop's answer (a reply or a started agent)
RemoteSend = Callable[[str, Envelope], "Future[Any]"]


class LoopHandoff:
    """Work that tool threads hand to the loop thread, and the loop's side of running it."""

    def __init__(self, runner: JobRunner) -> None:
        self._runner = runner
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()

    def call(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on the loop thread and return its result (raise its error); for tool threads only.

        ``work`` may return a Future (an internal request's reply): then this waits for that too.
        """
        fut: Future[Any] = Future()
        self._calls.append((work, fut))
        self._runner.poke()
        try:
            result = fut.result(TOOL_WAIT_S)
            if isinstance(result, Future):
                result = result.result(TOOL_WAIT_S)
        except FutureTimeout:
            raise Timeout(f"no answer from the agent host within {TOOL_WAIT_S:g}s") from None
        return result

    def later(self, work: Callable[[], Any]) -> None:
        """Run ``work`` on the loop thread at its next step, nobody waiting for it (any thread)."""
        self._calls.append((work, Future()))
        self._runner.poke()

    def run_pending(self) -> None:
        """Run what tool threads handed over (the loop thread, every step)."""
        while self._calls:
            work, fut = self._calls.popleft()
            try:
                fut.set_result(work())
            except BaseException as exc:  # the waiting tool thread gets it (a tool error result)
                fut.set_exception(exc)


class AgentTraffic:
    """The loop side of the agent-to-agent tools of one host."""

    def __init__(
        self,
        worker_id: str,
        *,
        agents: Mapping[str, HostedAgent],
        submit: Callable[[Envelope], None],
        security: HostSecurity | None,
        handoff: LoopHandoff,
    ) -> None:
        self.worker_id = worker_id
        self._agents = agents  # the host's own table: read here, never changed
        self._submit = submit
        self._security = security
        self.handoff = handoff
        self._internal: dict[str, Future[Any]] = {}
        self.spawn_parents: dict[str, str] = {}  # local spawns' request id -> parent (no gateway)
        self.remote_send: RemoteSend | None = None

    def is_internal(self, request_id: str) -> bool:
        """Whether ``request_id`` is a message an agent of this host sent (not a client's)."""
        return request_id in self._internal

    @property
    def pending(self) -> bool:
        return bool(self._internal)

    def route_replies(self, out: list[Envelope]) -> list[Envelope]:
        """Replies to internal requests go to their waiting tool; the rest to the gateway."""
        if not self._internal:
            return out
        keep = []
        for env in out:
            fut = self._internal.pop(env.id, None)
            if fut is None:
                keep.append(env)
            elif env.is_error:
                fut.set_exception(_error(env.body))
            else:
                fut.set_result(dict(env.body))
        return keep

    def _internal_request(self, env: Envelope) -> Future[Any]:
        fut: Future[Any] = Future()
        self._internal[env.id] = fut
        self._submit(env)  # errors come back as replies on this id, routed to the future
        return fut

    # -- the tools' work, on the loop thread -----------------------------------------------------------------

    def _sender_claim_check(self, sender: str, to: str, claimed: Any) -> None:
        """Only the host speaks for an agent: a sender claim written by the guest is refused (and audited
        as impersonation when it names anyone but the agent that actually sent it)."""
        sec = self._security
        who = claimed.get("agent") if isinstance(claimed, Mapping) else None
        if who != sender:
            if sec is not None:
                sec.audit.append("identity.impersonation", agent_id=sender, claimed=str(who)[:128], target=to)
            raise Denied(
                f"agent {sender!r} claims to be {str(who)[:128]!r} (impersonation refused)",
                layer="identity",
                reason="impersonation",
            )
        raise ProtocolError("agent_send: the sender is set by the host, not by the message")

    def send(self, sender: str, args: Mapping[str, Any]) -> Future[Any]:
        """``agent_send {to, message}`` from ``sender``: the reply as ``{from, reply}``."""
        to, message = str(args["to"]), args["message"]
        target = self._agents.get(to)
        remote = self.remote_send
        if target is None and remote is None:
            raise NotFound(f"no agent {to!r} on worker {self.worker_id}")
        if to == sender:
            raise ProtocolError("agent_send: an agent cannot message itself (it would wait on its own reply)")
        claimed = message.get(FROM_KEY) if isinstance(message, Mapping) else None
        if isinstance(message, Mapping):
            message = {k: v for k, v in message.items() if k != FROM_KEY}
        text = message if isinstance(message, str) else json.dumps(message, ensure_ascii=False)
        env = Envelope(type="agent.send", body={"agent_id": to, "text": text, "session": f"agent:{sender}"})
        sec = self._security
        if sec is not None:
            if claimed is not None or sec.guards.get(sender) is None:
                self._sender_claim_check(sender, to, claimed)
            # A remote target's manifest name is not known here: grants match its id (default ids start
            # with the manifest name, so "summarizer-*" still matches "summarizer-2@workers-1").
            sec.check_send(sender, to, target.manifest.name if target is not None else to)
        if target is None:
            assert remote is not None
            fut = remote(sender, env)
        else:
            if sec is not None:
                guard = sec.guards[sender]
                signed = sign_agent_message(env, guard.identity)
                env = sec.verifier.verify(signed, transport_sender=sender).env
            fut = self._internal_request(env)
        out: Future[Any] = Future()

        def done(f: Future[Any]) -> None:
            exc = f.exception()
            if exc is not None:
                out.set_exception(exc)
            else:
                out.set_result({"from": to, "reply": f.result().get("reply")})

        fut.add_done_callback(done)
        return out

    def spawn(self, parent: str, args: Mapping[str, Any]) -> Future[Any]:
        """``agent_spawn {manifest}`` by ``parent``: ``{agent_id, worker}`` of the child."""
        text = str(args["manifest"])
        if "[agent" not in text:
            # A name: the manifest of a running agent of that name on this worker.
            known = next((a for a in self._agents.values() if a.manifest.name == text), None)
            if known is None:
                raise NotFound(f"agent_spawn: no known manifest named {text!r} on worker {self.worker_id}")
            text = known.manifest_text
        if self._security is not None:
            try:
                name = str(tomllib.loads(text).get("agent", {}).get("name", ""))
            except tomllib.TOMLDecodeError as exc:
                raise ProtocolError(f"agent_spawn: manifest is not valid TOML: {exc}") from None
            if self._security.permissions is not None:
                self._security.permissions.check_spawn(parent, name)  # layer 9: before any work
            self._security.check_spawn_budget(parent)
        env = Envelope(type="agent.spawn", body={"manifest": text})
        remote = self.remote_send
        if remote is not None:
            # In a cluster the gateway registers the child (durable, its id from the registry) and places
            # it on this worker, beside its parent.
            fut = remote(parent, env)
        else:
            self.spawn_parents[env.id] = parent
            fut = self._internal_request(env)
        out: Future[Any] = Future()

        def done(f: Future[Any]) -> None:
            exc = f.exception()
            if exc is not None:
                out.set_exception(exc)
            else:
                body = f.result()
                out.set_result(
                    {"agent_id": body.get("agent_id"), "worker": body.get("worker", self.worker_id)}
                )

        fut.add_done_callback(done)
        return out

    def broadcast(self, sender: str, args: Mapping[str, Any]) -> Future[Any]:
        """``agent_broadcast {to | service, message}``: one ``send`` per target, each under the sender's
        ``send`` grant; the results per target, in order, once every target answered or failed."""
        ids, service = args.get("to"), args.get("service")
        if (ids is None) == (service is None):
            raise ProtocolError("agent_broadcast: give exactly one of to (a list of agent ids) or service")
        if service is not None:
            targets = sorted(
                a.agent_id
                for a in self._agents.values()
                if a.manifest.service == service and a.agent_id != sender
            )
            if not targets:
                raise NotFound(f"agent_broadcast: no agent of service {service!r} on worker {self.worker_id}")
        else:
            targets = list(dict.fromkeys(str(t) for t in ids or []))  # each target once, in order
        results: list[dict[str, Any] | None] = [None] * len(targets)
        out: Future[Any] = Future()
        if not targets:
            out.set_result({"results": [], "sent": 0, "failed": 0})
            return out
        left = [len(targets)]
        lock = threading.Lock()  # replies from the gateway and local replies may settle from two threads

        def settle(i: int, result: dict[str, Any]) -> None:
            with lock:
                results[i] = result
                left[0] -= 1
                last = left[0] == 0
            if last:
                failed = sum(1 for r in results if r is not None and not r["ok"])
                out.set_result({"results": results, "sent": len(targets) - failed, "failed": failed})

        for i, to in enumerate(targets):
            try:
                fut = self.send(sender, {"to": to, "message": args["message"]})
            except OpenFangError as exc:  # denied, not found, bad sender claim: this target only
                settle(i, {"to": to, "ok": False, "code": exc.code, "error": exc.message})
                continue

            def done(f: Future[Any], i: int = i, to: str = to) -> None:
                exc = f.exception()
                if exc is None:
                    settle(i, {"to": to, "ok": True, "reply": f.result().get("reply")})
                else:
                    code = exc.code if isinstance(exc, OpenFangError) else "internal"
                    settle(i, {"to": to, "ok": False, "code": code, "error": str(exc)})

            fut.add_done_callback(done)
        return out

    def topic(self, sender: str, op: str, args: Mapping[str, Any]) -> Future[Any]:
        """``topic_subscribe`` / ``topic_unsubscribe`` (the gateway keeps the subscriptions, by agent id) and
        ``topic_publish``: the gateway names the live subscribers, then the message goes to each through
        :meth:`broadcast` (the normal ``agent.send`` path, under the publisher's ``send`` grant)."""
        remote = self.remote_send
        if remote is None:
            raise OpenFangError(
                "topics need the control gateway (this host runs without one)", code="unavailable"
            )
        ref = TopicRef(topic=str(args["topic"]))  # typed by protocol.coordination; the gateway checks it
        topic = ref.topic
        if op == "subscribe":
            return remote(sender, messages.request(ref, type="topic.subscribe"))
        if op == "unsubscribe":
            return remote(sender, messages.request(ref, type="topic.unsubscribe"))
        out: Future[Any] = Future()
        message = args["message"]

        def deliver(subscribers: list[str]) -> None:
            try:
                fanned = self.broadcast(sender, {"to": subscribers, "message": message})
            except OpenFangError as exc:
                out.set_exception(exc)
                return

            def done(f: Future[Any]) -> None:
                exc = f.exception()
                if exc is not None:
                    out.set_exception(exc)
                else:
                    out.set_result({"topic": topic, **f.result()})

            fanned.add_done_callback(done)

        def looked_up(f: Future[Any]) -> None:
            exc = f.exception()
            if exc is not None:
                out.set_exception(exc)
                return
            subscribers = [str(a) for a in f.result().get("subscribers") or []]
            self.handoff.later(lambda: deliver(subscribers))  # sends happen on the loop thread

        remote(sender, messages.request(ref, type="topic.subscribers")).add_done_callback(looked_up)
        return out

    def schedule(self, sender: str, op: str, args: Mapping[str, Any]) -> Future[Any]:
        """``schedule_add`` / ``schedule_list`` / ``schedule_remove`` by ``sender``: the gateway keeps the
        schedules (``control.schedules``); a schedule to another agent needs the same ``send`` grant as a
        message to it, checked here before anything leaves the worker."""
        remote = self.remote_send
        if remote is None:
            raise OpenFangError(
                "schedules need the control gateway (this host runs without one)", code="unavailable"
            )
        if op == "add":
            to = str(args.get("to") or sender)
            if to != sender and self._security is not None:
                target = self._agents.get(to)
                self._security.check_send(sender, to, target.manifest.name if target is not None else to)
            when = [k for k in ("at", "in", "cron") if args.get(k)]
            if len(when) != 1:
                raise ProtocolError("schedule_add: give exactly one of at (a time), in (a delay) or cron")
            add = ScheduleAdd(
                target=to,
                text=str(args["text"]),
                tz=str(args.get("tz") or "UTC"),
                misfire=args.get("misfire") or "once",
                cron=str(args["cron"]) if when[0] == "cron" else None,
                # the gateway reads an ISO time or a delay like 10m
                at=str(args[when[0]]) if when[0] != "cron" else None,
            )
            return remote(sender, messages.request(add))
        if op == "remove":
            return remote(sender, messages.request(ScheduleRemove(schedule_id=str(args["id"]))))
        return remote(sender, messages.request(Empty(), type="schedule.list"))

    def listing(self, caller: str) -> list[dict[str, Any]]:
        """The agents ``caller`` may message (all of them on this worker without the security layers)."""
        out = []
        perms = None
        if self._security is not None and self._security.permissions is not None:
            perms = self._security.permissions.get(caller)
        for a in self._agents.values():
            if a.agent_id == caller:
                continue
            if perms is None or perms.allows("send", a.agent_id) or perms.allows("send", a.manifest.name):
                out.append({"agent_id": a.agent_id, "name": a.manifest.name, "service": a.manifest.service})
        return out


def _error(body: Mapping[str, Any]) -> OpenFangError:
    return OpenFangError(str(body.get("message", "request failed")), code=str(body.get("code", "internal")))
