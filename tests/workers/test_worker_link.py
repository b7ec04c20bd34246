"""The worker's side of the gateway link, with a real Worker in this process and a ROUTER standing in for
the gateway: a loop turn's messages leave as one batch frame (protocol/linkframe.py), in order, and a batch
from the gateway is read as its envelopes in order; a malformed batch is logged and dropped."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
import zmq

from openfang.protocol.envelope import Envelope, decode, encode
from openfang.protocol.linkframe import pack, unpack
from openfang.supervisor.child import ChildContext
from openfang.workers import worker as worker_mod
from openfang.workers.worker import Worker

pytestmark = pytest.mark.integration


class _Link:
    """A ROUTER in the gateway's place and a Worker ``w-0`` connected to it (its loop driven by hand)."""

    def __init__(self, tmp: Path) -> None:
        self.zctx = zmq.Context()
        self.gateway = self.zctx.socket(zmq.ROUTER)
        self.gateway.setsockopt(zmq.LINGER, 0)
        endpoint = f"ipc://{tmp}/workers.sock"
        self.gateway.bind(endpoint)
        self.worker = Worker(ChildContext(id="w-0", path="root/workers/w-0", args={"gateway": endpoint}))
        self.worker._hello()
        self.worker._flush()
        hello = self.receive()
        assert [decode(f).type for f in hello] == ["worker.hello"]

    def receive(self) -> list[bytes]:
        """The envelopes of the next message the worker sent (one batch frame after the routing id)."""
        assert self.gateway.poll(5000), "the worker sent nothing"
        frames = self.gateway.recv_multipart()
        assert frames[0] == b"w-0" and len(frames) == 2, frames
        return unpack(frames[1])

    def to_worker(self, *envs: Envelope) -> None:
        """One message to the worker, its envelopes in one batch; the worker reads what arrived."""
        self.gateway.send_multipart([b"w-0", pack([encode(e) for e in envs])])
        assert self.worker.sock.poll(5000), "nothing reached the worker"
        self.worker._drain()

    def close(self) -> None:
        self.worker.close()
        self.gateway.close(0)
        self.zctx.term()


@pytest.fixture
def link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Link]:
    monkeypatch.setenv("OPENFANG_DATA_DIR", str(tmp_path))
    made = _Link(tmp_path)
    yield made
    made.close()


def _pings(count: int) -> list[Envelope]:
    return [Envelope(type="worker.ping", body={"worker": "w-0"}, id=f"p-{i}") for i in range(count)]


def test_worker_reads_a_gateway_batch_as_its_envelopes_in_order(link: _Link) -> None:
    """Three pings in one batch get three answers, in the order they were asked."""
    link.to_worker(*_pings(3))
    link.worker._flush()
    answers = [decode(f) for f in link.receive()]
    assert [(a.id, a.type) for a in answers] == [(f"p-{i}", "worker.ping.ok") for i in range(3)]


def test_worker_sends_a_turns_answers_together_as_one_batch(link: _Link) -> None:
    """Nothing leaves before the flush; then the turn's answers leave as one message of one batch frame."""
    link.to_worker(*_pings(5))
    assert not link.gateway.poll(100), "answers wait for the end of the loop turn"
    link.worker._flush()
    assert len(link.receive()) == 5
    assert not link.gateway.poll(100), "one message held them all"


def test_worker_splits_a_long_turn_into_batches_of_at_most_batch_max(link: _Link) -> None:
    """A turn with more answers than BATCH_MAX leaves in several messages, every answer once, in order."""
    count = worker_mod.BATCH_MAX * 2 + 3
    link.to_worker(*_pings(count))
    link.worker._flush()
    got: list[str] = []
    sizes: list[int] = []
    while len(got) < count:
        envelopes = link.receive()
        sizes.append(len(envelopes))
        got.extend(decode(f).id for f in envelopes)
    assert got == [f"p-{i}" for i in range(count)]
    assert sizes == [worker_mod.BATCH_MAX, worker_mod.BATCH_MAX, 3]


def test_a_bad_envelope_in_a_gateway_batch_costs_only_itself(link: _Link) -> None:
    """Garbage between two pings of a well-framed batch is logged and dropped; both pings are answered."""
    first, second = _pings(2)
    link.gateway.send_multipart([b"w-0", pack([encode(first), b"\xc1 not msgpack", encode(second)])])
    assert link.worker.sock.poll(5000)
    link.worker._drain()
    link.worker._flush()
    assert [decode(f).id for f in link.receive()] == ["p-0", "p-1"]


@pytest.mark.parametrize(
    ("mangle", "problem"),
    [
        (lambda b: b[:-3], "not a msgpack array"),
        (lambda b: b + b"\x00\x01", "2 trailing bytes"),
        (lambda b: b"\x90", "empty"),
        (lambda b: b"\x92\xa4ping\xc0", "item 0 must be bin"),
        (lambda b: encode(_pings(1)[0]), "must be a msgpack array"),
    ],
    ids=["truncated", "trailing", "empty", "not-bin", "bare-envelope"],
)
def test_a_malformed_gateway_batch_is_logged_and_the_next_one_answered(
    link: _Link, mangle: Callable[[bytes], bytes], problem: str
) -> None:
    """A batch whose framing is broken is dropped whole with an error naming the problem; the worker reads
    on, and the batch after it is answered."""
    bad = mangle(pack([encode(e) for e in _pings(2)]))
    link.gateway.send_multipart([b"w-0", bad])
    link.gateway.send_multipart(
        [b"w-0", pack([encode(Envelope(type="worker.ping", body={"worker": "w-0"}, id="after"))])]
    )
    assert link.worker.sock.poll(5000)
    time.sleep(0.1)  # both messages are at the worker's socket
    with structlog.testing.capture_logs() as logs:
        link.worker._drain()
    errors = [e for e in logs if e["event"] == "gateway_batch_malformed"]
    assert len(errors) == 1 and problem in errors[0]["error"], logs
    link.worker._flush()
    assert [decode(f).id for f in link.receive()] == ["after"]


def test_one_drain_reads_every_message_that_waits_short_or_long(link: _Link) -> None:
    """Batches of 1, 2, 7 and 1 envelopes, all waiting: one drain answers every envelope in order (the end of
    each message finds more waiting), and a drain with nothing more to read returns."""
    sizes = [1, 2, 7, 1]
    pings = _pings(sum(sizes))
    start = 0
    for size in sizes:
        link.gateway.send_multipart([b"w-0", pack([encode(e) for e in pings[start : start + size]])])
        start += size
    assert link.worker.sock.poll(5000), "nothing reached the worker"
    time.sleep(0.2)  # every message is at the worker's socket
    link.worker._drain()
    assert not link.worker.sock.poll(0), "one drain read everything that waited"
    link.worker._flush()
    assert [decode(f).id for f in link.receive()] == [e.id for e in pings]
    link.to_worker(*_pings(2))  # alone: the drain returns at its end, with nothing left to read
    link.worker._flush()
    assert [decode(f).id for f in link.receive()] == ["p-0", "p-1"]


def _spawned(link: _Link, env: Envelope) -> str:
    """Run the worker's host until the spawn ``env`` is answered; the new agent's id."""
    for _ in range(500):
        for reply in link.worker.host.step(0.01):
            if reply.id == env.id:
                assert reply.type == "agent.spawn.ok", reply.body
                return str(reply.body["agent_id"])
    raise AssertionError("the spawn was not answered")


def test_worker_prepares_a_spare_only_when_no_message_waits_and_the_next_spawn_takes_it(link: _Link) -> None:
    """After a spawn the idle hook instantiates one spare, but not while a gateway message waits unread;
    the next spawn of the module takes it (and wants another)."""
    host = link.worker.host
    spawner = host._spawner
    text = '[agent]\nname = "e"\nmodule = "builtin:echo"\n'
    first = Envelope(type="agent.spawn", body={"manifest": text})
    link.to_worker(first)
    _spawned(link, first)
    assert host.spare_wanted()
    link.gateway.send_multipart([b"w-0", pack([encode(_pings(1)[0])])])
    assert link.worker.sock.poll(5000)
    link.worker._idle()
    assert spawner._spare is None, "a message waits: no spare made before it is read"
    link.worker._drain()
    link.worker._idle()
    assert spawner._spare is not None and not host.spare_wanted()
    made = spawner._spare[3]
    second = Envelope(type="agent.spawn", body={"manifest": text})
    link.to_worker(second)
    agent_id = _spawned(link, second)
    assert host._agents[agent_id].sandbox.native_instance() is made
    assert spawner._spare is None and host.spare_wanted()
    assert host.runtime_stats() == {"live_stores": 2, "agents": 2}


def test_worker_warm_up_logs_a_failing_step_and_goes_on(link: _Link) -> None:
    """A warm-up step that fails is logged and never ends the worker's loop; the steps after it still run,
    and the real ones (schemas, version state, readers, module) make the first llm-agent spawn warm."""
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("disk gone")

    link.worker._warm_steps.extend([broken, lambda: ran.append("next"), *link.worker.host.warm_up()])
    link.worker._warm_steps.appendleft(link.worker._warm_schemas)
    with structlog.testing.capture_logs() as logs:
        while link.worker._warm_steps:
            link.worker._warm_up()
    assert ran == ["next"]
    failed = [entry for entry in logs if entry["event"] == "warm_up_step_failed"]
    assert len(failed) == 1 and failed[0]["error"] == "RuntimeError: disk gone", failed
    spawn = Envelope(
        type="agent.spawn", body={"manifest": '[agent]\nname = "a"\n[agent.model]\nprovider = "scripted"\n'}
    )
    link.to_worker(spawn)
    agent_id = _spawned(link, spawn)
    assert link.worker.host._agents[agent_id].sandbox.spawn_kind == "warm"


def test_worker_builds_the_cue_matchers_rarer_parts_when_quiet_not_before_a_first_request(
    link: _Link,
) -> None:
    """The steps queued at the worker's ready are the first spawn's own work; the cue matcher's context
    regexes and full automaton (which a first message rarely needs) wait for the loop's quiet trim."""
    from openfang.supervisor.child import uplink_pair

    parent_end, child_end = uplink_pair()
    link.worker.child.uplink = child_end
    link.worker.running = False  # serve() queues its steps and hooks, then leaves at once
    try:
        link.worker.serve()
    finally:
        link.worker.child.uplink = None
        parent_end.close()
        child_end.close()
    queued = [step.__qualname__ for step in link.worker._warm_steps]
    assert queued[0] == "Worker._warm_schemas" and not any("complete_steps" in q for q in queued), queued
    trim = link.worker.child._trim
    assert trim is not None
    hooks = [getattr(hook, "__qualname__", "") for hook in trim.hooks]
    assert "complete_steps.<locals>.context" in hooks and "complete_steps.<locals>.automaton" in hooks
