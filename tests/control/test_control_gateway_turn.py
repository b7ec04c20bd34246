"""The end of the gateway's loop turn: what it skips when there is nothing to do (no late request, nothing
to commit, nothing queued) it still does whenever there is something (the turn's own tests in front of
_expire, _commit and _flush must never skip work)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from control_gateway_kit import dealer, looped_gateway

from openfang.control.gateway import Gateway, _Waiting
from openfang.protocol import _examples
from openfang.protocol.envelope import Envelope, decode, encode
from openfang.protocol.linkframe import pack


@pytest.fixture
def looped(tmp_path: Path) -> Iterator[tuple[Gateway, zmq.Poller, zmq.Socket[bytes]]]:
    """A gateway whose ``turn`` can run (an uplink pair), and a client DEALER named ``client``."""
    with looped_gateway(tmp_path) as (gw, poller, client, _worker):
        yield gw, poller, client


def _reply(client: zmq.Socket[bytes]) -> Envelope:
    assert client.poll(5000), "the client got nothing"
    return decode(client.recv())


def test_turn_expires_a_late_request_and_sends_its_timeout(
    looped: tuple[Gateway, zmq.Poller, zmq.Socket[bytes]],
) -> None:
    """A request past its deadline is answered ``timeout`` by the next turn, its reply sent that turn."""
    gw, poller, client = looped
    request = Envelope(type="agent.send", body={"service": "svc", "text": "hi"}, id="r-late")
    gw._wait("k-1", _Waiting(b"client", False, request, time.monotonic() - 1.0))
    gw.turn(poller, 0)
    got = _reply(client)
    assert (got.id, got.type, got.body["code"]) == ("r-late", "error", "timeout")
    assert not gw.waiting


def test_turn_leaves_a_request_before_its_deadline(
    looped: tuple[Gateway, zmq.Poller, zmq.Socket[bytes]],
) -> None:
    """A request whose deadline has not come is still waited for after the turn."""
    gw, poller, client = looped
    request = Envelope(type="agent.send", body={"service": "svc", "text": "hi"}, id="r-1")
    gw._wait("k-1", _Waiting(b"client", False, request, time.monotonic() + 60))
    gw.turn(poller, 0)
    assert list(gw.waiting) == ["k-1"] and not client.poll(50)


def test_turn_commits_the_registry_and_sends_the_held_replies(
    looped: tuple[Gateway, zmq.Poller, zmq.Socket[bytes]],
) -> None:
    """A pending registry change is written by the turn, and a reply held for the commit leaves with it;
    each alone too."""
    gw, poller, client = looped
    gw.registry.next_id("echo")
    assert gw.registry.pending
    gw.turn(poller, 0)
    assert not gw.registry.pending
    gw._held.append(
        (b"client", False, Envelope(type="ping.ok", body=_examples.REPLIES["ping"], id="r-held"), False)
    )
    gw.turn(poller, 0)
    assert _reply(client).id == "r-held" and not gw._held


def test_turn_sends_what_waits_in_the_outboxes(looped: tuple[Gateway, zmq.Poller, zmq.Socket[bytes]]) -> None:
    """A client reply queued outside a drain (an uplink answer, say) and a queued worker request both leave
    at the turn's end, each alone."""
    gw, poller, client = looped
    worker = dealer(gw, gw.control.workers, b"w-0")
    try:
        hello = {"worker": "w-0", "pid": 4001, "cpu": 0, "agent_ids": []}
        worker.send(pack([encode(Envelope(type="worker.hello", body=hello))]))
        for _ in range(100):
            gw.turn(poller, 50)
            if "w-0" in gw.workers:
                break
        gw._worker_out.append(
            (b"w-0", encode(Envelope(type="worker.ping", id="k-9")), "k-9", lambda w, e: None)
        )
        gw.turn(poller, 0)
        assert worker.poll(5000) and not gw._worker_out  # alone in the outboxes
        env = Envelope(type="ping.ok", body=_examples.REPLIES["ping"], id="r-out")
        gw._to_outbox([b"client", encode(env)], env.type, env.id, env.body)
        gw.turn(poller, 0)
        assert _reply(client).id == "r-out"  # alone too
        ran: list[str] = []
        gw._after_reply["k-held"] = lambda: ran.append("held")
        gw.turn(poller, 0)
        assert ran == ["held"] and not gw._after_reply  # held bookkeeping, alone
    finally:
        worker.close(0)
