"""Layer 3: token buckets per client and agent refuse floods with a retry-after, and refill with time."""

from __future__ import annotations

import pytest
from _security_clock import FakeClock

from openfang.security.audit import AuditLog
from openfang.security.ratelimit import Limit, RateLimitConfig, RateLimiter, RateLimitExceeded

CFG = RateLimitConfig(
    client_requests=Limit(rate=10, burst=5),
    agent_requests=Limit(rate=100, burst=100),
    agent_tokens=Limit(rate=100, burst=1000),
    agent_tool_calls=Limit(rate=1, burst=2),
)


def test_ratelimit_client_flood_is_refused_with_retry_after(clock: FakeClock, audit: AuditLog) -> None:
    """The 6th request of a burst of 5 is refused with retry_after = 1/rate and audited."""
    rl = RateLimiter(CFG, clock=clock, audit=audit)
    for _ in range(5):
        rl.charge(client="c1")
    with pytest.raises(RateLimitExceeded) as err:
        rl.charge(client="c1")
    assert err.value.code == "rate_limited"
    assert err.value.retry_after == pytest.approx(0.1)
    assert err.value.to_wire()["retry_after_ms"] == 100
    (rec,) = audit.records("ratelimit.limited")
    assert rec.fields["bucket"] == "client_requests" and rec.fields["key"] == "c1"


def test_ratelimit_other_clients_still_served_and_bucket_refills() -> None:
    """A flooding client does not starve another, and is served again after retry_after."""
    clock = FakeClock(1000.0)  # monotonic-like magnitude
    rl = RateLimiter(CFG, clock=clock)
    for _ in range(5):
        rl.charge(client="flooder")
    with pytest.raises(RateLimitExceeded):
        rl.charge(client="flooder")
    rl.charge(client="polite")
    clock.advance(0.1)
    rl.charge(client="flooder")


def test_ratelimit_refusal_costs_no_other_bucket(clock: FakeClock) -> None:
    """All-or-nothing: a tool call refused by the tool bucket does not drain the token bucket."""
    rl = RateLimiter(CFG, clock=clock)
    rl.charge(agent="a1", tool_calls=2, tokens=500, requests=0)
    with pytest.raises(RateLimitExceeded, match="agent_tool_calls"):
        rl.charge(agent="a1", tool_calls=1, tokens=500, requests=0)
    rl.charge(agent="a1", tokens=500, requests=0)  # still 500 left: the refused call took nothing


def test_ratelimit_request_larger_than_burst_never_fits(clock: FakeClock) -> None:
    """Asking for more tokens than the bucket holds says it will never fit."""
    rl = RateLimiter(CFG, clock=clock)
    with pytest.raises(RateLimitExceeded, match="never") as err:
        rl.charge(agent="a1", tokens=5000, requests=0)
    assert err.value.retry_after == float("inf")


def test_ratelimit_clock_stepping_back_adds_nothing(clock: FakeClock) -> None:
    """A clock that goes backwards does not refill buckets."""
    rl = RateLimiter(CFG, clock=clock)
    for _ in range(5):
        rl.charge(client="c")
    clock.advance(-100)
    with pytest.raises(RateLimitExceeded):
        rl.charge(client="c")


def test_ratelimit_bucket_map_is_bounded(clock: FakeClock) -> None:
    """Spraying client ids cannot grow the bucket map beyond max_buckets."""
    rl = RateLimiter(RateLimitConfig(max_buckets=50), clock=clock)
    for i in range(1000):
        rl.charge(client=f"c{i}")
    assert len(rl._buckets) == 50


def test_ratelimit_refund_returns_unused_tokens(clock: FakeClock) -> None:
    """Refunding an over-estimate makes the tokens available again."""
    rl = RateLimiter(CFG, clock=clock)
    rl.charge(agent="a", tokens=1000, requests=0)
    rl.refund(agent="a", tokens=400)
    rl.charge(agent="a", tokens=400, requests=0)


def test_ratelimit_negative_units_are_a_caller_error(clock: FakeClock) -> None:
    """Negative units (which would refill a bucket) raise ValueError instead of adding tokens."""
    with pytest.raises(ValueError, match="negative"):
        RateLimiter(CFG, clock=clock).charge(agent="a", tokens=-1000, requests=0)
