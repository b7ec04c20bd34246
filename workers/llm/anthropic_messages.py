"""Anthropic Messages API (``POST {base_url}/v1/messages``) with tools and streaming.

``base_url`` is the host without the version (``https://api.anthropic.com``), as in the Anthropic SDK.
Differences from the OpenAI shape that this module translates:

- system messages go to the top-level ``system`` field;
- an assistant's tool calls are ``tool_use`` content blocks; tool results are ``tool_result`` blocks inside
  a *user* message, and consecutive messages of one role are merged (the API wants alternating roles);
- ``max_tokens`` is required (``DEFAULT_MAX_TOKENS`` when neither the request nor the config sets it);
- streaming events are ``message_start``, ``content_block_start/delta/stop`` (``text_delta`` and
  ``input_json_delta``), ``message_delta`` (stop reason, output tokens), ``message_stop``, ``error``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from openfang.workers.llm.transport import HttpClient, HttpSettings
from openfang.workers.llm.types import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    DeltaSink,
    LLMError,
    ToolCall,
    Usage,
    wire_tool_name,
)

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
_STOP = {"end_turn": "stop", "stop_sequence": "stop", "tool_use": "tool_calls", "max_tokens": "length"}


class AnthropicProvider:
    """A provider speaking the Anthropic Messages protocol."""

    blocking = True  # network I/O: run on a thread

    def __init__(
        self,
        *,
        model: str,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        api_key_env: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        settings: HttpSettings | None = None,
        name: str = "anthropic",
        extra_headers: Mapping[str, str] | None = None,
        missing_key_hint: str | None = None,
    ) -> None:
        if api_key is None and api_key_env:
            api_key = os.environ.get(api_key_env) or None
        headers = {"anthropic-version": API_VERSION, **(extra_headers or {})}
        if api_key:
            headers["x-api-key"] = api_key
        self.name = name
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._http = HttpClient(name, base_url.rstrip("/"), headers, settings or HttpSettings())
        # Said with a 401/403 when no key was sent: the variable is missing from the daemon's environment.
        self._http.auth_hint = None if api_key else missing_key_hint
        self._from_wire: dict[str, str] = {}  # tool names as sent -> as registered (MCP: server__tool)

    def __repr__(self) -> str:
        return f"AnthropicProvider(name={self.name!r}, model={self.model!r}, {self._http!r})"

    def build_body(self, req: ChatRequest) -> dict[str, Any]:
        """The JSON body for ``req``."""
        system = "\n\n".join(m.content or "" for m in req.messages if m.role == "system")
        body: dict[str, Any] = {
            "model": req.model or self.model,
            "max_tokens": req.max_tokens or self.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": _messages_out(m for m in req.messages if m.role != "system"),
            "stream": req.stream,
        }
        if system:
            body["system"] = system
        temperature = req.temperature if req.temperature is not None else self.temperature
        if temperature is not None:
            body["temperature"] = temperature
        if req.tools:
            body["tools"] = [
                {"name": self._to_wire(t.name), "description": t.description, "input_schema": t.parameters}
                for t in req.tools
            ]
        return body

    def complete(self, req: ChatRequest, *, on_delta: DeltaSink | None = None) -> ChatResponse:
        """Send ``req`` and return the whole answer (streamed pieces go to ``on_delta`` as they arrive)."""
        body = self.build_body(req)
        try:
            with self._http.open("/v1/messages", body, accept_sse=req.stream) as ex:
                if req.stream and ex.is_sse:
                    return self._read_stream(ex.events(), body["model"], on_delta)
                return self._parse(ex.json(), body["model"], on_delta)
        except LLMError as exc:
            raise exc.with_model(str(body["model"])) from None

    def _parse(self, data: Any, model: str, on_delta: DeltaSink | None) -> ChatResponse:
        if not isinstance(data, dict):
            raise LLMError(
                self.name, f"response is not a JSON object: {str(data)[:200]!r}", cause="malformed"
            )
        if data.get("type") == "error":
            raise LLMError(
                self.name, self._http.scrub(f"error in the response: {data.get('error')}"), cause="refused"
            )
        blocks = data.get("content")
        if not isinstance(blocks, list):
            raise LLMError(self.name, "response has no content blocks", cause="malformed")
        text: list[str] = []
        calls: list[ToolCall] = []
        for block in blocks:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                text.append(str(block.get("text", "")))
            elif block.get("type") == "tool_use":
                calls.append(self._tool_call(block.get("id"), block.get("name"), block.get("input")))
        content = "".join(text) if text else None
        if content and on_delta is not None:
            on_delta(content)
        usage: dict[str, Any] = data["usage"] if isinstance(data.get("usage"), dict) else {}
        return ChatResponse(
            content=content,
            tool_calls=calls,
            usage=Usage(
                prompt_tokens=int(usage.get("input_tokens") or 0),
                completion_tokens=int(usage.get("output_tokens") or 0),
            ),
            finish_reason=_stop(data.get("stop_reason"), calls),
            provider=self.name,
            model=str(data.get("model") or model),
        )

    def _tool_call(self, cid: Any, name: Any, args: Any) -> ToolCall:
        if not isinstance(name, str) or not name:
            raise LLMError(self.name, "tool_use block without a name")
        if not isinstance(args, dict):
            raise LLMError(self.name, f"tool_use {name!r} input is not a JSON object")
        name = self._from_wire.get(name, name)
        return ToolCall(id=str(cid or f"toolu_{name}"), name=name, arguments=args)

    def _to_wire(self, name: str) -> str:
        wire = wire_tool_name(name)
        if wire != name:
            self._from_wire[wire] = name
        return wire

    def _read_stream(self, events: Iterable[Any], model: str, on_delta: DeltaSink | None) -> ChatResponse:
        blocks: dict[int, dict[str, Any]] = {}
        prompt = completion = 0
        stop: Any = None
        for ev in events:
            try:
                data = json.loads(ev.data) if ev.data else {}
            except ValueError:
                raise LLMError(
                    self.name, f"malformed JSON in the stream: {ev.data[:200]!r}", cause="malformed"
                ) from None
            kind = data.get("type", ev.event) if isinstance(data, dict) else ev.event
            if kind == "error":
                err = data.get("error") or {}
                msg = err.get("message", err) if isinstance(err, dict) else err
                retry = isinstance(err, dict) and err.get("type") == "overloaded_error"
                raise LLMError(
                    self.name,
                    self._http.scrub(f"error in the stream: {msg}"),
                    retryable=retry,
                    cause="refused",
                )
            if kind == "message_start":
                msg = data.get("message") or {}
                model = str(msg.get("model") or model)
                prompt = int((msg.get("usage") or {}).get("input_tokens") or 0)
                completion = int((msg.get("usage") or {}).get("output_tokens") or 0)
            elif kind == "content_block_start":
                block = dict(data.get("content_block") or {})
                block["parts"] = [str(block.get("text", ""))] if block.get("type") == "text" else []
                blocks[int(data.get("index", len(blocks)))] = block
            elif kind == "content_block_delta":
                block = blocks.setdefault(int(data.get("index", 0)), {"type": "text", "parts": []})
                delta = data.get("delta") or {}
                if delta.get("type") == "text_delta":
                    block["parts"].append(str(delta.get("text", "")))
                    if on_delta is not None and delta.get("text"):
                        on_delta(str(delta["text"]))
                elif delta.get("type") == "input_json_delta":
                    block["parts"].append(str(delta.get("partial_json", "")))
            elif kind == "message_delta":
                stop = (data.get("delta") or {}).get("stop_reason") or stop
                completion = int((data.get("usage") or {}).get("output_tokens") or completion)
            elif kind == "message_stop":
                break
        text: list[str] = []
        calls: list[ToolCall] = []
        for _, block in sorted(blocks.items()):
            if block.get("type") == "text":
                text.append("".join(block["parts"]))
            elif block.get("type") == "tool_use":
                raw = "".join(block["parts"]).strip()
                try:
                    args = json.loads(raw) if raw else (block.get("input") or {})
                except ValueError as exc:
                    raise LLMError(
                        self.name, f"tool_use {block.get('name')!r} has malformed JSON input: {exc}"
                    ) from None
                calls.append(self._tool_call(block.get("id"), block.get("name"), args))
        return ChatResponse(
            content="".join(text) if text else None,
            tool_calls=calls,
            usage=Usage(prompt_tokens=prompt, completion_tokens=completion),
            finish_reason=_stop(stop, calls),
            provider=self.name,
            model=model,
        )


def _stop(reason: Any, calls: list[ToolCall]) -> str:
    if not reason:
        return "tool_calls" if calls else "stop"
    return _STOP.get(str(reason), str(reason))


def _messages_out(messages: Iterable[ChatMessage]) -> list[dict[str, Any]]:
    """Anthropic messages: tool results become user blocks; consecutive same-role messages are merged."""
    out: list[dict[str, Any]] = []
    for m in messages:
        blocks: list[dict[str, Any]] = []
        if m.role == "tool":
            role = "user"
            blocks.append({"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content or ""})
        else:
            role = m.role
            if m.content:
                blocks.append({"type": "text", "text": m.content})
            for tc in m.tool_calls:
                blocks.append(
                    {"type": "tool_use", "id": tc.id, "name": wire_tool_name(tc.name), "input": tc.arguments}
                )
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return out
