"""AgentHost end to end in one process: real wasmtime sandboxes, real threads for blocking LLM calls."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sandbox_helpers import EXAMPLES, Gate, RuleProvider, make_host, manifest, response

NASTY = EXAMPLES / "nasty"


def test_host_spawn_cold_then_warm() -> None:
    """The first agent of a module compiles it (cold); the next reuses the cached InstancePre (warm)."""
    d = make_host()
    try:
        first = d.ok("agent.spawn", manifest=manifest("bot"))
        second = d.ok("agent.spawn", manifest=manifest("bot"))
        assert (first["spawn"], second["spawn"]) == ("cold", "warm")
        assert first["agent_id"] != second["agent_id"]
        assert first["worker"] == "w-test"
    finally:
        d.host.close()


def test_host_builtin_llm_agent_answers_and_uses_tools() -> None:
    """A message goes in, the guest loops llm_invoke -> tool_call -> llm_invoke, the answer comes out."""
    provider = RuleProvider(__import__("sandbox_helpers").weather_rule)
    d = make_host(provider)
    try:
        aid = d.ok(
            "agent.spawn", manifest=manifest("bot", agent='tools = ["time_now"]\nsystem_prompt = "be brief"')
        )["agent_id"]
        first = d.ok("agent.send", agent_id=aid, text="hello")
        assert first["reply"] == "echo: hello [1 user msgs]"
        second = d.ok("agent.send", agent_id=aid, text="what is the weather")
        assert second["reply"] == "tool said 12:00 UTC"
        assert second["usage"]["tool_calls"] == 1 and second["usage"]["prompt_tokens"] == 10
        assert second["usage"]["fuel"] > 0
        third = d.ok("agent.send", agent_id=aid, text="again")
        assert third["reply"] == "echo: again [3 user msgs]"  # the guest kept the conversation
        req = provider.requests[-1]
        assert req.messages[0].role == "system" and req.messages[0].content == "be brief"
        assert [m.role for m in req.messages[1:]] == [
            "user",
            "assistant",
            "user",
            "assistant",
            "tool",
            "assistant",
            "user",
        ]
    finally:
        d.host.close()


def test_host_tool_outside_manifest_is_denied_and_audited() -> None:
    """A tool call the manifest does not list is refused at call time, told to the model, and audited."""
    d = make_host()
    try:
        aid = d.ok("agent.spawn", manifest=manifest("bot", agent='tools = ["time_now"]'))["agent_id"]
        out = d.ok("agent.send", agent_id=aid, text="forbidden")
        assert "denied" in out["reply"] and "shell_exec" in out["reply"]
        assert any(r["kind"] == "tool_denied" and r["tool"] == "shell_exec" for r in d.audit)
    finally:
        d.host.close()


def test_host_max_calls_per_message_stops_a_tool_loop() -> None:
    """A model that asks for tools forever is stopped after max_calls_per_message host calls."""
    d = make_host(RuleProvider(lambda req: response(None, [("time_now", {})])))
    try:
        aid = d.ok(
            "agent.spawn", manifest=manifest("bot", agent='tools = ["time_now"]\nmax_calls_per_message = 5')
        )["agent_id"]
        reply = d.call("agent.send", agent_id=aid, text="forever")
        assert reply.type == "error" and "limit" in reply.body["message"]
        assert d.ok("agent.info", agent_id=aid)["state"] == "running"
    finally:
        d.host.close()


def test_host_blocking_llm_call_parks_only_its_agent() -> None:
    """While one agent waits on a slow LLM call (in a thread), another agent on the host keeps answering."""
    gate = Gate()
    slow = RuleProvider(gate.rule, blocking=True)
    fast = RuleProvider(lambda req: response("fast"))
    d = make_host(llm_factory=lambda cfg: slow if cfg.name == "slow" else fast)
    try:
        slow_id = d.ok("agent.spawn", manifest=manifest("slow") + 'name = "slow"\n')["agent_id"]
        fast_id = d.ok("agent.spawn", manifest=manifest("fast") + 'name = "fast"\n')["agent_id"]
        pending = d.submit("agent.send", agent_id=slow_id, text="hi")
        while not gate.entered.is_set():
            d.pump()
        for _ in range(3):
            assert d.ok("agent.send", agent_id=fast_id, text="x")["reply"] == "fast"
        assert pending.id not in d.replies
        assert d.ok("agent.info", agent_id=slow_id)["activity"] == "waiting"
        gate.event.set()
        assert d.wait(pending).body["reply"] == "released"
    finally:
        gate.event.set()
        d.host.close()


def test_host_infinite_loop_costs_only_its_budget_while_others_answer() -> None:
    """A spinning agent is throttled to its fuel budget per interval; a sibling answers meanwhile."""
    d = make_host()
    try:
        spin = manifest(
            "spinner",
            module=str(NASTY / "infinite_loop.wat"),
            agent='call_timeout_ms = 1500\nrestart = "transient"',
            sandbox="[sandbox.fuel]\nmax_fuel = 2_000_000\nrefuel_interval_ms = 100\n",
            model=False,
        )
        spin_id = d.ok("agent.spawn", manifest=spin)["agent_id"]
        echo_id = d.ok("agent.spawn", manifest=manifest("echo", module="builtin:echo", model=False))[
            "agent_id"
        ]
        pending = d.submit("agent.send", agent_id=spin_id, text="spin")
        t0 = time.monotonic()
        answered = 0
        while time.monotonic() - t0 < 0.6:
            assert '"content":"ping"' in d.ok("agent.send", agent_id=echo_id, text="ping")["reply"]
            answered += 1
        info = d.ok("agent.info", agent_id=spin_id)
        elapsed_intervals = (time.monotonic() - t0) / 0.1 + 1
        # Fuel is enforced per slice (1,000,000): at most one slice over budget per interval.
        assert 0 < info["fuel_used"] <= elapsed_intervals * (2_000_000 + 1_000_000)
        assert answered > 10
        reply = d.wait(pending)
        assert reply.type == "error" and reply.body["code"] == "timeout"
        info = d.ok("agent.info", agent_id=spin_id)
        assert info["restarts"] == 1  # transient + abnormal end: restarted with a fresh instance
    finally:
        d.host.close()


def test_host_suspend_and_resume_mid_call() -> None:
    """A suspended agent's call stays parked (no fuel burnt) and completes after resume."""
    d = make_host()
    try:
        spin = manifest(
            "spinner",
            module=str(NASTY / "infinite_loop.wat"),
            model=False,
            agent="call_timeout_ms = 60000",
            sandbox="[sandbox.fuel]\nmax_fuel = 100_000_000\n",
        )
        aid = d.ok("agent.spawn", manifest=spin)["agent_id"]
        d.submit("agent.send", agent_id=aid, text="spin")
        while d.ok("agent.info", agent_id=aid)["yields"] < 3:
            d.pump()
        assert d.ok("agent.suspend", agent_id=aid)["state"] == "suspended"
        used = d.ok("agent.info", agent_id=aid)["fuel_used"]
        for _ in range(20):
            d.pump()
        info = d.ok("agent.info", agent_id=aid)
        assert info["fuel_used"] == used and info["state"] == "suspended"
        d.ok("agent.resume", agent_id=aid)
        while d.ok("agent.info", agent_id=aid)["fuel_used"] == used:
            d.pump()
        assert d.ok("agent.info", agent_id=aid)["yields"] > 3  # the same call went on: resumed, not restarted
        assert d.ok("agent.info", agent_id=aid)["restarts"] == 0
    finally:
        d.host.close()


def test_host_memory_bomb_gets_failed_allocation_and_host_survives() -> None:
    """memory.grow returns -1 at max_heap_mb; the guest reports it and the host and siblings are fine."""
    d = make_host()
    try:
        bomb = manifest(
            "bomb",
            module=str(NASTY / "memory_bomb.wat"),
            model=False,
            sandbox="[sandbox.memory]\nmax_heap_mb = 4\n",
        )
        aid = d.ok("agent.spawn", manifest=bomb)["agent_id"]
        assert d.ok("agent.send", agent_id=aid, text="boom")["reply"] == "grow failed at page 64"
        assert d.ok("agent.info", agent_id=aid)["memory_bytes"] == 4 << 20
        echo_id = d.ok("agent.spawn", manifest=manifest("echo", module="builtin:echo", model=False))[
            "agent_id"
        ]
        assert "still here" in d.ok("agent.send", agent_id=echo_id, text="still here")["reply"]
    finally:
        d.host.close()


@pytest.mark.parametrize(
    ("policy", "restarted"), [("permanent", True), ("transient", True), ("temporary", False)]
)
def test_host_deep_recursion_traps_only_that_agent(policy: str, restarted: bool) -> None:
    """Stack overflow traps one agent; it is restarted per its policy; a sibling is untouched."""
    d = make_host()
    try:
        rec = manifest(
            "rec", module=str(NASTY / "deep_recursion.wat"), model=False, agent=f'restart = "{policy}"'
        )
        aid = d.ok("agent.spawn", manifest=rec)["agent_id"]
        sibling = d.ok("agent.spawn", manifest=rec)["agent_id"]
        reply = d.call("agent.send", agent_id=aid, text="recurse")
        assert reply.type == "error" and "stack_overflow" in reply.body["message"]
        if restarted:
            assert d.ok("agent.info", agent_id=aid)["restarts"] == 1
            assert d.ok("agent.send", agent_id=aid, text="hello")["reply"] == "ok"
        else:
            assert d.call("agent.info", agent_id=aid).body["code"] == "not_found"
        assert d.ok("agent.send", agent_id=sibling, text="hello")["reply"] == "ok"
        states = [(e["agent_id"], e["state"]) for e in d.events]  # type: ignore[attr-defined]
        assert ((aid, "restarting") in states) is restarted
    finally:
        d.host.close()


def test_host_restart_intensity_exceeded_gives_up_that_agent_only() -> None:
    """More than restart_intensity crashes within the period: the agent is given up, siblings live on."""
    d = make_host()
    try:
        rec = manifest(
            "rec",
            module=str(NASTY / "deep_recursion.wat"),
            model=False,
            agent="restart_intensity = 1\nrestart_period_ms = 60000",
        )
        aid = d.ok("agent.spawn", manifest=rec)["agent_id"]
        sibling = d.ok("agent.spawn", manifest=rec)["agent_id"]
        queued = [d.submit("agent.send", agent_id=aid, text="recurse") for _ in range(3)]
        replies = [d.wait(env) for env in queued]
        assert all(r.type == "error" for r in replies)
        assert d.call("agent.info", agent_id=aid).body["code"] == "not_found"
        assert any(r["kind"] == "agent_gave_up" and r["agent_id"] == aid for r in d.audit)
        assert d.ok("agent.send", agent_id=sibling, text="hi")["reply"] == "ok"
    finally:
        d.host.close()


def test_host_denied_import_refused_before_instantiation() -> None:
    """A module importing a host function the manifest cannot grant never instantiates; the error names it."""
    d = make_host()
    try:
        bad = manifest(
            "bad",
            module=str(NASTY / "denied_import.wat"),
            model=False,
            sandbox='[sandbox.permissions]\ndenied_host_functions = ["process_spawn"]\n',
        )
        reply = d.call("agent.spawn", manifest=bad)
        assert reply.type == "error" and reply.body["code"] == "denied"
        assert "env.process_spawn" in reply.body["message"]
        assert d.host.runtime_stats() == {"live_stores": 0, "agents": 0}
    finally:
        d.host.close()


def test_host_malformed_module_is_a_clear_error() -> None:
    """Garbage after the wasm magic is reported as an invalid module, naming the manifest and module."""
    d = make_host()
    try:
        reply = d.call(
            "agent.spawn", manifest=manifest("bad", module=str(NASTY / "malformed.wasm"), model=False)
        )
        assert reply.type == "error" and reply.body["code"] == "sandbox_error"
        assert (
            "not a valid wasm module" in reply.body["message"] and "malformed.wasm" in reply.body["message"]
        )
    finally:
        d.host.close()


def test_host_digest_pin_mismatch_is_denied() -> None:
    """A module whose sha256 differs from module_sha256 is refused (security layer 13's pin)."""
    d = make_host()
    try:
        pinned = manifest("echo", module="builtin:echo", model=False, agent=f'module_sha256 = "{"0" * 64}"')
        reply = d.call("agent.spawn", manifest=pinned)
        assert reply.type == "error" and reply.body["code"] == "denied" and "sha256" in reply.body["message"]
    finally:
        d.host.close()


def test_host_bad_manifest_reports_every_problem() -> None:
    """agent.spawn with a broken manifest answers bad_config listing each problem with its place."""
    d = make_host()
    try:
        reply = d.call(
            "agent.spawn", manifest='[agent]\nname = "Bad Name"\nbogus = 1\n[sandbox.fuel]\nmax_fuel = -5\n'
        )
        assert reply.body["code"] == "bad_config"
        wheres = [p["where"] for p in reply.body["problems"]]
        assert "agent.toml: [agent] key 'name'" in wheres
        assert "agent.toml: [agent] key 'bogus'" in wheres
        assert "agent.toml: [sandbox.fuel] key 'max_fuel'" in wheres
    finally:
        d.host.close()


def test_host_kill_reclaims_stores() -> None:
    """Killing agents frees their stores at once (live store count back to zero), and later sends fail."""
    d = make_host()
    try:
        ids = [
            d.ok("agent.spawn", manifest=manifest("echo", module="builtin:echo", model=False))["agent_id"]
            for _ in range(20)
        ]
        assert d.host.runtime_stats()["live_stores"] == 20
        for aid in ids:
            assert d.ok("agent.kill", agent_id=aid)["state"] == "dead"
        assert d.host.runtime_stats() == {"live_stores": 0, "agents": 0}
        assert d.call("agent.send", agent_id=ids[0], text="x").body["code"] == "not_found"
    finally:
        d.host.close()


def test_host_service_routes_to_least_loaded_member() -> None:
    """agent.send by service spreads messages over the agents of that service."""
    d = make_host()
    try:
        text = manifest("echo", module="builtin:echo", model=False, agent='service = "classifier"')
        ids = {d.ok("agent.spawn", manifest=text)["agent_id"] for _ in range(3)}
        used = {d.ok("agent.send", service="classifier", text="x")["agent_id"] for _ in range(6)}
        assert used == ids
        assert d.call("agent.send", service="nobody", text="x").body["code"] == "not_found"
    finally:
        d.host.close()


def test_host_thousand_idle_agents() -> None:
    """One host holds 1,000 idle agents; each stays addressable and the host stays responsive."""
    d = make_host()
    try:
        text = manifest("echo", module="builtin:echo", model=False)
        t0 = time.monotonic()
        ids = [d.ok("agent.spawn", manifest=text)["agent_id"] for _ in range(1000)]
        assert len(set(ids)) == 1000 and len(d.ok("agent.list")["agents"]) == 1000
        for aid in ids[::97]:
            assert aid and '"content":"hi"' in d.ok("agent.send", agent_id=aid, text="hi")["reply"]
        assert d.host.runtime_stats()["live_stores"] == 1000
        assert time.monotonic() - t0 < 30  # generous: a guard against pathological slowness, not a benchmark
    finally:
        d.host.close()


def test_host_with_real_scripted_provider_and_tool_registry() -> None:
    """Without injected services the host uses workers.llm (scripted) and workers.tools (time_now, kv)."""
    from sandbox_helpers import Driver

    from openfang.workers.host.agent_host import AgentHost, HostParts
    from openfang.workers.tools.registry import default_registry

    text = """
[agent]
name = "scripted"
tools = ["time_now", "kv_set", "kv_get"]
[agent.model]
provider = "scripted"
default = "no rule"
script = [
  {match = "remember (?P<v>\\\\w+)", tool = "kv_set", args = {key = "k", value = "{v}"}, then = "stored"},
  {match = "recall", tool = "kv_get", args = {key = "k"}, then = "got {result}"},
  {match = "time", tool = "time_now", args = {}, then = "now: {result}"},
]
"""
    d = Driver(AgentHost("w-real", HostParts(tools=default_registry())))
    try:
        aid = d.ok("agent.spawn", manifest=text)["agent_id"]
        assert d.ok("agent.send", agent_id=aid, text="remember blue")["reply"] == "stored"
        assert "blue" in d.ok("agent.send", agent_id=aid, text="recall")["reply"]
        assert d.ok("agent.send", agent_id=aid, text="time please")["reply"].startswith("now: ")
        assert d.ok("agent.send", agent_id=aid, text="other")["reply"] == "no rule"
        reply = d.call("agent.spawn", manifest=text.replace('provider = "scripted"', 'provider = "x"'))
        assert reply.body["code"] == "bad_config"  # validated deeply by workers.llm
    finally:
        d.host.close()


CAPABILITY_GUEST = """(module
  (import "env" "fs_read_scoped" (func $read (param i32 i32) (result i32)))
  (import "env" "host_result" (func $result (param i32 i32) (result i32)))
  (import "env" "log" (func $log (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{\\"path\\":\\"note.txt\\"}")
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_handle") (param $p i32) (param $n i32) (result i64)
    (local $r i32)
    (local.set $r (call $log (local.get $p) (local.get $n)))
    (if (i32.lt_s (local.get $r) (i32.const 0)) (then (return (i64.extend_i32_s (local.get $r)))))
    (local.set $r (call $read (i32.const 16) (i32.const 19)))
    (if (i32.lt_s (local.get $r) (i32.const 0)) (then (return (i64.extend_i32_s (local.get $r)))))
    (drop (call $result (i32.const 4096) (local.get $r)))
    (i64.or (i64.shl (i64.const 4096) (i64.const 32)) (i64.extend_i32_u (local.get $r))))
)"""


def test_host_capability_host_function_runs_its_tool_and_can_be_revoked(tmp_path: Path) -> None:
    """A granted fs_read_scoped import reads under the agent's root; a revoked import is denied, audited."""
    from openfang.workers.tools.registry import ToolContext, default_registry

    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "note.txt").write_text("secret plans")
    (tmp_path / "cap.wat").write_text(CAPABILITY_GUEST)
    d = make_host(
        registry=default_registry(),  # type: ignore[arg-type]
        tool_context=lambda sb: ToolContext(agent_id=sb.agent_id, fs_root=tmp_path / "root"),
    )
    try:
        text = manifest(
            "cap",
            module=str(tmp_path / "cap.wat"),
            model=False,
            sandbox='[sandbox.permissions]\nallowed_host_functions = ["fs_read_scoped"]\n',
        )
        aid = d.ok("agent.spawn", manifest=text)["agent_id"]
        assert "secret plans" in d.ok("agent.send", agent_id=aid, text="read it")["reply"]
        d.host.revoke(aid, "log")
        reply = d.call("agent.send", agent_id=aid, text="again")
        assert reply.type == "error" and "denied" in reply.body["message"]
        assert any(r["kind"] == "host_call_denied" and r["function"] == "log" for r in d.audit)
        without = manifest("cap", module=str(tmp_path / "cap.wat"), model=False)
        refused = d.call("agent.spawn", manifest=without)
        assert refused.body["code"] == "denied" and "env.fs_read_scoped" in refused.body["message"]
    finally:
        d.host.close()


def test_host_kill_returns_guest_memory_to_the_os() -> None:
    """Agents that touched 4 MiB each give that memory back on kill (RSS falls), without waiting for GC."""
    import psutil

    proc = psutil.Process()
    d = make_host()
    try:
        bomb = manifest(
            "bomb",
            module=str(NASTY / "memory_bomb.wat"),
            model=False,
            sandbox="[sandbox.memory]\nmax_heap_mb = 4\n",
        )
        before = proc.memory_info().rss
        ids = [d.ok("agent.spawn", manifest=bomb)["agent_id"] for _ in range(20)]
        for aid in ids:
            assert d.ok("agent.send", agent_id=aid, text="boom")["reply"] == "grow failed at page 64"
        grown = proc.memory_info().rss - before
        assert grown > 40 << 20  # 20 agents x 4 MiB touched
        for aid in ids:
            d.ok("agent.kill", agent_id=aid)
        freed = before + grown - proc.memory_info().rss
        assert freed > grown * 0.6
    finally:
        d.host.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_host_fuel_budget_is_per_refuel_interval_with_an_injected_clock() -> None:
    """With time frozen a spinner burns one interval's budget and stops; each new interval buys one more."""
    clock = FakeClock()
    d = make_host(clock=clock)
    try:
        spin = manifest(
            "spinner",
            module=str(NASTY / "infinite_loop.wat"),
            model=False,
            agent="call_timeout_ms = 3600000",
            sandbox="[sandbox.fuel]\nmax_fuel = 3_000_000\nrefuel_interval_ms = 1000\n",
        )
        aid = d.ok("agent.spawn", manifest=spin)["agent_id"]
        d.submit("agent.send", agent_id=aid, text="spin")
        used = []
        for _ in range(3):
            for _ in range(50):
                d.host.step(0.01)
            used.append(d.ok("agent.info", agent_id=aid)["fuel_used"])
            assert d.ok("agent.info", agent_id=aid)["activity"] == "throttled"
            assert d.host.next_deadline() == clock.now + 1.0  # the refuel moment
            clock.now += 1.0
        # Each interval: the 3M budget, overshooting by at most one 1M slice.
        steps = [b - a for a, b in zip([0, *used], used, strict=False)]
        assert all(3_000_000 <= s <= 4_000_000 for s in steps), steps
    finally:
        d.host.close()


def test_host_module_cache_dir_makes_a_restarted_host_spawn_warm(tmp_path: Path) -> None:
    """A new host (a restarted worker) with the same module cache dir loads compiled code: a warm spawn."""
    from sandbox_helpers import Driver

    from openfang.workers.host.agent_host import AgentHost, HostParts

    text = manifest("echo", module="builtin:echo", model=False)
    kinds = []
    for _ in range(2):
        d = Driver(AgentHost("w-cache", HostParts(module_cache_dir=tmp_path / "cache")))
        try:
            kinds.append(d.ok("agent.spawn", manifest=text)["spawn"])
        finally:
            d.host.close()
    assert kinds == ["cold", "warm"]
    assert len(list((tmp_path / "cache").glob("*.cwasm"))) == 1


def test_host_sandbox_keeps_few_enough_attributes_to_share_dict_keys() -> None:
    """A Sandbox has at most 30 attributes: past that CPython 3.11 stops sharing dict keys (+1.5 KiB)."""
    d = make_host()
    try:
        aid = d.ok("agent.spawn", manifest=manifest("e", module="builtin:echo", model=False))["agent_id"]
        sandbox = d.host._agents[aid].sandbox
        assert len(vars(sandbox)) <= 30, sorted(vars(sandbox))
    finally:
        d.host.close()


def test_host_list_with_ids_answers_only_those_agents_with_short_descriptions() -> None:
    """agent.list with ids (the gateway's page): only the named hosted agents (unknown ids skipped), each
    description cut to 1,024 characters; the worker's figures are in the reply; without ids, every agent."""
    d = make_host()
    try:
        long = "d" * 5000
        text = manifest("echo", module="builtin:echo", model=False, agent=f'description = "{long}"')
        ids = [d.ok("agent.spawn", manifest=text)["agent_id"] for _ in range(4)]
        listed = d.ok("agent.list", ids=[ids[2], "nobody", ids[0]])
        assert [a["agent_id"] for a in listed["agents"]] == [ids[2], ids[0]]
        assert all(len(a["description"]) == 1024 for a in listed["agents"])
        assert [w["worker"] for w in listed["workers"]] == [d.host.worker_id]
        assert d.ok("agent.list", ids=[])["agents"] == []
        assert len(d.ok("agent.list")["agents"]) == 4
    finally:
        d.host.close()
