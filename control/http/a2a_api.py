"""Every agent as an A2A 1.0 agent (the ``a2a-sdk`` package): cards, the JSON-RPC binding, tasks in SQLite.

Routes (``{agent}`` is an agent id or the name of a running agent)::

    GET  /a2a/{agent}/.well-known/agent-card.json   the agent's card, built from its manifest
    POST /a2a/{agent}                                JSON-RPC: SendMessage, SendStreamingMessage, GetTask,
                                                     ListTasks, CancelTask, SubscribeToTask
    POST /a2a/{agent}/message:send, GET .../tasks/{id} the same over the HTTP+JSON binding
    GET  /.well-known/agent-card.json                the cluster's card: [http] default_agent's

The SDK's request handler does the protocol; :class:`AgentExecutor` turns one message into one
streamed ``agent.send`` (session ``a2a:<contextId>``, so a context is one conversation) and the task's
events: working, the reply's text pieces as chunks of one artifact (tool calls as working updates), the
whole reply replacing them, then completed (or failed with the reason). The agent may set another outcome
with the ``task_update`` tool (input-required, rejected, failed, auth-required, and artifacts of text, data
or file URIs): it comes with the reply (``task`` in ``agent.send.ok``). Tasks are kept per agent
name in :mod:`~openfang.control.http.a2a_store`, so they survive a restart of the daemon.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import httpx
from a2a.helpers import (
    new_data_part,
    new_task_from_user_message,
    new_text_message,
    new_text_part,
    new_url_part,
)
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import BasePushNotificationSender, TaskUpdater
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentProvider,
    AgentSkill,
    HTTPAuthSecurityScheme,
    Role,
    SecurityRequirement,
    SecurityScheme,
    StringList,
    TaskState,
)
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH, PROTOCOL_VERSION_CURRENT, TransportProtocol
from a2a.utils.push_url_validator import validate_push_notification_url
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from openfang import __version__
from openfang.control.http.a2a_store import TaskDatabase
from openfang.control.http.app import Face, Installed
from openfang.control.http.errors import HttpError
from openfang.protocol.messages import CHUNK_TYPE

TASKS_DB = "http/a2a-tasks.db"


class OpenFangExecutor(AgentExecutor):
    """One A2A message -> one ``agent.send`` to the agent named ``ref``, reported as task events."""

    def __init__(self, face: Face, ref: str) -> None:
        self.face = face
        self.ref = ref

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        if task is None:
            assert context.message is not None  # the SDK builds a context from a message
            task = new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work()
        text = context.get_user_input()
        artifact_id = f"{task.id}-reply"
        reply: dict[str, Any] = {}
        try:
            agent = await self.face.resolve(self.ref, param="agent")
            session = f"a2a:{task.context_id}"[:128]
            pieces = 0
            async with contextlib.aclosing(self.face.stream(str(agent["agent_id"]), text, session)) as parts:
                async for kind, part in parts:
                    if kind != CHUNK_TYPE:
                        reply = part
                    elif part.get("kind") == "text" and part.get("text"):
                        # The reply's text as it comes: chunks of one artifact, appended.
                        await updater.add_artifact(
                            [new_text_part(str(part["text"]))],
                            artifact_id=artifact_id,
                            name="reply",
                            append=pieces > 0,
                            last_chunk=False,
                        )
                        pieces += 1
                    elif part.get("kind") == "tool":
                        note = f"tool {part.get('tool')}: {part.get('state')}"
                        await updater.update_status(
                            TaskState.TASK_STATE_WORKING,
                            message=new_text_message(note, context_id=task.context_id, task_id=task.id),
                        )
        except HttpError as exc:
            await updater.failed(
                new_text_message(
                    f"{exc.code}: {exc.message}",
                    context_id=task.context_id,
                    task_id=task.id,
                    role=Role.ROLE_AGENT,
                )
            )
            return
        answer = str(reply.get("reply", ""))
        # The whole reply replaces the streamed chunks (append = false): the stored task has it in one part.
        await updater.add_artifact(
            [new_text_part(answer)], artifact_id=artifact_id, name="reply", append=False, last_chunk=True
        )
        raw_task = reply.get("task")
        outcome: dict[str, Any] = raw_task if isinstance(raw_task, dict) else {}
        for i, artifact in enumerate(outcome.get("artifacts") or []):
            await updater.add_artifact(
                [_part(artifact)],
                artifact_id=f"{task.id}-{i}",
                name=str(artifact.get("name") or f"artifact-{i}"),
                last_chunk=True,
            )
        message = new_text_message(
            str(outcome.get("message") or answer),
            context_id=task.context_id,
            task_id=task.id,
            role=Role.ROLE_AGENT,
        )
        finish = {
            "input-required": updater.requires_input,
            "auth-required": updater.requires_auth,
            "rejected": updater.reject,
            "failed": updater.failed,
        }.get(str(outcome.get("state")), updater.complete)
        await finish(message)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        # The framework has already cancelled execute(); a reply still in flight is dropped when it lands.
        task = context.current_task
        if task is not None:
            await TaskUpdater(event_queue, task.id, task.context_id).cancel()


def _part(artifact: dict[str, Any]) -> Any:
    """The A2A part of one ``task_update`` artifact: text, data (a JSON object) or a file URI."""
    media = artifact.get("media_type") or None
    if "data" in artifact:
        return new_data_part(artifact["data"], media_type=media)
    if "uri" in artifact:
        return new_url_part(str(artifact["uri"]), media_type=media, filename=artifact.get("name") or None)
    return new_text_part(str(artifact.get("text", "")), media_type=media)


def build_card(face: Face, agent: dict[str, Any], ref: str, tokens: bool) -> AgentCard:
    """An agent's card from its record (the manifest's name, description and tools)."""
    name = str(agent.get("name") or agent["agent_id"])
    description = str(agent.get("description") or f"the OpenFANG agent {name}")
    skills = [
        AgentSkill(
            id=name,
            name=name,
            description=description,
            tags=["openfang", "chat"],
            input_modes=["text/plain"],
            output_modes=["text/plain"],
        )
    ]
    skills += [
        AgentSkill(id=f"tool:{tool}", name=tool, description=f"can use the {tool} tool", tags=["tool"])
        for tool in agent.get("tools") or []
    ]
    card = AgentCard(
        name=name,
        description=description,
        version=__version__,
        provider=AgentProvider(organization=f"OpenFANG cluster {face.cluster}", url=face.base_url),
        supported_interfaces=[
            AgentInterface(
                url=f"{face.base_url}/a2a/{ref}",
                protocol_binding=binding.value,
                protocol_version=PROTOCOL_VERSION_CURRENT,
            )
            for binding in (TransportProtocol.JSONRPC, TransportProtocol.HTTP_JSON)
        ],
        capabilities=AgentCapabilities(streaming=True, push_notifications=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=skills,
    )
    if tokens:
        card.security_schemes["bearer"].CopyFrom(
            SecurityScheme(http_auth_security_scheme=HTTPAuthSecurityScheme(scheme="bearer"))
        )
        card.security_requirements.append(SecurityRequirement(schemes={"bearer": StringList(list=[])}))
    return card


class AgentApps:
    """One SDK app (card + JSON-RPC routes + request handler) per agent reference, made on first use."""

    def __init__(self, face: Face, db: TaskDatabase, tokens: bool) -> None:
        self.face = face
        self.db = db
        self.tokens = tokens
        self.apps: dict[str, tuple[str, Starlette]] = {}  # ref -> (agent_id it was built for, app)
        self.webhooks = httpx.AsyncClient(timeout=10.0)  # push notifications go out through it

    async def push_url_ok(self, url: str) -> bool:
        """A webhook URL must be http(s) to a public address, or to a host in [http] push_allow_hosts."""
        parts = urllib.parse.urlparse(url)
        if parts.scheme in ("http", "https") and (parts.hostname or "") in self.face.push_allow_hosts:
            return True
        return await validate_push_notification_url(url)

    async def app_for(self, ref: str) -> Starlette:
        agent = await self.face.resolve(ref, param="agent")
        cached = self.apps.get(ref)
        if cached is not None and cached[0] == agent["agent_id"]:
            return cached[1]
        card = build_card(self.face, agent, ref, self.tokens)
        name = str(agent.get("name") or agent["agent_id"])
        push_store = self.db.push_store(name)
        handler = DefaultRequestHandler(
            agent_executor=OpenFangExecutor(self.face, ref),
            task_store=self.db.store(name),
            agent_card=card,
            push_config_store=push_store,
            push_sender=BasePushNotificationSender(
                self.webhooks, push_store, push_url_validator=self.push_url_ok
            ),
            push_url_validator=self.push_url_ok,
        )
        app = Starlette(
            routes=[
                # the card first: the REST routes' "/{tenant}" mount would take its path
                *create_agent_card_routes(card, card_url=AGENT_CARD_WELL_KNOWN_PATH),
                *create_jsonrpc_routes(handler, rpc_url="/"),
                *create_rest_routes(handler),
            ]
        )
        self.apps[ref] = (str(agent["agent_id"]), app)
        return app

    def dispatch(self, inner_path: str | None) -> _Dispatch:
        """An endpoint for ``inner_path`` in the agent's app (None: the ``{rest}`` after the agent)."""
        return _Dispatch(self, inner_path)


class _Dispatch:
    """An ASGI endpoint that hands a request to its agent's SDK app, at ``inner_path`` inside it."""

    def __init__(self, apps: AgentApps, inner_path: str | None) -> None:
        self.apps = apps
        self.inner_path = inner_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = scope.get("path_params") or {}
        ref = params.get("agent") or self.apps.face.default_agent
        if not ref:
            raise HttpError(
                404, "not_found", "this cluster has no card: set [http] default_agent in cluster.toml"
            )
        app = await self.apps.app_for(str(ref))
        path = self.inner_path or "/" + str(params.get("rest", ""))
        await app({**scope, "path": path, "raw_path": path.encode(), "root_path": ""}, receive, send)


def install(face: Face) -> Installed:
    db = TaskDatabase(face.data_dir / TASKS_DB)
    apps = AgentApps(face, db, tokens=face.tokens_required)

    @contextlib.asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        try:
            yield
        finally:
            await apps.webhooks.aclose()
            db.close()

    return Installed(
        routes=[
            Route("/a2a/{agent}", apps.dispatch("/"), methods=["POST"]),
            Route(
                f"/a2a/{{agent}}{AGENT_CARD_WELL_KNOWN_PATH}",
                apps.dispatch(AGENT_CARD_WELL_KNOWN_PATH),
                methods=["GET"],
            ),
            Route(AGENT_CARD_WELL_KNOWN_PATH, apps.dispatch(AGENT_CARD_WELL_KNOWN_PATH), methods=["GET"]),
            # the HTTP+JSON binding: /a2a/{agent}/message:send, /tasks/{id}, ...
            Route("/a2a/{agent}/{rest:path}", apps.dispatch(None), methods=["GET", "POST", "DELETE"]),
        ],
        lifespan=lifespan,
    )
