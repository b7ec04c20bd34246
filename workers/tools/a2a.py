"""``a2a_send``: an agent calls a remote A2A 1.0 agent (the ``a2a-sdk`` client, from the ``http`` extra).

The agent gives the remote agent's base URL (its card is at ``<url>/.well-known/agent-card.json``) and a
message; the tool returns the task's state and the reply's text (its artifacts', else its status
message's), with the ids to continue the conversation (``context_id``). Network permissions are the
agent's, as for ``http_fetch``: the card URL and every interface URL the card names pass the SSRF guard
(``[security.network]``), and the exfiltration check sees the URL and the message before anything
leaves. The SDK's HTTP client then connects by name (not to the checked address, unlike ``http_fetch``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from openfang.security.netguard import check_url
from openfang.workers.tools.core import Tool, ToolContext, ToolError


def a2a_send(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    try:
        import a2a.client  # noqa: F401  (only to say plainly what is missing)
    except ImportError:
        raise ToolError("a2a_send needs the 'http' extra: pip install 'openfang[http]'") from None
    url = str(args["url"]).rstrip("/")
    guard: dict[str, Any] = {
        "allow_hosts": ctx.net_allow_hosts,
        "allow_private": ctx.net_allow_private,
        "resolver": ctx.resolver,
    }
    check_url(url + "/.well-known/agent-card.json", **guard)
    if ctx.egress_check is not None:
        ctx.egress_check("a2a_send", url, {}, str(args["message"]))
    try:
        return asyncio.run(asyncio.wait_for(_send(url, args, guard), float(args["timeout_s"])))
    except TimeoutError:
        raise ToolError(f"no answer from {url} within {args['timeout_s']:g}s", code="timeout") from None


async def _send(url: str, args: dict[str, Any], guard: dict[str, Any]) -> dict[str, Any]:
    import httpx
    from a2a.client import A2ACardResolver, A2AClientError, ClientConfig, ClientFactory
    from a2a.helpers import get_artifact_text, get_message_text, new_text_message
    from a2a.types.a2a_pb2 import Role, SendMessageRequest, TaskState

    async with httpx.AsyncClient(timeout=float(args["timeout_s"])) as http:
        try:
            card = await A2ACardResolver(http, url).get_agent_card()
        except (A2AClientError, httpx.HTTPError, ValueError) as exc:
            raise ToolError(f"cannot read the agent card of {url}: {exc}", code="fetch_failed") from None
        for interface in card.supported_interfaces:  # the card may point anywhere: same policy
            check_url(interface.url, **guard)
        client = ClientFactory(ClientConfig(streaming=False, httpx_client=http)).create(card)
        message = new_text_message(str(args["message"]), role=Role.ROLE_USER)
        if args.get("context_id"):
            message.context_id = str(args["context_id"])
        try:
            events = [e async for e in client.send_message(SendMessageRequest(message=message))]
        except (A2AClientError, httpx.HTTPError) as exc:
            raise ToolError(f"A2A call to {url} failed: {exc}", code="fetch_failed") from None
    last = events[-1] if events else None
    if last is not None and last.HasField("message"):
        msg = last.message
        return {"state": "message", "text": get_message_text(msg), "context_id": msg.context_id}
    if last is None or not last.HasField("task"):
        raise ToolError(f"A2A call to {url}: no task or message came back", code="fetch_failed")
    task = last.task
    text = "\n".join(get_artifact_text(a) for a in task.artifacts)
    if not text and task.status.HasField("message"):
        text = get_message_text(task.status.message)
    return {
        "state": TaskState.Name(task.status.state),
        "text": text,
        "task_id": task.id,
        "context_id": task.context_id,
    }


A2A_SEND = Tool(
    name="a2a_send",
    description=(
        "Send a message to a remote A2A agent (its base URL; the card is at /.well-known/agent-card.json) "
        "and return the task's state and the reply text; pass context_id to continue a conversation."
    ),
    schema={
        "type": "object",
        "properties": {
            "url": {
                "type": "string",
                "minLength": 1,
                "maxLength": 4096,
                "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
            },
            "message": {"type": "string", "minLength": 1, "maxLength": 65536},
            "context_id": {"type": "string", "maxLength": 256},
            "timeout_s": {"type": "number", "minimum": 0.1, "maximum": 120, "default": 30},
        },
        "required": ["url", "message"],
        "additionalProperties": False,
    },
    permission="net.a2a",
    call=a2a_send,
)
