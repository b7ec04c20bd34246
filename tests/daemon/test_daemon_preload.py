"""The daemon's first worker from its preloaded process (openfang/_coldstart.py, supervisor/preload.py).

The daemon forks, before its own imports, a process that imports the workers' module and becomes the first
worker its tree starts. Pids are handed out in fork order, so a first worker forked before the gateway has
the smaller pid. Real daemons throughout: a worker killed with -9, a pool forked in its own supervisor
process (which cannot take the root's preloaded process), and the switch that turns it off.
"""

from __future__ import annotations

import os
import signal

import psutil
import pytest
from daemon_harness import Cluster, wait_for

pytestmark = pytest.mark.integration

ECHO = '[agent]\nname = "echo"\nmodule = "builtin:echo"\n'


def _titles(c: Cluster) -> set[str]:
    return {" ".join(p.cmdline()).strip() for p in c.descendants()}


def _echo(c: Cluster) -> None:
    agent = c.ok("agent.spawn", {"manifest": ECHO}, timeout=30)["agent_id"]
    assert "hi" in c.ok("agent.send", {"agent_id": agent, "text": "hi"})["reply"]


def test_first_worker_is_the_process_preloaded_before_the_gateway_and_serves(
    make_cluster: type[Cluster],
) -> None:
    """With the pool inline, workers-0 is the preloaded process (forked before the gateway, so its pid is
    the smaller), the daemon's child, titled as any worker; no preloaded process is left; it serves."""
    c = make_cluster(workers=1, inline=True).start()
    daemon_pid = c.proc.pid  # type: ignore[union-attr]
    gateway = c.node("control")["pid"]
    worker = c.node("workers", "workers-0")["pid"]
    assert worker < gateway and psutil.Process(worker).ppid() == daemon_pid
    titles = _titles(c)
    assert "openfang: workers-0" in titles and "openfang: preload" not in titles
    _echo(c)
    assert c.stop() == 0
    c.assert_no_survivors()


def _maps_wasmtime(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return "_libwasmtime" in f.read()


def test_preloaded_worker_killed_is_restarted_by_a_fork_and_serves_again(make_cluster: type[Cluster]) -> None:
    """kill -9 of the preloaded first worker: the root restarts it by a fork (its module imported first,
    so the new pid comes after the gateway's), and agents are served again."""
    c = make_cluster(workers=1, inline=True).start()
    daemon_pid = c.proc.pid  # type: ignore[union-attr]
    gateway = c.node("control")["pid"]
    worker = c.node("workers", "workers-0")["pid"]
    assert worker < gateway
    # The root has not imported the workers' modules (it maps wasmtime's library only through them): the
    # preloaded worker's are its own. The restart's fork imports them here first.
    assert not _maps_wasmtime(daemon_pid)
    os.kill(worker, signal.SIGKILL)
    new = c.wait_restarted("workers", "workers-0", old_pid=worker)
    assert new["pid"] > gateway and new["restarts"] == 1 and _maps_wasmtime(daemon_pid)
    assert wait_for(lambda: not c.call("worker.ping", {"worker": "workers-0"}).is_error, what="ping")
    _echo(c)
    assert c.stop() == 0
    c.assert_no_survivors()


def test_a_forked_pool_supervisor_forks_its_workers_and_the_preloaded_process_is_reaped(
    make_cluster: type[Cluster],
) -> None:
    """A pool in its own supervisor process cannot take the root's preloaded process (not its child): the
    pool forks its workers, the preloaded process is killed and reaped at READY, and agents are served."""
    c = make_cluster(workers=2, inline=False).start()
    pool = c.node("workers")["pid"]
    for name in ("workers-0", "workers-1"):
        assert psutil.Process(c.node("workers", name)["pid"]).ppid() == pool
    assert wait_for(lambda: "openfang: preload" not in _titles(c), what="the preloaded process reaped")
    assert all(p.status() != psutil.STATUS_ZOMBIE for p in c.descendants())
    _echo(c)
    assert c.stop() == 0
    c.assert_no_survivors()


def test_preload_off_forks_the_first_worker_after_the_gateway(make_cluster: type[Cluster]) -> None:
    """OPENFANG_PRELOAD=0: no preloaded process; the first worker is forked after the gateway, as before."""
    c = make_cluster(workers=1, inline=True).start(env={"OPENFANG_PRELOAD": "0"})
    assert c.node("workers", "workers-0")["pid"] > c.node("control")["pid"]
    assert "openfang: preload" not in _titles(c)
    _echo(c)
    assert c.stop() == 0
    c.assert_no_survivors()


def test_a_config_check_leaves_no_preloaded_process_behind(make_cluster: type[Cluster]) -> None:
    """``--check`` exits at once: the process it preloaded is killed and reaped on the way out."""
    c = make_cluster(workers=1, inline=True)
    c.start(wait_ready=False, extra_args=("--check",))
    assert c.proc.wait(30) == 0  # type: ignore[union-attr]
    me = psutil.Process()
    assert not [p for p in me.children(recursive=True) if "preload" in " ".join(p.cmdline())]


def test_a_fixed_pool_of_two_forks_both_workers_after_one_import_here(make_cluster: type[Cluster]) -> None:
    """Two workers started at once: the preloaded process is dropped as soon as the tree is known (the
    second worker's fork needs the import here anyway); both are forked after the gateway and serve."""
    c = make_cluster(workers=2, inline=True).start()
    gateway = c.node("control")["pid"]
    assert all(c.node("workers", f"workers-{i}")["pid"] > gateway for i in (0, 1))
    assert "openfang: preload" not in _titles(c)
    _echo(c)
    assert c.stop() == 0
    c.assert_no_survivors()
