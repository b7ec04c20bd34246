"""The elastic pool's rule without processes (injected clock): it grows only under sustained load on every
running worker, spreads agents onto the new worker by service, shrinks only after a quiet spell and never
below min_running, one change at a time; the gateway's side asks the root with the tree's own operations,
drains before it stops, and gives up a shrink whose worker died under it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from test_control_placement_move import Clock, make, manifest, running

from openfang.control.elastic import GROW, SHRINK, SPREAD, Action, ElasticPools, PoolPolicy
from openfang.control.placement import Placement
from openfang.control.tree_config import ElasticPool
from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import SupervisorError

POOL = ElasticPool(
    path="root/workers",
    members=("w0", "w1", "w2"),
    min_running=1,
    grow_in_flight=10,
    grow_after_ms=200,
    shrink_after_s=5.0,
)


def feed(policy: PoolPolicy, clock: Clock, in_flight: dict[str, int], seconds: float) -> list[Any]:
    """Samples every 50 ms for ``seconds``; the actions the policy answered."""
    out = []
    end = clock.now + seconds
    while clock.now < end:
        action = policy.observe(in_flight)
        if action is not None:
            out.append(action)
        clock.now += 0.05
    return out


def test_policy_grows_after_every_running_worker_is_loaded_for_grow_after_ms() -> None:
    """Load above the threshold on every running worker for 200 ms starts the first stopped member, once."""
    clock = Clock()
    policy = PoolPolicy(POOL, clock)
    assert feed(policy, clock, {"w0": 50}, 0.15) == []
    assert feed(policy, clock, {"w0": 50}, 1.0) == [Action(GROW, "root/workers", "w1")]


def test_policy_does_not_grow_on_a_brief_burst_or_when_one_worker_is_not_loaded() -> None:
    """A burst shorter than grow_after_ms, or one running worker under the threshold, starts nothing."""
    clock = Clock()
    policy = PoolPolicy(POOL, clock)
    for _ in range(10):
        assert feed(policy, clock, {"w0": 50}, 0.1) == []
        assert feed(policy, clock, {"w0": 2}, 0.05) == []
    assert feed(policy, clock, {"w0": 50, "w1": 3}, 2.0) == []


def test_policy_spreads_onto_the_started_member_once_it_connects_and_grows_one_at_a_time() -> None:
    """While w1 starts no second grow; when it connects the answer is Spread(w1); then w2 may grow."""
    clock = Clock()
    policy = PoolPolicy(POOL, clock)
    assert feed(policy, clock, {"w0": 50}, 0.3) == [Action(GROW, "root/workers", "w1")]
    assert feed(policy, clock, {"w0": 50}, 2.0) == []  # starting: nothing more
    assert feed(policy, clock, {"w0": 50, "w1": 40}, 0.05) == [Action(SPREAD, "root/workers", "w1")]
    assert feed(policy, clock, {"w0": 50, "w1": 40}, 0.3) == [Action(GROW, "root/workers", "w2")]


def test_policy_a_failed_grow_lets_the_load_decide_again() -> None:
    """A grow the root refused is forgotten: the next sustained load grows again."""
    clock = Clock()
    policy = PoolPolicy(POOL, clock)
    assert feed(policy, clock, {"w0": 50}, 0.3) == [Action(GROW, "root/workers", "w1")]
    policy.failed("w1")
    assert feed(policy, clock, {"w0": 50}, 0.3) == [Action(GROW, "root/workers", "w1")]


def test_policy_shrinks_the_last_running_member_after_a_quiet_spell_never_below_min_running() -> None:
    """Quiet (the load would fit one worker fewer) for shrink_after_s drains the last running member; at
    min_running it stops shrinking."""
    clock = Clock()
    policy = PoolPolicy(POOL, clock)
    assert feed(policy, clock, {"w0": 3, "w1": 2, "w2": 0}, 4.0) == []
    assert feed(policy, clock, {"w0": 3, "w1": 2, "w2": 0}, 1.1) == [Action(SHRINK, "root/workers", "w2")]
    assert feed(policy, clock, {"w0": 3, "w1": 2, "w2": 0}, 10.0) == []  # draining: nothing more
    assert feed(policy, clock, {"w0": 1, "w1": 0}, 5.1) == [Action(SHRINK, "root/workers", "w1")]
    assert feed(policy, clock, {"w0": 0}, 60.0) == []


def test_policy_moderate_load_that_would_load_one_worker_fewer_does_not_shrink() -> None:
    """Two workers with 6 in flight each (12 >= half of 10 x 1) stay: shrinking would only grow again."""
    clock = Clock()
    policy = PoolPolicy(POOL, clock)
    assert feed(policy, clock, {"w0": 6, "w1": 6}, 30.0) == []


def test_policy_a_shrink_waits_shrink_after_s_after_a_grow() -> None:
    """The quiet spell counts from the last change: a worker just grown is not stopped at once."""
    clock = Clock()
    policy = PoolPolicy(POOL, clock)
    feed(policy, clock, {"w0": 50}, 0.3)
    assert feed(policy, clock, {"w0": 0, "w1": 0}, 0.05) == [Action(SPREAD, "root/workers", "w1")]
    assert feed(policy, clock, {"w0": 0, "w1": 0}, 4.9) == []
    assert feed(policy, clock, {"w0": 0, "w1": 0}, 0.2) == [Action(SHRINK, "root/workers", "w1")]


def test_placement_spread_to_moves_every_nth_agent_of_each_service_onto_the_new_worker(
    tmp_path: Path,
) -> None:
    """Two replicas of each of three services on w0: one of each goes to w1; w1 ends with its share."""
    p, _port, _clock = make(tmp_path, ("w0",))
    ids = [running(p, manifest(name), "w0") for name in ("a", "a", "b", "b", "c", "c")]
    p.worker_synced("w1", [])
    picks = p.spread_to("w1")
    assert sorted(picks) == sorted(ids[1::2])


def test_placement_spread_to_takes_at_most_its_bound_and_none_onto_a_draining_worker(tmp_path: Path) -> None:
    """A grow moves at most ``most`` agents; a worker being drained gets none."""
    p, _port, _clock = make(tmp_path, ("w0",))
    for _ in range(20):
        running(p, manifest("a"), "w0")
    p.worker_synced("w1", [])
    assert len(p.spread_to("w1", most=4)) == 4
    p.drain(["w1"])
    assert p.spread_to("w1") == []


class Root:
    """The root's side of the gateway's tree requests: answers as told."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, dict[str, Any]]] = []
        self.fail: set[str] = set()

    def __call__(self, op: str, args: dict[str, Any], done: Callable[[Envelope], None]) -> None:
        self.asked.append((op, args))
        request = Envelope(type=op, body=args)
        done(request.reply({}) if op not in self.fail else request.error(SupervisorError("running: refused")))


class FakeMoves:
    def __init__(self, placement: Placement) -> None:
        self.placement = placement
        self.spread_calls: list[tuple[list[str], str]] = []
        self.pending: list[Callable[[dict[str, Any]], None]] = []

    def spread(self, agent_ids: list[str], target: str) -> None:
        self.spread_calls.append((agent_ids, target))

    def drain(self, workers: list[str], done: Callable[[dict[str, Any]], None], why: str = "") -> None:
        self.placement.drain(workers, why=why)
        self.pending.append(done)

    def undrain(self, workers: Iterable[str]) -> None:
        self.placement.undrain(workers)


class Load:
    def __init__(self, in_flight: int) -> None:
        self.in_flight = in_flight
        self.pid = 4242


def pools(tmp_path: Path, workers: tuple[str, ...]) -> tuple[ElasticPools, Placement, FakeMoves, Root, Clock]:
    p, port, clock = make(tmp_path, workers)
    moves, root = FakeMoves(p), Root()
    elastic = ElasticPools(p, moves, ask_root=root, publish=port.publish, clock=clock)
    pool = ElasticPool(path="root/workers", members=("w0", "w1"), min_running=1, grow_in_flight=10,
                       grow_after_ms=200, shrink_after_s=5.0)  # fmt: skip
    elastic.configure([pool.to_wire()])
    return elastic, p, moves, root, clock


def run(elastic: ElasticPools, clock: Clock, load: dict[str, int], seconds: float) -> None:
    end = clock.now + seconds
    while clock.now < end:
        elastic.tick({w: Load(n) for w, n in load.items()})
        clock.now += 0.05


def test_elastic_pools_grow_with_child_restart_and_spread_when_the_worker_connects(tmp_path: Path) -> None:
    """The root is asked child.restart of the kept spec; the agents spread once the worker has synced."""
    elastic, p, moves, root, clock = pools(tmp_path, ("w0",))
    for name in ("a", "a"):
        running(p, manifest(name), "w0")
    run(elastic, clock, {"w0": 40}, 0.5)
    assert root.asked == [("child.restart", {"path": "root/workers", "id": "w1"})]
    p.worker_synced("w1", [])
    run(elastic, clock, {"w0": 40, "w1": 0}, 0.1)
    assert len(moves.spread_calls) == 1 and moves.spread_calls[0][1] == "w1"
    assert len(moves.spread_calls[0][0]) == 1
    assert elastic.status(["w0", "w1"])["root/workers"]["running"] == 2


def test_elastic_pools_shrink_drains_first_then_child_terminate(tmp_path: Path) -> None:
    """A quiet pool drains its last worker; only when its agents are off is it terminated."""
    elastic, p, moves, root, clock = pools(tmp_path, ("w0", "w1"))
    run(elastic, clock, {"w0": 0, "w1": 0}, 5.2)
    assert root.asked == [] and p.draining == {"w1"} and len(moves.pending) == 1
    moves.pending.pop()({"moved": 0})
    assert root.asked == [("child.terminate", {"path": "root/workers", "id": "w1", "pid": 4242})]


def test_elastic_pools_a_shrink_whose_worker_died_during_the_drain_is_given_up(tmp_path: Path) -> None:
    """The drained worker crashed (its supervisor restarts it): no terminate of the new incarnation."""
    elastic, p, moves, root, clock = pools(tmp_path, ("w0", "w1"))
    run(elastic, clock, {"w0": 0, "w1": 0}, 5.2)
    p.worker_lost("w1", "exited (killed)")
    moves.pending.pop()({"moved": 0})
    assert root.asked == []
    assert elastic.policies["root/workers"].draining is None


def test_elastic_pools_a_refused_terminate_undrains_the_worker(tmp_path: Path) -> None:
    """The root refused the stop: the worker may host agents again and the policy starts over."""
    elastic, p, moves, root, clock = pools(tmp_path, ("w0", "w1"))
    root.fail.add("child.terminate")
    run(elastic, clock, {"w0": 0, "w1": 0}, 5.2)
    moves.pending.pop()({"moved": 0})
    assert p.draining == set() and elastic.policies["root/workers"].draining is None


def test_elastic_pools_reconfigure_keeps_an_unchanged_pool_and_drops_a_removed_one(tmp_path: Path) -> None:
    """A reload with the same pool keeps its state; without it the gateway has no elastic pool."""
    elastic, _p, _moves, _root, _clock = pools(tmp_path, ("w0",))
    before = elastic.policies["root/workers"]
    elastic.configure([before.pool.to_wire()])
    assert elastic.policies["root/workers"] is before
    elastic.configure([])
    assert not elastic.active
