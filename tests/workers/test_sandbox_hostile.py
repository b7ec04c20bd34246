"""Hostile guests against the sandbox's spawn-time defences: start functions, tables, memories, exports.

Each guest lives in examples/agents/nasty/ (see its README); each test says what the sandbox must do.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sandbox_helpers import EXAMPLES, Driver, default_registry, make_host, manifest

NASTY = EXAMPLES / "nasty"


def _spawn_text(name: str, module: Path | str, *, agent: str = "", sandbox: str = "") -> str:
    return manifest(name, module=str(module), model=False, agent=agent, sandbox=sandbox)


def test_hostile_start_loop_is_sliced_while_a_neighbour_answers() -> None:
    """A start function that never ends runs in slices: a neighbour's messages are answered meanwhile."""
    d = make_host()
    try:
        echo = d.ok("agent.spawn", manifest=manifest("echo", module="builtin:echo", model=False))["agent_id"]
        spawn = d.submit(
            "agent.spawn",
            manifest=_spawn_text("loop", NASTY / "start_loop.wat", agent="call_timeout_ms = 2000"),
        )
        answered = 0
        while spawn.id not in d.replies:
            reply = d.call("agent.send", agent_id=echo, text=f"ping {answered}")
            assert reply.type == "agent.send.ok" and f'"ping {answered}"' in reply.body["reply"]
            answered += 1
        refused = d.replies.pop(spawn.id)
        assert refused.type == "error" and "refused: its start function" in refused.body["message"]
        assert answered >= 5  # the worker's loop went on while the start function was running
        assert [r["kind"] for r in d.audit] == ["start_refused"]
        assert d.host.runtime_stats() == {"live_stores": 1, "agents": 1}
    finally:
        d.host.close()


def test_hostile_start_loop_refused_at_max_fuel_before_the_deadline() -> None:
    """With a long call deadline the start function's fuel (one interval's max_fuel) refuses it first."""
    d = make_host()
    try:
        text = _spawn_text(
            "loop",
            NASTY / "start_loop.wat",
            agent="call_timeout_ms = 600000",
            sandbox="[sandbox.fuel]\nmax_fuel = 20000000\n",
        )
        reply = d.call("agent.spawn", manifest=text, timeout=60)
        assert reply.type == "error" and reply.body["code"] == "sandbox_error"
        assert (
            "its start function used more than max_fuel=20000000 without finishing" in reply.body["message"]
        )
        record = d.audit[-1]
        assert record["kind"] == "start_refused" and record["fuel_used"] > 20_000_000
        assert d.host.runtime_stats() == {"live_stores": 0, "agents": 0}
    finally:
        d.host.close()


SLOW_START = """(module
  (memory (export "memory") 1)
  (global $ready (mut i32) (i32.const 0))
  (func $count (local $i i32)
    (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 3000000))))
    (global.set $ready (i32.const 1)))
  (start $count)
  (data (i32.const 16) "startedinit")
  (func (export "agent_init") (result i32)
    (global.set $ready (i32.mul (global.get $ready) (i32.const 11))) (i32.const 0))
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_handle") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.const 16) (i64.const 32))
      (i64.extend_i32_u (global.get $ready)))))"""


def test_hostile_long_but_finite_start_function_is_accepted(tmp_path: Path) -> None:
    """A start function needing several slices (within budget) finishes, then agent_init, then messages."""
    (tmp_path / "slow_start.wat").write_text(SLOW_START)
    d = make_host()
    try:
        spawned = d.ok("agent.spawn", manifest=_spawn_text("slow", tmp_path / "slow_start.wat"))
        assert d.ok("agent.send", agent_id=spawned["agent_id"], text="hi")["reply"] == "startedinit"
        assert d.ok("agent.info", agent_id=spawned["agent_id"])["yields"] >= 2  # it was sliced
        assert d.audit == []
    finally:
        d.host.close()


def test_hostile_sliced_start_runs_agent_init_only_when_asked(tmp_path: Path) -> None:
    """load() alone never runs agent_init, even after a sliced start (a woken snapshot relies on it)."""
    import time

    from openfang.workers.host.spawner import HOST_SPECS
    from openfang.workers.manifest import load_manifest
    from openfang.workers.sandbox import guest_abi as abi
    from openfang.workers.sandbox._wasmtime import Runtime
    from openfang.workers.sandbox.instance import Sandbox, State

    class Services:
        def audit(self, record: dict[str, object]) -> None:
            raise AssertionError(f"nothing to audit: {record}")

    (tmp_path / "slow_start.wat").write_text(SLOW_START)
    runtime = Runtime(HOST_SPECS)
    runtime.start_ticker()
    try:
        m = load_manifest(_spawn_text("slow", tmp_path / "slow_start.wat"))
        sandbox = Sandbox(m, runtime, agent_id="s-1", services=Services())  # type: ignore[arg-type]
        sandbox.load()
        while sandbox.state is State.RUNNING:  # the start function, slice by slice; nothing follows it
            sandbox.refresh(time.monotonic())
            assert sandbox.run_slice() is None
        sandbox.begin_message(abi.user_message("hi"))
        while (outcome := sandbox.run_slice()) is None:
            pass
        assert outcome.ok and outcome.reply == b"s"  # $ready = 1: agent_init (x 11) never ran
        sandbox.close()
    finally:
        runtime.close()


@pytest.mark.parametrize(
    ("guest", "message"),
    [
        ("huge_table.wat", "table minimum size of 100000000 elements exceeds table limits"),
        ("many_tables.wat", "resource limit exceeded: table count too high at 8"),
        ("many_memories.wat", "resource limit exceeded: memory count too high at 3"),
    ],
)
def test_hostile_oversized_tables_and_memories_are_refused_and_audited(guest: str, message: str) -> None:
    """A module declaring a huge table, too many tables or several memories never instantiates."""
    d = make_host()
    try:
        reply = d.call("agent.spawn", manifest=_spawn_text("big", NASTY / guest))
        assert reply.type == "error" and reply.body["code"] == "sandbox_error"
        assert f"instantiation failed: {message}" in reply.body["message"], reply.body
        assert [r["kind"] for r in d.audit] == ["instantiate_refused"]
        assert message in d.audit[0]["detail"]
        assert d.host.runtime_stats() == {"live_stores": 0, "agents": 0}
    finally:
        d.host.close()


@pytest.mark.parametrize(("cap", "expected"), [(None, 9001), (2500, 2001)])
def test_hostile_table_grow_loop_stops_at_the_cap_and_is_metered(cap: int | None, expected: int) -> None:
    """table.grow returns -1 at max_table_elements; the table counts in memory_bytes; table_cap audited."""
    d = make_host()
    try:
        sandbox = "" if cap is None else f"[sandbox.memory]\nmax_table_elements = {cap}\n"
        aid = d.ok("agent.spawn", manifest=_spawn_text("tg", NASTY / "table_grow.wat", sandbox=sandbox))[
            "agent_id"
        ]
        assert d.ok("agent.send", agent_id=aid, text="grow")["reply"] == f"table.grow failed at {expected}"
        info = d.ok("agent.info", agent_id=aid)
        assert info["memory_bytes"] == 65536 + expected * 8 and info["restarts"] == 0
        assert [r["kind"] for r in d.audit] == ["table_cap"]
        assert d.audit[0]["table_elements"] == [expected]
        assert d.ok("agent.send", agent_id=aid, text="again")["reply"] == f"table.grow failed at {expected}"
        assert len(d.audit) == 1  # once per instance, not once per message
    finally:
        d.host.close()


def test_hostile_wrong_handler_signature_is_refused_naming_the_types() -> None:
    """An export with the wrong type is refused at spawn, naming the export, the found and expected types."""
    d = make_host()
    try:
        reply = d.call("agent.spawn", manifest=_spawn_text("w", NASTY / "wrong_handler.wat"))
        assert reply.type == "error" and reply.body["code"] == "sandbox_error"
        assert (
            "export 'agent_handle' has type (i32, i32) -> i32, the guest ABI expects (i32, i32) -> i64"
            in reply.body["message"]
        )
        assert d.host.runtime_stats() == {"live_stores": 0, "agents": 0}
    finally:
        d.host.close()


@pytest.mark.parametrize(
    ("export", "found", "expected"),
    [
        ('(func (export "alloc") (param i64) (result i32) (i32.const 8))', "(i64) -> i32", "(i32) -> i32"),
        ('(func (export "agent_init") (result i64) (i64.const 0))', "() -> i64", "() -> i32"),
        ('(global (export "alloc") i32 (i32.const 0))', "immutable i32 global", "(i32) -> i32"),
    ],
)
def test_hostile_every_abi_export_type_is_checked(
    tmp_path: Path, export: str, found: str, expected: str
) -> None:
    """alloc and the optional agent_init are checked like agent_handle (a global is not a function)."""
    name = export.split('"')[1]
    wat = f"""(module (memory (export "memory") 1) {export}
      {'(func (export "alloc") (param i32) (result i32) (i32.const 8))' if name != "alloc" else ""}
      (func (export "agent_handle") (param i32 i32) (result i64) (i64.const 0)))"""
    (tmp_path / "g.wat").write_text(wat)
    d = make_host()
    try:
        reply = d.call("agent.spawn", manifest=_spawn_text("g", tmp_path / "g.wat"))
        assert f"export '{name}' has type {found}, the guest ABI expects {expected}" in reply.body["message"]
    finally:
        d.host.close()


def test_hostile_random_bytes_are_not_a_webassembly_module(tmp_path: Path) -> None:
    """A module file of random bytes is "not a WebAssembly module", not a utf-8 codec error."""
    (tmp_path / "random.wasm").write_bytes(b"\xff" + os.urandom(4095))
    d = make_host()
    try:
        reply = d.call("agent.spawn", manifest=_spawn_text("r", tmp_path / "random.wasm"))
        assert reply.type == "error" and reply.body["code"] == "sandbox_error"
        assert "random.wasm: not a WebAssembly module: no \\0asm header" in reply.body["message"]
        assert "codec" not in reply.body["message"]
    finally:
        d.host.close()


def test_hostile_cluster_table_maxima_refuse_and_cap_the_default() -> None:
    """[security.sandbox] tables_max/table_elements_max refuse a manifest asking more and cap its default."""
    from openfang.security.capabilities import CapabilityPolicy, SandboxPolicyConfig
    from openfang.workers.host.agent_host import AgentHost, HostParts

    class Sink:
        def __init__(self) -> None:
            self.kinds: list[str] = []

        def append(self, kind: str, /, **fields: object) -> None:
            self.kinds.append(kind)

    sink = Sink()
    policy = CapabilityPolicy(SandboxPolicyConfig(table_elements_max=3000, tables_max=2), audit=sink)
    d = Driver(AgentHost("w-caps", HostParts(tools=default_registry(), capabilities=policy)))
    try:
        greedy = _spawn_text(
            "g", NASTY / "table_grow.wat", sandbox="[sandbox.memory]\nmax_table_elements = 5000\n"
        )
        refused = d.call("agent.spawn", manifest=greedy)
        assert refused.body["code"] == "denied" and "table_elements 5000 > 3000" in refused.body["message"]
        assert sink.kinds == ["capabilities.limits_refused"]
        aid = d.ok("agent.spawn", manifest=_spawn_text("t", NASTY / "table_grow.wat"))["agent_id"]
        assert d.ok("agent.send", agent_id=aid, text="grow")["reply"] == "table.grow failed at 2001"
        reply = d.call("agent.spawn", manifest=_spawn_text("m", NASTY / "many_tables.wat"))
        assert "table count too high" in reply.body["message"]  # 8 tables > tables_max = 2
    finally:
        d.host.close()
