"""The guest ABI's codecs: what the host hands a guest and reads from it, byte for byte as json/struct do."""

from __future__ import annotations

import codecs
import json
import random
import struct
from typing import Any

import pytest

from openfang.workers.sandbox import guest_abi as abi


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _outcome(fn: Any, data: bytes) -> tuple[str, Any]:
    try:
        return "ok", fn(data)
    except ValueError as exc:
        return type(exc).__name__, None


def test_loads_gives_what_json_loads_gives() -> None:
    """abi.loads returns the same value, or fails with the same error type, as json.loads on bytes: plain
    objects, UTF-8 text, BOMs, UTF-16 and UTF-32 JSON, truncated and random bytes (a seeded fuzz)."""
    fixed = [
        b'{"role":"user","content":"h\xc3\xa9llo"}',
        b"{}",
        b"{",
        b'{"a":1}   ',
        b'{"a":"\xed\xa0\x80"}',  # a lone surrogate in UTF-8 (surrogatepass)
        b'{"a":"\xff"}',
        codecs.BOM_UTF8 + b'{"a":1}',
        '{"a":1}'.encode("utf-16"),
        '{"a":1}'.encode("utf-16-le"),
        '{"a":1}'.encode("utf-32"),
        b"[1,2]",
        b"{\x00",
        b"",
    ]
    rng = random.Random(21)
    pieces = [
        b"{",
        b"}",
        b'"',
        b":",
        b",",
        b"a",
        b"1",
        b"\x00",
        b"\xc3\xa9",
        b"\xff",
        b" ",
        b"[",
        b"]",
        b"true",
    ]
    fuzzed = [b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 8))) for _ in range(5000)]
    for data in fixed + fuzzed:
        assert _outcome(abi.loads, data) == _outcome(json.loads, data), data


def test_encoders_match_json_dumps_and_struct() -> None:
    """The ABI's messages are byte-identical to json.dumps(..., separators, ensure_ascii=False) output."""
    message = {
        "role": "assistant",
        "content": 'h\u00e9 "q" \u2603',
        "tool_calls": [{"id": "1", "arguments": {"x": [1, 2.5, None]}}],
    }
    body = _dumps(message)
    assert abi.encode_llm_result(message, None) == b"T" + struct.pack("<I", len(body)) + body
    assert (
        abi.encode_llm_result(message, "r\u00e9")
        == b"A" + struct.pack("<I", len(body)) + body + "r\u00e9".encode()
    )
    assert abi.user_message("hi", session="s") == _dumps({"role": "user", "content": "hi", "session": "s"})
    results = [{"role": "tool", "content": "1"}, {"role": "tool", "content": "\u00e9"}]
    assert abi.tool_messages(results) == b"\n".join(_dumps(r) for r in results)
    assert abi.parse_iovecs(struct.pack("<IIII", 1, 2, 3, 4)) == [(1, 2), (3, 4)]
    with pytest.raises(ValueError, match="multiple of 8"):
        abi.parse_iovecs(b"\x00" * 12)


def _texts(rng: random.Random) -> list[str]:
    alphabet = [
        '"',
        "\\",
        "\n",
        "\t",
        "\x00",
        "\x1f",
        "\x7f",
        "é",
        "\u2028",
        "\u2603",
        "\U0001f600",
        "a",
        " ",
    ]
    fixed = ["", "hello", 'quote " and \\ backslash', "\ud800"]  # a lone surrogate too (as JSON escapes it)
    return fixed + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(3000)]


def test_user_message_written_directly_equals_json_dumps() -> None:
    """user_message's direct spelling is byte-identical to json.dumps of the message, for any text."""
    rng = random.Random(15)
    for text in _texts(rng):
        try:
            want: bytes | type[Exception] = _dumps({"role": "user", "content": text})
        except UnicodeEncodeError:
            want = UnicodeEncodeError
        try:
            got: bytes | type[Exception] = abi.user_message(text)
        except UnicodeEncodeError:
            got = UnicodeEncodeError
        assert got == want, text
    assert abi.user_message("hi", session="") == _dumps({"role": "user", "content": "hi"})


def test_llm_result_message_written_directly_equals_json_dumps() -> None:
    """An assistant message of role and content is spelled as json.dumps spells it; any other shape (more
    keys, another order, a non-str content) goes through the encoder, also byte-identical."""
    rng = random.Random(16)
    shapes: list[dict[str, Any]] = []
    for text in _texts(rng)[:800]:
        shapes.append({"role": "assistant", "content": text})
        shapes.append({"role": text, "content": None})
        shapes.append({"content": text, "role": "assistant"})  # another key order: the encoder's output
        shapes.append({"role": "assistant", "content": [text]})
        shapes.append({"role": "assistant", "text": text})
    shapes.append({"role": 1, "content": "x"})
    for message in shapes:
        try:
            body = _dumps(message)
        except UnicodeEncodeError:
            with pytest.raises(UnicodeEncodeError):
                abi.encode_llm_result(message, None)
            continue
        assert abi.encode_llm_result(message, None) == b"T" + struct.pack("<I", len(body)) + body, message
        assert abi.encode_llm_result(message, "ok") == b"A" + struct.pack("<I", len(body)) + body + b"ok"


def test_tool_messages_written_directly_equal_json_dumps() -> None:
    """Tool messages as the tool job makes them are spelled as json.dumps spells them; any other shape (a
    NaN or int ms, another key order, a missing key, a non-str content) goes through the encoder."""
    rng = random.Random(17)
    texts = _texts(rng)[:600]
    results: list[dict[str, Any]] = []
    for i, text in enumerate(texts):
        ms = rng.choice([0.0, 0.012, 1e-7, 123456.789, 2.5e300, -0.0])
        results.append(
            {
                "role": "tool",
                "tool_call_id": f"c{i}",
                "name": text,
                "content": text,
                "ok": i % 2 == 0,
                "ms": ms,
            }
        )
    odd: list[dict[str, Any]] = [
        {"role": "tool", "tool_call_id": "c", "name": "n", "content": "x", "ok": True, "ms": float("nan")},
        {"role": "tool", "tool_call_id": "c", "name": "n", "content": "x", "ok": True, "ms": 3},
        {"tool_call_id": "c", "role": "tool", "name": "n", "content": "x", "ok": True, "ms": 1.0},
        {"role": "tool", "tool_call_id": "c", "name": "n", "content": "x", "ok": True},
        {"role": "tool", "tool_call_id": "c", "name": "n", "content": ["x"], "ok": True, "ms": 1.0},
        {"role": "tool", "tool_call_id": "c", "name": "n", "content": "x", "ok": 1, "ms": 1.0},
    ]
    for batch in [results[i : i + 3] for i in range(0, len(results), 3)] + [odd, odd[:1], []]:
        try:
            want = b"\n".join(_dumps(r) for r in batch)
        except UnicodeEncodeError:
            with pytest.raises(UnicodeEncodeError):
                abi.tool_messages(batch)
            continue
        assert abi.tool_messages(batch) == want, batch


def _json_exact_reference(value: Any, depth: int = 0) -> bool:
    """guest_abi.json_exact as first written (all() over generators, every leaf through a call)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return bool(value - value == 0)
    if depth >= 32:
        return False
    if kind is dict:
        return all(type(k) is str and _json_exact_reference(v, depth + 1) for k, v in value.items())
    if kind is list:
        return all(_json_exact_reference(v, depth + 1) for v in value)
    return False


def test_guest_abi_json_exact_equals_its_reference() -> None:
    """json_exact's loops answer as the all()-over-generators version for random values, their leaves of
    every kind (subclasses, non-str keys, NaN, tuples) and nestings around the 32-level limit."""
    import math

    class Text(str):
        pass

    class Number(int):
        pass

    leaves: list[Any] = ["", "é", 0, -3, 2**80, True, False, None, 0.5, -0.0, math.inf, math.nan]
    leaves += [(1,), b"x", Text("t"), Number(4), {1: "k"}, {"a": 1.0}, [], {}]
    rng = random.Random(5)

    def value(depth: int) -> Any:
        if depth > 4 or rng.random() < 0.35:
            return rng.choice(leaves)
        if rng.random() < 0.5:
            return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {rng.choice(["a", "b", "é", "role"]): value(depth + 1) for _ in range(rng.randint(0, 4))}

    values = [value(0) for _ in range(5000)] + leaves
    for n in (30, 31, 32, 33):
        for leaf in ("x", 1.0, math.nan, (1,), [], {}):
            nested: Any = leaf
            for i in range(n):
                nested = [nested] if i % 2 else {"k": nested}
            values.append(nested)
    answers = [abi.json_exact(v) for v in values]
    assert answers == [_json_exact_reference(v) for v in values]
    assert 500 < sum(answers) < len(values) - 500


def test_encode_answer_is_encode_llm_result_of_a_plain_answer() -> None:
    """A model's plain answer written directly is byte-identical to encode_llm_result of its assistant
    message, and the length it gives cuts out exactly that message's JSON (the conversation entry)."""
    rng = random.Random(9)
    alphabet = [
        "a",
        "Z",
        " ",
        '"',
        "\\",
        "\n",
        "\t",
        "\x00",
        "\x1f",
        "\u00e9",
        "\u2028",
        "\u2603",
        "\U0001f600",
        "/",
    ]
    texts = ["", "billing", "tech: handled 00ff"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(2000)]
    for text in texts:
        message = {"role": "assistant", "content": text}
        data, size = abi.encode_answer(text)
        assert data == abi.encode_llm_result(message, text), text
        assert json.loads(data[5 : 5 + size]) == message and data[5 + size :] == text.encode()
