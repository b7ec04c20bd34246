"""A supervisor's state as one explicit record: its spec, lifecycle and restart window, and per child a
:class:`ChildRecord` (one spec, and the process running it if any) in start order.

The record is plain bookkeeping with no behaviour beyond lookups: the supervisor decides, and the
collaborators it hands this record to (the request router) read it. Every mutation of the child table goes
through :meth:`SupervisorState.add` and :meth:`SupervisorState.remove`, which keep ``children`` and
``order`` in step (invariant: ``set(order) == set(children)``).
"""

from __future__ import annotations

import _socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from openfang.protocol.errors import NotFound, SupervisorError
from openfang.supervisor.loop import Loop, TimerHandle
from openfang.supervisor.restart import ExitReason, RestartWindow
from openfang.supervisor.spec import ChildSpec, ChildType, SupervisorSpec

Reply = Callable[[bool, Any], None]

# Child states. Public ones (tree/which_children): running, restarting, stopped; "undefined" is a
# stopped child that never ran. Internal transitions: starting -> running | ignoring | failed;
# running -> exited (unexpected, awaiting the restart decision) | stopping (we asked) -> stopped.
STARTING, RUNNING, IGNORING, FAILED = "starting", "running", "ignoring", "failed"
EXITED, STOPPING, STOPPED, RESTARTING = "exited", "stopping", "stopped", "restarting"
ALIVE = (STARTING, RUNNING, IGNORING, STOPPING)


class InlineChild(Protocol):
    """What a supervisor holds of a child supervisor running inline (in its own process): the counterpart
    of a child process's pidfd and uplink (:class:`openfang.supervisor.inline.InlineSupervisor`)."""

    timed_out: bool  # killed by its parent's start watchdog (no progress within start_timeout_ms)

    def start(self) -> None:
        """Start its children from the loop (``ready`` follows, or its exit)."""

    def deliver(self, msg: dict[str, Any]) -> None:
        """A message from the parent, as a child process reads it from its uplink."""

    def terminate(self) -> None:
        """SIGTERM's counterpart: stop the children in reverse order, then exit normally."""

    def kill(self) -> None:
        """SIGKILL's counterpart: its children are killed at once (as PDEATHSIG kills a process's)."""

    def pids(self) -> set[int]:
        """The pids of every process below it (its children's and its inline children's, recursively)."""


class MakeInline(Protocol):
    """Makes the inline supervisor of ``child`` (a supervisor spec with ``inline = true``): what
    :func:`openfang.supervisor.runtime.supervisor_for` hands every supervisor it makes."""

    def __call__(
        self,
        child: ChildSpec,
        *,
        path: str,
        loop: Loop,
        to_parent: Callable[[dict[str, Any]], None],
        on_exit: Callable[[ExitReason], None],
    ) -> InlineChild: ...


@dataclass(slots=True, kw_only=True)
class ChildRecord:
    """A child as its supervisor keeps it: its spec, where it is in the tree and its running state."""

    spec: ChildSpec
    path: str
    dynamic: bool = False  # added by start_child: a reload leaves it alone
    state: str = STOPPED
    pid: int | None = None
    pidfd: int | None = None
    uplink: _socket.socket | None = None
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
    inline: InlineChild | None = None  # a running inline supervisor (pid is then this process's own)

    @property
    def id(self) -> str:
        return str(self.spec.id)

    @property
    def is_supervisor(self) -> bool:
        return bool(self.spec.type == ChildType.SUPERVISOR)

    @property
    def alive(self) -> bool:
        return self.pid is not None

    @property
    def link(self) -> _socket.socket | InlineChild | None:
        """What messages to this child go through: its uplink, or the inline supervisor itself."""
        return self.uplink if self.uplink is not None else self.inline

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


# Supervisor states: new -> running -> stopping -> stopped | terminated (gave up: escalation, auto_shutdown).
NEW, SUP_RUNNING, SUP_STOPPING, SUP_STOPPED, TERMINATED = (
    "new",
    "running",
    "stopping",
    "stopped",
    "terminated",
)


@dataclass(slots=True, kw_only=True)
class SupervisorState:
    """Everything one supervisor knows (see the module docstring)."""

    spec: SupervisorSpec
    path: str
    window: RestartWindow
    status: str = NEW
    children: dict[str, ChildRecord] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # child ids in start order
    made: int = 0  # children a dynamic supervisor made from its template so far (their ids count up)

    # -- the child table ----------

    def add(self, spec: ChildSpec, *, index: int | None = None, dynamic: bool = False) -> ChildRecord:
        rec = ChildRecord(spec=spec, path=f"{self.path}/{spec.id}", dynamic=dynamic)
        self.children[spec.id] = rec
        if index is None:
            self.order.append(spec.id)
        else:
            self.order.insert(index, spec.id)
        return rec

    def is_current(self, rec: ChildRecord) -> bool:
        """``rec`` is still the record of its id (not deleted, not replaced by a reload)."""
        return self.children.get(rec.id, None) is rec

    def remove(self, rec: ChildRecord) -> None:
        if self.is_current(rec):
            del self.children[rec.id]
            self.order.remove(rec.id)

    def clear(self) -> None:
        self.children.clear()
        self.order.clear()

    def get(self, child_id: str) -> ChildRecord:
        """The record of ``child_id``; NotFound (OTP's ``not_found``) naming this supervisor if none."""
        rec = self.children.get(child_id)
        if rec is None:
            raise NotFound(f"not_found: supervisor {self.path!r} has no child {child_id!r}")
        return rec

    def in_order(self) -> list[ChildRecord]:
        return [self.children[c] for c in self.order]

    def in_reverse(self) -> list[ChildRecord]:
        """Shutdown order: the last started first."""
        return [self.children[c] for c in reversed(self.order)]

    def check_running(self) -> None:
        if self.status != SUP_RUNNING:
            raise SupervisorError(f"supervisor {self.path!r} is {self.status}")

    # -- what the processes hold ----------

    def pids(self) -> set[int]:
        """The children's pids, and those of every process below an inline child (this process forked
        them, so an orphan reaper must leave them to their own supervisor's pidfds)."""
        pids = {r.pid for r in self.children.values() if r.pid is not None}
        for rec in self.children.values():
            if rec.inline is not None:
                pids |= rec.inline.pids()
        return pids

    def fds(self) -> list[int]:
        """The pidfds and uplinks of every child (a newly forked child must not keep its siblings')."""
        fds: list[int] = []
        for rec in self.children.values():
            if rec.pidfd is not None:
                fds.append(rec.pidfd)
            if rec.uplink is not None:
                fds.append(rec.uplink.fileno())
        return fds

    # -- OTP's queries ----------

    def tree(self) -> list[dict[str, Any]]:
        """A snapshot of the children (nested supervisors: their latest subtree)."""
        return [rec.node() for rec in self.in_order()]

    def which_children(self) -> list[dict[str, Any]]:
        """``[{id, pid, type, state}]`` in start order (state: running / restarting / stopped / undefined)."""
        return [
            {"id": r.id, "pid": r.pid, "type": str(r.spec.type), "state": r.public_state()}
            for r in self.in_order()
        ]

    def count_children(self) -> dict[str, int]:
        """OTP's counts: specs, active (alive processes), supervisors, workers."""
        recs = list(self.children.values())
        return {
            "specs": len(recs),
            "active": sum(1 for r in recs if r.alive),
            "supervisors": sum(1 for r in recs if r.spec.type == ChildType.SUPERVISOR),
            "workers": sum(1 for r in recs if r.spec.type == ChildType.WORKER),
        }

    def significant_running(self) -> int:
        return sum(1 for r in self.children.values() if r.spec.significant and r.alive)
