"""The one-pass checks of the hot path agree with the full checkers that name problems.

Each compiled body type answers ``valid(value)`` (a yes or no, no texts) before ``check`` runs to name the
problems; the gateway builds a decoded request without validating it again (``parse(decoded=True)``) and
skips the security layer's limits walk when the body's schema already keeps it within the limits
(``Shape``). These tests fuzz every catalogued body from its documented example: the fast answer must be
exactly "no problems", a valid body must fit its shape, and a bad body must be refused with the same
texts as before.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from openfang.protocol import _examples, _schema, messages
from openfang.protocol.bodies import AgentSend, WorkerForward
from openfang.protocol.envelope import Envelope, decode, encode
from openfang.protocol.errors import ProtocolError
from openfang.security.validation import ValidationLimits, check_value, within

# Every example body with the type whose schema it follows.
EXAMPLES: list[tuple[str, dict[str, Any]]] = [
    *_examples.REQUESTS.items(),
    *((f"{t}.ok", b) for t, b in _examples.REPLIES.items()),
    ("event", _examples.EVENT),
    ("error", _examples.ERROR),
    *_examples.INTERNAL.items(),
    *((f"{t}.ok", b) for t, b in _examples.INTERNAL_REPLIES.items()),
]
EXAMPLES = [(t, b) for t, b in EXAMPLES if messages.body_schema(t) is not None]

# Values a mutation puts in place of another: every msgpack kind, edge lengths and numbers.
_ODD = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**40,
    -(2**40),
    0.5,
    float("nan"),
    float("inf"),
    "",
    "x",
    "a" * 129,
    "a" * 300,
    "root",
    "permanent",
    "keyword",
    "agent.send",
    b"",
    b"\x00" * 40,
    [],
    ["x"],
    [1, 2],
    {},
    {"x": 1},
    {"a" * 200: 1},
    {1: "x"},
]


def _mutate(value: Any, rng: random.Random, depth: int = 0) -> Any:
    """A copy of ``value`` with one random change somewhere inside (replace, drop, add, grow)."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        out = dict(value)
        roll = rng.random()
        if roll < 0.15:
            del out[key]
        elif roll < 0.25:
            out[rng.choice(["extra", "zzz", f"{key}_"])] = rng.choice(_ODD)
        elif roll < 0.55 and depth < 6:
            out[key] = _mutate(value[key], rng, depth + 1)
        else:
            out[key] = copy.deepcopy(rng.choice(_ODD))
        return out
    if isinstance(value, list) and value and rng.random() < 0.8:
        out_list = list(value)
        i = rng.randrange(len(out_list))
        roll = rng.random()
        if roll < 0.2:
            out_list.append(copy.deepcopy(out_list[i]))
        elif roll < 0.3:
            del out_list[i]
        else:
            out_list[i] = _mutate(out_list[i], rng, depth + 1)
        return out_list
    if isinstance(value, str) and rng.random() < 0.3:
        return value * rng.choice([0, 2, 50, 3000])
    return copy.deepcopy(rng.choice(_ODD))


def _problems(compiled: _schema.Compiled, body: Any) -> list[str]:
    problems: list[str] = []
    compiled.check(body, "body", problems)
    return problems


def _measure(value: Any, depth: int = 0) -> _schema.Shape:
    """What a concrete value holds, in a Shape's terms."""
    if isinstance(value, dict):
        inner = [_measure(v, depth + 1) for v in value.values()]
        return _schema.Shape(
            text=max((s.text for s in inner), default=0),
            binary=max((s.binary for s in inner), default=0),
            items=max((s.items for s in inner), default=0),
            keys=max([len(value), *(s.keys for s in inner)]),
            key_len=max([*(len(str(k)) for k in value), *(s.key_len for s in inner)], default=0),
            depth=max((s.depth + 1 for s in inner), default=0),
            nodes=1 + sum(s.nodes for s in inner),
        )
    if isinstance(value, list):
        inner = [_measure(v, depth + 1) for v in value]
        return _schema.Shape(
            text=max((s.text for s in inner), default=0),
            binary=max((s.binary for s in inner), default=0),
            items=max([len(value), *(s.items for s in inner)]),
            keys=max((s.keys for s in inner), default=0),
            key_len=max((s.key_len for s in inner), default=0),
            depth=max((s.depth + 1 for s in inner), default=0),
            nodes=1 + sum(s.nodes for s in inner),
        )
    if isinstance(value, str):
        return _schema.Shape(text=len(value))
    if isinstance(value, bytes):
        return _schema.Shape(binary=len(value))
    return _schema.SCALAR


def _fits(measured: _schema.Shape, shape: _schema.Shape) -> bool:
    return all(getattr(measured, f) <= getattr(shape, f) for f in shape.__slots__)


@pytest.mark.parametrize(("type_", "body"), EXAMPLES, ids=[t for t, _ in EXAMPLES])
def test_valid_agrees_with_check_on_fuzzed_bodies(type_: str, body: dict[str, Any]) -> None:
    """valid(body) is True exactly when check finds no problem, on the example and 300 mutations of it."""
    compiled = messages.body_schema(type_)
    assert compiled is not None
    rng = random.Random(f"{type_}-fuzz")
    seen_valid = seen_invalid = 0
    candidate: Any = body
    for i in range(300):
        problems = _problems(compiled, candidate)
        assert compiled.valid(candidate) == (not problems), (type_, candidate, problems)
        validator = messages.check_body(type_, candidate) if isinstance(candidate, dict) else None
        if validator is not None:
            assert (validator == []) == (not problems)
        if problems:
            seen_invalid += 1
        else:
            seen_valid += 1
            if compiled.shape is not None:  # a valid body never holds more than its shape says
                assert _fits(_measure(candidate), compiled.shape), (type_, candidate)
        # Walk on from a valid body most of the time, so mutations pile up inside valid ones too.
        candidate = _mutate(body if problems or i % 5 == 0 else candidate, rng)
    assert seen_valid and seen_invalid


def test_valid_agrees_with_check_for_tagged_unions_and_patterns() -> None:
    """The memory writer's batch (tagged ops, bytes, patterns) agrees op by op on fuzzed batches."""
    type_ = "memory.write"
    compiled = messages.body_schema(type_)
    assert compiled is not None
    body = _examples.INTERNAL[type_]
    rng = random.Random("tagged")
    for _ in range(500):
        candidate = _mutate(_mutate(body, rng), rng)
        assert compiled.valid(candidate) == (not _problems(compiled, candidate))


def _edges(compiled: _schema.Compiled) -> list[Any]:
    """Values at and past the bounds a map's valid() tests in place of a field's own valid (its inline),
    and values of other types that must go to that valid."""
    kind, lo, hi = compiled.inline
    others: list[Any] = [None, True, False, 0, 1.5, "x", b"x", [], {}]
    if kind == _schema.INLINE_STR:
        lengths = {int(lo), int(hi), int(hi) + 1, *([int(lo) - 1] if lo > 0 else [])}
        return ["a" * n for n in sorted(lengths)] + others
    if kind == _schema.INLINE_INT:
        ints = [v for b in (lo, hi) if abs(b) != float("inf") for v in (int(b) - 1, int(b), int(b) + 1)]
        return [*ints, -(2**40), 2**40, 0.0, float(lo) if abs(lo) != float("inf") else 0.5, *others]
    if kind == _schema.INLINE_BOOL:
        return others
    return []


def _inline_cases(compiled: _schema.Compiled, value: Any, depth: int = 0) -> list[Any]:
    """Copies of the map ``value`` with one field (at any depth of nested maps) set to each of its edges."""
    if not compiled.fields or not isinstance(value, dict) or depth > 4:
        return []
    out: list[Any] = []
    for name, field, _required in compiled.fields:
        for edge in _edges(field):
            out.append({**value, name: edge})
        if isinstance(value.get(name), dict):
            inner = field
            if not inner.fields:  # an optional nested map: the union's one option
                continue
            out.extend({**value, name: case} for case in _inline_cases(inner, value[name], depth + 1))
    return out


@pytest.mark.parametrize(("type_", "body"), EXAMPLES, ids=[t for t, _ in EXAMPLES])
def test_valid_agrees_with_check_at_the_bounds_of_inline_fields(type_: str, body: dict[str, Any]) -> None:
    """A map's valid() tests a field's exact string, number or boolean itself: at each bound (one under,
    on, one over) and for other types it answers as check does, for required and optional fields."""
    compiled = messages.body_schema(type_)
    assert compiled is not None
    for candidate in _inline_cases(compiled, body):
        assert compiled.valid(candidate) == (not _problems(compiled, candidate)), (type_, candidate)


def test_inline_field_kinds_cover_the_hot_bodies() -> None:
    """agent.send and its answer have their strings and counts tested inline (the gateway's two decodes)."""
    send = messages.body_schema("agent.send")
    ok = messages.body_schema("agent.send.ok")
    assert send is not None and ok is not None
    kinds = {name: c.inline[0] for name, c, _ in send.fields}
    assert kinds["text"] == kinds["service"] == kinds["agent_id"] == _schema.INLINE_STR
    assert kinds["stream"] == _schema.INLINE_BOOL
    usage = next(c for name, c, _ in ok.fields if name == "usage")
    assert {c.inline[0] for _, c, _ in usage.fields} == {_schema.INLINE_INT}


def test_shape_of_a_request_with_bounded_fields_is_within_the_default_limits() -> None:
    """agent.send's schema bounds every field within layer 1's defaults, so the gateway need not walk it."""
    compiled = messages.body_schema("agent.send")
    assert compiled is not None and compiled.shape is not None
    assert within(compiled.shape, ValidationLimits())
    assert compiled.shape.text == 65536 and compiled.shape.depth == 1 and compiled.shape.nodes == 6


def test_shape_is_unbounded_for_any_open_or_recursive_bodies() -> None:
    """Open bodies (replies), Any fields and recursive types have no shape: the limits walk always runs."""
    assert messages.body_schema("agent.send.ok") is not None
    assert messages.body_schema("agent.send.ok").shape is None  # type: ignore[union-attr]
    assert messages.body_schema("tree.ok").shape is None  # type: ignore[union-attr]
    assert not within(None, ValidationLimits())


def test_shape_outside_tighter_limits_keeps_the_walk() -> None:
    """With max_text below the schema's bound the shape is not within the limits and the walk refuses."""
    compiled = messages.body_schema("agent.send")
    assert compiled is not None
    tight = ValidationLimits(max_text=10)
    assert not within(compiled.shape, tight)
    with pytest.raises(ProtocolError, match=r"body.text: text is 20 characters, the limit is 10"):
        check_value({"service": "s", "text": "t" * 20}, tight)


def test_parse_of_a_decoded_request_builds_without_a_second_check() -> None:
    """parse(decoded=True) builds the body decode() validated; the typed value is the same either way."""
    env = decode(encode(Envelope(type="agent.send", body={"service": "billing", "text": "hi"})))
    assert messages.parse(env, AgentSend, decoded=True) == messages.parse(env, AgentSend)


def test_parse_of_a_decoded_internal_message_still_validates() -> None:
    """decode() leaves internal bodies to their handler: parse(decoded=True) still names their problems."""
    env = decode(encode(Envelope(type="worker.forward", body={"sender": 5})))
    with pytest.raises(ProtocolError, match=r"body.sender: must be a string"):
        messages.parse(env, WorkerForward, decoded=True)


def test_deeply_nested_body_is_refused_by_the_fast_path_too() -> None:
    """A body nested past Python's recursion limit is 'nested too deeply', not a crash, via valid() first."""
    deep: Any = {}
    for _ in range(5000):
        deep = {"children": [deep]}
    node = {**_examples.REPLIES["tree"], "children": [deep]}
    assert messages.check_body("tree.ok", node)[0].startswith("body")


@pytest.mark.parametrize(("type_", "body"), EXAMPLES, ids=[t for t, _ in EXAMPLES])
def test_generated_valid_agrees_with_check_on_fuzzed_bodies(type_: str, body: dict[str, Any]) -> None:
    """The generated valid() answers as check does on the example, 300 mutations and the inline edges."""
    compiled = messages.body_schema(type_)
    assert compiled is not None
    generated = _schema.generated_valid(compiled)
    rng = random.Random(f"{type_}-generated")
    candidate: Any = body
    for i in range(300):
        problems = _problems(compiled, candidate)
        assert generated(candidate) == (not problems), (type_, candidate, problems)
        candidate = _mutate(body if problems or i % 5 == 0 else candidate, rng)
    for candidate in _inline_cases(compiled, body):
        assert generated(candidate) == (not _problems(compiled, candidate)), (type_, candidate)


def test_generated_valid_is_written_for_the_hot_bodies_and_nested_maps() -> None:
    """agent.send and its answer get generated code, the answer's usage map written into it: its own valid
    is called only for a usage that is not exactly a dict (a dict subclass, a list); a type that is not a
    dataclass map keeps its own valid."""
    for type_ in ("agent.send", "agent.send.ok"):
        compiled = messages.body_schema(type_)
        assert compiled is not None
        generated = _schema.generated_valid(compiled)
        assert generated is not compiled.valid
        assert generated.__code__.co_filename.startswith("<generated valid of")
    ok = messages.body_schema("agent.send.ok")
    assert ok is not None
    generated = _schema.generated_valid(ok)
    usage = next(c for name, c, _ in ok.fields if name == "usage")
    names = generated.__globals__
    (slot,) = [k for k, v in names.items() if v is usage.valid]
    calls: list[Any] = []
    names[slot] = lambda value: calls.append(value) or usage.valid(value)
    body = dict(_examples.REPLIES["agent.send"])
    assert generated(body) and not calls
    assert not generated({**body, "usage": {**body["usage"], "fuel": -1}}) and not calls
    assert not generated({**body, "usage": [1]}) and calls == [[1]]

    class Odd(dict):  # type: ignore[type-arg]
        pass

    assert generated({**body, "usage": Odd(fuel=1)}) and len(calls) == 2
    number = _schema.compile_type(int, open_maps=False)
    assert _schema.generated_valid(number) is number.valid


def test_generated_valid_leaves_a_body_that_is_not_exactly_a_dict_to_the_loop() -> None:
    """A dict subclass whose lookups answer otherwise than a dict's gets the loop valid's answer (the
    generated code reads fields with ``in`` and subscripts, which only a plain dict answers as get() does)."""

    class Liar(dict):  # type: ignore[type-arg]
        def __contains__(self, key: object) -> bool:
            return False

        def __getitem__(self, key: Any) -> Any:
            return 5

    compiled = messages.body_schema("agent.send")
    assert compiled is not None
    generated = _schema.generated_valid(compiled)
    liar = Liar(service="billing", text="hi")
    assert generated(liar) is compiled.valid(liar) is True  # the loop reads with get(): all there
    handed: list[Any] = []
    _schema.body_validator(compiled, generate_after=1, on_generated=handed.append)(liar)
    assert handed[0](liar) == _schema.body_validator(compiled, generate_after=0)(liar)
    assert handed[0]([1]) == _schema.body_validator(compiled, generate_after=0)([1]) != []


def test_body_validator_swaps_in_the_generated_validator_after_its_count() -> None:
    """body_validator answers with the loop valid() for its first validations, then writes the generated
    validator once and hands it over; both name the problems of a bad body as before the swap."""
    compiled = messages.body_schema("agent.send")
    assert compiled is not None
    handed: list[Any] = []
    validate = _schema.body_validator(compiled, generate_after=3, on_generated=handed.append)
    good = {"service": "billing", "text": "hi"}
    assert validate(good) == [] and validate(good) == [] and not handed
    assert validate(good) == [] and len(handed) == 1
    fast = handed[0]
    assert fast.__code__.co_filename == "<generated valid of AgentSend>"
    for check in (validate, fast):
        assert check(good) == []
        assert check({"service": "billing", "text": 5}) == [
            "body.text: must be a string of at most 65536 characters, got int"
        ]
        assert check({"service": "billing", "agent_id": "a-1", "text": "x"}) == [
            "body.agent_id: give exactly one of agent_id and service"
        ]
    assert len(handed) == 1
    never = _schema.body_validator(compiled, generate_after=0, on_generated=handed.append)
    for _ in range(5):
        assert never(good) == []
    assert len(handed) == 1


@pytest.mark.parametrize(("type_", "body"), EXAMPLES, ids=[t for t, _ in EXAMPLES])
def test_generated_validator_names_what_the_loop_validator_names(type_: str, body: dict[str, Any]) -> None:
    """The generated validator gives the loop validator's answer (no problems, or the same texts) on the
    example, 300 mutations and the inline edges."""
    compiled = messages.body_schema(type_)
    assert compiled is not None
    loop = _schema.body_validator(compiled, generate_after=0)
    handed: list[Any] = []
    warm = _schema.body_validator(compiled, generate_after=1, on_generated=handed.append)
    warm(body)
    if compiled.valid not in _schema._MAPS:
        assert not handed
        return
    (fast,) = handed
    rng = random.Random(f"{type_}-validator")
    candidate: Any = body
    for i in range(300):
        want = loop(candidate)
        assert fast(candidate) == want, (type_, candidate)
        candidate = _mutate(body if want or i % 5 == 0 else candidate, rng)
    for candidate in _inline_cases(compiled, body):
        assert fast(candidate) == loop(candidate), (type_, candidate)


def test_generated_validator_names_a_body_nested_too_deeply() -> None:
    """A body nested past the recursion limit is 'nested too deeply' through the generated validator too."""
    compiled = messages.body_schema("tree.ok")
    assert compiled is not None
    handed: list[Any] = []
    _schema.body_validator(compiled, generate_after=1, on_generated=handed.append)(_examples.REPLIES["tree"])
    leaf = _examples.REPLIES["tree"]["children"][0]["children"][0]
    deep: Any = leaf
    for _ in range(5000):  # every level a valid node: valid() itself recurses past the limit
        deep = {**leaf, "children": [deep]}
    node = {"children": [deep]}
    with pytest.raises(RecursionError):
        compiled.valid(node)
    assert handed and handed[0](node) == _schema.body_validator(compiled, generate_after=0)(node)
    assert handed[0](node) == ["body: nested too deeply"]


def test_decode_uses_the_generated_validator_of_a_hot_type() -> None:
    """After GENERATE_AFTER decodes of a type, decode calls its generated validator directly, with the same
    answers (a bad body still names its problems)."""
    from openfang.protocol import envelope as envelope_module

    good = Envelope(type="agent.send", body={"service": "svc", "text": "x"})
    for _ in range(_schema.GENERATE_AFTER + 1):
        decode(encode(good))
    registered = envelope_module._validators["agent.send"]
    assert registered.__code__.co_filename == "<generated valid of AgentSend>"
    assert decode(encode(good)).body == good.body
    with pytest.raises(ProtocolError, match=r"body.text: must be a string"):
        decode(encode(Envelope(type="agent.send", body={"service": "svc", "text": 5})))
