"""The OpenAI-compatible API, driven by the official `openai` client against a running daemon."""

from __future__ import annotations

import openai
import pytest
from daemon_harness import Cluster, wait_for
from http_kit import CLOCK, GREETER, start_with_agents

pytestmark = pytest.mark.integration


def test_openai_client_lists_agents_as_models_and_chats(make_cluster: type[Cluster]) -> None:
    """models.list names every agent; a completion by agent name and by id returns the agent's reply."""
    c = make_cluster(workers=1, http=True)
    greeter, clock = start_with_agents(c, GREETER, CLOCK)
    client = openai.OpenAI(base_url=c.http_url + "/v1", api_key="unused")
    assert {m.id for m in client.models.list()} == {greeter, clock}
    reply = client.chat.completions.create(
        model="greeter", messages=[{"role": "user", "content": "who are you?"}]
    )
    assert reply.model == greeter and reply.choices[0].finish_reason == "stop"
    assert "WebAssembly agent" in (reply.choices[0].message.content or "")
    assert reply.usage is not None and reply.usage.total_tokens > 0
    timed = client.chat.completions.create(
        model=clock, messages=[{"role": "user", "content": "what time is it?"}]
    )
    assert (timed.choices[0].message.content or "").startswith("The tool says:")
    with pytest.raises(openai.NotFoundError, match="no agent with id or name 'nobody'"):
        client.chat.completions.create(model="nobody", messages=[{"role": "user", "content": "hi"}])
    assert c.stop() == 0


def test_openai_client_streams_a_completion(make_cluster: type[Cluster]) -> None:
    """stream=True yields chunks whose deltas add up to the reply, a stop reason, and usage when asked."""
    c = make_cluster(workers=1, http=True)
    start_with_agents(c, GREETER)
    client = openai.OpenAI(base_url=c.http_url + "/v1", api_key="unused")
    chunks = list(
        client.chat.completions.create(
            model="greeter",
            messages=[{"role": "user", "content": "what can you do?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(pieces) > 3, "the model's text pieces arrive as separate chunks"
    assert "".join(pieces).startswith("I keep our conversation"), pieces
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert c.stop() == 0


def test_openai_sessions_follow_the_user_field_and_header(make_cluster: type[Cluster]) -> None:
    """`user` (or the X-OpenFang-Session header) picks the agent session the conversation is kept in."""
    c = make_cluster(workers=1, http=True, memory=True)
    (greeter,) = start_with_agents(c, GREETER)
    client = openai.OpenAI(base_url=c.http_url + "/v1", api_key="unused")
    client.chat.completions.create(
        model="greeter", messages=[{"role": "user", "content": "hi from alice"}], user="alice"
    )
    client.chat.completions.create(
        model="greeter",
        messages=[{"role": "user", "content": "hi from bob"}],
        extra_headers={"X-OpenFang-Session": "bob"},
    )

    def said(session: str) -> list[str]:
        body = {"agent_id": greeter, "session": session}
        return [m["text"] for m in c.ok("memory.history", body)["messages"] if m["role"] == "user"]

    # The memory writer commits in groups: the records are there soon, not at once.
    wait_for(lambda: said("openai:alice") == ["hi from alice"], what="alice's session in memory")
    wait_for(lambda: said("openai:bob") == ["hi from bob"], what="bob's session in memory")
    assert c.stop() == 0
