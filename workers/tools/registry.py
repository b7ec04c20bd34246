"""The tool registry of agents: the public face of ``workers/tools/`` and the built-in tool set.

    core       Tool, ToolContext, ToolResult, ToolRegistry (allow list, schema check, timing, lazy tools)
    schema     the JSON-schema subset validator
    kv         KVStore / KVNamespace behind kv_get / kv_set
    _index     generated: every built-in tool's permission and module (so none is imported up front)
    builtin, calc, text, data, net, web, a2a, task, host, files, documents, shell: the tools (TOOL_MODULES)
    mcp        MCP servers' tools, registered when an agent that names the server spawns

Typical use in an agent host::

    registry = default_registry()                  # once per worker
    kv = KVStore()                                 # once per worker
    ctx = ToolContext(agent_id="a1", allowed=frozenset({"time", "kv", "http_fetch"}), kv=kv.namespace("a1"))
    specs = registry.specs_for(ctx.allowed)        # offered to the model
    result = registry.invoke(ctx, call.name, call.arguments)   # never raises for tool failures
    messages.append(ChatMessage.tool(call.id, result.as_text(), name=call.name))

Permissions are listed in ``docs/llm-and-tools.md``.
"""

from __future__ import annotations

import importlib

from openfang.workers.tools._index import BUILTIN_INDEX
from openfang.workers.tools.core import (
    ALL,
    EgressCheck,
    HostCallback,
    LazyTool,
    SearchConfig,
    ShellPolicy,
    Tool,
    ToolContext,
    ToolError,
    ToolRegistry,
    ToolResult,
    is_allowed,
)
from openfang.workers.tools.kv import KVLimits, KVNamespace, KVStore
from openfang.workers.tools.schema import check_schema, validate

# Where the built-in tools live, in documentation order: (module, the attribute holding a tool or a tuple
# of them). The generated _index.py names every tool's permission and module from this list, so a worker
# knows every tool without importing one. After a change: python -m openfang.workers.tools._index_gen --write
# (tests/workers/test_tools_registry_lazy.py fails while it is stale).
TOOL_MODULES: tuple[tuple[str, str], ...] = (
    ("openfang.workers.tools.builtin", "BUILTIN_TOOLS"),
    ("openfang.workers.tools.calc", "CALC_TOOLS"),
    ("openfang.workers.tools.text", "TEXT_TOOLS"),
    ("openfang.workers.tools.data", "DATA_TOOLS"),
    ("openfang.workers.tools.net", "HTTP_FETCH"),
    ("openfang.workers.tools.web", "WEB_TOOLS"),
    ("openfang.workers.tools.a2a", "A2A_SEND"),
    ("openfang.workers.tools.task", "TASK_UPDATE"),
    ("openfang.workers.tools.host", "HOST_TOOLS"),
    ("openfang.workers.tools.files", "FILE_TOOLS"),
    ("openfang.workers.tools.documents", "DOCUMENT_TOOLS"),
    ("openfang.workers.tools.shell", "SHELL_TOOLS"),
)

__all__ = [
    "ALL",
    "PERMISSIONS",
    "TOOL_MODULES",
    "EgressCheck",
    "HostCallback",
    "KVLimits",
    "KVNamespace",
    "KVStore",
    "LazyTool",
    "SearchConfig",
    "ShellPolicy",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "builtin_tools",
    "check_schema",
    "default_registry",
    "is_allowed",
    "validate",
]


def _module_tools(module: str, attr: str) -> tuple[Tool, ...]:
    found = getattr(importlib.import_module(module), attr)
    return (found,) if isinstance(found, Tool) else tuple(found)


def builtin_tools() -> tuple[Tool, ...]:
    """Every built-in tool, in documentation order (imports every tool module)."""
    return tuple(tool for module, attr in TOOL_MODULES for tool in _module_tools(module, attr))


def _loader(name: str, module: str, attr: str) -> LazyTool:
    def load() -> Tool:
        for tool in _module_tools(module, attr):
            if tool.name == name:
                return tool
        raise ValueError(f"{module}.{attr} has no tool {name!r} (regenerate the tool index)")

    return LazyTool(name, BUILTIN_INDEX[name][0], load)


# permission -> the built-in tools it unlocks (an allow list may name either).
PERMISSIONS: dict[str, tuple[str, ...]] = {}
for _name, (_permission, _module, _attr) in BUILTIN_INDEX.items():
    PERMISSIONS[_permission] = (*PERMISSIONS.get(_permission, ()), _name)


def default_registry() -> ToolRegistry:
    """A fresh registry knowing every built-in tool, each imported on first use (register your own on top)."""
    registry = ToolRegistry()
    for name, (_permission, module, attr) in BUILTIN_INDEX.items():
        registry.register_lazy(_loader(name, module, attr))
    return registry
