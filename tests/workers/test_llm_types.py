"""The LLM value types: the factories that build a value without __init__ give exactly what __init__ gives."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from openfang.protocol.twin import construction_twin
from openfang.workers.llm import types as t

CALLS = (t.ToolCall(id="c1", name="lookup", arguments={"value": "k"}), t.ToolCall(id="c2", name="x"))
SPEC = t.ToolSpec(name="lookup", description="d", parameters={"type": "object"})
TEXTS: tuple[Any, ...] = ("", "hello", "é" * 300, None, "line\nbreak")


def _same(fast: Any, slow: Any) -> None:
    """Field by field, with the types of the values, plus equality, hash and repr."""
    assert type(fast) is type(slow)
    for f in dataclasses.fields(slow):
        a, b = getattr(fast, f.name), getattr(slow, f.name)
        assert a == b and type(a) is type(b), (f.name, a, b)
    assert fast == slow and repr(fast) == repr(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.__setattr__(dataclasses.fields(fast)[0].name, None)


def test_llm_types_message_factories_equal_init() -> None:
    """system, user, assistant and tool give the message ChatMessage(...) gives, for every input."""
    for text in TEXTS:
        if text is not None:
            _same(t.ChatMessage.system(text), t.ChatMessage(role="system", content=text))
            _same(t.ChatMessage.user(text), t.ChatMessage(role="user", content=text))
            _same(t.ChatMessage.tool("c1", text), t.ChatMessage(role="tool", content=text, tool_call_id="c1"))
            _same(
                t.ChatMessage.tool("c1", text, "lookup"),
                t.ChatMessage(role="tool", content=text, tool_call_id="c1", name="lookup"),
            )
        for calls in ((), list(CALLS), CALLS):
            _same(
                t.ChatMessage.assistant(text, calls),
                t.ChatMessage(role="assistant", content=text, tool_calls=tuple(calls)),
            )
    assert hash(t.ChatMessage.user("a")) == hash(t.ChatMessage(role="user", content="a"))


def test_llm_types_tool_message_without_call_id_is_refused_as_before() -> None:
    """A tool message without tool_call_id still fails with __post_init__'s error."""
    with pytest.raises(ValueError, match="a tool message needs the tool_call_id"):
        t.ChatMessage.tool("", "result")


def test_llm_types_call_request_usage_response_factories_equal_init() -> None:
    """ToolCall.of, ChatRequest.of, Usage.of and ChatResponse.of give the value their __init__ gives."""
    msgs = (t.ChatMessage.system("s"), t.ChatMessage.user("u"))
    for tools in ((), (SPEC,)):
        for stream in (False, True):
            _same(
                t.ChatRequest.of(msgs, tools, stream=stream),
                t.ChatRequest(messages=msgs, tools=tools, stream=stream),
            )
    # Lists are still turned into tuples (through __init__).
    _same(t.ChatRequest.of(list(msgs), [SPEC]), t.ChatRequest(messages=msgs, tools=(SPEC,)))  # type: ignore[arg-type]
    for call in CALLS:
        _same(t.ToolCall.of(call.id, call.name, call.arguments), call)
    _same(t.ToolCall.of("", "", {}), t.ToolCall(id="", name=""))
    for p, c in ((0, 0), (12, 3), (10**9, 1)):
        _same(t.Usage.of(p, c), t.Usage(prompt_tokens=p, completion_tokens=c))
    usage = t.Usage.of(3, 4)
    for content, calls in (("hi", []), (None, list(CALLS))):
        fast = t.ChatResponse.of(content, calls, usage, "stop", "scripted", "script")
        slow = t.ChatResponse(
            content=content,
            tool_calls=calls,
            usage=usage,
            finish_reason="stop",
            provider="scripted",
            model="script",
        )
        _same(fast, slow)


def test_llm_types_subclasses_go_through_init() -> None:
    """A subclass's factory calls its own __init__ (no fast path for a class it was not written for)."""

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Tagged(t.ChatMessage):
        tag: str = "x"

    msg = Tagged.user("hi")
    assert type(msg) is Tagged and msg.tag == "x" and msg.content == "hi"


def test_llm_types_fast_constructor_fields_must_match_the_class() -> None:
    """The twin classes are bound to the class's fields in order: a mismatch is an error at import."""
    with pytest.raises(TypeError, match="are not the class's fields"):
        construction_twin(t.Usage, ("completion_tokens", "prompt_tokens"))


def test_llm_types_twin_of_another_layout_cannot_become_the_class() -> None:
    """CPython refuses the __class__ assignment between layouts that differ (a slot more, or other names)."""
    for names in (("prompt_tokens",), ("prompt_tokens", "completion_tokens", "total"), ("a", "b")):
        twin = type("Other", (), {"__slots__": names})()
        with pytest.raises(TypeError):
            twin.__class__ = t.Usage


def test_llm_types_factories_keep_no_state_between_values() -> None:
    """Each factory call gives a new value of the frozen class: built values are not shared or changed by
    the next ones, and the twin class never leaks out."""
    first = [t.ChatResponse.of(f"a{i}", [], t.Usage.of(i, i + 1), "stop", "p", "m") for i in range(50)]
    requests = [t.ChatRequest.of((t.ChatMessage.user(str(i)),), (), stream=bool(i % 2)) for i in range(50)]
    for i, resp in enumerate(first):
        assert type(resp) is t.ChatResponse and type(resp.usage) is t.Usage
        assert (resp.content, resp.usage.prompt_tokens, resp.usage.completion_tokens) == (f"a{i}", i, i + 1)
        assert requests[i].messages[0].content == str(i) and requests[i].stream is bool(i % 2)
        assert type(requests[i]) is t.ChatRequest and type(requests[i].messages[0]) is t.ChatMessage
