"""Procedural memory: every tool call an agent made, and the patterns derived from them.

Write side: :func:`apply_tool_call`. Read side: :func:`tool_calls` (the log), :func:`tool_stats` (success
rate and latency per tool per agent) and :func:`sequences` (tool sequences that frequently ran to success
in a row within a session: what an agent "knows how to do").
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from openfang.protocol.memory_writes import MemoryToolCall

# The agent host records every LLM call that reported usage as a tool call of this name; its args are
# {provider, model, prompt_tokens, completion_tokens, cost_usd}. Not a tool: left out of tool sequences.
USAGE_TOOL = "llm"
STATS_WINDOW = 10_000  # latest calls per agent considered for patterns (bounded work per query)


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall:
    """One recorded tool call."""

    id: int
    agent_id: str
    session: str
    tool: str
    args: Any
    status: str
    duration_ms: float | None
    error: str | None
    ts: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolStat:
    """Derived: how one agent's calls of one tool went."""

    agent_id: str
    tool: str
    calls: int
    successes: int
    success_rate: float
    p50_ms: float | None
    p95_ms: float | None
    mean_ms: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolSequence:
    """Derived: consecutive successful calls ``tools`` seen ``count`` times (within sessions)."""

    agent_id: str
    tools: tuple[str, ...]
    count: int


def apply_tool_call(conn: Any, body: MemoryToolCall, now: float) -> dict[str, Any]:
    """Insert one tool call; ``args`` is stored as JSON text (anything msgpack could carry, bytes as hex)."""
    args = json.dumps(body.args, default=_json_default, sort_keys=True)
    cur = conn.execute(
        "INSERT INTO tool_calls(agent_id, session, tool, args, status, duration_ms, error, ts) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            body.agent_id,
            body.session or "",
            body.tool,
            args,
            body.status,
            body.duration_ms,
            body.error,
            body.ts or now,
        ),
    )
    return {"id": cur.lastrowid}


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return repr(value)


def _ph(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


def tool_calls(
    conn: Any, agent_ids: Sequence[str], *, tool: str | None = None, limit: int = 100
) -> list[ToolCall]:
    """The latest ``limit`` calls (optionally of one tool), newest first."""
    sql = (
        "SELECT id, agent_id, session, tool, args, status, duration_ms, error, ts FROM tool_calls "
        f"WHERE archived = 0 AND agent_id IN ({_ph(agent_ids)})"
    )
    params: list[Any] = list(agent_ids)
    if tool is not None:
        sql += " AND tool = ?"
        params.append(tool)
    sql += " ORDER BY ts DESC, id DESC LIMIT ?"
    params.append(int(limit))
    return [
        ToolCall(
            id=r[0],
            agent_id=r[1],
            session=r[2],
            tool=r[3],
            args=json.loads(r[4]) if r[4] else None,
            status=r[5],
            duration_ms=r[6],
            error=r[7],
            ts=r[8],
        )
        for r in conn.execute(sql, params).fetchall()
    ]


def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[idx])


def _recent(conn: Any, agent_ids: Sequence[str]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for agent in agent_ids:
        rows += conn.execute(
            "SELECT agent_id, session, tool, status, duration_ms, id FROM tool_calls "
            "WHERE archived = 0 AND agent_id = ? ORDER BY id DESC LIMIT ?",
            (agent, STATS_WINDOW),
        ).fetchall()
    return rows


def tool_stats(conn: Any, agent_ids: Sequence[str]) -> list[ToolStat]:
    """Success rate and latency (p50 / p95 / mean of successful calls) per tool per agent."""
    groups: dict[tuple[str, str], list[tuple[str, float | None]]] = defaultdict(list)
    for agent, _session, tool, status, duration, _id in _recent(conn, agent_ids):
        groups[(agent, tool)].append((status, duration))
    stats = []
    for (agent, tool), calls in sorted(groups.items()):
        ok = [d for s, d in calls if s == "ok"]
        lat = sorted(d for d in ok if d is not None)
        stats.append(
            ToolStat(
                agent_id=agent,
                tool=tool,
                calls=len(calls),
                successes=len(ok),
                success_rate=len(ok) / len(calls),
                p50_ms=_percentile(lat, 0.5),
                p95_ms=_percentile(lat, 0.95),
                mean_ms=(sum(lat) / len(lat)) if lat else None,
            )
        )
    return stats


def sequences(
    conn: Any, agent_ids: Sequence[str], *, length: int = 2, min_count: int = 2, limit: int = 20
) -> list[ToolSequence]:
    """Runs of ``length`` consecutive successful calls in one session, seen at least ``min_count`` times."""
    by_session: dict[tuple[str, str], list[tuple[int, str, str]]] = defaultdict(list)
    for agent, session, tool, status, _duration, call_id in _recent(conn, agent_ids):
        by_session[(agent, session)].append((call_id, tool, status))
    counts: Counter[tuple[str, tuple[str, ...]]] = Counter()
    for (agent, _session), calls in by_session.items():
        calls.sort()
        run: list[str] = []
        for _id, tool, status in calls:
            if tool == USAGE_TOOL:  # the model's turns between tool calls do not break a run
                continue
            # A failure breaks the run: a pattern is what worked end to end.
            run = [*run, tool] if status == "ok" else []
            if len(run) >= length:
                counts[(agent, tuple(run[-length:]))] += 1
    found = [ToolSequence(agent_id=a, tools=t, count=c) for (a, t), c in counts.items() if c >= min_count]
    found.sort(key=lambda s: (-s.count, s.agent_id, s.tools))
    return found[:limit]


def usage_totals(conn: Any, agent_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Per agent and model: LLM calls, prompt and completion tokens, and the cost of the priced calls
    (``cost_usd`` null when none of them had a price), from the ``llm`` records; archived ones included."""
    out: list[dict[str, Any]] = []
    for agent in agent_ids:
        rows = conn.execute(
            "SELECT json_extract(args, '$.provider'), json_extract(args, '$.model'), count(*), "
            "sum(json_extract(args, '$.prompt_tokens')), sum(json_extract(args, '$.completion_tokens')), "
            "sum(json_extract(args, '$.cost_usd')) FROM tool_calls WHERE agent_id = ? AND tool = ? "
            "AND json_valid(args) GROUP BY 1, 2 ORDER BY 2",
            (agent, USAGE_TOOL),
        ).fetchall()
        for provider, model, calls, prompt, completion, cost in rows:
            out.append(
                {
                    "agent_id": agent,
                    "provider": provider,
                    "model": model,
                    "llm_calls": int(calls),
                    "prompt_tokens": int(prompt or 0),
                    "completion_tokens": int(completion or 0),
                    "cost_usd": None if cost is None else round(float(cost), 8),
                }
            )
    return out
