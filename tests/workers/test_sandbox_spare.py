"""A spare instance (instantiated ahead, when the worker is idle) makes an agent exactly like a fresh
instantiation does: same replies, same fuel per message, the same memory cap, fuel throttling and refused
escapes. A spare is never used for another module or setting, never made for a module with a start
function, freed when released, and a failure to make one never fails a spawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandbox_helpers import Driver, make_host, manifest

from openfang.workers.sandbox._wasmtime import start_section, wasm_binary

# One guest for every behaviour, chosen by the first byte of the message's text (offset 26 of its JSON).
GUEST = """(module
  (import "env" "log" (func $log (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $hp (mut i32) (i32.const 4096))
  (data (i32.const 16) "ok")
  (data (i32.const 32) "no")
  (func (export "alloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $hp))
    (global.set $hp (i32.add (local.get $p) (local.get $n)))
    (local.get $p))
  (func (export "agent_handle") (param $p i32) (param $n i32) (result i64) (local $c i32) (local $i i32)
    (local.set $c (i32.load8_u offset=26 (local.get $p)))
    (if (i32.eq (local.get $c) (i32.const 103))  ;; "g": grow until the store refuses
      (then (loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
            (return (i64.const -8))))
    (if (i32.eq (local.get $c) (i32.const 98))  ;; "b": burn fuel
      (then (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
                     (br_if $l (i32.lt_u (local.get $i) (i32.const 1500000))))))
    (if (i32.eq (local.get $c) (i32.const 111))  ;; "o": read outside the memory
      (then (drop (i32.load (i32.const -4)))))
    (if (i32.eq (local.get $c) (i32.const 108))  ;; "l": a host call: "ok" when served, "no" when denied
      (then (if (i32.ne (call $log (i32.const 16) (i32.const 2)) (i32.const 0))
              (then (return (i64.or (i64.shl (i64.const 32) (i64.const 32)) (i64.const 2)))))))
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 2)))
)"""
WITH_START = GUEST.replace('(data (i32.const 16) "ok")', '(data (i32.const 16) "ok")\n  (func $s) (start $s)')


def _text(module: Path, sandbox: str = "") -> str:
    limits = (
        "[sandbox.memory]\nmax_heap_mb = 1\n[sandbox.fuel]\nmax_fuel = 2_000_000\nrefuel_interval_ms = 20\n"
    )
    return manifest(
        "g", module=str(module), model=False, sandbox=sandbox or limits, agent='restart = "temporary"'
    )


def _spawn(d: Driver, text: str) -> Any:
    aid = d.ok("agent.spawn", manifest=text)["agent_id"]
    return d.host._agents[aid]


def _pair(d: Driver, text: str) -> tuple[Any, Any]:
    """(an agent instantiated fresh, an agent made from the spare) of ``text``."""
    spawner = d.host._spawner
    fresh = _spawn(d, text)
    assert spawner._spare is None and spawner.spare_wanted()
    d.host.prepare_spare()
    assert spawner._spare is not None and not spawner.spare_wanted()
    inst = spawner._spare[3]
    spared = _spawn(d, text)
    assert spared.sandbox.native_instance() is inst and spawner._spare is None
    return fresh, spared


def _send(d: Driver, agent: Any, text: str) -> tuple[str, Any, int]:
    before = agent.sandbox.fuel_used
    reply = d.call("agent.send", agent_id=agent.agent_id, text=text)
    body = reply.body.get("reply") if reply.type == "agent.send.ok" else reply.body["message"]
    return reply.type, str(body).replace(agent.agent_id, "<id>"), agent.sandbox.fuel_used - before


def test_spare_agent_replies_and_meters_exactly_like_a_fresh_one(tmp_path: Path) -> None:
    """Same state after the spawn, same replies and the same fuel for every message, fresh or spare."""
    (tmp_path / "g.wat").write_text(GUEST)
    d = make_host()
    try:
        fresh, spared = _pair(d, _text(tmp_path / "g.wat"))
        a, b = fresh.sandbox, spared.sandbox
        assert (a.fuel_used, a.memory_bytes(), a.state, a._phase, a._budget) == (
            b.fuel_used,
            b.memory_bytes(),
            b.state,
            b._phase,
            b._budget,
        )
        assert a.manifest is b.manifest and a.granted is b.granted and b.agent_id == spared.agent_id
        for text in ("hello", "hello", "burn", "hello"):
            assert _send(d, fresh, text) == _send(d, spared, text)
        assert a.fuel_used == b.fuel_used > 0
    finally:
        d.host.close()


def test_spare_agent_still_hits_its_memory_cap_and_its_fuel_budget(tmp_path: Path) -> None:
    """A spare's store has the manifest's limits: growing stops at max_heap_mb, burning is throttled."""
    (tmp_path / "g.wat").write_text(GUEST)
    d = make_host()
    try:
        fresh, spared = _pair(d, _text(tmp_path / "g.wat"))
        pending = d.submit("agent.send", agent_id=spared.agent_id, text="burn")
        seen = set()
        while pending.id not in d.replies:
            d.pump()
            seen.add(spared.sandbox.state.value)
        assert "throttled" in seen  # 1.5M iterations > max_fuel=2,000,000 in one refuel interval
        grown = [_send(d, agent, "grow") for agent in (fresh, spared)]
        assert grown[0] == grown[1]
        assert grown[1][0] == "error" and "ran out of memory (max_heap_mb=1)" in grown[1][1]
        assert spared.sandbox.memory_bytes() <= 1 << 20
    finally:
        d.host.close()


def test_spare_agent_escapes_are_refused_like_a_fresh_ones(tmp_path: Path) -> None:
    """A revoked host call is denied and audited, a read outside memory traps: for a spare as for fresh."""
    (tmp_path / "g.wat").write_text(GUEST)
    d = make_host()
    try:
        fresh, spared = _pair(d, _text(tmp_path / "g.wat"))
        assert _send(d, spared, "log")[1] == "ok"
        for agent in (fresh, spared):
            d.host.revoke(agent.agent_id, "log")
        assert _send(d, fresh, "log") == _send(d, spared, "log")
        assert _send(d, spared, "log")[1] == "no"
        denied = [r["agent_id"] for r in d.audit if r["kind"] == "host_call_denied"]
        assert fresh.agent_id in denied and spared.agent_id in denied
        trapped = [_send(d, agent, "oob") for agent in (fresh, spared)]
        assert trapped[0] == trapped[1] and trapped[0][0] == "error"
    finally:
        d.host.close()


def test_spare_is_not_used_for_other_limits_and_is_freed_when_released(tmp_path: Path) -> None:
    """A spare made for one heap cap is closed, not used, by a spawn with another; release frees it and
    live_stores counts agents only."""
    (tmp_path / "g.wat").write_text(GUEST)
    d = make_host()
    try:
        module = tmp_path / "g.wat"
        _spawn(d, _text(module))
        spawner = d.host._spawner
        d.host.prepare_spare()
        inst = spawner._spare[3]
        assert d.host.runtime_stats() == {"live_stores": 1, "agents": 1}
        other = _spawn(d, _text(module, "[sandbox.memory]\nmax_heap_mb = 2\n"))
        assert inst.closed and other.sandbox.native_instance() is not inst
        d.host.prepare_spare()  # for the 2 MB setting now
        runtime = other.sandbox.runtime
        stores = runtime.live_stores
        d.host.release_spare()
        assert runtime.live_stores == stores - 1 and spawner._spare is None and not spawner.spare_wanted()
        assert d.host.runtime_stats() == {"live_stores": 2, "agents": 2}
    finally:
        d.host.close()


def test_spare_is_never_made_for_a_module_with_a_start_function(tmp_path: Path) -> None:
    """A start function is guest code: no spare is made for its module (logged once); spawns still work."""
    (tmp_path / "s.wat").write_text(WITH_START)
    assert start_section(wasm_binary(WITH_START.encode(), what="s")) is True
    assert start_section(wasm_binary(GUEST.encode(), what="g")) is False
    d = make_host()
    try:
        text = _text(tmp_path / "s.wat")
        _spawn(d, text)
        d.host.prepare_spare()
        spawner = d.host._spawner
        assert spawner._spare is None
        second = _spawn(d, text)
        assert not spawner.spare_wanted()  # not tried again for this module
        assert _send(d, second, "hello")[:2] == ("agent.send.ok", "ok")
    finally:
        d.host.close()


def test_spare_failing_to_instantiate_never_fails_a_spawn(tmp_path: Path, monkeypatch: Any) -> None:
    """When making the spare raises, the next spawn instantiates as always and answers."""
    from openfang.workers.host import spawner as spawner_module

    (tmp_path / "g.wat").write_text(GUEST)
    d = make_host()
    try:
        text = _text(tmp_path / "g.wat")
        _spawn(d, text)

        def broken(*_args: Any) -> Any:
            raise MemoryError("no room for a spare")

        monkeypatch.setattr(spawner_module, "prepare_spare", broken)
        d.host.prepare_spare()  # logged, not raised
        assert d.host._spawner._spare is None
        agent = _spawn(d, text)
        assert not d.host._spawner.spare_wanted()  # not tried again for this module
        assert _send(d, agent, "hello")[:2] == ("agent.send.ok", "ok")
    finally:
        d.host.close()
