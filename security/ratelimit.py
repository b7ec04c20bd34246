"""Layer 3, rate limiting: token buckets per client and per agent, for requests, LLM tokens and tool calls.

A *client* is an identity, not a connection: the gateway passes the strongest one it can prove (the key id
of a verified request signature, else the CURVE client the ZAP handler admitted, else the ipc peer's uid;
see ``control/guard.py``), so reconnecting never refills a bucket. Every client request is also charged
to one ``global_requests`` bucket shared by all clients: the ceiling of what the gateway admits in total.

A bucket holds up to ``burst`` units and refills at ``rate`` units per second of the injected clock.
:meth:`RateLimiter.charge` takes units from every bucket a request touches (the client's request bucket,
the agent's request/token/tool-call buckets) *all or nothing*: a request refused by one bucket costs no
other bucket anything. A refusal raises :class:`RateLimitExceeded` (wire code ``rate_limited``) carrying
``retry_after`` seconds, and writes a ``ratelimit.limited`` audit record.

Buckets are kept in a bounded LRU map so a flood of distinct client ids cannot grow memory without bound; an
evicted bucket comes back full, which is why client ids should be assigned by the gateway, not claimed.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from openfang.protocol.errors import RateLimited
from openfang.security.audit import AuditSink


class RateLimitExceeded(RateLimited):
    """A bucket is empty. ``retry_after`` is how long (seconds) until the request would fit."""

    def __init__(self, message: str, *, retry_after: float, bucket: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.bucket = bucket

    def to_wire(self) -> dict[str, Any]:
        wire = super().to_wire()
        wire["retry_after_ms"] = max(1, math.ceil(self.retry_after * 1000))
        return wire


@dataclass(frozen=True, slots=True, kw_only=True)
class Limit:
    """``rate`` units per second, up to ``burst`` at once. rate 0 means unlimited."""

    rate: float
    burst: float

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0


UNLIMITED = Limit(rate=0, burst=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitConfig:
    """``[security.ratelimit]``: the token buckets per client, for all clients, per agent."""

    enabled: bool = True
    client_requests: Limit = Limit(rate=50, burst=100)
    global_requests: Limit = Limit(rate=1000, burst=2000)  # all clients together
    agent_requests: Limit = Limit(rate=20, burst=40)
    agent_tokens: Limit = Limit(rate=2000, burst=20_000)
    agent_tool_calls: Limit = Limit(rate=5, burst=20)
    max_buckets: int = 100_000


class TokenBucket:
    """One bucket. ``level`` is refilled lazily from the clock on every look."""

    __slots__ = ("_last", "level", "limit")

    def __init__(self, limit: Limit, now: float) -> None:
        self.limit = limit
        self.level = limit.burst
        self._last = now

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._last)  # a clock that steps back never adds tokens
        self.level = min(self.limit.burst, self.level + elapsed * self.limit.rate)
        self._last = max(self._last, now)

    def wait_for(self, units: float) -> float:
        """Seconds until ``units`` are available (inf if more than the bucket can ever hold)."""
        if units <= self.level + 1e-6:  # float clocks/refill must not leave a request a rounding error short
            return 0.0
        if units > self.limit.burst:
            return math.inf
        return (units - self.level) / self.limit.rate


class RateLimiter:
    """Per-client and per-agent buckets. Not thread-safe: one per process loop."""

    def __init__(
        self,
        config: RateLimitConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        audit: AuditSink | None = None,
    ) -> None:
        self._clock = clock
        self._audit = audit
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()
        self.config = config or RateLimitConfig()

    @property
    def config(self) -> RateLimitConfig:
        return self._config

    @config.setter
    def config(self, config: RateLimitConfig) -> None:
        """A new config also renews which buckets can refuse anything (the charge's fast path)."""
        self._config = config
        # Per kind of charge: does any bucket it touches have a limit? A charge touching only unlimited
        # buckets takes nothing from any bucket and can never be refused, so it ends after its checks.
        self._client_limited = config.enabled and not (
            config.client_requests.unlimited and config.global_requests.unlimited
        )
        self._agent_requests_limited = config.enabled and not config.agent_requests.unlimited
        self._agent_tokens_limited = config.enabled and not config.agent_tokens.unlimited
        self._agent_tools_limited = config.enabled and not config.agent_tool_calls.unlimited

    @property
    def client_limited(self) -> bool:
        """Whether a client's charge can take from (or be refused by) any bucket. When not, :meth:`charge`
        with ``agent=None`` reads and writes no state and never raises (for units that are not negative): a
        caller may skip the call, and counting its units, altogether (the gateway's door, per request)."""
        return self._client_limited

    @property
    def agent_limited(self) -> bool:
        """Whether an agent's charge can take from (or be refused by) any bucket. When not, :meth:`charge`
        with ``client=None`` reads and writes no state: callers may skip the lock they would hold for it."""
        return self._agent_requests_limited or self._agent_tokens_limited or self._agent_tools_limited

    def _bucket(self, name: str, key: str, limit: Limit, now: float) -> TokenBucket:
        bk = (name, key)
        bucket = self._buckets.get(bk)
        if bucket is None:
            bucket = TokenBucket(limit, now)
            self._buckets[bk] = bucket
            while len(self._buckets) > self.config.max_buckets:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(bk)
        bucket.refill(now)
        return bucket

    def charge(
        self,
        *,
        client: str | None = None,
        agent: str | None = None,
        requests: int = 1,
        tokens: int = 0,
        tool_calls: int = 0,
    ) -> None:
        """Take the units from every relevant bucket, or none of them and raise :class:`RateLimitExceeded`."""
        if min(requests, tokens, tool_calls) < 0:
            # Negative units would refill a bucket: a caller bug, never something a client may cause.
            raise ValueError("rate-limit units must not be negative")
        if self._touches_limited(client, agent, requests, tokens, tool_calls):
            self._take(client, agent, requests, tokens, tool_calls)
        # else every bucket this charge touches is unlimited (or the layer is off): nothing to take

    def _touches_limited(
        self, client: str | None, agent: str | None, requests: int, tokens: int, tool_calls: int
    ) -> bool:
        """Whether the charge names a limited bucket (when not, :meth:`_take` would take nothing)."""
        return bool(
            (client is not None and requests and self._client_limited)
            or (
                agent is not None
                and (
                    (requests and self._agent_requests_limited)
                    or (tokens and self._agent_tokens_limited)
                    or (tool_calls and self._agent_tools_limited)
                )
            )
        )

    def _take(
        self, client: str | None, agent: str | None, requests: int, tokens: int, tool_calls: int
    ) -> None:
        """The full charge: every bucket the units name is looked at (unlimited ones skipped), all taken from
        or none. :meth:`charge` calls it unless its shortcut proves no limited bucket is named."""
        if not self.config.enabled:
            return
        now = self._clock()
        cfg = self.config
        wanted: list[tuple[str, str, Limit, float]] = []
        if client is not None and requests:
            wanted.append(("client_requests", client, cfg.client_requests, requests))
            wanted.append(("global_requests", "*", cfg.global_requests, requests))
        if agent is not None:
            if requests:
                wanted.append(("agent_requests", agent, cfg.agent_requests, requests))
            if tokens:
                wanted.append(("agent_tokens", agent, cfg.agent_tokens, tokens))
            if tool_calls:
                wanted.append(("agent_tool_calls", agent, cfg.agent_tool_calls, tool_calls))
        taken: list[tuple[TokenBucket, float]] = []
        worst: tuple[float, str, str] | None = None
        for name, key, limit, units in wanted:
            if limit.unlimited:
                continue
            bucket = self._bucket(name, key, limit, now)
            wait = bucket.wait_for(units)
            if wait > 0 and (worst is None or wait > worst[0]):
                worst = (wait, name, key)
            taken.append((bucket, units))
        if worst is not None:
            wait, name, key = worst
            if self._audit is not None:
                self._audit.append(
                    "ratelimit.limited",
                    bucket=name,
                    key=key,
                    retry_after=None if math.isinf(wait) else round(wait, 3),
                )
            when = "never (larger than the bucket)" if math.isinf(wait) else f"in {wait:.3f}s"
            raise RateLimitExceeded(
                f"rate limit {name} for {key!r} exceeded; retry {when}", retry_after=wait, bucket=name
            )
        for bucket, units in taken:
            bucket.level -= units

    def refund(self, *, agent: str, tokens: int) -> None:
        """Give back tokens reserved for an LLM call that used fewer than estimated."""
        bucket = self._buckets.get(("agent_tokens", agent))
        if bucket is not None and tokens > 0:
            bucket.level = min(bucket.limit.burst, bucket.level + tokens)
