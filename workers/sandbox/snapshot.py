"""Hibernate and wake: a quiescent sandbox's guest state to a compact, checksummed file, and back.

The host's API (a short job to wire in; the file layout is the host's choice, suggested
``<data_dir>/snapshots/<agent_id>.snap``)::

    info = hibernate(sandbox, path)     # capture + write atomically + free the sandbox -> SnapshotInfo
    sandbox = wake(path, manifest, runtime, agent_id=..., services=...)
                                        # a fresh instance of the same module, state restored; the host
                                        # must NOT run agent_init (begin_init) after a wake
    snap = capture(sandbox); restore(sandbox, snap)      # in memory: a move between sandboxes or workers
    data = encode(snap); snap = decode(data, source=...) # the bytes that travel
    write_snapshot(path, snap) -> int; read_snapshot(path) -> Snapshot

To keep the host's loop free, capture + close on the loop and run ``write_snapshot`` in a thread (zlib and
the file calls release the GIL; it touches no wasmtime object); until it is written, wake from the
``Snapshot`` in memory (``restore(fresh_sandbox, snap, fresh=True)``).

Errors are :class:`SnapshotError` (a ``SandboxError``, code ``sandbox_error``): a busy sandbox, a module
whose state cannot be read back, a snapshot of another module, a corrupt or truncated file. The sandbox
is left untouched by a refused capture; a failed restore leaves the target sandbox in an undefined state
(``wake`` closes it).

What a snapshot holds: every memory the module defines (all must be exported), every exported mutable
global of a numeric type (bit-exact, floats and NaN payloads included), the size of every exported table
(checked, not restored: a table cannot grow between instantiation and a snapshot), and the host's own
accounting (fuel used, counters, agent id, time taken). What it cannot hold, and so refuses: non-exported
mutable globals other than LLVM's ``__stack_pointer`` (which is back at its initial value between calls),
non-exported memories, mutable globals holding references, and an exported table that has grown (function
references cannot leave their store). Not checked: a non-exported table the guest rewrites at run time
(``table.set``); its element segments are re-applied by the fresh instantiation, which is right for what C
and Rust emit (an indirect-function table that never changes). Never captured: a call in progress (the
async fiber's native stack), so only a quiescent sandbox is snapshotted.

The file format is in :mod:`openfang.workers.sandbox._snapshot_file` (versioned, checksummed, bound to
the module's sha256; zero 4 KiB chunks skipped, then zlib).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from openfang.protocol.errors import SandboxError
from openfang.workers.manifest import AgentManifest
from openfang.workers.sandbox._snapshot_file import (
    CHUNK,
    HEADER_SIZE,
    PAGE,
    GlobalImage,
    MemoryImage,
    Snapshot,
    SnapshotError,
    decode,
    encode,
    read_snapshot,
    write_snapshot,
)
from openfang.workers.sandbox._wasm_layout import ModuleLayout, WasmFormatError, cached_layout, layout_of
from openfang.workers.sandbox._wasmtime import (
    GuestMemory,
    Runtime,
    export_memory,
    grow_memory,
    read_global,
    table_size,
    wasm_binary,
    write_global,
)
from openfang.workers.sandbox.builtin_guests import snapshot_fits
from openfang.workers.sandbox.instance import HostServices, Sandbox, load_code

__all__ = [
    "HEADER_SIZE",
    "GlobalImage",
    "MemoryImage",
    "Snapshot",
    "SnapshotError",
    "SnapshotInfo",
    "capture",
    "decode",
    "encode",
    "hibernate",
    "read_snapshot",
    "restore",
    "snapshot_layout",
    "wake",
    "write_snapshot",
]
_COUNTERS = ("llm_calls", "tool_calls", "denied", "messages", "yields")
_ZERO_PAGE = bytes(PAGE)
_ZERO_CHUNK = bytes(CHUNK)


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotInfo:
    """What :func:`hibernate` wrote."""

    path: Path
    file_bytes: int
    memory_bytes: int
    stored_bytes: int
    module_sha256: str


# -- capture and restore ---------------------------------------------------------------------------------
def snapshot_layout(sandbox: Sandbox) -> ModuleLayout:
    """The loaded module's layout; SnapshotError if it keeps state a snapshot cannot read back."""
    what = f"agent {sandbox.agent_id}"
    if not sandbox.module_digest:
        raise SnapshotError(f"{what}: cannot snapshot: the sandbox was never loaded")
    layout = cached_layout(sandbox.module_digest)
    if layout is None:
        code, digest = load_code(sandbox.manifest)
        if digest != sandbox.module_digest:
            raise SnapshotError(
                f"{what}: cannot snapshot: module {sandbox.manifest.module} changed on disk since it was "
                "loaded"
            )
        try:
            layout = layout_of(
                wasm_binary(code, what=f"{what}: module {sandbox.manifest.module}"), digest=digest
            )
        except WasmFormatError as exc:
            raise SnapshotError(
                f"{what}: cannot snapshot: cannot tell where module {sandbox.manifest.module} keeps its "
                f"state ({exc.message})"
            ) from None
    if layout.hidden:
        raise SnapshotError(
            f"{what}: cannot snapshot module {sandbox.manifest.module}: it keeps state a snapshot cannot "
            f"read back ({'; '.join(layout.hidden)})"
        )
    return layout


def capture(sandbox: Sandbox, *, clock: Callable[[], float] = time.time) -> Snapshot:
    """The guest state of a quiescent sandbox (no call in flight, no pending host job), left as it was."""
    problem = sandbox.quiescence_problem()
    if problem is not None:
        raise SnapshotError(f"agent {sandbox.agent_id}: cannot snapshot while {problem}")
    layout = snapshot_layout(sandbox)
    inst = sandbox.native_instance()
    memories = []
    for name in layout.memories:
        assert name is not None  # a hidden memory is refused by snapshot_layout
        mem = export_memory(inst, name)
        data = mem.read(0, mem.size()) if mem is not None else None
        if data is None:
            raise SnapshotError(f"agent {sandbox.agent_id}: cannot read memory {name!r}")
        memories.append(_pack_memory(name, data))
    globals_ = []
    for g in layout.exported_mutable_globals():
        assert g.export is not None
        valtype, _, bits = read_global(inst, g.export)
        globals_.append(GlobalImage(name=g.export, valtype=valtype, bits=bits))
    tables = []
    for minimum, export in layout.tables:
        if export is None:
            continue
        size = table_size(inst, export)
        if size is not None and size != minimum:
            raise SnapshotError(
                f"agent {sandbox.agent_id}: cannot snapshot: table {export!r} grew from {minimum} to {size} "
                "entries; the references it holds cannot be saved"
            )
        tables.append((export, minimum))
    meta = {
        "agent_id": sandbox.agent_id,
        "name": sandbox.manifest.name,
        "taken_at": clock(),
        "fuel_used": sandbox.fuel_used,
        "counters": {k: sandbox.counters.get(k, 0) for k in _COUNTERS},
    }
    return Snapshot(
        module_sha256=sandbox.module_digest,
        memories=tuple(memories),
        globals=tuple(globals_),
        tables=tuple(tables),
        meta=meta,
    )


def _pack_memory(name: str, data: bytes) -> MemoryImage:
    nchunks = -(-len(data) // CHUNK)
    bitmap = bytearray(-(-nchunks // 8))
    runs: list[tuple[int, int]] = []
    run_start = -1
    for page in range(0, len(data), PAGE):
        block = data[page : page + PAGE]
        if block == _ZERO_PAGE[: len(block)]:
            if run_start >= 0:
                runs.append((run_start, page))
                run_start = -1
            continue
        for off in range(page, page + len(block), CHUNK):
            piece = data[off : off + CHUNK]
            if piece == _ZERO_CHUNK[: len(piece)]:
                if run_start >= 0:
                    runs.append((run_start, off))
                    run_start = -1
                continue
            index = off // CHUNK
            bitmap[index >> 3] |= 1 << (index & 7)
            if run_start < 0:
                run_start = off
    if run_start >= 0:
        runs.append((run_start, len(data)))
    return MemoryImage(
        name=name,
        size=len(data),
        chunk=CHUNK,
        bitmap=bytes(bitmap),
        data=b"".join(data[a:b] for a, b in runs),
    )


def restore(sandbox: Sandbox, snap: Snapshot, *, fresh: bool = False) -> None:
    """Write ``snap`` into a loaded, quiescent sandbox of the same module.

    Memories are grown to their snapshot size and written: the non-zero chunks, and zeros wherever the
    sandbox's memory is not zero already (so a data segment the guest had cleared stays cleared). Zeros are
    never written over zero pages: that would make the kernel allocate them. ``fresh=True`` promises that
    nothing ran in the sandbox since ``load()`` (as in :func:`wake`): then only the module's data segments
    are checked, instead of the whole memory. Exported mutable globals are set, and the host's accounting
    (fuel used, counters) is carried over.
    """
    what = f"agent {sandbox.agent_id}"
    if not snapshot_fits(snap.module_sha256, sandbox.module_digest):
        raise SnapshotError(
            f"{what}: refusing to restore a snapshot of module sha256 {snap.module_sha256[:16]}... into "
            f"module {sandbox.manifest.module} (sha256 {sandbox.module_digest[:16]}...): a snapshot only "
            "fits the module it was taken from"
        )
    problem = sandbox.quiescence_problem()
    if problem is not None:
        raise SnapshotError(f"{what}: cannot restore while {problem}")
    layout = snapshot_layout(sandbox)
    inst = sandbox.native_instance()
    for image in snap.memories:
        mem = export_memory(inst, image.name)
        if mem is None:
            raise SnapshotError(f"{what}: the module exports no memory {image.name!r}")
        have = mem.size()
        if have > image.size:
            raise SnapshotError(
                f"{what}: memory {image.name!r} is already {have} bytes, the snapshot's is {image.size}: "
                "restore into a freshly loaded sandbox"
            )
        try:
            grow_memory(inst, image.name, image.size)
        except SandboxError as exc:
            cap = sandbox.manifest.sandbox.memory.max_heap_mb
            raise SnapshotError(
                f"{what}: cannot grow memory {image.name!r} to the snapshot's {image.size} bytes "
                f"(max_heap_mb={cap}): {exc.message}"
            ) from None
        dirty = [(0, have)]  # what may be non-zero now; grown pages are zero
        if fresh and layout.initialised is not None and image.name in layout.memories:
            index = layout.memories.index(image.name)
            dirty = [(a, min(b, have)) for m, a, b in layout.initialised if m == index and a < have]
        _write_memory(mem, image, dirty)
    for g in snap.globals:
        try:
            write_global(inst, g.name, g.valtype, g.bits)
        except SandboxError as exc:
            raise SnapshotError(f"{what}: cannot restore global {g.name!r}: {exc.message}") from None
    for name, size in snap.tables:
        if table_size(inst, name) != size:
            raise SnapshotError(f"{what}: table {name!r} does not have the snapshot's {size} entries")
    fuel = snap.meta.get("fuel_used")
    if isinstance(fuel, int):
        sandbox.fuel_used = fuel
    counters = snap.meta.get("counters")
    if isinstance(counters, dict):
        for key in _COUNTERS:
            if isinstance(counters.get(key), int):
                sandbox.counters[key] = counters[key]


def _write_memory(mem: GuestMemory, image: MemoryImage, dirty: list[tuple[int, int]]) -> None:
    if mem.size() < image.size:
        raise SnapshotError(f"memory {image.name!r} is {mem.size()} bytes, the snapshot needs {image.size}")
    pos = 0
    for start, end, non_zero in image.runs():
        if non_zero:
            n = end - start
            mem.write(start, image.data[pos : pos + n])  # in bounds: checked above
            pos += n
            continue
        for a, b in dirty:
            lo, hi = max(a, start), min(b, end)
            if lo < hi and mem.read(lo, hi - lo) != bytes(hi - lo):
                mem.write(lo, bytes(hi - lo))


# -- the host's API ----------------------------------------------------------------------------------------
def hibernate(sandbox: Sandbox, path: Path, *, close: bool = True, fsync: bool = True) -> SnapshotInfo:
    """Capture a quiescent sandbox, write it to ``path`` atomically, then (``close``) free the sandbox.

    Nothing is freed unless the file was written: on any error the sandbox stays as it was.
    """
    snap = capture(sandbox)
    size = write_snapshot(path, snap, fsync=fsync)
    if close:
        sandbox.close()
    return SnapshotInfo(
        path=Path(path),
        file_bytes=size,
        memory_bytes=snap.memory_bytes,
        stored_bytes=snap.stored_bytes,
        module_sha256=snap.module_sha256,
    )


def wake(
    path: Path,
    manifest: AgentManifest,
    runtime: Runtime,
    *,
    agent_id: str,
    services: HostServices,
    clock: Callable[[], float] = time.monotonic,
    import_check: Callable[[list[tuple[str, str, str]]], None] | None = None,
) -> Sandbox:
    """A new sandbox of ``manifest``'s module with the state saved at ``path``; agent_init is not run.

    The usual spawn checks apply (digest pin, imports, limits). Raises SnapshotError (the file, or a
    snapshot of another module or another agent id) or the load's own errors; nothing stays allocated on
    failure.
    """
    snap = read_snapshot(path)
    owner = snap.meta.get("agent_id")
    if isinstance(owner, str) and owner != agent_id:
        raise SnapshotError(f"{path}: the snapshot is of agent {owner}, not {agent_id}")
    sandbox = Sandbox(
        manifest, runtime, agent_id=agent_id, services=services, clock=clock, import_check=import_check
    )
    sandbox.load()
    try:
        restore(sandbox, snap, fresh=True)
    except BaseException:
        sandbox.close()
        raise
    return sandbox
