"""The worker's tool registry knows every built-in tool from a generated index and imports a tool's module
only when an agent may use it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from openfang.workers.tools import _index_gen
from openfang.workers.tools.core import LazyTool, Tool, ToolContext, ToolRegistry
from openfang.workers.tools.registry import PERMISSIONS, builtin_tools, default_registry


def test_tool_index_is_what_the_generator_makes_now() -> None:
    """_index.py matches the tool modules (regenerate with python -m openfang.workers.tools._index_gen)."""
    assert _index_gen.INDEX.read_text() == _index_gen.render()


def test_default_registry_knows_every_builtin_tool_by_name_and_permission() -> None:
    """Names and permissions from the index are those of the tools themselves, and none is missing."""
    tools = builtin_tools()
    registry = default_registry()
    assert registry.names() == sorted(t.name for t in tools)
    for tool in tools:
        assert tool.name in PERMISSIONS[tool.permission]
        assert registry.get(tool.name) is tool


def test_worker_registry_imports_only_the_tool_modules_an_allow_list_reaches() -> None:
    """In a fresh interpreter: building the registry imports no tool module; offering the `fs` tools to an
    agent imports the files module and not the shell, web or documents modules."""
    code = """
import json, sys
from openfang.workers.tools.registry import default_registry
mods = lambda: sorted(m for m in sys.modules if m.startswith("openfang.workers.tools."))
reg = default_registry()
before = mods()
specs = reg.specs_for(frozenset({"fs_glob"}))
out = {"before": before, "after": mods(), "specs": [s.name for s in specs], "loaded": reg.loaded()}
print(json.dumps(out))
"""
    out = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    tool_modules = {"builtin", "calc", "text", "data", "net", "web", "a2a", "task", "host", "files", "shell"}
    assert not {m.rsplit(".", 1)[1] for m in out["before"]} & tool_modules, out["before"]
    assert out["specs"] == ["fs_glob"] and out["loaded"] == ["fs_glob"]
    imported = {m.rsplit(".", 1)[1] for m in out["after"]}
    assert "files" in imported and not imported & {"shell", "web", "documents", "calc"}, out["after"]


def test_lazy_tool_loads_once_under_concurrent_first_calls() -> None:
    """Eight threads calling a lazy tool at once import it once and all get its answer."""
    loads: list[int] = []
    echo = Tool(
        name="echo",
        description="echo",
        schema={"type": "object"},
        permission="echo",
        call=lambda ctx, args: args,
        blocking=False,
    )

    def load() -> Tool:
        loads.append(1)
        return echo

    registry = ToolRegistry()
    registry.register_lazy(LazyTool("echo", "echo", load))
    ctx = ToolContext(agent_id="a1", allowed=frozenset({"echo"}))
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(registry.invoke(ctx, "echo", {"n": 1}).value))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == [1] and results == [{"n": 1}] * 8


def test_lazy_tool_that_cannot_load_fails_its_call_not_the_registry() -> None:
    """A tool module that fails to import answers tool_error naming the cause; other tools still run."""

    def broken() -> Tool:
        raise ImportError("No module named 'missing_dep'")

    registry = default_registry()
    registry.register_lazy(LazyTool("broken_tool", "broken", broken))
    ctx = ToolContext(agent_id="a1", allowed=frozenset({"broken", "time"}))
    failed = registry.invoke(ctx, "broken_tool", {})
    assert not failed.ok and failed.code == "tool_error" and "missing_dep" in (failed.error or "")
    assert registry.invoke(ctx, "time_now", {}).ok


def test_lazy_tool_whose_permission_changed_is_refused_as_a_stale_index() -> None:
    """An index entry that disagrees with the loaded tool (a stale index) is an error, not a silent grant."""
    tool = Tool(name="t", description="t", schema={"type": "object"}, permission="real", call=lambda c, a: 1)
    registry = ToolRegistry()
    registry.register_lazy(LazyTool("t", "stale", lambda: tool))
    with pytest.raises(ValueError, match="regenerate the tool index"):
        registry.get("t")


def test_worker_module_loads_no_http_provider_until_a_manifest_uses_one() -> None:
    """Importing the worker (as the daemon does before forking) loads neither the HTTP LLM providers nor
    http.client; building an OpenAI-style provider imports them then."""
    code = """
import json, sys
import openfang.workers.worker
from openfang.workers.llm.providers import make_provider
watched = ("http.client", "openfang.workers.llm.openai_chat", "openfang.workers.llm.anthropic_messages")
before = [m for m in watched if m in sys.modules]
make_provider({"provider": "ollama", "name": "llama3"})
print(json.dumps({"before": before, "after": [m for m in watched if m in sys.modules]}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(done.stdout)
    assert out["before"] == [], out
    assert out["after"] == ["http.client", "openfang.workers.llm.openai_chat"], out
