"""Guests that break the ABI: each gets a clear error naming the problem, and the host carries on."""

from __future__ import annotations

from pathlib import Path

import pytest
from sandbox_helpers import make_host, manifest


def _guest(
    handle: str, *, init: str = "(i32.const 0)", alloc: str = "(i32.const 1024)", pages: int = 1
) -> str:
    return f"""(module
  (memory (export "memory") {pages})
  (func (export "alloc") (param i32) (result i32) {alloc})
  (func (export "agent_init") (result i32) {init})
  (func (export "agent_handle") (param i32 i32) (result i64) {handle}))"""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("(i64.const 0x7fff000000000010)", "outside its memory"),
        ("(i64.const -3)", "error -3 (failed)"),
        ("(i64.or (i64.const 0x1000000000000) (i64.const 300000))", "exceeds the 262144-byte limit"),
    ],
)
def test_limits_bad_reply_fails_the_message_not_the_agent(tmp_path: Path, body: str, message: str) -> None:
    """A reply outside memory, an error code or an oversized reply fails that message; the agent stays."""
    (tmp_path / "g.wat").write_text(_guest(body, pages=6))
    d = make_host()
    try:
        aid = d.ok("agent.spawn", manifest=manifest("g", module=str(tmp_path / "g.wat"), model=False))[
            "agent_id"
        ]
        reply = d.call("agent.send", agent_id=aid, text="x")
        assert reply.type == "error" and message in reply.body["message"], reply.body
        info = d.ok("agent.info", agent_id=aid)
        assert info["restarts"] == 0 and info["activity"] == "idle"
    finally:
        d.host.close()


def test_limits_alloc_failure_is_reported(tmp_path: Path) -> None:
    """A guest whose alloc returns 0 cannot receive the message: the sender is told so."""
    (tmp_path / "g.wat").write_text(_guest("(i64.const 0)", alloc="(i32.const 0)"))
    d = make_host()
    try:
        aid = d.ok("agent.spawn", manifest=manifest("g", module=str(tmp_path / "g.wat"), model=False))[
            "agent_id"
        ]
        reply = d.call("agent.send", agent_id=aid, text="x")
        assert reply.type == "error" and "could not allocate" in reply.body["message"]
    finally:
        d.host.close()


def test_limits_failing_agent_init_fails_the_spawn(tmp_path: Path) -> None:
    """agent_init returning non-zero is a failed start: retried per policy, then the spawn fails with it."""
    (tmp_path / "g.wat").write_text(_guest("(i64.const 0)", init="(i32.const 7)"))
    d = make_host()
    try:
        reply = d.call("agent.spawn", manifest=manifest("g", module=str(tmp_path / "g.wat"), model=False))
        assert reply.type == "error" and "agent_init returned 7" in reply.body["message"]
        assert d.host.runtime_stats() == {"live_stores": 0, "agents": 0}
    finally:
        d.host.close()


WASI_GUEST = (
    '(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))'
)


@pytest.mark.parametrize(
    ("wat", "code", "message"),
    [
        ('(module (memory (export "memory") 1))', "sandbox_error", "lacks exports ['alloc', 'agent_handle']"),
        ('(module (import "env" "memory" (memory 1)))', "denied", "imports env.memory (memory)"),
        (
            WASI_GUEST,
            "denied",
            "wasi_snapshot_preview1.fd_write",
        ),
        ('(module (import "env" "teleport" (func)))', "denied", "no such host function"),
        (_guest("(i64.const 0)", pages=100), "sandbox_error", "instantiation failed: memory minimum size"),
    ],
)
def test_limits_unfit_modules_are_refused_with_the_reason(
    tmp_path: Path, wat: str, code: str, message: str
) -> None:
    """Missing exports, foreign imports and a too-large initial memory are refused before the agent exists."""
    (tmp_path / "g.wat").write_text(wat)
    d = make_host()
    try:
        text = manifest(
            "g", module=str(tmp_path / "g.wat"), model=False, sandbox="[sandbox.memory]\nmax_heap_mb = 4\n"
        )
        reply = d.call("agent.spawn", manifest=text)
        assert reply.type == "error" and reply.body["code"] == code and message in reply.body["message"], (
            reply.body
        )
        assert d.host.runtime_stats()["live_stores"] == 0
    finally:
        d.host.close()


def test_limits_llm_agent_out_of_memory_is_restarted_with_fresh_memory() -> None:
    """The built-in agent given a model answer larger than its whole heap (max_heap_mb) fails that message
    and is restarted; the new instance answers again. (A conversation that merely outgrows the heap is
    compacted instead: tests/workers/test_builtin_llm_agent_heap.py.)"""
    from sandbox_helpers import RuleProvider, response

    huge = "x" * 600_000  # the model's message and its answer text: 1.2 MB
    d = make_host(RuleProvider(lambda req: response(huge if req.messages[-1].content == "huge" else "ok")))
    try:
        text = manifest(
            "bot",
            agent='restart = "transient"\nrestart_intensity = 5',
            sandbox="[sandbox.memory]\nmax_heap_mb = 1\n",
        )
        aid = d.ok("agent.spawn", manifest=text)["agent_id"]
        replies = [d.call("agent.send", agent_id=aid, text=t) for t in ("hi", "huge", "hi")]
        assert replies[0].body["reply"] == "ok"
        assert replies[1].type == "error"
        assert "ran out of memory (max_heap_mb=1)" in replies[1].body["message"]
        assert d.ok("agent.info", agent_id=aid)["restarts"] == 1
        assert replies[2].body["reply"] == "ok"  # the restarted agent answers again
    finally:
        d.host.close()


SLOW_INIT = """(module
  (memory (export "memory") 1)
  (data (i32.const 16) "ok")
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_init") (result i32) (local $i i32)
    (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 20000000))))
    (i32.const 0))
  (func (export "agent_handle") (param $p i32) (param $n i32) (result i64)
    (if (i32.eq (i32.load8_u offset=26 (local.get $p)) (i32.const 114)) (then (unreachable)))
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 2)))
)"""


def test_limits_message_sent_during_restart_init_waits_for_it(tmp_path: Path) -> None:
    """A message that arrives while a restarted agent is still in agent_init is queued and answered after."""
    (tmp_path / "g.wat").write_text(SLOW_INIT)
    d = make_host()
    try:
        text = manifest("g", module=str(tmp_path / "g.wat"), model=False, agent="restart_intensity = 5")
        aid = d.ok("agent.spawn", manifest=text)["agent_id"]
        crash = d.submit("agent.send", agent_id=aid, text="r crash")
        while crash.id not in d.replies:  # tiny steps: stop as soon as the crash is answered
            d.replies.update({r.id: r for r in d.host.step(0.001)})
        assert d.replies.pop(crash.id).type == "error"
        assert d.ok("agent.info", agent_id=aid)["activity"] == "running"  # agent_init of the new instance
        assert d.ok("agent.send", agent_id=aid, text="hello")["reply"] == "ok"
        assert d.ok("agent.info", agent_id=aid)["restarts"] == 1
    finally:
        d.host.close()


class _Sink:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, object]]] = []

    def append(self, kind: str, /, **fields: object) -> None:
        self.records.append((kind, fields))


def test_limits_cluster_capability_policy_narrows_what_a_manifest_grants(tmp_path: Path) -> None:
    """security.capabilities applies on top of the manifest: its deny patterns and limits refuse a spawn."""
    from sandbox_helpers import Driver, default_registry

    from openfang.security.capabilities import CapabilityPolicy, SandboxPolicyConfig
    from openfang.workers.host.agent_host import AgentHost, HostParts

    sink = _Sink()
    policy = CapabilityPolicy(
        SandboxPolicyConfig(allow=frozenset({"env.*"}), deny=frozenset({"env.log"}), memory_max_mb=8),
        audit=sink,
    )
    d = Driver(AgentHost("w-caps", HostParts(tools=default_registry(), capabilities=policy)))
    try:
        echo = manifest(
            "echo", module="builtin:echo", model=False, sandbox="[sandbox.memory]\nmax_heap_mb = 4\n"
        )
        assert d.ok("agent.spawn", manifest=echo)["agent_id"]
        logs = '(module (import "env" "log" (func (param i32 i32) (result i32))))'
        (tmp_path / "log.wat").write_text(logs)
        text = manifest(
            "l", module=str(tmp_path / "log.wat"), model=False, sandbox="[sandbox.memory]\nmax_heap_mb = 4\n"
        )
        refused = d.call("agent.spawn", manifest=text)
        assert refused.body["code"] == "denied" and "env.log" in refused.body["message"]
        greedy = manifest(
            "g", module="builtin:echo", model=False, sandbox="[sandbox.memory]\nmax_heap_mb = 64\n"
        )
        refused = d.call("agent.spawn", manifest=greedy)
        assert refused.body["code"] == "denied" and "memory_mb 64 > 8" in refused.body["message"]
        kinds = [kind for kind, _ in sink.records]
        assert "capabilities.import_denied" in kinds and "capabilities.limits_refused" in kinds
    finally:
        d.host.close()


def test_limits_start_function_that_never_returns_fails_the_spawn(tmp_path: Path) -> None:
    """A module whose start function loops forever is cancelled at call_timeout_ms; the spawn is refused."""
    wat = _guest("(i64.const 0)").replace(
        '(memory (export "memory") 1)',
        '(memory (export "memory") 1)\n  (func $s (loop $l (br $l))) (start $s)',
    )
    (tmp_path / "g.wat").write_text(wat)
    d = make_host()
    try:
        text = manifest("g", module=str(tmp_path / "g.wat"), model=False, agent="call_timeout_ms = 200")
        reply = d.call("agent.spawn", manifest=text)
        assert reply.type == "error" and reply.body["code"] == "sandbox_error"
        assert (
            "refused: its start function did not finish within call_timeout_ms=200" in reply.body["message"]
        )
        assert d.host.runtime_stats() == {"live_stores": 0, "agents": 0}
        assert [r["kind"] for r in d.audit] == ["start_refused"]
    finally:
        d.host.close()
