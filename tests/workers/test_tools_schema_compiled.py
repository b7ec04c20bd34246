"""The compiled tool-argument validator gives exactly what ``schema.validate`` gives: the same value (defaults
filled in) and the same problems in the same order, for every built-in tool's schema and schemas using every
keyword, over values built from the schemas, broken on purpose, and random."""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping
from typing import Any

import pytest

from openfang.workers.tools.core import Tool, ToolContext, ToolRegistry
from openfang.workers.tools.registry import builtin_tools
from openfang.workers.tools.schema import compile_validator, validate

EVERY_KEYWORD: dict[str, Any] = {
    "type": "object",
    "title": "t",
    "properties": {
        "s": {"type": "string", "minLength": 2, "maxLength": 5, "pattern": "^[a-z]+$", "description": "d"},
        "n": {"type": ["integer", "null"], "minimum": -3, "maximum": 7},
        "x": {"type": "number", "minimum": 0.5, "default": 1.5},
        "e": {"enum": ["a", "b", 3]},
        "c": {"const": {"k": [1, 2]}},
        "b": {"type": "boolean", "default": False},
        "l": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {"type": "object", "properties": {"v": {"type": "string"}}, "required": ["v"]},
        },
        "t": {"type": ["array", "string"], "items": {"type": "integer"}},
        "o": {"type": "object", "additionalProperties": {"type": "integer", "maximum": 9}},
        "d": {"default": {"deep": [1]}},
        "any": {},
    },
    "required": ["s", "l"],
    "additionalProperties": False,
}
OPEN: dict[str, Any] = {"properties": {"a": {"type": "string"}}, "required": ["a", "b"]}
# Flat objects (the compiled validator's shortcut for valid values): scalar properties with simple bounds.
FLAT: dict[str, Any] = {
    "type": "object",
    "description": "d",
    "properties": {
        "s": {"type": "string", "minLength": 2, "maxLength": 5, "pattern": "^[a-z]+$"},
        "e": {"type": "string", "enum": ["a", "abc", "UP"]},
        "n": {"type": "integer", "minimum": -3, "maximum": 7},
        "x": {"type": "number", "minimum": 0.5, "enum": [1, 2.5, 10, True]},
        "value": {"type": "string", "maxLength": 256},
    },
    "required": ["s"],
    "additionalProperties": False,
}
FLAT_OPEN: dict[str, Any] = {**FLAT, "required": [], "additionalProperties": True}

SCALARS: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -4,
    8,
    2.5,
    0.1,
    "",
    "a",
    "ab",
    "abc",
    "ABC",
    "abcdef",
    "x" * 300,
]


def _random(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.random()
    if depth > 2 or pick < 0.5:
        return rng.choice(SCALARS)
    if pick < 0.75:
        return [_random(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["s", "n", "x", "e", "c", "b", "l", "t", "o", "d", "any", "value", "zz", "v", "k", "a"]
    return {rng.choice(keys): _random(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def _from_schema(schema: Mapping[str, Any], rng: random.Random, depth: int = 0) -> Any:
    """A value shaped by the schema, with a random part broken now and then."""
    if rng.random() < 0.12 or depth > 4:
        return _random(rng, depth)
    if "const" in schema:
        return copy.deepcopy(schema["const"])
    if "enum" in schema:
        return rng.choice(schema["enum"])
    types = schema.get("type")
    name = rng.choice(types) if isinstance(types, list) else types
    if name == "object" or (name is None and "properties" in schema):
        props = schema.get("properties", {})
        out = {k: _from_schema(sub, rng, depth + 1) for k, sub in props.items() if rng.random() < 0.7}
        if rng.random() < 0.2:
            out["extra_key"] = _random(rng)
        return out
    if name == "array":
        sub = schema.get("items", {})
        return [_from_schema(sub, rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if name == "string":
        return rng.choice(["abc", "a", "", "hello world", "x" * rng.randint(0, 400), "UP"])
    if name in ("integer", "number"):
        return (
            rng.choice([0, 1, -5, 10, 10**6, 2.5]) if name == "number" else rng.choice([0, 1, -5, 10, 10**6])
        )
    if name == "boolean":
        return rng.random() < 0.5
    return _random(rng, depth)


SCHEMAS = [("every_keyword", EVERY_KEYWORD), ("open", OPEN), ("flat", FLAT), ("flat_open", FLAT_OPEN)] + [
    (t.name, t.schema) for t in builtin_tools()
]


@pytest.mark.parametrize(("name", "schema"), SCHEMAS, ids=[n for n, _ in SCHEMAS])
def test_schema_compiled_validator_equals_validate(name: str, schema: Mapping[str, Any]) -> None:
    """Same value and problems as ``validate`` over 300 values per schema; neither mutates its input."""
    compiled = compile_validator(schema)
    rng = random.Random(name)
    for i in range(600 if name.startswith("flat") else 300):
        value = _from_schema(schema, rng) if i % 3 else _random(rng)
        before = copy.deepcopy(value)
        want = validate(value, schema)
        got = compiled(value)
        assert got == want, (name, value)
        assert repr(got) == repr(want), (name, value)  # same types too (True vs 1, order of keys)
        assert value == before


def test_schema_compiled_validator_reports_every_problem_with_its_path() -> None:
    """A value broken in many places gets every problem, in ``validate``'s order and wording."""
    value = {"s": "A", "n": 9, "e": "z", "c": 1, "l": [{}], "o": {"q": 10}, "zz": 1}
    got = compile_validator(EVERY_KEYWORD)(value, "args")
    assert got == validate(value, EVERY_KEYWORD)
    assert got[1] == [
        "args.s: must be at least 2 characters",
        "args.s: must match '^[a-z]+$'",
        "args.n: must be <= 7, got 9",
        "args.e: must be one of 'a', 'b', 3, got 'z'",
        "args.c: must be {'k': [1, 2]}",
        "args.l[0].v: required",
        "args.o.q: must be <= 9, got 10",
        "args.zz: unknown property (known: s, n, x, e, c, b, l, t, o, d, any)",
    ]


def test_tools_registry_invoke_validates_as_before() -> None:
    """Through the registry: bad arguments fail with validate's problems; a new schema object is used."""
    seen: list[dict[str, Any]] = []
    schema = {
        "type": "object",
        "properties": {"v": {"type": "string", "default": "d"}},
        "additionalProperties": False,
    }
    tool = Tool(
        name="t1", description="d", schema=schema, permission="p", call=lambda _c, a: seen.append(a) or "ok"
    )
    reg = ToolRegistry([tool])
    ctx = ToolContext(agent_id="a", allowed=frozenset({"t1"}))
    assert reg.invoke(ctx, "t1", {}).ok and seen[-1] == {"v": "d"}
    bad = reg.invoke(ctx, "t1", {"v": 1, "w": 2})
    assert not bad.ok and bad.code == "bad_args"
    assert bad.error == "; ".join(validate({"v": 1, "w": 2}, schema)[1])
    reg._tools["t1"] = Tool(
        name="t1", description="d", schema={"type": "object"}, permission="p", call=tool.call
    )
    assert reg.invoke(ctx, "t1", {"w": 2}).ok and seen[-1] == {
        "w": 2
    }  # the replaced schema, not the cached one


def test_schema_compiled_validator_defaults_are_copies() -> None:
    """A filled-in default is a copy: changing it changes neither the schema nor the next call's default."""
    compiled = compile_validator(EVERY_KEYWORD)
    out, _ = compiled({"s": "ab", "l": [{"v": "x"}]})
    out["d"]["deep"].append(2)
    assert EVERY_KEYWORD["properties"]["d"]["default"] == {"deep": [1]}
    assert compiled({"s": "ab", "l": [{"v": "x"}]})[0]["d"] == {"deep": [1]}


def test_tools_result_success_equals_init() -> None:
    """``ToolResult.success`` is the value ``__init__`` makes (every field, repr), and stays frozen."""
    import dataclasses

    from openfang.workers.tools.core import ToolResult

    for value in ("text", None, {"a": [1]}, 0):
        fast, slow = ToolResult.success(value, 1.25), ToolResult(ok=True, value=value, duration_ms=1.25)
        assert fast == slow and repr(fast) == repr(slow)
        assert [getattr(fast, f.name) for f in dataclasses.fields(ToolResult)] == [
            getattr(slow, f.name) for f in dataclasses.fields(ToolResult)
        ]
        with pytest.raises(dataclasses.FrozenInstanceError):
            fast.ok = False  # type: ignore[misc]


def test_schema_flat_shortcut_decides_only_flat_schemas_and_valid_values() -> None:
    """The shortcut exists for flat object schemas only, says yes only to plain dicts the full check passes,
    and is taken for most valid values the fuzz above makes."""
    from openfang.workers.tools.schema import _flat_valid

    assert _flat_valid(EVERY_KEYWORD) is None and _flat_valid(OPEN) is None
    assert _flat_valid({**FLAT, "properties": {"d": {"type": "string", "default": "x"}}}) is None
    flat = _flat_valid(FLAT)
    assert flat is not None
    assert flat({"s": "abc", "n": 7, "x": 2.5, "e": "UP"})
    for bad in (
        {},
        {"s": "A"},
        {"s": "abcdef"},
        {"s": "abc", "n": 8},
        {"s": "abc", "n": True},
        {"s": "ab", "zz": 1},
    ):
        assert not flat(bad) and validate(bad, FLAT)[1], bad
    rng = random.Random(3)
    for _ in range(500):
        value: dict[str, Any] = {"s": rng.choice(["ab", "abc", "abcde"])}
        optional = {"n": rng.randint(-3, 7), "x": rng.choice([1, 2.5, 10]), "e": "a", "value": "v" * 256}
        value.update(rng.sample(sorted(optional.items()), rng.randint(0, 4)))
        assert flat(value), value
        got = compile_validator(FLAT)(value)
        assert got == validate(value, FLAT) == (value, []) and got[0] is not value
    tools = [t.name for t in builtin_tools() if _flat_valid(t.schema) is not None]
    assert len(tools) >= 10, tools  # most tools' arguments take it
