"""A worker's CPU per agent message, in one process: the routing or tool-chain load through an AgentHost.

    python -m perf.worker_cpu routing [--count 3000] [--repeats 5]
    python -m perf.worker_cpu toolchain --count 1000

The host is built as a worker builds it (``workers/host/wiring.build_host``: every security layer on, the
benchmark's unlimited rate limits, the bench tools for the tool chain) with the agents of
``perf/bench_system.py`` (a router and the four route agents, or four tool-chain agents). Requests are
encoded and decoded as msgpack envelopes and every reply is encoded, as the worker's loop does; there is no
ZeroMQ and no gateway. Every reply is checked against the workload's expected answer.

Prints one JSON line: CPU microseconds (``time.process_time``: this process, the epoch ticker included) per
agent message (a routing task is two messages, a tool-chain task one), min and median over ``repeats``
rounds of ``count`` tasks. On a shared machine compare trees by alternating runs and reading the minimum
(``perf/PROFILE.md``). Not a ``bench_*`` module: ``perf.run`` does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from openfang.protocol.envelope import Envelope, decode, encode
from openfang.workers.host import wiring
from perf import workloads as wl
from perf.bench_system import _BUCKETS, manifest

Reply = Callable[[Envelope], None]


class Load:
    """One host and the requests in flight through it."""

    def __init__(self, phase: str) -> None:
        self.phase = phase
        table = {"ratelimit": {b: {"rate": 0, "burst": 0} for b in _BUCKETS}}
        args: dict[str, Any] = {"security": {"source": "cluster.toml", "table": table}}
        if phase == "toolchain":
            args["tool_modules"] = ["perf.bench_tools:register"]
        self.host = wiring.build_host("w0", args, events=lambda _e: None, audit=lambda _r: None)
        self.pending: dict[str, Reply] = {}

    def submit(self, type_: str, body: dict[str, Any], on_reply: Reply) -> None:
        env = Envelope(type=type_, body=body)
        self.pending[env.id] = on_reply
        self.host.submit(decode(encode(env)), decoded=True)  # as the worker's loop hands it over

    def pump(self) -> None:
        for reply in self.host.step(0.02):
            encode(reply)
            on_reply = self.pending.pop(reply.id, None)
            if on_reply is not None:
                on_reply(reply)

    def call(self, type_: str, body: dict[str, Any]) -> Envelope:
        box: list[Envelope] = []
        self.submit(type_, body, box.append)
        while not box:
            self.pump()
        if box[0].is_error:
            raise RuntimeError(f"{type_} failed: {box[0].body}")
        return box[0]

    def spawn_agents(self) -> None:
        if self.phase == "toolchain":
            for _ in range(4):
                self.call("agent.spawn", {"manifest": manifest("toolchain")})
            return
        self.call("agent.spawn", {"manifest": manifest("router")})
        for route in wl.ROUTES:
            self.call("agent.spawn", {"manifest": manifest("route", route)})

    def run(self, count: int, offset: int) -> float:
        """CPU microseconds per agent message over ``count`` tasks (a window of them in flight)."""
        toolchain = self.phase == "toolchain"
        tasks = (wl.toolchain_tasks if toolchain else wl.routing_messages)(count + offset)[offset:]
        window = 64 if toolchain else 256
        state = {"next": 0, "done": 0, "messages": 0}

        def check(reply: Envelope, want: str) -> None:
            if reply.is_error or reply.body.get("reply") != want:
                raise RuntimeError(f"wrong reply {reply.body!r}, expected {want!r}")

        def launch() -> None:
            task = tasks[state["next"]]
            state["next"] += 1
            state["messages"] += 1

            def finished(reply: Envelope, want: str) -> None:
                check(reply, want)
                state["done"] += 1

            if toolchain:
                want = wl.toolchain_expected(task)
                self.submit("agent.send", {"service": "toolchain", "text": task}, lambda r: finished(r, want))
                return
            route = wl.classify(task)

            def classified(reply: Envelope) -> None:
                check(reply, route)
                state["messages"] += 1
                answer = wl.agent_reply(route, task)
                self.submit("agent.send", {"service": route, "text": task}, lambda r: finished(r, answer))

            self.submit("agent.send", {"service": "router", "text": task}, classified)

        while state["next"] < min(window, count):
            launch()
        started = time.process_time()
        while state["done"] < count:
            self.pump()
            while state["next"] < count and state["next"] - state["done"] < window:
                launch()
        return (time.process_time() - started) / state["messages"] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=("routing", "toolchain"))
    parser.add_argument("--count", type=int, default=3000, help="tasks per round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (after one warm-up round)")
    args = parser.parse_args()
    scratch = None
    if not os.environ.get("OPENFANG_DATA_DIR"):  # the audit chain and snapshots go somewhere throwaway
        scratch = tempfile.mkdtemp(prefix="openfang-worker-cpu-")
        os.environ["OPENFANG_DATA_DIR"] = scratch
    load = Load(args.phase)
    try:
        load.spawn_agents()
        load.run(min(500, args.count), 0)
        cpu = sorted(load.run(args.count, 1000 + i * args.count) for i in range(args.repeats))
    finally:
        load.host.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(
        json.dumps(
            {
                "phase": args.phase,
                "cpu_us_per_message_min": round(cpu[0], 1),
                "cpu_us_per_message_median": round(statistics.median(cpu), 1),
                "rounds": [round(c, 1) for c in cpu],
            }
        )
    )


if __name__ == "__main__":
    main()
