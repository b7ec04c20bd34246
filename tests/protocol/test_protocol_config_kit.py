"""The config kit: sections declared once as dataclasses, read by one reader reporting every problem."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest

from openfang.protocol.config_kit import (
    Above,
    Doc,
    Len,
    Match,
    Parse,
    Place,
    Range,
    Table,
    describe,
    load,
    read,
)
from openfang.protocol.errors import ConfigError, Problem


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


def _octal_mode(value: Any) -> int:
    if value not in ("0600", "0660"):
        raise ValueError(f'must be "0600" or "0660", got {value!r}')
    return int(value, 8)


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    rate: Annotated[float, Above(0)] = 1.0
    burst: Annotated[int, Range(1, 100)] = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class Section:
    name: str
    level: Literal["debug", "info"] = "info"
    colour: Colour = Colour.RED
    queue_limit: Annotated[int, Range(1), Doc("requests in flight")] = 1000
    ratio: Annotated[float, Range(0.0, 1.0)] = 0.5
    enabled: bool = True
    hosts: tuple[str, ...] = ()
    kinds: frozenset[str] = frozenset({"a"})
    label: Annotated[str, Match(r"[a-z]{1,8}", "1-8 lowercase letters")] | None = None
    short: Annotated[str, Len(3)] = "abc"
    mode: Annotated[int, Parse(_octal_mode, '"0600" or "0660"')] = 0o600
    limits: Limits = field(default_factory=Limits)
    extra: dict[str, int] = field(default_factory=dict)
    args: dict[str, Any] = field(default_factory=dict)


def _read(raw: Any) -> tuple[Section | None, list[str]]:
    problems: list[Problem] = []
    got = read(Section, raw, Place.table("c.toml", "demo"), problems)
    return got, [str(p) for p in problems]


def test_config_kit_defaults_come_from_the_dataclass() -> None:
    """An absent key takes the dataclass default: the one place a default is written."""
    got, problems = _read({"name": "x"})
    assert problems == []
    assert got == Section(name="x")
    assert got is not None and got.limits == Limits() and got.mode == 0o600


def test_config_kit_reads_every_type() -> None:
    """Each supported annotation turns its TOML value into the typed value."""
    got, problems = _read(
        {
            "name": "x",
            "level": "debug",
            "colour": "blue",
            "queue_limit": 5,
            "ratio": 1,
            "enabled": False,
            "hosts": ["a", "b"],
            "kinds": ["b", "c"],
            "label": "abc",
            "short": "ab",
            "mode": "0660",
            "limits": {"rate": 2, "burst": 3},
            "extra": {"k": 1},
            "args": {"anything": [1, {"x": None}]},
        }
    )
    assert problems == []
    assert got is not None
    assert (got.level, got.colour, got.queue_limit, got.ratio, got.enabled) == (
        "debug",
        Colour.BLUE,
        5,
        1.0,
        False,
    )
    assert isinstance(got.ratio, float) and got.colour is Colour.BLUE
    assert got.hosts == ("a", "b") and got.kinds == frozenset({"b", "c"})
    assert (got.label, got.short, got.mode) == ("abc", "ab", 0o660)
    assert got.limits == Limits(rate=2.0, burst=3) and got.extra == {"k": 1}


def test_config_kit_reports_every_problem_in_one_pass_with_its_place() -> None:
    """Every bad key is reported at once, each naming the file, the table and the key."""
    got, problems = _read(
        {
            "level": "loud",
            "colour": "green",
            "queue_limit": 0,
            "ratio": 1.5,
            "enabled": "yes",
            "hosts": ["a", 3],
            "label": "ABC",
            "short": "abcd",
            "mode": "0777",
            "limits": {"rate": 0, "burst": 101},
            "extra": {"k": "one"},
        }
    )
    assert got is None  # the required name is missing
    assert problems == [
        "c.toml: [demo] key 'name': required: a non-empty string",
        "c.toml: [demo] key 'level': must be one of debug, info, got 'loud'",
        "c.toml: [demo] key 'colour': must be one of red, blue, got 'green'",
        "c.toml: [demo] key 'queue_limit': must be an integer >= 1, got 0",
        "c.toml: [demo] key 'ratio': must be a number from 0 to 1, got 1.5",
        "c.toml: [demo] key 'enabled': must be true or false, got 'yes'",
        "c.toml: [demo] key 'hosts[1]': must be a non-empty string, got 3",
        "c.toml: [demo] key 'label': must be 1-8 lowercase letters, got 'ABC'",
        "c.toml: [demo] key 'short': must be a string of at most 3 characters, got 'abcd'",
        "c.toml: [demo] key 'mode': must be \"0600\" or \"0660\", got '0777'",
        "c.toml: [demo.limits] key 'rate': must be a number > 0, got 0",
        "c.toml: [demo.limits] key 'burst': must be an integer from 1 to 100, got 101",
        "c.toml: [demo.extra] key 'k': must be an integer, got 'one'",
    ]


def test_config_kit_refuses_unknown_keys_and_tables_with_a_hint() -> None:
    """An unknown key or sub-table is a problem, with the closest known key when one is close."""
    _, problems = _read({"name": "x", "queue_limt": 5, "colour_table": {"a": 1}, "zzz": 1})
    assert problems[0].startswith(
        "c.toml: [demo] key 'queue_limt': unknown key (did you mean 'queue_limit'? known:"
    )
    assert problems[1].startswith(
        "c.toml: [demo.colour_table]: unknown table (did you mean 'colour'? known: args,"
    )
    assert problems[2].startswith("c.toml: [demo] key 'zzz': unknown key (known: args,")
    _, nested = _read({"name": "x", "limits": {"brust": 1}})
    assert nested[0].startswith("c.toml: [demo.limits] key 'brust': unknown key (did you mean 'burst'?")


def test_config_kit_rejects_bools_as_numbers_and_non_tables() -> None:
    """true is not an integer, nan is not a number, and a section that is not a table says so."""
    _, problems = _read({"name": "x", "queue_limit": True, "ratio": float("nan"), "limits": 3})
    assert problems == [
        "c.toml: [demo] key 'queue_limit': must be an integer >= 1, got True",
        "c.toml: [demo] key 'ratio': must be a number from 0 to 1, got nan",
        "c.toml: [demo.limits]: must be a table, got int",
    ]


def test_config_kit_runs_cross_key_checks_without_repeating_a_reported_key() -> None:
    """A section's check() reports rules spanning keys, but not again on a key already reported."""

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Pair:
        low: int = 1
        high: int = 2

        def check(self) -> list[tuple[str, str]]:
            return [("high", f"must be >= low ({self.low})")] if self.high < self.low else []

    problems: list[Problem] = []
    read(Pair, {"low": 5, "high": 3}, Place.table("p.toml", "pair"), problems)
    assert [str(p) for p in problems] == ["p.toml: [pair] key 'high': must be >= low (5)"]
    problems.clear()
    read(Pair, {"low": 5, "high": "x"}, Place.table("p.toml", "pair"), problems)
    assert [str(p) for p in problems] == ["p.toml: [pair] key 'high': must be an integer, got 'x'"]


def test_config_kit_dotted_places_and_given_fields() -> None:
    """Args that are no file are named by a dotted path; fields the caller gives are not keys."""
    with pytest.raises(ConfigError) as err:
        load(Section, {"queue_limit": -1, "name": "n"}, Place.at("memory.args"), label="given")
    assert str(err.value) == "memory.args.queue_limit: must be an integer >= 1, got -1"
    got = load(Section, {}, Place.at("x"), name="n")
    assert got.name == "n"
    with pytest.raises(ConfigError, match=r"x.name: unknown key"):
        load(Section, {"name": "twice"}, Place.at("x"), name="n")


def test_config_kit_file_place_names_tables() -> None:
    """At the top of a file, keys are tables: an unknown one reads ``file: [name]: unknown table``."""

    @dataclass(frozen=True, slots=True, kw_only=True)
    class File:
        limits: Limits = field(default_factory=Limits)

    problems: list[Problem] = []
    read(File, {"limts": {}, "limits": {"burst": 0}}, Place.file("c.toml"), problems)
    assert [str(p) for p in problems] == [
        "c.toml: [limts]: unknown table (did you mean 'limits'? known: limits)",
        "c.toml: [limits] key 'burst': must be an integer from 1 to 100, got 0",
    ]


def test_config_kit_describe_lists_keys_with_their_one_default() -> None:
    """describe() gives each key, what it takes and its default, for generated docs."""
    rows = {d.key: d for d in describe(Section)}
    assert rows["queue_limit"].default == 1000 and rows["queue_limit"].takes == "an integer >= 1"
    assert rows["queue_limit"].doc == "requests in flight"
    assert rows["name"].default is None and rows["limits"].default == Limits()


def test_config_kit_table_reader_collects_problems() -> None:
    """Table reads irregular tables with the same checks, then reports keys nobody read."""
    problems: list[Problem] = []
    t = Table(
        {"n": 0, "flag": 1, "kinds": ["x", "q"], "sub": {"rate": -1}, "typo": 1},
        Place.table("s", "sec"),
        problems,
    )
    assert t.integer("n", 7, lo=1, hi=9) == 7
    assert t.boolean("flag", True) is True
    assert t.strset("kinds", None, allowed=frozenset({"x", "y"})) is None
    assert t.section(Limits, "sub") is not None
    t.unknown()
    assert [str(p) for p in problems] == [
        "s: [sec] key 'n': must be an integer from 1 to 9, got 0",
        "s: [sec] key 'flag': must be true or false, got 1",
        "s: [sec] key 'kinds': unknown: q (known: x, y)",
        "s: [sec.sub] key 'rate': must be a number > 0, got -1",
        "s: [sec] key 'typo': unknown key (known: flag, kinds, n, sub)",
    ]


def test_config_kit_fields_no_toml_value_fills_must_be_given() -> None:
    """A field of a type TOML cannot carry (a Path) is given by the caller; reading it as a key is a bug."""

    @dataclass(frozen=True, slots=True, kw_only=True)
    class WithPath:
        name: str = "n"
        base: Path | None = None

    problems: list[Problem] = []
    got = read(WithPath, {"name": "x"}, Place.table("w.toml", "w"), problems, base=Path("/tmp"))
    assert problems == [] and got == WithPath(name="x", base=Path("/tmp"))
    with pytest.raises(TypeError, match="'base' is not a config key"):
        read(WithPath, {"base": "/x"}, Place.table("w.toml", "w"), problems)


def test_config_kit_top_of_file_keys_are_named_as_keys() -> None:
    """A bad key at a file's top (outside any table) reads ``file: key 'x'``."""
    problems: list[Problem] = []
    t = Table({"publisher": 3}, Place.file("a.toml"), problems)
    assert t.text("publisher", None) is None
    assert [str(p) for p in problems] == ["a.toml: key 'publisher': must be a non-empty string, got 3"]
