"""An elastic worker pool on a real daemon: it starts with min_running workers; sustained load starts one
more and agents spread onto it (their ids answer, their state kept); quiet drains it and stops it with no
agent lost, temporary ones included; a kill -9 of the extra worker while it grows or drains loses no
durable agent; a bad pool config is refused naming the key; SIGHUP changes min_running and count."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from typing import Any

import pytest
import zmq
from daemon_harness import UNLIMITED, Cluster, wait_for
from test_daemon_move import count, counter, say, spawn, worker_of

from openfang.protocol.envelope import Envelope as Env
from openfang.protocol.envelope import decode, encode

pytestmark = pytest.mark.integration

# Into [supervisor.children.pool] (the harness's last table): one worker runs, the pool grows to two.
ELASTIC = "min_running = 1\ngrow_in_flight = 4\ngrow_after_ms = 100\nshrink_after_s = {shrink}\n"


def elastic(make_cluster: Any, shrink: float = 60, workers: int = 2, inline: bool = True) -> Cluster:
    extra = ELASTIC.format(shrink=shrink) + UNLIMITED
    c: Cluster = make_cluster(workers=workers, inline=inline, extra=extra)
    return c.start()


def states(c: Cluster) -> dict[str, str]:
    return {w["id"]: w["state"] for w in c.node("workers")["children"]}


def pool(c: Cluster) -> dict[str, Any]:
    return dict(c.ok("status")["pools"]["root/workers"])


class Load:
    """A client keeping ``window`` messages in flight to ``agents`` until stopped; the counter replies per
    agent (each must be the next count) and every error."""

    def __init__(self, c: Cluster, agents: list[str], window: int = 32) -> None:
        self.c, self.agents, self.window = c, agents, window
        self.replies: Counter[str] = Counter()
        self.errors: list[dict[str, Any]] = []
        self.out_of_order: list[tuple[str, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        sock = self.c.zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.c.endpoint)
        pending: dict[str, str] = {}
        sent = 0
        try:
            while not self._stop.is_set() or pending:
                while not self._stop.is_set() and len(pending) < self.window:
                    aid = self.agents[sent % len(self.agents)]
                    req = Env(type="agent.send", body={"agent_id": aid, "text": "tick"})
                    pending[req.id] = aid
                    sock.send(encode(req))
                    sent += 1
                if not sock.poll(20_000):
                    self.errors.append({"code": "lost", "pending": len(pending)})
                    return
                reply = decode(sock.recv())
                aid = pending.pop(reply.id)
                if reply.is_error:
                    self.errors.append(dict(reply.body))
                    continue
                self.replies[aid] += 1
                got = count(str(reply.body["reply"]))
                if got != self.replies[aid]:  # each agent's count goes on from its last
                    self.out_of_order.append((aid, got, self.replies[aid]))
        finally:
            sock.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive()


def grow(c: Cluster, agents: list[str]) -> Load:
    """Load until the pool runs both workers and an agent has moved onto workers-1."""
    load = Load(c, agents)
    try:
        wait_for(
            lambda: (
                states(c)["workers-1"] == "running"
                and any(worker_of(c, a) == "workers-1" for a in agents)
                and not pool(c)["moving"]
            ),
            timeout=30,
            what="the pool grown and agents spread",
        )
    except BaseException:
        load.stop()
        raise
    return load


def answers(c: Cluster, aid: str, timeout: float = 30) -> None:
    """``aid`` answers a message (after its restart or move); the last error is in the failure."""
    last: list[dict[str, Any]] = []

    def ok() -> bool:
        reply = c.call("agent.send", {"agent_id": aid, "text": "x"})
        last[:] = [dict(reply.body)] if reply.is_error else []
        return not reply.is_error

    try:
        wait_for(ok, timeout=timeout, what=f"{aid} answering")
    except AssertionError:
        raise AssertionError(f"{aid} did not answer within {timeout}s; last error: {last}") from None


def check_agents(c: Cluster, agents: list[str], answered: Counter[str]) -> None:
    """Every agent answers by its id with the next count (its state moved with it)."""
    for aid in agents:
        assert count(say(c, aid)) == answered[aid] + 1, aid


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "fork"])
def test_elastic_starts_with_min_running_and_grows_under_load_spreading_agents(
    make_cluster: Any, inline: bool
) -> None:
    """One worker runs and the daemon is ready; sustained load starts workers-1 (child.restart of its kept
    spec, routed to the pool's supervisor inline or in its own process), agents move onto it by snapshot
    (no restart), every message is answered in order."""
    c = elastic(make_cluster, inline=inline)
    assert states(c) == {"workers-0": "running", "workers-1": "undefined"}
    status = c.ok("status")
    assert status["ready"] is True and status["workers"] == status["workers_expected"] == 1
    assert (pool(c)["running"], pool(c)["max"], pool(c)["min_running"]) == (1, 2, 1)
    agents = [spawn(c, counter(f"c{i}")) for i in range(4)]
    assert {worker_of(c, a) for a in agents} == {"workers-0"}
    load = grow(c, agents)
    load.stop()
    assert load.errors == [] and load.out_of_order == [], (load.errors, load.out_of_order)
    assert {worker_of(c, a) for a in agents} == {"workers-0", "workers-1"}
    check_agents(c, agents, load.replies)
    for aid in agents:
        assert c.ok("agent.info", {"agent_id": aid})["restarts"] == 0  # a move is not a restart
    names = [e.get("event") for e in c.log_events()]
    assert "pool_growing" in names and "pool_grown" in names
    assert c.node("workers", "workers-1")["restarts"] == 0
    assert c.stop() == 0


def test_elastic_shrinks_when_quiet_and_loses_no_agent(make_cluster: Any) -> None:
    """After the load, the quiet pool drains workers-1 (its agents move off, a temporary one too) and stops
    it: stopped, not restarted; every agent answers with its state."""
    c = elastic(make_cluster, shrink=1)
    agents = [spawn(c, counter(f"c{i}")) for i in range(3)]
    agents.append(spawn(c, counter("temp", extra='restart = "temporary"')))
    load = grow(c, agents)
    load.stop()
    assert load.errors == [], load.errors
    wait_for(lambda: states(c)["workers-1"] == "stopped", timeout=30, what="workers-1 stopped")
    assert {worker_of(c, a) for a in agents} == {"workers-0"}
    check_agents(c, agents, load.replies)
    node = c.node("workers", "workers-1")
    assert node["restarts"] == 0 and node["pid"] is None
    names = [e.get("event") for e in c.log_events()]
    assert "pool_shrunk" in names and "agent_lost" not in names
    assert pool(c)["running"] == 1
    assert c.stop() == 0


def test_elastic_kill_9_of_the_extra_worker_while_it_grows_loses_no_durable_agent(make_cluster: Any) -> None:
    """workers-1 killed as soon as it runs (agents moving onto it): its supervisor restarts it (a crash),
    and every durable agent answers afterwards."""
    c = elastic(make_cluster)
    agents = [spawn(c, counter(f"c{i}")) for i in range(6)]
    load = Load(c, agents)
    try:
        wait_for(lambda: c.node("workers", "workers-1").get("pid"), timeout=30, what="workers-1 started")
        os.kill(int(c.node("workers", "workers-1")["pid"]), signal.SIGKILL)
        wait_for(lambda: c.node("workers", "workers-1")["restarts"] == 1, what="workers-1 restarted")
    finally:
        load.stop()
    assert all(e.get("code") in ("restarting", "sandbox_error") for e in load.errors), load.errors
    for aid in agents:
        answers(c, aid)
    assert all(c.ok("agent.info", {"agent_id": a})["state"] == "running" for a in agents)
    assert c.stop() == 0


def test_elastic_kill_9_of_the_extra_worker_while_it_drains_loses_no_durable_agent(make_cluster: Any) -> None:
    """workers-1 killed when the shrink starts: whichever comes first (the drain or the kill), no durable
    agent is lost, and the pool settles with workers-1 stopped (by the policy, after any restart)."""
    c = elastic(make_cluster, shrink=1)
    agents = [spawn(c, counter(f"c{i}")) for i in range(6)]
    load = grow(c, agents)
    load.stop()
    pid = int(c.node("workers", "workers-1")["pid"])
    wait_for(lambda: "pool_shrinking" in [e.get("event") for e in c.log_events()], timeout=30)
    with contextlib.suppress(ProcessLookupError):  # already stopped by the shrink
        os.kill(pid, signal.SIGKILL)
    for aid in agents:
        answers(c, aid)
    assert all(c.ok("agent.info", {"agent_id": a})["state"] == "running" for a in agents)
    wait_for(lambda: states(c)["workers-1"] == "stopped", timeout=30, what="workers-1 finally stopped")
    assert "agent_lost" not in [e.get("event") for e in c.log_events()]
    assert c.stop() == 0


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("min_running = 3", "min_running"),
        ("min_running = 0", "min_running"),
        ('grow_after_ms = "x"', "grow_after_ms"),
    ],
)
def test_elastic_bad_pool_config_is_refused_naming_the_key(make_cluster: Any, line: str, key: str) -> None:
    """`openfang-supervisor --check` exits 2 and names the pool's table and key."""
    c: Cluster = make_cluster(workers=2, extra=line + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "openfang.control.daemon", "--config", str(c.config_path), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out
    assert f"[supervisor.children.0.pool] key '{key}'" in out.stderr, out.stderr


def test_elastic_sighup_changes_min_running_and_count(make_cluster: Any) -> None:
    """A reload to min_running = 2 starts workers-1 without restarting workers-0 or the gateway; count = 3
    with min_running = 1 adds workers-2 as a kept spec and leaves the running workers running."""
    c = elastic(make_cluster)
    before = {w: c.node("workers", w).get("pid") for w in ("workers-0",)}
    gateway = c.node("control")["pid"]
    c.write_config(extra="min_running = 2\n" + UNLIMITED)
    c.signal(signal.SIGHUP)
    wait_for(lambda: states(c)["workers-1"] == "running", what="workers-1 started by the reload")
    assert (
        c.node("workers", "workers-0")["pid"] == before["workers-0"] and c.node("control")["pid"] == gateway
    )
    wait_for(lambda: c.ok("status")["ready"], what="ready with two workers")
    c.write_config(workers=3, extra=ELASTIC.format(shrink=60) + UNLIMITED)
    c.signal(signal.SIGHUP)
    wait_for(lambda: "workers-2" in states(c), what="workers-2 added")
    assert states(c) == {"workers-0": "running", "workers-1": "running", "workers-2": "undefined"}
    assert c.node("control")["pid"] == gateway
    wait_for(lambda: pool(c)["max"] == 3, what="the gateway told the new maximum")
    assert c.stop() == 0
