"""A client's agent.spawn and agent.kill through a real gateway (in this process) and a DEALER speaking for
worker ``w-0``: a spawn's acknowledgement never leaves before the agent's row is on disk, and never waits
for a later write; a kill's only once the row's removal is."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from control_gateway_kit import SyncedDoor, dealer, in_process_gateway, looped_gateway, one_from_gateway

from openfang.control.gateway import WARM_SCHEMAS
from openfang.control.guard import receive_client
from openfang.protocol import messages
from openfang.protocol.envelope import Envelope, decode, encode
from openfang.protocol.errors import SecurityError
from openfang.protocol.linkframe import pack

pytestmark = pytest.mark.integration

MANIFEST = '[agent]\nname = "greeter"\nmodule = "builtin:echo"\n'


class _Spawns(SyncedDoor):
    """The synced door, spawning MANIFEST."""

    def spawn(self) -> Envelope:
        """The client's spawn, taken in by the gateway: what the worker receives."""
        self.ask(Envelope(type="agent.spawn", body={"manifest": MANIFEST}))
        assert self.worker.poll(5000), "the spawn was not forwarded"
        return one_from_gateway(self.worker)

    def worker_answers(self, forwarded: Envelope) -> None:
        body = {"agent_id": forwarded.body["agent_id"], "worker": "w-0", "spawn": "warm", "spawn_ms": 0.2}
        self.answer(forwarded.reply(body))


@pytest.fixture
def spawns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Spawns]:
    monkeypatch.setenv("OPENFANG_DATA_DIR", str(tmp_path))
    made = _Spawns(tmp_path)
    yield made
    made.close()


def test_gateway_spawn_ack_answered_before_its_row_is_written_waits_for_the_commit(spawns: _Spawns) -> None:
    """A worker's answer that arrives in the turn that forwarded the spawn is held: no ack while the row is
    not on disk; the turn's commit writes it, then the ack leaves."""
    forwarded = spawns.spawn()
    agent_id = forwarded.body["agent_id"]
    spawns.worker_answers(forwarded)
    assert spawns.reply(200) is None and spawns.on_disk(agent_id) is None
    spawns.end_turn()
    ack = spawns.reply(5000)
    assert ack is not None and ack.type == "agent.spawn.ok" and ack.body["agent_id"] == agent_id
    assert spawns.on_disk(agent_id) == "running"


def test_gateway_spawn_ack_for_a_row_on_disk_leaves_at_once(spawns: _Spawns) -> None:
    """Once the turn that forwarded the spawn has committed the row (``starting``), the worker's answer is
    acknowledged at once, not after the next commit; that commit then records ``running``."""
    forwarded = spawns.spawn()
    agent_id = forwarded.body["agent_id"]
    spawns.end_turn()
    assert spawns.on_disk(agent_id) == "starting"
    spawns.worker_answers(forwarded)
    ack = spawns.reply(5000)
    assert ack is not None and ack.type == "agent.spawn.ok" and ack.body["agent_id"] == agent_id
    assert spawns.on_disk(agent_id) == "starting"  # acknowledged: the row that restores it is there
    spawns.end_turn()
    assert spawns.on_disk(agent_id) == "running"


def test_gateway_refused_spawn_is_never_acknowledged_nor_kept(spawns: _Spawns) -> None:
    """A spawn the worker refuses is answered with the worker's error at once, and its row is removed."""
    forwarded = spawns.spawn()
    agent_id = forwarded.body["agent_id"]
    spawns.end_turn()
    spawns.worker.send(pack([encode(forwarded.error(SecurityError("import not allowed")))]))
    assert spawns.gw.worker_sock.poll(5000)
    spawns.gw._drain(spawns.gw.worker_sock, spawns.gw._on_worker_frames)
    spawns.gw._flush()
    reply = spawns.reply(5000)
    assert reply is not None and reply.is_error and "import not allowed" in reply.body["message"]
    spawns.end_turn()
    assert spawns.on_disk(agent_id) is None and spawns.gw.registry.get(agent_id) is None


def _request(spawns: _Spawns, type_: str, agent_id: str) -> None:
    spawns.client.send(encode(Envelope(type=type_, body={"agent_id": agent_id})))
    assert spawns.gw.clients.poll(5000), f"the gateway got no {type_}"
    spawns.gw._drain(spawns.gw.clients, spawns.gw._on_client_frames, receive=receive_client)
    spawns.gw._flush()


def _running_agent(spawns: _Spawns) -> str:
    forwarded = spawns.spawn()
    spawns.worker_answers(forwarded)
    spawns.end_turn()
    assert spawns.reply(5000) is not None
    return str(forwarded.body["agent_id"])


def test_gateway_kill_ack_waits_until_the_removal_is_on_disk(spawns: _Spawns) -> None:
    """A kill the worker confirms is acknowledged only after the turn's commit has removed the row: a daemon
    killed between the two would otherwise bring back an agent its client was told is dead."""
    agent_id = _running_agent(spawns)
    _request(spawns, "agent.kill", agent_id)
    assert spawns.worker.poll(5000), "the kill was not forwarded"
    kill = one_from_gateway(spawns.worker)
    spawns.worker.send(pack([encode(kill.reply({"agent_id": agent_id, "state": "dead"}))]))
    assert spawns.gw.worker_sock.poll(5000), "the gateway got no answer"
    spawns.gw._drain(spawns.gw.worker_sock, spawns.gw._on_worker_frames)
    spawns.gw._flush()
    assert spawns.reply(200) is None and spawns.on_disk(agent_id) == "running"
    spawns.end_turn()
    ack = spawns.reply(5000)
    assert ack is not None and ack.body == {"agent_id": agent_id, "state": "dead"}
    assert spawns.on_disk(agent_id) is None


def test_gateway_kill_of_an_agent_no_worker_holds_is_acknowledged_after_the_commit(spawns: _Spawns) -> None:
    """Killing a registered agent that no worker has announced is answered by the gateway itself, also only
    once the removal is written."""
    agent_id = _running_agent(spawns)
    spawns.gw.placement.worker_lost("w-0", "test")  # the agent waits to be placed again: nobody announces it
    spawns.end_turn()
    _request(spawns, "agent.kill", agent_id)
    assert spawns.reply(200) is None and spawns.on_disk(agent_id) is not None
    spawns.end_turn()
    ack = spawns.reply(5000)
    assert ack is not None and ack.body == {"agent_id": agent_id, "state": "dead"}
    assert spawns.on_disk(agent_id) is None


def test_gateway_message_to_an_agent_whose_worker_just_vanished_waits_for_it(spawns: _Spawns) -> None:
    """A message for an agent whose worker's socket is gone before the gateway has learnt of the loss is
    held, not answered `not_found` (the agent exists and is about to be restarted); the worker's return
    with the agent releases it to that worker."""
    from openfang.protocol.errors import NotFound
    from openfang.protocol.sockets import send_nowait

    agent_id = _running_agent(spawns)
    spawns.worker.close(0)
    for _ in range(100):  # until the gateway's ROUTER has dropped the peer
        try:
            send_nowait(spawns.gw.worker_sock, [b"w-0", b"probe"], peer="worker w-0")
        except NotFound:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the gateway never noticed the worker's socket closing")
    spawns.client.send(encode(Envelope(type="agent.send", body={"agent_id": agent_id, "text": "hi"})))
    assert spawns.gw.clients.poll(5000)
    spawns.gw._drain(spawns.gw.clients, spawns.gw._on_client_frames, receive=receive_client)
    spawns.gw._flush()
    assert spawns.reply(200) is None, "answered although the agent is only waiting for its worker"
    spawns.worker = dealer(spawns.gw, spawns.gw.control.workers, b"w-0")
    time.sleep(0.1)  # the new DEALER's connection reaches the ROUTER
    spawns.gw.placement.worker_synced("w-0", [agent_id])
    spawns.gw._flush()
    assert spawns.worker.poll(5000), "the held message was not delivered when the worker came back"
    delivered = one_from_gateway(spawns.worker)
    assert delivered.type == "agent.send" and delivered.body["agent_id"] == agent_id


def test_a_spawn_in_the_same_turn_as_the_first_workers_hello_is_placed_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spawn that reaches the gateway together with the first worker's hello (just after READY) is sent to
    that worker, not answered restarting: a loop turn reads the workers before the clients."""
    monkeypatch.setenv("OPENFANG_DATA_DIR", str(tmp_path))
    with looped_gateway(tmp_path) as (gw, poller, client, worker):
        hello = {"worker": "w-0", "pid": 4242, "cpu": 0, "agents": 0, "agent_ids": []}
        worker.send(pack([encode(Envelope(type="worker.hello", body=hello))]))
        client.send(encode(Envelope(type="agent.spawn", body={"manifest": MANIFEST})))
        assert gw.worker_sock.poll(5000) and gw.clients.poll(5000), "both messages wait for the same turn"
        gw.turn(poller, timeout_ms=0)
        assert not client.poll(100), "the spawn is not refused"
        assert worker.poll(5000), "the spawn was sent to the worker"
        assert one_from_gateway(worker).type == "agent.spawn"


def test_gateway_warm_up_compiles_the_first_spawn_schemas_after_what_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's warm-up answers a request that is already waiting first, then leaves the body schemas
    of a first spawn and message (both ways) compiled."""
    monkeypatch.setenv("OPENFANG_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(messages, "_compiled", {})  # as in a fresh gateway: nothing compiled yet
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    gw = in_process_gateway(tmp_path, uplink=ours)
    client = dealer(gw, gw.control.endpoint, b"client")
    try:
        ping = Envelope(type="ping", body={})
        client.send(encode(ping))
        assert gw.clients.poll(5000), "the ping waits"
        gw._warm_up(gw.poller())
        assert client.poll(5000), "the waiting ping was answered"
        assert decode(client.recv()).id == ping.id
        assert set(WARM_SCHEMAS) <= set(messages._compiled)
        assert {"agent.spawn", "agent.spawn.ok", "agent.send", "agent.send.ok", "event"} <= set(WARM_SCHEMAS)
    finally:
        client.close(0)
        gw.close()
        ours.close()
        theirs.close()
