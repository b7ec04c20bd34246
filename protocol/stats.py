"""Cumulative counters and latency histograms that processes report over the protocol, and their wire form.

The gateway (``status`` -> ``gateway``), every worker (``agent.list`` -> ``workers``) and the memory writer
(``memory.ping`` -> ``memory.stats`` -> ``writer``) keep their figures in these small accumulators and answer
them as plain maps (:class:`~openfang.protocol.bodies.HistogramBody` and ``dict[str, int]``). Everything is
cumulative since the process started: a restarted process starts again from zero, which Prometheus reads
as a counter reset.

Both classes are thread-safe (a worker's LLM and tool jobs finish on pool threads) and bounded: a
:class:`Counts` keeps at most ``max_keys`` keys and adds the rest up under ``"other"``, so a caller that
labels by something unexpected cannot grow a series per value.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable
from typing import Any

# Upper bounds (seconds) for request and call latencies: 0.1 ms .. 30 s, roughly 1-2.5-5 per decade.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
OTHER = "other"


class Histogram:
    """Observations counted into fixed buckets (``le`` upper bounds), with their sum and count.

    ``per_bucket`` (one count per bound, then +Inf) and ``total`` (the sum) change only under ``lock``: the
    histogram's own, or the lock of an owner that keeps several figures together (``lock=``) and may then
    count into both itself while it holds that lock, in one hold with its other figures (a worker's model
    answers: ``HostStats.llm_answer``). Such an owner must not call this histogram's methods while holding
    the lock (a ``threading.Lock`` is not reentrant)."""

    __slots__ = ("bounds", "lock", "per_bucket", "total")

    def __init__(
        self, bounds: Iterable[float] = LATENCY_BUCKETS, *, lock: threading.Lock | None = None
    ) -> None:
        self.bounds = tuple(sorted(float(b) for b in bounds))
        self.per_bucket = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.lock = threading.Lock() if lock is None else lock

    def observe(self, value: float) -> None:
        """Count one observation (a value equal to a bound falls in that bound's bucket, as ``le`` says)."""
        index = bisect.bisect_left(self.bounds, value)
        with self.lock:
            self.per_bucket[index] += 1
            self.total += value

    def observe_all(self, values: list[float]) -> None:
        """Count several observations under one lock (what ``observe`` of each does, in order: the same
        buckets and the same sum), for an owner that times a batch at once (the gateway's flush)."""
        bounds = self.bounds
        indexes = [bisect.bisect_left(bounds, value) for value in values]
        counts = self.per_bucket
        with self.lock:
            total = self.total
            for index, value in zip(indexes, values, strict=True):
                counts[index] += 1
                total += value
            self.total = total

    @property
    def count(self) -> int:
        with self.lock:
            return sum(self.per_bucket)

    def to_wire(self) -> dict[str, Any]:
        """``{"bounds", "counts" (cumulative, one per bound), "count", "sum"}``: HistogramBody."""
        with self.lock:
            per_bucket, total_sum = list(self.per_bucket), self.total
        cumulative, running = [], 0
        for n in per_bucket[:-1]:
            running += n
            cumulative.append(running)
        return {
            "bounds": list(self.bounds),
            "counts": cumulative,
            "count": running + per_bucket[-1],
            "sum": total_sum,
        }


class Counts:
    """Counters by key, at most ``max_keys`` of them (later keys are added up under ``"other"``)."""

    __slots__ = ("_lock", "_n", "max_keys")

    def __init__(self, max_keys: int = 64) -> None:
        self.max_keys = max_keys
        self._n: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            if key not in self._n and len(self._n) >= self.max_keys:
                key = OTHER
            self._n[key] = self._n.get(key, 0) + n

    def get(self, key: str) -> int:
        with self._lock:
            return self._n.get(key, 0)

    def to_wire(self) -> dict[str, int]:
        with self._lock:
            return dict(self._n)
