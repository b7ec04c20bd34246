"""The measuring half of a peer's benchmark script, shared by ``crewai_bench.py`` and ``langgraph_bench.py``.

A peer script defines an :class:`Adapter` (how to build an agent, a router system and a tool-chain system
with that framework's own primitives) and calls :func:`main`. This module then measures the same metrics,
the same way, for every peer; it runs inside the peer's venv, so it imports only the standard library and
``perf.workloads``.

Command line of a peer script::

    X_bench.py --json [--metrics NAME ...] [--quick]   measure; print one JSON list of metric dicts
    X_bench.py --cold                                  build one agent, answer one message, print it, exit
    X_bench.py --hold N                                build N agents, answer once, print READY, wait on stdin

Progress goes to stderr; stdout carries only the results (``--json``) or the reply (``--cold``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from perf import workloads as wl

# Every switch we know of that keeps these frameworks from phoning home. The benchmark must run offline;
# perf/peers/setup.py proves it by running a cold start in a network namespace with no interfaces.
OFFLINE_ENV: dict[str, str] = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "CREWAI_DISABLE_TRACKING": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "OTEL_SDK_DISABLED": "true",
    "LANGCHAIN_TRACING_V2": "false",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING": "false",
    "ANONYMIZED_TELEMETRY": "false",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "PYTHONWARNINGS": "ignore",
}

METRIC_GROUPS = ("cold_start", "warm_start", "memory", "routing", "toolchain", "venv")
AGENT_COUNTS = (1, 100, 1_000, 10_000)
# A memory point whose build would take longer than this is reported as not measured (with the projection).
MEMORY_BUILD_BUDGET_S = 150.0
THROUGHPUT_BUDGET_S = 90.0


def apply_offline_env() -> None:
    """Set the telemetry-off switches in this process (before the framework is imported)."""
    os.environ.update(OFFLINE_ENV)


class Adapter(Protocol):
    """One framework's way to run the shared workloads with its own primitives."""

    system: str
    packages: tuple[str, ...]

    def build_agent(self, index: int) -> Any:
        """A new agent for route ``ROUTES[index % 4]``, with its own fake LLM, ready to answer."""

    def ask(self, agent: Any, text: str) -> str:
        """``agent``'s reply to ``text``."""

    def build_router(self) -> Callable[[str], str]:
        """A routing system (router + 4 agents); calling it with a message returns the agent's reply."""

    def build_toolchain(self) -> Callable[[str], str]:
        """A tool-chain system; calling it with a task returns the final answer after 4 LLM + 3 tool calls."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _metric(
    adapter: Adapter, name: str, value: float | None, unit: str, better: str, **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "system": adapter.system,
        "value": value,
        "unit": unit,
        "better": better,
        "target": None,
        **extra,
    }


def _check(got: str, want: str, what: str) -> None:
    if got.strip() != want:
        raise RuntimeError(f"{what}: expected {want!r}, got {got!r}")


def _first_agent_answer(adapter: Adapter, index: int = 0) -> tuple[Any, str]:
    agent = adapter.build_agent(index)
    route = wl.ROUTES[index % len(wl.ROUTES)]
    text = wl.routing_messages(1)[0]
    reply = adapter.ask(agent, text)
    _check(reply, wl.agent_reply(route, text), f"agent {index}")
    return agent, reply


def _child_cmd(script: str, *args: str) -> list[str]:
    return [sys.executable, script, *args]


def measure_cold_start(adapter: Adapter, script: str, reps: int) -> list[dict[str, Any]]:
    """Process exec -> the first agent's reply read by the parent, ``reps`` times after one warm-up."""
    samples: list[float] = []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        proc = subprocess.Popen(_child_cmd(script, "--cold"), stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - t0
        proc.wait(timeout=60)
        _check(line, wl.agent_reply(wl.ROUTES[0], wl.routing_messages(1)[0]), "cold start reply")
        if i > 0:  # the first run writes .pyc files; every system is measured with warm bytecode caches
            samples.append(elapsed * 1000)
    s = wl.summarize(samples)
    _log(f"[{adapter.system}] cold start p50 {s['p50']:.0f} ms over {reps} runs")
    return [
        _metric(
            adapter,
            "cold_start_ms",
            s["p50"],
            "ms",
            "lower",
            p50=s["p50"],
            p99=s["p99"],
            notes=f"{reps} runs after 1 warm-up; python exec -> reply line",
        )
    ]


def measure_warm_start(adapter: Adapter, reps: int) -> list[dict[str, Any]]:
    """In a running process: build one more agent and have it answer, ``reps`` times."""
    keep = [_first_agent_answer(adapter, 0)[0]]
    samples: list[float] = []
    msg = wl.routing_messages(1)[0]
    for i in range(1, reps + 1):
        t0 = time.perf_counter()
        agent = adapter.build_agent(i)
        reply = adapter.ask(agent, msg)
        samples.append((time.perf_counter() - t0) * 1000)
        _check(reply, wl.agent_reply(wl.ROUTES[i % len(wl.ROUTES)], msg), f"warm agent {i}")
        keep.append(agent)  # agents stay alive, as in a running system
    s = wl.summarize(samples)
    _log(f"[{adapter.system}] warm start p50 {s['p50']:.2f} ms p99 {s['p99']:.2f} ms")
    return [
        _metric(
            adapter,
            "warm_start_ms",
            s["p50"],
            "ms",
            "lower",
            p50=s["p50"],
            p99=s["p99"],
            notes=f"{reps} agents built and answered in a running process",
        )
    ]


def _hold(script: str, count: int) -> tuple[float, int, int]:
    """Start a ``--hold count`` child; return (build seconds, PSS KiB, RSS KiB) of its process tree."""
    proc = subprocess.Popen(
        _child_cmd(script, "--hold", str(count)), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = proc.stdout.readline().split()
        if not line or line[0] != "READY":
            raise RuntimeError(f"--hold {count} child did not get ready (exit {proc.wait(timeout=30)})")
        time.sleep(0.5)  # let allocator and lazy threads settle before reading memory
        pss, rss = wl.memory_kb(wl.process_tree(proc.pid))
        return float(line[1]), pss, rss
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure_memory(adapter: Adapter, script: str, counts: tuple[int, ...]) -> list[dict[str, Any]]:
    """PSS and RSS of the whole system (all its processes) holding N idle agents, one fresh process per N."""
    out: list[dict[str, Any]] = []
    per_agent_s = 0.0
    for count in counts:
        name = "idle_pss_mb" if count == 1 else f"agents_{count}_pss_mb"
        projected = per_agent_s * count
        if projected > MEMORY_BUILD_BUDGET_S:
            why = (
                f"not measured: building {count} agents would take ~{projected:.0f} s (budget "
                f"{MEMORY_BUILD_BUDGET_S:.0f} s)"
            )
            _log(f"[{adapter.system}] {name}: {why}")
            out.append(_metric(adapter, name, None, "MB", "lower", notes=why))
            continue
        build_s, pss, rss = _hold(script, count)
        if count > 1:  # the 1-agent build is mostly first-call warm-up: it says nothing about the rate
            per_agent_s = max(per_agent_s, build_s / count)
        _log(
            f"[{adapter.system}] {count} agents: PSS {pss / 1024:.1f} MB, RSS {rss / 1024:.1f} MB, "
            f"built in {build_s:.2f} s"
        )
        notes = f"{count} agent(s) built in {build_s:.2f} s; RSS {rss / 1024:.1f} MB"
        out.append(_metric(adapter, name, pss / 1024, "MB", "lower", rss_mb=rss / 1024, notes=notes))
        if count == 1:
            out.append(_metric(adapter, "idle_rss_mb", rss / 1024, "MB", "lower", notes="1 agent"))
    return out


def _throughput(
    adapter: Adapter,
    name: str,
    run: Callable[[str], str],
    items: list[str],
    expected: Callable[[str], str],
    unit_note: str,
) -> dict[str, Any]:
    for item in items[:5]:  # warm-up: first calls build caches in every framework
        _check(run(item), expected(item), f"{name} warm-up")
    done = 0
    t0 = time.perf_counter()
    for item in items:
        _check(run(item), expected(item), name)
        done += 1
        if time.perf_counter() - t0 > THROUGHPUT_BUDGET_S:
            break
    elapsed = time.perf_counter() - t0
    rate = done / elapsed
    _log(f"[{adapter.system}] {name}: {rate:.1f} tasks/s ({done} tasks in {elapsed:.1f} s)")
    cut = "" if done == len(items) else f" (stopped at the {THROUGHPUT_BUDGET_S:.0f} s budget)"
    return _metric(
        adapter,
        name,
        rate,
        "tasks/s",
        "higher",
        notes=f"{done} tasks, one client, sequential; {unit_note}{cut}",
    )


def measure_routing(adapter: Adapter, count: int) -> list[dict[str, Any]]:
    """Tasks/s of router-classifies-then-agent-answers over ``count`` messages, every reply checked."""
    router = adapter.build_router()
    msgs = wl.routing_messages(count)
    return [
        _throughput(
            adapter,
            "routing_tasks_per_s",
            router,
            msgs,
            lambda m: wl.agent_reply(wl.classify(m), m),
            "2 LLM calls per task",
        )
    ]


def measure_toolchain(adapter: Adapter, count: int) -> list[dict[str, Any]]:
    """Tasks/s of the 4-LLM-call, 3-tool-call chain over ``count`` tasks, every answer checked."""
    chain = adapter.build_toolchain()
    return [
        _throughput(
            adapter,
            "toolchain_tasks_per_s",
            chain,
            wl.toolchain_tasks(count),
            wl.toolchain_expected,
            "4 LLM + 3 tool calls per task",
        )
    ]


def measure_venv(adapter: Adapter) -> list[dict[str, Any]]:
    """Bytes on disk of this venv (the framework, its dependencies, pip and setuptools)."""
    size = wl.dir_size_bytes(sys.prefix) / (1 << 20)
    _log(f"[{adapter.system}] venv {size:.0f} MB")
    return [
        _metric(adapter, "venv_mb", size, "MB", "lower", notes=f"du of {os.path.basename(sys.prefix)} venv")
    ]


def versions(adapter: Adapter) -> dict[str, str]:
    """Installed versions of the adapter's packages."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    for pkg in adapter.packages:
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = "missing"
    return found


def run_metrics(adapter: Adapter, script: str, groups: list[str], quick: bool) -> list[dict[str, Any]]:
    """Measure ``groups`` (see :data:`METRIC_GROUPS`) and return the metric dicts."""
    out: list[dict[str, Any]] = []
    for group in groups:
        if group == "cold_start":
            out += measure_cold_start(adapter, script, 3 if quick else 7)
        elif group == "warm_start":
            out += measure_warm_start(adapter, 20 if quick else 200)
        elif group == "memory":
            out += measure_memory(adapter, script, AGENT_COUNTS[:2] if quick else AGENT_COUNTS)
        elif group == "routing":
            out += measure_routing(
                adapter, wl.ROUTING_MESSAGES_QUICK if quick else wl.ROUTING_MESSAGES_DEFAULT
            )
        elif group == "toolchain":
            out += measure_toolchain(
                adapter, wl.TOOLCHAIN_TASKS_QUICK if quick else wl.TOOLCHAIN_TASKS_DEFAULT
            )
        elif group == "venv":
            out += measure_venv(adapter)
    pkgs = versions(adapter)
    for metric in out:
        metric["versions"] = pkgs
    return out


def main(make_adapter: Callable[[], Adapter], script: str, argv: list[str] | None = None) -> int:
    """Command line of a peer script (see the module docstring)."""
    parser = argparse.ArgumentParser(description="peer benchmark (runs inside the peer's venv)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--json", action="store_true", help="measure and print metric dicts as JSON")
    mode.add_argument("--cold", action="store_true", help="one agent answers one message, then exit")
    mode.add_argument("--hold", type=int, metavar="N", help="build N agents and wait until stdin closes")
    parser.add_argument("--metrics", nargs="+", choices=METRIC_GROUPS, default=list(METRIC_GROUPS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    adapter = make_adapter()
    if args.cold:
        _agent, reply = _first_agent_answer(adapter)
        sys.stdout.write(reply + "\n")
        sys.stdout.flush()
        return 0
    if args.hold is not None:
        if args.hold < 1:
            parser.error("--hold needs N >= 1")
        t0 = time.perf_counter()
        agents = [_first_agent_answer(adapter, 0)[0]]
        agents += [adapter.build_agent(i) for i in range(1, args.hold)]
        build_s = time.perf_counter() - t0
        gc.collect()
        print(f"READY {build_s:.4f}", flush=True)
        sys.stdin.read()  # idle until the parent has measured us and closes the pipe
        del agents
        return 0
    print(json.dumps(run_metrics(adapter, script, args.metrics, args.quick)), flush=True)
    return 0
