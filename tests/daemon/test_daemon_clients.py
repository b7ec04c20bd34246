"""Clients of a real daemon: the ctl, the Node.js client written from PROTOCOL.md, CURVE over tcp, agents."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_harness import ROOT, Cluster, wait_for

pytestmark = pytest.mark.integration
AGENTS = ROOT / "openfang" / "data" / "agents"


def _ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openfang.cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ctl_status_tree_and_ping_in_human_and_json_form(make_cluster: type[Cluster]) -> None:
    """openfang status/tree/ping answer from the running daemon, with --json as well as tables."""
    c = make_cluster(workers=2).start()
    status = json.loads(_ctl("status", "--endpoint", c.endpoint, "--json").stdout)
    assert status["state"] == "running" and status["workers"] == 2
    tree = _ctl("--endpoint", c.endpoint, "tree")
    assert tree.returncode == 0
    assert "workers-0" in tree.stdout and "control" in tree.stdout and "RSS" in tree.stdout
    pong = json.loads(
        _ctl("ping", "--worker", "workers-1", "--json", env={"OPENFANG_ENDPOINT": c.endpoint}).stdout
    )
    assert pong["worker"] == "workers-1"
    missing = _ctl("ping", "--worker", "nope", "--endpoint", c.endpoint)
    assert missing.returncode == 1 and "not_found" in missing.stderr
    assert c.stop() == 0


def test_ctl_reports_an_unreachable_daemon_with_exit_3(tmp_path: Path) -> None:
    """No daemon behind the endpoint: a clear message and exit status 3, not a hang."""
    out = _ctl("status", "--endpoint", f"ipc://{tmp_path}/none.sock", "--timeout", "0.5")
    assert out.returncode == 3 and f"no daemon at ipc://{tmp_path}/none.sock" in out.stderr


def test_agents_spawn_talk_and_come_back_after_their_worker_dies(make_cluster: type[Cluster]) -> None:
    """Agents spawn on the least-loaded worker, answer through the gateway, and a permanent one whose worker
    is killed answers again with the same id (durable agents, docs/agents.md)."""
    c = make_cluster(workers=2).start()
    wait_for(
        lambda: all(not c.call("worker.ping", {"worker": w}).is_error for w in ("workers-0", "workers-1")),
        what="workers connected",
    )
    spawned = [c.ok("agent.spawn", {"manifest": (AGENTS / "greeter.toml").read_text()}) for _ in range(2)]
    assert {s["worker"] for s in spawned} == {"workers-0", "workers-1"}, "spawns spread over the workers"
    first = spawned[0]["agent_id"]
    reply = c.ok("agent.send", {"agent_id": first, "text": "who are you?"})
    assert "WebAssembly agent" in reply["reply"]
    victim = next(n for n in c.node("workers")["children"] if n["id"] == spawned[0]["worker"])
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(lambda: c.node("workers", victim["id"])["pid"] not in (None, victim["pid"]), what="restart")
    back = wait_for(
        lambda: not (r := c.call("agent.send", {"agent_id": first, "text": "who are you?"})).is_error and r,
        what="the agent back",
    )
    assert back.body["agent_id"] == first and "WebAssembly agent" in back.body["reply"]
    other = spawned[1]["agent_id"]
    assert "WebAssembly" in c.ok("agent.send", {"agent_id": other, "text": "who are you?"})["reply"]
    c.remember_pids()
    assert c.stop() == 0
    c.assert_no_survivors()


def test_node_client_written_from_protocol_md_talks_to_the_daemon(make_cluster: type[Cluster]) -> None:
    """The Node.js example client gets status and tree from a real daemon, and a typed error for junk."""
    client = ROOT / "examples" / "node-client" / "client.mjs"
    assert (client.parent / "node_modules").is_dir(), "make install runs npm install in examples/node-client"
    c = make_cluster(workers=1).start()
    status = subprocess.run(
        ["node", str(client), "--endpoint", c.endpoint, "status"], capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "running"
    tree = subprocess.run(
        ["node", str(client), "--endpoint", c.endpoint, "tree"], capture_output=True, text=True, timeout=60
    )
    assert "workers-0" in tree.stdout
    junk = subprocess.run(
        ["node", str(client), "--endpoint", c.endpoint, "raw", "c1ff"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert junk.returncode == 2 and "bad_request" in junk.stdout + junk.stderr
    assert c.stop() == 0


def test_tcp_control_endpoint_requires_curve_and_refuses_strangers(make_cluster: type[Cluster]) -> None:
    """Over tcp:// an authorized CURVE client is answered; one without keys or with unknown keys is not."""
    from openfang.protocol.client import Client
    from openfang.protocol.curve import CurveClient, generate_keys
    from openfang.protocol.errors import Timeout

    c = make_cluster(workers=1)
    keys, strangers = c.dir / "keys", c.dir / "strangers"
    generate_keys(keys, "alice")
    generate_keys(strangers, "mallory")
    port, events = _free_port(), _free_port()
    text = c.config_path.read_text().replace(
        "[control]\n",
        f'[control]\nendpoint = "tcp://127.0.0.1:{port}"\nevents = "tcp://127.0.0.1:{events}"\n'
        f'keys_dir = "{keys}"\n',
    )
    c.config_path.write_text(text)
    c.start()
    endpoint = f"tcp://127.0.0.1:{port}"
    with Client(endpoint, curve=CurveClient(keys, name="alice"), timeout=10) as alice:
        assert alice.request("status")["state"] == "running"
    with Client(endpoint, timeout=1.5) as anonymous, pytest.raises(Timeout):
        anonymous.request("ping")
    with (
        Client(endpoint, curve=CurveClient(strangers, name="mallory"), timeout=1.5) as mallory,
        pytest.raises(Timeout),
    ):
        mallory.request("ping")
    out = _ctl("status", "--endpoint", endpoint, "--keys-dir", str(keys), "--key-name", "alice", "--json")
    assert json.loads(out.stdout)["state"] == "running", out.stderr
    assert c.stop() == 0


def test_make_run_demo_spawns_agents_and_holds_a_conversation(tmp_path: Path) -> None:
    """python -m openfang.demo --once (what make run runs) brings the tree up, talks to agents, stops."""
    import tempfile

    data = tempfile.mkdtemp(prefix="ofdemo-", dir="/tmp")
    out = subprocess.run(
        [sys.executable, "-m", "openfang.demo", "--data-dir", data, "--once"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "greeter -> you: I am greeter" in out.stdout
    assert "The tool says:" in out.stdout
    assert "supervisor stopped (exit status 0)" in out.stdout
    assert Path(data, "supervisor.log").stat().st_size > 0


def test_ctl_agent_lifecycle_verbs_spawn_suspend_resume_info_kill(make_cluster: type[Cluster]) -> None:
    """openfang agent spawn/send/suspend/resume/info/kill/list drive one agent through its lifecycle."""
    c = make_cluster(workers=1).start()
    ep = ["--endpoint", c.endpoint, "--json"]
    spawned = json.loads(_ctl("agent", "spawn", str(AGENTS / "greeter.toml"), *ep).stdout)
    aid = spawned["agent_id"]
    assert "WebAssembly" in _ctl("agent", "send", aid, "who are you?", "--endpoint", c.endpoint).stdout
    assert _ctl("agent", "suspend", aid, *ep).returncode == 0
    assert json.loads(_ctl("agent", "info", aid, *ep).stdout)["state"] == "suspended"
    assert _ctl("agent", "resume", aid, *ep).returncode == 0
    info = json.loads(_ctl("agent", "info", aid, *ep).stdout)
    assert info["state"] == "running" and info["messages"] == 1 and info["worker"] == "workers-0"
    listed = json.loads(_ctl("agent", "list", *ep).stdout)["agents"]
    assert [a["agent_id"] for a in listed] == [aid]
    assert _ctl("agent", "kill", aid, *ep).returncode == 0
    gone = _ctl("agent", "info", aid, *ep)
    assert gone.returncode == 1 and "not_found" in gone.stdout + gone.stderr
    assert c.stop() == 0


def test_ctl_events_follows_the_stream_and_keys_generate_writes_keys(make_cluster: type[Cluster]) -> None:
    """openfang events prints lifecycle events as they happen; keys generate makes a usable keys dir."""
    c = make_cluster(workers=1).start()
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openfang.cli.main",
            "events",
            "--endpoint",
            c.endpoint,
            "--events-endpoint",
            c.events_endpoint,
            "--kind",
            "child.",
            "--count",
            "2",
            "--json",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # The subscription must reach the publisher before the events happen, and a loaded machine may
        # take seconds to start the client: kill the worker again until the follower has its two events.
        deadline = time.monotonic() + 60
        time.sleep(1.0)
        while follower.poll() is None and time.monotonic() < deadline:
            node = c.node("workers", "workers-0")
            if node["pid"] and node["state"] == "running":
                os.kill(node["pid"], signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                follower.wait(timeout=5)
        out, _ = follower.communicate(timeout=5)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    kinds = [json.loads(line)["kind"] for line in out.splitlines()]
    assert len(kinds) == 2 and all(k.startswith("child.") for k in kinds), kinds
    keys = c.dir / "newkeys"
    made = json.loads(_ctl("keys", "generate", "--out", str(keys), "--name", "ops", "--json").stdout)
    assert Path(made["client_secret"]).stat().st_mode & 0o077 == 0
    assert (keys / "authorized" / "ops.key").exists()
    assert c.stop() == 0
