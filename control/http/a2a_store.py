"""A2A tasks and push-notification configs in SQLite (``{data_dir}/http/a2a-tasks.db``): they survive a
restart of the daemon.

One database for the face; each :class:`SqliteTaskStore` is a view scoped to one agent *name* (an agent
respawned after a restart gets a new id but keeps its tasks) and, inside it, to the caller (the SDK's
owner resolver). A task is kept as its protobuf bytes beside the columns ``ListTasks`` filters and sorts
on. Listing follows the SDK's order and page tokens: newest status first, ties by id, cursor tokens.
The face is one process with one event loop, so one connection serves every store; each statement is
short, and WAL keeps readers of other processes (an operator's ``sqlite3``) out of the writer's way.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from a2a.server.context import ServerCallContext
from a2a.server.owner_resolver import OwnerResolver, resolve_user_scope
from a2a.server.tasks.push_notification_config_store import (
    PushNotificationConfigStore,
    normalize_push_notification_config,
)
from a2a.server.tasks.task_store import TaskStore
from a2a.types.a2a_pb2 import ListTasksRequest, ListTasksResponse, Task, TaskPushNotificationConfig
from a2a.utils.constants import DEFAULT_LIST_TASKS_PAGE_SIZE
from a2a.utils.errors import InvalidParamsError
from a2a.utils.task import ListTasksCursor, decode_list_tasks_cursor, encode_list_tasks_cursor

SCHEMA = """
CREATE TABLE IF NOT EXISTS a2a_tasks (
    agent      TEXT NOT NULL,
    owner      TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    context_id TEXT NOT NULL,
    state      INTEGER NOT NULL,
    has_ts     INTEGER NOT NULL,       -- 1 when the status has a timestamp (those sort first)
    ts_ns      INTEGER NOT NULL,       -- the status timestamp in ns (0 without one)
    task       BLOB NOT NULL,          -- the Task protobuf
    PRIMARY KEY (agent, owner, task_id)
);
CREATE INDEX IF NOT EXISTS a2a_tasks_order ON a2a_tasks (agent, owner, has_ts DESC, ts_ns DESC, task_id DESC);
CREATE TABLE IF NOT EXISTS a2a_push (
    agent     TEXT NOT NULL,
    owner     TEXT NOT NULL,
    task_id   TEXT NOT NULL,
    config_id TEXT NOT NULL,
    config    BLOB NOT NULL,          -- the TaskPushNotificationConfig protobuf
    PRIMARY KEY (agent, owner, task_id, config_id)
);
"""


class TaskDatabase:
    """The one SQLite file of the face's A2A tasks (open once per process)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.lock = threading.Lock()
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)

    def store(self, agent: str, owner_resolver: OwnerResolver = resolve_user_scope) -> SqliteTaskStore:
        return SqliteTaskStore(self, agent, owner_resolver)

    def push_store(
        self, agent: str, owner_resolver: OwnerResolver = resolve_user_scope
    ) -> SqlitePushConfigStore:
        return SqlitePushConfigStore(self, agent, owner_resolver)

    def run(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.conn.execute(sql, args).fetchall()

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class SqliteTaskStore(TaskStore):
    """The SDK's TaskStore over :class:`TaskDatabase`, for one agent name."""

    def __init__(self, db: TaskDatabase, agent: str, owner_resolver: OwnerResolver) -> None:
        self.db = db
        self.agent = agent
        self.owner_resolver = owner_resolver

    def _run(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self.db.run(sql, args)

    async def save(self, task: Task, context: ServerCallContext) -> None:
        has_ts = task.HasField("status") and task.status.HasField("timestamp")
        ts_ns = task.status.timestamp.ToNanoseconds() if has_ts else 0
        self._run(
            "INSERT OR REPLACE INTO a2a_tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.agent,
                self.owner_resolver(context),
                task.id,
                task.context_id,
                int(task.status.state),
                int(has_ts),
                ts_ns,
                task.SerializeToString(),
            ),
        )

    async def get(self, task_id: str, context: ServerCallContext) -> Task | None:
        rows = self._run(
            "SELECT task FROM a2a_tasks WHERE agent = ? AND owner = ? AND task_id = ?",
            (self.agent, self.owner_resolver(context), task_id),
        )
        return Task.FromString(rows[0][0]) if rows else None

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        self._run(
            "DELETE FROM a2a_tasks WHERE agent = ? AND owner = ? AND task_id = ?",
            (self.agent, self.owner_resolver(context), task_id),
        )

    async def list(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        where = ["agent = ?", "owner = ?"]
        args: list[Any] = [self.agent, self.owner_resolver(context)]
        if params.context_id:
            where.append("context_id = ?")
            args.append(params.context_id)
        if params.status:
            where.append("state = ?")
            args.append(int(params.status))
        if params.HasField("status_timestamp_after"):
            where.append("has_ts = 1 AND ts_ns >= ?")
            args.append(params.status_timestamp_after.ToNanoseconds())
        total = int(
            self._run(f"SELECT count(*) FROM a2a_tasks WHERE {' AND '.join(where)}", tuple(args))[0][0]
        )
        if params.page_token:
            cursor = decode_list_tasks_cursor(params.page_token)
            if cursor is None:
                raise InvalidParamsError(f"Invalid page token: {params.page_token}")
            # strictly after the cursor in (has_ts, ts_ns, task_id) descending order
            where.append("(has_ts, ts_ns, task_id) < (?, ?, ?)")
            args.extend(cursor.sort_key())
        page_size = params.page_size or DEFAULT_LIST_TASKS_PAGE_SIZE
        rows = self._run(
            f"SELECT task, has_ts, ts_ns, task_id FROM a2a_tasks WHERE {' AND '.join(where)} "
            "ORDER BY has_ts DESC, ts_ns DESC, task_id DESC LIMIT ?",
            (*args, page_size + 1),
        )
        more = len(rows) > page_size
        rows = rows[:page_size]
        next_token = None
        if more and rows:
            last = rows[-1]
            next_token = encode_list_tasks_cursor(
                ListTasksCursor(timestamp_ns=last[2] if last[1] else None, task_id=last[3])
            )
        return ListTasksResponse(
            tasks=[Task.FromString(row[0]) for row in rows],
            next_page_token=next_token,
            total_size=total,
            page_size=page_size,
        )


class SqlitePushConfigStore(PushNotificationConfigStore):
    """The SDK's push-notification config store over :class:`TaskDatabase`, for one agent name."""

    def __init__(self, db: TaskDatabase, agent: str, owner_resolver: OwnerResolver) -> None:
        self.db = db
        self.agent = agent
        self.owner_resolver = owner_resolver

    async def set_info(
        self, task_id: str, notification_config: TaskPushNotificationConfig, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        config = normalize_push_notification_config(task_id, notification_config)
        self.db.run(
            "INSERT OR REPLACE INTO a2a_push VALUES (?, ?, ?, ?, ?)",
            (self.agent, self.owner_resolver(context), task_id, config.id, config.SerializeToString()),
        )
        return config

    async def get_info(self, task_id: str, context: ServerCallContext) -> list[TaskPushNotificationConfig]:
        rows = self.db.run(
            "SELECT config FROM a2a_push WHERE agent = ? AND owner = ? AND task_id = ? ORDER BY config_id",
            (self.agent, self.owner_resolver(context), task_id),
        )
        return [TaskPushNotificationConfig.FromString(row[0]) for row in rows]

    async def get_info_for_dispatch(self, task_id: str) -> list[TaskPushNotificationConfig]:
        rows = self.db.run(
            "SELECT config FROM a2a_push WHERE agent = ? AND task_id = ? ORDER BY owner, config_id",
            (self.agent, task_id),
        )
        return [TaskPushNotificationConfig.FromString(row[0]) for row in rows]

    async def delete_info(
        self, task_id: str, context: ServerCallContext, config_id: str | None = None
    ) -> None:
        sql = "DELETE FROM a2a_push WHERE agent = ? AND owner = ? AND task_id = ?"
        args: tuple[Any, ...] = (self.agent, self.owner_resolver(context), task_id)
        if config_id is not None:
            sql, args = sql + " AND config_id = ?", (*args, config_id)
        self.db.run(sql, args)
