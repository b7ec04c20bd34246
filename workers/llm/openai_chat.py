"""OpenAI-compatible chat completions (``POST {base_url}/chat/completions``): OpenAI, vLLM, Ollama, llama.cpp.

``base_url`` includes the API version, as in the OpenAI SDK (``https://api.openai.com/v1``,
``http://127.0.0.1:11434/v1`` for Ollama). Tool calling uses ``tools=[{"type": "function", ...}]`` and
``tool_calls`` on assistant messages; streaming uses server-sent events of ``chat.completion.chunk`` objects,
whose tool-call fragments are stitched together by ``index``. A server that answers a streaming request
with plain JSON is accepted too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlencode

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

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIProvider:
    """A provider speaking the OpenAI chat-completions protocol."""

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
        name: str = "openai",
        extra_headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        missing_key_hint: str | None = None,
    ) -> None:
        if api_key is None and api_key_env:
            api_key = os.environ.get(api_key_env) or None
        headers = dict(extra_headers or {})
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.name = name
        self.model = model
        # Services that version their API in the URL (Azure's api-version) get it on every request.
        self._path = "/chat/completions" + (f"?{urlencode(dict(query))}" if query else "")
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._http = HttpClient(name, base_url.rstrip("/"), headers, settings or HttpSettings())
        # Said with a 401/403 when no key was sent: the variable is missing from the daemon's environment.
        self._http.auth_hint = None if api_key else missing_key_hint
        self._from_wire: dict[str, str] = {}  # tool names as sent -> as registered (MCP: server__tool)

    def __repr__(self) -> str:
        return f"OpenAIProvider(name={self.name!r}, model={self.model!r}, {self._http!r})"

    # ---- request -------------------------------------------------------------------------------------

    def build_body(self, req: ChatRequest) -> dict[str, Any]:
        """The JSON body for ``req`` (public so tests and tools can inspect what is sent)."""
        body: dict[str, Any] = {
            "model": req.model or self.model,
            "messages": [_message_out(m) for m in req.messages],
            "stream": req.stream,
        }
        temperature = req.temperature if req.temperature is not None else self.temperature
        if temperature is not None:
            body["temperature"] = temperature
        max_tokens = req.max_tokens if req.max_tokens is not None else self.max_tokens
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if req.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": self._to_wire(t.name),
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in req.tools
            ]
        if req.stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def complete(self, req: ChatRequest, *, on_delta: DeltaSink | None = None) -> ChatResponse:
        """Send ``req`` and return the whole answer (streamed pieces go to ``on_delta`` as they arrive)."""
        body = self.build_body(req)
        try:
            with self._http.open(self._path, body, accept_sse=req.stream) as ex:
                if req.stream and ex.is_sse:
                    return self._read_stream(ex.events(), body["model"], on_delta)
                return self._parse(ex.json(), body["model"], on_delta)
        except LLMError as exc:
            raise exc.with_model(str(body["model"])) from None

    # ---- response ------------------------------------------------------------------------------------

    def _parse(self, data: Any, model: str, on_delta: DeltaSink | None) -> ChatResponse:
        if not isinstance(data, dict):
            raise LLMError(
                self.name, f"response is not a JSON object: {str(data)[:200]!r}", cause="malformed"
            )
        if "error" in data:
            raise LLMError(
                self.name, self._http.scrub(f"error in the response: {data['error']}"), cause="refused"
            )
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise LLMError(self.name, "response has no choices", cause="malformed")
        msg = choices[0].get("message")
        if not isinstance(msg, dict):
            raise LLMError(self.name, "response choice has no message", cause="malformed")
        content = msg.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict)) or None
        if content is not None and not isinstance(content, str):
            raise LLMError(self.name, f"message content is not text: {type(content).__name__}")
        calls = [self._tool_call(tc) for tc in msg.get("tool_calls") or []]
        if content and on_delta is not None:
            on_delta(content)
        finish = choices[0].get("finish_reason") or ("tool_calls" if calls else "stop")
        return ChatResponse(
            content=content,
            tool_calls=calls,
            usage=_usage(data.get("usage")),
            finish_reason=_finish(str(finish)),
            provider=self.name,
            model=str(data.get("model") or model),
        )

    def _tool_call(self, tc: Any) -> ToolCall:
        if not isinstance(tc, dict) or not isinstance(tc.get("function"), dict):
            raise LLMError(self.name, f"malformed tool call: {str(tc)[:200]!r}")
        fn = tc["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise LLMError(self.name, f"tool call without a function name: {str(tc)[:200]!r}")
        name = self._from_wire.get(name, name)
        return ToolCall(id=str(tc.get("id") or f"call_{name}"), name=name, arguments=self._args(name, fn))

    def _to_wire(self, name: str) -> str:
        wire = wire_tool_name(name)
        if wire != name:
            self._from_wire[wire] = name
        return wire

    def _args(self, name: str, fn: Mapping[str, Any]) -> dict[str, Any]:
        raw = fn.get("arguments")
        if isinstance(raw, dict):  # Ollama sends an object, the OpenAI protocol a JSON string
            return raw
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return {}
        try:
            args = json.loads(raw)
        except (TypeError, ValueError) as exc:
            raise LLMError(self.name, f"tool call {name!r} has malformed JSON arguments: {exc}") from None
        if not isinstance(args, dict):
            raise LLMError(self.name, f"tool call {name!r} arguments are not a JSON object")
        return args

    def _read_stream(self, events: Iterable[Any], model: str, on_delta: DeltaSink | None) -> ChatResponse:
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish: str | None = None
        usage: Usage | None = None
        for ev in events:
            if ev.data.strip() == "[DONE]":
                break
            try:
                chunk = json.loads(ev.data)
            except ValueError:
                raise LLMError(
                    self.name, f"malformed JSON in the stream: {ev.data[:200]!r}", cause="malformed"
                ) from None
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk:
                raise LLMError(self.name, self._http.scrub(f"error in the stream: {chunk['error']}"))
            model = str(chunk.get("model") or model)
            if chunk.get("usage"):
                usage = _usage(chunk["usage"])
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                piece = delta.get("content")
                if isinstance(piece, str) and piece:
                    text.append(piece)
                    if on_delta is not None:
                        on_delta(piece)
                for frag in delta.get("tool_calls") or []:
                    _merge_call(calls, frag)
                if choice.get("finish_reason"):
                    finish = str(choice["finish_reason"])
        tool_calls = [
            self._tool_call({"id": c["id"], "function": {"name": c["name"], "arguments": "".join(c["args"])}})
            for _, c in sorted(calls.items())
        ]
        return ChatResponse(
            content="".join(text) if text else None,
            tool_calls=tool_calls,
            usage=usage or Usage(),
            finish_reason=_finish(finish or ("tool_calls" if tool_calls else "stop")),
            provider=self.name,
            model=model,
        )


def _merge_call(calls: dict[int, dict[str, Any]], frag: Mapping[str, Any]) -> None:
    """Add one streamed tool-call fragment; servers without ``index`` start a new call with each new id."""
    idx = frag.get("index")
    fid = frag.get("id")
    if not isinstance(idx, int):
        known = [i for i, c in calls.items() if c["id"] == fid]
        idx = known[0] if known else (len(calls) if fid or not calls else max(calls))
    call = calls.setdefault(idx, {"id": None, "name": None, "args": []})
    if fid:
        call["id"] = fid
    fn = frag.get("function") or {}
    if fn.get("name"):
        call["name"] = fn["name"]
    if isinstance(fn.get("arguments"), str):
        call["args"].append(fn["arguments"])
    elif isinstance(fn.get("arguments"), dict):
        call["args"] = [json.dumps(fn["arguments"])]


def _message_out(m: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.role == "assistant" and m.tool_calls:
        out["tool_calls"] = [
            {
                "id": tc.id,
                "type": "function",
                "function": {"name": wire_tool_name(tc.name), "arguments": json.dumps(tc.arguments)},
            }
            for tc in m.tool_calls
        ]
    if m.role == "tool":
        out["tool_call_id"] = m.tool_call_id
        if m.name:
            out["name"] = wire_tool_name(m.name)
    return out


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
    )


def _finish(reason: str) -> str:
    return "tool_calls" if reason == "function_call" else reason
