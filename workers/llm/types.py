"""The values every LLM provider speaks: messages, tool specs, requests, responses, and :class:`LLMError`.

These are provider-neutral. Each provider translates them to its wire format at one boundary and
translates every failure (HTTP status, socket error, malformed body) into :class:`LLMError` there, so
callers handle one error type. ``finish_reason`` is normalised to OpenAI's vocabulary: ``stop``,
``tool_calls``, ``length`` (or the provider's own word when it has no equivalent).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from openfang.protocol.errors import OpenFangError
from openfang.protocol.twin import construction_twin

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
# Receives each piece of text as a streaming provider produces it (called on the provider's thread).
DeltaSink = Callable[[str], None]


class LLMError(OpenFangError):
    """A model call failed: names the provider, the model, the HTTP status or the cause, and the fallbacks.

    ``cause`` is one word for programs: ``http_status`` (the server answered ``status``), ``timeout``,
    ``connection``, ``malformed`` (not JSON, or JSON without what the protocol requires), ``refused``
    (an error object in a 2xx answer), ``config`` or ``error``. ``attempts`` lists the failure of each
    provider of a fallback chain, in order (empty for a single provider). On the wire the error body carries
    :meth:`details` as ``llm``.
    """

    code = "llm_error"

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: str | None = None,
        model: str | None = None,
        cause: str | None = None,
        attempts: Sequence[LLMError] = (),
    ) -> None:
        self.provider = provider
        self.reason = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after  # the server's Retry-After header, when it sent one
        self.model = model
        self.cause = cause or ("http_status" if status is not None else "error")
        self.attempts = tuple(attempts)
        super().__init__(self._compose())

    @property
    def fallback_tried(self) -> bool:
        return len(self.attempts) > 1

    def summary(self) -> str:
        """``provider model M (HTTP s): reason``, without the fallback part."""
        who = self.provider + (f" model {self.model}" if self.model else "")
        where = f"{who} (HTTP {self.status})" if self.status is not None else who
        return f"{where}: {self.reason}"

    def _compose(self) -> str:
        if self.attempts:
            failures = "; ".join(a.summary() for a in self.attempts)
            n = len(self.attempts)
            return f"{self.provider}: every provider failed (fallback tried, {n} in all): {failures}"
        return self.summary()

    def with_model(self, model: str) -> LLMError:
        """This error, naming ``model`` unless it names one already (providers add it at their boundary)."""
        if self.model is None and not self.attempts:
            self.model = model
            self.message = self._compose()
            self.args = (self.message,)
        return self

    def details(self) -> dict[str, Any]:
        """The structured error: provider, model, status, cause, reason, fallback_tried, attempts."""
        out: dict[str, Any] = {
            "provider": self.provider,
            "model": self.model,
            "status": self.status,
            "cause": self.cause,
            "reason": self.reason,
            "fallback_tried": self.fallback_tried,
        }
        if self.attempts:
            out["attempts"] = [
                {k: v for k, v in a.details().items() if k not in ("attempts", "fallback_tried")}
                for a in self.attempts
            ]
        return out

    def to_wire(self) -> dict[str, Any]:
        wire = super().to_wire()
        wire["llm"] = self.details()
        return wire


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall:
    """The model asks for tool ``name`` with ``arguments``; ``id`` pairs it with the tool's result."""

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, id: str, name: str, arguments: dict[str, Any]) -> ToolCall:
        """``ToolCall(id=..., name=..., arguments=...)`` built without __init__ (same value): the scripted
        model makes one per tool call and the host's chat conversion one per call it converts."""
        if cls is not ToolCall:
            return cls(id=id, name=name, arguments=arguments)
        call = _CALL()
        call.id = id
        call.name = name
        call.arguments = arguments
        call.__class__ = ToolCall
        return call  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatMessage:
    """One message of a conversation. A ``tool`` message carries a result and the ``tool_call_id``."""

    role: Role
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None  # the tool's name on a tool message (Ollama and older servers want it)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))  # accept a list, stay immutable
        if self.role not in ROLES:
            raise ValueError(f"ChatMessage.role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")

    # The factories build the message without __init__ (``_message``): their role is valid by construction
    # and ``tool`` checks its tool_call_id as __post_init__ would, so the result is the same value.
    @classmethod
    def system(cls, content: str) -> ChatMessage:
        if cls is not ChatMessage:
            return cls(role="system", content=content)
        return _message("system", content, (), None, None)

    @classmethod
    def user(cls, content: str) -> ChatMessage:
        if cls is not ChatMessage:
            return cls(role="user", content=content)
        return _message("user", content, (), None, None)

    @classmethod
    def assistant(cls, content: str | None, tool_calls: Sequence[ToolCall] = ()) -> ChatMessage:
        if cls is not ChatMessage:
            return cls(role="assistant", content=content, tool_calls=tuple(tool_calls))
        return _message("assistant", content, tuple(tool_calls), None, None)

    @classmethod
    def tool(cls, tool_call_id: str, content: str, name: str | None = None) -> ChatMessage:
        if cls is not ChatMessage or not tool_call_id:  # __init__ names the missing tool_call_id
            return cls(role="tool", content=content, tool_call_id=tool_call_id, name=name)
        return _message("tool", content, (), tool_call_id, name)


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolSpec:
    """A tool as the model sees it: name, description, and the JSON schema of its arguments."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatRequest:
    """One model call. ``model``/``temperature``/``max_tokens`` of None mean the provider's configured one."""

    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...] = ()
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stream: bool = False

    def __post_init__(self) -> None:
        # Accept lists from callers but keep the request immutable.
        object.__setattr__(self, "messages", tuple(self.messages))
        object.__setattr__(self, "tools", tuple(self.tools))

    @classmethod
    def of(
        cls, messages: tuple[ChatMessage, ...], tools: tuple[ToolSpec, ...] = (), *, stream: bool = False
    ) -> ChatRequest:
        """``ChatRequest(messages=..., tools=..., stream=...)`` from tuples, built without __init__ (the
        host's per-call request: nothing to convert, nothing to check)."""
        if cls is not ChatRequest or type(messages) is not tuple or type(tools) is not tuple:
            return cls(messages=messages, tools=tools, stream=stream)
        req = _REQUEST()
        req.messages = messages
        req.tools = tools
        req.model = req.temperature = req.max_tokens = None
        req.stream = stream
        req.__class__ = ChatRequest
        return req  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Tokens the provider counted (0 when it did not say)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        """``Usage(prompt_tokens=..., completion_tokens=...)`` built without __init__ (same value)."""
        if cls is not Usage:
            return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        usage = _USAGE()
        usage.prompt_tokens = prompt_tokens
        usage.completion_tokens = completion_tokens
        usage.__class__ = Usage
        return usage  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatResponse:
    """What the model answered: text, tool calls, or both; and who answered."""

    content: str | None
    tool_calls: list[ToolCall]
    usage: Usage
    finish_reason: str
    provider: str
    model: str
    # The providers of a fallback chain that failed before this one answered (for the worker's figures).
    failed: tuple[LLMError, ...] = ()

    def to_message(self) -> ChatMessage:
        """The assistant message to append to the conversation."""
        return ChatMessage.assistant(self.content, self.tool_calls)

    @classmethod
    def of(
        cls,
        content: str | None,
        tool_calls: list[ToolCall],
        usage: Usage,
        finish_reason: str,
        provider: str,
        model: str,
    ) -> ChatResponse:
        """``ChatResponse(...)`` of these fields (``failed`` empty), built without __init__ (same value)."""
        if cls is not ChatResponse:
            return cls(
                content=content,
                tool_calls=tool_calls,
                usage=usage,
                finish_reason=finish_reason,
                provider=provider,
                model=model,
            )
        resp = _RESPONSE()
        resp.content = content
        resp.tool_calls = tool_calls
        resp.usage = usage
        resp.finish_reason = finish_reason
        resp.provider = provider
        resp.model = model
        resp.failed = ()
        resp.__class__ = ChatResponse
        return resp  # type: ignore[no-any-return]


# -- construction without __init__ ---------------------------------------------------------------------------
# A frozen dataclass's __init__ sets each field through object.__setattr__ and then runs __post_init__:
# ~1.5 us for a ChatMessage, paid several times per model call on the host's hot path. The factories above
# build the value on a plain twin class with the same slots (plain attribute stores: no call per field) and
# then make it the frozen class by assigning ``__class__``, which CPython allows only between classes of
# the same layout (the same slot names, each at the same offset) and refuses with TypeError otherwise
# (~0.18 us for a ChatRequest, against ~0.53 with the slot descriptors' ``__set__`` and ~1.5 with
# __init__). The values are valid by construction; tests/workers/test_llm_types.py checks each factory
# against __init__ field by field.


_CALL = construction_twin(ToolCall, ("id", "name", "arguments"))
_MESSAGE = construction_twin(ChatMessage, ("role", "content", "tool_calls", "tool_call_id", "name"))
_REQUEST = construction_twin(
    ChatRequest, ("messages", "tools", "model", "temperature", "max_tokens", "stream")
)
_USAGE = construction_twin(Usage, ("prompt_tokens", "completion_tokens"))
_RESPONSE = construction_twin(
    ChatResponse, ("content", "tool_calls", "usage", "finish_reason", "provider", "model", "failed")
)


def _message(
    role: str,
    content: str | None,
    tool_calls: tuple[ToolCall, ...],
    tool_call_id: str | None,
    name: str | None,
) -> ChatMessage:
    msg = _MESSAGE()
    msg.role = role
    msg.content = content
    msg.tool_calls = tool_calls
    msg.tool_call_id = tool_call_id
    msg.name = name
    msg.__class__ = ChatMessage
    return msg  # type: ignore[no-any-return]


@runtime_checkable
class Provider(Protocol):
    """Anything that answers a chat request. ``complete`` blocks; the agent host runs it in a thread.

    Implementations must be safe to call from several threads at once and raise only :class:`LLMError`
    (or another :class:`OpenFangError`) for failures. ``on_delta`` receives streamed text as it arrives.
    """

    name: str
    blocking: bool  # False only for instant, I/O-free providers (the host may then call them inline)

    def complete(self, req: ChatRequest, *, on_delta: DeltaSink | None = None) -> ChatResponse: ...


def wire_tool_name(name: str) -> str:
    """A tool name as OpenAI and Anthropic accept it (``[A-Za-z0-9_-]``): ``server.tool`` -> ``server__tool``.

    Providers remember the names they sent (``build_body``) to map a tool call's name back exactly.
    """
    return name.replace(".", "__")
