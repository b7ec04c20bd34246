"""Parking: once a hibernated agent's snapshot file is written, its worker keeps only a small
``ParkedAgent`` (no sandbox, record, grant or kv namespace) and rebuilds it on its next request."""

from __future__ import annotations

import gc
import inspect
import json
import os
import pathlib
import time
import traceback
import tracemalloc
from pathlib import Path

from sandbox_helpers import COUNTER, KV_AGENT, Driver, make_host, manifest, say, spawn_counter

from openfang.workers.host.agent_host import AgentHost, HostParts
from openfang.workers.tools.registry import default_registry


def _parked(d: Driver, ids: list[str]) -> None:
    end = time.monotonic() + 30
    while any(a not in d.host._parked for a in ids):
        assert time.monotonic() < end, "agents not parked"
        d.pump()


def test_host_park_hibernated_agent_keeps_no_record_and_answers_with_its_count(tmp_path: Path) -> None:
    """agent.hibernate, file written: the agent leaves the table (parked), agent.info answers hibernated
    without rebuilding it, agent.list shows it, and its next message is answered with its count."""
    d = make_host(snapshot_dir=tmp_path)
    try:
        aid = spawn_counter(d)
        say(d, aid)
        say(d, aid)
        d.ok("agent.hibernate", agent_id=aid)
        _parked(d, [aid])
        assert aid not in d.host._agents and d.host.agent_count() == 1
        info = d.ok("agent.info", agent_id=aid)
        assert info["state"] == "hibernated" and info["name"] == "counter"
        assert aid in d.host._parked  # info did not wake or rebuild it
        listed = {a["agent_id"]: a["state"] for a in d.ok("agent.list")["agents"]}
        assert listed == {aid: "hibernated"}
        page = d.ok("agent.list", ids=[aid, "nobody"])["agents"]  # a page's ids, as the gateway asks
        assert [(a["agent_id"], a["state"], a["spawn"]) for a in page] == [(aid, "hibernated", "parked")]
        assert "message 3 " in say(d, aid)
        assert aid in d.host._agents and aid not in d.host._parked
        assert d.ok("agent.info", agent_id=aid)["state"] == "running"
    finally:
        d.host.close()


def test_host_park_requests_that_do_not_wake_leave_it_parked(tmp_path: Path) -> None:
    """agent.hibernate and a refused agent.suspend of a parked agent rebuild it for the request only: it
    is parked again afterwards; agent.kill removes it and its file; agent.wake wakes it."""
    d = make_host(snapshot_dir=tmp_path)
    try:
        a, b = spawn_counter(d), spawn_counter(d)
        for aid in (a, b):
            say(d, aid)
            d.ok("agent.hibernate", agent_id=aid)
        _parked(d, [a, b])
        assert d.ok("agent.hibernate", agent_id=a)["state"] == "hibernated"
        refused = d.call("agent.suspend", agent_id=a)
        assert refused.is_error and "hibernated" in str(refused.body["message"])
        assert a in d.host._parked and a not in d.host._agents
        assert d.ok("agent.wake", agent_id=a)["state"] == "running"
        assert "message 2 " in say(d, a)
        assert d.ok("agent.kill", agent_id=b)["state"] == "dead"
        assert b not in d.host._parked and not (tmp_path / f"{b}.snap").exists()
        assert d.call("agent.send", agent_id=b, text="hi").body["code"] == "not_found"
    finally:
        d.host.close()


def test_host_park_kv_keys_come_back_from_the_file(tmp_path: Path) -> None:
    """kv_* keys of a parked agent are dropped from the worker and restored from its snapshot on wake."""
    d = Driver(AgentHost("w-test", HostParts(snapshot_dir=tmp_path, tools=default_registry())))
    try:
        aid = str(d.ok("agent.spawn", manifest=KV_AGENT)["agent_id"])
        assert d.ok("agent.send", agent_id=aid, text="remember blue")["reply"] == "stored"
        d.ok("agent.hibernate", agent_id=aid)
        _parked(d, [aid])
        assert d.host._kv.export(aid) in (None, {}, [])
        assert "blue" in d.ok("agent.send", agent_id=aid, text="recall")["reply"]
    finally:
        d.host.close()


def test_host_park_burst_to_a_parked_agent_answered_in_order(tmp_path: Path) -> None:
    """Five messages submitted at once to a parked agent: one wake, all answered, counts in order."""
    d = make_host(snapshot_dir=tmp_path)
    try:
        aid = spawn_counter(d)
        say(d, aid)
        d.ok("agent.hibernate", agent_id=aid)
        _parked(d, [aid])
        envs = [d.submit("agent.send", agent_id=aid, text="hi") for _ in range(5)]
        replies = [str(d.wait(e).body["reply"]) for e in envs]
        assert [f"message {n} " in r for n, r in zip(range(2, 7), replies, strict=True)] == [True] * 5
    finally:
        d.host.close()


def _without_intern_tables(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    """``snapshot`` without what pathlib's ``sys.intern`` calls allocate: only the interned-strings table,
    which pathlib feeds every path part (each agent's snapshot file name) and which is reallocated in one
    block of several MB whenever it is full, wherever the process's import history puts that moment (a full
    suite once put it inside this measurement: 3.7 MB). Not growth per agent; every other pathlib line, and
    so any Path an agent keeps, is still counted."""
    lines = inspect.getsourcelines(pathlib)[0]
    intern_lines = [n for n, text in enumerate(lines, start=1) if "sys.intern(" in text]
    assert intern_lines, "pathlib no longer calls sys.intern: drop this filter"
    return snapshot.filter_traces(
        [tracemalloc.Filter(False, pathlib.__file__, lineno=n) for n in intern_lines]
    )


def _parked_heap_growth(snapshot_dir: Path) -> tuple[int, int, int, str, list[str]]:
    """(Python heap growth, parked count, resident count, a message's answer, the biggest growths by line) for
    2,000 more agents parked."""
    d = Driver(AgentHost("w-test", HostParts(snapshot_dir=snapshot_dir, max_resident=20)))  # no event list
    try:
        warm = [spawn_counter(d) for _ in range(300)]
        _parked(d, warm[:250])
        gc.collect()
        tracemalloc.start()
        try:
            start = _without_intern_tables(tracemalloc.take_snapshot())
            more = [spawn_counter(d) for _ in range(2000)]
            _parked(d, more[:1950])
            gc.collect()
            end = _without_intern_tables(tracemalloc.take_snapshot())
        finally:
            tracemalloc.stop()
        grown = sum(s.size_diff for s in end.compare_to(start, "filename"))
        top = [str(s) for s in end.compare_to(start, "lineno")[:8]]
        return grown, len(d.host._parked), d.host._hib.resident(d.host._agents), say(d, more[0]), top
    finally:
        d.host.close()


def test_host_park_memory_does_not_grow_with_parked_agents(tmp_path: Path) -> None:
    """2,000 more agents parked (max_resident = 20) keep under 4 MB of Python heap (~0.3 KB each; a sleeping
    HostedAgent kept ~5.9 KB each without security: ~12 MB for 2,000). Measured with tracemalloc in a forked
    child: under xdist, threads an earlier test left in this process (a daemon harness's log readers)
    allocate meanwhile, and the process total once grew 4.2 MB where this test alone grew 0.6 MB."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only this thread exists here
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(_parked_heap_growth(tmp_path)).encode())
            code = 0
        except BaseException:
            traceback.print_exc()  # the parent sees only the exit status
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        raw = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and raw, "the measuring child failed"
    grown, parked, resident, answer, top = json.loads(raw)
    assert parked >= 2200 and resident <= 20
    print(f"python heap growth for 2,000 parked agents: {grown / 2**20:.2f} MB")
    biggest = "\n".join(top)
    assert grown < 4 * 2**20, (
        f"the Python heap grew {grown / 2**20:.1f} MB for 2,000 parked agents:\n{biggest}"
    )
    assert "message 1 " in answer


def test_host_park_resume_spawn_of_a_sleeper_is_parked_without_loading(tmp_path: Path) -> None:
    """A re-spawn (resume) of an agent whose file a hibernation wrote, on another host sharing the
    directory (a worker restart): answered at once, parked (no record, no sandbox loaded), and its next
    message is answered with its count; a running agent's re-spawn is not parked."""
    source, target = make_host(snapshot_dir=tmp_path), make_host(snapshot_dir=tmp_path)
    text = manifest("counter", module=str(COUNTER), model=False)
    try:
        aid, awake = spawn_counter(source), spawn_counter(source)
        say(source, aid)
        say(source, aid)
        say(source, awake)
        source.ok("agent.hibernate", agent_id=aid)
        _parked(source, [aid])
        spawned = target.ok("agent.spawn", manifest=text, agent_id=aid, resume=True)
        assert spawned["spawn"] == "parked" and spawned["restore"] == "snapshot"
        assert aid in target.host._parked and aid not in target.host._agents
        assert target.host.runtime_stats() == {"live_stores": 0, "agents": 1}
        assert "message 3 " in say(target, aid)
        again = target.ok("agent.spawn", manifest=text, agent_id=awake, resume=True)
        assert again["spawn"] != "parked" and awake in target.host._agents
    finally:
        source.host.close()
        target.host.close()
