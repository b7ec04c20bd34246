"""The control endpoint: typed errors for bad frames, both client framings, busy, reload."""

from __future__ import annotations

import msgpack
import pytest
from daemon_harness import Cluster, wait_for

from openfang.protocol.envelope import Envelope, decode, encode

pytestmark = pytest.mark.integration


def test_malformed_frames_get_typed_errors_and_the_gateway_keeps_serving(make_cluster: type[Cluster]) -> None:
    """Garbage, non-map, bad envelope, unknown type and oversized frames each get a typed error reply."""
    c = make_cluster(workers=1).start()
    cases = [
        (b"\xc1\xff garbage", "bad_request"),
        (msgpack.packb([1, 2, 3]), "bad_request"),
        (msgpack.packb({"v": 1, "id": "x1", "type": 7}), "bad_request"),
        (msgpack.packb({"v": 99, "id": "x2", "type": "ping", "body": {}}), "unsupported_version"),
        (encode(Envelope(type="launch.missiles", id="x3")), "unknown_type"),
        (b"\x00" * (2 << 20), "too_large"),
    ]
    for frame, code in cases:
        c.send_raw(frame)
        reply = c.recv_env()
        assert reply.is_error and reply.body["code"] == code, (code, reply.body)
        assert reply.body["message"]
    bad_id = c.call("status")  # the gateway still serves
    assert not bad_id.is_error
    err = (c.send_raw(msgpack.packb({"v": 1, "id": "keep-me", "type": 5})), c.recv_env())[1]
    assert err.id == "keep-me", "an invalid request's id is echoed so the client can match the error"
    c.stop()


def test_req_style_framing_is_answered_with_a_delimiter(make_cluster: type[Cluster]) -> None:
    """A REQ client (empty delimiter frame) gets its reply in REQ framing."""
    import zmq

    c = make_cluster(workers=1).start()
    req = c.zctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(c.endpoint)
    env = Envelope(type="ping")
    req.send(encode(env))
    assert req.poll(10_000)
    reply = decode(req.recv())
    assert reply.type == "ping.ok" and reply.id == env.id
    req.close()
    c.stop()


def test_full_request_table_answers_busy_not_silence(make_cluster: type[Cluster]) -> None:
    """Past queue_limit requests in flight, the gateway answers busy at once; every request is answered."""
    unlimited = "\n[security.ratelimit.client_requests]\nrate = 0\nburst = 0\n"  # only the queue may refuse
    c = make_cluster(workers=1, queue_limit=1, extra=unlimited).start()
    ids = []
    for _ in range(300):
        env = Envelope(type="tree")
        ids.append(env.id)
        c.send_raw(encode(env))
    replies = {}
    while len(replies) < len(ids):
        r = c.recv_env()
        replies[r.id] = r
    codes = [replies[i].body.get("code") if replies[i].is_error else "ok" for i in ids]
    assert "busy" in codes and "ok" in codes, codes
    assert set(codes) <= {"busy", "ok"}
    c.stop()


def test_reload_with_a_good_config_starts_new_and_stops_removed_children(make_cluster: type[Cluster]) -> None:
    """SIGHUP-equivalent reload: a new child starts, unchanged ones keep their pids, a removed one stops."""
    extra = """
[[supervisor.children]]
id = "alpha"
start = "daemon_children:steady"
"""
    c = make_cluster(workers=1, extra=extra).start()
    workers_pid = c.node("workers")["pid"]
    alpha_pid = c.node("alpha")["pid"]
    c.write_config("""
[[supervisor.children]]
id = "beta"
start = "daemon_children:steady"
""")
    diff = c.ok("reload")
    assert diff["started"] == ["beta"] and diff["stopped"] == ["alpha"], diff
    assert "workers" in diff["unchanged"]
    ids = [n["id"] for n in c.tree()]
    assert ids == ["control", "workers", "beta"]
    assert c.node("workers")["pid"] == workers_pid
    wait_for(lambda: not __import__("psutil").pid_exists(alpha_pid), what="alpha to stop")
    c.remember_pids()
    assert c.stop() == 0
    c.assert_no_survivors()


def test_reload_with_a_bad_config_is_rejected_and_the_tree_is_untouched(make_cluster: type[Cluster]) -> None:
    """A bad new config is refused with every problem named; the running tree keeps its pids."""
    import signal

    c = make_cluster(workers=2).start()
    before = {n["id"]: n["pid"] for n in c.tree()}
    c.config_path.write_text(
        c.config_path.read_text() + '\n[[supervisor.children]]\nid = "workers"\nstart = "x"\n'
    )
    reply = c.call("reload")
    assert reply.is_error and reply.body["code"] == "bad_config"
    assert "workers" in reply.body["message"]
    c.signal(signal.SIGHUP)  # the signal path rejects it too, and says so on the notify socket
    c.wait_notification("STATUS=running (last reload rejected)")
    assert {n["id"]: n["pid"] for n in c.tree()} == before
    assert c.stop() == 0
