"""The daemon end to end: a real tree of real processes, real sockets, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from daemon_harness import Cluster, wait_for

from openfang.supervisor.child import EXIT_ESCALATED

pytestmark = pytest.mark.integration


def test_daemon_starts_pinned_workers_and_reports_ready(make_cluster: type[Cluster]) -> None:
    """READY=1 reaches the notify socket once the tree is up; each worker is pinned to its own core."""
    c = make_cluster(workers=2).start()
    status = c.ok("status")
    assert status["state"] == "running" and status["pid"] == c.proc.pid  # type: ignore[union-attr]
    workers = c.node("workers")["children"]
    assert [w["id"] for w in workers] == ["workers-0", "workers-1"]
    allowed = sorted(os.sched_getaffinity(0))
    for i, w in enumerate(workers):
        assert w["cpu"] == allowed[i % len(allowed)]
        assert psutil.Process(w["pid"]).cpu_affinity() == [w["cpu"]]
        assert w["rss_bytes"] > 0 and w["state"] == "running"
        pong = c.ok("worker.ping", {"worker": w["id"]})
        assert pong["pid"] == w["pid"] and pong["cpu"] == w["cpu"]
    assert c.stop() == 0
    c.assert_no_survivors()


def test_killed_worker_is_restarted_and_serves_again(make_cluster: type[Cluster]) -> None:
    """kill -9 of a worker: its supervisor restarts it, it answers again, the sibling is untouched."""
    c = make_cluster(workers=2).start()
    w0, w1 = c.node("workers")["children"]
    os.kill(w0["pid"], signal.SIGKILL)
    new = c.wait_restarted("workers", "workers-0", old_pid=w0["pid"])
    assert new["restarts"] == 1
    assert wait_for(lambda: not c.call("worker.ping", {"worker": "workers-0"}).is_error, what="ping")
    assert c.ok("worker.ping", {"worker": "workers-0"})["pid"] == new["pid"]
    assert c.node("workers", "workers-1")["pid"] == w1["pid"]
    assert c.stop() == 0
    c.assert_no_survivors()


def test_killed_nested_supervisor_leaves_no_orphans_and_comes_back(make_cluster: type[Cluster]) -> None:
    """kill -9 of the workers supervisor: its workers die with it, the root restarts the subtree."""
    c = make_cluster(workers=2).start()
    sup = c.node("workers")
    old_workers = [w["pid"] for w in sup["children"]]
    os.kill(sup["pid"], signal.SIGKILL)
    # Orphaned workers die by PDEATHSIG and are reaped by the daemon (the subreaper): no zombie stays.
    wait_for(
        lambda: not [p for p in old_workers if psutil.pid_exists(p)], what="old workers to die and be reaped"
    )
    fresh = wait_for(
        lambda: (
            (n := c.node("workers"))["pid"] != sup["pid"]
            and len([w for w in n["children"] if w["state"] == "running"]) == 2
            and n
        ),
        what="workers subtree back",
    )
    assert fresh["restarts"] == 1
    c.remember_pids()
    assert c.stop() == 0
    c.assert_no_survivors()


def test_sigterm_stops_children_in_reverse_start_order_and_exits_zero(make_cluster: type[Cluster]) -> None:
    """SIGTERM: STOPPING=1, workers stop before the gateway (reverse of start order), exit status 0."""
    c = make_cluster(workers=2).start()
    assert c.stop() == 0
    c.wait_notification("STOPPING=1", timeout=5)
    exits = [
        e.get("id")
        for e in c.log_events()
        if e.get("event") == "child_exited" and e.get("path", "").count("/") <= 1
    ]
    assert exits.index("workers") < exits.index("control"), exits
    c.assert_no_survivors()


def test_kill_9_of_the_daemon_leaves_no_orphans(make_cluster: type[Cluster]) -> None:
    """kill -9 of the root: PDEATHSIG takes the whole tree down, nothing is left running."""
    c = make_cluster(workers=2).start()
    c.remember_pids()
    assert len(c.known_pids) >= 4  # gateway, workers supervisor, two workers
    c.proc.kill()  # type: ignore[union-attr]
    c.proc.wait(5)  # type: ignore[union-attr]
    c.assert_no_survivors(timeout=10)


def test_hung_worker_without_heartbeat_is_killed_and_restarted(make_cluster: type[Cluster]) -> None:
    """A child that stops heartbeating past heartbeat_ms is killed and restarted (event child.hung)."""
    extra = """
[[supervisor.children]]
id = "wedge"
start = "daemon_children:hang_after"
restart = "permanent"
heartbeat_ms = 400
shutdown = "brutal_kill"
args = { seconds = 0.3 }
"""
    c = make_cluster(workers=1, extra=extra, intensity=50).start()
    first = c.node("wedge")["pid"]
    wait_for(lambda: c.node("wedge")["restarts"] >= 1, what="the hung child to be restarted")
    assert c.node("wedge")["pid"] != first
    assert any(e.get("event") == "child_hung" for e in c.log_events())
    assert c.stop() == 0
    c.assert_no_survivors()


def test_restart_storm_escalates_and_the_daemon_exits_escalated(make_cluster: type[Cluster]) -> None:
    """A child crashing faster than the root's intensity allows takes the root down: exit 3, no orphans."""
    extra = """
[[supervisor.children]]
id = "crasher"
start = "daemon_children:crash_after"
restart = "permanent"
args = { seconds = 0.05 }
"""
    c = make_cluster(workers=1, extra=extra, intensity=2).start(wait_ready=False)
    c.proc.wait(30)  # type: ignore[union-attr]
    assert c.proc.returncode == EXIT_ESCALATED, c.log()[-3000:]  # type: ignore[union-attr]
    c.remember_pids()
    c.assert_no_survivors()


def test_failed_start_rolls_back_and_names_the_child(make_cluster: type[Cluster]) -> None:
    """A child that cannot start stops the ones already started and the daemon exits naming it."""
    extra = """
[[supervisor.children]]
id = "broken"
start = "daemon_children:fail_start"
"""
    c = make_cluster(workers=1, extra=extra).start(wait_ready=False)
    c.proc.wait(30)  # type: ignore[union-attr]
    assert c.proc.returncode != 0
    assert "broken" in c.log()
    c.assert_no_survivors()


def test_check_reports_every_problem_and_exits_2(tmp_path: object) -> None:
    """--check validates without starting anything: every problem with its place, exit status 2."""
    from pathlib import Path

    cfg = Path(str(tmp_path)) / "bad.toml"
    cfg.write_text("""
[cluster]
name = ""
[control]
endpoint = "tcp://127.0.0.1:5555"
queue_limit = -3
[supervisor]
strategy = "one_for_some"
[[supervisor.children]]
id = "x"
start = "no_colon_here"
restart = "sometimes"
[bogus]
""")
    out = subprocess.run(
        [sys.executable, "-m", "openfang.control.daemon", "--config", str(cfg), "--check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    for needle in (
        "[cluster] key 'name'",
        "keys_dir",
        "queue_limit",
        "one_for_some",
        "no_colon_here",
        "sometimes",
        "[bogus]",
    ):
        assert needle in out.stderr, (needle, out.stderr)
    good = Path(__file__).resolve().parents[2] / "examples" / "cluster.toml"
    ok = subprocess.run(
        [sys.executable, "-m", "openfang.control.daemon", "--config", str(good), "--check"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr


def test_stop_request_stops_the_daemon(make_cluster: type[Cluster]) -> None:
    """The ctl 'stop' request is answered, then the tree stops and the daemon exits 0."""
    c = make_cluster(workers=1).start()
    c.remember_pids()
    assert c.ok("stop") == {"stopping": True}
    assert c.proc.wait(30) == 0  # type: ignore[union-attr]
    c.assert_no_survivors()


def test_events_stream_publishes_restarts(make_cluster: type[Cluster]) -> None:
    """A subscriber sees child.exited and child.restarted when a worker is killed."""
    from openfang.protocol.envelope import decode

    c = make_cluster(workers=1).start()
    sub = c.subscribe()
    pid = c.node("workers", "workers-0")["pid"]
    os.kill(pid, signal.SIGKILL)
    kinds: list[str] = []
    deadline = time.monotonic() + 15
    while "child.restarted" not in kinds and time.monotonic() < deadline:
        if sub.poll(500):
            topic, payload = sub.recv_multipart()
            env = decode(payload)
            assert env.type == "event" and topic.decode() == env.body["kind"]
            kinds.append(env.body["kind"])
    sub.close()
    assert "child.exited" in kinds and "child.restarted" in kinds, kinds
    assert c.stop() == 0


def test_events_stream_publishes_an_agents_states_after_its_spawn_and_kill(
    make_cluster: type[Cluster],
) -> None:
    """A worker sends its agents' events after the replies of the same turn: none is lost on the way; a
    subscriber sees the new agent running on its worker, then dead (killed)."""
    from openfang.protocol.envelope import decode

    c = make_cluster(workers=1).start()
    sub = c.subscribe()
    manifest = '[agent]\nname = "watched"\nmodule = "builtin:echo"\n'
    agent_id = c.ok("agent.spawn", {"manifest": manifest})["agent_id"]
    c.ok("agent.kill", {"agent_id": agent_id})
    states: list[tuple[str, str | None]] = []
    deadline = time.monotonic() + 15
    while ("dead", "killed") not in states and time.monotonic() < deadline:
        if sub.poll(500):
            body = decode(sub.recv_multipart()[1]).body
            if body.get("kind") == "agent.state" and body.get("agent_id") == agent_id:
                assert body["worker"] == "workers-0", body
                states.append((body["state"], body.get("why")))
    sub.close()
    assert [s for s, _ in states][:1] == ["running"] and ("dead", "killed") in states, states
    assert c.stop() == 0


def test_sd_notify_sequence_ready_reloading_ready_stopping_and_watchdog(make_cluster: type[Cluster]) -> None:
    """Under a service manager: READY=1, WATCHDOG=1 pings, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1."""
    c = make_cluster(workers=1).start(env={"WATCHDOG_USEC": "200000"})
    c.wait_notification("WATCHDOG=1", timeout=5)
    c.wait_notification("WATCHDOG=1", timeout=5)
    c.signal(signal.SIGHUP)
    reloading = c.wait_notification("RELOADING=1", timeout=10)
    assert any(f.startswith("MONOTONIC_USEC=") for f in reloading)
    c.wait_notification("READY=1", timeout=10)
    assert c.stop() == 0
    c.wait_notification("STOPPING=1", timeout=5)
    order = [n.split("\n")[0] for n in c.notifications if not n.startswith("WATCHDOG")]
    assert order[0].startswith("STATUS=") or order[0] == "READY=1"
    firsts = [o for o in order if o in ("READY=1", "RELOADING=1", "STOPPING=1")]
    assert firsts == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], firsts


def test_supervisor_processes_stay_single_threaded_so_forking_is_safe(make_cluster: type[Cluster]) -> None:
    """Root and nested supervisors pre-import worker modules yet never start a thread (fork stays safe)."""
    c = make_cluster(workers=2).start()
    sup_pids = [c.proc.pid, c.node("workers")["pid"]]  # type: ignore[union-attr]
    for pid in sup_pids:
        assert len(os.listdir(f"/proc/{pid}/task")) == 1, f"supervisor {pid} has threads"
    assert c.stop() == 0


def test_daemon_children_start_with_the_cyclic_collector_on(
    make_cluster: type[Cluster], tmp_path: Path
) -> None:
    """The daemon starts without the cyclic collector (openfang._coldstart) until its tree has started, but
    every child it forks meanwhile turns it on: a child of the root has it on."""
    report = tmp_path / "gc.txt"
    extra = f"""
[[supervisor.children]]
id = "gcprobe"
start = "daemon_children:report_gc"
args = {{ path = "{report}" }}
"""
    c = make_cluster(workers=1, extra=extra).start()
    wait_for(lambda: report.exists() and report.read_text().endswith("\n"), what="the probe's report")
    assert report.read_text() == "True\n"
    assert c.stop() == 0


def test_daemon_integrity_helper_is_reaped_once_ready(make_cluster: type[Cluster]) -> None:
    """The helper that takes layer 14's baseline (control/baseline.py) is gone once the daemon is ready:
    every process left under the root is a child of its tree, and the root still answers."""

    def pids(nodes: list[dict[str, object]]) -> set[int]:
        out = {int(str(n["pid"])) for n in nodes if n.get("pid")}
        for n in nodes:
            out |= pids(list(n.get("children") or []))  # type: ignore[call-overload]
        return out

    c = make_cluster(workers=2).start()
    root = psutil.Process(c.proc.pid)  # type: ignore[union-attr]
    in_tree = pids(c.tree())
    assert in_tree and {p.pid for p in root.children()} <= in_tree
    assert c.ok("status")["state"] == "running"
    assert c.stop() == 0
    # Reaped by the root itself, not taken for an orphan of the tree by the root's orphan reaper.
    assert [e for e in c.log_events() if e.get("event") == "orphan_reaped"] == []
