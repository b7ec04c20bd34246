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
