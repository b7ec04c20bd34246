"""A client's spawn that comes before any worker has listed its agents (right after READY, a worker's hello
may reach the gateway a turn after the spawn): it waits for the first worker to list, at most PARK_S, then
is answered ``restarting`` as before; at most PARK_MAX wait at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from control_gateway_kit import looped_gateway, one_from_gateway

from openfang.control import gateway as gateway_module
from openfang.control.gateway import Gateway
from openfang.protocol.envelope import Envelope, decode, encode
from openfang.protocol.linkframe import pack

MANIFEST = '[agent]\nname = "parked"\nmodule = "builtin:echo"\n'


@pytest.fixture
def looped(tmp_path: Path) -> Iterator[tuple[Gateway, zmq.Poller, zmq.Socket[bytes], zmq.Socket[bytes]]]:
    """A gateway whose ``turn`` runs, a client DEALER and worker ``w-0``'s DEALER (no hello sent yet)."""
    with looped_gateway(tmp_path) as parts:
        yield parts


def _spawn(client: zmq.Socket[bytes], request_id: str) -> None:
    client.send(encode(Envelope(type="agent.spawn", body={"manifest": MANIFEST}, id=request_id)))


def _turns_until(gw: Gateway, poller: zmq.Poller, done: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:  # type: ignore[operator]
        gw.turn(poller, 10)


def test_spawn_before_any_worker_listed_waits_and_is_placed_once_one_lists(
    looped: tuple[Gateway, zmq.Poller, zmq.Socket[bytes], zmq.Socket[bytes]],
) -> None:
    """No answer while no worker has listed; once w-0's hello lists it, the spawn is forwarded to w-0."""
    gw, poller, client, worker = looped
    _spawn(client, "r-early")
    _turns_until(gw, poller, lambda: gw._parked)
    assert len(gw._parked) == 1
    for _ in range(3):
        gw.turn(poller, 10)
    assert not client.poll(50), "answered before a worker listed"
    hello = {"worker": "w-0", "pid": 4001, "cpu": 0, "agent_ids": []}
    worker.send(pack([encode(Envelope(type="worker.hello", body=hello))]))
    _turns_until(gw, poller, lambda: not gw._parked)
    assert not gw._parked
    forwarded = one_from_gateway(worker)
    assert forwarded.type == "agent.spawn" and forwarded.body["worker"] == "w-0"
    assert not client.poll(50), "the client waits for the worker's answer, not an error"


def test_parked_spawn_is_answered_restarting_at_its_deadline(
    looped: tuple[Gateway, zmq.Poller, zmq.Socket[bytes], zmq.Socket[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No worker lists within PARK_S: the spawn gets restarting with a retry hint, and waits no more."""
    gw, poller, client, _worker = looped
    monkeypatch.setattr(gateway_module, "PARK_S", 0.1)
    started = time.monotonic()
    _spawn(client, "r-late")
    _turns_until(gw, poller, lambda: client.poll(0))
    got = decode(client.recv())
    assert (got.id, got.type, got.body["code"]) == ("r-late", "error", "restarting")
    assert got.body["retry_after_ms"] > 0
    assert time.monotonic() - started >= 0.1 and not gw._parked


def test_spawns_past_park_max_are_answered_restarting_at_once(
    looped: tuple[Gateway, zmq.Poller, zmq.Socket[bytes], zmq.Socket[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With PARK_MAX spawns waiting, the next one is answered restarting in its own turn."""
    gw, poller, client, _worker = looped
    monkeypatch.setattr(gateway_module, "PARK_MAX", 1)
    _spawn(client, "r-1")
    _spawn(client, "r-2")
    _turns_until(gw, poller, lambda: client.poll(0), seconds=1.0)
    got = decode(client.recv())
    assert (got.id, got.body["code"]) == ("r-2", "restarting")
    assert [p[3].id for p in gw._parked] == ["r-1"]
