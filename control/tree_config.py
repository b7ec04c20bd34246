"""The ``[supervisor]`` table of ``cluster.toml`` -> a validated SupervisorSpec, all problems at once.

Shape (see docs/supervisor.md)::

    [supervisor]                          # the root's flags
    strategy = "one_for_one"; intensity = 3; period = 5; auto_shutdown = "never"

    [[supervisor.children]]               # a worker
    id = "memory"; start = "pkg.mod:func"; restart = "permanent"; shutdown = 5000; args = { ... }

    [[supervisor.children]]               # a nested supervisor
    id = "workers"; type = "supervisor"; strategy = "one_for_one"; intensity = 10; period = 10
    start_order = "parallel"              # fork every child at once (default "ordered", OTP's)
    inline = true                         # run in the parent's process, not a forked one (default false)
    [supervisor.children.pool]            # expands to workers-0 .. workers-(N-1)
    count = "auto"; pin = true; start = "openfang.workers.worker:main"; heartbeat_ms = 2000
    min_running = 1                       # elastic: members >= min_running start stopped (autostart =
                                          # false); the gateway starts them under load (ElasticPool)
    [[supervisor.children.children]]      # nested children, any depth
    id = "..."; start = "..."

Unknown keys are errors. ``start`` is checked for its syntax only: importability is checked when the
child starts (the module may only exist in the child's environment).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Annotated, Any

from openfang.protocol.config_kit import Above, Parse, Place, Range, load, read, unknown_key
from openfang.protocol.errors import ConfigError, Problem
from openfang.supervisor.spec import (
    ChildSpec,
    ChildType,
    SupervisorFlags,
    SupervisorSpec,
    check_spec,
)

FLAG_KEYS = {"strategy", "intensity", "period", "auto_shutdown", "start_order"}
CHILD_KEYS = {"id", "type", "start", "args", "restart", "shutdown", "significant", "cpu", "heartbeat_ms",
              "start_timeout_ms", "preimport", "inline", "autostart"}  # fmt: skip
SUPERVISOR_CHILD_KEYS = CHILD_KEYS | FLAG_KEYS | {"children", "pool"}
# The pool's own keys (PoolKeys); the others are every member's child keys.
OWN_POOL_KEYS = {"count", "pin", "prefix", "min_running", "grow_in_flight", "grow_after_ms", "shrink_after_s"}
POOL_KEYS = OWN_POOL_KEYS | {
    "start",
    "args",
    "restart",
    "shutdown",
    "heartbeat_ms",
    "start_timeout_ms",
}


def parse_supervisor(table: Mapping[str, Any], *, source: str, where: str = "supervisor") -> SupervisorSpec:
    """Parse the root ``[supervisor]`` table. Raises ConfigError listing every problem with its place."""
    problems: list[Problem] = []
    if not isinstance(table, Mapping):
        raise ConfigError([Problem(f"{source}: [{where}]", f"must be a table, got {type(table).__name__}")])
    _unknown(table, FLAG_KEYS | {"children"}, source, where, problems)
    spec = _parse_sup(table, source, where, problems)
    # Semantic rules (syntax of start, duplicate ids, significant, simple_one_for_one...) shared with the
    # runtime's checks; a key already reported above is not reported twice.
    reported = {p.where for p in problems}
    problems.extend(
        p
        for p in (_bracket(p, source) for p in check_spec(spec, f"{source}: [{where}"))
        if p.where not in reported
    )
    if problems:
        raise ConfigError(problems)
    return spec


def _parse_sup(table: Mapping[str, Any], source: str, where: str, problems: list[Problem]) -> SupervisorSpec:
    place = Place.table(source, where)
    # The flags are SupervisorFlags' own keys, bounds and defaults; the other keys are read below.
    flags = read(SupervisorFlags, table, place, problems, ignore=set(table) - FLAG_KEYS) or SupervisorFlags()
    children: list[ChildSpec] = []
    raw_children = table.get("children", [])
    if not isinstance(raw_children, list):
        problems.append(_p(source, where, "children", "must be an array of tables ([[...children]])"))
        raw_children = []
    for i, raw in enumerate(raw_children):
        cwhere = f"{where}.children.{i}"
        if not isinstance(raw, Mapping):
            problems.append(Problem(f"{source}: [{cwhere}]", f"must be a table, got {type(raw).__name__}"))
            continue
        child = _parse_child(raw, source, cwhere, problems)
        if child is not None:
            children.append(child)
    pool = table.get("pool")
    if pool is not None:
        owner = str(table.get("id", "pool"))
        children.extend(_parse_pool(pool, owner, source, f"{where}.pool", problems))
    return SupervisorSpec(flags=flags, children=tuple(children))


def _parse_child(
    raw: Mapping[str, Any], source: str, where: str, problems: list[Problem]
) -> ChildSpec | None:
    is_sup = raw.get("type") == ChildType.SUPERVISOR
    known = SUPERVISOR_CHILD_KEYS if is_sup else CHILD_KEYS
    _unknown(raw, known, source, where, problems)
    if not is_sup and not raw.get("start"):
        problems.append(_p(source, where, "start", "required: 'package.module:function'"))
    nested = _parse_sup(raw, source, where, problems) if is_sup else None
    # The child's keys are ChildSpec's fields: their types, bounds and defaults are written there once.
    child = read(
        ChildSpec, raw, Place.table(source, where), problems, ignore=set(raw) - CHILD_KEYS, supervisor=nested
    )
    if child is not None and child.cpu is not None and child.cpu not in (allowed := os.sched_getaffinity(0)):
        problems.append(
            _p(
                source,
                where,
                "cpu",
                f"CPU {child.cpu} is not available to this process (allowed: {sorted(allowed)})",
            )
        )
    return child


def _count(value: Any) -> int:
    allowed = len(os.sched_getaffinity(0))
    if value == "auto":
        return allowed
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f'must be "auto" or an integer >= 1, got {value!r}')


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolKeys:
    """[supervisor.children.pool]'s own keys; the rest are the child keys of every member (ChildSpec's)."""

    count: Annotated[int | str, Parse(_count, '"auto" (one per allowed CPU) or an integer >= 1')] = "auto"
    pin: bool = True  # member i pinned to the i-th allowed CPU
    prefix: str | None = None  # member ids: <prefix>-<i>, default the owner's id
    # Elastic pool (ElasticPool): at least this many members run; the others (up to count) are kept specs
    # (autostart = false) that the gateway starts under load and stops when quiet. Default: count (all run).
    min_running: Annotated[int, Range(1)] | None = None
    grow_in_flight: Annotated[int, Range(1)] = (
        16  # a running member with this many requests in flight is loaded
    )
    grow_after_ms: Annotated[int, Range(1)] = 250  # every running member loaded this long: start one more
    shrink_after_s: Annotated[float, Above(0)] = 30.0  # quiet this long: drain and stop an extra member


@dataclass(frozen=True, slots=True, kw_only=True)
class ElasticPool:
    """An elastic pool as the gateway's policy sees it (:mod:`openfang.control.elastic`): the supervisor at
    ``path`` owns ``members`` (in order); the first ``min_running`` always run, the rest run under load.
    Plain data: the root sends it down to the gateway (``gateway.pools``) at start and after a reload."""

    path: str
    members: tuple[str, ...]
    min_running: int
    grow_in_flight: int = 16
    grow_after_ms: int = 250
    shrink_after_s: float = 30.0

    def to_wire(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "members": list(self.members),
            "min_running": self.min_running,
            "grow_in_flight": self.grow_in_flight,
            "grow_after_ms": self.grow_after_ms,
            "shrink_after_s": self.shrink_after_s,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> ElasticPool:
        return cls(
            path=str(data["path"]),
            members=tuple(str(m) for m in data["members"]),
            min_running=int(data["min_running"]),
            grow_in_flight=int(data["grow_in_flight"]),
            grow_after_ms=int(data["grow_after_ms"]),
            shrink_after_s=float(data["shrink_after_s"]),
        )


def _parse_pool(pool: Any, owner: str, source: str, where: str, problems: list[Problem]) -> list[ChildSpec]:
    if not isinstance(pool, Mapping):
        problems.append(Problem(f"{source}: [{where}]", f"must be a table, got {type(pool).__name__}"))
        return []
    _unknown(pool, POOL_KEYS, source, where, problems)
    place = Place.table(source, where)
    own = read(PoolKeys, pool, place, problems, ignore=set(pool) - OWN_POOL_KEYS) or PoolKeys()
    count = _count(own.count)
    running = count if own.min_running is None else own.min_running
    if running > count:
        problems.append(
            _p(source, where, "min_running", f"must be <= count ({count}: the pool's maximum), got {running}")
        )
    if not pool.get("start"):
        problems.append(_p(source, where, "start", "required: 'package.module:function'"))
    member_keys = {k: v for k, v in pool.items() if k in POOL_KEYS - OWN_POOL_KEYS}
    prefix = own.prefix or owner
    template = read(ChildSpec, member_keys, place, problems, id=prefix)
    if template is None:
        return []
    allowed = sorted(os.sched_getaffinity(0))
    return [
        replace(
            template,
            id=f"{prefix}-{i}",
            cpu=allowed[i % len(allowed)] if own.pin else None,
            autostart=i < running,  # members past min_running: kept specs the gateway starts under load
        )
        for i in range(count)
    ]


def elastic_pools(table: Mapping[str, Any], path: str = "root") -> tuple[ElasticPool, ...]:
    """The elastic pools (``min_running`` < ``count``) of a ``[supervisor]`` table that
    :func:`parse_supervisor` accepted, each with the path of the supervisor that owns it."""
    out: list[ElasticPool] = []
    for raw in table.get("children") or []:
        if not isinstance(raw, Mapping) or raw.get("type") != ChildType.SUPERVISOR:
            continue
        owner = str(raw.get("id", "pool"))
        here = f"{path}/{owner}"
        out += elastic_pools(raw, here)
        pool = raw.get("pool")
        if not isinstance(pool, Mapping):
            continue
        own = load(PoolKeys, {k: v for k, v in pool.items() if k in OWN_POOL_KEYS}, Place.named(here))
        count = _count(own.count)
        if own.min_running is None or own.min_running >= count:
            continue
        prefix = own.prefix or owner
        out.append(
            ElasticPool(
                path=here,
                members=tuple(f"{prefix}-{i}" for i in range(count)),
                min_running=own.min_running,
                grow_in_flight=own.grow_in_flight,
                grow_after_ms=own.grow_after_ms,
                shrink_after_s=own.shrink_after_s,
            )
        )
    return tuple(out)


# -- typed readers: each appends a problem and returns a default instead of raising ----------


def _p(source: str, where: str, key: str, what: str) -> Problem:
    return Problem(f"{source}: [{where}] key {key!r}", what)


def _bracket(problem: Problem, source: str) -> Problem:
    # check_spec builds "<prefix>.children.N key 'x'": close the TOML table bracket before " key".
    where = problem.where
    head, sep, tail = where.partition(" key ")
    return Problem(f"{head}]{sep}{tail}" if "]" not in head else where, problem.what)


def _unknown(
    table: Mapping[str, Any], known: set[str], source: str, where: str, problems: list[Problem]
) -> None:
    place = Place.table(source, where)
    for key in sorted(set(map(str, table)) - known):
        problems.append(unknown_key(place, key, None, known))
