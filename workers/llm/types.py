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

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
# Receives each piece of text as a streaming provider produces it (called on the provider's thread).
DeltaSink = Callable[[str], None]


class LLMError(OpenFangError):
    """A model call failed: names the provider, the HTTP status (None when no answer) and the reason."""

    code = "llm_error"

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: str | None = None,
    ) -> None:
        self.provider = provider
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after  # the server's Retry-After header, when it sent one
        where = f"{provider} (HTTP {status})" if status is not None else provider
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall:
    """The model asks for tool ``name`` with ``arguments``; ``id`` pairs it with the tool's result."""

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


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

    @classmethod
    def system(cls, content: str) -> ChatMessage:
        return cls(role="system", content=content)

    @classmethod
    def user(cls, content: str) -> ChatMessage:
        return cls(role="user", content=content)

    @classmethod
    def assistant(cls, content: str | None, tool_calls: Sequence[ToolCall] = ()) -> ChatMessage:
        return cls(role="assistant", content=content, tool_calls=tuple(tool_calls))

    @classmethod
    def tool(cls, tool_call_id: str, content: str, name: str | None = None) -> ChatMessage:
        return cls(role="tool", content=content, tool_call_id=tool_call_id, name=name)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Tokens the provider counted (0 when it did not say)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatResponse:
    """What the model answered: text, tool calls, or both; and who answered."""

    content: str | None
    tool_calls: list[ToolCall]
    usage: Usage
    finish_reason: str
    provider: str
    model: str

    def to_message(self) -> ChatMessage:
        """The assistant message to append to the conversation."""
        return ChatMessage.assistant(self.content, self.tool_calls)


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
