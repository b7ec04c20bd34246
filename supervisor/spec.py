"""Child and supervisor specifications: plain, frozen data validated before anything starts.

Like OTP's child specs these are values, not objects with behaviour: a supervisor is started from a
:class:`SupervisorSpec`, and specs cross process boundaries (the fork into a nested supervisor, a reload
request) as plain dicts (:func:`spec_to_dict` / :func:`spec_from_dict`), because they travel as msgpack.
:func:`check_spec` is OTP's ``check_childspecs`` plus the flag checks: it returns every problem at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from openfang.protocol.config_kit import Above, Parse, Place, Range, check_values
from openfang.protocol.errors import ConfigError, Problem

NESTED_START = "openfang.supervisor.nested:run_nested"
DEFAULT_WORKER_SHUTDOWN_MS = 5000
_START_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
# A child's keys taken as they are from its table, and checked against ChildSpec's annotated bounds.
_VALUE_KEYS = (
    "shutdown",
    "significant",
    "cpu",
    "heartbeat_ms",
    "start_timeout_ms",
    "preimport",
    "inline",
    "autostart",
)

Shutdown = int | Literal["brutal_kill", "infinity"]
E = TypeVar("E", bound=StrEnum)


def _shutdown(value: Any) -> Shutdown | None:
    """A shutdown policy: "brutal_kill", "infinity" or milliseconds >= 0 (None: the type's default)."""
    if value is None or value in ("brutal_kill", "infinity"):
        return value  # type: ignore[no-any-return]  # one of the literals
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f'must be "brutal_kill", "infinity" or milliseconds >= 0, got {value!r}')


class Strategy(StrEnum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"
    SIMPLE_ONE_FOR_ONE = "simple_one_for_one"


class Restart(StrEnum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class AutoShutdown(StrEnum):
    NEVER = "never"
    ANY_SIGNIFICANT = "any_significant"
    ALL_SIGNIFICANT = "all_significant"


class StartOrder(StrEnum):
    """How a supervisor starts its children at start: OTP's one at a time, or all forked at once."""

    ORDERED = "ordered"
    PARALLEL = "parallel"


class ChildType(StrEnum):
    WORKER = "worker"
    SUPERVISOR = "supervisor"


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorFlags:
    """OTP's supervisor flags; defaults are OTP's (one_for_one, 1 restart per 5 s, never auto-shutdown)."""

    strategy: Strategy = Strategy.ONE_FOR_ONE
    intensity: Annotated[int, Range(0)] = 1  # restarts allowed within period
    period: Annotated[float, Above(0)] = 5  # seconds
    auto_shutdown: AutoShutdown = AutoShutdown.NEVER
    # Not an OTP flag: "parallel" forks every child at start before waiting for any ready, for children
    # that do not depend on each other (a pool). OTP's ordered start is the default.
    start_order: StartOrder = StartOrder.ORDERED


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSpec:
    """One child: how to start it (``"module:function"`` + args), when to restart it, how to stop it.

    ``shutdown`` and ``start`` default by ``type``: 5000 ms and required for workers; ``"infinity"`` and
    the nested-supervisor entry point for supervisors (whose own spec is ``supervisor``).

    ``preimport`` (not an OTP key): the supervisor imports the child's start module (and its subtree's)
    before forking it, so the child and every restart fork from a warm module whose pages the siblings
    share. False: the child imports its module after the fork (a restart pays that import again), for a
    child whose modules no other process uses: it then imports in parallel with its supervisor, which goes
    on importing the modules of the children after it while this one starts.

    ``inline`` (not an OTP key, supervisor children only): the nested supervisor runs in its parent's
    process and event loop instead of a forked process of its own, with the same semantics (its own
    strategy and intensity, its children forked by the hosting process, escalation to the parent as an
    abnormal exit): one Python process less (:mod:`openfang.supervisor.inline`). ``cpu`` and
    ``heartbeat_ms`` do not apply to it (it has no process to pin or to watch).

    ``autostart`` (not an OTP key): false keeps the child as a spec its supervisor does not start at its
    own start, the state OTP leaves a child in after ``terminate_child`` (spec kept, not running, not
    restarted): ``restart_child`` starts it, ``terminate_child`` stops it again. An elastic worker pool's
    members beyond its ``min_running`` are such children (docs/supervisor.md). Not with
    simple_one_for_one (its children exist only as started).
    """

    id: str
    start: str = ""
    args: Mapping[str, Any] = field(default_factory=dict)
    restart: Restart = Restart.PERMANENT
    shutdown: Annotated[Shutdown | None, Parse(_shutdown, '"brutal_kill", "infinity" or milliseconds')] = None
    type: ChildType = ChildType.WORKER
    significant: bool = False
    cpu: Annotated[int, Range(0)] | None = None
    heartbeat_ms: Annotated[int, Range(1)] | None = None  # the child must heartbeat this often
    start_timeout_ms: Annotated[int, Range(1)] = 10000
    preimport: bool = True
    inline: bool = False  # a supervisor child run in its parent's process (see the docstring)
    autostart: bool = True  # false: a kept spec, started only by restart_child (see the docstring)
    supervisor: SupervisorSpec | None = None

    def __post_init__(self) -> None:
        # Fill the type-dependent defaults once, so every reader sees the effective values.
        if self.shutdown is None:
            default: Shutdown = (
                "infinity" if self.type == ChildType.SUPERVISOR else DEFAULT_WORKER_SHUTDOWN_MS
            )
            object.__setattr__(self, "shutdown", default)
        if not self.start and self.type == ChildType.SUPERVISOR:
            object.__setattr__(self, "start", NESTED_START)


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorSpec:
    """A supervisor: its flags and its children in start order (for simple_one_for_one: the one template)."""

    flags: SupervisorFlags = field(default_factory=SupervisorFlags)
    children: tuple[ChildSpec, ...] = ()


# -- validation ----------


def check_spec(spec: SupervisorSpec, where: str = "supervisor") -> list[Problem]:
    """Every problem of ``spec`` (flags and children, recursively); empty means valid."""
    problems: list[Problem] = []
    flags = spec.flags
    check_values(flags, Place.named(where), problems, ("intensity", "period"))
    sofo = flags.strategy == Strategy.SIMPLE_ONE_FOR_ONE
    if sofo and len(spec.children) != 1:
        problems.append(
            Problem(
                f"{where} key 'children'",
                f"simple_one_for_one needs exactly 1 template child, got {len(spec.children)}",
            )
        )
    if sofo and flags.auto_shutdown != AutoShutdown.NEVER:
        problems.append(Problem(f"{where} key 'auto_shutdown'", "must be 'never' with simple_one_for_one"))
    if sofo and flags.start_order != StartOrder.ORDERED:
        problems.append(
            Problem(f"{where} key 'start_order'", "simple_one_for_one starts no children at start: 'ordered'")
        )
    seen: set[str] = set()
    for i, child in enumerate(spec.children):
        cwhere = f"{where}.children.{i}"
        if child.id in seen:
            problems.append(Problem(f"{cwhere} key 'id'", f"duplicate child id {child.id!r}"))
        seen.add(child.id)
        problems.extend(check_child(child, cwhere, flags))
    return problems


def check_child(child: ChildSpec, where: str, flags: SupervisorFlags | None = None) -> list[Problem]:
    """Every problem of one child spec (OTP ``check_childspec``), in the context of its supervisor's flags."""
    problems: list[Problem] = []
    if not isinstance(child.id, str) or not _ID_RE.match(child.id):
        problems.append(
            Problem(
                f"{where} key 'id'", f"must be a non-empty id of letters, digits, _ . -, got {child.id!r}"
            )
        )
    if not isinstance(child.start, str) or not _START_RE.match(child.start):
        problems.append(
            Problem(f"{where} key 'start'", f"must look like 'package.module:function', got {child.start!r}")
        )
    if not isinstance(child.args, Mapping):
        problems.append(Problem(f"{where} key 'args'", f"must be a table, got {type(child.args).__name__}"))
    # The bounds of shutdown, significant, cpu, heartbeat_ms and start_timeout_ms are ChildSpec's annotations.
    check_values(
        child,
        Place.named(where),
        problems,
        _VALUE_KEYS,
    )
    if child.inline is True:
        if child.type != ChildType.SUPERVISOR:
            problems.append(
                Problem(
                    f"{where} key 'inline'",
                    "only a child of type supervisor can run inline (a worker is always its own process)",
                )
            )
        for key in ("cpu", "heartbeat_ms"):
            if getattr(child, key) is not None:
                problems.append(
                    Problem(
                        f"{where} key {key!r}",
                        "does not apply to an inline supervisor (it runs in its parent's process)",
                    )
                )
    if child.significant:
        if child.restart == Restart.PERMANENT:
            problems.append(Problem(f"{where} key 'significant'", "a permanent child cannot be significant"))
        if flags is not None and flags.auto_shutdown == AutoShutdown.NEVER:
            problems.append(
                Problem(
                    f"{where} key 'significant'", "significant children need auto_shutdown other than 'never'"
                )
            )
        if flags is not None and flags.strategy == Strategy.SIMPLE_ONE_FOR_ONE:
            problems.append(Problem(f"{where} key 'significant'", "not allowed with simple_one_for_one"))
    if child.autostart is False and flags is not None and flags.strategy == Strategy.SIMPLE_ONE_FOR_ONE:
        problems.append(
            Problem(
                f"{where} key 'autostart'", "not allowed with simple_one_for_one (no child is kept stopped)"
            )
        )
    if child.type == ChildType.SUPERVISOR:
        if child.supervisor is None:
            problems.append(
                Problem(f"{where} key 'supervisor'", "a child of type supervisor needs its nested spec")
            )
        else:
            problems.extend(check_spec(child.supervisor, where))
    elif child.supervisor is not None:
        problems.append(
            Problem(f"{where} key 'supervisor'", "only a child of type supervisor has a nested spec")
        )
    return problems


def validate(spec: SupervisorSpec, where: str = "supervisor") -> SupervisorSpec:
    """``spec`` itself if valid; otherwise ConfigError listing every problem."""
    problems = check_spec(spec, where)
    if problems:
        raise ConfigError(problems)
    return spec


# -- plain data ----------


def child_to_dict(child: ChildSpec) -> dict[str, Any]:
    """A child spec as msgpack-able data."""
    return {
        "id": child.id,
        "start": child.start,
        "args": dict(child.args),
        "restart": str(child.restart),
        "shutdown": child.shutdown,
        "type": str(child.type),
        "significant": child.significant,
        "cpu": child.cpu,
        "heartbeat_ms": child.heartbeat_ms,
        "start_timeout_ms": child.start_timeout_ms,
        "preimport": child.preimport,
        "inline": child.inline,
        "autostart": child.autostart,
        "supervisor": spec_to_dict(child.supervisor) if child.supervisor is not None else None,
    }


def spec_to_dict(spec: SupervisorSpec) -> dict[str, Any]:
    """A supervisor spec as msgpack-able data (inverse of :func:`spec_from_dict`)."""
    f = spec.flags
    return {
        "flags": {
            "strategy": str(f.strategy),
            "intensity": f.intensity,
            "period": f.period,
            "auto_shutdown": str(f.auto_shutdown),
            "start_order": str(f.start_order),
        },
        "children": [child_to_dict(c) for c in spec.children],
    }


def child_from_dict(data: Mapping[str, Any], where: str = "child") -> ChildSpec:
    """A child spec from data (as made by :func:`child_to_dict`); ConfigError naming every problem."""
    problems: list[Problem] = []
    child = _child_from_dict(data, where, problems)
    if child is not None:
        problems.extend(check_child(child, where))
    if problems or child is None:
        raise ConfigError(problems or [Problem(where, "invalid child spec")])
    return child


def spec_from_dict(data: Mapping[str, Any], where: str = "supervisor") -> SupervisorSpec:
    """A supervisor spec from data; ConfigError naming every problem (including :func:`check_spec`'s)."""
    problems: list[Problem] = []
    spec = _spec_from_dict(data, where, problems)
    if not problems:
        problems.extend(check_spec(spec, where))
    if problems:
        raise ConfigError(problems)
    return spec


def _spec_from_dict(data: Mapping[str, Any], where: str, problems: list[Problem]) -> SupervisorSpec:
    if not isinstance(data, Mapping):
        problems.append(Problem(where, f"must be a map, got {type(data).__name__}"))
        return SupervisorSpec()
    raw_flags = data.get("flags", {})
    flags = d = SupervisorFlags()
    if isinstance(raw_flags, Mapping):
        flags = SupervisorFlags(
            strategy=_enum(
                Strategy, raw_flags.get("strategy", d.strategy), f"{where} key 'strategy'", problems
            ),
            intensity=raw_flags.get("intensity", d.intensity),
            period=raw_flags.get("period", d.period),
            auto_shutdown=_enum(
                AutoShutdown,
                raw_flags.get("auto_shutdown", d.auto_shutdown),
                f"{where} key 'auto_shutdown'",
                problems,
            ),
            start_order=_enum(
                StartOrder,
                raw_flags.get("start_order", d.start_order),
                f"{where} key 'start_order'",
                problems,
            ),
        )
    else:
        problems.append(Problem(f"{where} key 'flags'", "must be a map"))
    children: list[ChildSpec] = []
    raw_children = data.get("children", [])
    if not isinstance(raw_children, list | tuple):
        problems.append(Problem(f"{where} key 'children'", "must be a list"))
        raw_children = []
    for i, raw in enumerate(raw_children):
        child = _child_from_dict(raw, f"{where}.children.{i}", problems)
        if child is not None:
            children.append(child)
    return SupervisorSpec(flags=flags, children=tuple(children))


def _child_from_dict(data: Any, where: str, problems: list[Problem]) -> ChildSpec | None:
    if not isinstance(data, Mapping):
        problems.append(Problem(where, f"must be a map, got {type(data).__name__}"))
        return None
    unknown = set(data) - set(ChildSpec.__dataclass_fields__)
    for key in sorted(map(str, unknown)):
        problems.append(Problem(f"{where} key {key!r}", "unknown key"))
    nested = None
    if data.get("supervisor") is not None:
        nested = _spec_from_dict(data["supervisor"], where, problems)
    ctype = _enum(ChildType, data.get("type", ChildType.WORKER), f"{where} key 'type'", problems)
    # Absent (or nil) keys take ChildSpec's own defaults: only the keys present are passed.
    given = {k: data[k] for k in ("start", *_VALUE_KEYS) if data.get(k) is not None}
    if data.get("args") is not None:
        given["args"] = dict(data["args"]) if isinstance(data["args"], Mapping) else data["args"]
    if data.get("restart") is not None:
        given["restart"] = _enum(Restart, data["restart"], f"{where} key 'restart'", problems)
    return ChildSpec(id=data.get("id", ""), type=ctype, supervisor=nested, **given)


def _enum(kind: type[E], value: Any, where: str, problems: list[Problem]) -> E:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        problems.append(Problem(where, f"must be one of {choices}, got {value!r}"))
        return next(iter(kind))
