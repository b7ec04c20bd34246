"""agent.move on a real daemon: a counter guest keeps its count across a move (by snapshot) and across a
reload that removes its worker; messages sent during moves are all answered, in order; the LLM agent keeps
its conversation; a module a snapshot cannot hold moves fresh; bad moves are refused clearly; a target
killed under a move loses nothing and duplicates nothing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from daemon_harness import ROOT, UNLIMITED, Cluster, wait_for

from openfang.protocol.envelope import Envelope, decode, encode

pytestmark = pytest.mark.integration

COUNTER = ROOT / "examples" / "agents" / "rust" / "counter.wasm"
# A guest with a mutable global it does not export: a snapshot cannot hold it, so it moves fresh.
HIDDEN_WAT = """(module
  (memory (export "memory") 1)
  (global $secret (mut i32) (i32.const 0))
  (func (export "alloc") (param $n i32) (result i32) (i32.const 1024))
  (func (export "agent_handle") (param $p i32) (param $n i32) (result i64)
    (global.set $secret (i32.add (global.get $secret) (i32.const 1)))
    (i32.store8 (i32.const 2048) (i32.add (i32.const 48) (global.get $secret)))
    (i64.or (i64.shl (i64.const 2048) (i64.const 32)) (i64.const 1)))
)"""
# One client (one uid) sends a stream of messages: lift the request rates so every answer is the agent's.


def counter(name: str = "counter", extra: str = "") -> str:
    return f'[agent]\nname = "{name}"\nmodule = "{COUNTER}"\n{extra}\n[sandbox.memory]\nmax_heap_mb = 8\n'


def friend() -> str:
    return """
[agent]
name = "friend"
module = "builtin:llm-agent"

[agent.model]
provider = "scripted"
default = "ok"
script = [
  {match = '^my name is (?P<n>\\w+)', reply = 'nice to meet you {n}'},
  {match = 'what is my name', reply = 'earlier you said: {history}'},
]
"""


def spawn(c: Cluster, manifest: str, worker: str | None = None) -> str:
    body: dict[str, Any] = {"manifest": manifest}
    if worker:
        body["worker"] = worker
    return str(c.ok("agent.spawn", body)["agent_id"])


def say(c: Cluster, agent_id: str, text: str = "ping") -> str:
    return str(c.ok("agent.send", {"agent_id": agent_id, "text": text})["reply"])


def count(reply: str) -> int:
    found = re.search(r"message (\d+) ", reply)
    assert found, reply
    return int(found.group(1))


def worker_of(c: Cluster, agent_id: str) -> str:
    return str(c.ok("agent.info", {"agent_id": agent_id})["worker"])


def worker_pid(c: Cluster, worker_id: str) -> int:
    return int(c.node("workers", worker_id)["pid"])


def next_event(sub: zmq.Socket[bytes], kind: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sub.poll(100):
            body = decode(sub.recv_multipart()[-1]).body
            if body.get("kind") == kind:
                return dict(body)
    raise AssertionError(f"no {kind} event within {timeout}s")


def cli(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "openfang.cli.main", "--endpoint", c.endpoint, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_move_counter_keeps_its_count_both_ways(make_cluster: Any) -> None:
    """A Rust counter moved to the other worker (by id, by placement, by the CLI, hibernated) keeps
    counting; agent.moved is published, the reply and the log say the snapshot path was used."""
    c = make_cluster(workers=2).start()
    sub = c.subscribe()
    aid = spawn(c, counter(), worker="workers-0")
    assert count(say(c, aid)) == 1
    assert count(say(c, aid)) == 2
    moved = c.ok("agent.move", {"agent_id": aid, "to": "workers-1"})
    assert moved["worker"] == "workers-1" and moved["moved_from"] == "workers-0", moved
    assert moved["path"] == "snapshot" and moved["state"] == "running" and moved["move_ms"] > 0, moved
    event = next_event(sub, "agent.moved")
    assert (event["agent_id"], event["from"], event["to"], event["path"]) == (
        aid,
        "workers-0",
        "workers-1",
        "snapshot",
    )
    assert worker_of(c, aid) == "workers-1"
    assert count(say(c, aid)) == 3
    back = c.ok("agent.move", {"agent_id": aid})  # no target: the least loaded other worker
    assert back["worker"] == "workers-0" and back["path"] == "snapshot"
    assert count(say(c, aid)) == 4
    out = cli(c, "agent", "move", aid, "--to", "workers-1")
    assert out.returncode == 0, out.stderr
    assert "snapshot" in out.stdout and "workers-1" in out.stdout
    assert count(say(c, aid)) == 5
    c.ok("agent.hibernate", {"agent_id": aid})  # a hibernated agent moves from its file
    assert c.ok("agent.move", {"agent_id": aid})["path"] == "snapshot"
    assert count(say(c, aid)) == 6
    assert c.ok("agent.info", {"agent_id": aid})["restarts"] == 0  # a move is not a restart
    lines = [e for e in c.log_events() if e.get("agent_id") == aid]
    names = {e.get("event") for e in lines}
    assert {"agent_moving_out", "agent_moved_out", "agent_moved", "agent_restored_from_snapshot"} <= names
    assert not (Path(c.data_dir) / "snapshots" / f"{aid}.snap").exists()  # restore = "fresh": used once
    sub.close()
    assert c.stop() == 0


def test_move_messages_sent_during_moves_are_all_answered_in_order(make_cluster: Any) -> None:
    """A client sends to a counter in a loop while it is moved back and forth: every message is answered
    (a reply, or restarting with retry_after_ms), none not_found, and the count never goes back."""
    c = make_cluster(workers=2, extra=UNLIMITED).start()
    aid = spawn(c, counter(), worker="workers-0")
    answers: list[Envelope] = []
    stop = threading.Event()

    def load() -> None:
        sock = c.zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(c.endpoint)
        try:
            while not stop.is_set():
                req = Envelope(type="agent.send", body={"agent_id": aid, "text": "tick"})
                sock.send(encode(req))
                assert sock.poll(15_000), "a message was never answered"
                answers.append(decode(sock.recv()))
        finally:
            sock.close()

    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(0.3)
        for target in ("workers-1", "workers-0", "workers-1", "workers-0"):
            assert c.ok("agent.move", {"agent_id": aid, "to": target})["path"] == "snapshot"
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    errors = [a.body for a in answers if a.is_error]
    assert all(e["code"] == "restarting" and e["retry_after_ms"] > 0 for e in errors), errors
    counts = [count(str(a.body["reply"])) for a in answers if not a.is_error]
    assert len(counts) > 10, len(counts)
    assert counts == list(range(1, len(counts) + 1)), counts  # nothing lost, nothing repeated
    assert count(say(c, aid)) == len(counts) + 1
    assert c.stop() == 0


def test_move_llm_agent_keeps_its_conversation(make_cluster: Any) -> None:
    """The built-in LLM agent (scripted model) is told a fact, moved, and uses it on the other worker."""
    c = make_cluster(workers=2, memory=True)
    c.start(env={"OPENFANG_EMBEDDER": "hash"})
    aid = spawn(c, friend(), worker="workers-0")
    assert say(c, aid, "my name is Ada") == "nice to meet you Ada"
    moved = c.ok("agent.move", {"agent_id": aid, "to": "workers-1"})
    assert moved["path"] == "snapshot", moved
    answer = say(c, aid, "what is my name")
    assert answer.count("my name is Ada") == 1, answer  # from its snapshot, not again from memory
    assert worker_of(c, aid) == "workers-1"
    assert c.stop() == 0


def test_move_unsnapshottable_module_moves_fresh_and_says_so(make_cluster: Any, tmp_path: Path) -> None:
    """A module with a hidden mutable global cannot be snapshotted: it is moved by a fresh start (path
    fresh, the reason given) and answers on the target."""
    c = make_cluster(workers=2).start()
    wat = tmp_path / "hidden.wat"
    wat.write_text(HIDDEN_WAT)
    aid = spawn(c, f'[agent]\nname = "hidden"\nmodule = "{wat}"\n', worker="workers-0")
    assert say(c, aid) == "1"
    assert say(c, aid) == "2"
    moved = c.ok("agent.move", {"agent_id": aid, "to": "workers-1"})
    assert moved["path"] == "fresh" and moved["worker"] == "workers-1", moved
    assert say(c, aid) == "1"  # its hidden state did not come along: a new instance
    assert c.stop() == 0


def test_move_refusals_are_clear_and_change_nothing(make_cluster: Any) -> None:
    """Unknown agent: not_found; unknown worker: not_found; same worker: bad_request; a full target:
    busy, and the agent runs where it was with its count; a suspended agent stays suspended."""
    full = "\n[supervisor.children.pool.args]\nmax_agents = 2\n"
    c = make_cluster(workers=2, extra=full).start()
    aid = spawn(c, counter(), worker="workers-0")
    say(c, aid)
    say(c, aid)

    def refused(body: dict[str, Any]) -> dict[str, Any]:
        reply = c.call("agent.move", body)
        assert reply.is_error, reply.body
        return dict(reply.body)

    assert refused({"agent_id": "nobody-1"})["code"] == "not_found"
    unknown = refused({"agent_id": aid, "to": "workers-9"})
    assert unknown["code"] == "not_found" and "workers-9" in unknown["message"]
    same = refused({"agent_id": aid, "to": "workers-0"})
    assert same["code"] == "bad_request" and "already runs on worker 'workers-0'" in same["message"]
    spawn(c, counter("filler"), worker="workers-1")
    spawn(c, counter("filler"), worker="workers-1")
    busy = refused({"agent_id": aid, "to": "workers-1"})
    assert busy["code"] == "busy" and "max_agents" in busy["message"], busy
    assert "runs on workers-0 again" in busy["message"]
    assert worker_of(c, aid) == "workers-0"
    assert count(say(c, aid)) == 3
    c.ok("agent.kill", {"agent_id": "filler-1"})
    c.ok("agent.suspend", {"agent_id": aid})
    moved = c.ok("agent.move", {"agent_id": aid, "to": "workers-1"})
    assert moved["state"] == "suspended" and moved["path"] == "snapshot", moved
    wait_for(lambda: c.ok("agent.info", {"agent_id": aid}).get("activity") == "suspended", what="suspended")
    c.ok("agent.resume", {"agent_id": aid})
    assert count(say(c, aid)) == 4
    assert c.stop() == 0


def test_move_with_one_worker_is_refused(make_cluster: Any) -> None:
    """With no other worker to go to, agent.move answers not_found naming the problem."""
    c = make_cluster(workers=1).start()
    aid = spawn(c, counter())
    reply = c.call("agent.move", {"agent_id": aid})
    assert reply.is_error and reply.body["code"] == "not_found"
    assert "no other worker" in reply.body["message"]
    assert count(say(c, aid)) == 1
    assert c.stop() == 0


def test_move_target_killed_during_the_move_loses_and_duplicates_nothing(make_cluster: Any) -> None:
    """kill -9 of the target worker while the agent is arriving there: the move answers an error, the agent
    runs again (once, with its count from the snapshot) and the restarted target does not host it."""
    c = make_cluster(workers=2, intensity=5).start()
    aid = spawn(c, counter(), worker="workers-0")
    say(c, aid)
    say(c, aid)
    target = worker_pid(c, "workers-1")
    os.kill(target, signal.SIGSTOP)  # the target hangs: the move waits on it
    try:
        request = Envelope(type="agent.move", body={"agent_id": aid, "to": "workers-1"})
        c.send_raw(encode(request))
        snap = Path(c.data_dir) / "snapshots" / f"{aid}.snap"
        wait_for(snap.exists, what="the source to write the snapshot")
        time.sleep(0.2)
    finally:
        os.kill(target, signal.SIGKILL)
    reply = c.recv_env()
    while reply.id != request.id:
        reply = c.recv_env()
    assert reply.is_error, reply.body
    assert "workers-1" in reply.body["message"]
    wait_for(lambda: c.node("workers", "workers-1").get("pid") not in (None, target), what="a new workers-1")

    def back() -> int | None:
        answer = c.call("agent.send", {"agent_id": aid, "text": "again"})
        return None if answer.is_error else count(str(answer.body["reply"]))

    assert wait_for(back, what="the agent back") == 3
    rows = [a for a in c.ok("agent.list")["agents"] if a["agent_id"] == aid]
    assert len(rows) == 1 and rows[0]["state"] == "running", rows
    time.sleep(1.5)  # the restarted workers-1 has said hello with its (empty) agent list
    hosts = [e for e in c.log_events() if e.get("event") == "agent_unregistered_killed"]
    assert not hosts, hosts
    assert count(say(c, aid)) == 4
    assert c.stop() == 0


def test_reload_removing_a_worker_moves_a_counter_with_its_count(make_cluster: Any) -> None:
    """A reload from 2 workers to 1: the counter on the removed worker is moved by snapshot before the
    worker stops, and keeps counting on the other one."""
    c = make_cluster(workers=2).start()
    sub = c.subscribe()
    aid = spawn(c, counter(), worker="workers-1")
    other = spawn(c, counter("other"), worker="workers-0")
    say(c, aid)
    say(c, aid)
    say(c, other)
    c.write_config(workers=1)
    c.signal(signal.SIGHUP)
    wait_for(lambda: c.ok("status")["reloads"] == 1, what="the reload")
    event = next_event(sub, "agent.moved")
    assert (event["agent_id"], event["from"], event["to"]) == (aid, "workers-1", "workers-0"), event
    assert event["path"] == "snapshot" and event["why"] == "reload"
    assert count(say(c, aid)) == 3
    assert count(say(c, other)) == 2
    assert worker_of(c, aid) == "workers-0"
    names = {e.get("event") for e in c.log_events()}
    assert {"reload_moving_agents", "workers_drained"} <= names
    sub.close()
    assert c.stop() == 0


def test_reload_replacing_the_only_worker_keeps_a_counters_count(make_cluster: Any) -> None:
    """A reload that replaces the only worker: the counter's state goes to disk before the stop and comes
    back on the replacement; a temporary agent with nowhere to go is lost as before."""
    c = make_cluster(workers=1).start()
    aid = spawn(c, counter())
    temp = spawn(c, counter("passing", 'restart = "temporary"'))
    say(c, aid)
    say(c, aid)
    old = worker_pid(c, "workers-0")
    c.config_path.write_text(c.config_path.read_text().replace("heartbeat_ms = 3000", "heartbeat_ms = 4000"))
    c.signal(signal.SIGHUP)
    wait_for(lambda: c.ok("status")["reloads"] == 1, what="the reload")
    wait_for(lambda: c.node("workers", "workers-0").get("pid") not in (None, old), what="the replacement")

    def back() -> int | None:
        answer = c.call("agent.send", {"agent_id": aid, "text": "again"})
        return None if answer.is_error else count(str(answer.body["reply"]))

    assert wait_for(back, what="the counter back") == 3
    rows = {a["agent_id"]: a for a in c.ok("agent.list")["agents"]}
    assert rows[temp]["state"] == "dead" and "worker_stopped" in rows[temp]["reason"], rows[temp]
    assert c.stop() == 0
