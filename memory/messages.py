"""Request types the memory writer accepts, and their body validators (registered with the envelope codec).

Every write is one envelope whose ``id`` is the client's idempotency key. Replies are ``<type>.ok`` with at
least ``{"seq": int}``: the commit sequence number a reader waits for to read its own write
(:meth:`openfang.memory.reader.MemoryReader.wait_for`), plus ``id`` (the row id) where a row was created and
``dup: true`` when the request id had been applied before (the stored ack is returned again).

| type | body | ok body |
|---|---|---|
| memory.episode | agent_id, session, role, text, [ts, tokens] | seq, id |
| memory.store | agent_id, text, [kind, importance 0..1, ttl_s, tags, embedder, vector (f32)] | seq, id |
| memory.tool_call | agent_id, tool, status, [session, args, duration_ms, error, ts] | seq, id |
| memory.write | ops: [{type, body}, ...] applied all-or-nothing | seq, results |
| memory.forget | agent_id, id | seq, deleted |
| memory.reclaim | agent_id, policy: keep / archive / purge | seq, counts |
| memory.compact | {} (TTL compaction now; the writer also runs it on a timer) | seq, counts |
| memory.ping | {} (answered without a commit) | seq, queued |
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

from openfang.protocol.envelope import register_body_validator

EPISODE = "memory.episode"
STORE = "memory.store"
TOOL_CALL = "memory.tool_call"
WRITE = "memory.write"
FORGET = "memory.forget"
RECLAIM = "memory.reclaim"
COMPACT = "memory.compact"
PING = "memory.ping"

ROLES = frozenset({"user", "assistant", "system", "tool"})
TOOL_STATUSES = frozenset({"ok", "error", "timeout", "denied"})
RECLAIM_POLICIES = frozenset({"keep", "archive", "purge"})
MAX_ID_LEN = 200
MAX_TEXT_LEN = 256 * 1024
MAX_OPS = 256

_Check = Callable[[Any], str | None]


def _str(max_len: int = MAX_ID_LEN, choices: frozenset[str] | None = None) -> _Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, str) or not v:
            return "must be a non-empty string"
        if len(v) > max_len:
            return f"is {len(v)} characters, the limit is {max_len}"
        if choices is not None and v not in choices:
            return f"must be one of {', '.join(sorted(choices))}, got {v!r}"
        return None

    return check


def _num(lo: float | None = None, hi: float | None = None) -> _Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return "must be a finite number"
        if lo is not None and v < lo:
            return f"must be >= {lo}, got {v}"
        if hi is not None and v > hi:
            return f"must be <= {hi}, got {v}"
        return None

    return check


def _int(lo: int = 0) -> _Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            return f"must be an integer >= {lo}"
        return None

    return check


def _bytes(v: Any) -> str | None:
    if not isinstance(v, bytes) or not v or len(v) % 4:
        return "must be non-empty float32 bytes (a multiple of 4 bytes)"
    return None


def _any(v: Any) -> str | None:
    return None


MAX_TAGS = 32


def _tags(v: Any) -> str | None:
    if not isinstance(v, list) or len(v) > MAX_TAGS:
        return f"must be a list of at most {MAX_TAGS} strings"
    if any(not isinstance(t, str) or not t or len(t) > 64 for t in v):
        return "every tag must be a non-empty string of at most 64 characters"
    return None


_text = _str(MAX_TEXT_LEN)
# type -> (required fields, optional fields); a field maps to its check.
SCHEMAS: dict[str, tuple[dict[str, _Check], dict[str, _Check]]] = {
    EPISODE: (
        {"agent_id": _str(), "session": _str(), "role": _str(choices=ROLES), "text": _text},
        {"ts": _num(0), "tokens": _int()},
    ),
    STORE: (
        {"agent_id": _str(), "text": _text},
        {
            "kind": _str(64),
            "importance": _num(0.0, 1.0),
            "ttl_s": _num(0.001),
            "embedder": _str(),
            "vector": _bytes,
            "tags": _tags,
        },
    ),
    TOOL_CALL: (
        {"agent_id": _str(), "tool": _str(), "status": _str(choices=TOOL_STATUSES)},
        {"session": _str(), "args": _any, "duration_ms": _num(0), "error": _str(MAX_TEXT_LEN), "ts": _num(0)},
    ),
    FORGET: ({"agent_id": _str(), "id": _int(1)}, {}),
    RECLAIM: ({"agent_id": _str(), "policy": _str(choices=RECLAIM_POLICIES)}, {}),
    COMPACT: ({}, {"now": _num(0)}),
    PING: ({}, {}),
}
# Types allowed inside a memory.write batch.
BATCHABLE = frozenset({EPISODE, STORE, TOOL_CALL, FORGET})


def validate(msg_type: str, body: Mapping[str, Any], prefix: str = "body") -> list[str]:
    """Every problem with ``body`` for ``msg_type`` as ``"body.field: what"``; [] when valid."""
    if msg_type == WRITE:
        return _validate_write(body, prefix)
    if msg_type not in SCHEMAS:
        return [f"type: unknown memory request type {msg_type!r}"]
    required, optional = SCHEMAS[msg_type]
    problems: list[str] = []
    for name, check in required.items():
        if name not in body or body[name] is None:
            problems.append(f"{prefix}.{name}: required")
        elif (what := check(body[name])) is not None:
            problems.append(f"{prefix}.{name}: {what}")
    for name, check in optional.items():
        if body.get(name) is not None and (what := check(body[name])) is not None:
            problems.append(f"{prefix}.{name}: {what}")
    unknown = set(body) - set(required) - set(optional)
    if unknown:
        problems.append(f"{prefix}: unknown fields {', '.join(sorted(map(str, unknown)))}")
    if msg_type == STORE and (body.get("vector") is None) != (body.get("embedder") is None):
        problems.append(f"{prefix}.vector: vector and embedder go together (both or neither)")
    return problems


def _validate_write(body: Mapping[str, Any], prefix: str) -> list[str]:
    ops = body.get("ops")
    if not isinstance(ops, list) or not ops:
        return [f"{prefix}.ops: must be a non-empty list of {{type, body}}"]
    if len(ops) > MAX_OPS:
        return [f"{prefix}.ops: {len(ops)} operations, the limit is {MAX_OPS}"]
    problems: list[str] = []
    for i, op in enumerate(ops):
        where = f"{prefix}.ops[{i}]"
        if (
            not isinstance(op, dict)
            or not isinstance(op.get("type"), str)
            or not isinstance(op.get("body"), dict)
        ):
            problems.append(f"{where}: must be a map with a string type and a map body")
        elif op["type"] not in BATCHABLE:
            problems.append(
                f"{where}.type: {op['type']!r} cannot be batched ({', '.join(sorted(BATCHABLE))})"
            )
        else:
            problems.extend(validate(op["type"], op["body"], f"{where}.body"))
    unknown = set(body) - {"ops"}
    if unknown:
        problems.append(f"{prefix}: unknown fields {', '.join(sorted(map(str, unknown)))}")
    return problems


def _register() -> None:
    for msg_type in [*SCHEMAS, WRITE]:
        register_body_validator(msg_type, functools.partial(validate, msg_type))


_register()
