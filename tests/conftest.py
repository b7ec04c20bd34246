"""Suite-wide guard: no test may leave a process behind, running or as a zombie."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest


def _leftovers() -> list[str]:
    out = []
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            out.append(f"{child.pid} {child.status()} {' '.join(child.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            continue
    return out


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """After the whole session (per xdist worker): every process a test started is gone and reaped."""
    yield
    deadline = time.monotonic() + 10
    while (left := _leftovers()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, "processes left behind by the tests:\n" + "\n".join(left)


@pytest.fixture
def sql_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SQL statement run on the sqlite3 connections this test opens from now on, in order."""
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    return statements
