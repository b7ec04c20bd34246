"""Answers to the client-facing memory requests of the protocol catalogue, read straight from the database.

``memory.search``, ``memory.history`` and ``memory.stats`` (``openfang.protocol.messages``) are read-only,
so whoever receives them (the control gateway, or ``openfang memory ...``) answers them here from a
:class:`~openfang.memory.reader.MemoryReader`, never through the writer. Replies use the catalogue's body
shapes (``MemorySearchOk``, ``MemoryHistoryOk``, ``MemoryStatsOk``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from openfang.memory._db import driver, pack_vector
from openfang.memory.embed import Embedder, best_available
from openfang.memory.reader import MemoryReader
from openfang.protocol import messages as catalogue
from openfang.protocol.bodies import MemoryHistory, MemorySearch, MemoryStats
from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import ProtocolError

SEARCH, HISTORY, STATS = "memory.search", "memory.history", "memory.stats"


class MemoryService:
    """One reader + one embedder answering catalogue requests; ``scope`` limits the agents it may show."""

    def __init__(self, reader: MemoryReader, embedder: Embedder | None = None) -> None:
        self.reader = reader
        self.embedder = embedder or best_available()
        # Requests by type: the catalogue's body class (messages.parse types the body), and the handler.
        self._dispatch: dict[str, tuple[type[Any], Callable[[Any, Collection[str] | None], dict[str, Any]]]]
        self._dispatch = {
            SEARCH: (MemorySearch, self.search),
            HISTORY: (MemoryHistory, self.history),
            STATS: (MemoryStats, lambda body, _scope: self.stats(body)),
        }

    def answer(
        self, msg_type: str, body: Mapping[str, Any], scope: Collection[str] | None = None
    ) -> dict[str, Any]:
        """The ``.ok`` body for one request, its body typed by the catalogue; raises OpenFangError."""
        entry = self._dispatch.get(msg_type)
        if entry is None:
            raise ProtocolError(f"type: {msg_type!r} is not a memory read request")
        body_class, handler = entry
        return handler(catalogue.parse(Envelope(type=msg_type, body=dict(body)), body_class), scope)

    def search(self, body: MemorySearch, scope: Collection[str] | None) -> dict[str, Any]:
        """Memories matching ``query``: hybrid (default), keyword-only or vector-only."""
        query, mode, limit = body.query, body.mode, body.limit
        vector = None
        if mode in ("hybrid", "vector"):
            vector = pack_vector(self.embedder.embed_queries([query])[0])
        found = self.reader.recall(
            scope=scope,
            agent_id=body.agent_id,
            text=query if mode in ("hybrid", "keyword") else None,
            vector=vector,
            embedder_id=self.embedder.id,
            k=limit,
            kind=body.kind,
        )
        hits = [
            {
                "id": m.id,
                "agent_id": m.agent_id,
                "text": m.text,
                "score": m.score,
                "similarity": m.similarity,
                "keyword_rank": m.keyword_rank,
                "vector_rank": m.vector_rank,
                "kind": m.kind,
                "time": m.created,
            }
            for m in found
        ]
        return {"hits": hits}

    def history(self, body: MemoryHistory, scope: Collection[str] | None) -> dict[str, Any]:
        """An agent's messages, newest first (``before`` pages back)."""
        rows = self.reader.history(
            scope=scope, agent_id=body.agent_id, session=body.session, limit=body.limit, before=body.before
        )
        entries = [
            {"role": e.role, "text": e.text, "time": e.ts, "session": e.session, "tokens": e.tokens}
            for e in reversed(rows)
        ]
        return {"messages": entries}

    def stats(self, body: MemoryStats) -> dict[str, Any]:
        """Row counts of the whole store, its file size, and the embedder and SQLite driver active here."""
        s = self.reader.stats()
        counts = {**s["counts"], "agents": s["agents"], "seq": s["seq"]}
        return {
            "counts": counts,
            "db_bytes": s["db_bytes"] + s["wal_bytes"],
            "embedder": self.embedder.id,
            "sqlite": driver().summary(),
        }
