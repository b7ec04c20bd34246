"""The ``[supervisor]`` table of ``cluster.toml`` -> a validated SupervisorSpec, all problems at once.

Shape (see docs/supervisor.md)::

    [supervisor]                          # the root's flags
    strategy = "one_for_one"; intensity = 3; period = 5; auto_shutdown = "never"

    [[supervisor.children]]               # a worker
    id = "memory"; start = "pkg.mod:func"; restart = "permanent"; shutdown = 5000; args = { ... }

    [[supervisor.children]]               # a nested supervisor
    id = "workers"; type = "supervisor"; strategy = "one_for_one"; intensity = 10; period = 10
    start_order = "parallel"              # fork every child at once (default "ordered", OTP's)
    [supervisor.children.pool]            # expands to workers-0 .. workers-(N-1)
    count = "auto"; pin = true; start = "openfang.workers.worker:main"; heartbeat_ms = 2000
    [[supervisor.children.children]]      # nested children, any depth
    id = "..."; start = "..."

Unknown keys are errors. ``start`` is checked for its syntax only: importability is checked when the
child starts (the module may only exist in the child's environment).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from openfang.protocol.errors import ConfigError, Problem
from openfang.supervisor.spec import (
    AutoShutdown,
    ChildSpec,
    ChildType,
    Restart,
    StartOrder,
    Strategy,
    SupervisorFlags,
    SupervisorSpec,
    check_spec,
)

FLAG_KEYS = {"strategy", "intensity", "period", "auto_shutdown", "start_order"}
CHILD_KEYS = {"id", "type", "start", "args", "restart", "shutdown", "significant", "cpu", "heartbeat_ms",
              "start_timeout_ms"}  # fmt: skip
SUPERVISOR_CHILD_KEYS = CHILD_KEYS | FLAG_KEYS | {"children", "pool"}
POOL_KEYS = {
    "count",
    "pin",
    "prefix",
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
    flags = SupervisorFlags(
        strategy=_choice(table, "strategy", Strategy, Strategy.ONE_FOR_ONE, source, where, problems),
        intensity=_int(table, "intensity", 1, 0, source, where, problems),
        period=_number(table, "period", 5, source, where, problems),
        auto_shutdown=_choice(
            table, "auto_shutdown", AutoShutdown, AutoShutdown.NEVER, source, where, problems
        ),
        start_order=_choice(table, "start_order", StartOrder, StartOrder.ORDERED, source, where, problems),
    )
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
    ctype = _choice(raw, "type", ChildType, ChildType.WORKER, source, where, problems)
    is_sup = ctype == ChildType.SUPERVISOR
    _unknown(raw, SUPERVISOR_CHILD_KEYS if is_sup else CHILD_KEYS, source, where, problems)
    child_id = raw.get("id")
    if not isinstance(child_id, str) or not child_id:
        problems.append(_p(source, where, "id", f"required, a non-empty string, got {child_id!r}"))
        child_id = f"<{where}>"
    start = raw.get("start", "")
    if not is_sup and not start:
        problems.append(_p(source, where, "start", "required: 'package.module:function'"))
    elif not isinstance(start, str):
        problems.append(_p(source, where, "start", f"must be a string, got {start!r}"))
        start = ""
    nested = _parse_sup(raw, source, where, problems) if is_sup else None
    cpu = _opt_int(raw, "cpu", 0, source, where, problems)
    allowed = os.sched_getaffinity(0)
    if cpu is not None and cpu not in allowed:
        problems.append(
            _p(
                source,
                where,
                "cpu",
                f"CPU {cpu} is not available to this process (allowed: {sorted(allowed)})",
            )
        )
    return ChildSpec(
        id=child_id,
        start=start,
        args=_args(raw, source, where, problems),
        restart=_choice(raw, "restart", Restart, Restart.PERMANENT, source, where, problems),
        shutdown=_shutdown(raw, source, where, problems),
        type=ctype,
        significant=_bool(raw, "significant", False, source, where, problems),
        cpu=cpu,
        heartbeat_ms=_opt_int(raw, "heartbeat_ms", 1, source, where, problems),
        start_timeout_ms=_int(raw, "start_timeout_ms", 10000, 1, source, where, problems),
        supervisor=nested,
    )


def _parse_pool(pool: Any, owner: str, source: str, where: str, problems: list[Problem]) -> list[ChildSpec]:
    if not isinstance(pool, Mapping):
        problems.append(Problem(f"{source}: [{where}]", f"must be a table, got {type(pool).__name__}"))
        return []
    _unknown(pool, POOL_KEYS, source, where, problems)
    allowed = sorted(os.sched_getaffinity(0))
    count_raw = pool.get("count", "auto")
    if count_raw == "auto":
        count = len(allowed)
    elif isinstance(count_raw, int) and not isinstance(count_raw, bool) and count_raw >= 1:
        count = count_raw
    else:
        problems.append(_p(source, where, "count", f'must be "auto" or an integer >= 1, got {count_raw!r}'))
        count = 0
    pin = _bool(pool, "pin", True, source, where, problems)
    prefix = pool.get("prefix", owner)
    if not isinstance(prefix, str) or not prefix:
        problems.append(_p(source, where, "prefix", f"must be a non-empty string, got {prefix!r}"))
        prefix = owner
    start = pool.get("start")
    if not isinstance(start, str) or not start:
        problems.append(_p(source, where, "start", "required: 'package.module:function'"))
        start = ""
    args = _args(pool, source, where, problems)
    restart = _choice(pool, "restart", Restart, Restart.PERMANENT, source, where, problems)
    shutdown = _shutdown(pool, source, where, problems)
    heartbeat = _opt_int(pool, "heartbeat_ms", 1, source, where, problems)
    start_timeout = _int(pool, "start_timeout_ms", 10000, 1, source, where, problems)
    return [
        ChildSpec(
            id=f"{prefix}-{i}",
            start=start,
            args=args,
            restart=restart,
            shutdown=shutdown,
            cpu=allowed[i % len(allowed)] if pin else None,
            heartbeat_ms=heartbeat,
            start_timeout_ms=start_timeout,
        )
        for i in range(count)
    ]


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
    for key in sorted(set(map(str, table)) - known):
        problems.append(_p(source, where, key, f"unknown key (known: {', '.join(sorted(known))})"))


def _choice(table: Mapping[str, Any], key: str, kind: Any, default: Any, source: str, where: str,
            problems: list[Problem]) -> Any:  # fmt: skip
    value = table.get(key, default)
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        problems.append(_p(source, where, key, f"must be one of {choices}, got {value!r}"))
        return default


def _int(table: Mapping[str, Any], key: str, default: int, low: int, source: str, where: str,
         problems: list[Problem]) -> int:  # fmt: skip
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        problems.append(_p(source, where, key, f"must be an integer >= {low}, got {value!r}"))
        return default
    return value


def _opt_int(table: Mapping[str, Any], key: str, low: int, source: str, where: str,
             problems: list[Problem]) -> int | None:  # fmt: skip
    if key not in table:
        return None
    return _int(table, key, None, low, source, where, problems)  # type: ignore[arg-type]


def _number(table: Mapping[str, Any], key: str, default: float, source: str, where: str,
            problems: list[Problem]) -> float:  # fmt: skip
    value = table.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        problems.append(_p(source, where, key, f"must be a number > 0 (seconds), got {value!r}"))
        return default
    return value


def _bool(table: Mapping[str, Any], key: str, default: bool, source: str, where: str,
          problems: list[Problem]) -> bool:  # fmt: skip
    value = table.get(key, default)
    if not isinstance(value, bool):
        problems.append(_p(source, where, key, f"must be true or false, got {value!r}"))
        return default
    return value


def _shutdown(table: Mapping[str, Any], source: str, where: str, problems: list[Problem]) -> Any:
    if "shutdown" not in table:
        return None  # the type's default
    value = table["shutdown"]
    if value in ("brutal_kill", "infinity") or (
        isinstance(value, int) and not isinstance(value, bool) and value >= 0
    ):
        return value
    problems.append(
        _p(
            source,
            where,
            "shutdown",
            f'must be "brutal_kill", "infinity" or milliseconds >= 0, got {value!r}',
        )
    )
    return None


def _args(table: Mapping[str, Any], source: str, where: str, problems: list[Problem]) -> dict[str, Any]:
    value = table.get("args", {})
    if not isinstance(value, Mapping):
        problems.append(_p(source, where, "args", f"must be a table, got {type(value).__name__}"))
        return {}
    return dict(value)
