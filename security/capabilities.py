"""Layers 5-7 policy: fuel, memory caps and the host-function allowlist, as data the sandbox applies.

The sandbox (``openfang.workers``) enforces these with wasmtime (fuel, ``Store.set_limits``, checking a
module's imports before instantiating); this module decides *what* each agent gets:

- **Host functions.** The cluster sets ``allow`` and ``deny`` glob patterns over ``module.name`` import
  names; a manifest may *narrow* them with its own ``[host_functions]`` allow/deny. A function is granted
  when a cluster allow pattern and (if the manifest lists any) a manifest allow pattern match it, and no
  deny pattern of either does. Denylists always win; a manifest can never widen the cluster allowlist.
- **Fuel and memory.** A manifest's ``[limits]`` ``fuel`` and ``memory_mb`` default to the cluster defaults
  and may not exceed the cluster maxima (a spawn asking for more is refused, not silently clamped).

:meth:`CapabilityPolicy.check_imports` refuses a module whose imports include anything not granted, naming
every offending import; :meth:`CapabilityPolicy.record_trap` audits fuel exhaustion, memory-cap hits and
denied calls that the sandbox observes at run time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

from openfang.protocol.errors import ConfigError, Problem
from openfang.security._errors import Denied
from openfang.security.audit import AuditSink

Trap = Literal["out_of_fuel", "memory_cap", "deadline", "call_denied"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxPolicyConfig:
    """Cluster-wide sandbox policy (``[security.sandbox]``)."""

    fuel_default: int = 10_000_000
    fuel_max: int = 1_000_000_000
    memory_default_mb: int = 16
    memory_max_mb: int = 256
    allow: frozenset[str] = field(default_factory=lambda: frozenset({"openfang.*"}))
    deny: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxGrant:
    """What one agent's sandbox gets: fuel per call, memory cap, and the host-function patterns."""

    agent_id: str
    fuel: int
    memory_bytes: int
    allow: tuple[frozenset[str], ...]  # every set must match (cluster, then manifest if it narrows)
    deny: frozenset[str]

    def allows(self, module: str, name: str) -> bool:
        full = f"{module}.{name}"
        if any(fnmatchcase(full, p) for p in self.deny):
            return False
        return all(any(fnmatchcase(full, p) for p in pats) for pats in self.allow)


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


class CapabilityPolicy:
    """Turns a manifest into a :class:`SandboxGrant` under the cluster policy; audits every refusal."""

    def __init__(self, config: SandboxPolicyConfig | None = None, *, audit: AuditSink | None = None) -> None:
        self.config = config or SandboxPolicyConfig()
        self._audit = audit

    def grant(self, agent_id: str, manifest: Mapping[str, Any], *, source: str) -> SandboxGrant:
        """The grant for ``manifest``. ConfigError for malformed tables; Denied for asking too much."""
        cfg = self.config
        problems: list[Problem] = []
        hf = manifest.get("host_functions", {})
        limits = manifest.get("limits", {})
        if not isinstance(hf, Mapping):
            problems.append(Problem(f"{source}: [host_functions]", "must be a table"))
            hf = {}
        if not isinstance(limits, Mapping):
            problems.append(Problem(f"{source}: [limits]", "must be a table"))
            limits = {}
        m_allow = _patterns(hf, "allow", f"{source}: [host_functions]", problems)
        m_deny = _patterns(hf, "deny", f"{source}: [host_functions]", problems) or frozenset()
        fuel = limits.get("fuel", cfg.fuel_default)
        mem = limits.get("memory_mb", cfg.memory_default_mb)
        for key, value in (("fuel", fuel), ("memory_mb", mem)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(Problem(f"{source}: [limits] key {key!r}", "must be a positive integer"))
        if problems:
            raise ConfigError(problems)
        over = []
        if fuel > cfg.fuel_max:
            over.append(f"fuel {fuel} > {cfg.fuel_max}")
        if mem > cfg.memory_max_mb:
            over.append(f"memory_mb {mem} > {cfg.memory_max_mb}")
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
            agent_id=agent_id, fuel=fuel, memory_bytes=mem * 1024 * 1024, allow=allow, deny=cfg.deny | m_deny
        )

    def check_imports(self, grant: SandboxGrant, imports: Iterable[tuple[str, str]]) -> None:
        """Refuse a module importing any host function the grant does not allow (all are named)."""
        denied = sorted({f"{m}.{n}" for m, n in imports if not grant.allows(m, n)})
        if denied:
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
