"""What every supervisor does, static or dynamic: start a child and wait for it, act on its exit, restart
within the intensity window or give up, report events, answer requests.

:class:`SupervisorCore` owns one :class:`~openfang.supervisor._record.SupervisorState` (the explicit
state record) and collaborators that get what they need passed in and report back by calls:

- a :class:`~openfang.supervisor._watch.ChildWatcher`, whose reports (an exit, an uplink message, a hang)
  arrive at :meth:`SupervisorCore._on_report` as messages, like OTP's ``'EXIT'`` signals;
- a :class:`~openfang.supervisor._launch.Launcher`, which starts a child and waits for it, and stops
  children one after another;
- a :class:`~openfang.supervisor._requests.Requests` router, handed the state and the operations;
- :class:`~openfang.supervisor._events.Events`, where lifecycle events go.

The decisions are the pure functions of :mod:`.restart`. Work that runs the loop itself (a start, a
group restart, a dynamic child operation, a reload) is serialised (:class:`~openfang.supervisor.loop.Serial`):
a child exit or a request that arrives during one is handled right after it, as OTP's supervisor handles
one message at a time.

Where static and dynamic (simple_one_for_one) supervisors differ, the two subclasses say so (the abstract
methods below): :class:`openfang.supervisor.runtime.Supervisor` and
:class:`openfang.supervisor.dynamic.DynamicSupervisor`. They work through the state record and the
collaborators (``record``, ``events``, ``_serial``, ``_launcher``, ``_watcher``, ``_requests``) and the
helpers ``_start_or_forget`` and ``_release``; nothing else of the core is theirs to touch.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from openfang.protocol.errors import ConfigError, SupervisorError
from openfang.supervisor import trim
from openfang.supervisor._events import Events, EventSink, exit_fields
from openfang.supervisor._launch import Launcher
from openfang.supervisor._record import (
    EXITED,
    FAILED,
    IGNORING,
    NEW,
    RESTARTING,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    SUP_RUNNING,
    SUP_STOPPED,
    SUP_STOPPING,
    TERMINATED,
    ChildRecord,
    MakeInline,
    SupervisorState,
)
from openfang.supervisor._requests import OnRequest, Requests, operations_of
from openfang.supervisor._watch import ChildWatcher, Exited, Hung, Report, Said
from openfang.supervisor.loop import Loop, Serial
from openfang.supervisor.restart import (
    SHUTDOWN,
    ExitReason,
    RestartWindow,
    auto_shutdown_due,
    children_to_restart,
    should_restart,
)
from openfang.supervisor.spec import (
    ChildSpec,
    Restart,
    Strategy,
    SupervisorSpec,
    check_spec,
)

log = structlog.get_logger("openfang.supervisor")


class SupervisorCore(abc.ABC):
    """The common part of a supervisor (see the module docstring); use a subclass."""

    def __init__(
        self,
        spec: SupervisorSpec,
        *,
        loop: Loop,
        path: str = "root",
        on_event: EventSink | None = None,
        on_request: OnRequest | None = None,
        on_terminate: Callable[[str], None] | None = None,
        subreaper: bool | None = None,
        make_inline: MakeInline | None = None,
    ) -> None:
        problems = check_spec(spec, path)
        if problems:
            raise ConfigError(problems)
        self._check_strategy(spec, path)
        self.loop = loop
        self.path = path
        self.on_terminate = on_terminate
        self.subreaper = (path == "root") if subreaper is None else subreaper
        self.record = SupervisorState(
            spec=spec, path=path, window=RestartWindow(spec.flags.intensity, spec.flags.period)
        )
        self.extra_close_fds: list[int] = []  # fds of our own parent that no child may keep
        self._log = log.bind(supervisor=path)
        self.events = Events(path, self._log, on_event)
        self._serial = Serial(loop)
        self._watcher = ChildWatcher(loop, self._log, self._on_report)
        self._launcher = Launcher(loop, self._watcher, self.events, self._close_fds, make_inline)
        self._requests = Requests(
            self.record,
            operations=operations_of(self, path),
            serial=self._serial,
            send=self._watcher.send,
            on_request=on_request,
            log=self._log,
        )

    # -- what a subclass says ----------

    @abc.abstractmethod
    def _check_strategy(self, spec: SupervisorSpec, path: str) -> None:
        """ConfigError if ``spec``'s strategy is not this kind of supervisor's."""

    @abc.abstractmethod
    def _start_children(self) -> None:
        """Start the children of the spec at start (the dynamic supervisor has none)."""

    @abc.abstractmethod
    def _stop_children(self, recs: list[ChildRecord]) -> None:
        """Stop every child at shutdown; ``recs`` are in reverse start order."""

    def _forgotten_when_stopped(self, rec: ChildRecord) -> bool:
        """Whether a child that stopped for good (not restarted, ignored, terminated) loses its spec."""
        return bool(rec.spec.restart == Restart.TEMPORARY)

    @abc.abstractmethod
    def start_child(self, spec_or_extra_args: ChildSpec | Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Add a child and start it: ``{"id", "pid"}``."""

    @abc.abstractmethod
    def start_child_request(self, args: dict[str, Any]) -> dict[str, Any]:
        """``start_child`` from a request's args."""

    @abc.abstractmethod
    def restart_child(self, child_id: str) -> dict[str, Any]:
        """Start a stopped child again: ``{"id", "pid"}``."""

    @abc.abstractmethod
    def delete_child(self, child_id: str) -> None:
        """Forget a stopped child."""

    @abc.abstractmethod
    def reconfigure(self, new_spec: SupervisorSpec) -> dict[str, list[str]]:
        """Apply a new spec (a reload): what was started, stopped, replaced, left unchanged."""

    # -- the state, as it was always read ----------

    @property
    def spec(self) -> SupervisorSpec:
        return self.record.spec

    @property
    def state(self) -> str:
        return self.record.status

    @property
    def window(self) -> RestartWindow:
        return self.record.window

    @property
    def strategy(self) -> Strategy:
        return self.record.spec.flags.strategy

    @property
    def on_event(self) -> EventSink | None:
        return self.events.on_event

    @on_event.setter
    def on_event(self, sink: EventSink | None) -> None:
        self.events.on_event = sink

    # -- start and shutdown ----------

    def start(self) -> None:
        """Start every child in order, each after the previous is ready; on a failure, stop those started
        (reverse order) and raise SupervisorError naming the child (OTP's failed-start rollback)."""
        if self.record.status != NEW:
            raise SupervisorError(f"supervisor {self.path!r} was already started")
        if self.subreaper:
            self._watcher.adopt_orphans(self.record.pids)
        self.record.status = SUP_RUNNING
        self._start_children()  # which imports the children's modules first (_proc.preimport_tree)
        trim.trim()  # the start's garbage (imports, specs) back to the kernel: this process lives long

    def shutdown(self) -> None:
        """Stop every child per its shutdown policy and return when all are reaped."""
        if self.record.status in (SUP_STOPPING, SUP_STOPPED, TERMINATED):
            return
        self.record.status = SUP_STOPPING
        with self._serial:  # nothing queued runs during a shutdown
            self._stop_children(self.record.in_reverse())
        self._serial.clear()
        self.record.status = SUP_STOPPED
        self._release()

    def kill(self) -> None:
        """Kill every child at once (SIGKILL, whatever its shutdown policy) and stop for good: what the
        death of a supervisor's process does to its children (PDEATHSIG). An inline supervisor, which has
        no process of its own, is killed this way (a brutal_kill, an expired shutdown timeout, a crash)."""
        if self.record.status in (SUP_STOPPED, TERMINATED):
            return
        self.record.status = SUP_STOPPING
        with self._serial:
            for rec in self.record.in_reverse():
                if rec.alive:
                    rec.state = STOPPING
                    self._watcher.kill(rec)
        self._serial.clear()
        self.record.status = TERMINATED
        self._release()

    def run_serial(self, work: Callable[[], None]) -> None:
        """Run ``work`` as this supervisor's next operation (now, or after the one in progress)."""
        self._serial.run(work)

    def _release(self) -> None:
        if self.subreaper:
            self._watcher.release_orphans()

    def _close_fds(self) -> list[int]:
        return [*self.loop.fds(), *self.extra_close_fds, *self.record.fds()]

    # -- dynamic children: what both kinds share ----------

    def _start_or_forget(self, rec: ChildRecord) -> dict[str, Any]:
        """Start a child just added by start_child: one that fails is not kept; one that ignores is kept
        only as a spec the supervisor remembers."""
        try:
            started = self._launcher.start(rec)
        except SupervisorError:
            self.record.remove(rec)
            raise
        if not started and self._forgotten_when_stopped(rec):
            self.record.remove(rec)
        return {"id": rec.id, "pid": rec.pid}

    def terminate_child(self, child_id: str) -> None:
        """Stop a child per its shutdown policy; its spec stays unless it is forgotten when stopped."""
        rec = self.record.get(child_id)
        with self._serial:
            self._launcher.stop_in_order([rec])
            rec.state = STOPPED
            if self._forgotten_when_stopped(rec):
                self.record.remove(rec)
        self.events.changed()

    # -- what the watcher reports ----------

    def _on_report(self, report: Report) -> None:
        rec = report.rec
        if isinstance(report, Exited):
            self._on_exit(rec, report.pid, report.reason)
        elif isinstance(report, Hung):
            self.events.child("child.hung", rec, silent_ms=report.silent_ms, heartbeat_ms=report.heartbeat_ms)
        elif isinstance(report, Said):
            self._on_message(rec, report.msg)

    def _on_message(self, rec: ChildRecord, msg: dict[str, Any]) -> None:
        kind = msg["t"]
        if kind == "ready":
            if rec.state == STARTING:
                info = msg.get("info")
                rec.info = dict(info) if isinstance(info, dict) else {}
                rec.state = RUNNING
        elif kind == "ignore":
            if rec.state == STARTING:
                rec.state = IGNORING
        elif kind == "event":
            event = msg.get("event")
            if isinstance(event, dict):
                self.events.forward(event)
        elif kind == "subtree":
            children = msg.get("children")
            rec.subtree = list(children) if isinstance(children, list) else []
            self.events.changed()
        elif kind == "req":
            self._requests.from_child(rec, msg)
        elif kind == "rep":
            self._requests.answered(rec, msg)

    def _on_exit(self, rec: ChildRecord, pid: int | None, reason: ExitReason) -> None:
        if rec.state == STARTING:
            rec.exit, rec.state = reason, FAILED  # the start in progress sees it
        elif rec.state == IGNORING:
            rec.exit = reason
        elif rec.state == STOPPING:
            rec.exit, rec.state = SHUTDOWN, STOPPED
            self.events.child("child.exited", rec, pid=pid, reason="shutdown", **exit_fields(reason))
            self.events.changed()
        else:
            rec.exit, rec.state = reason, EXITED
            self.events.child("child.exited", rec, pid=pid, reason=str(reason.kind), **exit_fields(reason))
            self._serial.run(lambda: self._after_exit(rec, reason))

    # -- deciding after an exit ----------

    def _after_exit(self, rec: ChildRecord, reason: ExitReason) -> None:
        state = self.record
        if state.status != SUP_RUNNING or not state.is_current(rec) or rec.state != EXITED:
            return  # shutting down, or the child was terminated/deleted/restarted meanwhile
        if not should_restart(rec.spec.restart, reason):
            rec.state = STOPPED
            if self._forgotten_when_stopped(rec):
                state.remove(rec)
            self.events.changed()
            if auto_shutdown_due(
                state.spec.flags.auto_shutdown,
                exited_significant=rec.spec.significant,
                restarted=False,
                significant_running=state.significant_running(),
            ):
                self._give_up("auto_shutdown", rec)
            return
        self._restart_after_failure(rec)

    def _restart_after_failure(self, rec: ChildRecord) -> None:
        state = self.record
        if not state.window.add_restart(self.loop.time()):
            self._give_up("shutdown", rec)
            return
        rec.state = RESTARTING
        active = [r.id for r in state.in_order() if r.state in (RUNNING, RESTARTING, EXITED)]
        to_terminate, to_start = children_to_restart(self.strategy, active, rec.id)
        with self._serial:
            self._launcher.stop_in_order([state.children[c] for c in to_terminate])
            for cid in to_terminate:
                sibling = state.children[cid]
                if sibling.spec.restart == Restart.TEMPORARY:
                    state.remove(sibling)  # temporary children are never restarted, not even in a group
                else:
                    sibling.state = RESTARTING
            for i, cid in enumerate(to_start):
                child = state.children.get(cid)
                if child is None or child.state != RESTARTING:
                    continue
                if state.status != SUP_RUNNING:
                    return
                try:
                    child.restarts += 1
                    if self._launcher.start(child):
                        self.events.child("child.restarted", child, restarts=child.restarts)
                    elif self._forgotten_when_stopped(child):
                        state.remove(child)  # OTP: a dynamic child that ignores its restart is gone
                except SupervisorError as exc:
                    # OTP retries a failed restart (and counts it): the rest of the group waits for it.
                    self._log.warning("restart_failed", child=cid, error=exc.message)
                    for later in to_start[i:]:
                        if later in state.children:
                            state.children[later].state = RESTARTING
                    self.loop.call_soon(
                        functools.partial(self._serial.run, functools.partial(self._retry, child))
                    )
                    break
        self.events.changed()

    def _retry(self, rec: ChildRecord) -> None:
        if self.record.status == SUP_RUNNING and self.record.is_current(rec) and rec.state == RESTARTING:
            self._restart_after_failure(rec)

    def _give_up(self, reason: str, offender: ChildRecord) -> None:
        """Intensity exceeded (reason "shutdown") or auto_shutdown: stop everything, tell our owner."""
        flags = self.record.spec.flags
        kind = "supervisor.escalated" if reason == "shutdown" else "supervisor.auto_shutdown"
        self._log.error(kind, offender=offender.id, intensity=flags.intensity, period=flags.period)
        self.events.emit(
            {
                "kind": kind,
                "path": self.path,
                "id": offender.id,
                "child": offender.id,
                "pid": None,
                "reason": reason,
                "intensity": flags.intensity,
                "period": flags.period,
            }
        )
        self.shutdown()
        self.record.status = TERMINATED
        if self.on_terminate is not None:
            self.on_terminate(reason)

    # -- requests and queries ----------

    def request(self, path: str, op: str, args: dict[str, Any], reply: Callable[[bool, Any], None]) -> None:
        """Run ``op`` on the supervisor at ``path`` (this one or a nested one below); ``reply(ok, result)``
        is called exactly once (on failure with ``{"code", "message"}``)."""
        self._requests.request(path, op, args, reply)

    def ask(self, child_id: str, op: str, args: dict[str, Any], reply: Callable[[bool, Any], None]) -> None:
        """Send request ``op`` down the uplink of the running child ``child_id``; its ``rep`` (or its exit)
        calls ``reply(ok, result)`` once (the daemon asks the gateway to drain workers before a reload)."""
        rec = self.record.children.get(child_id)
        if rec is None:
            reply(False, SupervisorError(f"no child {child_id!r} under {self.path!r}").to_wire())
            return
        self._requests.ask_child(rec, op, args, reply)

    def send_to_child(self, child_id: str, msg: dict[str, Any]) -> bool:
        """Send one message down a child's uplink; False if the child is not running."""
        rec = self.record.children.get(child_id)
        return rec is not None and self._watcher.send(rec, msg)

    def which_children(self) -> list[dict[str, Any]]:
        """``[{id, pid, type, state}]`` in start order (state: running / restarting / stopped / undefined)."""
        return self.record.which_children()

    def count_children(self) -> dict[str, int]:
        """OTP's counts: specs, active (alive processes), supervisors, workers."""
        return self.record.count_children()

    def get_childspec(self, child_id: str) -> ChildSpec:
        return self.record.get(child_id).spec

    def tree(self) -> list[dict[str, Any]]:
        """A snapshot of this supervisor's children (nested supervisors: their latest subtree)."""
        return self.record.tree()
