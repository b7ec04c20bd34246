"""The memory writer's messages are the catalogue's: one schema for the client's check and the writer's
typed dispatch, limits and error texts kept, every ack meeting its catalogued reply schema."""

from __future__ import annotations

import typing

import pytest
import zmq

from openfang.memory import messages
from openfang.memory.client import MemoryClient, store_body
from openfang.protocol import messages as catalogue
from openfang.protocol.envelope import Envelope, decode, encode
from openfang.protocol.errors import ProtocolError
from openfang.protocol.memory_writes import MemoryEpisode, MemoryStore


def test_writer_types_are_the_catalogues_memory_endpoint() -> None:
    """The memory package's type names are exactly the catalogue's internal types of the writer socket."""
    named = {getattr(messages, n) for n in ("EPISODE", "STORE", "TOOL_CALL", "WRITE", "FORGET")}
    named |= {messages.RECLAIM, messages.COMPACT, messages.PING}
    assert named == messages.WRITER_TYPES
    assert all(catalogue.INTERNAL[t].endpoint == "memory" for t in named)
    assert {"memory.episode", "memory.store", "memory.tool_call", "memory.forget"} == messages.BATCHABLE


def test_applier_dispatch_types_every_write_with_the_catalogue_body(local_store) -> None:
    """The Applier handles every writer type but ping (answered by the writer's loop) with the catalogue's
    body class."""
    table = local_store.applier._handlers
    assert set(table) == messages.WRITER_TYPES - {messages.PING}
    for type_, (body_class, _handler) in table.items():
        assert body_class is catalogue.INTERNAL[type_].body, type_


def test_validate_takes_a_body_class_or_a_map_and_names_each_problem() -> None:
    """validate checks a typed body and a plain map against the same schema; unknown types are named."""
    assert (
        messages.validate(messages.EPISODE, MemoryEpisode(agent_id="a", session="s", role="user", text="x"))
        == []
    )
    problems = messages.validate(
        messages.STORE, {"agent_id": "", "text": "x", "importance": 2, "vector": b"abc"}
    )
    assert [p.split(":")[0] for p in problems] == ["body.agent_id", "body.importance", "body.vector"]
    assert messages.validate("memory.search", {}) == ["type: unknown memory request type 'memory.search'"]


def test_store_body_is_a_typed_memory_store() -> None:
    """store_body packs the vector and builds the catalogue's MemoryStore (no embedder without a vector)."""
    body = store_body("a", "t", embedder="e8", vector=[1.0, 2.0], tags=["x"])
    assert isinstance(body, MemoryStore) and body.embedder == "e8" and len(body.vector or b"") == 8
    assert store_body("a", "t", embedder="e8").embedder is None
    assert messages.validate(messages.STORE, body) == []


def test_every_ack_meets_its_catalogued_reply_schema(local_store) -> None:
    """The ack of each write type (a dup ack too) is valid as that type's .ok body."""
    episode = {"agent_id": "a", "session": "s", "role": "user", "text": "hello"}
    requests: list[tuple[str, dict[str, typing.Any]]] = [
        (messages.EPISODE, episode),
        (messages.STORE, {"agent_id": "a", "text": "fact", "tags": ["t"]}),
        (messages.TOOL_CALL, {"agent_id": "a", "tool": "calc", "status": "ok", "args": {"x": 1}}),
        (messages.WRITE, {"ops": [{"type": messages.EPISODE, "body": episode}]}),
        (messages.FORGET, {"agent_id": "a", "id": 1}),
        (messages.RECLAIM, {"agent_id": "a", "policy": "archive"}),
        (messages.COMPACT, {}),
    ]
    for type_, body in requests:
        ack = local_store.ok(type_, body)
        assert catalogue.check_body(f"{type_}.ok", ack) == [], (type_, ack)
    (dup,) = local_store.applier.apply_group([Envelope(type=messages.EPISODE, body=episode, id="t1")])
    assert dup.body["dup"] is True and catalogue.check_body("memory.episode.ok", dup.body) == []


def test_applier_refuses_a_bad_body_alone_with_the_field_named(local_store) -> None:
    """A body that breaks its schema fails alone with bad_request naming the field; its neighbour commits."""
    bad = Envelope(
        type=messages.EPISODE, body={"agent_id": "a", "session": "s", "role": "robot", "text": "x"}
    )
    good = Envelope(
        type=messages.EPISODE, body={"agent_id": "a", "session": "s", "role": "user", "text": "x"}
    )
    refused, ok = local_store.applier.apply_group([bad, good])
    assert refused.body["code"] == "bad_request" and "body.role: must be one of" in refused.body["message"]
    assert not ok.is_error


@pytest.mark.integration
def test_writer_answers_a_raw_bad_body_with_bad_request_naming_the_field(writer) -> None:
    """Past the client's own check (a raw DEALER), the writer refuses a bad body naming the field, a bad op
    of a batch under its index, a ping with a body; it keeps serving."""
    w = writer()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(w.endpoint)
    try:
        sock.send(encode(Envelope(type="memory.forget", body={"agent_id": "a", "id": "seven"}, id="r1")))
        assert sock.poll(10_000)
        reply = decode(sock.recv())
        assert reply.id == "r1" and reply.body["code"] == "bad_request"
        assert "body.id: must be an integer of at least 1, got str" in reply.body["message"]
        op = {"type": "memory.tool_call", "body": {"agent_id": "a", "tool": "t", "status": "maybe"}}
        sock.send(encode(Envelope(type="memory.write", body={"ops": [op]}, id="r2")))
        assert sock.poll(10_000)
        reply = decode(sock.recv())
        assert reply.id == "r2" and "body.ops[0].body.status: must be one of 'ok'" in reply.body["message"]
        sock.send(encode(Envelope(type="memory.ping", body={"deep": True}, id="r3")))
        assert sock.poll(10_000)
        reply = decode(sock.recv())
        assert reply.id == "r3" and "body.deep: unknown field" in reply.body["message"]
    finally:
        sock.close(0)
        ctx.term()
    with MemoryClient(w.endpoint) as c:
        with pytest.raises(ProtocolError, match=r"body\.ops\[0\]\.type"):
            c.call(messages.WRITE, {"ops": [{"type": messages.COMPACT, "body": {}}]})
        assert c.ping() == 0, "nothing was committed"
