"""The message catalogue: every request type, its ``<type>.ok`` reply, events, errors, and the internal
messages (:data:`INTERNAL`): between the gateway and its workers (``worker.*``, and the ``schedule.*`` and
``topic.*`` requests an agent's worker forwards inside ``worker.forward``), and to the memory writer
(``memory.episode``, ``memory.store``, ...).

The body classes live in :mod:`openfang.protocol.bodies` (client requests, worker messages),
:mod:`openfang.protocol.coordination` (schedules and topics) and :mod:`openfang.protocol.memory_writes`
(the memory writer's socket).

Importing this module (``import openfang.protocol`` does) registers a body validator per type with
:func:`openfang.protocol.envelope.register_body_validator`, so :func:`~openfang.protocol.envelope.decode`
reports every problem of a body at once: missing, wrong type, unknown field, too long, out of range. Each
type's schema is compiled on the first message of that type (then kept), not at import.

Request bodies are closed (an unknown field is an error); reply, event and error bodies are open (a newer
peer may add fields). Use :func:`parse` to get a typed body, :func:`to_body` to put one on the wire, and
:func:`check_request` at a server's door to refuse types outside the catalogue with ``unknown_type``.
PROTOCOL.md is generated from this catalogue (``python -m openfang.protocol._docgen``).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from openfang.protocol import _schema
from openfang.protocol import coordination as _coord
from openfang.protocol import memory_writes as _mem
from openfang.protocol.bodies import (
    AgentList,
    AgentListOk,
    AgentMove,
    AgentMoveOk,
    AgentRecord,
    AgentRef,
    AgentSend,
    AgentSendChunk,
    AgentSendOk,
    AgentSpawn,
    AgentSpawnOk,
    AgentStateOk,
    AuditVerifyOk,
    ChildCounts,
    ChildRef,
    ChildRestartOk,
    ChildStart,
    ChildStartOk,
    ChildWhichOk,
    Empty,
    ErrorBody,
    Event,
    MemoryHistory,
    MemoryHistoryOk,
    MemorySearch,
    MemorySearchOk,
    MemoryStats,
    MemoryStatsOk,
    PingOk,
    ReloadOk,
    SecurityReportOk,
    StatusOk,
    SupervisorRef,
    TreeOk,
    WorkerForward,
    WorkerHello,
    WorkerPing,
    WorkerPingOk,
)
from openfang.protocol.envelope import ERROR_TYPE, Envelope, register_body_validator
from openfang.protocol.errors import Problem, ProtocolError, RemoteError, UnknownType

EVENT_TYPE = "event"
# Sent before the reply of an agent.send with stream = true, with the request's id (see PROTOCOL.md).
CHUNK_TYPE = "agent.send.chunk"

EVENT_KINDS: dict[str, str] = {
    "child.started": "a child is up (after its ready); fields: path, id, pid",
    "child.exited": "a child exited; fields: path, id, pid, reason (normal | shutdown | abnormal), status",
    "child.restarted": "a child was restarted by its supervisor's strategy; fields: path, id, pid",
    "child.hung": "a child missed its heartbeat and was killed; fields: path, id, pid",
    "child.start_failed": "a child could not start; fields: path, id, reason",
    "supervisor.escalated": "restart intensity exceeded: the supervisor gave up; fields: path, reason",
    "config.reloaded": "a reload was applied; fields: started, stopped, replaced, unchanged",
    "config.rejected": "a reload was refused, nothing changed; fields: reason, problems",
    "tree.stopping": "the daemon is stopping the whole tree (agents stay registered for the next start)",
    "agent.state": "an agent changed state inside its worker; fields: agent_id, worker, state, reason",
    "agent.restarting": "a registered agent is being restarted (its worker died, or it crashed); fields: "
    "agent_id, worker (the one it was on), reason",
    "agent.restarted": "a restarted agent answers again, with the same id; fields: agent_id, worker, "
    "restarts",
    "agent.hibernated": "an agent was hibernated (by hand, after idle_hibernate_s, past max_resident, or "
    "re-spawned asleep); fields: agent_id, worker, why (request | idle | cap | restore), memory_bytes, "
    "stored_bytes (non-zero 4 KiB chunks kept)",
    "agent.woken": "a hibernated agent is back in a sandbox, its guest state restored; fields: agent_id, "
    "worker, why (request | message), wake_ms",
    "agent.moved": "an agent was moved to another worker (agent.move, or a reload removing its worker); "
    "fields: agent_id, from, to (the worker it runs on now), path (snapshot: its guest state came along | "
    "fresh: a new instance), move_ms",
    "agent.lost": "a registered agent is dead and will not come back; fields: agent_id, worker, reason "
    "(worker_crashed | worker_stopped for temporary agents, restart_intensity, restart_failed, crashed)",
}

ERROR_CODES: dict[str, str] = {
    "bad_request": "not a valid envelope, or the body breaks its schema (the message names each field)",
    "unsupported_version": "the envelope's v is not a protocol version this server speaks",
    "too_large": "the frame is over the server's size limit",
    "busy": "a bounded queue is full; nothing was done, retry later",
    "timeout": "the component that should answer did not answer in time",
    "not_found": "no such child, agent, worker or service",
    "already_exists": "the id is already present or started",
    "running": "child.restart or child.delete of a child that is running; child.terminate it first",
    "restarting": "the agent is registered and being restarted (or, for agent.spawn, a restarted gateway is "
    "relearning its workers); nothing was done; body.retry_after_ms says "
    "when to retry (the gateway queues messages for a restarting agent first and answers this on overflow "
    "or after its queue deadline). For child.restart and child.delete: the supervisor is restarting that "
    "child right now (no retry_after_ms)",
    "gone": "the agent was registered but is dead (lost with its worker, or given up); agent.list shows why",
    "supervisor_error": "the supervisor could not do it (start failed, child running, ...)",
    "sandbox_error": "the agent's sandbox failed (wasm trap, fuel, memory limit, host call)",
    "memory_error": "the memory store failed",
    "denied": "a security layer refused the request",
    "bad_config": "a config or manifest is invalid; body.problems lists every problem with its place",
    "rate_limited": "a rate limit was hit; retry later",
    "llm_error": "the agent's model call failed; body.llm names the provider, model, HTTP status or cause, "
    "and whether a fallback was tried",
    "limit_exceeded": "a per-agent limit was reached (topic subscriptions); nothing was done",
    "unavailable": "the request needs a component this process runs without (schedules or topics in an "
    "agent host with no control gateway; audit.verify in a daemon started without a data dir)",
    "unknown_type": "the request type is not in the catalogue",
    "internal": "an unexpected failure inside the server",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageSpec:
    """One request type: its body, its reply body, a one-line summary and the error codes it may return."""

    type: str
    group: str
    request: builtins.type[Any]
    reply: builtins.type[Any]
    summary: str
    errors: tuple[str, ...] = ()


_COMMON_ERRORS = ("bad_request", "too_large", "busy", "timeout")
_TREE_ERRORS = (*_COMMON_ERRORS, "not_found", "supervisor_error")
_CHILD_STATE_ERRORS = ("running", "restarting")  # the child is up, or being restarted: nothing was done
_AGENT_ERRORS = (
    *_COMMON_ERRORS,
    "not_found",
    "restarting",
    "gone",
    "sandbox_error",
    "denied",
    "rate_limited",
)
_MEMORY_ERRORS = (*_COMMON_ERRORS, "not_found", "memory_error")


def _spec(
    type_: str, group: str, request: type[Any], reply: type[Any], summary: str, *errors: str
) -> MessageSpec:
    return MessageSpec(type=type_, group=group, request=request, reply=reply, summary=summary, errors=errors)


CATALOGUE: dict[str, MessageSpec] = {
    s.type: s
    for s in [
        _spec("ping", "control", Empty, PingOk, "liveness of the gateway itself", *_COMMON_ERRORS),
        _spec(
            "status", "control", Empty, StatusOk, "the daemon: version, uptime, config, counts", *_TREE_ERRORS
        ),
        _spec("tree", "control", Empty, TreeOk, "the whole supervision tree, nested", *_TREE_ERRORS),
        _spec(
            "stop",
            "control",
            Empty,
            Empty,
            "stop the whole tree in order; the reply comes first",
            *_COMMON_ERRORS,
        ),
        _spec(
            "reload",
            "control",
            Empty,
            ReloadOk,
            "re-read the config and apply the difference",
            *_TREE_ERRORS,
            "bad_config",
        ),
        _spec(
            "child.start",
            "control",
            ChildStart,
            ChildStartOk,
            "start a new child under a supervisor",
            *_TREE_ERRORS,
            "already_exists",
            "bad_config",
        ),
        _spec("child.terminate", "control", ChildRef, Empty, "stop a child, keep its spec", *_TREE_ERRORS),
        _spec(
            "child.restart",
            "control",
            ChildRef,
            ChildRestartOk,
            "start a terminated child again",
            *_TREE_ERRORS,
            *_CHILD_STATE_ERRORS,
        ),
        _spec(
            "child.delete",
            "control",
            ChildRef,
            Empty,
            "forget a terminated child's spec",
            *_TREE_ERRORS,
            *_CHILD_STATE_ERRORS,
        ),
        _spec(
            "child.which", "control", SupervisorRef, ChildWhichOk, "a supervisor's children", *_TREE_ERRORS
        ),
        _spec(
            "child.count",
            "control",
            SupervisorRef,
            ChildCounts,
            "count a supervisor's children",
            *_TREE_ERRORS,
        ),
        _spec(
            "worker.ping",
            "workers",
            WorkerPing,
            WorkerPingOk,
            "round trip through one worker process",
            *_COMMON_ERRORS,
            "not_found",
        ),
        _spec(
            "agent.spawn",
            "agents",
            AgentSpawn,
            AgentSpawnOk,
            "start an agent from its manifest",
            *_AGENT_ERRORS,
            "bad_config",
        ),
        _spec(
            "agent.send",
            "agents",
            AgentSend,
            AgentSendOk,
            "send a message to an agent, get its reply",
            *_AGENT_ERRORS,
            "llm_error",
        ),
        _spec(
            "agent.list",
            "agents",
            AgentList,
            AgentListOk,
            "one page of registered agents in id order, with their state (live figures from the worker "
            "hosting each); walk pages with ``after`` = the previous reply's ``next``",
            *_COMMON_ERRORS,
        ),
        _spec("agent.info", "agents", AgentRef, AgentRecord, "one agent", *_AGENT_ERRORS),
        _spec(
            "agent.suspend",
            "agents",
            AgentRef,
            AgentStateOk,
            "pause an agent (keeps its state)",
            *_AGENT_ERRORS,
        ),
        _spec("agent.resume", "agents", AgentRef, AgentStateOk, "resume a suspended agent", *_AGENT_ERRORS),
        _spec(
            "agent.hibernate",
            "agents",
            AgentRef,
            AgentStateOk,
            "write an idle agent's guest state to disk and free its sandbox (sandbox_error when it is busy, "
            "suspended or its module keeps state a snapshot cannot read; the next agent.send wakes it)",
            *_AGENT_ERRORS,
        ),
        _spec(
            "agent.wake",
            "agents",
            AgentRef,
            AgentStateOk,
            "bring a hibernated agent back from its snapshot now (a running agent: answered as is)",
            *_AGENT_ERRORS,
        ),
        _spec(
            "agent.move",
            "agents",
            AgentMove,
            AgentMoveOk,
            "move an agent to another worker (to: a worker id; default the least loaded other one), same id: "
            "its guest state goes by snapshot (path snapshot), or, for a module a snapshot cannot hold, it "
            "starts fresh there (path fresh); messages meanwhile wait for it",
            *_AGENT_ERRORS,
        ),
        _spec(
            "agent.kill",
            "agents",
            AgentRef,
            AgentStateOk,
            "stop an agent and free its sandbox",
            *_AGENT_ERRORS,
        ),
        _spec(
            "memory.search",
            "memory",
            MemorySearch,
            MemorySearchOk,
            "keyword / vector / hybrid search",
            *_MEMORY_ERRORS,
        ),
        _spec(
            "memory.history",
            "memory",
            MemoryHistory,
            MemoryHistoryOk,
            "an agent's conversation, newest first",
            *_MEMORY_ERRORS,
        ),
        _spec(
            "memory.stats", "memory", MemoryStats, MemoryStatsOk, "sizes of the memory store", *_MEMORY_ERRORS
        ),
        _spec(
            "security.report",
            "control",
            Empty,
            SecurityReportOk,
            "the state of every security layer of the running system",
            *_COMMON_ERRORS,
        ),
        _spec(
            "audit.verify",
            "control",
            Empty,
            AuditVerifyOk,
            "check the hash chain of the daemon's audit log now (off the gateway's loop; concurrent "
            "requests share one check)",
            *_COMMON_ERRORS,
            "unavailable",
        ),
    ]
}

REQUEST_TYPES = frozenset(CATALOGUE)


@dataclass(frozen=True, slots=True, kw_only=True)
class InternalSpec:
    """One internal message: who sends it to whom, its body, its reply, and what it is for.

    Internal types travel inside the cluster only; they are not in :data:`REQUEST_TYPES`, so the client door
    refuses them (``unknown_type``). Their bodies are closed and checked where they are handled
    (:func:`parse` in the gateway's, the worker's and the memory writer's dispatch tables), not by
    :func:`decode`: a refused ``worker.forward`` is then answered with the problem instead of being dropped
    unread. Replies (``<type>.ok``) are open, like every reply, and relayed as maps.
    """

    type: str
    sender: str  # gateway | worker | agent, inside worker.forward | memory client
    body: builtins.type[Any]
    summary: str
    reply: builtins.type[Any] | None = None  # the <type>.ok body; None: no reply, or another type's reply
    endpoint: str = "workers"  # workers: the gateway's worker endpoint | memory: the memory writer's


def _forwarded(type_: str, body: type[Any], reply: type[Any], summary: str) -> InternalSpec:
    return InternalSpec(
        type=type_, sender="agent, inside worker.forward", body=body, reply=reply, summary=summary
    )


def _memory(type_: str, body: type[Any], reply: type[Any], summary: str) -> InternalSpec:
    return InternalSpec(
        type=type_, sender="memory client", body=body, reply=reply, summary=summary, endpoint="memory"
    )


INTERNAL: dict[str, InternalSpec] = {
    s.type: s
    for s in [
        InternalSpec(
            type="worker.hello",
            sender="worker",
            body=WorkerHello,
            summary="a worker announces itself on connect and every second; no reply",
        ),
        InternalSpec(
            type="worker.resync",
            sender="gateway",
            body=Empty,
            summary="a (restarted) gateway asks a worker to list every agent in its next worker.hello",
        ),
        InternalSpec(
            type="worker.forward",
            sender="worker",
            body=WorkerForward,
            summary="an agent's agent.send, agent.spawn, schedule.* or topic.* request, routed by the "
            "gateway like a client's request; the reply (that request's .ok, or error) comes back with the "
            "forward's id",
        ),
        _forwarded(
            "schedule.add",
            _coord.ScheduleAdd,
            _coord.ScheduleRecord,
            "schedule a message from the sender to itself or an agent it may message (the worker checked "
            "the send grant); the gateway resolves the target and keeps it in its schedule store",
        ),
        _forwarded(
            "schedule.list", Empty, _coord.ScheduleListOk, "the schedules the sender created, with their runs"
        ),
        _forwarded(
            "schedule.remove",
            _coord.ScheduleRemove,
            _coord.ScheduleRemoveOk,
            "remove a schedule the sender created (not_found for anyone else's)",
        ),
        _forwarded(
            "topic.subscribe",
            _coord.TopicRef,
            _coord.TopicSubscribeOk,
            "subscribe the sender to a topic (durable, by agent id; limit_exceeded past 64 per agent)",
        ),
        _forwarded(
            "topic.unsubscribe",
            _coord.TopicRef,
            _coord.TopicUnsubscribeOk,
            "unsubscribe the sender from a topic",
        ),
        _forwarded(
            "topic.subscribers",
            _coord.TopicRef,
            _coord.TopicSubscribersOk,
            "the live subscribers of a topic other than the sender (topic_publish then sends to each "
            "through agent.send); subscribers found dead are dropped",
        ),
        _memory("memory.episode", _mem.MemoryEpisode, _mem.WriteAck, "record one message of a conversation"),
        _memory("memory.store", _mem.MemoryStore, _mem.WriteAck, "store one memory, with its vector"),
        _memory("memory.tool_call", _mem.MemoryToolCall, _mem.WriteAck, "record one tool call"),
        _memory(
            "memory.write",
            _mem.MemoryWrite,
            _mem.MemoryWriteOk,
            "apply a batch of episode, store, tool_call and forget ops all-or-nothing",
        ),
        _memory("memory.forget", _mem.MemoryForget, _mem.MemoryForgetOk, "delete one memory of an agent"),
        _memory(
            "memory.reclaim",
            _mem.MemoryReclaim,
            _mem.MemoryReclaimOk,
            "apply a retention policy (keep, archive, purge) to an agent's memory",
        ),
        _memory("memory.compact", _mem.MemoryCompact, _mem.MemoryCompactOk, "TTL compaction now"),
        _memory(
            "memory.ping",
            Empty,
            _mem.MemoryPingOk,
            "the writer's commit sequence number and queue length, answered without a commit",
        ),
    ]
}
INTERNAL_TYPES = frozenset(INTERNAL)
# Types decode() does not check: internal messages and their replies (see InternalSpec).
_UNCHECKED = INTERNAL_TYPES | {f"{t}.ok" for t, s in INTERNAL.items() if s.reply is not None}

# body class -> wire type; replies by their "<type>.ok" name. Classes shared by several types map to none.
_TYPE_OF: dict[type, str] = {}
# wire type -> (body class, open); its schema is compiled on the first message of that type (_schema_of).
_class_of: dict[str, tuple[type, bool]] = {}
_compiled: dict[str, _schema.Compiled] = {}
_validators: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {}  # body_validator of each compiled type


def _register() -> None:
    """Register every catalogued type's validator with the envelope codec, compiled lazily: a process
    pays only for the types it really decodes (the root supervisor decodes none)."""
    uses: dict[type, list[str]] = {}
    entries = [(s.request, s.type, False) for s in CATALOGUE.values()]
    entries += [(s.reply, f"{s.type}.ok", True) for s in CATALOGUE.values()]
    entries += [(Event, EVENT_TYPE, True), (ErrorBody, ERROR_TYPE, True), (AgentSendChunk, CHUNK_TYPE, True)]
    for cls, type_, is_open in entries:
        _class_of[type_] = (cls, is_open)
        register_body_validator(type_, _first_validation(type_))
        uses.setdefault(cls, []).append(type_)
    for internal in INTERNAL.values():  # for parse() only; decode() leaves them to their handler
        _class_of[internal.type] = (internal.body, False)
        uses.setdefault(internal.body, []).append(internal.type)
        if internal.reply is not None:
            _class_of[f"{internal.type}.ok"] = (internal.reply, True)
            uses.setdefault(internal.reply, []).append(f"{internal.type}.ok")
    _TYPE_OF.update({cls: types[0] for cls, types in uses.items() if len(types) == 1})


def _schema_of(message_type: str) -> _schema.Compiled | None:
    """The compiled schema of a catalogued type, compiled (and its validator registered) on first use."""
    compiled = _compiled.get(message_type)
    if compiled is None and message_type in _class_of:
        cls, is_open = _class_of[message_type]
        compiled = _schema.compile_dataclass(cls, open_fields=is_open)
        checked = message_type not in _UNCHECKED  # internal bodies: checked by their handlers (InternalSpec)

        def generated(fast: Callable[[Mapping[str, Any]], list[str]]) -> None:
            if checked:  # a hot type's generated validator, in its place for decode (no wrapper call)
                register_body_validator(message_type, fast)

        validator = _schema.body_validator(compiled, on_generated=generated)
        _validators[message_type] = validator
        _compiled[message_type] = compiled  # two threads may both compile: the same result, either wins
        if checked:
            register_body_validator(message_type, validator)
    return compiled


def _first_validation(message_type: str) -> Callable[[Mapping[str, Any]], list[str]]:
    """The validator registered before the first message of ``message_type``: it compiles the schema,
    which replaces it with the compiled validator, and validates this first body with that."""

    def validate(body: Mapping[str, Any]) -> list[str]:
        _schema_of(message_type)  # registered only for catalogued types: compiles it
        return _validators[message_type](body)

    return validate


_register()


def body_schema(message_type: str) -> _schema.Compiled | None:
    """The compiled schema of ``message_type``'s body (a request, ``<type>.ok``, ``event``, ``error``, or an
    internal message and its ``<type>.ok``)."""
    return _schema_of(message_type)


def check_body(message_type: str, body: Mapping[str, Any]) -> list[str]:
    """Every problem of ``body`` as the body of ``message_type`` (``"body.text: ..."``); [] when it is valid.

    For a sender that checks before it sends (the memory client): the same schema the receiver's
    :func:`parse` applies. A type outside the catalogue is one problem naming it.
    """
    if _schema_of(message_type) is None:
        return [f"type: {message_type!r} is in no catalogue"]
    return _validators[message_type](body)


def check_request(env: Envelope) -> MessageSpec:
    """The catalogue entry of a request; raises :class:`UnknownType` for a type not in the catalogue."""
    spec = CATALOGUE.get(env.type)
    if spec is None:
        raise UnknownType(f"type: {env.type!r} is not a request type of protocol v1")
    return spec


def parse(env: Envelope, body_class: type[Any], *, decoded: bool = False) -> Any:
    """``env.body`` as an instance of ``body_class``, validated; raises ProtocolError naming every problem.

    ``body_class`` must be the body of ``env.type`` (``parse(env, AgentSend)`` for an ``agent.send``).
    Fields an open body (reply, event, error) carries beyond its class are not kept: read ``env.body``.
    ``decoded``: ``env`` is what :func:`~openfang.protocol.envelope.decode` returned, unchanged, so its
    body was already validated against this very schema (every catalogued type that is not internal):
    it is built without a second validation. Internal types are validated here either way.
    """
    compiled = _schema_of(env.type)
    if compiled is None or _class_of[env.type][0] is not body_class:
        raise ProtocolError(f"type: {env.type!r} does not carry a {body_class.__name__} body")
    if not decoded or env.type in _UNCHECKED:
        problems = _validators[env.type](env.body)
        if problems:
            raise ProtocolError("; ".join(problems))
    return compiled.build(env.body)


def send_service(env: Envelope) -> str | None:
    """The service an ``agent.send`` is addressed to, or None when it names an agent (``agent_id``).

    For an ``env`` that :func:`~openfang.protocol.envelope.decode` returned for an ``agent.send``, its body
    validated as an :class:`AgentSend`: exactly one of ``agent_id`` and ``service`` is set (its
    ``extra_checks``), so this is ``parse(env, AgentSend, decoded=True).service`` without building the
    instance (the gateway's hot path reads nothing else of it).
    """
    body = env.body
    if body.get("agent_id") is None:
        service: str = body["service"]
        return service
    return None


def requests_in(env: Envelope) -> int:
    """How many requests ``env`` stands for, as rate limits count them: 2 for an ``agent.spawn`` with a
    first message (``text``: the spawn and an ``agent.send``), else 1.

    For an ``env`` that :func:`~openfang.protocol.envelope.decode` returned (its body validated), read
    without building the body (the gateway's door calls it for every request).
    """
    if env.type == "agent.spawn" and env.body.get("text") is not None:
        return 2
    return 1


def to_body(obj: Any) -> dict[str, Any]:
    """A body dataclass as the plain map that goes into :attr:`Envelope.body`."""
    body = _schema.to_wire(obj)
    if not isinstance(body, dict):
        raise TypeError(f"to_body needs a body dataclass, got {type(obj).__name__}")
    return body


def request(obj: Any, *, type: str | None = None) -> Envelope:
    """A request envelope for a body dataclass; ``type`` is required when the class serves several types."""
    message_type = type or _TYPE_OF.get(obj.__class__)
    if message_type is None:
        raise TypeError(f"{obj.__class__.__name__} is the body of several types: pass type=")
    return Envelope(type=message_type, body=to_body(obj))


def remote_error(body: Mapping[str, Any]) -> RemoteError:
    """The :class:`RemoteError` for an ``error`` reply body (its code, message and problems)."""
    problems = [
        Problem(str(p.get("where", "")), str(p.get("what", "")))
        for p in body.get("problems") or []
        if isinstance(p, Mapping)
    ]
    code = str(body.get("code", "internal"))
    details = {k: v for k, v in body.items() if k not in ("code", "message", "problems")}
    return RemoteError(str(body.get("message", "")), code=code, problems=problems, details=details)
