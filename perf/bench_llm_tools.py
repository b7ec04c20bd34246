"""Benchmarks of the host side of agents: the scripted provider and the tool registry's overhead.

    python -m perf.bench_llm_tools        (or through perf.run)

Metrics (system "openfang"):
- ``scripted_llm_calls_per_s``: ScriptedProvider.complete on a 3-message conversation with 4 rules;
- ``scripted_llm_call_us``: its latency (p50/p99);
- ``tool_invoke_overhead_us``: ToolRegistry.invoke (allow list + schema validation + timing) minus calling
  the same tool function directly, per call (p50 of batches);
- ``tool_turn_per_s``: one full tool turn, model asks for a tool -> registry runs it -> model answers.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from typing import Any

from openfang.logs import configure_logging
from openfang.workers.llm.providers import ChatMessage, ChatRequest, ScriptedProvider, ScriptRule
from openfang.workers.tools.registry import ToolContext, default_registry
from perf.workloads import metric, percentile

TIMEOUT_S = 120


def _provider() -> ScriptedProvider:
    return ScriptedProvider(
        [
            ScriptRule(match=re.compile(r"(?i)refund"), reply="Refunds take 5 days."),
            ScriptRule(match=re.compile(r"(?i)price of (\w+)"), reply="Plan {1} costs 10."),
            ScriptRule(
                match=re.compile(r"count (.+)"), tool="text_count", args={"text": "{1}"}, then="{result}"
            ),
            ScriptRule(match=re.compile(r"(?i)hello"), reply="Hi!"),
        ],
        default="Sorry?",
    )


def _batches(fn: Callable[[], Any], batches: int, per_batch: int) -> list[float]:
    """Microseconds per call of ``fn``, one figure per batch."""
    out = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(per_batch):
            fn()
        out.append((time.perf_counter() - t0) / per_batch * 1e6)
    return out


def bench_scripted(quick: bool) -> list[dict[str, Any]]:
    p = _provider()
    req = ChatRequest(
        messages=[
            ChatMessage.system("You are support."),
            ChatMessage.user("hi"),
            ChatMessage.user("what is the price of pro?"),
        ]
    )
    us = _batches(lambda: p.complete(req), 20, 200 if quick else 2000)
    rate = 1e6 / statistics.median(us)
    print(f"  scripted provider: {rate:,.0f} calls/s, p50 {percentile(us, 50):.1f} us", flush=True)
    return [
        metric("scripted_llm_calls_per_s", rate, "calls/s", "higher"),
        metric(
            "scripted_llm_call_us",
            percentile(us, 50),
            "us",
            "lower",
            p50=percentile(us, 50),
            p99=percentile(us, 99),
            samples=len(us),
        ),
    ]


def bench_tool_overhead(quick: bool) -> list[dict[str, Any]]:
    reg = default_registry()
    ctx = ToolContext(agent_id="bench", allowed=frozenset({"text"}))
    tool = reg.get("text_count")
    assert tool is not None
    args = {"text": "one two three"}
    n = 500 if quick else 5000
    direct = _batches(lambda: tool.call(ctx, args), 20, n)
    via = _batches(lambda: reg.invoke(ctx, "text_count", args), 20, n)
    denied_ctx = ToolContext(agent_id="bench", allowed=frozenset())
    denied = _batches(lambda: reg.invoke(denied_ctx, "text_count", args), 20, n)
    overhead = statistics.median(via) - statistics.median(direct)
    print(
        f"  tool invoke: direct {statistics.median(direct):.2f} us, registry {statistics.median(via):.2f} us"
        f" (overhead {overhead:.2f} us), denied {statistics.median(denied):.2f} us",
        flush=True,
    )
    return [
        metric(
            "tool_invoke_overhead_us",
            overhead,
            "us",
            "lower",
            direct_us=round(statistics.median(direct), 3),
            invoke_us=round(statistics.median(via), 3),
            p50=round(percentile(via, 50), 3),
            p99=round(percentile(via, 99), 3),
        ),
        metric("tool_denied_us", statistics.median(denied), "us", "lower"),
    ]


def bench_tool_turn(quick: bool) -> list[dict[str, Any]]:
    p = _provider()
    reg = default_registry()
    ctx = ToolContext(agent_id="bench", allowed=frozenset({"text"}))
    specs = tuple(reg.specs_for(ctx.allowed))

    def turn() -> None:
        convo = [ChatMessage.user("count alpha beta gamma")]
        first = p.complete(ChatRequest(messages=convo, tools=specs))
        call = first.tool_calls[0]
        result = reg.invoke(ctx, call.name, call.arguments)
        convo += [first.to_message(), ChatMessage.tool(call.id, result.as_text(), name=call.name)]
        final = p.complete(ChatRequest(messages=convo, tools=specs))
        assert final.content and '"words": 3' in final.content

    us = _batches(turn, 10, 200 if quick else 2000)
    rate = 1e6 / statistics.median(us)
    print(f"  tool turn (llm -> tool -> llm): {rate:,.0f} turns/s", flush=True)
    return [metric("tool_turn_per_s", rate, "turns/s", "higher", p50_us=round(percentile(us, 50), 2))]


def run(quick: bool = False) -> list[dict[str, Any]]:
    configure_logging("warning")  # as in production: per-call debug events are filtered, not printed
    return [*bench_scripted(quick), *bench_tool_overhead(quick), *bench_tool_turn(quick)]


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
