"""The supervisor runtime: OTP's ``supervisor`` behaviour over forked processes and a selectors loop.

A :class:`Supervisor` starts its children in order (one at a time, each waiting for its ``ready``), watches
them through pidfds and their uplinks, applies its strategy, restart types and intensity window when one
exits, escalates when the window overflows, and stops them in reverse order. Crashes arrive as loop
callbacks, never as exceptions. Work that runs the loop itself (a start, a group restart, a dynamic
child operation, a reload) is serialised: anything that would start another such operation while one is
in progress (a child exit, a request) is queued and runs right after, as OTP's supervisor handles one
message at a time.

Dynamic-child operations, requests and reloads are in :mod:`._admin`; the process plumbing is in
:mod:`._proc`; the entry point of a nested supervisor process, :func:`run_nested`, is in :mod:`._nested`.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog
from openfang.protocol.errors import ConfigError, OpenFangError, SupervisorError
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
    STOPPING,
    ChildRecord,
    Reply,
)
from openfang.supervisor.child import MAX_UPLINK_PACKET, pack, unpack
from openfang.supervisor.loop import Loop
from openfang.supervisor.restart import (
    SHUTDOWN,
    ExitKind,
    ExitReason,
    RestartWindow,
    abnormal,
    auto_shutdown_due,
    children_to_restart,
    should_restart,
)
from openfang.supervisor.spec import Restart, Strategy, SupervisorSpec, check_spec, spec_to_dict

from ._admin import AdminMixin  # relative: resolvable by mypy through the package-dir mapping

__all__ = ["Supervisor", "run_nested"]
log = structlog.get_logger("openfang.supervisor")
IGNORE_GRACE_S = 5.0  # a child that said "ignore" gets this long to return before it is killed


class Supervisor(AdminMixin):
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

    # -- watching children ----------

    def _on_uplink(self, rec: ChildRecord, uplink: socket.socket) -> None:
        while True:
            try:
                packet = uplink.recv(MAX_UPLINK_PACKET, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                packet = b""
            if not packet:  # the child closed its end; its exit comes through the pidfd
                self.loop.remove_reader(uplink.fileno())
                return
            try:
                msg = unpack(packet)
            except OpenFangError as exc:
                self._log.warning("bad_uplink_packet", child=rec.id, error=exc.message)
                continue
            if rec.uplink is uplink:
                self._dispatch(rec, msg)

    def _dispatch(self, rec: ChildRecord, msg: dict[str, Any]) -> None:
        kind = msg["t"]
        if kind == "ready":
            if rec.state == STARTING:
                info = msg.get("info")
                rec.info = dict(info) if isinstance(info, dict) else {}
                rec.state = RUNNING
            rec.last_hb = self.loop.time()
        elif kind == "hb":
            rec.last_hb = self.loop.time()
        elif kind == "ignore":
            if rec.state == STARTING:
                rec.state = IGNORING
        elif kind == "event":
            event = msg.get("event")
            if isinstance(event, dict) and self.on_event is not None:
                self.on_event(event)  # forwarded unchanged
        elif kind == "subtree":
            rec.last_hb = self.loop.time()  # progress of a starting nested supervisor
            children = msg.get("children")
            rec.subtree = list(children) if isinstance(children, list) else []
            self._changed()
        elif kind == "req":
            self._child_request(rec, msg)
        elif kind == "rep":
            reply = rec.pending.pop(str(msg.get("id")), None)
            if reply is not None:
                ok = bool(msg.get("ok"))
                reply(ok, msg.get("result") if ok else (msg.get("error") or {}))

    def send_to_child(self, child_id: str, msg: dict[str, Any]) -> bool:
        """Send one message down a child's uplink; False if the child is not running."""
        rec = self._children.get(child_id)
        if rec is None or rec.uplink is None:
            return False
        try:
            rec.uplink.send(pack(msg), socket.MSG_DONTWAIT)
            return True
        except (BlockingIOError, BrokenPipeError, ConnectionResetError, OSError):
            # A child that does not read its uplink must not block the supervisor: the message is dropped.
            return False

    def _on_pidfd(self, rec: ChildRecord, pidfd: int) -> None:
        if rec.pidfd != pidfd:
            return
        reason = _proc.reap(pidfd)
        if reason is None:
            return
        if rec.uplink is not None:
            self._on_uplink(rec, rec.uplink)  # the last words (events) sent before exiting
        pid = rec.pid
        self._forget_process(rec)
        if rec.hung:
            reason = abnormal(code=reason.code, signal=reason.signal, detail="hung")
        if rec.state == STARTING:
            rec.exit, rec.state = reason, FAILED
        elif rec.state == IGNORING:
            rec.exit = reason
        elif rec.state == STOPPING:
            rec.exit, rec.state = SHUTDOWN, STOPPED
            self._emit("child.exited", rec, pid=pid, reason="shutdown", **_status(reason))
            self._changed()
        else:
            rec.exit, rec.state = reason, EXITED
            self._emit("child.exited", rec, pid=pid, reason=str(reason.kind), **_status(reason))
            self._serialize(lambda: self._after_exit(rec, reason))

    def _forget_process(self, rec: ChildRecord) -> None:
        for timer in (rec.hb_timer, rec.kill_timer):
            if timer is not None:
                timer.cancel()
        rec.hb_timer = rec.kill_timer = None
        if rec.pidfd is not None:
            self.loop.remove_reader(rec.pidfd)
            _close_quietly(rec.pidfd)
        if rec.uplink is not None:
            self.loop.remove_reader(rec.uplink.fileno())
            rec.uplink.close()
        rec.pid = rec.pidfd = None
        rec.uplink = None
        pending, rec.pending = rec.pending, {}
        for reply in pending.values():
            reply(False, {"code": "supervisor_error", "message": f"child {rec.id!r} exited before answering"})

    def _arm_heartbeat(self, rec: ChildRecord) -> None:
        hb = rec.spec.heartbeat_ms
        if hb is None or rec.pidfd is None:
            return
        pidfd = rec.pidfd
        due = rec.last_hb + hb / 1000 - self.loop.time()
        rec.hb_timer = self.loop.call_later(max(due, 0.0), lambda: self._check_heartbeat(rec, pidfd))

    def _check_heartbeat(self, rec: ChildRecord, pidfd: int) -> None:
        hb = rec.spec.heartbeat_ms
        if rec.pidfd != pidfd or rec.state != RUNNING or hb is None:
            return
        silent = self.loop.time() - rec.last_hb
        if silent < hb / 1000:
            self._arm_heartbeat(rec)
            return
        rec.hung = True
        self._emit("child.hung", rec, silent_ms=round(silent * 1000), heartbeat_ms=hb)
        _proc.send_signal(pidfd, signal.SIGKILL)  # the exit arrives through the pidfd as an abnormal one

    def _reap_orphans(self) -> None:
        ours = {r.pid for r in self._children.values() if r.pid is not None}
        for pid in _proc.reap_orphans(ours):
            self._log.info("orphan_reaped", orphan_pid=pid)

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
                    self.loop.call_soon(lambda c=child: self._serialize(lambda: self._retry(c)))
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

    # -- terminating ----------

    def _signal_stop(self, rec: ChildRecord) -> None:
        """Begin stopping ``rec`` per its shutdown policy (SIGKILL, or SIGTERM + a SIGKILL timer)."""
        if rec.pidfd is None:
            return
        rec.state = STOPPING
        policy = rec.spec.shutdown
        if policy == "brutal_kill":
            _proc.send_signal(rec.pidfd, signal.SIGKILL)
            return
        _proc.send_signal(rec.pidfd, signal.SIGTERM)
        if isinstance(policy, int):
            pidfd = rec.pidfd
            rec.kill_timer = self.loop.call_later(policy / 1000, lambda: self._kill_late(rec, pidfd))

    def _kill_late(self, rec: ChildRecord, pidfd: int) -> None:
        if rec.pidfd == pidfd:
            self._log.warning("shutdown_timeout_kill", child=rec.id, shutdown_ms=rec.spec.shutdown)
            _proc.send_signal(pidfd, signal.SIGKILL)

    def _terminate_many(self, recs: list[ChildRecord]) -> None:
        """Stop ``recs`` one after the other (each fully reaped before the next is signalled)."""
        for rec in recs:
            if rec.pid is None:
                if rec.state in (EXITED, RESTARTING):
                    rec.state = STOPPED
                continue
            self._signal_stop(rec)
            self.loop.run_until(lambda rec=rec: rec.pid is None)

    def _terminate_parallel(self, recs: list[ChildRecord]) -> None:
        """Stop ``recs`` all at once with one shared timer (simple_one_for_one shutdown)."""
        alive = [r for r in recs if r.pid is not None]
        for rec in alive:
            if rec.pidfd is None:
                continue
            rec.state = STOPPING
            policy = rec.spec.shutdown
            _proc.send_signal(rec.pidfd, signal.SIGKILL if policy == "brutal_kill" else signal.SIGTERM)
        policy = recs[0].spec.shutdown if recs else "infinity"
        if isinstance(policy, int):

            def kill_all() -> None:
                for rec in alive:
                    if rec.pidfd is not None:
                        _proc.send_signal(rec.pidfd, signal.SIGKILL)

            timer = self.loop.call_later(policy / 1000, kill_all)
        else:
            timer = None
        self.loop.run_until(lambda: all(r.pid is None for r in alive))
        if timer is not None:
            timer.cancel()

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


def _status(reason: ExitReason) -> dict[str, Any]:
    """Event fields of an exit: ``status`` as the wire has it (exit code, or minus the signal number),
    ``detail`` (hung, escalated, the signal's name) and the whole reason as ``exit``."""
    status = -reason.signal if reason.signal is not None else (reason.code or 0)
    return {"status": status, "detail": reason.detail, "exit": reason.to_dict()}


def _close_quietly(fd: int) -> None:
    import os

    with contextlib.suppress(OSError):
        os.close(fd)


_ = (ExitKind, FAILED)  # re-exported names used by the admin mixin's type hints
