"""Benchmarks of agents as wasmtime sandboxes, in-process (one AgentHost, as one worker has).

    python -m perf.bench_agents        (or through perf.run)

Metrics (system "openfang"):
- ``agent_spawn_cold_ms``: first spawn of the built-in LLM agent in a fresh host (compile + link + instantiate
  + agent_init), p50/p99 over fresh hosts;
- ``agent_spawn_warm_ms``: one more agent of an already compiled module (manifest parse + instantiate +
  agent_init), p50/p99; target 1 ms;
- ``agents_idle_{100,1000,10000}_mb``: process RSS growth for that many idle built-in LLM agents;
- ``agent_idle_kib``: RSS per idle agent at the largest count;
- ``agent_yield_resume_us``: cost of one fuel-slice yield + resume of a running guest (per poll);
- ``agent_message_us``: one message through the built-in LLM agent with a scripted model (one llm_invoke);
- ``agent_tool_turn_us``: one message that makes the model call a tool (2 llm_invoke + 1 tool_call).
"""

from __future__ import annotations

import gc
import hashlib
import statistics
import time
from typing import Any

import psutil

from openfang.protocol.envelope import Envelope
from openfang.workers.host.agent_host import AgentHost, HostParts
from openfang.workers.sandbox._wasmtime import AsyncPoller, EngineOptions, GuestMemory, Instance, Runtime
from openfang.workers.tools.registry import default_registry
from perf.workloads import metric, percentile

TIMEOUT_S = 300
LLM_AGENT = """
[agent]
name = "bench"
tools = ["time_now"]
[agent.model]
provider = "scripted"
default = "ok"
script = [{match = "time", tool = "time_now", args = {}, then = "it is {result}"}]
"""
SPIN = """(module (memory (export "memory") 1)
  (func (export "spin") (param $n i32) (result i32) (local $i i32)
    (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
    (local.get $i)))"""


def _request(host: AgentHost, type_: str, **body: Any) -> Envelope:
    env = Envelope(type=type_, body=body)
    host.submit(env)
    while True:
        for reply in host.step(0.05):
            if reply.id == env.id:
                if reply.is_error:
                    raise RuntimeError(f"{type_} failed: {reply.body}")
                return reply


def _spawn_times(quick: bool) -> list[dict[str, Any]]:
    cold: list[float] = []
    for _ in range(5 if quick else 20):
        host = AgentHost("bench", HostParts(tools=default_registry()))
        t0 = time.perf_counter()
        _request(host, "agent.spawn", manifest=LLM_AGENT)
        cold.append((time.perf_counter() - t0) * 1000)
        host.close()
    host = AgentHost("bench", HostParts(tools=default_registry()))
    warm: list[float] = []
    try:
        for _ in range(200 if quick else 2000):
            t0 = time.perf_counter()
            _request(host, "agent.spawn", manifest=LLM_AGENT)
            warm.append((time.perf_counter() - t0) * 1000)
    finally:
        host.close()
    return [
        metric(
            "agent_spawn_cold_ms",
            statistics.median(cold),
            "ms",
            "lower",
            p50=statistics.median(cold),
            p99=percentile(cold, 99),
        ),
        metric(
            "agent_spawn_warm_ms",
            statistics.median(warm),
            "ms",
            "lower",
            p50=statistics.median(warm),
            p99=percentile(warm, 99),
            target=1.0,
        ),
    ]


def _idle_memory(quick: bool) -> list[dict[str, Any]]:
    proc = psutil.Process()
    out: list[dict[str, Any]] = []
    targets = {100: 5.0, 1000: None, 10_000: 200.0}
    for count in (100, 1000) if quick else (100, 1000, 10_000):
        host = AgentHost("bench", HostParts(tools=default_registry()))
        try:
            _request(host, "agent.spawn", manifest=LLM_AGENT)  # compile first: measure agents, not code
            gc.collect()
            before = proc.memory_info().rss
            for _ in range(count):
                _request(host, "agent.spawn", manifest=LLM_AGENT)
            gc.collect()
            grown = proc.memory_info().rss - before
        finally:
            host.close()
        out.append(metric(f"agents_idle_{count}_mb", grown / 2**20, "MB", "lower", target=targets.get(count)))
        last = (count, grown)
    out.append(metric("agent_idle_kib", last[1] / last[0] / 1024, "KiB", "lower", agents=last[0]))
    return out


class _NoHost:
    def host_sync(self, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> int:
        return -2

    def host_async(self, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> AsyncPoller:
        return lambda: -2


def _yield_resume(quick: bool) -> dict[str, Any]:
    # Two runs of the same loop: one fuel slice per poll vs. one huge slice; the difference per extra
    # poll is the cost of a yield + resume (the guest's own work cancels out).
    code = SPIN.encode()
    digest = hashlib.sha256(code).hexdigest()
    n = 2_000_000 if quick else 10_000_000
    per_poll: list[float] = []
    for slice_fuel in (1_000, 1 << 40):
        rt = Runtime((), options=EngineOptions(fuel_slice=slice_fuel))
        module, _ = rt.compile(code, digest=digest, what="spin")
        inst = Instance(rt, rt.instance_pre(module, digest=digest, what="spin"), max_memory_bytes=1 << 20)
        call = inst.instantiate_call()
        while not call.poll(_NoHost()):
            pass
        inst.after_instantiate()
        inst.set_deadline(3600)
        call = inst.call("spin", (n,), 1)
        polls = 1
        t0 = time.perf_counter()
        while not call.poll(_NoHost()):
            polls += 1
        per_poll.append(time.perf_counter() - t0)
        per_poll.append(polls)
        inst.close()
        rt.close()
    sliced, sliced_polls, whole, whole_polls = per_poll
    cost_us = (sliced - whole) / max(1, sliced_polls - whole_polls) * 1e6
    return metric("agent_yield_resume_us", cost_us, "us", "lower", polls=int(sliced_polls))


def _messages(quick: bool) -> list[dict[str, Any]]:
    host = AgentHost("bench", HostParts(tools=default_registry()))
    out = []
    try:
        n = 300 if quick else 2000
        for name, text in (("agent_message_us", "hello"), ("agent_tool_turn_us", "what time is it")):
            ids = [_request(host, "agent.spawn", manifest=LLM_AGENT).body["agent_id"] for _ in range(20)]
            times = []
            for i in range(n):
                t0 = time.perf_counter()
                _request(host, "agent.send", agent_id=ids[i % len(ids)], text=text)
                times.append((time.perf_counter() - t0) * 1e6)
            out.append(
                metric(
                    name,
                    statistics.median(times),
                    "us",
                    "lower",
                    p50=statistics.median(times),
                    p99=percentile(times, 99),
                )
            )
    finally:
        host.close()
    return out


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every metric of this module (see the module docstring)."""
    return [*_spawn_times(quick), _yield_resume(quick), *_messages(quick), *_idle_memory(quick)]


if __name__ == "__main__":
    for m in run(quick=False):
        print(m)
