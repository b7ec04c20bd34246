"""``openfang top`` against real daemons: its feed over ipc and over tcp+CURVE, and the screen in tmux."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import ROOT, Cluster, wait_for

from openfang.cli.top_data import Snapshot
from openfang.cli.top_feed import EventTail, Feed, Monitor, NoDaemon
from openfang.protocol import messages
from openfang.protocol.curve import CurveClient

pytestmark = pytest.mark.integration
GREETER = (ROOT / "openfang" / "data" / "agents" / "greeter.toml").read_text()
WORKERS = ("workers-0", "workers-1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _two_agents(ask: Callable[[str, dict[str, Any]], dict[str, Any]]) -> list[str]:
    """One greeter on each worker, once both workers answer; their ids, sorted as top sorts them."""

    def connected() -> bool:
        try:
            return all(ask("worker.ping", {"worker": w}) for w in WORKERS)
        except Exception:
            return False

    wait_for(connected, 60, "both workers connected")
    return sorted(ask("agent.spawn", {"manifest": GREETER, "worker": w})["agent_id"] for w in WORKERS)


def _hibernate_expectation(agent_id: str) -> str:
    """What the status line says after 'h': the daemon's unknown_type until agent.hibernate is catalogued."""
    if "agent.hibernate" in messages.CATALOGUE:
        return f"hibernated {agent_id}"
    return f"agent.hibernate {agent_id}: error unknown_type"


# -- the feed (what the view draws), without a terminal ----------------------------------------------------


def test_feed_samples_acts_and_tails_events_of_a_running_cluster(make_cluster: type[Cluster]) -> None:
    """Before the daemon: NoDaemon; then tree, workers, agents with msgs/s; actions reach the daemon."""
    c = make_cluster(workers=2)
    feed = Feed(c.endpoint, timeout=10, events=c.events_endpoint)
    with pytest.raises(NoDaemon, match=f"no daemon at {c.endpoint}"):
        feed.sample()
    c.start()
    events: list[dict[str, Any]] = []
    tail = EventTail(c.events_endpoint, on_event=events.append, poll_ms=50)
    tail.start()
    try:
        a0, a1 = _two_agents(lambda t, b: c.ok(t, b, timeout=30))
        wait_for(lambda: _with_agents(feed.sample(), 2), 30, "both agents listed")
        for _ in range(3):
            c.ok("agent.send", {"agent_id": a0, "text": "hi"}, timeout=30)
        snap = wait_for(lambda: _with_rate(feed.sample(), a0), 30, "a msgs/s figure for the busy agent")
        ids = [n.id for n in snap.nodes]
        assert ids[0] == "root" and {"control", "workers", *WORKERS} <= set(ids)
        assert [w.id for w in snap.workers] == list(WORKERS)
        assert all(w.agents == 1 and w.pid for w in snap.workers)
        agents = {a.agent_id: a for a in snap.agents}
        assert agents[a0].messages == 3 and agents[a0].worker == "workers-0"
        assert agents[a0].fuel_used and agents[a0].memory_bytes, "fuel and memory come from agent.list"
        assert snap.workers_connected == 2 and snap.state == "running"

        assert feed.act("suspend", a0) == f"suspended {a0} (state: suspended)"
        assert c.ok("agent.info", {"agent_id": a0})["state"] == "suspended"
        assert feed.act("resume", a0) == f"resumed {a0} (state: running)"
        assert _hibernate_expectation(a1) in feed.act("hibernate", a1)
        assert feed.act("kill", "nobody@workers-0").startswith("agent.kill nobody@workers-0: error not_found")
        assert feed.act("kill", a1) == f"killed {a1} (state: dead)"
        assert [a.agent_id for a in feed.sample().agents] == [a0]
        once = subprocess.run(
            [sys.executable, "-m", "openfang.cli.main", "top", "--once", "--endpoint", c.endpoint],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert once.returncode == 0, once.stderr
        assert once.stdout.startswith("test  running") and "2 workers connected  1 agents" in once.stdout
        assert _agent_line(once.stdout, a0).split()[:4] == [a0, "running", "idle", "workers-0"]
        wait_for(
            lambda: any(e.get("kind") == "agent.state" and e.get("state") == "suspended" for e in events),
            30,
            "the suspension on the event tail",
        )
    finally:
        tail.stop()
        feed.close()
    assert c.stop() == 0


def _tcp_cluster(make_cluster: type[Cluster]) -> tuple[Cluster, Path, str, int]:
    """A started two-worker cluster whose control endpoint is tcp+CURVE (client key "ops") and whose events
    are bound on the wildcard host; (cluster, keys dir, control endpoint, events port)."""
    from openfang.protocol.curve import generate_keys

    c = make_cluster(workers=2)
    keys = c.dir / "keys"
    generate_keys(keys, "ops")
    port, events_port = _free_port(), _free_port()
    c.config_path.write_text(
        c.config_path.read_text().replace(
            "[control]\n",
            f'[control]\nendpoint = "tcp://127.0.0.1:{port}"\nevents = "tcp://0.0.0.0:{events_port}"\n'
            f'keys_dir = "{keys}"\n',
        )
    )
    c.start()
    return c, keys, f"tcp://127.0.0.1:{port}", events_port


def _with_agents(snap: Snapshot, n: int) -> Snapshot | None:
    return snap if len(snap.agents) == n else None


def _with_rate(snap: Snapshot, agent_id: str) -> Snapshot | None:
    row = next((a for a in snap.agents if a.agent_id == agent_id), None)
    return snap if row is not None and row.msgs_per_s is not None else None


def test_monitor_reports_the_outage_once_and_reconnects(make_cluster: type[Cluster]) -> None:
    """The monitor says 'no daemon at' once while none runs, then samples as soon as the daemon is up."""
    c = make_cluster(workers=1)
    snaps: list[Snapshot] = []
    status: list[str] = []
    down: list[str | None] = []
    monitor = Monitor(
        Feed(c.endpoint, timeout=10),
        on_snapshot=snaps.append,
        on_status=status.append,
        on_down=down.append,
        interval=0.2,
    )
    monitor.start()
    try:
        wait_for(lambda: down, 30, "the outage reported")
        time.sleep(1.0)  # several failed samples: still one report
        assert down == [f"no daemon at {c.endpoint}"]
        assert status == [f"no daemon at {c.endpoint}; retrying every 0.2s"]
        c.start()
        wait_for(lambda: snaps and snaps[-1].state == "running", 60, "a sample of the running daemon")
        assert down == [f"no daemon at {c.endpoint}", None]
        assert status[-1] == f"connected to {c.endpoint}"
    finally:
        monitor.stop()
    assert c.stop() == 0


def test_feed_and_once_work_over_tcp_with_curve(make_cluster: type[Cluster]) -> None:
    """Over tcp+CURVE the feed samples and acts, the tail finds the wildcard-bound events, --once prints."""
    c, keys, endpoint, events_port = _tcp_cluster(make_cluster)
    feed = Feed(endpoint, curve=CurveClient(keys, name="ops"), timeout=10)
    events: list[dict[str, Any]] = []
    tail: EventTail | None = None
    try:
        a0, _a1 = _two_agents(lambda t, b: feed._ask(t, b))
        snap = wait_for(lambda: _with_agents(feed.sample(), 2), 30, "both agents over tcp")
        assert feed.events_endpoint == f"tcp://127.0.0.1:{events_port}", "learned from status, host fixed"
        assert [w.agents for w in snap.workers] == [1, 1]
        tail = EventTail(feed.events_endpoint, curve=feed.curve, on_event=events.append, poll_ms=50)
        tail.start()
        time.sleep(0.5)  # PUB/SUB joins late
        assert feed.act("suspend", a0) == f"suspended {a0} (state: suspended)"
        wait_for(lambda: any(e.get("state") == "suspended" for e in events), 30, "the event over CURVE")
        out = subprocess.run(
            [sys.executable, "-m", "openfang.cli.main", "top", "--once", "--json", "--endpoint", endpoint,
             "--keys-dir", str(keys), "--key-name", "ops", "--interval", "0.2"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        once = json.loads(out.stdout)
        states = {a["agent_id"]: a["state"] for a in once["agents"]}
        assert states[a0] == "suspended" and len(states) == 2
        assert all(w["cpu_percent"] is not None for w in once["workers"]), "loopback: CPU % measured"
    finally:
        if tail is not None:
            tail.stop()
        feed.close()
    assert c.stop() == 0


# -- the screen, in tmux -------------------------------------------------------------------------------------


class Tmux:
    """A private tmux server (its own socket) with one 160x50 session running a command."""

    def __init__(self, command: str, env: dict[str, str]) -> None:
        self.name = f"oftop-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.env = env
        self._tmux("new-session", "-d", "-x", "160", "-y", "50", "-s", "top", command)

    def _tmux(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-L", self.name, *args], capture_output=True, text=True, env=self.env, timeout=30
        )
        if out.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "top")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "top", *keys)

    def literal(self, text: str) -> None:
        self._tmux("send-keys", "-t", "top", "-l", text)

    def wait(self, pred: Callable[[str], bool], what: str, timeout: float = 60.0) -> str:
        """Poll the pane until ``pred(screen)``; on timeout fail showing the last screen."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if pred(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; the screen:\n{screen}")

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.name, "kill-server"], capture_output=True, env=self.env, timeout=30
        )


@pytest.fixture
def tmux_available() -> Iterator[None]:
    # Under CI a missing tool fails the test: `make test` installs both, so a skip would hide a broken setup.
    if shutil.which("tmux") is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is missing: `make test` installs it (TEST_TOOLS); CI must not skip this test")
        pytest.skip("tmux is not installed (apt-get install tmux, or make test-deps)")
    if importlib.util.find_spec("textual") is None:
        if os.environ.get("CI"):
            pytest.fail("Textual is missing: `make install` installs the 'tui' extra; CI must not skip this")
        pytest.skip("the 'tui' extra (Textual) is not installed")
    yield


def _line(screen: str, needle: str) -> str:
    return next((line for line in screen.splitlines() if needle in line), "")


def _agent_line(screen: str, agent_id: str) -> str:
    """The agents table's row of ``agent_id`` (a row starts with the id; event lines start with a time)."""
    return next((line for line in screen.splitlines() if line.strip().startswith(agent_id)), "")


def test_top_in_tmux_shows_the_system_and_acts_on_agents(
    make_cluster: type[Cluster], tmux_available: None
) -> None:
    """In a real terminal: 'no daemon at' until the daemon starts; then the tree, workers and agents; s
    suspends (the daemon agrees), h answers in the status line, / filters, K asks (n cancels, y kills), q
    exits with 0."""
    c = make_cluster(workers=2)
    # COLUMNS/LINES (pytest may set them) would override the pane's size in Textual.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    top = f"{sys.executable} -m openfang.cli.main top --config {c.config_path} --interval 0.5"
    term = Tmux(f"{top}; echo top exited $?; sleep 300", env)
    try:
        term.wait(lambda s: f"no daemon at {c.endpoint}" in s, "the unreachable daemon reported")
        c.start()
        a0, a1 = _two_agents(lambda t, b: c.ok(t, b, timeout=30))
        screen = term.wait(
            lambda s: "running" in _agent_line(s, a0) and "running" in _agent_line(s, a1),
            "both agents listed as running",
        )
        assert "workers-0" in _agent_line(screen, a0) and "workers-1" in _agent_line(screen, a1)
        assert _line(screen, "test  running").strip(), "the header names the system and its state"
        for node in ("root", "control", "workers-0", "workers-1"):
            assert _line(screen, node), f"{node} is in the tree"
        assert "WORKER" in screen and "CPU%" in screen and "MSG/S" in screen

        term.keys("s")  # the cursor starts on the first agent
        screen = term.wait(lambda s: "suspended" in _agent_line(s, a0), f"{a0} shown suspended")
        assert c.ok("agent.info", {"agent_id": a0})["state"] == "suspended", "the daemon agrees"
        assert "running" in _agent_line(screen, a1), "the other agent is untouched"
        term.wait(lambda s: f"suspended {a0} (state: suspended)" in s, "the status line")
        term.wait(lambda s: "agent.state" in s and "state=suspended" in s, "the event in the tail")

        term.keys("j", "h")
        term.wait(lambda s: _hibernate_expectation(a1) in s, "the hibernate answer in the status line")
        assert _agent_line(term.screen(), a1), "top is still up after the error"

        term.keys("/")
        term.wait(lambda s: "enter keeps the filter" in s, "the filter box open")
        term.literal("state:susp")
        term.keys("Enter")
        screen = term.wait(lambda s: "agents  1 of 2" in s, "the filter applied")
        assert _agent_line(screen, a0) and not _agent_line(screen, a1)

        term.keys("K")
        term.wait(lambda s: f"Kill agent {a0}?" in s, "the kill confirmation")
        term.keys("r", "n")  # r is not for the confirmation: ignored there
        screen = term.wait(lambda s: f"kill {a0}: cancelled" in s, "the kill cancelled")
        assert f"resumed {a0}" not in screen
        assert c.ok("agent.info", {"agent_id": a0})["state"] == "suspended", "neither resumed nor killed"
        term.keys("K")
        term.wait(lambda s: f"Kill agent {a0}?" in s, "the kill confirmation again")
        term.keys("y")
        term.wait(lambda s: "agents  0 of 1" in s, "the killed agent gone from the list")
        wait_for(lambda: c.call("agent.info", {"agent_id": a0}).is_error, 30, "the daemon forgot it")
        assert c.call("agent.info", {"agent_id": a0}).body["code"] == "not_found"
        hibernated = "agent.hibernate" in messages.CATALOGUE  # 'h' above hibernated it
        assert c.ok("agent.info", {"agent_id": a1})["state"] == ("hibernated" if hibernated else "running")

        term.keys("Escape")
        term.wait(lambda s: "agents  1 of 1" in s and bool(_agent_line(s, a1)), "the filter cleared")
        term.keys("q")
        term.wait(lambda s: "top exited 0" in s, "top to exit with status 0 on q")
    finally:
        term.close()
    assert c.stop() == 0


def test_top_in_tmux_over_tcp_with_curve(make_cluster: type[Cluster], tmux_available: None) -> None:
    """Over tcp+CURVE (--endpoint, --keys-dir): agents show, s suspends, the event tail has it, q quits."""
    c, keys, endpoint, _ = _tcp_cluster(make_cluster)
    feed = Feed(endpoint, curve=CurveClient(keys, name="ops"), timeout=10)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    top = (
        f"{sys.executable} -m openfang.cli.main top --endpoint {endpoint} --keys-dir {keys} --key-name ops "
        "--interval 0.5"
    )
    term = Tmux(f"{top}; echo top exited $?; sleep 300", env)
    try:
        a0, a1 = _two_agents(lambda t, b: feed._ask(t, b))
        term.wait(lambda s: bool(_agent_line(s, a0) and _agent_line(s, a1)), "both agents listed over tcp")
        term.keys("s")
        term.wait(lambda s: "suspended" in _agent_line(s, a0), f"{a0} shown suspended")
        assert feed._ask("agent.info", {"agent_id": a0})["state"] == "suspended", "the daemon agrees"
        term.wait(lambda s: "agent.state" in s and "state=suspended" in s, "the event tail over CURVE")
        term.keys("q")
        term.wait(lambda s: "top exited 0" in s, "top to exit with status 0 on q")
    finally:
        term.close()
        feed.close()
    assert c.stop() == 0


# A thread-safety check of the callbacks' contract: the feed's threads never call back after stop().
def test_monitor_stops_promptly_and_calls_back_no_more(make_cluster: type[Cluster]) -> None:
    """After stop() returns, the monitor thread has ended and makes no further callbacks."""
    c = make_cluster(workers=1).start()
    calls: list[float] = []
    lock = threading.Lock()

    def record(_: object) -> None:
        with lock:
            calls.append(time.monotonic())

    monitor = Monitor(Feed(c.endpoint, timeout=10), on_snapshot=record, on_status=record, interval=0.1)
    monitor.start()
    wait_for(lambda: len(calls) >= 3, 30, "a few samples")
    monitor.stop(wait=15)
    assert not monitor._thread.is_alive()
    with lock:
        seen = len(calls)
    time.sleep(0.5)
    assert len(calls) == seen
    assert c.stop() == 0


def test_top_signs_its_requests_when_the_cluster_requires_it(make_cluster: type[Cluster]) -> None:
    """With [security.signing] require = true, top is refused unsigned and served with --sign-key."""
    c = make_cluster(workers=1)
    key = c.dir / "ops.key"
    key.write_text(os.urandom(32).hex())
    ring = f'keys = [{{id = "ops", alg = "hmac-sha256", file = "{key}"}}]\n'
    c.write_config(f"\n[security.signing]\nrequire = true\n{ring}")
    c.start()
    top = [sys.executable, "-m", "openfang.cli.main", "top", "--once", "--endpoint", c.endpoint]
    unsigned = subprocess.run(top, capture_output=True, text=True, timeout=60)
    assert unsigned.returncode == 1 and "unsigned" in unsigned.stderr, unsigned.stderr
    signed = subprocess.run([*top, "--sign-key", str(key)], capture_output=True, text=True, timeout=60)
    assert signed.returncode == 0 and signed.stdout.startswith("test  running"), signed.stderr
    by_config = subprocess.run(
        [sys.executable, "-m", "openfang.cli.main", "top", "--once", "--config", str(c.config_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert by_config.returncode == 0 and "workers-0" in by_config.stdout, by_config.stderr
    assert c.stop() == 0
