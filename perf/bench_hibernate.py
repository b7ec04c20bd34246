"""Hibernate and wake of one sandbox (workers/sandbox/snapshot.py), in-process, real wasmtime and real files.

    python -m perf.bench_hibernate        (or through perf.run)

The guest has a 1 MiB heap (16 wasm pages) of which 257 KiB are non-zero: 256 KiB of JSON chat messages (as
the built-in agent's conversation looks) from page 1 on, an entry table in page 0 and 1 KiB of random bytes
in page 12; the rest is zero. Metrics (system "openfang", p50 as the value, p50/p99 beside it):

- ``hibernate_ms``: capture + encode + atomic write (temp file, fdatasync, rename, fsync of the directory) +
  freeing the sandbox; target 5 ms (issue 9);
- ``hibernate_nofsync_ms``: the same without the two fsyncs (``write_snapshot(fsync=False)``);
- ``hibernate_on_loop_ms``: capture + freeing the sandbox only: what the host's loop thread must do itself
  when it hands ``write_snapshot`` (zlib and the OS calls release the GIL) to a thread;
- ``wake_ms``: read + verify + decode the file, a new sandbox of the (compiled, cached) module, restore; the
  agent is then ready for its next message; target 2 ms;
- ``snapshot_capture_ms`` / ``snapshot_encode_ms`` / ``snapshot_decode_ms`` / ``snapshot_restore_ms``: the
  parts, without disk;
- ``snapshot_file_kib`` and ``snapshot_stored_kib``: file size, and non-zero 4 KiB chunks kept before zlib;
- ``snapshot_llm_agent_file_kib`` and ``wake_llm_agent_ms``: the built-in LLM agent after 20 messages;
- through a real daemon (one worker, the Rust counter example, client -> gateway -> worker and back):
  ``daemon_hibernate_ms`` (an ``agent.hibernate`` round trip: capture + free on the worker's loop, the file
  written by its writer thread), ``daemon_send_hibernated_ms`` (an ``agent.send`` to a hibernated agent:
  wake + the message) beside ``daemon_send_running_ms`` (the same message to a running agent), and
  ``daemon_wake_ms`` (an ``agent.wake`` round trip);
- ``daemon_move_ms``: an ``agent.move`` round trip between two workers (client -> gateway -> source worker:
  capture, free, the snapshot file written and fsynced by its writer thread -> gateway -> target worker: a
  re-spawn that restores the file -> gateway -> client) of a guest with a 1 MiB heap (the heap module above,
  ~256 KiB of it written by 8 messages of chat JSON), p50 with p95 and p99 beside it;
  ``daemon_move_inside_ms`` is the gateway's own measure (its ``move_ms``: from the source's request to the
  target's answer).
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openfang.workers.manifest import AgentManifest, load_manifest
from openfang.workers.sandbox import guest_abi as abi
from openfang.workers.sandbox._wasmtime import HostFunctionSpec, Runtime
from openfang.workers.sandbox.instance import DoneJob, Job, Sandbox
from openfang.workers.sandbox.snapshot import (
    capture,
    decode,
    encode,
    hibernate,
    restore,
    wake,
    write_snapshot,
)
from perf.workloads import metric, percentile, summarize

TIMEOUT_S = 300
SPECS = tuple(HostFunctionSpec(name=n, nparams=p, is_async=a) for n, p, a in abi.HOST_FUNCTIONS)
HEAP_WAT = """(module
  (memory (export "memory") 16)
  (global $heap (export "heap_top") (mut i32) (i32.const 65536))
  (func (export "alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $n)))
    (local.get $p))
  (func (export "agent_handle") (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32)) (i64.extend_i32_u (local.get $n))))
)"""
WORDS = [
    "the",
    "weather",
    "tool",
    "time",
    "agent",
    "answer",
    "user",
    "said",
    "please",
    "summarise",
    "invoice",
    "total",
    "amount",
    "due",
]


class _Services:
    """A scripted model for the built-in agent: one short answer per message, no tools."""

    def start_llm(self, sandbox: Sandbox, messages: list[dict[str, Any]]) -> Job:
        reply = f"noted ({len(messages)} messages so far)"
        value = abi.encode_llm_result({"role": "assistant", "content": reply}, reply)
        return DoneJob(len(value), value)

    def start_tools(self, sandbox: Sandbox, request: dict[str, Any]) -> Job:
        return DoneJob(abi.E_UNAVAILABLE)

    def start_capability(self, sandbox: Sandbox, name: str, payload: bytes) -> Job:
        return DoneJob(abi.E_UNAVAILABLE)

    def audit(self, record: dict[str, Any]) -> None:
        pass


def _fill_heap(sandbox: Sandbox) -> None:
    """256 KiB of chat JSON from page 1, an entry table in page 0, 1 KiB of random bytes in page 12."""
    rng = random.Random(9)
    mem = sandbox.native_instance().memory()
    assert mem is not None
    offset, entries = 65536, []
    while offset < 65536 + 256 * 1024 - 600:
        text = " ".join(rng.choice(WORDS) for _ in range(40))
        msg = json.dumps({"role": rng.choice(["user", "assistant"]), "content": text}).encode()
        assert mem.write(offset, msg)
        entries.append((offset, len(msg)))
        offset += (len(msg) + 7) & ~7
    table = b"".join(p.to_bytes(4, "little") + n.to_bytes(4, "little") for p, n in entries)
    assert mem.write(1024, table)
    assert mem.write(12 * 65536 + 512, rng.randbytes(1024))


def _send(sandbox: Sandbox, text: str) -> None:
    sandbox.begin_message(abi.user_message(text))
    while True:
        sandbox.refresh(time.monotonic())
        if sandbox.runnable() and sandbox.run_slice() is not None:
            return


def _timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _ms(name: str, samples: list[float], notes: str, target: float | None = None) -> dict[str, Any]:
    s = summarize(samples)
    return metric(name, s["p50"], "ms", "lower", target=target, p50=s["p50"], p99=s["p99"], notes=notes)


def _heap_metrics(rt: Runtime, manifest: AgentManifest, work: Path, n: int) -> list[dict[str, Any]]:
    services = _Services()
    sandbox = Sandbox(manifest, rt, agent_id="bench-1", services=services)
    sandbox.load()
    _fill_heap(sandbox)
    snap = capture(sandbox)
    data = encode(snap)
    path = work / "bench-1.snap"
    parts = {
        "snapshot_capture_ms": _timed(lambda: capture(sandbox), n),
        "snapshot_encode_ms": _timed(lambda: encode(snap), n),
        "snapshot_decode_ms": _timed(lambda: decode(data), n),
    }

    def restore_fresh() -> None:
        fresh = Sandbox(manifest, rt, agent_id="bench-2", services=services)
        fresh.load()
        t0 = time.perf_counter()
        restore(fresh, snap, fresh=True)
        restore_times.append((time.perf_counter() - t0) * 1000)
        fresh.close()

    restore_times: list[float] = []
    for _ in range(n):
        restore_fresh()
    parts["snapshot_restore_ms"] = restore_times
    sandbox.close()

    hib: dict[bool, list[float]] = {True: [], False: []}
    on_loop: list[float] = []
    wakes: list[float] = []
    write_snapshot(path, snap)
    current = wake(path, manifest, rt, agent_id="bench-1", services=services)
    for fsync in (False, True):  # in phases: writeback started by one kind must not slow the other
        target = work / f"bench-1-{'sync' if fsync else 'nosync'}.snap"
        for _ in range(n):
            t0 = time.perf_counter()
            hibernate(current, target, fsync=fsync)
            hib[fsync].append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            current = wake(target, manifest, rt, agent_id="bench-1", services=services)
            wakes.append((time.perf_counter() - t0) * 1000)
    for _ in range(n):  # what a host's loop must do itself; encode + write can go to a thread
        t0 = time.perf_counter()
        held = capture(current)
        current.close()
        on_loop.append((time.perf_counter() - t0) * 1000)
        write_snapshot(path, held)
        current = wake(path, manifest, rt, agent_id="bench-1", services=services)
    assert capture(current).stored_bytes == snap.stored_bytes  # every cycle kept the whole state
    current.close()
    heap = f"1 MiB heap, {snap.stored_bytes // 1024} KiB non-zero (chat JSON + table + 1 KiB random)"
    out = [
        _ms("hibernate_ms", hib[True], f"{heap}: capture + write (fsync file and dir) + free", target=5.0),
        _ms("hibernate_nofsync_ms", hib[False], f"{heap}: capture + write without fsync + free"),
        _ms("hibernate_on_loop_ms", on_loop, f"{heap}: capture + free (encode + write left to a thread)"),
        _ms("wake_ms", wakes, f"{heap}: read + verify + new sandbox (warm module) + restore", target=2.0),
    ]
    out += [_ms(name, samples, heap) for name, samples in parts.items()]
    out += [
        metric("snapshot_file_kib", len(data) / 1024, "KiB", "lower", notes=f"{heap}, zlib level 1"),
        metric(
            "snapshot_stored_kib", snap.stored_bytes / 1024, "KiB", "lower", notes="non-zero 4 KiB chunks"
        ),
    ]
    return out


def _llm_agent_metrics(rt: Runtime, work: Path, n: int) -> list[dict[str, Any]]:
    manifest = load_manifest('[agent]\nname = "bench"\n[agent.model]\nprovider = "scripted"\n')
    services = _Services()
    agent = Sandbox(manifest, rt, agent_id="llm-1", services=services)
    agent.load()
    for i in range(20):
        _send(agent, f"message {i}: " + " ".join(WORDS))
    path = work / "llm-1.snap"
    info = hibernate(agent, path)
    wakes = []
    for _ in range(n):
        t0 = time.perf_counter()
        woken = wake(path, manifest, rt, agent_id="llm-1", services=services)
        wakes.append((time.perf_counter() - t0) * 1000)
        woken.close()
    notes = f"built-in LLM agent after 20 messages: {info.memory_bytes // 1024} KiB memory"
    return [
        metric("snapshot_llm_agent_file_kib", info.file_bytes / 1024, "KiB", "lower", notes=notes),
        _ms("wake_llm_agent_ms", wakes, notes),
    ]


def _daemon_metrics(n: int) -> list[dict[str, Any]]:
    from perf._cluster import UNLIMITED_CLIENT, BenchCluster

    wasm = Path(__file__).resolve().parents[1] / "examples" / "agents" / "rust" / "counter.wasm"
    manifest = f'[agent]\nname = "counter"\nmodule = "{wasm}"\n[sandbox.memory]\nmax_heap_mb = 8\n'
    limits = "\n[security.ratelimit.agent_requests]\nrate = 0\nburst = 0\n"
    keys = ("hibernate", "hibernated", "running", "wake", "parked_send", "parked_wake")
    timed: dict[str, list[float]] = {k: [] for k in keys}

    def clock(key: str, msg_type: str, body: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        reply = c.call(msg_type, body)
        timed[key].append((time.perf_counter() - t0) * 1000)
        return reply

    with BenchCluster(workers=1, extra=UNLIMITED_CLIENT + limits) as c:
        c.start()
        agent_id = str(c.call("agent.spawn", {"manifest": manifest})["agent_id"])
        ref = {"agent_id": agent_id}
        msg = {"agent_id": agent_id, "text": "tick"}
        for i in range(n):
            clock("running", "agent.send", msg)
            clock("hibernate", "agent.hibernate", ref)
            if i % 2:
                clock("hibernated", "agent.send", msg)
            else:
                clock("wake", "agent.wake", ref)
        count = c.call("agent.info", ref)["messages"]
        assert count == n + n // 2, f"the counter lost messages: {count}"  # every wake kept the count
        for i in range(n):  # the same once the worker has parked it (file written, record let go)
            c.call("agent.hibernate", ref)
            deadline = time.monotonic() + 10
            while c.call("agent.info", ref).get("spawn") != "parked":
                assert time.monotonic() < deadline, "the hibernated agent was never parked"
                time.sleep(0.001)
            clock(
                "parked_send" if i % 2 else "parked_wake",
                "agent.send" if i % 2 else "agent.wake",
                msg if i % 2 else ref,
            )
    notes = "Rust counter example, one worker, through the gateway"
    return [
        _ms("daemon_hibernate_ms", timed["hibernate"], f"{notes}: agent.hibernate round trip"),
        _ms("daemon_wake_ms", timed["wake"], f"{notes}: agent.wake round trip"),
        _ms("daemon_send_hibernated_ms", timed["hibernated"], f"{notes}: agent.send that wakes the agent"),
        _ms("daemon_send_running_ms", timed["running"], f"{notes}: agent.send to a running agent"),
        _ms("daemon_wake_parked_ms", timed["parked_wake"], f"{notes}: agent.wake of a parked agent"),
        _ms(
            "daemon_send_parked_ms",
            timed["parked_send"],
            f"{notes}: agent.send that wakes a parked agent (its record rebuilt, then the wake)",
        ),
    ]


def _move_metrics(n: int) -> list[dict[str, Any]]:
    from perf._cluster import UNLIMITED_CLIENT, BenchCluster

    work = Path(tempfile.mkdtemp(prefix="openfang-move-"))
    module = work / "heap.wat"
    module.write_text(HEAP_WAT)
    manifest = f'[agent]\nname = "heap"\nmodule = "{module}"\n[sandbox.memory]\nmax_heap_mb = 8\n'
    limits = "\n[security.ratelimit.agent_requests]\nrate = 0\nburst = 0\n"
    rng = random.Random(9)
    trips: list[float] = []
    inside: list[float] = []
    try:
        with BenchCluster(workers=2, extra=UNLIMITED_CLIENT + limits) as c:
            c.start()
            agent_id = str(c.call("agent.spawn", {"manifest": manifest, "worker": "workers-0"})["agent_id"])
            for _ in range(8):  # 8 x 32 KiB of chat JSON, each kept where the guest's alloc put it
                chat = json.dumps(
                    [{"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(40))}]
                )
                text = (chat * (32 * 1024 // len(chat) + 1))[: 32 * 1024]
                c.call("agent.send", {"agent_id": agent_id, "text": text})
            memory = int(c.call("agent.info", {"agent_id": agent_id})["memory_bytes"])
            for i in range(n):
                t0 = time.perf_counter()
                moved = c.call("agent.move", {"agent_id": agent_id, "to": f"workers-{(i + 1) % 2}"})
                trips.append((time.perf_counter() - t0) * 1000)
                assert moved["path"] == "snapshot", moved
                inside.append(float(moved["move_ms"]))
            echo = c.call("agent.send", {"agent_id": agent_id, "text": "still here"})
            assert "still here" in echo["reply"], echo  # the guest echoes the message it was given
    finally:
        shutil.rmtree(work, ignore_errors=True)
    notes = f"{memory // 1024} KiB memory, 2 workers, through the gateway, fsynced snapshot file"
    s = summarize(trips)
    return [
        metric(
            "daemon_move_ms",
            s["p50"],
            "ms",
            "lower",
            p50=s["p50"],
            p95=percentile(trips, 95),
            p99=s["p99"],
            notes=f"{notes}: agent.move round trip",
        ),
        _ms("daemon_move_inside_ms", inside, f"{notes}: the gateway's move_ms"),
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every metric of this module (see the module docstring)."""
    n = 50 if quick else 400
    work = Path(tempfile.mkdtemp(prefix="openfang-hibernate-"))
    rt = Runtime(SPECS)
    rt.start_ticker()
    try:
        module = work / "heap.wat"
        module.write_text(HEAP_WAT)
        manifest = load_manifest(f'[agent]\nname = "heap"\nmodule = "{module}"\n')
        out = [*_heap_metrics(rt, manifest, work, n), *_llm_agent_metrics(rt, work, n)]
    finally:
        rt.close()
        shutil.rmtree(work, ignore_errors=True)
    return [*out, *_daemon_metrics(40 if quick else 200), *_move_metrics(30 if quick else 200)]


if __name__ == "__main__":
    for m in run(quick=False):
        print(m)
