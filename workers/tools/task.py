"""``task_update``: an agent sets the outcome of the task its message belongs to (A2A task states).

Over A2A each message is a task; by default the reply completes it. An agent (a guest through the tool
call, or a scripted model through a ``tool = "task_update"`` rule) may instead ask for more input, reject
the task, fail it, or need authorization, and attach artifacts: text, data (a JSON object) or a file (a
URI with a media type). The host keeps the last update of the message in progress and sends it with the
reply (``agent.send.ok`` body field ``task``); the HTTP face's A2A executor turns it into task events.
Clients of other protocols see the reply as usual.
"""

from __future__ import annotations

from typing import Any

from openfang.workers.tools.core import Tool, ToolContext, ToolError

STATES = ("completed", "input-required", "rejected", "failed", "auth-required")


def task_update(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    if ctx.task_update is None:
        raise ToolError("task_update is not available in this host", code="unavailable")
    for i, artifact in enumerate(args.get("artifacts") or []):
        kinds = [k for k in ("text", "data", "uri") if k in artifact]
        if len(kinds) != 1:
            raise ToolError(f"artifacts[{i}]: give exactly one of text, data and uri", code="bad_args")
    result: dict[str, Any] = ctx.task_update(ctx.agent_id, args)
    return result


TASK_UPDATE = Tool(
    name="task_update",
    description=(
        "Set the outcome of the current task: state completed (default), input-required (ask the user "
        "for more), rejected, failed or auth-required, with a message; attach artifacts (text, data or a "
        "file URI)."
    ),
    schema={
        "type": "object",
        "properties": {
            "state": {"enum": list(STATES)},
            "message": {"type": "string", "maxLength": 65536},
            "artifacts": {
                "type": "array",
                "maxItems": 32,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "maxLength": 256},
                        "text": {"type": "string", "maxLength": 262144},
                        "data": {"type": "object"},
                        "uri": {"type": "string", "maxLength": 4096, "pattern": "^[a-z][a-z0-9+.-]*:"},
                        "media_type": {"type": "string", "maxLength": 256},
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    },
    permission="task",
    call=task_update,
    blocking=False,
)
