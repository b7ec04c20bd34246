"""Backbone benchmarks: daemon exec -> READY, worker kill -9 -> serving again, control round trip."""

from __future__ import annotations

import os
import signal
import statistics
import time
from typing import Any

from openfang.protocol.envelope import Envelope, encode
from perf._cluster import UNLIMITED_CLIENT, BenchCluster
from perf.workloads import metric, percentile


def bench_ready(rounds: int) -> list[dict[str, Any]]:
    times = []
    for i in range(rounds):
        with BenchCluster(workers="auto", extra=UNLIMITED_CLIENT) as c:
            times.append(c.start() * 1000)
        print(f"  exec->READY round {i + 1}/{rounds}: {times[-1]:.1f} ms", flush=True)
    return [
        metric(
            "daemon_exec_to_ready_ms",
            statistics.median(times),
            "ms",
            "lower",
            p50=percentile(times, 50),
            p99=percentile(times, 99),
            samples=len(times),
        )
    ]


def bench_worker_restart(rounds: int) -> list[dict[str, Any]]:
    """kill -9 a worker; time until worker.ping answers from a new pid."""
    samples = []
    with BenchCluster(workers=2, extra=UNLIMITED_CLIENT) as c:
        c.start()
        for i in range(rounds):
            node = next(n for n in c.call("tree")["children"] if n["id"] == "workers")
            victim = node["children"][i % 2]
            t0 = time.perf_counter()
            os.kill(victim["pid"], signal.SIGKILL)
            while True:
                try:
                    pong = c.call("worker.ping", {"worker": victim["id"]}, timeout=5)
                except (RuntimeError, TimeoutError):
                    time.sleep(0.0005)
                    continue
                if pong["pid"] != victim["pid"]:
                    break
                time.sleep(0.0005)
            samples.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.05)
    print(f"  worker restart: p50 {percentile(samples, 50):.1f} ms over {len(samples)}", flush=True)
    return [
        metric(
            "worker_restart_after_kill9_ms",
            percentile(samples, 50),
            "ms",
            "lower",
            target=30,
            p50=percentile(samples, 50),
            p99=percentile(samples, 99),
            samples=len(samples),
        )
    ]


def bench_round_trip(count: int, label: str, tcp: bool = False) -> list[dict[str, Any]]:
    """Sequential ping latency and pipelined msgs/s through the gateway (tcp: with CURVE, as required)."""
    with BenchCluster(workers=1, extra=UNLIMITED_CLIENT) as c:
        if tcp:
            c.use_tcp()
        c.start()
        lat = []
        for _ in range(count):
            t0 = time.perf_counter()
            c.call("ping")
            lat.append((time.perf_counter() - t0) * 1e6)
        # Throughput: keep a window of requests in flight (pipelined DEALER).
        n, window = count * 5, 100
        t0 = time.perf_counter()
        sent = received = 0
        while received < n:
            while sent < n and sent - received < window:
                c.sock.send(encode(Envelope(type="ping")))
                sent += 1
            c.sock.recv()
            received += 1
        rate = n / (time.perf_counter() - t0)
    print(f"  control round trip {label}: p50 {percentile(lat, 50):.0f} us, {rate:.0f} msgs/s", flush=True)
    return [
        metric(
            f"control_round_trip_{label}_us",
            percentile(lat, 50),
            "us",
            "lower",
            p50=percentile(lat, 50),
            p99=percentile(lat, 99),
            samples=len(lat),
        ),
        metric(f"control_msgs_per_s_{label}", rate, "msgs/s", "higher"),
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    out = []
    out += bench_ready(3 if quick else 10)
    out += bench_worker_restart(10 if quick else 50)
    out += bench_round_trip(500 if quick else 5000, "ipc")
    out += bench_round_trip(500 if quick else 5000, "tcp_curve", tcp=True)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
