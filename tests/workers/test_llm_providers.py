"""OpenAI-compatible and Anthropic providers against a real local HTTP server speaking each protocol."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import structlog

from openfang.workers.llm.providers import (
    AnthropicProvider,
    ChatMessage,
    ChatRequest,
    HttpSettings,
    LLMError,
    OpenAIProvider,
    ToolCall,
    ToolSpec,
)

pytestmark = pytest.mark.integration
KEY = "sk-test-9f8e7d6c5b4a"
FAST = HttpSettings(timeout_s=10.0, connect_timeout_s=5.0, max_retries=2, backoff_s=0.01, backoff_max_s=0.05)
WEATHER = ToolSpec(
    name="get_weather",
    description="Weather for a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


@dataclass
class Reply:
    """One scripted HTTP answer: JSON (or raw bytes), or server-sent events, after an optional delay."""

    status: int = 200
    body: Any = None
    events: list[str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    event_delay: float = 0.0


class FakeServer:
    """A real HTTP server on 127.0.0.1:0 answering POSTs from a queue of replies; records every request."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": json.loads(raw),
                    }
                )
                reply = (
                    outer.replies.popleft()
                    if outer.replies
                    else Reply(status=500, body={"error": "no reply"})
                )
                if reply.delay and outer.stop.wait(reply.delay):
                    return
                with contextlib.suppress(OSError):  # the client gave up (a timeout test)
                    self._answer(reply)

            def _answer(self, reply: Reply) -> None:
                if reply.events is not None:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Connection", "close")
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    for ev in reply.events:
                        self.wfile.write(ev.encode())
                        self.wfile.flush()
                        if reply.event_delay and outer.stop.wait(reply.event_delay):
                            return
                    self.close_connection = True
                    return
                data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    s = FakeServer()
    yield s
    s.close()


def sse(*objs: Any, done: bool = True) -> list[str]:
    out = [f"data: {json.dumps(o)}\n\n" for o in objs]
    return [*out, "data: [DONE]\n\n"] if done else out


def ask(text: str = "Hi", *, stream: bool = False, tools: tuple[ToolSpec, ...] = ()) -> ChatRequest:
    return ChatRequest(
        messages=[ChatMessage.system("Be brief."), ChatMessage.user(text)], tools=tools, stream=stream
    )


def openai(server: FakeServer, settings: HttpSettings = FAST) -> OpenAIProvider:
    return OpenAIProvider(
        model="gpt-test",
        base_url=server.url + "/v1",
        api_key=KEY,
        temperature=0.2,
        max_tokens=50,
        settings=settings,
    )


def anthropic(server: FakeServer, settings: HttpSettings = FAST) -> AnthropicProvider:
    return AnthropicProvider(model="claude-test", base_url=server.url, api_key=KEY, settings=settings)


def completion(
    content: str | None = "Hello!", tool_calls: list[Any] | None = None, finish: str = "stop"
) -> Any:
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-test-0613",
        "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


# ---- OpenAI-compatible -----------------------------------------------------------------------------------


def test_openai_plain_answer_sends_the_protocol_and_parses_text_and_usage(server: FakeServer) -> None:
    """A non-streaming call posts /v1/chat/completions with bearer auth and returns text, usage, model."""
    server.replies.append(Reply(body=completion()))
    resp = openai(server).complete(ask())
    assert (resp.content, resp.tool_calls, resp.finish_reason) == ("Hello!", [], "stop")
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (12, 3)
    assert (resp.provider, resp.model) == ("openai", "gpt-test-0613")
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == f"Bearer {KEY}"
    assert req["body"]["model"] == "gpt-test" and req["body"]["stream"] is False
    assert (req["body"]["temperature"], req["body"]["max_tokens"]) == (0.2, 50)
    assert req["body"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]


def test_openai_tool_call_is_parsed_and_tools_are_sent_as_functions(server: FakeServer) -> None:
    """Tools go out as type=function specs; a tool_calls answer comes back as ToolCall with parsed args."""
    call = {
        "id": "call_abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
    }
    server.replies.append(Reply(body=completion(None, [call], "tool_calls")))
    resp = openai(server).complete(ask("weather?", tools=(WEATHER,)))
    assert resp.content is None and resp.finish_reason == "tool_calls"
    assert resp.tool_calls == [ToolCall(id="call_abc", name="get_weather", arguments={"city": "Oslo"})]
    sent = server.requests[0]["body"]["tools"]
    assert sent == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": dict(WEATHER.parameters),
            },
        }
    ]


def test_openai_tool_results_are_sent_back_in_openai_shape(server: FakeServer) -> None:
    """An assistant tool call and its tool result are encoded with JSON-string arguments and tool_call_id."""
    server.replies.append(Reply(body=completion("It is sunny.")))
    call = ToolCall(id="call_1", name="get_weather", arguments={"city": "Oslo"})
    req = ChatRequest(
        messages=[
            ChatMessage.user("weather?"),
            ChatMessage.assistant(None, [call]),
            ChatMessage.tool("call_1", '{"sky": "sunny"}', name="get_weather"),
        ],
        tools=(WEATHER,),
    )
    assert openai(server).complete(req).content == "It is sunny."
    msgs = server.requests[0]["body"]["messages"]
    assert msgs[1]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        }
    ]
    assert msgs[2] == {
        "role": "tool",
        "content": '{"sky": "sunny"}',
        "tool_call_id": "call_1",
        "name": "get_weather",
    }


def test_openai_streaming_assembles_text_tool_calls_and_usage(server: FakeServer) -> None:
    """SSE chunks are stitched: text in order (also to on_delta), tool-call fragments by index, usage."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> Any:
        return {
            "object": "chat.completion.chunk",
            "model": "gpt-test",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    frag = [
        {
            "index": 0,
            "id": "call_9",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
        {"index": 0, "function": {"arguments": '{"ci'}},
        {"index": 0, "function": {"arguments": 'ty": "Rome"}'}},
    ]
    events = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me "}),
        chunk({"content": "check."}),
        *(chunk({"tool_calls": [f]}) for f in frag),
        chunk({}, "tool_calls"),
        {
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": 20, "completion_tokens": 9},
        },
    )
    server.replies.append(Reply(events=events))
    pieces: list[str] = []
    resp = openai(server).complete(ask(stream=True, tools=(WEATHER,)), on_delta=pieces.append)
    assert pieces == ["Let me ", "check."]
    assert resp.content == "Let me check."
    assert resp.tool_calls == [ToolCall(id="call_9", name="get_weather", arguments={"city": "Rome"})]
    assert (resp.finish_reason, resp.usage.prompt_tokens, resp.usage.completion_tokens) == (
        "tool_calls",
        20,
        9,
    )
    body = server.requests[0]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert server.requests[0]["headers"]["accept"] == "text/event-stream"


def test_openai_streaming_request_answered_with_plain_json_still_works(server: FakeServer) -> None:
    """A server that ignores stream=true and answers JSON is understood."""
    server.replies.append(Reply(body=completion("plain")))
    assert openai(server).complete(ask(stream=True)).content == "plain"


def test_openai_401_is_not_retried_and_names_provider_status_and_message(server: FakeServer) -> None:
    """A 401 fails at once with the server's own message, and never shows the key."""
    err_body = {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
    server.replies.append(Reply(status=401, body=err_body))
    with pytest.raises(LLMError) as info:
        openai(server).complete(ask())
    err = info.value
    assert err.code == "llm_error" and err.status == 401 and err.provider == "openai"
    assert re.search(
        r"openai model \S+ \(HTTP 401\): Incorrect API key provided \(invalid_request_error\)", str(err)
    )
    assert err.model and err.model in str(err)
    assert KEY not in str(err)
    assert len(server.requests) == 1


def test_openai_429_then_success_is_retried_with_backoff(server: FakeServer) -> None:
    """A 429 (with Retry-After) is retried and the next answer is returned; the key never reaches a log."""
    server.replies.append(
        Reply(status=429, body={"error": {"message": "Rate limit"}}, headers={"Retry-After": "0"})
    )
    server.replies.append(Reply(body=completion("after retry")))
    with structlog.testing.capture_logs() as logs:
        resp = openai(server).complete(ask())
    assert resp.content == "after retry"
    assert len(server.requests) == 2
    assert any(e["event"] == "llm_retry" and e["status"] == 429 for e in logs)
    assert KEY not in repr(logs)


def test_openai_persistent_500_gives_up_after_bounded_retries(server: FakeServer) -> None:
    """A 500 is retried max_retries times, then LLMError with status 500 and the server's message."""
    for _ in range(3):
        server.replies.append(Reply(status=500, body={"error": {"message": "upstream exploded"}}))
    with pytest.raises(LLMError, match=r"HTTP 500.*upstream exploded") as info:
        openai(server).complete(ask())
    assert info.value.retryable and len(server.requests) == 3


def test_openai_malformed_json_body_is_an_llm_error(server: FakeServer) -> None:
    """A 200 with a body that is not JSON fails clearly, without retrying."""
    server.replies.append(Reply(body=b'{"choices": [ oops'))
    with pytest.raises(LLMError, match="malformed JSON"):
        openai(server).complete(ask())
    assert len(server.requests) == 1


def test_openai_malformed_tool_arguments_name_the_tool(server: FakeServer) -> None:
    """Tool-call arguments that are not JSON fail with the tool's name."""
    call = {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{city: Oslo"}}
    server.replies.append(Reply(body=completion(None, [call], "tool_calls")))
    with pytest.raises(LLMError, match="'get_weather' has malformed JSON arguments"):
        openai(server).complete(ask(tools=(WEATHER,)))


def test_openai_slow_server_times_out(server: FakeServer) -> None:
    """A server slower than the timeout gives LLMError 'timed out' (retries stay inside the deadline)."""
    server.replies.extend([Reply(body=completion(), delay=30.0) for _ in range(3)])
    slow = HttpSettings(timeout_s=0.5, connect_timeout_s=0.5, max_retries=2, backoff_s=0.01)
    with pytest.raises(LLMError, match="timed out"):
        openai(server, slow).complete(ask())


def test_openai_trickling_stream_is_cut_at_the_deadline(server: FakeServer) -> None:
    """A stream that keeps sending slowly cannot outlive timeout_s."""
    chunk = {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}
    server.replies.append(Reply(events=sse(*[chunk] * 100), event_delay=0.1))
    pieces: list[str] = []
    with pytest.raises(LLMError, match="timed out"):
        openai(server, HttpSettings(timeout_s=0.6, max_retries=0)).complete(
            ask(stream=True), on_delta=pieces.append
        )
    assert 0 < len(pieces) < 100


def test_openai_error_inside_the_stream_is_raised(server: FakeServer) -> None:
    """An error object sent mid-stream becomes an LLMError."""
    server.replies.append(Reply(events=sse({"error": {"message": "context length exceeded"}}, done=False)))
    with pytest.raises(LLMError, match="context length exceeded"):
        openai(server).complete(ask(stream=True))


def test_openai_connection_refused_is_a_retryable_llm_error() -> None:
    """Nothing listening: LLMError 'connection failed' after the bounded retries."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = OpenAIProvider(model="m", base_url=f"http://127.0.0.1:{port}/v1", settings=FAST)
    with pytest.raises(LLMError, match="connection failed") as info:
        p.complete(ask())
    assert info.value.retryable and info.value.status is None


def test_openai_key_is_absent_from_repr() -> None:
    """repr() of a provider shows the endpoint but never the key."""
    p = OpenAIProvider(model="m", base_url="http://127.0.0.1:9/v1", api_key=KEY)
    assert KEY not in repr(p) and "127.0.0.1" in repr(p)


# ---- Anthropic ---------------------------------------------------------------------------------------------


def message(blocks: list[Any], stop: str = "end_turn") -> Any:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test-2025",
        "content": blocks,
        "stop_reason": stop,
        "usage": {"input_tokens": 30, "output_tokens": 7},
    }


def test_anthropic_call_sends_messages_protocol_and_parses_text_and_tool_use(server: FakeServer) -> None:
    """/v1/messages gets x-api-key, version, top-level system, max_tokens, input_schema; tool_use parsed."""
    blocks = [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    server.replies.append(Reply(body=message(blocks, "tool_use")))
    resp = anthropic(server).complete(ask("weather?", tools=(WEATHER,)))
    assert resp.content == "Checking." and resp.finish_reason == "tool_calls"
    assert resp.tool_calls == [ToolCall(id="toolu_1", name="get_weather", arguments={"city": "Paris"})]
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.model) == (30, 7, "claude-test-2025")
    req = server.requests[0]
    assert req["path"] == "/v1/messages"
    assert req["headers"]["x-api-key"] == KEY and req["headers"]["anthropic-version"] == "2023-06-01"
    body = req["body"]
    assert body["system"] == "Be brief." and body["max_tokens"] == 1024
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "weather?"}]}]
    assert body["tools"] == [
        {"name": "get_weather", "description": "Weather for a city", "input_schema": dict(WEATHER.parameters)}
    ]


def test_anthropic_tool_results_become_user_tool_result_blocks(server: FakeServer) -> None:
    """Tool results go in a user message as tool_result blocks; consecutive ones are merged."""
    server.replies.append(Reply(body=message([{"type": "text", "text": "Both sunny."}])))
    calls = [
        ToolCall(id="t1", name="get_weather", arguments={"city": "A"}),
        ToolCall(id="t2", name="get_weather", arguments={"city": "B"}),
    ]
    req = ChatRequest(
        messages=[
            ChatMessage.user("weather in A and B?"),
            ChatMessage.assistant("Looking.", calls),
            ChatMessage.tool("t1", "sunny"),
            ChatMessage.tool("t2", "sunny too"),
        ]
    )
    assert anthropic(server).complete(req).content == "Both sunny."
    msgs = server.requests[0]["body"]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[1]["content"][1] == {
        "type": "tool_use",
        "id": "t1",
        "name": "get_weather",
        "input": {"city": "A"},
    }
    assert msgs[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "t2", "content": "sunny too"},
    ]


def test_anthropic_streaming_assembles_text_and_tool_input(server: FakeServer) -> None:
    """message_start/content_block_*/message_delta events give text, tool input JSON and usage."""

    def ev(kind: str, **data: Any) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

    events = [
        ev(
            "message_start",
            message={"model": "claude-test", "usage": {"input_tokens": 40, "output_tokens": 1}},
        ),
        ev("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        ": keep-alive comment\n\n",
        ev("ping"),
        ev("content_block_delta", index=0, delta={"type": "text_delta", "text": "On "}),
        ev("content_block_delta", index=0, delta={"type": "text_delta", "text": "it."}),
        ev("content_block_stop", index=0),
        ev(
            "content_block_start",
            index=1,
            content_block={"type": "tool_use", "id": "toolu_7", "name": "get_weather", "input": {}},
        ),
        ev("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '{"city": '}),
        ev("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '"Lima"}'}),
        ev("content_block_stop", index=1),
        ev("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 15}),
        ev("message_stop"),
    ]
    server.replies.append(Reply(events=events))
    pieces: list[str] = []
    resp = anthropic(server).complete(ask(stream=True, tools=(WEATHER,)), on_delta=pieces.append)
    assert pieces == ["On ", "it."] and resp.content == "On it."
    assert resp.tool_calls == [ToolCall(id="toolu_7", name="get_weather", arguments={"city": "Lima"})]
    assert (resp.finish_reason, resp.usage.prompt_tokens, resp.usage.completion_tokens) == (
        "tool_calls",
        40,
        15,
    )
    assert server.requests[0]["body"]["stream"] is True


def test_anthropic_overloaded_529_is_retried(server: FakeServer) -> None:
    """Anthropic's 529 overloaded is retried like a 503."""
    server.replies.append(
        Reply(
            status=529, body={"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        )
    )
    server.replies.append(Reply(body=message([{"type": "text", "text": "ok"}])))
    assert anthropic(server).complete(ask()).content == "ok"
    assert len(server.requests) == 2


def test_anthropic_error_body_names_type_and_message(server: FakeServer) -> None:
    """A 400 error body's message and type reach the LLMError."""
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too large"}}
    server.replies.append(Reply(status=400, body=body))
    with pytest.raises(
        LLMError, match=r"anthropic model \S+ \(HTTP 400\): max_tokens: too large \(invalid_request_error\)"
    ):
        anthropic(server).complete(ask())


def test_anthropic_error_event_in_stream_is_raised(server: FakeServer) -> None:
    """An error event mid-stream becomes an LLMError."""
    events = ['event: error\ndata: {"type": "error", "error": {"type": "api_error", "message": "boom"}}\n\n']
    server.replies.append(Reply(events=events))
    with pytest.raises(LLMError, match="boom"):
        anthropic(server).complete(ask(stream=True))


def test_providers_serve_concurrent_calls_from_threads(server: FakeServer) -> None:
    """One provider object answers calls from several threads at once (the agent host's use)."""
    for i in range(8):
        server.replies.append(Reply(body=completion(f"a{i}")))
    p = openai(server)
    out: list[str] = []
    threads = [threading.Thread(target=lambda: out.append(p.complete(ask()).content or "")) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(out) == sorted(f"a{i}" for i in range(8))


def test_a_key_echoed_by_the_server_is_blanked_in_the_error(server: FakeServer) -> None:
    """If an error body repeats the API key, the LLMError shows *** instead."""
    server.replies.append(Reply(status=403, body={"error": {"message": f"key {KEY} is revoked"}}))
    with pytest.raises(LLMError, match=r"key \*\*\* is revoked") as info:
        anthropic(server).complete(ask())
    assert KEY not in str(info.value)


def test_openai_sse_with_crlf_lines_and_multiline_data_is_parsed(server: FakeServer) -> None:
    """CRLF line ends, 'data:' without a space and a stream without [DONE] are all understood."""
    chunk = {"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]}
    events = [f"data:{json.dumps(chunk)}\r\n\r\n", ": ping\r\n\r\n"]
    server.replies.append(Reply(events=events))
    resp = openai(server).complete(ask(stream=True))
    assert (resp.content, resp.finish_reason) == ("ok", "stop")


def test_openai_content_parts_are_joined(server: FakeServer) -> None:
    """A message whose content is a list of text parts is read as their text."""
    body = completion(None)
    body["choices"][0]["message"]["content"] = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    server.replies.append(Reply(body=body))
    assert openai(server).complete(ask()).content == "ab"


def test_openai_dotted_mcp_tool_names_go_out_as_double_underscore_and_come_back(server: FakeServer) -> None:
    """`server.tool` (an MCP tool) is sent as `server__tool` (OpenAI's name rule) and its call maps back."""
    echo = ToolSpec(name="everything.echo", description="Echo", parameters={"type": "object"})
    call = {"id": "c1", "type": "function", "function": {"name": "everything__echo", "arguments": "{}"}}
    server.replies.append(Reply(body=completion(None, [call], "tool_calls")))
    resp = openai(server).complete(ask("echo", tools=(echo,)))
    assert server.requests[0]["body"]["tools"][0]["function"]["name"] == "everything__echo"
    assert resp.tool_calls == [ToolCall(id="c1", name="everything.echo", arguments={})]
