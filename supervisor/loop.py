"""A small, thread-free event loop over :mod:`selectors`: fd readers, timers, deferred calls, signals.

A supervisor forks its children, so it must not have threads (a fork copies only the forking thread, and
any lock another thread held stays locked forever in the child); asyncio is avoided for the same reason
and because its loop must not be reused after fork. Signals are turned into loop callbacks with
``signal.set_wakeup_fd`` and a pipe: the C-level handler only writes the signal number, the callback
runs later in the loop, never in signal context.

``run_until`` is re-entrant: a callback may run the loop again until its own condition holds (the
supervisor does this to start a child synchronously); readers and timers keep being served meanwhile.
:class:`Serial` keeps such loop-running operations from interleaving: one runs at a time, and work that
arrives meanwhile waits in a queue, as OTP's supervisor handles one message at a time.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import selectors
import signal
import time
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import Any

import structlog

log = structlog.get_logger("openfang.supervisor.loop")
Callback = Callable[[], Any]


class TimerHandle:
    """A scheduled call; :meth:`cancel` makes it a no-op."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """The supervisor's event loop. ``clock`` is injectable (monotonic seconds) for deterministic tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._selector = selectors.DefaultSelector()
        self._readers: dict[int, Callable[[], Any]] = {}
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._ready: deque[Callback] = deque()
        self._idle: list[Callback] = []  # run once, when the loop would next wait (call_when_idle)
        self._signals: dict[int, Callback] = {}
        self._old_handlers: dict[int, Any] = {}
        self._wakeup_r: int | None = None
        self._wakeup_w: int | None = None
        self._old_wakeup_fd = -1
        self._stopping = False
        self.closed = False

    # -- scheduling ----------

    def time(self) -> float:
        return self._clock()

    def call_soon(self, callback: Callback) -> TimerHandle:
        """Run ``callback`` on the next iteration (after the current callback returns)."""
        handle = TimerHandle(self.time(), callback)
        self._ready.append(lambda: None if handle.cancelled else callback())
        return handle

    def call_when_idle(self, callback: Callback) -> None:
        """Run ``callback`` once, the first time the loop would wait: nothing queued, no timer due, no fd
        readable. A supervisor that waits for a child's ready is idle then: work that need not come before
        the fork (the daemon's own checks before READY) overlaps the child's start there."""
        self._idle.append(callback)

    def call_later(self, delay_s: float, callback: Callback) -> TimerHandle:
        """Run ``callback`` after ``delay_s`` seconds (by :meth:`time`)."""
        handle = TimerHandle(self.time() + max(0.0, delay_s), callback)
        heapq.heappush(self._timers, (handle.when, next(self._seq), handle))
        return handle

    def add_reader(self, fd: int, callback: Callback) -> None:
        """Call ``callback`` whenever ``fd`` is readable (one reader per fd; a new one replaces the old)."""
        if fd in self._readers:
            self._selector.modify(fd, selectors.EVENT_READ)
        else:
            self._selector.register(fd, selectors.EVENT_READ)
        self._readers[fd] = callback

    def remove_reader(self, fd: int) -> bool:
        if fd not in self._readers:
            return False
        del self._readers[fd]
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)
        return True

    def add_signal_handler(self, signum: int, callback: Callback) -> None:
        """Run ``callback`` in the loop when ``signum`` arrives (main thread only, like ``signal.signal``)."""
        if self._wakeup_r is None:
            self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._old_wakeup_fd = signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
            self.add_reader(self._wakeup_r, self._on_wakeup)
        if signum not in self._old_handlers:
            self._old_handlers[signum] = signal.getsignal(signum)
        self._signals[signum] = callback
        # The Python-level handler does nothing: the wakeup fd carries the signal number to the loop.
        signal.signal(signum, _noop_handler)

    def remove_signal_handler(self, signum: int) -> bool:
        if signum not in self._signals:
            return False
        del self._signals[signum]
        old = self._old_handlers.pop(signum, signal.SIG_DFL)
        signal.signal(signum, old if old is not None else signal.SIG_DFL)
        return True

    def fds(self) -> list[int]:
        """Every fd the loop owns or watches (a forked child closes them)."""
        fds = list(self._readers)
        fds.append(self._selector.fileno())
        if self._wakeup_w is not None:
            fds.append(self._wakeup_w)
        return fds

    # -- running ----------

    def run_until(self, pred: Callable[[], bool], timeout: float | None = None) -> bool:
        """Run the loop until ``pred()`` is true (True) or ``timeout`` seconds pass (False)."""
        deadline = None if timeout is None else self.time() + timeout
        while not pred():
            if deadline is not None and self.time() >= deadline:
                return False
            self._run_once(None if deadline is None else max(0.0, deadline - self.time()))
        return True

    def run_forever(self) -> None:
        """Run until :meth:`stop` is called."""
        self._stopping = False
        self.run_until(lambda: self._stopping)
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True

    def close(self) -> None:
        """Restore signal handlers and the wakeup fd, close the loop's own fds."""
        if self.closed:
            return
        self.closed = True
        for signum in list(self._signals):
            self.remove_signal_handler(signum)
        if self._wakeup_r is not None and self._wakeup_w is not None:
            # ValueError: not the main thread, so nothing was set from here.
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(self._old_wakeup_fd)
            self.remove_reader(self._wakeup_r)
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
            self._wakeup_r = self._wakeup_w = None
        self._selector.close()

    def _run_once(self, max_wait: float | None) -> None:
        timeout = max_wait
        if self._ready:
            timeout = 0.0
        elif self._timers:
            until_timer = max(0.0, self._timers[0][0] - self.time())
            timeout = until_timer if timeout is None else min(timeout, until_timer)
        idle = bool(self._idle) and timeout != 0.0
        events = self._selector.select(0.0 if idle else timeout)  # epoll: an empty set waits out the timeout
        if idle and not events:
            waiting, self._idle = self._idle, []
            for idle_callback in waiting:
                self._safely(idle_callback)
        for key, _ in events:
            callback = self._readers.get(key.fd)  # a previous callback may have removed it
            if callback is not None:
                self._safely(callback)
        now = self.time()
        while self._timers and self._timers[0][0] <= now:
            _, _, handle = heapq.heappop(self._timers)
            if not handle.cancelled:
                self._safely(handle.callback)
        for _ in range(len(self._ready)):  # only those queued so far: new ones run next iteration
            self._safely(self._ready.popleft())

    def _on_wakeup(self) -> None:
        assert self._wakeup_r is not None
        try:
            data = os.read(self._wakeup_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            callback = self._signals.get(signum)
            if callback is not None:
                self._safely(callback)

    def _safely(self, callback: Callback) -> None:
        # A failing callback must not take the supervisor down: log it as a crash report and go on.
        try:
            callback()
        except (SystemExit, KeyboardInterrupt):
            raise
        except Exception:
            log.exception("loop_callback_failed", callback=getattr(callback, "__qualname__", repr(callback)))


class Serial:
    """One loop-running operation at a time; work that arrives during one runs right after it.

    ``with serial:`` marks an operation that runs the loop (a start, a group restart, a reload); it nests.
    :meth:`run` runs work now if no operation is in progress, else queues it. Invariant: the queue is only
    drained when no operation is in progress, in arrival order, each item as an operation of its own.
    """

    def __init__(self, loop: Loop) -> None:
        self._loop = loop
        self._depth = 0
        self._queue: deque[Callback] = deque()

    @property
    def busy(self) -> bool:
        return self._depth > 0

    def __enter__(self) -> None:
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if not self._depth and self._queue:
            self._loop.call_soon(self._drain)

    def run(self, work: Callback) -> None:
        """Run ``work`` now, or after the operation in progress finishes."""
        if self._depth:
            self._queue.append(work)
        else:
            with self:
                work()

    def clear(self) -> None:
        """Drop the queued work (a supervisor that stopped has nobody left to do it for)."""
        self._queue.clear()

    def _drain(self) -> None:
        while self._queue and not self._depth:
            work = self._queue.popleft()
            with self:
                work()


def _noop_handler(signum: int, frame: FrameType | None) -> None:
    return None
