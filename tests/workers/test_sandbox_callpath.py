"""The sandbox's call path shortcuts, each against the general path: the result area (a parking host call's
result written into the guest's offered bytes instead of a host_result call), call arguments and results
through the instance's word buffer, fuel read per poll, parked host calls forgotten on cancel, and guest
memory read through a view that follows growth."""

from __future__ import annotations

import ctypes
import hashlib
import random
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_helpers import SANDBOX_SPECS, SeenServices, finish, initialized, send_text

from openfang.workers.manifest import load_manifest
from openfang.workers.sandbox import _wasmtime
from openfang.workers.sandbox import guest_abi as abi
from openfang.workers.sandbox._wasmtime import (
    FUEL_TANK,
    AsyncPoller,
    EngineOptions,
    GuestMemory,
    GuestTrap,
    HostFunctionSpec,
    Instance,
    Runtime,
    _memory_data_addr,
    export_memory,
    write_global,
)
from openfang.workers.sandbox.builtin_guests import LLM_AGENT_WAT
from openfang.workers.sandbox.instance import DoneJob, Job, Outcome, Sandbox


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(SANDBOX_SPECS)
    rt.start_ticker()
    yield rt
    rt.close()


def _load(rt: Runtime, tmp_path: Path, wat: str, services: Any, *, name: str = "guest") -> Sandbox:
    module = tmp_path / f"{name}.wat"
    module.write_text(wat)
    manifest = load_manifest(
        f'[agent]\nname = "{name}"\nmodule = "{module}"\ntools = ["lookup"]\n'
        '[agent.model]\nprovider = "scripted"\n'
    )
    return initialized(Sandbox(manifest, rt, agent_id=f"{name}-1", services=services))


@pytest.fixture
def host_results(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The agent ids of every host_result call made (Sandbox.host_sync, counted)."""
    seen: list[str] = []
    real = Sandbox.host_sync

    def counting(self: Sandbox, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> int:
        if name == "host_result":
            seen.append(self.agent_id)
        return real(self, name, mem, args)

    monkeypatch.setattr(Sandbox, "host_sync", counting)
    return seen


class ToolServices(SeenServices):
    """The model asks for the lookup tool once per user message, then answers with every user message and
    every tool result it saw; a tool result's size is the user message's length (so some are long)."""

    def start_llm(self, sandbox: Sandbox, messages: list[dict[str, Any]]) -> Job:
        last = messages[-1]
        if last["role"] == "user":
            call = {"id": f"c{len(messages)}", "name": "lookup", "arguments": {"q": last["content"][:20]}}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            value = abi.encode_llm_result(message, None)
        else:
            users = [m["content"][:30] for m in messages if m["role"] == "user"]
            tools = [m["content"][:30] for m in messages if m["role"] == "tool"]
            reply = f"users {users} tools {tools}"
            value = abi.encode_llm_result({"role": "assistant", "content": reply}, reply)
        return DoneJob(len(value), value)

    def start_tools(self, sandbox: Sandbox, request: dict[str, Any]) -> Job:
        results = [
            {
                "role": "tool",
                "tool_call_id": call["id"],
                "name": call["name"],
                "content": "r" * (3 * len(call["arguments"]["q"])) + call["arguments"]["q"],
                "ok": True,
                "ms": 0.5,
            }
            for call in request["tool_calls"]
        ]
        value = abi.tool_messages(results)
        return DoneJob(len(value), value)


def _until_its_deadline(sandbox: Sandbox) -> tuple[Outcome, int]:
    """Run ``sandbox``'s looping call slice by slice (no slice may end it) until its clock ends it; the
    outcome and the slices run."""
    polls = 0
    while True:
        outcome = sandbox.refresh(time.monotonic())
        if outcome is not None:
            return outcome, polls
        if sandbox.runnable():
            assert sandbox.run_slice() is None
            polls += 1


def test_callpath_result_area_gives_the_replies_host_result_gives(
    runtime: Runtime, tmp_path: Path, host_results: list[str]
) -> None:
    """The built-in LLM agent, which offers its heap as the result area before every model and tool call,
    answers a tool-calling conversation exactly as the same guest offering nothing (every result fetched
    with host_result), and makes no host_result call at all."""
    without = LLM_AGENT_WAT.replace("      (call $offer)\n", "")
    assert LLM_AGENT_WAT.count("      (call $offer)\n") == 2 and "(call $offer)" not in without
    offering = _load(runtime, tmp_path, LLM_AGENT_WAT, ToolServices(), name="offering")
    fetching = _load(runtime, tmp_path, without, ToolServices(), name="fetching")
    texts = ["hello", "x" * 1500, 'quote " and é', "y" * 400, "last"]
    for text in texts:
        a, b = send_text(offering, text), send_text(fetching, text)
        assert a.ok and b.ok, (a.error, b.error)
        assert a.reply == b.reply
    assert b"users ['hello', 'xxxx" in a.reply  # the conversation was kept
    assert offering.counters["tool_calls"] == fetching.counters["tool_calls"] == len(texts)
    assert "offering-1" not in host_results
    # two model results (the tool call, the answer) and a tool result per message
    assert host_results.count("fetching-1") == 3 * len(texts)
    offering.close()
    fetching.close()


# A guest that offers `cap` bytes at 8192 as its result area (at AREA), asks the model once and replies with
# the raw llm_invoke result: from the area when it fit, else fetched with host_result.
AREA_WAT = """(module
  (import "env" "llm_invoke" (func $llm (param i32 i32) (result i32)))
  (import "env" "host_result" (func $result (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global (export "agent_result_area") i32 (i32.const AREA))
  (global $cap (export "cap") (mut i32) (i32.const 0))
  (global $ptr (export "ptr") (mut i32) (i32.const 8192))
  (func (export "alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "agent_handle") (param $p i32) (param $n i32) (result i64)
    (local $r i32) (local $got i32)
    (i32.store (i32.const 64) (local.get $p))
    (i32.store (i32.const 68) (local.get $n))
    (i32.store (i32.const 16) (global.get $ptr))
    (i32.store (i32.const 20) (global.get $cap))
    (local.set $r (call $llm (i32.const 64) (i32.const 8)))
    (if (i32.lt_s (local.get $r) (i32.const 0)) (then (return (i64.extend_i32_s (local.get $r)))))
    (if (i32.gt_u (local.get $r) (global.get $cap))
      (then
        (local.set $got (call $result (i32.const 8192) (local.get $r)))
        (if (i32.lt_s (local.get $got) (i32.const 0)) (then (return (i64.extend_i32_s (local.get $got)))))))
    (i64.or (i64.shl (i64.const 8192) (i64.const 32)) (i64.extend_i32_u (local.get $r))))
)"""


def _set(sandbox: Sandbox, name: str, value: int) -> None:
    write_global(sandbox.native_instance(), name, "i32", struct.pack("<i", value))


def test_callpath_result_area_cap_decides_where_the_result_goes(
    runtime: Runtime, tmp_path: Path, host_results: list[str]
) -> None:
    """A result of at most the offered cap is written at the offered pointer (no host_result); a longer one
    is pending for host_result; either way the guest gets the same bytes."""
    sandbox = _load(runtime, tmp_path, AREA_WAT.replace("AREA", "16"), SeenServices())
    value = abi.encode_llm_result({"role": "assistant", "content": "seen: hi"}, "seen: hi")
    n = len(value)
    for cap, fetched in ((0, 1), (n - 1, 1), (n, 0), (n + 500, 0), (60_000, 0)):
        host_results.clear()
        _set(sandbox, "cap", cap)
        outcome = send_text(sandbox, "hi")
        assert outcome.ok, outcome.error
        assert outcome.reply == value, cap
        assert len(host_results) == fetched, cap
    sandbox.close()


@pytest.mark.parametrize(
    ("area", "ptr", "cap"),
    [
        (1 << 20, 8192, 4096),  # the area itself lies outside the guest's memory
        (16, 65536 - 10, 4096),  # the offered bytes run past the end of memory
        (16, 1 << 30, 4096),  # the offered pointer is far outside
    ],
)
def test_callpath_result_area_outside_memory_fails_the_call(
    runtime: Runtime, tmp_path: Path, area: int, ptr: int, cap: int
) -> None:
    """A result area the host cannot write whole fails the host call with E_INVALID (never half-written,
    never silently left for host_result while the guest looks in its area), and the agent stays usable."""
    sandbox = _load(runtime, tmp_path, AREA_WAT.replace("AREA", str(area)), SeenServices())
    _set(sandbox, "ptr", ptr)
    _set(sandbox, "cap", cap)
    outcome = send_text(sandbox, "hi")
    assert not outcome.ok and "invalid" in str(outcome.error) and not outcome.crashed
    _set(sandbox, "cap", 0)  # offering nothing: the result is pending for host_result, as without an area
    if area == 16:
        assert send_text(sandbox, "hi").ok
    sandbox.close()


VALUES_WAT = """(module
  (import "env" "ask" (func $ask (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "neg32") (result i32) (i32.const -5))
  (func (export "neg64") (result i64) (i64.const -1099511627776))
  (func (export "max64") (result i64) (i64.const 9223372036854775807))
  (func (export "sub") (param i32 i32) (result i32) (i32.sub (local.get 0) (local.get 1)))
  (func (export "sum3") (param i32 i32 i32) (result i32)
    (i32.add (i32.add (local.get 0) (local.get 1)) (local.get 2)))
  (func (export "pair") (result i32 i64) (i32.const -7) (i64.const 3))
  (func (export "none"))
  (func (export "spin") (param $n i32) (result i32) (local $i i32)
    (loop $l
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
    (local.get $i))
  (func (export "ask") (param $x i32) (result i32) (call $ask (local.get $x)))
  (func (export "grow_and_see") (param $pages i32) (result i32) (local $end i32)
    (drop (memory.grow (local.get $pages)))
    (local.set $end (i32.sub (i32.shl (memory.size) (i32.const 16)) (i32.const 1)))
    (i32.store8 (local.get $end) (i32.const 99))
    (call $ask (local.get $end)))
  (func (export "peek") (param $p i32) (result i32) (i32.load8_u (local.get $p)))
  (func (export "ask_spin") (param $n i32) (param $k i32) (result i32) (local $i i32) (local $j i32)
    (local $acc i32)
    (loop $calls
      (local.set $acc (i32.add (i32.mul (local.get $acc) (i32.const 31)) (call $ask (local.get $i))))
      (local.set $j (i32.const 0))
      (loop $spin
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br_if $spin (i32.lt_u (local.get $j) (local.get $k))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $calls (i32.lt_u (local.get $i) (local.get $n))))
    (local.get $acc))
  (func (export "ask_trap") (param $x i32) (result i32) (drop (call $ask (local.get $x))) (unreachable))
  (func (export "ask_grow") (param $pages i32) (result i32)
    (i32.add (call $ask (i32.const 0)) (i32.mul (memory.grow (local.get $pages)) (i32.const 1000))))
)"""


class Asker:
    """``ask(x)``: parks until ``answer`` is set (None: pending); records the byte at x when it can."""

    def __init__(self, answer: int | None = 0) -> None:
        self.answer = answer
        self.bytes_seen: list[bytes | None] = []

    def host_sync(self, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> int:
        raise AssertionError("no sync host function here")

    def host_async(self, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> AsyncPoller | int:
        self.bytes_seen.append(mem.read(args[0], 1) if mem is not None else None)
        return lambda: self.answer


class Answerer(Asker):
    """``ask(x)`` answered when it is made: the result itself (the runtime's shortcut, no poller) when
    ``now``, else a poller that answers at its first poll (the general path); the answer depends on x."""

    def __init__(self, *, now: bool) -> None:
        super().__init__()
        self.now = now

    def host_async(self, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> AsyncPoller | int:
        value = args[0] * 7 - 20
        return value if self.now else (lambda: value)


def _values_instance(rt: Runtime, *, mem_mb: int = 2) -> Instance:
    digest = hashlib.sha256(VALUES_WAT.encode()).hexdigest()
    module, _ = rt.compile(VALUES_WAT.encode(), digest=digest, what="test")
    inst = Instance(rt, rt.instance_pre(module, digest=digest, what="test"), max_memory_bytes=mem_mb << 20)
    call = inst.instantiate_call()
    while not call.poll(Asker()):
        pass
    call.result()
    return inst


@pytest.fixture
def values_rt() -> Iterator[Runtime]:
    rt = Runtime(
        (HostFunctionSpec(name="ask", nparams=1, is_async=True),),
        options=EngineOptions(fuel_slice=10_000, epoch_tick_ms=5),
    )
    rt.start_ticker()
    yield rt
    rt.close()


def _run(inst: Instance, name: str, args: tuple[int, ...], nresults: int = 1, host: Any = None) -> int:
    call = inst.call(name, args, nresults)
    while not call.poll(host or Asker()):
        pass
    return call.result()


def test_callpath_arguments_and_results_round_trip(values_rt: Runtime) -> None:
    """Arguments wrap to i32 as ctypes' c_int32 stores them, i32 and i64 results keep their sign, and calls
    with more arguments or results than the instance's buffer holds give the same values."""
    inst = _values_instance(values_rt)
    assert _run(inst, "neg32", ()) == -5
    assert _run(inst, "neg64", ()) == -(1 << 40)
    assert _run(inst, "max64", ()) == (1 << 63) - 1
    assert _run(inst, "sub", (3, 10)) == -7
    for a, b in ((0xFFFFFFFF, 2**31), (-(2**31), 1), (2**40 + 5, -3)):
        want = ctypes.c_int32(ctypes.c_int32(a).value - ctypes.c_int32(b).value).value
        assert _run(inst, "sub", (a, b)) == want, (a, b)
    assert _run(inst, "sum3", (1, 2, -10)) == -7
    assert _run(inst, "pair", (), nresults=2) == -7
    assert _run(inst, "none", (), nresults=0) == 0
    assert _run(inst, "sub", (100, 1)) == 99  # the buffer is reused after the bigger calls
    inst.close()


def test_callpath_poll_fuel_is_what_the_store_consumed(values_rt: Runtime) -> None:
    """The fuel charged to each poll (one read per poll) adds up to exactly what wasmtime's store reports
    consumed, over a call sliced into many polls."""
    inst = _values_instance(values_rt)
    before = FUEL_TANK - inst.store.get_fuel()
    call = inst.call("spin", (300_000,), 1)
    charged, polls = 0, 0
    while True:
        done = call.poll(Asker())
        charged += inst.last_poll_fuel
        polls += 1
        if done:
            break
    assert call.result() == 300_000 and polls > 10
    assert charged == FUEL_TANK - inst.store.get_fuel() - before > 300_000
    inst.close()


def test_callpath_parked_host_call_is_forgotten_when_cancelled_or_done(values_rt: Runtime) -> None:
    """Without a finalizer callback, a host call's pending entry still goes: when its continuation
    completes, and when the call parked on it is cancelled (or its instance closed)."""
    inst = _values_instance(values_rt)
    host = Asker(answer=None)
    call = inst.call("ask", (5,), 1)
    assert not call.poll(host) and len(values_rt._pending) == 1  # parked
    host.answer = 41
    while not call.poll(host):
        pass
    assert call.result() == 41 and values_rt._pending == {}
    host.answer = None
    call = inst.call("ask", (5,), 1)
    assert not call.poll(host) and len(values_rt._pending) == 1
    call.cancel()
    assert values_rt._pending == {}
    call = inst.call("ask", (5,), 1)
    assert not call.poll(host) and len(values_rt._pending) == 1
    inst.close()
    assert values_rt._pending == {}


def test_callpath_memory_view_follows_a_moving_growth(values_rt: Runtime) -> None:
    """A guest that grows its memory past the growth reservation (the memory moves) within a call: the
    host call that follows reads the new bytes, the host's writes after the poll land where the guest reads,
    and every read of the instance's memory equals a fresh (untracked) view's and ctypes.string_at's."""
    inst = _values_instance(values_rt, mem_mb=64)
    mem = inst.memory()
    assert mem is not None and mem.write(100, b"before")
    host = Asker(answer=0)
    assert _run(inst, "grow_and_see", (200,), host=host) == 0  # 12.5 MiB more: past the 8 MiB reservation
    assert host.bytes_seen == [b"c"]  # 99
    size = 201 * 65536
    assert mem.size() == size and mem.read(100, 6) == b"before"
    fresh = export_memory(inst, "memory")
    assert fresh is not None
    rng = random.Random(3)
    for _ in range(300):
        ptr = rng.randrange(0, size + 10)
        n = rng.choice((0, 1, 7, 100, 4096))
        data = bytes(rng.randrange(256) for _ in range(min(n, 64))) * (n // 64 + 1)
        data = data[:n]
        assert mem.write(ptr, data) == (ptr + n <= size)
        got = mem.read(ptr, n)
        assert got == fresh.read(ptr, n)
        if ptr + n <= size:
            assert got == data
            base = _memory_data_addr(mem._ctx_at, mem._mem_at)  # where wasmtime says the memory is now
            assert ctypes.string_at(base + ptr, n) == data
            if n:
                assert _run(inst, "peek", (ptr,)) == data[0]
        else:
            assert got is None
    assert mem.read(0, size) == fresh.read(0, size) and mem.read(0, size + 1) is None
    assert mem.read(-1, 1) is None and mem.read(0, -1) is None and not mem.write(-1, b"x")
    assert mem.read_many([(0, 6), (size - 1, 1)], max_total=7) is not None
    assert mem.read_many([(0, 6), (size - 1, 1)], max_total=6) is None
    assert mem.read_many([(0, 6), (size, 1)], max_total=100) is None
    inst.close()


def test_callpath_time_burning_guest_yields_at_every_tick_through_the_sandbox(
    runtime: Runtime, tmp_path: Path
) -> None:
    """The epoch deadline is set again only after a tick, and a guest that burns time with little fuel is
    still preempted at every tick (polled through Sandbox.run_slice), then stopped at its call deadline."""
    wat = """(module (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "agent_handle") (param i32 i32) (result i64)
        (loop $l (memory.fill (i32.const 0) (i32.const 7) (i32.const 65536)) (br $l))
        (i64.const 0)))"""
    module = tmp_path / "burn.wat"
    module.write_text(wat)
    manifest = load_manifest(f'[agent]\nname = "burn"\nmodule = "{module}"\ncall_timeout_ms = 300\n')
    sandbox = Sandbox(manifest, runtime, agent_id="burn-1", services=SeenServices())
    sandbox.load()
    sandbox.begin_message(b"{}")
    t0 = time.monotonic()
    outcome, polls = _until_its_deadline(sandbox)
    assert outcome.limit == "deadline" and not outcome.ok
    assert polls >= 5 and time.monotonic() - t0 < 5
    sandbox.close()


def test_callpath_snapshot_of_the_llm_agent_before_the_result_area_wakes_in_the_new_one(
    runtime: Runtime, tmp_path: Path, host_results: list[str]
) -> None:
    """An agent hibernated by a worker whose built-in LLM agent had no result area wakes in today's with its
    conversation, and its next model call takes the result area (no host_result call)."""
    from openfang.workers.sandbox.builtin_guests import builtin_digest, snapshot_fits
    from openfang.workers.sandbox.snapshot import hibernate, wake

    old = (Path(__file__).resolve().parent / "guests" / "llm_agent_before_result_area.wat").read_text()
    old_digest = hashlib.sha256(old.encode()).hexdigest()
    assert old_digest != builtin_digest("llm-agent") and snapshot_fits(
        old_digest, builtin_digest("llm-agent")
    )
    agent = _load(runtime, tmp_path, old, SeenServices(), name="old")
    assert send_text(agent, "my name is Ada").reply == b"seen: my name is Ada"
    assert host_results == ["old-1"]
    hibernate(agent, tmp_path / "a-1.snap")
    manifest = load_manifest('[agent]\nname = "bot"\n[agent.model]\nprovider = "scripted"\n')
    woken = wake(tmp_path / "a-1.snap", manifest, runtime, agent_id="old-1", services=SeenServices())
    try:
        assert woken.module_digest == builtin_digest("llm-agent")
        assert send_text(woken, "who am I?").reply == b"seen: my name is Ada | who am I?"
        assert host_results == ["old-1"]
    finally:
        woken.close()


def test_callpath_looping_guest_is_throttled_at_its_fuel_budget(runtime: Runtime, tmp_path: Path) -> None:
    """A guest that never returns is throttled once it has spent max_fuel in the refuel interval (the fuel
    read once per poll, the deadline set only after ticks), and the fuel it is charged is what its store
    consumed."""
    wat = """(module (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "agent_handle") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0)))"""
    sandbox = _run_until_throttled(runtime, tmp_path / "loop.wat", wat)
    sandbox.close()


def _run_until_throttled(runtime: Runtime, module: Path, wat: str, model: str = "") -> Sandbox:
    """A message to the looping guest ``wat`` (max_fuel 5,000,000 per minute), polled until it stops being
    runnable: throttled, having spent max_fuel (within two slices), charged every unit its store spent."""
    module.write_text(wat)
    manifest = load_manifest(
        f'[agent]\nname = "loop"\nmodule = "{module}"\ncall_timeout_ms = 60000\n{model}'
        "[sandbox.fuel]\nmax_fuel = 5_000_000\nrefuel_interval_ms = 60000\n"
    )
    sandbox = Sandbox(manifest, runtime, agent_id="loop-1", services=SeenServices())
    sandbox.load()
    before = sandbox.fuel_used
    sandbox.begin_message(b"{}")
    polls = 0
    while sandbox.runnable():
        assert sandbox.run_slice() is None
        polls += 1
        assert polls < 100
    assert sandbox.state.value == "throttled"
    spent = sandbox.fuel_used - before
    assert 5_000_000 <= spent < 5_000_000 + 2 * runtime.options.fuel_slice
    inst = sandbox.native_instance()
    assert sandbox.fuel_used == FUEL_TANK - inst.store.get_fuel()  # every unit the store spent, charged
    return sandbox


def test_callpath_growth_past_the_cap_fails_and_the_view_keeps_the_old_size(values_rt: Runtime) -> None:
    """memory.grow past the store's cap returns -1 inside a call (the guest goes on), the instance's memory
    keeps its size, and a host access past it is refused, not made through a stale view."""
    inst = _values_instance(values_rt, mem_mb=1)  # 16 pages at most
    mem = inst.memory()
    assert mem is not None and mem.size() == 65536
    assert _run(inst, "grow_and_see", (100,), host=Asker(answer=7)) == 7  # the grow failed, the call went on
    assert mem.size() == 65536
    assert mem.read(65535, 1) == b"c" and mem.read(65536, 1) is None and not mem.write(65536, b"x")
    assert _run(inst, "grow_and_see", (15,), host=Asker(answer=0)) == 0  # up to the cap: fine
    assert mem.size() == 16 * 65536 and mem.read(16 * 65536 - 1, 1) == b"c"
    inst.close()


def _polled(inst: Instance, name: str, args: tuple[int, ...], host: Any) -> tuple[int | str, int, int]:
    """(result or trap code, polls, fuel charged) of one call polled to its end."""
    call = inst.call(name, args, 1)
    polls = fuel = 0
    while True:
        done = call.poll(host)
        polls += 1
        fuel += inst.last_poll_fuel
        if done:
            break
        assert polls < 10_000, f"{name} never finished"
    try:
        return call.result(), polls, fuel
    except GuestTrap as exc:
        return exc.trap_code, polls, fuel


def test_callpath_host_call_answered_at_once_meters_and_ends_as_the_general_path(values_rt: Runtime) -> None:
    """A host call whose result is handed back at once (a native continuation, no pending entry) gives the
    guest the same values, fuel sliced into the same polls with the same fuel charged, the same trap after it
    and the same failed grow past the cap as a poller answering at its first poll; no entry is ever made."""
    seen = []
    for now in (False, True):
        inst = _values_instance(values_rt, mem_mb=1)
        host = Answerer(now=now)
        start = values_rt._next_pending
        runs = [
            _polled(inst, "ask_spin", (40, 2_000), host),  # 40 host calls between fuel slices (10k each)
            _polled(inst, "ask_spin", (3, 0), host),
            _polled(inst, "ask_trap", (5,), host),
            _polled(inst, "ask", (-3,), host),  # the instance is usable after the trap
            _polled(inst, "ask_grow", (100,), host),  # past the 16-page cap: memory.grow gave -1
            _polled(inst, "ask_grow", (1,), host),
        ]
        assert runs[0][1] > 5 and runs[2][0] == "unreachable" and runs[3][0] == -41
        assert runs[4][0] == -20 - 1000 and runs[5][0] == -20 + 1000
        assert values_rt._pending == {}
        made = values_rt._next_pending - start
        assert made == (0 if now else 40 + 3 + 1 + 1 + 2)
        seen.append(runs)
        inst.close()
    assert seen[0] == seen[1]


def test_callpath_host_call_answered_at_once_without_a_native_continuation_takes_the_pending_path(
    values_rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where libc's abs cannot serve as the continuation (_DONE_AT 0: another ABI), an answer handed back at
    once goes through a pending entry, with the same values, polls and fuel as the native path."""
    seen = []
    for native in (True, False):
        if not native:
            monkeypatch.setattr(_wasmtime, "_DONE_AT", 0)
        inst = _values_instance(values_rt, mem_mb=1)
        start = values_rt._next_pending
        runs = [
            _polled(inst, "ask_spin", (3, 0), Answerer(now=True)),
            _polled(inst, "ask", (-3,), Answerer(now=True)),
        ]
        assert values_rt._pending == {}
        assert values_rt._next_pending - start == (0 if native else 3 + 1)
        seen.append(runs)
        inst.close()
    assert seen[0] == seen[1]


def test_callpath_host_call_answered_at_once_then_a_time_burning_guest_meets_its_deadline(
    runtime: Runtime, tmp_path: Path
) -> None:
    """A model call answered when it is made (a done job) and then a guest that burns time without fuel: it
    is still preempted at the epoch ticks and stopped at its call deadline; a revoked host function is
    refused through the same shortcut (E_DENIED to the guest, audited)."""
    wat = """(module
      (import "env" "llm_invoke" (func $llm (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "agent_handle") (param i32 i32) (result i64) (local $r i32)
        (local.set $r (call $llm (i32.const 0) (i32.const 0)))
        (if (i32.lt_s (local.get $r) (i32.const 0)) (then (return (i64.extend_i32_s (local.get $r)))))
        (loop $l (memory.fill (i32.const 0) (i32.const 7) (i32.const 65536)) (br $l))
        (i64.const 0)))"""
    module = tmp_path / "ask_burn.wat"
    module.write_text(wat)
    manifest = load_manifest(
        f'[agent]\nname = "burn"\nmodule = "{module}"\ncall_timeout_ms = 300\n'
        '[agent.model]\nprovider = "scripted"\n'
    )
    services = Audits()
    sandbox = Sandbox(manifest, runtime, agent_id="burn-1", services=services)
    sandbox.load()
    sandbox.begin_message(b"{}")
    t0 = time.monotonic()
    outcome, polls = _until_its_deadline(sandbox)
    assert outcome.limit == "deadline" and not outcome.ok and outcome.crashed
    assert polls >= 5 and time.monotonic() - t0 < 5 and sandbox.counters["llm_calls"] == 1
    assert runtime._pending == {}
    sandbox.close()
    sandbox = Sandbox(manifest, runtime, agent_id="burn-2", services=services)
    sandbox.load()
    sandbox.revoke("llm_invoke")
    sandbox.begin_message(b"{}")
    outcome = finish(sandbox)
    assert not outcome.ok and f"error {abi.E_DENIED}" in str(outcome.error)
    assert services.records[-1]["kind"] == "host_call_denied" and services.records[-1]["agent_id"] == "burn-2"
    assert sandbox.counters["llm_calls"] == 0 and runtime._pending == {}
    sandbox.close()


def test_callpath_host_call_answered_at_once_then_a_looping_guest_is_throttled(
    runtime: Runtime, tmp_path: Path
) -> None:
    """After a model call answered when it is made, a guest that never returns is throttled once it has
    spent max_fuel in the refuel interval, charged every unit its store consumed."""
    wat = """(module
      (import "env" "llm_invoke" (func $llm (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "agent_handle") (param i32 i32) (result i64)
        (drop (call $llm (i32.const 0) (i32.const 0)))
        (loop $l (br $l))
        (i64.const 0)))"""
    sandbox = _run_until_throttled(
        runtime, tmp_path / "ask_loop.wat", wat, '[agent.model]\nprovider = "scripted"\n'
    )
    assert sandbox.counters["llm_calls"] == 1
    assert runtime._pending == {}
    sandbox.close()


class Audits(SeenServices):
    """SeenServices that keeps the audit records."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []

    def audit(self, record: dict[str, Any]) -> None:
        self.records.append(record)


def test_callpath_gather_and_unpack_read_what_a_copy_then_parse_reads(values_rt: Runtime) -> None:
    """read_gather (the iovec array read in place) and unpack (no copy) give what reading the bytes, then
    parsing them, gives: every range, and None for an array or a range outside memory, an array that is not
    whole pairs, or more than max_total bytes in all."""
    inst = _values_instance(values_rt, mem_mb=1)
    mem = inst.memory()
    assert mem is not None
    size = mem.size()
    rng = random.Random(11)
    assert mem.write(0, bytes(rng.randrange(256) for _ in range(4096)))
    pair = struct.Struct("<II")

    def copied(ptr: int, length: int, max_total: int) -> list[bytes] | None:
        raw = mem.read(ptr, length)
        if raw is None:
            return None
        try:
            ranges = abi.parse_iovecs(raw)
        except ValueError:
            return None
        return mem.read_many(ranges, max_total=max_total)

    for _ in range(2000):
        count = rng.randrange(0, 5)
        ranges = [
            (rng.choice((0, 100, size - 8, size - 1, size, size + 5, 2**32 - 1)), rng.randrange(0, 64))
            if rng.random() < 0.2
            else (rng.randrange(0, 4096), rng.randrange(0, 300))
            for _ in range(count)
        ]
        array = b"".join(pair.pack(p, n) for p, n in ranges)
        at = rng.choice((5000, size - len(array), size - len(array) + 4, size + 8, -8))
        length = len(array) - rng.choice((0, 0, 0, 3, 8)) if array else rng.choice((0, 8))
        if at >= 0 and at + len(array) <= size:
            assert mem.write(at, array)
        max_total = rng.choice((10_000, 300, 0))
        assert mem.read_gather(at, length, max_total=max_total) == copied(at, length, max_total)
        ptr = rng.choice((0, 8, size - 8, size - 7, size, -1))
        raw = mem.read(ptr, 8)
        assert mem.unpack(pair, ptr) == (pair.unpack(raw) if raw is not None else None)
    inst.close()


def test_callpath_footprint_is_memory_plus_tables(values_rt: Runtime) -> None:
    """Instance.footprint (the memory meter's one step) equals memory_size() + table_bytes(): before the
    tables are looked up, for a module without a table, after the guest grows its memory, and for a module
    whose private table grows."""
    inst = _values_instance(values_rt, mem_mb=4)
    assert inst.footprint() == inst.memory_size() + inst.table_bytes() == 65536
    _run(inst, "grow_and_see", (2,), host=Asker(answer=0))
    assert inst.footprint() == inst.memory_size() + inst.table_bytes() == 3 * 65536
    inst.close()
    wat = b"""(module (memory (export "memory") 1) (table 2 funcref)
      (func (export "tgrow") (result i32) (table.grow (ref.null func) (i32.const 3))))"""
    digest = hashlib.sha256(wat).hexdigest()
    module, _ = values_rt.compile(wat, digest=digest, what="test")
    inst = Instance(
        values_rt, values_rt.instance_pre(module, digest=digest, what="test"), max_memory_bytes=1 << 20
    )
    call = inst.instantiate_call()
    while not call.poll(Asker()):
        pass
    call.result()
    assert inst.footprint() == 65536 + 2 * 8
    assert _run(inst, "tgrow", ()) == 2
    assert inst.footprint() == inst.memory_size() + inst.table_bytes() == 65536 + 5 * 8
    inst.close()


def test_callpath_deadline_ticks_of_a_past_deadline_is_one_tick(runtime: Runtime) -> None:
    """run_slice hands set_deadline the time left unclamped: a deadline already past gives the one tick a
    deadline of now gives (the smallest there is), never zero or fewer."""
    for left in (-1000.0, -0.5, -1e-9, 0.0):
        assert runtime.deadline_ticks(left) == runtime.deadline_ticks(0.0) == 1
    assert runtime.deadline_ticks(1.0) > 1


def test_callpath_word_argument_passes_its_value_as_is() -> None:
    """A prebuilt word argument (``_word``) reaches a C function as exactly its pointer-sized value, from 0
    and the call counts to addresses and values past 32 bits (a prototype without argtypes passes it as it
    is: an off-by-one address or a truncation fails this)."""
    labs = ctypes.PYFUNCTYPE(ctypes.c_long)(("labs", ctypes.CDLL(None)))
    for value in (0, 1, 2, 7, 0xFFFFFFFF, 1 << 32, (1 << 47) + 12345, (1 << 62) + 3):
        assert labs(_wasmtime._word(value)) == value
    assert [labs(w) for w in _wasmtime._COUNT_WORDS] == [0, 1, 2]


def test_callpath_call_words_are_made_for_the_first_message_and_dropped_at_close(
    values_rt: Runtime, runtime: Runtime, tmp_path: Path
) -> None:
    """Calls give the same values with and without the prebuilt call words; an instance holds none until
    its first message (an agent only spawned, agent_init run, pays nothing for them), then they name its
    context and its call buffer's slots, the memory's size read shares the context's word, and close
    drops them."""
    inst = _values_instance(values_rt)
    assert _run(inst, "sub", (9, 2)) == 7 and _run(inst, "neg64", ()) == -(1 << 40)
    assert inst._refs is None
    refs = inst._call_words()
    assert _run(inst, "sub", (9, 2)) == 7 and _run(inst, "neg64", ()) == -(1 << 40)
    assert _run(inst, "sub", (1, 2)) == -1 and inst._refs is refs
    labs = ctypes.PYFUNCTYPE(ctypes.c_long)(("labs", ctypes.CDLL(None)))
    at = inst._words_at
    assert [labs(r) for r in refs] == [
        inst._ctx_at,
        at,
        at + _wasmtime._RESULT_OFFSET,
        at + _wasmtime._TRAP_OFFSET,
        at + _wasmtime._ERROR_OFFSET,
        at + _wasmtime._FUEL_OFFSET,
    ]
    mem = inst.memory()
    assert mem is not None and mem.size() == 65536 and mem._size_args is not None
    assert mem._size_args[0] is refs[0] and labs(mem._size_args[1]) == mem._mem_at
    inst.close()
    assert inst._refs is None
    sandbox = _load(runtime, tmp_path, LLM_AGENT_WAT, SeenServices(), name="llm")
    native = sandbox.native_instance()
    assert native._refs is None  # spawned, agent_init run
    sandbox.begin_message(b'{"role":"user","content":"hi"}')
    assert native._refs is not None
    sandbox.close()


def test_callpath_slice_after_epoch_ticks_sets_the_deadline_ahead_again(
    runtime: Runtime, tmp_path: Path
) -> None:
    """run_slice skips the epoch deadline's native call only while the epoch has not ticked since it was
    set: after ticks seen by another agent's polls, a short message's calls still finish in their first
    poll each (a deadline left behind would make them yield at once), its deadline set at the current
    tick."""
    quick = """(module (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "agent_handle") (param i32 i32) (result i64) (i64.const 0)))"""
    burn = """(module (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "agent_handle") (param i32 i32) (result i64)
        (loop $l (memory.fill (i32.const 0) (i32.const 7) (i32.const 65536)) (br $l))
        (i64.const 0)))"""
    sandboxes = []
    for name, wat in (("quick", quick), ("burn", burn)):
        module = tmp_path / f"{name}.wat"
        module.write_text(wat)
        manifest = load_manifest(f'[agent]\nname = "{name}"\nmodule = "{module}"\ncall_timeout_ms = 60000\n')
        sandbox = Sandbox(manifest, runtime, agent_id=f"{name}-1", services=SeenServices())
        sandbox.load()
        sandboxes.append(sandbox)
    sandbox, burner = sandboxes
    inst = sandbox.native_instance()
    burner.begin_message(b"{}")
    for _ in range(3):
        ticks = runtime.ticks
        for _ in range(10_000):  # the epoch moves on while another agent runs
            if runtime.ticks >= ticks + 3:
                break
            assert burner.run_slice() is None
        assert runtime.ticks >= ticks + 3
        sandbox.begin_message(b"{}")
        outcome = sandbox.run_slice()  # alloc (no inbox), then agent_handle: each done in one poll
        outcome = outcome or sandbox.run_slice()
        assert outcome is not None and outcome.ok and sandbox.counters["yields"] == 0
        assert inst._deadline_tick == runtime.ticks
    for sb in sandboxes:
        sb.close()


ASK2_WAT = """(module
  (import "env" "ask2" (func $ask2 (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "ask2") (param i32 i32) (result i32) (call $ask2 (local.get 0) (local.get 1)))
  (func (export "ask2_twice") (param i32 i32) (result i32)
    (i32.sub (call $ask2 (local.get 0) (local.get 1)) (call $ask2 (local.get 1) (local.get 0)))))"""


class Answerer2:
    """``ask2(a, b)``: ``a * 7 - b``, answered at once (``now``) or by a poller at its first poll."""

    def __init__(self, *, now: bool) -> None:
        self.now = now

    def host_sync(self, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> int:
        raise AssertionError("no sync host function here")

    def host_async(self, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> AsyncPoller | int:
        value = args[0] * 7 - args[1]
        return value if self.now else (lambda: value)


@pytest.mark.parametrize("limit", [1, 2, 4096])
def test_callpath_host_call_views_name_the_buffers_wasmtime_hands(
    monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """The async callback's kept views (arguments, result, continuation) are views of exactly the address
    they are kept under and of the kind of buffer found there; interleaved host calls of several instances,
    answered at once and through a poller, get each its own answer, also when the views are cleared at
    every miss (a view kept under another address or of another kind fails this)."""
    monkeypatch.setattr(_wasmtime, "_VIEWS_LIMIT", limit)
    rt = Runtime((HostFunctionSpec(name="ask2", nparams=2, is_async=True),))
    digest = hashlib.sha256(ASK2_WAT.encode()).hexdigest()
    module, _ = rt.compile(ASK2_WAT.encode(), digest=digest, what="test")
    pre = rt.instance_pre(module, digest=digest, what="test")
    insts = []
    for _ in range(3):
        inst = Instance(rt, pre, max_memory_bytes=1 << 20)
        call = inst.instantiate_call()
        while not call.poll(Answerer2(now=True)):
            pass
        call.result()
        inst._call_words()
        insts.append(inst)
    rng = random.Random(5)
    for i in range(60):
        inst = insts[i % 3]
        a, b = rng.randrange(-1000, 1000), rng.randrange(-1000, 1000)
        host = Answerer2(now=rng.random() < 0.5)
        assert _run(inst, "ask2", (a, b), host=host) == a * 7 - b
        assert _run(inst, "ask2_twice", (a, b), host=host) == (a * 7 - b) - (b * 7 - a)
    views = (
        (rt._arg_views, _wasmtime._ARG_I32S[2]),
        (rt._result_views, _wasmtime._RESULT_WORDS),
        (rt._cont_views, _wasmtime._CONTINUATION_WORDS),
    )
    for kept, kind in views:
        assert 0 < len(kept) <= limit
        assert all(type(v) is kind and ctypes.addressof(v) == at for at, v in kept.items())
    for inst in insts:
        inst.close()
    rt.close()
