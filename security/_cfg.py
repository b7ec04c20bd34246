"""Typed readers for config tables that collect problems instead of stopping at the first one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from openfang.protocol.errors import Problem

MISSING: Any = object()


class Table:
    """One TOML table with its place (``file: [security.x]``); every reader records problems and returns
    the default, so a whole config is checked in one pass."""

    def __init__(self, raw: Any, where: str, problems: list[Problem]) -> None:
        self.where = where
        self.problems = problems
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            problems.append(Problem(where, f"must be a table, got {type(raw).__name__}"))
            raw = {}
        self.raw: Mapping[str, Any] = raw
        self._seen: set[str] = set()

    def _get(self, key: str) -> Any:
        self._seen.add(key)
        return self.raw.get(key, MISSING)

    def problem(self, key: str, what: str) -> None:
        self.problems.append(Problem(f"{self.where} key {key!r}", what))

    def sub(self, key: str) -> Table:
        self._seen.add(key)
        return Table(self.raw.get(key), f"{self.where.rstrip(']')}.{key}]", self.problems)

    def boolean(self, key: str, default: bool) -> bool:
        v = self._get(key)
        if v is MISSING:
            return default
        if not isinstance(v, bool):
            self.problem(key, f"must be true or false, got {v!r}")
            return default
        return v

    def integer(self, key: str, default: int, *, lo: int = 0, hi: int = 2**62) -> int:
        v = self._get(key)
        if v is MISSING:
            return default
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            self.problem(key, f"must be an integer from {lo} to {hi}, got {v!r}")
            return default
        return v

    def number(self, key: str, default: float, *, lo: float = 0.0, hi: float = 1e12) -> float:
        v = self._get(key)
        if v is MISSING:
            return default
        if not isinstance(v, int | float) or isinstance(v, bool) or not lo <= v <= hi:
            self.problem(key, f"must be a number from {lo:g} to {hi:g}, got {v!r}")
            return default
        return float(v)

    def text(self, key: str, default: str | None) -> str | None:
        v = self._get(key)
        if v is MISSING:
            return default
        if not isinstance(v, str) or not v:
            self.problem(key, f"must be a non-empty string, got {v!r}")
            return default
        return v

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        v = self._get(key)
        if v is MISSING:
            return default
        if v not in choices:
            self.problem(key, f"must be one of {', '.join(choices)}, got {v!r}")
            return default
        return str(v)

    def strset(
        self, key: str, default: frozenset[str] | None, *, allowed: frozenset[str] | None = None
    ) -> frozenset[str] | None:
        v = self._get(key)
        if v is MISSING:
            return default
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            self.problem(key, f"must be a list of non-empty strings, got {v!r}"[:200])
            return default
        if allowed is not None:
            bad = sorted(set(v) - allowed)
            if bad:
                self.problem(key, f"unknown: {', '.join(bad)} (known: {', '.join(sorted(allowed))})")
                return default
        return frozenset(v)

    def unknown(self) -> None:
        """Report keys nobody read (typos) — call after reading every known key."""
        for key in sorted(set(self.raw) - self._seen):
            self.problems.append(Problem(f"{self.where} key {key!r}", "unknown key"))
