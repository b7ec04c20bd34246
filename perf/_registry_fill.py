"""The agent registry on its own, for benchmarks: fill one with rows, then load it as the gateway does."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openfang.control.placement import Placement
from openfang.control.registry import AgentRegistry, AgentRow, manifest_digest


class NullPort:
    """A placement port that does nothing: loading the registry must not spawn or send."""

    def spawn(self, *a: Any, **k: Any) -> None: ...
    def kill(self, *a: Any) -> None: ...
    def suspend(self, *a: Any) -> None: ...
    def deliver(self, *a: Any) -> None: ...
    def fail(self, *a: Any) -> None: ...
    def publish(self, *a: Any) -> None: ...


def fill_registry(db: Path, rows: int, text: str, name: str, state: Callable[[int], str]) -> float:
    """Write ``rows`` agents of manifest ``text`` (row i in ``state(i)``, on two workers) in one commit;
    the seconds it took."""
    reg = AgentRegistry(db)
    digest = manifest_digest(text)
    t0 = time.perf_counter()
    for i in range(rows):
        row = AgentRow(
            agent_id=reg.next_id(name),
            name=name,
            manifest_digest=digest,
            state=state(i),
            placement=f"workers-{i % 2}",
        )
        reg.add(row, text)
    reg.commit()
    write_s = time.perf_counter() - t0
    reg.close()
    return write_s


def file_mb(db: Path) -> float:
    """The database with its -wal and -shm files, in MB."""
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / 1e6


def registry_load_ms(db: Path, *, rows: int | None = None) -> tuple[float, float]:
    """(AgentRegistry + Placement over ``db``, as the gateway starts; a bare SELECT *) in ms, best of 3.
    With ``rows``, each load must find that many agents."""
    loads, raw = [], []
    for _ in range(3):
        conn = sqlite3.connect(db)
        t0 = time.perf_counter()
        conn.execute("SELECT * FROM agents").fetchall()
        raw.append((time.perf_counter() - t0) * 1000)
        conn.close()
        t0 = time.perf_counter()
        reg = AgentRegistry(db)
        Placement(reg, NullPort())
        loads.append((time.perf_counter() - t0) * 1000)
        assert rows is None or len(reg) == rows, f"{len(reg)} agents loaded, {rows} written"
        reg.close()
    return min(loads), min(raw)
