"""The system benchmark's pipelined client: the same request bytes on a real DEALER, replies dispatched by
id, and the routing task's reply check, which passes a correct reply without building a message and refuses
every wrong one."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # perf/ is a repo folder, not installed

from perf import bench_system as bs
from perf import workloads as wl


def test_pipe_sends_the_envelopes_packb_would_and_dispatches_replies_by_id(tmp_path: Path) -> None:
    """Requests leave one per message, in order, as msgpack.packb of the envelope; each reply reaches the
    callback of its id (an unknown id is ignored); requests that callbacks make leave with the next flush."""
    zctx = zmq.Context()
    router = zctx.socket(zmq.ROUTER)
    endpoint = f"ipc://{tmp_path}/bench.sock"
    router.bind(endpoint)
    pipe = bs.Pipe(endpoint)
    got: list[tuple[str, dict[str, Any]]] = []
    try:
        body = {"service": "router", "text": "m1: hello"}
        pipe.send("agent.send", body, lambda t, b: got.append((t, b)))
        sent_at_once: list[bool] = []

        def on_ping(_t: str, _b: dict[str, Any]) -> None:
            pipe.send("ping", {"n": 2}, lambda t2, b2: got.append((t2, b2)))
            sent_at_once.append(bool(router.poll(50)))  # made by a callback: queued, not sent from it

        pipe.send("ping", {}, on_ping)
        pipe.flush()
        frames = [router.recv_multipart() for _ in range(2)]
        assert [f[1] for f in frames] == [
            msgpack.packb({"v": 1, "id": "r1", "type": "agent.send", "body": body}),
            msgpack.packb({"v": 1, "id": "r2", "type": "ping", "body": {}}),
        ]
        peer = frames[0][0]
        for rid, type_ in (("nobody", "x.ok"), ("r2", "ping.ok"), ("r1", "agent.send.ok")):
            router.send_multipart(
                [peer, msgpack.packb({"v": 1, "id": rid, "type": type_, "body": {"k": rid}})]
            )
        for _ in range(50):  # at most 5 s
            if list(pipe.pending) == ["r3"]:
                break
            pipe.pump()
        assert got == [("agent.send.ok", {"k": "r1"})]
        # Queued in the callback; a later pump's flush or this one sends it (the replies may come in one
        # pump or two, as the machine's load has it).
        assert sent_at_once == [False]
        pipe.flush()
        assert router.poll(2000)
        third = router.recv_multipart()
        assert third[1] == msgpack.packb({"v": 1, "id": "r3", "type": "ping", "body": {"n": 2}})
    finally:
        pipe.close()
        router.close(0)
        zctx.term()


class _Recorder:
    """Stands in for a Pipe: keeps each request and its callback."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], Any]] = []

    def send(self, type_: str, body: dict[str, Any], on_reply: Any) -> None:
        self.sent.append((type_, body, on_reply))


def _task(i: int = 3) -> tuple[_Recorder, list[int], str, str]:
    msgs = wl.routing_messages(8)
    rec = _Recorder()
    done: list[int] = []
    bs.routing_start(rec, msgs)(i, lambda: done.append(i))  # type: ignore[arg-type]
    return rec, done, msgs[i], wl.classify(msgs[i])


def test_routing_task_sends_to_the_router_then_to_the_class_it_named() -> None:
    """A correct router reply sends the text to its class; a correct answer ends the task."""
    rec, done, msg, route = _task()
    assert rec.sent[0][:2] == ("agent.send", {"service": "router", "text": msg})
    rec.sent[0][2]("agent.send.ok", {"reply": route, "agent_id": "a"})
    assert rec.sent[1][:2] == ("agent.send", {"service": route, "text": msg})
    rec.sent[1][2]("agent.send.ok", {"reply": wl.agent_reply(route, msg), "agent_id": "b"})
    assert done == [3]


@pytest.mark.parametrize(
    ("step", "type_", "body"),
    [
        (0, "agent.send.ok", {"reply": "nonsense"}),
        (0, "agent.send.ok", {}),
        (0, "error", {"code": "busy", "message": "later"}),
        (0, "agent.info.ok", "ROUTE"),
        (1, "agent.send.ok", {"reply": "billing: handled 0000"}),
        (1, "error", {"code": "timeout", "message": "slow"}),
        (1, "agent.send.chunk", "ANSWER"),
    ],
)
def test_routing_task_refuses_every_wrong_reply(step: int, type_: str, body: Any) -> None:
    """A wrong text, a missing one, an error or another type than agent.send.ok fails the benchmark
    (BenchFailed naming the task), at the router's step and at the class agent's."""
    rec, done, msg, route = _task()
    if body == "ROUTE":
        body = {"reply": route}
    if body == "ANSWER":
        body = {"reply": wl.agent_reply(route, msg)}
    if step == 1:
        rec.sent[0][2]("agent.send.ok", {"reply": route})
    with pytest.raises(bs.BenchFailed, match="task 3"):
        rec.sent[step][2](type_, body)
    assert done == []
