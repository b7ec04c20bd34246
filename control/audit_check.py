"""``audit.verify`` for the gateway: the hash chain of the daemon's own audit log, checked off the loop.

A check reads every record (10-20 µs each, so seconds for a large log), so it runs on a thread of its
own while the gateway keeps serving; requests that arrive during a run wait for that run instead of
starting another. The thread wakes the gateway's poll through a pipe (:meth:`AuditCheck.fileno`); the
gateway then takes the result with :meth:`AuditCheck.finished` and answers the waiters. The check opens the
log read-only and only reads: the chain keeps growing beside it, and a record appended after the read began
is simply not in this result (``records`` says how many were checked).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from openfang.security.audit import VerifyResult, chain_key, verify
from openfang.security.config import SecurityConfig
from openfang.security.report import UNKEYED_WARNING

MAX_WAITERS = 64  # requests that may wait for one run; more get `busy`


@dataclass(slots=True)
class _Run:
    """One verification under way: who waits for it, when it started, its result once done."""

    waiters: list[Any] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    result: dict[str, Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)


class AuditCheck:
    """One verification at a time of the log ``config.audit`` names, with everyone who asked for it."""

    def __init__(self, config: SecurityConfig, *, check: Callable[..., VerifyResult] = verify) -> None:
        self._config = config
        self._check = check
        self._run: _Run | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        """Readable when a check has finished (poll it beside the sockets)."""
        return self._wake_r

    def close(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)

    @property
    def available(self) -> bool:
        """False when this daemon keeps no audit file (started without a data dir)."""
        return "{data_dir}" not in self._config.audit.path

    def request(self, waiter: Any) -> bool:
        """Add ``waiter`` to the running check, starting one if none runs; False when too many wait."""
        if self._run is None:
            self._run = _Run()
            threading.Thread(target=self._work, args=(self._run,), name="audit-verify", daemon=True).start()
        if len(self._run.waiters) >= MAX_WAITERS:
            return False
        self._run.waiters.append(waiter)
        return True

    def finished(self) -> tuple[list[Any], dict[str, Any]] | None:
        """The waiters and the reply body once the running check is done (then the next request starts
        a fresh run), else None."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 64)
        run = self._run
        if run is None or not run.done.is_set():
            return None
        self._run = None
        assert run.result is not None
        return run.waiters, run.result

    def _work(self, run: _Run) -> None:
        audit = self._config.audit
        try:
            key = chain_key(audit.key_file)
            result = self._check(audit.path, key=key)
            body: dict[str, Any] = {
                "ok": result.ok,
                "records": result.records,
                "first_bad_index": result.first_bad_index,
                "reason": result.reason,
            }
        except Exception as exc:  # a key file gone or unreadable: the answer says so, the gateway lives on
            body = {"ok": False, "records": 0, "first_bad_index": None, "reason": str(exc)}
        body.update(
            path=audit.path,
            keyed=audit.key_file is not None,
            key_file=audit.key_file,
            ms=round((time.monotonic() - run.started) * 1000, 1),
        )
        if audit.key_file is None:
            body["warning"] = UNKEYED_WARNING
        run.result = body
        run.done.set()
        # A full pipe already wakes the loop; a closed one means the gateway is stopping.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")


__all__ = ["MAX_WAITERS", "AuditCheck"]
