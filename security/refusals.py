"""Audit records for refusals a client can cause at will, aggregated so that nobody can fill the disk.

Every refused request used to write a full audit record (1.4 ms and a few hundred bytes each), so an
unauthenticated client could grow ``audit.db`` without bound by sending junk. :class:`RefusalAudit` sits
between the gateway's layers and the audit log (it is an :class:`~openfang.security.audit.AuditSink`):

- time is cut into windows of ``window_s`` seconds (aligned on the clock, so every source shares them);
- within a window, the **first** record of each ``(source, kind)`` is written in full, the rest are only
  counted (``source`` is the client identity the gateway set before the layers ran);
- full records also draw on a write bucket (``max_writes_per_s``, burst ``burst``): past it, even a first
  record is only counted, so many sources together cannot flood the log either;
- when a window ends, one ``audit.suppressed`` record lists what was counted: ``{source, kind, count}`` for
  the ``max_summary_entries`` biggest counts, and ``others`` (the total of the rest). That is at most one
  summary per window, whatever happened in it;
- at most ``max_sources`` ``(source, kind)`` pairs are tracked per window; beyond that, counts go to the pair
  ``("*", kind)``, so memory stays bounded under a flood of distinct sources.

Invariants: every refusal is either a full record or part of exactly one count in exactly one summary; all
writes go through the same hash chain, so ``verify`` still covers them. Not thread-safe: one per loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from openfang.security.audit import AuditSink

SUMMARY_KIND = "audit.suppressed"
OVERFLOW_SOURCE = "*"


@dataclass(frozen=True, slots=True, kw_only=True)
class RefusalAuditConfig:
    """``[security.audit]``'s refusal aggregation: records per window and source, and bounds."""

    window_s: float = 60.0
    max_writes_per_s: float = 5.0
    burst: int = 50
    max_sources: int = 10_000
    max_summary_entries: int = 200


class RefusalAudit:
    """Aggregates refusal records per source and kind per window; see the module docstring."""

    def __init__(
        self,
        sink: AuditSink,
        config: RefusalAuditConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        self.config = config or RefusalAuditConfig()
        self._clock = clock
        self.source = OVERFLOW_SOURCE  # who the next records are about: set by the owner before each request
        self._window = self._window_of(clock())
        self._first: set[tuple[str, str]] = set()
        self._counts: dict[tuple[str, str], int] = {}
        self._tokens = float(self.config.burst)
        self._last = clock()
        self.written = 0  # full records and summaries written (for tests and the report)
        self.suppressed = 0  # records only counted

    def _window_of(self, now: float) -> int:
        return math.floor(now / self.config.window_s)

    def _take_token(self, now: float) -> bool:
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        self._tokens = min(float(self.config.burst), self._tokens + elapsed * self.config.max_writes_per_s)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def append(self, kind: str, /, **fields: Any) -> object:
        """Write ``kind`` in full if it is the first of its source in this window (and the write budget
        allows), else count it for the window's summary. Returns the written record or None."""
        now = self._clock()
        self.flush(now)
        key = (self.source, kind)
        if key not in self._first and key not in self._counts:
            if len(self._first) + len(self._counts) >= self.config.max_sources:
                key = (OVERFLOW_SOURCE, kind)
            elif self._take_token(now):
                self._first.add(key)
                self.written += 1
                return self._sink.append(kind, source=self.source, **fields)
        self._counts[key] = self._counts.get(key, 0) + 1
        self.suppressed += 1
        return None

    def flush(self, now: float | None = None, *, force: bool = False) -> None:
        """Close the window if it has ended (or ``force``): write its summary and start a new one."""
        now = self._clock() if now is None else now
        window = self._window_of(now)
        if window == self._window and not force:
            return
        if self._counts:
            ranked = sorted(self._counts.items(), key=lambda item: (-item[1], item[0]))
            keep = ranked[: self.config.max_summary_entries]
            self._sink.append(
                SUMMARY_KIND,
                window_start=self._window * self.config.window_s,
                window_s=self.config.window_s,
                entries=[{"source": s, "kind": k, "count": n} for (s, k), n in keep],
                others=sum(n for _, n in ranked[len(keep) :]),
                total=sum(self._counts.values()),
            )
            self.written += 1
        self._window = window
        self._first.clear()
        self._counts.clear()
