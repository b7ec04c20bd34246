"""The OpenAI-compatible API: ``GET /v1/models`` and ``POST /v1/chat/completions``, streaming or not.

Each agent is a model: ``model`` is an agent id or the name of a running agent. Agents keep their own
conversation, so only the newest ``user`` message is sent (``agent.send``); the session is
``openai:<user>`` when the request names a ``user``, else ``openai:<X-OpenFang-Session header>``, else
``openai``. With ``stream`` the agent's reply streams (``agent.send`` with ``stream = true``): each text
piece the model produces is one chunk. Official clients work unchanged (tests drive it with ``openai``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from openfang.control.http.app import Face, Installed
from openfang.control.http.errors import HttpError
from openfang.protocol.messages import CHUNK_TYPE

SESSION_HEADER = "x-openfang-session"
_SESSION = re.compile(r"^[A-Za-z0-9._:@-]{1,120}$")
_KNOWN = {
    "model",
    "messages",
    "stream",
    "stream_options",
    "user",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "metadata",
    "store",
    "logit_bias",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
    "service_tier",
    "modalities",
    "prediction",
    "audio",
    "safety_identifier",
    "prompt_cache_key",
    "verbosity",
    "web_search_options",
}


def install(face: Face) -> Installed:
    async def models(_request: Request) -> Response:
        agents = await face.agents()
        data = [
            {
                "id": a["agent_id"],
                "object": "model",
                "created": int(a.get("created_at") or 0),
                "owned_by": face.cluster,
                "name": a.get("name"),
                "state": a.get("state"),
            }
            for a in agents
        ]
        return JSONResponse({"object": "list", "data": data})

    async def model(request: Request) -> Response:
        agent = await face.resolve(request.path_params["model"])
        return JSONResponse(
            {
                "id": agent["agent_id"],
                "object": "model",
                "created": int(agent.get("created_at") or 0),
                "owned_by": face.cluster,
            }
        )

    async def chat(request: Request) -> Response:
        body = await _json_body(request)
        ref, text, session, stream, include_usage = _parse_chat(body, request.headers.get(SESSION_HEADER))
        agent = await face.resolve(ref)
        completion_id = "chatcmpl-" + os.urandom(12).hex()
        created = int(time.time())
        if not stream:
            reply = await face.send(agent["agent_id"], text, session)
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": agent["agent_id"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply["reply"], "refusal": None},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": _usage(reply),
                }
            )

        async def events() -> AsyncIterator[str]:
            def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
                obj = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": agent["agent_id"],
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                    **extra,
                }
                return f"data: {json.dumps(obj)}\n\n"

            yield chunk({"role": "assistant", "content": ""})
            streamed = False
            reply: dict[str, Any] = {}
            try:
                async with contextlib.aclosing(face.stream(agent["agent_id"], text, session)) as parts:
                    async for kind, part in parts:
                        if kind != CHUNK_TYPE:
                            reply = part
                        elif part.get("kind") == "text" and part.get("text"):
                            streamed = True
                            yield chunk({"content": part["text"]})
            except HttpError as exc:
                # Headers are gone: the error travels in the stream, as OpenAI's own streams do.
                err = {"error": {"message": exc.message, "type": exc.code, "code": exc.code, "param": None}}
                yield f"data: {json.dumps(err)}\n\n"
                return
            if reply.get("reply") and not streamed:  # a guest without a streaming model: all at once
                yield chunk({"content": reply["reply"]})
            yield chunk({}, "stop")
            if include_usage:
                obj = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": agent["agent_id"],
                    "choices": [],
                    "usage": _usage(reply),
                }
                yield f"data: {json.dumps(obj)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return Installed(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model:path}", model, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise HttpError(400, "bad_request", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HttpError(
            400, "bad_request", f"the request body must be a JSON object, got {type(body).__name__}"
        )
    return body


def _parse_chat(body: dict[str, Any], header_session: str | None) -> tuple[str, str, str, bool, bool]:
    """(agent ref, text, session, stream, include_usage) of a chat request; HttpError names a bad field."""
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise HttpError(400, "bad_request", f"unknown field {unknown[0]!r}", param=unknown[0])
    ref = body.get("model")
    if not isinstance(ref, str) or not ref:
        raise HttpError(
            400, "bad_request", "'model' is required: an agent id or name (GET /v1/models)", param="model"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "bad_request", "'messages' must be a non-empty array", param="messages")
    text = None
    for i in range(len(messages) - 1, -1, -1):
        msg = messages[i]
        if not isinstance(msg, dict) or "role" not in msg:
            raise HttpError(
                400, "bad_request", f"messages[{i}] must be an object with a role", param="messages"
            )
        if msg["role"] == "user":
            text = _content_text(msg.get("content"), i)
            break
    if text is None:
        raise HttpError(400, "bad_request", "'messages' has no message with role 'user'", param="messages")
    if body.get("n", 1) != 1:
        raise HttpError(400, "bad_request", "only n = 1 is supported (an agent gives one reply)", param="n")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise HttpError(400, "bad_request", "'user' must be a string", param="user")
    name = user or header_session
    if name and not _SESSION.match(name):
        where = "user" if user else SESSION_HEADER
        raise HttpError(
            400,
            "bad_request",
            f"{where} must match {_SESSION.pattern} to name a session, got {name!r}",
            param=where,
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise HttpError(400, "bad_request", "'stream' must be true or false", param="stream")
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    return ref, text, f"openai:{name}" if name else "openai", stream, include_usage


def _content_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise HttpError(
                    400,
                    "bad_request",
                    f"messages[{i}].content: only text parts are supported, got {part!r:.80}",
                    param="messages",
                )
            parts.append(part["text"])
        return "\n".join(parts)
    raise HttpError(
        400, "bad_request", f"messages[{i}].content must be a string or text parts", param="messages"
    )


def _usage(reply: dict[str, Any]) -> dict[str, int]:
    usage = reply.get("usage") or {}
    prompt = int(usage.get("prompt_tokens", 0))
    completion = int(usage.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
