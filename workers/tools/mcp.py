"""MCP servers as tool providers: their tools join the worker's registry as ``<server>.<tool>``.

A manifest names its servers in ``[agent] mcp`` (a stdio command, or a streamable HTTP URL)::

    mcp = [{name = "everything", command = "npx", args = ["-y", "@modelcontextprotocol/server-everything"]}]
    tools = ["mcp.everything"]          # every tool of that server; or one: "everything.echo"

At spawn the host calls :func:`attach`: the worker connects to each server it does not know yet (the
official ``mcp`` SDK's client, from the ``http`` extra), lists its tools and registers each as a
:class:`~openfang.workers.tools.core.Tool` with permission ``mcp.<server>``. Calls then go through the
registry's one door like every other tool (allow list, argument check, and the host's injection,
exfiltration and audit layers on the result). A tool result the server flags ``isError`` is a failed call
(``tool_error``) with the server's text.

One asyncio loop on a thread of its own holds the sessions open (the SDK is async, the worker is not);
tool threads submit calls to it and wait with the server's ``timeout_s``. A server that died is started
again by the next call to one of its tools (once per call; its error is the call's error otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from openfang.protocol.errors import ConfigError, Problem, Timeout
from openfang.workers.tools.core import Tool, ToolContext, ToolError
from openfang.workers.tools.schema import KNOWN_KEYWORDS, check_schema

if TYPE_CHECKING:
    from openfang.workers.tools.core import ToolRegistry

_SERVER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_KEYS = {"name", "command", "args", "env", "url", "headers", "timeout_s"}
PERMISSION_PREFIX = "mcp."


@dataclass(frozen=True, slots=True, kw_only=True)
class McpServerConfig:
    """One entry of a manifest's ``mcp`` list: a stdio ``command`` (with ``args``, ``env``) or a ``url``."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 30.0

    @property
    def permission(self) -> str:
        return PERMISSION_PREFIX + self.name

    def identity(self) -> tuple[Any, ...]:
        """What makes two entries the same server (a name is bound to one of these per worker)."""
        return (
            self.command,
            self.args,
            tuple(sorted(self.env.items())),
            self.url,
            tuple(sorted(self.headers.items())),
        )


def parse_servers(value: Any, where: str) -> tuple[tuple[McpServerConfig, ...], list[Problem]]:
    """The ``mcp`` list of a manifest's ``[agent]`` table, and every problem in it (each with its place)."""
    problems: list[Problem] = []
    if not isinstance(value, list):
        return (), [Problem(f"{where} key 'mcp'", "must be a list of tables ({name, command|url, ...})")]
    servers: list[McpServerConfig] = []
    seen: set[str] = set()
    for i, raw in enumerate(value):
        at = f"{where} key 'mcp[{i}]'"
        if not isinstance(raw, Mapping):
            problems.append(Problem(at, f"must be a table, got {type(raw).__name__}"))
            continue
        before = len(problems)
        for key in sorted(set(raw) - _KEYS):
            problems.append(Problem(at, f"unknown key {key!r} (known: {', '.join(sorted(_KEYS))})"))
        name = raw.get("name")
        if not isinstance(name, str) or not _SERVER.match(name):
            problems.append(Problem(at, f"name must match {_SERVER.pattern}, got {name!r}"))
        elif name in seen:
            problems.append(Problem(at, f"server name {name!r} is listed twice"))
        else:
            seen.add(name)
        command, url = raw.get("command"), raw.get("url")
        if (command is None) == (url is None):
            problems.append(Problem(at, "give exactly one of command (stdio) and url (streamable HTTP)"))
        if command is not None and (not isinstance(command, str) or not command):
            problems.append(Problem(at, f"command must be a non-empty string, got {command!r}"))
        if url is not None and (not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url)):
            problems.append(Problem(at, f"url must be an http:// or https:// URL, got {url!r}"))
        args = raw.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            problems.append(Problem(at, "args must be a list of strings"))
        for key in ("env", "headers"):
            table = raw.get(key, {})
            if not isinstance(table, Mapping) or not all(isinstance(v, str) for v in table.values()):
                problems.append(Problem(at, f"{key} must be a table of strings"))
        timeout = raw.get("timeout_s", 30.0)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 3600:
            problems.append(
                Problem(at, f"timeout_s must be a number of seconds in (0, 3600], got {timeout!r}")
            )
        if len(problems) == before:
            servers.append(
                McpServerConfig(
                    name=str(name),
                    command=command,
                    args=tuple(args),
                    env=dict(raw.get("env", {})),
                    url=url,
                    headers=dict(raw.get("headers", {})),
                    timeout_s=float(timeout),
                )
            )
    return tuple(servers), problems


def declared(tool: str, servers: tuple[McpServerConfig, ...]) -> bool:
    """Whether a manifest's tools entry names an MCP server of the manifest (``mcp.x`` or ``x.tool``)."""
    names = {s.name for s in servers}
    return (
        tool.removeprefix(PERMISSION_PREFIX) in names
        if tool.startswith(PERMISSION_PREFIX)
        else (tool.partition(".")[0] in names and "." in tool)
    )


def attach(
    registry: ToolRegistry, servers: tuple[McpServerConfig, ...], wanted: tuple[str, ...], source: str
) -> tuple[str, ...]:
    """Connect ``servers`` (once per worker) and register their tools; the agent's tools list expanded.

    ``mcp.<server>`` in ``wanted`` stands for every tool of that server and is replaced by their names (the
    host's allow list is by name). ConfigError names a wanted ``server.tool`` the server does not offer.
    """
    hub = _hub_for(registry)
    problems: list[Problem] = []
    for server in servers:
        try:
            hub.ensure(registry, server)
        except ConfigError as exc:
            problems.extend(exc.problems)
    names = registry.names()
    expanded: list[str] = []
    for tool in wanted:
        if not declared(tool, servers):
            expanded.append(tool)
            continue
        server = (
            tool.removeprefix(PERMISSION_PREFIX)
            if tool.startswith(PERMISSION_PREFIX)
            else tool.partition(".")[0]
        )
        offered = [n for n in names if n.startswith(server + ".")]
        if tool.startswith(PERMISSION_PREFIX):
            expanded.extend(n for n in offered if n not in expanded)
        elif tool in offered:
            expanded.append(tool)
        else:
            problems.append(
                Problem(
                    f"{source}: [agent] key 'tools'",
                    f"MCP server {server!r} has no tool {tool!r} (offered: {', '.join(offered) or 'none'})",
                )
            )
    if problems:
        raise ConfigError(problems)
    return tuple(dict.fromkeys(expanded))


_HUBS: weakref.WeakKeyDictionary[Any, McpHub] = weakref.WeakKeyDictionary()
_HUBS_LOCK = threading.Lock()


def _hub_for(registry: ToolRegistry) -> McpHub:
    with _HUBS_LOCK:
        hub = _HUBS.get(registry)
        if hub is None:
            hub = _HUBS[registry] = McpHub()
        return hub


class McpHub:
    """The MCP sessions of one worker, held open on an event loop thread of their own."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._configs: dict[str, McpServerConfig] = {}
        self._sessions: dict[str, Any] = {}  # name -> ClientSession while connected
        self._stops: dict[str, asyncio.Event] = {}

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="mcp-client", daemon=True).start()
                self._loop = loop
            return self._loop

    def ensure(self, registry: ToolRegistry, server: McpServerConfig) -> None:
        """Connect ``server`` and register its tools, unless this worker already did; ConfigError if not."""
        known = self._configs.get(server.name)
        if known is not None:
            if known.identity() != server.identity():
                raise ConfigError(
                    Problem(
                        f"[agent] key 'mcp' server {server.name!r}",
                        "this worker already runs an MCP server of that name with another command or url",
                    )
                )
            return
        tools = self._run(
            self._connect(server), server.timeout_s + 5, f"connecting MCP server {server.name!r}"
        )
        self._configs[server.name] = server
        for mcp_tool in tools:
            tool = _as_tool(self, server, mcp_tool)
            if registry.get(tool.name) is None:
                registry.register(tool)

    def call(self, server: McpServerConfig, tool: str, args: dict[str, Any]) -> Any:
        """Call ``tool`` on ``server`` (reconnecting a dead session once); the result's text, or ToolError."""
        return self._run(self._call(server, tool, args), server.timeout_s, f"MCP tool {server.name}.{tool}")

    def _run(self, coro: Any, timeout: float, what: str) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop())
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise Timeout(f"{what}: no answer within {timeout:g}s") from None

    async def _connect(self, server: McpServerConfig) -> list[Any]:
        ready: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        self._stops[server.name] = stop
        asyncio.get_running_loop().create_task(self._hold(server, ready, stop))
        try:
            return await ready
        except Exception as exc:
            raise ConfigError(
                Problem(
                    f"[agent] key 'mcp' server {server.name!r}",
                    f"cannot connect: {type(exc).__name__}: {exc}",
                )
            ) from None

    async def _hold(
        self, server: McpServerConfig, ready: asyncio.Future[list[Any]], stop: asyncio.Event
    ) -> None:
        """Keep one session open until ``stop`` (or the server goes away); one task enters and leaves it."""
        from mcp import ClientSession

        try:
            async with contextlib.AsyncExitStack() as stack:
                if server.command is not None:
                    from mcp.client.stdio import StdioServerParameters, stdio_client

                    params = StdioServerParameters(
                        command=server.command, args=list(server.args), env=dict(server.env) or None
                    )
                    read, write = await stack.enter_async_context(stdio_client(params))
                else:
                    import httpx2
                    from mcp.client.streamable_http import streamable_http_client

                    http = await stack.enter_async_context(
                        httpx2.AsyncClient(headers=dict(server.headers), timeout=server.timeout_s)
                    )
                    read, write = await stack.enter_async_context(
                        streamable_http_client(str(server.url), http_client=http)
                    )
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                tools = (await session.list_tools()).tools
                self._sessions[server.name] = session
                if not ready.done():
                    ready.set_result(list(tools))
                await stop.wait()
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
        finally:
            self._sessions.pop(server.name, None)

    async def _call(self, server: McpServerConfig, tool: str, args: dict[str, Any]) -> Any:
        session = self._sessions.get(server.name)
        if session is None:  # died since: start it again, once
            try:
                await self._connect(server)
            except ConfigError as exc:
                raise ToolError(f"MCP server {server.name!r} is down and did not come back: {exc}") from None
            session = self._sessions[server.name]
        result = await session.call_tool(tool, args)
        text = _result_text(result)
        if result.is_error:
            raise ToolError(f"{server.name}.{tool}: {text}")
        structured = getattr(result, "structured_content", None)
        return structured if structured is not None and not text else text


def _result_text(result: Any) -> str:
    parts = []
    for block in result.content or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            size = len(getattr(block, "data", "") or "")
            parts.append(f"[{kind} {getattr(block, 'mime_type', '')}, {size} base64 chars]")
        elif kind == "resource_link":
            parts.append(f"[resource {getattr(block, 'uri', '')}]")
        elif kind == "resource":
            resource = block.resource
            parts.append(getattr(resource, "text", None) or f"[resource {getattr(resource, 'uri', '')}]")
    return "\n".join(parts)


def _as_tool(hub: McpHub, server: McpServerConfig, mcp_tool: Any) -> Tool:
    remote = str(mcp_tool.name)
    name = f"{server.name}.{_UNSAFE.sub('_', remote)}"[:64]

    def call(_ctx: ToolContext, args: dict[str, Any]) -> Any:
        return hub.call(server, remote, args)

    return Tool(
        name=name,
        description=(mcp_tool.description or f"the {remote} tool of MCP server {server.name}")[:1024],
        schema=_schema(mcp_tool.input_schema),
        permission=server.permission,
        call=call,
    )


def _schema(schema: Any) -> dict[str, Any]:
    """The server's input schema in the registry's JSON-schema subset (the server checks the rest)."""

    def reduce(node: Any) -> Any:
        if not isinstance(node, Mapping):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key not in KNOWN_KEYWORDS:
                continue
            if key == "properties" and isinstance(value, Mapping):
                out[key] = {k: reduce(v) for k, v in value.items()}
            elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
                out[key] = reduce(value)
            else:
                out[key] = value
        return out

    reduced = reduce(schema) if isinstance(schema, Mapping) else {}
    reduced.setdefault("type", "object")
    return reduced if not check_schema(reduced) else {"type": "object"}
