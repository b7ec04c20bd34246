"""The supervisor's bookkeeping for one child (one spec, and the process running it if any)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from openfang.supervisor.loop import TimerHandle
from openfang.supervisor.restart import ExitReason
from openfang.supervisor.spec import ChildSpec, ChildType

Reply = Callable[[bool, Any], None]

# Child states. Public ones (tree/which_children): running, restarting, stopped; "undefined" is a
# stopped child that never ran. Internal transitions: starting -> running | ignoring | failed;
# running -> exited (unexpected, awaiting the restart decision) | stopping (we asked) -> stopped.
STARTING, RUNNING, IGNORING, FAILED = "starting", "running", "ignoring", "failed"
EXITED, STOPPING, STOPPED, RESTARTING = "exited", "stopping", "stopped", "restarting"
ALIVE = (STARTING, RUNNING, IGNORING, STOPPING)


@dataclass(slots=True, kw_only=True)
class ChildRecord:
    spec: ChildSpec
    path: str
    dynamic: bool = False  # added by start_child: a reload leaves it alone
    state: str = STOPPED
    pid: int | None = None
    pidfd: int | None = None
    uplink: socket.socket | None = None
    started_at: float | None = None
    ever_started: bool = False
    restarts: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    subtree: list[Any] = field(default_factory=list)
    last_hb: float = 0.0
    hb_timer: TimerHandle | None = None
    kill_timer: TimerHandle | None = None
    hung: bool = False
    exit: ExitReason | None = None
    pending: dict[str, Reply] = field(default_factory=dict)  # our requests down this child's uplink

    @property
    def id(self) -> str:
        return str(self.spec.id)

    @property
    def is_supervisor(self) -> bool:
        return bool(self.spec.type == ChildType.SUPERVISOR)

    @property
    def alive(self) -> bool:
        return self.pid is not None

    def public_state(self) -> str:
        if self.state in (STARTING, RUNNING, IGNORING, STOPPING):
            return "running"
        if self.state in (RESTARTING, EXITED):
            return "restarting"
        return "stopped" if self.ever_started else "undefined"

    def node(self) -> dict[str, Any]:
        """This child as a node of ``openfang tree``."""
        return {
            "id": self.id,
            "path": self.path,
            "type": str(self.spec.type),
            "start": self.spec.start,
            "restart": str(self.spec.restart),
            "pid": self.pid,
            "cpu": self.spec.cpu,
            "state": self.public_state(),
            "started_at": self.started_at,
            "restarts": self.restarts,
            "info": dict(self.info),
            "children": list(self.subtree) if self.is_supervisor else [],
        }
