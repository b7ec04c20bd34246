"""Conversation entries the host wrote itself (the user's message, the model's answer, the tool results)
are taken from the values it wrote them from instead of parsed again: the model sees what parsing gives."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from sandbox_helpers import Registry, RuleProvider, Tool, make_host, manifest, response

from openfang.workers.llm import types as t
from openfang.workers.sandbox import guest_abi as abi
from openfang.workers.sandbox.instance import Sandbox


def _same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


class _Str(str):
    pass


def _value(rng: random.Random, depth: int = 0) -> Any:
    leaves: list[Any] = ["", 'é\n"', 0, -7, 2**70, True, False, None, 0.1, -0.0, 1e300, math.inf, math.nan]
    leaves += [(1, 2), b"x", _Str("s"), {1: "int key"}]
    if depth > 3 or rng.random() < 0.4:
        return rng.choice(leaves)
    if rng.random() < 0.5:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["a", "b", "role", "é"]): _value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def test_json_exact_means_the_json_round_trip_gives_the_value_back() -> None:
    """json_exact is true only for values that json.loads(json.dumps(v)) returns equal and of the same types,
    and false for tuples, NaN, infinities, str subclasses, non-str keys and bytes."""
    rng = random.Random(21)
    exact = 0
    for _ in range(4000):
        value = _value(rng)
        if abi.json_exact(value):
            exact += 1
            again = json.loads(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
            assert _same(again, value), value
    assert exact > 500
    for bad in (
        (1,),
        math.nan,
        math.inf,
        -math.inf,
        _Str("x"),
        {1: 1},
        b"",
        {"a": [(1,)]},
        {"a": {math.nan}},
    ):
        assert not abi.json_exact(bad), bad
    deep: Any = "x"
    for _ in range(40):
        deep = [deep]
    assert not abi.json_exact(deep)


def _toolchain_provider() -> RuleProvider:
    """Two tool calls in one answer, then one more, then an answer naming every result it saw."""

    def rule(req: t.ChatRequest) -> t.ChatResponse:
        tools_seen = [m.content for m in req.messages if m.role == "tool"]
        last = req.messages[-1]
        if last.role == "user":
            return response(
                None,
                [
                    ("lookup", {"key": last.content, "n": 1.5, "deep": {"x": [1, None]}}),
                    ("lookup", {"key": "second"}),
                ],
            )
        if len(tools_seen) % 3 == 2:
            return response("thinking", [("lookup", {"key": "third"})])
        return response(
            f"done after {len(tools_seen)} results: {' / '.join(str(s) for s in tools_seen[-3:])}"
        )

    return RuleProvider(rule)


def _conversation(seeding: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any], int]:
    parses = 0
    seeds: list[bytes] = []
    real_parse = abi.parse_messages

    def counting(segments: list[bytes]) -> list[dict[str, Any]]:
        nonlocal parses
        parses += 1
        return real_parse(segments)

    with monkeypatch.context() as m:
        m.setattr(abi, "parse_messages", counting)
        if not seeding:
            m.setattr(Sandbox, "seed", lambda self, entry, messages: None)
        else:
            real_seed = Sandbox.seed

            def checked(self: Sandbox, entry: bytes, messages: list[dict[str, Any]]) -> None:
                # The oracle: every seeded entry parses to exactly the messages seeded for it.
                assert _same(real_parse([entry]), messages), (entry, messages)
                seeds.append(entry)
                real_seed(self, entry, messages)

            m.setattr(Sandbox, "seed", checked)
        provider = _toolchain_provider()
        registry = Registry(Tool("lookup", lambda ctx, a: {"found": a.get("key"), "len": len(str(a))}))
        d = make_host(provider, registry=registry)
        try:
            text = manifest("bot", agent='tools = ["lookup"]\nhistory_messages = 12')
            aid = d.ok("agent.spawn", manifest=text)["agent_id"]
            replies = [
                d.call("agent.send", agent_id=aid, text=text).body
                for text in ("first é", 'quote " \\ and\nnewline', "third", "x" * 2000, "last")
            ]
        finally:
            d.host.close()
    assert len(seeds) >= (20 if seeding else 0)  # the user messages, answers and tool results
    return replies, [req.messages for req in provider.requests], parses


def test_seeded_entries_give_the_model_what_parsing_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tool-calling conversation over five messages (one longer than the LLM agent's inbox): the model's
    requests and the replies are the same with the seeded entries as with every entry parsed, and far fewer
    entries are parsed."""
    seeded = _conversation(True, monkeypatch)
    parsed = _conversation(False, monkeypatch)
    assert seeded[0] == parsed[0]
    assert all("reply" in r for r in seeded[0]), seeded[0]
    assert seeded[1] == parsed[1]
    assert len(seeded[1]) == len(parsed[1]) == 12
    assert seeded[2] < parsed[2] // 3, (seeded[2], parsed[2])


def _mutating_provider() -> RuleProvider:
    """Tool calls with flat and nested arguments (and one of a tool the agent may not use); every answer
    names the arguments of the tool calls the model sees in its history."""

    def rule(req: t.ChatRequest) -> t.ChatResponse:
        seen = [c.arguments for m in req.messages if m.role == "assistant" for c in m.tool_calls or ()]
        results = sum(1 for m in req.messages if m.role == "tool")
        last = req.messages[-1]
        if last.role == "user":
            return response(None, [("mut", {"key": last.content, "n": 2}), ("nope", {"k": "v"})])
        if results % 4 == 2:
            return response(None, [("mut", {"key": "nested", "deep": {"x": [1, None]}})])
        if results % 4 == 3:
            return response("one more", [("mut", {"key": "single"})])
        return response(f"saw {json.dumps(seen, sort_keys=True)}")

    return RuleProvider(rule)


def _mutating_conversation(
    seeding: bool, monkeypatch: pytest.MonkeyPatch, *, real_registry: bool, flat: Any = None
) -> tuple[list[Any], list[Any], int]:
    """Replies, model requests and how many tool requests were the seeded message itself."""
    from openfang.workers.host.services import Services

    def mutate(ctx: Any, a: dict[str, Any]) -> str:
        before = json.dumps(a, sort_keys=True)
        a["key"] = "changed by the tool"  # a tool that edits its arguments must not edit the conversation
        if "deep" in a:
            a["deep"]["x"].append("changed")
        return before

    registry: Any
    if real_registry:
        from openfang.workers.tools import core

        schema = {"type": "object"}
        mut = core.Tool(
            name="mut",
            description="edits its arguments",
            schema=schema,
            permission="mut",
            call=mutate,
            blocking=False,
        )
        registry = core.ToolRegistry([mut])
    else:
        registry = Registry(Tool("mut", mutate))
    seeded_ids: set[int] = set()
    reused = 0
    with monkeypatch.context() as m:
        if not seeding:
            m.setattr(Sandbox, "seed", lambda self, entry, messages: None)
        else:
            real_seed = Sandbox.seed

            def remember(self: Sandbox, entry: bytes, messages: list[dict[str, Any]]) -> None:
                seeded_ids.update(id(x) for x in messages)
                real_seed(self, entry, messages)

            m.setattr(Sandbox, "seed", remember)
        if flat is not None:
            m.setattr(abi, "flat_request", flat)
        real_start = Services.start_tools

        def start_tools(self: Services, sandbox: Sandbox, request: dict[str, Any]) -> Any:
            nonlocal reused
            reused += id(request) in seeded_ids
            return real_start(self, sandbox, request)

        m.setattr(Services, "start_tools", start_tools)
        provider = _mutating_provider()
        d = make_host(provider, registry=registry)
        try:
            text = manifest("bot", agent='tools = ["mut"]\nhistory_messages = 16')
            aid = d.ok("agent.spawn", manifest=text)["agent_id"]
            replies = [d.call("agent.send", agent_id=aid, text=s).body for s in ("one", "two é", "three")]
        finally:
            d.host.close()
    return replies, [req.messages for req in provider.requests], reused


@pytest.mark.parametrize("real_registry", [False, True])
def test_seeded_tool_request_gives_the_tools_and_the_model_what_parsing_gives(
    monkeypatch: pytest.MonkeyPatch, real_registry: bool
) -> None:
    """A tool_call request that is the seeded model answer is not parsed again when its arguments are flat:
    the tools (one editing its arguments, one refused), the replies and the model's requests are the same as
    with every request parsed; nested arguments are parsed afresh (sharing them would let the tool's edit
    reach the conversation, which the last run shows)."""
    seeded = _mutating_conversation(True, monkeypatch, real_registry=real_registry)
    parsed = _mutating_conversation(False, monkeypatch, real_registry=real_registry)
    assert seeded[0] == parsed[0]
    assert all("reply" in r for r in seeded[0]), seeded[0]
    assert seeded[1] == parsed[1]
    assert any("denied" in str(m.content) for msgs in parsed[1] for m in msgs if m.role == "tool")
    assert seeded[2] >= 3 and parsed[2] == 0  # the flat requests were the seeded messages themselves
    # The oracle can fail: a shortcut that also shared nested arguments shows the tool's edit to the model.
    wrong = _mutating_conversation(True, monkeypatch, real_registry=real_registry, flat=lambda msgs: True)
    assert wrong[2] > seeded[2]
    assert wrong[1] != parsed[1]


def test_flat_request_only_for_one_message_with_scalar_arguments() -> None:
    """flat_request: one message whose calls' (or own) argument dicts hold str, int, float, bool or None."""
    call = {"id": "c", "name": "t", "arguments": {"a": "x", "b": 1, "c": 1.5, "d": True, "e": None}}
    assert abi.flat_request([{"role": "assistant", "content": None, "tool_calls": [call]}])
    assert abi.flat_request([{"name": "t", "arguments": {"a": 1}}])  # a single call
    assert abi.flat_request([{"role": "user", "content": "hi"}])  # nothing reaches a tool
    assert not abi.flat_request([{"name": "t", "arguments": {"a": [1]}}])
    assert not abi.flat_request([{"tool_calls": [call, {"name": "t", "arguments": {"a": {"b": 1}}}]}])
    assert not abi.flat_request([{"role": "tool"}, {"role": "tool"}])  # two lines: loads refuses them
    assert not abi.flat_request([])


def test_user_entry_seeds_exactly_when_json_exact() -> None:
    """user_entry's message is given (not None) exactly for texts and sessions whose message json_exact
    accepts, over str, str subclasses and other types; its payload is user_message's."""
    texts: list[Any] = ["", 'hé\n"', "x" * 3000, _Str("sub"), 5, None, 1.5, math.inf]
    sessions: list[Any] = [None, "", "s1", _Str("s2")]
    for text in texts:
        for session in sessions:
            payload, msg = abi.user_entry(text, session=session)
            assert payload == abi.user_message(text, session=session), (text, session)
            expect: dict[str, Any] = {"role": "user", "content": text}
            if session:
                expect["session"] = session
            assert (msg is not None) == abi.json_exact(expect), (text, session)
            if msg is not None:
                assert _same(abi.parse_messages([payload]), [msg])
