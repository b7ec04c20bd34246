"""Layer 3's fast path (a charge touching only unlimited buckets ends early) charges exactly as the full
computation: same refusals, same retry-after, same bucket levels, over random configs and charges."""

from __future__ import annotations

import math
import random

import pytest
from _security_clock import FakeClock

from openfang.security.ratelimit import Limit, RateLimitConfig, RateLimiter, RateLimitExceeded


class ReferenceLimiter(RateLimiter):
    """The charge without its shortcut: every charge runs the full computation."""

    def _touches_limited(
        self, client: str | None, agent: str | None, requests: int, tokens: int, tool_calls: int
    ) -> bool:
        return True


def _limit(rng: random.Random) -> Limit:
    return (
        Limit(rate=0, burst=0)
        if rng.random() < 0.5
        else Limit(rate=rng.choice([1, 5, 50]), burst=rng.randint(1, 40))
    )


def _config(rng: random.Random) -> RateLimitConfig:
    return RateLimitConfig(
        enabled=rng.random() < 0.9,
        client_requests=_limit(rng),
        global_requests=_limit(rng),
        agent_requests=_limit(rng),
        agent_tokens=_limit(rng),
        agent_tool_calls=_limit(rng),
    )


def _outcome(limiter: RateLimiter, **kw: object) -> tuple[str, float | None]:
    try:
        limiter.charge(**kw)  # type: ignore[arg-type]
    except RateLimitExceeded as exc:
        return exc.bucket, None if math.isinf(exc.retry_after) else round(exc.retry_after, 9)
    return "ok", None


def _levels(limiter: RateLimiter) -> dict[tuple[str, str], float]:
    return {k: round(b.level, 9) for k, b in limiter._buckets.items()}


@pytest.mark.parametrize("seed", range(40))
def test_ratelimit_fastpath_charges_as_the_full_computation(seed: int) -> None:
    """Random configs (each bucket limited or not) and charges: same outcomes and levels as the reference."""
    rng = random.Random(seed)
    cfg = _config(rng)
    clock = FakeClock()
    fast, ref = RateLimiter(cfg, clock=clock), ReferenceLimiter(cfg, clock=clock)
    for i in range(300):
        if i == 150 and rng.random() < 0.5:  # a reload mid-way renews the fast path's view
            fast.config = ref.config = _config(rng)
        kw = {
            "client": rng.choice([None, "c1", "c2"]),
            "agent": rng.choice([None, "a1", "a2"]),
            "requests": rng.choice([0, 1, 1, 2]),
            "tokens": rng.choice([0, 0, 3, 30]),
            "tool_calls": rng.choice([0, 1, 3]),
        }
        assert _outcome(fast, **kw) == _outcome(ref, **kw), (i, kw)
        assert _levels(fast) == _levels(ref), (i, kw)
        clock.advance(rng.choice([0, 0, 0.01, 0.3]))


def test_ratelimit_agent_limited_follows_the_config() -> None:
    """``agent_limited`` is true exactly when an agent bucket has a limit (and the layer is on)."""
    off = Limit(rate=0, burst=0)
    none = RateLimitConfig(agent_requests=off, agent_tokens=off, agent_tool_calls=off)
    assert not RateLimiter(none).agent_limited
    for field in ("agent_requests", "agent_tokens", "agent_tool_calls"):
        cfg = RateLimitConfig(
            **{
                **{f: off for f in ("agent_requests", "agent_tokens", "agent_tool_calls")},
                field: Limit(rate=1, burst=1),
            }
        )  # type: ignore[arg-type]
        assert RateLimiter(cfg).agent_limited, field
        limiter = RateLimiter(cfg)
        limiter.config = none
        assert not limiter.agent_limited
    assert not RateLimiter(RateLimitConfig(enabled=False)).agent_limited


def test_ratelimit_fastpath_still_checks_units() -> None:
    """A charge touching only unlimited buckets still refuses negative units (a caller bug)."""
    off = Limit(rate=0, burst=0)
    limiter = RateLimiter(RateLimitConfig(agent_requests=off, agent_tokens=off, agent_tool_calls=off))
    with pytest.raises(ValueError, match="negative"):
        limiter.charge(agent="a", tokens=-1)


def test_ratelimit_client_limited_follows_the_config() -> None:
    """``client_limited`` is true exactly when the client's or the global request bucket has a limit (and
    the layer is on), and a reload renews it."""
    off = Limit(rate=0, burst=0)
    none = RateLimitConfig(client_requests=off, global_requests=off)
    assert not RateLimiter(none).client_limited
    for field in ("client_requests", "global_requests"):
        cfg = RateLimitConfig(
            **{"client_requests": off, "global_requests": off, field: Limit(rate=1, burst=1)}
        )  # type: ignore[arg-type]
        limiter = RateLimiter(cfg)
        assert limiter.client_limited, field
        limiter.config = none
        assert not limiter.client_limited, field
        limiter.config = cfg
        assert limiter.client_limited, field
    assert not RateLimiter(RateLimitConfig(enabled=False)).client_limited


@pytest.mark.parametrize("seed", range(20))
def test_ratelimit_a_client_charge_skipped_when_not_client_limited_changes_nothing(seed: int) -> None:
    """Where ``client_limited`` is false, the full computation of any client charge refuses nothing and
    leaves no bucket: skipping the call (the gateway's door) is exact; where it is true, some charge is
    refused."""
    rng = random.Random(seed)
    for _ in range(20):
        cfg = _config(rng)
        ref = ReferenceLimiter(cfg, clock=FakeClock())
        refused = 0
        for _ in range(200):
            outcome = _outcome(ref, client=rng.choice(["c1", "c2"]), requests=rng.choice([1, 2]))
            refused += outcome[0] != "ok"
        if ref.client_limited:
            assert refused, cfg
        else:
            assert refused == 0 and not ref._buckets, cfg
