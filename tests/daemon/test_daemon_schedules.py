"""Schedules on a real daemon: the scheduler child fires them through the gateway, once, across kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from daemon_harness import Cluster, wait_for

pytestmark = pytest.mark.integration

SCHEDULER = """
[[supervisor.children]]
id = "scheduler"
start = "openfang.control.scheduler:main"
restart = "permanent"
shutdown = 5000
heartbeat_ms = 3000
"""

AGENT = """
[agent]
name = "alarm"
module = "builtin:llm-agent"

[agent.model]
provider = "scripted"
script = [{match = 'wake', reply = 'awake now'}]
default = "?"
"""


def cli(c: Cluster, *args: str) -> Any:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "openfang.cli.main",
            "schedule",
            *args,
            "--data-dir",
            str(c.data_dir),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def schedule(c: Cluster, sid: str) -> dict[str, Any]:
    return next(s for s in cli(c, "list") if s["id"] == sid)


def test_scheduled_message_reaches_the_agent_and_its_reply_is_recorded(make_cluster: Any) -> None:
    """`schedule add --in 1s` and, a second later, the agent has answered; list shows the delivered run."""
    c = make_cluster(workers=1, extra=SCHEDULER).start()
    agent_id = c.ok("agent.spawn", {"manifest": AGENT})["agent_id"]
    sid = cli(c, "add", agent_id, "wake up", "--in", "1s")["id"]
    s = wait_for(lambda: (s := schedule(c, sid))["last_status"] and s, 20, "the schedule to fire")
    assert s["last_status"] == "delivered" and s["runs"] == 1 and s["next_run"] is None
    assert s["recent_runs"][0]["status"] == "delivered" and "awake now" in s["recent_runs"][0]["detail"]


def test_cron_schedule_fires_repeatedly_and_stops_when_removed(make_cluster: Any) -> None:
    """A seconds-field cron fires at each occurrence; after `schedule remove` nothing more is sent."""
    c = make_cluster(workers=1, extra=SCHEDULER).start()
    agent_id = c.ok("agent.spawn", {"manifest": AGENT})["agent_id"]
    sid = cli(c, "add", agent_id, "wake", "--cron", "* * * * * *")["id"]
    wait_for(lambda: schedule(c, sid)["runs"] >= 3, 20, "three runs")
    cli(c, "remove", sid)
    assert all(s["id"] != sid for s in cli(c, "list"))


def test_schedule_due_while_the_daemon_is_dead_fires_once_after_restart(make_cluster: Any) -> None:
    """kill -9 the daemon, let a run fall due, restart twice on the same data dir: it is claimed once only."""
    c = make_cluster(workers=1, extra=SCHEDULER).start()
    agent_id = c.ok("agent.spawn", {"manifest": AGENT})["agent_id"]
    sid = cli(c, "add", agent_id, "wake", "--in", "3s")["id"]
    c.signal(signal.SIGKILL)
    assert c.proc is not None and c.proc.wait(10) == -signal.SIGKILL
    c.assert_no_survivors()
    time.sleep(4)  # the run falls due while nothing runs
    assert schedule(c, sid)["runs"] == 0
    c.start()
    s = wait_for(lambda: (s := schedule(c, sid))["last_status"] and s, 20, "the missed run to fire")
    assert s["runs"] == 1 and s["last_status"] in ("delivered", "failed")  # the agent may not be back yet
    c.stop()
    c.start()
    time.sleep(2)  # a scheduler that fired twice would have done it by now
    runs = schedule(c, sid)["recent_runs"]
    assert len(runs) == 1 and runs[0]["status"] in ("delivered", "failed"), runs


def test_scheduler_signs_its_requests_when_the_cluster_requires_signatures(make_cluster: Any) -> None:
    """With [security.signing] require = true, a scheduled message is still delivered: the scheduler signs."""
    c = make_cluster(workers=1, extra=SCHEDULER)
    key = c.dir / "ops.key"
    key.write_text(os.urandom(32).hex())
    keys = f'keys = [{{id = "ops", alg = "hmac-sha256", file = "{key}"}}]\n'
    c.write_config(SCHEDULER + f"\n[security.signing]\nrequire = true\n{keys}")
    c.start()
    manifest = c.dir / "alarm.toml"
    manifest.write_text(AGENT)
    spawned = subprocess.run(
        [
            sys.executable,
            "-m",
            "openfang.cli.main",
            "agent",
            "spawn",
            str(manifest),
            "--config",
            str(c.config_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert spawned.returncode == 0, spawned.stdout + spawned.stderr  # the CLI signs with the config's key
    agent_id = json.loads(spawned.stdout)["agent_id"]
    sid = cli(c, "add", agent_id, "wake up", "--in", "1s")["id"]
    s = wait_for(lambda: (s := schedule(c, sid))["last_status"] and s, 20, "the schedule to fire")
    assert s["last_status"] == "delivered", s["recent_runs"]
