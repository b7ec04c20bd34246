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


def test_outcome_succeeded_shares_short_replies_and_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short reply's outcome is shared per (phase, reply) (the same value again), a longer one is built
    anew each time, and the shared table never grows past its limit (cleared when full)."""
    monkeypatch.setattr(instance, "_SHARED_SUCCESSES", {})
    monkeypatch.setattr(instance, "_SHARED_SUCCESSES_LIMIT", 8)
    short = instance._succeeded("handle", b"billing")
    assert instance._succeeded("handle", b"billing") is short
    assert instance._succeeded("init", b"billing") is not short
    assert instance._succeeded("init", b"billing").phase == "init"
    long = bytes(instance._SHARED_REPLY_MAX + 1)
    assert instance._succeeded("handle", long) is not instance._succeeded("handle", long)
    for i in range(50):
        reply = f"r{i}".encode()
        got = instance._succeeded("handle", reply)
        assert got == Outcome(phase="handle", ok=True, reply=reply)
        assert len(instance._SHARED_SUCCESSES) <= 8
