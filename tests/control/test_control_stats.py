"""The gateway's figures: answer time per request type, refusals and error replies by code, losses."""

from __future__ import annotations

import pytest

from openfang.control.stats import GatewayStats


def test_gateway_stats_time_requests_by_type_and_count_codes() -> None:
    """The answer time runs from admission to reply; error codes outside the catalogue count as 'other'."""
    now = [0.0]
    gw = GatewayStats(clock=lambda: now[0])
    gw.admitted(b"c", "1", "agent.send")
    now[0] = 0.02
    gw.replied_all([([b"c", b"payload"], "agent.send.ok", "1", {})])
    gw.replied_all([([b"c", b"payload"], "error", "2", {"code": "made_up_code", "message": "x"})])
    gw.refused("rate_limited")
    gw.event({"kind": "agent.lost", "reason": "restart_intensity"})
    wire = gw.to_wire()
    assert wire["requests"][0]["type"] == "agent.send" and wire["requests"][0]["seconds"]["count"] == 1
    assert wire["errors"] == {"other": 1} and wire["refusals"] == {"rate_limited": 1}
    assert wire["agents_lost"] == {"restart_intensity": 1}


def test_gateway_stats_replied_all_of_a_flush_is_each_reply_alone_with_one_clock_read() -> None:
    """A flush's replies timed together: the figures of each sent in a flush of its own (stream parts
    skipped, errors counted by code, unknown ids ignored, several request types), one clock read a flush."""
    now = [0.0]
    reads = [0]

    def clock() -> float:
        reads[0] += 1
        return now[0]

    batch, one = GatewayStats(clock=clock), GatewayStats(clock=lambda: now[0])
    for stats in (batch, one):
        for i in range(6):
            now[0] = i * 0.001
            stats.admitted(b"c%d" % (i % 2), str(i), "agent.send" if i < 4 else "status")
    now[0] = 0.5
    sent = [
        ([b"c0", b"payload"], "agent.send.chunk", "0", {"chunk": "par"}),  # a stream part: it ends later
        ([b"c1", b"", b"payload"], "error", "1", {"code": "busy", "message": "x"}),
        ([b"c0", b"payload"], "agent.send.ok", "2", {}),
        ([b"c1", b"payload"], "status.ok", "5", {}),
        ([b"c9", b"payload"], "error", "7", {"code": "made_up", "message": "y"}),  # never admitted
        ([b"c0", b"payload"], "status.ok", "4", {}),
    ]
    reads[0] = 0
    batch.replied_all(sent)
    assert reads[0] == 1
    for frames, reply_type, reply_id, body in sent:
        if reply_type != "agent.send.chunk":
            one.replied_all([(frames, reply_type, reply_id, body)])
    wire = batch.to_wire()
    assert wire == {**one.to_wire(), "started_at": wire["started_at"]}
    counted = [(r["type"], r["seconds"]["count"]) for r in wire["requests"]]
    assert counted == [("agent.send", 2), ("status", 2)]
    assert wire["errors"] == {"busy": 1, "other": 1}
    batch.replied_all([])  # an empty flush changes nothing
    assert batch.to_wire()["requests"] == wire["requests"]
    now[0] = 0.75
    batch.replied_all([([b"c0", b"payload"], "agent.send.ok", "0", {})])  # the stream's end: timed now
    seconds = batch.to_wire()["requests"][0]["seconds"]
    assert seconds["count"] == 3 and seconds["sum"] == pytest.approx(0.5 - 0.001 + 0.5 - 0.002 + 0.75)
