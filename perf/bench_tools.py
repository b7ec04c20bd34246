"""The tool-chain workload's three tools as OpenFANG tools, for the system benchmark.

A worker loads them when its pool args say ``tool_modules = ["perf.bench_tools:register"]`` (see
``workers/host/wiring.py``). Each wraps the shared definition in :mod:`perf.workloads`, so every system
runs exactly the same tool code; they are pure and instant, hence ``blocking=False`` (run inline by the
agent host, no thread hop), as a peer's in-process ``@tool`` function is.
"""

from __future__ import annotations

from typing import Any

from openfang.workers.tools.registry import Tool, ToolContext, ToolRegistry
from perf import workloads

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"value": {"type": "string", "maxLength": 256}},
    "required": ["value"],
    "additionalProperties": False,
}


def _tool(name: str) -> Tool:
    fn = workloads.TOOL_FUNCTIONS[name]

    def call(_ctx: ToolContext, args: dict[str, Any]) -> str:
        return fn(str(args["value"]))

    return Tool(
        name=name,
        description=f"benchmark tool {name} (perf/workloads.py tool_{name})",
        schema=_SCHEMA,
        permission="bench",
        call=call,
        blocking=False,
    )


def register(registry: ToolRegistry) -> None:
    """Add ``lookup``, ``compute`` and ``render`` (permission ``bench``) to a worker's registry."""
    for name in workloads.TOOLS:
        registry.register(_tool(name))
