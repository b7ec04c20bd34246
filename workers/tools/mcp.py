"""MCP servers as tool providers: their tools join the worker's registry as ``<server>.<tool>``.

A manifest names its servers in ``[agent] mcp`` (a stdio command, or a streamable HTTP URL)::

    mcp = [{name = "everything", command = "npx", args = ["-y", "@modelcontextprotocol/server-everything"]}]
    tools = ["mcp.everything"]          # every tool of that server; or one: "everything.echo"

At spawn the host connects each server this worker does not know yet (:func:`connect_later`: off the
host's loop, which must keep heartbeating while a server starts; the spawn resumes when all settled), with
the official ``mcp`` SDK's client (the ``http`` extra); :func:`attach` then registers each tool as a
:class:`~openfang.workers.tools.core.Tool` with permission ``mcp.<server>``. Calls then go through the
registry's one door like every other tool (allow list, argument check, and the host's injection,
exfiltration and audit layers on the result). A tool result the server flags ``isError`` is a failed call
(``tool_error``) with the server's text.

One asyncio loop on a thread of its own holds the sessions open (the SDK is async, the worker is not);
tool threads submit calls to it and wait with the server's ``timeout_s``. A server that died is started
again by the next call to one of its tools (once per call; its error is the call's error otherwise).
"""

from __future__ import annotations

import contextlib
import re
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from openfang.protocol.errors import ConfigError, Problem, Timeout
from openfang.workers.tools.core import Tool, ToolContext, ToolError
from openfang.workers.tools.schema import KNOWN_KEYWORDS, check_schema

if TYPE_CHECKING:
    import asyncio

    from openfang.workers.tools.core import ToolRegistry

_SERVER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_KEYS = {"name", "command", "args", "env", "url", "headers", "timeout_s", "memory_mb", "cpu_s", "max_files"}
PRLIMIT = "prlimit"
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
    # Resource limits of a stdio server (util-linux prlimit in front of the command; None: not limited).
    memory_mb: int | None = None  # address space (RLIMIT_AS)
    cpu_s: int | None = None  # CPU seconds over the server's life (RLIMIT_CPU)
    max_files: int | None = None  # open files (RLIMIT_NOFILE)

    def argv(self) -> tuple[str, list[str]]:
        """The command and arguments to start a stdio server, behind prlimit when it has limits."""
        assert self.command is not None
        limits = [
            f"--{flag}={value}"
            for flag, value in (
                ("as", self.memory_mb << 20 if self.memory_mb else None),
                ("cpu", f"{self.cpu_s}:{self.cpu_s + 1}" if self.cpu_s else None),
                ("nofile", self.max_files),
            )
            if value is not None
        ]
        if not limits:
            return self.command, list(self.args)
        return PRLIMIT, [*limits, "--", self.command, *self.args]

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
            (self.memory_mb, self.cpu_s, self.max_files),
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
        limits: dict[str, int | None] = {}
        for key in ("memory_mb", "cpu_s", "max_files"):
            value = raw.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                problems.append(Problem(at, f"{key} must be an integer >= 1, got {value!r}"))
                value = None
            limits[key] = value
        if url is not None and any(v is not None for v in limits.values()):
            problems.append(
                Problem(at, "memory_mb, cpu_s and max_files limit a stdio server (command), not a url")
            )
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
                    **limits,
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


def ready(registry: ToolRegistry, servers: tuple[McpServerConfig, ...]) -> bool:
    """Whether every server has been tried on this worker (so :func:`attach` will not wait for one)."""
    return _hub_for(registry).ready(servers)


def connect_later(
    registry: ToolRegistry, servers: tuple[McpServerConfig, ...], then: Callable[[], None]
) -> None:
    """Start (or join) the connections to ``servers`` off the caller's thread; ``then()`` once all settled.

    ``then`` runs on the MCP thread: hand the rest of the work to your own loop from there.
    """
    _hub_for(registry).connect_later(servers, then)


def attach(
    registry: ToolRegistry, servers: tuple[McpServerConfig, ...], wanted: tuple[str, ...], source: str
) -> tuple[str, ...]:
    """Register the tools of ``servers`` (connected before: :func:`ready`); the agent's tools list expanded.

    ``mcp.<server>`` in ``wanted`` stands for every tool of that server and is replaced by their names (the
    host's allow list is by name). ConfigError names a server that could not connect (the next spawn tries
    it again) and a wanted ``server.tool`` the server does not offer.
    """
    hub = _hub_for(registry)
    problems: list[Problem] = []
    for server in servers:
        try:
            hub.register(registry, server, source)
        except ConfigError as exc:
            problems.extend(exc.problems)
    names = registry.names()
    expanded: list[str] = []
    for tool in wanted:
        if not declared(tool, servers):
            expanded.append(tool)
            continue
        server_name = (
            tool.removeprefix(PERMISSION_PREFIX)
            if tool.startswith(PERMISSION_PREFIX)
            else tool.partition(".")[0]
        )
        offered = [n for n in names if n.startswith(server_name + ".")]
        if tool.startswith(PERMISSION_PREFIX):
            expanded.extend(offered)
        elif tool in offered:
            expanded.append(tool)
        elif not problems:
            problems.append(
                Problem(
                    f"{source}: [agent] key 'tools'",
                    f"MCP server {server_name!r} has no tool {tool!r} "
                    f"(offered: {', '.join(offered) or 'none'})",
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
    """The MCP sessions of one worker, held open on an event loop thread of their own.

    ``_settled`` (name -> the server's tools, or the exception its connection raised) is written by the MCP
    thread and read by the host's thread; ``_pending`` (name -> future of that outcome) and ``_sessions``
    belong to the MCP thread.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._configs: dict[str, McpServerConfig] = {}
        self._settled: dict[str, list[Any] | BaseException] = {}
        self._pending: dict[str, asyncio.Future[list[Any]]] = {}
        self._registered: set[str] = set()
        self._sessions: dict[str, Any] = {}  # name -> ClientSession while connected

    def loop(self) -> asyncio.AbstractEventLoop:
        import asyncio  # here: the worker imports this module for its config types, not its loop

        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="mcp-client", daemon=True).start()
                self._loop = loop
            return self._loop

    def ready(self, servers: tuple[McpServerConfig, ...]) -> bool:
        return all(s.name in self._settled for s in servers)

    def connect_later(self, servers: tuple[McpServerConfig, ...], then: Callable[[], None]) -> None:
        import asyncio

        async def settle_all() -> None:
            try:
                for server in servers:
                    future = self._pending.get(server.name)
                    if future is None:
                        future = self._pending[server.name] = asyncio.get_running_loop().create_future()
                        asyncio.get_running_loop().create_task(self._settle(server, future))
                    with contextlib.suppress(Exception):
                        await asyncio.shield(future)
            finally:
                then()

        asyncio.run_coroutine_threadsafe(settle_all(), self.loop())

    async def _settle(self, server: McpServerConfig, future: asyncio.Future[list[Any]]) -> None:
        import asyncio

        try:
            tools = await asyncio.wait_for(self._connect(server), server.timeout_s)
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else RuntimeError(str(exc))
            self._settled[server.name] = failure
            future.set_exception(failure)
            return
        self._configs[server.name] = server
        self._settled[server.name] = tools
        future.set_result(tools)

    def register(self, registry: ToolRegistry, server: McpServerConfig, source: str) -> None:
        """Register the settled server's tools once (host thread); ConfigError for a failure or a clash."""
        where = f"{source}: [agent] key 'mcp' server {server.name!r}"
        outcome = self._settled.get(server.name)
        if isinstance(outcome, BaseException) or outcome is None:
            # Forget the failure so the next spawn tries again (the MCP thread drops its future too).
            self._settled.pop(server.name, None)
            self.loop().call_soon_threadsafe(self._pending.pop, server.name, None)
            why = f"{type(outcome).__name__}: {outcome}" if outcome is not None else "not connected"
            raise ConfigError(Problem(where, f"cannot connect: {why}"))
        known = self._configs.get(server.name)
        if known is not None and known.identity() != server.identity():
            raise ConfigError(
                Problem(where, "this worker runs an MCP server of that name with another command or url")
            )
        if server.name in self._registered:
            return
        for mcp_tool in outcome:
            tool = _as_tool(self, server, mcp_tool)
            if registry.get(tool.name) is None:
                registry.register(tool)
        self._registered.add(server.name)

    def call(self, server: McpServerConfig, tool: str, args: dict[str, Any]) -> Any:
        """Call ``tool`` on ``server`` (reconnecting a dead session once); the result's text, or ToolError."""
        import asyncio

        future = asyncio.run_coroutine_threadsafe(self._call(server, tool, args), self.loop())
        try:
            return future.result(server.timeout_s)
        except TimeoutError:
            future.cancel()
            raise Timeout(f"MCP tool {server.name}.{tool}: no answer within {server.timeout_s:g}s") from None

    async def _connect(self, server: McpServerConfig) -> list[Any]:
        import asyncio

        ready: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().create_task(self._hold(server, ready))
        return await ready

    async def _hold(self, server: McpServerConfig, ready: asyncio.Future[list[Any]]) -> None:
        """Keep one session open while the worker lives (or until the server goes away).

        One task enters and leaves the SDK's context managers (anyio's cancel scopes require it).
        """
        import asyncio

        from mcp import ClientSession

        try:
            async with contextlib.AsyncExitStack() as stack:
                if server.command is not None:
                    from mcp.client.stdio import StdioServerParameters, stdio_client

                    command, argv = server.argv()
                    params = StdioServerParameters(command=command, args=argv, env=dict(server.env) or None)
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
                await asyncio.Event().wait()  # forever: the session lives as long as the worker
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
        finally:
            self._sessions.pop(server.name, None)

    async def _call(self, server: McpServerConfig, tool: str, args: dict[str, Any]) -> Any:
        import asyncio

        session = self._sessions.get(server.name)
        if session is None:  # died since: start it again, once
            try:
                await asyncio.wait_for(self._connect(server), server.timeout_s)
            except Exception as exc:
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
