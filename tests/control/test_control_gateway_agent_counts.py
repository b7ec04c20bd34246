"""A worker's agent count as the gateway reads it: the directory's, copied where it is read (memory reads'
pick, ``info``), not on every worker reply."""

from __future__ import annotations

from pathlib import Path

import zmq
from control_gateway_kit import SyncedDoor, dealer, one_from_gateway

from openfang.control.gateway import _receive
from openfang.protocol import _examples
from openfang.protocol.envelope import Envelope, encode
from openfang.protocol.linkframe import pack


def _hello(door: SyncedDoor, sock: zmq.Socket[bytes], worker: str, pid: int) -> None:
    body = {"worker": worker, "pid": pid, "cpu": 0, "agent_ids": []}
    sock.send(pack([encode(Envelope(type="worker.hello", body=body))]))
    assert door.gw.worker_sock.poll(5000)
    door.gw._drain(door.gw.worker_sock, door.gw._on_worker_frames, receive=_receive)


def test_gateway_memory_read_goes_to_the_worker_with_fewer_agents_in_the_directory(tmp_path: Path) -> None:
    """Agents announced since the workers last answered still count: a memory read goes to the worker
    hosting fewer of them, and info() reports the directory's counts."""
    door = SyncedDoor(tmp_path)
    other = dealer(door.gw, door.gw.control.workers, b"w-1")
    try:
        _hello(door, door.worker, "w-0", 4001)
        _hello(door, other, "w-1", 4002)
        assert door.gw.workers["w-0"].agents == door.gw.workers["w-1"].agents == 0
        for i in range(3):  # announced on w-0 (the first by id, which a tie would pick)
            door.gw.agents.add(f"a-{i}", "w-0")
        door.ask(Envelope(type="memory.search", body=_examples.REQUESTS["memory.search"]))
        assert other.poll(5000), "the memory read did not go to w-1"
        assert one_from_gateway(other).type == "memory.search"
        assert not door.worker.poll(50)
        info = door.gw.info()["workers"]
        assert info["w-0"]["agents"] == 3 and info["w-1"]["agents"] == 0
        door.gw.agents.add("a-9", "w-1")
        assert door.gw.info()["workers"]["w-1"]["agents"] == 1
    finally:
        other.close(0)
        door.worker.close(0)
        door.client.close(0)
        door.gw.close()
