"""A worker's figures: LLM calls per provider and model with their error kinds, tool calls by registered name,
and a fallback chain's failed attempts counted for the provider that failed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from openfang.workers.host.services import usage_recorder
from openfang.workers.host.stats import HostStats, llm_error_kind
from openfang.workers.llm.scripted import FallbackProvider, ScriptedProvider
from openfang.workers.llm.types import ChatMessage, ChatRequest, LLMError


def test_llm_error_kinds_are_a_small_fixed_set() -> None:
    """HTTP statuses fold into classes; causes map onto timeout, connection, bad_response, config, error."""
    assert llm_error_kind(LLMError("p", "x", status=503)) == "http_5xx"
    assert llm_error_kind(LLMError("p", "x", status=429)) == "http_4xx"
    assert llm_error_kind(LLMError("p", "x", cause="malformed")) == "bad_response"
    assert llm_error_kind(LLMError("p", "x", cause="timeout")) == "timeout"
    assert llm_error_kind(LLMError("p", "x")) == "error"


def test_host_stats_name_only_registered_tools_and_split_fallback_failures() -> None:
    """Unknown tool names add up under 'unknown'; each failed attempt of a chain counts for its provider."""
    stats = HostStats("w")
    stats.tool_called("time_now", "ok")
    stats.tool_called("made_up_tool_1", "denied", known=False)
    stats.tool_called("made_up_tool_2", "denied", known=False)
    chain = LLMError("chain", "all failed", attempts=[LLMError("a", "x", status=500), LLMError("b", "y")])
    stats.llm_error(chain, 0.5)
    wire = stats.to_wire()
    assert {t["tool"]: t["denials"] for t in wire["tools"]} == {"time_now": 0, "unknown": 2}
    assert {(e["provider"], tuple(e["errors"].items())) for e in wire["llm"]} == {
        ("a", (("http_5xx", 1),)),
        ("b", (("error", 1),)),
    }


def test_fallback_answer_carries_the_failed_attempts_into_the_figures() -> None:
    """A chain whose first provider fails: the answer names it, the recorder counts both."""
    broken = ScriptedProvider.from_config(
        {"provider": "scripted", "label": "first", "script": [{"match": "", "error": "down"}]}
    )
    backup = ScriptedProvider.from_config({"provider": "scripted", "label": "second", "default": "ok"})
    resp = FallbackProvider([broken, backup]).complete(ChatRequest(messages=[ChatMessage.user("hi")]))
    assert resp.content == "ok" and [f.provider for f in resp.failed] == ["first"]
    stats = HostStats("w")
    agent = SimpleNamespace(agent_id="a", session="s", llm_usage={})
    usage_recorder(agent, None, stats)(resp, 3.0)  # type: ignore[arg-type]
    by_provider = {e["provider"]: e for e in stats.to_wire()["llm"]}
    assert by_provider["first"]["requests"] == 1 and by_provider["first"]["errors"] == {"error": 1}
    assert by_provider["second"]["requests"] == 1 and by_provider["second"]["seconds"]["count"] == 1


def test_registry_membership_does_not_import_a_lazy_tool() -> None:
    """The figures ask the registry with ``in`` whether a tool is known: a lazy tool stays unloaded."""
    from openfang.workers.tools.core import LazyTool, ToolRegistry

    def load() -> Any:
        raise AssertionError("the lazy tool was imported")

    registry = ToolRegistry()
    registry.register_lazy(LazyTool(name="heavy_tool", permission="net.http", load=load))
    assert "heavy_tool" in registry and "other_tool" not in registry
    assert registry.loaded() == []
