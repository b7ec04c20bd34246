"""Durable agents on a real daemon: they survive kill -9 of their worker, of the gateway and of the daemon,
reloads, and keep their ids; restart by policy and intensity; messages during a restart are answered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from daemon_harness import UNLIMITED, Cluster, wait_for

from openfang.protocol.envelope import Envelope, decode, encode

pytestmark = pytest.mark.integration

TRAP_WAT = """(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_handle") (param i32) (param i32) (result i64) (unreachable))
)"""


# The load below comes from one client (one uid): lift the per-client and global request rates, and the
# per-agent one, so every answer is about the agent, not about the rate limits.


def echo(name: str, restart: str = "permanent", extra: str = "") -> str:
    return f'[agent]\nname = "{name}"\nmodule = "builtin:echo"\nrestart = "{restart}"\n{extra}\n'


def friend(name: str = "friend") -> str:
    return f"""
[agent]
name = "{name}"
module = "builtin:llm-agent"
restart_intensity = 5

[agent.model]
provider = "scripted"
default = "ok"
script = [
  {{match = '^my name is (?P<n>\\w+)', reply = 'nice to meet you {{n}}'}},
  {{match = 'what is my name', reply = 'earlier you said: {{history}}'}},
]
"""


def spawn(c: Cluster, manifest: str, **body: Any) -> str:
    return str(c.ok("agent.spawn", {"manifest": manifest, **body})["agent_id"])


def say(c: Cluster, agent_id: str, text: str = "ping") -> Envelope:
    return c.call("agent.send", {"agent_id": agent_id, "text": text})


def worker_of(c: Cluster, agent_id: str) -> str:
    return str(c.ok("agent.info", {"agent_id": agent_id})["worker"])


def worker_pid(c: Cluster, worker_id: str) -> int:
    return int(c.node("workers", worker_id)["pid"])


def listing(c: Cluster) -> dict[str, dict[str, Any]]:
    return {a["agent_id"]: a for a in c.ok("agent.list")["agents"]}


def answers(c: Cluster, agent_id: str) -> bool:
    reply = say(c, agent_id, "are you back")
    return not reply.is_error and reply.body["agent_id"] == agent_id


def events(sub: zmq.Socket[bytes], kind: str, timeout: float = 15.0) -> Iterator[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sub.poll(100):
            body = decode(sub.recv_multipart()[1]).body
            if body.get("kind") == kind:
                yield body


def wait_event(sub: zmq.Socket[bytes], kind: str, **match: Any) -> dict[str, Any]:
    for body in events(sub, kind):
        if all(body.get(k) == v for k, v in match.items()):
            return body
    raise AssertionError(f"no {kind} event with {match}")


class Load:
    """Messages to a set of agents from a thread of its own, every request's answer kept."""

    def __init__(self, c: Cluster, agent_ids: list[str], rate: float = 100.0, patience: float = 30) -> None:
        self.c, self.agent_ids, self.period, self.patience = c, agent_ids, 1.0 / rate, patience
        self.sent: dict[str, str] = {}
        self.answers: dict[str, Envelope] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(40)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        sock = self.c.zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.c.endpoint)
        i = 0
        next_send = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if not self._stop.is_set() and now >= next_send:
                    agent_id = self.agent_ids[i % len(self.agent_ids)]
                    env = Envelope(type="agent.send", body={"agent_id": agent_id, "text": f"m{i}"})
                    self.sent[env.id] = agent_id
                    sock.send(encode(env))
                    i += 1
                    next_send += self.period
                if self._stop.is_set() and len(self.answers) >= len(self.sent):
                    return
                if self._stop.is_set() and now > self._stopped_at() + self.patience:
                    return
                if sock.poll(5):
                    reply = decode(sock.recv())
                    self.answers[reply.id] = reply
        finally:
            sock.close()

    _stop_time: float | None = None

    def _stopped_at(self) -> float:
        if self._stop_time is None:
            self._stop_time = time.monotonic()
        return self._stop_time

    def codes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for reply in self.answers.values():
            code = str(reply.body.get("code")) if reply.is_error else "ok"
            out[code] = out.get(code, 0) + 1
        return out


def test_worker_kill_under_load_same_ids_answer_every_request_answered_conversation_continues(
    make_cluster: type[Cluster],
) -> None:
    """kill -9 of a worker under load: its agents come back with their ids, every request gets an answer
    (a reply, or an explicit error), none is not_found, and the LLM agent remembers what it was told."""
    c = make_cluster(workers=2, memory=True, intensity=5, request_timeout_ms=20000, extra=UNLIMITED)
    c.start(env={"OPENFANG_EMBEDDER": "hash"})
    ids = [spawn(c, echo("pinger")) for _ in range(6)]
    pal = spawn(c, friend())
    assert say(c, pal, "my name is Zorblax").body["reply"] == "nice to meet you Zorblax"
    victim = worker_of(c, pal)
    moved = [a for a in ids if worker_of(c, a) == victim]
    assert moved, "least-loaded placement put agents on both workers"
    with Load(c, ids, rate=100) as load:
        time.sleep(1.0)
        os.kill(worker_pid(c, victim), signal.SIGKILL)
        time.sleep(2.0)
        load.stop()
    assert len(load.answers) == len(load.sent), f"{len(load.sent) - len(load.answers)} requests unanswered"
    codes = load.codes()
    assert "not_found" not in codes and "gone" not in codes, codes
    assert codes.get("ok", 0) > 0.8 * len(load.sent), codes
    for agent_id in [*ids, pal]:
        wait_for(lambda a=agent_id: answers(c, a), what=f"{agent_id} to answer again")
    reply = say(c, pal, "what is my name")
    assert not reply.is_error and "Zorblax" in reply.body["reply"], reply.body
    rows = listing(c)
    assert all(rows[a]["state"] == "running" for a in [*ids, pal])
    assert all(rows[a]["restarts"] == 1 for a in moved), [rows[a]["restarts"] for a in moved]
    assert c.stop() == 0


def test_temporary_agent_is_reported_lost_not_respawned(make_cluster: type[Cluster]) -> None:
    """A temporary agent whose worker dies is dead (agent.lost, worker_crashed), listed, answered gone."""
    c = make_cluster(workers=2).start()
    sub = c.subscribe()
    temp = spawn(c, echo("scratch", restart="temporary"), worker="workers-1")
    keep = spawn(c, echo("keeper"), worker="workers-1")
    os.kill(worker_pid(c, "workers-1"), signal.SIGKILL)
    lost = wait_event(sub, "agent.lost", agent_id=temp)
    assert lost["reason"] == "worker_crashed"
    wait_for(lambda: answers(c, keep), what="the permanent sibling to answer")
    reply = say(c, temp)
    assert reply.is_error and reply.body["code"] == "gone", reply.body
    row = listing(c)[temp]
    assert row["state"] == "dead" and "worker_crashed" in row["reason"]
    time.sleep(0.5)
    assert listing(c)[temp]["state"] == "dead"  # not re-spawned later either
    assert c.stop() == 0


def test_agent_restarting_too_often_is_given_up_by_its_own_intensity(make_cluster: type[Cluster]) -> None:
    """With restart_intensity = 1, a second worker death in the period gives the agent up, with an event;
    an agent whose guest traps on every message is given up the same way by its host, reported up."""
    c = make_cluster(workers=2, intensity=10).start()
    sub = c.subscribe()
    fragile = spawn(c, echo("fragile", extra="restart_intensity = 1\nrestart_period_ms = 60000"))
    os.kill(worker_pid(c, worker_of(c, fragile)), signal.SIGKILL)
    wait_event(sub, "agent.restarted", agent_id=fragile)
    os.kill(worker_pid(c, worker_of(c, fragile)), signal.SIGKILL)
    lost = wait_event(sub, "agent.lost", agent_id=fragile)
    assert lost["reason"] == "restart_intensity"
    assert listing(c)[fragile]["state"] == "dead"

    # Both workers were killed: a new spawn waits until they are back and have listed their agents
    # (status says ready; until then a spawn may be answered `restarting` with retry_after_ms).
    wait_for(lambda: c.ok("status")["ready"], what="both workers back and synced")
    trap = c.dir / "trap.wat"
    trap.write_text(TRAP_WAT)
    crashy = spawn(c, f'[agent]\nname = "crashy"\nmodule = "{trap}"\nrestart_intensity = 2\n')
    for _ in range(3):
        assert say(c, crashy).body["code"] == "sandbox_error"
    lost = wait_event(sub, "agent.lost", agent_id=crashy)
    assert lost["reason"] == "restart_intensity"
    assert say(c, crashy).body["code"] == "gone"
    assert listing(c)[crashy]["restarts"] == 2
    assert c.stop() == 0


def test_daemon_kill_and_restart_brings_every_agent_back_with_its_id(make_cluster: type[Cluster]) -> None:
    """kill -9 of the daemon, then a start on the same data dir: every agent back with its id; a suspended
    one stays suspended; a killed one stays gone."""
    c = make_cluster(workers=2).start()
    ids = [spawn(c, echo("survivor")) for _ in range(4)]
    sleeper = spawn(c, echo("sleeper"))
    c.ok("agent.suspend", {"agent_id": sleeper})
    gone = spawn(c, echo("goner"))
    c.ok("agent.kill", {"agent_id": gone})
    c.signal(signal.SIGKILL)
    assert c.proc is not None
    c.proc.wait(10)
    c.assert_no_survivors()
    c.start()
    for agent_id in ids:
        wait_for(lambda a=agent_id: answers(c, a), what=f"{agent_id} back after the daemon restart")
    wait_for(lambda: listing(c)[sleeper]["state"] == "suspended", what="the suspended agent back, suspended")
    assert say(c, gone).body["code"] == "not_found"
    assert spawn(c, echo("survivor")) == "survivor-5"  # the id counter survived too
    c.ok("agent.resume", {"agent_id": sleeper})
    assert answers(c, sleeper)
    assert c.stop() == 0


@pytest.mark.parametrize("first_message", [False, True], ids=["spawn", "spawn_with_text"])
def test_daemon_kill_during_a_spawn_stream_keeps_every_acknowledged_spawn(
    make_cluster: type[Cluster], first_message: bool
) -> None:
    """kill -9 of the daemon while 300 pipelined spawns (with a first message, too) are in flight: after a
    start on the same data dir, every spawn acknowledged before the kill (a combined reply read, with its
    answer) is registered again, live, with its id; one of them answers."""
    c = make_cluster(workers=2, extra=UNLIMITED).start()
    sock = c.zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(c.endpoint)
    for i in range(300):
        body = {"manifest": echo("stream"), **({"text": f"m{i}"} if first_message else {})}
        sock.send(encode(Envelope(type="agent.spawn", body=body)))
    acked: list[str] = []
    killed = False
    while sock.poll(1000 if killed else 15000):  # after the kill: until the socket has been quiet 1 s
        reply = decode(sock.recv())
        if not reply.is_error:
            if first_message:
                assert "reply" in reply.body and "send_error" not in reply.body, reply.body
            acked.append(str(reply.body["agent_id"]))
        if len(acked) >= 30 and not killed:
            c.signal(signal.SIGKILL)
            killed = True
    sock.close()
    assert killed and 30 <= len(acked) < 300, f"{len(acked)} acknowledged: the kill was not mid-stream"
    assert c.proc is not None
    c.proc.wait(10)
    c.assert_no_survivors()
    c.start()
    registered = {a["agent_id"]: a["state"] for a in c.ok("agent.list", {"limit": 1000})["agents"]}
    lost = [a for a in acked if a not in registered or registered[a] == "dead"]
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged spawns lost: {lost[:5]}"
    wait_for(lambda: answers(c, acked[-1]), what=f"{acked[-1]} back after the daemon restart")
    assert c.stop() == 0


def test_gateway_kill_gives_no_false_not_found(make_cluster: type[Cluster]) -> None:
    """kill -9 of the control gateway under load: live agents never answer not_found; all answer after."""
    c = make_cluster(workers=2, extra=UNLIMITED).start()
    ids = [spawn(c, echo("steady")) for _ in range(4)]
    gateway = c.node("control")["pid"]
    # Requests in flight inside the killed gateway die with it (the client's own timeout covers them).
    with Load(c, ids, rate=50, patience=3) as load:
        time.sleep(0.5)
        os.kill(gateway, signal.SIGKILL)
        time.sleep(2.5)
        load.stop()
    codes = {str(r.body.get("code")) if r.is_error else "ok" for r in load.answers.values()}
    assert "not_found" not in codes and "gone" not in codes, load.codes()
    assert load.codes().get("ok", 0) > len(load.sent) / 2, load.codes()
    codes_seen: set[str] = set()

    def spawned() -> bool:
        reply = c.call("agent.spawn", {"manifest": echo("late")})
        codes_seen.add(str(reply.body.get("code")) if reply.is_error else "ok")
        return not reply.is_error

    wait_for(spawned, what="a spawn after the gateway restart")
    assert codes_seen <= {"ok", "restarting"}, codes_seen  # never not_found while workers reconnect
    for agent_id in ids:
        wait_for(lambda a=agent_id: answers(c, a), what=f"{agent_id} after the gateway restart")
    states = {a: r["state"] for a, r in listing(c).items()}
    assert {a: states[a] for a in ids} == dict.fromkeys(ids, "running") and len(states) == len(ids) + 1
    assert c.stop() == 0


def test_new_agent_never_gets_a_dead_agents_id_or_memory(make_cluster: type[Cluster]) -> None:
    """Default ids come from a persisted counter: a killed agent's id, or one on a restarted worker, is
    never handed out again, so the new agent starts with no history."""
    c = make_cluster(workers=1, memory=True, request_timeout_ms=20000)
    c.start(env={"OPENFANG_EMBEDDER": "hash"})
    first = spawn(c, friend("greeter"))
    assert first == "greeter-1"
    say(c, first, "my name is Quux")
    c.ok("agent.kill", {"agent_id": first})
    os.kill(worker_pid(c, "workers-0"), signal.SIGKILL)
    wait_for(lambda: not c.call("worker.ping", {"worker": "workers-0"}).is_error, what="the worker back")
    second = wait_for(
        lambda: c.call("agent.spawn", {"manifest": friend("greeter")}).body.get("agent_id"),
        what="a spawn on the restarted worker",
    )
    assert second == "greeter-2"
    assert say(c, first).body["code"] == "not_found"
    reply = say(c, second, "what is my name")
    assert "Quux" not in reply.body["reply"], reply.body
    history = c.ok("memory.history", {"agent_id": second})["messages"]
    assert not [m for m in history if "Quux" in m["text"]], history
    assert c.stop() == 0


def test_sighup_with_an_unchanged_config_restarts_no_child(make_cluster: type[Cluster]) -> None:
    """SIGHUP with the same config, given as a relative path and with --data-dir: no child restarts."""
    c = make_cluster(workers=2)
    c.start(config_arg="cluster.toml", extra_args=("--data-dir", str(c.data_dir)))
    agent = spawn(c, echo("calm"))
    before = {n["id"]: n["pid"] for n in c.tree()}
    workers_before = {n["id"]: n["pid"] for n in c.node("workers")["children"]}
    c.signal(signal.SIGHUP)
    wait_for(lambda: c.ok("status")["reloads"] == 1, what="the reload")
    reloaded = [e for e in c.log_events() if e.get("event") == "config_reloaded"]
    assert reloaded, "no config_reloaded line"
    diff = reloaded[-1]
    assert (diff["replaced"], diff["started"], diff["stopped"], diff.get("reconfigured", [])) == (
        [],
        [],
        [],
        [],
    )
    assert {n["id"]: n["pid"] for n in c.tree()} == before
    assert {n["id"]: n["pid"] for n in c.node("workers")["children"]} == workers_before
    assert answers(c, agent)
    assert not [e for e in c.log_events() if e.get("event") == "config_rejected"]
    assert c.stop() == 0


def test_reload_removing_a_worker_moves_its_agents(make_cluster: type[Cluster]) -> None:
    """A reload from 2 workers to 1: the agents of the removed worker are re-spawned on the other one."""
    c = make_cluster(workers=2).start()
    ids = [spawn(c, echo("mover")) for _ in range(6)]
    on_removed = [a for a in ids if worker_of(c, a) == "workers-1"]
    assert on_removed
    c.write_config(workers=1)
    c.signal(signal.SIGHUP)
    wait_for(lambda: c.ok("status")["reloads"] == 1, what="the reload")
    for agent_id in ids:
        wait_for(lambda a=agent_id: answers(c, a), what=f"{agent_id} answering after the reload")
    rows = listing(c)
    assert all(rows[a]["worker"] == "workers-0" and rows[a]["state"] == "running" for a in ids), rows
    assert c.stop() == 0


def test_agent_list_shows_every_registered_agent_with_its_state(make_cluster: type[Cluster]) -> None:
    """agent.list comes from the registry: running, suspended and dead agents are all there."""
    c = make_cluster(workers=1).start()
    runner = spawn(c, echo("runner"))
    pauser = spawn(c, echo("pauser"))
    c.ok("agent.suspend", {"agent_id": pauser})
    temp = spawn(c, echo("fleeting", restart="temporary"))
    os.kill(worker_pid(c, "workers-0"), signal.SIGKILL)
    wait_for(lambda: listing(c)[temp]["state"] == "dead", what="the temporary agent dead")
    wait_for(lambda: answers(c, runner), what="runner back")
    states = {a: r["state"] for a, r in listing(c).items()}
    assert states == {runner: "running", pauser: "suspended", temp: "dead"}
    info = c.ok("agent.info", {"agent_id": pauser})
    assert info["state"] == "suspended" and info["activity"] == "suspended"
    table = subprocess.run(
        [sys.executable, "-m", "openfang.cli.main", "agent", "list", "--endpoint", c.endpoint],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0, table.stderr
    lines = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:]}
    assert lines[runner][2] == "running" and lines[pauser][2] == "suspended"
    assert lines[temp][1:3] == ["-", "dead"] and "worker_crashed" in table.stdout
    assert c.stop() == 0


def test_reload_replacing_the_only_worker_brings_its_agents_back(make_cluster: type[Cluster]) -> None:
    """A reload that replaces the only worker (its spec changed): its agents wait, then come back on the
    replacement with their ids; a temporary one is reported lost (worker_stopped)."""
    c = make_cluster(workers=1).start()
    sub = c.subscribe()
    ids = [spawn(c, echo("stayer")) for _ in range(3)]
    temp = spawn(c, echo("passing", restart="temporary"))
    old_pid = worker_pid(c, "workers-0")
    c.config_path.write_text(c.config_path.read_text().replace("heartbeat_ms = 3000", "heartbeat_ms = 4000"))
    c.signal(signal.SIGHUP)
    wait_for(lambda: c.ok("status")["reloads"] == 1, what="the reload")
    reloaded = [e for e in c.log_events() if e.get("event") == "config_reloaded"]
    assert reloaded and reloaded[-1]["reconfigured"] == ["workers"], reloaded[-1]  # workers-0 replaced
    assert wait_event(sub, "agent.lost", agent_id=temp)["reason"] == "worker_stopped"
    for agent_id in ids:
        wait_for(lambda a=agent_id: answers(c, a), what=f"{agent_id} back on the replacement worker")
    assert worker_pid(c, "workers-0") != old_pid
    assert c.stop() == 0
