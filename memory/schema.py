"""The memory database schema, as tracked migrations (each in its own transaction with its record).

The writer runs :func:`migrate` at start before it binds; ``openfang memory migrate`` calls it too. A new
schema change is a new :class:`Migration` appended to :data:`MIGRATIONS`; never edit an applied one.
vec0 tables (one per embedder, created on first use by the writer) are not part of the migrations: their
dimension depends on the embedder.

The record of applied migrations is the ``_sqlite_migrations`` table, with the layout and the migration set
name that sqlite-utils' migrations used before (databases created by earlier versions upgrade in place),
and the statements are the DDL those versions produced, so old and new databases have one schema. We keep
this runner instead of sqlite-utils because the writer used nothing else of it, and importing it cost
~100-175 ms on the writer's start (it imports numpy whenever numpy is installed) and 3.5 MB of the install.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

from openfang.memory import _db
from openfang.protocol.errors import MemoryStoreError

MIGRATION_SET = "openfang.memory"
MIGRATIONS_TABLE = "_sqlite_migrations"

_MIGRATIONS_DDL = (
    'CREATE TABLE IF NOT EXISTS "_sqlite_migrations" (\n   "id" INTEGER PRIMARY KEY,\n'
    '   "migration_set" TEXT,\n   "name" TEXT,\n   "applied_at" TEXT\n)',
    'CREATE UNIQUE INDEX IF NOT EXISTS "idx__sqlite_migrations_migration_set_name"\n'
    '    ON "_sqlite_migrations" ("migration_set", "name")',
)


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change: its name (recorded once applied) and its statements, run in one transaction."""

    name: str
    statements: tuple[str, ...]


def _fts(table: str) -> tuple[str, ...]:
    """An external-content FTS5 index on ``table.text`` (porter stemming) kept current by triggers."""
    fts = f"{table}_fts"
    return (
        f'CREATE VIRTUAL TABLE "{fts}" USING FTS5 (\n    "text",\n    tokenize=\'porter\',\n'
        f'    content="{table}"\n)',
        f'INSERT INTO "{fts}" (rowid, "text") SELECT rowid, "text" FROM "{table}"',
        f'CREATE TRIGGER "{table}_ai" AFTER INSERT ON "{table}" BEGIN\n'
        f'  INSERT INTO "{fts}" (rowid, "text") VALUES (new.rowid, new."text");\nEND',
        f'CREATE TRIGGER "{table}_ad" AFTER DELETE ON "{table}" BEGIN\n'
        f'  INSERT INTO "{fts}" ("{fts}", rowid, "text") VALUES(\'delete\', old.rowid, old."text");\nEND',
        f'CREATE TRIGGER "{table}_au" AFTER UPDATE ON "{table}" BEGIN\n'
        f'  INSERT INTO "{fts}" ("{fts}", rowid, "text") VALUES(\'delete\', old.rowid, old."text");\n'
        f'  INSERT INTO "{fts}" (rowid, "text") VALUES (new.rowid, new."text");\nEND',
    )


def _index(table: str, *columns: str) -> str:
    cols = ", ".join(f'"{c}"' for c in columns)
    return f'CREATE INDEX "idx_{table}_{"_".join(columns)}"\n    ON "{table}" ({cols})'


_INITIAL = (
    # meta.seq is the commit sequence number: bumped once per group commit, returned in every ack, and
    # read by readers to know whether their snapshot includes a given write (read-your-writes).
    'CREATE TABLE "meta" (\n   "key" TEXT PRIMARY KEY,\n   "value" INTEGER\n)',
    'INSERT INTO "meta" ("key", "value") VALUES (\'seq\', 0)',
    # The idempotency ledger: one row per applied request id; a resend gets the stored ack back.
    'CREATE TABLE "ledger" (\n   "req_id" TEXT PRIMARY KEY,\n   "type" TEXT,\n   "seq" INTEGER,\n'
    '   "result" BLOB,\n   "ts" REAL\n)',
    _index("ledger", "ts"),
    'CREATE TABLE "episodes" (\n   "id" INTEGER PRIMARY KEY,\n   "agent_id" TEXT NOT NULL,\n'
    '   "session" TEXT NOT NULL,\n   "role" TEXT NOT NULL,\n   "text" TEXT NOT NULL,\n'
    '   "ts" REAL NOT NULL,\n   "tokens" INTEGER DEFAULT 0,\n   "archived" INTEGER NOT NULL DEFAULT 0\n)',
    _index("episodes", "agent_id", "session", "ts"),
    _index("episodes", "ts"),
    *_fts("episodes"),
    'CREATE TABLE "memories" (\n   "id" INTEGER PRIMARY KEY,\n   "agent_id" TEXT NOT NULL,\n'
    '   "kind" TEXT NOT NULL,\n   "text" TEXT NOT NULL,\n   "importance" REAL NOT NULL DEFAULT 0.5,\n'
    '   "created" REAL NOT NULL,\n   "expires" REAL,\n   "embedder" TEXT,\n'
    '   "archived" INTEGER NOT NULL DEFAULT 0\n)',
    _index("memories", "agent_id", "kind", "created"),
    _index("memories", "expires"),
    *_fts("memories"),
    # One vec0 table per embedder: vectors of different embedders live in different spaces, never mixed.
    'CREATE TABLE "embedders" (\n   "id" TEXT PRIMARY KEY,\n   "dim" INTEGER,\n   "vec_table" TEXT,\n'
    '   "created" REAL\n)',
    'CREATE TABLE "tool_calls" (\n   "id" INTEGER PRIMARY KEY,\n   "agent_id" TEXT NOT NULL,\n'
    '   "session" TEXT NOT NULL DEFAULT \'\',\n   "tool" TEXT NOT NULL,\n   "args" TEXT,\n'
    '   "status" TEXT NOT NULL,\n   "duration_ms" REAL,\n   "error" TEXT,\n   "ts" REAL NOT NULL,\n'
    '   "archived" INTEGER NOT NULL DEFAULT 0\n)',
    _index("tool_calls", "agent_id", "tool", "ts"),
    _index("tool_calls", "agent_id", "session", "id"),
    _index("tool_calls", "ts"),
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_initial", _INITIAL),
    # Tags an agent attaches to a memory (JSON list); returned with recall results.
    Migration("0002_memory_tags", ('ALTER TABLE "memories" ADD COLUMN "tags" TEXT',)),
)


def _applied_names(conn: Any) -> list[str]:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (MIGRATIONS_TABLE,)
    ).fetchone()
    if exists is None:
        return []
    rows = conn.execute(
        f'SELECT "name" FROM "{MIGRATIONS_TABLE}" WHERE "migration_set" = ? ORDER BY rowid', (MIGRATION_SET,)
    ).fetchall()
    return [row[0] for row in rows]


def apply(conn: Any, *, stop_before: str | None = None) -> list[str]:
    """Apply the pending migrations on a connection in autocommit mode, each in its own transaction with
    the record of it; stop before the one named ``stop_before`` (tests build older databases with it).
    Returns the names applied."""
    done = set(_applied_names(conn))
    if stop_before is not None and stop_before in done:
        raise MemoryStoreError(f"cannot stop before migration {stop_before!r}: it is already applied")
    for ddl in _MIGRATIONS_DDL:
        conn.execute(ddl)
    applied: list[str] = []
    for migration in MIGRATIONS:
        if migration.name in done:
            continue
        if migration.name == stop_before:
            break
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                f'INSERT INTO "{MIGRATIONS_TABLE}" ("migration_set", "name", "applied_at") VALUES (?, ?, ?)',
                (MIGRATION_SET, migration.name, str(datetime.datetime.now(datetime.UTC))),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        applied.append(migration.name)
    return applied


def migrate_connection(conn: Any) -> list[str]:
    """Apply pending migrations on an open writer connection; returns the names applied."""
    try:
        return apply(conn)
    except _db.driver().DatabaseError as exc:
        raise MemoryStoreError(f"migration failed: {exc}") from None


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
        return _applied_names(conn)
    finally:
        conn.close()
