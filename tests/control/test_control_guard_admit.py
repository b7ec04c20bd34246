"""The guard's door decides once per request type whether layer 1's limits walk runs, and that decision
is the validator's: a type whose schema keeps bodies within the limits is not walked, every other type is
walked on every request (not only the first); where it is walked, it refuses with the walk's texts."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest

from openfang.control.guard import Guard
from openfang.protocol import _examples, messages
from openfang.protocol.errors import FrameTooLarge, OpenFangError, ProtocolError
from openfang.security.config import security_from_args
from openfang.security.ratelimit import RateLimitExceeded
from openfang.security.validation import TooDeep, ValidationLimits, within

_UNLIMITED = {
    b: {"rate": 0, "burst": 0}
    for b in ("client_requests", "global_requests", "agent_requests", "agent_tokens", "agent_tool_calls")
}


def _guard(validation: dict[str, Any]) -> Guard:
    table = {"validation": validation, "ratelimit": _UNLIMITED}
    return Guard(security_from_args({"table": table}), max_frame=1 << 20)


def _frame(type_: str, body: dict[str, Any], rid: str = "r-1") -> bytes:
    packed: bytes = msgpack.packb({"v": 1, "id": rid, "type": type_, "body": body})
    return packed


def test_guard_walks_every_request_of_a_type_the_limits_are_tighter_for() -> None:
    """With max_text = 10, each over-long agent.send is refused, the ones after the first too, and a short
    one between them is admitted."""
    guard = _guard({"max_text": 10})
    for n in range(3):
        with pytest.raises(FrameTooLarge, match=r"^body\.text: text is 20 characters, the limit is 10$"):
            guard.admit(_frame("agent.send", {"service": "s", "text": "t" * 20}, f"a{n}"), client="c")
        env = guard.admit(_frame("agent.send", {"service": "s", "text": "short"}, f"b{n}"), client="c")
        assert env.body["text"] == "short"


def test_guard_checks_the_type_length_on_every_request() -> None:
    """With max_key_len = 4, agent.send (10 characters) is refused each time, by its type's length."""
    guard = _guard({"max_key_len": 4})
    for n in range(3):
        with pytest.raises(ProtocolError, match=r"^type: 10 characters, the limit is 4$"):
            guard.admit(_frame("agent.send", {"service": "s", "text": "hi"}, f"r{n}"), client="c")


def test_guard_decision_per_type_is_the_validators() -> None:
    """For every catalogued request example, under default and tight limits, the guard walks exactly the
    types whose schema shape is not within the limits or whose name is longer than max_key_len."""
    decided = 0
    for validation in ({}, {"max_text": 10}, {"max_depth": 2}, {"max_key_len": 8}, {"max_list": 3}):
        guard = _guard(validation)
        limits: ValidationLimits = guard.validator.limits
        for type_, body in _examples.REQUESTS.items():
            schema = messages.body_schema(type_)
            shape = None if schema is None else schema.shape
            want_walk = not (within(shape, limits) and len(type_) <= limits.max_key_len)
            with contextlib.suppress(OpenFangError):  # refused by a tight limit: decided all the same
                guard.admit(_frame(type_, body), client="c")
            assert guard._walk[type_] is want_walk, (validation, type_)
            decided += 1
    assert decided >= 5 * 20


@pytest.mark.parametrize("type_", ["agent.send.ok", "worker.hello", "event", "no.such.type", "error"])
def test_guard_refuses_a_type_outside_the_request_catalogue_as_unknown_type(type_: str) -> None:
    """A reply, an internal message, an event or an unknown type sent as a request is unknown_type at the
    door (decode admits the request catalogue's types only; admit has no second catalogue check)."""
    guard = _guard({})
    with pytest.raises(OpenFangError) as caught:
        guard.admit(_frame(type_, {}), client="c", peer="uid:1")
    assert caught.value.code == "unknown_type"
    assert frozenset(messages.CATALOGUE) == messages.REQUEST_TYPES  # the set decode admits is the catalogue


def test_guard_admits_a_bounded_request_without_walking_it() -> None:
    """agent.send's schema is within the default limits: admitted, its body as sent."""
    guard = _guard({})
    env = guard.admit(_frame("agent.send", {"service": "s", "text": "hi"}), client="c", peer="uid:0")
    assert env.body == {"service": "s", "text": "hi"}


def test_guard_still_walks_when_the_limits_are_tighter_than_the_schema() -> None:
    """With max_text = 10 a 20-character text passes the schema (65,536) but not layer 1: refused by the
    walk, with its text."""
    guard = _guard({"max_text": 10})
    with pytest.raises(FrameTooLarge, match=r"^body\.text: text is 20 characters, the limit is 10$"):
        guard.admit(_frame("agent.send", {"service": "s", "text": "t" * 20}), client="c", peer="uid:0")


def test_guard_still_walks_a_body_with_unbounded_fields() -> None:
    """child.start carries an open spec (Any args): the walk runs and refuses nesting past max_depth."""
    guard = _guard({"max_depth": 4})
    assert not within(messages.body_schema("child.start").shape, ValidationLimits(max_depth=4))  # type: ignore[union-attr]
    deep: Any = "leaf"
    for _ in range(6):
        deep = {"k": deep}
    spec = {"id": "x", "start": "m:f", "args": deep}
    with pytest.raises(TooDeep, match=r"nested 5 levels deep, the limit is 4"):
        guard.admit(_frame("child.start", {"path": "root", "spec": spec}), client="c", peer="uid:0")


def _limited_guard(client: dict[str, float], global_: dict[str, float]) -> Guard:
    ratelimit = {**_UNLIMITED, "client_requests": client, "global_requests": global_}
    return Guard(security_from_args({"table": {"ratelimit": ratelimit}}), max_frame=1 << 20)


@pytest.mark.parametrize("bucket", ["client_requests", "global_requests"])
def test_guard_enforces_a_client_rate_limit_exactly(bucket: str) -> None:
    """With the client's (or the global) request bucket limited, the guard admits its burst and refuses the
    next request as rate_limited; a spawn with a first message counts as two (the door's fast path for
    unlimited buckets must not skip a limited one)."""
    off = {"rate": 0, "burst": 0}
    limit = {"rate": 0.001, "burst": 3}
    guard = _limited_guard(
        limit if bucket == "client_requests" else off, limit if bucket != "client_requests" else off
    )
    send = _frame("agent.send", {"service": "svc", "text": "hi"})
    for _ in range(3):
        guard.admit(send, client="", peer="uid:1")
    with pytest.raises(RateLimitExceeded) as refused:
        guard.admit(send, client="", peer="uid:1")
    assert refused.value.code == "rate_limited" and refused.value.bucket == bucket
    guard = _limited_guard(
        limit if bucket == "client_requests" else off, limit if bucket != "client_requests" else off
    )
    spawn = _frame(
        "agent.spawn", {"manifest": _examples.REQUESTS["agent.spawn"]["manifest"], "text": "hello"}
    )
    guard.admit(spawn, client="", peer="uid:1")  # two of the three
    with pytest.raises(RateLimitExceeded):
        guard.admit(spawn, client="", peer="uid:1")  # two more: one short, all or nothing
    guard.admit(send, client="", peer="uid:1")  # the third fits


def test_guard_with_unlimited_client_buckets_admits_without_a_bucket() -> None:
    """With the client and global buckets unlimited (the benchmarks' config), every request is admitted and
    the limiter keeps no bucket; the layer's agent limits stay on for the workers."""
    guard = _guard({})
    assert guard.limiter is not None and not guard.limiter.client_limited
    send = _frame("agent.send", {"service": "svc", "text": "hi"})
    for _ in range(500):
        guard.admit(send, client="", peer="uid:1")
    assert not guard.limiter._buckets


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_receive_client_names_the_peer_as_peer_identity_does(transport: str, tmp_path: Any) -> None:
    """receive_client's identity (its inline look-up of a known ipc peer) is peer_identity's of the same
    frame, for an ipc peer's first request and its later ones (cached), and for a tcp peer (its address)."""
    import os

    import zmq

    from openfang.control import guard as guard_module

    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = zctx.socket(zmq.ROUTER)
    client = zctx.socket(zmq.DEALER)
    try:
        if transport == "ipc":
            endpoint = f"ipc://{tmp_path}/door.sock"
            router.bind(endpoint)
        else:
            port = router.bind_to_random_port("tcp://127.0.0.1")
            endpoint = f"tcp://127.0.0.1:{port}"
        client.connect(endpoint)
        guard_module._IPC_PEERS.clear()
        seen = []
        for n in range(3):
            client.send(f"request {n}".encode())
            assert router.poll(5000)
            frames, identity = guard_module.receive_client(router)
            assert frames[1] == f"request {n}".encode()
            seen.append(identity)
        want = f"uid:{os.getuid()}" if transport == "ipc" else "ip:127.0.0.1"
        assert seen == [want] * 3
        assert bool(guard_module._IPC_PEERS) == (transport == "ipc")
    finally:
        client.close(0)
        router.close(0)
        zctx.term()
