"""The ``http`` child: uvicorn serving :func:`openfang.control.http.app.build_app`, supervised.

Started by the root supervisor as ``openfang.control.http.server:main`` when ``[http]`` is enabled
(:func:`openfang.control.config.with_http`). It says ``ready`` once the listening socket is bound, then
heartbeats from the event loop, so a stuck loop is a hung child the supervisor restarts. SIGTERM is
uvicorn's graceful shutdown (open streams are given the child's shutdown time).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from openfang.control.config import ClusterSection, ControlConfig, HttpConfig, missing_http_modules
from openfang.supervisor.child import ChildContext

log = structlog.get_logger("openfang.http")
HEARTBEAT_S = 1.0


def make_bridge(control: ControlConfig, security: Any, *, key_name: str = "client") -> Any:
    """The gateway client of an HTTP child (the face, or [metrics]): signs when the cluster requires it."""
    from openfang.control.http.bridge import GatewayBridge
    from openfang.control.scheduler import signer_for

    return GatewayBridge(
        control.endpoint,
        timeout=max(30.0, control.request_timeout_ms / 1000 + 5),
        keys_dir=control.keys_dir,
        key_name=key_name,
        signer=signer_for(security, os.environ.get("OPENFANG_DATA_DIR", ".")),
    )


def make_face(args: Mapping[str, Any]) -> Any:
    """The shared state of the app from the child's args: the typed ``[http]``, ``[control]`` and
    ``[security]`` configs (:func:`openfang.control.config.with_http`), defaults and all."""
    http: HttpConfig = args["http"]
    data_dir = os.environ.get("OPENFANG_DATA_DIR", ".")
    bridge = make_bridge(args["control"], args.get("security"), key_name=http.key_name)
    return build_face(bridge, http, base_url=http.base_url, data_dir=Path(data_dir))


def build_face(bridge: Any, http: HttpConfig, *, base_url: str, data_dir: Path) -> Any:
    """The app's shared state from a typed [http] config (``openfang mcp serve`` passes the defaults)."""
    from openfang.control.http.app import Face

    return Face(
        bridge=bridge,
        base_url=base_url,
        data_dir=data_dir,
        cluster=os.environ.get("OPENFANG_CLUSTER", ClusterSection().name),
        default_agent=http.default_agent,
        tokens_required=bool(http.tokens),
        push_allow_hosts=http.push_allow_hosts,
        metrics_per_agent=http.metrics_per_agent,
        metrics_top_agents=http.metrics_top_agents,
    )


async def serve(ctx: ChildContext, args: Mapping[str, Any]) -> None:
    import uvicorn

    from openfang.control.http.app import build_app

    http: HttpConfig = args["http"]
    app = build_app(make_face(args), tokens=list(http.tokens))
    config = uvicorn.Config(
        app,
        host=http.host,
        port=http.port,
        ssl_certfile=http.tls_cert,
        ssl_keyfile=http.tls_key,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=4,
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it (uvicorn exits 1 when it cannot bind)
            raise SystemExit(f"the HTTP server on {http.listen} stopped before it started")
        await asyncio.sleep(0.02)
    ctx.ready(url=http.base_url)
    log.info("http_listening", url=http.base_url, tls=bool(http.tls_cert))
    while not task.done():
        ctx.heartbeat()
        await asyncio.wait({task}, timeout=HEARTBEAT_S)
    task.result()


def main(ctx: ChildContext) -> None:
    """Child entry point: serve until SIGTERM (uvicorn handles it and drains)."""
    structlog.contextvars.bind_contextvars(role="http", pid=os.getpid())
    missing = missing_http_modules()
    if missing:
        # The config check refuses this already; a child started by other means says it just as plainly.
        sys.exit(
            f"[http] needs the 'http' extra (missing: {', '.join(missing)}): pip install 'openfang[http]'"
        )
    asyncio.run(serve(ctx, dict(ctx.args)))
