"""Layer 16: an older version, even validly signed, is refused; the state survives restarts."""

from __future__ import annotations

import contextlib
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from openfang.security._errors import Denied
from openfang.security.audit import AuditLog
from openfang.security.rollback import VersionStore, parse_version


def test_rollback_older_version_is_refused_after_restart(tmp_path: Path, audit: AuditLog) -> None:
    """Accept 1.4.0, reopen the state file, offer 1.3.9: refused and audited; 1.4.1 is accepted."""
    with VersionStore(tmp_path / "versions.db") as vs:
        vs.accept("calc", "1.4.0", "d1")
    with VersionStore(tmp_path / "versions.db", audit=audit) as vs:
        with pytest.raises(Denied) as err:
            vs.check("calc", "1.3.9", "d0")
        assert err.value.reason == "rollback"
        vs.accept("calc", "1.4.1", "d2")
        assert vs.current("calc") == ((1, 4, 1), "1.4.1", "d2")
    (rec,) = audit.records("rollback.refused")
    assert rec.fields == {"name": "calc", "offered": "1.3.9", "current": "1.4.0"}


def test_rollback_versions_compare_numerically() -> None:
    """1.10 is newer than 1.9, and 1.2 equals 1.2.0."""
    assert parse_version("1.10") > parse_version("1.9")
    with pytest.raises(ValueError):
        parse_version("1.0-beta")


def test_rollback_same_version_with_other_bytes_is_refused(tmp_path: Path) -> None:
    """Re-using a version number for different bytes is refused; the same bytes re-accept fine."""
    with VersionStore(tmp_path / "v.db") as vs:
        vs.accept("calc", 3, "aaa")
        vs.accept("calc", 3, "aaa")
        with pytest.raises(Denied) as err:
            vs.accept("calc", "3.0", "bbb")
        assert err.value.reason == "version_reuse"
        vs.accept("other", 1, "ccc")  # names are independent


def _accept(path: str, version: int) -> None:
    with VersionStore(path) as vs, contextlib.suppress(Denied):  # a lower version losing the race is fine
        vs.accept("calc", version, f"d{version}")


@pytest.mark.integration
def test_rollback_concurrent_accepts_keep_the_highest(tmp_path: Path) -> None:
    """Processes racing to record versions leave the highest one recorded."""
    path = str(tmp_path / "v.db")
    VersionStore(path).close()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_accept, args=(path, v)) for v in (5, 9, 2, 7)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with VersionStore(path) as vs:
        assert vs.current("calc") == ((9,), "9", "d9")


def _open(path: str, go: Any) -> None:
    go.wait()
    VersionStore(path).close()


@pytest.mark.integration
def test_rollback_processes_creating_the_state_file_together_all_open_it(tmp_path: Path) -> None:
    """Workers forked together (a parallel pool start) each open a state file none has created yet: every
    one opens it (SQLite's immediate "locked" on a first-write deadlock is retried), none fails."""
    ctx = multiprocessing.get_context("fork")
    for round_ in range(10):
        path = str(tmp_path / f"v{round_}.db")
        go = ctx.Event()
        procs = [ctx.Process(target=_open, args=(path, go)) for _ in range(6)]
        for p in procs:
            p.start()
        go.set()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 6


def test_rollback_version_read_before_sees_another_process_accept_a_newer_one(tmp_path: Path) -> None:
    """A worker that read (and remembers) version 1 sees another worker's accept of 2 at its next check:
    1 is refused from then on, on the remembered read path as on the write path."""
    path = tmp_path / "versions.db"
    with VersionStore(path) as here, VersionStore(path) as other:
        here.accept("route", 1, "d1")
        here.check("route", 1, "d1")
        assert here.current("route") == ((1,), "1", "d1")
        other.accept("route", 2, "d2")
        assert here.current("route") == ((2,), "2", "d2")
        with pytest.raises(Denied) as err:
            here.check("route", 1, "d1")
        assert err.value.reason == "rollback"
        other.accept("route", 3, "d3")
        with pytest.raises(Denied):
            here.accept("route", 2, "d2")  # the write path reads the newest row too
        assert here.current("route") == ((3,), "3", "d3")


def test_rollback_check_of_the_accepted_version_itself_passes_and_its_neighbours_are_still_judged(
    tmp_path: Path,
) -> None:
    """check() of the accepted version and digest returns the accepted row; the same number spelled
    otherwise passes with those bytes and is refused with others; an older one is refused."""
    with VersionStore(tmp_path / "v.db") as vs:
        vs.accept("calc", "1.2", "aaa")
        assert vs.check("calc", "1.2", "aaa") == ((1, 2), "1.2", "aaa")
        assert vs.check("calc", "1.2.0", "aaa") == ((1, 2), "1.2", "aaa")  # the same number, the same bytes
        with pytest.raises(Denied) as err:
            vs.check("calc", "1.2.0", "bbb")
        assert err.value.reason == "version_reuse"
        with pytest.raises(Denied) as err:
            vs.check("calc", "1.2", "bbb")
        assert err.value.reason == "version_reuse"
        with pytest.raises(Denied) as err:
            vs.check("calc", "1.1.9", "aaa")
        assert err.value.reason == "rollback"
        with pytest.raises(Denied) as err:
            vs.check("calc", True, "aaa")
        assert err.value.reason == "bad_version"


def test_rollback_warm_up_makes_the_log_and_changes_no_row(tmp_path: Path) -> None:
    """warm_up commits once (the log exists after it) without changing a row or the file's user_version;
    another process's view is unchanged, and a second warm_up, or one after an accept, is a no-op."""
    path = tmp_path / "versions.db"
    with VersionStore(path) as first:
        first.accept("calc", "1.0", "d1")
    with VersionStore(path) as vs:
        assert not vs._committed
        vs.warm_up()
        assert vs._committed and Path(f"{path}-wal").exists()
        assert vs._conn.execute("PRAGMA user_version").fetchone()[0] == 0
        vs.warm_up()
        with VersionStore(path) as other:
            assert other.current("calc") == ((1, 0), "1.0", "d1")
        vs.accept("calc", "1.1", "d2")
        assert vs.current("calc") == ((1, 1), "1.1", "d2")


def test_rollback_store_warm_up_without_waiting_gives_way_to_a_held_write_lock(tmp_path: Path) -> None:
    """warm_up(wait=False) returns False at once while another connection holds the write lock (nothing
    written, the store still usable), and commits once the lock is free."""
    import sqlite3
    import time

    path = tmp_path / "v.db"
    vs = VersionStore(path)
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    assert vs.warm_up(wait=False) is False
    assert time.monotonic() - started < 1.0 and not vs._committed
    holder.execute("COMMIT")
    holder.close()
    assert vs.warm_up(wait=False) is True and vs._committed
    vs.accept("calc", 2, "d2")
    with pytest.raises(Denied):
        vs.check("calc", 1, "d1")
    vs.close()


def test_version_state_prepared_ahead_is_complete_and_made_once(tmp_path: Path) -> None:
    """The daemon's prepare_version_state makes the file in WAL mode with its table (a store then opens it
    as it is); a second call, a disabled layer 16 or an unusable path makes nothing and raises nothing."""
    import sqlite3

    from openfang.security.config import prepare_version_state, security_from_args

    config = security_from_args(None, data_dir=str(tmp_path))
    assert prepare_version_state(config) is True
    path = tmp_path / "versions.db"
    db = sqlite3.connect(str(path))
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT count(*) FROM versions").fetchone()[0] == 0
    db.close()
    assert prepare_version_state(config) is False
    with VersionStore(path) as vs:
        vs.accept("calc", 1, "d1")
    off = security_from_args({"table": {"rollback": {"enabled": False}}}, data_dir=str(tmp_path / "off"))
    assert prepare_version_state(off) is False and not (tmp_path / "off" / "versions.db").exists()
    (tmp_path / "dir" / "versions.db").mkdir(parents=True)
    assert prepare_version_state(security_from_args(None, data_dir=str(tmp_path / "dir"))) is False
