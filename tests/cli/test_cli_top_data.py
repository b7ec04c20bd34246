"""The data behind ``openfang top``: rows, sums, rates, CPU, filter, formatting (no daemon, no terminal)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import psutil

from openfang.cli.top_data import (
    AgentFilter,
    AgentRow,
    CpuMeter,
    NodeRow,
    RateMeter,
    Snapshot,
    agent_cells,
    agent_rows,
    flatten_tree,
    fmt_bytes,
    fmt_duration,
    is_local,
    selected_after,
    text_report,
    worker_rows,
)
from openfang.cli.top_feed import reachable_events

TREE: dict[str, Any] = {
    "root": {
        "id": "root",
        "path": "root",
        "type": "supervisor",
        "pid": 10,
        "state": "running",
        "uptime_s": 9,
    },
    "children": [
        {
            "id": "control",
            "path": "root/control",
            "type": "worker",
            "start": "openfang.control.gateway:main",
            "pid": 11,
            "state": "running",
            "info": {"endpoint": "ipc://x"},
        },
        {
            "id": "workers",
            "path": "root/workers",
            "type": "supervisor",
            "pid": 12,
            "state": "running",
            "children": [
                {
                    "id": "workers-0",
                    "path": "root/workers/workers-0",
                    "type": "worker",
                    "start": "openfang.workers.worker:main",
                    "pid": 13,
                    "cpu": 0,
                    "state": "running",
                    "restarts": 2,
                    "rss_bytes": 70 << 20,
                    "info": {"cpu": 0, "agents": 0},
                },
                {
                    "id": "workers-1",
                    "path": "root/workers/workers-1",
                    "type": "worker",
                    "state": "restarting",
                    "info": {"agents": 0},  # no start given: known as an agent worker by its info
                },
            ],
        },
    ],
}

AGENTS: dict[str, Any] = {
    "agents": [
        {"agent_id": "b@workers-0", "name": "b", "worker": "workers-0", "state": "running",
         "activity": "waiting", "messages": 4, "inbox": 3, "fuel_used": 100, "memory_bytes": 131072},
        {"agent_id": "a@workers-0", "name": "a", "worker": "workers-0", "state": "suspended",
         "activity": "idle", "messages": 1, "inbox": 2},
        {"agent_id": "c@nowhere", "name": "c", "worker": None, "state": "hibernated"},
        {"name": "no id: skipped"},
    ],
    "errors": [],
}  # fmt: skip


def test_flatten_tree_is_depth_first_with_root_first() -> None:
    """The tree reply becomes rows in depth-first order with depths; agent workers are told apart."""
    rows = flatten_tree(TREE)
    assert [(r.id, r.depth) for r in rows] == [
        ("root", 0),
        ("control", 1),
        ("workers", 1),
        ("workers-0", 2),
        ("workers-1", 2),
    ]
    assert [r.id for r in rows if r.hosts_agents] == ["workers-0", "workers-1"]
    w0 = rows[3]
    assert (w0.pid, w0.core, w0.restarts, w0.rss_bytes) == (13, 0, 2, 70 << 20)
    assert rows[4].pid is None and rows[4].state == "restarting"


def test_agent_rows_sorts_by_id_and_tolerates_missing_fields() -> None:
    """agent.list records become rows sorted by id; a record without an id is skipped, a nil worker is ''."""
    rows = agent_rows(AGENTS, {"a@workers-0": 2.5})
    assert [r.agent_id for r in rows] == ["a@workers-0", "b@workers-0", "c@nowhere"]
    assert rows[0].msgs_per_s == 2.5 and rows[1].msgs_per_s is None
    assert rows[2].worker == "" and rows[2].messages is None
    assert agent_cells(rows[2])[3] == "-", "an unplaced agent shows '-' as its worker"
    twice = {"agents": [*AGENTS["agents"], {**AGENTS["agents"][1], "state": "running"}]}
    again = agent_rows(twice)
    assert len(again) == 3 and again[0].state == "running", "an id listed twice keeps its last record"


def test_worker_rows_sum_agents_busy_and_queued_per_worker() -> None:
    """Each agent worker gets its agents' count, how many are inside a call, and their queued messages."""
    nodes = flatten_tree(TREE)
    rows = worker_rows(nodes, agent_rows(AGENTS), cpu={13: 37.5})
    by_id = {r.id: r for r in rows}
    assert set(by_id) == {"workers-0", "workers-1"}, "the gateway is not an agent worker"
    w0 = by_id["workers-0"]
    assert (w0.agents, w0.busy, w0.queued, w0.cpu_percent) == (2, 1, 5, 37.5)
    w1 = by_id["workers-1"]
    assert (w1.agents, w1.busy, w1.queued, w1.cpu_percent) == (0, 0, 0, None)


def test_rate_meter_needs_two_samples_and_spans_its_window() -> None:
    """msgs/s is unknown on the first sample, then the counter's growth over the window's samples."""
    meter = RateMeter(window=5.0)
    assert meter.update(100.0, {"a": 10}) == {"a": None}
    assert meter.update(101.0, {"a": 14}) == {"a": 4.0}
    assert meter.update(102.0, {"a": 20}) == {"a": 5.0}, "(20 - 10) / 2 s"
    for t in range(103, 110):
        rates = meter.update(float(t), {"a": 20})
    assert rates == {"a": 0.0}, "growth older than the window no longer counts"


def test_rate_meter_starts_over_on_a_reset_and_forgets_gone_keys() -> None:
    """A counter that goes down (restarted agent) has no rate until the next sample; gone keys are dropped."""
    meter = RateMeter()
    meter.update(1.0, {"a": 50, "b": 1})
    assert meter.update(2.0, {"a": 3, "b": 2}) == {"a": None, "b": 1.0}
    assert meter.update(3.0, {"a": 5}) == {"a": 2.0}
    assert meter.update(4.0, {"a": 6, "b": 9}) == {"a": 1.5, "b": None}, "b came back: a new series"
    assert meter.update(5.0, {"a": None}) == {"a": None}


def test_filter_matches_words_fields_and_negations() -> None:
    """Every term must match: bare words any field, field:text one field, !term excludes, any case."""
    rows = agent_rows(AGENTS)
    ids = lambda text: [r.agent_id for r in AgentFilter(text).apply(rows)]  # noqa: E731
    assert ids("") == ["a@workers-0", "b@workers-0", "c@nowhere"]
    assert ids("WORKERS-0") == ["a@workers-0", "b@workers-0"]
    assert ids("state:susp") == ["a@workers-0"]
    assert ids("workers-0 !state:suspended") == ["b@workers-0"]
    assert ids("activity:wait") == ["b@workers-0"]
    assert ids("hibernated") == ["c@nowhere"]
    assert ids("nothing-like-this") == []
    assert AgentFilter("colour:red").problem() == (
        "filter: unknown field 'colour' (fields: id, name, worker, state, service, activity)"
    )
    assert AgentFilter("state:x !worker:y").problem() is None


def test_selected_after_keeps_the_same_agent_or_the_same_place() -> None:
    """After a refresh the cursor stays on the same agent, or on the same row index clamped to the list."""
    rows = [AgentRow(agent_id=i, name=i, worker="w", state="running") for i in ("a", "b", "c")]
    assert selected_after(rows, "c", 0) == 2
    assert selected_after(rows, "gone", 1) == 1
    assert selected_after(rows, "gone", 7) == 2
    assert selected_after([], "a", 3) == 0


def test_is_local_and_reachable_events() -> None:
    """ipc and loopback endpoints are this host; a tcp wildcard events host becomes the control host."""
    assert is_local("ipc:///tmp/x.sock") and is_local("tcp://127.0.0.1:5555") and is_local("tcp://[::1]:1")
    assert not is_local("tcp://10.1.2.3:5555")
    assert reachable_events("tcp://0.0.0.0:6001", "tcp://10.1.2.3:6000") == "tcp://10.1.2.3:6001"
    assert reachable_events("tcp://*:6001", "tcp://host.example:6000") == "tcp://host.example:6001"
    assert reachable_events("tcp://10.9.9.9:6001", "tcp://10.1.2.3:6000") == "tcp://10.9.9.9:6001"
    assert reachable_events("ipc:///r/events.sock", "ipc:///r/control.sock") == "ipc:///r/events.sock"


def test_cpu_meter_measures_a_busy_process_and_refuses_a_recycled_pid() -> None:
    """A spinning child reads tens of % on the second sample; a pid whose start time disagrees reads None."""
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        created = psutil.Process(spin.pid).create_time()
        meter = CpuMeter()

        def node(uptime: float) -> NodeRow:
            return NodeRow(depth=1, id="w", path="root/w", type="worker", state="running", pid=spin.pid,
                           uptime_s=uptime)  # fmt: skip

        now = time.time()
        assert meter.measure([node(now - created)], now) == {spin.pid: None}, "the first reading starts"
        deadline = time.monotonic() + 30
        readings: list[float | None] = []
        while time.monotonic() < deadline and not any(r is not None and r > 5.0 for r in readings):
            time.sleep(0.5)
            now = time.time()
            readings.append(meter.measure([node(now - created)], now)[spin.pid])
        assert None not in readings, "a known process reads a figure from its second sample on"
        assert max(r for r in readings if r is not None) > 5.0, readings
        other = CpuMeter()
        now = time.time()
        assert other.measure([node(now - created + 3600)], now) == {spin.pid: None}
        assert other.measure([node(now - created + 3600)], now + 1) == {spin.pid: None}, "never measured"
        assert meter.measure([], now) == {} and not meter._procs, "a pid no longer in the tree is dropped"
    finally:
        spin.kill()
        spin.wait()
    dead = NodeRow(depth=1, id="w", path="p", type="worker", state="running", pid=spin.pid, uptime_s=1.0)
    assert CpuMeter().measure([dead]) == {spin.pid: None}, "a gone process reads None, not an error"


def test_formatting_of_sizes_durations_and_the_text_report() -> None:
    """Sizes and durations read like top's; --once's report has every table with its header."""
    assert [fmt_bytes(n) for n in (None, 131072, 70 << 20, 3 << 30)] == ["-", "128K", "70.0M", "3.00G"]
    assert [fmt_duration(s) for s in (None, 5.2, 125, 7300, 90000)] == ["-", "5s", "2m05s", "2h01m", "1d01h"]
    nodes = flatten_tree(TREE)
    agents = agent_rows(AGENTS)
    snap = Snapshot(
        taken_at=1.0,
        name="prod",
        state="running",
        version="0.1.0",
        uptime_s=61,
        workers_connected=1,
        nodes=tuple(nodes),
        workers=tuple(worker_rows(nodes, agents)),
        agents=tuple(agents),
        problems=("a worker did not answer agent.list: workers-1",),
    )
    report = text_report(snap, "ipc:///r/control.sock")
    lines = report.splitlines()
    assert lines[0].startswith("prod  running  up 1m01s  openfang 0.1.0  1 workers connected  3 agents")
    assert "    workers-0" in report and "a worker did not answer agent.list: workers-1" in report
    header = next(line for line in lines if line.startswith("AGENT"))
    row = next(line for line in lines if line.startswith("b@workers-0"))
    assert row.split() == [
        "b@workers-0",
        "running",
        "waiting",
        "workers-0",
        "4",
        "-",
        "3",
        "100",
        "128K",
        "0",
    ]
    assert header.split()[:4] == ["AGENT", "STATE", "ACTIVITY", "WORKER"]
    empty = text_report(Snapshot(taken_at=1.0), "ipc:///r/control.sock")
    assert "\nagents\nAGENT" in empty and "?  ?  up -" in empty, "a system with nothing in it still prints"


def test_top_without_textual_says_what_to_install(tmp_path: Any) -> None:
    """With Textual not importable, openfang top exits 2 naming the 'tui' extra (it never draws half a UI)."""
    blocker = tmp_path / "textual"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('blocked for the test', name='textual')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(
        [sys.executable, "-m", "openfang.cli.main", "top", "--endpoint", f"ipc://{tmp_path}/none.sock"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2, out
    assert "pip install 'openfang[tui]'" in out.stderr and "--once" in out.stderr


def test_render_agents_footer_names_the_next_cursor() -> None:
    """A page with next: the footer shows N of total and the --after to use; the last page says so."""
    from openfang.cli import render

    page = {"agents": [{"agent_id": "a-1", "state": "running"}], "next": "a-1", "total": 3}
    assert (
        render.agents(page)
        .splitlines()[-1]
        .startswith("(1 of 3 shown; next page: openfang agent list --after a-1")
    )
    last = render.agents({"agents": [{"agent_id": "a-3", "state": "running"}], "next": None, "total": 3})
    assert last.splitlines()[-1] == "(last page: 1 of 3 shown)"
    every = render.agents({"agents": [{"agent_id": "a-3", "state": "running"}], "next": None, "total": 1})
    assert len(every.splitlines()) == 2, "a complete list has no footer"
