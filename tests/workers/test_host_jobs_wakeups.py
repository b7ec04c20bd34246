"""The job runner's wakeup pipe: a drain reads it only after a write, returns every finished job once, and
leaves the pipe empty (never readable with nothing to do, never a wakeup lost)."""

from __future__ import annotations

import os
import select
import threading

import pytest

from openfang.workers.host import jobs


def _readable(runner: jobs.JobRunner) -> bool:
    return bool(select.select([runner.fileno()], [], [], 0)[0])


def _work() -> tuple[int, bytes, dict[str, int]]:
    return 0, b"", {}


def test_jobs_drain_reads_the_pipe_only_after_a_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drains with nothing written make no read; after a poke or a finished pooled job the next drain reads
    the pipe empty (the loop's poll does not wake again for it) and returns the job's agent once."""
    runner = jobs.JobRunner(max_threads=1)
    reads: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        reads.append(fd)
        return real_read(fd, n)

    monkeypatch.setattr(jobs.os, "read", counting_read)
    try:
        for _ in range(5):
            assert runner.drain() == []
        assert reads == []
        runner.poke()
        assert _readable(runner)
        assert runner.drain() == [] and reads and not _readable(runner)
        reads.clear()
        assert runner.drain() == [] and reads == []
        job = jobs.ThreadJob("a1")
        runner.run(job, _work, inline=False)
        for _ in range(1000):
            if _readable(runner) and runner._woken:
                break
            threading.Event().wait(0.005)
        assert runner.drain() == ["a1"] and job.done and not _readable(runner)
        assert runner.drain() == []
    finally:
        runner.close()


def test_jobs_drain_loses_no_wakeup_under_concurrent_jobs_and_pokes() -> None:
    """Jobs finishing and pokes on several threads while the host drains: every job's agent comes back
    exactly once, and once the writers are done a drain leaves the pipe empty."""
    runner = jobs.JobRunner(max_threads=4)
    stop = threading.Event()

    def poker() -> None:
        while not stop.is_set():
            runner.poke()

    pokers = [threading.Thread(target=poker) for _ in range(2)]
    for t in pokers:
        t.start()
    seen: list[str] = []
    try:
        ids = [f"a{i}" for i in range(2000)]
        for agent_id in ids:
            runner.run(jobs.ThreadJob(agent_id), _work, inline=False)
            if len(seen) % 7 == 0:
                seen += runner.drain()
        for _ in range(4000):
            seen += runner.drain()
            if len(seen) >= len(ids):
                break
            threading.Event().wait(0.001)
        stop.set()
        for t in pokers:
            t.join()
        runner._pool.shutdown(wait=True)  # every job's thread has written and set the flag
        seen += runner.drain()
        assert sorted(seen) == sorted(ids)
        assert not _readable(runner)
    finally:
        stop.set()
        runner.close()
