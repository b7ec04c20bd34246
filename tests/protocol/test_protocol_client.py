"""Client and RequestServer on real sockets: replies, typed errors, timeouts, framing, events."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq
from protocol_testkit import HANDLERS, ipc_dir, serving

from openfang.protocol.client import Client
from openfang.protocol.envelope import Envelope, decode, encode
from openfang.protocol.errors import NotFound, ProtocolError, RemoteError, Timeout
from openfang.protocol.sockets import bind_pub, bind_router

pytestmark = pytest.mark.integration


@pytest.fixture
def ipc() -> Iterator[str]:
    with ipc_dir() as path:
        yield path


def _raw_exchange(endpoint: str, frames: list[bytes], kind: int = zmq.DEALER) -> list[bytes]:
    """Send frames from a raw socket and return the reply frames (10 s limit)."""
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        sock = ctx.socket(kind)
        sock.linger = 0
        sock.connect(endpoint)
        if kind == zmq.REQ:
            sock.send(frames[0])
        else:
            sock.send_multipart(frames)
        assert sock.poll(10_000), "no reply"
        reply: list[bytes] = sock.recv_multipart()
        sock.close()
        return reply
    finally:
        ctx.term()


def test_client_request_returns_the_reply_body(ipc: str) -> None:
    """request('ping') returns the ping.ok body from a real ROUTER server."""
    with serving(f"ipc://{ipc}/c.sock") as (endpoint, _), Client(endpoint, timeout=10) as client:
        assert client.request("ping")["pid"] == os.getpid()
        assert client.request("tree")["children"][0]["id"] == "workers"


def test_client_raises_remote_error_with_the_wire_code(ipc: str) -> None:
    """Error replies raise RemoteError carrying the server's code (unknown_type, not_found)."""

    def info(env: Envelope) -> dict[str, Any]:
        raise NotFound(f"agent {env.body['agent_id']!r} does not exist")

    handlers = {**HANDLERS, "agent.info": info}
    with serving(f"ipc://{ipc}/c.sock", handlers) as (endpoint, _), Client(endpoint, timeout=10) as client:
        with pytest.raises(RemoteError) as unknown:
            client.request("agent.teleport")
        assert unknown.value.code == "unknown_type"
        with pytest.raises(RemoteError) as missing:
            client.request("agent.info", {"agent_id": "a-1"})
        assert missing.value.code == "not_found" and "'a-1' does not exist" in str(missing.value)


def test_client_times_out_when_the_server_never_answers(ipc: str) -> None:
    """A server that reads but never replies makes request() raise Timeout after its timeout."""
    ctx: zmq.Context[Any] = zmq.Context()
    silent = bind_router(ctx, f"ipc://{ipc}/silent.sock")
    try:
        with Client(f"ipc://{ipc}/silent.sock", timeout=10) as client:
            started = time.monotonic()
            with pytest.raises(Timeout, match="no reply to 'ping'"):
                client.request("ping", timeout=0.3)
            assert time.monotonic() - started >= 0.3
            assert silent.poll(5000), "the request did reach the server"
    finally:
        silent.close()
        ctx.term()


def test_client_times_out_when_nothing_listens(ipc: str) -> None:
    """With no server bound the request cannot even be sent: Timeout that says so."""
    with (
        Client(f"ipc://{ipc}/nobody.sock", timeout=0.3) as client,
        pytest.raises(Timeout, match="not connected"),
    ):
        client.request("ping")


def test_client_discards_a_late_reply_to_an_earlier_request(ipc: str) -> None:
    """A reply that arrives after its request timed out is never returned as the answer to the next one."""
    ctx: zmq.Context[Any] = zmq.Context()
    router = bind_router(ctx, f"ipc://{ipc}/late.sock")

    def late_server() -> None:
        first = router.recv_multipart()
        second = router.recv_multipart()  # only after the client gave up on the first
        for frames, pid in ((first, 1), (second, 2)):
            env = decode(frames[1])
            router.send_multipart([frames[0], encode(env.reply({"pid": pid, "time": 0.0}))])

    thread = threading.Thread(target=late_server, daemon=True)
    thread.start()
    try:
        with Client(f"ipc://{ipc}/late.sock", timeout=10) as client:
            with pytest.raises(Timeout):
                client.request("ping", timeout=0.3)
            assert client.request("ping")["pid"] == 2
    finally:
        thread.join(timeout=10)
        router.close()
        ctx.term()


def test_client_validates_a_request_body_before_sending(ipc: str) -> None:
    """A body that breaks the schema raises ProtocolError locally; nothing reaches the server."""
    with serving(f"ipc://{ipc}/c.sock") as (endpoint, server), Client(endpoint, timeout=10) as client:
        with pytest.raises(ProtocolError, match=r"body\.text: must be a string"):
            client.request("agent.send", {"agent_id": "a", "text": 3})
        client.request("ping")
        assert server.handled == 1


def test_server_refuses_an_invalid_request_body_with_bad_request(ipc: str) -> None:
    """Sent without local validation, a bad body gets bad_request naming every problem."""
    with serving(f"ipc://{ipc}/c.sock") as (endpoint, _), Client(endpoint, timeout=10) as client:
        with pytest.raises(RemoteError) as info:
            client.request("agent.send", {"text": 3, "x": 1}, validate=False)
        assert info.value.code == "bad_request"
        assert "body.text" in str(info.value) and "body.x: unknown field" in str(info.value)


def test_request_server_answers_a_req_socket_with_req_framing(ipc: str) -> None:
    """A REQ client (delimiter frame) is answered with the same framing."""
    request = Envelope(type="ping", id="req-1")
    with serving(f"ipc://{ipc}/c.sock") as (endpoint, _):
        reply = _raw_exchange(endpoint, [encode(request)], kind=zmq.REQ)
    env = decode(reply[0])
    assert (env.type, env.id) == ("ping.ok", "req-1")


@pytest.mark.parametrize(
    ("frames", "code", "reply_id"),
    [
        ([b"\xc1"], "bad_request", ""),
        ([msgpack.packb({"v": 2, "id": "q7", "type": "ping", "body": {}})], "unsupported_version", "q7"),
        ([msgpack.packb({"v": 1, "id": "q8", "type": "ping", "body": "x"})], "bad_request", "q8"),
        ([b"a", b"b"], "bad_request", ""),
        ([msgpack.packb({"v": 1, "id": "q9", "type": "ping.ok", "body": {}})], "unknown_type", "q9"),
    ],
    ids=["garbage", "version", "body-not-map", "two-frames", "reply-as-request"],
)
def test_request_server_answers_malformed_frames_with_typed_errors(
    ipc: str, frames: list[bytes], code: str, reply_id: str
) -> None:
    """Garbage, wrong versions and bad framing each get an error reply with its code (and id if readable)."""
    with serving(f"ipc://{ipc}/c.sock") as (endpoint, _):
        env = decode(_raw_exchange(endpoint, frames)[-1])
    assert (env.type, env.id, env.body["code"]) == ("error", reply_id, code)


def test_request_server_answers_an_oversized_frame_with_too_large(ipc: str) -> None:
    """A frame over the server's limit gets too_large and the server keeps serving."""
    big = encode(Envelope(type="agent.send", body={"agent_id": "a", "text": "x" * 9000}))
    with serving(f"ipc://{ipc}/c.sock", max_frame=4096) as (endpoint, _):
        env = decode(_raw_exchange(endpoint, [big])[-1])
        assert env.body["code"] == "too_large" and "limit is 4096" in env.body["message"]
        with Client(endpoint, timeout=10) as client:
            assert "pid" in client.request("ping")


def test_request_server_survives_a_crashing_handler_with_an_internal_error(ipc: str) -> None:
    """A handler bug becomes an internal error reply (no traceback on the wire); the next request works."""

    def broken(_: Envelope) -> dict[str, Any]:
        raise KeyError("secret internals")

    handlers = {**HANDLERS, "tree": broken}
    with serving(f"ipc://{ipc}/c.sock", handlers) as (endpoint, _), Client(endpoint, timeout=10) as client:
        with pytest.raises(RemoteError) as info:
            client.request("tree")
        assert info.value.code == "internal" and "KeyError" in str(info.value)
        assert "secret internals" not in str(info.value)
        assert "pid" in client.request("ping")


def test_request_server_refuses_to_send_an_invalid_reply(ipc: str) -> None:
    """A handler returning a body that breaks the reply schema yields internal naming the field."""
    handlers = {"ping": lambda env: {"pid": "nope"}}
    with (
        serving(f"ipc://{ipc}/c.sock", handlers) as (endpoint, _),
        Client(endpoint, timeout=10) as client,
        pytest.raises(RemoteError) as info,
    ):
        client.request("ping")
    assert info.value.code == "internal" and "body.pid: must be an integer" in str(info.value)
    assert "body.time: required field is missing" in str(info.value)


def test_client_events_yields_only_the_requested_kinds(ipc: str) -> None:
    """events(['child.exited']) yields only child.exited: not other kinds, nor kinds sharing its prefix."""
    ctx: zmq.Context[Any] = zmq.Context()
    pub = bind_pub(ctx, f"ipc://{ipc}/ev.sock")
    stop = threading.Event()

    def publish() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            for kind in ("child.started", "child.exited.extra", "child.exited"):
                body = {"kind": kind, "time": time.time(), "id": f"c{n}"}
                pub.send_multipart([kind.encode(), encode(Envelope(type="event", body=body))])
            time.sleep(0.02)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        with Client(f"ipc://{ipc}/none.sock", events=f"ipc://{ipc}/ev.sock") as client:
            seen = []
            for event in client.events(["child.exited"], timeout=10):
                seen.append(event)
                if len(seen) == 5:
                    break
        assert [e["kind"] for e in seen] == ["child.exited"] * 5
    finally:
        stop.set()
        thread.join(timeout=10)
        pub.close()
        ctx.term()


def test_client_close_does_not_hang_with_an_unfinished_events_iterator(ipc: str) -> None:
    """Closing a client while an events() iterator is suspended mid-stream closes its SUB socket too."""
    ctx: zmq.Context[Any] = zmq.Context()
    pub = bind_pub(ctx, f"ipc://{ipc}/ev.sock")
    stop = threading.Event()

    def publish() -> None:
        while not stop.is_set():
            pub.send_multipart([b"x", b"not an envelope"])  # skipped by the iterator, not fatal to it
            body = {"kind": "child.started", "time": time.time()}
            pub.send_multipart([b"child.started", encode(Envelope(type="event", body=body))])
            time.sleep(0.02)

    thread = threading.Thread(target=publish, daemon=True)
    try:
        client = Client(f"ipc://{ipc}/none.sock", events=f"ipc://{ipc}/ev.sock")
        assert list(client.events(timeout=0.05)) == []  # nothing published yet: ends after its idle timeout
        thread.start()
        stream = client.events(timeout=10)
        assert next(stream)["kind"] == "child.started"  # suspended at a yield, its SUB socket open
        done = threading.Event()

        def close() -> None:
            client.close()
            done.set()

        threading.Thread(target=close, daemon=True).start()
        assert done.wait(10), "close() hung on the open SUB socket"
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(timeout=10)
        pub.close()
        ctx.term()


def test_client_events_finds_the_event_endpoint_through_status(ipc: str) -> None:
    """Without an events endpoint, events() asks status for body.events and subscribes there."""
    ctx: zmq.Context[Any] = zmq.Context()
    pub = bind_pub(ctx, f"ipc://{ipc}/ev.sock")
    stop = threading.Event()

    def status(_: Envelope) -> dict[str, Any]:
        return {"name": "t", "version": "1", "pid": 1, "uptime_s": 0.0, "state": "running",
                "events": f"ipc://{ipc}/ev.sock"}  # fmt: skip

    def publish() -> None:
        while not stop.is_set():
            body = {"kind": "config.reloaded", "time": time.time()}
            pub.send_multipart([b"config.reloaded", encode(Envelope(type="event", body=body))])
            time.sleep(0.02)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        with serving(f"ipc://{ipc}/c.sock", {"status": status}) as (endpoint, _), Client(endpoint) as client:
            event = next(client.events(timeout=10))
        assert event["kind"] == "config.reloaded"
    finally:
        stop.set()
        thread.join(timeout=10)
        pub.close()
        ctx.term()
