"""A call's Outcome built on the hot path without __init__ is the value __init__ builds."""

from __future__ import annotations

import dataclasses

import pytest

from openfang.workers.sandbox import instance
from openfang.workers.sandbox.instance import Outcome


@pytest.mark.parametrize(
    ("phase", "reply"), [("handle", b"hi"), ("init", b""), ("handle", bytes(64)), ("handle", bytes(256))]
)
def test_outcome_succeeded_equals_init(phase: str, reply: bytes) -> None:
    """_succeeded gives Outcome(phase=..., ok=True, reply=...) field for field, frozen like it."""
    fast, slow = instance._succeeded(phase, reply), Outcome(phase=phase, ok=True, reply=reply)
    for f in dataclasses.fields(Outcome):
        a, b = getattr(fast, f.name), getattr(slow, f.name)
        assert a == b and type(a) is type(b), f.name
    assert fast == slow and repr(fast) == repr(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.ok = False  # type: ignore[misc]


def test_outcome_succeeded_builds_a_new_value_each_time() -> None:
    """Every reply gets its own Outcome (an Outcome, not the twin), equal to __init__'s, over many replies
    of every length; earlier outcomes keep their own reply."""
    made = []
    for i in range(600):
        reply = (f"r{i}" * (i % 40)).encode()
        got = instance._succeeded("handle" if i % 3 else "init", reply)
        assert type(got) is Outcome
        assert got == Outcome(phase="handle" if i % 3 else "init", ok=True, reply=reply)
        made.append((got, reply))
    assert all(out.reply == reply for out, reply in made)
    assert instance._succeeded("handle", b"x") is not instance._succeeded("handle", b"x")
