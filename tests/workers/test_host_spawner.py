"""Agents of one manifest share what the text decides (the limited manifest, the grant's patterns), never
what is each agent's own (its grant's name, its identity key); a changed or refused manifest is never
served from what an earlier spawn worked out."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openfang.protocol.envelope import Envelope
from openfang.security.audit import AuditLog
from openfang.security.config import security_from_args
from openfang.workers.host.agent_host import AgentHost, HostParts
from openfang.workers.host.security import HostAudit, HostSecurity
from openfang.workers.tools.registry import default_registry

ECHO = '[agent]\nname = "pool"\nmodule = "builtin:echo"\n'
SMALL = ECHO + "[sandbox.memory]\nmax_heap_mb = 8\n"
GREEDY = ECHO + "[sandbox.fuel]\nmax_fuel = 2000000000\n"  # over the cluster's fuel_max (1e9)


class _Host:
    """An in-process AgentHost with every security layer, and its audit records."""

    def __init__(self, tmp: Path) -> None:
        self.records: list[dict[str, Any]] = []
        self.sec = HostSecurity(
            security_from_args(None, data_dir=str(tmp)),
            HostAudit(AuditLog(tmp / "audit.db"), also=self.records.append),
            data_dir=tmp,
        )
        self.host = AgentHost("w-0", HostParts(tools=default_registry(), security=self.sec))

    def call(self, type_: str, **body: object) -> Envelope:
        req = Envelope(type=type_, body=dict(body))
        self.host.submit(req)
        for _ in range(500):
            for reply in self.host.step(0.01):
                if reply.id == req.id:
                    return reply
        raise AssertionError(f"no reply to {type_}")

    def spawn(self, manifest: str) -> Any:
        reply = self.call("agent.spawn", manifest=manifest)
        assert not reply.is_error, reply.body
        return self.host._agents[reply.body["agent_id"]]

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == kind]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[_Host]:
    made = _Host(tmp_path)
    yield made
    made.host.close()


def test_spawner_pool_shares_its_manifest_and_grant_patterns_not_its_identities(host: _Host) -> None:
    """Two agents of one text: one limited manifest object, grants equal but for the agent they name; no
    key is made at spawn, and the keys made on first use are distinct, registered, and kept."""
    a, b = host.spawn(ECHO), host.spawn(ECHO)
    assert a.manifest is b.manifest
    assert a.grant.agent_id == a.agent_id and b.grant.agent_id == b.agent_id
    assert (a.grant.allow, a.grant.deny, a.grant.fuel, a.grant.memory_bytes) == (
        b.grant.allow,
        b.grant.deny,
        b.grant.fuel,
        b.grant.memory_bytes,
    )
    assert host.sec.identities.key(a.agent_id) is None and host.sec.identities.key(b.agent_id) is None
    key_a, key_b = a.guard.identity, b.guard.identity
    assert key_a.agent_id == a.agent_id and key_b.agent_id == b.agent_id
    assert key_a.public_bytes() != key_b.public_bytes()
    assert a.guard.identity is key_a  # made once
    registered = host.sec.identities.key(a.agent_id)
    assert registered is not None and registered.public_bytes_raw() == key_a.public_bytes()
    host.call("agent.kill", agent_id=a.agent_id)
    assert host.sec.identities.key(a.agent_id) is None  # unregistered with its agent


def test_spawner_changed_manifest_is_not_served_from_the_pool_cache(host: _Host) -> None:
    """A different text (its own heap limit) gets its own limits and grant; the first text keeps the
    cluster's default, before and after."""
    first, small, again = host.spawn(ECHO), host.spawn(SMALL), host.spawn(ECHO)
    assert small.manifest.sandbox.memory.max_heap_mb == 8 and small.grant.memory_bytes == 8 << 20
    default_mb = first.grant.memory_bytes >> 20
    assert default_mb != 8 and first.manifest.sandbox.memory.max_heap_mb == default_mb
    assert again.manifest is first.manifest and again.grant.memory_bytes == first.grant.memory_bytes
    assert small.manifest is not first.manifest


def test_spawner_refused_manifest_is_refused_and_audited_every_time(host: _Host) -> None:
    """A manifest asking for more fuel than the cluster allows is refused at each spawn, each audited; the
    worker keeps serving the good manifest."""
    for _ in range(2):
        reply = host.call("agent.spawn", manifest=GREEDY)
        assert reply.is_error and reply.body["code"] == "denied", reply.body
    assert len(host.kinds("capabilities.limits_refused")) == 2
    assert host.spawn(ECHO).agent_id


def test_spawner_warm_up_makes_the_first_builtin_spawn_warm(host: _Host) -> None:
    """After the warm-up steps the first llm-agent spawn finds its module compiled and checked (a warm
    spawn), answers as a cold one does, and the runtime made ahead ticks only once a spawn uses it."""
    for step in host.host.warm_up():
        step()
    runtimes = list(host.host._spawner._runtimes.values())
    assert len(runtimes) == 1 and runtimes[0]._ticker is None
    # Layer 16's state: opened by the last steps, its log's first commit paid.
    store = host.sec._versions
    assert store is not None and store._committed
    agent = host.spawn('[agent]\nname = "first"\n[agent.model]\nprovider = "scripted"\n')
    assert host.sec._versions is store  # the spawn's layer 16 check used the state opened ahead
    assert agent.sandbox.spawn_kind == "warm" and agent.sandbox.runtime is runtimes[0]
    assert runtimes[0]._ticker is not None
    reply = host.call("agent.send", agent_id=agent.agent_id, text="hello")
    assert not reply.is_error, reply.body


def test_spawner_warm_up_leaves_every_spawn_its_import_check(host: _Host) -> None:
    """A module compiled ahead is still checked against each spawn's own manifest: one that denies an import
    the llm-agent makes is refused, naming it, and nothing is left running."""
    for step in host.host.warm_up():
        step()
    reply = host.call(
        "agent.spawn",
        manifest='[agent]\nname = "strict"\n[agent.model]\nprovider = "scripted"\n'
        '[sandbox.permissions]\ndenied_host_functions = ["tool_call"]\n',
    )
    assert reply.is_error and reply.body["code"] == "denied", reply.body
    assert "env.tool_call" in reply.body["message"]
    assert host.host.runtime_stats() == {"live_stores": 0, "agents": 0}


def test_spawner_warm_up_steps_are_no_ops_once_a_spawn_did_their_work(host: _Host) -> None:
    """Steps left over after the first spawn (which did their work itself) change nothing: the module is
    not compiled again and the agent keeps its instance."""
    agent = host.spawn('[agent]\nname = "early"\n[agent.model]\nprovider = "scripted"\n')
    assert agent.sandbox.spawn_kind == "cold"
    (runtime,) = host.host._spawner._runtimes.values()
    pre = runtime.cached_pre(agent.sandbox.module_digest)
    for step in host.host.warm_up():
        step()
    assert list(host.host._spawner._runtimes.values()) == [runtime]
    assert runtime.cached_pre(agent.sandbox.module_digest) is pre
    assert not host.call("agent.send", agent_id=agent.agent_id, text="hi").is_error


def test_spawner_warm_up_fills_the_runtimes_per_module_caches(host: _Host) -> None:
    """After the warm-up the built-in guest's imports and table exports are known to its runtime (a first
    spawn read them itself), and the spawn still checks those imports against its own grant."""
    steps = host.host.warm_up()
    assert [s.__qualname__.rsplit(".", 1)[-1] for s in steps] == [
        "readers",
        "runtime",
        "module",
        "module_caches",
        "open_state",
        "first_commit",
    ]
    for step in steps:
        step()
    (runtime,) = host.host._spawner._runtimes.values()
    (digest,) = runtime._pres
    assert runtime._imports.get(digest) and len(runtime._table_names) == 1
    reply = host.call(
        "agent.spawn",
        manifest='[agent]\nname = "strict"\n[agent.model]\nprovider = "scripted"\n'
        '[sandbox.permissions]\ndenied_host_functions = ["tool_call"]\n',
    )
    assert reply.is_error and "env.tool_call" in reply.body["message"], reply.body


def test_spawner_new_text_is_parsed_once_and_bad_toml_still_named(
    host: _Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new manifest text's first spawn parses its TOML once (its manifest and the later steps share that
    parse); a text that is not TOML is still refused with the manifest's 'not valid TOML' problem."""
    calls: list[str] = []
    loads = tomllib.loads

    def counted(text: str) -> dict[str, Any]:
        calls.append(text)
        return loads(text)

    monkeypatch.setattr(tomllib, "loads", counted)
    text = ECHO + "# parsed once\n"
    host.spawn(text)
    assert calls.count(text) == 1
    bad = host.call("agent.spawn", manifest="[agent\nname = 1\n")
    assert bad.is_error and "not valid TOML" in bad.body["message"]
