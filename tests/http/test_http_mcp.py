"""The cluster as an MCP server, driven by the official `mcp` Python client over streamable HTTP and stdio."""

from __future__ import annotations

import asyncio
import sys

import pytest
from daemon_harness import Cluster
from http_kit import CLOCK, GREETER, start_with_agents
from mcp import ClientSession
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.integration


def test_mcp_http_lists_agents_as_tools_and_calls_them(make_cluster: type[Cluster]) -> None:
    """Over /mcp (handshake era): one tool per agent with its description; a call returns the reply."""
    c = make_cluster(workers=1, http=True)
    greeter, clock = start_with_agents(c, GREETER, CLOCK)

    async def talk() -> None:
        async with (
            streamable_http_client(c.http_url + "/mcp") as (read, write),
            ClientSession(read, write) as s,
        ):
            init = await s.initialize()
            assert init.server_info.name == "openfang-test"
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert set(tools) == {"greeter", "clock"}, "unique agent names are the tool names"
            assert "Greets people" in (tools["greeter"].description or "")
            assert greeter in (tools["greeter"].description or "") and clock in (
                tools["clock"].description or ""
            )
            result = await s.call_tool("greeter", {"message": "who are you?"})
            assert not result.is_error and "WebAssembly agent" in result.content[0].text  # type: ignore[union-attr]
            with pytest.raises(MCPError, match="unknown tool 'ghost'"):
                await s.call_tool("ghost", {"message": "hi"})
            with pytest.raises(MCPError, match="'message' must be a string"):
                await s.call_tool("greeter", {"message": 3})

    asyncio.run(talk())
    assert c.stop() == 0


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_mcp_http_speaks_both_protocol_eras(make_cluster: type[Cluster], mode: str) -> None:
    """The handshake era and the stateless 2026-07-28 revision both list and call the agents."""
    c = make_cluster(workers=1, http=True)
    start_with_agents(c, GREETER)

    async def talk() -> str:
        async with Client(c.http_url + "/mcp", mode=mode) as client:
            assert client.protocol_version == ("2025-11-25" if mode == "legacy" else mode)
            assert [t.name for t in (await client.list_tools()).tools] == ["greeter"]
            result = await client.call_tool("greeter", {"message": "hello", "session": "s1"})
            return str(result.content[0].text)  # type: ignore[union-attr]

    assert asyncio.run(talk()) == "Hello! Ask me who I am."
    assert c.stop() == 0


def test_mcp_tool_reports_a_failed_agent_as_a_tool_error(make_cluster: type[Cluster]) -> None:
    """An agent that cannot answer (suspended past the timeout) gives is_error with the reason."""
    c = make_cluster(workers=1, http=True, request_timeout_ms=1500)
    (greeter,) = start_with_agents(c, GREETER)
    again = c.ok("agent.spawn", {"manifest": GREETER})["agent_id"]
    c.ok("agent.suspend", {"agent_id": again})

    async def talk() -> tuple[bool, str]:
        async with Client(c.http_url + "/mcp", mode="legacy") as client:
            names = [t.name for t in (await client.list_tools()).tools]
            assert sorted(names) == sorted(a.replace("@", ".") for a in (greeter, again)), "two greeters: ids"
            result = await client.call_tool(again.replace("@", "."), {"message": "hello"})
            return bool(result.is_error), str(result.content[0].text)  # type: ignore[union-attr]

    is_error, text = asyncio.run(talk())
    assert is_error and text.startswith("timeout:"), text
    assert c.stop() == 0


def test_mcp_stdio_serve_lists_and_calls_agents(make_cluster: type[Cluster]) -> None:
    """`openfang mcp serve` speaks MCP on stdio to the official stdio client."""
    c = make_cluster(workers=1)
    start_with_agents(c, GREETER)
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "openfang.cli.main", "mcp", "serve", "--endpoint", c.endpoint]
    )

    async def talk() -> str:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            assert [t.name for t in (await s.list_tools()).tools] == ["greeter"]
            result = await s.call_tool("greeter", {"message": "who are you?"})
            return str(result.content[0].text)  # type: ignore[union-attr]

    assert "WebAssembly agent" in asyncio.run(talk())
    assert c.stop() == 0
