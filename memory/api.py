"""The memory API a worker's host functions call on behalf of an agent: thin over client, reader, embedder.

One :class:`MemoryAPI` per worker process (one ZeroMQ client, one read-only connection, one embedder).
Scopes: every call acts for ``agent_id``; reads cover that agent unless the caller passes a wider ``scope``
(the agent ids the security engine allows it to read), and an agent outside the scope is refused.
Read-your-writes: reads first wait until the reader's snapshot includes this API's latest acknowledged
write, and until pipelined writes (:meth:`record_message`, :meth:`record_tool_call`) are acknowledged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict
from typing import Any

from openfang.memory import messages
from openfang.memory._db import pack_vector
from openfang.memory.client import Completion, MemoryClient, locations, store_body
from openfang.memory.embed import Embedder, best_available
from openfang.memory.reader import MemoryReader
from openfang.protocol.errors import ProtocolError
from openfang.protocol.memory_writes import (
    MemoryEpisode,
    MemoryForget,
    MemoryToolCall,
    ReclaimPolicy,
    Role,
    ToolStatus,
)


class MemoryAPI:
    """Agent-facing memory operations; see the module docstring for scope and consistency rules."""

    def __init__(
        self,
        client: MemoryClient,
        reader: MemoryReader,
        embedder: Embedder | None = None,
        *,
        read_timeout_s: float = 10.0,
    ) -> None:
        self.client = client
        self.reader = reader
        self.embedder = embedder or best_available()
        self.read_timeout_s = read_timeout_s
        self._seen_seq = 0
        self._completions: list[Completion] = []

    @classmethod
    def open(
        cls, endpoint: str, db_path: str | os.PathLike[str], embedder: Embedder | None = None
    ) -> MemoryAPI:
        """Connect to the writer at ``endpoint`` and open a reader on ``db_path``."""
        return cls(MemoryClient(endpoint), MemoryReader(db_path), embedder)

    @classmethod
    def from_env(cls, embedder: Embedder | None = None) -> MemoryAPI:
        """Connect where this cluster's writer listens (:func:`~openfang.memory.client.locations`)."""
        endpoint, db_path = locations()
        return cls.open(endpoint, db_path, embedder)

    def close(self) -> None:
        self.client.close()
        self.reader.close()

    # -- writes ------------------------------------------------------------------------------------------

    def memory_store(
        self,
        agent_id: str,
        text: str,
        kind: str = "fact",
        importance: float = 0.5,
        ttl: float | None = None,
        tags: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Embed ``text`` here (never in the writer) and store it; returns the ack ``{id, seq}``."""
        vector = self.embedder.embed([text])[0]
        body = store_body(agent_id, text, kind, importance, ttl, self.embedder.id, vector, tags)
        return self._ack(self.client.call(messages.STORE, body))

    def memory_forget(self, agent_id: str, memory_id: int) -> dict[str, Any]:
        """Delete one of ``agent_id``'s own memories (another's id: nothing); ``{deleted, seq}``."""
        return self._ack(self.client.call(messages.FORGET, MemoryForget(agent_id=agent_id, id=memory_id)))

    def record_message(
        self, agent_id: str, session: str, role: Role, text: str, tokens: int | None = None
    ) -> str:
        """Pipelined: submit one message to episodic memory; the ack arrives through :meth:`pump`."""
        body = MemoryEpisode(agent_id=agent_id, session=session, role=role, text=text, tokens=tokens)
        return str(self.client.submit(messages.EPISODE, body))

    def record_tool_call(
        self,
        agent_id: str,
        tool: str,
        status: ToolStatus,
        *,
        session: str = "",
        args: Any = None,
        duration_ms: float | None = None,
        error: str | None = None,
    ) -> str:
        """Pipelined: submit one tool call to procedural memory."""
        body = MemoryToolCall(
            agent_id=agent_id,
            tool=tool,
            status=status,
            session=session or None,
            args=args,
            duration_ms=duration_ms,
            error=error,
        )
        return str(self.client.submit(messages.TOOL_CALL, body))

    def pump(self, timeout_s: float = 0.0) -> list[Completion]:
        """Acks (and errors) of pipelined writes; the worker calls this from its loop."""
        for c in self.client.poll(timeout_s):
            self._note(c)
        out, self._completions = self._completions, []
        return out

    def reclaim(self, agent_id: str, policy: ReclaimPolicy) -> dict[str, Any]:
        """Retention when the agent is reclaimed: ``keep``, ``archive`` or ``purge``."""
        return self._ack(self.client.reclaim(agent_id, policy))

    # -- reads -------------------------------------------------------------------------------------------

    def memory_recall(
        self,
        agent_id: str,
        query: str,
        k: int = 5,
        kind: str | None = None,
        since: float | None = None,
        *,
        scope: Collection[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Hybrid recall (keyword + this embedder's vectors) over the agent's whole store, best first."""
        if not query.strip():
            raise ProtocolError("memory_recall: query is empty")
        vector = self.embedder.embed_queries([query])[0]
        self._catch_up()
        found = self.reader.recall(
            scope=self._scope(agent_id, scope),
            agent_id=agent_id,
            text=query,
            vector=pack_vector(vector),
            embedder_id=self.embedder.id,
            k=k,
            kind=kind,
            since=since,
        )
        return [asdict(r) for r in found]

    def memory_history(
        self,
        agent_id: str,
        session: str | None = None,
        limit: int = 50,
        *,
        scope: Collection[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The agent's latest messages, oldest first."""
        self._catch_up()
        rows = self.reader.history(
            scope=self._scope(agent_id, scope), agent_id=agent_id, session=session, limit=limit
        )
        return [asdict(e) for e in rows]

    def tool_calls(
        self, agent_id: str, limit: int = 50, *, scope: Collection[str] | None = None
    ) -> list[dict[str, Any]]:
        """The agent's latest tool calls, newest first."""
        self._catch_up()
        rows = self.reader.tool_calls(scope=self._scope(agent_id, scope), agent_id=agent_id, limit=limit)
        return [asdict(c) for c in rows]

    def patterns(self, agent_id: str, *, scope: Collection[str] | None = None) -> dict[str, Any]:
        """Derived procedural knowledge: per-tool success rate and latency, frequent successful sequences."""
        self._catch_up()
        allowed = self._scope(agent_id, scope)
        return {
            "tools": [asdict(s) for s in self.reader.tool_stats(scope=allowed, agent_id=agent_id)],
            "sequences": [asdict(s) for s in self.reader.sequences(scope=allowed, agent_id=agent_id)],
        }

    # -- tool callbacks --------------------------------------------------------------------------------

    def host_callbacks(self) -> dict[str, Callable[[str, dict[str, Any]], Any]]:
        """``memory_store`` / ``memory_recall`` callbacks in the shape of the workers' ToolContext
        (``callback(agent_id, args)``, args already checked against the tool's JSON schema)."""

        def store(agent_id: str, args: dict[str, Any]) -> dict[str, Any]:
            ack = self.memory_store(
                agent_id,
                str(args["text"]),
                kind=str(args.get("kind") or "note"),
                importance=float(args.get("importance", 0.5)),
                tags=args.get("tags") or None,
            )
            return {"id": ack["id"]}

        def recall(agent_id: str, args: dict[str, Any]) -> list[dict[str, Any]]:
            hits = self.memory_recall(
                agent_id, str(args["query"]), k=int(args.get("k", 5)), kind=args.get("kind")
            )
            keys = ("id", "text", "kind", "tags", "score", "created", "importance")
            return [{k: (list(h[k]) if k == "tags" else h[k]) for k in keys} for h in hits]

        return {"memory_store": store, "memory_recall": recall}

    # -- plumbing ----------------------------------------------------------------------------------------

    @staticmethod
    def _scope(agent_id: str, scope: Collection[str] | None) -> Collection[str]:
        return {agent_id} if scope is None else {agent_id, *scope}

    def _note(self, c: Completion) -> None:
        if c.ok:
            self._seen_seq = max(self._seen_seq, int(c.body.get("seq", 0)))
        self._completions.append(c)

    def _ack(self, body: dict[str, Any]) -> dict[str, Any]:
        self._seen_seq = max(self._seen_seq, int(body.get("seq", 0)))
        return body

    def _catch_up(self) -> None:
        if self.client.in_flight:
            for c in self.client.wait_all(self.read_timeout_s):
                self._note(c)
        if self._seen_seq:
            self.reader.wait_for(self._seen_seq, self.read_timeout_s)
