"""Layer 9, per-agent permissions: tools, memory scopes, messaging and spawning, default deny.

An agent's manifest carries a ``[permissions]`` table::

    [permissions]
    tools = ["web.search", "fs.read", "calc.*"]      # glob patterns; "!pattern" denies (deny wins)
    memory_read = ["self", "researcher-*"]           # whose memories it may read ("self" = its own)
    memory_write = ["self"]
    send = ["summarizer"]                            # agents it may send messages to
    spawn = ["helper"]                               # manifest names it may spawn

Anything not listed is denied; a missing table grants only ``self`` memory. :class:`PermissionChecker`
raises :class:`~openfang.security._errors.Denied` (layer ``permissions``, reason ``<what>_denied``) with a
``permissions.denied`` audit record. A spawn is also refused when the child would hold a permission its
parent does not (no escalation through spawning).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

from openfang.protocol.errors import ConfigError, Problem
from openfang.security._errors import Denied
from openfang.security._shared import shared
from openfang.security.audit import AuditSink

Kind = Literal["tools", "memory_read", "memory_write", "send", "spawn"]
KINDS: tuple[Kind, ...] = ("tools", "memory_read", "memory_write", "send", "spawn")
SELF = "self"
_PATTERN = re.compile(r"^!?[A-Za-z0-9_.*?\-:/\[\]]{1,128}$")


def _matches(patterns: frozenset[str], name: str) -> bool:
    """Deny patterns (``!x``) win over allow patterns; no allow pattern means deny."""
    if any(fnmatchcase(name, p[1:]) for p in patterns if p.startswith("!")):
        return False
    return any(fnmatchcase(name, p) for p in patterns if not p.startswith("!"))


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentPermissions:
    """What one agent may do. Every set holds glob patterns; ``self`` stands for the agent's own id."""

    agent_id: str
    tools: frozenset[str] = frozenset()
    memory_read: frozenset[str] = field(default_factory=lambda: frozenset({SELF}))
    memory_write: frozenset[str] = field(default_factory=lambda: frozenset({SELF}))
    send: frozenset[str] = frozenset()
    spawn: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # Agents of one manifest hold equal pattern sets: keep one of each (~0.2 KiB a set, five an agent).
        for kind in KINDS:
            object.__setattr__(self, kind, shared(getattr(self, kind)))

    def _resolved(self, kind: Kind) -> frozenset[str]:
        pats: frozenset[str] = getattr(self, kind)
        if kind in ("memory_read", "memory_write", "send"):
            return frozenset(
                self.agent_id if p == SELF else "!" + self.agent_id if p == "!" + SELF else p for p in pats
            )
        return pats

    def allows(self, kind: Kind, target: str) -> bool:
        return _matches(self._resolved(kind), target)

    def covers(self, other: AgentPermissions) -> list[str]:
        """The permissions ``other`` holds that this agent does not (empty: no escalation)."""
        extra = []
        for kind in KINDS:
            mine = self._resolved(kind)
            for p in other._resolved(kind):
                if p.startswith("!"):
                    continue  # a deny never adds power
                if kind in ("memory_read", "memory_write") and p == other.agent_id:
                    continue  # a child's own memory is its own, not a right taken from the parent
                if not _matches(mine, p) and not any(
                    fnmatchcase(p, m) for m in mine if not m.startswith("!")
                ):
                    extra.append(f"{kind}:{p}")
                elif any(fnmatchcase(p, d[1:]) or fnmatchcase(d[1:], p) for d in mine if d.startswith("!")):
                    extra.append(f"{kind}:{p}")  # overlaps something the parent is explicitly denied
        return extra


def parse_permissions(agent_id: str, table: Mapping[str, Any] | None, *, source: str) -> AgentPermissions:
    """The ``[permissions]`` table of ``agent_id``'s manifest; ConfigError lists every problem."""
    if table is None:
        return AgentPermissions(agent_id=agent_id)
    problems: list[Problem] = []
    where = f"{source}: [permissions]"
    if not isinstance(table, Mapping):
        raise ConfigError([Problem(where, f"must be a table, got {type(table).__name__}")])
    for key in sorted(set(table) - set(KINDS)):
        problems.append(Problem(f"{where} key {key!r}", f"unknown key (known: {', '.join(KINDS)})"))
    values: dict[str, frozenset[str]] = {}
    for kind in KINDS:
        if kind not in table:
            continue
        raw = table[kind]
        if not isinstance(raw, list):
            problems.append(
                Problem(f"{where} key {kind!r}", f"must be a list of strings, got {type(raw).__name__}")
            )
            continue
        for i, p in enumerate(raw):
            if not isinstance(p, str) or not _PATTERN.match(p):
                problems.append(
                    Problem(f"{where} key {kind!r}[{i}]", f"not a valid name or glob pattern: {p!r}"[:200])
                )
        values[kind] = frozenset(p for p in raw if isinstance(p, str))
    if problems:
        raise ConfigError(problems)
    return AgentPermissions(agent_id=agent_id, **values)


class PermissionChecker:
    """Holds each agent's permissions and enforces them; unknown agents have no permissions at all."""

    def __init__(self, *, audit: AuditSink | None = None) -> None:
        self._agents: dict[str, AgentPermissions] = {}
        self._audit = audit

    def register(self, perms: AgentPermissions) -> None:
        self._agents[perms.agent_id] = perms

    def unregister(self, agent_id: str) -> None:
        self._agents.pop(agent_id, None)

    def get(self, agent_id: str) -> AgentPermissions:
        # Default deny: an agent we have no record of gets an empty grant, not even its own memory.
        return self._agents.get(agent_id) or AgentPermissions(
            agent_id=agent_id, memory_read=frozenset(), memory_write=frozenset()
        )

    def _require(self, agent_id: str, kind: Kind, target: str) -> None:
        if self.get(agent_id).allows(kind, target):
            return
        if self._audit is not None:
            self._audit.append("permissions.denied", agent_id=agent_id, kind=kind, target=target[:200])
        raise Denied(
            f"agent {agent_id!r} may not {_VERBS[kind]} {target!r}",
            layer="permissions",
            reason=f"{kind}_denied",
        )

    def check_tool(self, agent_id: str, tool: str) -> None:
        self._require(agent_id, "tools", tool)

    def check_memory_read(self, agent_id: str, owner: str) -> None:
        self._require(agent_id, "memory_read", owner)

    def check_memory_write(self, agent_id: str, owner: str) -> None:
        self._require(agent_id, "memory_write", owner)

    def check_send(self, agent_id: str, target: str) -> None:
        self._require(agent_id, "send", target)

    def check_spawn(self, agent_id: str, manifest_name: str, child: AgentPermissions | None = None) -> None:
        """May ``agent_id`` spawn ``manifest_name``, and does the child stay within the parent's rights?"""
        self._require(agent_id, "spawn", manifest_name)
        if child is None:
            return
        extra = self.get(agent_id).covers(child)
        if extra:
            if self._audit is not None:
                self._audit.append(
                    "permissions.escalation", agent_id=agent_id, child=child.agent_id, extra=extra
                )
            raise Denied(
                f"agent {agent_id!r} cannot grant its child {child.agent_id!r}: {', '.join(extra)}",
                layer="permissions",
                reason="escalation",
            )

    def readable_owners(self, agent_id: str, owners: Iterable[str]) -> list[str]:
        """Filter a list of memory owners down to those ``agent_id`` may read (for search results)."""
        perms = self.get(agent_id)
        return [o for o in owners if perms.allows("memory_read", o)]


_VERBS: dict[str, str] = {
    "tools": "call the tool",
    "memory_read": "read the memory of",
    "memory_write": "write the memory of",
    "send": "send messages to",
    "spawn": "spawn",
}
