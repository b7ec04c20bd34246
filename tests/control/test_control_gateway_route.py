"""The door's route of an admitted request: the queue limit for every queued type (agent.send to a service,
its hot path, included), unqueued types past it, the handler of each other type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import zmq
from control_gateway_kit import dealer, from_gateway, one_from_gateway

from openfang.control.config import ControlConfig
from openfang.control.gateway import Gateway, _receive
from openfang.control.guard import receive_client
from openfang.protocol import _examples
from openfang.protocol.envelope import Envelope, decode, encode, encode_as
from openfang.protocol.linkframe import pack, unpack
from openfang.supervisor.child import ChildContext


def _gateway(tmp: Path, queue_limit: int) -> Gateway:
    control = ControlConfig(
        endpoint=f"ipc://{tmp}/control.sock",
        events=f"ipc://{tmp}/events.sock",
        workers=f"ipc://{tmp}/workers.sock",
        queue_limit=queue_limit,
    )
    args: dict[str, Any] = {"control": control, "registry": str(tmp / "agents.db")}
    return Gateway(ChildContext(id="control", path="root/control", args=args), args)


def _hello(gw: Gateway, sock: zmq.Socket[bytes], name: str, pid: int) -> None:
    """Worker ``name``'s hello (no agents) from its DEALER ``sock``, taken in by the gateway."""
    hello = {"worker": name, "pid": pid, "cpu": 0, "agent_ids": []}
    sock.send(pack([encode(Envelope(type="worker.hello", body=hello))]))
    assert gw.worker_sock.poll(5000)
    gw._drain(gw.worker_sock, gw._on_worker_frames, receive=_receive)


def test_gateway_route_refuses_busy_past_the_queue_limit_on_every_path(tmp_path: Path) -> None:
    """With two requests in flight (the limit) an agent.send to a service, one by agent id and a memory
    read are each answered busy, a ping is still answered, and nothing more reaches the worker."""
    gw = _gateway(tmp_path, queue_limit=2)
    worker = dealer(gw, gw.control.workers, b"w-0")
    client = dealer(gw, gw.control.endpoint, b"client")
    try:
        _hello(gw, worker, "w-0", 4001)
        gw.agents.add("a-1", "w-0", service="svc")
        requests = [
            Envelope(type="agent.send", body={"service": "svc", "text": "one"}, id="r1"),
            Envelope(type="agent.send", body={"service": "svc", "text": "two"}, id="r2"),
            Envelope(type="agent.send", body={"service": "svc", "text": "three"}, id="r3"),
            Envelope(type="agent.send", body={"agent_id": "a-1", "text": "four"}, id="r4"),
            Envelope(type="memory.search", body=_examples.REQUESTS["memory.search"], id="r5"),
            Envelope(type="ping", body={}, id="r6"),
        ]
        for env in requests:
            client.send(encode(env))
        got: dict[str, Envelope] = {}
        while len(got) < 4:
            assert gw.clients.poll(5000) or client.poll(0)
            gw._drain(gw.clients, gw._on_client_frames, receive=receive_client)
            gw._flush()
            while client.poll(100):
                reply = decode(client.recv())
                got[reply.id] = reply
        assert len(gw.waiting) == 2
        for rid in ("r3", "r4", "r5"):
            assert got[rid].type == "error" and got[rid].body["code"] == "busy", got[rid]
            assert got[rid].body["message"] == "2 requests in flight, the limit is 2; retry later"
        assert got["r6"].type == "ping.ok"
        sent = from_gateway(worker)  # the first two only (one batch, or two if they came in two drains)
        if len(sent) == 1:
            sent += from_gateway(worker)
        assert [env.body["text"] for env in sent] == ["one", "two"]
        assert not worker.poll(50)
    finally:
        worker.close(0)
        client.close(0)
        gw.close()


def test_gateway_route_sends_a_service_message_to_the_least_busy_host(tmp_path: Path) -> None:
    """An agent.send to a service goes to the hosting worker with fewer requests in flight."""
    gw = _gateway(tmp_path, queue_limit=100)
    w0 = dealer(gw, gw.control.workers, b"w-0")
    w1 = dealer(gw, gw.control.workers, b"w-1")
    client = dealer(gw, gw.control.endpoint, b"client")
    try:
        for sock, name, pid in ((w0, "w-0", 4001), (w1, "w-1", 4002)):
            _hello(gw, sock, name, pid)
        gw.agents.add("a-0", "w-0", service="svc")
        gw.agents.add("a-1", "w-1", service="svc")
        gw.workers["w-0"].in_flight = 3
        client.send(encode(Envelope(type="agent.send", body={"service": "svc", "text": "hi"}, id="r1")))
        assert gw.clients.poll(5000)
        gw._drain(gw.clients, gw._on_client_frames, receive=receive_client)
        gw._flush()
        assert w1.poll(5000) and not w0.poll(50)
        assert one_from_gateway(w1).body == {"service": "svc", "text": "hi"}
        assert gw.workers["w-1"].in_flight == 1
    finally:
        for sock in (w0, w1, client):
            sock.close(0)
        gw.close()


def test_gateway_route_relays_a_request_to_its_worker_under_its_key_whatever_its_layout(
    tmp_path: Path,
) -> None:
    """A request laid out as encode writes it reaches the worker as encode_as(request, key) byte for byte;
    one in another layout (id first, a long id) as the same value under its key; each key is waited on."""
    gw = _gateway(tmp_path, queue_limit=100)
    worker = dealer(gw, gw.control.workers, b"w-0")
    client = dealer(gw, gw.control.endpoint, b"client")
    try:
        _hello(gw, worker, "w-0", 4001)
        gw.agents.add("a-1", "w-0", service="svc")
        plain = Envelope(type="agent.send", body={"service": "svc", "text": "plain"}, id="r-plain")
        other = {
            "id": "r-" + "o" * 60,
            "body": {"text": "other", "service": "svc"},
            "type": "agent.send",
            "v": 1,
        }
        client.send(encode(plain))
        client.send(msgpack.packb(other))
        while len(gw.waiting) < 2:
            assert gw.clients.poll(5000)
            gw._drain(gw.clients, gw._on_client_frames, receive=receive_client)
        gw._flush()
        assert worker.poll(5000)
        frames = unpack(worker.recv())
        sent = [decode(frame) for frame in frames]
        assert [env.id for env in sent] == list(gw.waiting)
        assert [gw.waiting[env.id].request.id for env in sent] == ["r-plain", other["id"]]
        assert frames[0] == encode_as(plain, sent[0].id)
        assert (sent[1].type, sent[1].body) == ("agent.send", other["body"])
    finally:
        worker.close(0)
        client.close(0)
        gw.close()


def test_gateway_route_queues_agent_send_as_to_worker_does(tmp_path: Path) -> None:
    """agent.send to a service (_route's inline steps) leaves the same state as _to_worker with
    ``on_fail=_refused_routed`` and ``received``: the same worker outbox entry (the frames under the next
    key, the refusal hook), the same waiting entry field for field (its deadline from the same clock), the
    same in-flight count and earliest deadline."""
    from openfang.control import gateway as gateway_module

    gw = _gateway(tmp_path, queue_limit=100)
    worker = dealer(gw, gw.control.workers, b"w-0")
    try:
        _hello(gw, worker, "w-0", 4001)
        gw.agents.add("a-1", "w-0", service="svc")
        env = Envelope(type="agent.send", body={"service": "svc", "text": "hi"}, id="r-1")
        payload = encode(env)
        states = []
        clock = iter([100.0, 100.0])
        real = gateway_module.time.monotonic
        gateway_module.time.monotonic = lambda: next(clock)  # type: ignore[assignment]
        try:
            for route in (
                lambda: gw._route(b"client", True, env, payload),
                lambda: gw._to_worker(
                    b"client", True, env, "w-0", on_fail=gw._refused_routed, received=payload
                ),
            ):
                gw._key_counter = iter(range(7, 100))  # type: ignore[assignment]
                gw._earliest = float("inf")
                gw.workers["w-0"].in_flight = 0
                route()
                (key,) = list(gw.waiting)
                waiting = gw.waiting.pop(key)
                fields = [getattr(waiting, f) for f in waiting.__slots__]
                states.append((gw._worker_out, key, fields, gw.workers["w-0"].in_flight, gw._earliest))
                gw._worker_out = []
        finally:
            gateway_module.time.monotonic = real  # type: ignore[assignment]
        assert states[0] == states[1]
        assert states[0][2][3] == 100.0 + gw.timeout_s and states[0][3] == 1
    finally:
        worker.close(0)
        gw.close()


def test_gateway_relays_a_worker_answer_in_each_clients_framing(tmp_path: Path) -> None:
    """A worker's answer to an agent.send reaches a REQ client with its empty delimiter and a DEALER client
    without one, each under its own request id, the answer's body as the worker sent it."""
    import zmq

    gw = _gateway(tmp_path, queue_limit=100)
    worker = dealer(gw, gw.control.workers, b"w-0")
    plain = dealer(gw, gw.control.endpoint, b"plain")
    req: zmq.Socket[bytes] = gw.zctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(gw.control.endpoint)
    try:
        _hello(gw, worker, "w-0", 4001)
        gw.agents.add("a-1", "w-0", service="svc")
        for sock, rid in ((req, "r-req"), (plain, "r-plain")):
            sock.send(encode(Envelope(type="agent.send", body={"service": "svc", "text": rid}, id=rid)))
        while len(gw.waiting) < 2:
            assert gw.clients.poll(5000)
            gw._drain(gw.clients, gw._on_client_frames, receive=receive_client)
        gw._flush()
        answers = []
        for env in from_gateway(worker):
            body = {**_examples.REPLIES["agent.send"], "reply": env.body["text"].upper()}
            answers.append(encode(Envelope(type="agent.send.ok", body=body, id=env.id)))
        worker.send(pack(answers))
        while gw.waiting:
            assert gw.worker_sock.poll(5000)
            gw._drain(gw.worker_sock, gw._on_worker_frames, receive=_receive)
        gw._flush()
        assert req.poll(5000) and plain.poll(5000)
        got_req = decode(req.recv())  # a REQ socket strips the delimiter: it would refuse a reply without
        raw_plain = plain.recv_multipart()
        assert len(raw_plain) == 1  # no delimiter for a DEALER
        got_plain = decode(raw_plain[0])
        assert (got_req.id, got_req.type, got_req.body["reply"]) == ("r-req", "agent.send.ok", "R-REQ")
        assert (got_plain.id, got_plain.body["reply"]) == ("r-plain", "R-PLAIN")
    finally:
        for sock in (worker, plain, req):
            sock.close(0)
        gw.close()
