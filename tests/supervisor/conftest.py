"""Fixtures for the supervisor tests: child functions importable by name in forked children, a loop, and a
harness that shuts every supervisor down and checks nothing is left behind."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture
def marks() -> Iterator[Path]:
    """A short-pathed scratch dir where children leave marker files (one per start) for the test to read."""
    d = tempfile.mkdtemp(dir="/tmp", prefix="ofsup-")
    yield Path(d)
    for p in Path(d).iterdir():
        p.unlink()
    os.rmdir(d)


@pytest.fixture(autouse=True)
def no_leftover_children() -> Iterator[None]:
    """Every test must leave no child processes (and so no zombies) of the test process behind."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    me = psutil.Process()
    deadline = 100
    left = []
    for _ in range(deadline):
        left = [p for p in me.children(recursive=True) if p.pid not in before]
        left = [p for p in left if _alive(p)]
        if not left:
            break
        import time

        time.sleep(0.05)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    for p in left:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(p.pid, os.WNOHANG)
    assert not left, f"processes left behind: {[(p.pid, p.status()) for p in left]}"


def _alive(p: psutil.Process) -> bool:
    try:
        if p.status() == psutil.STATUS_ZOMBIE:
            return True  # a zombie of ours is a leak too
        return p.is_running()
    except psutil.Error:
        return False


from supervisor_harness import Harness  # noqa: E402


@pytest.fixture(params=[False, True], ids=["fork", "inline"])
def inline(request: pytest.FixtureRequest) -> bool:
    """Whether the test's nested supervisors run inline (in their parent's process) or forked: the tests
    that take this fixture hold for both."""
    return bool(request.param)


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.close()
