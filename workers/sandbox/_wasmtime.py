"""The one wrapper over wasmtime: engine, module cache, linker with host functions, stores, async calls.

This is the ONLY module of OpenFANG that imports ``wasmtime``. It uses wasmtime-py 50.0.1's public API plus
its private FFI (``wasmtime._ffi``) for the async call path, which the high-level API does not wrap:

- ``wasmtime_func_call_async`` + ``wasmtime_call_future_poll`` give a *resumable* call: with a fuel yield
  interval set, a poll runs the guest for one fuel slice and returns False (parked) instead of trapping.
  Deleting an unfinished future cancels the call cleanly.
- ``wasmtime_linker_define_async_func`` defines host functions that park the guest until a result is
  ready (LLM and tool calls), without blocking the thread that polls every other agent.

Invariants the rest of the package relies on:
- All wasm of a process runs on the thread that polls (one Store is never touched by two threads); the only
  other thread here is the epoch ticker, which calls ``Engine.increment_epoch`` (thread-safe).
- Host functions never raise across wasm: each callback catches everything and returns an error code.
- wasmtime errors and traps are translated into :class:`SandboxError` here, once.
- Every store is sliced from its creation, instantiation included: a module's ``start`` function yields on
  fuel and epoch ticks like any call, so it cannot hold the polling thread (and every neighbour) hostage.
- Every table of a module is exported (under a reserved name when the module does not export it) so the
  host can meter it: wasmtime's C API has no other way to see a table the guest keeps to itself.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import threading
from collections.abc import Callable, Sequence
from ctypes import POINTER, byref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from openfang.protocol.errors import SandboxError
from openfang.security._hashing import sha256
from openfang.workers.sandbox import _lazy_bindings
from openfang.workers.sandbox._module_cache import ModuleCache, ShippedModules

with _lazy_bindings.importing():  # its ~760 C functions made on first call (see _lazy_bindings)
    import wasmtime
from wasmtime import _ffi as ffi

WASMTIME_VERSION = "50.0.1"
FUEL_TANK = 1 << 62  # every store gets a tank this large; budgets are counted per slice, not by running dry
_MEMORY_EXPORT = b"memory"
_I32, _I64 = ffi.WASMTIME_I32.value, ffi.WASMTIME_I64.value
_EXTERN_FUNC, _EXTERN_MEMORY = ffi.WASMTIME_EXTERN_FUNC.value, ffi.WASMTIME_EXTERN_MEMORY.value
_EXTERN_TABLE = ffi.WASMTIME_EXTERN_TABLE.value
TABLE_ELEMENT_BYTES = 8  # what wasmtime 50 stores per table element (Store.set_limits' docstring)
MAX_TABLES = 64  # tables a store may ever be allowed (manifest max_tables, cluster tables_max)
TABLE_EXPORT_PREFIX = "\0openfang.table."  # reserved export names for the tables a module keeps private


# The C functions called on every slice and host call, through prototypes of our own (``dll[name]`` makes a
# new function object; wasmtime's bindings keep theirs) that take plain addresses and return plain integers:
# no Python wrapper frame, no pointer object made per call.
_VOID_P, _SIZE_T = ctypes.c_void_p, ctypes.c_size_t


def _holding_gil(name: str, restype: Any, *argtypes: Any) -> Any:
    """``name`` from libwasmtime called with the GIL held: for the calls that run no guest code and return
    at once (a ctypes call that releases the GIL drops and takes it back, and lets another thread in
    between: ~30 ns more a call here). Only the poll runs the guest, and must let the epoch ticker in."""
    return ctypes.PYFUNCTYPE(restype, *argtypes)((name, ffi.dll))


# Guest memory's size and base address:
_memory_data_addr = _holding_gil("wasmtime_memory_data", _VOID_P, _VOID_P, _VOID_P)
_memory_data_len = _holding_gil("wasmtime_memory_data_size", _SIZE_T, _VOID_P, _VOID_P)
# The async call itself: start (builds the future: no guest code runs until its first poll), poll, delete
# (a future is a plain address here). The call's two size_t counts are declared void* too: the same width
# and the same (integer) register on every platform wasmtime's C API ships for, and ctypes converts an int
# to c_void_p ~0.08 us faster than to c_size_t (0.71 -> 0.54 us a call, once per guest call).
assert ctypes.sizeof(ctypes.c_size_t) == ctypes.sizeof(_VOID_P)
_func_call_async = _holding_gil("wasmtime_func_call_async", _VOID_P, *[_VOID_P] * 8)
_future_poll = ffi.dll["wasmtime_call_future_poll"]  # runs the guest: releases the GIL
_future_poll.restype = ctypes.c_bool
_future_poll.argtypes = [ctypes.c_void_p]
# Deleting an unfinished future unwinds the guest's fiber without running guest code or callbacks.
_future_delete = _holding_gil("wasmtime_call_future_delete", None, _VOID_P)
# The fuel read after every poll (a wasmtime_error_t*, None when it worked) and the epoch deadline set
# before it.
_get_fuel = _holding_gil("wasmtime_context_get_fuel", _VOID_P, _VOID_P, _VOID_P)
_set_epoch_deadline = _holding_gil("wasmtime_context_set_epoch_deadline", None, _VOID_P, ctypes.c_uint64)

# The same calls on every message (the call's start, the fuel read after each poll, the memory's size) take
# prebuilt arguments: each is a ctypes argument object (``byref``) naming a pointer-sized word, made once
# per instance (its context, its call buffer's slots, its functions, its memory) and passed to a prototype
# that declares no argtypes, which ctypes copies as it is. Through the void* prototypes above, each int
# argument is converted anew on every call (``c_void_p.from_param``: a classmethod call, a scan of ctypes'
# field descriptors, a new argument object): ~35 ns an argument here, 14 a message. A prototype without
# argtypes takes any argument: it is only ever handed words made by _word/byref (a plain int would go as
# a C int), and is tested through every call of the call-path tests.
assert ctypes.sizeof(_VOID_P) == 8, "a word argument passes a u64 or size_t as a pointer"


def _taking_words(name: str, restype: Any) -> Any:
    """``name`` from libwasmtime, called with the GIL held, its arguments prebuilt words (see _word)."""
    return ctypes.PYFUNCTYPE(restype)((name, ffi.dll))


def _word(value: int) -> Any:
    """A ctypes argument passing the pointer-sized ``value`` (an address or a count) as it is: a
    reference to a (never read) ``c_char`` at that address, or None (NULL, i.e. 0)."""
    return ctypes.byref(ctypes.c_char.from_address(value)) if value else None


_call_async_w = _taking_words("wasmtime_func_call_async", _VOID_P)
_get_fuel_w = _taking_words("wasmtime_context_get_fuel", _VOID_P)
_memory_data_len_w = _taking_words("wasmtime_memory_data_size", _SIZE_T)
_COUNT_WORDS = tuple(_word(n) for n in range(3))  # a call's argument and result counts, 0 to 2

# The host-function callbacks and the linker calls that register them, the same way: every pointer a
# callback receives is a plain address (ctypes makes no pointer object per argument, ~0.1 us each), the i32
# arguments are unpacked from the wasmtime_val_t array in one read, and the result and the continuation
# are written with one memmove each.
_SYNC_CALLBACK = ctypes.CFUNCTYPE(_SIZE_T, _VOID_P, _VOID_P, _VOID_P, _SIZE_T, _VOID_P, _SIZE_T)
_ASYNC_CALLBACK = ctypes.CFUNCTYPE(
    None, _VOID_P, _VOID_P, _VOID_P, _SIZE_T, _VOID_P, _SIZE_T, _VOID_P, _VOID_P
)
_CONTINUATION = ctypes.CFUNCTYPE(ctypes.c_bool, _VOID_P)
# The continuation of a host call whose result is written before the callback returns (the job was done
# when it started: the scripted model's, every refusal): a native function that reports completion without
# entering Python (a ctypes callback would: ~1 us with its GIL round trip). libc's ``abs`` of the env word
# 1 returns 1, i.e. true in the C ABI's bool (the low byte of the int return register); wasmtime's
# continuation type passes (env, caller, trap) in the integer argument registers, and abs reads the first
# only. Checked here through a prototype of the continuation's own type; where that does not hold (another
# ABI), _DONE_AT is 0 and an answered call takes the Python continuation like any other.
_DONE_ENV = 1
_DONE_AT = ctypes.cast(ctypes.CDLL(None).abs, ctypes.c_void_p).value or 0
_AS_CONTINUATION = ctypes.CFUNCTYPE(ctypes.c_bool, _VOID_P, _VOID_P, _VOID_P)  # (env, caller, trap)
if _DONE_AT and _AS_CONTINUATION(_DONE_AT)(_DONE_ENV, 0, 0) is not True:
    _DONE_AT = 0
_define_func = ffi.dll["wasmtime_linker_define_func"]
_define_func.restype = _VOID_P  # a wasmtime_error_t*, None when it worked
_define_func.argtypes = [_VOID_P, _VOID_P, _SIZE_T, _VOID_P, _SIZE_T, _VOID_P, _VOID_P, _VOID_P, _VOID_P]
_define_async_func = ffi.dll["wasmtime_linker_define_async_func"]
_define_async_func.restype = _VOID_P
_define_async_func.argtypes = [
    _VOID_P,
    _VOID_P,
    _SIZE_T,
    _VOID_P,
    _SIZE_T,
    _VOID_P,
    _VOID_P,
    _VOID_P,
    _VOID_P,
]
_VAL_SIZE = ctypes.sizeof(ffi.wasmtime_val_t)
_VAL_OF = ffi.wasmtime_val_t.of.offset  # where the value sits in a wasmtime_val_t (after the kind byte)
# A host function's n wasmtime_val_t arguments as an array of i32s (a view made on the callback's address),
# and the step between the values: an i32 argument is the first 4 bytes of its value's union.
_ARG_I32S = {n: ctypes.c_int32 * (n * _VAL_SIZE // 4) for n in range(4)}
_ARG_AT, _ARG_STEP = _VAL_OF // 4, _VAL_SIZE // 4
# A host function's one result as two words: the kind (i32) and the value (its low 4 bytes the i32).
_RESULT_WORDS = ctypes.c_uint64 * 2
_CONTINUATION_WORDS = ctypes.c_size_t * 3  # wasmtime_async_continuation_t: callback, env, finalizer
# Views of those buffers kept by address (Runtime's _arg_views, _result_views, _cont_views): at most this
# many of each kind, cleared when full (an instance's host-call buffers are one or two addresses).
_VIEWS_LIMIT = 4096


def _view(views: dict[int, Any], kind: Any, at: int) -> Any:
    """A ``kind`` view of the buffer at ``at``, kept in ``views`` (the callbacks' lookups miss here)."""
    if len(views) >= _VIEWS_LIMIT:
        views.clear()
    view = views[at] = kind.from_address(at)
    return view


# An instance's call buffer, in 8-byte words (one ctypes array, its address kept): the arguments of a call
# (up to two values), its result value, the trap and error slots a failed call fills, and the fuel read
# after each poll. Filled and read by index (~50 ns a word) instead of ctypes struct fields (~0.2 us each).
_VAL_WORDS = _VAL_SIZE // 8
_BUF_ARGS = 2  # calls with more arguments (or more than one result) get buffers of their own
_RESULT_WORD = _BUF_ARGS * _VAL_WORDS
_TRAP_WORD = _RESULT_WORD + _VAL_WORDS
_ERROR_WORD = _TRAP_WORD + 1
_FUEL_WORD = _ERROR_WORD + 1
_CALL_WORDS = _FUEL_WORD + 1
_RESULT_OFFSET, _TRAP_OFFSET = 8 * _RESULT_WORD, 8 * _TRAP_WORD  # the same, in bytes
_ERROR_OFFSET, _FUEL_OFFSET = 8 * _ERROR_WORD, 8 * _FUEL_WORD
if _VAL_SIZE % 8 or _VAL_OF != 8:
    raise ImportError("wasmtime_val_t is not a kind word and a value union: check the wasmtime version")
if ctypes.sizeof(ffi.wasmtime_async_continuation_t) != ctypes.sizeof(_CONTINUATION_WORDS):
    raise ImportError("wasmtime_async_continuation_t is not three pointers: check the wasmtime version")

# wasmtime._ffi declares this one with a wasmtime_error_t* result, but the C function returns void in
# 50.0.1 (reading the "result" segfaulted): call it through the dll with the right signature.
_epoch_yield_and_update = ffi.dll.wasmtime_context_epoch_deadline_async_yield_and_update
_epoch_yield_and_update.restype = None
_epoch_yield_and_update.argtypes = [ctypes.POINTER(ffi.wasmtime_context_t), ctypes.c_uint64]


def _kind(item: Any) -> int:
    """The kind tag of an extern/val (typed c_uint8 by the bindings, an int at run time)."""
    return int(item.kind)


class GuestTrap(SandboxError):
    """The guest trapped (or was interrupted); ``trap_code`` is a snake_case name like ``stack_overflow``."""

    def __init__(self, message: str, *, trap_code: str) -> None:
        super().__init__(message)
        self.trap_code = trap_code


def _trap_error(trap_ptr: Any) -> GuestTrap:
    trap = wasmtime.Trap._from_ptr(trap_ptr)
    code = trap.trap_code
    if code is not None:  # the code says it all; the message is a backtrace
        name = code.name.lower()
        return GuestTrap(f"guest trapped: {name}", trap_code=name)
    first = trap.message.splitlines()[0] if trap.message else "unknown"
    return GuestTrap(f"guest trapped: {first}", trap_code="trap")


def _wasmtime_error(err_ptr: Any, what: str) -> SandboxError:
    err = wasmtime.WasmtimeError._from_ptr(err_ptr)
    return SandboxError(f"{what}: {str(err).splitlines()[0] if str(err) else 'wasmtime error'}")


# Bumped by grow_memory (the host growing a memory): every GuestMemory reads its size again. The guest
# grows its memory only while it runs, inside a poll: the instance's own GuestMemory (``tracked``) is marked
# stale on entering every host function and at the end of every poll, so it reads its size once per host
# call and once after a poll, not once per access (each native call costs ~0.3 us), and not again for a
# message written after another agent's poll. Any other GuestMemory reads it on every access. The base
# address is read again only when the size changed: a linear memory never shrinks, it moves only when it
# grows.
_memory_epoch = [0]
_EMPTY = memoryview(bytearray())
_U32_PAIR = struct.Struct("<II")


class GuestMemory:
    """Bounds-checked access to the calling instance's ``memory`` export, valid during one host call.

    Reads and writes go through a memoryview of the whole memory (a slice copy: ~0.1 us, against ~0.4 us
    for ``ctypes.string_at`` or ``memmove``), made again whenever the size changes. Every access checks
    its range against the size first: the view is never indexed outside the memory.
    """

    __slots__ = ("_ctx", "_ctx_at", "_mem", "_mem_at", "_seen", "_size", "_size_args", "_tracked", "_view")

    def __init__(self, ctx: Any, mem: Any, *, tracked: bool = False, ctx_word: Any = None) -> None:
        self._ctx = ctx  # kept alive: the addresses below point into them
        self._mem = mem
        self._ctx_at = ctypes.cast(ctx, ctypes.c_void_p).value
        self._mem_at = ctypes.addressof(mem)
        # The size read's arguments as prebuilt words (see _word): the context (the instance's own word
        # when it hands one) and the memory; made at the first read.
        self._size_args: tuple[Any, Any] | None = (ctx_word, ctypes.byref(mem)) if ctx_word else None
        self._tracked = tracked  # the instance's own: marked stale (``stale``) whenever the guest may grow it
        self._seen = -1  # _memory_epoch when the size was read, -1 when it must be read again
        self._size = -1
        self._view = _EMPTY

    def _refresh(self) -> None:
        """Read the size again (after anything that may have grown the memory); on a new size, the base
        address too (a growth past the reservation for growth moves the memory: see Runtime) and a new
        view over it."""
        args = self._size_args
        if args is None:
            args = self._size_args = (_word(self._ctx_at or 0), ctypes.byref(self._mem))
        size = _memory_data_len_w(*args)
        if size != self._size:
            addr = _memory_data_addr(self._ctx_at, self._mem_at) or 0
            self._view = (
                memoryview((ctypes.c_ubyte * size).from_address(addr)).cast("B") if addr and size else _EMPTY
            )
            self._size = size if addr else 0
        self._seen = _memory_epoch[0] if self._tracked else -1

    def stale(self) -> None:
        """The guest may have grown this memory since: read its size again at the next access."""
        self._seen = -1

    def size(self) -> int:
        if self._seen != _memory_epoch[0]:
            self._refresh()
        return self._size

    def read(self, ptr: int, length: int) -> bytes | None:
        """The bytes at [ptr, ptr+length), or None when the range is outside memory."""
        if self._seen != _memory_epoch[0]:
            self._refresh()
        if ptr < 0 or length < 0 or ptr + length > self._size:
            return None
        return self._view[ptr : ptr + length].tobytes()

    def read_many(self, ranges: Sequence[tuple[int, int]], *, max_total: int) -> list[bytes] | None:
        """The bytes of each (ptr, length) range; None if one is outside memory or all exceed max_total."""
        if self._seen != _memory_epoch[0]:
            self._refresh()
        size, view = self._size, self._view
        out = []
        total = 0
        for ptr, length in ranges:
            end = ptr + length
            total += length
            if ptr < 0 or length < 0 or end > size or total > max_total:
                return None
            out.append(view[ptr:end].tobytes())
        return out

    def read_gather(self, ptr: int, length: int, *, max_total: int) -> list[bytes] | None:
        """The bytes of each range an iovec array names (little-endian u32 ``(ptr, len)`` pairs at
        [ptr, ptr+length)), read from the memory without copying the array first; None when the array is
        outside memory or not whole pairs, a range is outside memory, or all exceed ``max_total``."""
        if self._seen != _memory_epoch[0]:
            self._refresh()
        size, view = self._size, self._view
        if ptr < 0 or length < 0 or length % 8 or ptr + length > size:
            return None
        out = []
        total = 0
        for at, n in _U32_PAIR.iter_unpack(view[ptr : ptr + length]):
            end = at + n
            total += n
            if end > size or total > max_total:
                return None
            out.append(view[at:end].tobytes())
        return out

    def unpack(self, layout: struct.Struct, ptr: int) -> tuple[Any, ...] | None:
        """``layout.unpack`` of the bytes at ``ptr`` (no copy made), or None when they are outside memory."""
        if self._seen != _memory_epoch[0]:
            self._refresh()
        if ptr < 0 or ptr + layout.size > self._size:
            return None
        return layout.unpack_from(self._view, ptr)

    def write(self, ptr: int, data: bytes) -> bool:
        """Copy ``data`` to ``ptr``; False (nothing written) when it would not fit."""
        if self._seen != _memory_epoch[0]:
            self._refresh()
        end = ptr + len(data)
        if ptr < 0 or end > self._size:
            return False
        if data:
            self._view[ptr:end] = data
        return True


# An async host function returns a poller: None while the result is pending, else the i32 result. A host
# whose result is ready when the call is made returns the i32 itself (see Runtime._async_trampoline).
AsyncPoller = Callable[[], int | None]


class HostDispatch(Protocol):
    """What the sandbox being polled implements so the linker's host functions can reach it."""

    def host_sync(self, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> int: ...

    def host_async(self, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> AsyncPoller | int: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class HostFunctionSpec:
    """One ``env.<name>`` import the host provides: ``nparams`` i32 params, one i32 result."""

    name: str
    nparams: int
    is_async: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOptions:
    """Engine-wide settings; a serialized module only loads into an engine with the same options."""

    max_wasm_stack_kb: int = 512
    epoch_tick_ms: int = 10
    fuel_slice: int = 1_000_000  # fuel per poll before the guest yields back to the scheduler


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreLimits:
    """What one store may hold; wasmtime refuses more (instantiation fails, ``memory.grow`` and
    ``table.grow`` return -1). One instance with one linear memory is all the guest ABI needs."""

    memory_bytes: int  # per linear memory
    table_elements: int = 10_000  # per table
    tables: int = 4
    memories: int = 1
    instances: int = 1


class Runtime:
    """One engine + linker + compiled-module cache. Create inside the worker process (after fork)."""

    def __init__(
        self,
        host_functions: Sequence[HostFunctionSpec],
        *,
        options: EngineOptions | None = None,
        cache_dir: Path | None = None,
        shipped_dir: Path | None = None,
    ) -> None:
        self.options = options or EngineOptions()
        cfg = wasmtime.Config()
        cfg.consume_fuel = True
        cfg.epoch_interruption = True
        # No 4 GiB reservation per linear memory: ~32k agents would exhaust vm.max_map_count. A small
        # growth reservation (virtual only, one PROT_NONE mapping) spares page-by-page growth a copy of the
        # whole memory on every grow. Per agent: memory + growth tail + cached fiber stack and its guard =
        # 4 mappings, so a process holds ~16k agents at the default vm.max_map_count (65530).
        cfg.memory_reservation = 0
        cfg.memory_guard_size = 0
        cfg.memory_reservation_for_growth = 8 << 20
        # Workers are forked, and compiling with parallel_compilation on after a fork deadlocked (measured).
        cfg.parallel_compilation = False
        cfg.max_wasm_stack = self.options.max_wasm_stack_kb * 1024
        ffi.wasmtime_config_async_stack_size_set(cfg.ptr(), self.options.max_wasm_stack_kb * 1024 + (1 << 20))
        self.engine = wasmtime.Engine(cfg)
        self.linker = wasmtime.Linker(self.engine)
        self.current: HostDispatch | None = None  # the sandbox whose call is being polled right now
        # The polled instance's memory (set with current, after instantiation): a host call reads it
        # instead of looking the caller's "memory" export up again. One instance per store, so the caller
        # is always that instance.
        self.current_memory: GuestMemory | None = None
        # The call being polled: a host call that parks it is registered on it (AsyncCall.cancel forgets it).
        self.current_call: AsyncCall | None = None
        self.live_stores = 0
        self._cache = ModuleCache(cache_dir)
        self.cache_refused = self._cache.refused  # why the disk cache is not used, if it is not
        # The built-in guests compiled at install time (read-only; see _module_cache.ShippedModules).
        self._shipped = ShippedModules(shipped_dir)
        self.shipped_refused = self._shipped.refused
        self._pres: dict[str, tuple[wasmtime.Module, wasmtime.InstancePre]] = {}
        self._table_names: dict[int, tuple[bytes, ...]] = {}  # by InstancePre address
        self._imports: dict[str, tuple[tuple[str, str, str], ...]] = {}  # by module digest (cached_imports)
        self._names = [spec.name for spec in host_functions]
        self.host_specs = {spec.name: spec for spec in host_functions}
        self._sync_cb = _SYNC_CALLBACK(self._sync_trampoline)
        self._async_cb = _ASYNC_CALLBACK(self._async_trampoline)
        self._cont_cb = _CONTINUATION(self._continuation)
        self._cont_at = ctypes.cast(self._cont_cb, ctypes.c_void_p).value or 0
        # key -> (poller, results address) of each parked host call: the continuation removes its entry
        # when it completes, AsyncCall.cancel when the call is dropped parked (so no finalizer callback).
        self._pending: dict[int, tuple[AsyncPoller, int]] = {}
        self._next_pending = 1
        # Typed views of the buffers wasmtime hands the async callback (a parking call's two i32 arguments,
        # its result, the continuation), by address: wasmtime hands the same addresses call after call (an
        # instance's argument and result buffer, one continuation slot), and a view only names a type at an
        # address, so the one kept is exactly the one ``from_address`` would make again (~85 ns a view).
        self._arg_views: dict[int, Any] = {}
        self._result_views: dict[int, Any] = {}
        self._cont_views: dict[int, Any] = {}
        for idx, spec in enumerate(host_functions):
            self._define(idx, spec)
        self._ticker_stop = threading.Event()
        self._ticker: threading.Thread | None = None
        # Epoch ticks so far (the ticker is the only one to advance the engine's epoch, and counts them
        # after each): a store whose deadline was set at this count still has it ahead (see set_deadline).
        self.ticks = 0

    # -- host functions -------------------------------------------------------------------------------
    def _define(self, idx: int, spec: HostFunctionSpec) -> None:
        i32 = wasmtime.ValType.i32()
        ty = wasmtime.FuncType([i32] * spec.nparams, [i32])
        mod, name = b"env", spec.name.encode()
        define, callback = (
            (_define_async_func, self._async_cb) if spec.is_async else (_define_func, self._sync_cb)
        )
        linker = ctypes.cast(self.linker.ptr(), ctypes.c_void_p).value
        functype = ctypes.cast(ty.ptr(), ctypes.c_void_p).value
        cb = ctypes.cast(callback, ctypes.c_void_p).value
        err = define(linker, mod, len(mod), name, len(name), functype, cb, idx, None)
        if err:
            raise _wasmtime_error(
                ctypes.cast(err, POINTER(ffi.wasmtime_error_t)), f"defining host function env.{spec.name}"
            )

    @staticmethod
    def _memory(caller_at: int) -> GuestMemory | None:
        caller = ctypes.cast(caller_at, POINTER(ffi.wasmtime_caller_t))
        item = ffi.wasmtime_extern_t()
        if not ffi.wasmtime_caller_export_get(caller, _MEMORY_EXPORT, len(_MEMORY_EXPORT), byref(item)):
            return None
        if _kind(item) != _EXTERN_MEMORY:
            return None
        return GuestMemory(ffi.wasmtime_caller_context(caller), item.of.memory)

    def _call_memory_and_args(
        self, caller: int, args: int, nargs: int
    ) -> tuple[GuestMemory | None, tuple[int, ...]]:
        """A host call's guest memory (marked stale: the guest ran before this call) and its i32 arguments."""
        mem = self.current_memory
        if mem is None:
            mem = self._memory(caller)
        else:
            mem._seen = -1  # stale()
        return mem, tuple(_ARG_I32S[nargs].from_address(args)[_ARG_AT::_ARG_STEP]) if nargs else ()

    def _sync_trampoline(
        self, env: int | None, caller: int, args: int, nargs: int, results: int, nres: int
    ) -> int:
        # Never raise across wasm: any failure becomes an error code for the guest.
        code = -2
        try:
            target = self.current
            if target is not None:
                mem, values = self._call_memory_and_args(caller, args, nargs)
                code = int(target.host_sync(self._names[env or 0], mem, values))
        except Exception:
            code = -2
        out = _RESULT_WORDS.from_address(results)
        out[0] = _I32
        out[1] = code & 0xFFFFFFFF
        return 0

    def _async_trampoline(
        self,
        env: int | None,
        caller: int,
        args: int,
        nargs: int,
        results: int,
        nres: int,
        trap: int,
        cont: int,
    ) -> None:
        poller: AsyncPoller | int
        try:
            target = self.current
            if target is None:
                poller = -2
            else:  # _call_memory_and_args, inlined (once per parking host call)
                mem = self.current_memory
                if mem is None:
                    mem = self._memory(caller)
                else:
                    mem._seen = -1  # stale(): the guest ran before this call
                if nargs == 2:  # the guest ABI's parking calls: (ptr, len), read without a slice's list
                    i32s = self._arg_views.get(args)
                    if i32s is None:
                        i32s = _view(self._arg_views, _ARG_I32S[2], args)
                    values: tuple[int, ...] = (i32s[_ARG_AT], i32s[_ARG_AT + _ARG_STEP])
                else:
                    values = tuple(_ARG_I32S[nargs].from_address(args)[_ARG_AT::_ARG_STEP]) if nargs else ()
                poller = target.host_async(self._names[env or 0], mem, values)
        except Exception:
            poller = -2
        fields = self._cont_views.get(cont)
        if fields is None:
            fields = _view(self._cont_views, _CONTINUATION_WORDS, cont)
        if not _DONE_AT and isinstance(poller, int):
            poller = _const(poller)  # no native continuation on this ABI: answered through the pending path
        if poller.__class__ is int:
            # Answered now: the result goes where wasmtime reads it once the continuation reports completion
            # (it keeps `results` until then), and the continuation is native (no pending entry, no park).
            out = self._result_views.get(results)
            if out is None:
                out = _view(self._result_views, _RESULT_WORDS, results)
            out[0] = _I32
            out[1] = poller & 0xFFFFFFFF
            fields[0] = _DONE_AT
            fields[1] = _DONE_ENV
            fields[2] = 0
            return
        if not callable(poller):  # a host's bug: an error code for the guest, never a raise across wasm
            poller = _const(-2)
        key = self._next_pending
        self._next_pending += 1
        # wasmtime keeps `results` alive until the continuation reports completion.
        self._pending[key] = (poller, results)
        call = self.current_call
        if call is not None:  # always, but for a guest called outside AsyncCall.poll (never done)
            call.parked = key
        # The continuation: our callback and the key as its env; no finalizer (a ctypes callback on every
        # host call): the entry goes when the continuation completes or when the call is cancelled.
        fields[0] = self._cont_at
        fields[1] = key
        fields[2] = 0

    def _continuation(self, env: int | None) -> bool:
        key = env or 0
        entry = self._pending.get(key)
        if entry is None:
            return True
        poller, results = entry
        try:
            value = poller()
        except Exception:
            value = -2
        if value is None:
            return False
        del self._pending[key]
        out = _RESULT_WORDS.from_address(results)
        out[0] = _I32
        out[1] = int(value) & 0xFFFFFFFF
        return True

    # -- modules --------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        o = self.options
        return sha256(
            f"{WASMTIME_VERSION}/{o.max_wasm_stack_kb}/fuel/epoch/res0/grow8m/tables-exported".encode()
        ).hexdigest()[:16]

    def module_imports(self, module: wasmtime.Module) -> list[tuple[str, str, str]]:
        """(module, name, kind) of each import, for checking against the allowlist before instantiating."""
        out = []
        for imp in module.imports:
            kind = type(imp.type).__name__.removesuffix("Type").lower()
            out.append((imp.module, imp.name or "", kind))
        return out

    def cached_imports(self, digest: str) -> list[tuple[str, str, str]] | None:
        """:meth:`module_imports` of the compiled module ``digest`` (None if not compiled here), worked out
        once per module: walking a module's import types through the C API costs ~60 us, and a warm spawn
        checks them against its manifest every time. A new list each call (the caller's to keep)."""
        imports = self._imports.get(digest)
        if imports is None:
            hit = self._pres.get(digest)
            if hit is None:
                return None
            imports = self._imports[digest] = tuple(self.module_imports(hit[0]))
        return list(imports)

    def module_exports(self, module: wasmtime.Module) -> set[str]:
        return {exp.name for exp in module.exports}

    def module_export_types(self, module: wasmtime.Module) -> dict[str, tuple[str, ...]]:
        """Each export's type as plain names: ``("func", "i32,i32", "i64")`` (params, results) for a
        function, ``("global", "i32", "const")`` (value type, ``const`` or ``mut``) for a global,
        ``("memory",)`` or ``("table",)`` otherwise."""
        out: dict[str, tuple[str, ...]] = {}
        for exp in module.exports:
            ty = exp.type
            if isinstance(ty, wasmtime.FuncType):
                out[exp.name] = ("func", ",".join(map(str, ty.params)), ",".join(map(str, ty.results)))
            elif isinstance(ty, wasmtime.GlobalType):
                out[exp.name] = ("global", str(ty.content), "mut" if ty.mutable else "const")
            else:
                out[exp.name] = (type(ty).__name__.removesuffix("Type").lower(),)
        return out

    def compile(self, code: bytes, *, digest: str, what: str) -> tuple[wasmtime.Module, bool]:
        """(module, was_cached). Compiled code is cached in memory and, if a cache dir is set, on disk.

        Loading a compiled artifact is trusting it (it is machine code): a file is loaded only when it is
        ours and intact (workers/sandbox/_module_cache.py); a folder others may write is not used at all
        (the reason is in :attr:`cache_refused`). The data dir's cache is looked in first, then the
        modules compiled at install time (``shipped_dir``, root's or ours: :attr:`shipped_refused`).
        Whatever is wrong with either, the module is compiled in memory and the spawn goes on.
        """
        hit = self._pres.get(digest)
        if hit is not None:
            return hit[0], True
        cache = self._cache
        path = cache.path(digest, self.fingerprint()) if cache.enabled else None
        if path is not None:
            with cache.verified(path) as source:
                if source is not None:
                    try:
                        return wasmtime.Module.deserialize_file(self.engine, source), True
                    except wasmtime.WasmtimeError as exc:  # stale or foreign artifact: recompile below
                        cache.discard(path, f"wasmtime refused it: {_first_line(exc)}")
        shipped = self._shipped
        if shipped.enabled:  # compiled at install time: mapped as the data dir's copy would be
            at = shipped.path(digest, self.fingerprint())
            with shipped.verified(at) as source:
                if source is not None:
                    try:
                        return wasmtime.Module.deserialize_file(self.engine, source), True
                    except wasmtime.WasmtimeError as exc:  # another wasmtime, engine setting or CPU
                        shipped.ignore(at, f"wasmtime refused it: {_first_line(exc)}")
        binary = wasm_binary(code, what=what)
        try:
            module = wasmtime.Module(self.engine, export_tables(binary))
        except wasmtime.WasmtimeError as exc:
            raise SandboxError(f"{what}: not a valid wasm module: {_first_line(exc)}") from None
        finally:
            release_compiler_pages()
        if path is not None:
            cache.write(path, bytes(module.serialize()))
        return module, False

    def instance_pre(self, module: wasmtime.Module, *, digest: str, what: str) -> wasmtime.InstancePre:
        hit = self._pres.get(digest)
        if hit is not None:
            return hit[1]
        try:
            pre = self.linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise SandboxError(f"{what}: cannot link: {str(exc).splitlines()[0]}") from None
        self._pres[digest] = (module, pre)
        return pre

    def table_exports(self, pre: wasmtime.InstancePre) -> tuple[bytes, ...]:
        """The names of the table exports of ``pre``'s module (all its tables), computed once per module."""
        key = ctypes.addressof(pre.ptr().contents)
        names = self._table_names.get(key)
        if names is None:
            module = pre.module
            names = tuple(e.name.encode() for e in module.exports if isinstance(e.type, wasmtime.TableType))
            module.close()
            self._table_names[key] = names
        return names

    def cached_pre(self, digest: str) -> wasmtime.InstancePre | None:
        hit = self._pres.get(digest)
        return hit[1] if hit else None

    # -- epoch ----------------------------------------------------------------------------------------
    def start_ticker(self) -> None:
        """Advance the engine epoch every tick in a daemon thread: the wall-clock backstop for long slices."""
        if self._ticker is not None:
            return
        tick = self.options.epoch_tick_ms / 1000.0

        def run() -> None:
            while not self._ticker_stop.wait(tick):
                # Only while a guest runs (a poll is on): an epoch read by no deadline is no use, and
                # advancing it runs libwasmtime's code, which maps ~1 MB of it back into an idle worker
                # that dropped it (release_compiler_pages). Deadlines are set relative to the epoch at
                # each poll, so not counting the time between polls changes none.
                if self.current is not None:
                    self.engine.increment_epoch()
                    self.ticks += 1

        self._ticker = threading.Thread(target=run, name="wasm-epoch", daemon=True)
        self._ticker.start()

    def deadline_ticks(self, seconds_left: float) -> int:
        return max(1, int(seconds_left * 1000 / self.options.epoch_tick_ms) + 1)

    def close(self) -> None:
        self._ticker_stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1.0)
            self._ticker = None
        for module, pre in self._pres.values():
            pre.close()
            module.close()
        self._pres.clear()
        self._table_names.clear()
        self._imports.clear()
        self.linker.close()


_MADV_DONTNEED = 4
_libc: Any = None
_clean_ranges: list[tuple[int, int]] | None = None  # see _library_clean_ranges


def release_compiler_pages_at_next_fork() -> None:
    """:func:`release_compiler_pages` once, in this process, right after its next fork (on the parent's
    side). The supervisor that imports the worker module before its forks never runs wasmtime: what its
    import touched of the library is dropped once the first worker is forked, while that worker starts on
    the other core and the supervisor only waits for its ready, not before the fork on the cold start's
    path (~0.65 ms). A child forked before that sees no difference: a fork copies no page table entry of
    a clean file mapping, it maps what it runs on use."""
    due = [True]

    def after_in_parent() -> None:
        if due:
            due.clear()
            release_compiler_pages()

    os.register_at_fork(after_in_parent=after_in_parent)


def release_compiler_pages() -> int:
    """Unmap from this process the pages of libwasmtime's code and read-only data that it has touched; the
    bytes advised.

    Compiling a module runs Cranelift, ~10 MB of libwasmtime's machine code that a worker otherwise never
    runs again; the pages it touched would stay mapped, and counted in this long-lived process's memory,
    for as long as it lives (measured: the library's private pages 1.2 -> 12.1 MB after one compile, 2.4 MB
    after this). Running guests touches more (the runtime's code, its constants and unwind tables): a
    quiet worker drops them too. Only mappings of the library that are not writable and hold no page of
    their own are advised (clean pages of the file, as the kernel would drop under memory pressure): the
    page cache keeps them, and what the runtime uses next is mapped again on its next use (a minor fault;
    the kernel maps the file's pages in large folios, ~1 MB at a time here). The relocated data, read-only
    after relocation but holding this process's own copies, is never touched. Best effort: any failure
    leaves the pages mapped.
    """
    global _libc, _clean_ranges
    try:
        if _libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            libc.madvise.restype = ctypes.c_int
            _libc = libc
        if _clean_ranges is None:
            _clean_ranges = _library_clean_ranges()
        advised = 0
        for start, length in _clean_ranges:
            if _libc.madvise(start, length, _MADV_DONTNEED) == 0:
                advised += length
        return advised
    except (OSError, ValueError):
        return 0


def _library_clean_ranges() -> list[tuple[int, int]]:
    """(start, length) of each mapping of ``_libwasmtime.so`` that is not writable and holds no anonymous
    (copy-on-write) page: its machine code and its read-only data exactly as in the file, never the data
    the loader relocated (read-only afterwards, but this process's own copy). A page's kind comes from
    ``/proc/self/pagemap`` (present and not file-backed, or swapped: a private copy). Worked out once per
    process (a fork inherits it): a loaded library's mappings never change (~0.5 ms; smaps, which walks
    every mapping's pages, took 3.5 ms in the root, and a worker holding many agents has tens of thousands
    of mappings). Any doubt leaves a mapping out."""
    candidates: list[tuple[int, int]] = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            head = line.split(maxsplit=5)  # a path may hold spaces
            if len(head) == 6 and "w" not in head[1] and head[5].rstrip().endswith("/_libwasmtime.so"):
                start, end = (int(x, 16) for x in head[0].split("-"))
                candidates.append((start, end - start))
    page = mmap.PAGESIZE
    clean = []
    with open("/proc/self/pagemap", "rb", buffering=0) as pagemap:
        for start, length in candidates:
            pagemap.seek(start // page * 8)
            entries = pagemap.read(length // page * 8)
            # One little-endian u64 per page; its top byte holds present (0x80), swapped (0x40) and
            # file-backed (0x20).
            if len(entries) == length // page * 8 and b"\1" not in entries[7::8].translate(_PRIVATE_COPY):
                clean.append((start, length))
    return clean


# By a pagemap entry's top byte: 1 when the page is this process's own copy (swapped, or present and not
# file-backed).
_PRIVATE_COPY = bytes(1 if (top & 0x40) or (top & 0xA0) == 0x80 else 0 for top in range(256))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _i32(value: int) -> int:
    """``value`` wrapped to a signed i32, as assigning it to a ctypes c_int32 field wraps it."""
    return ((value + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def _const(value: int) -> AsyncPoller:
    return lambda: value


def wasm_binary(code: bytes, *, what: str) -> bytes:
    """The wasm binary of ``code``: binary as is, WAT text converted; anything else is refused clearly
    (what ``compile`` and the snapshot layout reader both start from)."""
    if code[:4] == b"\0asm":
        return code
    try:
        text = code.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SandboxError(
            f"{what}: not a WebAssembly module: no \\0asm header, and not WAT text "
            f"(byte {exc.start} is not UTF-8)"
        ) from None
    try:
        return bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "parse error"
        raise SandboxError(
            f"{what}: not a WebAssembly module: no \\0asm header, and not valid WAT text: {first}"
        ) from None


def _leb(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the unsigned LEB128 at ``pos``; IndexError/ValueError when malformed."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 35:
            raise ValueError("LEB128 too long")


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _name(data: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = _leb(data, pos)
    if pos + length > len(data):
        raise ValueError("name runs past its section")
    return data[pos : pos + length], pos + length


def start_section(wasm: bytes) -> bool:
    """Whether the module binary ``wasm`` has a start function (section 8); True when its sections cannot
    be read (the cautious answer: a start function runs guest code at instantiation)."""
    if wasm[:8] != b"\0asm\1\0\0\0":
        return True
    try:
        pos = 8
        while pos < len(wasm):
            if wasm[pos] == 8:
                return True
            size, body = _leb(wasm, pos + 1)
            pos = body + size
    except (IndexError, ValueError):
        return True
    return pos != len(wasm)


def export_tables(wasm: bytes) -> bytes:
    """``wasm`` with every table the module defines exported, so the host can see (meter) all of them.

    Only the section layout, the table count and the export section are read; a module this cannot read
    (malformed, or importing anything but functions, which the import check refuses anyway) is returned
    unchanged for wasmtime to judge. The added exports get reserved names no guest import can reach.
    """
    if wasm[:8] != b"\0asm\1\0\0\0":  # a core module, version 1 (a component is laid out otherwise)
        return wasm
    try:
        sections: list[tuple[int, int, int, int]] = []  # (id, start, payload start, end)
        pos = 8
        while pos < len(wasm):
            size, body = _leb(wasm, pos + 1)
            sections.append((wasm[pos], pos, body, body + size))
            pos = body + size
        if pos != len(wasm):
            return wasm
        by_id = {sid: (start, body, end) for sid, start, body, end in sections if sid}
        if 2 in by_id:  # imported tables would shift the indices; only function imports are readable here
            _, body, end = by_id[2]
            count, p = _leb(wasm, body)
            for _ in range(count):
                _, p = _name(wasm, p)
                _, p = _name(wasm, p)
                if wasm[p] != 0x00:
                    return wasm
                _, p = _leb(wasm, p + 1)
        if 4 not in by_id or 7 not in by_id:
            return wasm
        ntables, _ = _leb(wasm, by_id[4][1])
        if ntables > MAX_TABLES:  # more than any store admits (refused at instantiation); never loop on it
            return wasm
        start, body, end = by_id[7]
        count, p = _leb(wasm, body)
        names: set[bytes] = set()
        exported: set[int] = set()
        for _ in range(count):
            name, p = _name(wasm, p)
            kind = wasm[p]
            index, p = _leb(wasm, p + 1)
            names.add(name)
            if kind == 0x01:
                exported.add(index)
        if p != end:
            return wasm
    except (IndexError, ValueError):
        return wasm
    missing = [i for i in range(ntables) if i not in exported]
    if not missing:
        return wasm
    extra = bytearray()
    for i in missing:
        name = f"{TABLE_EXPORT_PREFIX}{i}".encode()
        while name in names:
            name += b"_"
        extra += _uleb(len(name)) + name + b"\x01" + _uleb(i)
    payload = _uleb(count + len(missing)) + wasm[_leb(wasm, body)[1] : end] + bytes(extra)
    section = b"\x07" + _uleb(len(payload)) + payload
    return wasm[:start] + section + wasm[end:]


class Instance:
    """One store + one instance of a module: the native half of a sandbox. close() frees it all."""

    def __init__(
        self,
        runtime: Runtime,
        pre: wasmtime.InstancePre,
        *,
        max_memory_bytes: int | None = None,
        limits: StoreLimits | None = None,
    ) -> None:
        if limits is None:
            if max_memory_bytes is None:
                raise SandboxError("an instance needs limits (or max_memory_bytes)")
            limits = StoreLimits(memory_bytes=max_memory_bytes)
        self.runtime = runtime
        self.limits = limits
        self.store = wasmtime.Store(runtime.engine)
        runtime.live_stores += 1
        self._ctx = self.store._context()
        self._ctx_at = ctypes.cast(self._ctx, ctypes.c_void_p).value  # the same, as a plain address
        self.store.set_limits(
            memory_size=limits.memory_bytes,
            table_elements=limits.table_elements,
            instances=limits.instances,
            tables=limits.tables,
            memories=limits.memories,
        )
        self.store.set_fuel(FUEL_TANK)
        self.store.set_epoch_deadline(1 << 40)
        self._raw = ffi.wasmtime_instance_t()
        self._funcs: dict[str, Any] = {}
        self._tables: tuple[Any, ...] | None = None
        self._call: AsyncCall | None = None
        # Fuel consumed up to the end of the last poll: every poll of this store reads the fuel once and
        # charges the difference to that poll (all wasm of the store runs inside AsyncCall.poll).
        self._fuel_mark = 0
        self.last_poll_fuel = 0
        self._mem: GuestMemory | None = None  # the "memory" export, looked up once (after instantiation)
        self._mem_looked_up = False
        # The call buffer (see _CALL_WORDS) reused by every call (one call at a time per store): arguments,
        # result, where a call that fails leaves its trap or error (cleared before each call), fuel.
        self._words = (ctypes.c_uint64 * _CALL_WORDS)()
        self._words_at = ctypes.addressof(self._words)
        # The call's prebuilt arguments (_call_words), made for the first message (Sandbox.begin_message):
        # an agent only spawned holds none (~0.7 KiB).
        self._refs: tuple[Any, ...] | None = None
        self._pre = pre
        self.closed = False
        self.sliced = False
        self._deadline_tick = -1  # Runtime.ticks when the epoch deadline was last set (set_deadline)
        self.after_instantiate()

    def instantiate_call(self) -> AsyncCall:
        """Start the (async) instantiation; poll the returned call to completion like any other call.

        The store is already sliced, so a ``start`` function yields every fuel slice and epoch tick like
        any call: the caller decides between polls whether it has spent too much.
        """
        call = AsyncCall(self, None, what="instantiation")
        self._words[_TRAP_WORD] = self._words[_ERROR_WORD] = 0
        at = self._words_at
        future = ffi.wasmtime_instance_pre_instantiate_async(
            self._pre.ptr(),
            self._ctx,
            byref(self._raw),
            ctypes.cast(at + 8 * _TRAP_WORD, POINTER(POINTER(ffi.wasm_trap_t))),
            ctypes.cast(at + 8 * _ERROR_WORD, POINTER(POINTER(ffi.wasmtime_error_t))),
        )
        call.future = ctypes.cast(future, ctypes.c_void_p).value
        self._call = call
        return call

    def after_instantiate(self) -> None:
        """Switch the store to slices: yield every ``fuel_slice`` fuel and at every epoch tick (idempotent;
        the constructor does it, so instantiation is sliced too).

        Fuel alone does not bound wall time (one bulk ``memory.fill`` costs little fuel), so reaching the
        epoch deadline *yields* too (and moves the deadline one tick on): no poll runs much longer than a
        tick, and the host enforces the call's wall-clock deadline between polls.
        """
        if self.sliced:
            return
        err = ffi.wasmtime_context_fuel_async_yield_interval(self._ctx, self.runtime.options.fuel_slice)
        if err:
            raise _wasmtime_error(err, "setting the fuel yield interval")
        _epoch_yield_and_update(self._ctx, 1)
        self.sliced = True

    def release_call(self) -> None:
        """Forget the last call once it has finished: an idle instance holds no call and its ctypes
        buffers (~0.8 KiB an idle agent)."""
        if self._call is not None and self._call.finished:
            self._call = None

    def _call_words(self) -> tuple[Any, ...]:
        """The prebuilt arguments (see _word) of this instance's calls and fuel reads: its context, then its
        call buffer's argument, result, trap, error and fuel slots; kept to close. Until they are made, calls
        and fuel reads convert their arguments as plain integers (the same calls, ~35 ns an argument more)."""
        words = self._words
        refs = self._refs = (
            _word(self._ctx_at or 0),
            byref(words),
            byref(words, _RESULT_OFFSET),
            byref(words, _TRAP_OFFSET),
            byref(words, _ERROR_OFFSET),
            byref(words, _FUEL_OFFSET),
        )
        mem = self._mem
        if mem is not None and mem._size_args is None:  # its size read shares the context's word
            mem._size_args = (refs[0], byref(mem._mem))
        return refs

    def has_export(self, name: str) -> bool:
        return self._func(name) is not None

    def _func(self, name: str) -> Any:
        """The exported function ``name`` as a call argument (a ``byref`` of its wasmtime_func_t, which it
        keeps: ``._obj``), or None when there is no such function."""
        if name in self._funcs:
            return self._funcs[name]
        item = ffi.wasmtime_extern_t()
        raw = name.encode()
        found = ffi.wasmtime_instance_export_get(self._ctx, byref(self._raw), raw, len(raw), byref(item))
        # A copy of the 16-byte func, not a view that keeps the whole extern alive (~0.3 KiB an agent).
        func = (
            byref(ffi.wasmtime_func_t.from_buffer_copy(item.of.func))
            if found and _kind(item) == _EXTERN_FUNC
            else None
        )
        self._funcs[name] = func
        return func

    def call(self, name: str, args: Sequence[int], nresults: int) -> AsyncCall:
        """Start an async call of export ``name`` with i32 args; only one call per store may be alive."""
        if self.closed:
            raise SandboxError("instance is closed")
        if self._call is not None and not self._call.finished:
            raise SandboxError(f"cannot call {name!r}: another call is in progress on this instance")
        func = self._funcs[name] if name in self._funcs else self._func(name)
        if func is None:
            raise SandboxError(f"guest does not export function {name!r}")
        call = AsyncCall(self, name)
        call.start(func, args, nresults)
        self._call = call
        return call

    def fuel_consumed(self) -> int:
        refs = self._refs
        err = (
            _get_fuel_w(refs[0], refs[5]) if refs else _get_fuel(self._ctx_at, self._words_at + _FUEL_OFFSET)
        )
        if err:
            raise _wasmtime_error(ctypes.cast(err, POINTER(ffi.wasmtime_error_t)), "reading fuel")
        return FUEL_TANK - self._words[_FUEL_WORD]

    def _charge_poll(self) -> None:
        """After a poll: what it consumed goes to ``last_poll_fuel`` (one fuel read per poll)."""
        consumed = self.fuel_consumed()
        self.last_poll_fuel = consumed - self._fuel_mark
        self._fuel_mark = consumed

    def set_deadline(self, seconds_left: float) -> None:
        """Before slicing: trap after ``seconds_left``. Once sliced: yield at the next epoch tick.

        Sliced, the native call is skipped while the epoch has not ticked since the last one: the deadline
        it set (one tick on) is still ahead. (A poll that races a tick at worst yields once early.)
        """
        if not self.sliced:
            _set_epoch_deadline(self._ctx_at, self.runtime.deadline_ticks(seconds_left))
            return
        tick = self.runtime.ticks
        if tick != self._deadline_tick:
            self._deadline_tick = tick
            _set_epoch_deadline(self._ctx_at, 1)

    def memory_size(self) -> int:
        mem = self.memory()
        return mem.size() if mem is not None else 0

    def table_elements(self) -> list[int]:
        """The current size of each table of the instance (every table is exported: see export_tables).

        Only the table exports are looked up, once: fetching every export would register each function
        in the store (about 0.4 KiB an agent).
        """
        if self._tables is None:
            found = []
            item = ffi.wasmtime_extern_t()
            for raw in self.runtime.table_exports(self._pre):
                ok = ffi.wasmtime_instance_export_get(self._ctx, byref(self._raw), raw, len(raw), byref(item))
                if ok and _kind(item) == _EXTERN_TABLE:
                    found.append(ffi.wasmtime_table_t.from_buffer_copy(item.of.table))
            self._tables = tuple(found)  # () for most modules: the shared empty tuple
        if not self._tables:
            return []
        return [int(ffi.wasmtime_table_size(self._ctx, byref(t))) for t in self._tables]

    def table_bytes(self) -> int:
        return sum(self.table_elements()) * TABLE_ELEMENT_BYTES

    def footprint(self) -> int:
        """``memory_size() + table_bytes()`` in one step for the common instance (its memory looked up, no
        table): the memory meter read after every message."""
        mem = self._mem
        if mem is not None and self._tables == ():
            return mem.size()
        return self.memory_size() + self.table_bytes()

    def memory(self) -> GuestMemory | None:
        """The instance's ``memory`` export (looked up once: an export of an instance never changes)."""
        if not self._mem_looked_up:
            if self.closed:
                return None
            item = ffi.wasmtime_extern_t()
            found = ffi.wasmtime_instance_export_get(
                self._ctx, byref(self._raw), _MEMORY_EXPORT, 6, byref(item)
            )
            if not found or _kind(item) != _EXTERN_MEMORY:
                return None  # not cached: only modules without a memory (never a guest's) get here again
            self._mem = GuestMemory(
                self._ctx,
                ffi.wasmtime_memory_t.from_buffer_copy(item.of.memory),
                tracked=True,
                ctx_word=self._refs[0] if self._refs else None,
            )
            self._mem_looked_up = True
        return self._mem

    def close(self) -> None:
        """Cancel any call in flight and free the store (memory, instance, fiber stack) right now."""
        if self.closed:
            return
        self.closed = True
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self._funcs.clear()
        self._refs = None
        self._tables = None
        self._mem, self._mem_looked_up = None, True
        self.store.close()
        self.runtime.live_stores -= 1


class AsyncCall:
    """One resumable call: poll() runs the guest till done, yields (fuel slice) or parks on the host.

    The argument and result buffers are the instance's own (one call at a time per store); the result is
    copied out when the call finishes, so a finished call's result outlives the next call.
    """

    __slots__ = (
        "_keep",
        "_name",
        "_outcome",
        "_results_at",
        "_value",
        "finished",
        "future",
        "inst",
        "nresults",
        "parked",
        "what_",
    )

    def __init__(self, inst: Instance, name: str | None, *, what: str = "call") -> None:
        self.inst = inst
        self.what_ = what
        self._name = name  # None for the instantiation (no memory export to hand host calls yet)
        self.nresults = 0
        self._results_at = 0
        self._keep: Any = None  # argument/result buffers of a call too big for the instance's
        self.future: Any = None
        self.finished = False
        self.parked = 0  # the key of the host call this call is parked on (Runtime._pending), if any
        self._outcome: SandboxError | None = None
        self._value = 0

    @property
    def what(self) -> str:
        return f"call to {self._name}" if self._name is not None else self.what_

    def start(self, func: Any, args: Sequence[int], nresults: int) -> None:
        """Start calling ``func`` (as :meth:`Instance._func` gives it) with the i32 ``args``: the
        instance's call buffer takes up to two arguments and one result (the guest ABI's calls), passed as
        the instance's prebuilt words; more get buffers of their own."""
        inst = self.inst
        words, at = inst._words, inst._words_at
        nargs = len(args)
        if nargs <= _BUF_ARGS:  # a wasmtime_val_t: the kind (i32) in the first word, then the value
            args_at = at
            if nargs:
                words[0] = _I32
                words[1] = args[0] & 0xFFFFFFFF
                if nargs == 2:
                    words[_VAL_WORDS] = _I32
                    words[_VAL_WORDS + 1] = args[1] & 0xFFFFFFFF
            refs = inst._refs
            if refs is not None and nresults <= 1:  # the guest ABI's calls: every argument a prebuilt word
                self.nresults = nresults  # _results_at stays 0: the result is in the instance's buffer
                words[_TRAP_WORD] = words[_ERROR_WORD] = 0
                self.future = _call_async_w(
                    refs[0],
                    func,
                    refs[1],
                    _COUNT_WORDS[nargs],
                    refs[2],
                    _COUNT_WORDS[nresults],
                    refs[3],
                    refs[4],
                )
                return
        else:
            buf = (ffi.wasmtime_val_t * nargs)()
            for i, value in enumerate(args):
                buf[i].kind = _I32  # type: ignore[assignment]  # ctypes fields take ints
                buf[i].of.i32 = value
            self._keep = buf
            args_at = ctypes.addressof(buf)
        if nresults <= 1:
            results_at = at + _RESULT_OFFSET
        else:
            results = (ffi.wasmtime_val_t * nresults)()
            self._keep = (self._keep, results)
            results_at = ctypes.addressof(results)
        self.nresults = nresults
        self._results_at = results_at
        words[_TRAP_WORD] = words[_ERROR_WORD] = 0
        self.future = _func_call_async(
            inst._ctx_at,
            ctypes.addressof(func._obj),
            args_at,
            nargs,
            results_at,
            nresults,
            at + _TRAP_OFFSET,
            at + _ERROR_OFFSET,
        )

    def poll(self, dispatch: HostDispatch) -> bool:
        """Run one slice with ``dispatch`` as the target of host calls. True when the call has finished.

        The fuel the slice consumed is then in the instance's ``last_poll_fuel``.
        """
        if self.finished:
            return True
        inst = self.inst
        runtime = inst.runtime
        runtime.current = dispatch
        # A call (not the instantiation) runs in an instantiated instance: its memory export is known.
        mem = None if self._name is None else inst._mem if inst._mem_looked_up else inst.memory()
        runtime.current_memory = mem
        runtime.current_call = self
        try:
            done = _future_poll(self.future)
        finally:
            runtime.current = None
            runtime.current_memory = None
            runtime.current_call = None
            if mem is not None:
                mem._seen = -1  # stale(): the guest ran
        # What the poll consumed (one fuel read per poll): Instance._charge_poll, inlined.
        words = inst._words
        refs = inst._refs  # None until the agent's first message (see Instance._call_words)
        if _get_fuel_w(refs[0], refs[5]) if refs else _get_fuel(inst._ctx_at, inst._words_at + _FUEL_OFFSET):
            inst.fuel_consumed()  # raises the error
        consumed = FUEL_TANK - words[_FUEL_WORD]
        inst.last_poll_fuel = consumed - inst._fuel_mark
        inst._fuel_mark = consumed
        if not done:
            return False
        self.finished = True
        _future_delete(self.future)
        self.future = None
        trap, error = words[_TRAP_WORD], words[_ERROR_WORD]
        if trap:
            self._outcome = _trap_error(ctypes.cast(trap, POINTER(ffi.wasm_trap_t)))
        elif error:
            self._outcome = _wasmtime_error(
                ctypes.cast(error, POINTER(ffi.wasmtime_error_t)), f"{self.what} failed"
            )
        elif self.nresults:
            if not self._results_at or self._results_at == inst._words_at + _RESULT_OFFSET:
                kind, raw = words[_RESULT_WORD], words[_RESULT_WORD + 1]
            else:
                kind, raw = struct.unpack("<QQ", ctypes.string_at(self._results_at, 16))
            # The value's bits: an i64 fills the word, an i32 its low half (the rest is not ours to read).
            if kind & 0xFF == _I64:
                self._value = raw - (1 << 64) if raw >> 63 else raw
            else:
                self._value = _i32(raw & 0xFFFFFFFF)
        return True

    def result(self) -> int:
        """The i32/i64 result (0 for none) of a finished call; raises the translated trap or error."""
        if not self.finished:
            raise SandboxError("call has not finished")
        if self._outcome is not None:
            raise self._outcome
        return self._value

    def cancel(self) -> None:
        """Drop an unfinished call: wasmtime unwinds the guest's fiber; the store stays usable."""
        if self.future is not None:
            _future_delete(self.future)
            self.future = None
            if self.parked:  # dropped while parked on a host call: its continuation will never run
                self.inst.runtime._pending.pop(self.parked, None)
        self.finished = True
        if self._outcome is None:
            self._outcome = SandboxError("call cancelled")


# -- reading back and restoring guest state (workers/sandbox/snapshot.py) -----------------------------------
# Module-level functions over an Instance rather than methods: the snapshot code is additive to the call path.

# The numeric value types a snapshot can save, with their wasmtime_val_t kind and their width in bytes.
_VALUE_KINDS: dict[str, tuple[int, int]] = {
    "i32": (_I32, 4),
    "i64": (_I64, 8),
    "f32": (ffi.WASMTIME_F32.value, 4),
    "f64": (ffi.WASMTIME_F64.value, 8),
    "v128": (ffi.WASMTIME_V128.value, 16),
}
_EXTERN_GLOBAL = ffi.WASMTIME_EXTERN_GLOBAL.value


def _export(inst: Instance, name: str, kind: int) -> Any:
    """The raw extern ``name`` of ``kind`` exported by the instance, or None."""
    if inst.closed:
        raise SandboxError("instance is closed")
    item = ffi.wasmtime_extern_t()
    raw = name.encode()
    found = ffi.wasmtime_instance_export_get(inst._ctx, byref(inst._raw), raw, len(raw), byref(item))
    return item if found and _kind(item) == kind else None


def call_in_flight(inst: Instance) -> bool:
    """True while a call (or the instantiation) on this instance has not finished: its fiber is live."""
    return inst._call is not None and not inst._call.finished


def export_memory(inst: Instance, name: str) -> GuestMemory | None:
    """Bounds-checked access to the memory exported as ``name`` (valid until the store is closed)."""
    item = _export(inst, name, _EXTERN_MEMORY)
    return GuestMemory(inst._ctx, item.of.memory) if item is not None else None


def grow_memory(inst: Instance, name: str, size: int) -> None:
    """Grow memory ``name`` to ``size`` bytes (a multiple of 64 KiB); SandboxError past the store's limits."""
    item = _export(inst, name, _EXTERN_MEMORY)
    if item is None:
        raise SandboxError(f"the instance exports no memory {name!r}")
    have = int(ffi.wasmtime_memory_data_size(inst._ctx, byref(item.of.memory)))
    if size <= have:
        return
    prev = ctypes.c_uint64(0)
    err = ffi.wasmtime_memory_grow(inst._ctx, byref(item.of.memory), (size - have) >> 16, byref(prev))
    _memory_epoch[0] += 1
    if err:
        raise _wasmtime_error(err, f"growing memory {name!r} from {have} to {size} bytes")


def table_size(inst: Instance, name: str) -> int | None:
    """The current size of the table exported as ``name`` (None if there is none)."""
    item = _export(inst, name, _EXTERN_TABLE)
    return int(ffi.wasmtime_table_size(inst._ctx, byref(item.of.table))) if item is not None else None


def read_global(inst: Instance, name: str) -> tuple[str, bool, bytes]:
    """(value type, mutable, value bits) of the global exported as ``name``.

    The bits are the little-endian bytes of the value (4/8/16 bytes), exact for floats and NaN payloads;
    reference-typed globals have no bits (b"") since a reference cannot leave its store.
    """
    item = _export(inst, name, _EXTERN_GLOBAL)
    if item is None:
        raise SandboxError(f"the instance exports no global {name!r}")
    ty = wasmtime.Global._from_raw(item.of.global_).type(inst.store)
    valtype = str(ty.content)
    kind = _VALUE_KINDS.get(valtype)
    if kind is None:
        return valtype, ty.mutable, b""
    val = ffi.wasmtime_val_t()
    ffi.wasmtime_global_get(inst._ctx, byref(item.of.global_), byref(val))
    return valtype, ty.mutable, ctypes.string_at(ctypes.addressof(val.of), kind[1])


def write_global(inst: Instance, name: str, valtype: str, bits: bytes) -> None:
    """Set the mutable numeric global ``name`` to ``bits`` (as :func:`read_global` returned them)."""
    item = _export(inst, name, _EXTERN_GLOBAL)
    if item is None:
        raise SandboxError(f"the instance exports no global {name!r}")
    kind = _VALUE_KINDS.get(valtype)
    if kind is None or len(bits) != kind[1]:
        raise SandboxError(f"global {name!r}: cannot set a {valtype} from {len(bits)} bytes")
    val = ffi.wasmtime_val_t()
    val.kind = kind[0]  # type: ignore[assignment]  # ctypes fields take ints
    ctypes.memmove(ctypes.addressof(val.of), bits, len(bits))
    err = ffi.wasmtime_global_set(inst._ctx, byref(item.of.global_), byref(val))
    if err:
        raise _wasmtime_error(err, f"setting global {name!r}")


def exported_i32(inst: Instance, name: str) -> int | None:
    """The value of the i32 global exported as ``name``, as an unsigned 32-bit number; None when the
    instance exports no global of that name or its type is not i32 (the guest ABI's ``agent_inbox``)."""
    item = _export(inst, name, _EXTERN_GLOBAL)
    if item is None:
        return None
    val = ffi.wasmtime_val_t()
    ffi.wasmtime_global_get(inst._ctx, byref(item.of.global_), byref(val))
    if _kind(val) != _I32:
        return None
    return int(val.of.i32) & 0xFFFFFFFF
