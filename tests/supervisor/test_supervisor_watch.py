"""The child watcher on its own: real forked children, whose exits and words arrive as reports (messages)."""

from __future__ import annotations

from typing import Any

import pytest
import structlog

from openfang.supervisor import _proc
from openfang.supervisor._record import ChildRecord
from openfang.supervisor._watch import ChildWatcher, Exited, Hung, Report, Said
from openfang.supervisor.loop import Loop
from openfang.supervisor.restart import ExitKind
from openfang.supervisor.spec import ChildSpec

pytestmark = pytest.mark.integration


def _watched(func: str, **spec: Any) -> tuple[Loop, ChildWatcher, ChildRecord, list[Report]]:
    loop = Loop()
    reports: list[Report] = []
    watcher = ChildWatcher(loop, structlog.get_logger("test"), reports.append)
    args = spec.pop("args", {})
    rec = ChildRecord(
        spec=ChildSpec(id="c", start=f"supervisor_children:{func}", args=args, **spec), path="t/c"
    )
    spawned = _proc.spawn(
        child_id="c", path="t/c", start=rec.spec.start, args=args, cpu=None, close_fds=loop.fds()
    )
    watcher.watch(rec, spawned)
    return loop, watcher, rec, reports


def test_watcher_reports_words_then_the_exit_as_messages() -> None:
    """A child's uplink messages and then its exit (code 7) arrive as Said and Exited; it is reaped."""
    loop, _, rec, reports = _watched("exit_after", args={"code": 7, "ms": 10})
    pid = rec.pid
    assert loop.run_until(lambda: any(isinstance(r, Exited) for r in reports), timeout=10)
    said = [r.msg["t"] for r in reports if isinstance(r, Said)]
    exited = reports[-1]
    assert said == ["ready"]
    assert isinstance(exited, Exited) and exited.pid == pid and exited.rec is rec
    assert exited.reason.kind == ExitKind.ABNORMAL and exited.reason.code == 7
    assert rec.pid is None and rec.pidfd is None and rec.uplink is None
    loop.close()


def test_watcher_reports_a_silent_child_as_hung_then_its_exit_as_hung() -> None:
    """A running child silent past heartbeat_ms is reported Hung, killed, and its exit says "hung"."""
    loop, watcher, rec, reports = _watched("serve", heartbeat_ms=100)
    assert loop.run_until(lambda: any(isinstance(r, Said) for r in reports), timeout=10)
    rec.state = "running"  # the supervisor's part, done by hand here
    watcher.arm_heartbeat(rec)
    assert loop.run_until(lambda: any(isinstance(r, Exited) for r in reports), timeout=10)
    hung = [r for r in reports if isinstance(r, Hung)]
    exited = reports[-1]
    assert len(hung) == 1 and hung[0].heartbeat_ms == 100 and hung[0].silent_ms >= 100
    assert isinstance(exited, Exited) and exited.reason.detail == "hung"
    loop.close()


def test_watcher_fails_unanswered_requests_when_the_child_exits() -> None:
    """A request sent down to a child that dies is answered once, with an error naming the child."""
    loop, watcher, rec, reports = _watched("serve")
    assert loop.run_until(lambda: any(isinstance(r, Said) for r in reports), timeout=10)
    answers: list[tuple[bool, Any]] = []
    rec.pending["q1"] = lambda ok, result: answers.append((ok, result))
    watcher.kill(rec)
    assert answers == [(False, {"code": "supervisor_error", "message": "child 'c' exited before answering"})]
    assert not watcher.send(rec, {"t": "event"})  # no process: nothing to send to
    loop.close()
