"""The read path: read-only WAL connections, one snapshot per query, read-your-writes, per-agent scopes.

A reader never writes (``mode=ro``); any number of reader processes run beside the one writer. Each query
method runs inside one read transaction, so a query made of several statements sees one consistent
snapshot. Every query takes the caller's ``scope`` (the agent ids it may read; ``None`` only for the
operator's CLI): asking for an agent outside it raises :class:`~openfang.protocol.errors.SecurityError`.

Read-your-writes: an ack carries the commit sequence number ``seq``; :meth:`MemoryReader.wait_for` returns
once this reader's snapshots include that commit (``meta.seq >= seq``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from openfang.memory import _db, episodic, procedural, semantic
from openfang.protocol.errors import MemoryStoreError, SecurityError, Timeout

Scope = Collection[str] | None


class MemoryReader:
    """A read-only view of the memory database at ``db_path``."""

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.db_path = os.fspath(db_path)
        self.conn = _db.open_reader(self.db_path)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> MemoryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def snapshot(self) -> Iterator[Any]:
        """One read transaction: every statement inside sees the same committed state."""
        try:
            self.conn.execute("BEGIN")
            # The snapshot is taken at the first read, so read right away to pin it here.
            self.conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        except _db.driver().DatabaseError as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise MemoryStoreError(f"{self.db_path}: cannot read: {exc}") from None
        try:
            yield self.conn
        except _db.driver().DatabaseError as exc:
            raise MemoryStoreError(f"{self.db_path}: query failed: {exc}") from None
        finally:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")

    def seq(self) -> int:
        """The commit sequence number of the newest snapshot available to this reader."""
        with self.snapshot() as conn:
            return int(conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])

    def wait_for(self, seq: int, timeout_s: float = 5.0) -> int:
        """Block until this reader sees commit ``seq`` (from an ack); returns the seq it sees."""
        deadline = time.monotonic() + timeout_s
        delay = 0.0005
        while (current := self.seq()) < seq:
            if time.monotonic() >= deadline:
                raise Timeout(
                    f"reader at {self.db_path} still at seq {current} after {timeout_s}s, waiting for {seq}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return current

    # -- scopes ------------------------------------------------------------------------------------------

    def _agents(self, conn: Any, scope: Scope, agents: str | Sequence[str] | None) -> list[str]:
        wanted = [agents] if isinstance(agents, str) else list(agents or [])
        if scope is None:
            if wanted:
                return wanted
            rows = conn.execute(
                "SELECT agent_id FROM episodes UNION SELECT agent_id FROM memories "
                "UNION SELECT agent_id FROM tool_calls"
            ).fetchall()
            return [r[0] for r in rows]
        if not wanted:
            return sorted(scope)
        outside = [a for a in wanted if a not in scope]
        if outside:
            raise SecurityError(f"memory: agent(s) {', '.join(sorted(outside))} outside the caller's scope")
        return wanted

    # -- episodic ----------------------------------------------------------------------------------------

    def history(
        self,
        *,
        scope: Scope,
        agent_id: str | Sequence[str],
        session: str | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> list[episodic.Episode]:
        """The latest ``limit`` messages (oldest first) of the agent(s), optionally of one session."""
        with self.snapshot() as conn:
            agents = self._agents(conn, scope, agent_id)
            found: list[episodic.Episode] = episodic.history(
                conn, agents, session=session, limit=limit, before=before
            )
            return found

    def search_episodes(
        self,
        query: str,
        *,
        scope: Scope,
        agent_ids: Sequence[str] | None = None,
        k: int = 10,
        session: str | None = None,
    ) -> list[episodic.Episode]:
        """Full-text search over messages (bm25), best first."""
        with self.snapshot() as conn:
            agents = self._agents(conn, scope, agent_ids)
            return episodic.search(conn, agents, query, k=k, session=session) if agents else []

    # -- semantic ----------------------------------------------------------------------------------------

    def recall(
        self,
        *,
        scope: Scope,
        agent_id: str | Sequence[str] | None = None,
        text: str | None = None,
        vector: bytes | None = None,
        embedder_id: str | None = None,
        k: int = 5,
        kind: str | None = None,
        since: float | None = None,
        now: float | None = None,
        candidates: int | None = None,
    ) -> list[semantic.Recalled]:
        """Hybrid (keyword + vector) recall over the agents' whole stores; see :mod:`.semantic`."""
        with self.snapshot() as conn:
            agents = self._agents(conn, scope, agent_id)
            if not agents:
                return []
            recalled: list[semantic.Recalled] = semantic.recall(
                conn,
                agents,
                text=text,
                vector=vector,
                embedder_id=embedder_id,
                k=k,
                kind=kind,
                since=since,
                now=now,
                candidates=candidates,
            )
            return recalled

    # -- procedural --------------------------------------------------------------------------------------

    def tool_calls(
        self,
        *,
        scope: Scope,
        agent_id: str | Sequence[str] | None = None,
        tool: str | None = None,
        limit: int = 100,
    ) -> list[procedural.ToolCall]:
        """The latest tool calls, newest first."""
        with self.snapshot() as conn:
            agents = self._agents(conn, scope, agent_id)
            return procedural.tool_calls(conn, agents, tool=tool, limit=limit) if agents else []

    def tool_stats(
        self, *, scope: Scope, agent_id: str | Sequence[str] | None = None
    ) -> list[procedural.ToolStat]:
        """Success rate and latency per tool per agent."""
        with self.snapshot() as conn:
            stats: list[procedural.ToolStat] = procedural.tool_stats(
                conn, self._agents(conn, scope, agent_id)
            )
            return stats

    def sequences(
        self,
        *,
        scope: Scope,
        agent_id: str | Sequence[str] | None = None,
        length: int = 2,
        min_count: int = 2,
    ) -> list[procedural.ToolSequence]:
        """Frequent runs of successful tool calls."""
        with self.snapshot() as conn:
            agents = self._agents(conn, scope, agent_id)
            seqs: list[procedural.ToolSequence] = procedural.sequences(
                conn, agents, length=length, min_count=min_count
            )
            return seqs

    def usage(self, *, scope: Scope, agent_id: str | Sequence[str] | None = None) -> list[dict[str, Any]]:
        """LLM token use (and cost where priced) per agent and model, from the ``llm`` procedural records."""
        with self.snapshot() as conn:
            agents = self._agents(conn, scope, agent_id)
            return procedural.usage_totals(conn, agents) if agents else []

    # -- operator ----------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Row counts, embedders, seq and file sizes (for ``openfang memory stats`` / ``status``)."""
        with self.snapshot() as conn:
            counts = {
                t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                for t in ("episodes", "memories", "tool_calls", "ledger")
            }
            archived = {
                t: int(conn.execute(f"SELECT count(*) FROM {t} WHERE archived = 1").fetchone()[0])
                for t in ("episodes", "memories", "tool_calls")
            }
            embedders = [
                {
                    "id": r[0],
                    "dim": r[1],
                    "vectors": int(conn.execute(f"SELECT count(*) FROM {r[2]}").fetchone()[0]),
                }
                for r in conn.execute("SELECT id, dim, vec_table FROM embedders ORDER BY id").fetchall()
            ]
            agents = int(
                conn.execute(
                    "SELECT count(*) FROM (SELECT agent_id FROM episodes UNION SELECT agent_id FROM memories "
                    "UNION SELECT agent_id FROM tool_calls)"
                ).fetchone()[0]
            )
            seq = int(conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])
        wal = self.db_path + "-wal"
        return {
            "seq": seq,
            "agents": agents,
            "counts": counts,
            "archived": archived,
            "embedders": embedders,
            "db_bytes": os.path.getsize(self.db_path),
            "wal_bytes": os.path.getsize(wal) if os.path.exists(wal) else 0,
        }
