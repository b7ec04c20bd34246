"""The gateway's audit.verify runs one check at a time off the loop and answers everyone who asked."""

from __future__ import annotations

import select
import sqlite3
import threading
from pathlib import Path
from typing import Any

from openfang.control.audit_check import MAX_WAITERS, AuditCheck
from openfang.security.audit import VerifyResult
from openfang.security.config import SecurityConfig, open_audit, parse_security


def _config(tmp_path: Path, **audit: Any) -> SecurityConfig:
    return parse_security({"audit": audit}, "cluster.toml", data_dir=tmp_path, base_dir=tmp_path)


def _wait(check: AuditCheck) -> tuple[list[Any], dict[str, Any]]:
    assert select.select([check.fileno()], [], [], 10)[0], "the check never woke the loop"
    done = check.finished()
    assert done is not None
    return done


def test_audit_check_requests_during_a_run_share_it_and_a_later_one_starts_afresh(tmp_path: Path) -> None:
    """Two requests while a check runs get the one result; the next request runs a new check."""
    release = threading.Event()
    calls: list[str] = []

    def slow(path: str, *, key: bytes | None) -> VerifyResult:
        calls.append(path)
        release.wait(10)
        return VerifyResult(ok=True, records=len(calls))

    check = AuditCheck(_config(tmp_path, keyed=False), check=slow)
    assert check.request("a") and check.request("b")
    assert check.finished() is None  # still running
    release.set()
    waiters, body = _wait(check)
    assert waiters == ["a", "b"] and body["ok"] is True and body["records"] == 1 and len(calls) == 1
    assert body["keyed"] is False and body["warning"]  # an unkeyed chain is flagged
    assert check.request("c")
    waiters, body = _wait(check)
    assert waiters == ["c"] and body["records"] == 2
    check.close()


def test_audit_check_refuses_waiters_beyond_the_bound(tmp_path: Path) -> None:
    """At most MAX_WAITERS requests wait for one run; the next is refused (the gateway answers busy)."""
    release = threading.Event()
    check = AuditCheck(
        _config(tmp_path, keyed=False),
        check=lambda p, key: (release.wait(10), VerifyResult(ok=True, records=0))[1],
    )
    assert all(check.request(i) for i in range(MAX_WAITERS))
    assert not check.request("one too many")
    release.set()
    waiters, _ = _wait(check)
    assert len(waiters) == MAX_WAITERS
    check.close()


def test_audit_check_reports_an_unreadable_key_as_a_failed_check_not_a_crash(tmp_path: Path) -> None:
    """A key file gone since start: the answer is ok=false with the reason, and the checker still works."""
    config = _config(tmp_path, key_file=str(tmp_path / "gone.key"))
    check = AuditCheck(config)
    assert check.request("x")
    _, body = _wait(check)
    assert body["ok"] is False and "gone.key" in body["reason"] and body["keyed"] is True
    check.close()


def test_audit_check_finds_an_edited_record_in_a_real_log(tmp_path: Path) -> None:
    """Against a real keyed chain made as the daemon makes it: ok, then broken at the edited record."""
    config = _config(tmp_path)
    path = config.audit.path
    log = open_audit(config)  # creates the chain key beside the log, as the daemon does
    assert log is not None
    with log:
        for i in range(5):
            log.append("test.event", n=i)
    check = AuditCheck(config)
    assert check.available and check.request("x")
    _, body = _wait(check)
    assert body["ok"] is True and body["records"] == 5, body
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        db.execute("""UPDATE audit_log SET record = replace(record, '"n":2', '"n":9') WHERE seq = 3""")
    assert check.request("y")
    _, body = _wait(check)
    assert body["ok"] is False and body["first_bad_index"] == 2, body
    check.close()
