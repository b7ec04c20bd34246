"""Host-side work behind parking host calls: LLM completions and tool calls, run off the wasm thread.

A job runs in a small thread pool (threads never touch wasmtime: they get plain Python values and return
bytes); completion is signalled on a pipe whose read end is the host's ``wakeup_fd``. Providers or tools
that declare ``blocking = False`` (instant, no I/O: the scripted provider, ``time_now``) run inline on the
host thread, which saves a thread hand-off per call.
"""

from __future__ import annotations

import bisect
import contextlib
import contextvars
import functools
import json
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from openfang.protocol.errors import OpenFangError
from openfang.workers.sandbox import guest_abi as abi

log = structlog.get_logger("openfang.workers.jobs")


class ThreadJob:
    """A job whose fields are written once by the thread that runs it, then ``done`` is set."""

    __slots__ = ("agent_id", "code", "done", "entry", "error", "usage", "value")

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.done = False
        self.code = abi.E_FAILED
        self.value = b""
        self.usage: dict[str, int] = {}
        self.error: OpenFangError | None = None  # what failed the job, for the message's error reply
        # A conversation entry the result holds and the messages it is the JSON of (Sandbox.seed).
        self.entry: tuple[bytes, list[dict[str, Any]]] | None = None

    def set_entry(self, entry: bytes, messages: list[dict[str, Any]]) -> None:
        """Called by the work before it returns (so before ``done``): see :meth:`Sandbox.seed`."""
        self.entry = (entry, messages)

    def finish(
        self,
        code: int,
        value: bytes,
        usage: dict[str, int] | None = None,
        error: OpenFangError | None = None,
    ) -> None:
        self.code, self.value, self.error = code, value, error
        if usage:
            self.usage = usage
        self.done = True


class JobRunner:
    """Thread pool + wakeup pipe. ``completed`` holds agent ids whose job finished since the last drain."""

    def __init__(self, max_threads: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="agent-io")
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self.completed: deque[str] = deque()
        self.closed = False

    def fileno(self) -> int:
        return self._rfd

    def run(
        self, job: ThreadJob, work: Callable[[], tuple[int, bytes, dict[str, int]]], *, inline: bool
    ) -> None:
        """Run ``work`` for ``job``: inline (now, on this thread) or in the pool with a wakeup when done.

        The work runs in a copy of this thread's logging context with ``agent_id`` bound, so whatever it
        logs (``llm_retry``, ``llm_fallback``, a crash) names the worker and the agent.
        """
        ctx = contextvars.copy_context()
        if inline:  # bound and run in one ctx.run: the binding lives in the copy only, as below
            ctx.run(_bound_run, job, work)
            return
        ctx.run(_agent_id_var().set, job.agent_id)  # = bind_contextvars(agent_id=...) in ctx, no frame

        def task() -> None:
            job.finish(*ctx.run(_guarded, work))
            with self._lock:
                self.completed.append(job.agent_id)
            # A full pipe already holds wakeups: the host drains `completed` anyway.
            with contextlib.suppress(BlockingIOError):
                os.write(self._wfd, b"x")

        self._pool.submit(task)

    def poke(self) -> None:
        """Wake the host's loop (from any thread) without a finished job: it has host calls to run."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wfd, b"x")

    def drain(self, *, woken: bool = True) -> list[str]:
        """The agents whose job finished since the last drain. ``woken=False``: the caller polled the wakeup
        pipe (:meth:`fileno`) and it was not readable, so it is not read (an empty read is a system call and
        a BlockingIOError, ~6 us a loop turn measured); a byte written since stays and wakes the next poll."""
        if woken:
            try:
                while os.read(self._rfd, 4096):
                    pass
            except BlockingIOError:
                pass
        if not self.completed:  # appended before its wakeup byte is written: a later poll sees that byte
            return []
        with self._lock:
            done = list(self.completed)
            self.completed.clear()
        return done

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        os.close(self._rfd)
        os.close(self._wfd)


@functools.cache
def _agent_id_var() -> contextvars.ContextVar[Any]:
    """The ContextVar ``structlog.contextvars.bind_contextvars(agent_id=...)`` sets (found by binding once in
    an empty context: the token names its variable)."""
    tokens = contextvars.Context().run(structlog.contextvars.bind_contextvars, agent_id=None)
    return tokens["agent_id"].var


def _bound_run(job: ThreadJob, work: Callable[[], tuple[int, bytes, dict[str, int]]]) -> None:
    """In a copied context: bind ``agent_id`` (as ``bind_contextvars`` does), run the work, finish the job
    (``job.finish(*_guarded(work))`` without its tuple of four in between)."""
    _agent_id_var().set(job.agent_id)
    try:
        code, value, usage = work()
    except Exception as exc:
        job.finish(*_failure(exc))
        return
    job.finish(code, value, usage, None)


def _guarded(
    work: Callable[[], tuple[int, bytes, dict[str, int]]],
) -> tuple[int, bytes, dict[str, int], OpenFangError | None]:
    """(code, value, usage, error): a failure becomes E_FAILED with its message for the guest (host_result)
    and the error itself for the host (an LLM failure is what the message's error reply reports)."""
    try:
        return (*work(), None)
    except Exception as exc:
        return _failure(exc)


def _failure(exc: Exception) -> tuple[int, bytes, dict[str, int], OpenFangError | None]:
    """What :func:`_guarded` makes of the work's exception ``exc``."""
    if isinstance(exc, OpenFangError):
        return abi.E_FAILED, exc.message.encode(), {}, exc
    log.warning("host_job_crashed", error=repr(exc))
    return abi.E_FAILED, f"internal error: {type(exc).__name__}".encode(), {}, None


# -- LLM ---------------------------------------------------------------------------------------------------


_OTHER, _TOOL, _CALLS = (
    0,
    1,
    2,
)  # a conversation entry's kind for _well_formed: other, tool result, tool calls


def _kind(m: Mapping[str, Any]) -> int:
    role = m.get("role")
    if role == "tool":
        return _TOOL
    return _CALLS if role == "assistant" and m.get("tool_calls") else _OTHER


class ChatCache:
    """ChatMessage objects for conversation entries, reused while the same entry stays in the window.

    The model sees the newest ``history_messages`` entries, so from one call to the next the window mostly
    slides: it drops a few entries at the front and gains a few at the end. The cache keeps the last window,
    each entry's kind (what :func:`_well_formed` looks at) and its message, and the kept messages with
    their positions (numbered from the conversation's start, so a slide renumbers nothing). When the new
    window starts inside the last one and holds all of its rest, only the entries that are new, the last
    one's (its successor decides whether it stays) and the front cut are looked at: the rest of the kept
    list is a slice of the last one. Any other window is converted afresh, reusing messages by entry.
    The same messages as converting :func:`_well_formed` of the window
    (``tests/workers/test_host_chat_cache.py``).
    """

    def __init__(self) -> None:
        self._window: list[dict[str, Any]] = []  # the last window (holding its entries keeps their ids)
        self._kinds: list[int] = []
        self._chats: list[Any] = []  # per entry: its ChatMessage, None until it was kept once
        self._base = 0  # the position of the window's first entry
        self._out: list[Any] = []  # the kept messages, and their positions below
        self._pos: list[int] = []

    def convert(self, messages: list[dict[str, Any]]) -> list[Any]:
        prev, n = self._window, len(messages)
        if n == 1:  # one entry (an agent without conversation memory): kept unless a result or a call
            return self._one(messages[0], prev)
        overlap = 0
        if prev and messages:
            m0 = messages[0]
            if m0 in prev:  # identity first, else an equal entry (the same message); no ValueError to raise
                k = prev.index(m0)
                overlap = len(prev) - k
                if overlap > n or messages[:overlap] != prev[k:]:
                    overlap = 0
        if overlap:
            base = self._base + k
            kinds = self._kinds[k:]
            kinds.extend(map(_kind, messages[overlap:]))
            chats = self._chats[k:]
            chats.extend([None] * (n - overlap))
        else:
            base = self._base + len(prev) + 1
            kinds = list(map(_kind, messages))
            if prev:
                old = {id(m): c for m, c in zip(prev, self._chats, strict=True) if c is not None}
                chats = [old.get(id(m)) for m in messages]
            else:
                chats = [None] * n
        start = 0
        while start < n and kinds[start] == _TOOL:
            start += 1  # the history window cut these results off from their tool-call message
        if overlap >= 2 and start <= overlap - 2:
            # Entries before the last window's last one keep their successor: kept as they were.
            lo = bisect.bisect_left(self._pos, base + start)
            hi = bisect.bisect_left(self._pos, base + overlap - 1)
            out, pos, first = self._out[lo:hi], self._pos[lo:hi], overlap - 1
        else:
            out, pos, first = [], [], start
        t = None
        last = n - 1
        for j in range(first, n):
            if kinds[j] == _CALLS and (j == last or kinds[j + 1] != _TOOL):
                continue  # tool calls whose results never came (a failed message)
            chat = chats[j]
            if chat is None:
                if t is None:
                    t = _llm_types()
                chat = chats[j] = _to_chat(t, messages[j])
            out.append(chat)
            pos.append(base + j)
        self._window, self._kinds, self._chats, self._base = list(messages), kinds, chats, base
        self._out, self._pos = out, pos
        return list(out)

    def _one(self, m: dict[str, Any], prev: list[dict[str, Any]]) -> list[Any]:
        kind = _kind(m)
        base = self._base + len(prev) + 1
        chat = None
        if kind == _OTHER:
            if prev and prev[-1] is m:
                chat = self._chats[-1]
            if chat is None:
                chat = _to_chat(_llm_types(), m)
        self._window, self._kinds, self._chats, self._base = [m], [kind], [chat], base
        self._out, self._pos = ([chat], [base]) if chat is not None else ([], [])
        return [chat] if chat is not None else []


@functools.cache
def _llm_types() -> Any:
    from openfang.workers.llm import types as t

    return t


class ModelCall:
    """The job body of an agent's ``llm_invoke`` calls (:meth:`run`): build the ChatRequest, complete it,
    encode the guest's result. What stays the same from call to call of one agent is bound once (the host
    keeps one per agent in its model plan); a call passes its messages and sinks.

    ``content_filter`` sees the model's text before it joins the conversation (injection, redaction); it
    may return a changed text or raise OpenFangError to fail the call. ``stream`` asks the provider to
    stream; ``on_usage`` gets every answer the provider gave and the call's duration in ms (before the
    content filter: the tokens were spent even when the filter refuses the text); ``on_error`` gets the
    provider's failure and the call's duration in seconds (the error is raised on as before).
    """

    __slots__ = (
        "_filter",
        "_on_error",
        "_on_usage",
        "_provider",
        "_request_of",
        "_specs",
        "_stream",
        "_system",
    )

    def __init__(
        self,
        provider: Any,
        system_prompt: str,
        tool_specs: Sequence[Any],
        content_filter: Callable[[str], str] | None = None,
        *,
        stream: bool = False,
        on_usage: Callable[[Any, float], None] | None = None,
        on_error: Callable[[OpenFangError, float], None] | None = None,
    ) -> None:
        self._provider = provider
        self._request_of = _llm_types().ChatRequest.of
        self._system = _system_message(system_prompt) if system_prompt else None
        self._specs = tool_specs if type(tool_specs) is tuple else tuple(tool_specs)
        self._filter = content_filter
        self._stream = stream
        self._on_usage = on_usage
        self._on_error = on_error

    def run(
        self,
        chat_messages: Sequence[Any],
        on_delta: Callable[[str], None] | None = None,
        on_entry: Callable[[bytes, list[dict[str, Any]]], None] | None = None,
    ) -> tuple[int, bytes, dict[str, int]]:
        """One call: ``chat_messages`` to the model, its answer filtered and encoded for the guest.

        ``on_delta`` gets the pieces of text as they come (a streamed reply's chunks; the call streams when
        it is given); ``on_entry`` gets the assistant message's JSON (the conversation entry the guest
        appends) and the message, when its round trip is exact."""
        system = self._system
        chat = (system, *chat_messages) if system is not None else tuple(chat_messages)
        provider = self._provider
        request = self._request_of(chat, self._specs, stream=self._stream or on_delta is not None)
        started = _perf()
        try:
            resp = provider.complete(request, on_delta=on_delta) if on_delta else provider.complete(request)
        except OpenFangError as exc:
            if self._on_error is not None:
                self._on_error(exc, _perf() - started)
            raise
        if self._on_usage is not None:
            self._on_usage(resp, (_perf() - started) * 1000)
        usage = resp.usage
        counted = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
        content = resp.content
        if content and self._filter is not None:
            content = self._filter(content)
        msg: dict[str, Any] = {"role": "assistant", "content": content}
        if resp.tool_calls:
            msg["tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in resp.tool_calls
            ]
            data = abi.encode_llm_result(msg, None)
            exact = on_entry is not None and _assistant_exact(msg)
        elif type(content) is str:  # a plain answer (most): written directly; a str content is exact
            data, size = abi.encode_answer(content)
            if on_entry is not None:
                on_entry(data[5 : 5 + size], [msg])
            return len(data), data, counted
        else:
            data = abi.encode_llm_result(msg, content or "")
            # _assistant_exact of this plain message: no content decides it (else the walk does).
            exact = on_entry is not None and (content is None or _assistant_exact(msg))
        if exact:
            on_entry(data[5 : 5 + _u32_at_1(data, 1)[0]], [msg])  # type: ignore[misc]
        return len(data), data, counted


_perf = time.perf_counter
_now_ns = time.perf_counter_ns
_u32_at_1 = struct.Struct("<I").unpack_from  # the length field of an llm_invoke result (after the tag)


@functools.lru_cache(maxsize=256)
def _system_message(prompt: str) -> Any:
    """The system message of a prompt (a frozen value, shared by every call of every agent using it)."""
    from openfang.workers.llm import types as t

    return t.ChatMessage.system(prompt)


def _assistant_exact(msg: dict[str, Any]) -> bool:
    """``abi.json_exact(msg)`` for the model job's assistant message: a plain one (role and content, as
    ModelCall makes it) is decided by its content's type; one with tool calls (role, content, tool_calls of
    ``{id, name, arguments}``) whose ids and names are str and whose arguments are str values under str
    keys is exact at once (what a model's calls mostly are); any other shape or type walks the message."""
    content = msg.get("content", msg)
    if (content is None or type(content) is str) and type(msg.get("role")) is str:
        if len(msg) == 2:
            return True
        calls = msg.get("tool_calls")
        if len(msg) == 3 and type(calls) is list and _calls_exact(calls):
            return True
    return abi.json_exact(msg)


def _calls_exact(calls: list[Any]) -> bool:
    """True when every call is a dict of exactly a str ``id``, a str ``name`` and ``arguments`` holding str
    values under str keys (exact for ``json_exact``); False means "not decided here", not "not exact"."""
    for call in calls:
        if type(call) is not dict or len(call) != 3:
            return False
        args = call.get("arguments")
        if type(call.get("id")) is not str or type(call.get("name")) is not str or type(args) is not dict:
            return False
        for key, value in args.items():
            if type(key) is not str or type(value) is not str:
                return False
    return True


def _results_exact(results: list[dict[str, Any]]) -> bool:
    """``abi.json_exact(results)`` for the tool job's messages (dicts of str keys, as tools_work builds
    them): True at once when every field has a plain type (str texts, a bool, a finite float); any doubt
    walks the whole value."""
    for r in results:
        ms = r.get("ms")
        if not (
            len(r) == 6
            and type(r.get("content")) is str
            and type(r.get("role")) is str
            and type(r.get("tool_call_id")) is str
            and type(r.get("name")) is str
            and type(r.get("ok")) is bool
            and type(ms) is float
            and ms - ms == 0
        ):
            return abi.json_exact(results)
    return True


def _ok(data: bytes, usage: dict[str, int] | None = None) -> tuple[int, bytes, dict[str, int]]:
    return len(data), data, usage or {}


def _well_formed(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop tool-call messages whose results never came (a failed message) and the results the window cut
    off at its start. The reference for :meth:`ChatCache.convert`, which filters the same way on kinds."""
    out: list[dict[str, Any]] = []
    start = 0
    while start < len(messages) and messages[start].get("role") == "tool":
        start += 1  # the history window cut these results off from their tool-call message
    messages = messages[start:]
    for i, m in enumerate(messages):
        if m.get("role") == "assistant" and m.get("tool_calls"):
            nxt = messages[i + 1] if i + 1 < len(messages) else None
            if nxt is None or nxt.get("role") != "tool":
                continue
        out.append(m)
    return out


def _to_chat(t: Any, m: Mapping[str, Any]) -> Any:
    role = m["role"]
    content = m.get("content")
    if role == "assistant":
        calls = [
            t.ToolCall.of(str(c.get("id", "")), str(c.get("name", "")), dict(c.get("arguments") or {}))
            for c in m.get("tool_calls") or ()
        ]
        return t.ChatMessage.assistant(content, calls)
    if role == "tool":
        return t.ChatMessage.tool(str(m.get("tool_call_id", "")), str(content or ""), m.get("name"))
    if role == "system":
        return t.ChatMessage.system(str(content or ""))
    return t.ChatMessage.user(str(content or ""))


# -- tools -------------------------------------------------------------------------------------------------

ToolInvoke = Callable[[str, dict[str, Any]], tuple[bool, Any]]


def invoke_tool(registry: Any, ctx: Any, name: str, args: dict[str, Any]) -> tuple[bool, Any]:
    """(ok, value-or-error) through the registry's ``invoke`` (schema-checked) or ``get(name).call``."""
    if hasattr(registry, "invoke"):
        res = registry.invoke(ctx, name, args)
        return bool(res.ok), (res.value if res.ok else res.error)
    tool = registry.get(name)
    if tool is None:
        return False, f"no such tool {name!r}"
    return True, tool.call(ctx, dict(args))  # a copy, as the registry's invoke gives (guest_abi.flat_request)


def tools_work(
    calls: list[dict[str, Any]],
    allowed: frozenset[str],
    invoke: ToolInvoke,
    on_denied: Callable[[str], None],
    single: bool,
    on_entry: Callable[[bytes, list[dict[str, Any]]], None] | None = None,
) -> Callable[[], tuple[int, bytes, dict[str, int]]]:
    """The job body of one ``tool_call``: run each call in order (allowed ones only), encode tool messages.

    ``on_entry`` gets the tool messages' JSON (the conversation entry the guest appends) and the messages,
    when their round trip is exact."""

    def work() -> tuple[int, bytes, dict[str, int]]:
        results: list[dict[str, Any]] = []
        for call in calls:
            name = str(call.get("name", ""))
            args = call.get("arguments") or {}
            t0 = _now_ns()
            if name not in allowed:
                on_denied(name)
                ok, value = False, f"denied: tool {name!r} is not in this agent's tools"
            elif not isinstance(args, dict):
                ok, value = False, "arguments must be a JSON object"
            else:
                try:
                    ok, value = invoke(name, args)
                except OpenFangError as exc:
                    ok, value = False, exc.message
            content = (
                value
                if isinstance(value, str) and ok
                else json.dumps(value if ok else {"error": str(value)}, default=str, ensure_ascii=False)
            )
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": str(call.get("id", "")),
                    "name": name,
                    "content": content,
                    "ok": ok,
                    "ms": (_now_ns() - t0) // 1000 / 1000,  # whole microseconds: round(x, 3) cost 2.4x
                }
            )
        if single:
            one = results[0]
            if not one["ok"] and str(one["content"]).startswith('{"error": "denied'):
                return abi.E_DENIED, str(one["content"]).encode(), {"tool_calls": 1}
            data = str(one["content"]).encode()
            return (len(data) if one["ok"] else abi.E_FAILED), data, {"tool_calls": 1}
        data = abi.tool_messages(results)
        if on_entry is not None and _results_exact(results):
            on_entry(data, results)
        return _ok(data, {"tool_calls": len(results)})

    return work
