"""The job runner's wakeup pipe: a drain told the pipe was not readable (``woken=False``, the worker's poll
saw nothing) does not read it, yet hands out every finished job; a byte written meanwhile stays, so the next
poll wakes and a woken drain empties the pipe. No finished job is lost and the pipe never stays readable."""

from __future__ import annotations

import select
import threading

from openfang.workers.host import jobs


def _readable(runner: jobs.JobRunner) -> bool:
    return bool(select.select([runner.fileno()], [], [], 0)[0])


def _finish_pooled(runner: jobs.JobRunner, agent_id: str) -> None:
    """Run a pooled job for ``agent_id`` and wait until its wakeup byte is in the pipe."""
    job = jobs.ThreadJob(agent_id)
    runner.run(job, lambda: (0, b"", {}), inline=False)
    runner._pool.submit(lambda: None).result(10)  # one pool thread: the job's task has ended


def test_drain_not_woken_hands_out_finished_jobs_and_leaves_the_pipe_readable() -> None:
    """A job finished after the poll: drain(woken=False) returns it without reading the pipe; the pipe stays
    readable (the next poll wakes), and a woken drain then empties it and returns nothing new."""
    runner = jobs.JobRunner(max_threads=1)
    try:
        assert runner.drain(woken=False) == [] and not _readable(runner)
        _finish_pooled(runner, "a1")
        assert runner.drain(woken=False) == ["a1"]
        assert _readable(runner), "not read: the byte stays for the next poll"
        assert runner.drain(woken=True) == []
        assert not _readable(runner), "a woken drain empties the pipe"
    finally:
        runner.close()


def test_drain_woken_reads_the_pipe_and_returns_every_job_in_order() -> None:
    """Three pooled jobs and a poke: one woken drain returns the three in order and empties the pipe."""
    runner = jobs.JobRunner(max_threads=1)
    try:
        for agent_id in ("a1", "a2", "a3"):
            _finish_pooled(runner, agent_id)
        runner.poke()
        assert runner.drain() == ["a1", "a2", "a3"]
        assert not _readable(runner) and runner.drain(woken=False) == []
    finally:
        runner.close()


def test_drains_racing_finishing_jobs_lose_none_and_end_with_an_empty_pipe() -> None:
    """Jobs finishing on the pool while the loop polls and drains as the worker does (woken only when the
    pipe was readable): every job is handed out once, and once they are done the pipe is empty."""
    runner = jobs.JobRunner(max_threads=2)
    count = 300
    got: list[str] = []
    try:
        started = threading.Event()

        def submit() -> None:
            started.set()
            for i in range(count):
                runner.run(jobs.ThreadJob(f"a{i}"), lambda: (0, b"", {}), inline=False)

        feeder = threading.Thread(target=submit)
        feeder.start()
        started.wait(5)
        while len(got) < count:
            woken = bool(select.select([runner.fileno()], [], [], 5)[0])
            got.extend(runner.drain(woken=woken))
        feeder.join()
        assert sorted(got) == sorted(f"a{i}" for i in range(count)) and len(set(got)) == count
        while _readable(runner):  # the loop's next turns: a byte of an already handed-out job at most
            assert runner.drain(woken=True) == []
        assert not _readable(runner)
    finally:
        runner.close()
