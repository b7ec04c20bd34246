"""Fixtures for the security engine tests: a real audit log in tmp_path and a settable clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _security_clock import FakeClock

from openfang.security.audit import AuditLog


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit.db")
    yield log
    log.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
