"""Helpers shared by the memory tests (a uniquely named module: conftest.py names collide across packages)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def wait_until(cond: Callable[[], bool], timeout_s: float = 20.0, every_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(every_s)


ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
