"""How a supervisor watches and stops its children: uplink messages, pidfd exits, heartbeats, shutdown
policies. Mixed into :class:`openfang.supervisor.runtime.Supervisor`; the decisions after an exit stay there.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from openfang.protocol.errors import OpenFangError
from openfang.supervisor import _proc
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
)
from openfang.supervisor.child import MAX_UPLINK_PACKET, pack, unpack
from openfang.supervisor.restart import SHUTDOWN, ExitReason, abnormal

if TYPE_CHECKING:
    from openfang.supervisor.loop import Loop
    from structlog.typing import FilteringBoundLogger


class WatchMixin:
    """Watching children (uplinks, pidfds, heartbeats) and stopping them (shutdown policies)."""

    # What this mixin uses of its host, :class:`~openfang.supervisor.runtime.Supervisor`, declared so
    # that it type-checks on its own (annotations only: nothing is created at run time).
    loop: Loop
    on_event: Callable[[dict[str, Any]], None] | None
    _children: dict[str, ChildRecord]
    _log: FilteringBoundLogger

    if TYPE_CHECKING:  # defined by Supervisor and AdminMixin; a definition here would shadow theirs

        def _changed(self) -> None: ...
        def _emit(self, kind: str, rec: ChildRecord, **fields: Any) -> None: ...
        def _serialize(self, work: Callable[[], None]) -> None: ...
        def _after_exit(self, rec: ChildRecord, reason: ExitReason) -> None: ...
        def _child_request(self, rec: ChildRecord, msg: dict[str, Any]) -> None: ...

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
            self.loop.run_until(functools.partial(_reaped, rec))

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


def _status(reason: ExitReason) -> dict[str, Any]:
    """Event fields of an exit: ``status`` as the wire has it (exit code, or minus the signal number),
    ``detail`` (hung, escalated, the signal's name) and the whole reason as ``exit``."""
    status = -reason.signal if reason.signal is not None else (reason.code or 0)
    return {"status": status, "detail": reason.detail, "exit": reason.to_dict()}


def _reaped(rec: ChildRecord) -> bool:
    return rec.pid is None


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
