"""sd_notify without a dependency: one datagram to ``$NOTIFY_SOCKET`` per state change.

systemd (Type=notify / notify-reload) reads READY=1, STATUS=..., RELOADING=1 (+ MONOTONIC_USEC),
STOPPING=1 and WATCHDOG=1. Outside systemd ``NOTIFY_SOCKET`` is unset and every call is a no-op.
"""

from __future__ import annotations

import _socket
import contextlib
import os
import time
from collections.abc import Mapping


class Notifier:
    """Sends sd_notify datagrams; a silent no-op when not run under a service manager."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address: str | bytes | None = None
        path = env.get("NOTIFY_SOCKET", "")
        if path.startswith("@"):
            self._address = b"\0" + path[1:].encode()  # abstract namespace
        elif path.startswith("/"):
            self._address = path
        self._sock: _socket.socket | None = None
        if self._address is not None:
            self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
        self.watchdog_interval_s = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> None:
        """Send ``fields`` (e.g. ``"READY=1"``, ``"STATUS=up"``) as one newline-separated datagram."""
        if self._sock is None or self._address is None:
            return
        # The service manager going away must never take the tree down with it.
        with contextlib.suppress(OSError):
            self._sock.sendto("\n".join(fields).encode(), self._address)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def reloading(self) -> None:
        # notify-reload wants the monotonic timestamp with RELOADING=1.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading configuration")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC in seconds (systemd's advice), if the watchdog is meant for this process."""
    usec = env.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2 / 1_000_000
