"""Layer 9: per-agent permissions are default-deny, audited, and cannot be escalated by spawning."""

from __future__ import annotations

import pytest

from openfang.protocol.errors import ConfigError
from openfang.security._errors import Denied
from openfang.security.audit import AuditLog
from openfang.security.permissions import AgentPermissions, PermissionChecker, parse_permissions

TABLE = {
    "tools": ["web.search", "fs.*", "!fs.delete"],
    "memory_read": ["self", "research-*"],
    "send": ["summarizer"],
    "spawn": ["helper"],
}


def _checker(audit: AuditLog | None = None) -> PermissionChecker:
    checker = PermissionChecker(audit=audit)
    checker.register(parse_permissions("planner", TABLE, source="agents/planner.toml"))
    return checker


def test_permissions_denied_tool_is_refused_audited_and_allowed_tool_still_works(audit: AuditLog) -> None:
    """Calling an unlisted or explicitly denied tool is refused and audited; listed tools work."""
    c = _checker(audit)
    for tool in ("shell.exec", "fs.delete"):
        with pytest.raises(Denied) as err:
            c.check_tool("planner", tool)
        assert err.value.reason == "tools_denied"
    c.check_tool("planner", "fs.read")
    c.check_tool("planner", "web.search")
    assert [r.fields["target"] for r in audit.records("permissions.denied")] == ["shell.exec", "fs.delete"]


def test_permissions_memory_scopes_limit_whose_memories_are_read() -> None:
    """An agent reads its own and the listed agents' memories, nobody else's, and writes only its own."""
    c = _checker()
    c.check_memory_read("planner", "planner")
    c.check_memory_read("planner", "research-7")
    with pytest.raises(Denied, match="read the memory of 'billing'"):
        c.check_memory_read("planner", "billing")
    c.check_memory_write("planner", "planner")
    with pytest.raises(Denied):
        c.check_memory_write("planner", "research-7")
    assert c.readable_owners("planner", ["planner", "billing", "research-1"]) == ["planner", "research-1"]


def test_permissions_send_and_spawn_are_limited_to_listed_targets() -> None:
    """Messages go only to listed agents; only listed manifests can be spawned."""
    c = _checker()
    c.check_send("planner", "summarizer")
    with pytest.raises(Denied, match="send messages to 'admin'"):
        c.check_send("planner", "admin")
    c.check_spawn("planner", "helper")
    with pytest.raises(Denied):
        c.check_spawn("planner", "miner")


def test_permissions_unknown_agent_has_no_rights_at_all() -> None:
    """Default deny: an unregistered agent cannot even read its own memory."""
    c = PermissionChecker()
    with pytest.raises(Denied):
        c.check_memory_read("ghost", "ghost")
    with pytest.raises(Denied):
        c.check_tool("ghost", "web.search")


def test_permissions_spawn_cannot_escalate(audit: AuditLog) -> None:
    """A child asking for a tool or scope the parent lacks (or is denied) is refused as escalation."""
    c = _checker(audit)
    ok_child = AgentPermissions(agent_id="helper-1", tools=frozenset({"fs.read"}))
    c.check_spawn("planner", "helper", ok_child)
    for child_tools in ({"shell.exec"}, {"fs.*"}, {"*"}):
        child = AgentPermissions(agent_id="helper-2", tools=frozenset(child_tools))
        with pytest.raises(Denied) as err:
            c.check_spawn("planner", "helper", child)
        assert err.value.reason == "escalation"
    reader = AgentPermissions(agent_id="helper-3", memory_read=frozenset({"self", "billing"}))
    with pytest.raises(Denied, match="memory_read:billing"):
        c.check_spawn("planner", "helper", reader)
    assert len(audit.records("permissions.escalation")) == 4


def test_permissions_bad_table_reports_every_problem() -> None:
    """Unknown keys, non-lists and invalid patterns are all reported with their place."""
    with pytest.raises(ConfigError) as err:
        parse_permissions(
            "a", {"tools": "web.search", "memroy_read": [], "send": ["ok", "bad name!", 3]}, source="m.toml"
        )
    wheres = {p.where for p in err.value.problems}
    assert wheres == {
        "m.toml: [permissions] key 'tools'",
        "m.toml: [permissions] key 'memroy_read'",
        "m.toml: [permissions] key 'send'[1]",
        "m.toml: [permissions] key 'send'[2]",
    }


def test_permissions_equal_pattern_sets_are_shared_and_values_kept() -> None:
    """Two agents of one manifest hold the same pattern-set objects; another table's sets are its own; each
    agent's own id still resolves ``self``."""
    a = parse_permissions("planner-1", TABLE, source="p.toml")
    b = parse_permissions("planner-2", TABLE, source="p.toml")
    other = parse_permissions("x-1", {"tools": ["calc.*"]}, source="x.toml")
    for kind in ("tools", "memory_read", "memory_write", "send", "spawn"):
        assert getattr(a, kind) is getattr(b, kind)
    assert other.tools is not a.tools and other.tools == frozenset({"calc.*"})
    assert a.allows("memory_read", "planner-1") and not a.allows("memory_read", "planner-2")
    assert b.allows("memory_read", "planner-2") and not b.allows("memory_read", "planner-1")
