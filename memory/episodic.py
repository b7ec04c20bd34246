"""Episodic memory: every message into and out of an agent (agent, session, role, text, time, tokens).

Write side (runs in the writer, inside the request's SAVEPOINT): :func:`apply_episode`. Read side (runs on a
reader's snapshot): :func:`history` and :func:`search` (FTS5, bm25). Scoping (which agents a caller may see)
is checked by the reader before these run; here ``agent_ids`` is already the allowed set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from openfang.memory._db import fts_query
from openfang.protocol.memory_writes import MemoryEpisode


@dataclass(frozen=True, slots=True, kw_only=True)
class Episode:
    """One message as stored."""

    id: int
    agent_id: str
    session: str
    role: str
    text: str
    ts: float
    tokens: int
    score: float | None = None


def apply_episode(conn: Any, body: MemoryEpisode, now: float) -> dict[str, Any]:
    """Insert one message; its FTS row follows through the FTS trigger."""
    tokens = body.tokens
    if tokens is None:
        tokens = len(body.text.split())  # a cheap estimate when the caller did not count
    cur = conn.execute(
        "INSERT INTO episodes(agent_id, session, role, text, ts, tokens) VALUES (?, ?, ?, ?, ?, ?)",
        (body.agent_id, body.session, body.role, body.text, body.ts or now, tokens),
    )
    return {"id": cur.lastrowid}


def _placeholders(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


def _row(row: Sequence[Any], score: float | None = None) -> Episode:
    return Episode(
        id=row[0],
        agent_id=row[1],
        session=row[2],
        role=row[3],
        text=row[4],
        ts=row[5],
        tokens=row[6],
        score=score,
    )


def history(
    conn: Any,
    agent_ids: Sequence[str],
    *,
    session: str | None = None,
    limit: int = 50,
    before: float | None = None,
) -> list[Episode]:
    """The latest ``limit`` messages of the agents (optionally one session), oldest first."""
    sql = (
        "SELECT id, agent_id, session, role, text, ts, tokens FROM episodes "
        f"WHERE archived = 0 AND agent_id IN ({_placeholders(agent_ids)})"
    )
    params: list[Any] = list(agent_ids)
    if session is not None:
        sql += " AND session = ?"
        params.append(session)
    if before is not None:
        sql += " AND ts < ?"
        params.append(before)
    sql += " ORDER BY ts DESC, id DESC LIMIT ?"
    params.append(int(limit))
    rows = conn.execute(sql, params).fetchall()
    return [_row(r) for r in reversed(rows)]


def search(
    conn: Any, agent_ids: Sequence[str], query: str, *, k: int = 10, session: str | None = None
) -> list[Episode]:
    """Messages matching ``query`` (any word, ranked by bm25), best first."""
    match = fts_query(query)
    if not match:
        return []
    # FROM fts CROSS JOIN: the FTS search runs once and drives the join (a plain JOIN re-ran it per row;
    # docs/memory.md, "The three memories").
    sql = (
        "SELECT e.id, e.agent_id, e.session, e.role, e.text, e.ts, e.tokens, bm25(episodes_fts) AS r "
        "FROM episodes_fts CROSS JOIN episodes e ON e.id = episodes_fts.rowid "
        f"WHERE episodes_fts MATCH ? AND e.archived = 0 AND e.agent_id IN ({_placeholders(agent_ids)})"
    )
    params: list[Any] = [match, *agent_ids]
    if session is not None:
        sql += " AND e.session = ?"
        params.append(session)
    sql += " ORDER BY r LIMIT ?"
    params.append(int(k))
    return [_row(r, score=-float(r[7])) for r in conn.execute(sql, params).fetchall()]
