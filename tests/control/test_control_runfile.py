"""A run record tells a live daemon from a dead one or a reused pid by its process start time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from openfang.control import runfile


def _record(pid: int, started: float) -> runfile.RunRecord:
    return runfile.RunRecord(
        name="c",
        pid=pid,
        started=started,
        config="c.toml",
        data_dir="d",
        endpoint="ipc://x",
        events="ipc://y",
    )


def test_runfile_start_time_is_psutils_create_time() -> None:
    """start_time reads the same start as psutil's create_time, for this process and for pid 1."""
    for pid in (os.getpid(), 1):
        assert runfile.start_time(pid) == psutil.Process(pid).create_time()


def test_runfile_start_time_of_a_missing_process_is_none() -> None:
    """A pid with no process has no start time."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    assert runfile.start_time(int(done.stdout)) is None


def test_runfile_record_is_alive_only_for_its_own_process(tmp_path: Path) -> None:
    """A record is alive while its process runs with the start time it published; a reused pid (another
    start time) or an exited process is not."""
    started = runfile.start_time(os.getpid())
    assert started is not None
    assert _record(os.getpid(), started).alive()
    assert not _record(os.getpid(), started - 5).alive()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not _record(child.pid, started).alive()


def test_runfile_daemon_imports_no_psutil() -> None:
    """The daemon module imports no psutil (it is read on a tree request, after the daemon is ready)."""
    code = "import sys, openfang.control.daemon\nprint('psutil' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_runfile_runtime_dir_without_the_environment_is_under_the_temp_dir(monkeypatch: Any) -> None:
    """With neither OPENFANG_RUNTIME_DIR nor XDG_RUNTIME_DIR set, records go to <tempdir>/openfang-<uid>."""
    import tempfile

    monkeypatch.delenv("OPENFANG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert runfile.runtime_dir() == Path(tempfile.gettempdir()) / f"openfang-{os.getuid()}"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1")
    assert runfile.runtime_dir() == Path("/run/user/1/openfang")


def test_runfile_temp_dir_is_the_one_tempfile_chooses(monkeypatch: Any, tmp_path: Path) -> None:
    """temp_dir names the directory tempfile.gettempdir() picks: $TMPDIR when usable, else the next
    candidate (a missing or read-only $TMPDIR is passed over), relative paths made absolute."""
    import tempfile

    def tempfiles() -> str:
        monkeypatch.setattr(tempfile, "tempdir", None)  # its cached answer: computed again
        return tempfile.gettempdir()

    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.delenv(name, raising=False)
    assert runfile.temp_dir() == tempfiles()
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert runfile.temp_dir() == tempfiles() == str(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))
    monkeypatch.setenv("TMP", str(tmp_path))
    assert runfile.temp_dir() == tempfiles() == str(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    monkeypatch.setenv("TMPDIR", str(locked))
    if os.access(locked, os.W_OK):  # root may write anywhere: tempfile's probe then succeeds as well
        assert runfile.temp_dir() == tempfiles() == str(locked)
    else:
        assert runfile.temp_dir() == tempfiles() == str(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", "rel")
    (tmp_path / "rel").mkdir()
    assert runfile.temp_dir() == tempfiles() == str(tmp_path / "rel")
