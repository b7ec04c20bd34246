"""Built-in tools that reach outside the agent through its host: scoped files, other agents, memory.

File tools go through :class:`~openfang.security.fs_scope.ScopedFS` at ``ctx.fs_root``. Agent and memory
tools call the callbacks the agent host put in the :class:`ToolContext` (with the calling agent's id and
the validated arguments); a host that did not provide one gets a clear ``unavailable`` error result, not a
crash. What the callbacks return is the tool's value; what they raise (an ``OpenFangError``) becomes the
error result with its code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openfang.protocol.coordination import MAX_SCHEDULE_TEXT, MISFIRE_POLICIES, TOPIC_PATTERN
from openfang.security.fs_scope import ScopedFS
from openfang.workers.tools.core import HostCallback, Tool, ToolContext, ToolError
from openfang.workers.tools.schema import object_schema as _obj

MAX_FILE = 1 << 20


def _fs(ctx: ToolContext) -> ScopedFS:
    if ctx.fs_root is None:
        raise ToolError(
            "file access is not available in this host (the agent has no fs root)", code="unavailable"
        )
    return ScopedFS(ctx.fs_root, max_read_bytes=MAX_FILE, max_write_bytes=MAX_FILE)


def fs_read(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    data = _fs(ctx).read(args["path"], max_bytes=args["max_bytes"])
    return {"path": args["path"], "content": data.decode("utf-8", errors="replace"), "bytes": len(data)}


def fs_write(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    n = _fs(ctx).write(args["path"], args["content"], append=args["append"])
    return {"path": args["path"], "bytes_written": n}


def fs_list(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    entries = _fs(ctx).list(args["path"])
    return {
        "path": args["path"],
        "entries": [{"name": e.name, "kind": e.kind, "size": e.size} for e in entries],
    }


def _via(
    tool: str, pick: Callable[[ToolContext], HostCallback | None]
) -> Callable[[ToolContext, dict[str, Any]], Any]:
    """A tool body that hands its arguments to the host callback ``pick(ctx)``."""

    def call(ctx: ToolContext, args: dict[str, Any]) -> Any:
        cb = pick(ctx)
        if cb is None:
            raise ToolError(f"{tool} is not available in this host", code="unavailable")
        return cb(ctx.agent_id, args)

    call.__name__ = tool
    return call


def _schedule(op: str) -> Callable[[ToolContext, dict[str, Any]], Any]:
    """A schedule tool body: the host's ``schedule`` callback with the operation named."""

    def call(ctx: ToolContext, args: dict[str, Any]) -> Any:
        if op == "add" and len([k for k in ("at", "in", "cron") if args.get(k)]) != 1:
            raise ToolError(
                "schedule_add: give exactly one of at (a time), in (a delay) or cron", code="bad_args"
            )
        if ctx.schedule is None:
            raise ToolError(f"schedule_{op} is not available in this host", code="unavailable")
        return ctx.schedule(ctx.agent_id, {**args, "op": op})

    call.__name__ = f"schedule_{op}"
    return call


def _topic(op: str) -> Callable[[ToolContext, dict[str, Any]], Any]:
    """A topic tool body: the host's ``topic`` callback with the operation named."""

    def call(ctx: ToolContext, args: dict[str, Any]) -> Any:
        if ctx.topic is None:
            raise ToolError(f"topic_{op} is not available in this host", code="unavailable")
        return ctx.topic(ctx.agent_id, {**args, "op": op})

    call.__name__ = f"topic_{op}"
    return call


_PATH = {
    "type": "string",
    "minLength": 1,
    "maxLength": 1024,
    "description": "path relative to the agent's root",
}

_AGENT_ID = {"type": "string", "minLength": 1, "maxLength": 128}
_TOPIC = {"type": "string", "pattern": f"^{TOPIC_PATTERN}$", "description": "the topic's name"}

HOST_TOOLS: tuple[Tool, ...] = (
    Tool(
        name="fs_read_scoped",
        description="Read a UTF-8 text file under this agent's own directory.",
        schema=_obj(
            {
                "path": _PATH,
                "max_bytes": {"type": "integer", "minimum": 1, "maximum": MAX_FILE, "default": MAX_FILE},
            },
            ["path"],
        ),
        permission="fs.read",
        call=fs_read,
    ),
    Tool(
        name="fs_write_scoped",
        description="Write (or append to) a text file under this agent's own directory.",
        schema=_obj(
            {
                "path": _PATH,
                "content": {"type": "string", "maxLength": MAX_FILE},
                "append": {"type": "boolean", "default": False},
            },
            ["path", "content"],
        ),
        permission="fs.write",
        call=fs_write,
    ),
    Tool(
        name="fs_list_scoped",
        description="List a directory under this agent's own directory.",
        schema=_obj({"path": {**_PATH, "minLength": 0, "default": "."}}),
        permission="fs.read",
        call=fs_list,
    ),
    Tool(
        name="agent_send",
        description="Send a message to another agent by id; returns its acknowledgement or reply.",
        schema=_obj(
            {
                "to": {"type": "string", "minLength": 1, "maxLength": 128},
                "message": {"type": ["string", "object"], "description": "text or a JSON object"},
            },
            ["to", "message"],
        ),
        permission="agent.send",
        call=_via("agent_send", lambda c: c.send),
    ),
    Tool(
        name="agent_spawn",
        description="Start a new agent from a manifest (TOML text or the name of a known manifest).",
        schema=_obj(
            {
                "manifest": {"type": "string", "minLength": 1, "maxLength": 65536},
                "name": {"type": "string", "minLength": 1, "maxLength": 128},
            },
            ["manifest"],
        ),
        permission="agent.spawn",
        call=_via("agent_spawn", lambda c: c.spawn),
    ),
    Tool(
        name="agent_list",
        description="List the running agents this agent may see.",
        schema=_obj({}),
        permission="agent.list",
        call=_via("agent_list", lambda c: c.list_agents),
    ),
    Tool(
        name="memory_store",
        description="Remember a text in long-term memory, optionally with tags.",
        schema=_obj(
            {
                "text": {"type": "string", "minLength": 1, "maxLength": 65536},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 64}, "maxItems": 32},
                "kind": {"type": "string", "maxLength": 64, "default": "note"},
            },
            ["text"],
        ),
        permission="memory.store",
        call=_via("memory_store", lambda c: c.memory_store),
    ),
    Tool(
        name="memory_recall",
        description="Recall the memories most relevant to a query.",
        schema=_obj(
            {
                "query": {"type": "string", "minLength": 1, "maxLength": 4096},
                "k": {"type": "integer", "minimum": 1, "maximum": 50, "default": 5},
                "agents": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1, "maxLength": 128},
                    "maxItems": 32,
                    "description": "whose memories to search (default: your own; others need a grant)",
                },
            },
            ["query"],
        ),
        permission="memory.recall",
        call=_via("memory_recall", lambda c: c.memory_recall),
    ),
    Tool(
        name="memory_history",
        description="Your own latest conversation messages (oldest first), optionally of one session.",
        schema=_obj(
            {
                "session": {"type": "string", "minLength": 1, "maxLength": 128},
                "limit": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20},
            }
        ),
        permission="memory.recall",
        call=_via("memory_history", lambda c: c.memory_history),
    ),
    Tool(
        name="memory_forget",
        description="Forget one of your own memories by its id (from memory_recall); says if it existed.",
        # A string of digits is accepted too: models often quote numbers they read in a tool result.
        schema=_obj(
            {"id": {"type": ["integer", "string"], "pattern": "^[0-9]{1,18}$", "minimum": 1}}, ["id"]
        ),
        permission="memory.store",
        call=_via("memory_forget", lambda c: c.memory_forget),
    ),
    Tool(
        name="agent_broadcast",
        description=(
            "Send one message to several agents (a list of ids, or every agent of a service on this "
            "worker); returns each target's reply or error."
        ),
        schema=_obj(
            {
                "to": {"type": "array", "items": _AGENT_ID, "minItems": 1, "maxItems": 32},
                "service": {"type": "string", "minLength": 1, "maxLength": 128},
                "message": {"type": ["string", "object"], "description": "text or a JSON object"},
            },
            ["message"],
        ),
        permission="agent.send",
        call=_via("agent_broadcast", lambda c: c.broadcast),
    ),
    Tool(
        name="schedule_add",
        description=(
            "Schedule a message to yourself (default) or to an agent you may message: once (at: an ISO "
            "time, or in: a delay like 10m) or by cron (five fields, in tz). Durable across restarts."
        ),
        schema=_obj(
            {
                "text": {"type": "string", "minLength": 1, "maxLength": MAX_SCHEDULE_TEXT},
                "to": {**_AGENT_ID, "description": "the agent to message (default: yourself)"},
                "at": {"type": "string", "minLength": 1, "maxLength": 64},
                "in": {"type": "string", "minLength": 1, "maxLength": 32},
                "cron": {"type": "string", "minLength": 1, "maxLength": 128},
                "tz": {"type": "string", "minLength": 1, "maxLength": 64, "default": "UTC"},
                "misfire": {"type": "string", "enum": list(MISFIRE_POLICIES), "default": "once"},
            },
            ["text"],
        ),
        permission="agent.schedule",
        call=_schedule("add"),
    ),
    Tool(
        name="schedule_list",
        description="List the schedules you created (next run, runs, last status).",
        schema=_obj({}),
        permission="agent.schedule",
        call=_schedule("list"),
    ),
    Tool(
        name="schedule_remove",
        description="Remove one of the schedules you created, by its id (sch-...).",
        schema=_obj({"id": {"type": "string", "pattern": "^sch-[0-9a-f]{12}$"}}, ["id"]),
        permission="agent.schedule",
        call=_schedule("remove"),
    ),
    Tool(
        name="topic_subscribe",
        description="Subscribe to a named topic: messages published on it come to you as ordinary messages.",
        schema=_obj({"topic": _TOPIC}, ["topic"]),
        permission="agent.topic",
        call=_topic("subscribe"),
    ),
    Tool(
        name="topic_unsubscribe",
        description="Stop receiving a topic's messages; says whether you were subscribed.",
        schema=_obj({"topic": _TOPIC}, ["topic"]),
        permission="agent.topic",
        call=_topic("unsubscribe"),
    ),
    Tool(
        name="topic_publish",
        description=(
            "Publish a message on a named topic: every subscriber you may message gets it; returns each "
            "subscriber's reply or error."
        ),
        schema=_obj(
            {
                "topic": _TOPIC,
                "message": {"type": ["string", "object"], "description": "text or a JSON object"},
            },
            ["topic", "message"],
        ),
        permission="agent.topic",
        call=_topic("publish"),
    ),
)
