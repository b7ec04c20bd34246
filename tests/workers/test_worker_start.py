"""The worker's start: what it does before its ready and what it leaves for after it."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
import zmq

from openfang.supervisor.child import ChildContext
from openfang.workers.worker import Worker

pytestmark = pytest.mark.integration


def test_worker_logs_memory_not_configured_after_its_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker of a cluster without a memory writer logs that fact in its last warm-up step, not in its
    start (a first log call is ~0.3 ms of a cold start's path): nothing is lost, only moved."""
    monkeypatch.setenv("OPENFANG_DATA_DIR", str(tmp_path))
    zctx = zmq.Context()
    gateway = zctx.socket(zmq.ROUTER)
    gateway.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/workers.sock"
    gateway.bind(endpoint)
    try:
        with structlog.testing.capture_logs() as during_start:
            worker = Worker(ChildContext(id="w-0", path="root/workers/w-0", args={"gateway": endpoint}))
        try:
            assert worker.memory is None
            assert not [e for e in during_start if e["event"] == "memory_not_configured"]
            with structlog.testing.capture_logs() as after_ready:
                worker._log_notes()
                worker._log_notes()  # once only
            notes = [e for e in after_ready if e["event"] == "memory_not_configured"]
            assert len(notes) == 1 and notes[0]["db"].startswith(str(tmp_path))
        finally:
            worker.close()
    finally:
        gateway.close(0)
        zctx.term()
