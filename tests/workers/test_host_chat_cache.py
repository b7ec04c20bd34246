"""The model job's chat conversion (``ChatCache.convert``) equals converting ``_well_formed`` of the window
afresh, over random conversations seen through sliding windows, and reuses the messages of kept entries."""

from __future__ import annotations

import random
from typing import Any

import pytest

from openfang.workers.host import jobs
from openfang.workers.llm import types as t


def _entry(rng: random.Random, i: int) -> dict[str, Any]:
    pick = rng.random()
    if pick < 0.3:
        return {"role": "tool", "tool_call_id": f"c{i}", "name": "lookup", "content": f"r{i}", "ok": True}
    if pick < 0.55:
        calls = (
            [{"id": f"c{i}", "name": "lookup", "arguments": {"value": str(i)}}] if rng.random() < 0.7 else []
        )
        return {"role": "assistant", "content": rng.choice([None, "", f"a{i}"]), "tool_calls": calls}
    if pick < 0.65:
        return {"role": "assistant", "content": f"plain {i}"}
    if pick < 0.7:
        return {"role": "system", "content": f"s{i}"}
    return {"role": "user", "content": f"u{i}"}


def _reference(window: list[dict[str, Any]]) -> list[t.ChatMessage]:
    return [jobs._to_chat(t, m) for m in jobs._well_formed(window)]


@pytest.mark.parametrize("seed", range(30))
def test_chat_cache_convert_equals_fresh_conversion(seed: int) -> None:
    """Each window converts to exactly the reference's messages; an entry kept in two windows in a row is
    converted once."""
    rng = random.Random(seed)
    conversation = [_entry(rng, i) for i in range(120)]
    cache = jobs.ChatCache()
    seen: dict[int, t.ChatMessage] = {}  # the previous window's messages, by the id of their entry
    end = 0
    while end < len(conversation):
        end += rng.randint(1, 4)
        window = conversation[max(0, end - rng.randint(1, 12)) : end]
        got = cache.convert(list(window))
        assert got == _reference(window), (seed, end)
        kept = jobs._well_formed(window)
        assert len(kept) == len(got)
        for m, chat in zip(kept, got, strict=True):
            if id(m) in seen:
                assert seen[id(m)] is chat  # kept in the last window too: reused, not converted again
        seen = {id(m): chat for m, chat in zip(kept, got, strict=True)}


@pytest.mark.parametrize("seed", range(30))
def test_chat_cache_convert_sliding_window_equals_fresh_conversion(seed: int) -> None:
    """A conversation growing a few entries a call, seen through its newest ``size`` entries (as the model
    job sees it; some calls repeat the same window): the reference's messages every time, each kept entry
    converted once while it stays in the window."""
    rng = random.Random(1000 + seed)
    conversation = [_entry(rng, i) for i in range(300)]
    duplicates = seed % 3 == 0
    if duplicates:  # equal entries (distinct dicts) next to each other
        conversation = [dict(m) for m in conversation for _ in range(2)]
    size = rng.choice([1, 2, 3, 8, 64])
    cache = jobs.ChatCache()
    seen: dict[int, t.ChatMessage] = {}
    end = 0
    while end < len(conversation):
        end += rng.choice([0, 1, 1, 2, 3, 5])
        window = conversation[max(0, end - size) : end]
        got = cache.convert(list(window))
        assert got == _reference(window), (seed, end)
        kept = jobs._well_formed(window)
        for m, chat in zip(kept, got, strict=True):
            if id(m) in seen and seen[id(m)] is not chat:
                assert duplicates, "a kept entry converted twice"  # else an equal entry's (equal) message
        seen = {id(m): chat for m, chat in zip(kept, got, strict=True)}


def test_chat_cache_convert_drops_unanswered_calls_and_cut_off_results() -> None:
    """Leading tool results and a final tool-call message without results are left out, as before."""
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "name": "n", "arguments": {}}]}
    window = [
        {"role": "tool", "tool_call_id": "0", "content": "x"},
        {"role": "user", "content": "hi"},
        call,
        {"role": "tool", "tool_call_id": "1", "content": "r"},
        {"role": "user", "content": "again"},
        dict(call),
    ]
    got = jobs.ChatCache().convert(window)
    assert [m.role for m in got] == ["user", "assistant", "tool", "user"]
    assert got == _reference(window)
