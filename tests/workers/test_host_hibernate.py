"""Hibernate and wake inside the agent host: refusals at a non-quiescent point, a module a snapshot cannot
hold, a host without a snapshot directory, a snapshot that cannot be read (restarted fresh), and the two
halves of agent.move (the source lets go by snapshot, a re-spawn restores it) with their refusals."""

from __future__ import annotations

import time
from pathlib import Path

from sandbox_helpers import COUNTER, KV_AGENT, Driver, make_host, manifest, say, spawn_counter

# State in a private global: a snapshot cannot read it back.
HIDDEN_WAT = """(module
  (memory (export "memory") 1)
  (global $secret (mut i32) (i32.const 0))
  (func (export "alloc") (param $n i32) (result i32) (i32.const 1024))
  (func (export "agent_handle") (param $p i32) (param $n i32) (result i64)
    (global.set $secret (i32.add (global.get $secret) (i32.const 1)))
    (i64.const 0))
)"""


def _written(d: Driver, path: Path) -> None:
    end = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < end, f"{path} not written"
        d.pump()
    for _ in range(20):
        d.pump()  # let the host reap the finished write (the in-memory snapshot is dropped)


def test_host_hibernate_refused_while_a_message_is_in_progress(tmp_path: Path) -> None:
    """agent.hibernate with a message in flight is a sandbox_error saying so; the message is answered."""
    d = make_host(snapshot_dir=tmp_path)
    try:
        aid = spawn_counter(d)
        send = d.submit("agent.send", agent_id=aid, text="hi")  # started at once: a call is in progress
        refused = d.call("agent.hibernate", agent_id=aid)
        assert refused.body["code"] == "sandbox_error"
        assert "handling a message" in refused.body["message"] and aid in refused.body["message"]
        assert "message 1 " in d.wait(send).body["reply"]
        assert d.ok("agent.info", agent_id=aid)["state"] == "running"
    finally:
        d.host.close()


def test_host_hibernate_without_snapshot_dir_is_refused() -> None:
    """A host with no data directory refuses agent.hibernate naming the reason; the agent keeps working."""
    d = make_host()
    try:
        aid = spawn_counter(d)
        refused = d.call("agent.hibernate", agent_id=aid)
        assert refused.body["code"] == "sandbox_error" and "data directory" in refused.body["message"]
        assert "message 1 " in say(d, aid)
    finally:
        d.host.close()


def test_host_hibernate_refuses_hidden_state_and_idle_timer_gives_up(tmp_path: Path) -> None:
    """A module with a private mutable global: hibernate is refused (agent untouched), and the idle timer
    stops trying for it instead of failing every time."""
    (tmp_path / "hidden.wat").write_text(HIDDEN_WAT)
    d = make_host(snapshot_dir=tmp_path / "snaps")
    try:
        text = manifest(
            "hidden", module=str(tmp_path / "hidden.wat"), model=False, agent="idle_hibernate_s = 0.05"
        )
        aid = d.ok("agent.spawn", manifest=text)["agent_id"]
        refused = d.call("agent.hibernate", agent_id=aid)
        assert refused.body["code"] == "sandbox_error" and "snapshot" in refused.body["message"]
        d.ok("agent.send", agent_id=aid, text="x")
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            d.pump()
        record = d.ok("agent.info", agent_id=aid)
        assert record["state"] == "running"
        assert d.host._agents[aid].no_hibernate is not None  # the give-up is recorded
        assert not (tmp_path / "snaps" / f"{aid}.snap").exists()
    finally:
        d.host.close()


def test_host_idle_timer_hibernates_and_next_message_wakes(tmp_path: Path) -> None:
    """idle_hibernate_s: the idle agent is hibernated by the loop's timer; the next message wakes it with
    its count; the events say hibernated (why idle) then running (woken)."""
    d = make_host(snapshot_dir=tmp_path)
    try:
        aid = spawn_counter(d, "idle_hibernate_s = 0.05")
        assert "message 1 " in say(d, aid)
        end = time.monotonic() + 10
        while d.ok("agent.info", agent_id=aid)["state"] != "hibernated":
            assert time.monotonic() < end, "not hibernated by the idle timer"
            d.pump()
        assert d.ok("agent.info", agent_id=aid)["activity"] == "hibernated"
        assert "message 2 " in say(d, aid)
        states = [(e["state"], e.get("why")) for e in d.events if e.get("agent_id") == aid]  # type: ignore[attr-defined]
        assert ("hibernated", "idle") in states and ("running", "message") in states
    finally:
        d.host.close()


def test_host_unreadable_snapshot_restarts_fresh_and_answers(tmp_path: Path) -> None:
    """A corrupt snapshot file: the wake fails, the agent restarts fresh (its policy) and the message that
    woke it is still answered, by the new instance."""
    d = make_host(snapshot_dir=tmp_path)
    try:
        aid = spawn_counter(d)
        say(d, aid)
        say(d, aid)
        d.ok("agent.hibernate", agent_id=aid)
        path = tmp_path / f"{aid}.snap"
        _written(d, path)
        d.pump()
        assert aid in d.host._parked and aid not in d.host._agents  # woken from the file, not memory
        data = bytearray(path.read_bytes())
        data[-3] ^= 0xFF
        path.write_bytes(bytes(data))
        assert "message 1 " in say(d, aid)  # a fresh instance: the count started over
        info = d.ok("agent.info", agent_id=aid)
        assert info["state"] == "running" and info["restarts"] == 1
    finally:
        d.host.close()


def test_host_move_answers_messages_already_in_then_the_target_restores_the_count(tmp_path: Path) -> None:
    """agent.move (the source half) waits for the message in progress, refuses new sends with restarting,
    writes the snapshot and lets the agent go; a second host sharing the directory re-spawns it from the
    file (restore: snapshot) and it keeps counting."""
    source = make_host(snapshot_dir=tmp_path)
    target = make_host(snapshot_dir=tmp_path)
    try:
        text = manifest("counter", module=str(COUNTER), model=False)
        aid = str(source.ok("agent.spawn", manifest=text)["agent_id"])
        assert "message 1 " in say(source, aid)
        in_flight = source.submit("agent.send", agent_id=aid, text="hi")
        move = source.submit("agent.move", agent_id=aid, to="w-other")
        late = source.call("agent.send", agent_id=aid, text="hi")  # an agent's direct send meanwhile
        assert late.body["code"] == "restarting" and late.body["retry_after_ms"] > 0, late.body
        assert "message 2 " in source.wait(in_flight).body["reply"]
        moved = source.wait(move).body
        assert moved == {"agent_id": aid, "state": "running", "moved_from": "w-test", "path": "snapshot"}
        assert aid not in source.host.agent_ids()
        spawned = target.ok("agent.spawn", manifest=text, agent_id=aid, resume=True)
        assert spawned["restore"] == "snapshot"
        assert "message 3 " in say(target, aid)
        assert not (tmp_path / f"{aid}.snap").exists()  # restore = "fresh": the file was used once
    finally:
        source.host.close()
        target.host.close()


def test_host_move_refusals_leave_the_agent_running(tmp_path: Path) -> None:
    """Still busy at wait_ms: sandbox_error, the message answered and the agent kept; suspended in the
    middle of a message: refused until resumed; a second move in progress: busy."""
    d = make_host(snapshot_dir=tmp_path)
    try:
        aid = spawn_counter(d)
        send = d.submit("agent.send", agent_id=aid, text="hi")
        busy = d.call("agent.move", agent_id=aid, wait_ms=0)
        assert busy.body["code"] == "sandbox_error" and "still busy" in busy.body["message"], busy.body
        assert "message 1 " in d.wait(send).body["reply"]
        send = d.submit("agent.send", agent_id=aid, text="hi")
        d.ok("agent.suspend", agent_id=aid)
        parked = d.call("agent.move", agent_id=aid)
        assert parked.body["code"] == "sandbox_error" and "resume it first" in parked.body["message"]
        d.ok("agent.resume", agent_id=aid)
        assert "message 2 " in d.wait(send).body["reply"]
        first = d.submit("agent.move", agent_id=aid)
        again = d.call("agent.move", agent_id=aid)
        assert again.body["code"] == "busy", again.body
        assert d.wait(first).body["path"] == "snapshot"
    finally:
        d.host.close()


def _real_llm_host(tmp_path: Path) -> Driver:
    from openfang.workers.host.agent_host import AgentHost, HostParts
    from openfang.workers.tools.registry import default_registry

    return Driver(AgentHost("w-test", HostParts(snapshot_dir=tmp_path, tools=default_registry())))


def test_host_move_carries_the_agents_kv_namespace_to_the_target(tmp_path: Path) -> None:
    """kv_* keys travel in the snapshot: set on the source, moved, read back on the target host; the
    source forgets them."""
    source, target = _real_llm_host(tmp_path), _real_llm_host(tmp_path)
    try:
        aid = str(source.ok("agent.spawn", manifest=KV_AGENT)["agent_id"])
        assert source.ok("agent.send", agent_id=aid, text="remember blue")["reply"] == "stored"
        assert source.ok("agent.move", agent_id=aid, to="w-other")["path"] == "snapshot"
        spawned = target.ok("agent.spawn", manifest=KV_AGENT, agent_id=aid, resume=True)
        assert spawned["restore"] == "snapshot"
        assert "blue" in target.ok("agent.send", agent_id=aid, text="recall")["reply"]
    finally:
        source.host.close()
        target.host.close()


def test_host_snapshot_kv_past_the_limits_restores_the_guest_without_the_keys(tmp_path: Path) -> None:
    """A snapshot whose kv would pass this host's limits (or is not a map) still restores the guest; the
    keys are dropped with a warning, never half loaded."""
    from openfang.workers.sandbox.snapshot import read_snapshot, write_snapshot

    source, target = _real_llm_host(tmp_path), _real_llm_host(tmp_path)
    try:
        aid = str(source.ok("agent.spawn", manifest=KV_AGENT)["agent_id"])
        assert source.ok("agent.send", agent_id=aid, text="remember blue")["reply"] == "stored"
        source.ok("agent.move", agent_id=aid, to="w-other")
        path = tmp_path / f"{aid}.snap"
        snap = read_snapshot(path)
        import dataclasses

        huge = {f"k{i}": "x" for i in range(5000)}  # more keys than a namespace may hold
        write_snapshot(path, dataclasses.replace(snap, meta={**snap.meta, "kv": huge}))
        assert target.ok("agent.spawn", manifest=KV_AGENT, agent_id=aid, resume=True)["restore"] == "snapshot"
        assert "blue" not in target.ok("agent.send", agent_id=aid, text="recall")["reply"]
    finally:
        source.host.close()
        target.host.close()
