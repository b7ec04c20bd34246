"""The internal bodies of the catalogue: agents' schedule.* and topic.* requests (inside worker.forward) and
the memory writer's requests, typed by ``messages.parse`` with each bad field named; and the schema features
they need (bytes, patterns, tagged unions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pytest

from openfang.protocol import _schema, messages
from openfang.protocol.bodies import FORWARDED_TYPES, Empty
from openfang.protocol.coordination import (
    MAX_SCHEDULE_TEXT,
    ScheduleAdd,
    ScheduleRemove,
    TopicRef,
)
from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import ProtocolError
from openfang.protocol.memory_writes import (
    MAX_TEXT_LEN,
    EpisodeOp,
    ForgetOp,
    MemoryEpisode,
    MemoryForget,
    MemoryStore,
    MemoryWrite,
)


def _parse(type_: str, body: dict[str, Any]) -> Any:
    return messages.parse(Envelope(type=type_, body=body), messages.INTERNAL[type_].body)


def _problems(type_: str, body: dict[str, Any]) -> str:
    with pytest.raises(ProtocolError) as bad:
        _parse(type_, body)
    return bad.value.message


def test_forwarded_types_are_agent_send_spawn_and_the_forwarded_internal_types() -> None:
    """What a worker may forward is agent.send, agent.spawn and each internal type sent inside a forward."""
    inside = {t for t, spec in messages.INTERNAL.items() if "worker.forward" in spec.sender}
    assert inside == {"schedule.add", "schedule.list", "schedule.remove"} | {
        "topic.subscribe",
        "topic.unsubscribe",
        "topic.subscribers",
    }
    assert set(FORWARDED_TYPES) == {"agent.send", "agent.spawn"} | inside
    assert not inside & messages.REQUEST_TYPES, "a client cannot send them at the door"


def test_schedule_add_parses_typed_with_its_defaults() -> None:
    """A schedule.add body becomes a ScheduleAdd; tz and misfire take their defaults."""
    add = _parse("schedule.add", {"target": "a-1", "text": "report", "at": "10m"})
    assert add == ScheduleAdd(target="a-1", text="report", at="10m", cron=None, tz="UTC", misfire="once")
    cron = _parse("schedule.add", {"target": "a-1", "text": "x", "cron": "0 9 * * *", "misfire": "skip"})
    assert (cron.cron, cron.at, cron.misfire) == ("0 9 * * *", None, "skip")


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"text": "x", "at": "10m"}, "body.target: required field is missing"),
        ({"target": "a-1", "text": "", "at": "10m"}, "body.text: must be a string of 1 to 100000"),
        ({"target": "a-1", "text": "x" * (MAX_SCHEDULE_TEXT + 1), "at": "1m"}, "body.text"),
        ({"target": "a-1", "text": "x"}, "body.at: give exactly one of at"),
        ({"target": "a-1", "text": "x", "at": "1m", "cron": "* * * * *"}, "body.at: give exactly one"),
        ({"target": "a-1", "text": "x", "at": "1m", "misfire": "never"}, "body.misfire: must be one of"),
        ({"target": "a-1", "text": "x", "at": 5}, "body.at: must be a string"),
        ({"target": "a-1", "text": "x", "at": "1m", "when": "now"}, "body.when: unknown field"),
    ],
)
def test_schedule_add_refuses_a_bad_body_naming_the_field(body: dict[str, Any], named: str) -> None:
    """Missing, empty, over-long, both or neither of at/cron, unknown misfire, wrong type, unknown field."""
    assert named in _problems("schedule.add", body)


def test_schedule_list_and_remove_bodies() -> None:
    """schedule.list is empty (any field refused); schedule.remove needs a schedule id."""
    assert _parse("schedule.list", {}) == Empty()
    assert "body.all: unknown field" in _problems("schedule.list", {"all": True})
    assert _parse("schedule.remove", {"schedule_id": "sch-0123456789ab"}) == ScheduleRemove(
        schedule_id="sch-0123456789ab"
    )
    assert "body.schedule_id: required" in _problems("schedule.remove", {"id": "sch-1"})
    assert "body.schedule_id: must be a string of 1 to 64" in _problems(
        "schedule.remove", {"schedule_id": ""}
    )


@pytest.mark.parametrize("type_", ["topic.subscribe", "topic.unsubscribe", "topic.subscribers"])
def test_topic_bodies_take_a_topic_name_by_its_rule(type_: str) -> None:
    """A topic is 1 to 128 of letters, digits and _ . : / -; anything else is refused naming body.topic."""
    assert _parse(type_, {"topic": "news/eu:fr_1.x-y"}) == TopicRef(topic="news/eu:fr_1.x-y")
    for bad in ("no spaces", "", "x" * 129, "é"):
        assert "body.topic: must be a string of 1 to 128 characters" in _problems(type_, {"topic": bad})
    assert "letters, digits and _ . : / -" in _problems(type_, {"topic": "a b"})
    assert "body.topic: must be a string" in _problems(type_, {"topic": 7})


def test_internal_replies_have_open_schemas_the_examples_meet() -> None:
    """Each internal reply's example body meets its schema, and a reply may carry fields it does not know."""
    from openfang.protocol import _examples

    for type_, spec in messages.INTERNAL.items():
        if spec.reply is None:
            continue
        body = _examples.INTERNAL_REPLIES[type_]
        assert messages.check_body(f"{type_}.ok", body) == [], type_
        assert messages.check_body(f"{type_}.ok", {**body, "added_later": 1}) == [], "replies are open"
    assert "body.subscribers: required" in "; ".join(
        messages.check_body("topic.subscribers.ok", {"topic": "news"})
    )


def test_memory_episode_parses_typed_and_names_each_bad_field() -> None:
    """A memory.episode body becomes a MemoryEpisode; a bad role, empty text and bad ts are all named."""
    body = {"agent_id": "a", "session": "s", "role": "user", "text": "hi", "ts": 5}
    assert _parse("memory.episode", body) == MemoryEpisode(
        agent_id="a", session="s", role="user", text="hi", ts=5.0
    )
    problems = _problems(
        "memory.episode", {"agent_id": "a" * 201, "session": "s", "role": "robot", "text": "", "ts": -1}
    )
    for named in ("body.agent_id", "body.role: must be one of 'user'", "body.text", "body.ts"):
        assert named in problems


def test_memory_store_keeps_its_limits_and_cross_field_rules() -> None:
    """importance 0..1, ttl_s > 0, at most 32 tags, vector float32 bytes with its embedder."""
    ok = _parse(
        "memory.store", {"agent_id": "a", "text": "t", "embedder": "e", "vector": b"\0" * 8, "tags": ["x"]}
    )
    assert ok == MemoryStore(agent_id="a", text="t", embedder="e", vector=b"\0" * 8, tags=["x"])
    assert (ok.kind, ok.importance) == ("fact", 0.5)
    bad = _problems("memory.store", {"agent_id": "a", "text": "t", "importance": 2, "ttl_s": 0})
    assert "body.importance: must be a finite number from 0 to 1" in bad and "body.ttl_s" in bad
    assert "body.tags" in _problems("memory.store", {"agent_id": "a", "text": "t", "tags": ["x"] * 33})
    assert "body.tags[0]" in _problems("memory.store", {"agent_id": "a", "text": "t", "tags": [""]})
    lone = _problems("memory.store", {"agent_id": "a", "text": "t", "vector": b"\0" * 4})
    assert "body.vector: vector and embedder go together" in lone
    odd = _problems("memory.store", {"agent_id": "a", "text": "t", "embedder": "e", "vector": b"\0" * 6})
    assert "body.vector: must be float32 bytes (a multiple of 4 bytes), got 6 bytes" in odd
    text = _problems("memory.store", {"agent_id": "a", "text": "t", "embedder": "e", "vector": "0000"})
    assert "body.vector: must be bytes (msgpack bin)" in text


def test_memory_write_ops_are_tagged_by_type_and_checked_as_that_type() -> None:
    """Each op's type picks its body class; a bad op body is named under its index, a bad type lists the
    batchable ones, and the batch is 1 to 256 ops."""
    ops = [
        {"type": "memory.episode", "body": {"agent_id": "a", "session": "s", "role": "tool", "text": "x"}},
        {"type": "memory.forget", "body": {"agent_id": "a", "id": 3}},
    ]
    write = _parse("memory.write", {"ops": ops})
    assert write == MemoryWrite(
        ops=[
            EpisodeOp(
                type="memory.episode",
                body=MemoryEpisode(agent_id="a", session="s", role="tool", text="x"),
            ),
            ForgetOp(type="memory.forget", body=MemoryForget(agent_id="a", id=3)),
        ]
    )
    bad_ops = [
        {"type": "memory.episode", "body": {"agent_id": "a", "session": "s", "role": "robot", "text": "x"}},
        {"type": "memory.compact", "body": {}},
        {"type": "memory.forget", "body": {"agent_id": "a", "id": 0}},
        "nope",
    ]
    problems = _problems("memory.write", {"ops": bad_ops})
    assert "body.ops[0].body.role: must be one of" in problems
    assert "body.ops[1].type: must be one of 'memory.episode', 'memory.store'" in problems
    assert "body.ops[2].body.id: must be an integer of at least 1" in problems
    assert "body.ops[3]: must be a map" in problems
    assert "body.ops: must be a list of 1 to 256 items" in _problems("memory.write", {"ops": []})
    assert "body.ops" in _problems("memory.write", {"ops": [ops[1]] * 257})


def test_memory_bodies_keep_the_writer_limits() -> None:
    """Ids up to 200 characters and texts up to 256 KiB, as the writer always took them."""
    long_ok = {"agent_id": "a" * 200, "session": "s", "role": "user", "text": "x" * MAX_TEXT_LEN}
    assert _parse("memory.episode", long_ok).agent_id == "a" * 200
    assert "body.text" in _problems("memory.episode", {**long_ok, "text": "x" * (MAX_TEXT_LEN + 1)})
    assert "body.policy: must be one of 'keep', 'archive', 'purge'" in _problems(
        "memory.reclaim", {"agent_id": "a", "policy": "shred"}
    )
    assert "body.now: must be a finite number of at least 0" in _problems("memory.compact", {"now": -1})


def test_to_body_of_a_typed_memory_request_round_trips() -> None:
    """A body built as a class goes to the wire and parses back equal (bytes stay bytes)."""
    store = MemoryStore(agent_id="a", text="t", embedder="e", vector=b"\x00\x00\x80?", ttl_s=5.0)
    wire = messages.to_body(store)
    assert wire["vector"] == b"\x00\x00\x80?" and "tags" not in wire
    assert _parse("memory.store", wire) == store


@dataclass(frozen=True, slots=True, kw_only=True)
class _Cat:
    kind: Literal["cat"]
    lives: Annotated[int, _schema.Range(0, 9)]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Dog:
    kind: Literal["dog", "puppy"]
    name: Annotated[str, _schema.Len(8, 1), _schema.Match(r"[a-z]+", "lower-case letters")]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Pets:
    pets: list[_Cat | _Dog]
    photo: Annotated[bytes, _schema.Len(4)] | None = None


def test_schema_tagged_union_match_and_bytes() -> None:
    """A union tagged by a Literal field builds the option its tag names; patterns and bytes are checked."""
    compiled = _schema.compile_dataclass(_Pets, open_fields=False)
    check = _schema.body_validator(compiled)
    body = {"pets": [{"kind": "cat", "lives": 9}, {"kind": "puppy", "name": "rex"}], "photo": b"ab"}
    assert check(body) == []
    assert compiled.build(body) == _Pets(
        pets=[_Cat(kind="cat", lives=9), _Dog(kind="puppy", name="rex")], photo=b"ab"
    )
    problems = check(
        {"pets": [{"kind": "cat", "lives": 10}, {"kind": "dog", "name": "Rex"}, {"kind": "cow"}]}
    )
    assert problems[0] == "body.pets[0].lives: must be an integer from 0 to 9, got 10"
    assert (
        problems[1]
        == "body.pets[1].name: must be a string of 1 to 8 characters (lower-case letters), got 'Rex'"
    )
    assert problems[2] == "body.pets[2].kind: must be one of 'cat', 'dog', 'puppy', got 'cow'"
    assert check({"pets": [], "photo": "ab"}) == [
        "body.photo: must be bytes (msgpack bin) of at most 4 bytes, got str"
    ]
    assert check({"pets": [], "photo": b"abcde"}) == [
        "body.photo: must be bytes (msgpack bin) of at most 4 bytes, got 5 bytes"
    ]
