"""The versioned envelope every OpenFANG message travels in, and its msgpack codec.

On the wire an envelope is one msgpack map::

    {"v": 1, "id": "<request id>", "type": "<message type>", "body": {...}}

Replies keep the request's ``id``; a successful reply's type is the request type plus ``.ok``; a failed one
has type ``error`` and body ``{"code": str, "message": str}`` (see ``openfang.protocol.errors``).
Body schemas per message type are registered in ``openfang.protocol.messages``; :func:`decode` validates the
envelope and, when a schema is registered for the type, the body.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from openfang.protocol.errors import (
    FrameTooLarge,
    OpenFangError,
    ProtocolError,
    UnknownType,
    UnsupportedVersion,
)
from openfang.protocol.twin import construction_twin

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 1 << 20  # 1 MiB; the gateway's limit is configurable
ERROR_TYPE = "error"

# A body validator returns the list of problems ("body.field: what is wrong"); empty means valid.
BodyValidator = Callable[[Mapping[str, Any]], list[str]]
_validators: dict[str, BodyValidator] = {}


def register_body_validator(message_type: str, validator: BodyValidator) -> None:
    """Make :func:`decode` validate the body of ``message_type`` with ``validator``."""
    _validators[message_type] = validator


def new_id() -> str:
    """A fresh request id, 32 hex characters: this process's random prefix (8 bytes from ``os.urandom``,
    made again in every forked child) and a counter. Unique across processes, forks and restarts, so it
    serves as an idempotency key (the memory writer's); not a secret: nothing takes an id as proof of
    anything (the gateway gives every request its own key, signing has its own nonces). One ``urandom``
    syscall per process instead of one per id (0.53 -> ~0.2 us an id)."""
    return f"{_id_prefix}{next(_id_counter):016x}"


def _new_id_prefix() -> None:
    """A new prefix and counter for this process (at import, and in a forked child: a child that kept its
    parent's prefix and counter would hand out the parent's next ids)."""
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(8).hex()
    _id_counter = itertools.count()


_id_prefix = ""
_id_counter = itertools.count()
_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


_UNSET: Any = object()  # "not given" for Envelope's own __init__ (None is a value a caller may pass)


@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class Envelope:
    """One message: protocol version, request id, type and body."""

    type: str
    body: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    v: int = PROTOCOL_VERSION

    def __init__(
        self, *, type: str, body: dict[str, Any] = _UNSET, id: str = _UNSET, v: int = PROTOCOL_VERSION
    ) -> None:
        # What the generated __init__ of a frozen dataclass does (the same fields, defaults and factories),
        # through the slots' own setters: 0.4 us against 1.7 us, and several envelopes are made per message.
        _set_type(self, type)
        _set_body(self, {} if body is _UNSET else body)
        _set_id(self, new_id() if id is _UNSET else id)
        _set_v(self, v)

    @property
    def is_error(self) -> bool:
        return self.type == ERROR_TYPE

    def reply(self, body: Mapping[str, Any] | None = None) -> Envelope:
        """A success reply to this request."""
        return made(f"{self.type}.ok", dict(body or {}), self.id)

    def error(self, err: OpenFangError) -> Envelope:
        """An error reply to this request."""
        return error_reply(self.id, err)


# The slots' setters (a frozen dataclass refuses setattr; its own __init__ goes around that the same way).
_set_type = vars(Envelope)["type"].__set__
_set_body = vars(Envelope)["body"].__set__
_set_id = vars(Envelope)["id"].__set__
_set_v = vars(Envelope)["v"].__set__


# made's, reply's and decode's envelopes are built on this twin (protocol/twin.py): 0.16 against 0.29 us with
# the slots' setters (timeit), and two envelopes are made per message a worker serves (decode's, the reply).
_EnvelopeTwin = construction_twin(Envelope, ("type", "body", "id", "v"))


def made(msg_type: str, body: dict[str, Any], msg_id: str) -> Envelope:
    """``Envelope(type=msg_type, body=body, id=msg_id)`` without the class call and its keywords, built on
    the twin (0.16 against 0.7 us): for the worker's reply, made once per message (decode has the same
    steps inline, one call less per message decoded)."""
    env = _EnvelopeTwin()
    env.type = msg_type
    env.body = body
    env.id = msg_id
    env.v = PROTOCOL_VERSION
    env.__class__ = Envelope
    return env  # type: ignore[no-any-return]


def error_reply(request_id: str, err: OpenFangError) -> Envelope:
    """An ``error`` envelope for ``request_id`` carrying ``err``'s code and message."""
    return made(ERROR_TYPE, err.to_wire(), request_id)


# One msgpack Packer per thread, reused: ``msgpack.packb`` builds a Packer (and its buffer) per call, 0.99
# against 0.67 us for a reply envelope (measured). Per thread because a Packer is one buffer: two threads
# packing at once through one would mix their bytes. ``pack`` leaves the buffer empty after each call (and
# after a failed one), so every call starts clean; its buffer keeps the size of the largest message packed,
# so after one larger than _PACKER_KEEP bytes the thread's Packer is dropped (the next call makes a new one).
_packers = threading.local()
_PACKER_KEEP = 1 << 16


def _new_packer() -> Callable[[Any], bytes]:
    """This thread's Packer (made on its first encode, and again after one dropped for its size)."""
    pack: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True).pack
    _packers.pack = pack
    return pack


# encode and encode_as each take the thread's Packer themselves (no shared helper: one call less per message).


def encode(env: Envelope) -> bytes:
    """Serialise an envelope to msgpack bytes."""
    try:
        pack: Callable[[Any], bytes] = _packers.pack
    except AttributeError:
        pack = _new_packer()
    packed = pack({"v": env.v, "id": env.id, "type": env.type, "body": env.body})
    if len(packed) > _PACKER_KEEP:
        del _packers.pack
    return packed


def encode_as(env: Envelope, msg_id: str) -> bytes:
    """``encode(env)`` with the id ``msg_id`` instead of its own: what a relay sends on (the gateway gives a
    request its own id towards a worker, and the reply the client's id back), without building the
    re-addressed envelope first."""
    try:
        pack: Callable[[Any], bytes] = _packers.pack
    except AttributeError:
        pack = _new_packer()
    packed = pack({"v": env.v, "id": msg_id, "type": env.type, "body": env.body})
    if len(packed) > _PACKER_KEEP:
        del _packers.pack
    return packed


# How encode begins a message whose id is an ASCII string of n < 32 characters: the map of four entries,
# "v": 1, then "id" and the fixstr header of its n bytes (the id's own bytes follow), by n.
_ID_HEADS = tuple(b"\x84\xa1v\x01\xa2id" + bytes((0xA0 | n,)) for n in range(32))
# What encode writes after the id, up to the body's value: "type", the type (a short string), "body"; by type.
_TYPE_HEADS: dict[str, bytes] = {}
_TYPE_HEADS_MAX = 1024  # types seen are the catalogue's; past this many the rest are built each time
_NO_HEAD = b"\xa4type\xff"  # for a type of 32 bytes or more: 0xff starts no string, so nothing matches


def _type_head(msg_type: str) -> bytes:
    raw = msg_type.encode()
    head = b"\xa4type" + bytes((0xA0 | len(raw),)) + raw + b"\xa4body" if len(raw) < 32 else _NO_HEAD
    if len(_TYPE_HEADS) < _TYPE_HEADS_MAX:
        _TYPE_HEADS[msg_type] = head
    return head


def readdressed(payload: bytes, env: Envelope, msg_id: str) -> bytes:
    """``encode_as(env, msg_id)`` for the ``env`` that :func:`decode` made of ``payload``, reusing its bytes.

    When ``payload`` is laid out as encode writes it (a map of exactly the four entries ``v``, ``id``,
    ``type``, ``body`` in that order, the id and type as short strings) and ``msg_id`` is a short ASCII
    string, the new id's bytes replace the old id's and the body's bytes follow as they came: the value its
    decode validated (for encode's own bytes, the very bytes encode_as writes). Anything else: encode_as.
    """
    old = len(env.id)
    if old < 32 and len(msg_id) < 32 and payload.startswith(_ID_HEADS[old]) and msg_id.isascii():
        # A fixstr of ``old`` bytes decoded to ``old`` characters: ASCII, so the id ends at byte 8 + old.
        # "type" and "body" must follow (no second "id" among the four entries, no other order).
        head = _TYPE_HEADS.get(env.type) or _type_head(env.type)
        if payload.startswith(head, 8 + old):
            return _ID_HEADS[len(msg_id)] + msg_id.encode() + payload[8 + old :]
    return encode_as(env, msg_id)


def decode(
    data: bytes, *, max_size: int = DEFAULT_MAX_FRAME, types: Container[str] | None = None
) -> Envelope:
    """Parse and validate one frame. Raises a :class:`ProtocolError` naming what is wrong.

    The request id is recovered whenever the frame is a map with a string ``id``, so that even an invalid
    request gets an error reply the client can match (see :func:`peek_id`).
    ``types`` (e.g. ``messages.REQUEST_TYPES`` at a server's door) refuses any other type with
    :class:`UnknownType` before its body is validated, so a reply sent as a request is ``unknown_type``.
    """
    if len(data) > max_size:
        raise FrameTooLarge(f"frame is {len(data)} bytes, the limit is {max_size}")
    try:
        # unpackb's defaults are raw=False and strict_map_key=True, and its max_*_len limits are len(data)
        # (<= max_size, checked above): what unpacks with the limits spelt out unpacks to the same value
        # without them (a string or array cannot be longer than the frame holding it), 1.0 -> 0.58 us an
        # agent.send without the keywords. A frame that fails is unpacked again as before, for its error.
        raw = _unpackb(data)
    except Exception:
        raw = _unpack_spelt_out(data, max_size)
    if type(raw) is dict and len(raw) == 4:
        # The common case, every envelope field present and well typed (four keys, all of them known: no
        # unknown field): the same checks as below in fewer steps, so the same envelope or the same error.
        # Subscripts, not four get() calls (a missing key: the general path below names it). ``v is
        # PROTOCOL_VERSION``: msgpack unpacks 1 to CPython's one cached int 1, so this is ``type(v) is int and
        # v == 1`` in one test; any other object equal to 1 (True, 1.0, an uncached int) takes the general
        # path, which refuses it or admits it as before.
        try:
            v, msg_id, msg_type, body = raw["v"], raw["id"], raw["type"], raw["body"]
        except KeyError:
            v = None
        if (
            v is PROTOCOL_VERSION
            and type(msg_id) is str
            and 0 < len(msg_id) <= 128
            and type(msg_type) is str
            and msg_type
            and type(body) is dict
        ):
            if types is not None and msg_type not in types:
                raise UnknownType(f"type: {msg_type!r} is not one of the types accepted here")
            validator = _validators.get(msg_type)
            if validator is not None:
                found = validator(body)
                if found:
                    raise ProtocolError("; ".join(found))
            env = _EnvelopeTwin()  # made(msg_type, body, msg_id), inline: one call less
            env.type = msg_type
            env.body = body
            env.id = msg_id
            env.v = PROTOCOL_VERSION
            env.__class__ = Envelope
            return env  # type: ignore[no-any-return]
    if not isinstance(raw, dict):
        raise ProtocolError(f"envelope must be a map, got {type(raw).__name__}")
    problems: list[str] = []
    v = raw.get("v")
    if not isinstance(v, int) or isinstance(v, bool):
        problems.append("v: missing or not an integer")
    elif v != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"v: protocol version {v} is not supported (this peer speaks {PROTOCOL_VERSION})"
        )
    msg_id = raw.get("id")
    msg_type = raw.get("type")
    # An error reply may carry id "": the answer to a request whose id could not be read.
    empty_ok = msg_type == ERROR_TYPE and msg_id == ""
    if not isinstance(msg_id, str) or not (msg_id or empty_ok) or len(msg_id) > 128:
        problems.append("id: missing, empty, not a string or longer than 128 characters")
    if not isinstance(msg_type, str) or not msg_type:
        problems.append("type: missing or not a non-empty string")
    body = raw.get("body")
    if body is None:  # absent or nil: an empty body (optional fields may be nil, section 2)
        body = {}
    if not isinstance(body, dict):
        problems.append(f"body: must be a map, got {type(body).__name__}")
    unknown = set(raw) - {"v", "id", "type", "body"}
    if unknown:
        problems.append(f"unknown envelope fields: {', '.join(sorted(map(str, unknown)))}")
    if not problems and types is not None and msg_type not in types:
        raise UnknownType(f"type: {msg_type!r} is not one of the types accepted here")
    if not problems and isinstance(msg_type, str) and msg_type in _validators:
        problems.extend(_validators[msg_type](body))
    if problems:
        raise ProtocolError("; ".join(problems))
    assert isinstance(msg_id, str) and isinstance(msg_type, str) and isinstance(body, dict)
    return Envelope(v=PROTOCOL_VERSION, id=msg_id, type=msg_type, body=body)


_unpackb = msgpack.unpackb


def _unpack_spelt_out(data: bytes, max_size: int) -> Any:
    """``data`` unpacked with decode's options spelt out (its limits at ``max_size``), or the ProtocolError
    naming why it is not msgpack."""
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, max_bin_len=max_size, max_str_len=max_size
        )
    except Exception as exc:  # msgpack raises several unrelated types: translate once, here.
        raise ProtocolError(f"frame is not valid msgpack: {_unpack_reason(exc)}") from None


def _unpack_reason(exc: Exception) -> str:
    """A non-empty reason for a msgpack failure (some of its exceptions carry no message at all)."""
    if isinstance(exc, msgpack.ExtraData):
        return "extra bytes after the envelope (a frame holds exactly one msgpack value)"
    if isinstance(exc, msgpack.FormatError):
        return "a byte that starts no msgpack value (reserved format 0xc1 or a malformed header)"
    if isinstance(exc, msgpack.StackError):
        return "nested too deeply for the decoder"
    text = str(exc).strip()
    if "incomplete input" in text:
        return "the data ends inside a value (truncated frame)"
    if "exceeds max_" in text:  # a length header larger than the whole frame
        return f"a length larger than the frame allows ({text}): truncated or forged frame"
    return text or type(exc).__name__


def peek_id(data: bytes) -> str:
    """Best-effort request id of a (possibly invalid) frame, for addressing an error reply; ``""`` if none."""
    try:
        raw = msgpack.unpackb(data, raw=False)
    except Exception:
        return ""
    if isinstance(raw, dict) and isinstance(raw.get("id"), str) and len(raw["id"]) <= 128:
        return str(raw["id"])
    return ""
