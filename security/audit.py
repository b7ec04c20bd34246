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

import hashlib
import hmac
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from openfang.protocol.errors import ConfigError, Problem
from openfang.security._canon import canonical_json

GENESIS = "0" * 64

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
        return hmac.new(key, data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


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
            self._conn = _connect(self.path)
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
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
        if not hmac.compare_digest(_digest(record, key), str(digest)):
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
