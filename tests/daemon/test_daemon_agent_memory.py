"""Agents and memory on a real daemon: store/recall through a conversation, episodic history through the
gateway, tool calls in procedural memory, per-agent scopes (layer 9) and retention on kill."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from daemon_harness import Cluster, wait_for

from openfang.security.audit import key_beside, verify

pytestmark = pytest.mark.integration

STORE = "{match = '^remember (?P<t>.+)', tool = 'memory_store', args = {text = '{t}'}, then = 'stored'},"
RECALL = "{match = '^recall (?P<q>.+)', tool = 'memory_recall', args = {query = '{q}'}, then = '{result}'},"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(workers=1, memory=True, intensity=5, request_timeout_ms=20000)
    try:
        c.start(env={"OPENFANG_EMBEDDER": "hash"})
        yield c
    finally:
        c.close()


def agent(name: str, rules: str, *, extra: str = "") -> str:
    return f"""
[agent]
name = "{name}"
module = "builtin:llm-agent"
tools = ["memory_store", "memory_recall"]
{extra}

[agent.model]
provider = "scripted"
default = "ok"
script = [
{rules}
]
"""


def spawn(c: Cluster, manifest: str) -> str:
    return str(c.ok("agent.spawn", {"manifest": manifest})["agent_id"])


def say(c: Cluster, agent_id: str, text: str, session: str = "s1") -> str:
    return str(c.ok("agent.send", {"agent_id": agent_id, "text": text, "session": session})["reply"])


def rows(c: Cluster, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{c.data_dir / 'memory.db'}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def test_agent_recalls_what_it_stored_in_an_earlier_message(cluster: Cluster) -> None:
    """memory_store then memory_recall through the scripted model: the agent reads its own write."""
    a = spawn(cluster, agent("notetaker", STORE + "\n" + RECALL))
    assert say(cluster, a, "remember the launch code word is marmalade") == "stored"
    hits = json.loads(say(cluster, a, "recall launch code word"))
    assert hits and "marmalade" in hits[0]["text"] and hits[0]["agent_id"] == a, hits


def test_memory_history_through_the_gateway_shows_every_message_in_and_out(cluster: Cluster) -> None:
    """Episodic memory: each user message and final reply, with session and role, via memory.history."""
    a = spawn(cluster, agent("historian", "{match = 'hello', reply = 'hello yourself'},"))
    say(cluster, a, "hello there", session="s-hist")
    say(cluster, a, "unmatched words", session="s-hist")

    def history() -> list[dict[str, Any]]:
        msgs = cluster.ok("memory.history", {"agent_id": a, "session": "s-hist"})["messages"]
        return list(msgs) if len(msgs) >= 4 else []

    msgs = list(reversed(wait_for(history, 20, "four episodic entries")))  # the reply is newest first
    assert [(m["role"], m["text"]) for m in msgs] == [
        ("user", "hello there"),
        ("assistant", "hello yourself"),
        ("user", "unmatched words"),
        ("assistant", "ok"),
    ]
    assert all(m["session"] == "s-hist" for m in msgs) and msgs[1]["tokens"] > 0


def test_tool_calls_are_recorded_in_procedural_memory(cluster: Cluster) -> None:
    """Procedural memory: every tool call with its args, status and duration (failures with their error)."""
    a = spawn(cluster, agent("procedural", STORE + "\n" + RECALL))
    say(cluster, a, "remember tea at five")
    say(cluster, a, "recall tea")
    # The model's calls are procedural records too (tool "llm": tokens and cost), left out here.
    sql = (
        "SELECT tool, status, args, duration_ms FROM tool_calls WHERE agent_id = ? AND tool != 'llm' "
        "ORDER BY id"
    )
    calls = wait_for(lambda: rows(cluster, sql, a) if len(rows(cluster, sql, a)) >= 2 else None, 20)
    assert [(c[0], c[1]) for c in calls] == [("memory_store", "ok"), ("memory_recall", "ok")]
    assert json.loads(calls[0][2])["text"] == "tea at five" and calls[0][3] >= 0


def test_agent_cannot_recall_another_agents_memories_without_a_grant(cluster: Cluster) -> None:
    """Layer 9: recalling another agent's memories is denied and audited unless memory_read grants it."""
    owner = spawn(cluster, agent("owner", STORE))
    assert say(cluster, owner, "remember the vault combination is 31-7-42") == "stored"
    args = f"{{query = '{{q}}', agents = ['{owner}']}}"
    peek = f"{{match = '^peek (?P<q>.+)', tool = 'memory_recall', args = {args}, then = '{{result}}'}},"
    spy = spawn(cluster, agent("spy", peek))
    refused = say(cluster, spy, "peek vault combination")
    assert "may not read the memory of" in refused and "31-7-42" not in refused, refused
    friend = spawn(
        cluster, agent("friend", peek, extra=f'[agent.permissions]\nmemory_read = ["self", "{owner}"]')
    )
    hits = json.loads(say(cluster, friend, "peek vault combination"))
    assert hits and "31-7-42" in hits[0]["text"] and hits[0]["agent_id"] == owner, hits

    def denied() -> list[Any]:
        with sqlite3.connect(cluster.data_dir / "audit.db") as db:
            recs = db.execute("SELECT record FROM audit_log WHERE kind = 'permissions.denied'").fetchall()
        return [r for (r,) in recs if json.loads(r)["fields"].get("agent_id") == spy]

    assert wait_for(denied, 20, "permissions.denied audit record")
    assert verify(cluster.data_dir / "audit.db", key=key_beside(cluster.data_dir / "audit.db")).ok


def test_retention_policy_applies_when_an_agent_is_killed(cluster: Cluster) -> None:
    """agent.kill reclaims memory per [agent] retention: purge deletes it, archive hides it, keep keeps it."""
    ids = {}
    for policy in ("purge", "archive", "keep"):
        ids[policy] = spawn(cluster, agent(f"ret-{policy}", STORE, extra=f'retention = "{policy}"'))
        say(cluster, ids[policy], f"remember retention test {policy}")
    for agent_id in ids.values():
        cluster.ok("agent.kill", {"agent_id": agent_id})

    def state(policy: str) -> tuple[int, int]:
        found = rows(
            cluster,
            "SELECT count(*), coalesce(sum(archived), 0) FROM memories WHERE agent_id = ?",
            ids[policy],
        )
        return int(found[0][0]), int(found[0][1])

    wait_for(lambda: state("purge") == (0, 0), 20, "purged memories")
    wait_for(lambda: state("archive") == (1, 1), 20, "archived memories")
    assert state("keep") == (1, 0)


def test_memory_history_tool_shows_the_agent_its_own_conversation(cluster: Cluster) -> None:
    """The memory_history tool returns the calling agent's earlier messages (and only its own)."""
    rules = (
        "{match = 'what did I say', tool = 'memory_history', args = {session = 's-own'}, then = '{result}'},"
    )
    manifest = agent("diarist", rules).replace(
        'tools = ["memory_store", "memory_recall"]', 'tools = ["memory_history"]'
    )
    a = spawn(cluster, manifest)
    other = spawn(cluster, agent("bystander", "{match = 'x', reply = 'y'},"))
    say(cluster, other, "x marks a secret of the bystander", session="s-own")
    say(cluster, a, "the sky is green today", session="s-own")
    wait_for(
        lambda: len(cluster.ok("memory.history", {"agent_id": a, "session": "s-own"})["messages"]) >= 2,
        20,
        "the first exchange to be recorded",
    )
    entries = json.loads(say(cluster, a, "what did I say before?", session="s-own"))
    texts = [e["text"] for e in entries]
    assert "the sky is green today" in texts, entries
    assert not any("bystander" in t for t in texts), "an agent sees only its own history"


FORGET = "{match = '^forget (?P<i>[0-9]+)', tool = 'memory_forget', args = {id = '{i}'}, then = '{result}'},"


def test_agent_forgets_its_own_memory_but_not_another_agents(cluster: Cluster) -> None:
    """memory_forget deletes the caller's memory (recall no longer finds it), never another agent's."""
    tools = 'tools = ["memory_store", "memory_recall", "memory_forget"]'
    a = spawn(
        cluster,
        agent("forgetter", STORE + RECALL + FORGET).replace(
            'tools = ["memory_store", "memory_recall"]', tools
        ),
    )
    b = spawn(
        cluster,
        agent("keeper", STORE + RECALL + FORGET).replace('tools = ["memory_store", "memory_recall"]', tools),
    )
    say(cluster, a, "remember the vault code is 4711")
    say(cluster, b, "remember the garden gate is blue")
    (mine,) = [h for h in json.loads(say(cluster, a, "recall vault code")) if "4711" in h["text"]]
    (theirs,) = [h for h in json.loads(say(cluster, b, "recall garden gate")) if "blue" in h["text"]]
    assert json.loads(say(cluster, a, f"forget {theirs['id']}")) == {"id": theirs["id"], "forgotten": False}
    assert json.loads(say(cluster, a, f"forget {mine['id']}")) == {"id": mine["id"], "forgotten": True}
    assert not [h for h in json.loads(say(cluster, a, "recall vault code")) if "4711" in h["text"]]
    assert [h for h in json.loads(say(cluster, b, "recall garden gate")) if "blue" in h["text"]]
