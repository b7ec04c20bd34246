"""A host job runs in a copy of the host thread's logging context with ``agent_id`` bound, as
``structlog.contextvars.bind_contextvars`` binds it, and leaves the host's own context as it was."""

from __future__ import annotations

import contextvars
import threading
from typing import Any

import structlog

from openfang.workers.host import jobs


def _reference(agent_id: str) -> dict[str, Any]:
    """What a job saw before: bind_contextvars in a copy of the context, then the job's view of it."""
    ctx = contextvars.copy_context()
    ctx.run(structlog.contextvars.bind_contextvars, agent_id=agent_id)
    return ctx.run(structlog.contextvars.get_contextvars)


def _job_view(runner: jobs.JobRunner, agent_id: str, *, inline: bool) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    done = threading.Event()

    def work() -> tuple[int, bytes, dict[str, int]]:
        seen.update(structlog.contextvars.get_contextvars())
        done.set()
        return 0, b"", {}

    job = jobs.ThreadJob(agent_id)
    runner.run(job, work, inline=inline)
    assert done.wait(10)
    return seen


def test_jobs_context_binds_agent_id_as_structlog_does() -> None:
    """Inline and pooled jobs see the host's bound values plus agent_id; the host's context is untouched."""
    runner = jobs.JobRunner(max_threads=1)
    tokens = structlog.contextvars.bind_contextvars(role="worker", worker="w9")
    try:
        for agent_id in ("a1", "a2", "a1"):
            for inline in (True, False):
                assert _job_view(runner, agent_id, inline=inline) == _reference(agent_id)
                assert structlog.contextvars.get_contextvars() == {"role": "worker", "worker": "w9"}
        structlog.contextvars.bind_contextvars(agent_id="host-own")  # the host's own value is shadowed only
        assert _job_view(runner, "a3", inline=True)["agent_id"] == "a3"
        assert structlog.contextvars.get_contextvars()["agent_id"] == "host-own"
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
        structlog.contextvars.unbind_contextvars("agent_id")
        runner.close()


def test_jobs_inline_and_pooled_finish_alike_for_results_and_failures() -> None:
    """An inline job (finished without ``_guarded``'s tuple) ends with the code, value, usage and error a
    pooled one (through ``_guarded``) ends with: a result, an OpenFangError and a bug alike."""
    from openfang.protocol.errors import OpenFangError

    def ok() -> tuple[int, bytes, dict[str, int]]:
        return 3, b"abc", {"prompt_tokens": 2}

    def refused() -> tuple[int, bytes, dict[str, int]]:
        raise OpenFangError("model said no")

    def bug() -> tuple[int, bytes, dict[str, int]]:
        raise KeyError("oops")

    runner = jobs.JobRunner(max_threads=1)
    try:
        for work in (ok, refused, bug):
            ends = []
            for inline in (True, False):
                job = jobs.ThreadJob("a1")
                runner.run(job, work, inline=inline)
                while not job.done:
                    threading.Event().wait(0.001)
                ends.append((job.code, job.value, job.usage, job.error))
            assert ends[0][:3] == ends[1][:3], work.__name__
            assert type(ends[0][3]) is type(ends[1][3]) and str(ends[0][3]) == str(ends[1][3])
            if work is ok:
                assert ends[0] == (3, b"abc", {"prompt_tokens": 2}, None)
            else:
                assert ends[0][0] < 0
    finally:
        runner.close()


def test_usage_job_starts_with_every_field_a_thread_job_starts_with() -> None:
    """UsageJob sets ThreadJob's fields itself (no super() call): the same values, and its agent."""
    from types import SimpleNamespace

    from openfang.workers.host.services import UsageJob

    agent = SimpleNamespace(agent_id="a7")
    ours, base = UsageJob(agent), jobs.ThreadJob("a7")  # type: ignore[arg-type]
    for name in jobs.ThreadJob.__slots__:
        assert getattr(ours, name) == getattr(base, name), name
    assert ours.usage is not UsageJob(agent).usage  # type: ignore[arg-type]
    assert ours._agent is agent
