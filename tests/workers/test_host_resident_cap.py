"""The resident cap (worker arg ``max_resident``): past it the least recently used idle agents are
hibernated, busy ones never are, and every hibernated agent still answers its next message with its state."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sandbox_helpers import COUNTER, Driver, make_host, manifest, say, spawn_counter

from openfang.protocol.errors import ConfigError
from openfang.workers.host.hibernation import Hibernation
from openfang.workers.host.wiring import _max_resident


def _states(d: Driver, ids: list[str]) -> dict[str, str]:
    return {aid: str(d.ok("agent.info", agent_id=aid)["state"]) for aid in ids}


def _settle(d: Driver, ids: list[str], asleep: int) -> dict[str, str]:
    """Pump until ``asleep`` of ``ids`` are hibernated (the cap works a bounded batch per step)."""
    end = time.monotonic() + 10
    while True:
        states = _states(d, ids)
        if sum(s == "hibernated" for s in states.values()) >= asleep:
            return states
        assert time.monotonic() < end, f"expected {asleep} hibernated, got {states}"
        d.pump()


def _cap_events(d: Driver) -> list[str]:
    events: list[dict[str, Any]] = d.events  # type: ignore[attr-defined]
    return [str(e["agent_id"]) for e in events if e.get("state") == "hibernated" and e.get("why") == "cap"]


def test_host_resident_cap_hibernates_least_recently_used(tmp_path: Path) -> None:
    """max_resident = 3 with 5 idle agents: the 2 used least recently are hibernated (why cap), the 3 used
    last stay running."""
    d = make_host(snapshot_dir=tmp_path, max_resident=3)
    try:
        ids = [spawn_counter(d) for _ in range(5)]
        # Use them in a known order after spawning: ids[2] and ids[0] become the least recently used.
        for aid in (ids[2], ids[0], ids[4], ids[1], ids[3]):
            say(d, aid)
        states = _settle(d, ids, 2)
        assert sorted(a for a, s in states.items() if s == "hibernated") == sorted([ids[2], ids[0]])
        assert [states[a] for a in (ids[1], ids[3], ids[4])] == ["running"] * 3
        events: list[dict[str, Any]] = d.events  # type: ignore[attr-defined]
        whys = {e.get("why") for e in events if e.get("state") == "hibernated"}
        assert whys == {"cap"} and {ids[2], ids[0]} <= set(_cap_events(d))
    finally:
        d.host.close()


def test_host_resident_cap_hibernated_agent_answers_with_its_state(tmp_path: Path) -> None:
    """An agent the cap hibernated answers its next message with its count kept; waking it makes the
    cap hibernate another (the least recently used), so residents stay at the cap."""
    d = make_host(snapshot_dir=tmp_path, max_resident=2)
    try:
        ids = [spawn_counter(d) for _ in range(3)]
        for aid in ids:
            say(d, aid)
        _settle(d, ids, 1)
        first = next(a for a, s in _states(d, ids).items() if s == "hibernated")
        assert first == ids[0]
        assert "message 2 " in say(d, first)  # woken by the message, its count kept
        states = _settle(d, ids, 1)
        assert states[first] == "running"
        assert states[ids[1]] == "hibernated"  # now the least recently used
        assert sum(s == "running" for s in states.values()) == 2
    finally:
        d.host.close()


def _fake(agent_id: str) -> Any:
    """What the cap reads of a HostedAgent (its id, idle token, hibernated flag, snapshot give-up)."""
    return SimpleNamespace(
        agent_id=agent_id,
        idle_token=0,
        hibernated=False,
        no_hibernate=None,
        manifest=SimpleNamespace(idle_hibernate_s=None),
    )


def test_hibernation_over_cap_spares_busy_and_unsnapshottable(tmp_path: Path) -> None:
    """over_cap takes idle agents in least-recently-idle order and skips one that ran since it was idle
    (busy: it re-enters when idle again) and one whose module cannot be snapshotted."""
    hib = Hibernation(tmp_path, None, "w-test", max_resident=1)
    agents = {a: _fake(a) for a in ("a", "b", "c", "d", "e")}
    for a in ("a", "b", "c", "d", "e"):
        hib.arm(agents[a], 0.0)
    agents["b"].idle_token += 1  # a message began (as the host does): busy now
    agents["c"].no_hibernate = "hidden state"
    taken = [x.agent_id for x in hib.over_cap(agents)]
    assert taken == ["a", "d", "e"]  # 5 resident, cap 1: b (busy) and c (cannot) stay
    hib.arm(agents["b"], 1.0)  # b idle again: it re-enters, most recent
    assert [x.agent_id for x in hib.over_cap(agents, most=1)] == ["b"]


def test_hibernation_over_cap_counts_only_resident(tmp_path: Path) -> None:
    """Hibernated agents do not count against the cap; a woken one does again; a dead one not at all."""
    hib = Hibernation(tmp_path, None, "w-test", max_resident=2)
    agents = {a: _fake(a) for a in ("a", "b", "c")}
    for a in agents.values():
        hib.arm(a, 0.0)
    hib._asleep.add("a")  # as write_later records a hibernation
    hib._lru.pop("a")
    agents["a"].hibernated = True
    assert hib.resident(agents) == 2 and hib.over_cap(agents) == []
    hib.woke("a")
    agents["a"].hibernated = False
    assert hib.resident(agents) == 3
    assert [x.agent_id for x in hib.over_cap(agents)] == ["b"]  # a left the LRU when it slept
    hib._asleep.add("c")
    hib.delete("c")  # killed while asleep: forgotten
    assert hib.resident(agents) == 3


def test_host_resident_cap_needs_snapshot_dir_to_act() -> None:
    """A host without a snapshot directory cannot hibernate: the cap takes no agent, all keep answering."""
    d = make_host(max_resident=1)
    try:
        ids = [spawn_counter(d) for _ in range(3)]
        for _ in range(20):
            d.pump()
        assert set(_states(d, ids).values()) == {"running"}
        assert all("message 1 " in say(d, aid) for aid in ids)
    finally:
        d.host.close()


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True])
def test_wiring_max_resident_refuses_bad_values(bad: object) -> None:
    """The worker arg max_resident must be a positive integer; the error names the key and the value."""
    with pytest.raises(ConfigError, match="max_resident"):
        _max_resident({"max_resident": bad})


def test_wiring_max_resident_absent_is_no_cap() -> None:
    """No max_resident in the worker args: no cap (None); an integer is taken as is."""
    assert _max_resident({}) is None
    assert _max_resident({"max_resident": 10_000}) == 10_000


def _snapshots(tmp_path: Path, counts: list[int]) -> list[Any]:
    """Real snapshots of a counter agent after each number of messages in ``counts`` (ascending)."""
    from openfang.workers.sandbox.snapshot import capture

    d = make_host(snapshot_dir=tmp_path / "host")
    try:
        aid = spawn_counter(d)
        out, said = [], 0
        for n in counts:
            while said < n:
                say(d, aid)
                said += 1
            out.append(capture(d.host._agents[aid].sandbox))
        return out
    finally:
        d.host.close()


def test_write_group_replaces_files_atomically_and_in_order(tmp_path: Path) -> None:
    """One group of writes (two of the same file, one of another): every future gets its size, the later
    write of a file wins, both files read back, and no temp file is left."""
    from concurrent.futures import Future

    from openfang.workers.host.hibernation import _Write, write_group
    from openfang.workers.sandbox.snapshot import read_snapshot

    one, two = _snapshots(tmp_path, [1, 2])
    out = tmp_path / "snaps"
    out.mkdir()
    writes = [
        _Write("a", out / "a.snap", one, Future()),
        _Write("b", out / "b.snap", one, Future()),
        _Write("a", out / "a.snap", two, Future()),
    ]
    write_group(writes)
    assert all(w.done.result() > 0 for w in writes)
    assert read_snapshot(out / "a.snap").stored_bytes == two.stored_bytes
    assert read_snapshot(out / "a.snap") != read_snapshot(out / "b.snap")
    assert sorted(p.name for p in out.iterdir()) == ["a.snap", "b.snap"]


def test_write_group_failure_is_each_writes_error(tmp_path: Path) -> None:
    """A group into a directory that does not exist: every write's future holds a SnapshotError naming
    its file (the host keeps those snapshots in memory and logs the failure)."""
    from concurrent.futures import Future

    from openfang.workers.host.hibernation import _Write, write_group
    from openfang.workers.sandbox.snapshot import SnapshotError

    (snap,) = _snapshots(tmp_path, [1])
    missing = tmp_path / "nowhere"
    writes = [_Write(a, missing / f"{a}.snap", snap, Future()) for a in ("a", "b")]
    write_group(writes)
    for w in writes:
        exc = w.done.exception()
        assert isinstance(exc, SnapshotError) and str(w.path) in str(exc)


def test_host_burst_of_hibernations_all_reach_disk(tmp_path: Path) -> None:
    """40 agents hibernated in one burst (grouped writes): every file is written and every agent's
    record is let go (parked) once its file is there; each wakes with its count."""
    d = make_host(snapshot_dir=tmp_path)
    try:
        ids = [spawn_counter(d) for _ in range(40)]
        for aid in ids:
            say(d, aid)
        for aid in ids:
            d.ok("agent.hibernate", agent_id=aid)
        end = time.monotonic() + 20
        while any(a not in d.host._parked for a in ids):  # parked: the file written, the record let go
            assert time.monotonic() < end, "snapshots still only in memory"
            d.pump()
        assert all((tmp_path / f"{a}.snap").is_file() for a in ids)
        assert all("message 2 " in say(d, a) for a in ids[::7])
    finally:
        d.host.close()


def test_host_resident_cap_makes_room_before_a_spawn(tmp_path: Path) -> None:
    """At the cap, a spawn first hibernates the least recently used idle agent, before any loop step, so
    a stream of spawns cannot outrun the cap (a burst once ran a worker out of memory maps)."""
    d = make_host(snapshot_dir=tmp_path, max_resident=3)
    try:
        first = [spawn_counter(d) for _ in range(3)]
        for aid in first:
            say(d, aid)
        hib = d.host._hib
        assert hib.resident(d.host._agents) == 3
        text = manifest("counter", module=str(COUNTER), model=False)
        env = d.submit("agent.spawn", manifest=text)  # no step yet
        assert hib.resident(d.host._agents) == 3
        assert d.host._agents[first[0]].hibernated  # the least recently used made room
        new = str(d.wait(env).body["agent_id"])
        assert "message 1 " in say(d, new)
        assert "message 2 " in say(d, first[0])
    finally:
        d.host.close()
