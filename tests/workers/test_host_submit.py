"""How the host takes a request in: a decoded ``agent.send`` is not validated twice and its body is built
through the slots, with the same value as ``messages.parse``; a request that is not decoded is still
validated, and what ``decode`` refuses never reaches the host."""

from __future__ import annotations

import random
from typing import Any

import pytest
from sandbox_helpers import make_host

from openfang.protocol import messages
from openfang.protocol.bodies import AgentSend
from openfang.protocol.envelope import Envelope, decode, encode
from openfang.protocol.errors import ProtocolError
from openfang.workers.host.agent_host import _send_body

ECHO = 'module = "builtin:echo"'


def _manifest(name: str, service: str | None = None) -> str:
    svc = f'service = "{service}"\n' if service else ""
    return f'[agent]\nname = "{name}"\n{ECHO}\n{svc}'


def _random_body(rng: random.Random) -> dict[str, Any]:
    texts = ["", "hi", "ü ünïcode", "x" * 300, "a\nb", "null", "\x00"]
    body: dict[str, Any] = {"text": rng.choice(texts)}
    if rng.random() < 0.5:
        body["agent_id"] = rng.choice(["a1", "agent-" + "z" * 40])
    else:
        body["service"] = rng.choice(["svc", "s" * 128])
    for key, values in (("session", ["s1", None, "default"]), ("stream", [True, False, None])):
        if rng.random() < 0.6:
            body[key] = rng.choice(values)
    if rng.random() < 0.1:  # nil for the one that was set: decode refuses it (exactly one must be given)
        body["agent_id" if "agent_id" in body else "service"] = None
    if rng.random() < 0.1:
        body["extra"] = 1  # an unknown field: refused by decode
    if rng.random() < 0.1:
        body["text"] = rng.choice([5, None, b"bytes"])  # mistyped: refused by decode
    return body


def test_send_body_equals_parse_over_random_bodies() -> None:
    """Every agent.send body decode accepts builds to the same AgentSend as parse, field by field."""
    rng = random.Random(15)
    accepted = refused = 0
    for _ in range(3000):
        body = _random_body(rng)
        try:
            env = decode(encode(Envelope(type="agent.send", body=body)))
        except ProtocolError:
            refused += 1
            continue
        accepted += 1
        want = messages.parse(env, AgentSend)
        got = _send_body(env.body)
        assert type(got) is AgentSend
        assert got == want, body
        for name in ("text", "agent_id", "service", "session", "stream"):
            assert getattr(got, name) is getattr(want, name) or getattr(got, name) == getattr(want, name)
            assert type(getattr(got, name)) is type(getattr(want, name))
    assert accepted > 1000 and refused > 300  # both sides of decode were exercised


def test_submit_decoded_send_reaches_the_agent() -> None:
    """A decoded agent.send handed over with decoded=True is answered as one submitted without it."""
    d = make_host()
    d.ok("agent.spawn", manifest=_manifest("e1", "echo"))
    replies = []
    for decoded in (True, False):
        env = decode(encode(Envelope(type="agent.send", body={"service": "echo", "text": "ping"})))
        d.host.submit(env, decoded=decoded)
        replies.append(d.wait(env))
    assert [r.type for r in replies] == ["agent.send.ok", "agent.send.ok"]
    assert replies[0].body["reply"] == replies[1].body["reply"]
    d.host.close()


@pytest.mark.parametrize("decoded", [False, True])
def test_submit_refuses_a_send_naming_no_agent_and_no_service(decoded: bool) -> None:
    """A body with neither agent_id nor service is refused: by decode on the wire, by parse otherwise."""
    d = make_host()
    body = {"text": "hi"}
    if decoded:  # what the worker's loop does with such a frame: decode refuses it, the host never sees it
        with pytest.raises(ProtocolError, match="agent_id"):
            decode(encode(Envelope(type="agent.send", body=body)))
    else:
        env = d.submit("agent.send", **body)
        reply = d.wait(env)
        assert reply.is_error and reply.body["code"] == "bad_request", reply.body
        assert "agent_id" in reply.body["message"]
    d.host.close()


def test_submit_not_decoded_still_validates_the_body() -> None:
    """An agent.send made in process (an agent's own request) with a mistyped field is refused, not built."""
    d = make_host()
    d.ok("agent.spawn", manifest=_manifest("e2", "echo"))
    reply = d.call("agent.send", service="echo", text=5)
    assert reply.is_error and reply.body["code"] == "bad_request"
    assert "body.text" in reply.body["message"]
    d.host.close()


def test_reply_usage_is_its_own_message_and_stays_as_sent() -> None:
    """A reply carries its message's usage dict (with fuel) without a copy: the agent's next messages get
    dicts of their own, so a reply's usage is not changed by them."""
    d = make_host()
    d.ok("agent.spawn", manifest=_manifest("e3", "echo"))
    first = d.call("agent.send", service="echo", text="one")
    kept = dict(first.body["usage"])
    assert kept["fuel"] > 0 and set(kept) >= {"prompt_tokens", "completion_tokens", "tool_calls", "fuel"}
    second = d.call("agent.send", service="echo", text="two, and longer than the first one was")
    d.call("agent.send", service="echo", text="three")
    assert first.body["usage"] == kept
    assert second.body["usage"] is not first.body["usage"]
    d.host.close()
