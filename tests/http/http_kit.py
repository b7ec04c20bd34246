"""What the HTTP tests share besides fixtures: the shipped demo manifests and starting a cluster with agents.

A module of its own, not conftest: ``from conftest import ...`` resolves to whichever folder's conftest was
imported first when several test folders run in one session (tests/supervisor has one too).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

from daemon_harness import ROOT, Cluster, wait_for

GREETER = (ROOT / "openfang" / "data" / "agents" / "greeter.toml").read_text()
CLOCK = (ROOT / "openfang" / "data" / "agents" / "clock.toml").read_text()


def wait_face(c: Cluster, timeout: float = 60) -> None:
    """Wait until the http child serves (its ``http_listening`` line): it says ready once its port is bound
    and loads its web stack after that, so a request made at READY waits for the app (docs/interop.md)."""
    wait_for(
        lambda: any(e.get("event") == "http_listening" for e in c.log_events()),
        timeout=timeout,
        what="the HTTP face serving",
    )


def start_with_agents(c: Cluster, *manifests: str) -> list[str]:
    """Start ``c``, wait for its worker (and its HTTP face, if any), spawn ``manifests``; their agent ids."""
    c.start()
    wait_for(lambda: not c.call("worker.ping", {"worker": "workers-0"}).is_error, what="worker connected")
    if c.http_port:
        wait_face(c)
    return [c.ok("agent.spawn", {"manifest": m})["agent_id"] for m in manifests]
