"""The web dashboard at ``/``: one static page (``static/``) and the JSON API it reads under ``/ui/api``.

Everything the page shows comes from protocol requests through the face's gateway bridge: ``status``,
``tree`` and ``agent.list`` (polled), ``agent.send`` with ``stream = true`` (the chat, as NDJSON lines),
``memory.search``, ``security.report``, ``agent.suspend``/``resume``/``kill``; live events come from the
gateway's PUB socket (``status`` names it), which one :class:`EventHub` follows and fans out as
server-sent events. The audit-log verification has no protocol request, so the page says so.

The page and its files are public (they hold no data; a page asks for the bearer token when the face
needs one); the API follows the face's bearer rules. API calls must carry ``X-OpenFang-Dashboard: 1``
(a header a cross-site form cannot send without a CORS preflight, which the face never grants) and, on a
token-less face, a loopback ``Host`` (so a DNS-rebound name cannot read it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
import zmq
import zmq.asyncio
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from openfang.control.http.app import Face, Installed
from openfang.control.http.errors import HttpError, from_openfang
from openfang.control.http.paging import PAGE, walk_agents
from openfang.protocol import messages
from openfang.protocol.envelope import decode
from openfang.protocol.errors import OpenFangError, ProtocolError
from openfang.protocol.sockets import connect_sub

log = structlog.get_logger("openfang.http")

STATIC = Path(__file__).resolve().parent / "static"
UI_HEADER = "X-OpenFang-Dashboard"  # header names are case-insensitive
KEEPALIVE_S = 15.0
RECENT = 100  # events replayed to a page that connects
QUEUE = 500  # events buffered per page before the oldest are dropped
AGENT_ROWS = 200  # agents the page lists at most (a filter finds the others)
AGENT_FIELDS = ("agent_id", "name", "worker", "state", "activity", "service")
ACTIONS = {"suspend": "agent.suspend", "resume": "agent.resume", "kill": "agent.kill"}
# The page runs only its own files: no inline script, no other origin.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class EventHub:
    """One SUB socket on the gateway's event stream, fanned out to every page that listens.

    Started by the first listener; the endpoint comes from ``status``. Each listener has a bounded queue:
    a page that does not keep up loses its oldest events, never the face's memory.
    """

    def __init__(self, face: Face) -> None:
        self.face = face
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        self.endpoint: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._ctx: zmq.asyncio.Context | None = None

    async def listen(self) -> asyncio.Queue[dict[str, Any]]:
        if self._task is None or self._task.done():
            status = await self.face.bridge.request("status", timeout=5.0)
            endpoint = status.get("events")
            if not isinstance(endpoint, str) or not endpoint:
                raise HttpError(503, "unavailable", "the gateway's status names no event endpoint")
            self.endpoint = reachable(endpoint, self.face.bridge.endpoint)
            self._task = asyncio.get_running_loop().create_task(self._follow(self.endpoint))
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE)
        for event in self.recent:
            queue.put_nowait(event)
        self.listeners.add(queue)
        return queue

    def leave(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.listeners.discard(queue)

    async def _follow(self, endpoint: str) -> None:
        self._ctx = zmq.asyncio.Context()
        # connect_sub is typed for sync contexts; an asyncio context makes asyncio sockets the same way.
        sub: zmq.asyncio.Socket = connect_sub(  # type: ignore[assignment]
            self._ctx, endpoint, curve=getattr(self.face.bridge, "curve", None)
        )
        log.info("dashboard_events_following", endpoint=endpoint)
        try:
            while True:
                frames = await sub.recv_multipart()
                try:
                    env = decode(frames[-1])
                except ProtocolError:
                    continue  # one bad event must not end the stream
                if env.type == messages.EVENT_TYPE:
                    self._publish(dict(env.body))
        finally:
            sub.close(linger=0)

    def _publish(self, event: dict[str, Any]) -> None:
        self.recent.append(event)
        for queue in self.listeners:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()  # drop the oldest for this slow page
            queue.put_nowait(event)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._ctx is not None:
            self._ctx.term()


def pick_agents(agents: list[dict[str, Any]], words: str, limit: int) -> list[dict[str, Any]]:
    """The agents whose id, name, worker, state, activity or service contain every word; the first ``limit``
    by id. Keeps the page (and each poll) small with 10,000 agents."""
    wanted = words.lower().split()
    if wanted:
        agents = [
            a
            for a in agents
            if all(any(w in str(a.get(f) or "").lower() for f in AGENT_FIELDS) for w in wanted)
        ]
    return sorted(agents, key=lambda a: str(a.get("agent_id")))[:limit]


def reachable(events: str, control: str) -> str:
    """The events endpoint as the face reaches it: a tcp wildcard host becomes the control endpoint's."""
    if events.startswith("tcp://") and control.startswith("tcp://"):
        host = urlsplit(events.replace("tcp://*:", "tcp://0.0.0.0:")).hostname
        if host in ("0.0.0.0", "::"):
            control_host = urlsplit(control).hostname or "127.0.0.1"
            control_host = f"[{control_host}]" if ":" in control_host else control_host
            return f"tcp://{control_host}:{events.rsplit(':', 1)[-1]}"
    return events


def install(face: Face) -> Installed:
    hub = EventHub(face)
    allowed_hosts = set(_LOOPBACK_HOSTS)
    allowed_hosts.add(urlsplit(face.base_url).hostname or "127.0.0.1")

    def guard(request: Request) -> None:
        if request.headers.get(UI_HEADER.lower()) != "1":
            raise HttpError(403, "denied", f"dashboard API calls must carry the header '{UI_HEADER}: 1'")
        host = (urlsplit(f"//{request.headers.get('host', '')}").hostname or "").lower()
        if not face.tokens_required and host not in allowed_hosts:
            raise HttpError(
                403,
                "denied",
                f"Host {host!r} is not this face's (a token-less face answers only its own name)",
            )

    async def ask(
        kind: str, body: dict[str, Any] | None = None, *, param: str | None = None
    ) -> dict[str, Any]:
        try:
            return await face.bridge.request(kind, body or {})
        except OpenFangError as exc:
            raise from_openfang(exc, param=param) from None

    async def page(_request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    async def overview(request: Request) -> Response:
        guard(request)
        out: dict[str, Any] = {"time": time.time(), "errors": {}}

        async def one(kind: str) -> None:
            try:
                out[kind.replace(".", "_")] = await face.bridge.request(kind, timeout=5.0)
            except OpenFangError as exc:
                out["errors"][kind] = str(exc)

        limit = request.query_params.get("limit", str(AGENT_ROWS))
        if not limit.isdigit() or not 1 <= int(limit) <= 10_000:
            raise HttpError(400, "bad_request", f"'limit' must be 1..10000, got {limit!r}", param="limit")
        words = request.query_params.get("filter", "")

        async def listing() -> None:
            # One page without a filter; with one, pages are walked until `limit` agents match.
            try:
                out["agent_list"] = await walk_agents(
                    lambda body: face.bridge.request("agent.list", body, timeout=5.0),
                    most=int(limit),
                    page=int(limit) if not words.split() else PAGE,
                    keep=lambda a: bool(pick_agents([a], words, 1)),
                )
            except OpenFangError as exc:
                out["errors"]["agent.list"] = str(exc)

        await asyncio.gather(one("status"), one("tree"), listing())
        found = out.get("agent_list")
        if found is not None:
            # Ids sorted, at most `limit`; `total` stays the gateway's: every agent.
            found["agents"] = pick_agents(found["agents"], "", int(limit))
        return JSONResponse(out)

    async def events(request: Request) -> Response:
        guard(request)
        try:
            queue = await hub.listen()
        except OpenFangError as exc:
            raise from_openfang(exc) from None

        async def stream() -> AsyncIterator[str]:
            try:
                yield f"event: hello\ndata: {json.dumps({'endpoint': hub.endpoint})}\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    yield f"data: {json.dumps(event, default=str)}\n\n"
            finally:
                hub.leave(queue)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def chat(request: Request) -> Response:
        guard(request)
        body = await _json_object(request)
        agent_id, text, session = body.get("agent_id"), body.get("text"), body.get("session")
        if not isinstance(agent_id, str) or not agent_id:
            raise HttpError(400, "bad_request", "'agent_id' must be an agent id", param="agent_id")
        if not isinstance(text, str) or not text.strip():
            raise HttpError(400, "bad_request", "'text' must be a non-empty string", param="text")
        if session is not None and not isinstance(session, str):
            raise HttpError(400, "bad_request", "'session' must be a string", param="session")

        async def lines() -> AsyncIterator[str]:
            try:
                async with contextlib.aclosing(face.stream(agent_id, text, session or "dashboard")) as parts:
                    async for kind, part in parts:
                        if kind == messages.CHUNK_TYPE:
                            yield json.dumps(part) + "\n"
                        else:
                            yield json.dumps({"kind": "reply", **part}) + "\n"
            except HttpError as exc:  # headers are gone: the error travels as the last line
                yield json.dumps({"kind": "error", "code": exc.code, "message": exc.message}) + "\n"

        return StreamingResponse(
            lines(), media_type="application/x-ndjson", headers={"Cache-Control": "no-cache"}
        )

    async def memory_search(request: Request) -> Response:
        guard(request)
        q = request.query_params
        body: dict[str, Any] = {"query": q.get("q", ""), "mode": q.get("mode", "hybrid")}
        if q.get("agent_id"):
            body["agent_id"] = q["agent_id"]
        limit = q.get("limit", "20")
        if not limit.isdigit():
            raise HttpError(400, "bad_request", f"'limit' must be a number, got {limit!r}", param="limit")
        body["limit"] = int(limit)
        return JSONResponse(await ask("memory.search", body, param="q"))

    async def security(request: Request) -> Response:
        guard(request)

        async def verified() -> dict[str, Any]:
            try:
                return {"available": True, **await face.bridge.request("audit.verify", {})}
            except OpenFangError as exc:  # e.g. `unavailable`: a daemon without a data dir keeps no log
                return {"available": False, "why": f"{exc.code}: {exc.message}"}

        report, checked = await asyncio.gather(ask("security.report"), verified())
        return JSONResponse({**report, "audit": checked})

    async def act(request: Request) -> Response:
        guard(request)
        action = request.path_params["action"]
        if action not in ACTIONS:
            raise HttpError(404, "not_found", f"no agent action {action!r} (known: {', '.join(ACTIONS)})")
        return JSONResponse(await ask(ACTIONS[action], {"agent_id": request.path_params["agent_id"]}))

    @contextlib.asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        try:
            yield
        finally:
            await hub.close()

    return Installed(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/ui/api/overview", overview, methods=["GET"]),
            Route("/ui/api/events", events, methods=["GET"]),
            Route("/ui/api/chat", chat, methods=["POST"]),
            Route("/ui/api/memory/search", memory_search, methods=["GET"]),
            Route("/ui/api/security", security, methods=["GET"]),
            Route("/ui/api/agents/{agent_id}/{action}", act, methods=["POST"]),
            Mount("/ui/static", StaticFiles(directory=STATIC), name="dashboard-static"),
        ],
        lifespan=lifespan,
    )


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise HttpError(400, "bad_request", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HttpError(400, "bad_request", "the request body must be a JSON object")
    return body
