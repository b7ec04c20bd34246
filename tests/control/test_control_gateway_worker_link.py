"""The gateway's side of the worker link under attack, through a real gateway's sockets and loop turns in
this process: a worker's malformed batch (truncated, trailing bytes, not an array of envelopes, empty, or a
message of several frames) is one logged error naming that worker; the gateway keeps serving, the other
worker's answers in the same turn reach their clients, and the same worker's next good batch is handled."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest
import structlog
import zmq
from control_gateway_kit import dealer, from_gateway, in_process_gateway

from openfang.control.gateway import Gateway
from openfang.protocol.envelope import Envelope, decode, encode
from openfang.protocol.linkframe import pack

pytestmark = pytest.mark.integration


class _Two:
    """A gateway with an uplink (so its real ``turn`` runs), a client, and workers w-0 and w-1 that each
    host one service (svc-0, svc-1)."""

    def __init__(self, tmp: Path) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.gw: Gateway = in_process_gateway(tmp, uplink=self.ours)
        self.poller = self.gw.poller()
        self.client = dealer(self.gw, self.gw.control.endpoint, b"client")
        self.workers = {w: dealer(self.gw, self.gw.control.workers, w.encode()) for w in ("w-0", "w-1")}
        for n, (wid, sock) in enumerate(self.workers.items()):
            hello = {"worker": wid, "pid": 5000 + n, "cpu": n, "agent_ids": []}
            sock.send(pack([encode(Envelope(type="worker.hello", body=hello))]))
        self.turns_until(lambda: set(self.gw.workers) == {"w-0", "w-1"}, "both hellos handled")
        self.gw.agents.add("a-0", "w-0", service="svc-0")
        self.gw.agents.add("a-1", "w-1", service="svc-1")

    def turns_until(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 5
        while not done():
            assert time.monotonic() < deadline, f"not within 5 s: {what}"
            self.gw.turn(self.poller, timeout_ms=20)

    def ask(self, service: str, request_id: str) -> Envelope:
        """The client's request to ``service``; what its worker receives."""
        self.client.send(
            encode(Envelope(type="agent.send", body={"service": service, "text": "hi"}, id=request_id))
        )
        worker = self.workers["w-" + service[-1]]
        self.turns_until(lambda: bool(worker.poll(0)), f"{request_id} reaches its worker")
        (asked,) = from_gateway(worker)
        return asked

    def close(self) -> None:
        self.client.close(0)
        for sock in self.workers.values():
            sock.close(0)
        self.gw.close()
        self.ours.close()
        self.theirs.close()


@pytest.fixture
def two(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Two]:
    monkeypatch.setenv("OPENFANG_DATA_DIR", str(tmp_path))
    made = _Two(tmp_path)
    yield made
    made.close()


def _answer(asked: Envelope, text: str) -> bytes:
    return encode(asked.reply({"reply": text, "agent_id": "a", "usage": {}}))


def _send_frames(sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
    sock.send_multipart(frames)


_MALFORMED: dict[str, tuple[Callable[[bytes], list[bytes]], str]] = {
    # (the worker's good answer's bytes -> the frames it sends instead, the problem the log names)
    "truncated": (lambda ok: [pack([ok])[:-4]], "not a msgpack array of envelopes"),
    "trailing": (lambda ok: [pack([ok]) + b"\x00"], "1 trailing bytes"),
    "bare-envelope": (lambda ok: [ok], "must be a msgpack array of bin items, got dict"),
    "empty": (lambda ok: [msgpack.packb([])], "empty"),
    "not-bin": (lambda ok: [msgpack.packb([ok, "text"])], "item 1 must be bin"),
    "garbage": (lambda ok: [b"\xc1\xc1\xc1"], "not a msgpack array of envelopes"),
    "two-frames": (lambda ok: [pack([ok]), pack([ok])], "2 frames, not one batch"),
    "empty-frames": (lambda ok: [b"", b"", b""], "3 frames, not one batch"),
}


@pytest.mark.parametrize("kind", sorted(_MALFORMED))
def test_a_workers_malformed_batch_is_logged_against_it_and_costs_no_one_else(two: _Two, kind: str) -> None:
    """w-0's malformed batch, arriving with w-1's good answer: one error naming w-0 and the problem, w-1's
    answer reaches its client, nothing of the bad batch is handled; w-0's next good batch is handled."""
    mangle, problem = _MALFORMED[kind]
    asked_0 = two.ask("svc-0", "r-0")
    asked_1 = two.ask("svc-1", "r-1")
    _send_frames(two.workers["w-0"], mangle(_answer(asked_0, "from w-0")))
    two.workers["w-1"].send(pack([_answer(asked_1, "from w-1")]))
    with structlog.testing.capture_logs() as logs:
        two.turns_until(lambda: bool(two.client.poll(0)), "w-1's answer reaches the client")
        two.gw.turn(two.poller, timeout_ms=50)  # whatever else came is handled too
    got = decode(two.client.recv())
    assert (got.id, got.body["reply"]) == ("r-1", "from w-1")
    assert not two.client.poll(100), "nothing of w-0's malformed batch was answered"
    errors = [e for e in logs if e["event"] == "worker_batch_malformed"]
    assert len(errors) == 1, logs
    assert errors[0]["worker"] == "w-0" and problem in errors[0]["error"], errors[0]
    assert errors[0]["log_level"] == "error"
    assert "r-0" in {w.request.id for w in two.gw.waiting.values()}, "r-0 still waits (for its deadline)"
    two.workers["w-0"].send(pack([_answer(asked_0, "again")]))
    two.turns_until(lambda: bool(two.client.poll(0)), "w-0's good batch is handled")
    got = decode(two.client.recv())
    assert (got.id, got.body["reply"]) == ("r-0", "again")


def test_a_workers_batch_is_handled_in_order_across_answers_and_events(two: _Two) -> None:
    """One batch of two answers (to different clients' requests) reaches the clients in the batch's order."""
    first = two.ask("svc-0", "r-a")
    second = two.ask("svc-0", "r-b")
    two.workers["w-0"].send(pack([_answer(second, "second"), _answer(first, "first")]))
    two.turns_until(lambda: bool(two.client.poll(0)), "the answers reach the client")
    time.sleep(0.05)
    ids = [decode(two.client.recv()).id for _ in range(2)]
    assert ids == ["r-b", "r-a"]
