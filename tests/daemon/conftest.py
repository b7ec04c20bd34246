from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_harness import Cluster
from model_server import ModelServer


@pytest.fixture
def make_cluster() -> Iterator[type[Cluster]]:
    """Build clusters; every one is killed (with all its descendants) at the end of the test."""
    made: list[Cluster] = []

    def factory(**kw: object) -> Cluster:
        c = Cluster(**kw)  # type: ignore[arg-type]
        made.append(c)
        return c

    yield factory  # type: ignore[misc]
    for c in made:
        c.close()


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    """A model server on 127.0.0.1 (OpenAI chat protocol) for the test, closed at its end."""
    s = ModelServer()
    yield s
    s.close()
