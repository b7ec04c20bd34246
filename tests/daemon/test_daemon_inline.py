"""The workers pool under an inline supervisor (``inline = true``): the daemon's own process hosts it.

Real daemons, real workers, real signals: a worker's kill -9, a crash loop escalating through the inline
supervisor to the root (and past the root's intensity, the daemon's exit), SIGTERM's stop order, a SIGHUP
reload of the pool, and the tree as clients see it, next to the same tree with the pool forked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import psutil
import pytest
from daemon_harness import Cluster, wait_for

from openfang.supervisor.child import EXIT_ESCALATED

pytestmark = pytest.mark.integration

TEAM = """
[[supervisor.children]]
id = "team"
type = "supervisor"
inline = true
strategy = "one_for_one"
intensity = 1
period = 10

[[supervisor.children.children]]
id = "steady"
start = "daemon_children:steady"
heartbeat_ms = 3000

[[supervisor.children.children]]
id = "crasher"
start = "daemon_children:crash_after"
args = {{ seconds = {seconds} }}
"""


def _events(c: Cluster, name: str, **match: Any) -> list[dict[str, Any]]:
    return [
        e for e in c.log_events() if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
    ]


def test_inline_pool_runs_in_the_daemon_and_a_killed_worker_alone_is_restarted(
    make_cluster: type[Cluster],
) -> None:
    """The pool's supervisor has no process (its pid is the daemon's; the workers are the daemon's
    children); kill -9 of a worker restarts only it, and it serves again."""
    c = make_cluster(workers=2, inline=True).start()
    daemon_pid = c.proc.pid  # type: ignore[union-attr]
    pool = c.node("workers")
    assert pool["pid"] == daemon_pid and pool["state"] == "running"
    assert pool["rss_bytes"] is None and pool["uptime_s"] is None  # no process of its own to measure
    assert all(w["rss_bytes"] > 0 for w in pool["children"])
    w0, w1 = pool["children"]
    assert psutil.Process(w0["pid"]).ppid() == psutil.Process(w1["pid"]).ppid() == daemon_pid
    titles = {" ".join(p.cmdline()).strip() for p in c.descendants()}
    assert "openfang: workers" not in titles and "openfang: workers-0" in titles
    os.kill(w0["pid"], signal.SIGKILL)
    new = c.wait_restarted("workers", "workers-0", old_pid=w0["pid"])
    assert new["restarts"] == 1 and psutil.Process(new["pid"]).ppid() == daemon_pid
    assert wait_for(lambda: not c.call("worker.ping", {"worker": "workers-0"}).is_error, what="ping")
    assert c.node("workers", "workers-1")["pid"] == w1["pid"]
    assert c.node("workers")["restarts"] == 0
    (exited,) = _events(c, "child_exited", path="root/workers/workers-0")
    assert exited["supervisor"] == "root/workers" and exited["reason"] == "abnormal"
    assert c.stop() == 0
    c.assert_no_survivors()


def test_crash_loop_escalates_from_the_inline_supervisor_to_the_root_and_out_of_the_daemon(
    make_cluster: type[Cluster],
) -> None:
    """A child crashing past its inline supervisor's intensity: the inline supervisor gives up, the root
    restarts it with all its children (a fresh sibling); past the root's intensity the daemon exits 3."""
    c = make_cluster(workers=1, inline=True, intensity=2, extra=TEAM.format(seconds=0.3)).start(
        wait_ready=False
    )
    c.proc.wait(60)  # type: ignore[union-attr]
    assert c.proc.returncode == EXIT_ESCALATED, c.log()[-3000:]  # type: ignore[union-attr]
    escalated = [e.get("path") for e in _events(c, "supervisor_escalated")]
    assert escalated.count("root/team") == 3 and escalated[-1] == "root", escalated
    team_exits = _events(c, "child_exited", path="root/team")
    assert team_exits and all(e["detail"] == "escalated" for e in team_exits), team_exits
    assert len(_events(c, "child_restarted", path="root/team")) == 2
    steady = {e["pid"] for e in _events(c, "child_started", path="root/team/steady")}
    assert len(steady) == 3  # the whole subtree restarted each time, not only the crasher
    c.remember_pids()
    c.assert_no_survivors()


def test_sigterm_stops_the_inline_pool_in_reverse_order_before_the_gateway(
    make_cluster: type[Cluster],
) -> None:
    """SIGTERM: the pool's workers stop last-first (each within its shutdown), then the pool, then the
    gateway; exit 0, nothing left."""
    c = make_cluster(workers=2, inline=True).start()
    assert c.stop() == 0
    exits = [e.get("path") for e in _events(c, "child_exited")]
    order = [
        p
        for p in exits
        if p in ("root/workers/workers-1", "root/workers/workers-0", "root/workers", "root/control")
    ]
    assert order == ["root/workers/workers-1", "root/workers/workers-0", "root/workers", "root/control"], (
        exits
    )
    assert all(e["reason"] == "shutdown" for e in _events(c, "child_exited"))
    assert not _events(c, "shutdown_timeout_kill")  # each stopped within its shutdown timeout
    c.assert_no_survivors()


def test_sighup_reload_grows_and_shrinks_the_inline_pool_without_restarting_it(
    make_cluster: type[Cluster],
) -> None:
    """SIGHUP with a bigger pool: the inline supervisor gets its new spec, starts the new worker, and the
    running workers keep their processes; with the smaller pool again it stops the one dropped."""
    c = make_cluster(workers=1, inline=True).start()
    before = c.node("workers", "workers-0")["pid"]
    c.write_config(workers=2)
    c.signal(signal.SIGHUP)
    wait_for(
        lambda: [w["state"] for w in c.node("workers")["children"]] == ["running", "running"],
        what="the second worker",
    )
    assert c.node("workers", "workers-0")["pid"] == before
    (reloaded,) = _events(c, "config_reloaded")
    assert reloaded["reconfigured"] == ["workers"]
    assert wait_for(lambda: not c.call("worker.ping", {"worker": "workers-1"}).is_error, what="ping")
    c.remember_pids()
    c.write_config(workers=1)  # and back: the inline supervisor stops the worker the new spec drops
    c.signal(signal.SIGHUP)
    wait_for(lambda: [w["id"] for w in c.node("workers")["children"]] == ["workers-0"], what="workers-1 gone")
    assert c.node("workers", "workers-0")["pid"] == before
    (gone,) = _events(c, "child_exited", path="root/workers/workers-1")
    assert gone["reason"] == "shutdown"
    assert c.stop() == 0
    c.assert_no_survivors()


def _shape(nodes: list[dict[str, Any]]) -> list[Any]:
    return [
        (sorted(n), n["id"], n["path"], n["type"], n["state"], n["start"], _shape(n.get("children") or []))
        for n in nodes
    ]


def _state(line: str) -> str:
    return next((w for w in line.split() if w in ("running", "restarting", "stopped", "undefined")), "")


def _tree_answers(c: Cluster) -> tuple[Any, ...]:
    tree = c.tree()
    cli = subprocess.run(
        [sys.executable, "-m", "openfang.cli.main", "--endpoint", c.endpoint, "tree"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    which = c.ok("child.which", {"path": "root/workers"})
    count = c.ok("child.count", {"path": "root/workers"})
    started = c.call(
        "child.start", {"path": "root/workers", "spec": {"id": "extra", "start": "daemon_children:steady"}}
    )
    assert not started.is_error, started.body
    wait_for(lambda: len(c.node("workers")["children"]) == 3, what="the extra child in the tree")
    return (
        _shape(tree),
        [(line.split()[0], _state(line)) for line in cli.stdout.splitlines()],
        [(w["id"], w["type"], w["state"]) for w in which["children"]],
        count,
        c.ok("child.count", {"path": "root/workers"}),
    )


def test_tree_answers_the_same_inline_as_forked(make_cluster: type[Cluster]) -> None:
    """`tree`, `openfang tree`, which/count_children and start_child below the pool answer as they do with
    the pool in a process of its own (but for pids and figures: the inline supervisor has none)."""
    answers = []
    for inline in (False, True):
        c = make_cluster(workers=2, inline=inline).start()
        answers.append(_tree_answers(c))
        assert c.stop() == 0
        c.assert_no_survivors()
    forked, inline_answers = answers
    assert forked == inline_answers
