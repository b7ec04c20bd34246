"""A client's agent.spawn with a first message (``text``) through a real gateway (in this process) and a
DEALER speaking for worker ``w-0``: the worker gets the spawn then an ordinary agent.send, back to back; the
client gets one reply joining both, never before the agent's row is on disk; a failed spawn is its only
answer; a failed message leaves the agent spawned and named (``send_error``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from control_gateway_kit import SyncedDoor, from_gateway

from openfang.control.guard import Guard, receive_client
from openfang.protocol import messages
from openfang.protocol.envelope import Envelope, encode
from openfang.protocol.errors import ConfigError, NotFound, RateLimited
from openfang.protocol.linkframe import pack
from openfang.security._errors import Denied
from openfang.security.config import parse_security

pytestmark = pytest.mark.integration

MANIFEST = '[agent]\nname = "greeter"\nmodule = "builtin:echo"\n'


class _Link(SyncedDoor):
    """The synced door, spawning MANIFEST with a first message."""

    def spawn(self, **extra: Any) -> tuple[Envelope, Envelope]:
        """The client's spawn with a first message, taken in by the gateway: what the worker receives
        (the spawn, then the message)."""
        body = {"manifest": MANIFEST, "text": "hello", **extra}
        self.ask(Envelope(type="agent.spawn", body=body, id="req-1"))
        envelopes = from_gateway(self.worker)
        assert len(envelopes) == 2, "the spawn and its message leave in one flush, as one batch"
        spawn, send = envelopes
        return spawn, send

    def received(self) -> Envelope:
        envelopes = from_gateway(self.worker)
        assert len(envelopes) == 1, f"one message expected, got a batch of {len(envelopes)}"
        return envelopes[0]


@pytest.fixture
def link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Link]:
    monkeypatch.setenv("OPENFANG_DATA_DIR", str(tmp_path))
    made = _Link(tmp_path)
    yield made
    made.close()


def _spawned(spawn: Envelope) -> Envelope:
    body = {"agent_id": spawn.body["agent_id"], "worker": "w-0", "spawn": "warm", "spawn_ms": 0.2}
    return spawn.reply(body)


def _sent(send: Envelope, text: str = "echo: hello") -> Envelope:
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "tool_calls": 0, "fuel": 1234}
    return send.reply({"reply": text, "agent_id": send.body["agent_id"], "usage": usage})


def test_spawn_with_text_reaches_the_worker_as_a_spawn_then_an_agent_send(link: _Link) -> None:
    """The worker gets the spawn without the text, then an agent.send of the text (and session) to the new
    agent, in that order, in one batch on its link (one ZeroMQ message)."""
    spawn, send = link.spawn(session="s-9")
    assert spawn.type == "agent.spawn" and send.type == "agent.send"
    assert "text" not in spawn.body and "session" not in spawn.body
    assert send.body == {"text": "hello", "agent_id": spawn.body["agent_id"], "session": "s-9"}
    assert messages.check_body("agent.send", send.body) == []


def test_spawn_with_text_one_reply_held_until_the_row_is_on_disk(link: _Link) -> None:
    """Both answers in the turn that forwarded the spawn: no reply while the row is not on disk; the commit
    writes it, then one agent.spawn.ok carries the spawn's fields, the reply and its usage."""
    spawn, send = link.spawn()
    agent_id = spawn.body["agent_id"]
    link.answer(_spawned(spawn))
    link.answer(_sent(send))
    assert link.reply(200) is None and link.on_disk(agent_id) is None
    link.end_turn()
    reply = link.reply()
    assert reply is not None and reply.type == "agent.spawn.ok" and reply.id == "req-1", reply
    assert (
        reply.body["agent_id"] == agent_id and reply.body["worker"] == "w-0" and reply.body["spawn"] == "warm"
    )
    assert reply.body["reply"] == "echo: hello" and reply.body["usage"]["fuel"] == 1234
    assert messages.check_body("agent.spawn.ok", reply.body) == []
    assert link.on_disk(agent_id) == "running"
    assert link.reply(200) is None, "one request, one reply"


def test_spawn_with_text_waits_for_the_message_after_the_spawn_succeeds(link: _Link) -> None:
    """The spawn's success alone is not answered: the reply leaves with the message's answer."""
    spawn, send = link.spawn()
    link.end_turn()
    link.answer(_spawned(spawn))
    assert link.reply(200) is None
    link.answer(_sent(send))
    reply = link.reply()
    assert reply is not None and reply.body["reply"] == "echo: hello", reply


def test_spawn_with_text_message_refused_is_send_error_with_the_agent_id(link: _Link) -> None:
    """The worker refuses the message (denied) before the agent has started: the reply, once the spawn
    succeeds, is agent.spawn.ok with the agent's id and send_error = the refusal; no reply field."""
    spawn, send = link.spawn()
    link.end_turn()
    link.answer(send.error(Denied("prompt injection detected", layer="injection", reason="injection")))
    assert link.reply(200) is None
    link.answer(_spawned(spawn))
    reply = link.reply()
    assert reply is not None and reply.type == "agent.spawn.ok", reply
    assert reply.body["agent_id"] == spawn.body["agent_id"] and "reply" not in reply.body
    err = reply.body["send_error"]
    assert err["code"] == "denied" and err["layer"] == "injection" and "injection" in err["message"], err
    assert messages.check_body("agent.spawn.ok", reply.body) == []


def test_failed_spawn_with_text_is_answered_with_the_spawns_error_only(link: _Link) -> None:
    """The spawn fails: its error is the reply at once, the row is removed, and the message's later answer
    (not_found: the agent never existed) is dropped, not sent to the client."""
    spawn, send = link.spawn()
    agent_id = spawn.body["agent_id"]
    link.end_turn()
    link.answer(spawn.error(ConfigError("agent.toml: [agent] key 'nope' is unknown")))
    reply = link.reply()
    assert reply is not None and reply.is_error and reply.body["code"] == "bad_config", reply
    link.answer(send.error(NotFound(f"no agent {agent_id!r} on worker w-0")))
    link.end_turn()
    assert link.reply(300) is None, "the message's answer reached the client"
    assert link.on_disk(agent_id) is None and link.gw.waiting == {}


def test_message_that_came_before_its_agent_is_sent_again_once_it_exists(link: _Link) -> None:
    """A not_found for the message before the spawn's success (the worker builds the agent later, e.g.
    after its MCP servers connect): the message is sent again when the spawn succeeds, and its answer is
    the reply."""
    spawn, send = link.spawn()
    agent_id = spawn.body["agent_id"]
    link.end_turn()
    link.answer(send.error(NotFound(f"no agent {agent_id!r} on worker w-0")))
    link.answer(_spawned(spawn))
    again = link.received()
    assert again.type == "agent.send" and again.body == send.body and again.id != send.id
    assert link.reply(200) is None
    link.answer(_sent(again, "echo: hello (second try)"))
    reply = link.reply()
    assert reply is not None and reply.body["reply"] == "echo: hello (second try)", reply


def test_worker_lost_after_the_spawn_answers_send_error_at_once(link: _Link) -> None:
    """The worker dies after the spawn succeeded, before the message's answer: the reply is agent.spawn.ok
    with send_error sandbox_error naming the worker, sent now (no wait for the request timeout)."""
    spawn, _send = link.spawn()
    link.end_turn()
    link.answer(_spawned(spawn))
    link.gw._worker_lost("w-0", "exited (killed)")
    link.end_turn()
    reply = link.reply()
    assert reply is not None and reply.type == "agent.spawn.ok", reply
    assert (
        reply.body["send_error"]["code"] == "sandbox_error" and "w-0" in reply.body["send_error"]["message"]
    )
    assert link.gw.waiting == {}


def test_worker_lost_before_the_spawn_answers_the_spawns_error_only(link: _Link) -> None:
    """The worker dies with both requests in flight: one reply, the spawn's sandbox_error."""
    link.spawn()
    link.end_turn()
    link.gw._worker_lost("w-0", "exited (killed)")
    link.end_turn()
    reply = link.reply()
    assert reply is not None and reply.is_error and reply.body["code"] == "sandbox_error", reply
    assert "agent.spawn" in reply.body["message"]
    assert link.reply(200) is None and link.gw.waiting == {}


def test_forwarded_spawn_with_text_is_refused_naming_the_field(link: _Link) -> None:
    """An agent's agent_spawn (worker.forward) with text: bad_request naming request.body.text; nothing is
    registered."""
    link.gw.agents.add("a-1", "w-0")
    forward = {
        "sender": "a-1",
        "request": {"type": "agent.spawn", "body": {"manifest": MANIFEST, "text": "x"}},
    }
    link.worker.send(pack([encode(Envelope(type="worker.forward", body=forward))]))
    assert link.gw.worker_sock.poll(5000)
    link.gw._drain(link.gw.worker_sock, link.gw._on_worker_frames)
    answer = link.received()
    assert answer.is_error and answer.body["code"] == "bad_request", answer.body
    assert "request.body.text" in answer.body["message"]
    assert len(link.gw.registry) == 0


def _guard(tmp: Path, burst: int) -> Guard:
    limits = {"client_requests": {"rate": 0.001, "burst": burst}}
    config = parse_security({"ratelimit": limits}, "cluster.toml", data_dir=None, base_dir=tmp)
    return Guard(config, max_frame=1 << 20)


def test_guard_charges_a_spawn_with_text_as_two_requests(tmp_path: Path) -> None:
    """With 3 requests of allowance: a spawn with text takes 2; a second one (needing 2) is refused whole;
    a spawn without text still fits in the one left."""
    guard = _guard(tmp_path, burst=3)
    with_text = encode(Envelope(type="agent.spawn", body={"manifest": MANIFEST, "text": "hi"}))
    plain = encode(Envelope(type="agent.spawn", body={"manifest": MANIFEST}))
    try:
        guard.admit(with_text, client="c", peer="uid:1")
        with pytest.raises(RateLimited):
            guard.admit(with_text, client="c", peer="uid:1")
        guard.admit(plain, client="c", peer="uid:1")
        with pytest.raises(RateLimited):
            guard.admit(plain, client="c", peer="uid:1")
    finally:
        guard.close()


def test_spawn_with_text_to_a_worker_that_left_is_one_error_and_no_row(link: _Link) -> None:
    """The chosen worker is known to the placement but its link is gone when the outbox is flushed: one
    not_found reply naming the worker, the row removed, nothing left waiting."""
    link.gw.placement.worker_synced("w-9", [])
    link.client.send(
        encode(Envelope(type="agent.spawn", body={"manifest": MANIFEST, "text": "hi", "worker": "w-9"}))
    )
    assert link.gw.clients.poll(5000)
    link.gw._drain(link.gw.clients, link.gw._on_client_frames, receive=receive_client)
    link.gw._flush()
    link.end_turn()
    reply = link.reply()
    assert reply is not None and reply.is_error and reply.body["code"] == "not_found", reply
    assert "w-9" in reply.body["message"]
    assert link.reply(300) is None and link.gw.waiting == {}
    assert len(link.gw.registry) == 0


def test_spawn_with_text_reply_leaves_before_the_workers_event_is_handled(link: _Link) -> None:
    """The worker's batch is the spawn's success, the message's answer, then the agent's running event: the
    joined reply is sent before the gateway handles that event (its registry update and publication), and
    the event is still handled (the row ends running)."""
    spawn, send = link.spawn()
    agent_id = spawn.body["agent_id"]
    link.end_turn()  # the row is on disk: the reply may leave as soon as it is joined
    seen: list[int] = []
    handle = link.gw._on_worker_event

    def on_event(*args: Any) -> None:
        seen.append(len(link.gw._outbox))
        handle(*args)

    link.gw._worker_dispatch["event"] = (link.gw._worker_dispatch["event"][0], on_event)
    state = {"kind": "agent.state", "agent_id": agent_id, "worker": "w-0", "state": "running", "time": 1.0}
    event = Envelope(type="event", body=state)
    link.worker.send(pack([encode(_spawned(spawn)), encode(_sent(send)), encode(event)]))
    assert link.gw.worker_sock.poll(5000), "the gateway got no answer"
    link.gw._drain(link.gw.worker_sock, link.gw._on_worker_frames)
    assert seen == [0], "the joined reply waited in the outbox while the event was handled"
    reply = link.reply()
    assert reply is not None and reply.type == "agent.spawn.ok" and reply.body["reply"] == "echo: hello"
    link.end_turn()
    assert link.on_disk(agent_id) == "running"


def test_spawn_with_text_reply_leaves_before_the_placement_bookkeeping(link: _Link) -> None:
    """The worker's batch is the spawn's success then the message's answer: the joined reply is sent before
    the placement records the spawn (placement.spawned), which still runs in that batch (the agent is then
    placed, announced and running)."""
    spawn, send = link.spawn()
    agent_id = spawn.body["agent_id"]
    link.end_turn()  # the row is on disk: the reply may leave as soon as it is joined
    seen: list[int] = []
    spawned = link.gw.placement.spawned

    def recording(*args: Any, **kwargs: Any) -> None:
        seen.append(link.client.poll(2000))  # 0 unless the reply was sent before this call
        spawned(*args, **kwargs)

    link.gw.placement.spawned = recording  # type: ignore[method-assign]
    link.worker.send(pack([encode(_spawned(spawn)), encode(_sent(send))]))
    assert link.gw.worker_sock.poll(5000), "the gateway got no answer"
    link.gw._drain(link.gw.worker_sock, link.gw._on_worker_frames)
    assert seen and seen[0] != 0, "the reply waited for the placement's bookkeeping"
    assert seen == [seen[0]], "the spawn is recorded once"
    reply = link.reply()
    assert reply is not None and reply.type == "agent.spawn.ok" and reply.body["reply"] == "echo: hello"
    assert link.gw.agents.worker_of.get(agent_id) == "w-0" and link.gw._after_reply == {}
    link.end_turn()
    assert link.on_disk(agent_id) == "running"


def test_spawn_bookkeeping_runs_before_another_worker_message_is_handled(link: _Link) -> None:
    """A worker message between the spawn's success and the message's answer (here the agent's event) finds
    the spawn recorded (the agent announced on its worker) before it is handled; one reply still follows."""
    spawn, send = link.spawn()
    agent_id = spawn.body["agent_id"]
    link.end_turn()
    seen: list[str | None] = []
    handle = link.gw._on_worker_event

    def on_event(*args: Any) -> None:
        seen.append(link.gw.agents.worker_of.get(agent_id))
        handle(*args)

    link.gw._worker_dispatch["event"] = (link.gw._worker_dispatch["event"][0], on_event)
    state = {"kind": "agent.state", "agent_id": agent_id, "worker": "w-0", "state": "running", "time": 1.0}
    event = Envelope(type="event", body=state)
    link.worker.send(pack([encode(_spawned(spawn)), encode(event), encode(_sent(send))]))
    assert link.gw.worker_sock.poll(5000), "the gateway got no answer"
    link.gw._drain(link.gw.worker_sock, link.gw._on_worker_frames)
    assert seen == ["w-0"], "the event was handled before the spawn was recorded"
    link.gw._flush()  # as the loop does after each batch
    reply = link.reply()
    assert reply is not None and reply.type == "agent.spawn.ok" and reply.body["reply"] == "echo: hello"
    assert link.reply(200) is None, "one request, one reply"
