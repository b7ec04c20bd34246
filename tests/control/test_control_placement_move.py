"""Moves in the gateway's agent supervisor without sockets (injected clock): an agent moved between
workers queues its messages, lands on its target, counts no restart; a refusing target sends it back; a
dying target falls back to the restart rules; a reload's drain; which workers a reload stops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openfang.control.daemon import leaving_workers
from openfang.control.placement import Placement
from openfang.control.registry import AgentRegistry, AgentRow
from openfang.protocol.errors import OpenFangError, Restarting
from openfang.supervisor.spec import ChildSpec, ChildType, SupervisorFlags, SupervisorSpec


def manifest(name: str, restart: str = "permanent") -> str:
    return f'[agent]\nname = "{name}"\nmodule = "builtin:echo"\nrestart = "{restart}"\n'


class Port:
    """Records what the placement asked the gateway to do, moves' answers included."""

    def __init__(self) -> None:
        self.spawns: list[tuple[str, str]] = []
        self.delivered: list[tuple[Any, str]] = []
        self.events: list[dict[str, Any]] = []
        self.moves: list[tuple[str, dict[str, Any] | None, Exception | None]] = []

    def spawn(self, worker_id: str, row: AgentRow, manifest: str, *, resume: bool) -> None:
        assert resume
        self.spawns.append((worker_id, row.agent_id))

    def kill(self, worker_id: str, agent_id: str) -> None:
        raise AssertionError(f"no kill expected ({agent_id} on {worker_id})")

    def suspend(self, worker_id: str, agent_id: str) -> None:
        self.events.append({"kind": "suspend", "agent_id": agent_id, "worker": worker_id})

    def deliver(self, item: Any, worker_id: str) -> None:
        self.delivered.append((item, worker_id))

    def fail(self, item: Any, error: Exception) -> None:
        raise AssertionError(f"no queued request should fail: {error}")

    def publish(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def moved(self, agent_id: str, result: dict[str, Any] | None, error: Exception | None) -> None:
        self.moves.append((agent_id, result, error))


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, workers: tuple[str, ...] = ("w0", "w1")) -> tuple[Placement, Port, Clock]:
    port, clock = Port(), Clock()
    p = Placement(AgentRegistry(tmp_path / "agents.db"), port, clock=clock)
    for w in workers:
        p.worker_synced(w, [])
    return p, port, clock


def running(p: Placement, text: str, worker: str) -> str:
    row = p.register(text, source="agent.toml")
    p.assign(row, worker)
    p.spawned(row.agent_id, worker, True)
    return row.agent_id


def test_placement_move_queues_messages_lands_on_the_target_and_counts_no_restart(tmp_path: Path) -> None:
    """While it moves the agent's requests queue; the source lets go, the target restores it, the queue
    goes there in order, agent.moved is published and its restarts stay 0."""
    p, port, clock = make(tmp_path)
    aid = running(p, manifest("mover"), "w0")
    p.begin_move(aid, "w1")
    row, worker = p.target(aid)
    assert worker is None  # away: requests queue
    p.enqueue(row, "first")
    p.enqueue(row, "second")
    p.moved_out(aid, True, path="snapshot")
    p.tick()
    assert port.spawns == [("w1", aid)]
    clock.now += 0.01
    p.spawned(aid, "w1", True, restore="snapshot")
    assert port.delivered == [("first", "w1"), ("second", "w1")]
    assert p.target(aid)[1] == "w1"
    assert p.registry.get(aid).restarts == 0  # type: ignore[union-attr]
    moved = [e for e in port.events if e["kind"] == "agent.moved"]
    assert moved == [
        {
            "kind": "agent.moved",
            "agent_id": aid,
            "from": "w0",
            "to": "w1",
            "path": "snapshot",
            "move_ms": 10.0,
            "why": "request",
        }
    ]
    (answer,) = port.moves
    assert answer[1] is not None and answer[1]["worker"] == "w1" and answer[1]["moved_from"] == "w0"
    assert not p.moving and p.load["w1"] == 1 and p.load["w0"] == 0


def test_placement_move_refused_by_the_source_leaves_the_agent_there(tmp_path: Path) -> None:
    """The source refuses (busy past its wait): the agent is announced there again, its queue delivered."""
    p, port, _ = make(tmp_path)
    aid = running(p, manifest("stayer"), "w0")
    p.begin_move(aid, "w1")
    p.enqueue(p.resolve(aid), "held")
    p.moved_out(aid, False, error=OpenFangError("still busy"))
    assert p.target(aid)[1] == "w0" and port.delivered == [("held", "w0")]
    assert port.moves[0][2] is not None and not port.spawns


def test_placement_move_refused_by_the_target_goes_back_to_the_source(tmp_path: Path) -> None:
    """A full target (busy): the agent is re-spawned on the source and the move answers with busy."""
    p, port, _ = make(tmp_path)
    aid = running(p, manifest("bouncer"), "w0")
    p.begin_move(aid, "w1")
    p.moved_out(aid, True, path="snapshot")
    p.tick()
    p.spawned(aid, "w1", False, "worker w1 already hosts 2 agents (max_agents)", code="busy")
    p.tick()
    assert port.spawns == [("w1", aid), ("w0", aid)]
    p.spawned(aid, "w0", True, restore="snapshot")
    (answer,) = port.moves
    error = answer[2]
    assert isinstance(error, OpenFangError) and error.code == "busy"
    assert "max_agents" in error.message and "runs on w0 again" in error.message
    assert p.target(aid)[1] == "w0" and p.registry.get(aid).restarts == 0  # type: ignore[union-attr]


def test_placement_target_dying_during_a_move_restarts_the_agent_by_policy(tmp_path: Path) -> None:
    """The target dies while the agent arrives: the move answers restarting, the agent is re-placed once
    (on a live worker) by the restart rules."""
    p, port, _ = make(tmp_path, ("w0", "w1", "w2"))
    aid = running(p, manifest("phoenix"), "w0")
    p.begin_move(aid, "w1")
    p.moved_out(aid, True, path="snapshot")
    p.tick()
    p.worker_lost("w1", "exited (killed)")
    assert isinstance(port.moves[0][2], Restarting)
    p.tick()
    assert port.spawns[-1][0] in ("w0", "w2") and len(port.spawns) == 2
    p.spawned(aid, port.spawns[-1][0], True)
    assert p.registry.get(aid).state == "running" and not p.moving  # type: ignore[union-attr]


def test_placement_drain_moves_agents_off_leaving_workers_and_parks_them_with_nowhere_to_go(
    tmp_path: Path,
) -> None:
    """A drain takes the leaving workers out of placement and moves their agents; with no worker left,
    permanent agents wait unplaced and temporary ones are left to their worker; the worker's exit ends
    the drain so its replacement hosts them."""
    p, port, _ = make(tmp_path)
    a = running(p, manifest("a"), "w1")
    b = running(p, manifest("b"), "w0")
    assert p.drain(["w1"]) == [a]
    assert p.least_loaded() == "w0"
    p.moved_out(a, True, path="snapshot")
    p.tick()
    assert port.spawns == [("w0", a)]
    p.spawned(a, "w0", True, restore="snapshot")
    assert port.events[-1]["why"] == "reload" and p.target(b)[1] == "w0"

    q, qport, _ = make(tmp_path / "only", ("w0",))
    keep = running(q, manifest("keep"), "w0")
    temp = running(q, manifest("temp", "temporary"), "w0")
    assert q.drain(["w0"]) == [keep]
    q.moved_out(keep, True, path="snapshot")
    q.tick()
    assert not qport.spawns and q.least_loaded() is None  # parked: its state is on disk
    q.worker_lost("w0", "exited (shutdown)", stopped=True)
    assert q.registry.get(temp).state == "dead"  # type: ignore[union-attr]
    q.worker_synced("w0", [])  # the replacement
    q.tick()
    assert qport.spawns == [("w0", keep)]


def _pool(n: int, heartbeat_ms: int = 3000) -> SupervisorSpec:
    workers = tuple(
        ChildSpec(id=f"workers-{i}", start="openfang.workers.worker:main", heartbeat_ms=heartbeat_ms)
        for i in range(n)
    )
    nested = ChildSpec(
        id="workers",
        type=ChildType.SUPERVISOR,
        supervisor=SupervisorSpec(flags=SupervisorFlags(), children=workers),
    )
    control = ChildSpec(id="control", start="openfang.control.gateway:main")
    return SupervisorSpec(children=(control, nested))


def test_daemon_leaving_workers_names_the_workers_a_reload_stops_or_replaces() -> None:
    """2 -> 1 workers: the removed one; a changed worker spec: each replaced one; no change: none."""
    assert leaving_workers(_pool(2), _pool(1)) == ["workers-1"]
    assert leaving_workers(_pool(2), _pool(2, heartbeat_ms=4000)) == ["workers-0", "workers-1"]
    assert leaving_workers(_pool(2), _pool(2)) == []
    assert leaving_workers(_pool(1), _pool(3)) == []
