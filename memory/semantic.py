"""Semantic memory: what agents chose to remember, with embeddings, keyword and vector recall.

- Every memory row names the embedder of its vector. Each embedder gets its own vec0 table
  (``embedders.vec_table``), so vectors from different embedders (different spaces, maybe different
  dimensions) are never compared; a query vector only searches the table of its own embedder.
- vec0 layout: ``agent_id`` is a partition key (a KNN over one agent's store touches only that agent's
  chunks; ``chunk_size=64`` keeps the per-agent preallocation small), ``kind`` and ``created`` are metadata
  columns, so the agent / kind / time filters run inside the KNN, not after it.
- Hybrid recall is one statement: FTS5 (bm25) and KNN candidate lists fused by reciprocal rank,
  ``sum(1 / (60 + rank))``, plus small importance and recency terms (see :data:`RRF_K`, weights below).
  The FTS side is written ``FROM memories_fts CROSS JOIN memories`` so the FTS search runs once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from openfang.memory._db import fts_query
from openfang.protocol.errors import ProtocolError
from openfang.protocol.memory_writes import MemoryStore

RRF_K = 60
IMPORTANCE_WEIGHT = 0.5  # in units of one top rank (1 / (RRF_K + 1)): importance 1.0 adds half a top rank
RECENCY_WEIGHT = 0.3  # likewise, for a memory created just now; decays with RECENCY_HALF_LIFE_S
RECENCY_HALF_LIFE_S = 7 * 86400.0
VEC_CHUNK_SIZE = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class Recalled:
    """One recalled memory with its fused score and the ranks it came in at (None: not in that list)."""

    id: int
    agent_id: str
    kind: str
    text: str
    importance: float
    created: float
    score: float
    keyword_rank: int | None
    vector_rank: int | None
    tags: tuple[str, ...] = ()
    similarity: float | None = None  # cosine similarity of the vector match (None: not a vector hit)


def ensure_embedder(conn: Any, embedder_id: str, dim: int, now: float) -> str:
    """The vec0 table of ``embedder_id``, created on first use; a dimension mismatch is refused."""
    row = conn.execute("SELECT dim, vec_table FROM embedders WHERE id = ?", (embedder_id,)).fetchone()
    if row is not None:
        if int(row[0]) != dim:
            raise ProtocolError(f"body.vector: embedder {embedder_id!r} has dimension {row[0]}, got {dim}")
        return str(row[1])
    (count,) = conn.execute("SELECT count(*) FROM embedders").fetchone()
    table = f"vec_{int(count) + 1}"
    conn.execute(
        f"CREATE VIRTUAL TABLE {table} USING vec0(agent_id TEXT PARTITION KEY, kind TEXT, created FLOAT, "
        f"embedding FLOAT[{int(dim)}] distance_metric=cosine, chunk_size={VEC_CHUNK_SIZE})"
    )
    conn.execute(
        "INSERT INTO embedders(id, dim, vec_table, created) VALUES (?, ?, ?, ?)",
        (embedder_id, dim, table, now),
    )
    return table


def vec_table(conn: Any, embedder_id: str) -> tuple[str, int] | None:
    """(table, dim) of a known embedder, else None."""
    row = conn.execute("SELECT vec_table, dim FROM embedders WHERE id = ?", (embedder_id,)).fetchone()
    return None if row is None else (str(row[0]), int(row[1]))


def apply_store(conn: Any, body: MemoryStore, now: float) -> dict[str, Any]:
    """Insert one memory (and its vector, when the client sent one) in the current savepoint."""
    cur = conn.execute(
        "INSERT INTO memories(agent_id, kind, text, importance, created, expires, embedder, tags) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            body.agent_id,
            body.kind,
            body.text,
            body.importance,
            now,
            None if body.ttl_s is None else now + body.ttl_s,
            body.embedder,
            json.dumps(body.tags) if body.tags else None,
        ),
    )
    mem_id = int(cur.lastrowid)
    if body.embedder is not None and body.vector is not None:  # both or neither (MemoryStore's check)
        table = ensure_embedder(conn, body.embedder, len(body.vector) // 4, now)
        conn.execute(
            f"INSERT INTO {table}(rowid, agent_id, kind, created, embedding) VALUES (?, ?, ?, ?, ?)",
            (mem_id, body.agent_id, body.kind, now, body.vector),
        )
    return {"id": mem_id}


def delete_memories(conn: Any, where: str, params: Sequence[Any]) -> int:
    """Delete the memories matching ``where`` (and their vectors); returns how many."""
    rows = conn.execute(f"SELECT id, embedder FROM memories WHERE {where}", params).fetchall()
    _drop_vectors(conn, rows)
    conn.execute(f"DELETE FROM memories WHERE {where}", params)
    return len(rows)


def archive_memories(conn: Any, agent_id: str) -> int:
    """Mark an agent's memories archived (kept for export, never recalled) and drop their vectors."""
    rows = conn.execute(
        "SELECT id, embedder FROM memories WHERE agent_id = ? AND archived = 0", (agent_id,)
    ).fetchall()
    _drop_vectors(conn, rows)
    conn.execute("UPDATE memories SET archived = 1 WHERE agent_id = ? AND archived = 0", (agent_id,))
    return len(rows)


def _drop_vectors(conn: Any, rows: Sequence[Sequence[Any]]) -> None:
    tables = dict(conn.execute("SELECT id, vec_table FROM embedders").fetchall())
    for mem_id, embedder in rows:
        if embedder is not None and embedder in tables:
            conn.execute(f"DELETE FROM {tables[embedder]} WHERE rowid = ?", (mem_id,))


def recall(
    conn: Any,
    agent_ids: Sequence[str],
    *,
    text: str | None = None,
    vector: bytes | None = None,
    embedder_id: str | None = None,
    k: int = 5,
    kind: str | None = None,
    since: float | None = None,
    now: float | None = None,
    candidates: int | None = None,
) -> list[Recalled]:
    """Hybrid recall over the agents' stores: keyword (when ``text``) and vector (when ``vector``) fused.

    Either side may be absent (keyword-only with the fallback embedder's vectors from another space, or
    vector-only). Filters ``kind`` and ``since`` (created at or after) apply on both sides.
    """
    now = time.time() if now is None else now
    n = max(candidates or 4 * k, k)
    ctes: list[str] = []
    params: list[Any] = []
    agents_ph = ",".join("?" * len(agent_ids))
    match = fts_query(text) if text else ""
    if match:
        sql = (
            "fts AS (SELECT m.id AS id, row_number() OVER (ORDER BY bm25(memories_fts)) AS r "
            "FROM memories_fts CROSS JOIN memories m ON m.id = memories_fts.rowid "
            f"WHERE memories_fts MATCH ? AND m.archived = 0 AND m.agent_id IN ({agents_ph})"
        )
        params += [match, *agent_ids]
        if kind is not None:
            sql += " AND m.kind = ?"
            params.append(kind)
        if since is not None:
            sql += " AND m.created >= ?"
            params.append(float(since))
        ctes.append(sql + " ORDER BY bm25(memories_fts) LIMIT ?)")
        params.append(n)
    known = vec_table(conn, embedder_id) if (vector is not None and embedder_id) else None
    if known is not None and vector is not None:
        table, dim = known
        if len(vector) // 4 != dim:
            raise ProtocolError(
                f"query vector has dimension {len(vector) // 4}, embedder {embedder_id!r} uses {dim}"
            )
        sql = (
            "vec AS (SELECT rowid AS id, row_number() OVER (ORDER BY distance) AS r, distance AS d "
            f"FROM {table} WHERE embedding MATCH ? AND k = ? AND agent_id IN ({agents_ph})"
        )
        params += [vector, n, *agent_ids]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        if since is not None:
            sql += " AND created >= ?"
            params.append(float(since))
        ctes.append(sql + ")")
    if not ctes:
        return []
    names = [c.split(" ", 1)[0] for c in ctes]
    dist = {"fts": "NULL", "vec": "d"}
    union = " UNION ALL ".join(f"SELECT id, r, {dist[nm]} AS d, '{nm}' AS src FROM {nm}" for nm in names)
    top = 1.0 / (RRF_K + 1)
    sql = (
        "WITH " + ", ".join(ctes) + ", "
        f"fused AS (SELECT id, sum(1.0 / ({RRF_K} + r)) AS rrf, "
        "max(CASE WHEN src = 'fts' THEN r END) AS kr, max(CASE WHEN src = 'vec' THEN r END) AS vr, "
        "min(d) AS vd "
        f"FROM ({union}) GROUP BY id) "
        "SELECT m.id, m.agent_id, m.kind, m.text, m.importance, m.created, fused.kr, fused.vr, m.tags, "
        f"fused.rrf + {top} * (? * m.importance + ? * exp(-max(0.0, ? - m.created) * {math.log(2)} / ?)) "
        "AS score, fused.vd FROM fused JOIN memories m ON m.id = fused.id WHERE m.archived = 0 "
        "ORDER BY score DESC LIMIT ?"
    )
    params += [IMPORTANCE_WEIGHT, RECENCY_WEIGHT, now, RECENCY_HALF_LIFE_S, int(k)]
    return [
        Recalled(
            id=r[0],
            agent_id=r[1],
            kind=r[2],
            text=r[3],
            importance=r[4],
            created=r[5],
            keyword_rank=r[6],
            vector_rank=r[7],
            tags=tuple(json.loads(r[8])) if r[8] else (),
            score=float(r[9]),
            similarity=None if r[10] is None else round(1.0 - float(r[10]), 6),
        )
        for r in conn.execute(sql, params).fetchall()
    ]
