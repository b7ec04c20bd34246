"""Layer 12, audit logging: an append-only, hash-chained record of every security decision.

Each record is stored in a SQLite table ``audit_log`` as its canonical JSON text (``record``) together with
``hash = SHA-256(record)`` (or HMAC-SHA-256 with a key, so that nobody without the key can rebuild a valid
chain). The record text contains the previous record's hash and the record's sequence number, so
:func:`verify` detects:

- an edited record (its hash no longer matches its text),
- an edited *and re-hashed* record (the next record's ``prev`` no longer matches),
- a deleted or inserted record (a gap in ``seq`` and a broken ``prev`` link),
- reordered records (``seq`` out of order, broken links),
- a truncated tail, when the caller passes the head it saw earlier (``expect_head``); a chain cannot prove
  on its own that nothing came after its last record.

The table also carries triggers that abort UPDATE and DELETE, so honest code cannot damage the log by
mistake; the hash chain is what catches a deliberate edit of the file.

Field values go through the redactor before they are stored: secrets never reach the audit table.
:class:`AuditSink` is the protocol every layer writes to, so the lead can route records elsewhere (the
memory writer) without touching the layers.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from openfang.protocol.errors import ConfigError, Problem
from openfang.security import dbfile
from openfang.security._canon import canonical_json
from openfang.security._hashing import compare_digest, hmac_sha256, sha256
from openfang.security._keys import read_key_material

GENESIS = "0" * 64

# Opening a log runs this only when its last object (the delete trigger) is missing: keep it last.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq    INTEGER PRIMARY KEY,
    ts_ns  INTEGER NOT NULL,
    kind   TEXT    NOT NULL,
    record TEXT    NOT NULL,
    prev   TEXT    NOT NULL,
    hash   TEXT    NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
"""


class AuditSink(Protocol):
    """Where security layers send records. ``kind`` is ``<layer>.<event>``, e.g. ``signing.replayed``."""

    def append(self, kind: str, /, **fields: Any) -> object: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """One stored record (fields as stored, i.e. already redacted)."""

    seq: int
    ts_ns: int
    kind: str
    fields: dict[str, Any]
    prev: str
    hash: str


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyResult:
    """Outcome of :func:`verify`: ``first_bad_index`` is the 0-based index of the first bad row, or None."""

    ok: bool
    records: int
    first_bad_index: int | None = None
    reason: str = ""
    head: tuple[int, str] | None = field(default=None)


def _digest(record: str, key: bytes | None) -> str:
    data = record.encode("utf-8")
    if key is not None:
        return hmac_sha256(key, data).hex()
    return sha256(data).hexdigest()


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # an audit record that was acknowledged must survive a crash
    return conn


def _default_redactor() -> Callable[[Any], Any]:
    from openfang.security.redact import redact_value

    return redact_value


class AuditLog:
    """An append-only hash-chained audit log in the SQLite file ``path`` (safe for several processes).

    Use as a context manager or call :meth:`close`. ``key`` switches the chain to HMAC-SHA-256. The SQLite
    connection belongs to the thread and process that opened it: open the log after ``fork()``, one per
    process (appends from several processes are serialised by ``BEGIN IMMEDIATE``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        key: bytes | None = None,
        clock: Callable[[], int] = time.time_ns,
        redactor: Callable[[Any], Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self._key = key
        self._clock = clock
        self._redact = redactor if redactor is not None else _default_redactor()
        try:
            # A fresh log: made complete or not at all, in two fsyncs instead of seven (dbfile); every record
            # is then appended through this connection with synchronous FULL, as before.
            dbfile.create(self.path, f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
            self._conn = _connect(self.path)
            # The schema in one transaction (one fsync, not three), and none when the table is there.
            known = "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'audit_log_no_delete'"
            if self._conn.execute(known).fetchone() is None:
                self._conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError([Problem(str(self.path), f"cannot open the audit log: {exc}")]) from None

    def append(self, kind: str, /, **fields: Any) -> AuditRecord:
        """Append one record; returns it with its sequence number and hash."""
        if not kind or any(c.isspace() for c in kind):
            raise ValueError(f"audit kind must be a non-empty word, got {kind!r}")
        clean = self._redact(fields)
        # Round-trip through JSON so the stored value is exactly what verify() will re-read.
        clean = json.loads(canonical_json(clean))
        ts_ns = int(self._clock())
        conn = self._conn
        conn.execute(
            "BEGIN IMMEDIATE"
        )  # serialises appenders across processes: read head + insert atomically
        try:
            row = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
            record = canonical_json({"seq": seq, "ts_ns": ts_ns, "kind": kind, "fields": clean, "prev": prev})
            digest = _digest(record, self._key)
            conn.execute(
                "INSERT INTO audit_log (seq, ts_ns, kind, record, prev, hash) VALUES (?, ?, ?, ?, ?, ?)",
                (seq, ts_ns, kind, record, prev, digest),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return AuditRecord(seq=seq, ts_ns=ts_ns, kind=kind, fields=clean, prev=prev, hash=digest)

    def head(self) -> tuple[int, str] | None:
        """``(seq, hash)`` of the last record; keep it elsewhere to detect a truncated tail later."""
        row = self._conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(row[0]), str(row[1])) if row else None

    def records(self, kind: str | None = None) -> list[AuditRecord]:
        """Stored records in order, optionally only one ``kind`` (or a ``kind`` prefix ending in ``.``)."""
        return [r for r in iter_records(self._conn) if kind is None or _kind_matches(r.kind, kind)]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


KEY_BYTES = 32


def chain_key(key_file: str | None, *, create: bool = False, log_path: str | None = None) -> bytes | None:
    """The HMAC key of the chain in ``key_file`` (None: an unkeyed chain).

    With ``create``, a missing file is made first: 32 random bytes as hex, mode 0600, written to a temporary
    file and hard-linked into place, so concurrent first starts agree on one key and no process ever reads a
    half-written one. If ``log_path`` already holds an unkeyed chain when the key is made, that log is
    moved aside (``audit-unkeyed-<ns>.db``) so the keyed chain starts afresh instead of failing to verify.
    Raises ConfigError naming the file when it cannot be read or made (never showing its content).
    """
    if key_file is None:
        return None
    path = Path(key_file)
    if "{data_dir}" in key_file:
        raise ConfigError([Problem(f"[security.audit] key_file {path}", "no data dir to put the key in")])
    if create and not path.exists():
        _create_key(path, Path(log_path) if log_path else None)
    try:
        key = read_key_material(str(path))
    except OSError as exc:
        raise ConfigError(
            [
                Problem(
                    f"[security.audit] key_file {path}", f"cannot read the audit key: {exc.strerror or exc}"
                )
            ]
        ) from None
    if len(key) < 16:
        raise ConfigError([Problem(f"[security.audit] key_file {path}", "the audit key must be 16+ bytes")])
    return key


def key_beside(log_path: str | os.PathLike[str]) -> bytes | None:
    """The key the daemon makes by default beside its log (``audit.key`` in the log's directory), if any."""
    path = Path(log_path).parent / "audit.key"
    return chain_key(str(path)) if path.is_file() else None


def _create_key(path: Path, log_path: Path | None) -> None:
    where = f"[security.audit] key_file {path}"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, os.urandom(KEY_BYTES).hex().encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic: fails if another process made the key first
        except FileExistsError:
            return
        if log_path is not None and _has_records(log_path):
            stamp = time.time_ns()
            for suffix in ("", "-wal", "-shm"):
                old = Path(f"{log_path}{suffix}")
                if old.exists():
                    old.rename(old.with_name(f"{log_path.stem}-unkeyed-{stamp}{log_path.suffix}{suffix}"))
    except OSError as exc:
        raise ConfigError([Problem(where, f"cannot create the audit key: {exc.strerror or exc}")]) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _has_records(log_path: Path) -> bool:
    if not log_path.exists():
        return False
    try:
        conn = sqlite3.connect(f"file:{log_path}?mode=ro", uri=True, timeout=30.0)
        try:
            return conn.execute("SELECT 1 FROM audit_log LIMIT 1").fetchone() is not None
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def _kind_matches(kind: str, wanted: str) -> bool:
    return kind.startswith(wanted) if wanted.endswith(".") else kind == wanted


def iter_records(conn: sqlite3.Connection) -> Iterator[AuditRecord]:
    """Every row, in ``seq`` order, decoded (fields from the record text)."""
    for seq, ts_ns, kind, record, prev, digest in conn.execute(
        "SELECT seq, ts_ns, kind, record, prev, hash FROM audit_log ORDER BY seq"
    ):
        try:
            fields = json.loads(record).get("fields", {})
        except (ValueError, AttributeError):
            fields = {}
        yield AuditRecord(seq=seq, ts_ns=ts_ns, kind=kind, fields=fields, prev=prev, hash=digest)


def verify(
    path: str | os.PathLike[str], *, key: bytes | None = None, expect_head: tuple[int, str] | None = None
) -> VerifyResult:
    """Check the whole chain in ``path``. Never raises for a damaged log: the result says what is wrong."""
    p = Path(path)
    if not p.exists():
        return VerifyResult(ok=False, records=0, first_bad_index=None, reason=f"{p}: no such audit log")
    try:
        conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=30.0)
        rows = conn.execute(
            "SELECT seq, ts_ns, kind, record, prev, hash FROM audit_log ORDER BY rowid"
        ).fetchall()
        conn.close()
    except sqlite3.Error as exc:
        return VerifyResult(ok=False, records=0, reason=f"{p}: cannot read the audit log: {exc}")

    def bad(i: int, why: str) -> VerifyResult:
        return VerifyResult(ok=False, records=len(rows), first_bad_index=i, reason=f"record {i}: {why}")

    prev_hash = GENESIS
    for i, (seq, ts_ns, kind, record, prev, digest) in enumerate(rows):
        if seq != i + 1:
            return bad(
                i, f"sequence number {seq}, expected {i + 1} (a record was deleted, inserted or moved)"
            )
        try:
            body = json.loads(record)
        except ValueError:
            return bad(i, "record text is not valid JSON")
        if not isinstance(body, dict) or canonical_json(body) != record:
            return bad(i, "record text is not in canonical form")
        if body.get("seq") != seq or body.get("ts_ns") != ts_ns or body.get("kind") != kind:
            return bad(i, "row columns disagree with the hashed record text")
        if body.get("prev") != prev or prev != prev_hash:
            return bad(
                i, "previous-hash link is broken (a record before it was edited, removed or reordered)"
            )
        if not compare_digest(_digest(record, key), str(digest)):
            return bad(i, "hash does not match the record (the record was edited)")
        prev_hash = digest
    head = (len(rows), prev_hash) if rows else None
    if expect_head is not None:
        if head is None or head[0] < expect_head[0]:
            return VerifyResult(
                ok=False,
                records=len(rows),
                first_bad_index=len(rows),
                reason=f"log ends at record {len(rows)} but record {expect_head[0]} existed (truncated)",
                head=head,
            )
        if rows[expect_head[0] - 1][5] != expect_head[1]:
            return bad(expect_head[0] - 1, "hash differs from the head seen before (the log was rewritten)")
    return VerifyResult(ok=True, records=len(rows), head=head)
