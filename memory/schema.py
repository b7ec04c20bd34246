"""The memory database schema, as tracked sqlite-utils migrations (each in its own transaction).

The writer runs :func:`migrate` at start before it binds; ``openfang memory migrate`` calls it too. A new
schema change is a new function registered on :data:`MIGRATIONS` below the others; never edit an applied one.
vec0 tables (one per embedder, created on first use by the writer) are not part of the migrations: their
dimension depends on the embedder.
"""

from __future__ import annotations

import os
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

from openfang.memory import _db
from openfang.protocol.errors import MemoryStoreError

MIGRATIONS = Migrations("openfang.memory")


@MIGRATIONS(name="0001_initial")
def _initial(db: sqlite_utils.Database) -> None:
    # meta.seq is the commit sequence number: bumped once per group commit, returned in every ack, and
    # read by readers to know whether their snapshot includes a given write (read-your-writes).
    db.table("meta").create({"key": str, "value": int}, pk="key")
    db.table("meta").insert({"key": "seq", "value": 0})
    # The idempotency ledger: one row per applied request id; a resend gets the stored ack back.
    db.table("ledger").create(
        {"req_id": str, "type": str, "seq": int, "result": bytes, "ts": float}, pk="req_id"
    )
    db.table("ledger").create_index(["ts"])

    db.table("episodes").create(
        {
            "id": int,
            "agent_id": str,
            "session": str,
            "role": str,
            "text": str,
            "ts": float,
            "tokens": int,
            "archived": int,
        },
        pk="id",
        not_null={"agent_id", "session", "role", "text", "ts", "archived"},
        defaults={"archived": 0, "tokens": 0},
    )
    db.table("episodes").create_index(["agent_id", "session", "ts"])
    db.table("episodes").create_index(["ts"])
    db.table("episodes").enable_fts(["text"], create_triggers=True, tokenize="porter")

    db.table("memories").create(
        {
            "id": int,
            "agent_id": str,
            "kind": str,
            "text": str,
            "importance": float,
            "created": float,
            "expires": float,
            "embedder": str,
            "archived": int,
        },
        pk="id",
        not_null={"agent_id", "kind", "text", "importance", "created", "archived"},
        defaults={"archived": 0, "importance": 0.5},
    )
    db.table("memories").create_index(["agent_id", "kind", "created"])
    db.table("memories").create_index(["expires"])
    db.table("memories").enable_fts(["text"], create_triggers=True, tokenize="porter")
    # One vec0 table per embedder: vectors of different embedders live in different spaces, never mixed.
    db.table("embedders").create({"id": str, "dim": int, "vec_table": str, "created": float}, pk="id")

    db.table("tool_calls").create(
        {
            "id": int,
            "agent_id": str,
            "session": str,
            "tool": str,
            "args": str,
            "status": str,
            "duration_ms": float,
            "error": str,
            "ts": float,
            "archived": int,
        },
        pk="id",
        not_null={"agent_id", "session", "tool", "status", "ts", "archived"},
        defaults={"archived": 0, "session": ""},
    )
    db.table("tool_calls").create_index(["agent_id", "tool", "ts"])
    db.table("tool_calls").create_index(["agent_id", "session", "id"])
    db.table("tool_calls").create_index(["ts"])


@MIGRATIONS(name="0002_memory_tags")
def _memory_tags(db: sqlite_utils.Database) -> None:
    # Tags an agent attaches to a memory (JSON list); returned with recall results.
    db.table("memories").add_column("tags", str)


def migrate_connection(conn: Any) -> list[str]:
    """Apply pending migrations on an open writer connection; returns the names applied."""
    db = sqlite_utils.Database(conn)
    pending = [m.name for m in MIGRATIONS.pending(db)]
    try:
        MIGRATIONS.apply(db)
    except _db.DatabaseError as exc:
        raise MemoryStoreError(f"migration failed: {exc}") from None
    return pending


def migrate(db_path: str | os.PathLike[str]) -> list[str]:
    """Create or upgrade the memory database at ``db_path``; returns the migrations applied (may be [])."""
    parent = os.path.dirname(os.path.abspath(os.fspath(db_path)))
    os.makedirs(parent, exist_ok=True)
    conn = _db.open_writer(db_path)
    try:
        return migrate_connection(conn)
    finally:
        conn.close()


def applied(db_path: str | os.PathLike[str]) -> list[str]:
    """Names of the migrations already applied to ``db_path``."""
    conn = _db.open_reader(db_path)
    try:
        return [m.name for m in MIGRATIONS.applied(sqlite_utils.Database(conn))]
    finally:
        conn.close()
