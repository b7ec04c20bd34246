"""Opening the memory database: connections with sqlite-vec loaded, and the pragmas per role.

The SQLite driver (the stdlib ``sqlite3`` when it can get sqlite-vec's vec0, else ``pysqlite3`` from the
``openfang[sqlite]`` extra) is chosen once per process by :mod:`._driver`; catch its exception classes
through :func:`driver` (``except _db.driver().DatabaseError``), never the stdlib's directly. sqlite errors
are translated into :class:`MemoryStoreError` here and in the writer's apply step, nowhere else.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import Any

from openfang.memory._driver import Driver, driver, vec_extension_path
from openfang.protocol.errors import MemoryStoreError

__all__ = ["Driver", "driver", "open_reader", "open_writer", "vec_extension_path"]

JOURNAL_SIZE_LIMIT = 64 << 20
BUSY_TIMEOUT_MS = 5000
READER_MMAP_BYTES = 1 << 30


def open_writer(db_path: str | os.PathLike[str], *, journal_size_limit: int = JOURNAL_SIZE_LIMIT) -> Any:
    """The writer's connection: autocommit mode (we issue BEGIN/COMMIT ourselves), WAL, NORMAL sync.

    ``wal_autocheckpoint=0`` because the writer checkpoints itself (TRUNCATE, after sending acks): an
    automatic checkpoint would run inside a commit and lengthen the ack latency of the whole batch.
    ``temp_store=MEMORY``: each request's SAVEPOINT journal and the sorts of recall are temp files, and
    distro SQLites default them to disk (Debian's is built with TEMP_STORE=1; pysqlite3's with 3, memory
    always): on disk, every applied request cost pwrite calls, 1.5x the CPU per row of a batch.
    """
    drv = driver()
    try:
        conn = drv.connect(os.fspath(db_path), isolation_level=None, check_same_thread=False)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise MemoryStoreError(f"{db_path}: cannot switch to WAL (journal_mode is {mode})")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={int(journal_size_limit)}")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA temp_store=MEMORY")
    except drv.Error as exc:
        raise MemoryStoreError(f"{db_path}: cannot open the memory database for writing: {exc}") from None
    return conn


def open_reader(db_path: str | os.PathLike[str]) -> Any:
    """A read-only connection (``mode=ro`` URI) with sqlite-vec loaded; it can never write the file.

    Its temp b-trees (recall's window functions, GROUP BY, ORDER BY) stay in memory, as in the writer.
    ``mmap_size``: a KNN reads every 98 KB vector chunk of the agent's partition (overflow pages); through
    memory-mapped pages instead of read() into the page cache it took 2.1 instead of 3.4-4.0 ms at 6,000
    384-d vectors on Debian's SQLite 3.40 (pysqlite3's 3.51, built with DIRECT_OVERFLOW_READ: 3.3 -> 2.3).
    The pages are the file's shared page cache, not private memory, and only pages read are touched.
    """
    path = os.path.abspath(os.fspath(db_path))
    if not os.path.exists(path):
        raise MemoryStoreError(f"{path}: no memory database here (start the writer or run migrate first)")
    drv = driver()
    try:
        conn = drv.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute(f"PRAGMA mmap_size={READER_MMAP_BYTES}")
    except drv.Error as exc:
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
