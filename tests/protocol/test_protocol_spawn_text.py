"""agent.spawn's first message fields (``text``, ``session``, ``stream``) in the catalogue: bad values named
by field, the combined reply's fields typed, and how many requests a spawn with text counts as."""

from __future__ import annotations

from typing import Any

import pytest

from openfang.protocol import messages
from openfang.protocol.bodies import MAX_TEXT, AgentSpawn
from openfang.protocol.envelope import Envelope

MANIFEST = '[agent]\nname = "a"\nmodule = "builtin:echo"\n'


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"text": 7}, "body.text: must be"),
        ({"text": "x" * (MAX_TEXT + 1)}, "body.text: must be"),
        ({"session": "s1"}, "body.session: the session of a first message; give text too"),
        ({"text": "hi", "stream": True}, "body.stream: a spawn's first reply is not streamed"),
        ({"text": "hi", "session": ""}, "body.session: must be"),
    ],
)
def test_spawn_first_message_fields_refused_naming_the_field(extra: dict[str, Any], where: str) -> None:
    """Wrong type, over MAX_TEXT, session without text, stream true, an empty session: one problem each,
    naming the field."""
    problems = messages.check_body("agent.spawn", {"manifest": MANIFEST, **extra})
    assert len(problems) == 1 and problems[0].startswith(where), problems


def test_spawn_with_text_and_session_parses() -> None:
    """text (up to MAX_TEXT) and session build an AgentSpawn; stream false is allowed (not streamed)."""
    env = Envelope(
        type="agent.spawn",
        body={"manifest": MANIFEST, "text": "x" * MAX_TEXT, "session": "s1", "stream": False},
    )
    spawn = messages.parse(env, AgentSpawn)
    assert spawn.text == "x" * MAX_TEXT and spawn.session == "s1"


def test_spawn_ok_carries_reply_usage_or_send_error() -> None:
    """The combined reply's extra fields are typed: reply and usage, or send_error as an error body."""
    base = {"agent_id": "a-1", "worker": "w-0"}
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "tool_calls": 0, "fuel": 9}
    assert messages.check_body("agent.spawn.ok", {**base, "reply": "hi", "usage": usage}) == []
    err = {"code": "denied", "message": "no", "layer": "injection"}
    assert messages.check_body("agent.spawn.ok", {**base, "send_error": err}) == []
    assert messages.check_body("agent.spawn.ok", {**base, "send_error": {"message": "no"}}) != []


def test_requests_in_counts_a_spawn_with_text_as_two() -> None:
    """A spawn with text stands for two requests (spawn, send); without it, and any other type, one."""
    assert messages.requests_in(Envelope(type="agent.spawn", body={"manifest": MANIFEST, "text": ""})) == 2
    assert messages.requests_in(Envelope(type="agent.spawn", body={"manifest": MANIFEST})) == 1
    assert messages.requests_in(Envelope(type="agent.send", body={"agent_id": "a", "text": "x"})) == 1
