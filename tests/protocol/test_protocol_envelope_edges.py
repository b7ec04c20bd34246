"""Envelope corner cases the protocol promises: nil bodies, decode reasons, reply types at a door."""

from __future__ import annotations

import msgpack
import pytest

from openfang.protocol import messages
from openfang.protocol.envelope import decode
from openfang.protocol.errors import ProtocolError, UnknownType


def test_decode_nil_body_is_an_empty_body() -> None:
    """body nil (like an absent body) decodes as {} and passes an empty-body schema."""
    env = decode(msgpack.packb({"v": 1, "id": "a", "type": "ping", "body": None}))
    assert env.body == {}


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (b"\xc1", "format"),
        (b"\x84\xa1v\x01", "truncated"),
        (b"\x80\x80", "extra bytes"),
        (b"", "truncated"),
        (b"\x81\x01\x02", "map key"),
    ],
)
def test_decode_error_reason_is_never_empty(frame: bytes, words: str) -> None:
    """Every msgpack failure names its cause after 'not valid msgpack:'."""
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    reason = str(info.value.message).split("not valid msgpack:", 1)[1].strip()
    assert reason and words in reason


def test_decode_reply_type_at_a_request_door_is_unknown_type_whatever_its_body() -> None:
    """ping.ok with a broken body is unknown_type (not bad_request) where only requests are accepted."""
    frame = msgpack.packb({"v": 1, "id": "r", "type": "ping.ok", "body": {"pid": "x"}})
    with pytest.raises(UnknownType):
        decode(frame, types=messages.REQUEST_TYPES)
