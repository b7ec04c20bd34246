"""The model and tool jobs' shortcuts for ``guest_abi.json_exact`` (may the host's own value stand in for
parsing its JSON?) answer exactly as ``json_exact`` over every field type they may meet."""

from __future__ import annotations

import itertools
from typing import Any

from openfang.workers.host import jobs
from openfang.workers.sandbox.guest_abi import json_exact


class Text(str):
    """A str subclass: not exact (it would come back as a plain str)."""


ODD: list[Any] = [
    None,
    "",
    "text",
    Text("t"),
    1,
    True,
    2.5,
    float("nan"),
    float("inf"),
    [1],
    {"a": 1},
    (1,),
    b"x",
]


def test_assistant_exact_equals_json_exact() -> None:
    """Every role and content of a plain message, and messages with tool calls, as json_exact says."""
    for role, content in itertools.product(["assistant", Text("assistant"), 1], ODD):
        msg = {"role": role, "content": content}
        assert jobs._assistant_exact(msg) is json_exact(msg), msg
    for args in ({"value": "x"}, {"v": (1,)}, {"v": float("nan")}, {1: "x"}, {"v": Text("x")}):
        msg = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "1", "name": "n", "arguments": args}],
        }
        assert jobs._assistant_exact(msg) is json_exact(msg), msg


def _result(**over: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"role": "tool", "tool_call_id": "c1", "name": "lookup", "content": "v", "ok": True}
    r["ms"] = 0.012
    r.update(over)
    return r


def test_results_exact_equals_json_exact() -> None:
    """Each field of a tool message given every odd value, alone and next to a plain message."""
    cases = [[_result()], [_result(), _result(ok=False)], []]
    for field in ("role", "tool_call_id", "name", "content", "ok", "ms"):
        for value in [*ODD, 0, 3]:
            cases.append([_result(**{field: value})])
            cases.append([_result(), _result(**{field: value})])
    cases.append([{**_result(), "extra": "x"}])
    cases.append([{k: v for k, v in _result().items() if k != "ms"}])
    cases.append([{**{k: v for k, v in _result().items() if k != "ms"}, 7: 0.5}])
    for results in cases:
        assert jobs._results_exact(results) is json_exact(results), results


def test_tool_calling_message_json_equals_the_encoder() -> None:
    """The model job's tool-calling message is written byte for byte as the JSON encoder writes it, for odd
    texts, ids, names and arguments; other shapes (key order, types, extra keys) still match the encoder."""
    import json
    import random

    from openfang.workers.sandbox import guest_abi

    def enc(v: Any) -> str:
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False)

    rng = random.Random(7)
    texts = ["", "plain", 'q"uote\\', "ctl\x00\x1f\n\t", "\u2028 é 😀", "\ud800 lone", None]
    for _ in range(400):
        calls = [
            {
                "id": rng.choice(texts[:-1]),
                "name": rng.choice(["lookup", "a.b", "ü"]),
                "arguments": rng.choice(
                    [
                        {},
                        {"value": rng.choice(texts)},
                        {"n": 1.5, "l": [1, None, {"x": True}]},
                        {1: "int key"},
                    ]
                ),
            }
            for _ in range(rng.randint(0, 3))
        ]
        msg: dict[str, Any] = {"role": "assistant", "content": rng.choice(texts), "tool_calls": calls}
        assert guest_abi._message_json(msg) == enc(msg)
    odd: list[dict[str, Any]] = [
        {"role": "assistant", "tool_calls": [], "content": None},
        {"role": "assistant", "content": Text("t"), "tool_calls": []},
        {"role": "assistant", "content": None, "tool_calls": [{"name": "n", "id": "1", "arguments": {}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": 1, "name": "n", "arguments": {}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "name": "n", "arguments": [1]}]},
        {"role": "assistant", "content": None, "tool_calls": ({"id": "1", "name": "n", "arguments": {}},)},
        {"role": "assistant", "content": 5, "tool_calls": []},
    ]
    for msg in odd:
        assert guest_abi._message_json(msg) == enc(msg), msg


def test_tool_call_arguments_json_equals_the_encoder() -> None:
    """The arguments of a tool call are written byte for byte as the JSON encoder writes them: flat dicts of
    str, int, bool and None directly, and anything else (floats, nesting, subclasses, non-str keys) through
    the encoder, over a fuzz of 3,000 dicts."""
    import enum
    import json
    import random

    from openfang.workers.sandbox import guest_abi

    class Num(enum.IntEnum):
        ONE = 1

    def enc(v: Any) -> str:
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False)

    rng = random.Random(11)
    keys: list[Any] = ["", "value", 'k"\\', "ctl\x00\n", "\u2028é😀", "\udc80", Text("sub"), 3, True, None]
    values: list[Any] = ["", "x", 'q"\\\t', "\ud800", "😀", Text("t"), 0, -1, 2**80, -(2**70), True, False]
    values += [None, Num.ONE, 1.5, -0.0, float("inf"), [1], {"a": 1}, (1,)]
    direct = 0
    for _ in range(3000):
        args = {rng.choice(keys): rng.choice(values) for _ in range(rng.randint(0, 4))}
        assert guest_abi._args_json(args) == enc(args), args
        direct += all(type(k) is str and type(v) in (str, int, bool, type(None)) for k, v in args.items())
    assert direct > 300  # the direct way was taken often
