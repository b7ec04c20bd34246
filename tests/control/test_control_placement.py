"""The gateway's agent supervisor without sockets: restart by policy and intensity across worker deaths,
queueing while an agent is away, and what a restarted gateway learns from its workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from openfang.control.placement import Placement, manifest_facts
from openfang.control.registry import AgentRegistry, AgentRow
from openfang.protocol.errors import ConfigError, Gone, NotFound, Restarting


def manifest(name: str, restart: str = "permanent", extra: str = "") -> str:
    return f'[agent]\nname = "{name}"\nmodule = "builtin:echo"\nrestart = "{restart}"\n{extra}'


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakePort:
    """Records what the placement asked the gateway to do."""

    def __init__(self) -> None:
        self.spawns: list[tuple[str, str, bool]] = []
        self.kills: list[tuple[str, str]] = []
        self.suspends: list[tuple[str, str]] = []
        self.delivered: list[tuple[Any, str]] = []
        self.failed: list[tuple[Any, Exception]] = []
        self.events: list[dict[str, Any]] = []

    def spawn(self, worker_id: str, row: AgentRow, manifest: str, *, resume: bool) -> None:
        self.spawns.append((worker_id, row.agent_id, resume))

    def kill(self, worker_id: str, agent_id: str) -> None:
        self.kills.append((worker_id, agent_id))

    def suspend(self, worker_id: str, agent_id: str) -> None:
        self.suspends.append((worker_id, agent_id))

    def deliver(self, item: Any, worker_id: str) -> None:
        self.delivered.append((item, worker_id))

    def fail(self, item: Any, error: Exception) -> None:
        self.failed.append((item, error))

    def publish(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def kinds(self, agent_id: str) -> list[str]:
        return [e["kind"] for e in self.events if e.get("agent_id") == agent_id]


def make(tmp_path: Path, **kw: Any) -> tuple[Placement, FakePort, Clock]:
    port, clock = FakePort(), Clock()
    p = Placement(AgentRegistry(tmp_path / "agents.db"), port, clock=clock, **kw)
    return p, port, clock


def running(p: Placement, text: str, worker: str) -> str:
    """A client's spawn of ``text`` on ``worker``, confirmed by the worker."""
    row = p.register(text, source="agent.toml")
    p.assign(row, worker)
    p.spawned(row.agent_id, worker, True)
    return row.agent_id


def test_placement_permanent_and_transient_agents_are_respawned_on_worker_death(tmp_path: Path) -> None:
    """Worker death: permanent and transient agents restart (same id) on the least loaded worker."""
    p, port, _ = make(tmp_path)
    p.worker_synced("w0", [])
    p.worker_synced("w1", [])
    perm = running(p, manifest("perm"), "w0")
    trans = running(p, manifest("trans", "transient"), "w0")
    p.worker_lost("w0", "crashed")
    assert p.registry.get(perm).state == "restarting"  # type: ignore[union-attr]
    p.tick()
    assert sorted(port.spawns) == [("w1", perm, True), ("w1", trans, True)]
    p.spawned(perm, "w1", True)
    p.spawned(trans, "w1", True)
    assert p.target(perm)[1] == "w1" and p.registry.get(perm).restarts == 1  # type: ignore[union-attr]
    assert port.kinds(perm) == ["agent.restarting", "agent.restarted"]


def test_placement_temporary_agent_is_lost_with_its_worker(tmp_path: Path) -> None:
    """A temporary agent is not restarted: dead, agent.lost with reason worker_crashed, then gone."""
    p, port, _ = make(tmp_path)
    p.worker_synced("w0", [])
    temp = running(p, manifest("temp", "temporary"), "w0")
    p.worker_synced("w1", [])
    p.worker_lost("w0", "crashed")
    p.tick()
    assert port.spawns == []
    assert port.events[-1]["kind"] == "agent.lost" and port.events[-1]["reason"] == "worker_crashed"
    with pytest.raises(Gone):
        p.target(temp)


def test_placement_gives_up_an_agent_past_its_intensity(tmp_path: Path) -> None:
    """restart_intensity = 1: the second worker death within the period gives the agent up."""
    p, port, clock = make(tmp_path)
    p.worker_synced("w0", [])
    p.worker_synced("w1", [])
    a = running(p, manifest("fragile", extra="restart_intensity = 1\nrestart_period_ms = 10000\n"), "w0")
    p.worker_lost("w0", "crashed")
    p.tick()
    p.spawned(a, "w1", True)
    clock.now += 1
    p.worker_lost("w1", "crashed")
    assert p.registry.get(a).state == "dead"  # type: ignore[union-attr]
    assert port.events[-1] == {
        "kind": "agent.lost",
        "agent_id": a,
        "worker": "w1",
        "reason": "restart_intensity",
        "detail": "worker w1 crashed",
    }


def test_placement_restarts_outside_the_period_do_not_accumulate(tmp_path: Path) -> None:
    """Restarts older than restart_period_ms fall out of the window (OTP's add_restart)."""
    p, _, clock = make(tmp_path)
    for w in ("w0", "w1"):
        p.worker_synced(w, [])
    a = running(p, manifest("steady", extra="restart_intensity = 1\nrestart_period_ms = 1000\n"), "w0")
    for worker, other in (("w0", "w1"), ("w1", "w0"), ("w0", "w1")):
        clock.now += 2
        p.worker_lost(worker, "crashed")
        p.worker_synced(worker, [])
        p.tick()
        p.spawned(a, other, True)
    assert p.registry.get(a).state == "running"  # type: ignore[union-attr]


def test_placement_queues_messages_and_delivers_them_in_order(tmp_path: Path) -> None:
    """Messages to a restarting agent wait, then go to its new worker in the order they came."""
    p, port, _ = make(tmp_path)
    p.worker_synced("w0", [])
    a = running(p, manifest("q"), "w0")
    p.worker_lost("w0", "crashed")
    row, worker = p.target(a)
    assert worker is None
    for i in range(3):
        p.enqueue(row, f"m{i}")
    p.worker_synced("w0", [])
    p.tick()
    p.spawned(a, "w0", True)
    assert port.delivered == [("m0", "w0"), ("m1", "w0"), ("m2", "w0")]
    assert p.queued == 0


def test_placement_queue_bound_and_deadline_answer_restarting(tmp_path: Path) -> None:
    """Past the per-agent bound, and after the deadline, a message is answered restarting with a delay."""
    p, port, clock = make(tmp_path, queue_per_agent=2, queue_ms=1000)
    p.worker_synced("w0", [])
    a = running(p, manifest("q"), "w0")
    p.worker_lost("w0", "crashed")
    row, _ = p.target(a)
    p.enqueue(row, "m0")
    p.enqueue(row, "m1")
    with pytest.raises(Restarting) as exc:
        p.enqueue(row, "m2")
    assert exc.value.to_wire()["retry_after_ms"] > 0
    clock.now += 1.5
    p.tick()
    assert [item for item, _ in port.failed] == ["m0", "m1"]
    assert all(isinstance(err, Restarting) for _, err in port.failed)


def test_placement_unknown_and_killed_ids_are_not_found(tmp_path: Path) -> None:
    """not_found only for ids never registered or killed; the old name@worker form still resolves."""
    p, _, _ = make(tmp_path)
    p.worker_synced("w0", [])
    a = running(p, manifest("k"), "w0")
    assert p.target(f"{a}@w0")[1] == "w0"
    with pytest.raises(NotFound, match="never"):
        p.target("ghost-1")
    p.killed(a)
    with pytest.raises(NotFound):
        p.target(a)


def test_placement_restarted_gateway_adopts_listed_agents_and_respawns_missing_ones(tmp_path: Path) -> None:
    """After a gateway restart: an agent the worker lists is announced as is; one it lost is re-spawned;
    one the registry does not know is killed."""
    p, _, _ = make(tmp_path)
    p.worker_synced("w0", [])
    kept = running(p, manifest("kept"), "w0")
    missing = running(p, manifest("missing"), "w0")
    p.registry.commit()
    p2, port2, _ = make(tmp_path)  # a new gateway on the same file
    row, worker = p2.target(kept)
    assert worker is None  # known at once, held until its worker speaks
    p2.enqueue(row, "early")
    p2.worker_synced("w0", [kept, "stranger-1"])
    assert port2.delivered == [("early", "w0")]
    assert port2.kills == [("w0", "stranger-1")]
    p2.tick()
    assert port2.spawns == [("w0", missing, True)]


def test_placement_restored_agents_of_a_silent_worker_move_after_the_grace(tmp_path: Path) -> None:
    """An agent whose worker never reconnects is placed elsewhere once the grace period is over."""
    p, _, _ = make(tmp_path)
    p.worker_synced("gone-worker", [])
    a = running(p, manifest("orphan"), "gone-worker")
    p.registry.commit()
    p2, port2, clock2 = make(tmp_path, grace_s=3)
    p2.worker_synced("w1", [])
    p2.tick()
    assert port2.spawns == []
    clock2.now += 3
    p2.tick()
    assert port2.spawns == [("w1", a, True)]


def test_placement_stopping_tree_keeps_agents_where_they_are(tmp_path: Path) -> None:
    """A worker stopped with the tree detaches its agents: no restart, no loss, placement kept."""
    p, port, _ = make(tmp_path)
    p.worker_synced("w0", [])
    a = running(p, manifest("stay", "temporary"), "w0")
    p.worker_detached("w0")
    row = p.registry.get(a)
    assert row is not None and (row.state, row.placement) == ("running", "w0") and port.events == []


def test_placement_host_restart_events_count_in_the_agents_window(tmp_path: Path) -> None:
    """A restart the worker's host made (a trap) is reported up: restarting, then restarted."""
    p, port, _ = make(tmp_path)
    p.worker_synced("w0", [])
    a = running(p, manifest("trappy"), "w0")
    p.agent_event("w0", {"kind": "agent.state", "agent_id": a, "state": "restarting", "reason": "trap"})
    p.agent_event("w0", {"kind": "agent.state", "agent_id": a, "state": "running"})
    assert p.registry.get(a).restarts == 1  # type: ignore[union-attr]
    p.agent_event("w0", {"kind": "agent.state", "agent_id": a, "state": "dead", "why": "restart_intensity"})
    assert port.kinds(a) == ["agent.restarting", "agent.restarted", "agent.lost"]
    assert port.events[-1]["reason"] == "restart_intensity"


def test_manifest_facts_reads_policy_and_refuses_a_nameless_manifest() -> None:
    """The gateway reads name, id, restart policy and window; a manifest without a name is bad_config."""
    facts = manifest_facts(
        manifest("x", "transient", 'restart_intensity = 4\n[sandbox]\nagent_id = "x-01"\n')
    )
    assert (facts.name, facts.agent_id, facts.restart, facts.intensity) == ("x", "x-01", "transient", 4)
    with pytest.raises(ConfigError, match="name"):
        manifest_facts('[agent]\nmodule = "builtin:echo"\n')


def test_placement_respawns_in_bounded_batches(tmp_path: Path) -> None:
    """At most MAX_SPAWNING re-spawns are in flight; the rest go out as answers come back."""
    from openfang.control.placement import MAX_SPAWNING

    p, port, _ = make(tmp_path)
    p.worker_synced("w0", [])
    ids = [running(p, manifest("bulk"), "w0") for _ in range(MAX_SPAWNING + 10)]
    p.worker_lost("w0", "crashed")
    p.worker_synced("w1", [])
    p.tick()
    assert len(port.spawns) == MAX_SPAWNING
    for _, agent_id, _ in list(port.spawns)[:10]:
        p.spawned(agent_id, "w1", True)
    p.tick()
    assert len(port.spawns) == MAX_SPAWNING + 10
    assert {a for _, a, _ in port.spawns} == set(ids)


def test_placement_refused_client_spawn_is_never_registered(tmp_path: Path) -> None:
    """A spawn the worker refuses (its init crashed: the host reports it dead first) leaves no row behind."""
    p, port, _ = make(tmp_path)
    p.worker_synced("w0", [])
    row = p.register(manifest("doomed"), source="agent.toml")
    p.assign(row, "w0")
    p.agent_event("w0", {"agent_id": row.agent_id, "state": "dead", "why": "crashed"})
    p.spawned(row.agent_id, "w0", False, "agent_init trapped")
    assert p.registry.get(row.agent_id) is None and port.events == []
    with pytest.raises(NotFound):
        p.target(row.agent_id)


def test_placement_agent_a_message_waits_for_is_respawned_first(tmp_path: Path) -> None:
    """Of many agents waiting for a worker, one a request is queued for is re-spawned on the next turn,
    before the others (so it answers within the queue deadline), and its message is delivered."""
    from openfang.control.placement import MAX_SPAWNING

    p, port, _ = make(tmp_path)
    p.worker_synced("w0", [])
    ids = [running(p, manifest("crowd"), "w0") for _ in range(MAX_SPAWNING * 2)]
    p.worker_lost("w0", "crashed")
    last = ids[-1]  # the last in line
    row, worker = p.target(last)
    assert worker is None
    p.enqueue(row, "hello")
    p.worker_synced("w1", [])
    p.tick()
    assert port.spawns[0] == ("w1", last, True)
    assert len(port.spawns) == MAX_SPAWNING
    p.spawned(last, "w1", True)
    assert port.delivered == [("hello", "w1")]
    for _, agent_id, _ in list(port.spawns)[1:]:
        p.spawned(agent_id, "w1", True)
    p.tick()
    assert {a for _, a, _ in port.spawns} == set(ids)  # the rest follow, each once
    assert len(port.spawns) == len(ids)


def test_placement_respawn_never_sent_is_not_counted_as_a_restart(tmp_path: Path) -> None:
    """A re-spawn the gateway could not even send (its worker is stopping, or gone and not reported yet)
    does not count against the agent's restart intensity: the agent waits and is placed again, not lost."""
    p, port, _ = make(tmp_path)
    p.worker_synced("w0", [])
    a = running(p, manifest("fragile", extra="restart_intensity = 1\n"), "w0")
    p.worker_lost("w0", "crashed")  # restart 1 of 1 in the window
    p.worker_synced("w1", [])
    for _ in range(3):
        p.tick()
        assert port.spawns[-1] == ("w1", a, True)
        p.spawned(a, "w1", False, "worker w1 (routing id b'w1') is not connected; nothing was sent")
        assert p.registry.get(a).state == "restarting"  # type: ignore[union-attr]
    assert "agent.lost" not in port.kinds(a)
    p.tick()
    p.spawned(a, "w1", True)
    assert p.announced(a) and p.registry.get(a).state == "running"  # type: ignore[union-attr]


def test_placement_respawn_refused_by_the_worker_still_counts(tmp_path: Path) -> None:
    """A re-spawn the worker answered with an error counts as a restart: past the intensity, lost."""
    p, port, _ = make(tmp_path)
    p.worker_synced("w0", [])
    a = running(p, manifest("fragile", extra="restart_intensity = 1\n"), "w0")
    p.worker_lost("w0", "crashed")
    p.worker_synced("w1", [])
    p.tick()
    p.spawned(a, "w1", False, "agent_init trapped")
    assert "agent.lost" in port.kinds(a)
    assert p.registry.get(a).state == "dead"  # type: ignore[union-attr]


def test_placement_restored_unplaced_agent_is_placed_without_waiting_for_the_grace(tmp_path: Path) -> None:
    """A row restored from disk with no worker (the gateway stopped while it waited to be re-spawned) is
    placed as soon as a worker is there: no worker can announce it, so waiting for the grace is pointless."""
    p, _, _ = make(tmp_path)
    p.worker_synced("w0", [])
    a = running(p, manifest("waiting"), "w0")
    p.worker_lost("w0", "crashed")  # restarting, no placement
    p.registry.commit()
    again, port, _ = make(tmp_path)
    assert a not in again.restored and a in again.unplaced
    again.worker_synced("w1", [])
    again.tick()  # the clock has not moved: the grace is not over
    assert port.spawns == [("w1", a, True)]


def test_placement_waited_for_agent_jumps_a_full_spawn_window(tmp_path: Path) -> None:
    """After a gateway restart the re-spawn window is full; a message then arrives for an agent at the end
    of the line: it is re-spawned on the next turn all the same (and stays first in line until it is)."""
    from openfang.control.placement import MAX_SPAWNING

    p, _, _ = make(tmp_path)
    p.worker_synced("w0", [])
    ids = [running(p, manifest("crowd"), "w0") for _ in range(MAX_SPAWNING * 3)]
    p.registry.commit()
    again, port, _ = make(tmp_path)  # a restarted gateway: every agent restored, placed on w0
    again.worker_synced("w0", [])  # w0 came back empty: every agent must be re-spawned
    again.tick()
    assert len(port.spawns) == MAX_SPAWNING  # the window is full
    last = ids[-1]
    row, worker = again.target(last)
    assert worker is None
    again.enqueue(row, "hello")
    again.tick()
    assert port.spawns[MAX_SPAWNING] == ("w0", last, True)
    again.spawned(last, "w0", True)
    assert port.delivered == [("hello", "w0")]


def test_placement_least_loaded_takes_the_fewest_agents_then_the_first_name(tmp_path: Path) -> None:
    """The least loaded worker has the fewest placed agents (ties: the first name); draining and excluded
    workers are never chosen, and with none left there is no worker."""
    p, _port, _clock = make(tmp_path)
    assert p.least_loaded() is None
    p.workers |= {"w2", "w0", "w1"}
    assert p.least_loaded() == "w0"
    p.load.update({"w0": 2, "w1": 1, "w2": 1})
    assert p.least_loaded() == "w1"
    assert p.least_loaded(exclude=["w1"]) == "w2"
    p.draining.add("w2")
    assert p.least_loaded(exclude=["w1"]) == "w0"
    assert p.least_loaded(exclude=("w0", "w1")) is None
    p.draining.clear()
    p.load["w0"] = 0
    assert p.least_loaded() == "w0"
