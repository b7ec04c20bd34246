"""The guest ABI: what an agent module exports and imports, and the codes that cross the boundary.

docs/guest-abi.md is the prose version of this module; keep them together.

Exports (all i32 unless said): ``memory``; ``alloc(size) -> ptr`` (0 = out of memory);
``agent_init() -> status`` (optional; non-zero fails the spawn); ``agent_handle(ptr, len) -> i64`` whose
value is ``(reply_ptr << 32) | reply_len`` on success or a negative error code. Optional, both or neither:
the immutable i32 globals ``agent_inbox`` and ``agent_inbox_size``, a region of the guest's memory the host
writes a message of at most ``agent_inbox_size`` bytes into before calling ``agent_handle(agent_inbox, len)``
without ``alloc`` first (one guest call per message instead of two); the bytes there are the guest's only for
that call. Longer messages, and guests without an inbox, go through ``alloc``. Optional too: the immutable
i32 global ``agent_result_area``, the address of two u32s in the guest's memory, ``(ptr, cap)``, that the
guest sets before each parking host call: a result of at most ``cap`` bytes is written at ``ptr`` before the
call returns its length, and nothing is left pending for ``host_result`` (one host call fewer per model or
tool call); a longer one (or any, with ``cap`` 0) is fetched with ``host_result`` as usual.

Imports (module ``env``, every function takes i32s and returns one i32; negative = error code):
``host_result(ptr, cap)`` copies the pending result of the last host call; ``log(ptr, len)``;
``llm_invoke(iov_ptr, iov_len)`` and ``tool_call(ptr, len)`` park the guest until their result is ready;
``time_now_ms()``; ``net_fetch(ptr, len)`` / ``fs_read_scoped(ptr, len)`` (tools behind host functions).
"""

from __future__ import annotations

import json
import struct
from typing import Any

# Error codes a host function returns to the guest (negative i32); the guest's agent_handle may return
# them too (as negative i64) to fail a message.
E_DENIED = -1  # the agent's permissions do not allow this host function / tool
E_INVALID = -2  # bad pointer, bad payload, or no such host function in this host
E_FAILED = -3  # the host-side operation failed (LLM error, tool failure); details in host_result
E_LIMIT = -4  # max_calls_per_message reached
E_RANGE = -5  # buffer too small for the pending result
E_NO_RESULT = -6  # host_result called with nothing pending
E_UNAVAILABLE = -7  # this host has no LLM provider / tool registry configured
E_NOMEM = -8  # (guest side) alloc failed: the memory cap was reached

ERROR_NAMES = {
    E_DENIED: "denied",
    E_INVALID: "invalid",
    E_FAILED: "failed",
    E_LIMIT: "limit",
    E_RANGE: "range",
    E_NO_RESULT: "no_result",
    E_UNAVAILABLE: "unavailable",
    E_NOMEM: "nomem",
}

# Imports every agent may use: they only touch the agent's own memory.
CORE_IMPORTS = frozenset({"host_result", "log", "time_now_ms"})
# Imports granted implicitly by the manifest: llm_invoke when [agent.model] is set, tool_call when a model
# is set or agent.tools is non-empty (each tool is still checked against agent.tools at call time).
LLM_IMPORT = "llm_invoke"
TOOL_IMPORT = "tool_call"
# Capability host functions: granted only via [sandbox.permissions] allowed_host_functions.
CAPABILITY_IMPORTS = {"net_fetch": "http_fetch", "fs_read_scoped": "fs_read_scoped"}

# (name, number of i32 params, parks the guest)
HOST_FUNCTIONS: tuple[tuple[str, int, bool], ...] = (
    ("host_result", 2, False),
    ("log", 2, False),
    ("time_now_ms", 0, False),
    ("llm_invoke", 2, True),
    ("tool_call", 2, True),
    ("net_fetch", 2, True),
    ("fs_read_scoped", 2, True),
)
KNOWN_IMPORTS = frozenset(name for name, _, _ in HOST_FUNCTIONS)

EXPORT_ALLOC = "alloc"
EXPORT_INIT = "agent_init"
EXPORT_HANDLE = "agent_handle"
EXPORT_INBOX = "agent_inbox"
EXPORT_INBOX_SIZE = "agent_inbox_size"
EXPORT_RESULT_AREA = "agent_result_area"
RESULT_AREA = struct.Struct("<II")  # the result area's (ptr, cap)
REQUIRED_EXPORTS = ("memory", EXPORT_ALLOC, EXPORT_HANDLE)
# Optional exports a guest has both of or neither (the spawn is refused otherwise).
PAIRED_EXPORTS = ((EXPORT_INBOX, EXPORT_INBOX_SIZE),)
# The type the host calls each export with, checked at spawn (a wrong one would fail every message):
# ("func", params, results) with comma-separated value types, ("global", value type, "const" or "mut"),
# or the kind of another export.
EXPORT_TYPES: dict[str, tuple[str, ...]] = {
    "memory": ("memory",),
    EXPORT_ALLOC: ("func", "i32", "i32"),
    EXPORT_INIT: ("func", "", "i32"),
    EXPORT_HANDLE: ("func", "i32,i32", "i64"),
    # Immutable: the host reads them once per module, not per message.
    EXPORT_INBOX: ("global", "i32", "const"),
    EXPORT_INBOX_SIZE: ("global", "i32", "const"),
    EXPORT_RESULT_AREA: ("global", "i32", "const"),
}


def describe_type(ty: tuple[str, ...]) -> str:
    """An export type for people: ``(i32, i32) -> i64``, ``() -> i32``, ``immutable i32 global`` or the
    kind (``memory``)."""
    if ty[0] == "global" and len(ty) == 3:
        return f"{'mutable' if ty[2] == 'mut' else 'immutable'} {ty[1]} global"
    if ty[0] != "func":
        return ty[0]
    params = ", ".join(t for t in ty[1].split(",") if t)
    results = ", ".join(t for t in ty[2].split(",") if t) or "()"
    return f"({params}) -> {results}"


MAX_REPLY = 256 * 1024  # bytes: the protocol's agent.send.ok reply limit is 262,144 characters
MAX_HOST_PAYLOAD = 1 << 20  # bytes a guest may hand one host call (a tool request, the iovec array)

TAG_ANSWER = ord("A")
TAG_TOOLS = ord("T")
# json.dumps with these options builds a new encoder on every call: one, built once (same output).
_to_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# The string encoder that encoder uses for every str (ensure_ascii=False): a quoted JSON string. The two
# messages made on every model call are spelled out with it (~0.3 us instead of ~2 us through the encoder's
# dict walk); tests/workers/test_sandbox_guest_abi.py checks them against _to_json.
_json_str = json.encoder.encode_basestring
_u32 = struct.Struct("<I").pack
_IOVEC = struct.Struct("<II")


def split_reply(value: int) -> tuple[int, int]:
    """(ptr, len) of an ``agent_handle`` success value."""
    return (value >> 32) & 0xFFFFFFFF, value & 0xFFFFFFFF


def parse_iovecs(raw: bytes) -> list[tuple[int, int]]:
    """The (ptr, len) pairs of an iovec array (little-endian u32 pairs). Raises ValueError if misaligned."""
    if len(raw) % 8:
        raise ValueError(f"iovec array length {len(raw)} is not a multiple of 8")
    return list(_IOVEC.iter_unpack(raw))


_from_json = json.JSONDecoder().decode


def loads(data: bytes) -> Any:
    """``json.loads(data)`` for the JSON a guest hands the host: a text that opens with ``{`` followed by a
    non-NUL byte is UTF-8 for ``json.loads`` too (no BOM, not UTF-16/32), so its encoding is not detected
    again; anything else goes through ``json.loads`` itself. Same values, same errors (ValueError)."""
    if len(data) > 1 and data[0] == 0x7B and data[1]:
        return _from_json(data.decode("utf-8", "surrogatepass"))
    return json.loads(data)


def parse_messages(segments: list[bytes]) -> list[dict[str, Any]]:
    """Chat messages from iovec segments; a segment may hold several newline-separated JSON objects."""
    out: list[dict[str, Any]] = []
    for seg in segments:
        for line in seg.split(b"\n"):
            if not line.strip():
                continue
            msg = loads(line)
            if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
                raise ValueError("each conversation entry must be a JSON object with a string 'role'")
            out.append(msg)
    return out


def encode_llm_result(message: dict[str, Any], answer: str | None) -> bytes:
    """The ``llm_invoke`` result: tag, u32 length of the assistant message JSON, the JSON, then the answer.

    Tag ``A`` = final answer (the answer text follows the JSON); tag ``T`` = the message carries tool calls
    (pass the JSON to ``tool_call`` and append its result to the conversation).
    """
    body = _message_json(message).encode()
    if answer is None:
        return b"T" + _u32(len(body)) + body
    return b"A" + _u32(len(body)) + body + answer.encode()


def encode_answer(content: str) -> tuple[bytes, int]:
    """``encode_llm_result({"role": "assistant", "content": content}, content)`` of a str ``content`` (a
    model's plain answer, the message written directly), and the length of the message's JSON in it: the
    entry is ``result[5 : 5 + length]``."""
    body = ('{"role":"assistant","content":' + _json_str(content) + "}").encode()
    return b"A" + _u32(len(body)) + body + content.encode(), len(body)


_CALLS_KEYS = ("role", "content", "tool_calls")
_CALL_KEYS = ("id", "name", "arguments")


def _message_json(message: dict[str, Any]) -> str:
    """``_to_json(message)``; a plain ``{"role": str, "content": str | None}`` (in that order) is written
    directly, and so is the model job's tool-calling message (role, content, then ``tool_calls`` of
    ``{"id": str, "name": str, "arguments": dict}``, in those orders; the arguments through the encoder)."""
    if len(message) == 2 and next(iter(message)) == "role":
        role, content = message["role"], message.get("content", message)
        if type(role) is str and (content is None or type(content) is str):
            text = "null" if content is None else _json_str(content)
            return '{"role":' + _json_str(role) + ',"content":' + text + "}"
    elif len(message) == 3 and tuple(message) == _CALLS_KEYS:
        role, content, calls = message["role"], message["content"], message["tool_calls"]
        if type(role) is str and (content is None or type(content) is str) and type(calls) is list:
            parts = []
            for call in calls:
                if type(call) is not dict or tuple(call) != _CALL_KEYS:
                    break
                cid, name, args = call["id"], call["name"], call["arguments"]
                if type(cid) is not str or type(name) is not str or type(args) is not dict:
                    break
                parts.append(
                    '{"id":'
                    + _json_str(cid)
                    + ',"name":'
                    + _json_str(name)
                    + ',"arguments":'
                    + _args_json(args)
                    + "}"
                )
            else:
                text = "null" if content is None else _json_str(content)
                head = '{"role":' + _json_str(role) + ',"content":' + text + ',"tool_calls":['
                return head + ",".join(parts) + "]}"
    return _to_json(message)


def _args_json(args: dict[str, Any]) -> str:
    """``_to_json(args)``; a flat dict (str keys; str, int, bool or None values: most tool calls'
    arguments) is written directly (the encoder's setup cost ~2 us for a one-key dict, ~2 % of a tool-chain
    task)."""
    parts = []
    for k, v in args.items():
        kind = type(v)
        if type(k) is not str:
            return _to_json(args)
        if kind is str:
            parts.append(_json_str(k) + ":" + _json_str(v))
        elif kind is int:
            parts.append(_json_str(k) + ":" + int.__repr__(v))
        elif kind is bool:
            parts.append(_json_str(k) + (":true" if v else ":false"))
        elif v is None:
            parts.append(_json_str(k) + ":null")
        else:
            return _to_json(args)
    return "{" + ",".join(parts) + "}"


def json_exact(value: Any, depth: int = 0) -> bool:
    """True when ``json.loads`` of the JSON of ``value`` gives ``value`` back with the same types: dicts
    with str keys, lists, str, int, bool, finite float and None, nothing else (no tuple, no subclass),
    nested at most 32 deep. The host may then stand a value it encoded in for parsing its JSON."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return bool(value - value == 0)  # finite: inf - inf and nan - nan are nan
    if depth >= 32:
        return False
    # Loops rather than all() over generators, and the common leaves (str, int, bool, None) decided in place:
    # the model job walks every message with tool calls (~2x faster this way). Same answers.
    if kind is dict:
        for k, v in value.items():
            if type(k) is not str:
                return False
            leaf = type(v)
            if not (leaf is str or leaf is int or leaf is bool or v is None or json_exact(v, depth + 1)):
                return False
        return True
    if kind is list:
        for v in value:
            leaf = type(v)
            if not (leaf is str or leaf is int or leaf is bool or v is None or json_exact(v, depth + 1)):
                return False
        return True
    return False


_SCALARS = frozenset({str, int, float, bool, type(None)})


def flat_request(messages: list[dict[str, Any]]) -> bool:
    """Whether a seeded entry (``messages``: what its bytes parse to, ``json_exact``) may stand in for the
    parse of those bytes as a ``tool_call`` request: one message, and every dict of arguments in it (its tool
    calls', or its own for a single call) holds scalars only. A tool gets a copy of its arguments dict
    (``ToolRegistry.invoke``, ``jobs.invoke_tool``), so nothing it does to them reaches the message the
    conversation keeps; a request with nested arguments is parsed afresh."""
    if len(messages) != 1:
        return False
    msg = messages[0]
    calls = msg.get("tool_calls") if "tool_calls" in msg else [msg]
    if type(calls) is not list:
        return True  # no call reaches a tool (start_tools refuses it): nothing to share
    scalars = _SCALARS
    for call in calls:
        if type(call) is dict:
            args = call.get("arguments")
            if type(args) is dict:
                for v in args.values():
                    if type(v) not in scalars:
                        return False
    return True


def user_entry(text: str, *, session: str | None = None) -> tuple[bytes, dict[str, Any] | None]:
    """:func:`user_message` and the message it is the JSON of (None when its round trip is not exact)."""
    if not session and type(text) is str:  # most messages: user_message's direct JSON; a str text is exact
        return ('{"role":"user","content":' + _json_str(text) + "}").encode(), {
            "role": "user",
            "content": text,
        }
    msg: dict[str, Any] = {"role": "user", "content": text}
    if session:
        msg["session"] = session
    # json_exact(msg), decided by two type checks for the usual str text and session (str values under str
    # keys are exact); anything else is walked.
    exact = (type(text) is str and (not session or type(session) is str)) or json_exact(msg)
    return user_message(text, session=session), (msg if exact else None)


def user_message(text: str, *, session: str | None = None) -> bytes:
    """The bytes handed to ``agent_handle``: one JSON chat message."""
    if not session and type(text) is str:  # what _to_json gives for {"role": "user", "content": text}
        return ('{"role":"user","content":' + _json_str(text) + "}").encode()
    msg: dict[str, Any] = {"role": "user", "content": text}
    if session:
        msg["session"] = session
    return _to_json(msg).encode()


_TOOL_KEYS = ("role", "tool_call_id", "name", "content", "ok", "ms")


def _tool_json(r: dict[str, Any]) -> str:
    """``_to_json(r)``; a tool message as the host's tool job makes it (those keys in that order, str
    values, a bool ``ok`` and a finite float ``ms``) is written directly."""
    if tuple(r) == _TOOL_KEYS:
        role, call_id, name, content, ok, ms = r.values()
        if (
            type(role) is str
            and type(call_id) is str
            and type(name) is str
            and type(content) is str
            and type(ok) is bool
            and type(ms) is float
            and ms - ms == 0
        ):
            return (
                '{"role":'
                + _json_str(role)
                + ',"tool_call_id":'
                + _json_str(call_id)
                + ',"name":'
                + _json_str(name)
                + ',"content":'
                + _json_str(content)
                + ',"ok":'
                + ("true" if ok else "false")
                + ',"ms":'
                + float.__repr__(ms)
                + "}"
            )
    return _to_json(r)


def tool_messages(results: list[dict[str, Any]]) -> bytes:
    """Newline-separated JSON tool messages (the ``tool_call`` result for an assistant message)."""
    return "\n".join([_tool_json(r) for r in results]).encode()
