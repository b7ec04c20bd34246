"""The bodies of the memory writer's requests (its own ROUTER socket, internal to the cluster).

Every write is one envelope whose ``id`` is the client's idempotency key. Replies are ``<type>.ok`` with at
least ``{"seq": int}``: the commit sequence number a reader waits for to read its own write, plus ``id``
(the row id) where a row was created and ``dup: true`` when the request id had been applied before (the
stored ack is returned again). ``memory.write`` applies a batch all-or-nothing; each op is tagged by its
``type`` and its body is checked as that type's (``body.ops[1].body.role: ...``).

The limits live here, once: ``openfang.memory`` (client, writer, CLI import) reads them from this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from openfang.protocol._schema import Len, Range

__all__ = [
    "MAX_ID_LEN",
    "MAX_OPS",
    "MAX_TAGS",
    "MAX_TEXT_LEN",
    "MAX_VECTOR_BYTES",
    "RECLAIM_POLICIES",
    "ROLES",
    "TOOL_STATUSES",
    "EpisodeOp",
    "ForgetOp",
    "MemoryCompact",
    "MemoryCompactOk",
    "MemoryEpisode",
    "MemoryForget",
    "MemoryForgetOk",
    "MemoryPingOk",
    "MemoryReclaim",
    "MemoryReclaimOk",
    "MemoryStore",
    "MemoryToolCall",
    "MemoryWrite",
    "MemoryWriteOk",
    "StoreOp",
    "ToolCallOp",
    "WriteAck",
]

MAX_ID_LEN = 200
MAX_TEXT_LEN = 256 * 1024
MAX_OPS = 256
MAX_TAGS = 32
MAX_VECTOR_BYTES = 1 << 20

Role = Literal["user", "assistant", "system", "tool"]
ToolStatus = Literal["ok", "error", "timeout", "denied"]
ReclaimPolicy = Literal["keep", "archive", "purge"]
ROLES = frozenset(get_args(Role))
TOOL_STATUSES = frozenset(get_args(ToolStatus))
RECLAIM_POLICIES = frozenset(get_args(ReclaimPolicy))

MemId = Annotated[str, Len(MAX_ID_LEN, 1)]  # agent ids, sessions, tool and embedder names
Text = Annotated[str, Len(MAX_TEXT_LEN, 1)]
Seconds = Annotated[float, Range(0)]
Count = Annotated[int, Range(0)]


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryEpisode:
    """One message of a conversation."""

    agent_id: MemId
    session: MemId
    role: Role
    text: Text
    ts: Seconds | None = None  # unix time (default: the writer's clock)
    tokens: Count | None = None  # default: the number of words


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryStore:
    """One memory, with its vector when the client embedded it (``vector`` and ``embedder`` go together)."""

    agent_id: MemId
    text: Text
    kind: Annotated[str, Len(64, 1)] = "fact"
    importance: Annotated[float, Range(0.0, 1.0)] = 0.5
    ttl_s: Annotated[float, Range(0.001)] | None = None  # forgotten by compaction after this long
    embedder: MemId | None = None  # the embedder id that made the vector
    vector: Annotated[bytes, Len(MAX_VECTOR_BYTES, 4)] | None = None  # float32, little endian
    tags: Annotated[list[Annotated[str, Len(64, 1)]], Len(MAX_TAGS)] | None = None

    @staticmethod
    def extra_checks(raw: Mapping[str, Any]) -> list[str]:
        problems = []
        vector = raw.get("vector")
        if (vector is None) != (raw.get("embedder") is None):
            problems.append("vector: vector and embedder go together (both or neither)")
        if isinstance(vector, bytes) and len(vector) % 4:
            problems.append(f"vector: must be float32 bytes (a multiple of 4 bytes), got {len(vector)} bytes")
        return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryToolCall:
    """One tool call an agent made."""

    agent_id: MemId
    tool: MemId
    status: ToolStatus
    session: MemId | None = None
    args: Any = None  # the call's arguments, stored as JSON text
    duration_ms: Seconds | None = None
    error: Text | None = None
    ts: Seconds | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryForget:
    """Delete one memory of an agent, by its row id."""

    agent_id: MemId
    id: Annotated[int, Range(1)]  # the memory's row id (an ack's id)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryReclaim:
    """Retention when an agent is gone: keep its memory, archive it (kept, hidden) or purge it."""

    agent_id: MemId
    policy: ReclaimPolicy


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryCompact:
    """TTL compaction now (the writer also runs it on a timer)."""

    now: Seconds | None = None  # compact as if it were this unix time


# -- memory.write: a batch, all-or-nothing; each op tagged by its type ---------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EpisodeOp:
    """A memory.episode inside a memory.write batch."""

    type: Literal["memory.episode"]
    body: MemoryEpisode


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreOp:
    """A memory.store inside a memory.write batch."""

    type: Literal["memory.store"]
    body: MemoryStore


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallOp:
    """A memory.tool_call inside a memory.write batch."""

    type: Literal["memory.tool_call"]
    body: MemoryToolCall


@dataclass(frozen=True, slots=True, kw_only=True)
class ForgetOp:
    """A memory.forget inside a memory.write batch."""

    type: Literal["memory.forget"]
    body: MemoryForget


WriteOp = EpisodeOp | StoreOp | ToolCallOp | ForgetOp


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryWrite:
    """A batch of writes applied all-or-nothing, in order."""

    ops: Annotated[list[WriteOp], Len(MAX_OPS, 1)]  # applied in order, in one savepoint: all or nothing


# -- replies (open) ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteAck:
    """The ack of memory.episode, memory.store and memory.tool_call."""

    seq: Count  # the commit a reader waits for to read this write
    id: Count | None = None  # the new row's id
    dup: bool | None = None  # true: this request id was applied before; this is its stored ack


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryWriteOk:
    """The commit of a memory.write and each op's ack."""

    seq: Count
    results: Annotated[list[dict[str, Any]], Len(MAX_OPS)]  # each op's ack, in order (without seq)
    dup: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryForgetOk:
    """The commit of a memory.forget and how many rows it deleted."""

    seq: Count
    deleted: Count
    dup: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryReclaimOk:
    """The commit of a memory.reclaim and the rows it changed."""

    seq: Count
    policy: ReclaimPolicy
    counts: dict[str, Count]  # rows changed per table: episodes, memories, tool_calls
    dup: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryCompactOk:
    """The commit of a compaction and the rows it removed."""

    seq: Count
    counts: dict[str, Count]  # rows removed per table
    dup: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryPingOk:
    """The writer's last commit, its queue and its compaction times, answered without a commit."""

    seq: Count  # the writer's last commit
    queued: Count  # requests waiting in its queue
