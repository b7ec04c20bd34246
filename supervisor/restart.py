"""The supervisor's decisions as pure functions: restart or not, whom to restart, give up or not.

Nothing here touches a process or a clock of its own (time is passed in), so every rule of OTP's
``supervisor.erl`` that decides *what* to do is tested without forking anything.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from openfang.supervisor.spec import AutoShutdown, Restart, Strategy


class ExitKind(StrEnum):
    NORMAL = "normal"  # the child returned / exited 0 by itself
    SHUTDOWN = "shutdown"  # the supervisor asked it to stop (terminate_child, shutdown, group restart)
    ABNORMAL = "abnormal"  # exception, non-zero exit, a signal we did not send, hung, failed start


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitReason:
    """How a child ended. For ABNORMAL: the exit ``code`` or the ``signal`` that killed it, and a detail."""

    kind: ExitKind
    code: int | None = None
    signal: int | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"kind": str(self.kind), "code": self.code, "signal": self.signal, "detail": self.detail}

    def __str__(self) -> str:
        if self.kind != ExitKind.ABNORMAL:
            return str(self.kind)
        what = f"signal {self.signal}" if self.signal is not None else f"exit code {self.code}"
        return f"abnormal ({what}{', ' + self.detail if self.detail else ''})"


NORMAL = ExitReason(kind=ExitKind.NORMAL, code=0)
SHUTDOWN = ExitReason(kind=ExitKind.SHUTDOWN)


def abnormal(*, code: int | None = None, signal: int | None = None, detail: str = "") -> ExitReason:
    return ExitReason(kind=ExitKind.ABNORMAL, code=code, signal=signal, detail=detail)


class RestartWindow:
    """OTP's restart intensity: at most ``intensity`` restarts within any ``period`` seconds.

    ``add_restart(now)`` records one restart and returns False when that restart exceeds the intensity
    (the supervisor must then give up). Like OTP's ``add_restart``, restarts older than ``period`` fall out
    of the window, the boundary included in it (``now - t <= period`` still counts).
    """

    __slots__ = ("_restarts", "intensity", "period")

    def __init__(self, intensity: int, period: float) -> None:
        self.intensity = intensity
        self.period = period
        # Newest first; made on the first restart (an empty deque is ~0.7 KiB, and a worker keeps one
        # window per agent, most of which never restart).
        self._restarts: deque[float] | None = None

    def add_restart(self, now: float) -> bool:
        if self._restarts is None:
            self._restarts = deque()
        threshold = now - self.period
        while self._restarts and self._restarts[-1] < threshold:
            self._restarts.pop()
        self._restarts.appendleft(now)
        return len(self._restarts) <= self.intensity

    def __len__(self) -> int:
        return len(self._restarts) if self._restarts is not None else 0

    def reset(self, intensity: int, period: float) -> None:
        """New flags (reload); the restarts already counted stay counted."""
        self.intensity = intensity
        self.period = period


def should_restart(restart: Restart, exit: ExitReason) -> bool:
    """OTP's restart types: permanent always, transient only after an abnormal exit, temporary never."""
    if restart == Restart.PERMANENT:
        return True
    if restart == Restart.TRANSIENT:
        return exit.kind == ExitKind.ABNORMAL
    return False


def children_to_restart(
    strategy: Strategy, children: Sequence[str], failed_id: str
) -> tuple[list[str], list[str]]:
    """For a failed child, (ids to terminate, in reverse start order; ids to start, in start order).

    ``children`` are the ids of the children that are running or waiting for a restart, in start order,
    including ``failed_id``. The failed child is never in the terminate list (it is already dead).
    """
    if failed_id not in children:
        raise ValueError(f"{failed_id!r} is not among the children")
    if strategy in (Strategy.ONE_FOR_ONE, Strategy.SIMPLE_ONE_FOR_ONE):
        return [], [failed_id]
    # rest_for_one: the failed child and every child started after it.
    start = 0 if strategy == Strategy.ONE_FOR_ALL else children.index(failed_id)
    group = list(children[start:])
    to_terminate = [c for c in reversed(group) if c != failed_id]
    return to_terminate, group


def auto_shutdown_due(
    auto_shutdown: AutoShutdown, *, exited_significant: bool, restarted: bool, significant_running: int
) -> bool:
    """Whether the supervisor must shut itself down after a child exit (OTP ``auto_shutdown``).

    Only a significant child that exits *by itself* and is not restarted counts (a temporary one after
    any exit, a transient one after a normal exit). ``significant_running`` is the number of significant
    children still alive after this exit.
    """
    if auto_shutdown == AutoShutdown.NEVER or not exited_significant or restarted:
        return False
    if auto_shutdown == AutoShutdown.ANY_SIGNIFICANT:
        return True
    return significant_running == 0


def reverse_start_order(ids: Iterable[str], order: Sequence[str]) -> list[str]:
    """``ids`` sorted in reverse of their position in ``order`` (shutdown order)."""
    pos = {cid: i for i, cid in enumerate(order)}
    return sorted(ids, key=lambda c: pos.get(c, -1), reverse=True)
