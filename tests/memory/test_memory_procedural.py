"""Procedural memory: the tool-call log and the patterns derived from it."""

from __future__ import annotations

from openfang.memory.reader import MemoryReader


def _call(store, tool: str, status: str, session: str = "s", ms: float = 10.0, agent: str = "a") -> None:
    body = {
        "agent_id": agent,
        "tool": tool,
        "status": status,
        "session": session,
        "duration_ms": ms,
        "args": {"q": tool, "raw": b"\x01"},
    }
    if status != "ok":
        body["error"] = f"{tool} failed"
    store.ok("memory.tool_call", body)


def test_tool_stats_give_success_rate_and_latency_per_tool_per_agent(local_store) -> None:
    """Success rate counts all calls; latency percentiles come from successful calls."""
    for ms in (10, 20, 30, 40):
        _call(local_store, "search", "ok", ms=ms)
    _call(local_store, "search", "error", ms=999)
    _call(local_store, "search", "ok", agent="b", ms=5)
    with MemoryReader(local_store.db) as r:
        (stat,) = r.tool_stats(scope={"a"}, agent_id="a")
        (log_entry, *_) = r.tool_calls(scope={"a"}, agent_id="a")
    assert (stat.calls, stat.successes, stat.success_rate) == (5, 4, 0.8)
    assert stat.mean_ms == 25.0 and stat.p50_ms in (20.0, 30.0) and stat.p95_ms == 40.0
    assert log_entry.status == "error" and log_entry.error == "search failed"
    assert log_entry.args == {"q": "search", "raw": "01"}


def test_sequences_count_runs_of_successful_calls_within_sessions(local_store) -> None:
    """A failure breaks a run; runs never span sessions; rare runs are left out."""
    for session in ("s1", "s2", "s3"):
        _call(local_store, "search", "ok", session)
        _call(local_store, "fetch", "ok", session)
        _call(local_store, "summarize", "ok", session)
    _call(local_store, "search", "ok", "s4")
    _call(local_store, "fetch", "error", "s4")
    _call(local_store, "summarize", "ok", "s4")
    with MemoryReader(local_store.db) as r:
        pairs = {s.tools: s.count for s in r.sequences(scope={"a"}, agent_id="a", length=2, min_count=2)}
        triples = {s.tools: s.count for s in r.sequences(scope={"a"}, agent_id="a", length=3, min_count=3)}
    assert pairs == {("search", "fetch"): 3, ("fetch", "summarize"): 3}
    assert triples == {("search", "fetch", "summarize"): 3}


def _llm(
    store, agent: str, model: str, prompt: int, completion: int, cost: float | None, session: str
) -> None:
    args = {"provider": "openai", "model": model, "prompt_tokens": prompt, "completion_tokens": completion}
    store.ok(
        "memory.tool_call",
        {
            "agent_id": agent,
            "tool": "llm",
            "status": "ok",
            "session": session,
            "args": {**args, "cost_usd": cost},
        },
    )


def test_usage_totals_sum_llm_records_per_agent_and_model(local_store) -> None:
    """LLM records add up per agent and model; an unpriced model keeps cost null; other agents stay apart."""
    _llm(local_store, "a", "gpt-4o-mini", 100, 20, 0.000027, "s1")
    _llm(local_store, "a", "gpt-4o-mini", 50, 10, 0.0000135, "s2")
    _llm(local_store, "a", "local-llama", 70, 7, None, "s1")
    _llm(local_store, "b", "gpt-4o-mini", 1, 1, 0.00000075, "s1")
    _call(local_store, "search", "ok", "s1")  # a real tool call is not usage
    with MemoryReader(local_store.db) as r:
        rows = r.usage(scope=None, agent_id="a")
        everyone = r.usage(scope=None)
    assert rows == [
        {
            "agent_id": "a",
            "provider": "openai",
            "model": "gpt-4o-mini",
            "llm_calls": 2,
            "prompt_tokens": 150,
            "completion_tokens": 30,
            "cost_usd": 0.0000405,
        },
        {
            "agent_id": "a",
            "provider": "openai",
            "model": "local-llama",
            "llm_calls": 1,
            "prompt_tokens": 70,
            "completion_tokens": 7,
            "cost_usd": None,
        },
    ]
    assert {r["agent_id"] for r in everyone} == {"a", "b"}


def test_sequences_skip_the_llm_turns_between_tool_calls(local_store) -> None:
    """The model's turns (llm records) between two tool calls do not break or join a tool sequence."""
    for session in ("s1", "s2"):
        _llm(local_store, "a", "m", 1, 1, None, session)
        _call(local_store, "search", "ok", session)
        _llm(local_store, "a", "m", 1, 1, None, session)
        _call(local_store, "fetch", "ok", session)
    with MemoryReader(local_store.db) as r:
        pairs = {s.tools: s.count for s in r.sequences(scope={"a"}, agent_id="a", length=2, min_count=2)}
    assert pairs == {("search", "fetch"): 2}
