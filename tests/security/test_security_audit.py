"""Layer 12: the hash-chained audit log detects every kind of tampering."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from openfang.security.audit import AuditLog, verify


def _fill(path: Path, n: int = 6, key: bytes | None = None) -> AuditLog:
    log = AuditLog(path, key=key)
    for i in range(n):
        log.append("test.event", i=i, who=f"agent-{i}")
    return log


def _raw(path: Path) -> sqlite3.Connection:
    """A connection as an attacker with file access would use: triggers dropped first."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("DROP TRIGGER audit_log_no_delete")
    return conn


def test_audit_intact_log_verifies(tmp_path: Path) -> None:
    """An untouched log verifies and reports its length and head."""
    log = _fill(tmp_path / "a.db")
    res = verify(tmp_path / "a.db")
    assert res.ok and res.records == 6 and res.first_bad_index is None
    assert res.head == log.head()
    log.close()


def test_audit_update_and_delete_are_refused_by_triggers(tmp_path: Path) -> None:
    """Honest code cannot modify the table: UPDATE and DELETE abort."""
    _fill(tmp_path / "a.db").close()
    conn = sqlite3.connect(str(tmp_path / "a.db"))
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit_log SET kind = 'x' WHERE seq = 2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit_log WHERE seq = 2")
    conn.close()


def test_audit_edited_record_is_detected(tmp_path: Path) -> None:
    """Changing a record's fields breaks its hash: verify names that record."""
    _fill(tmp_path / "a.db").close()
    conn = _raw(tmp_path / "a.db")
    (record,) = conn.execute("SELECT record FROM audit_log WHERE seq = 3").fetchone()
    conn.execute("UPDATE audit_log SET record = ? WHERE seq = 3", (record.replace("agent-2", "agent-9"),))
    conn.close()
    res = verify(tmp_path / "a.db")
    assert not res.ok and res.first_bad_index == 2 and "edited" in res.reason


def test_audit_edited_and_rehashed_record_breaks_next_link(tmp_path: Path) -> None:
    """An attacker who recomputes the edited record's hash still breaks the next record's prev link."""
    import hashlib

    _fill(tmp_path / "a.db").close()
    conn = _raw(tmp_path / "a.db")
    (record,) = conn.execute("SELECT record FROM audit_log WHERE seq = 3").fetchone()
    forged = record.replace("agent-2", "agent-9")
    conn.execute(
        "UPDATE audit_log SET record = ?, hash = ? WHERE seq = 3",
        (forged, hashlib.sha256(forged.encode()).hexdigest()),
    )
    conn.close()
    res = verify(tmp_path / "a.db")
    assert not res.ok and res.first_bad_index == 3 and "link" in res.reason


def test_audit_hmac_chain_cannot_be_rebuilt_without_key(tmp_path: Path) -> None:
    """With a key, a fully rebuilt SHA-256 chain is still rejected."""
    import hashlib

    key = b"k" * 32
    _fill(tmp_path / "a.db", n=3, key=key).close()
    conn = _raw(tmp_path / "a.db")
    (record,) = conn.execute("SELECT record FROM audit_log WHERE seq = 3").fetchone()
    forged = record.replace("agent-2", "agent-9")
    conn.execute(
        "UPDATE audit_log SET record = ?, hash = ? WHERE seq = 3",
        (forged, hashlib.sha256(forged.encode()).hexdigest()),
    )
    conn.close()
    assert verify(tmp_path / "a.db", key=key).first_bad_index == 2
    assert not verify(tmp_path / "a.db", key=b"wrong" * 8).ok


def test_audit_deleted_record_is_detected(tmp_path: Path) -> None:
    """Removing a record from the middle leaves a sequence gap."""
    _fill(tmp_path / "a.db").close()
    conn = _raw(tmp_path / "a.db")
    conn.execute("DELETE FROM audit_log WHERE seq = 4")
    conn.close()
    res = verify(tmp_path / "a.db")
    assert not res.ok and res.first_bad_index == 3


def test_audit_inserted_record_is_detected(tmp_path: Path) -> None:
    """A record slipped in (renumbering the ones after it) breaks the chain."""
    _fill(tmp_path / "a.db").close()
    conn = _raw(tmp_path / "a.db")
    rows = conn.execute(
        "SELECT seq, ts_ns, kind, record, prev, hash FROM audit_log WHERE seq >= 3 ORDER BY seq DESC"
    )
    for seq, _ts, _kind, record, _prev, _digest in rows.fetchall():
        body = json.loads(record)
        body["seq"] = seq + 1
        conn.execute(
            "UPDATE audit_log SET seq = ?, record = ? WHERE seq = ?",
            (seq + 1, json.dumps(body, sort_keys=True, separators=(",", ":")), seq),
        )
    (r2,) = conn.execute("SELECT record FROM audit_log WHERE seq = 2").fetchone()
    body = json.loads(r2)
    body.update(seq=3, fields={"i": 99})
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    conn.execute(
        "INSERT INTO audit_log VALUES (3, ?, 'test.event', ?, ?, ?)",
        (body["ts_ns"], text, body["prev"], "0" * 64),
    )
    conn.close()
    res = verify(tmp_path / "a.db")
    assert not res.ok and res.first_bad_index == 2


def test_audit_reordered_records_are_detected(tmp_path: Path) -> None:
    """Swapping two records (with their sequence numbers fixed up) breaks the links."""
    _fill(tmp_path / "a.db").close()
    conn = _raw(tmp_path / "a.db")
    a = conn.execute("SELECT ts_ns, kind, record, prev, hash FROM audit_log WHERE seq = 2").fetchone()
    b = conn.execute("SELECT ts_ns, kind, record, prev, hash FROM audit_log WHERE seq = 5").fetchone()
    for seq, row in ((2, b), (5, a)):
        body = json.loads(row[2])
        body["seq"] = seq
        conn.execute(
            "UPDATE audit_log SET ts_ns=?, kind=?, record=?, prev=?, hash=? WHERE seq=?",
            (row[0], row[1], json.dumps(body, sort_keys=True, separators=(",", ":")), row[3], row[4], seq),
        )
    conn.close()
    res = verify(tmp_path / "a.db")
    assert not res.ok and res.first_bad_index == 1


def test_audit_truncated_tail_is_detected_against_saved_head(tmp_path: Path) -> None:
    """Dropping the newest records is caught when the verifier knows the head it saw before."""
    log = _fill(tmp_path / "a.db")
    head = log.head()
    log.close()
    conn = _raw(tmp_path / "a.db")
    conn.execute("DELETE FROM audit_log WHERE seq >= 5")
    conn.close()
    assert verify(tmp_path / "a.db").ok  # the chain alone cannot know
    res = verify(tmp_path / "a.db", expect_head=head)
    assert not res.ok and "truncated" in res.reason


def test_audit_fields_are_redacted_before_storage(tmp_path: Path) -> None:
    """A secret passed as a field never reaches the table."""
    with AuditLog(tmp_path / "a.db") as log:
        log.append("test.secret", note="key AKIAIOSFODNN7EXAMPLE used", password="hunter2hunter2")
    raw = (tmp_path / "a.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("a.db-*") if p.is_file()
    )
    assert b"AKIAIOSFODNN7EXAMPLE" not in raw and b"hunter2hunter2" not in raw
    assert verify(tmp_path / "a.db").ok


def _append_many(path: str, tag: str) -> None:
    with AuditLog(path) as log:
        for i in range(40):
            log.append("test.concurrent", tag=tag, i=i)


@pytest.mark.integration
def test_audit_concurrent_appenders_keep_one_valid_chain(tmp_path: Path) -> None:
    """Three processes appending at once produce one unbroken chain with every record."""
    path = str(tmp_path / "a.db")
    AuditLog(path).close()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, t)) for t in "abc"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    res = verify(path)
    assert res.ok and res.records == 120


def test_audit_verify_of_missing_file_is_a_result_not_an_exception(tmp_path: Path) -> None:
    """verify() reports a missing log instead of raising."""
    res = verify(tmp_path / "nope.db")
    assert not res.ok and "no such" in res.reason


def test_audit_reopen_writes_no_schema_again(tmp_path: Path, sql_statements: list[str]) -> None:
    """The schema is created with the file in one transaction; opening an existing log runs no schema
    statement (no write) and its triggers still refuse a delete."""
    statements = sql_statements
    path = tmp_path / "audit.db"
    with AuditLog(path) as log:
        log.append("test.event", n=1)
    assert any(s.startswith("BEGIN IMMEDIATE") for s in statements)
    assert any("CREATE TABLE" in s for s in statements)
    statements.clear()
    again = AuditLog(path)
    try:
        assert not [s for s in statements if "CREATE" in s or "BEGIN" in s]
        with pytest.raises(sqlite3.IntegrityError):
            again._conn.execute("DELETE FROM audit_log")
    finally:
        again.close()
