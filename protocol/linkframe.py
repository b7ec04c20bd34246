"""The worker link's batch frame: a loop turn's envelopes for one peer, packed into one ZeroMQ frame.

The gateway <-> worker link (ROUTER <-> DEALER, internal: clients never see it) sends each message as one
frame after the routing id, a **batch**: a msgpack array of bin items, each item the bytes of one encoded
envelope, in order (so every envelope carries its own length, the bin header, and the batch ends exactly
where its last item does). One frame instead of one per envelope: a receiver asks ZeroMQ for two frames a
message whatever the batch holds (a ``recv(copy=False)`` made a ``zmq.Frame`` per envelope only for its
``more`` flag, ~1.1 us a frame at the gateway), and the packing and the parsing are one C call each (0.45 us
to pack 16 envelopes, 0.72 to parse them, measured, against 1.4 and 2.4 us for a Python loop over 4-byte
length prefixes).

:func:`unpack` accepts exactly what :func:`pack` makes: a non-empty array of bin items and nothing after
it. Anything else (truncated, trailing bytes, another type, an empty batch) is a :class:`ProtocolError`
naming what is wrong and where; the caller drops the whole batch (its framing is broken, so nothing in it
is trusted) and logs it against its sender. An item that is not a valid envelope is the envelope decoder's
business, one item at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from openfang.protocol.errors import ProtocolError

__all__ = ["pack", "unpack"]

# One Packer per thread, reused (as envelope._pack: a Packer is one buffer, not to be shared by threads);
# dropped after a batch larger than _PACKER_KEEP, so a thread does not keep a large buffer for good.
_packers = threading.local()
_PACKER_KEEP = 1 << 18
_unpackb = msgpack.unpackb
_BYTES_ONLY = {bytes}


def pack(payloads: Sequence[bytes]) -> bytes:
    """The batch frame of ``payloads`` (encoded envelopes, at least one), in order."""
    try:
        packer: Callable[[Any], bytes] = _packers.pack
    except AttributeError:
        packer = _packers.pack = msgpack.Packer(use_bin_type=True).pack
    # A list (or tuple) packs as an array; bytes items pack as bin (use_bin_type).
    frame = packer(payloads if type(payloads) is list else list(payloads))
    if len(frame) > _PACKER_KEEP:
        del _packers.pack
    return frame


def unpack(frame: bytes | memoryview) -> list[bytes]:
    """The envelopes' bytes in a batch frame, in order; :class:`ProtocolError` if it is not one."""
    try:
        items = _unpackb(frame)
    except msgpack.ExtraData as exc:
        raise ProtocolError(
            f"batch: {len(exc.extra)} trailing bytes after the batch ends (of {len(frame)})"
        ) from None
    except Exception as exc:  # msgpack raises several unrelated types: translate once, here.
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise ProtocolError(
            f"batch: not a msgpack array of envelopes ({len(frame)} bytes): {reason}"
        ) from None
    if type(items) is not list:
        raise ProtocolError(f"batch: must be a msgpack array of bin items, got {type(items).__name__}")
    if not items:
        raise ProtocolError("batch: empty (a batch holds at least one envelope)")
    if set(map(type, items)) != _BYTES_ONLY:  # one C pass; the loop below only names the culprit
        index, item = next((i, x) for i, x in enumerate(items) if type(x) is not bytes)
        raise ProtocolError(
            f"batch: item {index} must be bin (an envelope's bytes), got {type(item).__name__}"
        )
    return items
