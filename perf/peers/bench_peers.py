"""The peers' benchmark entry for perf/run.py (``--peers``): CrewAI and LangGraph, alternating.

For each metric group (cold start, warm start, memory, routing, tool chain, venv) every installed peer
runs its script in its own venv (``perf/.peers/X/bin/python perf/peers/X_bench.py --json --metrics G``),
the systems taking turns and the first one alternating from group to group, so slow drift of a shared
machine does not favour one of them. When allowed, each script runs in a network namespace with no
interfaces (``unshare -n``): the figures are then proven to come from a run with no network at all.

A peer that is not installed is skipped (``python -m perf.peers.setup`` installs them); a group that
fails yields its metrics with value ``None`` and the error in ``notes``, so the table shows the gap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from perf.peers._driver import METRIC_GROUPS, OFFLINE_ENV
from perf.peers.setup import PEERS, SCRIPTS_DIR, offline_prefix, venv_python

TIMEOUT_S = 2400  # read by perf/run.py: CrewAI's routing and memory points take minutes
GROUP_TIMEOUT_S = 900.0

# What each group reports, so a failed group still shows up as named gaps in the table.
GROUP_METRICS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "cold_start": (("cold_start_ms", "ms", "lower"),),
    "warm_start": (("warm_start_ms", "ms", "lower"),),
    "memory": (
        ("idle_pss_mb", "MB", "lower"),
        ("idle_rss_mb", "MB", "lower"),
        ("agents_100_pss_mb", "MB", "lower"),
        ("agents_1000_pss_mb", "MB", "lower"),
        ("agents_10000_pss_mb", "MB", "lower"),
    ),
    "routing": (("routing_tasks_per_s", "tasks/s", "higher"),),
    "toolchain": (("toolchain_tasks_per_s", "tasks/s", "higher"),),
    "venv": (("venv_mb", "MB", "lower"),),
}


def installed() -> list[str]:
    """The peers whose venv exists, in a fixed order."""
    return [name for name in sorted(PEERS) if venv_python(name).exists()]


def _failed(system: str, group: str, why: str) -> list[dict[str, Any]]:
    return [
        {
            "name": n,
            "system": system,
            "value": None,
            "unit": u,
            "better": b,
            "target": None,
            "notes": f"failed: {why}",
        }
        for n, u, b in GROUP_METRICS[group]
    ]


def run_group(system: str, group: str, *, quick: bool, prefix: list[str]) -> list[dict[str, Any]]:
    """One peer, one metric group, in the peer's venv; its metric dicts (or named gaps on failure)."""
    cmd = [*prefix, str(venv_python(system)), str(SCRIPTS_DIR / f"{system}_bench.py"), "--json"]
    cmd += ["--metrics", group, *(["--quick"] if quick else [])]
    print(f"--- {system}: {group}", flush=True)
    try:
        # stderr (progress) goes straight to our terminal; stdout carries only the JSON.
        proc = subprocess.run(
            cmd, env={**os.environ, **OFFLINE_ENV}, stdout=subprocess.PIPE, text=True, timeout=GROUP_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return _failed(system, group, f"no result within {GROUP_TIMEOUT_S:.0f} s")
    if proc.returncode != 0:
        return _failed(system, group, f"exit status {proc.returncode}")
    try:
        metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return _failed(system, group, "no JSON on stdout")
    offline = "no network (netns)" if prefix else "telemetry off"
    for metric in metrics:
        metric["notes"] = f"{metric.get('notes', '')}; {offline}".lstrip("; ")
    return list(metrics)


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every metric group for every installed peer, alternating which peer goes first."""
    peers = installed()
    if not peers:
        root = Path(__file__).resolve().parents[1] / ".peers"
        raise RuntimeError(f"no peer venv under {root}: run `python -m perf.peers.setup` first")
    prefix = offline_prefix()
    out: list[dict[str, Any]] = []
    for i, group in enumerate(METRIC_GROUPS):
        for system in peers if i % 2 == 0 else list(reversed(peers)):
            out += run_group(system, group, quick=quick, prefix=prefix)
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
