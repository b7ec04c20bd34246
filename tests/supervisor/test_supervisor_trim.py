"""Heap trimming (openfang.supervisor.trim) and the child API around it (ready / worked / when_quiet)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from supervisor_harness import Harness, child

from openfang.protocol.errors import SupervisorError
from openfang.supervisor import trim
from openfang.supervisor.child import ChildContext

pytestmark = pytest.mark.skipif(not trim.available(), reason="malloc_trim is glibc's")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_trim_returns_freed_heap_pages_to_the_kernel() -> None:
    """Pages freed in the middle of the malloc heap stay resident until trim() gives them back."""
    # In a fresh interpreter: 64 MB of 16 KiB malloc blocks, all freed but the last (which pins the top of
    # the heap, so glibc cannot shrink it by itself); the heap's resident pages are read before and after.
    code = textwrap.dedent(
        """
        import ctypes
        from openfang.supervisor import trim
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: the blocks come from the heap, not from mmap
        def heap_kb():
            kb, inside = 0, False
            for line in open("/proc/self/smaps"):
                if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                    inside = line.rstrip().endswith("[heap]")
                elif inside and line.startswith("Rss:"):
                    kb += int(line.split()[1])
            return kb
        blocks = [libc.malloc(16384) for _ in range(4096)]
        for b in blocks:
            ctypes.memset(b, 1, 16384)
        for b in blocks[:-1]:
            libc.free(b)
        before = heap_kb()
        released = trim.trim()
        print(before, heap_kb(), released)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    before, after, released = out.stdout.split()
    assert released == "True"
    assert int(before) - int(after) >= 32 * 1024  # at least half of the 64 MB freed went back


def test_quiet_trim_trims_once_a_burst_has_been_quiet_for_quiet_s() -> None:
    """A tick trims only after quiet_s without work, and only once per burst."""
    clock = Clock()
    q = trim.QuietTrim(1.0, clock=clock)  # armed: the start is the first burst
    clock.now += 0.5
    assert not q.tick()
    clock.now += 0.6
    assert q.tick()
    clock.now += 5
    assert not q.tick()  # nothing happened since: no second trim
    q.busy()
    clock.now += 0.9
    assert not q.tick()
    q.busy()  # still busy: the quiet period starts again
    clock.now += 0.9
    assert not q.tick()
    clock.now += 0.2
    assert q.tick(clock.now)
    assert q.trims == 2


def test_quiet_trim_unarmed_waits_for_work() -> None:
    """An unarmed QuietTrim never trims before its first busy()."""
    clock = Clock()
    q = trim.QuietTrim(0.1, armed=False, clock=clock)
    clock.now += 10
    assert not q.tick()
    q.busy()
    clock.now += 0.2
    assert q.tick()


def test_quiet_trim_runs_hooks_and_drops_a_failing_one() -> None:
    """Hooks run at each quiet trim; one that raises is dropped and the others still run."""
    clock = Clock()
    q = trim.QuietTrim(0.1, clock=clock)
    calls: list[str] = []

    def bad() -> None:
        calls.append("bad")
        raise OSError("cannot")

    q.hooks += [bad, lambda: calls.append("good")]
    clock.now += 1
    assert q.tick()
    q.busy()
    clock.now += 1
    assert q.tick()
    assert calls == ["bad", "good", "good"]
    assert len(q.hooks) == 1


def test_child_context_when_quiet_before_ready_is_an_error() -> None:
    """when_quiet needs ready() first: the trimming starts with the child's start being over."""
    ctx = ChildContext(id="c", path="root/c")
    with pytest.raises(SupervisorError, match="ready"):
        ctx.when_quiet(lambda: None)


def test_child_context_heartbeat_runs_quiet_hooks_after_worked(monkeypatch: pytest.MonkeyPatch) -> None:
    """After ready, a heartbeat once the loop is quiet after worked() runs the hooks, once per burst."""
    monkeypatch.setattr(trim, "QUIET_S", 0.0)
    ctx = ChildContext(id="c", path="root/c")
    ctx.ready()
    calls: list[int] = []
    ctx.when_quiet(lambda: calls.append(1))
    ctx.heartbeat()
    assert calls == []  # no work since ready (which trimmed already)
    ctx.worked()
    ctx.heartbeat()
    ctx.heartbeat()
    assert calls == [1]


@pytest.mark.integration
def test_trimming_child_keeps_serving_after_quiet_trims(harness: Harness, marks: Path) -> None:
    """A real child that trims at ready and after each burst (a hook included) is still running and
    beating after its quiet trims, and stops normally."""
    sup = harness.sup([child("t", "trim_loop", marks=marks, heartbeat_ms=2000)])
    sup.start()
    harness.wait(lambda: (marks / "log").exists() and "quiet t" in (marks / "log").read_text())
    harness.wait(lambda: (marks / "log").read_text().count("quiet t") >= 2)
    harness.settle(0.3)
    assert [n["state"] for n in sup.tree()] == ["running"]
    sup.shutdown()
    assert [e["reason"] for e in harness.kinds("child.exited")] == ["shutdown"]
