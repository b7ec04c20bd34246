"""The tool registry of agents: the public face of ``workers/tools_*.py`` and the built-in tool set.

    tools_core     Tool, ToolContext, ToolResult, ToolRegistry (allow list, schema check, timing)
    tools_schema   the JSON-schema subset validator
    tools_kv       KVStore / KVNamespace behind kv_get / kv_set
    tools_builtin  time_now, json_parse, json_query, text_count, text_regex, kv_get, kv_set
    tools_net      http_fetch (through the SSRF guard)
    tools.a2a      a2a_send (a remote A2A agent, through the SSRF guard; needs the http extra)
    tools.mcp      MCP servers' tools, registered when an agent that names the server spawns
    tools_host     fs_read_scoped, fs_write_scoped, fs_list_scoped, agent_send, agent_spawn, agent_list,
                   memory_store, memory_recall (through ScopedFS and the host's callbacks)

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

from openfang.workers.tools.a2a import A2A_SEND
from openfang.workers.tools.builtin import BUILTIN_TOOLS
from openfang.workers.tools.calc import CALC_TOOLS
from openfang.workers.tools.core import (
    ALL,
    EgressCheck,
    HostCallback,
    SearchConfig,
    ShellPolicy,
    Tool,
    ToolContext,
    ToolError,
    ToolRegistry,
    ToolResult,
    is_allowed,
)
from openfang.workers.tools.data import DATA_TOOLS
from openfang.workers.tools.documents import DOCUMENT_TOOLS
from openfang.workers.tools.files import FILE_TOOLS
from openfang.workers.tools.host import HOST_TOOLS
from openfang.workers.tools.kv import KVLimits, KVNamespace, KVStore
from openfang.workers.tools.net import HTTP_FETCH
from openfang.workers.tools.schema import check_schema, validate
from openfang.workers.tools.shell import SHELL_TOOLS
from openfang.workers.tools.task import TASK_UPDATE
from openfang.workers.tools.text import TEXT_TOOLS
from openfang.workers.tools.web import WEB_TOOLS

__all__ = [
    "ALL",
    "PERMISSIONS",
    "EgressCheck",
    "HostCallback",
    "KVLimits",
    "KVNamespace",
    "KVStore",
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


def builtin_tools() -> tuple[Tool, ...]:
    """Every built-in tool, in documentation order."""
    return (
        *BUILTIN_TOOLS,
        *CALC_TOOLS,
        *TEXT_TOOLS,
        *DATA_TOOLS,
        HTTP_FETCH,
        *WEB_TOOLS,
        A2A_SEND,
        TASK_UPDATE,
        *HOST_TOOLS,
        *FILE_TOOLS,
        *DOCUMENT_TOOLS,
        *SHELL_TOOLS,
    )


# permission -> the built-in tools it unlocks (an allow list may name either).
PERMISSIONS: dict[str, tuple[str, ...]] = {}
for _t in builtin_tools():
    PERMISSIONS[_t.permission] = (*PERMISSIONS.get(_t.permission, ()), _t.name)


def default_registry() -> ToolRegistry:
    """A fresh registry holding every built-in tool (register your own on top)."""
    return ToolRegistry(builtin_tools())
