"""One config kit: every config section declared once, read by one reader that reports every problem.

A section is a frozen, slotted, kw_only dataclass. Each field is one key: its name is the key, its annotation
the type and bounds, its default *the* default (a field without one is required)::

    @dataclass(frozen=True, slots=True, kw_only=True)
    class LoggingConfig:
        level: Literal["debug", "info", "warning", "error"] = "info"
        format: Annotated[Literal["auto", "json", "console"], Doc("auto: console on a terminal")] = "auto"
        queue_limit: Annotated[int, Range(1)] = 1000

    config = read(LoggingConfig, raw.get("logging"), Place.table(source, "logging"), problems)

:func:`read` checks every key, appends one :class:`~openfang.protocol.errors.Problem` per mistake (naming
the file, the table and the key: ``cluster.toml: [logging] key 'level': must be one of debug, info,
warning, error, got 'loud'``), refuses unknown keys (with a "did you mean" when one is close), and returns
the section built from the valid keys, the dataclass supplying the defaults: nothing restates a default.

Supported annotations: ``bool``, ``int`` (never a bool), ``float`` (ints accepted), ``str`` (non-empty
unless ``Len(min=0)``), ``Literal[...]``, a ``StrEnum``, ``tuple[T, ...]`` and ``frozenset[T]`` (from a
TOML array), ``dict[str, T]`` and ``Mapping[str, T]`` (a table of values), ``T | None``, ``Any``, and a
nested section dataclass (a sub-table, read recursively), each optionally wrapped in ``Annotated[...]``
with :class:`Len`, :class:`Range`, :class:`Above`, :class:`Match`, :class:`Parse` (a converter for a key
whose TOML form differs from its typed form: ``socket_mode = "0600"`` -> ``0o600``) and :class:`Doc`.

A section may define ``check(self) -> Iterable[tuple[str, str]]``: rules that span keys, as ``(key, what)``
pairs; they run on the section as read (an invalid key as its default), and a rule's problem about a key
already reported is dropped. :class:`Table` is the same reader for tables
too irregular to declare (keys named by the data, arrays of tables): typed getters that record problems.

The body schemas of the wire (:mod:`openfang.protocol._schema`) share :class:`Len` and :class:`Range`.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from openfang.protocol._schema import Len, Range
from openfang.protocol.errors import ConfigError, Problem

__all__ = [
    "Above",
    "ConfigError",
    "Doc",
    "KeyDoc",
    "Len",
    "Match",
    "Parse",
    "Place",
    "Problem",
    "Range",
    "Table",
    "check_values",
    "describe",
    "load",
    "read",
]

T = TypeVar("T")
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


@dataclass(frozen=True, slots=True)
class _Key:
    name: str
    reader: Reader
    describe: str
    required: bool
    doc: str


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


def _section(cls: type) -> tuple[Reader, str]:
    def reader(value: Any, place: Place, key: str, problems: list[Problem]) -> Any:
        before = len(problems)
        built = read(cls, value, place.sub(key), problems)
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


def compile_key(tp: Any) -> tuple[Reader, str]:
    """The reader and description of one annotation (see the module docstring for what is supported)."""
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
        return _sequence(compile_key(args[0]), length, tuple)
    if origin is frozenset:
        return _sequence(compile_key(args[0]), length, frozenset)
    if origin in (dict, Mapping):
        if args and args[0] is not str:
            raise TypeError(f"table keys are strings, not {args[0]!r}")
        return _mapping(compile_key(args[1]) if args else (_any, "any value"))
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) != 1 or type(None) not in args:
            raise TypeError(f"config unions are T | None, not {tp!r}")
        return _optional(compile_key(options[0]))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _section(tp)
    raise TypeError(f"unsupported annotation in a config section: {tp!r}")


_compiled: dict[type, tuple[_Key, ...]] = {}


def _must_be_given(name: str, why: str) -> Reader:
    def reader(value: Any, place: Place, key: str, problems: list[Problem]) -> Any:
        raise TypeError(f"field {name!r} is not a config key ({why}): pass it to read() as given")

    return reader


def _keys(cls: type) -> tuple[_Key, ...]:
    keys = _compiled.get(cls)
    if keys is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        out = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            try:
                reader, describe = compile_key(hints[f.name])
            except TypeError as exc:
                # A field no TOML value can fill (a Path, a parsed object): the caller must give it.
                reader, describe = _must_be_given(f.name, str(exc)), "given by the program"
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            doc = next((m.text for m in typing.get_args(hints[f.name])[1:] if isinstance(m, Doc)), "")
            out.append(_Key(f.name, reader, describe, required, doc))
        keys = _compiled[cls] = tuple(out)
    return keys


# -- reading ----------


def read(
    cls: type[T],
    raw: Any,
    place: Place,
    problems: list[Problem],
    *,
    ignore: Iterable[str] = (),
    **given: Any,
) -> T | None:
    """Read section ``cls`` from ``raw`` (a TOML table, or None for an absent one), appending every problem.

    Returns the section built from the valid keys (defaults for the rest), or None when a required key is
    missing or invalid (its cross-key ``check`` then does not run). ``ignore``: keys of ``raw`` that
    someone else reads (not unknown). ``given``: fields set by the caller rather than read (a ``source``, a
    resolved path): they are not keys.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append(Problem(place.where, f"must be a table, got {type(raw).__name__}"))
        raw = {}
    keys = [k for k in _keys(cls) if k.name not in given]
    known = {k.name for k in keys}
    skip = set(ignore)
    for key, value in raw.items():
        if key not in known and key not in skip:
            problems.append(unknown_key(place, key, value, known | skip))
    kwargs: dict[str, Any] = dict(given)
    before = len(problems)
    complete = True
    for k in keys:
        value = raw.get(k.name, MISSING)
        if value is MISSING:
            if k.required:
                problems.append(Problem(place.key(k.name), f"required: {k.describe}"))
                complete = False
            continue
        typed = k.reader(value, place, k.name, problems)
        if typed is MISSING:
            complete = complete and not k.required
            continue
        kwargs[k.name] = typed
    if not complete:
        return None
    section = cls(**kwargs)
    check: Callable[[], Iterable[tuple[str, str]]] | None = getattr(section, "check", None)
    if check is not None:
        # An invalid key reads as its default here; a rule about a key already reported is not repeated.
        reported = {p.where for p in problems[before:]}
        problems.extend(
            Problem(place.key(key), what) for key, what in check() if place.key(key) not in reported
        )
    return section


def check_values(obj: Any, place: Place, problems: list[Problem], names: Iterable[str] | None = None) -> None:
    """Check the values of section instance ``obj`` (built in code, not read) against its annotations.

    The same bounds :func:`read` applies, for objects made without it (a spec built by a program or sent
    as data); ``names`` limits it to those keys.
    """
    wanted = None if names is None else set(names)
    for k in _keys(type(obj)):
        if wanted is None or k.name in wanted:
            k.reader(getattr(obj, k.name), place, k.name, problems)


def load(cls: type[T], raw: Any, place: Place, **given: Any) -> T:
    """:func:`read`, raising ConfigError with every problem if there is any."""
    problems: list[Problem] = []
    section = read(cls, raw, place, problems, **given)
    if problems or section is None:
        raise ConfigError(problems or [Problem(place.where, "invalid")])
    return section


@dataclass(frozen=True, slots=True)
class KeyDoc:
    """One key of a section, for docs: its name, what it takes, its default (``None``: required)."""

    key: str
    takes: str
    default: Any
    doc: str


def describe(cls: type) -> list[KeyDoc]:
    """Every key of section ``cls`` with what it takes and its one default (the docs table, generated)."""
    defaults = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return [KeyDoc(k.name, k.describe, defaults.get(k.name), k.doc) for k in _keys(cls)]


# -- an imperative reader for irregular tables ----------


class Table:
    """One TOML table with its place; every getter records its problem and returns the default, so a whole
    config is checked in one pass. For tables :func:`read` cannot declare (keys named by the data, arrays of
    tables, keys whose bounds depend on another key). Call :meth:`unknown` after reading every key.
    """

    def __init__(self, raw: Any, place: Place, problems: list[Problem]) -> None:
        self.place = place
        self.problems = problems
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            problems.append(Problem(place.where, f"must be a table, got {type(raw).__name__}"))
            raw = {}
        self.raw: Mapping[str, Any] = raw
        self._seen: set[str] = set()

    @property
    def where(self) -> str:
        return self.place.where

    def get(self, key: str) -> Any:
        """The raw value of ``key`` (MISSING if absent), marked as read."""
        self._seen.add(key)
        return self.raw.get(key, MISSING)

    def problem(self, key: str, what: str) -> None:
        self.problems.append(Problem(self.place.key(key), what))

    def sub(self, key: str) -> Table:
        self._seen.add(key)
        return Table(self.raw.get(key), self.place.sub(key), self.problems)

    def section(self, cls: type[T], key: str, **given: Any) -> T | None:
        """Sub-table ``key`` read as the declared section ``cls``."""
        self._seen.add(key)
        return read(cls, self.raw.get(key), self.place.sub(key), self.problems, **given)

    def typed(self, key: str, tp: Any, default: Any) -> Any:
        """``key`` checked against annotation ``tp`` (as in a section); ``default`` when absent or invalid."""
        value = self.get(key)
        if value is MISSING:
            return default
        typed = compile_key(tp)[0](value, self.place, key, self.problems)
        return default if typed is MISSING else typed

    def boolean(self, key: str, default: bool) -> bool:
        return bool(self.typed(key, bool, default))

    def integer(self, key: str, default: int, *, lo: int = 0, hi: int | None = None) -> int:
        return int(self.typed(key, typing.Annotated[int, Range(lo, hi)], default))

    def number(self, key: str, default: float, *, lo: float = 0.0, hi: float = 1e12) -> float:
        return float(self.typed(key, typing.Annotated[float, Range(lo, hi)], default))

    def text(self, key: str, default: str | None) -> str | None:
        value: str | None = self.typed(key, str, default)
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        return str(self.typed(key, typing.Literal[choices], default))

    def strset(
        self, key: str, default: frozenset[str] | None, *, allowed: frozenset[str] | None = None
    ) -> frozenset[str] | None:
        value: frozenset[str] | None = self.typed(key, frozenset[str], default)
        if value is None or allowed is None or value is default:
            return value
        bad = sorted(value - allowed)
        if bad:
            self.problem(key, f"unknown: {', '.join(bad)} (known: {', '.join(sorted(allowed))})")
            return default
        return value

    def unknown(self, also: Iterable[str] = ()) -> None:
        """Report keys nobody read (typos): call after reading every known key."""
        known = self._seen | set(also)
        for key in sorted(set(self.raw) - known, key=str):
            self.problems.append(unknown_key(self.place, key, self.raw[key], known))
