"""Layer 14's baseline taken by a forked helper while the root starts its tree (cold start, issue 15).

The daemon hashes its own package files (~190 files, ~3 MB) at start: the integrity baseline its later
checks compare against. Hashed in the root, that is ~10 ms on the cold start's path, in series with the
root's other work (the tree's start is CPU in series on one core, the root's, while the other core is idle
but for the gateway's start). :meth:`BaselineHelper.start` forks a helper first thing instead: it takes the
baseline on the other core, sends it back over a socket pair and waits; the root reads the answer as it comes
while its tree starts (:meth:`BaselineHelper.poll`), makes the monitor (:meth:`BaselineHelper.monitor`) once
it waits for a worker's ready or, at the latest, once the tree has started, then tells the helper to exit
(:meth:`BaselineHelper.release`) and reaps it: there and then when the root took the answer in its loop,
else after READY (:meth:`BaselineHelper.close`). The helper runs at a lower
priority (``nice`` +10): the gateway, whose ready the root waits for, starts on that core at the same time.
The baseline is of the files as they are when the helper runs, at the same point of the start as before:
nothing is checked later than it was.

Anything wrong with the helper (the fork fails, it dies, its answer is not a baseline) makes the root take
the baseline itself, as before: the helper can only save time, never change what is watched or how. The
helper is forked before the daemon installs its signal handlers and resets the ones it may still see, so a
signal never reaches the root's loop through it; it is reaped by the root, never by its orphan reaper: it
waits for the root's word to exit (not for the end of the stream: the children forked meanwhile hold a copy
of the root's end, an idle descriptor like the others they inherit).
"""

from __future__ import annotations

import _socket
import contextlib
import gc
import os
import signal
from typing import Any

import msgpack

from openfang.security.audit import AuditLog
from openfang.security.config import SecurityConfig
from openfang.security.integrity import Baseline, IntegrityMonitor, baseline_monitor

READ_TIMEOUT_S = 120.0  # hashing in the root would take as long: past this, the root does it itself
HELPER_NICE = 10  # the helper's CPU weight ~1/10 of the start's processes' (see _helper)


class BaselineHelper:
    """A forked helper taking layer 14's baseline; :meth:`monitor` makes the monitor from its answer."""

    def __init__(self, config: SecurityConfig, pid: int | None, sock: _socket.socket | None) -> None:
        self.config = config
        self.pid = pid
        self.sock = sock
        self._chunks: list[bytes] = []  # the answer read so far (poll, _receive)
        self._ended = False  # the helper's answer is all in (its end of the stream seen), or unreadable

    @classmethod
    def start(cls, config: SecurityConfig) -> BaselineHelper | None:
        """Fork the helper (None when layer 14 is off); a failed fork leaves the work to :meth:`monitor`."""
        if not config.integrity.enabled:
            return None
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        # As before any fork of the supervisor's: the helper's collector (on, openfang/_coldstart.py) must
        # not walk the heap it shares with the root (its GC headers' pages would be copied, ~10 ms).
        gc.freeze()
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return cls(config, None, None)
        if pid == 0:  # pragma: no cover - runs in the helper, which never returns from here
            code = 1
            try:
                ours.close()
                _helper(config, theirs)
                code = 0
            finally:
                os._exit(code)
        theirs.close()
        return cls(config, pid, ours)

    def monitor(self, audit: AuditLog | None) -> IntegrityMonitor | None:
        """The integrity monitor from the helper's baseline, or from one taken here if the helper gave
        none. The helper is told to exit only by :meth:`close`, which reaps it: the root may take the monitor
        in its loop while its children start, where an exited helper would be reaped as an orphan. Raises
        what taking the baseline here raises (a configured file that cannot be read)."""
        baseline = self._receive()
        if baseline is None:
            return baseline_monitor(self.config.integrity, audit)
        return IntegrityMonitor.from_baseline(baseline, audit=audit)

    def release(self) -> None:
        """Tell the helper to exit now (once its answer is taken: it has nothing left to do); :meth:`close`
        still reaps it. Told before READY, it exits while the root finishes its start, not beside the first
        request's work after it."""
        self._release()

    def close(self) -> None:
        """Tell the helper to exit (if it still waits) and reap it."""
        self._release()
        if self.pid is not None:
            pid, self.pid = self.pid, None
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

    def _release(self) -> None:
        if self.sock is not None:
            # A byte, not the end of the stream: every child the root forked since holds a copy of this end,
            # so the helper would see no end while they live.
            with contextlib.suppress(OSError):
                self.sock.send(b"\0")
            self.sock.close()
            self.sock = None

    def poll(self) -> bool:
        """Read what the helper has sent so far without waiting; True once its whole answer is in (or it
        cannot be read: :meth:`monitor` then takes the baseline here). The root polls while its children
        start, so :meth:`monitor` finds the answer read when the helper was done by then."""
        if self.sock is None or self._ended:
            return True
        try:
            while chunk := self.sock.recv(1 << 16, _socket.MSG_DONTWAIT):
                self._chunks.append(chunk)
        except BlockingIOError:
            return False
        except OSError:
            self._chunks = []
        self._ended = True
        return True

    def hurry(self) -> None:
        """The root waits for the helper now (its tree has started: the low priority has nothing left to
        yield to): the helper gets the root's priority back, when this process may raise it (a daemon with
        CAP_SYS_NICE, as root; otherwise it stays at +10 and this changes nothing)."""
        if self.pid is not None:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, self.pid, os.getpriority(os.PRIO_PROCESS, 0))

    @property
    def fileno(self) -> int | None:
        """The root's end of the pair (readable when the helper sends), None once released."""
        return None if self.sock is None else self.sock.fileno()

    def _receive(self) -> Baseline | None:
        if self.sock is None:
            return None
        chunks = self._chunks
        try:
            if not self._ended:
                self.sock.settimeout(READ_TIMEOUT_S)
                while chunk := self.sock.recv(1 << 16):
                    chunks.append(chunk)
                self._ended = True
            if not chunks:
                return None
            return _parse(msgpack.unpackb(b"".join(chunks), raw=False))
        except (OSError, ValueError, msgpack.UnpackException):
            return None


def _parse(raw: Any) -> Baseline | None:
    """The baseline in the helper's answer, checked entry by entry; None unless every entry is sound."""
    if not isinstance(raw, dict):
        return None
    out: Baseline = {}
    for path, entry in raw.items():
        if not (isinstance(path, str) and isinstance(entry, list) and len(entry) == 2):
            return None
        digest, size = entry
        if not (isinstance(digest, str) and len(digest) == 64 and isinstance(size, int)):
            return None
        out[path] = (digest, size)
    return out


def _helper(config: SecurityConfig, sock: _socket.socket) -> None:  # pragma: no cover - in the helper
    # Signals sent to the whole group (a terminal's ^C) end the helper; none reaches the root's loop.
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    # Behind the gateway, which starts on the same core meanwhile and whose ready the root waits for
    # before forking the workers: the helper has until the tree has started, ~100 ms, for ~10-15 ms of
    # hashing (cold6: with others' load on the machine, gateway fork -> workers' fork 106 -> 86 ms median).
    with contextlib.suppress(OSError):
        os.nice(HELPER_NICE)
    # security.integrity's walk: the helper does not import the gateway's guard (~2.5 ms of its CPU).
    monitor = baseline_monitor(config.integrity, None)
    sock.sendall(msgpack.packb(monitor.baseline(), use_bin_type=True))
    sock.shutdown(_socket.SHUT_WR)
    sock.recv(1)  # until the root says so (or is gone): it reaps the helper then, not its orphan reaper


__all__ = ["BaselineHelper"]
