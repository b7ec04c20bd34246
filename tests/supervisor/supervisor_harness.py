"""Helpers for the supervisor tests: a Harness (loop, supervisors, what they reported) and spec makers."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openfang.supervisor.loop import Loop
from openfang.supervisor.runtime import SupervisorCore, supervisor_for
from openfang.supervisor.spec import (
    ChildSpec,
    Strategy,
    SupervisorFlags,
    SupervisorSpec,
)


class Harness:
    """A loop, the supervisors made on it, and everything they reported."""

    def __init__(self) -> None:
        self.loop = Loop()
        self.events: list[dict[str, Any]] = []
        self.terminated: list[str] = []
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.sups: list[SupervisorCore] = []

    def sup(
        self,
        children: list[ChildSpec] | tuple[ChildSpec, ...],
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: int = 3,
        period: float = 5,
        on_request: Callable[[str, str, dict[str, Any], Any], None] | None = None,
        **flags: Any,
    ) -> SupervisorCore:
        spec = SupervisorSpec(
            flags=SupervisorFlags(strategy=strategy, intensity=intensity, period=period, **flags),
            children=tuple(children),
        )
        s = supervisor_for(
            spec,
            loop=self.loop,
            on_event=self.events.append,
            on_request=on_request or self._answer,
            on_terminate=self.terminated.append,
        )
        self.sups.append(s)
        return s

    def _answer(self, child_id: str, op: str, args: dict[str, Any], reply: Any) -> None:
        self.requests.append((child_id, op, args))
        reply(True, {"op": op, "from": child_id, "args": args})

    def kinds(self, kind: str, path: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind and (path is None or e.get("path") == path)]

    def wait(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        # Slices: a condition outside the loop (a file, a process) does not wake the loop by itself.
        deadline = time.monotonic() + timeout
        while not self.loop.run_until(pred, timeout=0.05):
            assert time.monotonic() < deadline, "condition not reached in time"

    def settle(self, seconds: float) -> None:
        self.loop.run_until(lambda: False, timeout=seconds)

    def close(self) -> None:
        for s in reversed(self.sups):
            s.shutdown()
        self.loop.close()


def child(cid: str, func: str = "serve", marks: Path | None = None, **kw: Any) -> ChildSpec:
    """A test child running supervisor_children.<func> with small timeouts."""
    args = dict(kw.pop("args", {}))
    if marks is not None:
        args["marks"] = str(marks)
    kw.setdefault("shutdown", 2000)
    return ChildSpec(id=cid, start=f"supervisor_children:{func}", args=args, **kw)


def starts(marks: Path) -> list[str]:
    """The ids of children in the order they started (from the marker log)."""
    log = marks / "log"
    if not log.exists():
        return []
    return [line.split()[1] for line in log.read_text().splitlines() if line.startswith("start ")]


def stops(marks: Path) -> list[str]:
    log = marks / "log"
    if not log.exists():
        return []
    return [line.split()[1] for line in log.read_text().splitlines() if line.startswith("stop ")]
