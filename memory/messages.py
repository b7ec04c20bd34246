"""The memory writer's request types, as the memory package names them; their bodies are in the catalogue.

Every write is one envelope whose ``id`` is the client's idempotency key. The bodies, their limits and
their replies are declared once, in the one catalogue: :mod:`openfang.protocol.memory_writes` (the body
classes, bounds in their annotations) and :data:`openfang.protocol.messages.INTERNAL` (internal messages of
the writer's socket; PROTOCOL.md lists them). The client checks a body before sending it (:func:`validate`,
the same schema); the writer types it on arrival (``Applier``'s ``{type: (body class, handler)}`` table).

| type | body | ok body |
|---|---|---|
| memory.episode | agent_id, session, role, text, [ts, tokens] | seq, id |
| memory.store | agent_id, text, [kind, importance 0..1, ttl_s, tags, embedder, vector (f32)] | seq, id |
| memory.tool_call | agent_id, tool, status, [session, args, duration_ms, error, ts] | seq, id |
| memory.write | ops: [{type, body}, ...] applied all-or-nothing | seq, results |
| memory.forget | agent_id, id | seq, deleted |
| memory.reclaim | agent_id, policy: keep / archive / purge | seq, counts |
| memory.compact | {} (TTL compaction now; the writer also runs it on a timer) | seq, counts |
| memory.ping | {} (answered without a commit) | seq, queued, stats (queue_max, commits, writes, busy, ...) |
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

from openfang.protocol import messages as _catalogue
from openfang.protocol.memory_writes import (
    MAX_ID_LEN,
    MAX_OPS,
    MAX_TAGS,
    MAX_TEXT_LEN,
    RECLAIM_POLICIES,
    ROLES,
    TOOL_STATUSES,
    WriteOp,
)

__all__ = [
    "BATCHABLE",
    "COMPACT",
    "EPISODE",
    "FORGET",
    "MAX_ID_LEN",
    "MAX_OPS",
    "MAX_TAGS",
    "MAX_TEXT_LEN",
    "PING",
    "RECLAIM",
    "RECLAIM_POLICIES",
    "ROLES",
    "STORE",
    "TOOL_CALL",
    "TOOL_STATUSES",
    "WRITE",
    "WRITER_TYPES",
    "validate",
    "wire_body",
]

EPISODE = "memory.episode"
STORE = "memory.store"
TOOL_CALL = "memory.tool_call"
WRITE = "memory.write"
FORGET = "memory.forget"
RECLAIM = "memory.reclaim"
COMPACT = "memory.compact"
PING = "memory.ping"

# Every type the writer's socket takes: the catalogue's internal messages of the memory endpoint.
WRITER_TYPES = frozenset(t for t, s in _catalogue.INTERNAL.items() if s.endpoint == "memory")
# Types allowed inside a memory.write batch: the tags of its ops (memory_writes.WriteOp).
BATCHABLE = frozenset(
    tag for op in typing.get_args(WriteOp) for tag in typing.get_args(typing.get_type_hints(op)["type"])
)


def wire_body(body: Mapping[str, Any] | Any) -> dict[str, Any]:
    """A body dataclass of :mod:`openfang.protocol.memory_writes` (or a plain map) as the map on the wire."""
    if isinstance(body, Mapping):
        return dict(body)
    return _catalogue.to_body(body)  # a TypeError for anything but a body dataclass


def validate(msg_type: str, body: Mapping[str, Any] | Any) -> list[str]:
    """Every problem with ``body`` for ``msg_type`` as ``"body.field: what"``; [] when valid."""
    if msg_type not in WRITER_TYPES:
        return [f"type: unknown memory request type {msg_type!r}"]
    return _catalogue.check_body(msg_type, wire_body(body))
