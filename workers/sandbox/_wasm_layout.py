"""Where a wasm module keeps its state: a small reader of the binary format's import, table, memory, global,
export and name sections (pure Python; the rest of the module is skipped by section length).

wasmtime-py shows a module's *exported* globals only, so this is how a snapshot learns whether a module keeps
state it cannot read back: a mutable global that is not exported (other than LLVM's ``__stack_pointer``,
which is back at its initial value between calls), or a memory that is not exported.

How ``__stack_pointer`` is recognised: by the name section's global names when the module has one (clang
and rustc keep it unless stripped); in a stripped module, the first defined global is taken as the stack
pointer only when it is a mutable i32 that is not exported *and* the module exports ``__heap_base`` or
``__data_end`` (symbols only LLVM's wasm linker defines, exported by rustc cdylibs by default). Otherwise the
global counts as hidden state: positive evidence or a refusal, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

from openfang.protocol.errors import SandboxError
from openfang.security._hashing import sha256

_SECTION_IMPORT, _SECTION_TABLE, _SECTION_MEMORY, _SECTION_GLOBAL, _SECTION_EXPORT = 2, 4, 5, 6, 7
_SECTION_START, _SECTION_DATA = 8, 11
_KIND_FUNC, _KIND_TABLE, _KIND_MEMORY, _KIND_GLOBAL, _KIND_TAG = 0, 1, 2, 3, 4
_NUMERIC = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128"}
_REF_SHORTHAND = {
    0x70: "funcref",
    0x6F: "externref",
    0x6E: "anyref",
    0x6D: "eqref",
    0x6C: "i31ref",
    0x6B: "structref",
    0x6A: "arrayref",
    0x69: "exnref",
    0x71: "nullref",
    0x72: "nullexternref",
    0x73: "nullfuncref",
    0x74: "nullexnref",
}
_LLVM_MARKERS = frozenset({"__heap_base", "__data_end"})
_CACHE_LIMIT = 256


class WasmFormatError(SandboxError):
    """The module bytes could not be read as a wasm binary (offset and reason in the message)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GlobalInfo:
    """One global of the module (imported ones first, as the index space has them)."""

    index: int
    valtype: str
    mutable: bool
    imported: bool
    export: str | None  # the first export name that reaches it
    debug_name: str | None  # from the name section, if any

    def describe(self) -> str:
        name = f" (${self.debug_name})" if self.debug_name else ""
        return f"global {self.index}{name}: {'mut ' if self.mutable else ''}{self.valtype}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModuleLayout:
    """The state-holding parts of a module and what a snapshot can and cannot read back."""

    memories: tuple[str | None, ...]  # per memory index, the export that reaches it (None: not exported)
    imported_memories: int
    globals: tuple[GlobalInfo, ...]
    tables: tuple[tuple[int, str | None], ...]  # per table index: (minimum size, export name or None)
    stack_pointer: int | None  # the global index taken as LLVM's __stack_pointer, if any
    hidden: tuple[str, ...]  # state a snapshot cannot capture, each described for an error message
    # What a fresh instance may hold besides zeros: (memory index, start, end) of each active data segment;
    # None when that is unknown (a start function, or a segment whose offset is not a constant).
    initialised: tuple[tuple[int, int, int], ...] | None = ()

    @property
    def restorable(self) -> bool:
        return not self.hidden

    def exported_mutable_globals(self) -> list[GlobalInfo]:
        return [g for g in self.globals if g.mutable and g.export is not None]


class _Reader:
    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = start
        self.end = len(data) if end is None else end

    def fail(self, what: str) -> WasmFormatError:
        return WasmFormatError(f"malformed wasm at byte {self.pos}: {what}")

    def byte(self) -> int:
        if self.pos >= self.end:
            raise self.fail("unexpected end")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise self.fail(f"{n} bytes needed, {self.end - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uleb(self, bits: int = 32) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
            if shift >= bits + 7:
                raise self.fail("integer too long")
        return result

    def sleb(self, bits: int) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                if b & 0x40:
                    result -= 1 << shift
                return result
            if shift >= bits + 7:
                raise self.fail("integer too long")

    def name(self) -> str:
        raw = self.take(self.uleb())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("name is not UTF-8") from None

    def valtype(self) -> str:
        code = self.byte()
        if code in _NUMERIC:
            return _NUMERIC[code]
        if code in _REF_SHORTHAND:
            return _REF_SHORTHAND[code]
        if code in (0x63, 0x64):  # (ref null ht) / (ref ht): a heap type follows, as an s33
            heap = self.sleb(33)
            return f"ref{' null' if code == 0x63 else ''} {heap}"
        raise self.fail(f"unknown value type 0x{code:02x}")

    def limits(self) -> int:
        """Read table/memory limits; return the minimum."""
        flags = self.byte()
        if flags & ~0x0F:
            raise self.fail(f"unknown limits flags 0x{flags:02x}")
        bits = 64 if flags & 0x04 else 32
        minimum = self.uleb(bits)
        if flags & 0x01:
            self.uleb(bits)
        if flags & 0x08:  # custom page size: log2 of the page size
            self.uleb()
        return minimum

    def const_expr(self) -> int | None:
        """Skip a constant expression up to its ``end``; its value when it is a lone i32/i64.const."""
        first, value, count = -1, 0, 0
        while True:
            op = self.byte()
            if op == 0x0B:
                return value if count == 1 and first in (0x41, 0x42) else None
            count += 1
            first = op if count == 1 else first
            if op in (0x41, 0x42):
                value = self.sleb(32 if op == 0x41 else 64)
                continue
            if op == 0x43:
                self.take(4)
            elif op == 0x44:
                self.take(8)
            elif op in (0x23, 0xD2):  # global.get, ref.func
                self.uleb()
            elif op == 0xD0:  # ref.null heaptype
                self.sleb(33)
            elif op in (0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E):  # extended-const add/sub/mul
                pass
            elif op == 0xFD and self.uleb() == 12:  # v128.const
                self.take(16)
            else:
                raise self.fail(f"unsupported opcode 0x{op:02x} in a constant expression")


def parse_layout(wasm: bytes) -> ModuleLayout:
    """The layout of a binary module. Raises :class:`WasmFormatError` on bytes it cannot read."""
    r = _Reader(wasm)
    if r.take(4) != b"\0asm":
        raise r.fail("not a wasm binary (magic)")
    if r.take(4) != b"\x01\0\0\0":
        raise r.fail("unsupported wasm binary version")
    globals_: list[dict[str, object]] = []
    initialised: list[tuple[int, int, int]] | None = []
    memories: list[str | None] = []
    tables: list[list[object]] = []
    imported_memories = 0
    exports: dict[tuple[int, int], str] = {}
    export_names: set[str] = set()
    global_names: dict[int, str] = {}
    while r.pos < r.end:
        section = r.byte()
        size = r.uleb()
        body_end = r.pos + size
        if body_end > r.end:
            raise r.fail(f"section {section} runs past the end")
        s = _Reader(wasm, r.pos, body_end)
        if section == _SECTION_IMPORT:
            for _ in range(s.uleb()):
                s.name()
                s.name()
                kind = s.byte()
                if kind == _KIND_FUNC:
                    s.uleb()
                elif kind == _KIND_TABLE:
                    s.valtype()
                    tables.append([s.limits(), None])
                elif kind == _KIND_MEMORY:
                    s.limits()
                    memories.append(None)
                    imported_memories += 1
                elif kind == _KIND_GLOBAL:
                    valtype = s.valtype()
                    globals_.append({"valtype": valtype, "mutable": s.byte() == 1, "imported": True})
                elif kind == _KIND_TAG:
                    s.byte()
                    s.uleb()
                else:
                    raise s.fail(f"unknown import kind {kind}")
        elif section == _SECTION_TABLE:
            for _ in range(s.uleb()):
                with_init = s.data[s.pos] == 0x40 if s.pos < s.end else False
                if with_init:
                    s.take(2)  # 0x40 0x00
                s.valtype()
                tables.append([s.limits(), None])
                if with_init:
                    s.const_expr()
        elif section == _SECTION_MEMORY:
            for _ in range(s.uleb()):
                s.limits()
                memories.append(None)
        elif section == _SECTION_GLOBAL:
            for _ in range(s.uleb()):
                valtype = s.valtype()
                mutable = s.byte() == 1
                s.const_expr()
                globals_.append({"valtype": valtype, "mutable": mutable, "imported": False})
        elif section == _SECTION_EXPORT:
            for _ in range(s.uleb()):
                name = s.name()
                kind = s.byte()
                index = s.uleb()
                exports.setdefault((kind, index), name)
                export_names.add(name)
        elif section == _SECTION_START:
            initialised = None
        elif section == _SECTION_DATA and initialised is not None:
            initialised = _data_segments(s)
        elif section == 0 and s.name() == "name":
            global_names = _global_names(s)
        r.pos = body_end
    for (kind, index), name in exports.items():
        if kind == _KIND_MEMORY and index < len(memories):
            memories[index] = name
        elif kind == _KIND_TABLE and index < len(tables):
            tables[index][1] = name
    infos = tuple(
        GlobalInfo(
            index=i,
            valtype=str(g["valtype"]),
            mutable=bool(g["mutable"]),
            imported=bool(g["imported"]),
            export=exports.get((_KIND_GLOBAL, i)),
            debug_name=global_names.get(i),
        )
        for i, g in enumerate(globals_)
    )
    stack_pointer = _stack_pointer(infos, export_names)
    hidden: list[str] = []
    for g in infos:
        if not g.mutable or g.index == stack_pointer:
            continue
        if g.export is None:
            hint = ""
            if g.index == _first_defined(infos) and g.valtype == "i32" and not g.debug_name:
                hint = (
                    " (if it is LLVM's __stack_pointer, keep the name section or export __heap_base:"
                    " -Wl,--export=__heap_base)"
                )
            hidden.append(f"non-exported mutable {g.describe()}{hint}")
        elif g.valtype not in _NUMERIC.values():
            hidden.append(f"exported mutable {g.describe()} holds a reference, which cannot be saved")
    for index, export in enumerate(memories):
        if export is None:
            hidden.append(f"memory {index} is not exported")
    return ModuleLayout(
        memories=tuple(memories),
        imported_memories=imported_memories,
        globals=infos,
        tables=tuple((int(str(t[0])), t[1] if isinstance(t[1], str) else None) for t in tables),
        stack_pointer=stack_pointer,
        hidden=tuple(hidden),
        initialised=tuple(initialised) if initialised is not None else None,
    )


def _data_segments(s: _Reader) -> list[tuple[int, int, int]] | None:
    """(memory, start, end) of each active data segment; None if an offset is not a constant."""
    out: list[tuple[int, int, int]] | None = []
    for _ in range(s.uleb()):
        flag = s.uleb()
        if flag == 1:  # passive: only memory.init at run time copies it
            s.take(s.uleb())
            continue
        if flag not in (0, 2):
            raise s.fail(f"unknown data segment kind {flag}")
        memory = s.uleb() if flag == 2 else 0
        offset = s.const_expr()
        size = s.uleb()
        s.take(size)
        if offset is None or out is None:
            out = None
        else:
            out.append((memory, offset & 0xFFFFFFFFFFFFFFFF, (offset & 0xFFFFFFFFFFFFFFFF) + size))
    return out


def _global_names(s: _Reader) -> dict[int, str]:
    """Global names (subsection 7 of the extended name section); an unreadable name section is ignored."""
    names: dict[int, str] = {}
    try:
        while s.pos < s.end:
            sub = s.byte()
            size = s.uleb()
            end = s.pos + size
            if sub == 7:
                sub_r = _Reader(s.data, s.pos, end)
                for _ in range(sub_r.uleb()):
                    index = sub_r.uleb()
                    names[index] = sub_r.name()
            s.pos = end
    except WasmFormatError:
        return names  # debug info only: never a reason to refuse a module
    return names


def _first_defined(infos: tuple[GlobalInfo, ...]) -> int | None:
    return next((g.index for g in infos if not g.imported), None)


def _stack_pointer(infos: tuple[GlobalInfo, ...], export_names: set[str]) -> int | None:
    for g in infos:
        if g.debug_name == "__stack_pointer":
            return g.index
    if any(g.debug_name for g in infos):
        return None  # names are present and none is __stack_pointer
    first = _first_defined(infos)
    if first is None or not export_names & _LLVM_MARKERS:
        return None
    g = infos[first]
    return first if g.mutable and g.valtype == "i32" and g.export is None else None


_cache: dict[str, ModuleLayout] = {}


def layout_of(wasm: bytes, *, digest: str | None = None) -> ModuleLayout:
    """:func:`parse_layout`, memoised per module digest (bounded: the oldest entry goes first)."""
    key = digest or sha256(wasm).hexdigest()
    hit = _cache.get(key)
    if hit is not None:
        return hit
    layout = parse_layout(wasm)
    if len(_cache) >= _CACHE_LIMIT:
        _cache.pop(next(iter(_cache)))
    _cache[key] = layout
    return layout


def cached_layout(digest: str) -> ModuleLayout | None:
    """The layout already computed for the module with this digest, if any (no module bytes needed)."""
    return _cache.get(digest)
