"""Layers 5-7 policy: host-function allowlists merge safely, limits are capped, refusals audited."""

from __future__ import annotations

import pytest

from openfang.protocol.errors import ConfigError
from openfang.security._errors import Denied
from openfang.security.audit import AuditLog
from openfang.security.capabilities import CapabilityPolicy, SandboxPolicyConfig

CLUSTER = SandboxPolicyConfig(
    fuel_default=1000,
    fuel_max=5000,
    memory_default_mb=8,
    memory_max_mb=64,
    allow=frozenset({"openfang.*", "wasi_snapshot_preview1.fd_write"}),
    deny=frozenset({"openfang.shell_*"}),
)


def test_capabilities_forbidden_import_is_refused_naming_it_and_audited(audit: AuditLog) -> None:
    """A module importing a non-granted host function is refused before instantiation; the rest pass."""
    policy = CapabilityPolicy(CLUSTER, audit=audit)
    grant = policy.grant("a1", {}, source="a1.toml")
    with pytest.raises(Denied) as err:
        policy.check_imports(grant, [("openfang", "kv_get"), ("openfang", "shell_exec"), ("env", "system")])
    assert err.value.reason == "import_denied"
    assert "env.system" in err.value.message and "openfang.shell_exec" in err.value.message
    policy.check_imports(grant, [("openfang", "kv_get"), ("wasi_snapshot_preview1", "fd_write")])
    (rec,) = audit.records("capabilities.import_denied")
    assert rec.fields["imports"] == ["env.system", "openfang.shell_exec"]


def test_capabilities_manifest_can_narrow_but_never_widen() -> None:
    """Manifest allow narrows the cluster list; a manifest allow of '*' does not add anything."""
    policy = CapabilityPolicy(CLUSTER)
    narrow = policy.grant("a", {"host_functions": {"allow": ["openfang.kv_*"]}}, source="m")
    assert narrow.allows("openfang", "kv_get") and not narrow.allows("openfang", "http_get")
    wide = policy.grant("a", {"host_functions": {"allow": ["*"]}}, source="m")
    assert not wide.allows("env", "system") and not wide.allows("openfang", "shell_exec")
    extra_deny = policy.grant("a", {"host_functions": {"deny": ["openfang.http_*"]}}, source="m")
    assert not extra_deny.allows("openfang", "http_get") and extra_deny.allows("openfang", "kv_get")


def test_capabilities_limits_default_and_cap(audit: AuditLog) -> None:
    """Unset limits take the defaults; asking above the cluster max is refused and audited."""
    policy = CapabilityPolicy(CLUSTER, audit=audit)
    g = policy.grant("a", {}, source="m")
    assert g.fuel == 1000 and g.memory_bytes == 8 * 1024 * 1024
    g = policy.grant("a", {"limits": {"fuel": 5000, "memory_mb": 64}}, source="m")
    assert g.fuel == 5000
    with pytest.raises(Denied, match="fuel 5001 > 5000, memory_mb 65 > 64"):
        policy.grant("a", {"limits": {"fuel": 5001, "memory_mb": 65}}, source="m")
    assert audit.records("capabilities.limits_refused")


def test_capabilities_malformed_tables_report_every_problem() -> None:
    """Bad limits and host_function entries are ConfigError problems with their place."""
    with pytest.raises(ConfigError) as err:
        CapabilityPolicy(CLUSTER).grant(
            "a",
            {"limits": {"fuel": -1, "memory_mb": "lots"}, "host_functions": {"allow": "x"}},
            source="m.toml",
        )
    assert len(err.value.problems) == 3


def test_capabilities_sandbox_traps_are_audited(audit: AuditLog) -> None:
    """record_trap writes one sandbox.<trap> record per event."""
    policy = CapabilityPolicy(CLUSTER, audit=audit)
    policy.record_trap("a1", "out_of_fuel", fuel=1000)
    policy.record_trap("a1", "memory_cap", requested_pages=70000)
    assert [r.kind for r in audit.records("sandbox.")] == ["sandbox.out_of_fuel", "sandbox.memory_cap"]


def test_capabilities_understand_the_agent_toml_layout() -> None:
    """The [sandbox.*] tables of agent.toml map onto the grant; bare host-function names work."""
    policy = CapabilityPolicy(
        SandboxPolicyConfig(
            fuel_max=10**9, memory_max_mb=64, allow=frozenset({"net_fetch", "llm_invoke", "openfang.*"})
        )
    )
    manifest = {
        "agent": {"name": "x"},
        "sandbox": {
            "fuel": {"max_fuel": 1000},
            "memory": {"max_heap_mb": 32},
            "permissions": {"allowed_host_functions": ["net_fetch"], "denied_host_functions": ["raw_socket"]},
        },
    }
    g = policy.grant("x-1", manifest, source="agent.toml")
    assert g.fuel == 1000 and g.memory_bytes == 32 << 20
    assert (
        g.allows("env", "net_fetch")
        and not g.allows("env", "llm_invoke")
        and not g.allows("env", "raw_socket")
    )
    with pytest.raises(Denied, match="memory_mb 128 > 64"):
        policy.grant("x-1", {"sandbox": {"memory": {"max_heap_mb": 128}}}, source="agent.toml")


def test_capabilities_grants_of_one_manifest_share_their_pattern_sets() -> None:
    """Two agents of one manifest get grants whose pattern sets are one object each; values unchanged."""
    policy = CapabilityPolicy()
    text = {"sandbox": {"permissions": {"allowed_host_functions": ["llm_invoke", "host_result"]}}}
    a = policy.grant("a-1", text, source="a.toml")
    b = policy.grant("a-2", text, source="a.toml")
    assert a.allow[-1] is b.allow[-1] and a.deny is b.deny and a.agent_id != b.agent_id
    assert a.allows("env", "llm_invoke") and not a.allows("env", "shell_exec")


def test_capabilities_passed_import_check_is_remembered_a_refusal_never(audit: AuditLog) -> None:
    """The same imports under the same patterns pass again (another agent of the pool, remembered); the
    same imports under narrower patterns are refused, and every refused spawn is audited again."""
    policy = CapabilityPolicy(CLUSTER, audit=audit)
    imports = [("openfang", "kv_get"), ("openfang", "http_get")]
    policy.check_imports(policy.grant("a-1", {}, source="m"), imports)
    policy.check_imports(policy.grant("a-2", {}, source="m"), list(reversed(imports)))
    narrow = {"host_functions": {"allow": ["openfang.kv_*"]}}
    for agent_id in ("b-1", "b-2"):
        with pytest.raises(Denied, match=f"agent '{agent_id}' imports .*openfang.http_get"):
            policy.check_imports(policy.grant(agent_id, narrow, source="m"), imports)
    refused = audit.records("capabilities.import_denied")
    assert [r.fields["agent_id"] for r in refused] == ["b-1", "b-2"]
    cluster_deny = CapabilityPolicy(
        SandboxPolicyConfig(allow=CLUSTER.allow, deny=frozenset({"openfang.http_*"})), audit=audit
    )
    with pytest.raises(Denied):
        cluster_deny.check_imports(cluster_deny.grant("c-1", {}, source="m"), imports)


def test_capabilities_names_without_wildcards_match_as_fnmatch_matches_them() -> None:
    """A grant answers as fnmatchcase does for patterns with and without wildcards, bare or dotted: a name
    without ``*?[`` matches itself only (no case folding, no partial match, special characters literal)."""
    from fnmatch import fnmatchcase

    patterns = [
        "llm_invoke",
        "env.llm_invoke",
        "env.*",
        "kv_?et",
        "kv_[gs]et",
        "a.b",
        "x+y",
        "LLM_INVOKE",
        "]",
    ]
    names = [
        ("env", "llm_invoke"),
        ("env", "LLM_invoke"),
        ("env", "llm_invoke2"),
        ("env", "kv_get"),
        ("env", "kv_set"),
        ("a", "b"),
        ("env", "x+y"),
        ("env", "xy"),
        ("env", "]"),
        ("other", "llm_invoke"),
    ]
    for pattern in patterns:
        grant = CapabilityPolicy(SandboxPolicyConfig(allow=frozenset({pattern}))).grant("a", {}, source="m")
        for module, name in names:
            full = f"{module}.{name}"
            want = fnmatchcase(full, pattern) if "." in pattern else fnmatchcase(name, pattern)
            assert grant.allows(module, name) is want, (pattern, full)
