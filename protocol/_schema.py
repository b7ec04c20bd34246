"""Body schemas from dataclass annotations: one compiled checker per message body, reporting every problem.

A message body is a frozen dataclass whose field annotations say what the wire may carry::

    text: Annotated[str, Len(65536)]             # a string of at most 65536 characters
    limit: Annotated[int, Range(1, 100)] = 10    # optional: fields with a default may be absent (or nil)
    children: list[Node]                         # nested dataclasses are maps, checked recursively

Supported annotations: ``str``, ``bytes`` (msgpack bin), ``int`` (never ``bool``), ``float`` (ints
accepted), ``bool``, ``Any``, ``Literal[...]``, ``list[T]``, ``dict[str, T]``, ``T | None``, unions, nested
dataclasses, each optionally wrapped in ``Annotated[..., Len(...), Range(...), Match(...)]``. Strings, bytes,
lists and maps without an explicit ``Len`` get a default bound, so no field is unbounded. A union of
dataclasses that each fix the same required field to ``Literal`` values is *tagged*: that field picks the
option, and a bad body is reported with that option's own problems (``body.ops[1].body.role: ...``).
Problems read ``"body.text: must be a string of at most 65536 characters, got int"``: the dotted path, what
is required, what arrived.

Bodies are *closed* (an unknown field is a problem, so a typo in a request is never silently ignored) or
*open* (unknown fields are allowed: replies and events, so a newer peer may add fields without breaking
older clients). A checker is compiled once per message type, on its first message (messages._schema_of),
then kept: validation is on every message's hot path.

Each compiled type has two checkers that agree on every value: ``valid(value) -> bool``, which builds no
paths or texts (every message goes through it), and ``check(value, where, problems)``, which names every
problem and runs only when ``valid`` said no. Its :class:`Shape` is the most a valid value can hold in the
terms of the security layer's limits (layer 1): when a body's shape is within them, a body that passed its
schema cannot break them and the gateway does not walk it a second time.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_STR_LEN = 65536
DEFAULT_LIST_LEN = 10000
DEFAULT_MAP_KEYS = 1000
DEFAULT_BYTES_LEN = 1 << 20
MAX_KEY_LEN = 128
MAX_PROBLEMS = 50  # a hostile 10,000-item list must not produce a 10,000-line error

# check(value, where, problems) appends "where: what" strings; it never raises.
Check = Callable[[Any, str, list[str]], None]
# valid(value) is True exactly when check(value, ...) would append nothing (it only says yes or no).
Valid = Callable[[Any], bool]
Build = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Len:
    """Bounds on the length of a string (characters), list (items) or map (keys)."""

    max: int
    min: int = 0


@dataclass(frozen=True, slots=True)
class Range:
    """Inclusive bounds of a number."""

    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class Match:
    """A string must match ``pattern`` whole; ``what`` says in words what it allows (problems and docs)."""

    pattern: str
    what: str


@dataclass(frozen=True, slots=True)
class Shape:
    """The most a valid value of a type can hold, in the terms of layer 1's limits
    (:class:`openfang.security.validation.ValidationLimits`): the longest string and binary value, the
    longest list, the most keys in one map, the longest key, the deepest nesting (a scalar is 0) and the
    most values in all (the value itself counts). None instead of a Shape: no bound (``Any``, open maps,
    recursive types)."""

    text: int = 0
    binary: int = 0
    items: int = 0
    keys: int = 0
    key_len: int = 0
    depth: int = 0
    nodes: int = 1


SCALAR = Shape()


def _widest(shapes: list[Shape | None]) -> Shape | None:
    """A shape that holds any of ``shapes`` (a union): each bound the largest of them."""
    if not shapes or any(s is None for s in shapes):
        return None
    known = [s for s in shapes if s is not None]
    return Shape(
        text=max(s.text for s in known),
        binary=max(s.binary for s in known),
        items=max(s.items for s in known),
        keys=max(s.keys for s in known),
        key_len=max(s.key_len for s in known),
        depth=max(s.depth for s in known),
        nodes=max(s.nodes for s in known),
    )


def _container(
    children: list[tuple[Shape | None, int]], *, items: int = 0, keys: int = 0, key_len: int = 0
) -> Shape | None:
    """The shape of a list or map holding ``count`` values of each child shape (``(shape, count)``)."""
    if any(s is None for s, _ in children):
        return None
    known = [(s, n) for s, n in children if s is not None]
    inner = _widest([s for s, _ in known]) if known else SCALAR
    assert inner is not None
    return Shape(
        text=inner.text,
        binary=inner.binary,
        items=max(items, inner.items),
        keys=max(keys, inner.keys),
        key_len=max(key_len, inner.key_len),
        depth=inner.depth + 1 if known else 0,
        nodes=1 + sum(s.nodes * n for s, n in known),
    )


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled type: its checkers, its builder (wire value -> Python value), its description and shape."""

    check: Check
    build: Build
    describe: str
    valid: Valid
    shape: Shape | None = None
    # For maps compiled from a dataclass: (name, compiled, required) per field, and the class (for docs).
    fields: tuple[tuple[str, Compiled, bool], ...] = ()
    cls: type | None = None
    literals: tuple[Any, ...] = ()  # for Literal[...]: the allowed values (a tagged union's tags)
    # What a map's valid() may test in place of calling this one's valid for the usual value (INLINE_*):
    # (kind, lo, hi); kind 0: call valid.
    inline: tuple[int, float, float] = (0, 0, 0)


# Inline kinds (Compiled.inline): the test _compile_dataclass's valid() makes itself for a field's value of
# the exact type named, with the answer valid() gives it; any other value goes to the field's valid().
INLINE_STR = 1  # type str: lo <= len(value) <= hi (a string without a Match)
INLINE_INT = 2  # type int: lo <= value <= hi (a number: int or float fields)
INLINE_BOOL = 3  # type bool: valid


def _got(value: Any) -> str:
    if value is None:
        return "nil"
    return type(value).__name__


def _identity(value: Any) -> Any:
    return value


def _len_text(bound: Len, unit: str) -> str:
    if bound.min and bound.min == bound.max:
        return f"of exactly {bound.max} {unit}"
    if bound.min:
        return f"of {bound.min} to {bound.max} {unit}"
    return f"of at most {bound.max} {unit}"


def _range_text(bound: Range | None) -> str:
    if bound is None or (bound.min is None and bound.max is None):
        return ""
    if bound.min is not None and bound.max is not None:
        return f" from {bound.min:g} to {bound.max:g}"
    if bound.min is not None:
        return f" of at least {bound.min:g}"
    return f" of at most {bound.max:g}"


def _in_range(value: float, bound: Range | None) -> bool:
    if bound is None:
        return True
    return (bound.min is None or value >= bound.min) and (bound.max is None or value <= bound.max)


def _compile_str(bound: Len | None, match: Match | None = None) -> Compiled:
    bound = bound or Len(DEFAULT_STR_LEN)
    describe = f"a string {_len_text(bound, 'characters')}" + (f" ({match.what})" if match else "")
    lo, hi = bound.min, bound.max
    full = re.compile(match.pattern).fullmatch if match else None

    def check(value: Any, where: str, problems: list[str]) -> None:
        if not isinstance(value, str):
            problems.append(f"{where}: must be {describe}, got {_got(value)}")
        elif not lo <= len(value) <= hi:
            problems.append(f"{where}: must be {describe}, got {len(value)} characters")
        elif full is not None and full(value) is None:
            problems.append(f"{where}: must be {describe}, got {value[:140]!r}")

    if full is None:

        def valid(value: Any) -> bool:
            return isinstance(value, str) and lo <= len(value) <= hi

        return Compiled(check, _identity, describe, valid, Shape(text=hi), inline=(INLINE_STR, lo, hi))

    def valid_matched(value: Any) -> bool:
        return isinstance(value, str) and lo <= len(value) <= hi and full(value) is not None

    return Compiled(check, _identity, describe, valid_matched, Shape(text=hi))


def _compile_bytes(bound: Len | None) -> Compiled:
    bound = bound or Len(DEFAULT_BYTES_LEN)
    describe = f"bytes (msgpack bin) {_len_text(bound, 'bytes')}"
    lo, hi = bound.min, bound.max

    def check(value: Any, where: str, problems: list[str]) -> None:
        if not isinstance(value, bytes):
            problems.append(f"{where}: must be {describe}, got {_got(value)}")
        elif not lo <= len(value) <= hi:
            problems.append(f"{where}: must be {describe}, got {len(value)} bytes")

    def valid(value: Any) -> bool:
        return isinstance(value, bytes) and lo <= len(value) <= hi

    return Compiled(check, _identity, describe, valid, Shape(binary=hi))


def _compile_number(tp: type, bound: Range | None) -> Compiled:
    is_int = tp is int
    describe = ("an integer" if is_int else "a finite number") + _range_text(bound)

    def check(value: Any, where: str, problems: list[str]) -> None:
        if isinstance(value, bool) or not isinstance(value, (int,) if is_int else (int, float)):
            problems.append(f"{where}: must be {describe}, got {_got(value)}")
        elif (not is_int and not math.isfinite(value)) or not _in_range(value, bound):
            problems.append(f"{where}: must be {describe}, got {value}")

    kinds = (int,) if is_int else (int, float)
    lo = -math.inf if bound is None or bound.min is None else bound.min
    hi = math.inf if bound is None or bound.max is None else bound.max

    def valid(value: Any) -> bool:
        if type(value) is int:  # what msgpack gives: the checks below for an exact int, in one step
            return lo <= value <= hi
        if isinstance(value, bool) or not isinstance(value, kinds):
            return False
        return (is_int or math.isfinite(value)) and _in_range(value, bound)

    inline = (INLINE_INT, lo, hi)
    return Compiled(check, _identity if is_int else float, describe, valid, SCALAR, inline=inline)


def _compile_bool() -> Compiled:
    def check(value: Any, where: str, problems: list[str]) -> None:
        if not isinstance(value, bool):
            problems.append(f"{where}: must be a boolean, got {_got(value)}")

    def valid(value: Any) -> bool:
        return isinstance(value, bool)

    return Compiled(check, _identity, "a boolean", valid, SCALAR, inline=(INLINE_BOOL, 0, 0))


def _compile_literal(options: tuple[Any, ...]) -> Compiled:
    allowed = frozenset(options)
    describe = "one of " + ", ".join(repr(o) for o in options)

    def check(value: Any, where: str, problems: list[str]) -> None:
        if isinstance(value, (dict, list)) or value not in allowed:
            shown = repr(value) if isinstance(value, (str, int, float)) else _got(value)
            problems.append(f"{where}: must be {describe}, got {shown}")

    def valid(value: Any) -> bool:
        return not isinstance(value, (dict, list)) and value in allowed

    shape = Shape(
        text=max((len(o) for o in options if isinstance(o, str)), default=0),
        binary=max((len(o) for o in options if isinstance(o, bytes)), default=0),
    )
    return Compiled(check, _identity, describe, valid, shape, literals=tuple(options))


def _compile_list(item: Compiled, bound: Len | None) -> Compiled:
    bound = bound or Len(DEFAULT_LIST_LEN)
    describe = f"a list {_len_text(bound, 'items')} of {item.describe}"
    lo, hi = bound.min, bound.max
    item_check, item_build = item.check, item.build

    def check(value: Any, where: str, problems: list[str]) -> None:
        if not isinstance(value, list):
            problems.append(f"{where}: must be a list {_len_text(bound, 'items')}, got {_got(value)}")
            return
        if not lo <= len(value) <= hi:
            problems.append(f"{where}: must be a list {_len_text(bound, 'items')}, got {len(value)} items")
            return
        for i, entry in enumerate(value):
            item_check(entry, f"{where}[{i}]", problems)
            if len(problems) >= MAX_PROBLEMS:
                return

    def build(value: Any) -> Any:
        return [item_build(v) for v in value]

    item_valid = item.valid

    def valid(value: Any) -> bool:
        if not isinstance(value, list) or not lo <= len(value) <= hi:
            return False
        return all(map(item_valid, value))

    shape = _container([(item.shape, hi)], items=hi)
    return Compiled(check, _identity if item_build is _identity else build, describe, valid, shape)


def _compile_map(values: Compiled, bound: Len | None) -> Compiled:
    bound = bound or Len(DEFAULT_MAP_KEYS)
    describe = f"a map {_len_text(bound, 'keys')} with string keys"
    hi = bound.max
    value_check = values.check

    def check(value: Any, where: str, problems: list[str]) -> None:
        if not isinstance(value, dict):
            problems.append(f"{where}: must be {describe}, got {_got(value)}")
            return
        if len(value) > hi:
            problems.append(f"{where}: must be {describe}, got {len(value)} keys")
            return
        for key, entry in value.items():
            if not isinstance(key, str) or len(key) > MAX_KEY_LEN:
                problems.append(f"{where}: keys must be strings of at most {MAX_KEY_LEN} characters")
            else:
                value_check(entry, f"{where}.{key}", problems)
            if len(problems) >= MAX_PROBLEMS:
                return

    value_valid = values.valid

    def valid(value: Any) -> bool:
        if not isinstance(value, dict) or len(value) > hi:
            return False
        for key, entry in value.items():
            if not isinstance(key, str) or len(key) > MAX_KEY_LEN or not value_valid(entry):
                return False
        return True

    shape = _container([(values.shape, hi)], keys=hi, key_len=MAX_KEY_LEN)
    return Compiled(check, _identity, describe, valid, shape)


def _tags(options: list[Compiled]) -> tuple[str, dict[Any, Compiled]] | None:
    """For a union of dataclass maps that each fix one required field to ``Literal`` values (a tag): that
    field's name and the option each tag value picks. None when the options are not tagged that way."""
    if len(options) < 2 or any(o.cls is None or not o.fields for o in options):
        return None
    for name, _, _ in options[0].fields:
        table: dict[Any, Compiled] = {}
        for option in options:
            tag = next((c for n, c, required in option.fields if n == name and required and c.literals), None)
            if tag is None or table.keys() & set(tag.literals):
                break
            table.update(dict.fromkeys(tag.literals, option))
        else:
            return name, table
    return None


def _compile_tagged(name: str, table: dict[Any, Compiled], describe: str, nullable: bool) -> Compiled:
    allowed = ", ".join(repr(t) for t in table)

    def pick(value: Any) -> Compiled | None:
        tag = value.get(name)
        return table.get(tag) if isinstance(tag, str | int) and not isinstance(tag, bool) else None

    def check(value: Any, where: str, problems: list[str]) -> None:
        if value is None and nullable:
            return
        if not isinstance(value, dict):
            problems.append(f"{where}: must be {describe}, got {_got(value)}")
            return
        option = pick(value)
        if option is None:
            tag = value.get(name)
            shown = repr(tag) if isinstance(tag, str | int | float) else _got(tag)
            problems.append(f"{where}.{name}: must be one of {allowed}, got {shown}")
            return
        option.check(value, where, problems)

    def build(value: Any) -> Any:
        option = None if value is None else pick(value)
        return value if option is None else option.build(value)

    def valid(value: Any) -> bool:
        if value is None and nullable:
            return True
        if not isinstance(value, dict):
            return False
        option = pick(value)
        return option is not None and option.valid(value)

    options = list({id(o): o for o in table.values()}.values())
    shape = _widest([o.shape for o in options] + ([SCALAR] if nullable else []))
    return Compiled(check, build, describe, valid, shape)


def _compile_union(options: list[Compiled], nullable: bool) -> Compiled:
    describe = " or ".join(o.describe for o in options) + (" or nil" if nullable else "")
    tagged = _tags(options)
    if tagged is not None:
        return _compile_tagged(*tagged, describe, nullable)
    if len(options) == 1:
        inner = options[0]

        def check_one(value: Any, where: str, problems: list[str]) -> None:
            if value is not None or not nullable:
                inner.check(value, where, problems)

        def build_one(value: Any) -> Any:
            return None if value is None else inner.build(value)

        inner_valid = inner.valid

        def valid_one(value: Any) -> bool:
            return (value is None and nullable) or inner_valid(value)

        shape_one = _widest([inner.shape] + ([SCALAR] if nullable else []))
        # inline: a value that is not nil is valid exactly when the option's is (nil goes to valid_one)
        return Compiled(check_one, build_one, describe, valid_one, shape_one, inline=inner.inline)

    def check(value: Any, where: str, problems: list[str]) -> None:
        if value is None and nullable:
            return
        for option in options:
            trial: list[str] = []
            option.check(value, where, trial)
            if not trial:
                return
        problems.append(f"{where}: must be {describe}, got {_got(value)}")

    def build(value: Any) -> Any:
        for option in options:
            if option.valid(value):
                return option.build(value)
        return value

    def valid(value: Any) -> bool:
        if value is None and nullable:
            return True
        return any(option.valid(value) for option in options)

    shape = _widest([o.shape for o in options] + ([SCALAR] if nullable else []))
    return Compiled(check, build, describe, valid, shape)


def compile_type(tp: Any, *, open_maps: bool) -> Compiled:
    """Compile one annotation (see the module docstring for what is supported)."""
    length: Len | None = None
    bound: Range | None = None
    match: Match | None = None
    if typing.get_origin(tp) is typing.Annotated:
        tp, *meta = typing.get_args(tp)
        for m in meta:
            if isinstance(m, Len):
                length = m
            elif isinstance(m, Range):
                bound = m
            elif isinstance(m, Match):
                match = m
    origin = typing.get_origin(tp)
    if tp is Any:
        return Compiled(lambda value, where, problems: None, _identity, "any value", lambda value: True)
    if tp is str:
        return _compile_str(length, match)
    if tp is bytes:
        return _compile_bytes(length)
    if tp is bool:
        return _compile_bool()
    if tp in (int, float):
        return _compile_number(tp, bound)
    if origin is typing.Literal:
        return _compile_literal(typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return _compile_list(compile_type(item, open_maps=open_maps), length)
    if origin is dict:
        key, value = typing.get_args(tp)
        if key is not str:
            raise TypeError(f"map keys must be str, not {key!r}")
        return _compile_map(compile_type(value, open_maps=open_maps), length)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        options = [compile_type(a, open_maps=open_maps) for a in args if a is not type(None)]
        return _compile_union(options, nullable=type(None) in args)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return compile_dataclass(tp, open_fields=open_maps)
    raise TypeError(f"unsupported annotation in a message body: {tp!r}")


def compile_dataclass(cls: type, *, open_fields: bool) -> Compiled:
    """Compile a dataclass as a map: required and optional fields, unknown fields refused unless open.

    A class may define ``extra_checks(raw: Mapping[str, Any]) -> list[str]`` (a staticmethod) for rules
    that span fields (``agent_id`` or ``service``); it runs only when every field is individually valid,
    and returns problems without the path prefix (``"agent_id: ..."``).
    """
    key = (cls, open_fields)
    if key in _in_progress:
        # A recursive type (a tree node's children are nodes): delegate to the finished compile at run time.
        holder = _in_progress[key]
        return Compiled(
            lambda value, where, problems: holder[0].check(value, where, problems),
            lambda value: holder[0].build(value),
            f"a map ({cls.__name__})",
            lambda value: holder[0].valid(value),
            None,  # a recursive type has no depth bound
            cls=cls,
        )
    holder_list: list[Compiled] = []
    _in_progress[key] = holder_list
    try:
        compiled = _compile_dataclass(cls, open_fields)
    finally:
        del _in_progress[key]
    holder_list.append(compiled)
    return compiled


_in_progress: dict[tuple[type, bool], list[Compiled]] = {}
_ABSENT: Any = object()  # a field not in the map (valid's one lookup per field)


def _compile_dataclass(cls: type, open_fields: bool) -> Compiled:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: list[tuple[str, Compiled, bool]] = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        fields.append((f.name, compile_type(hints[f.name], open_maps=open_fields), required))
    known = frozenset(name for name, _, _ in fields)
    allowed_text = ", ".join(sorted(known)) or "none"
    extra: Callable[[Mapping[str, Any]], list[str]] | None = getattr(cls, "extra_checks", None)
    describe = f"a map ({cls.__name__})"

    def check(value: Any, where: str, problems: list[str]) -> None:
        if not isinstance(value, dict):
            problems.append(f"{where}: must be {describe}, got {_got(value)}")
            return
        before = len(problems)
        for name, compiled, required in fields:
            if name in value:
                entry = value[name]
                if entry is None and not required:
                    continue  # nil means absent for an optional field
                compiled.check(entry, f"{where}.{name}", problems)
            elif required:
                problems.append(f"{where}.{name}: required field is missing")
        if not open_fields:
            for key in value:
                if key not in known:
                    shown = key if isinstance(key, str) else repr(key)
                    problems.append(f"{where}.{shown}: unknown field (allowed: {allowed_text})")
        if extra is not None and len(problems) == before:
            problems.extend(f"{where}.{p}" for p in extra(value))

    def build(value: Any) -> Any:
        kwargs = {}
        for name, compiled, required in fields:
            entry = value.get(name)
            if entry is not None:
                kwargs[name] = compiled.build(entry)
            elif required:
                kwargs[name] = None  # a required nullable field (validated): nil travels as None
        return cls(**kwargs)

    # valid() answers what check() would (no problems or some) in one pass: the required fields (present,
    # and valid even when nil), the optional ones (absent or nil, else valid), no key outside the known ones
    # (a closed map; issuperset reads the map's keys as the loop in check does), then the extra checks. A
    # field's string, number or boolean of the exact type is tested here (its Compiled.inline: the same
    # answer as its valid, without the call); any other value goes to its valid.
    checks = tuple(  # the required fields first, then the optional ones (stable sort: each in field order)
        (name, compiled.valid, *compiled.inline, required)
        for name, compiled, required in sorted(fields, key=lambda f: not f[2])
    )
    closed = not open_fields

    def valid(value: Any) -> bool:  # generated_valid writes the same steps out as straight-line code
        if not isinstance(value, dict):
            return False
        for name, field_valid, kind, lo, hi, required in checks:
            entry = value.get(name, _ABSENT)
            if entry is _ABSENT or (entry is None and not required):
                if required:
                    return False
                continue  # an optional field absent or nil: valid
            if kind == INLINE_STR and type(entry) is str:
                if not lo <= len(entry) <= hi:
                    return False
            elif kind == INLINE_INT and type(entry) is int:
                if not lo <= entry <= hi:
                    return False
            elif (kind != INLINE_BOOL or type(entry) is not bool) and not field_valid(entry):
                return False
        if closed and not known.issuperset(value):
            return False
        return extra is None or not extra(value)

    shape: Shape | None = None
    if not open_fields:  # an open map may carry any unknown field: no bound
        names = [name for name, _, _ in fields]
        shape = _container(
            [(compiled.shape, 1) for _, compiled, _ in fields],
            keys=len(names),
            key_len=max((len(n) for n in names), default=0),
        )
    _MAPS[valid] = _MapSpec(tuple(fields), known, closed, extra, cls.__name__)
    return Compiled(check, build, describe, valid, shape, tuple(fields), cls)


@dataclass(slots=True)
class _MapSpec:
    """What a dataclass map's valid() tests, for generated_valid (kept by that valid function; never changed
    after it is made: not frozen, whose __init__ costs more, once per compiled type on a start's path)."""

    fields: tuple[tuple[str, Compiled, bool], ...]
    known: frozenset[str]
    closed: bool
    extra: Callable[[Mapping[str, Any]], list[str]] | None
    name: str


# A dataclass map's valid() -> what it tests (generated_valid). Compiled types are kept for the process's
# life (one per message type), so this only grows with the catalogue.
_MAPS: dict[Valid, _MapSpec] = {}

# Validations of one body type before body_validator swaps its valid() for generated_valid's: a type used
# that often is on a hot path; writing and compiling its code (~0.1-0.4 ms) is not paid by a type used once
# (a start, a warm start's first messages).
GENERATE_AFTER = 256
_GENERATE_DEPTH = 4  # nested dataclass maps written into one generated valid (deeper ones are called)


def generated_valid(compiled: Compiled) -> Valid:
    """``compiled.valid`` written out as straight-line code for a dataclass map: the same tests in the same
    order (each field's lookup, its inline test or its own valid, the unknown-key test, the extra checks),
    without the loop's per-field tuple and kind dispatch, and nested dataclass maps written in place (no
    call). The same answer as ``compiled.valid`` for every value (the oracle tests fuzz it); for any other
    compiled type, ``compiled.valid`` itself."""
    spec = _MAPS.get(compiled.valid)
    if spec is None:
        return compiled.valid
    generated: Valid = _generate(spec, compiled.valid, None)
    return generated


def generated_validator(
    compiled: Compiled, problems: Callable[[Any], list[str]]
) -> Callable[[Mapping[str, Any]], list[str]] | None:
    """A body validator (``[]`` for a valid body, else ``problems(body)``) whose test is
    :func:`generated_valid`'s code in its own body (no call to a valid function for the body itself), or
    None when ``compiled`` is not a dataclass map. A RecursionError inside it goes to ``problems``."""
    spec = _MAPS.get(compiled.valid)
    if spec is None:
        return None
    validator: Callable[[Mapping[str, Any]], list[str]] = _generate(spec, compiled.valid, problems)
    return validator


def _generate(spec: _MapSpec, loop: Valid, problems: Callable[[Any], list[str]] | None) -> Any:
    """Compile the code of ``spec``'s valid (``problems`` None), or of its validator (answering ``[]`` or
    ``problems(value)``); the function. ``loop`` is spec's own valid, which answers for a value that is not
    exactly a dict."""
    names: dict[str, Any] = {"_loop": loop}
    if problems is None:
        fail, ok, other = "return False", "return True", "return _loop(value)"
    else:
        names["_problems"] = problems
        fail, ok, other = (
            "return _problems(value)",
            "return []",
            "return [] if _loop(value) else _problems(value)",
        )
    # Exactly a dict (what msgpack makes): the fields are read with ``in`` and subscripts, which answer as
    # the loop's get() does for a dict. Anything else (a dict subclass, which may answer otherwise, or not a
    # map at all) is the loop's to answer.
    body = ["    if type(value) is not dict:", f"        {other}"]
    body += _write_checks(spec, "value", names, "_v", 0, fail, "    ")
    body.append(f"    {ok}")
    if problems is None:
        lines = ["def _valid(value):", *body]
    else:  # a validator: a RecursionError in a nested value is a problem to name, as valid's caller does
        lines = ["def _valid(value):", "    try:", *(f"    {line}" for line in body)]
        lines += ["    except RecursionError:", f"        {fail}"]
    code = compile("\n".join(lines), f"<generated valid of {spec.name}>", "exec")
    exec(code, names)  # our own source, written above from the schema; values are passed in as names
    return names["_valid"]


def _write_checks(
    spec: _MapSpec, var: str, names: dict[str, Any], me: str, depth: int, fail: str, pad: str
) -> list[str]:
    """The source lines that test the dict in ``var`` as ``spec``'s valid does (each field's presence and
    value, the unknown-key test, the extra checks), each failure running ``fail``; nested dataclass maps
    are written in place down to _GENERATE_DEPTH (a nested value that is not exactly a dict goes to its own
    valid). Field names go in as ``repr`` literals (a string literal whatever the name holds), every other
    value as a name in ``names`` prefixed ``me``."""
    lines: list[str] = []
    e = f"e{depth}"
    for i, (field_name, compiled, required) in enumerate(spec.fields):
        key = f"{me}_{i}"  # the field's own valid, where the code calls it
        name = repr(field_name)
        if required:
            lines += [f"{pad}if {name} not in {var}:", f"{pad}    {fail}", f"{pad}{e} = {var}[{name}]"]
            p = pad
        else:  # absent or nil: valid
            lines += [f"{pad}{e} = {var}[{name}] if {name} in {var} else None", f"{pad}if {e} is not None:"]
            p = pad + "    "
        kind, lo, hi = compiled.inline
        nested = _MAPS.get(compiled.valid)
        names[key] = compiled.valid
        if kind in (INLINE_STR, INLINE_INT):
            bounds = [_literal(bound, f"{key}_{end}", names) for bound, end in ((lo, "lo"), (hi, "hi"))]
            test = f"len({e})" if kind == INLINE_STR else e
            lines += [
                f"{p}if type({e}) is {'str' if kind == INLINE_STR else 'int'}:",
                f"{p}    if not {bounds[0]} <= {test} <= {bounds[1]}:",
                f"{p}        {fail}",
                f"{p}elif not {key}({e}):",
                f"{p}    {fail}",
            ]
        elif kind == INLINE_BOOL:
            lines += [f"{p}if type({e}) is not bool and not {key}({e}):", f"{p}    {fail}"]
        elif nested is not None and depth < _GENERATE_DEPTH:
            lines += [
                f"{p}if type({e}) is not dict:",
                f"{p}    if not {key}({e}):",
                f"{p}        {fail}",
                f"{p}else:",
            ]
            lines += _write_checks(nested, e, names, key, depth + 1, fail, p + "    ")
        else:
            lines += [f"{p}if not {key}({e}):", f"{p}    {fail}"]
    if spec.closed:
        names[f"{me}_known"] = spec.known
        lines += [f"{pad}if not {me}_known.issuperset({var}):", f"{pad}    {fail}"]
    if spec.extra is not None:
        names[f"{me}_extra"] = spec.extra
        lines += [f"{pad}if {me}_extra({var}):", f"{pad}    {fail}"]
    return lines


def _literal(value: Any, name: str, names: dict[str, Any]) -> str:
    """``value`` as source: an int as its literal (a constant in the code), anything else (an infinite
    bound) as a name bound to it in ``names``."""
    if type(value) is int:
        return repr(value)
    names[name] = value
    return name


def body_validator(
    compiled: Compiled,
    generate_after: int = GENERATE_AFTER,
    on_generated: Callable[[Callable[[Mapping[str, Any]], list[str]]], None] | None = None,
) -> Callable[[Mapping[str, Any]], list[str]]:
    """The ``envelope.register_body_validator`` form of a compiled body: problems under ``body.``.

    After ``generate_after`` validations (0: never) of a dataclass map it answers through
    :func:`generated_validator`'s code, and hands that validator to ``on_generated`` (which registers it in
    its place, so the codec calls it without this one)."""
    check, valid = compiled.check, compiled.valid
    left = generate_after if compiled.valid in _MAPS else 0
    fast: Callable[[Mapping[str, Any]], list[str]] | None = None

    def problems_of(body: Any) -> list[str]:
        problems: list[str] = []
        try:
            check(body, "body", problems)
        except RecursionError:
            return ["body: nested too deeply"]
        if len(problems) > MAX_PROBLEMS:
            hidden = len(problems) - MAX_PROBLEMS
            problems = [*problems[:MAX_PROBLEMS], f"... and {hidden} more problems"]
        return problems

    def validate(body: Mapping[str, Any]) -> list[str]:
        nonlocal left, fast
        if left:  # counting down to the generated code (0 once it is in place, or for a type without one)
            left -= 1
            if not left:
                fast = generated_validator(compiled, problems_of)
                if fast is not None and on_generated is not None:
                    on_generated(fast)
        if fast is not None:
            return fast(body)
        try:
            if valid(body):
                return []
        except RecursionError:
            pass  # the checker meets it again and reports it
        return problems_of(body)

    return validate


def to_wire(obj: Any) -> Any:
    """A body dataclass (or a value inside one) as plain msgpack-able data.

    Optional fields (those with a default) whose value is None are left out; a required field that is None
    (a stopped child's ``pid``) travels as nil.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            optional = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if value is None and optional:
                continue
            out[f.name] = to_wire(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_wire(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_wire(v) for k, v in obj.items()}
    return obj
