"""Applying a group of requests in one transaction: the writer's commit path.

Invariants (the lose-nothing protocol, see docs/memory.md):
- One transaction per group; one SAVEPOINT per request, so a request that fails rolls back alone and gets
  an error reply while the rest of the group commits.
- A request id is applied at most once: the ledger row is written in the request's savepoint, and a
  request whose id is already in the ledger gets the stored ack back (``dup: true``) without re-applying.
- Replies are only *built* here; the writer sends them after COMMIT returned. If COMMIT fails, every
  request of the group gets an error and nothing is in the ledger, so the client's resend applies it.
- ``meta.seq`` rises by one per committed group that changed something; acks carry it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgpack
import structlog

from openfang.memory import _db, episodic, messages, procedural, semantic
from openfang.protocol import messages as catalogue
from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import MemoryStoreError, OpenFangError, ProtocolError
from openfang.protocol.memory_writes import (
    MemoryCompact,
    MemoryEpisode,
    MemoryForget,
    MemoryReclaim,
    MemoryStore,
    MemoryToolCall,
    MemoryWrite,
)

log = structlog.get_logger("openfang.memory.apply")


COMPACT_BATCH = 5000
# A request's handler: (its typed body, the group's clock) -> the ack body (without seq).
Handler = Callable[[Any, float], dict[str, Any]]


class _TransactionLost(Exception):
    """SQLite rolled the whole transaction back (e.g. disk full): the group cannot commit."""


class Applier:
    """Owns the writer connection's transactions; one instance per writer process."""

    def __init__(
        self,
        conn: Any,
        *,
        episode_ttl_s: float | None = None,
        ledger_ttl_s: float = 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.conn = conn
        self.episode_ttl_s = episode_ttl_s
        self.ledger_ttl_s = ledger_ttl_s
        self.clock = clock
        self.seq = int(conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])
        # Requests by type: the body class from the catalogue (messages.parse types the body inside the
        # request's savepoint, so a bad body fails alone with bad_request), and the handler.
        self._handlers: dict[str, tuple[type[Any], Handler]] = {
            messages.EPISODE: (MemoryEpisode, lambda b, now: episodic.apply_episode(conn, b, now)),
            messages.STORE: (MemoryStore, lambda b, now: semantic.apply_store(conn, b, now)),
            messages.TOOL_CALL: (MemoryToolCall, lambda b, now: procedural.apply_tool_call(conn, b, now)),
            messages.FORGET: (MemoryForget, self._forget),
            messages.RECLAIM: (MemoryReclaim, self._reclaim),
            messages.COMPACT: (MemoryCompact, lambda b, now: {"counts": self.compact(b.now or now)}),
            messages.WRITE: (MemoryWrite, self._write),
        }

    # -- groups -------------------------------------------------------------------------------------

    def apply_group(self, requests: list[Envelope]) -> list[Envelope]:
        """Apply ``requests`` in one transaction; returns one reply per request, in order, after COMMIT."""
        now = self.clock()
        seq = self.seq + 1
        replies: list[Envelope] = []
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            for env in requests:
                replies.append(self._one(env, seq, now))
            changed = any(not r.is_error and not r.body.get("dup") for r in replies)
            if changed:
                self.conn.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (seq,))
            self.conn.execute("COMMIT")
        except (_db.driver().DatabaseError, _TransactionLost) as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            log.error("group_commit_failed", size=len(requests), error=str(exc))
            err = MemoryStoreError(f"commit failed, nothing of this request was stored: {exc}")
            return [env.error(err) for env in requests]
        if changed:
            self.seq = seq
        return replies

    def compact_now(self) -> dict[str, int]:
        """Run TTL compaction in its own transaction (the writer's timer); bumps seq if it removed rows."""
        now = self.clock()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            counts = self.compact(now)
            if any(counts.values()):
                self.conn.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (self.seq + 1,))
            self.conn.execute("COMMIT")
        except _db.driver().DatabaseError as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise MemoryStoreError(f"compaction failed: {exc}") from None
        if any(counts.values()):
            self.seq += 1
        return counts

    # -- one request --------------------------------------------------------------------------------

    def _one(self, env: Envelope, seq: int, now: float) -> Envelope:
        conn = self.conn
        conn.execute("SAVEPOINT req")
        try:
            row = conn.execute("SELECT result FROM ledger WHERE req_id = ?", (env.id,)).fetchone()
            if row is not None:
                body = msgpack.unpackb(row[0], raw=False)
                body["dup"] = True
                conn.execute("RELEASE req")
                return env.reply(body)
            entry = self._handlers.get(env.type)
            if entry is None:
                raise ProtocolError(f"type: {env.type!r} is not a memory write request")
            body_class, handler = entry
            result = handler(catalogue.parse(env, body_class), now)
            result["seq"] = seq
            conn.execute(
                "INSERT INTO ledger(req_id, type, seq, result, ts) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(req_id) DO NOTHING",
                (env.id, env.type, seq, msgpack.packb(result, use_bin_type=True), now),
            )
            conn.execute("RELEASE req")
            return env.reply(result)
        except (OpenFangError, _db.driver().DatabaseError) as exc:
            if not conn.in_transaction:
                raise _TransactionLost(str(exc)) from None
            conn.execute("ROLLBACK TO req")
            conn.execute("RELEASE req")
            err = exc if isinstance(exc, OpenFangError) else MemoryStoreError(f"{env.type}: {exc}")
            log.warning("request_failed", type=env.type, req_id=env.id, code=err.code, error=err.message)
            return env.error(err)
        except Exception as exc:
            # A bug tripped by one request must not crash the writer: its client would resend it to every
            # restarted writer, forever. It fails alone, like any poison request, and is logged loudly.
            log.exception("request_crashed", type=env.type, req_id=env.id)
            if not conn.in_transaction:
                raise _TransactionLost(repr(exc)) from None
            conn.execute("ROLLBACK TO req")
            conn.execute("RELEASE req")
            return env.error(MemoryStoreError(f"{env.type}: internal error ({type(exc).__name__}: {exc})"))

    def _write(self, body: MemoryWrite, now: float) -> dict[str, Any]:
        # All-or-nothing: the ops share the request's savepoint; an error in any rolls back all. Each op's
        # body was typed with the batch (a tagged union: its type picks its body class).
        results = []
        for i, op in enumerate(body.ops):
            try:
                results.append(self._handlers[op.type][1](op.body, now))
            except OpenFangError as exc:
                raise type(exc)(f"ops[{i}]: {exc.message}") from None
        return {"results": results}

    def _forget(self, body: MemoryForget, now: float) -> dict[str, Any]:
        deleted = semantic.delete_memories(
            conn=self.conn, where="id = ? AND agent_id = ?", params=(body.id, body.agent_id)
        )
        return {"deleted": deleted}

    def _reclaim(self, body: MemoryReclaim, now: float) -> dict[str, Any]:
        """Retention when an agent's memory is reclaimed: keep it, archive it (kept, hidden) or purge it."""
        agent, policy = body.agent_id, body.policy
        counts = {"episodes": 0, "memories": 0, "tool_calls": 0}
        if policy == "archive":
            for table in ("episodes", "tool_calls"):
                counts[table] = self.conn.execute(
                    f"UPDATE {table} SET archived = 1 WHERE agent_id = ? AND archived = 0", (agent,)
                ).rowcount
            counts["memories"] = semantic.archive_memories(self.conn, agent)
        elif policy == "purge":
            for table in ("episodes", "tool_calls"):
                counts[table] = self.conn.execute(
                    f"DELETE FROM {table} WHERE agent_id = ?", (agent,)
                ).rowcount
            counts["memories"] = semantic.delete_memories(self.conn, "agent_id = ?", (agent,))
        return {"policy": policy, "counts": counts}

    def compact(self, now: float) -> dict[str, int]:
        """TTL compaction inside the current transaction: expired memories, old episodes, old ledger rows.

        At most ``COMPACT_BATCH`` rows per table per run, so a mass expiry never holds one long transaction
        in front of the acks; the writer runs compaction again at once while a run comes back full.
        """
        lim = COMPACT_BATCH
        counts = {
            "memories": semantic.delete_memories(
                self.conn,
                "id IN (SELECT id FROM memories WHERE expires IS NOT NULL AND expires <= ? LIMIT ?)",
                (now, lim),
            )
        }
        if self.episode_ttl_s is not None:
            cutoff = now - self.episode_ttl_s
            for table in ("episodes", "tool_calls"):
                counts[table] = self.conn.execute(
                    f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE ts < ? LIMIT ?)",
                    (cutoff, lim),
                ).rowcount
        # Ledger rows only need to outlive any client's resend window.
        counts["ledger"] = self.conn.execute(
            "DELETE FROM ledger WHERE req_id IN (SELECT req_id FROM ledger WHERE ts < ? LIMIT ?)",
            (now - self.ledger_ttl_s, lim),
        ).rowcount
        return counts
