"""The resident cap on a real daemon (worker arg ``max_resident``): past it the least recently used idle
agents are hibernated and every one still answers with its state; after a daemon restart, agents that were
hibernated come back hibernated (no sandbox until their next message) and still answer with their state."""

from __future__ import annotations

from typing import Any

import pytest
from daemon_harness import ROOT, Cluster, wait_for

from openfang.protocol.envelope import decode

pytestmark = pytest.mark.integration

COUNTER = ROOT / "examples" / "agents" / "rust" / "counter.wasm"
CAP = """
[supervisor.children.pool.args]
max_resident = 3
"""


def counter(name: str = "counter") -> str:
    return f'[agent]\nname = "{name}"\nmodule = "{COUNTER}"\n[sandbox.memory]\nmax_heap_mb = 8\n'


def say(c: Cluster, agent_id: str) -> str:
    return str(c.ok("agent.send", {"agent_id": agent_id, "text": "tick"})["reply"])


def states(c: Cluster) -> dict[str, str]:
    return {a["agent_id"]: str(a["state"]) for a in c.ok("agent.list")["agents"]}


def asleep(c: Cluster, count: int) -> dict[str, str]:
    def enough() -> dict[str, str] | None:
        now = states(c)
        return now if sum(s == "hibernated" for s in now.values()) == count else None

    result: dict[str, str] = wait_for(enough, what=f"{count} agents hibernated")
    return result


def test_daemon_resident_cap_hibernates_lru_and_every_agent_answers(make_cluster: Any) -> None:
    """max_resident = 3 and 6 counters used in order: the 3 used first are hibernated (agent.hibernated
    events say why cap), the 3 used last stay running, and each hibernated one answers with its count."""
    c = make_cluster(workers=1, extra=CAP).start()
    sub = c.subscribe()
    ids = [str(c.ok("agent.spawn", {"manifest": counter()})["agent_id"]) for _ in range(6)]
    for aid in ids:
        assert "message 1 " in say(c, aid)
    now = asleep(c, 3)
    assert [now[a] for a in ids] == ["hibernated"] * 3 + ["running"] * 3
    whys = set()
    while sub.poll(200):
        topic, raw = sub.recv_multipart()
        if topic == b"agent.hibernated":
            whys.add(decode(raw).body.get("why"))
    assert "cap" in whys
    for aid in ids[:3]:
        assert "message 2 " in say(c, aid)  # woken with its count; others go to sleep in turn
    now = asleep(c, 3)
    assert [now[a] for a in ids[:3]] == ["running"] * 3
    sub.close()
    assert c.stop() == 0


def test_daemon_restart_brings_hibernated_agents_back_hibernated(make_cluster: Any) -> None:
    """A daemon stop and start: agents that were hibernated are re-registered hibernated (not loaded), and
    answer their next message with the count they had; running ones come back running (fresh)."""
    c = make_cluster(workers=1, extra=CAP).start()
    ids = [str(c.ok("agent.spawn", {"manifest": counter()})["agent_id"]) for _ in range(5)]
    for aid in ids:
        say(c, aid)
        say(c, aid)
    before = asleep(c, 2)
    sleepers = [a for a in ids if before[a] == "hibernated"]
    assert c.stop() == 0
    c.start()
    wait_for(
        lambda: [states(c)[a] for a in sleepers] == ["hibernated"] * 2, what="the sleepers back, hibernated"
    )
    names = [(e.get("event"), e.get("agent_id")) for e in c.log_events()]
    assert not any(n == "agent_restored_from_snapshot" and a in sleepers for n, a in names)
    for aid in sleepers:
        assert "message 3 " in say(c, aid)  # its state came back from its file on this message
    assert c.stop() == 0
