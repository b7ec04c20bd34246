"""The agent host's LLM usage recorder: running totals per agent, procedural records only for real usage."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from openfang.workers.host.services import usage_recorder
from openfang.workers.llm.types import ChatResponse, Usage


class Sink:
    """Collects what the recorder hands to procedural memory (HostMemory.note_tool_call's shape)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def note_tool_call(self, record: dict[str, Any]) -> None:
        self.records.append(record)


def _resp(model: str, prompt: int, completion: int) -> ChatResponse:
    return ChatResponse(
        content="x",
        tool_calls=[],
        usage=Usage(prompt_tokens=prompt, completion_tokens=completion),
        finish_reason="stop",
        provider="openai",
        model=model,
    )


def test_usage_recorder_adds_totals_and_records_priced_calls() -> None:
    """Each answer adds to the agent's totals; a priced model gets a cost; the record names model, tokens."""
    agent = SimpleNamespace(agent_id="a-1", session="s", llm_usage={})
    sink = Sink()
    record = usage_recorder(agent, sink)  # type: ignore[arg-type]
    record(_resp("gpt-4o", 1000, 100), 12.5)
    record(_resp("gpt-4o", 1000, 100), 10.0)
    assert agent.llm_usage == {
        "llm_calls": 2,
        "prompt_tokens": 2000,
        "completion_tokens": 200,
        "cost_usd": 0.007,
    }
    assert [r["tool"] for r in sink.records] == ["llm", "llm"]
    assert sink.records[0]["args"] == {
        "provider": "openai",
        "model": "gpt-4o",
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "cost_usd": 0.0035,
    }
    assert sink.records[0]["session"] == "s" and sink.records[0]["duration_ms"] == 12.5


def test_usage_recorder_skips_the_record_when_the_provider_reports_no_usage() -> None:
    """A provider that reported no tokens is counted as a call but leaves no usage record; no memory: totals
    only."""
    agent = SimpleNamespace(agent_id="a-1", session="s", llm_usage={})
    sink = Sink()
    usage_recorder(agent, sink)(_resp("gpt-4o", 0, 0), 1.0)  # type: ignore[arg-type]
    assert sink.records == [] and agent.llm_usage["llm_calls"] == 1
    usage_recorder(agent, None)(_resp("some-local", 5, 5), 1.0)  # type: ignore[arg-type]
    assert agent.llm_usage["prompt_tokens"] == 5 and agent.llm_usage["cost_usd"] == 0.0


def test_usage_priced_shortcut_equals_cost_usd() -> None:
    """The cached "can this model be priced" answer gives the cost cost_usd gives, for every priced name,
    its dated, -latest and vendor/ spellings, and unpriced names."""
    from openfang.workers.host.services import _priced
    from openfang.workers.llm.presets import PRICES, cost_usd

    names = ["scripted", "llama3.2", "", "gpt-unknown", "GPT-4O", " gpt-4o "]
    for name in PRICES:
        names += [name, f"{name}-2024-07-18", f"{name}-latest", f"vendor/{name}", name.upper()]
    for name in names:
        for _ in range(2):  # the second answer comes from the cache
            got = cost_usd(name, 1234, 567) if _priced(name) else None
            assert got == cost_usd(name, 1234, 567), name


def test_usage_recorder_counts_what_llm_answered_counts_over_mixed_pairs() -> None:
    """The recorder keeps the last pair's stats entry: over answers switching between providers, models
    (priced, unpriced, str subclasses) and past MAX_LLM_PAIRS, the worker's figures and the agent's totals
    equal those of llm_answered and cost_usd called for every answer."""
    import random

    from openfang.workers.host import stats as stats_module
    from openfang.workers.host.stats import HostStats
    from openfang.workers.llm.presets import cost_usd

    class Name(str):
        pass

    rng = random.Random(7)
    pairs = [
        ("openai", "gpt-4o"),
        ("scripted", "script"),
        ("local", "llama3.2"),
        (Name("openai"), Name("gpt-4o")),
    ]
    pairs += [(f"p{i}", f"m{i}") for i in range(stats_module.MAX_LLM_PAIRS + 5)]
    agent = SimpleNamespace(agent_id="a-1", session="s", llm_usage={})
    ours, theirs = HostStats("w"), HostStats("w")
    record = usage_recorder(agent, None, ours)  # type: ignore[arg-type]
    totals: dict[str, float] = {"llm_calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for i in range(600):
        provider, model = pairs[rng.randrange(4)] if i % 3 else rng.choice(pairs)
        prompt, completion = rng.randrange(0, 50), rng.randrange(0, 50)
        resp = ChatResponse(
            content="x",
            tool_calls=[],
            usage=Usage(prompt_tokens=prompt, completion_tokens=completion),
            finish_reason="stop",
            provider=provider,
            model=model,
        )
        record(resp, 2.0)
        theirs.llm_answered(str(provider), str(model), prompt, completion, 0.002)
        totals["llm_calls"] += 1
        totals["prompt_tokens"] += prompt
        totals["completion_tokens"] += completion
        cost = cost_usd(str(model), prompt, completion)
        if cost is not None and str(model) == "gpt-4o":
            totals["cost_usd"] = round(totals.get("cost_usd", 0) + cost, 8)
    assert ours.to_wire() == theirs.to_wire()
    assert agent.llm_usage == totals
