"""An agent's schedule.* and topic.* requests inside worker.forward, through a real gateway's worker socket:
typed by the catalogue, answered with their typed reply, refused with the bad field named."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from control_gateway_kit import dealer, in_process_gateway, one_from_gateway

from openfang.control.gateway import Gateway
from openfang.protocol import messages
from openfang.protocol.envelope import Envelope, encode
from openfang.protocol.errors import ConfigError
from openfang.protocol.linkframe import pack
from openfang.supervisor.child import ChildContext

pytestmark = pytest.mark.integration


class _Link:
    """A gateway in this process and a DEALER speaking for worker ``w-0``, which hosts agent ``a-1``."""

    def __init__(self, tmp: Path) -> None:
        self.gw = in_process_gateway(tmp)
        self.gw.agents.add("a-1", "w-0")
        self.sock = dealer(self.gw, self.gw.control.workers, b"w-0")

    def forward(self, type_: str, body: dict[str, Any], sender: str = "a-1") -> Envelope:
        """Send ``type_`` for ``sender`` inside a worker.forward; the gateway's answer."""
        forward = {"sender": sender, "request": {"type": type_, "body": body}}
        request = Envelope(type="worker.forward", body=forward)
        self.sock.send(pack([encode(request)]))
        assert self.gw.worker_sock.poll(5000), "the gateway got nothing"
        self.gw._drain(self.gw.worker_sock, self.gw._on_worker_frames)
        assert self.sock.poll(5000), f"no answer to {type_}"
        answer = one_from_gateway(self.sock)
        assert answer.id == request.id
        return answer

    def close(self) -> None:
        self.sock.close(0)
        self.gw.close()


@pytest.fixture
def link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Link]:
    monkeypatch.setenv("OPENFANG_DATA_DIR", str(tmp_path))
    made = _Link(tmp_path)
    yield made
    made.close()


def _ok(answer: Envelope, type_: str) -> dict[str, Any]:
    assert answer.type == f"{type_}.ok", answer.body
    assert messages.check_body(answer.type, answer.body) == [], "the reply meets its catalogued schema"
    return answer.body


def _refused(answer: Envelope) -> str:
    assert answer.is_error and answer.body["code"] == "bad_request", answer.body
    return str(answer.body["message"])


def test_forwarded_topic_requests_are_answered_with_their_typed_replies(link: _Link) -> None:
    """subscribe, unsubscribe, subscribers: each answered <type>.ok, meeting its schema; a subscriber the
    registry does not know (a-1 here: hosted, never registered) is pruned at the next lookup."""
    sub = _ok(link.forward("topic.subscribe", {"topic": "news"}), "topic.subscribe")
    assert sub == {"topic": "news", "subscribed": True, "new": True, "topics": ["news"]}
    assert _ok(link.forward("topic.subscribe", {"topic": "news"}), "topic.subscribe")["new"] is False
    assert _ok(link.forward("topic.unsubscribe", {"topic": "news"}), "topic.unsubscribe")["unsubscribed"]
    assert not _ok(link.forward("topic.unsubscribe", {"topic": "news"}), "topic.unsubscribe")["unsubscribed"]
    _ok(link.forward("topic.subscribe", {"topic": "news"}), "topic.subscribe")
    assert _ok(link.forward("topic.subscribers", {"topic": "news"}), "topic.subscribers") == {
        "topic": "news",
        "subscribers": [],
    }
    assert link.gw.topics is not None and link.gw.topics.topics_of("a-1") == []


def test_forwarded_schedule_list_of_an_agent_without_schedules(link: _Link) -> None:
    """schedule.list answers schedule.list.ok with the sender's (here no) schedules."""
    assert _ok(link.forward("schedule.list", {}), "schedule.list") == {"schedules": []}


@pytest.mark.parametrize(
    ("type_", "body", "named"),
    [
        ("topic.subscribe", {"topic": "no spaces"}, "body.topic: must be a string of 1 to 128 characters"),
        ("topic.subscribers", {}, "body.topic: required field is missing"),
        ("topic.unsubscribe", {"topic": "news", "also": 1}, "body.also: unknown field"),
        ("schedule.add", {"target": "a-1", "text": "x"}, "body.at: give exactly one of at"),
        ("schedule.add", {"target": "a-1", "text": "x", "cron": 5}, "body.cron: must be a string"),
        ("schedule.remove", {}, "body.schedule_id: required field is missing"),
        ("schedule.list", {"owner": "b-2"}, "body.owner: unknown field"),
    ],
)
def test_forwarded_bad_bodies_are_refused_naming_the_field(
    link: _Link, type_: str, body: dict[str, Any], named: str
) -> None:
    """A bad schedule.* or topic.* body gets bad_request naming the field; nothing is stored."""
    assert named in _refused(link.forward(type_, body))
    assert link.gw.topics is None or link.gw.topics.topics_of("a-1") == []


def test_a_forward_for_an_agent_the_worker_does_not_host_is_denied(link: _Link) -> None:
    """The sender check comes first: a worker cannot subscribe another worker's agent."""
    answer = link.forward("topic.subscribe", {"topic": "news"}, sender="b-9")
    assert answer.is_error and answer.body["code"] == "denied" and "does not host" in answer.body["message"]


def test_gateway_hold_queue_bounds_come_from_control_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[control] held_per_agent / held_total / held_ms reach the gateway's placement (parsed from a file)."""
    from openfang.control.config import parse_config

    monkeypatch.setenv("OPENFANG_DATA_DIR", str(tmp_path))
    text = '[cluster]\nname = "t"\ndata_dir = "d"\n'
    text += "[control]\nheld_per_agent = 3\nheld_total = 40\nheld_ms = 750\n"
    control = parse_config(text, source="c.toml", base_dir=tmp_path).control
    control = dataclasses.replace(
        control,
        endpoint=f"ipc://{tmp_path}/control.sock",
        events=f"ipc://{tmp_path}/events.sock",
        workers=f"ipc://{tmp_path}/workers.sock",
    )
    args: dict[str, Any] = {"control": control, "registry": str(tmp_path / "agents.db")}
    gw = Gateway(ChildContext(id="control", path="root/control", args=args), args)
    try:
        placement = gw.placement
        assert (placement.queue_per_agent, placement.queue_total, placement.queue_s) == (3, 40, 0.75)
    finally:
        gw.close()
    with pytest.raises(ConfigError, match="held_ms"):
        parse_config(text.replace("750", "-1"), source="c.toml", base_dir=tmp_path)
