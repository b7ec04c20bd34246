"""Fixtures for the security engine tests: a real audit log in tmp_path and a settable clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openfang.security.audit import AuditLog


class FakeClock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit.db")
    yield log
    log.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
