"""The gateway's monitoring figures: answer time per request type, refusals and error replies by code, and
the agent restarts and losses it decided. Answered with every ``status`` (``gateway``: GatewayStats).

Label sets are bounded: request types are the catalogue's (:data:`~openfang.protocol.messages.REQUEST_TYPES`),
error codes :data:`~openfang.protocol.messages.ERROR_CODES` (anything else counts as ``other``), restart
reasons two words and losses the ``agent.lost`` reasons. One loop thread uses it (the gateway's).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from openfang.protocol.envelope import ERROR_TYPE
from openfang.protocol.messages import CHUNK_TYPE, ERROR_CODES, REQUEST_TYPES
from openfang.protocol.stats import OTHER, Counts, Histogram

MAX_TIMED = 100_000  # requests timed at once; past it the oldest is forgotten (every request gets a reply)
LOST_REASONS = frozenset(
    {"worker_crashed", "worker_stopped", "restart_intensity", "restart_failed", "crashed"}
)


class GatewayStats:
    """Counters and histograms of one gateway process."""

    def __init__(self, clock: Any = time.perf_counter) -> None:
        self.started_at = time.time()
        self._clock = clock
        self._seconds: dict[str, Histogram] = {}
        self._started: dict[tuple[bytes, str], tuple[str, float]] = {}
        self.refusals = Counts(len(ERROR_CODES) + 1)
        self.errors = Counts(len(ERROR_CODES) + 1)
        self.agent_restarts = Counts(4)
        self.agents_lost = Counts(len(LOST_REASONS) + 1)

    def admitted(self, client: bytes, request_id: str, request_type: str) -> None:
        """A client's request passed the door: its answer time runs from now."""
        if request_type not in REQUEST_TYPES:
            return
        if len(self._started) >= MAX_TIMED:
            self._started.pop(next(iter(self._started)))
        self._started[(client, request_id)] = (request_type, self._clock())

    def replied_all(self, sent: Iterable[tuple[list[bytes], str, str, dict[str, Any]]]) -> None:
        """Replies that have just left together (the gateway's outbox: each its frames, the client's routing
        id first, and its type, id and body): each but a part of a stream is timed from its admission and an
        error counted by its code, with one clock read for them all (the time they left) and one histogram
        lock per request type."""
        now = self._clock()
        started = self._started
        timed: dict[str, list[float]] = {}
        for frames, reply_type, reply_id, body in sent:
            if reply_type == CHUNK_TYPE:
                continue
            if reply_type == ERROR_TYPE:
                self.errors.add(_code(str(body.get("code"))))
            start = started.pop((frames[0], reply_id), None)
            if start is not None:
                request_type, t0 = start
                values = timed.get(request_type)
                if values is None:
                    values = timed[request_type] = []
                values.append(now - t0)
        for request_type, values in timed.items():
            histogram = self._seconds.get(request_type)
            if histogram is None:
                histogram = self._seconds[request_type] = Histogram()
            histogram.observe_all(values)

    def refused(self, error_code: str) -> None:
        self.refusals.add(_code(error_code))

    def event(self, event: dict[str, Any]) -> None:
        """The gateway's own restart decisions, from the events it publishes."""
        kind = event.get("kind")
        if kind == "agent.restarting":
            reason = str(event.get("reason") or "")
            self.agent_restarts.add(
                "restart_failed" if reason.startswith("restart failed") else "worker_lost"
            )
        elif kind == "agent.lost":
            reason = str(event.get("reason") or "")
            self.agents_lost.add(reason if reason in LOST_REASONS else OTHER)

    def to_wire(self) -> dict[str, Any]:
        """The GatewayStats body."""
        return {
            "started_at": self.started_at,
            "requests": [{"type": kind, "seconds": h.to_wire()} for kind, h in sorted(self._seconds.items())],
            "refusals": self.refusals.to_wire(),
            "errors": self.errors.to_wire(),
            "agent_restarts": self.agent_restarts.to_wire(),
            "agents_lost": self.agents_lost.to_wire(),
        }


def _code(code: str) -> str:
    return code if code in ERROR_CODES else OTHER
