"""The keys of the config kit: annotation markers, places, and one compiled reader per annotation.

Private to :mod:`openfang.protocol.config_kit`, which re-exports what a section needs (``Range``, ``Len``,
``Above``, ``Match``, ``Parse``, ``Doc``, ``Place``). A reader takes a TOML value, its place and key, and
returns the typed value or ``MISSING`` after appending a problem: it never raises on bad input.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from openfang.protocol._schema import Len, Range
from openfang.protocol.errors import Problem

MISSING: Any = object()
DEFAULT_STR_LEN = 4096


@dataclass(frozen=True, slots=True)
class Above:
    """An exclusive lower bound: ``Above(0)`` is "> 0" (a period, a rate)."""

    min: float


@dataclass(frozen=True, slots=True)
class Match:
    """A string must match ``pattern`` (fully); ``describe`` says what it is, for the problem."""

    pattern: str
    describe: str = ""


@dataclass(frozen=True, slots=True)
class Parse:
    """Convert the TOML value to the typed value: ``fn(raw)`` returns it, or raises ValueError(what)."""

    fn: Callable[[Any], Any]
    describe: str


@dataclass(frozen=True, slots=True)
class Doc:
    """What a key means, for docs and ``describe``."""

    text: str


# -- places ----------


@dataclass(frozen=True, slots=True)
class Place:
    """Where a table is, to name it in problems.

    Two spellings: a TOML table (``Place.table("c.toml", "control")``: ``c.toml: [control]``, its keys
    ``c.toml: [control] key 'hwm'``) and a dotted path for data that is no file (``Place.dotted
    ("memory.args")``: keys ``memory.args.db_path``).
    """

    source: str
    path: str = ""  # the table's dotted name ("security.ratelimit"); "" is the top of the file
    dotted: bool = False
    plain: bool = False  # no file: "supervisor.children.0 key 'cpu'" (a spec built in code)

    @classmethod
    def file(cls, source: str) -> Place:
        """The top of a TOML file: its keys are tables (``c.toml: [control]``)."""
        return cls(source)

    @classmethod
    def table(cls, source: str, name: str) -> Place:
        """Table ``name`` of file ``source``: ``c.toml: [control]``, keys ``c.toml: [control] key 'hwm'``."""
        return cls(source, name)

    @classmethod
    def named(cls, path: str) -> Place:
        """A place that is no file: keys ``<path> key 'cpu'`` (a spec built in code or sent as data)."""
        return cls("", path, plain=True)

    @classmethod
    def at(cls, path: str) -> Place:
        """A dotted place: ``memory.args`` -> keys ``memory.args.db_path``."""
        return cls("", path, dotted=True)

    @property
    def where(self) -> str:
        if self.dotted or self.plain:
            return self.path
        return f"{self.source}: [{self.path}]" if self.path else self.source

    def key(self, name: str) -> str:
        if self.dotted:
            return f"{self.path}.{name}" if self.path else name
        if not self.path:
            return f"{self.source}: key {name!r}"  # a key at the top of a file, outside any table
        return f"{self.where} key {name!r}"

    def sub(self, name: str) -> Place:
        return Place(self.source, f"{self.path}.{name}" if self.path else name, self.dotted, self.plain)


def _got(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def unknown_key(place: Place, key: Any, value: Any, known: Iterable[str]) -> Problem:
    """The problem for a key nobody declared: an unknown table or key, with the closest known ones."""
    import difflib  # here: only a config with an unknown key needs it (~1 ms at every start otherwise)

    known = sorted(known)
    name = str(key)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    listing = f"({hint}known: {', '.join(known) or 'none'})"
    if isinstance(value, Mapping) and not (place.dotted or place.plain):
        return Problem(place.sub(name).where, f"unknown table {listing}")
    return Problem(place.key(name), f"unknown key {listing}")


# -- compiled keys ----------

# check(value, place, key, problems) -> the typed value, or MISSING after appending problems.
Reader = Callable[[Any, Place, str, list[Problem]], Any]
# read_section(cls, raw, place, problems) -> the section or None: how a nested section is read.
ReadSection = Callable[[type, Any, "Place", list[Problem]], Any]


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _bounds_text(lo: float | None, hi: float | None, above: float | None) -> str:
    if above is not None:
        return f" > {_num(above)}" + (f" and <= {_num(hi)}" if hi is not None else "")
    if lo is not None and hi is not None:
        return f" from {_num(lo)} to {_num(hi)}"
    if lo is not None:
        return f" >= {_num(lo)}"
    if hi is not None:
        return f" <= {_num(hi)}"
    return ""


def _number(is_int: bool, bound: Range | None, above: Above | None) -> tuple[Reader, str]:
    lo = bound.min if bound else None
    hi = bound.max if bound else None
    gt = above.min if above else None
    describe = ("an integer" if is_int else "a number") + _bounds_text(lo, hi, gt)

    def reader(value: Any, place: Place, key: str, problems: list[Problem]) -> Any:
        ok_type = isinstance(value, int) if is_int else isinstance(value, int | float)
        if (
            isinstance(value, bool)
            or not ok_type
            or (isinstance(value, float) and not math.isfinite(value))
            or (lo is not None and value < lo)
            or (hi is not None and value > hi)
            or (gt is not None and value <= gt)
        ):
            problems.append(Problem(place.key(key), f"must be {describe}, got {_got(value)}"))
            return MISSING
        return value if is_int else float(value)

    return reader, describe


def _string(length: Len | None, match: Match | None) -> tuple[Reader, str]:
    length = length or Len(DEFAULT_STR_LEN, 1)
    lo, hi = length.min, length.max
    describe = "a non-empty string" if lo == 1 and hi == DEFAULT_STR_LEN else "a string"
    if lo != 1 or hi != DEFAULT_STR_LEN:
        describe += f" of {lo} to {hi} characters" if lo else f" of at most {hi} characters"
    pattern = re.compile(match.pattern) if match else None
    if match is not None:
        describe = match.describe or f"a string matching {match.pattern}"

    def reader(value: Any, place: Place, key: str, problems: list[Problem]) -> Any:
        if not isinstance(value, str) or not lo <= len(value) <= hi:
            problems.append(Problem(place.key(key), f"must be {describe}, got {_got(value)}"))
            return MISSING
        if pattern is not None and not pattern.fullmatch(value):
            problems.append(Problem(place.key(key), f"must be {describe}, got {_got(value)}"))
            return MISSING
        return value

    return reader, describe


def _choice(options: tuple[Any, ...], build: Callable[[Any], Any]) -> tuple[Reader, str]:
    describe = "one of " + ", ".join(str(o) for o in options)
    allowed = frozenset(options)

    def reader(value: Any, place: Place, key: str, problems: list[Problem]) -> Any:
        if isinstance(value, list | dict | bool) or value not in allowed:
            problems.append(Problem(place.key(key), f"must be {describe}, got {_got(value)}"))
            return MISSING
        return build(value)

    return reader, describe


def _sequence(
    item: tuple[Reader, str], length: Len | None, make: Callable[[list[Any]], Any]
) -> tuple[Reader, str]:
    item_reader, item_describe = item
    hi = length.max if length else 10_000
    lo = length.min if length else 0
    describe = "a list of non-empty strings" if item_describe == "a non-empty string" else "a list"

    def reader(value: Any, place: Place, key: str, problems: list[Problem]) -> Any:
        if not isinstance(value, list) or not lo <= len(value) <= hi:
            bound = f" of at most {hi} items" if hi != 10_000 else ""
            problems.append(Problem(place.key(key), f"must be {describe}{bound}, got {_got(value)}"))
            return MISSING
        before = len(problems)
        items = [item_reader(v, place, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return MISSING if len(problems) > before else make(items)

    return reader, describe


def _mapping(values: tuple[Reader, str]) -> tuple[Reader, str]:
    value_reader, _ = values

    def reader(value: Any, place: Place, key: str, problems: list[Problem]) -> Any:
        if not isinstance(value, Mapping):
            problems.append(Problem(place.key(key), f"must be a table, got {_got(value)}"))
            return MISSING
        before = len(problems)
        sub = place.sub(key)
        out = {}
        for k, v in value.items():
            out[str(k)] = value_reader(v, sub, str(k), problems)
        return MISSING if len(problems) > before else out

    return reader, "a table"


def _section(cls: type, read_section: ReadSection) -> tuple[Reader, str]:
    def reader(value: Any, place: Place, key: str, problems: list[Problem]) -> Any:
        before = len(problems)
        built = read_section(cls, value, place.sub(key), problems)
        return MISSING if built is None or len(problems) > before else built

    return reader, f"a table ({cls.__name__})"


def _optional(inner: tuple[Reader, str]) -> tuple[Reader, str]:
    inner_reader, describe = inner

    def reader(value: Any, place: Place, key: str, problems: list[Problem]) -> Any:
        return None if value is None else inner_reader(value, place, key, problems)

    return reader, describe


def _parse(parse: Parse) -> tuple[Reader, str]:
    def reader(value: Any, place: Place, key: str, problems: list[Problem]) -> Any:
        try:
            return parse.fn(value)
        except (ValueError, TypeError) as exc:
            problems.append(
                Problem(place.key(key), str(exc) or f"must be {parse.describe}, got {_got(value)}")
            )
            return MISSING

    return reader, parse.describe


def _any(value: Any, place: Place, key: str, problems: list[Problem]) -> Any:
    return value


def compile_key(tp: Any, read_section: ReadSection) -> tuple[Reader, str]:
    """The reader and description of one annotation (see :mod:`openfang.protocol.config_kit`).

    ``read_section`` reads a nested section (``config_kit.read``): a sub-table.
    """
    length: Len | None = None
    bound: Range | None = None
    above: Above | None = None
    match: Match | None = None
    if typing.get_origin(tp) is typing.Annotated:
        tp, *meta = typing.get_args(tp)
        for m in meta:
            if isinstance(m, Parse):
                return _parse(m)
            if isinstance(m, Len):
                length = m
            elif isinstance(m, Range):
                bound = m
            elif isinstance(m, Above):
                above = m
            elif isinstance(m, Match):
                match = m
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return _any, "any value"
    if tp is bool:

        def boolean(value: Any, place: Place, key: str, problems: list[Problem]) -> Any:
            if not isinstance(value, bool):
                problems.append(Problem(place.key(key), f"must be true or false, got {_got(value)}"))
                return MISSING
            return value

        return boolean, "true or false"
    if tp in (int, float):
        return _number(tp is int, bound, above)
    if tp is str:
        return _string(length, match)
    if origin is typing.Literal:
        return _choice(args, lambda v: v)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _choice(tuple(m.value for m in tp), tp)
    if origin is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"config tuples are tuple[T, ...], not {tp!r}")
        return _sequence(compile_key(args[0], read_section), length, tuple)
    if origin is frozenset:
        return _sequence(compile_key(args[0], read_section), length, frozenset)
    if origin in (dict, Mapping):
        if args and args[0] is not str:
            raise TypeError(f"table keys are strings, not {args[0]!r}")
        return _mapping(compile_key(args[1], read_section) if args else (_any, "any value"))
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) != 1 or type(None) not in args:
            raise TypeError(f"config unions are T | None, not {tp!r}")
        return _optional(compile_key(options[0], read_section))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _section(tp, read_section)
    raise TypeError(f"unsupported annotation in a config section: {tp!r}")
