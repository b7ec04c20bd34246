"""Opening the memory database: the one driver that loads sqlite-vec here, and the pragmas per role.

The stdlib ``sqlite3`` of pyenv builds cannot load extensions, so every connection goes through
``pysqlite3`` (pysqlite3-binary wheels bundle SQLite 3.5x with FTS5 and math functions). sqlite errors are
translated into :class:`MemoryStoreError` here and in the writer's apply step, nowhere else.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import struct
from collections.abc import Sequence
from typing import Any

from openfang.protocol.errors import MemoryStoreError

try:
    import pysqlite3.dbapi2 as sqlite3
except ImportError as exc:  # pragma: no cover - a dependency of the package
    raise MemoryStoreError(f"pysqlite3-binary is required for the memory store: {exc}") from None

Connection = sqlite3.Connection
DatabaseError = sqlite3.DatabaseError
IntegrityError = sqlite3.IntegrityError
Row = sqlite3.Row

JOURNAL_SIZE_LIMIT = 64 << 20
BUSY_TIMEOUT_MS = 5000
READER_MMAP_BYTES = 1 << 30


@functools.cache
def vec_extension_path() -> str:
    """The sqlite-vec loadable extension bundled with the ``sqlite_vec`` package, found without importing it.

    ``import sqlite_vec`` imports ``numpy.typing`` (~40 ms and ~7 MB of private pages per process) for a
    helper we do not use; the extension is the package's ``vec0`` file, which is all ``sqlite_vec.load``
    loads.
    """
    spec = importlib.util.find_spec("sqlite_vec")
    if spec is None or not spec.submodule_search_locations:
        raise MemoryStoreError("the sqlite-vec package is not installed (a dependency of the memory store)")
    return os.path.join(next(iter(spec.submodule_search_locations)), "vec0")


def _load_vec(conn: Any) -> None:
    conn.enable_load_extension(True)
    try:
        conn.load_extension(vec_extension_path())
    finally:
        conn.enable_load_extension(False)


def open_writer(db_path: str | os.PathLike[str], *, journal_size_limit: int = JOURNAL_SIZE_LIMIT) -> Any:
    """The writer's connection: autocommit mode (we issue BEGIN/COMMIT ourselves), WAL, NORMAL sync.

    ``wal_autocheckpoint=0`` because the writer checkpoints itself (TRUNCATE, after sending acks): an
    automatic checkpoint would run inside a commit and lengthen the ack latency of the whole batch.
    """
    try:
        conn = sqlite3.connect(os.fspath(db_path), isolation_level=None, check_same_thread=False)
        _load_vec(conn)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise MemoryStoreError(f"{db_path}: cannot switch to WAL (journal_mode is {mode})")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={int(journal_size_limit)}")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.Error as exc:
        raise MemoryStoreError(f"{db_path}: cannot open the memory database for writing: {exc}") from None
    return conn


def open_reader(db_path: str | os.PathLike[str]) -> Any:
    """A read-only connection (``mode=ro`` URI) with sqlite-vec loaded; it can never write the file."""
    path = os.path.abspath(os.fspath(db_path))
    if not os.path.exists(path):
        raise MemoryStoreError(f"{path}: no memory database here (start the writer or run migrate first)")
    try:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        _load_vec(conn)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except sqlite3.Error as exc:
        raise MemoryStoreError(f"{path}: cannot open the memory database for reading: {exc}") from None
    return conn


def pack_vector(vector: Sequence[float]) -> bytes:
    """A vector as sqlite-vec's float32 little-endian BLOB."""
    return struct.pack(f"<{len(vector)}f", *vector)


def unpack_vector(blob: bytes) -> list[float]:
    """The inverse of :func:`pack_vector`."""
    if len(blob) % 4:
        raise MemoryStoreError(f"vector blob of {len(blob)} bytes is not a whole number of float32")
    return list(struct.unpack(f"<{len(blob) // 4}f", blob))


# Function words match nearly every row and would let "the"/"for" decide a keyword rank.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "he",
        "her",
        "him",
        "his",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "me",
        "my",
        "not",
        "of",
        "on",
        "or",
        "our",
        "she",
        "so",
        "that",
        "the",
        "their",
        "them",
        "they",
        "this",
        "to",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    ]
)


def fts_query(text: str) -> str:
    """User text as a safe FTS5 query: content words quoted, OR-ed (ranked by bm25, not all-words-match).

    Falls back to every word when the text is nothing but stopwords.
    """
    words = ["".join(ch for ch in w if ch.isalnum() or ch in "_-'") for w in text.lower().split()]
    words = [w for w in words if w]
    content = [w for w in words if w not in STOPWORDS] or words
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in dict.fromkeys(content))
