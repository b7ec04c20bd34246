"""A bounded nonce cache with expiry, shared by request signing and agent identity (replay protection).

Invariant: a nonce is remembered at least as long as a message carrying it could still pass the timestamp
check (``ttl >= 2 * max_skew``), so a replay inside the skew window always hits the cache. When the cache
is full of live nonces it *fails closed* (refuses new messages) instead of forgetting one early.
"""

from __future__ import annotations

import heapq


class ReplayCache:
    def __init__(self, *, ttl: float, max_entries: int = 200_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def _prune(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            exp, nonce = heapq.heappop(self._heap)
            if self._expiry.get(nonce) == exp:
                del self._expiry[nonce]

    def seen(self, nonce: str, now: float) -> bool:
        """True if ``nonce`` was recorded and has not expired (does not record it)."""
        self._prune(now)
        return nonce in self._expiry

    def full(self, now: float) -> bool:
        self._prune(now)
        return len(self._expiry) >= self.max_entries

    def record(self, nonce: str, now: float) -> None:
        exp = now + self.ttl
        self._expiry[nonce] = exp
        heapq.heappush(self._heap, (exp, nonce))

    def __len__(self) -> int:
        return len(self._expiry)
