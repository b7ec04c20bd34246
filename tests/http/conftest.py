from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

from daemon_harness import ROOT, Cluster, wait_for

GREETER = (ROOT / "openfang" / "data" / "agents" / "greeter.toml").read_text()
CLOCK = (ROOT / "openfang" / "data" / "agents" / "clock.toml").read_text()


@pytest.fixture
def make_cluster() -> Iterator[type[Cluster]]:
    """Build clusters; every one is killed (with all its descendants) at the end of the test."""
    made: list[Cluster] = []

    def factory(**kw: object) -> Cluster:
        c = Cluster(**kw)  # type: ignore[arg-type]
        made.append(c)
        return c

    yield factory  # type: ignore[misc]
    for c in made:
        c.close()


def start_with_agents(c: Cluster, *manifests: str) -> list[str]:
    """Start ``c``, wait for its worker, spawn ``manifests``; their agent ids."""
    c.start()
    wait_for(lambda: not c.call("worker.ping", {"worker": "workers-0"}).is_error, what="worker connected")
    return [c.ok("agent.spawn", {"manifest": m})["agent_id"] for m in manifests]
