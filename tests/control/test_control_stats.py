"""The gateway's figures: answer time per request type, refusals and error replies by code, losses."""

from __future__ import annotations

from openfang.control.stats import GatewayStats


def test_gateway_stats_time_requests_by_type_and_count_codes() -> None:
    """The answer time runs from admission to reply; error codes outside the catalogue count as 'other'."""
    now = [0.0]
    gw = GatewayStats(clock=lambda: now[0])
    gw.admitted(b"c", "1", "agent.send")
    now[0] = 0.02
    gw.replied(b"c", "1", "agent.send.ok", {})
    gw.replied(b"c", "2", "error", {"code": "made_up_code", "message": "x"})
    gw.refused("rate_limited")
    gw.event({"kind": "agent.lost", "reason": "restart_intensity"})
    wire = gw.to_wire()
    assert wire["requests"][0]["type"] == "agent.send" and wire["requests"][0]["seconds"]["count"] == 1
    assert wire["errors"] == {"other": 1} and wire["refusals"] == {"rate_limited": 1}
    assert wire["agents_lost"] == {"restart_intensity": 1}
