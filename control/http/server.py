"""The ``http`` child: uvicorn serving :func:`openfang.control.http.app.build_app`, supervised.

Started by the root supervisor as ``openfang.control.http.server:main`` when ``[http]`` is enabled
(:func:`openfang.control.config.with_http`). It binds and listens on its port, checks the TLS files, and
says ``ready``; only then does it import the web stack (starlette, uvicorn, MCP, A2A: ~700 ms of imports)
and build the app, which uvicorn serves on that same socket. A connection made in between waits in the
listen backlog and is answered once the app is up, so the face never delays the tree's READY (and so the
first agent reply): it is an optional part and starts in the background, like a socket-activated service.
What fails before ``ready`` (port taken, unreadable certificate, the extra missing) is a failed start; a
later failure is a crash, restarted by policy. It heartbeats from the event loop, so a stuck loop is a
hung child the supervisor restarts. SIGTERM is uvicorn's graceful shutdown (open streams are given the
child's shutdown time).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import structlog

from openfang.control.config import ClusterSection, ControlConfig, HttpConfig, missing_http_modules
from openfang.supervisor.child import ChildContext

log = structlog.get_logger("openfang.http")
HEARTBEAT_S = 1.0
BACKLOG = 2048  # uvicorn's default


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


def fail(reason: str) -> NoReturn:
    """A failed start, said in the log (a child's exit message goes nowhere) and by the exit code."""
    log.error("http_start_failed", reason=reason)
    raise SystemExit(1)


def bind(http: HttpConfig) -> socket.socket:
    """The face's listening socket, bound and listening (connections queue until uvicorn accepts)."""
    family = socket.AF_INET6 if ":" in http.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((http.host, http.port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        fail(f"[http] cannot listen on {http.listen}: {exc.strerror or exc}")
    return sock


def check_tls(http: HttpConfig) -> None:
    """Load the certificate and key once before ``ready``: a bad pair is a failed start, not a crash."""
    if not http.tls_cert:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(http.tls_cert, http.tls_key)
    except (OSError, ssl.SSLError) as exc:
        fail(f"[http] tls_cert/tls_key {http.tls_cert}: {exc}")


def load_stack() -> None:
    """Import uvicorn, the app and every protocol module it installs (what ``build_app`` needs)."""
    import importlib

    import uvicorn  # noqa: F401

    from openfang.control.http.app import PROTOCOLS

    for name in PROTOCOLS:
        importlib.import_module(f"openfang.control.http.{name}")


async def serve(ctx: ChildContext, args: Mapping[str, Any]) -> None:
    http: HttpConfig = args["http"]
    sock = bind(http)
    check_tls(http)
    ctx.ready(url=http.base_url)
    # The web stack is imported now, after ready and in this child only (the root never carries it), on a
    # thread so that the loop keeps heartbeating through an import slowed down by a loaded machine.
    loading = asyncio.get_running_loop().run_in_executor(None, load_stack)
    while not loading.done():
        ctx.heartbeat()
        await asyncio.wait({loading}, timeout=HEARTBEAT_S)
    loading.result()
    import uvicorn

    from openfang.control.http.app import build_app

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
        backlog=BACKLOG,
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise SystemExit(f"the HTTP server on {http.listen} stopped before it started")
        ctx.heartbeat()
        await asyncio.sleep(0.02)
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
