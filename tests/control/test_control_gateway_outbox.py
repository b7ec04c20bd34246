"""The gateway's outboxes and one-pass request checks, through a real gateway's sockets in this process:
requests routed to a worker and replies to clients leave at the end of the batch, in order, and a request
that cannot be sent is answered exactly as when it was sent at once; a malformed request gets the texts the
full schema checker writes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from control_gateway_kit import dealer, in_process_gateway

from openfang.control.gateway import _Worker
from openfang.control.guard import receive_client
from openfang.protocol import messages
from openfang.protocol.envelope import Envelope, decode, encode
from openfang.protocol.linkframe import pack, unpack

pytestmark = pytest.mark.integration


class _Door:
    """A gateway in this process, a client DEALER on its control socket and a DEALER for worker w-0."""

    def __init__(self, tmp: Path) -> None:
        self.gw = in_process_gateway(tmp)
        self.client = dealer(self.gw, self.gw.control.endpoint, b"client-1")
        self.worker = dealer(self.gw, self.gw.control.workers, b"w-0")
        hello = {"worker": "w-0", "pid": 4242, "cpu": 0, "agent_ids": []}
        self.worker.send(pack([encode(Envelope(type="worker.hello", body=hello))]))
        assert self.gw.worker_sock.poll(5000)
        self.gw._drain(self.gw.worker_sock, self.gw._on_worker_frames)
        assert "w-0" in self.gw.workers

    def ask(self, *bodies: Any, type_: str = "agent.send") -> list[str]:
        """Send requests (a dict is the body of a valid envelope, bytes a raw frame) and let the gateway
        handle them as one batch, as its loop does; their ids."""
        ids = []
        for body in bodies:
            if isinstance(body, bytes):
                self.client.send(body)
                continue
            env = Envelope(type=type_, body=body)
            ids.append(env.id)
            self.client.send(encode(env))
        handled = 0
        while handled < len(bodies):
            assert self.gw.clients.poll(5000), "the gateway got nothing"
            before = len(self.gw.waiting) + len(self.gw._outbox)
            self.gw._drain(self.gw.clients, self.gw._on_client_frames, receive=receive_client)
            handled += max(1, len(self.gw.waiting) + len(self.gw._outbox) - before)
        return ids

    def answers(self, sock: zmq.Socket[bytes], count: int) -> list[Envelope]:
        """The next ``count`` envelopes ``sock`` receives (the worker's come in batches, a client's one a
        message)."""
        out: list[Envelope] = []
        while len(out) < count:
            assert sock.poll(5000), f"only {len(out)} of {count} messages arrived"
            raw = sock.recv()
            out.extend(decode(p) for p in (unpack(raw) if sock is self.worker else [raw]))
        assert len(out) == count, f"{len(out)} envelopes arrived, {count} expected"
        return out

    def close(self) -> None:
        self.client.close(0)
        self.worker.close(0)
        self.gw.close()


@pytest.fixture
def door(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Door]:
    monkeypatch.setenv("OPENFANG_DATA_DIR", str(tmp_path))
    made = _Door(tmp_path)
    yield made
    made.close()


def test_routed_requests_wait_for_the_end_of_the_batch_then_leave_in_order(door: _Door) -> None:
    """Three agent.send to a service reach the worker only at the flush, in the order they came."""
    door.gw.agents.add("a-1", "w-0", service="svc")
    door.ask(*({"service": "svc", "text": f"t{i}"} for i in range(3)))
    assert not door.worker.poll(100), "nothing leaves before the batch is done"
    door.gw._flush()
    got = door.answers(door.worker, 3)
    assert [e.body["text"] for e in got] == ["t0", "t1", "t2"]
    assert door.gw.workers["w-0"].in_flight == 3


def test_a_message_sent_at_once_leaves_after_the_queued_requests(door: _Door) -> None:
    """Any message to a worker sent at once (a reply to an agent, a resync) first sends what is queued."""
    door.gw.agents.add("a-1", "w-0", service="svc")
    door.ask({"service": "svc", "text": "first"})
    door.gw._send_worker([b"w-0", encode(Envelope(type="worker.resync", body={}))], peer="worker w-0")
    got = door.answers(door.worker, 2)
    assert [e.type for e in got] == ["agent.send", "worker.resync"]


def test_replies_to_clients_leave_at_the_flush_in_the_order_they_were_made(door: _Door) -> None:
    """The worker answers three requests; the client gets the three answers, in order, after the flush."""
    door.gw.agents.add("a-1", "w-0", service="svc")
    ids = door.ask(*({"service": "svc", "text": f"t{i}"} for i in range(3)))
    door.gw._flush()
    for env in door.answers(door.worker, 3):
        reply = {"reply": env.body["text"].upper(), "agent_id": "a-1", "usage": {}}
        door.worker.send(pack([encode(Envelope(type="agent.send.ok", body=reply, id=env.id))]))
    while door.gw.waiting:
        assert door.gw.worker_sock.poll(5000), "the answers did not reach the gateway"
        door.gw._drain(door.gw.worker_sock, door.gw._on_worker_frames)
    door.gw._flush()
    got = door.answers(door.client, 3)
    assert [(e.id, e.body["reply"]) for e in got] == list(zip(ids, ["T0", "T1", "T2"], strict=True))
    assert door.gw.workers["w-0"].in_flight == 0 and not door.gw.waiting


def test_a_routed_request_that_cannot_be_sent_is_answered_as_before(door: _Door) -> None:
    """A service hosted by a worker with no connection: not_found naming it, counted as a refusal, and no
    request left waiting or counted in flight (what the immediate send answered)."""
    door.gw.agents.add("a-9", "w-9", service="lost")
    door.gw.workers["w-9"] = _Worker("w-9")
    (request_id,) = door.ask({"service": "lost", "text": "hi"})
    door.gw._flush()
    (answer,) = door.answers(door.client, 1)
    assert answer.id == request_id and answer.is_error
    assert answer.body["code"] == "not_found"
    assert answer.body["message"] == "worker w-9 (routing id b'w-9') is not connected; nothing was sent"
    assert door.gw.stats.to_wire()["refusals"] == {"not_found": 1}
    assert not door.gw.waiting and door.gw.workers["w-9"].in_flight == 0


@pytest.mark.parametrize(
    "body",
    [
        {"text": "x"},
        {"service": "svc", "agent_id": "a-1", "text": "x"},
        {"service": "svc"},
        {"service": "", "text": 5},
        {"service": "svc", "text": "x", "stream": "yes", "colour": 1},
        {"service": "s" * 129, "text": "t" * 65537, "session": ""},
        {"service": None, "agent_id": None, "text": None},
    ],
)
def test_a_malformed_request_gets_the_full_checkers_texts(door: _Door, body: dict[str, Any]) -> None:
    """The one-pass check at the door refuses exactly the bodies the full checker refuses, with its texts."""
    compiled = messages.body_schema("agent.send")
    assert compiled is not None
    problems: list[str] = []
    compiled.check(body, "body", problems)
    assert problems, "a malformed body for this test"
    (request_id,) = door.ask(body)
    door.gw._flush()
    (answer,) = door.answers(door.client, 1)
    assert answer.id == request_id and answer.body["code"] == "bad_request"
    assert answer.body["message"] == "; ".join(problems)


def test_a_frame_that_is_not_an_envelope_is_refused_as_before(door: _Door) -> None:
    """Garbage and an envelope with a wrong field type keep their bad_request texts."""
    door.ask(b"\xc1", msgpack.packb({"v": 1, "id": "r-1", "type": "agent.send", "body": []}))
    door.gw._flush()
    first, second = door.answers(door.client, 2)
    assert first.id == "" and "not valid msgpack" in first.body["message"]
    assert second.id == "r-1" and second.body["message"] == "body: must be a map, got list"


def test_requests_queued_for_one_worker_leave_as_one_message_of_one_batch(door: _Door) -> None:
    """Three routed requests reach their worker as one ZeroMQ message of one batch frame, in order."""
    door.gw.agents.add("a-1", "w-0", service="svc")
    door.ask(*({"service": "svc", "text": f"t{i}"} for i in range(3)))
    door.gw._flush()
    assert door.worker.poll(5000)
    frames = door.worker.recv_multipart()
    assert len(frames) == 1, "one batch frame"
    assert [decode(f).body["text"] for f in unpack(frames[0])] == ["t0", "t1", "t2"]
    assert not door.worker.poll(100), "one message held them all"


def test_a_batch_for_a_lost_worker_fails_each_of_its_requests(door: _Door) -> None:
    """Two requests for a worker with no connection: two not_found answers, nothing left waiting; a request
    for a connected worker in the same flush still leaves."""
    door.gw.agents.add("a-9", "w-9", service="lost")
    door.gw.agents.add("a-1", "w-0", service="svc")
    door.gw.workers["w-9"] = _Worker("w-9")
    lost = door.ask({"service": "lost", "text": "a"}, {"service": "lost", "text": "b"})
    door.ask({"service": "svc", "text": "c"})
    door.gw._flush()
    answers = door.answers(door.client, 2)
    assert sorted(a.id for a in answers) == sorted(lost)
    assert all(a.body["code"] == "not_found" for a in answers)
    (delivered,) = door.answers(door.worker, 1)
    assert delivered.body["text"] == "c"
    assert door.gw.workers["w-9"].in_flight == 0 and len(door.gw.waiting) == 1


def test_a_bad_envelope_in_a_workers_batch_costs_only_itself(door: _Door) -> None:
    """A worker's batch of answers with garbage in the middle: the two good answers reach their clients."""
    door.gw.agents.add("a-1", "w-0", service="svc")
    ids = door.ask(*({"service": "svc", "text": f"t{i}"} for i in range(2)))
    door.gw._flush()
    asked = door.answers(door.worker, 2)
    replies = [
        encode(Envelope(type="agent.send.ok", body={"reply": "R", "agent_id": "a-1", "usage": {}}, id=e.id))
        for e in asked
    ]
    door.worker.send(pack([replies[0], b"\xc1 not msgpack", replies[1]]))
    assert door.gw.worker_sock.poll(5000)
    door.gw._drain(door.gw.worker_sock, door.gw._on_worker_frames)
    door.gw._flush()
    assert sorted(a.id for a in door.answers(door.client, 2)) == sorted(ids)
    assert not door.gw.waiting


def test_one_drain_reads_every_request_that_waits_and_stops_after_a_lone_one(door: _Door) -> None:
    """Five requests already at the socket are all handled by one drain (the check after the first finds
    more); a lone request is handled and the drain returns with nothing left to read."""
    door.gw.agents.add("a-1", "w-0", service="svc")
    for i in range(5):
        door.client.send(encode(Envelope(type="agent.send", body={"service": "svc", "text": f"t{i}"})))
    assert door.gw.clients.poll(5000), "the gateway got nothing"
    time.sleep(0.2)  # all five are at the gateway's socket
    door.gw._drain(door.gw.clients, door.gw._on_client_frames, receive=receive_client)
    assert len(door.gw.waiting) == 5, "one drain handles every request that waits"
    door.client.send(encode(Envelope(type="agent.send", body={"service": "svc", "text": "t5"})))
    assert door.gw.clients.poll(5000)
    door.gw._drain(door.gw.clients, door.gw._on_client_frames, receive=receive_client)
    assert len(door.gw.waiting) == 6 and not door.gw.clients.poll(0)
    door.gw._flush()
    assert [e.body["text"] for e in door.answers(door.worker, 6)] == [f"t{i}" for i in range(6)]


def test_a_relayed_answer_is_the_answer_re_addressed_byte_for_byte(door: _Door) -> None:
    """A worker's answer to a routed request reaches a DEALER client and a REQ-style (delimited) client as
    exactly the bytes of that answer with the client's request id; an error answer is counted by its code
    and both are timed under agent.send."""
    door.gw.agents.add("a-1", "w-0", service="svc")
    req_client = dealer(door.gw, door.gw.control.endpoint, b"req-client")
    try:
        ids = door.ask({"service": "svc", "text": "one"})
        env = Envelope(type="agent.send", body={"service": "svc", "text": "two"})
        req_client.send_multipart([b"", encode(env)])
        assert door.gw.clients.poll(5000)
        door.gw._drain(door.gw.clients, door.gw._on_client_frames, receive=receive_client)
        door.gw._flush()
        asked = door.answers(door.worker, 2)
        ok = {"reply": "ONE", "agent_id": "a-1", "usage": {"prompt_tokens": 1}}
        err = {"code": "sandbox_error", "message": "trapped"}
        door.worker.send(
            pack(
                [
                    encode(Envelope(type="agent.send.ok", body=ok, id=asked[0].id)),
                    encode(Envelope(type="error", body=err, id=asked[1].id)),
                ]
            )
        )
        while door.gw.waiting:
            assert door.gw.worker_sock.poll(5000)
            door.gw._drain(door.gw.worker_sock, door.gw._on_worker_frames)
        door.gw._flush()
        assert door.client.poll(5000) and req_client.poll(5000)
        assert door.client.recv() == encode(Envelope(type="agent.send.ok", body=ok, id=ids[0]))
        assert req_client.recv_multipart() == [b"", encode(Envelope(type="error", body=err, id=env.id))]
    finally:
        req_client.close(0)
    stats = door.gw.stats.to_wire()
    assert stats["errors"] == {"sandbox_error": 1}
    timed = {r["type"]: r["seconds"]["count"] for r in stats["requests"]}
    assert timed["agent.send"] == 2


def test_relayed_answers_leave_once_the_outbox_holds_its_maximum(door: _Door) -> None:
    """Answers relayed while a worker's batch is handled wait in the outbox until it holds OUTBOX_MAX: those
    leave then, in order, the rest at the flush."""
    from openfang.control.gateway import OUTBOX_MAX

    door.gw.agents.add("a-1", "w-0", service="svc")
    total = OUTBOX_MAX + 5
    ids = door.ask(*({"service": "svc", "text": f"m{i}"} for i in range(total)))
    door.gw._flush()
    asked = door.answers(door.worker, total)
    usage = {"prompt_tokens": 1}
    door.worker.send(
        pack(
            [
                encode(
                    Envelope(
                        type="agent.send.ok",
                        body={"reply": env.body["text"], "agent_id": "a-1", "usage": usage},
                        id=env.id,
                    )
                )
                for env in asked
            ]
        )
    )
    while door.gw.waiting:
        assert door.gw.worker_sock.poll(5000)
        door.gw._drain(door.gw.worker_sock, door.gw._on_worker_frames)
    assert len(door.gw._outbox) == total - OUTBOX_MAX  # the first OUTBOX_MAX have left
    first = door.answers(door.client, OUTBOX_MAX)
    assert not door.client.poll(50)
    door.gw._flush()
    rest = door.answers(door.client, total - OUTBOX_MAX)
    assert [env.id for env in first + rest] == ids
    assert [env.body["reply"] for env in first + rest] == [f"m{i}" for i in range(total)]
