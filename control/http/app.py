"""The ASGI app: shared state (:class:`Face`), JSON errors, auth, and one module per protocol.

A protocol module exposes ``install(face) -> Installed``: its routes and, if it needs one, a lifespan
(the MCP session manager's task group). Adding a protocol (issue 13's ``/metrics`` and dashboard) is one
module and one line in :data:`PROTOCOLS`.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from openfang.control.http.auth import BearerAuth
from openfang.control.http.bridge import GatewayBridge
from openfang.control.http.errors import HttpError, error_response, from_openfang
from openfang.control.http.paging import WALK_MAX, walk_agents
from openfang.protocol.errors import OpenFangError

log = structlog.get_logger("openfang.http")

# module names under openfang.control.http, in route order
PROTOCOLS: tuple[str, ...] = ("openai_api", "mcp_server", "a2a_api", "metrics", "dashboard")


@dataclass(frozen=True, slots=True)
class Installed:
    """What one protocol module adds to the app."""

    routes: Sequence[BaseRoute]
    lifespan: Callable[[], AbstractAsyncContextManager[None]] | None = None


@dataclass(slots=True, kw_only=True)
class Face:
    """What every protocol module shares: the gateway bridge and the face's settings.

    No defaults here: the settings come from the typed [http] config (control.config.HttpConfig), where
    each default is written once (server.make_face).
    """

    bridge: GatewayBridge
    base_url: str
    data_dir: Path
    cluster: str
    default_agent: str | None
    tokens_required: bool  # cards then name the bearer scheme
    push_allow_hosts: tuple[str, ...]  # A2A webhooks allowed on these private or loopback hosts
    metrics_per_agent: bool  # /metrics: per-agent series for the top agents by messages
    metrics_top_agents: int

    async def agents(self, most: int = WALK_MAX) -> list[dict[str, Any]]:
        """Every registered agent (``agent.list`` pages walked in id order), at most ``most`` of them."""
        try:
            listing = await walk_agents(self.list_page, most=most)
        except OpenFangError as exc:
            raise from_openfang(exc) from None
        return list(listing["agents"])

    async def list_page(self, body: Mapping[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """One ``agent.list`` page (``body``: limit, after, state, worker)."""
        return await self.bridge.request("agent.list", body, timeout=timeout)

    async def resolve(self, ref: str, *, param: str = "model") -> dict[str, Any]:
        """The agent record for ``ref``: an agent id, else the name of a running agent (the oldest).

        An id is one ``agent.info``; only a name (or an id agent.info does not answer) walks the pages."""
        with contextlib.suppress(OpenFangError):
            return await self.bridge.request("agent.info", {"agent_id": ref})
        agents = await self.agents()
        for agent in agents:
            if agent.get("agent_id") == ref:
                return agent
        named = sorted(
            (a for a in agents if a.get("name") == ref and a.get("state") != "dead"),
            key=lambda a: a.get("created_at") or 0,
        )
        if named:
            return named[0]
        known = ", ".join(sorted({str(a.get("agent_id")) for a in agents})) or "none are running"
        raise HttpError(404, "not_found", f"no agent with id or name {ref!r} (agents: {known})", param=param)

    async def info(self, agent_id: str) -> dict[str, Any]:
        """``agent.info``: the record with the manifest's description and tools."""
        try:
            return await self.bridge.request("agent.info", {"agent_id": agent_id})
        except OpenFangError as exc:
            raise from_openfang(exc, param="agent_id") from None

    def stream(
        self, agent_id: str, text: str, session: str | None
    ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        """``agent.send`` with ``stream = true``: ``(CHUNK_TYPE, part)`` as parts come, then the reply."""
        return _stream(self, agent_id, text, session)

    async def send(self, agent_id: str, text: str, session: str | None) -> dict[str, Any]:
        """``agent.send``; errors of ours become HttpError."""
        body: dict[str, Any] = {"agent_id": agent_id, "text": text}
        if session is not None:
            body["session"] = session
        try:
            return await self.bridge.request("agent.send", body)
        except OpenFangError as exc:
            raise from_openfang(exc) from None


async def _stream(
    face: Face, agent_id: str, text: str, session: str | None
) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
    body: dict[str, Any] = {"agent_id": agent_id, "text": text}
    if session is not None:
        body["session"] = session
    try:
        async with contextlib.aclosing(face.bridge.stream("agent.send", body)) as parts:
            async for item in parts:
                yield item
    except OpenFangError as exc:
        raise from_openfang(exc) from None


def build_app(face: Face, *, tokens: Sequence[str] = (), protocols: Sequence[str] = PROTOCOLS) -> Starlette:
    """The whole app: every protocol's routes, JSON errors for everything, bearer auth in front."""
    installed = [importlib.import_module(f"openfang.control.http.{name}").install(face) for name in protocols]
    routes = [route for part in installed for route in part.routes]
    lifespans = [part.lifespan for part in installed if part.lifespan is not None]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for make in lifespans:
                await stack.enter_async_context(make())
            yield
        await face.bridge.close()

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HttpError)
        return exc.response()

    async def openfang_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OpenFangError)
        return from_openfang(exc).response()

    async def starlette_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no route {request.url.path!r} (see docs/interop.md for the routes)"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path!r}"
        else:
            message = str(exc.detail)
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, _code_of(exc.status_code), message, headers=headers)

    async def crash(request: Request, exc: Exception) -> Response:
        log.exception("http_request_failed", path=request.url.path, error=str(exc))
        return error_response(500, "internal", f"internal error while serving {request.url.path}: {exc}")

    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(BearerAuth, tokens=tokens)],
        exception_handlers={
            HttpError: http_error,
            OpenFangError: openfang_error,
            HTTPException: starlette_error,
            Exception: crash,
        },
    )


def _code_of(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}.get(
        status, "http_error"
    )
