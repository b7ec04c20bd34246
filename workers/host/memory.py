"""An agent host's memory: episodic and procedural recording from the loop, memory tools from tool threads.

Two paths, because a ZeroMQ client belongs to one thread at a time:

- the *loop* path (the worker's :class:`~openfang.memory.api.MemoryAPI`): every message into and out of an
  agent goes to episodic memory and every tool call to procedural memory through the pipelined
  ``record_*`` calls; :meth:`HostMemory.pump` collects their acks without waiting. The loop never blocks on
  the writer. Tool threads hand their tool-call records over through a queue the loop drains.
- the *tool* path (``memory_store`` / ``memory_recall`` run on the host's tool threads and wait for their
  answer): a second MemoryAPI (own client, own read-only connection, same embedder), one call at a time
  under a lock. The highest acknowledged ``seq`` is shared, so a recall waits until the reader sees every
  store this worker made before it (read-your-writes, whichever thread stored).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from openfang.protocol.errors import OpenFangError
from openfang.protocol.memory_writes import Role

if TYPE_CHECKING:  # imported where used: a worker of a cluster without memory never loads the memory client
    from openfang.memory.api import MemoryAPI

log = structlog.get_logger("openfang.workers.memory")
MAX_RECORD_TEXT = 65_536  # episodic entries are capped: a huge reply must not become a huge write


class HostMemory:
    """The memory side of one agent host (see the module docstring)."""

    def __init__(self, api: MemoryAPI, *, open_tool_api: Callable[[], MemoryAPI] | None = None) -> None:
        self.api = api
        self._open_tool_api = open_tool_api or self._default_tool_api
        self._tool_api: MemoryAPI | None = None
        self._lock = threading.Lock()
        self._tool_records: deque[dict[str, Any]] = deque()
        self.errors = 0

    def _default_tool_api(self) -> MemoryAPI:
        from openfang.memory.api import MemoryAPI
        from openfang.memory.client import MemoryClient, locations
        from openfang.memory.reader import MemoryReader

        endpoint, db_path = locations()
        return MemoryAPI(MemoryClient(endpoint), MemoryReader(db_path), self.api.embedder)

    # -- loop thread ---------------------------------------------------------------------------------------
    def record_message(self, agent_id: str, session: str, role: Role, text: str, tokens: int | None) -> None:
        """Episodic: one message in or out of an agent (pipelined)."""
        try:
            self.api.record_message(agent_id, session, role, text[:MAX_RECORD_TEXT], tokens)
        except OpenFangError as exc:
            self.errors += 1
            log.warning("memory_record_failed", agent_id=agent_id, error=str(exc))

    def note_tool_call(self, record: dict[str, Any]) -> None:
        """Procedural: a tool call finished (any thread); the loop submits it on its next pump."""
        self._tool_records.append(record)

    def pump(self) -> None:
        """Submit queued tool-call records and collect acks, without waiting (call every loop turn)."""
        while self._tool_records:
            r = self._tool_records.popleft()
            try:
                self.api.record_tool_call(
                    r["agent_id"],
                    r["tool"],
                    r["status"],
                    session=r.get("session") or "",
                    args=r.get("args"),
                    duration_ms=r.get("duration_ms"),
                    error=r.get("error"),
                )
            except OpenFangError as exc:
                self.errors += 1
                log.warning("memory_record_failed", agent_id=r["agent_id"], error=str(exc))
        try:
            for c in self.api.pump(0.0):
                if not c.ok:
                    self.errors += 1
                    log.warning("memory_write_refused", body=c.body)
        except OpenFangError as exc:
            self.errors += 1
            log.warning("memory_pump_failed", error=str(exc))

    def reclaim(self, agent_id: str, policy: str) -> None:
        """Retention of a killed agent's memories (keep / archive / purge), pipelined like the records."""
        if policy == "keep":
            return
        from openfang.memory.messages import RECLAIM  # (the memory API imported it: a cluster with memory)

        try:
            self.api.client.submit(RECLAIM, {"agent_id": agent_id, "policy": policy})
        except OpenFangError as exc:
            self.errors += 1
            log.warning("memory_reclaim_failed", agent_id=agent_id, error=str(exc))

    def close(self) -> None:
        with self._lock:
            if self._tool_api is not None:
                self._tool_api.close()
                self._tool_api = None

    # -- tool threads --------------------------------------------------------------------------------------
    def _with_tool_api(self, work: Callable[[MemoryAPI], Any]) -> Any:
        with self._lock:
            if self._tool_api is None:
                self._tool_api = self._open_tool_api()
            return work(self._tool_api)

    def store(self, agent_id: str, args: dict[str, Any]) -> dict[str, Any]:
        """``memory_store`` for ``agent_id`` (its own memory only)."""
        cb = self._with_tool_api(lambda api: api.host_callbacks()["memory_store"])
        return dict(self._with_tool_api(lambda api: cb(agent_id, args)))

    def forget(self, agent_id: str, args: dict[str, Any]) -> dict[str, Any]:
        """``memory_forget`` for ``agent_id``: only its own memories can be deleted (the writer checks)."""
        ack = self._with_tool_api(lambda api: api.memory_forget(agent_id, int(args["id"])))
        return {"id": int(args["id"]), "forgotten": bool(ack.get("deleted"))}

    def history(self, agent_id: str, args: dict[str, Any]) -> list[dict[str, Any]]:
        """``memory_history`` for ``agent_id``: its own messages only (read-your-writes included)."""

        def work(api: MemoryAPI) -> list[dict[str, Any]]:
            rows = api.memory_history(agent_id, args.get("session"), int(args.get("limit", 20)))
            return [{k: row.get(k) for k in ("role", "text", "session", "ts")} for row in rows]

        return list(self._with_tool_api(work))

    def recall(self, agent_id: str, args: dict[str, Any], owners: list[str]) -> list[dict[str, Any]]:
        """``memory_recall`` over ``owners`` (already permitted by layer 9; default: the agent itself)."""

        from openfang.memory._db import pack_vector

        def work(api: MemoryAPI) -> list[dict[str, Any]]:
            query = str(args["query"])
            vector = pack_vector(api.embedder.embed_queries([query])[0])
            api._catch_up()  # read-your-writes: this reader sees every store acknowledged to this worker
            found = api.reader.recall(
                scope={agent_id, *owners},
                agent_id=owners or agent_id,
                text=query,
                vector=vector,
                embedder_id=api.embedder.id,
                k=int(args.get("k", 5)),
                kind=args.get("kind"),
            )
            return [
                {
                    "id": r.id,
                    "agent_id": r.agent_id,
                    "text": r.text,
                    "kind": r.kind,
                    "tags": list(r.tags),
                    "score": r.score,
                    "created": r.created,
                    "importance": r.importance,
                }
                for r in found
            ]

        return list(self._with_tool_api(work))
