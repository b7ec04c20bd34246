"""Snapshots of real wasmtime sandboxes: capture, the file format, restore, hibernate and wake, refusals."""

from __future__ import annotations

import os
import random
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_helpers import SANDBOX_SPECS, SeenServices, finish

from openfang.protocol.errors import SandboxError
from openfang.workers.manifest import AgentManifest, load_manifest
from openfang.workers.sandbox import _snapshot_file as snap_file
from openfang.workers.sandbox import guest_abi as abi
from openfang.workers.sandbox import snapshot as snap_mod
from openfang.workers.sandbox._wasm_layout import WasmFormatError, parse_layout
from openfang.workers.sandbox._wasmtime import Runtime, wasm_binary
from openfang.workers.sandbox.instance import DoneJob, Sandbox
from openfang.workers.sandbox.snapshot import (
    HEADER_SIZE,
    SnapshotError,
    capture,
    decode,
    encode,
    hibernate,
    read_snapshot,
    restore,
    wake,
    write_snapshot,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "agents"
SPECS = SANDBOX_SPECS

# A counter whose whole state is exported: i64 count, a NaN-payload f64, a cleared data segment, growth.
COUNTER_WAT = """(module
  (memory (export "memory") 1)
  (data (i32.const 8192) "initial")
  (global $heap (export "heap_top") (mut i32) (i32.const 4096))
  (global $count (export "count") (mut i64) (i64.const 0))
  (global $f (export "ratio") (mut f64) (f64.const 0))
  (func (export "alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $n)))
    (local.get $p))
  ;; reply (24 bytes at 8): count | the 8 bytes at 8192 before this message cleared them (a data segment,
  ;; alone in its 4 KiB chunk) | f bits
  (func (export "agent_handle") (param $p i32) (param $n i32) (result i64)
    (global.set $count (i64.add (global.get $count) (i64.const 1)))
    (global.set $f (f64.reinterpret_i64 (i64.or (i64.const 0x7ff4000000000000) (global.get $count))))
    (i64.store (i32.const 16) (i64.load (i32.const 8192)))
    (memory.fill (i32.const 8192) (i32.const 0) (i32.const 8))
    (if (i32.eq (memory.size) (i32.const 1)) (then (drop (memory.grow (i32.const 2)))))
    ;; the last page remembers the count too: growth must be restored
    (i64.store (i32.const 196600) (global.get $count))
    (global.set $heap (i32.const 4096))
    (i64.store (i32.const 8) (global.get $count))
    (i64.store (i32.const 24) (i64.reinterpret_f64 (global.get $f)))
    (i64.or (i64.shl (i64.const 8) (i64.const 32)) (i64.const 24)))
)"""

# 1 MiB of memory; each message copies its payload to three chunks (pages 3, 9 and 15) and clears its input.
SPARSE_WAT = """(module
  (memory (export "memory") 16)
  (global $heap (export "heap_top") (mut i32) (i32.const 4096))
  (func (export "alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $n)))
    (local.get $p))
  (func (export "agent_handle") (param $p i32) (param $n i32) (result i64)
    (memory.copy (i32.const 196608) (local.get $p) (local.get $n))
    (memory.copy (i32.const 589824) (local.get $p) (local.get $n))
    (memory.copy (i32.const 983040) (local.get $p) (local.get $n))
    (memory.fill (local.get $p) (i32.const 0) (local.get $n))
    (global.set $heap (i32.const 4096))
    (i64.const 0))
)"""

# State in a private global: a snapshot cannot read it back.
HIDDEN_WAT = """(module
  (memory (export "memory") 1)
  (global $secret (mut i32) (i32.const 0))
  (func (export "alloc") (param $n i32) (result i32) (i32.const 1024))
  (func (export "agent_handle") (param $p i32) (param $n i32) (result i64)
    (global.set $secret (i32.add (global.get $secret) (i32.const 1)))
    (i64.const 0))
)"""


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(SPECS)
    rt.start_ticker()
    yield rt
    rt.close()


def _manifest(tmp_path: Path, wat: str | None, *, extra: str = "", name: str = "guest") -> AgentManifest:
    if wat is None:
        return load_manifest(f'[agent]\nname = "bot"\n{extra}\n[agent.model]\nprovider = "scripted"\n')
    module = tmp_path / f"{name}.wat"
    module.write_text(wat)
    return load_manifest(f'[agent]\nname = "{name}"\nmodule = "{module}"\n{extra}\n')


def _load(manifest: AgentManifest, runtime: Runtime, agent_id: str = "a-1") -> Sandbox:
    sandbox = Sandbox(manifest, runtime, agent_id=agent_id, services=SeenServices())
    sandbox.load()
    return sandbox


def _send(sandbox: Sandbox, text: str) -> bytes:
    sandbox.begin_message(abi.user_message(text))
    outcome = finish(sandbox)
    assert outcome.ok, outcome.error
    return outcome.reply


def _counter_reply(reply: bytes) -> tuple[int, bytes, int]:
    count, data, fbits = struct.unpack("<q8sQ", reply)
    return count, data, fbits


def test_snapshot_rust_counter_keeps_its_count_across_hibernate_and_wake(
    runtime: Runtime, tmp_path: Path
) -> None:
    """The Rust counter example, hibernated to a file and woken in a new sandbox, counts on from there."""
    manifest = load_manifest(EXAMPLES / "rust" / "agent.toml")
    sandbox = _load(manifest, runtime)
    for _ in range(3):
        _send(sandbox, "hello")
    info = hibernate(sandbox, tmp_path / "a-1.snap")
    assert sandbox.quiescence_problem() == "it is closed"  # hibernate frees the sandbox
    assert info.file_bytes == (tmp_path / "a-1.snap").stat().st_size < info.memory_bytes // 100
    woken = wake(tmp_path / "a-1.snap", manifest, runtime, agent_id="a-1", services=SeenServices())
    try:
        assert _send(woken, "hello").startswith(b"rust agent: message 4 (")
        assert woken.counters["messages"] == 4  # the host's accounting travels with the snapshot
    finally:
        woken.close()


def test_snapshot_wat_counter_moves_to_another_runtime_bit_exact(runtime: Runtime, tmp_path: Path) -> None:
    """A snapshot moved through bytes into a sandbox of another engine restores globals, growth and zeroes."""
    manifest = _manifest(tmp_path, COUNTER_WAT)
    source = _load(manifest, runtime)
    target_rt = Runtime(SPECS)
    try:
        fresh = _load(manifest, target_rt, "probe")
        assert _counter_reply(_send(fresh, "x"))[1] == b"initial\0"  # the first message clears it
        fresh.close()
        for _ in range(5):
            count, data, fbits = _counter_reply(_send(source, "x"))
        assert (count, data, fbits) == (5, bytes(8), 0x7FF4000000000005)
        moved = decode(encode(capture(source)), source="wire")
        target = _load(manifest, target_rt, "a-1")
        restore(target, moved)
        assert target.memory_bytes() == source.memory_bytes() == 3 * 65536
        count, data, fbits = _counter_reply(_send(target, "x"))
        # The data segment the guest had cleared stays cleared: the fresh instance's copy was zeroed.
        assert (count, data, fbits) == (6, bytes(8), 0x7FF4000000000006)
        assert _send(source, "x")[:8] == struct.pack("<q", 6)  # the source is untouched by the capture
        target.close()
        source.close()
    finally:
        target_rt.close()


def test_snapshot_llm_agent_keeps_its_conversation(runtime: Runtime, tmp_path: Path) -> None:
    """The built-in LLM agent's conversation (memory + exported globals) survives hibernate and wake."""
    manifest = _manifest(tmp_path, None)
    agent = _load(manifest, runtime)
    assert agent.begin_init()
    assert finish(agent).ok
    assert _send(agent, "my name is Ada") == b"seen: my name is Ada"
    assert _send(agent, "I like tea") == b"seen: my name is Ada | I like tea"
    hibernate(agent, tmp_path / "bot.snap")
    woken = wake(tmp_path / "bot.snap", manifest, runtime, agent_id="a-1", services=SeenServices())
    try:
        assert _send(woken, "who am I?") == b"seen: my name is Ada | I like tea | who am I?"
    finally:
        woken.close()


def test_snapshot_restore_into_a_different_module_is_refused(runtime: Runtime, tmp_path: Path) -> None:
    """A snapshot carries its module's sha256: restoring it into another module fails, freeing everything."""
    counter = _load(_manifest(tmp_path, COUNTER_WAT), runtime)
    _send(counter, "x")
    hibernate(counter, tmp_path / "c.snap")
    other = _manifest(tmp_path, SPARSE_WAT, name="other")
    before = runtime.live_stores
    with pytest.raises(SnapshotError, match="only fits the module it was taken from"):
        wake(tmp_path / "c.snap", other, runtime, agent_id="a-1", services=SeenServices())
    assert runtime.live_stores == before  # nothing stays allocated
    # The same manifest path with edited module bytes is another module too.
    (tmp_path / "guest.wat").write_text(COUNTER_WAT.replace("initial", "changed"))
    with pytest.raises(SnapshotError, match="only fits"):
        wake(tmp_path / "c.snap", _manifest(tmp_path, COUNTER_WAT.replace("initial", "changed")), runtime,
             agent_id="a-1", services=SeenServices())  # fmt: skip


def _valid_file(runtime: Runtime, tmp_path: Path) -> bytes:
    sandbox = _load(_manifest(tmp_path, COUNTER_WAT), runtime)
    _send(sandbox, "x")
    data = encode(capture(sandbox))
    sandbox.close()
    return data


def _reheader(data: bytes, **changes: int) -> bytes:
    """``data`` with header fields changed and the header checksum recomputed (a well-formed lie)."""
    fields = list(snap_file._HEADER.unpack_from(data))
    names = ["magic", "version", "codec", "flags", "digest", "raw_len", "body_len", "body_crc"]
    for key, value in changes.items():
        fields[names.index(key)] = value
    header = snap_file._HEADER.pack(*fields)
    return header + struct.pack("<I", zlib.crc32(header)) + data[HEADER_SIZE:]


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda d: b"", "truncated snapshot: 0 bytes"),
        (lambda d: b"GIF89a" + d[6:], "bad magic"),
        (lambda d: d[:40], "truncated snapshot: .* the header alone"),
        (lambda d: d[:-10], "truncated snapshot: the header promises"),
        (lambda d: d + b"\0", "bytes after the body"),
        (lambda d: d[:20] + bytes([d[20] ^ 1]) + d[21:], "header checksum mismatch"),
        (lambda d: d[:-5] + bytes([d[-5] ^ 0x40]) + d[-4:], "body checksum mismatch"),
        (lambda d: _reheader(d, version=9), "format version 9 is not supported"),
        (lambda d: _reheader(d, codec=7), "unknown codec 7"),
        (lambda d: _reheader(d, raw_len=1 << 40), "larger than any sandbox"),
    ],
)
def test_snapshot_corrupt_file_is_refused_clearly(
    runtime: Runtime, tmp_path: Path, corrupt: Any, message: str
) -> None:
    """Each kind of damage to a snapshot file is a SnapshotError that names the file and the damage."""
    path = tmp_path / "bad.snap"
    path.write_bytes(corrupt(_valid_file(runtime, tmp_path)))
    with pytest.raises(SnapshotError, match=message) as err:
        read_snapshot(path)
    assert str(path) in err.value.message


def test_snapshot_consistent_lies_and_random_damage_never_crash(runtime: Runtime, tmp_path: Path) -> None:
    """Bodies with valid checksums but wrong contents, and random bit flips, give SnapshotError only."""
    data = _valid_file(runtime, tmp_path)
    raw = zlib.decompress(data[HEADER_SIZE:])

    def with_body(body_raw: bytes) -> bytes:
        body = zlib.compress(body_raw)
        return _reheader(data, raw_len=len(body_raw), body_len=len(body), body_crc=zlib.crc32(body))

    lies = [
        raw[:-3],
        raw + b"x",
        raw[:8] + b"[]" + raw[10:],
        b"\0" * 8,
        raw[:4] + b"\xff\xff\xff\x7f" + raw[8:],
    ]
    rng = random.Random(7)
    flips = []
    for _ in range(300):
        pos = rng.randrange(len(data))
        flips.append(data[:pos] + bytes([data[pos] ^ (1 << rng.randrange(8))]) + data[pos + 1 :])
    for i, bad in enumerate([with_body(b) for b in lies] + flips):
        try:
            decode(bad, source=f"case {i}")
        except SnapshotError as exc:
            assert exc.message.startswith(f"case {i}: ")
        else:  # a flip in a field nothing checks would have to leave a decodable snapshot of the same shape
            pytest.fail(f"case {i} decoded although damaged")


def test_snapshot_missing_file_is_refused_clearly(tmp_path: Path) -> None:
    """Reading a snapshot that is not there names the file and the reason."""
    with pytest.raises(SnapshotError, match="cannot read snapshot: No such file"):
        read_snapshot(tmp_path / "nope.snap")


def test_snapshot_of_a_busy_sandbox_is_refused(runtime: Runtime, tmp_path: Path) -> None:
    """A sandbox with a call in flight or parked on a host job cannot be snapshotted; once idle it can."""
    manifest = _manifest(tmp_path, None)
    services = SeenServices()
    agent = Sandbox(manifest, runtime, agent_id="a-1", services=services)
    agent.load()
    gate = DoneJob(0, b"", done=False)
    services.pending = gate
    agent.begin_message(abi.user_message("hi"))
    with pytest.raises(SnapshotError, match="cannot snapshot while a call is in progress"):
        capture(agent)
    while agent.state.value != "waiting":  # parks in llm_invoke on the pending job
        agent.refresh(time.monotonic())
        if agent.runnable():
            assert agent.run_slice() is None
    with pytest.raises(SnapshotError, match="a call is in progress \\(handle, waiting\\)"):
        hibernate(agent, tmp_path / "busy.snap")
    assert not (tmp_path / "busy.snap").exists()
    gate.done = True
    assert finish(agent).reply == b"seen: hi"
    assert capture(agent).stored_bytes > 0
    agent.close()


def test_snapshot_module_with_hidden_mutable_globals_is_refused(runtime: Runtime, tmp_path: Path) -> None:
    """restore = "snapshot" is refused at load for a module with private mutable globals; so is hibernate."""
    with pytest.raises(
        SandboxError, match=r'restore = "snapshot" is refused: .*global 0 \(\$secret\): mut i32'
    ):
        _load(_manifest(tmp_path, HIDDEN_WAT, extra='restore = "snapshot"'), runtime)
    greeter = load_manifest(
        (EXAMPLES / "wat" / "agent.toml").read_text().replace("[agent]\n", '[agent]\nrestore = "snapshot"\n'),
        base_dir=EXAMPLES / "wat",
    )
    with pytest.raises(SandboxError, match=r"global 0 \(\$heap\)"):
        _load(greeter, runtime)
    rust = (
        (EXAMPLES / "rust" / "agent.toml").read_text().replace("[agent]\n", '[agent]\nrestore = "snapshot"\n')
    )
    for accepted in (  # modules whose whole state a snapshot reads back are accepted
        load_manifest(rust, base_dir=EXAMPLES / "rust"),
        _manifest(tmp_path, None, extra='restore = "snapshot"'),
        _manifest(tmp_path, COUNTER_WAT, extra='restore = "snapshot"'),
    ):
        _load(accepted, runtime).close()
    fresh = _load(_manifest(tmp_path, HIDDEN_WAT), runtime)  # restore = "fresh": it may run ...
    _send(fresh, "x")
    with pytest.raises(SnapshotError, match=r"cannot snapshot module .*non-exported mutable global 0"):
        hibernate(fresh, tmp_path / "h.snap")  # ... but never hibernates (its state would be lost)
    assert fresh.quiescence_problem() is None  # a refused hibernate leaves the sandbox running
    fresh.close()


def test_snapshot_llvm_stack_pointer_is_recognised_only_with_evidence() -> None:
    """The first mutable i32 is __stack_pointer by its name or LLVM's exports, never by position alone."""
    rust = parse_layout((EXAMPLES / "rust" / "counter.wasm").read_bytes())  # stripped, exports __heap_base
    c = parse_layout((EXAMPLES / "c" / "upper.wasm").read_bytes())  # name section says __stack_pointer
    assert (rust.stack_pointer, rust.hidden, c.stack_pointer, c.hidden) == (0, (), 0, ())
    body = '(global (mut i32) (i32.const 65536)) (global i32 (i32.const 4096)) (memory (export "memory") 1)'
    marked = parse_layout(
        wasm_binary(f'(module {body} (export "__heap_base" (global 1)))'.encode(), what="t")
    )
    unmarked = parse_layout(wasm_binary(f"(module {body})".encode(), what="t"))
    assert marked.restorable and marked.stack_pointer == 0
    assert not unmarked.restorable and "keep the name section or export __heap_base" in unmarked.hidden[0]
    private_mem = parse_layout(wasm_binary(b"(module (memory 1))", what="t"))
    assert private_mem.hidden == ("memory 0 is not exported",)
    with pytest.raises(WasmFormatError, match="malformed wasm at byte"):
        parse_layout(b"\0asm\x01\0\0\0\x06\x05\x01\x7f")


def test_snapshot_of_mostly_zero_1mib_heap_stores_only_non_zero_chunks(
    runtime: Runtime, tmp_path: Path
) -> None:
    """A 1 MiB heap with three non-zero 4 KiB chunks stores those chunks only: the file is under 14 KiB."""
    sandbox = _load(_manifest(tmp_path, SPARSE_WAT), runtime)
    payload = os.urandom(3000)  # incompressible: the bound below comes from zero-skipping alone
    sandbox.begin_message(payload)
    assert finish(sandbox).ok
    snap = capture(sandbox)
    assert snap.memory_bytes == 1 << 20
    assert snap.stored_bytes == 3 * 4096  # the input was cleared: only pages 3, 9, 15 hold data
    size = write_snapshot(tmp_path / "s.snap", snap)
    # header + zlib's worst case on (3 chunks + 32-byte bitmap + names, meta and counts < 1 KiB)
    raw = 3 * 4096 + 32 + 1024
    assert size <= HEADER_SIZE + raw + (raw >> 12) + (raw >> 14) + 13
    woken = wake(tmp_path / "s.snap", sandbox.manifest, runtime, agent_id="a-1", services=SeenServices())
    inst = woken.native_instance()
    assert inst.memory() is not None
    mem = inst.memory()
    assert mem is not None and mem.read(589824, 3000) == payload and mem.read(4096, 3000) == bytes(3000)
    woken.close()
    sandbox.close()


def test_snapshot_bigger_than_the_heap_cap_is_refused_on_wake(runtime: Runtime, tmp_path: Path) -> None:
    """Waking a 3-page snapshot under a manifest whose cap is lower fails clearly and frees the sandbox."""
    manifest = _manifest(tmp_path, COUNTER_WAT)
    sandbox = _load(manifest, runtime)
    _send(sandbox, "x")
    snap = capture(sandbox)
    sandbox.close()
    big = snap_mod.MemoryImage(
        name="memory", size=2 << 20, chunk=4096, bitmap=bytes(64), data=b""
    )  # 2 MiB of memory over a 1 MiB cap
    write_snapshot(
        tmp_path / "big.snap", snap_mod.Snapshot(module_sha256=snap.module_sha256, memories=(big,))
    )
    small = _manifest(tmp_path, COUNTER_WAT, extra="[sandbox.memory]\nmax_heap_mb = 1")
    before = runtime.live_stores
    with pytest.raises(SnapshotError, match=r"cannot grow memory 'memory' .* \(max_heap_mb=1\)"):
        wake(tmp_path / "big.snap", small, runtime, agent_id="a-1", services=SeenServices())
    assert runtime.live_stores == before


def test_snapshot_write_is_atomic_and_a_failed_hibernate_keeps_the_sandbox(
    runtime: Runtime, tmp_path: Path
) -> None:
    """A rewrite replaces the file whole with no temp file left; a write that fails frees nothing."""
    sandbox = _load(_manifest(tmp_path, COUNTER_WAT), runtime)
    _send(sandbox, "x")
    path = tmp_path / "c.snap"
    hibernate(sandbox, path, close=False)
    _send(sandbox, "x")
    hibernate(sandbox, path, close=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.snap", "guest.wat"]
    assert read_snapshot(path).globals[1].bits == struct.pack("<q", 2)  # count, after the second message
    with pytest.raises(SnapshotError, match="cannot write snapshot: No such file"):
        hibernate(sandbox, tmp_path / "missing" / "c.snap")
    assert _counter_reply(_send(sandbox, "x"))[0] == 3  # still running
    sandbox.close()


def test_snapshot_of_a_grown_table_is_refused(runtime: Runtime, tmp_path: Path) -> None:
    """An exported table that grew holds references no file can keep: capture refuses; unchanged it passes."""
    wat = """(module
      (memory (export "memory") 1)
      (table $t (export "callbacks") 2 funcref)
      (func (export "alloc") (param $n i32) (result i32) (i32.const 1024))
      (func (export "agent_handle") (param $p i32) (param $n i32) (result i64)
        (drop (table.grow $t (ref.null func) (i32.const 3)))
        (i64.const 0)))"""
    sandbox = _load(_manifest(tmp_path, wat), runtime)
    assert capture(sandbox).tables == (("callbacks", 2),)
    _send(sandbox, "x")
    with pytest.raises(SnapshotError, match="table 'callbacks' grew from 2 to 5 entries"):
        capture(sandbox)
    sandbox.close()


def test_snapshot_wake_and_restore_into_a_used_sandbox_both_clear_data_segments(
    runtime: Runtime, tmp_path: Path
) -> None:
    """Wake (fresh: data segments checked) and a restore over a used sandbox (all memory checked) agree."""
    manifest = _manifest(tmp_path, COUNTER_WAT)
    source = _load(manifest, runtime)
    for _ in range(4):
        _send(source, "x")
    snap = capture(source)
    hibernate(source, tmp_path / "c.snap")
    woken = wake(tmp_path / "c.snap", manifest, runtime, agent_id="a-1", services=SeenServices())
    assert _counter_reply(_send(woken, "x"))[:2] == (5, bytes(8))
    woken.close()
    used = _load(manifest, runtime, "a-2")
    _send(used, "x")  # count 1; the data segment cleared, the memory grown to the snapshot's size
    mem = used.native_instance().memory()
    assert mem is not None and mem.write(8192, b"garbage!") and mem.write(100_000, b"more")
    restore(used, snap)
    assert mem.read(100_000, 4) == bytes(4)  # zero in the snapshot: zeroed over the used memory
    assert _counter_reply(_send(used, "x"))[:2] == (5, bytes(8))
    used.close()


def test_snapshot_layout_knows_what_a_fresh_instance_holds() -> None:
    """Active data segments are listed; a start function or a computed offset makes it unknown (None)."""

    def layout(body: str) -> Any:
        return parse_layout(wasm_binary(f'(module (memory (export "m") 1) {body})'.encode(), what="t"))

    assert layout('(data (i32.const 5) "ab") (data "passive")').initialised == ((0, 5, 7),)
    assert layout('(func $f) (start $f) (data (i32.const 5) "ab")').initialised is None
    offset = '(global $g i32 (i32.const 4)) (data (offset (i32.add (global.get $g) (i32.const 1))) "ab")'
    assert layout(offset).initialised is None


def test_snapshot_well_formed_but_wrong_contents_are_refused(runtime: Runtime, tmp_path: Path) -> None:
    """Odd memory sizes fail to decode; a global of the wrong type or name fails to restore, clearly."""
    odd = snap_mod.MemoryImage(name="memory", size=70_000, chunk=4096, bitmap=bytes(3), data=b"")
    with pytest.raises(SnapshotError, match="70000 bytes is not a whole number of 64 KiB pages"):
        decode(encode(snap_mod.Snapshot(module_sha256="0" * 64, memories=(odd,))))
    with pytest.raises(SnapshotError, match="must be 64 hex digits"):
        encode(snap_mod.Snapshot(module_sha256="xyz", memories=()))
    manifest = _manifest(tmp_path, COUNTER_WAT)
    sandbox = _load(manifest, runtime)
    good = capture(sandbox)
    for bad_global, message in [
        (snap_mod.GlobalImage(name="count", valtype="i32", bits=bytes(4)), "cannot restore global 'count'"),
        (snap_mod.GlobalImage(name="nope", valtype="i32", bits=bytes(4)), "exports no global 'nope'"),
    ]:
        lie = snap_mod.Snapshot(
            module_sha256=good.module_sha256, memories=good.memories, globals=(bad_global,)
        )
        with pytest.raises(SnapshotError, match=message):
            restore(sandbox, decode(encode(lie)))
    sandbox.close()


def test_snapshot_wake_refuses_a_snapshot_of_another_agent(runtime: Runtime, tmp_path: Path) -> None:
    """A snapshot names its agent: waking it under another id is refused before anything is allocated."""
    manifest = _manifest(tmp_path, COUNTER_WAT)
    hibernate(_load(manifest, runtime, "owner-1"), tmp_path / "o.snap")
    before = runtime.live_stores
    with pytest.raises(SnapshotError, match="the snapshot is of agent owner-1, not thief-1"):
        wake(tmp_path / "o.snap", manifest, runtime, agent_id="thief-1", services=SeenServices())
    assert runtime.live_stores == before


def test_snapshot_encode_decode_round_trips_random_memories() -> None:
    """Any mix of zero and non-zero chunks (and whole zero pages) comes back byte for byte."""
    rng = random.Random(11)
    for _ in range(40):
        pages = rng.randrange(1, 6)
        data = bytearray(pages * 65536)
        for _ in range(rng.randrange(0, 12)):
            at = rng.randrange(len(data))
            data[at : at + rng.randrange(1, 9000)] = rng.randbytes(9000)[: len(data) - at]
        image = snap_mod._pack_memory("memory", bytes(data[: pages * 65536]))
        g = snap_mod.GlobalImage(name="g", valtype="v128", bits=rng.randbytes(16))
        snap = snap_mod.Snapshot(module_sha256="ab" * 32, memories=(image,), globals=(g,), tables=(("t", 3),))
        back = decode(encode(snap))
        assert back == snap
        rebuilt = bytearray(image.size)
        pos = 0
        for start, end, non_zero in back.memories[0].runs():
            if non_zero:
                rebuilt[start:end] = back.memories[0].data[pos : pos + end - start]
                pos += end - start
        assert rebuilt == data[: pages * 65536]


def test_snapshot_writes_from_threads_never_mix(tmp_path: Path) -> None:
    """Threads writing the same file leave one whole snapshot of theirs and no temp file behind."""
    import threading

    snaps = [
        snap_mod.Snapshot(
            module_sha256=f"{i:02x}" * 32,
            memories=(snap_mod._pack_memory("memory", bytes([i + 1]) * 65536),),
        )
        for i in range(4)
    ]
    path = tmp_path / "shared.snap"
    errors: list[BaseException] = []

    def writer(snap: snap_mod.Snapshot) -> None:
        try:
            for _ in range(25):
                write_snapshot(path, snap, fsync=False)
                assert read_snapshot(path) in snaps  # whoever renamed last, the file is whole
        except BaseException as exc:  # reported by the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in snaps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert read_snapshot(path) in snaps
    assert [p.name for p in tmp_path.iterdir()] == ["shared.snap"]
