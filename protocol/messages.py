"""The message catalogue: every request type, its ``<type>.ok`` reply, events and errors, as typed bodies.

Importing this module (``import openfang.protocol`` does) registers a body validator per type with
:func:`openfang.protocol.envelope.register_body_validator`, so :func:`~openfang.protocol.envelope.decode`
reports every problem of a body at once: missing, wrong type, unknown field, too long, out of range.

Request bodies are closed (an unknown field is an error); reply, event and error bodies are open (a newer
peer may add fields). Use :func:`parse` to get a typed body, :func:`to_body` to put one on the wire, and
:func:`check_request` at a server's door to refuse types outside the catalogue with ``unknown_type``.
PROTOCOL.md is generated from this catalogue (``python -m openfang.protocol._docgen``).
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from openfang.protocol import _schema
from openfang.protocol._schema import Len, Range
from openfang.protocol.envelope import ERROR_TYPE, Envelope, register_body_validator
from openfang.protocol.errors import Problem, ProtocolError, RemoteError, UnknownType

EVENT_TYPE = "event"
MAX_TEXT = 65536
MAX_MANIFEST = 262144

Id = Annotated[str, Len(128, 1)]  # child ids, agent ids, worker ids, session ids
Path = Annotated[str, Len(256, 1)]  # a supervisor path such as "root/workers"
Name = Annotated[str, Len(128)]
State = Annotated[str, Len(32)]
Count = Annotated[int, Range(0)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Empty:
    """A body with no fields."""


# -- control ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PingOk:
    pid: int
    time: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildCounts:
    """OTP's count_children: child specs, running children, of which supervisors and workers."""

    specs: Count
    active: Count
    supervisors: Count
    workers: Count


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusOk:
    name: Name
    version: Annotated[str, Len(64)]
    pid: int
    uptime_s: Annotated[float, Range(0)]
    state: State  # starting | running | reloading | stopping
    config: Annotated[str, Len(4096)] | None = None  # path of the loaded config file (nil: built-in defaults)
    children: ChildCounts | None = None  # the root supervisor's children
    workers: Count = 0  # worker processes currently connected to the gateway
    events: Annotated[str, Len(512)] | None = None  # the PUB endpoint, so clients can subscribe


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """One child in the tree; a supervisor's ``children`` are its own children (empty for workers).

    Absent (or nil) optional fields mean "not known / not running": a stopped child has no pid.
    """

    id: Id
    path: Path
    type: Annotated[str, Len(16)]  # worker | supervisor
    state: State  # running | restarting | stopped | undefined
    pid: int | None = None
    cpu: int | None = None
    started_at: float | None = None
    restarts: Count = 0
    rss_bytes: Count | None = None
    uptime_s: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    children: Annotated[list[Node], Len(4096)] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class TreeOk:
    children: Annotated[list[Node], Len(4096)]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadOk:
    """Child ids per outcome of applying the re-read config."""

    started: Annotated[list[Id], Len(4096)]
    stopped: Annotated[list[Id], Len(4096)]
    replaced: Annotated[list[Id], Len(4096)]
    unchanged: Annotated[list[Id], Len(4096)]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildStart:
    path: Path
    spec: Annotated[dict[str, Any], Len(64)]  # a child spec table, as in the config's [[...children]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildStartOk:
    id: Id
    pid: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildRef:
    """A child of the supervisor at ``path``."""

    path: Path
    id: Id


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildRestartOk:
    id: Id
    pid: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorRef:
    path: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSummary:
    """OTP's which_children entry: one child of one supervisor, in start order."""

    id: Id
    type: Annotated[str, Len(16)]  # worker | supervisor
    state: State  # running | restarting | stopped | undefined
    pid: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildWhichOk:
    children: Annotated[list[ChildSummary], Len(4096)]


# -- workers and agents ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerPing:
    worker: Id


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerPingOk:
    worker: Id
    pid: int
    cpu: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSpawn:
    manifest: Annotated[str, Len(MAX_MANIFEST, 1)]  # agent.toml text
    manifest_path: Annotated[str, Len(4096)] | None = None  # where it came from (for error messages)
    worker: Id | None = None  # place on this worker (default: least loaded)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSpawnOk:
    agent_id: Id
    worker: Id
    service: Name | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSend:
    """Send ``text`` to one agent (``agent_id``) or to the agents serving ``service``: exactly one of them."""

    text: Annotated[str, Len(MAX_TEXT)]
    agent_id: Id | None = None
    service: Annotated[str, Len(128, 1)] | None = None
    session: Id | None = None

    @staticmethod
    def extra_checks(raw: Mapping[str, Any]) -> list[str]:
        has_agent, has_service = raw.get("agent_id") is not None, raw.get("service") is not None
        if has_agent == has_service:
            return ["agent_id: give exactly one of agent_id and service"]
        return []


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    tool_calls: Count = 0
    fuel: Count = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSendOk:
    reply: Annotated[str, Len(MAX_TEXT * 4)]
    agent_id: Id
    usage: Usage


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRecord:
    """What a worker knows about one agent."""

    agent_id: Id
    name: Name
    worker: Id
    state: State  # starting | running | suspended | restarting | dead
    service: Name | None = None
    restarts: Count = 0
    created_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentListOk:
    agents: Annotated[list[AgentRecord], Len(100_000)]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRef:
    agent_id: Id


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStateOk:
    agent_id: Id
    state: State


# -- memory ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MemorySearch:
    query: Annotated[str, Len(4096, 1)]
    agent_id: Id | None = None
    kind: Name | None = None
    mode: Annotated[str, Len(16)] = "hybrid"  # hybrid | keyword | vector
    limit: Annotated[int, Range(1, 100)] = 10

    @staticmethod
    def extra_checks(raw: Mapping[str, Any]) -> list[str]:
        mode = raw.get("mode", "hybrid")
        if mode is not None and mode not in ("hybrid", "keyword", "vector"):
            return [f"mode: must be one of 'hybrid', 'keyword', 'vector', got {mode!r}"]
        return []


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryHit:
    id: int | Annotated[str, Len(128)]
    agent_id: Id
    text: Annotated[str, Len(MAX_TEXT * 4)]
    score: float
    kind: Name | None = None
    time: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MemorySearchOk:
    hits: Annotated[list[MemoryHit], Len(100)]


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryHistory:
    agent_id: Id
    session: Id | None = None
    limit: Annotated[int, Range(1, 1000)] = 50
    before: float | None = None  # only messages older than this unix time (paging)


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEntry:
    role: Annotated[str, Len(32)]  # user | assistant | tool | system
    text: Annotated[str, Len(MAX_TEXT * 4)]
    time: float
    session: Id | None = None
    tokens: Count | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryHistoryOk:
    messages: Annotated[list[HistoryEntry], Len(1000)]


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryStats:
    agent_id: Id | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryStatsOk:
    counts: dict[str, Count]  # rows per memory kind: episodes, memories, tool_calls, ...
    db_bytes: Count | None = None
    embedder: Name | None = None


# -- events and errors -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """A lifecycle event on the PUB stream; kinds other than :data:`EVENT_KINDS` may appear (ignore them)."""

    kind: Annotated[str, Len(64, 1)]
    time: float
    path: Path | None = None
    id: Id | None = None
    pid: int | None = None
    reason: Annotated[str, Len(4096)] | None = None  # child.exited: normal | shutdown | abnormal
    status: int | None = None  # child.exited: exit status (negative: killed by that signal)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProblemBody:
    where: Annotated[str, Len(1024)]
    what: Annotated[str, Len(4096)]


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorBody:
    code: Annotated[str, Len(64, 1)]
    message: Annotated[str, Len(MAX_TEXT)]
    problems: Annotated[list[ProblemBody], Len(1000)] | None = None  # bad_config: every problem


EVENT_KINDS: dict[str, str] = {
    "child.started": "a child is up (after its ready); fields: path, id, pid",
    "child.exited": "a child exited; fields: path, id, pid, reason (normal | shutdown | abnormal), status",
    "child.restarted": "a child was restarted by its supervisor's strategy; fields: path, id, pid",
    "child.hung": "a child missed its heartbeat and was killed; fields: path, id, pid",
    "child.start_failed": "a child could not start; fields: path, id, reason",
    "supervisor.escalated": "restart intensity exceeded: the supervisor gave up; fields: path, reason",
    "config.reloaded": "a reload was applied; fields: started, stopped, replaced, unchanged",
    "config.rejected": "a reload was refused, nothing changed; fields: reason, problems",
    "agent.state": "an agent changed state; fields: agent_id, worker, state",
}

ERROR_CODES: dict[str, str] = {
    "bad_request": "not a valid envelope, or the body breaks its schema (the message names each field)",
    "unsupported_version": "the envelope's v is not a protocol version this server speaks",
    "too_large": "the frame is over the server's size limit",
    "busy": "a bounded queue is full; nothing was done, retry later",
    "timeout": "the component that should answer did not answer in time",
    "not_found": "no such child, agent, worker or service",
    "already_exists": "the id is already present or started",
    "supervisor_error": "the supervisor could not do it (start failed, child running, ...)",
    "sandbox_error": "the agent's sandbox failed (wasm trap, fuel, memory limit, host call)",
    "memory_error": "the memory store failed",
    "denied": "a security layer refused the request",
    "bad_config": "a config or manifest is invalid; body.problems lists every problem with its place",
    "rate_limited": "a rate limit was hit; retry later",
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
_AGENT_ERRORS = (*_COMMON_ERRORS, "not_found", "sandbox_error", "denied", "rate_limited")
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
        ),
        _spec("child.delete", "control", ChildRef, Empty, "forget a terminated child's spec", *_TREE_ERRORS),
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
        ),
        _spec("agent.list", "agents", Empty, AgentListOk, "every agent on every worker", *_COMMON_ERRORS),
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
    ]
}

REQUEST_TYPES = frozenset(CATALOGUE)

# body class -> wire type; replies by their "<type>.ok" name. Classes shared by several types map to none.
_TYPE_OF: dict[type, str] = {}
_compiled: dict[str, _schema.Compiled] = {}
_class_of: dict[str, type] = {}


def _register() -> None:
    uses: dict[type, list[str]] = {}
    for spec in CATALOGUE.values():
        for cls, type_, is_open in ((spec.request, spec.type, False), (spec.reply, f"{spec.type}.ok", True)):
            compiled = _schema.compile_dataclass(cls, open_fields=is_open)
            _compiled[type_], _class_of[type_] = compiled, cls
            register_body_validator(type_, _schema.body_validator(compiled))
            uses.setdefault(cls, []).append(type_)
    for cls, type_ in ((Event, EVENT_TYPE), (ErrorBody, ERROR_TYPE)):
        compiled = _schema.compile_dataclass(cls, open_fields=True)
        _compiled[type_], _class_of[type_] = compiled, cls
        register_body_validator(type_, _schema.body_validator(compiled))
        uses.setdefault(cls, []).append(type_)
    _TYPE_OF.update({cls: types[0] for cls, types in uses.items() if len(types) == 1})


_register()


def body_schema(message_type: str) -> _schema.Compiled | None:
    """The compiled schema of ``message_type``'s body (a request, ``<type>.ok``, ``event`` or ``error``)."""
    return _compiled.get(message_type)


def check_request(env: Envelope) -> MessageSpec:
    """The catalogue entry of a request; raises :class:`UnknownType` for a type not in the catalogue."""
    spec = CATALOGUE.get(env.type)
    if spec is None:
        raise UnknownType(f"type: {env.type!r} is not a request type of protocol v1")
    return spec


def parse(env: Envelope, body_class: type[Any]) -> Any:
    """``env.body`` as an instance of ``body_class``, validated; raises ProtocolError naming every problem.

    ``body_class`` must be the body of ``env.type`` (``parse(env, AgentSend)`` for an ``agent.send``).
    Fields an open body (reply, event, error) carries beyond its class are not kept: read ``env.body``.
    """
    compiled = _compiled.get(env.type)
    if compiled is None or _class_of[env.type] is not body_class:
        raise ProtocolError(f"type: {env.type!r} does not carry a {body_class.__name__} body")
    problems = _schema.body_validator(compiled)(env.body)
    if problems:
        raise ProtocolError("; ".join(problems))
    return compiled.build(env.body)


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
    return RemoteError(str(body.get("message", "")), code=code, problems=problems)
