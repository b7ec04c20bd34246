"""The snapshot file: values (:class:`Snapshot` and its parts), their bytes, and atomic files.

Private to :mod:`openfang.workers.sandbox.snapshot`, which re-exports what the host uses.

File format (version 1), all integers little-endian::

    header (68 bytes)  magic "OFSNAP\\r\\n" | u16 version | u8 codec (1 = zlib) | u8 flags (0)
                       | 32-byte sha256 of the module's bytes | u64 body length once decompressed
                       | u64 compressed body length | u32 crc32 of the compressed body
                       | u32 crc32 of the 64 header bytes before it
    body (zlib)        u32 chunk size | u32 n + n bytes of meta JSON
                       | u16 memories: (str name, u64 size, u32 n + n-byte bitmap of non-zero chunks,
                                        u64 n + the n bytes of the non-zero chunks, in order)
                       | u16 globals: (str name, str value type, u8 n + n value bytes)
                       | u16 tables: (str name, u32 size)
    str = u16 n + n bytes of UTF-8

Zero chunks (4 KiB) are skipped before compression; a 1 MiB heap with k non-zero chunks stores at most
``k * 4096`` bytes of memory plus a 32-byte bitmap before zlib. zlib (stdlib, level 1) was chosen over zstd
after measuring a 1 MiB heap with 216 KiB of non-zero text: zstd was ~3x faster (0.4 vs 1.5 ms to
compress, 0.2 vs 0.55 ms to expand) and ~15% smaller, but zlib meets the targets without a dependency.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openfang.protocol.errors import SandboxError

MAGIC = b"OFSNAP\r\n"  # \r\n: a file mangled by a text-mode copy fails the magic check, as in PNG
VERSION = 1
CODEC_ZLIB = 1
ZLIB_LEVEL = 1
CHUNK = 4096  # zero-skipping granularity (bytes); stored in the body, so a later version may change it
PAGE = 65536
_HEADER = struct.Struct("<8sHBB32sQQI")  # everything up to the header's own crc32
HEADER_SIZE = _HEADER.size + 4
MAX_BODY = 1 << 34  # 16 GiB: more than any sandbox's memory cap; a header claiming more is corrupt


class SnapshotError(SandboxError):
    """A snapshot could not be taken, read or restored; the message names the agent or file and why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryImage:
    """One linear memory: its size, which ``chunk``-byte chunks are non-zero, and their bytes in order."""

    name: str
    size: int
    chunk: int
    bitmap: bytes  # bit i (LSB first) set = chunk i is non-zero
    data: bytes  # the non-zero chunks, concatenated (the last chunk may be short if size % chunk)

    def runs(self) -> Iterator[tuple[int, int, bool]]:
        """(start, end, non_zero) byte ranges covering the whole memory, maximal runs."""
        nchunks = -(-self.size // self.chunk)
        start, state, i = 0, False, 0
        while i < nchunks:
            byte = self.bitmap[i >> 3]
            if i & 7 == 0 and byte == (0xFF if state else 0) and i + 8 <= nchunks:
                i += 8  # eight chunks like the current run: skip them at once
                continue
            bit = bool(byte >> (i & 7) & 1)
            if bit != state:
                if i > start:
                    yield start * self.chunk, min(i * self.chunk, self.size), state
                start, state = i, bit
            i += 1
        if nchunks > start:
            yield start * self.chunk, self.size, state


@dataclass(frozen=True, slots=True, kw_only=True)
class GlobalImage:
    """One exported mutable global: its value type and the value's little-endian bits."""

    name: str
    valtype: str
    bits: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """A sandbox's guest state, bound to one module by its sha256."""

    module_sha256: str
    memories: tuple[MemoryImage, ...]
    globals: tuple[GlobalImage, ...] = ()
    tables: tuple[tuple[str, int], ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def memory_bytes(self) -> int:
        """Total size of the linear memories."""
        return sum(m.size for m in self.memories)

    @property
    def stored_bytes(self) -> int:
        """Bytes of non-zero chunks kept (before compression)."""
        return sum(len(m.data) for m in self.memories)


# -- bytes and files ---------------------------------------------------------------------------------------
def _str(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack("<H", len(raw)) + raw


def encode(snap: Snapshot) -> bytes:
    """The file bytes of ``snap`` (format version 1, see the module docstring)."""
    try:
        digest = bytes.fromhex(snap.module_sha256)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise SnapshotError(f"snapshot module_sha256 must be 64 hex digits, got {snap.module_sha256!r}")
    meta = json.dumps(dict(snap.meta), separators=(",", ":"), sort_keys=True).encode()
    chunks = {m.chunk for m in snap.memories} or {CHUNK}
    if len(chunks) != 1:
        raise SnapshotError(f"snapshot memories use different chunk sizes {sorted(chunks)}: one file has one")
    parts = [struct.pack("<II", chunks.pop(), len(meta)), meta, struct.pack("<H", len(snap.memories))]
    for m in snap.memories:
        parts += [_str(m.name), struct.pack("<QI", m.size, len(m.bitmap)), m.bitmap]
        parts += [struct.pack("<Q", len(m.data)), m.data]
    parts.append(struct.pack("<H", len(snap.globals)))
    for g in snap.globals:
        parts += [_str(g.name), _str(g.valtype), struct.pack("<B", len(g.bits)), g.bits]
    parts.append(struct.pack("<H", len(snap.tables)))
    for name, size in snap.tables:
        parts += [_str(name), struct.pack("<I", size)]
    raw = b"".join(parts)
    body = zlib.compress(raw, ZLIB_LEVEL)
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        CODEC_ZLIB,
        0,
        digest,
        len(raw),
        len(body),
        zlib.crc32(body),
    )
    return header + struct.pack("<I", zlib.crc32(header)) + body


class _Body:
    """Strict reader of a decompressed body: any inconsistency is a SnapshotError naming the offset."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source

    def fail(self, what: str) -> SnapshotError:
        return SnapshotError(f"{self.source}: corrupt snapshot (body offset {self.pos}): {what}")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"{n} bytes needed, {len(self.data) - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple[int, ...]:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))

    def text(self) -> str:
        (n,) = self.unpack("<H")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("a name is not UTF-8") from None


def decode(data: bytes, *, source: str = "snapshot") -> Snapshot:
    """Parse and verify snapshot bytes. Raises SnapshotError, naming ``source``, for anything wrong."""
    if len(data) < HEADER_SIZE:
        if not MAGIC.startswith(data[: len(MAGIC)]):
            raise SnapshotError(f"{source}: not an OpenFANG snapshot (bad magic)")
        raise SnapshotError(
            f"{source}: truncated snapshot: {len(data)} bytes, the header alone is {HEADER_SIZE}"
        )
    magic, version, codec, flags, digest, raw_len, body_len, body_crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError(f"{source}: not an OpenFANG snapshot (bad magic)")
    (header_crc,) = struct.unpack_from("<I", data, _HEADER.size)
    if zlib.crc32(data[: _HEADER.size]) != header_crc:
        raise SnapshotError(f"{source}: corrupt snapshot: header checksum mismatch")
    if version != VERSION:
        raise SnapshotError(
            f"{source}: snapshot format version {version} is not supported (this build reads {VERSION})"
        )
    if codec != CODEC_ZLIB or flags != 0:
        raise SnapshotError(f"{source}: corrupt snapshot: unknown codec {codec} or flags {flags}")
    if raw_len > MAX_BODY or body_len > MAX_BODY:
        raise SnapshotError(f"{source}: corrupt snapshot: body of {raw_len} bytes is larger than any sandbox")
    have = len(data) - HEADER_SIZE
    if have < body_len:
        raise SnapshotError(
            f"{source}: truncated snapshot: the header promises {body_len} body bytes, the file has {have}"
        )
    if have > body_len:
        raise SnapshotError(f"{source}: corrupt snapshot: {have - body_len} bytes after the body")
    body = data[HEADER_SIZE:]
    if zlib.crc32(body) != body_crc:
        raise SnapshotError(f"{source}: corrupt snapshot: body checksum mismatch")
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(body, raw_len + 1)  # never more than the header promised (+1 to notice)
    except zlib.error as exc:
        raise SnapshotError(f"{source}: corrupt snapshot: body does not decompress ({exc})") from None
    if len(raw) != raw_len or not inflater.eof:
        raise SnapshotError(f"{source}: corrupt snapshot: body expands to the wrong size")
    return _parse_body(_Body(raw, source), digest.hex())


def _parse_body(r: _Body, digest: str) -> Snapshot:
    chunk, meta_len = r.unpack("<II")
    if chunk == 0 or chunk % 8:
        raise r.fail(f"bad chunk size {chunk}")
    try:
        meta = json.loads(r.take(meta_len))
    except (ValueError, RecursionError):
        raise r.fail("meta is not JSON") from None
    if not isinstance(meta, dict):
        raise r.fail("meta is not a JSON object")
    memories = []
    for _ in range(r.unpack("<H")[0]):
        name = r.text()
        size, nbitmap = r.unpack("<QI")
        if size % PAGE:
            raise r.fail(f"memory {name!r}: {size} bytes is not a whole number of 64 KiB pages")
        nchunks = -(-size // chunk)
        if nbitmap != -(-nchunks // 8):
            raise r.fail(f"memory {name!r}: bitmap of {nbitmap} bytes for {nchunks} chunks")
        bitmap = r.take(nbitmap)
        (ndata,) = r.unpack("<Q")
        set_chunks = int.from_bytes(bitmap, "little").bit_count()
        last_set = nchunks > 0 and bool(bitmap[(nchunks - 1) >> 3] >> ((nchunks - 1) & 7) & 1)
        expect = set_chunks * chunk - ((nchunks * chunk - size) if last_set else 0)
        if ndata != expect:
            raise r.fail(f"memory {name!r}: {ndata} data bytes for {set_chunks} non-zero chunks")
        memories.append(MemoryImage(name=name, size=size, chunk=chunk, bitmap=bitmap, data=r.take(ndata)))
    globals_ = []
    for _ in range(r.unpack("<H")[0]):
        name, valtype = r.text(), r.text()
        (nbits,) = r.unpack("<B")
        globals_.append(GlobalImage(name=name, valtype=valtype, bits=r.take(nbits)))
    tables = []
    for _ in range(r.unpack("<H")[0]):
        name = r.text()
        tables.append((name, r.unpack("<I")[0]))
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} unexpected bytes at the end")
    return Snapshot(
        module_sha256=digest,
        memories=tuple(memories),
        globals=tuple(globals_),
        tables=tuple(tables),
        meta=meta,
    )


def write_snapshot(path: Path, snap: Snapshot, *, fsync: bool = True) -> int:
    """Write ``snap`` to ``path`` atomically (temp file, fdatasync, rename, fsync of the directory); its size.

    Readers see the old file or the new one, never a mix. ``fsync=False`` skips both syncs (a crash of the
    machine, not of the process, may then lose the file: a torn one is refused by its checksum on read).
    Safe to call from any thread (it uses only ``snap``); the host orders writes of one agent's file.
    """
    data = encode(snap)
    path = Path(path)
    # One temp file per process and thread: writers in threads never share one. A crash may leave one
    # behind (".<name>.<pid>.<thread>.tmp"): harmless, the host may delete them at start.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                # The data and what is needed to read it back (its size); the times may lag.
                os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if fsync:
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SnapshotError(f"{path}: cannot write snapshot: {exc.strerror or exc}") from None
    return len(data)


def read_snapshot(path: Path) -> Snapshot:
    """Read and verify the snapshot at ``path``; SnapshotError (naming the file) if missing or corrupt."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read snapshot: {exc.strerror or exc}") from None
    return decode(data, source=str(path))
