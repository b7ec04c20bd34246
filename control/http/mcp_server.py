"""The cluster as an MCP server: every running agent is one tool (official ``mcp`` SDK, low-level Server).

Tool name: the agent's name (``greeter``) when no other live agent has it, else its id with ``@`` turned
into ``.`` (MCP tool names allow ``[A-Za-z0-9_.-]``): ``greeter-1.workers-0``. Description: the
manifest's; input ``{"message": str, "session"?: str}``; the result is the agent's reply as text
(``is_error`` with the reason when the agent or the cluster failed).
The list is read from the gateway on every ``tools/list``, so agents spawned later appear.

Served over streamable HTTP at ``/mcp`` (the SDK's session manager, stateful, speaking every revision the
SDK speaks: the 2024-11-05 .. 2025-11-25 handshake era and the stateless 2026-07-28 envelope) and over
stdio by ``openfang mcp serve`` (:func:`serve_stdio`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from starlette.routing import Route

from openfang import __version__
from openfang.control.http.app import Face, Installed
from openfang.control.http.errors import HttpError

INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "message": {"type": "string", "description": "the message to send to the agent"},
        "session": {
            "type": "string",
            "description": "a conversation name: messages with the same session share the agent's history",
        },
    },
    "required": ["message"],
    "additionalProperties": False,
}


def tool_names(agents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """tool name -> live agent: its name when no other live agent has it, else its id (``@`` -> ``.``)."""
    live = [a for a in agents if a.get("state") != "dead"]
    counts: dict[str, int] = {}
    for agent in live:
        counts[str(agent.get("name"))] = counts.get(str(agent.get("name")), 0) + 1
    out: dict[str, dict[str, Any]] = {}
    for agent in live:
        name = str(agent.get("name"))
        unique = counts[name] == 1 and name not in {str(a["agent_id"]) for a in live}
        out[name if unique else str(agent["agent_id"]).replace("@", ".")] = agent
    return out


def make_server(face: Face) -> Server[Any]:
    """The MCP server whose tools are the cluster's agents (one instance per app or stdio process)."""

    async def list_tools(
        _ctx: ServerRequestContext[Any], _params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        tools = []
        for name, agent in tool_names(await face.agents()).items():
            description = str(agent.get("description") or f"the OpenFANG agent {agent.get('name')}")
            description = f"{description} (agent {agent['agent_id']}: send it a message, get its reply)"
            tools.append(
                types.Tool(
                    name=name,
                    title=str(agent.get("name") or agent["agent_id"]),
                    description=description[:1024],
                    input_schema=INPUT_SCHEMA,
                )
            )
        return types.ListToolsResult(tools=tools)

    async def call_tool(
        _ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        agents = tool_names(await face.agents())
        agent = agents.get(params.name)
        if agent is None:
            known = ", ".join(sorted(agents)) or "no agents are running"
            raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name!r} (tools: {known})")
        args = params.arguments or {}
        message, session = args.get("message"), args.get("session")
        if not isinstance(message, str):
            raise MCPError(types.INVALID_PARAMS, f"tool {params.name!r}: argument 'message' must be a string")
        if session is not None and not isinstance(session, str):
            raise MCPError(types.INVALID_PARAMS, f"tool {params.name!r}: argument 'session' must be a string")
        try:
            reply = await face.send(str(agent["agent_id"]), message, f"mcp:{session}" if session else "mcp")
        except HttpError as exc:
            return types.CallToolResult(
                content=[types.TextContent(text=f"{exc.code}: {exc.message}")], is_error=True
            )
        return types.CallToolResult(content=[types.TextContent(text=str(reply["reply"]))])

    return Server(
        f"openfang-{face.cluster}",
        version=__version__,
        title="OpenFANG agents",
        instructions="Each tool is one OpenFANG agent: call it with a message, get the agent's reply.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def install(face: Face) -> Installed:
    server = make_server(face)
    host = face.base_url.split("://", 1)[-1].rsplit(":", 1)[0]
    loopback = host in ("127.0.0.1", "localhost", "[::1]")
    # DNS-rebinding protection matters for a token-less face on loopback: a web page must not reach it.
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=loopback,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )
    manager = StreamableHTTPSessionManager(app=server, security_settings=security)

    @contextlib.asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with manager.run():
            yield

    endpoint = StreamableHTTPASGIApp(manager)
    return Installed(
        routes=[Route("/mcp", endpoint, methods=["GET", "POST", "DELETE"])],
        lifespan=lifespan,
    )


async def serve_stdio(face: Face) -> None:
    """Serve MCP on this process's stdin/stdout until the client closes it (``openfang mcp serve``)."""
    from mcp.server.stdio import stdio_server

    server = make_server(face)
    try:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
    finally:
        await face.bridge.close()
