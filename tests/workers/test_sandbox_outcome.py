"""A call's Outcome built on the hot path without __init__ is the value __init__ builds."""

from __future__ import annotations

import dataclasses

import pytest

from openfang.workers.sandbox import instance
from openfang.workers.sandbox.instance import Outcome


@pytest.mark.parametrize(("phase", "reply"), [("handle", b"hi"), ("init", b""), ("handle", bytes(256))])
def test_outcome_succeeded_equals_init(phase: str, reply: bytes) -> None:
    """_succeeded gives Outcome(phase=..., ok=True, reply=...) field for field, frozen like it."""
    fast, slow = instance._succeeded(phase, reply), Outcome(phase=phase, ok=True, reply=reply)
    for f in dataclasses.fields(Outcome):
        a, b = getattr(fast, f.name), getattr(slow, f.name)
        assert a == b and type(a) is type(b), f.name
    assert fast == slow and repr(fast) == repr(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.ok = False  # type: ignore[misc]
