"""Watching a running system: readiness, the tree after an auto-shutdown, process titles, logs once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from daemon_harness import Cluster, wait_for

pytestmark = pytest.mark.integration

BATCH = """
[[supervisor.children]]
id = "batch"
type = "supervisor"
strategy = "one_for_one"
restart = "transient"
auto_shutdown = "any_significant"

[[supervisor.children.children]]
id = "helper"
start = "daemon_children:steady"
heartbeat_ms = 3000

[[supervisor.children.children]]
id = "job"
start = "daemon_children:finish_after"
restart = "transient"
significant = true
args = {seconds = 0.5}
"""


def _ctl(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openfang.cli.main", "--endpoint", c.endpoint, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("inline", [False, True], ids=["fork", "inline"])
def test_tree_auto_shutdown_supervisor_that_is_gone_lists_no_children(
    make_cluster: type[Cluster], inline: bool
) -> None:
    """A supervisor that shut itself down (its significant child finished) shows no leftover children,
    whether it ran as a process or inline in the daemon's."""
    extra = (
        BATCH.replace('type = "supervisor"\n', 'type = "supervisor"\ninline = true\n') if inline else BATCH
    )
    c = make_cluster(workers=1, extra=extra).start()
    assert (c.node("batch")["pid"] == c.proc.pid) is inline  # type: ignore[union-attr]
    assert {n["id"] for n in c.node("batch")["children"]} == {"helper", "job"}
    wait_for(lambda: c.node("batch")["pid"] is None, what="batch to shut itself down")
    batch = c.node("batch")
    assert batch["state"] != "running" and batch["children"] == [], batch
    res = _ctl(c, "tree")
    assert res.returncode == 0 and "batch" in res.stdout
    assert "helper" not in res.stdout and "job" not in res.stdout, res.stdout
    assert c.stop() == 0


def test_status_is_ready_only_once_every_worker_is_connected(make_cluster: type[Cluster]) -> None:
    """status says ready only when the gateway has every worker; from then on a spawn is placed at once."""
    c = make_cluster(workers=2).start(wait_ready=False)
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = c.call("status", timeout=15)
        if reply.is_error:
            continue
        status = reply.body
        seen.append((status["state"], status.get("ready"), status["workers"]))
        if status.get("ready"):
            break
        time.sleep(0.01)
    assert status["ready"] is True and status["workers"] == status["workers_expected"] == 2, seen
    assert all(ready is False for _, ready, _ in seen[:-1]), seen  # never ready before that
    spawned = c.ok("agent.spawn", {"manifest": '[agent]\nname = "early"\nmodule = "builtin:echo"\n'})
    assert spawned["agent_id"].startswith("early")
    human = _ctl(c, "status")
    assert human.returncode == 0 and "ready" in human.stdout.splitlines()[0]
    assert "2 connected of 2" in human.stdout
    assert c.stop() == 0


def test_process_titles_name_each_child(make_cluster: type[Cluster]) -> None:
    """/proc/<pid>/cmdline of the real processes: "openfang: supervisor", "openfang: workers-0", ..."""
    c = make_cluster(workers=1, memory=True).start()
    titles = {}
    assert c.proc is not None
    for proc in [psutil.Process(c.proc.pid), *c.descendants()]:
        raw = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        titles[proc.pid] = raw.replace(b"\0", b" ").decode().strip()
    assert titles[c.proc.pid] == "openfang: supervisor"
    for child in ("control", "memory", "workers", "workers-0"):
        pid = c.node(*(["workers", child] if child == "workers-0" else [child]))["pid"]
        assert titles[pid] == f"openfang: {child}", titles
    assert c.stop() == 0


def test_child_events_are_logged_once(make_cluster: type[Cluster]) -> None:
    """Each child start is one log line (by the supervisor that owns the child), not two."""
    c = make_cluster(workers=1).start()
    assert c.stop() == 0
    events = c.log_events()
    started = [e for e in events if e.get("event") == "child_started" and e.get("id") == "control"]
    assert len(started) == 1, started
    assert not [e for e in events if e.get("event") == "event" and e.get("kind", "").startswith("child.")]
    pool = [e for e in events if e.get("id") == "workers-0" and "child" in str(e.get("event"))]
    seen = [(e["event"], e.get("pid"), e.get("timestamp")) for e in pool]
    # Its line once went missing under load: it shared a line with the gateway's (PrintLogger wrote the text
    # and the newline apart, and PYTHONUNBUFFERED made them two writes); tests/openfang_core/test_logs.py.
    assert len([e for e in pool if e["event"] == "child_started"]) == 1, f"{seen}\n--- the log:\n{c.log()}"


def test_agent_send_session_reaches_memory(make_cluster: type[Cluster]) -> None:
    """agent send --session puts the exchange in that session of the agent's history."""
    c = make_cluster(workers=1, memory=True).start()
    manifest = Path(c.dir / "greeter.toml")
    manifest.write_text(
        '[agent]\nname = "greeter"\n[agent.model]\nprovider = "scripted"\ndefault = "hi there"\n'
    )
    agent = json.loads(_ctl(c, "agent", "spawn", str(manifest), "--json").stdout)["agent_id"]
    sent = _ctl(c, "agent", "send", agent, "hello", "--session", "trip-42")
    assert sent.returncode == 0 and sent.stdout.strip() == "hi there", sent.stderr

    def history() -> list[dict[str, object]]:
        out = _ctl(c, "memory", "history", agent, "--json").stdout
        return list(json.loads(out)["messages"]) if out else []

    messages = wait_for(lambda: len(history()) == 2 and history(), what="both messages in memory")
    assert {m["session"] for m in messages} == {"trip-42"}
    assert c.stop() == 0
