"""The child watcher: the processes behind a supervisor's children, seen through their pidfds and uplinks.

A :class:`ChildWatcher` registers a started child's pidfd and uplink with the loop, keeps its heartbeat
timer, signals it per its shutdown policy, and reaps it. It decides nothing: what it sees arrives at the
supervisor as a report, a message like OTP's ``'EXIT'`` signal, never an exception:

- :class:`Exited`: the process is reaped and forgotten (fds closed, timers cancelled, unanswered requests
  failed); ``reason`` is how it ended (``detail="hung"`` when the watcher killed it for silence).
- :class:`Said`: a message from the child's uplink (``ready``, ``ignore``, ``event``, ``subtree``, ``req``,
  ``rep``). Heartbeats are the watcher's own business and are not reported.
- :class:`Hung`: the child fell silent past its ``heartbeat_ms``; it is SIGKILLed right after the report,
  and its :class:`Exited` follows.

The watcher writes only the process fields of a :class:`ChildRecord` (``pid``, ``pidfd``, ``uplink``,
``inline``, timers, ``last_hb``, ``hung``, ``pending``); the child's state is the supervisor's.

An inline supervisor (:mod:`openfang.supervisor.inline`) has no pidfd and no uplink: it hands its messages
and its exit to :meth:`ChildWatcher.said_inline` and :meth:`ChildWatcher.exited_inline`, which report them
exactly as an uplink packet and a reaped exit are reported; messages to it, a stop and a kill are calls on
it (:class:`~openfang.supervisor._record.InlineChild`) instead of a packet and signals.
"""

from __future__ import annotations

import _socket
import contextlib
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from structlog.typing import FilteringBoundLogger

from openfang.protocol.errors import OpenFangError
from openfang.supervisor import _proc
from openfang.supervisor._record import RUNNING, ChildRecord, InlineChild
from openfang.supervisor.child import MAX_UPLINK_PACKET, pack, unpack
from openfang.supervisor.loop import Loop
from openfang.supervisor.restart import ExitReason, abnormal


@dataclass(frozen=True, slots=True)
class Exited:
    """A child ended, and why (pid: its process, reaped; None for an inline child without one)."""

    rec: ChildRecord
    pid: int | None
    reason: ExitReason


@dataclass(frozen=True, slots=True)
class Said:
    """A message a child sent up (heartbeats are not reported)."""

    rec: ChildRecord
    msg: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Hung:
    """A child silent for longer than its heartbeat allows."""

    rec: ChildRecord
    silent_ms: int
    heartbeat_ms: int


Report = Exited | Said | Hung


class ChildWatcher:
    """Watches and stops the processes of one supervisor's children; reports to ``report``."""

    def __init__(self, loop: Loop, log: FilteringBoundLogger, report: Callable[[Report], None]) -> None:
        self.loop = loop
        self._log = log
        self._report = report
        self._was_subreaper = True

    # -- watching ----------

    def watch(self, rec: ChildRecord, spawned: _proc.Spawned) -> None:
        """Take over a freshly forked child: its exit and its uplink messages are reported from now on."""
        rec.pid, rec.pidfd, rec.uplink = spawned.pid, spawned.pidfd, spawned.uplink
        rec.hung = False
        rec.last_hb = self.loop.time()
        pidfd, uplink = spawned.pidfd, spawned.uplink
        self.loop.add_reader(pidfd, lambda: self._on_pidfd(rec, pidfd))
        self.loop.add_reader(uplink.fileno(), lambda: self._on_uplink(rec, uplink))

    def watch_inline(self, rec: ChildRecord, child: InlineChild) -> None:
        """Take over an inline supervisor just made: it runs in this process (its pid is ours)."""
        rec.pid, rec.pidfd, rec.uplink, rec.inline = os.getpid(), None, None, child
        rec.hung = False
        rec.last_hb = self.loop.time()

    def said_inline(self, rec: ChildRecord, child: InlineChild, msg: dict[str, Any]) -> None:
        """A message from an inline supervisor (what :meth:`_on_uplink` does with a packet)."""
        if rec.inline is not child:
            return  # a message of an earlier incarnation
        if msg["t"] in ("ready", "hb", "subtree"):
            rec.last_hb = self.loop.time()
        if msg["t"] != "hb":
            self._report(Said(rec, msg))

    def exited_inline(self, rec: ChildRecord, child: InlineChild, reason: ExitReason) -> None:
        """An inline supervisor has ended (what :meth:`_on_pidfd` does with a reaped exit)."""
        if rec.inline is not child:
            return
        pid = rec.pid
        self._forget(rec)
        self._report(Exited(rec, pid, reason))

    def send(self, rec: ChildRecord, msg: dict[str, Any]) -> bool:
        """Send one message down ``rec``'s uplink; False if it has no process or does not read."""
        if rec.inline is not None:
            child = rec.inline
            # Delivered from the loop, as a packet is read: never inside the sender's own call.
            self.loop.call_soon(lambda: child.deliver(msg))
            return True
        if rec.uplink is None:
            return False
        try:
            rec.uplink.send(pack(msg), _socket.MSG_DONTWAIT)
            return True
        except OSError:
            # A child that does not read its uplink must not block the supervisor: the message is dropped.
            return False

    def _on_uplink(self, rec: ChildRecord, uplink: _socket.socket) -> None:
        while True:
            try:
                packet = uplink.recv(MAX_UPLINK_PACKET, _socket.MSG_DONTWAIT)
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
            if rec.uplink is not uplink:
                continue  # a message of an earlier incarnation
            if msg["t"] in ("ready", "hb", "subtree"):
                rec.last_hb = self.loop.time()  # any sign of progress counts as a heartbeat
            if msg["t"] != "hb":
                self._report(Said(rec, msg))

    def _on_pidfd(self, rec: ChildRecord, pidfd: int) -> None:
        if rec.pidfd != pidfd:
            return
        reason = _proc.reap(pidfd)
        if reason is None:
            return
        if rec.uplink is not None:
            self._on_uplink(rec, rec.uplink)  # the last words (events) sent before exiting
        pid = rec.pid
        self._forget(rec)
        if rec.hung:
            reason = abnormal(code=reason.code, signal=reason.signal, detail="hung")
        self._report(Exited(rec, pid, reason))

    def _forget(self, rec: ChildRecord) -> None:
        for timer in (rec.hb_timer, rec.kill_timer):
            if timer is not None:
                timer.cancel()
        rec.hb_timer = rec.kill_timer = None
        if rec.pidfd is not None:
            self.loop.remove_reader(rec.pidfd)
            with contextlib.suppress(OSError):
                os.close(rec.pidfd)
        if rec.uplink is not None:
            self.loop.remove_reader(rec.uplink.fileno())
            rec.uplink.close()
        rec.pid = rec.pidfd = None
        rec.uplink = rec.inline = None
        pending, rec.pending = rec.pending, {}
        for reply in pending.values():
            reply(False, {"code": "supervisor_error", "message": f"child {rec.id!r} exited before answering"})

    # -- heartbeats ----------

    def arm_heartbeat(self, rec: ChildRecord) -> None:
        """Start checking ``rec``'s heartbeats (a no-op for a child whose spec sets no ``heartbeat_ms``)."""
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
            self.arm_heartbeat(rec)
            return
        rec.hung = True
        self._report(Hung(rec, round(silent * 1000), hb))
        _proc.send_signal(pidfd, signal.SIGKILL)  # the exit arrives through the pidfd as an abnormal one

    # -- stopping ----------

    def kill(self, rec: ChildRecord) -> None:
        """SIGKILL ``rec`` and run the loop until its exit has been reported."""
        if rec.inline is not None:
            rec.inline.kill()
        elif rec.pidfd is not None:
            _proc.send_signal(rec.pidfd, signal.SIGKILL)
        self.loop.run_until(lambda: rec.pid is None)

    def stop(self, rec: ChildRecord) -> None:
        """Stop ``rec`` per its shutdown policy (SIGKILL, or SIGTERM + a SIGKILL timer) and run the loop
        until its exit has been reported."""
        if rec.inline is not None:
            self._stop_inline(rec, rec.inline)
            return
        if rec.pidfd is None:
            return
        policy = rec.spec.shutdown
        if policy == "brutal_kill":
            _proc.send_signal(rec.pidfd, signal.SIGKILL)
        else:
            _proc.send_signal(rec.pidfd, signal.SIGTERM)
            if isinstance(policy, int):
                pidfd = rec.pidfd
                rec.kill_timer = self.loop.call_later(policy / 1000, lambda: self._kill_late(rec, pidfd))
        self.loop.run_until(lambda: rec.pid is None)

    def _stop_inline(self, rec: ChildRecord, child: InlineChild) -> None:
        # The same policy as a process's: brutal_kill kills its children at once; a timeout kills those
        # still running when it expires (the timer fires inside the stop, which runs the loop).
        policy = rec.spec.shutdown
        if policy == "brutal_kill":
            child.kill()
        else:
            if isinstance(policy, int):

                def late() -> None:
                    if rec.inline is child:
                        self._log.warning("shutdown_timeout_kill", child=rec.id, shutdown_ms=policy)
                        child.kill()

                rec.kill_timer = self.loop.call_later(policy / 1000, late)
            child.terminate()
        self.loop.run_until(lambda: rec.pid is None)

    def _kill_late(self, rec: ChildRecord, pidfd: int) -> None:
        if rec.pidfd == pidfd:
            self._log.warning("shutdown_timeout_kill", child=rec.id, shutdown_ms=rec.spec.shutdown)
            _proc.send_signal(pidfd, signal.SIGKILL)

    def stop_together(self, recs: Iterable[ChildRecord]) -> None:
        """Stop ``recs`` all at once with one shared timer (the first one's policy: they share a template),
        and run the loop until every exit has been reported."""
        recs = list(recs)
        for rec in recs:
            if rec.inline is not None:  # runs in this process: stopped in turn, by its own policy
                self._stop_inline(rec, rec.inline)
        alive = [r for r in recs if r.pidfd is not None]
        for rec in alive:
            assert rec.pidfd is not None
            brutal = rec.spec.shutdown == "brutal_kill"
            _proc.send_signal(rec.pidfd, signal.SIGKILL if brutal else signal.SIGTERM)
        policy = alive[0].spec.shutdown if alive else "infinity"
        timer = None
        if isinstance(policy, int):

            def kill_all() -> None:
                for rec in alive:
                    if rec.pidfd is not None:
                        _proc.send_signal(rec.pidfd, signal.SIGKILL)

            timer = self.loop.call_later(policy / 1000, kill_all)
        self.loop.run_until(lambda: all(r.pid is None for r in alive))
        if timer is not None:
            timer.cancel()

    # -- orphans ----------

    def adopt_orphans(self, ours: Callable[[], set[int]]) -> None:
        """Make this process a subreaper: orphaned descendants are re-parented here and reaped on SIGCHLD
        (all but ``ours()``, the children's own pids, which their pidfds report)."""
        self._was_subreaper = _proc.set_subreaper(True)
        self.loop.add_signal_handler(signal.SIGCHLD, lambda: self._reap_orphans(ours()))

    def release_orphans(self) -> None:
        """Reap the last orphans and put the subreaper flag back as :meth:`adopt_orphans` found it."""
        self.loop.remove_signal_handler(signal.SIGCHLD)
        _proc.reap_orphans(set())
        if not self._was_subreaper:
            _proc.set_subreaper(False)  # a test process, an embedding application: leave it as it was

    def _reap_orphans(self, ours: set[int]) -> None:
        for pid in _proc.reap_orphans(ours):
            self._log.info("orphan_reaped", orphan_pid=pid)
