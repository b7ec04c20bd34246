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


def _answer(provider: str, model: str, prompt: int, completion: int) -> ChatResponse:
    """A model's plain answer from ``provider``/``model`` with that usage."""
    return ChatResponse(
        content="x",
        tool_calls=[],
        usage=Usage(prompt_tokens=prompt, completion_tokens=completion),
        finish_reason="stop",
        provider=provider,
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


def test_usage_recorder_counts_into_each_answers_own_pair_over_mixed_pairs() -> None:
    """The recorder keeps the last pair's stats entry: over answers switching between providers, models
    (priced, unpriced, str subclasses) and past MAX_LLM_PAIRS, the worker's figures and the agent's totals
    equal those of each answer counted into its own pair's llm_entry, and cost_usd called for every answer."""
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
        resp = _answer(provider, model, prompt, completion)
        record(resp, 2.0)
        theirs.llm_answer(theirs.llm_entry(str(provider), str(model)), prompt, completion, 0.002, {}, None)
        totals["llm_calls"] += 1
        totals["prompt_tokens"] += prompt
        totals["completion_tokens"] += completion
        cost = cost_usd(str(model), prompt, completion)
        if cost is not None and str(model) == "gpt-4o":
            totals["cost_usd"] = round(totals.get("cost_usd", 0) + cost, 8)
    assert ours.to_wire() == theirs.to_wire()
    assert agent.llm_usage == totals


def _old_path(
    stats: Any, entry_of: dict[Any, Any], totals: dict[str, Any], answer: tuple[str, str, int, int, float]
) -> None:
    """What the recorder counted before llm_answer: the pair's figures under the stats' lock, the latency
    by Histogram.observe under the histogram's own lock, the totals under a third lock."""
    import threading

    from openfang.protocol.stats import Histogram
    from openfang.workers.llm.presets import cost_usd

    provider, model, prompt, completion, seconds = answer
    entry = entry_of.get((provider, model))
    if entry is None:
        entry = entry_of[(provider, model)] = SimpleNamespace(
            requests=0, prompt_tokens=0, completion_tokens=0, seconds=Histogram()
        )
    lock = threading.Lock()
    with lock:
        entry.requests += 1
        entry.prompt_tokens += prompt if prompt > 0 else 0
        entry.completion_tokens += completion if completion > 0 else 0
    entry.seconds.observe(seconds)
    cost = cost_usd(model, prompt, completion)
    with lock:
        totals["llm_calls"] = totals.get("llm_calls", 0) + 1
        totals["prompt_tokens"] = totals.get("prompt_tokens", 0) + prompt
        totals["completion_tokens"] = totals.get("completion_tokens", 0) + completion
        if cost is not None:
            totals["cost_usd"] = round(totals.get("cost_usd", 0) + cost, 8)


def test_usage_recorder_one_lock_hold_counts_what_the_three_locks_counted() -> None:
    """Over 3,000 answers (tokens negative, zero and large, latencies on, between and past every bucket
    bound, priced and unpriced models) the recorder's one hold of the stats' lock gives the same requests,
    tokens, buckets, bit-identical latency sums and agent totals as the old three-lock path."""
    import random

    from openfang.protocol.stats import LATENCY_BUCKETS
    from openfang.workers.host.stats import HostStats

    rng = random.Random(15)
    pairs = [("openai", "gpt-4o"), ("scripted", "script"), ("anthropic", "claude-3-5-haiku"), ("p", "")]
    agent = SimpleNamespace(agent_id="a-1", session="s", llm_usage={})
    stats = HostStats("w")
    record = usage_recorder(agent, None, stats)  # type: ignore[arg-type]
    entry_of: dict[Any, Any] = {}
    totals: dict[str, Any] = {}
    for _ in range(3000):
        provider, model = rng.choice(pairs) if rng.random() < 0.3 else pairs[0]
        prompt, completion = rng.randrange(-3, 4000), rng.choice((0, -1, rng.randrange(0, 900)))
        seconds = rng.choice(
            (rng.choice(LATENCY_BUCKETS), rng.uniform(0, 0.01), rng.uniform(0, 40), 0.0, 1e-9)
        )
        resp = _answer(provider, model, prompt, completion)
        record(resp, seconds * 1000)
        _old_path(stats, entry_of, totals, (provider, model, prompt, completion, seconds * 1000 / 1000))
    assert agent.llm_usage == totals
    wire = {(e["provider"], e["model"]): e for e in stats.to_wire()["llm"]}
    assert set(wire) == {(p or "?", m) for p, m in entry_of}
    for (provider, model), old in entry_of.items():
        new = wire[(provider or "?", model)]
        assert (new["requests"], new["prompt_tokens"], new["completion_tokens"], new["errors"]) == (
            old.requests,
            old.prompt_tokens,
            old.completion_tokens,
            {},
        )
        assert new["seconds"] == old.seconds.to_wire()  # the sum bit for bit: same additions, same order


def test_usage_recorder_counts_exactly_under_threads_with_readers() -> None:
    """Four job threads recording answers for two agents while a reader takes the worker's figures and the
    agents' totals: no answer is lost, every snapshot is well formed (buckets cumulative, sums and counts
    never going back), and the end figures are exact (latencies are binary fractions: exact sums)."""
    import sys
    import threading

    from openfang.workers.host.stats import HostStats

    stats = HostStats("w")
    agents = [SimpleNamespace(agent_id=f"a-{i}", session="s", llm_usage={}) for i in range(2)]
    recorders = [usage_recorder(a, None, stats) for a in agents]  # type: ignore[arg-type]
    per_thread, seconds = 3000, 2.0**-10
    resp = _answer("openai", "gpt-4o", 3, 5)
    done = threading.Event()
    problems: list[str] = []

    def write(record: Any) -> None:
        for _ in range(per_thread):
            record(resp, seconds * 1000)

    def read() -> None:
        last_count, last_sum = 0, 0.0
        while not done.is_set():
            for e in stats.to_wire()["llm"]:
                h = e["seconds"]
                if h["counts"] != sorted(h["counts"]) or h["count"] < h["counts"][-1]:
                    problems.append(f"not cumulative: {h}")
                if h["count"] < last_count or h["sum"] < last_sum or h["sum"] != h["count"] * seconds:
                    problems.append(f"count {h['count']} and sum {h['sum']} after {last_count}, {last_sum}")
                last_count, last_sum = h["count"], h["sum"]
            for a in agents:
                snapshot = dict(a.llm_usage)
                if snapshot and snapshot["prompt_tokens"] > 3 * snapshot["llm_calls"]:
                    problems.append(f"totals ahead of their calls: {snapshot}")

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: a lost update shows
    try:
        writers = [threading.Thread(target=write, args=(recorders[i % 2],)) for i in range(4)]
        reader = threading.Thread(target=read)
        reader.start()
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        done.set()
        reader.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert problems == []
    (entry,) = stats.to_wire()["llm"]
    n = 4 * per_thread
    assert (entry["requests"], entry["prompt_tokens"], entry["completion_tokens"]) == (n, 3 * n, 5 * n)
    assert entry["seconds"]["count"] == n and entry["seconds"]["sum"] == n * seconds
    from openfang.workers.llm.presets import cost_usd

    cost, expected = cost_usd("gpt-4o", 3, 5), 0.0
    assert cost is not None
    for _ in range(n // 2):
        expected = round(expected + cost, 8)
    for a in agents:
        assert a.llm_usage == {
            "llm_calls": n // 2,
            "prompt_tokens": 3 * n // 2,
            "completion_tokens": 5 * n // 2,
            "cost_usd": expected,
        }


def test_usage_recorder_counts_under_the_lock_the_figures_readers_take() -> None:
    """While a reader holds the lock guarding the pair's latency histogram (what its to_wire takes), an
    answer on a job thread counts nothing, neither the pair's figures nor the agent's totals; released, it
    counts all of them: one lock guards everything the recorder counts."""
    import threading

    from openfang.workers.host.stats import HostStats

    stats = HostStats("w")
    agent = SimpleNamespace(agent_id="a-1", session="s", llm_usage={})
    record = usage_recorder(agent, None, stats)  # type: ignore[arg-type]
    record(_resp("gpt-4o", 1, 1), 1.0)
    lock = stats.llm_entry("openai", "gpt-4o").seconds.lock
    with lock:
        writer = threading.Thread(target=record, args=(_resp("gpt-4o", 10, 20), 2.0))
        writer.start()
        writer.join(0.2)
        assert writer.is_alive()  # waiting for the lock
        assert agent.llm_usage["llm_calls"] == 1 and agent.llm_usage["prompt_tokens"] == 1
        entry = stats.llm_entry("openai", "gpt-4o")
        assert (entry.requests, entry.prompt_tokens, sum(entry.seconds.per_bucket)) == (1, 1, 1)
    writer.join()
    (wire,) = stats.to_wire()["llm"]
    assert (wire["requests"], wire["prompt_tokens"], wire["completion_tokens"]) == (2, 11, 21)
    assert wire["seconds"]["count"] == 2 and agent.llm_usage["llm_calls"] == 2
