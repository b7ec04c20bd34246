"""A clock the security tests move by hand (a module with a unique name, so imports never collide)."""

from __future__ import annotations


class FakeClock:
    """Seconds, settable; pass the instance wherever a layer takes ``clock=``."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
