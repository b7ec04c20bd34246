"""Preloaded child processes (supervisor/preload.py): forked ahead, importing their module, launched as the
first child of that module as a fork would have started it; anything wrong falls back to a plain fork."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from openfang.supervisor import _proc, preload
from openfang.supervisor.spec import ChildSpec, SupervisorSpec

pytestmark = pytest.mark.integration

MODULE = "supervisor_children_preload"
START = f"{MODULE}:report"


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    """No preloaded process and no setup call outlives a test; the module is not imported here."""
    sys.modules.pop(MODULE, None)
    yield
    preload.discard()
    preload._setup.clear()
    sys.modules.pop(MODULE, None)


def _wait(pred: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("timed out")


def _run(out: Path, **kw: Any) -> tuple[_proc.Spawned, dict[str, Any]]:
    """Spawn the reporting child, wait for its report and its exit (0), reaped by its pidfd."""
    args = {"out": str(out), **kw.pop("args", {})}
    spawned = _proc.spawn(
        child_id="c", path="t/c", start=START, args=args, cpu=kw.pop("cpu", None), close_fds=[]
    )
    facts = json.loads(_wait(lambda: out.exists() and out.read_text()))
    reason = _wait(lambda: _proc.reap(spawned.pidfd))
    assert reason.kind == "normal", reason
    os.close(spawned.pidfd)
    spawned.uplink.close()
    return spawned, facts


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _exited(pid: int) -> bool:
    """The process has exited: a zombie, or already reaped (a process whose SIGCHLD is ignored reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_preloaded_process_becomes_the_first_child_as_a_fork_would_start_it(tmp_path: Path) -> None:
    """The first spawn of the module launches the preloaded process: the child's pid is the preloaded one,
    the module was imported there (not here), and the child sees its id, args and CPU, the environment,
    the structlog context of the launch's moment and the setup calls registered after the preload."""
    pre = _proc.preload(MODULE)
    assert pre is not None and preload.waiting(MODULE)
    os.environ["PRELOAD_TEST_VALUE"] = "set after the preload"
    structlog.contextvars.bind_contextvars(test_bound="bound after the preload")
    preload.set_setup(f"{MODULE}:setup", value="ran")
    try:
        spawned, facts = _run(tmp_path / "r.json", args={"n": 3}, cpu=0)
    finally:
        del os.environ["PRELOAD_TEST_VALUE"]
        structlog.contextvars.unbind_contextvars("test_bound")
    assert spawned.pid == pre.pid == facts["pid"] and facts["ppid"] == os.getpid()
    assert facts["imported_by"] == pre.pid  # imported in the preloaded process itself
    assert MODULE not in sys.modules and not preload.waiting(MODULE)
    assert facts["id"] == "c" and facts["path"] == "t/c" and facts["args"] == {"n": 3}
    assert facts["cpu"] == 0 and facts["affinity"] == [0]
    assert facts["env"] == "set after the preload" and facts["setup_ran"] == "ran"
    assert facts["context"] == {"test_bound": "bound after the preload"}


def test_the_next_fork_of_a_launched_module_imports_it_here_first(tmp_path: Path) -> None:
    """While the preloaded process waits, a preimport leaves the module to it; once it is launched, the
    next spawn (a restart) imports the module here and forks, as any first fork does."""
    _proc.preload(MODULE)
    _proc.preimport_child(ChildSpec(id="c", start=START))
    assert MODULE not in sys.modules
    first, _ = _run(tmp_path / "1.json")
    second, facts = _run(tmp_path / "2.json")
    assert MODULE in sys.modules and facts["imported_by"] == os.getpid() != facts["pid"]
    assert second.pid == facts["pid"] != first.pid


def test_a_forked_nested_supervisor_imports_what_a_preloaded_process_here_waits_for() -> None:
    """The children of a forked nested supervisor are forked there, where this process's preloaded one
    cannot be taken: the preimport of such a subtree imports the module here as always."""
    _proc.preload(MODULE)
    nested = SupervisorSpec(children=(ChildSpec(id="w", start=START),))
    _proc.preimport_child(ChildSpec(id="pool", start="x:y", supervisor=nested), here=False)
    assert MODULE in sys.modules and preload.waiting(MODULE)


def test_spawn_forks_as_usual_when_the_preloaded_process_is_gone(tmp_path: Path) -> None:
    """A preloaded process killed before its launch: the spawn forks the child (the module imported here
    first) and the dead process is reaped, not left a zombie."""
    pre = _proc.preload(MODULE)
    assert pre is not None
    os.kill(pre.pid, signal.SIGKILL)
    _wait(lambda: _exited(pre.pid))
    spawned, facts = _run(tmp_path / "r.json")
    assert spawned.pid == facts["pid"] != pre.pid and facts["imported_by"] == os.getpid()
    assert _gone(pre.pid) and not preload.waiting(MODULE)


def test_spawn_forks_as_usual_when_the_args_do_not_pickle(tmp_path: Path) -> None:
    """Args a launch cannot carry (a lock) are given by a fork instead; the preloaded process is reaped."""
    import threading

    pre = _proc.preload(MODULE)
    assert pre is not None
    args = {"out": str(tmp_path / "r.json"), "lock": threading.Lock()}
    spawned = _proc.spawn(child_id="c", path="t/c", start=START, args=args, cpu=None, close_fds=[])
    facts = json.loads(_wait(lambda: (tmp_path / "r.json").exists() and (tmp_path / "r.json").read_text()))
    assert spawned.pid == facts["pid"] != pre.pid and _gone(pre.pid)
    _wait(lambda: _proc.reap(spawned.pidfd))
    os.close(spawned.pidfd)
    spawned.uplink.close()


def test_a_preloaded_process_whose_import_fails_leaves_the_spawn_to_a_fork(tmp_path: Path) -> None:
    """A module that does not import in the preloaded process: it exits, and the spawn forks (where the
    child reports its own failed start, as without a preload)."""
    pre = _proc.preload("no_such_module_for_preload_xyz")
    assert pre is not None
    _wait(lambda: _exited(pre.pid))
    assert preload.take("no_such_module_for_preload_xyz") is pre
    parent_end, child_end = _proc.uplink_pair()
    assert not pre.launch(child_id="c", path="t/c", start="x:y", args={}, cpu=None, uplink=child_end)
    child_end.close()
    parent_end.close()
    pre.kill()
    assert _gone(pre.pid)


def test_discard_kills_and_reaps_a_preloaded_process_no_child_took() -> None:
    """A tree without a child of that module: discard kills the waiting process and reaps it."""
    pre = _proc.preload(MODULE)
    assert pre is not None and not _gone(pre.pid)
    preload.discard()
    assert _gone(pre.pid) and not preload.waiting(MODULE)


def test_a_preloaded_process_ignores_a_terminal_interrupt_while_it_waits(tmp_path: Path) -> None:
    """^C reaches the whole process group: the waiting process stays, and is launched afterwards."""
    pre = _proc.preload(MODULE)
    assert pre is not None
    time.sleep(0.2)
    os.kill(pre.pid, signal.SIGINT)
    time.sleep(0.2)
    assert not _gone(pre.pid)
    spawned, facts = _run(tmp_path / "r.json")
    assert spawned.pid == pre.pid == facts["pid"]


def test_a_preloaded_process_dies_with_its_parent(tmp_path: Path) -> None:
    """Its parent gone (kill -9) before any launch, the preloaded process is killed too (PDEATHSIG)."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:  # pragma: no cover - the parent under test, killed below
        os.close(r)
        pre = _proc.preload(MODULE)
        os.write(w, str(pre.pid if pre else 0).encode())
        time.sleep(60)
        os._exit(0)
    os.close(w)
    pid = int(os.read(r, 32))
    os.close(r)
    assert pid
    os.kill(middle, signal.SIGKILL)
    os.waitpid(middle, 0)

    _wait(lambda: _exited(pid), timeout=10)


def test_a_process_forked_here_cannot_launch_this_ones_preloaded_process() -> None:
    """A child forked after the preload (the gateway, a nested supervisor) forgets it: not its child."""
    pre = _proc.preload(MODULE)
    assert pre is not None
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - checked through the pipe
        os.write(w, b"1" if not preload.waiting(MODULE) and preload.take(MODULE) is None else b"0")
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(child, 0)
    assert preload.waiting(MODULE)


def test_fit_keeps_a_preloaded_process_only_for_a_tree_starting_one_child_of_it_here() -> None:
    """One child of the module started here (directly or under an inline supervisor): kept. None, two, only
    a stopped one, or one under a forked nested supervisor: killed and reaped at once."""
    one = ChildSpec(id="w0", start=START)
    inline_pool = ChildSpec(id="pool", start="x:y", inline=True, supervisor=SupervisorSpec(children=(one,)))
    forked_pool = ChildSpec(id="pool", start="x:y", supervisor=SupervisorSpec(children=(one,)))
    stopped = ChildSpec(id="w1", start=START, autostart=False)
    two = SupervisorSpec(children=(one, ChildSpec(id="w1", start=START)))
    for spec, kept in [
        (SupervisorSpec(children=(inline_pool, stopped)), True),
        (SupervisorSpec(children=(one,)), True),
        (two, False),
        (SupervisorSpec(children=(forked_pool,)), False),
        (SupervisorSpec(children=(stopped,)), False),
    ]:
        pre = _proc.preload(MODULE)
        assert pre is not None
        preload.fit(spec)
        assert preload.waiting(MODULE) is kept and _gone(pre.pid) is not kept, spec
        preload.discard()


def test_receive_takes_only_a_whole_launch_with_its_uplink(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message without an fd, a datagram cut short by the receive buffer, or a closed end is no launch
    (the preloaded process then exits without running anything); a whole one gives the message and fd."""
    import _socket
    import pickle

    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        ours.send(pickle.dumps({"child_id": "c"}))
        assert preload.receive(theirs) is None  # no uplink fd with it
        fd = w.to_bytes(4, sys.byteorder)
        monkeypatch.setattr(preload, "_LAUNCH_MAX", 64)  # a receive buffer smaller than the message
        open_fds = len(os.listdir("/proc/self/fd"))
        ours.sendmsg([b"x" * 65], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd)])
        assert preload.receive(theirs) is None  # truncated
        assert len(os.listdir("/proc/self/fd")) == open_fds  # the fd it carried closed, not leaked
        monkeypatch.undo()
        ours.sendmsg([pickle.dumps({"child_id": "c"})], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd)])
        got = preload.receive(theirs)
        assert got is not None and got[0] == {"child_id": "c"}
        os.close(got[1])
        ours.close()
        assert preload.receive(theirs) is None  # the supervisor's end closed
    finally:
        theirs.close()
        os.close(r)
        os.close(w)
