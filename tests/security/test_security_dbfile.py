"""A SQLite file made by dbfile.create is complete or absent after a crash, and never replaces another's."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from openfang.security import dbfile

SCRIPT = "BEGIN IMMEDIATE;CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER);PRAGMA user_version = 7;COMMIT;"


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def test_dbfile_create_makes_one_complete_file_in_wal_mode(tmp_path: Path) -> None:
    """The file holds what the script made, its header says WAL, nothing else is left in the directory, and a
    second call leaves an existing file alone."""
    path = tmp_path / "x.db"
    assert dbfile.create(path, SCRIPT) is True
    assert _names(tmp_path) == ["x.db"]
    assert path.read_bytes()[18:20] == b"\x02\x02"  # the header's read/write versions: 2 is WAL
    assert _version(path) == 7
    db = sqlite3.connect(path)
    db.execute("INSERT INTO t VALUES ('a', 1)")
    db.commit()
    db.close()
    assert dbfile.create(path, SCRIPT) is False
    db = sqlite3.connect(path)
    assert db.execute("SELECT v FROM t").fetchall() == [(1,)]
    db.close()


def test_dbfile_create_crash_before_the_link_leaves_no_file(tmp_path: Path) -> None:
    """A process that dies after writing its private file but before linking it (kill -9, a power cut) leaves
    no file under the name: the next start makes a complete one."""
    path = tmp_path / "x.db"
    code = (
        "import os, sys\n"
        "os.link = lambda *a: os._exit(9)\n"
        "from openfang.security import dbfile\n"
        f"dbfile.create({str(path)!r}, {SCRIPT!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 9, done.stderr
    assert not path.exists()
    assert all(name.startswith(".x.db.") for name in _names(tmp_path))  # the dead process's private file
    assert dbfile.create(path, SCRIPT) is True and _version(path) == 7


def test_dbfile_create_replaces_its_own_leftovers(tmp_path: Path) -> None:
    """A torn private file of this pid (a crashed creation whose pid came back) is not used: it is made
    again, whole."""
    tmp = tmp_path / f".x.db.{os.getpid()}.new"
    tmp.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    Path(f"{tmp}-wal").write_bytes(b"garbage")
    assert dbfile.create(tmp_path / "x.db", SCRIPT) is True
    assert _names(tmp_path) == ["x.db"] and _version(tmp_path / "x.db") == 7


def test_dbfile_create_keeps_a_file_another_process_made_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the file appears between the existence test and the link, it is kept as it is, never replaced."""
    path = tmp_path / "x.db"
    link = os.link

    def racing(src: Any, dst: Any) -> None:
        db = sqlite3.connect(path)  # the other process's file
        db.execute("PRAGMA user_version = 99")
        db.close()
        link(src, dst)  # FileExistsError, as the real race raises

    monkeypatch.setattr(os, "link", racing)
    assert dbfile.create(path, SCRIPT) is False
    assert _names(tmp_path) == ["x.db"] and _version(path) == 99


def test_dbfile_create_without_hard_links_makes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file system without hard links nothing is made and nothing is left: the caller's open makes the
    file in place."""

    def no_links(src: Any, dst: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    assert dbfile.create(tmp_path / "x.db", SCRIPT) is False
    assert _names(tmp_path) == []


def test_dbfile_create_failing_script_leaves_nothing(tmp_path: Path) -> None:
    """A script SQLite refuses raises its error and leaves neither the file nor a private one."""
    with pytest.raises(sqlite3.Error):
        dbfile.create(tmp_path / "x.db", "BEGIN IMMEDIATE;CREATE TABLE;COMMIT;")
    assert _names(tmp_path) == []


def test_dbfile_two_processes_creating_at_once_agree_on_one_file(tmp_path: Path) -> None:
    """Two processes creating the same file at once (two workers in a fresh data dir) both end with the one
    complete file and no private file left."""
    path = tmp_path / "x.db"
    code = f"from openfang.security import dbfile\nprint(dbfile.create({str(path)!r}, {SCRIPT!r}))\n"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert "True" in outs
    assert _names(tmp_path) == ["x.db"] and _version(path) == 7


def test_dbfile_create_on_a_file_system_that_cannot_sync_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory whose fsync fails (EINVAL on some file systems) still gets its complete file, as SQLite
    making it in place would give it."""
    fsync = os.fsync

    def picky(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(22, "Invalid argument")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", picky)
    assert dbfile.create(tmp_path / "x.db", SCRIPT) is True
    assert _names(tmp_path) == ["x.db"] and _version(tmp_path / "x.db") == 7
