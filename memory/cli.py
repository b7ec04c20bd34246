"""What the ``openfang memory ...`` verbs call. Each function takes explicit paths / endpoints.

Reads (search, history, stats, export) open the database read-only and may run beside a live writer.
``store`` and ``import_jsonl`` go *through* the writer (it stays the only writer). Import is idempotent:
given the database the writer writes, a record whose row is already there (same table, agent and content,
see :func:`_natural_key`) is skipped, as many times as it is there, so importing an export back into its
own database, or the same file twice, changes nothing; without the database, request ids derived from
each record still make a re-import within the writer's ledger window (a day) a no-op. ``migrate`` runs the
schema migrations (with no writer running, or before starting one).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import IO, Any

from openfang.memory import _db, messages, schema
from openfang.memory._db import pack_vector
from openfang.memory.client import MemoryClient, store_body
from openfang.memory.embed import Embedder, active_embedder_info, best_available
from openfang.memory.reader import MemoryReader
from openfang.protocol.errors import ProtocolError

EXPORT_VERSION = 1


def migrate(db_path: str | os.PathLike[str]) -> list[str]:
    """Create / upgrade the database; returns the migrations applied now."""
    applied: list[str] = schema.migrate(db_path)
    return applied


def search(
    db_path: str | os.PathLike[str],
    query: str,
    *,
    agent: str | None = None,
    k: int = 10,
    embedder: Embedder | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Memories (hybrid recall) and messages (full text) matching ``query``, for one agent or all."""
    embedder = embedder or best_available()
    vector = pack_vector(embedder.embed_queries([query])[0])
    with MemoryReader(db_path) as reader:
        memories = reader.recall(
            scope=None, agent_id=agent, text=query, vector=vector, embedder_id=embedder.id, k=k
        )
        episodes = reader.search_episodes(query, scope=None, agent_ids=[agent] if agent else None, k=k)
    return {"memories": [asdict(m) for m in memories], "episodes": [asdict(e) for e in episodes]}


def history(
    db_path: str | os.PathLike[str], agent: str, *, session: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """An agent's latest messages, oldest first."""
    with MemoryReader(db_path) as reader:
        return [asdict(e) for e in reader.history(scope=None, agent_id=agent, session=session, limit=limit)]


def stats(db_path: str | os.PathLike[str], *, embedder: Embedder | None = None) -> dict[str, Any]:
    """Counts, embedders, seq, file sizes, and the embedder active on this machine."""
    with MemoryReader(db_path) as reader:
        out: dict[str, Any] = reader.stats()
    out["active_embedder"] = embedder.describe() if embedder is not None else active_embedder_info()
    out["sqlite"] = _db.driver().describe()
    return out


def _export_rows(conn: Any, agent: str | None) -> Iterable[dict[str, Any]]:
    where, params = ("WHERE agent_id = ?", [agent]) if agent else ("", [])
    cols = "id, agent_id, session, role, text, ts, tokens, archived"
    for row in conn.execute(f"SELECT {cols} FROM episodes {where} ORDER BY id", params):
        yield {"table": "episodes", **dict(zip(cols.split(", "), row, strict=True))}
    cols = "id, agent_id, session, tool, args, status, duration_ms, error, ts, archived"
    for row in conn.execute(f"SELECT {cols} FROM tool_calls {where} ORDER BY id", params):
        rec = dict(zip(cols.split(", "), row, strict=True))
        rec["args"] = json.loads(rec["args"]) if rec["args"] else None
        yield {"table": "tool_calls", **rec}
    tables = dict(conn.execute("SELECT id, vec_table FROM embedders").fetchall())
    cols = "id, agent_id, kind, text, importance, created, expires, embedder, archived, tags"
    for row in conn.execute(f"SELECT {cols} FROM memories {where} ORDER BY id", params).fetchall():
        rec = dict(zip(cols.split(", "), row, strict=True))
        rec["tags"] = json.loads(rec["tags"]) if rec["tags"] else []
        table = tables.get(rec["embedder"])
        vec = None
        if table is not None:
            hit = conn.execute(f"SELECT embedding FROM {table} WHERE rowid = ?", (rec["id"],)).fetchone()
            vec = None if hit is None else base64.b64encode(hit[0]).decode()
        yield {"table": "memories", **rec, "vector": vec}


def export(db_path: str | os.PathLike[str], stream: IO[str], *, agent: str | None = None) -> int:
    """Write every row (of one agent, or all) as JSON lines, from one snapshot; returns the rows written."""
    n = 0
    with MemoryReader(db_path) as reader, reader.snapshot() as conn:
        stream.write(json.dumps({"openfang_memory_export": EXPORT_VERSION}) + "\n")
        for rec in _export_rows(conn, agent):
            stream.write(json.dumps(rec, sort_keys=True) + "\n")
            n += 1
    return n


def _request_for(rec: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    table = rec.get("table")
    if table == "episodes":
        keys: tuple[str, ...] = ("agent_id", "session", "role", "text", "ts", "tokens")
        return messages.EPISODE, {k: rec[k] for k in keys if rec.get(k) is not None}
    if table == "tool_calls":
        keys = ("agent_id", "session", "tool", "args", "status", "duration_ms", "error", "ts")
        return messages.TOOL_CALL, {k: rec[k] for k in keys if rec.get(k) not in (None, "")}
    if table == "memories":
        keys = ("agent_id", "kind", "text", "importance", "tags")
        body = {k: rec[k] for k in keys if rec.get(k) not in (None, "", [])}
        if rec.get("vector") and rec.get("embedder"):
            body["vector"] = base64.b64decode(rec["vector"])
            body["embedder"] = rec["embedder"]
        return messages.STORE, body
    raise ProtocolError(f"{where}: table must be episodes, tool_calls or memories, got {table!r}")


def store(
    endpoint: str,
    agent_id: str,
    text: str,
    *,
    kind: str = "note",
    importance: float = 0.5,
    ttl_s: float | None = None,
    tags: Sequence[str] | None = None,
    embedder: Embedder | None = None,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Embed ``text`` here (with the embedder this machine has, as a worker would) and store it through
    the writer at ``endpoint``; returns the ack ``{id, seq}`` plus the embedder used."""
    embedder = embedder or best_available()
    vector = embedder.embed([text])[0]
    body = store_body(agent_id, text, kind, importance, ttl_s, embedder.id, vector, tags)
    problems = messages.validate(messages.STORE, body)
    if problems:
        raise ProtocolError("memory store: " + "; ".join(problems))
    with MemoryClient(endpoint) as client:
        ack = dict(client.call(messages.STORE, body, timeout_s=timeout_s))
    ack["embedder"] = embedder.id
    return ack


# What makes two rows the same row, per table: a memory's ``created`` is not carried by an import (the writer
# stamps it), so memories are compared by agent, kind and text.
_KEYS: dict[str, tuple[str, ...]] = {
    "episodes": ("agent_id", "session", "role", "text", "ts"),
    "tool_calls": ("agent_id", "session", "tool", "status", "ts"),
    "memories": ("agent_id", "kind", "text"),
}


def _natural_key(rec: dict[str, Any]) -> tuple[Any, ...]:
    table = str(rec.get("table"))
    return (table, *(rec.get(k) for k in _KEYS.get(table, ())))


def _present(db_path: str | os.PathLike[str], keys: Iterable[tuple[Any, ...]]) -> Counter[tuple[Any, ...]]:
    """How many rows of each natural key the database holds already (one snapshot)."""
    found: Counter[tuple[Any, ...]] = Counter()
    with MemoryReader(db_path) as reader, reader.snapshot() as conn:
        for key in set(keys):
            table, values = key[0], key[1:]
            if table not in _KEYS:
                continue
            where = " AND ".join(f"{col} IS ?" for col in _KEYS[table])
            (n,) = conn.execute(f"SELECT count(*) FROM {table} WHERE {where}", values).fetchone()
            found[key] = int(n)
    return found


def db_beside(endpoint: str) -> str | None:
    """The database a cluster's writer at ``endpoint`` writes, by the cluster layout (``locations``):
    ``ipc://<data_dir>/run/memory.sock`` writes ``<data_dir>/memory.db``; None when it does not fit."""
    path = endpoint.removeprefix("ipc://")
    if path == endpoint or not path.endswith("/run/memory.sock"):
        return None
    db = path[: -len("/run/memory.sock")] + "/memory.db"
    return db if os.path.exists(db) else None


def import_jsonl(
    endpoint: str,
    stream: IO[str],
    *,
    db_path: str | os.PathLike[str] | None = None,
    timeout_s: float = 60.0,
) -> dict[str, int]:
    """Send every record of an export through the writer; all-or-report: invalid lines are listed first.

    With ``db_path`` (the database the writer at ``endpoint`` writes), records whose rows are already there
    are skipped (``present`` in the counts). Archived flags are not carried over (imported rows are live).
    Returns counts per table stored now, ``present`` and ``dup`` (ledger duplicates).
    """
    requests: list[tuple[str, str, dict[str, Any], tuple[Any, ...]]] = []
    problems: list[str] = []
    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        where = f"line {lineno}"
        try:
            rec = json.loads(line)
        except ValueError as exc:
            problems.append(f"{where}: not JSON ({exc})")
            continue
        if "openfang_memory_export" in rec:
            continue
        try:
            msg_type, body = _request_for(rec, where)
        except (ProtocolError, KeyError, ValueError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        problems += [f"{where}: {p}" for p in messages.validate(msg_type, body)]
        # The same record always gets the same id: a re-import is a no-op (the ledger's dup).
        req_id = "import-" + hashlib.sha256(line.strip().encode()).hexdigest()[:40]
        requests.append((req_id, msg_type, body, _natural_key(rec)))
    if problems:
        raise ProtocolError("import refused, nothing sent:\n" + "\n".join(problems))
    counts = {"episodes": 0, "tool_calls": 0, "memories": 0, "dup": 0, "present": 0}
    if db_path is not None and os.path.exists(db_path):
        present = _present(db_path, (key for *_, key in requests))
        kept = []
        for req in requests:
            if present[req[3]] > 0:
                present[req[3]] -= 1
                counts["present"] += 1
            else:
                kept.append(req)
        requests = kept
    names = {messages.EPISODE: "episodes", messages.TOOL_CALL: "tool_calls", messages.STORE: "memories"}
    with MemoryClient(endpoint) as client:
        for req_id, msg_type, body, _ in requests:
            client.submit(msg_type, body, req_id=req_id, timeout_s=timeout_s)
        for done in client.wait_all(timeout_s):
            body = done.result()
            counts["dup" if body.get("dup") else names[done.type]] += 1
    return counts
