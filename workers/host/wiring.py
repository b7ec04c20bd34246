"""Builds a worker's :class:`AgentHost` with the real services: LLM providers, tools, events, audit.

Kept apart from ``worker.py`` so the process loop does not need to know how an agent's world is assembled.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openfang.protocol.errors import ConfigError
from openfang.security.config import open_audit, security_from_args
from openfang.workers.host.agent_host import AgentHost, HostParts
from openfang.workers.host.memory import HostMemory
from openfang.workers.host.security import HostAudit, HostSecurity
from openfang.workers.llm.providers import make_provider
from openfang.workers.manifest import ModelConfig
from openfang.workers.sandbox import shipped
from openfang.workers.tools.mcp import McpServerConfig, parse_servers
from openfang.workers.tools.registry import ToolRegistry, default_registry

if TYPE_CHECKING:  # the worker opens its memory only when the cluster has a memory writer
    from openfang.memory.api import MemoryAPI

EventSink = Callable[[dict[str, Any]], None]


def _provider_for(model: ModelConfig) -> Any:
    return make_provider(model.raw or {"provider": model.provider}, where=model.where)


def load_tool_modules(registry: ToolRegistry, specs: Sequence[str]) -> None:
    """Let each ``"package.module:function"`` in ``specs`` register extra tools: ``function(registry)``.

    This is how a deployment adds its own tools (the worker's ``args.tool_modules``). A spec that cannot
    be imported fails the worker's start, naming the spec, rather than leaving agents without their tools.
    """
    for spec in specs:
        module_name, sep, func_name = str(spec).partition(":")
        if not sep:
            raise ConfigError(f"worker args.tool_modules: {spec!r} must look like 'package.module:function'")
        try:
            register = getattr(importlib.import_module(module_name), func_name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"worker args.tool_modules: cannot load {spec!r}: {exc}") from None
        register(registry)


def build_host(
    worker_id: str,
    args: Mapping[str, Any],
    *,
    events: EventSink,
    audit: EventSink,
    memory: MemoryAPI | None = None,
) -> AgentHost:
    """The agent host of one worker process (``args`` are the worker's child args), called after the fork.

    ``memory`` is this cluster's memory (None when the cluster has no memory writer). The security config
    is ``args["security"]`` (``{"table", "source", "data_dir", "base_dir"}``, as the gateway gets it) or,
    without it, the defaults with paths under ``OPENFANG_DATA_DIR``. Every refusal goes to this process's
    handle on the audit chain (``[security.audit] path``) *and* to ``audit`` (the worker's log line).
    ``args["max_agents"]`` caps the agents this worker hosts at once (spawns past it answer ``busy``).
    ``args["idle_hibernate_s"]`` is the idle time before an agent whose manifest does not say is hibernated
    (absent or 0: never); snapshots go to ``<data_dir>/snapshots``. ``args["max_resident"]`` bounds the agents
    holding a sandbox at once: past it the least recently used idle ones are hibernated (absent: no bound).
    ``args["mcp"]`` lists MCP servers (as a manifest's ``mcp``) that any agent here may name in its tools.
    """
    registry = default_registry()
    load_tool_modules(registry, list(args.get("tool_modules") or []))
    config = security_from_args(args.get("security"), data_dir=os.environ.get("OPENFANG_DATA_DIR"))
    data_dir = os.environ.get("OPENFANG_DATA_DIR") or (args.get("security") or {}).get("data_dir")
    security = HostSecurity(
        config, HostAudit(open_audit(config), also=audit), data_dir=Path(data_dir) if data_dir else None
    )
    parts = HostParts(
        llm_factory=_provider_for,
        tools=registry,
        events=events,
        max_threads=int(args.get("io_threads", 4)),
        security=security,
        memory=HostMemory(memory) if memory is not None else None,
        max_agents=int(args["max_agents"]) if args.get("max_agents") else None,
        mcp_servers=_mcp_servers(worker_id, args),
        snapshot_dir=Path(data_dir) / "snapshots" if data_dir else None,
        # Compiled guests (0700): a restarted worker or daemon maps them instead of compiling, and workers
        # share their pages through the page cache.
        module_cache_dir=Path(data_dir) / "modules" if data_dir else None,
        # The built-in guests compiled by `make install` (workers/sandbox/shipped.py), when it ran.
        shipped_module_dir=shipped.default_folder(),
        idle_hibernate_s=_idle_default(args),
        max_resident=_max_resident(args),
    )
    return AgentHost(worker_id, parts)


def _mcp_servers(worker_id: str, args: Mapping[str, Any]) -> tuple[McpServerConfig, ...]:
    """MCP servers every agent of this worker may name (cluster.toml worker args ``mcp``)."""
    if "mcp" not in args:
        return ()
    servers, problems = parse_servers(args["mcp"], f"worker {worker_id} args")
    if problems:
        raise ConfigError(problems)
    return tuple(servers)


def _idle_default(args: Mapping[str, Any]) -> float | None:
    """The cluster's idle_hibernate_s for agents whose manifest leaves it out (worker args)."""
    value = args.get("idle_hibernate_s")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 30 * 86400:
        raise ConfigError(
            f"worker args.idle_hibernate_s: must be a number of seconds from 0 to 2592000, got {value!r}"
        )
    return float(value) or None


def _max_resident(args: Mapping[str, Any]) -> int | None:
    """At most this many agents of this worker hold a sandbox (worker args ``max_resident``; absent: none)."""
    value = args.get("max_resident")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"worker args.max_resident: must be a positive integer, got {value!r}")
    return value
