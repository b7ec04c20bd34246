"""Layers 5-7 policy: fuel, memory caps and the host-function allowlist, as data the sandbox applies.

The sandbox (``openfang.workers``) enforces these with wasmtime (fuel, ``Store.set_limits``, checking a
module's imports before instantiating); this module decides *what* each agent gets:

- **Host functions.** The cluster sets ``allow`` and ``deny`` glob patterns over ``module.name`` import
  names; a manifest may *narrow* them with its own ``[host_functions]`` allow/deny. A function is granted
  when a cluster allow pattern and (if the manifest lists any) a manifest allow pattern match it, and no
  deny pattern of either does. Denylists always win; a manifest can never widen the cluster allowlist.
- **Fuel and memory.** A manifest's ``[limits]`` ``fuel`` and ``memory_mb`` default to the cluster defaults
  and may not exceed the cluster maxima (a spawn asking for more is refused, not silently clamped).
- **Tables.** A manifest's ``max_table_elements`` (per table) and ``max_tables`` may not exceed the cluster's
  ``table_elements_max`` / ``tables_max`` either; left unset, the manifest default applies, capped at them.

:meth:`CapabilityPolicy.check_imports` refuses a module whose imports include anything not granted, naming
every offending import (a check that passed is remembered by its patterns and imports, so the agents of a
pool, one grant and one module, pay the pattern matching once; a refusal is decided and audited every
time); :meth:`CapabilityPolicy.record_trap` audits fuel exhaustion, memory-cap hits and denied calls that
the sandbox observes at run time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

from openfang.protocol.errors import ConfigError, Problem
from openfang.security._errors import Denied
from openfang.security._shared import shared
from openfang.security.audit import AuditSink

Trap = Literal["out_of_fuel", "memory_cap", "deadline", "call_denied"]
PASSED_CHECKS = 256  # distinct (grant patterns, imports) pairs remembered as passed


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxPolicyConfig:
    """Cluster-wide sandbox policy (``[security.sandbox]``)."""

    # Defaults equal the agent.toml defaults ([sandbox.fuel] max_fuel, [sandbox.memory] max_heap_mb), so a
    # cluster without [security.sandbox] runs agents exactly as their manifests say.
    fuel_default: int = 500_000_000
    fuel_max: int = 1_000_000_000
    memory_default_mb: int = 64
    memory_max_mb: int = 256
    table_elements_max: int = 1_000_000  # per table, 8 bytes each: 8 MB
    tables_max: int = 16
    # Guests import host functions from the "env" module (see docs/guest-abi.md).
    allow: frozenset[str] = field(default_factory=lambda: frozenset({"env.*"}))
    deny: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxGrant:
    """What one agent's sandbox gets: fuel per call, memory cap, and the host-function patterns."""

    agent_id: str
    fuel: int
    memory_bytes: int
    allow: tuple[frozenset[str], ...]  # every set must match (cluster, then manifest if it narrows)
    deny: frozenset[str]
    table_elements: int = 1_000_000  # asked for, else the most the cluster allows
    tables: int = 16

    def __post_init__(self) -> None:
        # Agents of one manifest ask for equal patterns: keep one set of each (~0.9 KiB an agent).
        object.__setattr__(self, "allow", tuple(shared(s) for s in self.allow))
        object.__setattr__(self, "deny", shared(self.deny))

    def allows(self, module: str, name: str) -> bool:
        """Patterns with a dot match ``module.name``; patterns without one match the bare name in any module
        (the agent.toml lists bare host-function names)."""
        full = f"{module}.{name}"

        def hit(p: str) -> bool:
            return _matches(full, p) if "." in p else _matches(name, p)

        if any(hit(p) for p in self.deny):
            return False
        return all(any(hit(p) for p in pats) for pats in self.allow)


_GLOB = frozenset("*?[")


def _matches(text: str, pattern: str) -> bool:
    """``fnmatchcase(text, pattern)``; a pattern with none of ``*?[`` (a manifest's bare host-function
    names) matches only itself, compared as it is: fnmatch compiles a regex for each new pattern (~0.16 ms,
    ~1 ms of a worker's first spawn for the core ABI's names)."""
    if _GLOB.isdisjoint(pattern):
        return text == pattern
    return fnmatchcase(text, pattern)


def _patterns(
    table: Mapping[str, Any], key: str, where: str, problems: list[Problem]
) -> frozenset[str] | None:
    if key not in table:
        return None
    raw = table[key]
    if not isinstance(raw, list) or not all(isinstance(p, str) and p for p in raw):
        problems.append(Problem(f"{where} key {key!r}", "must be a list of non-empty strings"))
        return None
    return frozenset(raw)


@dataclass(frozen=True, slots=True)
class _View:
    """The sandbox limits of one manifest or config table, with where each came from."""

    hf: Mapping[str, Any]
    hf_where: str
    allow_key: str
    deny_key: str
    fuel: Any
    fuel_where: str
    memory_mb: Any
    mem_where: str
    tables: tuple[tuple[str, Any, str], ...] = ()  # (what, value, where) of the table limits


def _table(parent: Mapping[str, Any], key: str, where: str, problems: list[Problem]) -> Mapping[str, Any]:
    value = parent.get(key, {})
    if not isinstance(value, Mapping):
        problems.append(Problem(where, "must be a table"))
        return {}
    return value


def _view(manifest: Mapping[str, Any], source: str, problems: list[Problem]) -> _View:
    """Where the sandbox keys live in this manifest layout."""
    if "sandbox" in manifest:
        sb = _table(manifest, "sandbox", f"{source}: [sandbox]", problems)
        perm = _table(sb, "permissions", f"{source}: [sandbox.permissions]", problems)
        fuel = _table(sb, "fuel", f"{source}: [sandbox.fuel]", problems)
        mem = _table(sb, "memory", f"{source}: [sandbox.memory]", problems)
        return _View(
            perm,
            f"{source}: [sandbox.permissions]",
            "allowed_host_functions",
            "denied_host_functions",
            fuel.get("max_fuel"),
            f"{source}: [sandbox.fuel] key 'max_fuel'",
            mem.get("max_heap_mb"),
            f"{source}: [sandbox.memory] key 'max_heap_mb'",
            tuple(
                (what, mem.get(key), f"{source}: [sandbox.memory] key '{key}'")
                for what, key in (("table_elements", "max_table_elements"), ("tables", "max_tables"))
            ),
        )
    hf = _table(manifest, "host_functions", f"{source}: [host_functions]", problems)
    limits = _table(manifest, "limits", f"{source}: [limits]", problems)
    return _View(
        hf,
        f"{source}: [host_functions]",
        "allow",
        "deny",
        limits.get("fuel"),
        f"{source}: [limits] key 'fuel'",
        limits.get("memory_mb"),
        f"{source}: [limits] key 'memory_mb'",
        tuple(
            (key, limits.get(key), f"{source}: [limits] key '{key}'") for key in ("table_elements", "tables")
        ),
    )


class CapabilityPolicy:
    """Turns a manifest into a :class:`SandboxGrant` under the cluster policy; audits every refusal."""

    def __init__(self, config: SandboxPolicyConfig | None = None, *, audit: AuditSink | None = None) -> None:
        self.config = config or SandboxPolicyConfig()
        self._audit = audit
        # check_imports that passed: whether a module's imports are allowed depends on the patterns only.
        self._passed: set[tuple[tuple[frozenset[str], ...], frozenset[str], frozenset[tuple[str, str]]]] = (
            set()
        )

    def grant(self, agent_id: str, manifest: Mapping[str, Any], *, source: str) -> SandboxGrant:
        """The grant for ``manifest``. ConfigError for malformed tables; Denied for asking too much.

        Two manifest layouts are understood: the agent.toml of ``openfang.workers.manifest``
        (``[sandbox.permissions] allowed_host_functions / denied_host_functions``,
        ``[sandbox.fuel] max_fuel``, ``[sandbox.memory] max_heap_mb``) and a flat one
        (``[host_functions] allow / deny``, ``[limits] fuel / memory_mb``).
        """
        cfg = self.config
        problems: list[Problem] = []
        view = _view(manifest, source, problems)
        m_allow = _patterns(view.hf, view.allow_key, view.hf_where, problems)
        m_deny = _patterns(view.hf, view.deny_key, view.hf_where, problems) or frozenset()
        fuel = view.fuel if view.fuel is not None else cfg.fuel_default
        mem = view.memory_mb if view.memory_mb is not None else cfg.memory_default_mb
        for where, value in ((view.fuel_where, fuel), (view.mem_where, mem)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(Problem(where, "must be a positive integer"))
        tables = {"table_elements": cfg.table_elements_max, "tables": cfg.tables_max}
        asked: dict[str, int] = {}
        for what, value, where in view.tables:
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                problems.append(Problem(where, "must be a non-negative integer"))
            else:
                asked[what] = value
        if problems:
            raise ConfigError(problems)
        over = []
        if fuel > cfg.fuel_max:
            over.append(f"fuel {fuel} > {cfg.fuel_max}")
        if mem > cfg.memory_max_mb:
            over.append(f"memory_mb {mem} > {cfg.memory_max_mb}")
        for what, value in asked.items():
            if value > tables[what]:
                over.append(f"{what} {value} > {tables[what]}")
        if over:
            if self._audit is not None:
                self._audit.append("capabilities.limits_refused", agent_id=agent_id, over=over)
            raise Denied(
                f"agent {agent_id!r} asks for more than the cluster allows: {', '.join(over)}",
                layer="capabilities",
                reason="limits_exceed_policy",
            )
        allow = (cfg.allow,) if m_allow is None else (cfg.allow, m_allow)
        return SandboxGrant(
            agent_id=agent_id,
            fuel=fuel,
            memory_bytes=mem * 1024 * 1024,
            allow=allow,
            deny=cfg.deny | m_deny,
            table_elements=asked.get("table_elements", tables["table_elements"]),
            tables=asked.get("tables", tables["tables"]),
        )

    def check_imports(self, grant: SandboxGrant, imports: Iterable[tuple[str, str]]) -> None:
        """Refuse a module importing any host function the grant does not allow (all are named)."""
        wanted = frozenset(imports)
        key = (grant.allow, grant.deny, wanted)
        if key in self._passed:
            return
        denied = sorted({f"{m}.{n}" for m, n in wanted if not grant.allows(m, n)})
        if not denied:
            if len(self._passed) >= PASSED_CHECKS:
                self._passed.clear()
            self._passed.add(key)
            return
        if self._audit is not None:
            self._audit.append("capabilities.import_denied", agent_id=grant.agent_id, imports=denied)
        raise Denied(
            f"agent {grant.agent_id!r} imports host functions it is not granted: {', '.join(denied)}",
            layer="capabilities",
            reason="import_denied",
        )

    def record_trap(self, agent_id: str, trap: Trap, **detail: Any) -> None:
        """Audit a sandbox event the worker observed (the agent was stopped or the call refused)."""
        if self._audit is not None:
            self._audit.append(f"sandbox.{trap}", agent_id=agent_id, **detail)
