"""Layer 1 at the gateway's door: the limits walk is skipped only where the body's schema already keeps a
valid body within the limits; everywhere else it runs and refuses with the same texts."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from openfang.control.guard import Guard
from openfang.protocol import messages
from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import FrameTooLarge, ProtocolError
from openfang.security.config import security_from_args
from openfang.security.validation import MessageValidator, TooDeep, ValidationLimits, within

_UNLIMITED = {
    b: {"rate": 0, "burst": 0}
    for b in ("client_requests", "global_requests", "agent_requests", "agent_tokens", "agent_tool_calls")
}


def _guard(validation: dict[str, Any]) -> Guard:
    table = {"validation": validation, "ratelimit": _UNLIMITED}
    return Guard(security_from_args({"table": table}), max_frame=1 << 20)


def _frame(type_: str, body: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb({"v": 1, "id": "r-1", "type": type_, "body": body})
    return packed


def test_guard_admits_a_bounded_request_without_walking_it() -> None:
    """agent.send's schema is within the default limits: admitted, its body as sent."""
    guard = _guard({})
    env = guard.admit(_frame("agent.send", {"service": "s", "text": "hi"}), client="c", peer="uid:0")
    assert env.body == {"service": "s", "text": "hi"}


def test_guard_still_walks_when_the_limits_are_tighter_than_the_schema() -> None:
    """With max_text = 10 a 20-character text passes the schema (65,536) but not layer 1: refused by the
    walk, with its text."""
    guard = _guard({"max_text": 10})
    with pytest.raises(FrameTooLarge, match=r"^body\.text: text is 20 characters, the limit is 10$"):
        guard.admit(_frame("agent.send", {"service": "s", "text": "t" * 20}), client="c", peer="uid:0")


def test_guard_still_walks_a_body_with_unbounded_fields() -> None:
    """child.start carries an open spec (Any args): the walk runs and refuses nesting past max_depth."""
    guard = _guard({"max_depth": 4})
    assert not within(messages.body_schema("child.start").shape, ValidationLimits(max_depth=4))  # type: ignore[union-attr]
    deep: Any = "leaf"
    for _ in range(6):
        deep = {"k": deep}
    spec = {"id": "x", "start": "m:f", "args": deep}
    with pytest.raises(TooDeep, match=r"nested 5 levels deep, the limit is 4"):
        guard.admit(_frame("child.start", {"path": "root", "spec": spec}), client="c", peer="uid:0")


def test_validator_checks_the_type_length_even_with_a_bounded_shape() -> None:
    """The shape skips the body walk, not the check of the type's length."""
    shape = messages.body_schema("agent.send").shape  # type: ignore[union-attr]
    validator = MessageValidator(ValidationLimits(max_key_len=4))
    with pytest.raises(ProtocolError, match=r"^type: 10 characters, the limit is 4$"):
        validator.check(Envelope(type="agent.send", body={}), shape=shape)


def test_validator_without_a_shape_walks_as_before() -> None:
    """No shape (a caller that did not validate against a schema): every limit is checked."""
    validator = MessageValidator(ValidationLimits(max_list=2))
    with pytest.raises(FrameTooLarge, match=r"^body\.x: list has 3 items, the limit is 2$"):
        validator.check(Envelope(type="t", body={"x": [1, 2, 3]}))
