"""FirstMessage joins a spawn's answer and its first message's into one reply, in either order, once."""

from __future__ import annotations

import pytest

from openfang.control.first_message import FirstMessage
from openfang.protocol.bodies import AgentSpawn
from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import NotFound, OpenFangError, SandboxError

SPAWN = AgentSpawn(manifest="[agent]\n", text="hello", session="s1")


def _spawn_ok() -> Envelope:
    return Envelope(type="agent.spawn.ok", body={"agent_id": "a-1", "worker": "w-0"}, id="r-1")


def _send_ok() -> Envelope:
    return Envelope(
        type="agent.send.ok", body={"reply": "hi", "agent_id": "a-1", "usage": {"fuel": 3}}, id="r-1"
    )


def _error(exc: OpenFangError) -> Envelope:
    return Envelope(type="agent.send", body={}, id="r-1").error(exc)


def test_first_message_request_is_an_agent_send_to_the_new_agent() -> None:
    """The message is agent.send {text, agent_id, session} with the spawn request's id."""
    env = FirstMessage(SPAWN).request("a-1", "r-1")
    assert env.type == "agent.send" and env.id == "r-1"
    assert env.body == {"text": "hello", "agent_id": "a-1", "session": "s1"}


@pytest.mark.parametrize("spawn_first", [True, False])
def test_first_message_joins_both_successes_in_either_order(spawn_first: bool) -> None:
    """The reply is made by whichever answer comes second: the spawn's body plus reply and usage."""
    first = FirstMessage(SPAWN)
    if spawn_first:
        assert first.on_spawn(_spawn_ok()) is None
        joined = first.on_send(_send_ok())
    else:
        assert first.on_send(_send_ok()) is None
        joined = first.on_spawn(_spawn_ok())
    assert joined is not None and joined.type == "agent.spawn.ok" and joined.id == "r-1"
    assert joined.body == {"agent_id": "a-1", "worker": "w-0", "reply": "hi", "usage": {"fuel": 3}}
    assert first.on_send(_send_ok()) is None and first.on_spawn(_spawn_ok()) is None  # exactly once


def test_first_message_failed_spawn_is_the_reply_and_drops_the_message() -> None:
    """A spawn error is the reply at once, even after the message was answered; later answers are dropped."""
    first = FirstMessage(SPAWN)
    assert first.on_send(_error(SandboxError("worker gone"))) is None
    failed = Envelope(type="agent.spawn", body={}, id="r-1").error(SandboxError("trap in agent_init"))
    assert first.on_spawn(failed) is failed
    assert first.on_send(_send_ok()) is None


def test_first_message_failed_message_is_send_error() -> None:
    """The spawn succeeded and the message failed: agent.spawn.ok with send_error (the error body), no
    reply."""
    first = FirstMessage(SPAWN)
    first.on_spawn(_spawn_ok())
    joined = first.on_send(_error(SandboxError("worker w-0 exited")))
    assert joined is not None and joined.type == "agent.spawn.ok"
    assert joined.body["send_error"]["code"] == "sandbox_error" and "reply" not in joined.body


def test_first_message_not_found_before_the_spawn_asks_for_a_resend_once() -> None:
    """not_found before the spawn's success: resend asked, no reply yet; a second not_found (after the
    spawn) is the reply's send_error."""
    first = FirstMessage(SPAWN)
    assert first.on_send(_error(NotFound("no agent 'a-1' on worker w-0"))) is None
    assert first.on_spawn(_spawn_ok()) is None and first.resend
    first.resend = False
    joined = first.on_send(_error(NotFound("no agent 'a-1' on worker w-0")))
    assert joined is not None and joined.body["send_error"]["code"] == "not_found"


def test_first_message_needs_text() -> None:
    """A spawn without text has no first message to join."""
    with pytest.raises(ValueError, match="text"):
        FirstMessage(AgentSpawn(manifest="[agent]\n"))
