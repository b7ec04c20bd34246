"""One config kit: every config section declared once, read by one reader that reports every problem.

A section is a frozen, slotted, kw_only dataclass. Each field is one key: its name is the key, its annotation
the type and bounds, its default *the* default (a field without one is required)::

    @dataclass(frozen=True, slots=True, kw_only=True)
    class LoggingConfig:
        level: Literal["debug", "info", "warning", "error"] = "info"
        format: Annotated[Literal["auto", "json", "console"], Doc("auto: console on a terminal")] = "auto"
        max_files: Annotated[int, Range(1, 100)] = 10

    config = read(LoggingConfig, raw.get("logging"), Place.table(source, "logging"), problems)

Places name where a table is: ``Place.table("c.toml", "logging")`` (``c.toml: [logging] key 'level'``),
``Place.file("c.toml")`` (the top of a file, whose keys are tables), ``Place.at("memory.args")`` (data that is
no file: ``memory.args.db_path``), ``Place.named("supervisor.children.0")`` (a spec built in code:
``supervisor.children.0 key 'cpu'``). Fields no TOML value can fill (a ``Path``, a parsed object) are given
by the caller (``read(..., source=..., base_dir=...)``); :func:`check_values` checks an object built in code
against the same annotations; :func:`describe` lists the keys with their one default, for docs.

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
already reported is dropped. :class:`Table` is the same reader for tables too irregular to declare (keys
named by the data, arrays of tables): typed getters that record problems.

The body schemas of the wire (:mod:`openfang.protocol._schema`) share :class:`Len` and :class:`Range`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from openfang.protocol._config_keys import (
    MISSING,
    Above,
    Doc,
    Match,
    Parse,
    Place,
    Reader,
    compile_key,
    unknown_key,
)
from openfang.protocol._schema import Len, Range
from openfang.protocol.errors import ConfigError, Problem

__all__ = [
    "MISSING",
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
    "compile_key",
    "describe",
    "load",
    "read",
    "unknown_key",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Key:
    """One config key of a section: its compiled reader, its description, required or not, its doc."""

    name: str
    reader: Reader
    describe: str
    required: bool
    doc: str


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
                reader, describe = compile_key(hints[f.name], read)
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
        typed = compile_key(tp, read)[0](value, self.place, key, self.problems)
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
