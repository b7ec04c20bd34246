"""Layer 14's baseline taken by a forked helper: the same baseline as taken in the root, never less."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import msgpack
import pytest

from openfang.control.baseline import HELPER_NICE, BaselineHelper
from openfang.security.config import SecurityConfig, parse_security
from openfang.security.integrity import baseline_monitor


def _config(tmp_path: Path, **integrity: object) -> SecurityConfig:
    config: SecurityConfig = parse_security(
        {"integrity": {"enabled": True, **integrity}}, "cluster.toml", data_dir=tmp_path, base_dir=tmp_path
    )
    return config


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_baseline_helper_takes_the_baseline_the_root_would_take(tmp_path: Path) -> None:
    """The helper's baseline of the package files is the one baseline_monitor takes in-process, and the
    helper is reaped by close()."""
    config = _config(tmp_path)
    helper = BaselineHelper.start(config)
    assert helper is not None and helper.pid is not None
    pid = helper.pid
    monitor = helper.monitor(None)
    helper.close()
    here = baseline_monitor(config.integrity, None)
    assert monitor is not None and here is not None
    assert monitor.baseline() == here.baseline() and monitor.watched > 100
    assert _reaped(pid)


def test_baseline_helper_monitor_reports_a_changed_file(tmp_path: Path) -> None:
    """A monitor made from the helper's baseline reports a file changed after the baseline was taken."""
    watched = tmp_path / "guest.wasm"
    watched.write_bytes(b"\0asm original")
    helper = BaselineHelper.start(_config(tmp_path, packages=[], files=[str(watched)]))
    assert helper is not None
    monitor = helper.monitor(None)
    helper.close()
    assert monitor is not None and monitor.check() == []
    watched.write_bytes(b"\0asm changed!")
    assert [(v.path, v.kind) for v in monitor.check()] == [(str(watched.resolve()), "modified")]


def test_baseline_helper_without_an_answer_takes_it_here(tmp_path: Path) -> None:
    """A helper that died without answering, or answered junk, leaves the root to take the baseline."""
    watched = tmp_path / "f"
    watched.write_text("x")
    config = _config(tmp_path, packages=[], files=[str(watched)])
    here = baseline_monitor(config.integrity, None)
    for answer in (b"", b"\x92\x01", b"\x81\xa1a\x92\xa3bad\x01"):
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the stand-in helper: answers and dies
            theirs.sendall(answer)
            os._exit(1)
        theirs.close()
        helper = BaselineHelper(config, pid, ours)
        monitor = helper.monitor(None)
        helper.close()
        assert monitor is not None and monitor.baseline() == here.baseline()
        assert _reaped(pid)


def test_baseline_helper_missing_file_fails_as_in_the_root(tmp_path: Path) -> None:
    """A configured file that does not exist fails monitor() as baseline_monitor fails (the daemon then
    stops its tree: a failed start)."""
    helper = BaselineHelper.start(_config(tmp_path, packages=[], files=[str(tmp_path / "missing")]))
    assert helper is not None
    with pytest.raises(FileNotFoundError):
        helper.monitor(None)
    helper.close()


def test_baseline_helper_not_started_when_the_layer_is_off(tmp_path: Path) -> None:
    """With [security.integrity] enabled = false there is no helper (and no baseline)."""
    config: SecurityConfig = parse_security(
        {"integrity": {"enabled": False}}, "cluster.toml", data_dir=tmp_path, base_dir=tmp_path
    )
    assert BaselineHelper.start(config) is None


def test_baseline_helper_runs_behind_the_start(tmp_path: Path) -> None:
    """The helper lowers its own priority (the gateway starts on that core meanwhile) and still answers."""
    helper = BaselineHelper.start(_config(tmp_path))
    assert helper is not None and helper.pid is not None
    want = min(os.getpriority(os.PRIO_PROCESS, 0) + HELPER_NICE, 19)
    deadline = time.monotonic() + 10
    while os.getpriority(os.PRIO_PROCESS, helper.pid) != want and time.monotonic() < deadline:
        time.sleep(0.005)
    assert os.getpriority(os.PRIO_PROCESS, helper.pid) == want
    monitor = helper.monitor(None)
    helper.close()
    assert monitor is not None and monitor.baseline()


def test_baseline_helper_poll_reads_the_answer_without_waiting(tmp_path: Path) -> None:
    """poll() answers False while the helper has not finished its answer (never waiting for it), True once
    it has; monitor() makes the same monitor from what poll() read, and only close() lets the helper go."""
    watched = tmp_path / "f"
    watched.write_text("x")
    config = _config(tmp_path, packages=[], files=[str(watched)])
    here = baseline_monitor(config.integrity, None)
    answer = msgpack.packb(here.baseline(), use_bin_type=True)
    ours, theirs = socket.socketpair()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the stand-in helper: half the answer, then the rest when told
        theirs.sendall(answer[:5])
        os.read(go_r, 1)
        theirs.sendall(answer[5:])
        theirs.shutdown(socket.SHUT_WR)
        theirs.recv(1)
        os._exit(0)
    theirs.close()
    helper = BaselineHelper(config, pid, ours)
    started = time.monotonic()
    while time.monotonic() - started < 0.2:
        assert helper.poll() is False
    os.write(go_w, b"x")
    deadline = time.monotonic() + 10
    while not helper.poll() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert helper.poll() is True
    monitor = helper.monitor(None)
    # Not told to exit before close(): an exit during the start would reach the root's orphan reaper.
    time.sleep(0.05)
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)
    helper.close()
    assert _reaped(pid)
    os.close(go_r)
    os.close(go_w)
    assert monitor is not None and monitor.baseline() == here.baseline()


def test_baseline_helper_poll_of_a_dead_helper_leaves_it_to_the_root(tmp_path: Path) -> None:
    """A helper that died with half an answer: poll() says the answer is in, monitor() takes the baseline
    here (the same one)."""
    watched = tmp_path / "f"
    watched.write_text("x")
    config = _config(tmp_path, packages=[], files=[str(watched)])
    here = baseline_monitor(config.integrity, None)
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the stand-in helper: dies half-way
        theirs.sendall(msgpack.packb(here.baseline(), use_bin_type=True)[:7])
        os._exit(1)
    theirs.close()
    os.waitpid(pid, 0)
    helper = BaselineHelper(config, None, ours)
    assert helper.poll() is True
    monitor = helper.monitor(None)
    helper.close()
    assert monitor is not None and monitor.baseline() == here.baseline()


def test_baseline_helper_release_lets_it_exit_before_close_reaps_it(tmp_path: Path) -> None:
    """Once its answer is taken, release() tells the helper to exit without waiting: it exits on its own
    (a zombie until reaped), and close() reaps it."""
    helper = BaselineHelper.start(_config(tmp_path))
    assert helper is not None and helper.pid is not None
    pid = helper.pid
    assert helper.monitor(None) is not None
    helper.release()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rpartition(")")[2].split()[0] == "Z":
                break
        time.sleep(0.01)
    else:
        raise AssertionError("the released helper did not exit")
    helper.close()
    assert _reaped(pid) and helper.pid is None
