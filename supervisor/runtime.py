"""The supervisor runtime: OTP's ``supervisor`` behaviour over forked processes and a selectors loop.

A :class:`Supervisor` starts its children in order (one at a time, each waiting for its ``ready``), watches
them through pidfds and their uplinks, applies its strategy, restart types and intensity window when one
exits, escalates when the window overflows, and stops them in reverse order. Crashes arrive as loop
callbacks, never as exceptions. Work that runs the loop itself (a start, a group restart, a dynamic
child operation, a reload) is serialised: anything that would start another such operation while one is
in progress (a child exit, a request) is queued and runs right after, as OTP's supervisor handles one
message at a time.

Watching and stopping children is in :mod:`._watch`; dynamic-child operations, requests and reloads are
in :mod:`._admin`; the process plumbing is in
:mod:`._proc`; the entry point of a nested supervisor process, :func:`run_nested`, is in :mod:`._nested`.
"""

from __future__ import annotations

import functools
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog
from openfang.protocol.errors import ConfigError, SupervisorError
from openfang.supervisor import _proc
from openfang.supervisor._nested import run_nested
from openfang.supervisor._record import (
    EXITED,
    FAILED,
    IGNORING,
    RESTARTING,
    RUNNING,
    STARTING,
    STOPPED,
    ChildRecord,
    Reply,
)
from openfang.supervisor.loop import Loop
from openfang.supervisor.restart import (
    ExitReason,
    RestartWindow,
    auto_shutdown_due,
    children_to_restart,
    should_restart,
)
from openfang.supervisor.spec import Restart, Strategy, SupervisorSpec, check_spec, spec_to_dict

from ._admin import AdminMixin  # relative: resolvable by mypy through the package-dir mapping
from ._watch import WatchMixin

__all__ = ["Supervisor", "run_nested"]
log = structlog.get_logger("openfang.supervisor")
IGNORE_GRACE_S = 5.0  # a child that said "ignore" gets this long to return before it is killed


class Supervisor(WatchMixin, AdminMixin):
    """One supervisor (the root, or the body of a nested supervisor process). See the module docstring."""

    def __init__(
        self,
        spec: SupervisorSpec,
        *,
        loop: Loop,
        path: str = "root",
        on_event: Callable[[dict[str, Any]], None] | None = None,
        on_request: Callable[[str, str, dict[str, Any], Reply], None] | None = None,
        on_terminate: Callable[[str], None] | None = None,
        subreaper: bool | None = None,
    ) -> None:
        problems = check_spec(spec, path)
        if problems:
            raise ConfigError(problems)
        self.spec = spec
        self.loop = loop
        self.path = path
        self.on_event = on_event
        self.on_request = on_request
        self.on_terminate = on_terminate
        self.subreaper = (path == "root") if subreaper is None else subreaper
        self._was_subreaper = True
        self.state = "new"  # new -> running -> stopping -> stopped | terminated
        self.window = RestartWindow(spec.flags.intensity, spec.flags.period)
        self._children: dict[str, ChildRecord] = {}
        self._order: list[str] = []
        self._busy = 0
        self._queue: deque[Callable[[], None]] = deque()
        self._next_dynamic = 0
        self._req_seq = 0
        self.extra_close_fds: list[int] = []  # fds of our own parent that no child may keep
        self.on_change: Callable[[], None] | None = None  # a nested supervisor pushes its subtree up
        self._log = log.bind(supervisor=path)

    @property
    def strategy(self) -> Strategy:
        return self.spec.flags.strategy

    # -- start and shutdown ----------

    def start(self) -> None:
        """Start every child in order, each after the previous is ready; on a failure, stop those started
        (reverse order) and raise SupervisorError naming the child (OTP's failed-start rollback)."""
        if self.state != "new":
            raise SupervisorError(f"supervisor {self.path!r} was already started")
        if self.subreaper:
            self._was_subreaper = _proc.set_subreaper(True)
            self.loop.add_signal_handler(signal.SIGCHLD, self._reap_orphans)
        self.state = "running"
        if self.strategy == Strategy.SIMPLE_ONE_FOR_ONE:
            return
        with self._serial():
            for spec in self.spec.children:
                rec = self._add(spec)
                try:
                    self._start(rec)
                except SupervisorError as exc:
                    self._log.error("start_failed_rollback", child=rec.id, error=exc.message)
                    self._terminate_many([self._children[c] for c in reversed(self._order)])
                    self._children.clear()
                    self._order.clear()
                    self.state = "stopped"
                    self._release()
                    raise SupervisorError(
                        f"supervisor {self.path}: child {rec.id!r} failed to start: {exc.message}"
                    ) from None
        self._changed()

    def shutdown(self) -> None:
        """Stop every child in reverse start order (simple_one_for_one: all at once), each per its shutdown
        policy, and return when all are reaped."""
        if self.state in ("stopping", "stopped", "terminated"):
            return
        self.state = "stopping"
        self._busy += 1  # nothing queued runs during a shutdown
        try:
            recs = [self._children[c] for c in reversed(self._order)]
            if self.strategy == Strategy.SIMPLE_ONE_FOR_ONE:
                self._terminate_parallel(recs)
            else:
                self._terminate_many(recs)
        finally:
            self._busy -= 1
        self._queue.clear()
        self.state = "stopped"
        self._release()

    def _release(self) -> None:
        if self.subreaper:
            self.loop.remove_signal_handler(signal.SIGCHLD)
            _proc.reap_orphans(set())
            if not self._was_subreaper:
                # Put the process back as it was (a test process, an embedding application).
                _proc.set_subreaper(False)

    # -- starting one child ----------

    def _add(self, spec: Any, *, index: int | None = None, dynamic: bool = False) -> ChildRecord:
        rec = ChildRecord(spec=spec, path=f"{self.path}/{spec.id}", dynamic=dynamic)
        self._children[spec.id] = rec
        if index is None:
            self._order.append(spec.id)
        else:
            self._order.insert(index, spec.id)
        return rec

    def _is_current(self, rec: ChildRecord) -> bool:
        """``rec`` is still the record of its id (not deleted, not replaced by a reload)."""
        return self._children.get(rec.id, None) is rec

    def _remove(self, rec: ChildRecord) -> None:
        if self._is_current(rec):
            del self._children[rec.id]
            self._order.remove(rec.id)

    def _close_fds(self) -> list[int]:
        fds = list(self.loop.fds()) + list(self.extra_close_fds)
        for other in self._children.values():
            if other.pidfd is not None:
                fds.append(other.pidfd)
            if other.uplink is not None:
                fds.append(other.uplink.fileno())
        return fds

    def _start(self, rec: ChildRecord) -> bool:
        """Fork ``rec`` and wait for its ready (True) or ignore (False); SupervisorError if it fails."""
        spec = rec.spec
        args = dict(spec.args)
        if rec.is_supervisor and spec.supervisor is not None:
            args["spec"] = spec_to_dict(spec.supervisor)
        try:
            sp = _proc.spawn(
                child_id=spec.id,
                path=rec.path,
                start=spec.start,
                args=args,
                cpu=spec.cpu,
                close_fds=self._close_fds(),
            )
        except OSError as exc:
            self._emit("child.start_failed", rec, reason=f"fork failed: {exc}")
            raise SupervisorError(f"cannot fork child {spec.id!r}: {exc}") from None
        rec.pid, rec.pidfd, rec.uplink = sp.pid, sp.pidfd, sp.uplink
        rec.state, rec.exit, rec.hung, rec.info = STARTING, None, False, {}
        pidfd, uplink = sp.pidfd, sp.uplink
        self.loop.add_reader(pidfd, lambda: self._on_pidfd(rec, pidfd))
        self.loop.add_reader(uplink.fileno(), lambda: self._on_uplink(rec, uplink))
        in_time = self._wait_started(rec)
        if not in_time:
            self._kill_and_wait(rec)
            reason = f"no ready within start_timeout_ms={spec.start_timeout_ms}"
            self._emit("child.start_failed", rec, reason=reason)
            rec.state = STOPPED
            raise SupervisorError(f"child {spec.id!r}: {reason}")
        if rec.state == FAILED:
            reason = str(rec.exit) if rec.exit else "exited"
            self._emit("child.start_failed", rec, reason=f"exited before ready: {reason}")
            rec.state = STOPPED
            raise SupervisorError(f"child {spec.id!r} exited before ready: {reason}")
        if rec.state == IGNORING:
            if not self.loop.run_until(lambda: rec.pid is None, timeout=IGNORE_GRACE_S):
                self._kill_and_wait(rec)
            rec.state = STOPPED
            self._emit("child.ignored", rec)
            return False
        if rec.state != RUNNING:  # stopped under our feet (a shutdown during the start)
            raise SupervisorError(f"child {spec.id!r}: start interrupted ({rec.state})")
        rec.started_at = time.time()
        rec.ever_started = True
        self._arm_heartbeat(rec)
        self._emit("child.started", rec, info=rec.info)
        return True

    def _wait_started(self, rec: ChildRecord) -> bool:
        """Wait for ready/ignore/exit; False on timeout. A nested supervisor starting its own children
        reports progress (subtree snapshots), and each report restarts its timeout, like OTP's infinity
        start for supervisors without hanging forever on one that is stuck."""
        limit = timeout = rec.spec.start_timeout_ms / 1000
        rec.last_hb = self.loop.time()
        while True:
            if self.loop.run_until(lambda: rec.state != STARTING, timeout=timeout):
                return True
            silent = self.loop.time() - rec.last_hb
            if not rec.is_supervisor or silent >= limit:
                return False
            timeout = limit - silent

    def _kill_and_wait(self, rec: ChildRecord) -> None:
        if rec.pidfd is not None:
            _proc.send_signal(rec.pidfd, signal.SIGKILL)
        self.loop.run_until(lambda: rec.pid is None)

    # -- deciding after an exit ----------

    def _after_exit(self, rec: ChildRecord, reason: ExitReason) -> None:
        if self.state != "running" or not self._is_current(rec) or rec.state != EXITED:
            return  # shutting down, or the child was terminated/deleted/restarted meanwhile
        if not should_restart(rec.spec.restart, reason):
            rec.state = STOPPED
            if rec.spec.restart == Restart.TEMPORARY or self.strategy == Strategy.SIMPLE_ONE_FOR_ONE:
                self._remove(rec)  # temporary specs are forgotten; dynamic children are not kept stopped
            self._changed()
            significant_running = sum(1 for r in self._children.values() if r.spec.significant and r.alive)
            if auto_shutdown_due(
                self.spec.flags.auto_shutdown,
                exited_significant=rec.spec.significant,
                restarted=False,
                significant_running=significant_running,
            ):
                self._give_up("auto_shutdown", rec)
            return
        self._restart_after_failure(rec)

    def _restart_after_failure(self, rec: ChildRecord) -> None:
        if not self.window.add_restart(self.loop.time()):
            self._give_up("shutdown", rec)
            return
        rec.state = RESTARTING
        active = [c for c in self._order if self._children[c].state in (RUNNING, RESTARTING, EXITED)]
        to_terminate, to_start = children_to_restart(self.strategy, active, rec.id)
        with self._serial():
            self._terminate_many([self._children[c] for c in to_terminate])
            for cid in to_terminate:
                sibling = self._children[cid]
                if sibling.spec.restart == Restart.TEMPORARY:
                    self._remove(sibling)  # temporary children are never restarted, not even in a group
                else:
                    sibling.state = RESTARTING
            for i, cid in enumerate(to_start):
                child = self._children.get(cid)
                if child is None or child.state != RESTARTING:
                    continue
                if self.state != "running":
                    return
                try:
                    child.restarts += 1
                    if self._start(child):
                        self._emit("child.restarted", child, restarts=child.restarts)
                    elif self.strategy == Strategy.SIMPLE_ONE_FOR_ONE:
                        self._remove(child)  # OTP: a dynamic child that ignores its restart is gone
                except SupervisorError as exc:
                    # OTP retries a failed restart (and counts it): the rest of the group waits for it.
                    self._log.warning("restart_failed", child=cid, error=exc.message)
                    for later in to_start[i:]:
                        if later in self._children:
                            self._children[later].state = RESTARTING
                    self.loop.call_soon(
                        functools.partial(self._serialize, functools.partial(self._retry, child))
                    )
                    break
        self._changed()

    def _retry(self, rec: ChildRecord) -> None:
        if self.state == "running" and self._is_current(rec) and rec.state == RESTARTING:
            self._restart_after_failure(rec)

    def _give_up(self, reason: str, offender: ChildRecord) -> None:
        """Intensity exceeded (reason "shutdown") or auto_shutdown: stop everything, tell our owner."""
        kind = "supervisor.escalated" if reason == "shutdown" else "supervisor.auto_shutdown"
        self._log.error(
            kind, offender=offender.id, intensity=self.spec.flags.intensity, period=self.spec.flags.period
        )
        self._emit_raw(
            {
                "kind": kind,
                "path": self.path,
                "id": offender.id,
                "child": offender.id,
                "pid": None,
                "reason": reason,
                "intensity": self.spec.flags.intensity,
                "period": self.spec.flags.period,
            }
        )
        self.shutdown()
        self.state = "terminated"
        if self.on_terminate is not None:
            self.on_terminate(reason)

    # -- serialisation, events, snapshot ----------

    def _serial(self) -> _Serial:
        return _Serial(self)

    def _serialize(self, work: Callable[[], None]) -> None:
        """Run ``work`` now, or after the loop-running operation in progress finishes."""
        if self._busy:
            self._queue.append(work)
        else:
            with self._serial():
                work()

    def _drain(self) -> None:
        while self._queue and not self._busy:
            work = self._queue.popleft()
            with self._serial():
                work()

    def _emit(self, kind: str, rec: ChildRecord, **fields: Any) -> None:
        event = {
            "kind": kind,
            "path": rec.path,
            "supervisor": self.path,
            "id": rec.id,
            "child": rec.id,
            "pid": rec.pid,
            **fields,
        }
        self._emit_raw(event)

    def _emit_raw(self, event: dict[str, Any]) -> None:
        event["time"] = time.time()
        self._log.info(
            event["kind"].replace(".", "_"), **{k: v for k, v in event.items() if k not in ("kind", "time")}
        )
        if self.on_event is not None:
            self.on_event(event)
        if event["kind"] in ("child.started", "child.exited", "child.restarted"):
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def tree(self) -> list[dict[str, Any]]:
        """A snapshot of this supervisor's children (nested supervisors: their latest subtree)."""
        return [self._children[c].node() for c in self._order]


class _Serial:
    """Marks a loop-running operation; queued work runs when the outermost one ends."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def __enter__(self) -> None:
        self.sup._busy += 1

    def __exit__(self, *exc: object) -> None:
        self.sup._busy -= 1
        if not self.sup._busy and self.sup._queue:
            self.sup.loop.call_soon(self.sup._drain)
