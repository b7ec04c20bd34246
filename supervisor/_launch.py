"""Starting and stopping a supervisor's children, one child at a time (or forked together, then judged one
at a time: :meth:`Launcher.fork` and :meth:`Launcher.settle`).

:meth:`Launcher.start` forks a child and runs the loop until the child is ready (True), said ``ignore``
(False: it gets :data:`IGNORE_GRACE_S` to return, then it is killed), or failed: it exited first, or said
nothing within its ``start_timeout_ms`` (SupervisorError naming the child, after a ``child.start_failed``
event). A nested supervisor that is still starting its own children reports each step, and every report
restarts its timeout (OTP starts supervisors with an infinite timeout; this one does not hang forever on a
stuck one). :meth:`Launcher.stop_in_order` stops children one after another, each reaped before the next.

The launcher only waits: the record's state moves as the supervisor handles its watcher's reports
(``ready`` makes a starting child running, an exit makes it failed); the launcher sees the result.

A supervisor child with ``inline = true`` is not forked: :meth:`Launcher.fork` makes an
:class:`~openfang.supervisor.inline.InlineSupervisor` in this process (through the ``make_inline`` factory
its supervisor was given by :func:`~openfang.supervisor.runtime.supervisor_for`), whose start runs from the
loop. Its
start runs the loop itself, above the frame of a :meth:`Launcher.settle` waiting for it, so that wait
cannot time out on its own: a watchdog timer kills the inline supervisor when it has made no progress for
``start_timeout_ms`` (the same rule as for a nested supervisor process), and the start fails with the
same error.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from openfang.protocol.errors import OpenFangError, SupervisorError
from openfang.supervisor import _proc
from openfang.supervisor._events import Events
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
    MakeInline,
)
from openfang.supervisor._watch import ChildWatcher
from openfang.supervisor.loop import Loop
from openfang.supervisor.spec import spec_to_dict

IGNORE_GRACE_S = 5.0  # a child that said "ignore" gets this long to return before it is killed


class Launcher:
    """Starts and stops one supervisor's children (see the module docstring)."""

    def __init__(
        self,
        loop: Loop,
        watcher: ChildWatcher,
        events: Events,
        close_fds: Callable[[], list[int]],
        make_inline: MakeInline | None = None,
    ) -> None:
        self.loop = loop
        self._watcher = watcher
        self._events = events
        self._close_fds = close_fds  # every fd of ours a new child must not keep
        self._make_inline_child = make_inline  # None: this supervisor cannot host inline children

    def start(self, rec: ChildRecord) -> bool:
        """Fork ``rec`` and wait for its ready (True) or ignore (False); SupervisorError if it fails."""
        self.fork(rec)
        return self.settle(rec)

    def fork(self, rec: ChildRecord) -> None:
        """Fork ``rec`` without waiting (it is starting); SupervisorError if the fork fails.

        A parallel start forks every child first, then :meth:`settle` waits for each in order: the starts
        overlap, and each is still judged by the same rules as a start one at a time.
        """
        spec = rec.spec
        if spec.inline and spec.supervisor is not None:
            self._make_inline(rec)
            return
        args = dict(spec.args)
        if rec.is_supervisor and spec.supervisor is not None:
            args["spec"] = spec_to_dict(spec.supervisor)
        try:
            spawned = _proc.spawn(
                child_id=spec.id,
                path=rec.path,
                start=spec.start,
                args=args,
                cpu=spec.cpu,
                close_fds=self._close_fds(),
                preimport=spec.preimport,
            )
        except OSError as exc:
            self._events.child("child.start_failed", rec, reason=f"fork failed: {exc}")
            raise SupervisorError(f"cannot fork child {spec.id!r}: {exc}") from None
        rec.state, rec.exit, rec.info = STARTING, None, {}
        self._watcher.watch(rec, spawned)

    def _make_inline(self, rec: ChildRecord) -> None:
        spec = rec.spec
        make = self._make_inline_child
        if make is None:
            reason = "this supervisor was not made by supervisor_for, which gives it inline supervisors"
            self._events.child("child.start_failed", rec, reason=reason)
            raise SupervisorError(f"cannot start inline supervisor {spec.id!r}: {reason}")
        try:
            child = make(
                spec,
                path=rec.path,
                loop=self.loop,
                to_parent=lambda msg: self._watcher.said_inline(rec, child, msg),
                on_exit=lambda reason: self._watcher.exited_inline(rec, child, reason),
            )
        except OpenFangError as exc:
            self._events.child("child.start_failed", rec, reason=f"cannot make inline supervisor: {exc}")
            raise SupervisorError(f"cannot start inline supervisor {spec.id!r}: {exc}") from None
        rec.state, rec.exit, rec.info = STARTING, None, {}
        self._watcher.watch_inline(rec, child)
        limit = spec.start_timeout_ms / 1000

        def watchdog() -> None:
            # Its start runs above any settle() waiting for it: the timeout is enforced from here.
            if rec.inline is not child or rec.state != STARTING:
                return
            silent = self.loop.time() - rec.last_hb
            if silent < limit:
                self.loop.call_later(limit - silent, watchdog)
                return
            child.timed_out = True
            child.kill()

        self.loop.call_later(limit, watchdog)
        child.start()

    def settle(self, rec: ChildRecord) -> bool:
        """Wait for a forked ``rec``'s ready (True) or ignore (False); SupervisorError if it failed."""
        spec = rec.spec
        inline = rec.inline
        started = self._wait_started(rec)
        if inline is not None and inline.timed_out:
            started = False
        if not started:
            self._watcher.kill(rec)
            reason = f"no ready within start_timeout_ms={spec.start_timeout_ms}"
            self._events.child("child.start_failed", rec, reason=reason)
            rec.state = STOPPED
            raise SupervisorError(f"child {spec.id!r}: {reason}")
        if rec.state == FAILED:
            reason = str(rec.exit) if rec.exit else "exited"
            self._events.child("child.start_failed", rec, reason=f"exited before ready: {reason}")
            rec.state = STOPPED
            raise SupervisorError(f"child {spec.id!r} exited before ready: {reason}")
        if rec.state == IGNORING:
            if not self.loop.run_until(lambda: rec.pid is None, timeout=IGNORE_GRACE_S):
                self._watcher.kill(rec)
            rec.state = STOPPED
            self._events.child("child.ignored", rec)
            return False
        if rec.state != RUNNING:  # stopped under our feet (a shutdown during the start)
            raise SupervisorError(f"child {spec.id!r}: start interrupted ({rec.state})")
        rec.started_at = time.time()
        rec.ever_started = True
        self._watcher.arm_heartbeat(rec)
        self._events.child("child.started", rec, info=rec.info)
        return True

    def _wait_started(self, rec: ChildRecord) -> bool:
        """Wait for ready/ignore/exit; False on timeout (see the module docstring for nested ones)."""
        limit = timeout = rec.spec.start_timeout_ms / 1000
        while True:
            if self.loop.run_until(lambda: rec.state != STARTING, timeout=timeout):
                return True
            silent = self.loop.time() - rec.last_hb
            if not rec.is_supervisor or silent >= limit:
                return False
            timeout = limit - silent

    def stop_in_order(self, recs: list[ChildRecord]) -> None:
        """Stop ``recs`` one after the other per their shutdown policies, each reaped before the next;
        one already dead and waiting for a restart is marked stopped (it will not be restarted)."""
        for rec in recs:
            if rec.pid is None:
                if rec.state in (EXITED, RESTARTING):
                    rec.state = STOPPED
                continue
            rec.state = STOPPING
            self._watcher.stop(rec)
