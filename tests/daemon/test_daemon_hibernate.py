"""Hibernate and wake on a real daemon: by hand (agent.hibernate / agent.wake, the CLI verbs) and after
idle_hibernate_s; the guest's state survives, a message to a hibernated agent is answered, the registry
and the event stream say so, and a busy or unsnapshottable agent is refused clearly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from daemon_harness import ROOT, Cluster, wait_for

from openfang.protocol.envelope import decode

pytestmark = pytest.mark.integration

COUNTER = ROOT / "examples" / "agents" / "rust" / "counter.wasm"


def counter(name: str = "counter", extra: str = "") -> str:
    return f'[agent]\nname = "{name}"\nmodule = "{COUNTER}"\n{extra}\n[sandbox.memory]\nmax_heap_mb = 8\n'


def chatty(idle_s: float) -> str:
    return f"""
[agent]
name = "chatty"
module = "builtin:llm-agent"
idle_hibernate_s = {idle_s}

[agent.model]
provider = "scripted"
default = "ok"
script = [
  {{match = '^my name is (?P<n>\\w+)', reply = 'nice to meet you {{n}}'}},
  {{match = 'what is my name', reply = 'earlier you said: {{history}}'}},
]
"""


def spawn(c: Cluster, manifest: str) -> str:
    return str(c.ok("agent.spawn", {"manifest": manifest})["agent_id"])


def say(c: Cluster, agent_id: str, text: str = "ping") -> str:
    return str(c.ok("agent.send", {"agent_id": agent_id, "text": text})["reply"])


def state_of(c: Cluster, agent_id: str) -> str:
    rows = {a["agent_id"]: a for a in c.ok("agent.list")["agents"]}
    return str(rows[agent_id]["state"])


def cli(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "openfang.cli.main", "--endpoint", c.endpoint, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def subscribe(c: Cluster) -> zmq.Socket[bytes]:
    sub = c.zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(c.events_endpoint)
    time.sleep(0.3)  # the slow joiner
    return sub


def events(sub: zmq.Socket[bytes], kind: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sub.poll(100):
            body = decode(sub.recv_multipart()[-1]).body
            if body.get("kind") == kind:
                return dict(body)
    raise AssertionError(f"no {kind} event within {timeout}s")


def test_hibernate_counter_keeps_count_across_hibernate_and_wake(make_cluster: Any) -> None:
    """A Rust counter hibernated and woken by hand (and woken again by a message) keeps counting."""
    c = make_cluster(workers=1).start()
    sub = subscribe(c)
    aid = spawn(c, counter())
    assert "message 1 " in say(c, aid)
    assert "message 2 " in say(c, aid)
    assert c.ok("agent.hibernate", {"agent_id": aid}) == {"agent_id": aid, "state": "hibernated"}
    ev = events(sub, "agent.hibernated")
    assert ev["agent_id"] == aid and ev["why"] == "request" and ev["memory_bytes"] >= ev["stored_bytes"] > 0
    assert state_of(c, aid) == "hibernated"
    snap = Path(c.data_dir) / "snapshots" / f"{aid}.snap"
    wait_for(snap.exists, what="the snapshot file")
    assert snap.stat().st_mode & 0o077 == 0
    assert c.ok("agent.wake", {"agent_id": aid})["state"] == "running"
    assert events(sub, "agent.woken")["why"] == "request"
    assert state_of(c, aid) == "running"
    assert "message 3 " in say(c, aid)
    c.ok("agent.hibernate", {"agent_id": aid})
    assert "message 4 " in say(c, aid)  # woken transparently by the message
    assert events(sub, "agent.woken")["why"] == "message"
    assert state_of(c, aid) == "running"
    info = c.ok("agent.info", {"agent_id": aid})
    assert info["messages"] == 4  # the host's counters travelled with the snapshot
    c.ok("agent.kill", {"agent_id": aid})
    wait_for(lambda: not snap.exists(), what="the dead agent's snapshot to go")
    sub.close()


def test_hibernate_cli_verbs_and_list_state(make_cluster: Any) -> None:
    """`openfang agent hibernate|wake ID` work, `agent list` shows hibernated, the log names the agent."""
    c = make_cluster(workers=1).start()
    aid = spawn(c, counter())
    say(c, aid)
    out = cli(c, "agent", "hibernate", aid)
    assert out.returncode == 0, out.stderr
    assert "hibernated" in out.stdout
    listed = cli(c, "agent", "list")
    assert listed.returncode == 0 and "hibernated" in listed.stdout, listed.stdout
    assert "message 2 " in say(c, aid)
    cli(c, "agent", "hibernate", aid)
    out = cli(c, "agent", "wake", aid)
    assert out.returncode == 0 and "running" in out.stdout, out.stderr
    names = {(e.get("event"), e.get("agent_id")) for e in c.log_events()}
    assert ("agent_hibernated", aid) in names and ("agent_woken", aid) in names


def test_hibernate_refused_while_busy_and_without_state(make_cluster: Any) -> None:
    """A suspended agent is refused with a clear sandbox_error and keeps running; waking a running agent
    is a no-op; an unknown agent is not_found."""
    c = make_cluster(workers=1).start()
    aid = spawn(c, counter())
    say(c, aid)
    c.ok("agent.suspend", {"agent_id": aid})
    reply = c.call("agent.hibernate", {"agent_id": aid})
    assert reply.is_error and reply.body["code"] == "sandbox_error"
    assert "suspended" in reply.body["message"]
    c.ok("agent.resume", {"agent_id": aid})
    assert c.ok("agent.wake", {"agent_id": aid})["state"] == "running"
    assert "message 2 " in say(c, aid)
    missing = c.call("agent.hibernate", {"agent_id": "nobody-1"})
    assert missing.is_error and missing.body["code"] == "not_found"


def test_hibernate_idle_llm_agent_keeps_conversation(make_cluster: Any) -> None:
    """The built-in LLM agent is hibernated after idle_hibernate_s and, woken by the next message,
    still has its conversation (no memory writer: the history came from the snapshot)."""
    c = make_cluster(workers=1).start()
    sub = subscribe(c)
    aid = spawn(c, chatty(0.5))
    assert say(c, aid, "my name is Ada") == "nice to meet you Ada"
    ev = events(sub, "agent.hibernated")
    assert ev["agent_id"] == aid and ev["why"] == "idle"
    assert state_of(c, aid) == "hibernated"
    assert "my name is Ada" in say(c, aid, "what is my name")
    assert events(sub, "agent.woken")["why"] == "message"
    assert events(sub, "agent.hibernated")["why"] == "idle"  # idle again: hibernated again
    sub.close()


def test_hibernate_worker_kill_restores_snapshot_agents_fresh_ones_start_over(make_cluster: Any) -> None:
    """kill -9 of the worker: a restore = "snapshot" counter comes back at its last snapshot, a hibernated
    restore = "fresh" counter comes back with the state it was hibernated with, and a running
    restore = "fresh" counter starts over."""
    c = make_cluster(workers=1, intensity=5).start()
    keeper = spawn(c, counter("keeper", 'restore = "snapshot"'))
    sleeper = spawn(c, counter("sleeper"))
    plain = spawn(c, counter("plain"))
    for aid in (keeper, sleeper, plain):
        say(c, aid)
        say(c, aid)
    for aid in (keeper, plain):  # a snapshot at 2, then woken
        c.ok("agent.hibernate", {"agent_id": aid})
        c.ok("agent.wake", {"agent_id": aid})
    c.ok("agent.hibernate", {"agent_id": sleeper})
    say(c, keeper)  # 3, after its last snapshot: lost with the worker
    snaps = Path(c.data_dir) / "snapshots"
    wait_for(
        lambda: (snaps / f"{sleeper}.snap").exists() and (snaps / f"{keeper}.snap").exists(), what="files"
    )
    wait_for(lambda: not (snaps / f"{plain}.snap").exists(), what="the woken fresh agent's file to go")
    pid = int(c.node("workers", "workers-0")["pid"])
    os.kill(pid, signal.SIGKILL)

    def back(aid: str) -> str | None:
        reply = c.call("agent.send", {"agent_id": aid, "text": "again"})
        return None if reply.is_error else str(reply.body["reply"])

    assert "message 3 " in wait_for(lambda: back(keeper), what="keeper back")
    assert "message 3 " in wait_for(lambda: back(sleeper), what="sleeper back")
    assert "message 1 " in wait_for(lambda: back(plain), what="plain back")
    names = [(e.get("event"), e.get("agent_id")) for e in c.log_events()]
    assert ("agent_restored_from_snapshot", keeper) in names


def test_hibernate_llm_agent_back_after_worker_kill_has_its_conversation_once(make_cluster: Any) -> None:
    """A hibernated LLM agent re-spawned after kill -9 of its worker comes back hibernated and wakes from its
    snapshot, and the conversation read back from memory is not put on top of it (each turn seen once)."""
    c = make_cluster(workers=1, memory=True, intensity=5)
    c.start(env={"OPENFANG_EMBEDDER": "hash"})
    aid = spawn(c, chatty(0))
    assert say(c, aid, "my name is Ada") == "nice to meet you Ada"
    c.ok("agent.hibernate", {"agent_id": aid})
    snap = Path(c.data_dir) / "snapshots" / f"{aid}.snap"
    wait_for(snap.exists, what="the snapshot file")
    os.kill(int(c.node("workers", "workers-0")["pid"]), signal.SIGKILL)

    def back() -> str | None:
        reply = c.call("agent.send", {"agent_id": aid, "text": "what is my name"})
        return None if reply.is_error else str(reply.body["reply"])

    answer = wait_for(back, what="the agent back")
    assert answer.count("my name is Ada") == 1, answer
    names = [(e.get("event"), e.get("agent_id")) for e in c.log_events()]
    # Re-spawned hibernated (its file is its state), then woken from the file by the message.
    assert ("agent_woken", aid) in names
