"""Layer 1's validator with a schema's shape: the shape skips the body walk (never the type's length); without
one every limit is walked. The gateway's use of it, Guard.admit: tests/control/test_control_guard_admit.py."""

from __future__ import annotations

import pytest

from openfang.protocol import messages
from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import FrameTooLarge, ProtocolError
from openfang.security.validation import MessageValidator, ValidationLimits


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
