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
