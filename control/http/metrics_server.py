"""The ``metrics`` child of ``[metrics] listen``: the face's ``/metrics`` collector on a plain HTTP port.

For clusters that run without the HTTP face (or want the metrics on another address). The asyncio loop of
this process owns the gateway client (:class:`~openfang.control.http.bridge.GatewayBridge`) and the
:class:`~openfang.control.http.metrics.Sampler`; prometheus-client's own threaded HTTP server answers the
scrapes, and each scrape refreshes the sample through the loop (cached and single-flight, as on the face)
before the collector reads it. Every path answers the metrics text; there are no bearer tokens.

Started by the root supervisor as ``openfang.control.http.metrics_server:main``
(:func:`openfang.control.config.with_metrics`); ready once the port is bound, heartbeats from the
loop, and SIGTERM closes the port and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import structlog

from openfang.control.config import MetricsConfig, missing_http_modules
from openfang.supervisor.child import ChildContext

log = structlog.get_logger("openfang.metrics")
HEARTBEAT_S = 1.0
SCRAPE_TIMEOUT_S = 15.0


async def serve(ctx: ChildContext, args: Mapping[str, Any]) -> None:
    from prometheus_client.exposition import start_http_server
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from openfang.control.http.metrics import ClusterCollector, Sampler, local_endpoint
    from openfang.control.http.paging import walk_agents
    from openfang.control.http.server import make_bridge

    metrics: MetricsConfig = args["metrics"]
    bridge = make_bridge(args["control"], args.get("security"))
    loop = asyncio.get_running_loop()

    async def fetch(kind: str) -> dict[str, Any]:
        if kind == "agent.list":  # every page (of PAGE agents, up to WALK_MAX): totals cover every agent
            return await walk_agents(lambda body: bridge.request(kind, body, timeout=5.0))
        reply: dict[str, Any] = await bridge.request(kind, timeout=5.0)
        return reply

    sampler = Sampler(fetch, measure_cpu=local_endpoint(bridge.endpoint))

    class Refreshing(ClusterCollector):
        """Refreshes the sample on the loop (from the HTTP server's thread), then collects it."""

        def collect(self) -> Iterable[Metric]:
            asyncio.run_coroutine_threadsafe(sampler.sample(), loop).result(SCRAPE_TIMEOUT_S)
            return super().collect()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        Refreshing(
            sampler,
            per_agent=metrics.per_agent,
            top_agents=metrics.top_agents,
        )
    )
    host, port = metrics.host, metrics.port
    server, thread = start_http_server(port, addr=host, registry=registry)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
    ctx.ready(url=url)
    log.info("metrics_listening", url=url)
    try:
        while not stop.is_set():
            ctx.heartbeat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HEARTBEAT_S)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)
        await bridge.close()


def main(ctx: ChildContext) -> None:
    """Child entry point: serve until SIGTERM."""
    structlog.contextvars.bind_contextvars(role="metrics", pid=os.getpid())
    missing = missing_http_modules()
    if missing:
        sys.exit(
            f"[metrics] needs the 'http' extra (missing: {', '.join(missing)}): pip install 'openfang[http]'"
        )
    asyncio.run(serve(ctx, dict(ctx.args)))
