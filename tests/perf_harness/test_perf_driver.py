"""The peers' measuring driver, run against a plain-Python reference adapter (no framework needed)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # perf/ is a repo folder, not installed

from perf import workloads as wl
from perf.peers import _driver

REPO = Path(__file__).resolve().parents[2]

# The workloads done directly in Python: what a framework adapter must be equivalent to. ``WRONG`` makes it
# answer like a buggy framework would (a wrong route, a skipped tool call).
REFERENCE = """
import sys
sys.path.insert(0, {repo!r})
from perf import workloads as wl
from perf.peers import _driver

WRONG = {wrong!r}


class Agent:
    def __init__(self, route):
        self.route = route


class ReferenceAdapter:
    system = "crewai"
    packages = ("pytest",)

    def build_agent(self, index):
        return Agent(wl.ROUTES[index % len(wl.ROUTES)])

    def ask(self, agent, text):
        return wl.agent_reply(agent.route, text)

    def build_router(self):
        def route(text):
            chosen = "general" if WRONG else wl.classify(text)
            return wl.agent_reply(chosen, text)
        return route

    def build_toolchain(self):
        def run(task):
            observations = []
            while True:
                action, arg = wl.toolchain_step(task, observations)
                if action == "final":
                    return arg
                observations.append(wl.TOOL_FUNCTIONS[action](arg) if not WRONG else "0")
        return run


if __name__ == "__main__":
    sys.exit(_driver.main(ReferenceAdapter, __file__))
"""


def _script(tmp_path: Path, *, wrong: bool = False) -> Path:
    path = tmp_path / "reference_bench.py"
    path.write_text(textwrap.dedent(REFERENCE.format(repo=str(REPO), wrong=wrong)))
    return path


def _run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.integration
def test_driver_measures_every_group_with_checked_replies(tmp_path: Path) -> None:
    """--json --quick yields each metric once, with units, direction and the adapter's package versions."""
    proc = _run(_script(tmp_path), "--json", "--quick")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    by_name = {m["name"]: m for m in metrics}
    assert set(by_name) == {
        "cold_start_ms",
        "warm_start_ms",
        "idle_pss_mb",
        "idle_rss_mb",
        "agents_100_pss_mb",
        "routing_tasks_per_s",
        "toolchain_tasks_per_s",
        "venv_mb",
    }
    assert all(m["system"] == "crewai" and m["versions"]["pytest"] for m in metrics)
    assert by_name["routing_tasks_per_s"]["better"] == "higher"
    assert by_name["cold_start_ms"]["p99"] >= by_name["cold_start_ms"]["p50"] > 0
    assert 0 < by_name["idle_pss_mb"]["value"] <= by_name["idle_rss_mb"]["value"]
    assert f"{wl.ROUTING_MESSAGES_QUICK} tasks" in by_name["routing_tasks_per_s"]["notes"]


@pytest.mark.integration
def test_driver_fails_a_system_that_routes_wrongly(tmp_path: Path) -> None:
    """A wrong answer stops the measurement with an error naming expected and actual replies."""
    proc = _run(_script(tmp_path, wrong=True), "--json", "--quick", "--metrics", "routing")
    assert proc.returncode != 0
    assert "routing_tasks_per_s warm-up: expected" in proc.stderr


@pytest.mark.integration
def test_driver_cold_mode_prints_exactly_the_first_agents_reply(tmp_path: Path) -> None:
    """--cold prints one line: the billing agent's reply to the first routing message."""
    proc = _run(_script(tmp_path), "--cold")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == wl.agent_reply("billing", wl.routing_messages(1)[0]) + "\n"


@pytest.mark.integration
def test_driver_hold_mode_waits_until_stdin_closes(tmp_path: Path) -> None:
    """--hold N reports READY with the build time, then idles until the parent closes its stdin."""
    proc = subprocess.Popen(
        [sys.executable, str(_script(tmp_path)), "--hold", "50"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        word, seconds = proc.stdout.readline().split()
        assert word == "READY" and float(seconds) >= 0
        assert proc.poll() is None
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_driver_offline_env_turns_off_every_known_telemetry_switch() -> None:
    """The peers run with CrewAI, OpenTelemetry and LangSmith telemetry/tracing switched off."""
    env = _driver.OFFLINE_ENV
    assert env["CREWAI_DISABLE_TELEMETRY"] == "true"
    assert env["OTEL_SDK_DISABLED"] == "true"
    assert env["LANGCHAIN_TRACING_V2"] == "false"
    assert env["CREWAI_TRACING_ENABLED"] == "false"
