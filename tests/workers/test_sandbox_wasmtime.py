"""The wasmtime wrapper on its own: resumable fuel-sliced calls, parking host calls, cancel, epoch, limits."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openfang.protocol.errors import SandboxError
from openfang.workers.sandbox._wasmtime import (
    TABLE_ELEMENT_BYTES,
    TABLE_EXPORT_PREFIX,
    AsyncPoller,
    EngineOptions,
    GuestMemory,
    HostFunctionSpec,
    Instance,
    Runtime,
    StoreLimits,
    export_tables,
)

WAT = """(module
  (import "env" "ask" (func $ask (param i32) (result i32)))
  (import "env" "boom" (func $boom (result i32)))
  (memory (export "memory") 1)
  (func (export "spin") (param $n i32) (result i32) (local $i i32)
    (loop $l
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
    (local.get $i))
  (func (export "ask_twice") (param $x i32) (result i32)
    (i32.add (call $ask (local.get $x)) (call $ask (i32.const 1))))
  (func (export "boom") (result i32) (call $boom))
  (func (export "grow") (param $pages i32) (result i32) (memory.grow (local.get $pages)))
  (func (export "fill_forever") (result i32)
    (loop $l (memory.fill (i32.const 0) (i32.const 7) (i32.const 65536)) (br $l))
    (i32.const 0))
)"""
SPECS = (HostFunctionSpec(name="ask", nparams=1, is_async=True), HostFunctionSpec(name="boom", nparams=0))


class Dispatch:
    """Host side for the test module: ``ask`` parks until ``release`` is called; ``boom`` raises."""

    def __init__(self) -> None:
        self.released: dict[int, int] = {}
        self.asked: list[int] = []

    def host_sync(self, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> int:
        raise RuntimeError("host bug")  # must become an error code for the guest, never an exception

    def host_async(self, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> AsyncPoller:
        key = len(self.asked)
        self.asked.append(args[0])
        return lambda: self.released.get(key)


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(SPECS, options=EngineOptions(fuel_slice=10_000, epoch_tick_ms=5))
    rt.start_ticker()
    yield rt
    rt.close()


def _instance(rt: Runtime, *, mem_mb: int = 2) -> Instance:
    digest = hashlib.sha256(WAT.encode()).hexdigest()
    module, _ = rt.compile(WAT.encode(), digest=digest, what="test")
    inst = Instance(rt, rt.instance_pre(module, digest=digest, what="test"), max_memory_bytes=mem_mb << 20)
    call = inst.instantiate_call()
    while not call.poll(Dispatch()):
        pass
    call.result()
    inst.after_instantiate()
    return inst


def test_wasmtime_call_yields_per_fuel_slice_and_resumes_to_the_right_result(runtime: Runtime) -> None:
    """A long loop yields many times (one per fuel slice) and each poll resumes it where it stopped."""
    inst = _instance(runtime)
    call = inst.call("spin", (200_000,), 1)
    polls = 1
    while not call.poll(Dispatch()):
        polls += 1
    assert call.result() == 200_000
    assert polls > 50  # ~800k+ fuel in 10k slices
    assert inst.fuel_consumed() > 200_000
    inst.close()


def test_wasmtime_async_host_function_parks_until_released(runtime: Runtime) -> None:
    """A parking host call keeps the guest suspended across polls until its result is ready."""
    inst, host = _instance(runtime), Dispatch()
    call = inst.call("ask_twice", (40,), 1)
    for _ in range(5):
        assert not call.poll(host)
    assert host.asked == [40]
    host.released[0] = 41
    while not call.poll(host):
        if len(host.asked) == 2:
            host.released[1] = 1
    assert call.result() == 42
    inst.close()


def test_wasmtime_cancel_mid_call_leaves_the_store_usable(runtime: Runtime) -> None:
    """Dropping an unfinished call unwinds it; the next call on the same instance works."""
    inst, host = _instance(runtime), Dispatch()
    call = inst.call("spin", (2_000_000_000,), 1)
    for _ in range(3):
        assert not call.poll(host)
    call.cancel()
    with pytest.raises(SandboxError, match="cancelled"):
        call.result()
    again = inst.call("spin", (10,), 1)
    while not again.poll(host):
        pass
    assert again.result() == 10
    inst.close()


def test_wasmtime_host_function_failure_is_an_error_code(runtime: Runtime) -> None:
    """A host function that raises gives the guest E_INVALID (-2) instead of unwinding through wasm."""
    inst = _instance(runtime)
    call = inst.call("boom", (), 1)
    while not call.poll(Dispatch()):
        pass
    assert call.result() == -2
    inst.close()


def test_wasmtime_epoch_ticks_preempt_time_burning_code(runtime: Runtime) -> None:
    """Code that burns wall time with little fuel (bulk memory.fill) still yields at every epoch tick."""
    inst = _instance(runtime)
    call = inst.call("fill_forever", (), 1)
    polls = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.3:
        inst.set_deadline(60)  # sliced: means "yield at the next tick", not "trap in 60 s"
        assert not call.poll(Dispatch())  # each poll comes back (preempted), the call goes on
        polls += 1
    assert polls >= 3
    call.cancel()
    inst.close()


START_LOOP = """(module (memory (export "memory") 1)
  (func $s (loop $l (br $l))) (start $s))"""


def test_wasmtime_start_function_yields_per_slice_and_can_be_cancelled(runtime: Runtime) -> None:
    """Instantiation is sliced: a start function that never ends yields every poll and cancels cleanly."""
    digest = hashlib.sha256(START_LOOP.encode()).hexdigest()
    module, _ = runtime.compile(START_LOOP.encode(), digest=digest, what="test")
    inst = Instance(
        runtime, runtime.instance_pre(module, digest=digest, what="test"), max_memory_bytes=1 << 20
    )
    call = inst.instantiate_call()
    for _ in range(5):
        assert not call.poll(Dispatch())  # one fuel slice (or epoch tick) each, then back to the caller
    assert inst.fuel_consumed() >= 4 * runtime.options.fuel_slice
    call.cancel()
    with pytest.raises(SandboxError, match="cancelled"):
        call.result()
    inst.close()
    assert runtime.live_stores == 0


TABLES = """(module (memory (export "memory") 1)
  (table $hidden 3 funcref) (table (export "shown") 1 funcref)
  (func (export "grow") (param $n i32) (result i32) (table.grow $hidden (ref.null func) (local.get $n))))"""


def _tables_instance(rt: Runtime, limits: StoreLimits) -> Instance:
    digest = hashlib.sha256(TABLES.encode()).hexdigest()
    module, _ = rt.compile(TABLES.encode(), digest=digest, what="test")
    inst = Instance(rt, rt.instance_pre(module, digest=digest, what="test"), limits=limits)
    call = inst.instantiate_call()
    while not call.poll(Dispatch()):
        pass
    call.result()
    return inst


def test_wasmtime_table_grow_past_the_cap_returns_minus_one(runtime: Runtime) -> None:
    """table.grow within table_elements succeeds; past it returns -1 (no trap) and the size stays."""
    inst = _tables_instance(runtime, StoreLimits(memory_bytes=1 << 20, table_elements=100))
    for n, expected in ((50, 3), (47, 53), (1, -1), (1_000_000, -1)):
        call = inst.call("grow", (n,), 1)
        while not call.poll(Dispatch()):
            pass
        assert call.result() == expected
    assert sorted(inst.table_elements()) == [1, 100]
    assert inst.table_bytes() == 101 * TABLE_ELEMENT_BYTES
    inst.close()


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (StoreLimits(memory_bytes=1 << 20, table_elements=2), "table minimum size of 3 elements exceeds"),
        (StoreLimits(memory_bytes=1 << 20, tables=1), "table count too high"),
        (StoreLimits(memory_bytes=(1 << 16) - 1), "memory minimum size"),
    ],
)
def test_wasmtime_store_limits_refuse_instantiation(
    runtime: Runtime, limits: StoreLimits, message: str
) -> None:
    """A module needing more tables, table elements or memory than the store allows fails to instantiate."""
    with pytest.raises(SandboxError, match=message):
        _tables_instance(runtime, limits)


def test_wasmtime_every_table_is_exported_for_metering() -> None:
    """export_tables adds a reserved export for each private table and leaves other modules unchanged."""
    import wasmtime

    binary = bytes(wasmtime.wat2wasm(TABLES))
    rewritten = export_tables(binary)
    module = wasmtime.Module(wasmtime.Engine(), rewritten)
    tables = sorted(e.name for e in module.exports if isinstance(e.type, wasmtime.TableType))
    assert tables == [f"{TABLE_EXPORT_PREFIX}0", "shown"]
    plain = bytes(wasmtime.wat2wasm('(module (table (export "t") 1 funcref))'))
    assert export_tables(plain) == plain
    assert export_tables(b"\0asm\1\0\0\0\7\xff") == b"\0asm\1\0\0\0\7\xff"  # unreadable: unchanged
    # A table count of 2**34 with no tables behind it: left for wasmtime to refuse, never looped over.
    huge = b"\0asm\1\0\0\0" + b"\x04\x05\x80\x80\x80\x80\x40" + b"\x07\x01\x00"
    assert export_tables(huge) == huge


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (bytes(range(256)) * 4, r"not a WebAssembly module: no \\0asm header, and not WAT text \(byte 128"),
        (b"hello", r"not a WebAssembly module: no \\0asm header, and not valid WAT text: expected"),
    ],
)
def test_wasmtime_non_wasm_bytes_are_named_as_such(runtime: Runtime, code: bytes, message: str) -> None:
    """Random bytes or plain text are "not a WebAssembly module", never a codec error."""
    with pytest.raises(SandboxError, match="my-agent: " + message):
        runtime.compile(code, digest="r", what="my-agent")


def test_wasmtime_export_types_are_plain_names(runtime: Runtime) -> None:
    """module_export_types gives each export's kind, and params/results of functions."""
    digest = hashlib.sha256(WAT.encode()).hexdigest()
    module, _ = runtime.compile(WAT.encode(), digest=digest, what="test")
    types = runtime.module_export_types(module)
    assert types["memory"] == ("memory",)
    assert types["ask_twice"] == ("func", "i32", "i32")
    assert types["boom"] == ("func", "", "i32")


def test_wasmtime_memory_cap_makes_grow_fail_not_trap(runtime: Runtime) -> None:
    """memory.grow past the store limit returns -1; growth within it succeeds."""
    inst = _instance(runtime, mem_mb=1)
    for pages, expected in ((8, 1), (100, -1)):
        call = inst.call("grow", (pages,), 1)
        while not call.poll(Dispatch()):
            pass
        assert call.result() == expected
    assert inst.memory_size() == 9 * 65536
    inst.close()


def test_wasmtime_close_frees_the_store_and_is_idempotent(runtime: Runtime) -> None:
    """close() frees the store now (live count drops) and a closed instance refuses calls."""
    inst = _instance(runtime)
    assert runtime.live_stores == 1
    inst.close()
    inst.close()
    assert runtime.live_stores == 0
    with pytest.raises(SandboxError, match="closed"):
        inst.call("spin", (1,), 1)


def test_wasmtime_compiled_modules_are_cached_on_disk(tmp_path: Path) -> None:
    """A second runtime with the same cache dir loads the serialized module instead of compiling."""
    digest = hashlib.sha256(WAT.encode()).hexdigest()
    first = Runtime(SPECS, cache_dir=tmp_path)
    _, cached = first.compile(WAT.encode(), digest=digest, what="t")
    assert not cached and len(list(tmp_path.glob(f"{digest}-*.cwasm"))) == 1
    first.close()
    second = Runtime(SPECS, cache_dir=tmp_path)
    module, cached = second.compile(WAT.encode(), digest=digest, what="t")
    assert cached and "spin" in second.module_exports(module)
    second.close()


def test_wasmtime_disk_cache_others_may_write_is_not_used(tmp_path: Path) -> None:
    """A cache folder writable by the group is refused (compiled code would be run from it): the module is
    compiled, nothing is written, and the runtime says why."""
    digest = hashlib.sha256(WAT.encode()).hexdigest()
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o770)
    shared.chmod(0o770)
    rt = Runtime(SPECS, cache_dir=shared)
    _, cached = rt.compile(WAT.encode(), digest=digest, what="t")
    assert not cached and not list(shared.iterdir())
    assert rt.cache_refused and "others may write it" in rt.cache_refused
    rt.close()


def test_wasmtime_cached_artifact_writable_by_others_is_recompiled_not_loaded(tmp_path: Path) -> None:
    """A .cwasm someone else could have written is not deserialized: it is compiled again and replaced by a
    private file (0600)."""
    digest = hashlib.sha256(WAT.encode()).hexdigest()
    first = Runtime(SPECS, cache_dir=tmp_path / "c")
    first.compile(WAT.encode(), digest=digest, what="t")
    first.close()
    (artifact,) = (tmp_path / "c").glob("*.cwasm")
    assert artifact.stat().st_mode & 0o777 == 0o600 and (tmp_path / "c").stat().st_mode & 0o777 == 0o700
    artifact.chmod(0o666)
    second = Runtime(SPECS, cache_dir=tmp_path / "c")
    _, cached = second.compile(WAT.encode(), digest=digest, what="t")
    assert not cached and artifact.stat().st_mode & 0o777 == 0o600
    second.close()


def test_wasmtime_corrupt_cached_artifact_is_recompiled(tmp_path: Path) -> None:
    """Garbage in a private .cwasm (a torn write, another wasmtime) is dropped and the module compiled."""
    digest = hashlib.sha256(WAT.encode()).hexdigest()
    first = Runtime(SPECS, cache_dir=tmp_path)
    first.compile(WAT.encode(), digest=digest, what="t")
    first.close()
    (artifact,) = tmp_path.glob("*.cwasm")
    artifact.write_bytes(b"not machine code")
    second = Runtime(SPECS, cache_dir=tmp_path)
    module, cached = second.compile(WAT.encode(), digest=digest, what="t")
    assert not cached and "spin" in second.module_exports(module)
    assert artifact.read_bytes() != b"not machine code"
    second.close()


def test_wasmtime_malformed_module_is_a_sandbox_error(runtime: Runtime) -> None:
    """Invalid bytes are refused with a message naming what was being compiled."""
    with pytest.raises(SandboxError, match="my-agent: not a valid wasm module"):
        runtime.compile(b"\0asm\1\0\0\0\1\xff\xff", digest="x", what="my-agent")


GROW_WAT = """(module
  (import "env" "see" (func $see (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "grow_between_calls") (result i32)
    (i32.store8 (i32.const 65535) (i32.const 11))
    (drop (call $see (i32.const 65535)))
    (drop (memory.grow (i32.const 1)))
    (i32.store8 (i32.const 131071) (i32.const 22))
    (call $see (i32.const 131071)))
)"""


class SeeMemory:
    """Host side for GROW_WAT: ``see(ptr)`` records the memory's size and the byte at ``ptr``."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, bytes | None]] = []

    def host_sync(self, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> int:
        assert mem is not None
        self.seen.append((mem.size(), mem.read(args[0], 1)))
        return 0

    def host_async(self, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> AsyncPoller:
        raise AssertionError("no async host function here")


def test_wasmtime_memory_growth_is_seen_by_the_next_host_call_and_after_the_poll() -> None:
    """Memory sizes and addresses are re-read after the guest may have grown its memory: a host call after
    memory.grow reads the new page, the instance's memory after the call has the new size, and so has it
    after the host grows the memory itself."""
    from openfang.workers.sandbox._wasmtime import grow_memory

    rt = Runtime((HostFunctionSpec(name="see", nparams=1),), options=EngineOptions(fuel_slice=10_000))
    try:
        digest = hashlib.sha256(GROW_WAT.encode()).hexdigest()
        module, _ = rt.compile(GROW_WAT.encode(), digest=digest, what="test")
        inst = Instance(rt, rt.instance_pre(module, digest=digest, what="test"), max_memory_bytes=4 << 20)
        host = SeeMemory()
        call = inst.instantiate_call()
        while not call.poll(host):
            pass
        inst.after_instantiate()
        mem = inst.memory()
        assert mem is not None and mem.size() == 65536  # looked up and sized before the call
        call = inst.call("grow_between_calls", (), 1)
        while not call.poll(host):
            pass
        assert call.result() == 0
        assert host.seen == [(65536, b"\x0b"), (131072, b"\x16")]
        assert mem.size() == 131072 and mem.read(131071, 1) == b"\x16"
        grow_memory(inst, "memory", 4 * 65536)
        assert (
            mem.size() == 4 * 65536
            and mem.write(4 * 65536 - 1, b"\x21")
            and mem.read(4 * 65536 - 1, 1) == b"\x21"
        )
        inst.close()
    finally:
        rt.close()


def _libwasmtime_code_private_kb() -> int:
    """Private (resident, this process only) KiB of libwasmtime's executable mapping."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's header line
                inside = head[1] == "r-xp" and line.rstrip().endswith("/_libwasmtime.so")
            elif inside and head[0] in ("Private_Clean:", "Private_Dirty:"):
                total += int(head[1])
    return total


def test_wasmtime_compile_releases_the_compilers_code_pages_and_the_module_still_runs() -> None:
    """After a compile, the pages of libwasmtime's code that Cranelift touched are no longer held by this
    process (a long-lived worker would carry ~10 MB of them), and the compiled module still runs."""
    rt = Runtime(SPECS, options=EngineOptions(fuel_slice=10_000, epoch_tick_ms=5))
    rt.start_ticker()
    try:
        inst = _instance(rt)  # compiles (no cache dir), instantiates and runs the start
        assert _libwasmtime_code_private_kb() < 6 * 1024
        call = inst.call("spin", (1_000,), 1)
        while not call.poll(Dispatch()):
            pass
        assert call.result() == 1_000
        inst.close()
    finally:
        rt.close()


def test_wasmtime_i32_results_wrap_like_ctypes() -> None:
    """A host function's result is written as ctypes' c_int32 would store it (wrapped), for any int."""
    import ctypes
    import random

    from openfang.workers.sandbox._wasmtime import _i32

    rng = random.Random(7)
    values = [0, -1, 1, 2**31 - 1, -(2**31), 2**31, 2**32 - 1, 2**32, -(2**40) - 3]
    values += [rng.randrange(-(2**70), 2**70) for _ in range(2000)]
    for value in values:
        assert _i32(value) == ctypes.c_int32(value).value, value
