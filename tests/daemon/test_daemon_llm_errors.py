"""An agent whose model server fails: the client gets an llm_error naming what failed, the daemon logs it
with the agent's id, and the failed turn leaves no half-turn in the agent's conversation.

The model server is a real HTTP server on 127.0.0.1 speaking the OpenAI chat protocol, told per request
how to fail: HTTP 500, a body that is not JSON, JSON without ``choices``, or no answer before the timeout.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from daemon_harness import Cluster, wait_for
from model_server import ModelServer

pytestmark = pytest.mark.integration


MANIFEST = """
[agent]
name = "talker"
module = "builtin:llm-agent"

[agent.model]
provider = "openai"
name = "test-model-7"
base_url = "http://127.0.0.1:{port}/v1"
timeout = 1.0
max_retries = 1
retry_backoff = 0.01
"""


def _ctl(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openfang.cli.main", "--endpoint", c.endpoint, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _spawn(c: Cluster, server: ModelServer) -> str:
    body = c.ok("agent.spawn", {"manifest": MANIFEST.format(port=server.port)})
    return str(body["agent_id"])


@pytest.mark.parametrize(
    ("how", "status", "cause", "words"),
    [
        ("500", 500, "http_status", "upstream exploded"),
        ("notjson", None, "malformed", "malformed JSON"),
        ("nochoices", None, "malformed", "no choices"),
        ("slow", None, "timeout", "timed out after 1s"),
    ],
)
def test_llm_failure_reaches_the_client_as_llm_error_naming_provider_model_and_cause(
    make_cluster: type[Cluster],
    model_server: ModelServer,
    how: str,
    status: int | None,
    cause: str,
    words: str,
) -> None:
    """500, non-JSON, no choices, timeout: agent send --json answers llm_error with provider, model,
    status or cause and no fallback; the daemon logs it with the agent id; the history stays whole."""
    c = make_cluster(workers=1).start()
    agent = _spawn(c, model_server)
    # A 500 is retried once (max_retries = 1) and fails again; a timeout has used up the whole deadline.
    model_server.plan.extend([how, how] if how == "500" else [how])
    res = _ctl(c, "agent", "send", agent, "first question", "--json")
    assert res.returncode == 1, res.stderr
    err = json.loads(res.stdout)["error"]
    assert err["code"] == "llm_error", err
    assert "openai model test-model-7" in err["message"] and words in err["message"]
    llm = err["llm"]
    assert llm["provider"] == "openai" and llm["model"] == "test-model-7"
    assert llm["status"] == status and llm["cause"] == cause and llm["fallback_tried"] is False
    human = _ctl(c, "agent", "send", agent, "second question")  # plan is empty now: this one is answered
    assert human.returncode == 0 and human.stdout.strip() == "echo: second question", human.stderr
    # The failed turn was taken back: the model saw only the new question, no dangling "first question".
    assert model_server.requests[-1]["messages"] == [{"role": "user", "content": "second question"}]
    events = c.log_events()
    failed = [e for e in events if e.get("event") == "agent_message_failed"]
    assert failed and failed[0]["agent_id"] == agent and failed[0]["code"] == "llm_error"
    assert failed[0]["llm"]["model"] == "test-model-7" and failed[0].get("worker") == "workers-0"
    if how == "500":
        retries = [e for e in events if e.get("event") == "llm_retry"]
        assert retries and retries[0]["agent_id"] == agent and retries[0]["model"] == "test-model-7"
    assert c.stop() == 0


def test_llm_error_with_a_fallback_names_every_attempt(
    make_cluster: type[Cluster], model_server: ModelServer
) -> None:
    """A fallback chain whose every model fails: llm_error says a fallback was tried and lists each."""
    manifest = MANIFEST.format(port=model_server.port) + (
        '\n[[agent.model.fallback]]\nprovider = "openai"\nname = "backup-model"\nlabel = "backup"\n'
        f'base_url = "http://127.0.0.1:{model_server.port}/v1"\nmax_retries = 0\n'
    )
    c = make_cluster(workers=1).start()
    agent = c.ok("agent.spawn", {"manifest": manifest})["agent_id"]
    model_server.plan.extend(["500", "500", "nochoices"])
    reply = c.call("agent.send", {"agent_id": agent, "text": "hello"})
    assert reply.is_error and reply.body["code"] == "llm_error"
    llm = reply.body["llm"]
    assert llm["fallback_tried"] is True
    assert [(a["provider"], a["model"], a["status"], a["cause"]) for a in llm["attempts"]] == [
        ("openai", "test-model-7", 500, "http_status"),
        ("backup", "backup-model", None, "malformed"),
    ]
    assert "fallback tried" in reply.body["message"]
    wait_for(lambda: any(e.get("event") == "llm_fallback" for e in c.log_events()), what="llm_fallback log")
    fb = next(e for e in c.log_events() if e.get("event") == "llm_fallback")
    assert fb["agent_id"] == agent and fb["next"] == "backup"
    assert c.stop() == 0
