"""Streamed replies on the wire protocol: agent.send with stream = true, the Python client, the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from daemon_harness import ROOT, Cluster
from http_kit import CLOCK, GREETER, start_with_agents

from openfang.protocol.client import Client
from openfang.protocol.messages import CHUNK_TYPE

pytestmark = pytest.mark.integration


def test_stream_yields_text_pieces_then_the_reply(make_cluster: type[Cluster]) -> None:
    """Client.stream: agent.send.chunk text pieces in order, then agent.send.ok with the same text whole."""
    c = make_cluster(workers=1)
    (greeter,) = start_with_agents(c, GREETER)
    with Client(c.endpoint) as client:
        got = list(client.stream("agent.send", {"agent_id": greeter, "text": "who are you?"}))
    kinds = [kind for kind, _ in got]
    assert kinds[-1] == "agent.send.ok" and set(kinds[:-1]) == {CHUNK_TYPE} and len(kinds) > 3
    pieces = "".join(part["text"] for kind, part in got[:-1])
    assert pieces == got[-1][1]["reply"] and pieces.startswith("I am greeter")
    assert all(part["agent_id"] == greeter and part["kind"] == "text" for _, part in got[:-1])
    assert c.stop() == 0


def test_stream_reports_tool_progress_before_the_text(make_cluster: type[Cluster]) -> None:
    """A tool call in a streamed reply shows as tool start, tool done (ok), then the model's text."""
    c = make_cluster(workers=1)
    (clock,) = start_with_agents(c, CLOCK)
    with Client(c.endpoint) as client:
        parts = [
            p for k, p in client.stream("agent.send", {"agent_id": clock, "text": "time?"}) if k == CHUNK_TYPE
        ]
    tools = [(p["tool"], p["state"], p.get("ok")) for p in parts if p["kind"] == "tool"]
    assert tools == [("time_now", "start", None), ("time_now", "done", True)]
    first_text = next(i for i, p in enumerate(parts) if p["kind"] == "text")
    assert first_text > max(i for i, p in enumerate(parts) if p["kind"] == "tool")
    assert c.stop() == 0


def test_stream_parts_are_skipped_by_a_plain_request(make_cluster: type[Cluster]) -> None:
    """Client.request with stream = true in the body still returns just the reply."""
    c = make_cluster(workers=1)
    (greeter,) = start_with_agents(c, GREETER)
    with Client(c.endpoint) as client:
        reply = client.request("agent.send", {"agent_id": greeter, "text": "hello", "stream": True})
    assert reply["reply"] == "Hello! Ask me who I am."
    assert c.stop() == 0


def test_cli_agent_send_stream_prints_pieces_and_tool_progress(make_cluster: type[Cluster]) -> None:
    """`openfang agent send --stream`: the reply on stdout, tool progress on stderr; --json gives lines."""
    c = make_cluster(workers=1)
    (clock,) = start_with_agents(c, CLOCK)
    cmd = [sys.executable, "-m", "openfang.cli.main", "agent", "send", clock, "what time is it?", "--stream"]
    out = subprocess.run([*cmd, "--endpoint", c.endpoint], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # The injection detector may put a warning line before the tool's JSON; the reply is still printed.
    assert out.stdout.startswith("The tool says: ") and out.stdout.endswith("}\n"), out.stdout
    assert out.stderr.splitlines() == ["[tool time_now start]", "[tool time_now done ok]"]
    lines = subprocess.run(
        [*cmd, "--endpoint", c.endpoint, "--json"], capture_output=True, text=True, timeout=60
    )
    kinds = [json.loads(line)["type"] for line in lines.stdout.splitlines()]
    assert kinds[0] == CHUNK_TYPE and kinds[-1] == "agent.send.ok"
    assert c.stop() == 0


def test_manifest_model_stream_true_is_accepted_and_answers(make_cluster: type[Cluster]) -> None:
    """`stream = true` in [agent.model] is a known key (the provider streams); replies are unchanged."""
    c = make_cluster(workers=1)
    streaming = GREETER.replace('provider = "scripted"', 'provider = "scripted"\nstream = true')
    (agent,) = start_with_agents(c, streaming)
    assert c.ok("agent.send", {"agent_id": agent, "text": "hello"})["reply"] == "Hello! Ask me who I am."
    bad = c.call(
        "agent.spawn",
        {"manifest": GREETER.replace('provider = "scripted"', 'provider = "scripted"\nstream = 1')},
    )
    assert bad.is_error and "key 'stream'" in str(bad.body) and "true or false" in str(bad.body)
    assert c.stop() == 0


def test_node_example_client_shows_the_streamed_parts(make_cluster: type[Cluster]) -> None:
    """examples/node-client --stream prints each agent.send.chunk as a JSON line, then the whole reply."""
    client = ROOT / "examples" / "node-client"
    node = shutil.which("node")
    assert node is not None and (client / "node_modules" / "zeromq").is_dir(), (
        "make install sets the client up"
    )
    c = make_cluster(workers=1)
    (clock,) = start_with_agents(c, CLOCK)
    body = json.dumps({"agent_id": clock, "text": "what time is it?"})
    out = subprocess.run(
        [node, "client.mjs", "--endpoint", c.endpoint, "--stream", "--body", body, "agent.send"],
        cwd=client,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    chunks = [json.loads(line)["chunk"] for line in lines if line.startswith('{"chunk"')]
    reply = json.loads("\n".join(line for line in lines if not line.startswith('{"chunk"')))
    assert [p["state"] for p in chunks if p["kind"] == "tool"] == ["start", "done"]
    # The pieces are the model's text as it came; the reply is that text after the output layers, which
    # may add a warning line in front (the injection detector), never take from it.
    streamed = "".join(p["text"] for p in chunks if p["kind"] == "text")
    assert streamed.startswith("The tool says:") and reply["reply"].endswith(streamed), (streamed, reply)
    assert c.stop() == 0
