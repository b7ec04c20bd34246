"""The body of every message type, as frozen dataclasses whose annotations are the wire schema.

Field types and limits are read by :mod:`openfang.protocol._schema` (``Annotated[str, Len(128)]`` is a string
of at most 128 characters); a trailing ``# comment`` on a field is its documentation in PROTOCOL.md. Which
type carries which body is the catalogue in :mod:`openfang.protocol.messages`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from openfang.protocol._schema import Len, Match, Range

__all__ = [
    "FORWARDED_TYPES",
    "MAX_MANIFEST",
    "MAX_TEXT",
    "AgentList",
    "AgentListOk",
    "AgentRecord",
    "AgentRef",
    "AgentSend",
    "AgentSendChunk",
    "AgentSendOk",
    "AgentSpawn",
    "AgentSpawnOk",
    "AgentStateOk",
    "ChildCounts",
    "ChildRef",
    "ChildRestartOk",
    "ChildStart",
    "ChildStartOk",
    "ChildSummary",
    "ChildWhichOk",
    "Empty",
    "ErrorBody",
    "Event",
    "ForwardedRequest",
    "GatewayStats",
    "HistogramBody",
    "HistoryEntry",
    "LLMStats",
    "MemoryHistory",
    "MemoryHistoryOk",
    "MemoryHit",
    "MemorySearch",
    "MemorySearchOk",
    "MemoryStats",
    "MemoryStatsOk",
    "MemoryWriterStats",
    "Node",
    "PingOk",
    "ProblemBody",
    "ReloadOk",
    "RequestLatency",
    "StatusOk",
    "SupervisorRef",
    "ToolStats",
    "TreeOk",
    "Usage",
    "WorkerForward",
    "WorkerHello",
    "WorkerPing",
    "WorkerPingOk",
    "WorkerStats",
]

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
    """The gateway's answer to ping: its pid and clock."""

    pid: int
    time: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildCounts:
    """OTP's count_children: child specs, running children, of which supervisors and workers."""

    specs: Count
    active: Count
    supervisors: Count
    workers: Count


# -- figures for monitoring (cumulative since the reporting process started; openfang.protocol.stats) --------


@dataclass(frozen=True, slots=True, kw_only=True)
class HistogramBody:
    """A latency histogram: cumulative counts per upper bound, as Prometheus buckets (``le``)."""

    bounds: Annotated[list[float], Len(64)]  # upper bounds in seconds, ascending; +Inf is implied
    counts: Annotated[list[Count], Len(64)]  # observations <= each bound (cumulative)
    count: Count  # every observation (the +Inf bucket)
    sum: float  # the observations added up, in seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestLatency:
    """The gateway's answer times for one request type."""

    type: Annotated[str, Len(64, 1)]  # a catalogue request type
    seconds: HistogramBody  # from the request admitted to its reply sent


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayStats:
    """What the gateway counted since it started (``status`` -> ``gateway``)."""

    started_at: float  # unix time the gateway process started (its counters start at zero then)
    requests: Annotated[list[RequestLatency], Len(128)]  # client requests by type
    refusals: dict[str, Count]  # requests refused at the door (guard, routing, queue), by error code
    errors: dict[str, Count]  # every error reply sent to a client, by error code (relayed ones too)
    agent_restarts: dict[str, Count]  # restarts the gateway made: worker_lost | restart_failed
    agents_lost: dict[str, Count]  # agents given up, by agent.lost reason


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMStats:
    """One worker's calls to one provider and model."""

    provider: Name
    model: Annotated[str, Len(256)]
    requests: Count  # calls made to it (answered or failed; each fallback attempt counts)
    errors: dict[str, Count]  # failures by kind: http_4xx, http_5xx, timeout, connection, bad_response, ...
    prompt_tokens: Count
    completion_tokens: Count
    seconds: HistogramBody  # call durations (answered ones, and failures that tried no fallback)


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolStats:
    """One worker's calls of one registered tool (unregistered names add up under ``unknown``)."""

    tool: Name
    calls: Count  # every call asked for, denials included
    errors: Count  # calls that ran and failed (not denials)
    denials: Count  # calls refused by the agent's tool list or the permission check


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerStats:
    """What one worker counted since it started (``agent.list`` -> ``workers``)."""

    worker: Id
    messages: HistogramBody  # agent.send: from the request reaching the worker to its reply leaving
    llm: Annotated[list[LLMStats], Len(256)]
    tools: Annotated[list[ToolStats], Len(1024)]
    hibernations: dict[str, Count]  # by why: request | idle
    wakes: dict[str, Count]  # by why: request | message
    wake_seconds: HistogramBody  # snapshot read and restore of each wake
    restarts: dict[str, Count]  # agent restarts the worker made, by cause: trap, deadline, memory_cap, ...


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryWriterStats:
    """The memory writer's queue and commits (``memory.stats`` -> ``writer``, from its ``memory.ping``)."""

    queued: Count  # requests waiting for the next group commit
    queue_max: Count  # past it, writes are answered busy
    commits: Count  # group commits since the writer started
    writes: Count  # requests applied by those commits
    busy: Count  # writes refused because the queue was full
    commit_seconds: HistogramBody  # the duration of each group commit


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusOk:
    """The daemon's answer to status: name, version, uptime, its children, workers and gateway figures."""

    name: Name
    version: Annotated[str, Len(64)]
    pid: int
    uptime_s: Annotated[float, Range(0)]
    state: State  # starting | running | reloading | stopping
    config: Annotated[str, Len(4096)] | None = None  # path of the loaded config file (nil: built-in defaults)
    children: ChildCounts | None = None  # the root supervisor's children
    workers: Count = 0  # worker processes currently connected to the gateway
    events: Annotated[str, Len(512)] | None = None  # the PUB endpoint, so clients can subscribe
    workers_expected: Count | None = None  # worker processes in the tree
    ready: bool | None = None  # running and every worker connected: spawns and sends can be placed
    gateway: GatewayStats | None = None  # the gateway's request latencies, refusals and restarts


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
    """The whole supervision tree, nested."""

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
    """Start a new child from ``spec`` under the supervisor at ``path``."""

    path: Path
    spec: Annotated[dict[str, Any], Len(64)]  # a child spec table, as in the config's [[...children]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildStartOk:
    """The started child: its id and pid."""

    id: Id
    pid: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildRef:
    """A child of the supervisor at ``path``."""

    path: Path
    id: Id


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildRestartOk:
    """The restarted child: its id and new pid."""

    id: Id
    pid: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorRef:
    """A supervisor, by its path in the tree."""

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
    """A supervisor's children (OTP's which_children)."""

    children: Annotated[list[ChildSummary], Len(4096)]


# -- workers and agents ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerPing:
    """A round trip through one worker process, by its id."""

    worker: Id


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerPingOk:
    """The worker's answer: its id, pid and pinned CPU."""

    worker: Id
    pid: int
    cpu: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSpawn:
    """Start an agent; with ``text``, also send it a first message and answer both in one reply.

    A spawn with ``text`` is an ``agent.spawn`` followed by an ``agent.send`` of ``text`` (and ``session``)
    to the new agent: the gateway forwards both to the agent's worker back to back and answers once, with
    an ``agent.spawn.ok`` that carries the spawn's fields and the first reply (``reply``, ``usage``) or, if
    the spawn succeeded but the message failed, ``send_error`` (the agent stays spawned: its id is in the
    reply). The message passes every check an ``agent.send`` passes (the client's rate limit is charged two
    requests). A failed spawn is answered with its error; nothing is sent. ``stream`` is refused: spawn,
    then stream with ``agent.send``. Agents' own spawns (``agent_spawn``) take no ``text``.
    """

    manifest: Annotated[str, Len(MAX_MANIFEST, 1)]  # agent.toml text
    manifest_path: Annotated[str, Len(4096)] | None = None  # where it came from (for error messages)
    worker: Id | None = None  # place on this worker (default: least loaded)
    agent_id: Id | None = None  # set by the gateway for the worker (a client's value is refused)
    parent: Id | None = None  # set by the gateway: the agent that spawned this one (agent_spawn)
    resume: bool | None = None  # set by the gateway on a re-spawn: resume the conversation from memory
    text: Annotated[str, Len(MAX_TEXT)] | None = None  # a first message: the reply comes with the spawn's
    session: Id | None = None  # the first message's session (as agent.send's); needs text
    stream: bool | None = None  # refused when true: stream with agent.send after the spawn

    @staticmethod
    def extra_checks(raw: Mapping[str, Any]) -> list[str]:
        problems = []
        if raw.get("session") is not None and raw.get("text") is None:
            problems.append("session: the session of a first message; give text too")
        if raw.get("stream"):
            problems.append(
                "stream: a spawn's first reply is not streamed; spawn, then agent.send with stream = true"
            )
        return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSpawnOk:
    """The spawned agent; after a spawn with ``text``, also its first reply, or why the message failed."""

    agent_id: Id
    worker: Id
    service: Name | None = None
    reply: Annotated[str, Len(MAX_TEXT * 4)] | None = None  # with text: the first reply (as agent.send.ok's)
    usage: Usage | None = None  # with text: what the first reply used
    send_error: ErrorBody | None = None  # with text: the spawn succeeded, the message failed (no reply)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSend:
    """Send ``text`` to one agent (``agent_id``) or to the agents serving ``service``: exactly one of them."""

    text: Annotated[str, Len(MAX_TEXT)]
    agent_id: Id | None = None
    service: Annotated[str, Len(128, 1)] | None = None
    session: Id | None = None
    stream: bool | None = None  # true: agent.send.chunk messages with this request's id come before the reply

    @staticmethod
    def extra_checks(raw: Mapping[str, Any]) -> list[str]:
        has_agent, has_service = raw.get("agent_id") is not None, raw.get("service") is not None
        if has_agent == has_service:
            return ["agent_id: give exactly one of agent_id and service"]
        return []


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """What answering one agent.send consumed: model tokens, tool calls, fuel."""

    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    tool_calls: Count = 0
    fuel: Count = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSendOk:
    """The agent's reply, and what producing it consumed."""

    reply: Annotated[str, Len(MAX_TEXT * 4)]
    agent_id: Id
    usage: Usage


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSendChunk:
    """A part of a streamed ``agent.send`` reply (type ``agent.send.chunk``, the request's id); open."""

    agent_id: Id
    kind: Annotated[str, Len(16)]  # text: a piece of the model's text | tool: a tool call started or ended
    text: Annotated[str, Len(MAX_TEXT * 4)] | None = None  # kind text: the piece, in order
    tool: Annotated[str, Len(128)] | None = None  # kind tool: the tool's name
    state: Annotated[str, Len(16)] | None = None  # kind tool: start | done
    ok: bool | None = None  # kind tool, state done: whether the call succeeded


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRecord:
    """What a worker knows about one agent."""

    agent_id: Id
    name: Name
    worker: Id | None  # where it runs now (nil: not placed, e.g. restarting or dead)
    state: State  # starting | running | suspended | restarting | hibernated | dead
    service: Name | None = None
    restarts: Count = 0
    created_at: float | None = None
    restart: Annotated[str, Len(16)] | None = None  # its policy: permanent | transient | temporary
    reason: Annotated[str, Len(4096)] | None = None  # why it last restarted or died
    parent: Id | None = None  # the agent that spawned it (agent_spawn)


AGENT_STATES = ("starting", "running", "suspended", "restarting", "hibernated", "dead")
LIST_LIMIT_MAX = 10_000
LIST_LIMIT_DEFAULT = 1_000
_STATES_WHAT = "one of " + ", ".join(AGENT_STATES)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentList:
    """One page of ``agent.list``: agents in registry order (by agent id), at most ``limit`` of them.

    The cursor contract: ``after`` is the last agent id of the previous page (its reply's ``next``); the
    page starts at the first matching id after it. Ids are totally ordered, so a walk never returns an
    agent twice; an agent spawned or killed between two pages may be missed or seen once. An empty body
    is the first page of 1,000. ``ids`` is only for the gateway's message to a worker (the page's agents
    whose live figures it wants); a client's ``ids`` is refused.
    """

    limit: Annotated[int, Range(1, LIST_LIMIT_MAX)] | None = None  # default 1,000
    after: Id | None = None  # exclusive cursor: the previous page's ``next``
    state: Annotated[str, Len(32), Match("|".join(AGENT_STATES), _STATES_WHAT)] | None = None
    worker: Id | None = None  # only agents placed on this worker
    ids: Annotated[list[Id], Len(LIST_LIMIT_MAX)] | None = None  # gateway -> worker only


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentListOk:
    """One page of agents, each worker's figures when asked, and where the next page starts."""

    agents: Annotated[list[AgentRecord], Len(LIST_LIMIT_MAX)]
    workers: Annotated[list[WorkerStats], Len(4096)] | None = None  # each answering worker's figures
    next: Id | None = None  # the next page's ``after``; nil on the last page
    total: Count | None = None  # agents matching the filters (all pages)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRef:
    """An agent, by its id."""

    agent_id: Id


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStateOk:
    """The agent's state after the request."""

    agent_id: Id
    state: State


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentMove:
    """Move an agent to another worker (``to``; default: the least loaded other one). Sent by the gateway
    to the agent's worker too, as the source half of the move (snapshot it, then let it go)."""

    agent_id: Id
    to: Id | None = None
    wait_ms: Annotated[int, Range(0, 60_000)] | None = None  # how long the source may wait for it to be idle


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentMoveOk:
    """Where a moved agent runs now, how it got there and how long it took."""

    agent_id: Id
    state: State  # as it is on the target: running, suspended (a suspended agent stays suspended)
    worker: Id | None = None  # where it runs now (the source half answers without it)
    moved_from: Id | None = None
    path: Annotated[str, Len(16)]  # snapshot (guest state restored) | fresh (a new instance, agent_init)
    move_ms: float | None = None


# -- memory ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MemorySearch:
    """A keyword, vector or hybrid search of the memory store."""

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
    """One recalled memory. ``score`` fuses the keyword and vector ranks (reciprocal rank fusion,
    ``sum 1/(60 + rank)``) plus small importance and recency terms: it orders hits, it is not a similarity.
    ``similarity`` is the cosine similarity of the vector match (nil when only the keywords matched)."""

    id: int | Annotated[str, Len(128)]
    agent_id: Id
    text: Annotated[str, Len(MAX_TEXT * 4)]
    score: float
    kind: Name | None = None
    time: float | None = None
    similarity: float | None = None
    keyword_rank: int | None = None  # rank in the keyword (bm25) list, nil when not in it
    vector_rank: int | None = None  # rank in the vector (KNN) list, nil when not in it


@dataclass(frozen=True, slots=True, kw_only=True)
class MemorySearchOk:
    """The best hits of a memory search."""

    hits: Annotated[list[MemoryHit], Len(100)]


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryHistory:
    """One page of an agent's conversation, newest first."""

    agent_id: Id
    session: Id | None = None
    limit: Annotated[int, Range(1, 1000)] = 50
    before: float | None = None  # only messages older than this unix time (paging)


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEntry:
    """One message of an agent's conversation."""

    role: Annotated[str, Len(32)]  # user | assistant | tool | system
    text: Annotated[str, Len(MAX_TEXT * 4)]
    time: float
    session: Id | None = None
    tokens: Count | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryHistoryOk:
    """One page of an agent's conversation, newest first."""

    messages: Annotated[list[HistoryEntry], Len(1000)]


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryStats:
    """The memory store's counts, for one agent or all."""

    agent_id: Id | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryStatsOk:
    """The memory store's counts and size, its embedder, driver and writer."""

    counts: dict[str, Count]  # rows per memory kind: episodes, memories, tool_calls, ...
    db_bytes: Count | None = None
    embedder: Name | None = None
    sqlite: Name | None = None  # the SQLite driver memory runs on in the answering process (route, version)
    writer: MemoryWriterStats | None = None  # nil when the writer did not answer its ping in time


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityReportOk:
    """One entry per security layer: ``{"layer", "name", "module", "enabled", "config"}``; no key material."""

    layers: Annotated[list[dict[str, Any]], Len(64)]


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditVerifyOk:
    """The hash chain of the daemon's audit log, checked now: ``ok`` false names the first bad record."""

    ok: bool
    records: Count  # records checked (ones appended while the check ran are not among them)
    first_bad_index: Count | None = None  # 0-based index of the first bad record
    reason: Annotated[str, Len(4096)] = ""
    path: Annotated[str, Len(4096)]
    keyed: bool  # an HMAC chain (a keyed chain cannot be rewritten by someone without the key)
    key_file: Annotated[str, Len(4096)] | None = None
    warning: Annotated[str, Len(4096)] | None = None  # set for an unkeyed chain
    ms: Annotated[float, Range(0)]  # how long the check took


# -- internal: between the gateway and its workers (never accepted from clients) ---------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerHello:
    """A worker announces itself (first, then every second); the gateway learns its pid, cpu and agents."""

    worker: Id
    pid: int
    cpu: int | None = None
    agents: Count = 0  # how many agents it hosts now
    agent_ids: Annotated[list[Id], Len(1_000_000)] | None = None  # the first hello, and after a resync: all


# What a worker may forward for one of its agents: agent.send, agent.spawn, and the gateway's own schedule and
# topic requests (an agent's schedule_* and topic_* tools; their bodies are not in the catalogue yet).
FORWARDED_TYPES = (
    "agent.send",
    "agent.spawn",
    "schedule.add",
    "schedule.list",
    "schedule.remove",
    "topic.subscribe",
    "topic.unsubscribe",
    "topic.subscribers",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardedRequest:
    """The request an agent sends through its worker: one of :data:`FORWARDED_TYPES` and its body."""

    type: Annotated[str, Len(64, 1)]  # agent.send | agent.spawn | schedule.* | topic.*
    body: Annotated[dict[str, Any], Len(64)]  # that type's request body (validated by the gateway)

    @staticmethod
    def extra_checks(raw: Mapping[str, Any]) -> list[str]:
        if raw.get("type") not in FORWARDED_TYPES:
            return [f"type: only {', '.join(sorted(FORWARDED_TYPES))} requests are forwarded"]
        return []


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerForward:
    """An agent on this worker messages the cluster; the gateway checks the worker hosts ``sender``."""

    sender: Id  # the agent that sends (an agent this worker hosts)
    request: ForwardedRequest


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
    """One problem of a bad config or manifest: where it is and what is wrong."""

    where: Annotated[str, Len(1024)]
    what: Annotated[str, Len(4096)]


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMAttemptBody:
    """One provider's failure: who (provider, model), and why (HTTP status, or the cause)."""

    provider: Annotated[str, Len(128)]
    model: Annotated[str, Len(256)] | None = None
    status: int | None = None  # the HTTP status the server answered (nil: no answer, or a bad body)
    cause: Annotated[str, Len(32)]  # http_status, timeout, connection, malformed, refused, config, error
    reason: Annotated[str, Len(MAX_TEXT)]


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMFailureBody:
    """What failed in an ``llm_error``: the provider that answered last and every attempt of a fallback."""

    provider: Annotated[str, Len(128)]
    model: Annotated[str, Len(256)] | None = None
    status: int | None = None
    cause: Annotated[str, Len(32)]
    reason: Annotated[str, Len(MAX_TEXT)]
    fallback_tried: bool
    attempts: Annotated[list[LLMAttemptBody], Len(32)] | None = None  # each provider of the fallback chain


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorBody:
    """Every error reply: a catalogued code and a message, and the details some codes carry."""

    code: Annotated[str, Len(64, 1)]
    message: Annotated[str, Len(MAX_TEXT)]
    problems: Annotated[list[ProblemBody], Len(1000)] | None = None  # bad_config: every problem
    llm: LLMFailureBody | None = None  # llm_error: provider, model, status or cause, fallback
    retry_after_ms: Count | None = None  # restarting: when the agent should answer again
