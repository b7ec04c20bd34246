"""Tools an agent may call: the :class:`Tool` value, the context a call runs in, and the registry.

:meth:`ToolRegistry.invoke` is the one door every tool call goes through. In order, it:

1. looks the tool up (``not_found``),
2. checks the agent's allow list, default deny (``denied``): an entry names a tool (``http_fetch``), a
   permission (``net.http``), or ``*`` for every tool,
3. validates the arguments against the tool's JSON schema and fills defaults (``bad_args``),
4. runs the tool and times it.

It never raises for a failing tool: every failure comes back as a :class:`ToolResult` with ``ok=False``, a
``code`` (the ``OpenFangError`` code the tool raised, or ``tool_error`` for any other exception) and a
message, so a broken tool cannot take its agent, or the worker, down with it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from openfang.protocol.errors import AlreadyExists, OpenFangError
from openfang.workers.llm.types import ToolSpec
from openfang.workers.tools.errors import ToolError as ToolError  # re-exported: tools import it from here
from openfang.workers.tools.schema import check_schema, compile_validator

if TYPE_CHECKING:
    from openfang.security.netguard import Resolver
    from openfang.workers.tools.kv import KVNamespace

log = structlog.get_logger("openfang.tools")
# What OpenAI and Anthropic accept as a function name, plus "." for MCP tools (``server.tool``).
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ALL = "*"

# A host callback gets the calling agent's id and the validated tool arguments; it returns a JSON value
# or raises OpenFangError (its code and message become the error result).
HostCallback = Callable[[str, dict[str, Any]], Any]
# Called before any outgoing request a tool makes, on every hop: (tool, url, headers, body). Raises
# SecurityError to refuse (the host plugs the exfiltration guard in here).
EgressCheck = Callable[[str, str, Mapping[str, str], str | None], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class ShellPolicy:
    """What an agent's ``shell_exec`` may run, and with which limits (``[agent.shell]`` in its manifest)."""

    allow: tuple[str, ...] = ()
    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 512
    max_output_bytes: int = 256 << 10
    max_processes: int = 64  # binds only when the daemon does not run as root (RLIMIT_NPROC)


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchConfig:
    """Where ``web_search`` asks (``[agent.web_search]`` in a manifest, or the daemon's environment)."""

    backend: str  # searxng, brave or tavily
    base_url: str | None = None  # None: the backend's public API (SearXNG has none: required)
    api_key_env: str | None = None  # None: BRAVE_API_KEY / TAVILY_API_KEY
    max_results: int = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolContext:
    """What one agent's tool calls may touch. Absent callbacks make their tools answer "not available"."""

    agent_id: str
    allowed: frozenset[str] = frozenset()
    fs_root: Path | None = None
    kv: KVNamespace | None = None
    send: HostCallback | None = None
    spawn: HostCallback | None = None
    list_agents: HostCallback | None = None
    memory_store: HostCallback | None = None
    memory_recall: HostCallback | None = None
    memory_history: HostCallback | None = None
    task_update: HostCallback | None = None  # task_update: the outcome of the message in progress
    memory_forget: HostCallback | None = None
    # schedule_add / schedule_list / schedule_remove: args carry "op" (add, list, remove)
    schedule: HostCallback | None = None
    broadcast: HostCallback | None = None  # agent_broadcast
    topic: HostCallback | None = None  # topic_subscribe / topic_unsubscribe / topic_publish: args carry "op"
    # http_fetch policy: hosts/addresses/CIDRs exempt from the SSRF address check, and a blanket opt-in
    # for private addresses (never metadata ones). ``resolver`` replaces DNS (tests, a worker DNS cache).
    net_allow_hosts: tuple[str, ...] = ()
    net_allow_private: bool = False
    resolver: Resolver | None = field(default=None, repr=False)
    egress_check: EgressCheck | None = field(default=None, repr=False)
    shell: ShellPolicy | None = None  # shell_exec: the manifest's [agent.shell]; None allows nothing
    web_search: SearchConfig | None = None  # the manifest's [agent.web_search]; None: the environment's


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolResult:
    """The outcome of one call: ``value`` when ``ok``, else ``code`` and ``error``."""

    ok: bool
    value: Any = None
    error: str | None = None
    code: str | None = None
    duration_ms: float = 0.0

    @classmethod
    def success(cls, value: Any, duration_ms: float) -> ToolResult:
        """``ToolResult(ok=True, value=value, duration_ms=duration_ms)``, its slots set through their
        descriptors (the frozen ``__init__`` goes through ``object.__setattr__`` per field: ~1 us more;
        tests/workers/test_tools_schema_compiled.py checks it field by field)."""
        result = object.__new__(cls)
        put = _RESULT_SET
        put[0](result, True)
        put[1](result, value)
        put[2](result, None)
        put[3](result, None)
        put[4](result, duration_ms)
        return result

    def to_wire(self) -> dict[str, Any]:
        """The result as plain data (msgpack/JSON)."""
        if self.ok:
            return {"ok": True, "value": self.value, "duration_ms": self.duration_ms}
        return {"ok": False, "code": self.code, "error": self.error, "duration_ms": self.duration_ms}

    def as_text(self) -> str:
        """The result as the content of a ``tool`` chat message (JSON text, or ``error (code): ...``)."""
        if not self.ok:
            return f"error ({self.code}): {self.error}"
        if isinstance(self.value, str):
            return self.value
        try:
            return json.dumps(self.value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            return str(self.value)


def _result_setters() -> tuple[Callable[[Any, Any], None], ...]:
    names = ("ok", "value", "error", "code", "duration_ms")
    if tuple(f.name for f in fields(ToolResult)) != names:
        raise TypeError(f"ToolResult.success sets {names}, not the class's fields")
    return tuple(vars(ToolResult)[name].__set__ for name in names)


_RESULT_SET = _result_setters()


@dataclass(frozen=True, slots=True, kw_only=True)
class Tool:
    """A callable tool: what the model sees (name, description, schema) and what guards it (permission)."""

    name: str
    description: str
    schema: Mapping[str, Any]
    permission: str
    call: Callable[[ToolContext, dict[str, Any]], Any] = field(repr=False)
    # False: instant and I/O-free, so the agent host may run it inline instead of on a thread.
    blocking: bool = True

    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, parameters=self.schema)


class Named(Protocol):
    """What an allow list is checked against: a tool, or an index entry of one not imported yet."""

    @property
    def name(self) -> str: ...
    @property
    def permission(self) -> str: ...


def is_allowed(tool: Named, allowed: frozenset[str]) -> bool:
    """Whether an allow list lets ``tool`` run (by its name, its permission, or ``*``)."""
    return tool.name in allowed or tool.permission in allowed or ALL in allowed


@dataclass(frozen=True, slots=True)
class LazyTool:
    """A tool known by name and permission whose module is imported on first use (``load`` returns it)."""

    name: str
    permission: str
    load: Callable[[], Tool] = field(repr=False, compare=False)


class ToolRegistry:
    """The tools of one worker. Register at start-up; invoke from any thread afterwards.

    A tool may be registered lazily (:meth:`register_lazy`): only its name and permission are known until
    a manifest that may use it asks for its spec or calls it, and then its module is imported once. So a
    worker whose agents use three tools never imports the other fifty (and their parsers, HTTP clients...).
    """

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool | LazyTool] = {}
        self._loading = threading.Lock()
        # name -> (the schema, its compiled validator): read once per tool, not keyword by keyword per call.
        self._validators: dict[str, tuple[Mapping[str, Any], Callable[..., tuple[Any, list[str]]]]] = {}
        for t in tools:
            self.register(t)

    def register(self, tool: Tool) -> None:
        """Add ``tool``; a bad name or schema raises ValueError, a taken name AlreadyExists."""
        self._check_name(tool.name)
        self._check(tool)
        self._tools[tool.name] = tool

    def register_lazy(self, entry: LazyTool) -> None:
        """Add a tool by name and permission; ``entry.load()`` must later return a Tool of both."""
        self._check_name(entry.name)
        self._tools[entry.name] = entry

    def _check_name(self, name: str) -> None:
        if not _NAME.match(name):
            raise ValueError(f"tool name {name!r} must match {_NAME.pattern}")
        if name in self._tools:
            raise AlreadyExists(f"tool {name!r} is already registered")

    @staticmethod
    def _check(tool: Tool) -> None:
        problems = check_schema(tool.schema, f"tool {tool.name} schema")
        if problems:
            raise ValueError("; ".join(problems))

    def get(self, name: str) -> Tool | None:
        """The tool ``name`` (importing its module if it was registered lazily), or None."""
        entry = self._tools.get(name)
        if not isinstance(entry, LazyTool):
            return entry
        with self._loading:  # tool calls run on the host's threads: one import, one check
            entry = self._tools[name]
            if isinstance(entry, LazyTool):
                tool = entry.load()
                if (tool.name, tool.permission) != (entry.name, entry.permission):
                    raise ValueError(
                        f"tool {name!r} loaded as {tool.name!r} with permission {tool.permission!r}, "
                        f"but was registered with {entry.permission!r} (regenerate the tool index)"
                    )
                self._check(tool)
                self._tools[name] = entry = tool
        return entry

    def __contains__(self, name: object) -> bool:
        """Whether a tool of that name is registered (a lazily registered one is not imported)."""
        return name in self._tools

    def names(self) -> list[str]:
        return sorted(self._tools)

    def loaded(self) -> list[str]:
        """The tools whose module has been imported (for tests and `openfang status`)."""
        return sorted(n for n, t in self._tools.items() if not isinstance(t, LazyTool))

    def specs_for(self, allowed: frozenset[str]) -> list[ToolSpec]:
        """The specs of the tools ``allowed`` lets run, sorted by name (what the model is offered)."""
        names = [n for n in sorted(self._tools) if is_allowed(self._tools[n], allowed)]
        return [tool.spec() for n in names if (tool := self.get(n)) is not None]

    def invoke(self, ctx: ToolContext, name: str, args: Any) -> ToolResult:
        """Run tool ``name`` for ``ctx.agent_id``; never raises for the tool's own failures."""
        start = time.perf_counter()

        def fail(code: str, message: str) -> ToolResult:
            ms = (time.perf_counter() - start) * 1000
            log.debug("tool_failed", agent_id=ctx.agent_id, tool=name, code=code, error=message)
            return ToolResult(ok=False, code=code, error=message, duration_ms=ms)

        try:
            tool = self.get(name)
        except Exception as exc:  # a tool module that cannot be imported fails its calls, not the host
            log.warning("tool_load_failed", agent_id=ctx.agent_id, tool=name, exc_info=True)
            return fail("tool_error", f"tool {name!r} could not be loaded: {type(exc).__name__}: {exc}")
        if tool is None:
            return fail("not_found", f"no tool named {name!r}")
        if not is_allowed(tool, ctx.allowed):
            return fail(
                "denied",
                f"agent {ctx.agent_id!r} may not use {name!r} (needs {name!r} or {tool.permission!r})",
            )
        if args is None:
            args = {}
        if type(args) is not dict and not isinstance(args, Mapping):
            return fail("bad_args", f"arguments must be an object, got {type(args).__name__}")
        compiled = self._validators.get(name)
        if compiled is None or compiled[0] is not tool.schema:
            compiled = (tool.schema, compile_validator(tool.schema))
            self._validators[name] = compiled  # one dict write: safe from any thread (the GIL)
        args, problems = compiled[1](dict(args))
        if problems:
            return fail("bad_args", "; ".join(problems))
        try:
            value = tool.call(ctx, args)
        except OpenFangError as exc:
            return fail(exc.code, exc.message)
        except Exception as exc:  # a bug in one tool must not reach the agent host: it becomes data
            log.warning("tool_crashed", agent_id=ctx.agent_id, tool=name, exc_info=True)
            return fail("tool_error", f"{type(exc).__name__}: {exc}")
        return ToolResult.success(value, (time.perf_counter() - start) * 1000)
