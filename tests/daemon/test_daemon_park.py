"""Parked agents on a real daemon: a hibernated agent whose snapshot file is written is let go by its
worker (a ParkedAgent of ~0.3 KB is kept, no sandbox or record) and answers its next message with its state
and kv keys; bursts are answered in order; a worker kill -9 and a daemon restart leave them parked and
answering."""

from __future__ import annotations

import os
import re
import signal
from typing import Any

import pytest
import zmq
from daemon_harness import ROOT, Cluster, wait_for

from openfang.protocol.envelope import Envelope, decode, encode

pytestmark = pytest.mark.integration

COUNTER = ROOT / "examples" / "agents" / "rust" / "counter.wasm"
CAP = """
[supervisor.children.pool.args]
max_resident = 2
"""
KEEPER = """
[agent]
name = "keeper"
module = "builtin:llm-agent"
tools = ["kv_set", "kv_get"]
[agent.model]
provider = "scripted"
default = "no rule"
script = [
  {match = "remember (?P<v>\\\\w+)", tool = "kv_set", args = {key = "k", value = "{v}"}, then = "stored"},
  {match = "recall", tool = "kv_get", args = {key = "k"}, then = "got {result}"},
]
"""


def counter() -> str:
    return f'[agent]\nname = "counter"\nmodule = "{COUNTER}"\n[sandbox.memory]\nmax_heap_mb = 8\n'


def say(c: Cluster, agent_id: str, text: str = "tick") -> str:
    return str(c.ok("agent.send", {"agent_id": agent_id, "text": text})["reply"])


def count(reply: str) -> int:
    found = re.search(r"message (\d+) ", reply)
    assert found, reply
    return int(found.group(1))


def parked(c: Cluster) -> set[str]:
    """Agents whose worker holds them parked (agent.list merges the worker's record: spawn = parked)."""
    return {str(a["agent_id"]) for a in c.ok("agent.list")["agents"] if a.get("spawn") == "parked"}


def wait_parked(c: Cluster, ids: list[str]) -> None:
    wait_for(lambda: set(ids) <= parked(c), what=f"{ids} parked")


def test_park_agents_answer_with_their_state_and_kv_and_bursts_in_order(make_cluster: Any) -> None:
    """max_resident = 2, 6 counters and a kv keeper: the least recently used are parked (agent.list says
    hibernated, agent.info answers without waking), each answers its next message with its count, the
    keeper recalls its kv key, and 5 messages sent at once to a parked counter are answered in order."""
    c = make_cluster(workers=1, extra=CAP).start()
    keeper = str(c.ok("agent.spawn", {"manifest": KEEPER})["agent_id"])
    assert say(c, keeper, "remember blue") == "stored"
    ids = [str(c.ok("agent.spawn", {"manifest": counter()})["agent_id"]) for _ in range(6)]
    for aid in ids:
        assert count(say(c, aid)) == 1
    wait_parked(c, [keeper, *ids[:3]])
    states = {a["agent_id"]: a["state"] for a in c.ok("agent.list")["agents"]}
    assert all(states[a] == "hibernated" for a in [keeper, *ids[:3]])
    assert c.ok("agent.info", {"agent_id": ids[0]})["state"] == "hibernated"
    assert ids[0] in parked(c)  # agent.info did not wake it
    assert "blue" in say(c, keeper, "recall")
    assert count(say(c, ids[0])) == 2
    target = ids[1]
    sock = c.zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(c.endpoint)
    try:
        sent = [Envelope(type="agent.send", body={"agent_id": target, "text": "tick"}) for _ in range(5)]
        for env in sent:
            sock.send(encode(env))
        replies: dict[Any, Envelope] = {}
        while len(replies) < 5:
            assert sock.poll(15_000), "a message to a parked agent was never answered"
            reply = decode(sock.recv())
            replies[reply.id] = reply
    finally:
        sock.close()
    assert [count(str(replies[e.id].body["reply"])) for e in sent] == [2, 3, 4, 5, 6]
    assert c.stop() == 0


def test_park_worker_kill_and_daemon_restart_keep_parked_agents_answering(make_cluster: Any) -> None:
    """kill -9 of the worker: parked counters come back parked (no sandbox) on the new worker and answer
    with their count; after a daemon stop and start they are parked again and still answer."""
    c = make_cluster(workers=1, extra=CAP).start()
    ids = [str(c.ok("agent.spawn", {"manifest": counter()})["agent_id"]) for _ in range(5)]
    for aid in ids:
        say(c, aid)
        say(c, aid)
    sleepers = ids[:3]
    wait_parked(c, sleepers)
    pid = int(c.node("workers", "workers-0")["pid"])
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: c.node("workers", "workers-0").get("pid") not in (None, pid), what="a new worker")
    wait_parked(c, sleepers)
    assert count(say(c, sleepers[0])) == 3
    assert c.stop() == 0
    c.start()
    wait_parked(c, sleepers[1:])
    for aid in sleepers[1:]:
        assert count(say(c, aid)) == 3  # its state came back from its file on this message
    assert count(say(c, sleepers[0])) == 1  # woken (running) at the stop: restore = "fresh" starts over
    assert c.stop() == 0
